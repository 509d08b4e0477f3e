//! Roles for the management API: the built-in roles' seed table over every management route,
//! custom roles with wildcards and `not_actions`, service-scoped assignments, identity tokens
//! that are refused, runtime role assignments (effective on the next call, persisted, audited),
//! and config validation of roles. Callers authenticate with identity tokens signed here by an
//! independent JWS encoder (`support::jwt`) and trusted through `[identity] public_keys`.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::jwt::{Minter, unix_now};
use support::mgmt::{Answer, activity, bootstrap_credential, call};
use support::process;
use support::{GatewayBuilder, MockUpstream, TestGateway, within};

const IDP_ISSUER: &str = "https://idp.test/tenant";
const IDP_AUDIENCE: &str = "api://scoregate-admin";
const IDP_KID: &str = "idp-1";

/// The identity provider management callers come from: a P-256 key whose public half the
/// gateway trusts as `[identity] public_keys = [{kid = "idp-1", file = ...}]`.
struct Idp {
    key: Minter,
    dir: tempfile::TempDir,
}

impl Idp {
    fn new() -> Self {
        let key = Minter::generate_es256(IDP_KID);
        let dir = tempfile::tempdir().expect("identity key temp dir");
        std::fs::write(dir.path().join("idp-1.pem"), key.public_pem()).expect("write idp-1.pem");
        Self { key, dir }
    }

    /// The `[identity]` table (top level, so it goes after every `[[service]]`).
    fn toml(&self) -> String {
        format!(
            "[identity]\nissuer = \"{IDP_ISSUER}\"\naudience = \"{IDP_AUDIENCE}\"\n\
             algorithm = \"ES256\"\nleeway_s = 0\n\
             public_keys = [{{ kid = \"{IDP_KID}\", file = \"{}\" }}]\n",
            self.dir.path().join("idp-1.pem").display()
        )
    }

    fn claims(sub: &str, roles: &[&str]) -> Value {
        let now = unix_now();
        let mut c = json!({"iss": IDP_ISSUER, "aud": IDP_AUDIENCE, "sub": sub,
                           "iat": now, "nbf": now, "exp": now + 600});
        if !roles.is_empty() {
            c["roles"] = json!(roles);
        }
        c
    }

    /// An identity token for `sub` holding `roles` (the `roles` claim, scope `*`).
    fn token(&self, sub: &str, roles: &[&str]) -> String {
        self.key.token(&Self::claims(sub, roles))
    }
}

/// Key-mode services `a` and `b`, token-mode `tok`, the identity provider and `tables` (more
/// top-level TOML: `[[role]]`, `[[role_assignment]]`). Top-level tables must follow the last
/// `[[service]]`'s own keys, so they ride at the end of its extra lines.
async fn gateway(upstream: &MockUpstream, idp: &Idp, tables: &str) -> TestGateway {
    let gw = GatewayBuilder::new()
        .service_with("a", "/api/v1/service/a", &upstream.url(), "auth = \"key\"")
        .service_with("b", "/api/v1/service/b", &upstream.url(), "auth = \"key\"")
        .service_with(
            "tok",
            "/api/v1/service/tok",
            &upstream.url(),
            &format!(
                "auth = \"token\"\n[service.token]\n\n{}\n{tables}",
                idp.toml()
            ),
        )
        .start()
        .await;
    gw.wait_ready().await;
    gw
}

async fn get(gw: &TestGateway, path: &str, bearer: &str) -> Answer {
    call(gw, Method::GET, path, Some(bearer), None).await
}

async fn post(gw: &TestGateway, path: &str, bearer: &str, body: Option<&Value>) -> Answer {
    call(gw, Method::POST, path, Some(bearer), body).await
}

fn regenerate_secondary() -> Value {
    json!({"keyType": "Secondary", "keyValue": null})
}

/// One management route of the seed table.
struct Route {
    method: Method,
    path: &'static str,
    body: Option<Value>,
    action: &'static str,
    /// What the operation answers when permitted (a success, or its own 4xx).
    permitted: StatusCode,
    /// Whether Owner, Contributor, Reader (in that order) may call it.
    allowed: [bool; 3],
}

fn route(
    method: Method,
    path: &'static str,
    body: Option<Value>,
    action: &'static str,
    permitted: StatusCode,
    allowed: [bool; 3],
) -> Route {
    Route {
        method,
        path,
        body,
        action,
        permitted,
        allowed,
    }
}

/// The seed table: every built-in role against every management route.
fn seed_table() -> Vec<Route> {
    const ALL: [bool; 3] = [true, true, true];
    const WRITERS: [bool; 3] = [true, true, false];
    const OWNER: [bool; 3] = [true, false, false];
    use Method as M;
    use StatusCode as S;
    vec![
        route(M::GET, "/services", None, "services/read", S::OK, ALL),
        route(
            M::POST,
            "/services/a/listkeys",
            None,
            "services/keys/list",
            S::OK,
            WRITERS,
        ),
        route(
            M::POST,
            "/services/a/regenerateKeys",
            Some(regenerate_secondary()),
            "services/keys/regenerate",
            S::OK,
            WRITERS,
        ),
        route(
            M::POST,
            "/services/tok/token",
            None,
            "services/token/issue",
            S::OK,
            ALL,
        ),
        route(
            M::POST,
            "/services/tok/rotateSigningKey",
            None,
            "services/signingkeys/rotate",
            S::OK,
            WRITERS,
        ),
        route(M::GET, "/activity", None, "activity/read", S::OK, ALL),
        route(M::GET, "/metrics", None, "metrics/read", S::OK, ALL),
        route(M::POST, "/reload", None, "config/reload", S::OK, WRITERS),
        route(M::GET, "/roles", None, "roles/read", S::OK, ALL),
        route(M::GET, "/cluster", None, "cluster/read", S::OK, ALL),
        route(M::GET, "/role-assignments", None, "roles/read", S::OK, ALL),
        route(
            M::POST,
            "/role-assignments",
            Some(json!({"principal": "bystander", "role": "Reader", "scope": "*"})),
            "roles/assign",
            S::CREATED,
            OWNER,
        ),
        // Permitted, the operation itself answers: there is no such assignment.
        route(
            M::DELETE,
            "/role-assignments/no-such-assignment",
            None,
            "roles/assign",
            S::NOT_FOUND,
            OWNER,
        ),
    ]
}

#[tokio::test]
async fn built_in_roles_follow_the_seed_table_on_every_management_route() {
    let upstream = MockUpstream::start().await;
    let idp = Idp::new();
    let gw = gateway(&upstream, &idp, "").await;
    let table = seed_table();
    for (i, role) in ["Owner", "Contributor", "Reader"].into_iter().enumerate() {
        let token = idp.token(&format!("seed-{role}"), &[role]);
        for r in &table {
            let context = format!("{role} {} {}", r.method, r.path);
            let answer = call(&gw, r.method.clone(), r.path, Some(&token), r.body.as_ref()).await;
            if r.allowed[i] {
                assert_eq!(answer.status, r.permitted, "{context}: {}", answer.text);
            } else {
                answer.assert_forbidden(r.action, &context);
            }
        }
    }
    // Refusals are audited with the caller and the missing permission.
    let entries = activity(&gw, &bootstrap_credential(&gw).await).await;
    assert!(
        entries.iter().any(|e| e["operationName"] == "listKeys"
            && e["initiator"] == "idp:seed-Reader"
            && e["service"] == "a"
            && e["result"] == "Denied"
            && e["reason"] == "missing permission services/keys/list"),
        "{entries:#?}"
    );
    assert!(
        entries.iter().any(|e| e["operationName"] == "assignRole"
            && e["initiator"] == "idp:seed-Owner"
            && e["result"] == "Succeeded"),
        "{entries:#?}"
    );
}

#[tokio::test]
async fn a_custom_role_grants_its_wildcards_minus_its_not_actions() {
    let upstream = MockUpstream::start().await;
    let idp = Idp::new();
    let gw = gateway(
        &upstream,
        &idp,
        r#"
[[role]]
name = "KeyOperator"
description = "Replaces keys and reads status; never sees key material or signing keys."
actions = ["services/*", "*/read"]
not_actions = ["services/keys/list", "services/signingkeys/*"]

[[role_assignment]]
principal = "key-operator"
role = "KeyOperator"
scope = "*"
"#,
    )
    .await;
    // Held through the config's assignment: the token carries no roles claim.
    let token = idp.token("key-operator", &[]);

    let regen = post(
        &gw,
        "/services/a/regenerateKeys",
        &token,
        Some(&regenerate_secondary()),
    )
    .await;
    assert_eq!(regen.status, StatusCode::OK, "{}", regen.text);
    let issued = post(&gw, "/services/tok/token", &token, None).await;
    assert_eq!(issued.status, StatusCode::OK, "{}", issued.text);
    for path in [
        "/services",
        "/activity",
        "/metrics",
        "/roles",
        "/role-assignments",
    ] {
        let answer = get(&gw, path, &token).await;
        assert_eq!(answer.status, StatusCode::OK, "GET {path}: {}", answer.text);
    }
    post(&gw, "/services/a/listkeys", &token, None)
        .await
        .assert_forbidden("services/keys/list", "not_actions exact");
    post(&gw, "/services/tok/rotateSigningKey", &token, None)
        .await
        .assert_forbidden("services/signingkeys/rotate", "not_actions wildcard");
    post(&gw, "/reload", &token, None)
        .await
        .assert_forbidden("config/reload", "matches neither pattern");
    post(
        &gw,
        "/role-assignments",
        &token,
        Some(&json!({"principal": "key-operator", "role": "Owner"})),
    )
    .await
    .assert_forbidden("roles/assign", "no self-promotion");

    let roles = get(&gw, "/roles", &token).await.json();
    let custom = roles
        .as_array()
        .expect("roles list")
        .iter()
        .find(|r| r["name"] == "KeyOperator")
        .unwrap_or_else(|| panic!("KeyOperator listed: {roles}"));
    assert_eq!(custom["builtIn"], false);
    assert_eq!(custom["actions"], json!(["services/*", "*/read"]));
    assert_eq!(
        custom["notActions"],
        json!(["services/keys/list", "services/signingkeys/*"])
    );
}

#[tokio::test]
async fn service_scoped_assignments_apply_to_their_service_only() {
    let upstream = MockUpstream::start().await;
    let idp = Idp::new();
    let gw = gateway(
        &upstream,
        &idp,
        r#"
[[role_assignment]]
principal = "alice"
role = "Contributor"
scope = "service:a"

[[role_assignment]]
principal = "alice"
role = "Reader"
scope = "*"
"#,
    )
    .await;
    let alice = idp.token("alice", &[]);

    let on_a = post(
        &gw,
        "/services/a/regenerateKeys",
        &alice,
        Some(&regenerate_secondary()),
    )
    .await;
    assert_eq!(on_a.status, StatusCode::OK, "{}", on_a.text);
    let listed = post(&gw, "/services/a/listkeys", &alice, None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    post(
        &gw,
        "/services/b/regenerateKeys",
        &alice,
        Some(&regenerate_secondary()),
    )
    .await
    .assert_forbidden("services/keys/regenerate", "Contributor is scoped to a");
    post(&gw, "/services/b/listkeys", &alice, None)
        .await
        .assert_forbidden("services/keys/list", "Reader never lists keys");
    // A service scope never covers gateway-wide actions.
    post(&gw, "/reload", &alice, None)
        .await
        .assert_forbidden("config/reload", "gateway-wide action");
    let services = get(&gw, "/services", &alice).await;
    assert_eq!(services.status, StatusCode::OK, "Reader on *");

    let listed = get(&gw, "/role-assignments", &alice).await.json();
    assert_eq!(
        listed,
        json!([
            {"id": "config-0", "principal": "alice", "role": "Contributor",
             "scope": "service:a", "source": "config"},
            {"id": "config-1", "principal": "alice", "role": "Reader",
             "scope": "*", "source": "config"},
        ])
    );
    // Config assignments are changed in the config file, not through the API.
    let admin = bootstrap_credential(&gw).await;
    let removed = call(
        &gw,
        Method::DELETE,
        "/role-assignments/config-0",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(removed.status, StatusCode::CONFLICT, "{}", removed.text);
    assert_eq!(removed.json()["error"]["code"], "assignment_in_config");
}

#[tokio::test]
async fn expired_forged_and_misdirected_identity_tokens_are_401() {
    let upstream = MockUpstream::start().await;
    let idp = Idp::new();
    let gw = gateway(&upstream, &idp, "").await;
    let now = unix_now();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = Idp::claims("mallory", &["Owner"]);
        change(&mut c);
        c
    };
    // Same kid, another key: what a forger without the provider's key can make.
    let forger = Minter::generate_es256(IDP_KID);
    let cases = [
        (
            "expired",
            idp.key.token(&with(&|c| c["exp"] = json!(now - 3600))),
            "token_expired",
        ),
        (
            "forged",
            forger.token(&Idp::claims("mallory", &["Owner"])),
            "token_signature",
        ),
        (
            "wrong audience",
            idp.key
                .token(&with(&|c| c["aud"] = json!("api://another-app"))),
            "token_audience",
        ),
        (
            "wrong issuer",
            idp.key
                .token(&with(&|c| c["iss"] = json!("https://evil.test/"))),
            "token_issuer",
        ),
        (
            "unknown kid",
            idp.key.sign(
                &json!({"alg": "ES256", "kid": "idp-unknown"}),
                &Idp::claims("mallory", &["Owner"]),
            ),
            "token_unknown_key",
        ),
    ];
    for (what, token, code) in &cases {
        let answer = get(&gw, "/services", token).await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            answer.text
        );
        assert_eq!(answer.json()["error"]["code"], *code, "{what}");
        assert_eq!(
            answer
                .headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "{what}"
        );
    }
    let anonymous = call(&gw, Method::GET, "/services", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.json()["error"]["code"], "missing_credentials");

    // The genuine token with the same claims passes.
    let genuine = get(&gw, "/services", &idp.token("mallory", &["Owner"])).await;
    assert_eq!(genuine.status, StatusCode::OK, "{}", genuine.text);
    let entries = activity(&gw, &bootstrap_credential(&gw).await).await;
    let refused = entries
        .iter()
        .filter(|e| e["initiator"] == "anonymous" && e["result"] == "Denied")
        .count();
    assert_eq!(refused, cases.len() + 1, "{entries:#?}");
}

#[tokio::test]
async fn runtime_role_assignments_apply_on_the_next_call_persist_and_are_audited() {
    let upstream = MockUpstream::start().await;
    let idp = Idp::new();
    let gw = gateway(&upstream, &idp, "").await;
    let carol = idp.token("carol", &["Owner"]);
    let bob = idp.token("bob", &[]);
    let file = gw.dir().join("state").join("role-assignments.json");

    get(&gw, "/services", &bob)
        .await
        .assert_forbidden("services/read", "bob holds no role yet");

    let created = post(
        &gw,
        "/role-assignments",
        &carol,
        Some(&json!({"principal": "bob", "role": "Reader", "scope": "*"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let assignment = created.json();
    let id = assignment["id"].as_str().expect("assignment id").to_owned();
    assert_eq!(
        assignment,
        json!({"id": id, "principal": "bob", "role": "Reader", "scope": "*", "source": "api"})
    );

    // The very next call sees it.
    let services = get(&gw, "/services", &bob).await;
    assert_eq!(services.status, StatusCode::OK, "{}", services.text);
    post(&gw, "/services/a/listkeys", &bob, None)
        .await
        .assert_forbidden("services/keys/list", "Reader only");
    assert_eq!(
        get(&gw, "/role-assignments", &bob).await.json(),
        json!([assignment])
    );

    // Persisted with owner-only permissions, in a form a restarted gateway reads back.
    let mode = std::fs::metadata(&file)
        .expect("role-assignments.json exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let stored: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read role-assignments.json"))
            .expect("role-assignments.json is JSON");
    assert_eq!(stored, json!([assignment]));
    let reopened = scoregate::runtime::assignments::AssignmentFile::new(&gw.dir().join("state"))
        .read()
        .expect("a restarted gateway reads the file");
    assert_eq!(reopened.len(), 1);
    assert_eq!(reopened[0].principal, "bob");

    let deleted = call(
        &gw,
        Method::DELETE,
        &format!("/role-assignments/{id}"),
        Some(&carol),
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    get(&gw, "/services", &bob)
        .await
        .assert_forbidden("services/read", "the assignment is gone");
    let stored: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read role-assignments.json"))
            .expect("role-assignments.json is JSON");
    assert_eq!(stored, json!([]));
    let again = call(
        &gw,
        Method::DELETE,
        &format!("/role-assignments/{id}"),
        Some(&carol),
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.text);
    assert_eq!(again.json()["error"]["code"], "assignment_not_found");

    let entries = activity(&gw, &carol).await;
    for operation in ["assignRole", "removeRoleAssignment"] {
        assert!(
            entries.iter().any(|e| e["operationName"] == operation
                && e["initiator"] == "idp:carol"
                && e["result"] == "Succeeded"),
            "{operation} by carol in {entries:#?}"
        );
    }
}

#[tokio::test]
async fn invalid_role_assignment_requests_change_nothing() {
    let upstream = MockUpstream::start().await;
    let idp = Idp::new();
    let gw = gateway(&upstream, &idp, "").await;
    let carol = idp.token("carol", &["Owner"]);
    let bob = idp.token("bob", &[]);
    for (body, status, code) in [
        (
            json!({"principal": "bob", "role": "Superuser"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"principal": "bob", "role": "Reader", "scope": "service:ghost"}),
            StatusCode::NOT_FOUND,
            "service_not_found",
        ),
        (
            json!({"principal": "bob", "role": "Reader", "scope": "everything"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let answer = post(&gw, "/role-assignments", &carol, Some(&body)).await;
        assert_eq!(answer.status, status, "{body}: {}", answer.text);
        assert_eq!(answer.json()["error"]["code"], code, "{body}");
    }
    get(&gw, "/services", &bob)
        .await
        .assert_forbidden("services/read", "still no role");

    assert_eq!(
        get(&gw, "/role-assignments", &carol).await.json(),
        json!([])
    );
    assert!(
        !gw.dir()
            .join("state")
            .join("role-assignments.json")
            .exists(),
        "nothing was written"
    );
}

#[tokio::test]
async fn unknown_actions_and_roles_in_the_config_are_config_errors() {
    let upstream = "http://127.0.0.1:5001";
    let idp = Idp::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let (_pki, path) = GatewayBuilder::new()
        .service_with(
            "iris",
            "/api/v1/service/iris",
            upstream,
            &format!(
                "auth = \"key\"\n\n{}\n{}",
                idp.toml(),
                r#"
[[role]]
name = "Deployer"
actions = ["deploy/everything"]
not_actions = ["services/keys/lisst"]

[[role_assignment]]
principal = "ci"
role = "NoSuchRole"
"#
            ),
        )
        .write(dir.path());
    let out = process::run(
        &[
            "check-config",
            "--config",
            path.to_str().expect("UTF-8 path"),
        ],
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    for key in [
        "role[0].actions[0]:",
        "role[0].not_actions[0]:",
        "role_assignment[0].role:",
    ] {
        assert!(
            out.stderr.contains(key),
            "stderr names {key}:\n{}",
            out.stderr
        );
    }
}

/// README example: a CI pipeline may rotate the keys of `iris`, and nothing else. The operator
/// defines a narrow role once in the config and assigns it at runtime, scoped to one service.
///
/// ```toml
/// [[role]]
/// name = "KeyRotator"
/// description = "Regenerates a service's keys; cannot read them or change anything else."
/// actions = ["services/keys/regenerate"]
/// ```
///
/// ```sh
/// curl -X POST http://127.0.0.1:9090/role-assignments -H "Authorization: Bearer $OWNER" \
///   -d '{"principal":"ci-pipeline","role":"KeyRotator","scope":"service:iris"}'
/// ```
#[tokio::test]
async fn example_a_ci_principal_may_rotate_keys_on_one_service_only() {
    let upstream = MockUpstream::start().await;
    let idp = Idp::new();
    let gw = GatewayBuilder::new()
        .service_with(
            "iris",
            "/api/v1/service/iris",
            &upstream.url(),
            "auth = \"key\"",
        )
        .service_with(
            "other",
            "/api/v1/service/other",
            &upstream.url(),
            &format!(
                "auth = \"key\"\n\n{}\n{}",
                idp.toml(),
                r#"
[[role]]
name = "KeyRotator"
description = "Regenerates a service's keys; cannot read them or change anything else."
actions = ["services/keys/regenerate"]
"#
            ),
        )
        .start()
        .await;
    gw.wait_ready().await;
    let owner = bootstrap_credential(&gw).await;
    let ci = idp.token("ci-pipeline", &[]);
    let rotate = json!({"keyType": "Primary", "keyValue": null});

    // Before the assignment the pipeline can do nothing.
    post(&gw, "/services/iris/regenerateKeys", &ci, Some(&rotate))
        .await
        .assert_forbidden("services/keys/regenerate", "not yet assigned");

    let assigned = post(
        &gw,
        "/role-assignments",
        &owner,
        Some(&json!({"principal": "ci-pipeline", "role": "KeyRotator", "scope": "service:iris"})),
    )
    .await;
    assert_eq!(assigned.status, StatusCode::CREATED, "{}", assigned.text);

    let old_primary = post(&gw, "/services/iris/listkeys", &owner, None)
        .await
        .json()["primaryKey"]
        .as_str()
        .expect("primaryKey")
        .to_owned();
    let rotated = post(&gw, "/services/iris/regenerateKeys", &ci, Some(&rotate)).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let new_primary = rotated.json()["primaryKey"]
        .as_str()
        .expect("the new primary key is shown once")
        .to_owned();
    assert_ne!(new_primary, old_primary);
    // The untouched secondary stays unread: the role cannot list keys.
    assert_eq!(
        rotated.json()["secondaryKey"],
        Value::Null,
        "{}",
        rotated.text
    );

    // The new key scores at once; the old one is refused.
    for (key, expected) in [
        (&new_primary, StatusCode::OK),
        (&old_primary, StatusCode::UNAUTHORIZED),
    ] {
        let resp = within(
            "scoring with a key",
            gw.client()
                .post(gw.url("/api/v1/service/iris/score"))
                .bearer_auth(key)
                .body("{}")
                .send(),
        )
        .await
        .expect("the gateway answered");
        assert_eq!(resp.status(), expected);
    }

    // Nothing beyond that: not another service, not reading keys, not gateway-wide actions.
    post(&gw, "/services/other/regenerateKeys", &ci, Some(&rotate))
        .await
        .assert_forbidden("services/keys/regenerate", "other service");
    post(&gw, "/services/iris/listkeys", &ci, None)
        .await
        .assert_forbidden("services/keys/list", "cannot read keys");
    get(&gw, "/services", &ci)
        .await
        .assert_forbidden("services/read", "no gateway-wide read");

    let entries = activity(&gw, &owner).await;
    assert!(
        entries
            .iter()
            .any(|e| e["operationName"] == "regenerateKeys"
                && e["initiator"] == "idp:ci-pipeline"
                && e["service"] == "iris"
                && e["result"] == "Succeeded"),
        "{entries:#?}"
    );
}

/// The README's `KeyRotator` (`services/keys/*` minus `list` and `set`): it rotates a slot and sees
/// only that slot's new key, and it cannot choose a key value. Contributor (which can list keys
/// anyway) may do both; a custom role granted `services/keys/set` may set a value without
/// reading the other slot.
#[tokio::test]
async fn a_rotator_neither_reads_the_other_slot_nor_plants_a_key() {
    let upstream = MockUpstream::start().await;
    let idp = Idp::new();
    let gw = gateway(
        &upstream,
        &idp,
        r#"
[[role]]
name = "KeyRotator"
description = "Rotate keys, never read them back"
actions = ["services/keys/*"]
not_actions = ["services/keys/list", "services/keys/set"]

[[role]]
name = "KeySetter"
description = "Installs chosen keys, never reads them back"
actions = ["services/keys/regenerate", "services/keys/set"]

[[role_assignment]]
principal = "rotator"
role = "KeyRotator"
scope = "service:a"

[[role_assignment]]
principal = "setter"
role = "KeySetter"
scope = "service:a"
"#,
    )
    .await;
    let owner = bootstrap_credential(&gw).await;
    let keys = || async { post(&gw, "/services/a/listkeys", &owner, None).await.json() };
    let rotator = idp.token("rotator", &[]);

    let before = keys().await;
    let rotated = post(
        &gw,
        "/services/a/regenerateKeys",
        &rotator,
        Some(&regenerate_secondary()),
    )
    .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let shown = rotated.json();
    let after = keys().await;
    assert_eq!(
        shown["primaryKey"],
        Value::Null,
        "live primary leaked: {shown}"
    );
    assert_eq!(shown["secondaryKey"], after["secondaryKey"], "{shown}");
    assert_ne!(after["secondaryKey"], before["secondaryKey"]);
    assert_eq!(after["primaryKey"], before["primaryKey"]);

    // Planting a known key needs services/keys/set: refused before anything is written.
    let planted = "planted-key-0123456789abcdef0123456789abcdef";
    post(
        &gw,
        "/services/a/regenerateKeys",
        &rotator,
        Some(&json!({"keyType": "Primary", "keyValue": planted})),
    )
    .await
    .assert_forbidden("services/keys/set", "rotator chooses a value");
    assert_eq!(keys().await, after, "a refused keyValue changed the keys");

    // A role granted services/keys/set installs the value and still sees only that slot.
    let setter = idp.token("setter", &[]);
    let set = post(
        &gw,
        "/services/a/regenerateKeys",
        &setter,
        Some(&json!({"keyType": "Primary", "keyValue": planted})),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text);
    assert_eq!(set.json()["primaryKey"], planted);
    assert_eq!(set.json()["secondaryKey"], Value::Null, "{}", set.text);

    // Contributor holds services/keys/list and services/keys/set: the full pair, Azure's shape.
    let contributor = idp.token("contrib", &["Contributor"]);
    let chosen = "contributor-key-0123456789abcdef0123456789ab";
    let full = post(
        &gw,
        "/services/a/regenerateKeys",
        &contributor,
        Some(&json!({"keyType": "Secondary", "keyValue": chosen})),
    )
    .await;
    assert_eq!(full.status, StatusCode::OK, "{}", full.text);
    assert_eq!(
        full.json(),
        json!({"primaryKey": planted, "secondaryKey": chosen})
    );

    let entries = activity(&gw, &owner).await;
    assert!(
        entries
            .iter()
            .any(|e| e["operationName"] == "regenerateKeys"
                && e["initiator"] == "idp:rotator"
                && e["result"] == "Denied"
                && e["reason"] == "missing permission services/keys/set"),
        "{entries:#?}"
    );
}

/// An identity token whose `sub` is one of scoregate's own initiators (`bootstrap-admin`, `cli`,
/// `file-watch`, `signal`, `anonymous`) is recorded, and issued tokens, as `idp:<sub>`: it cannot
/// pass for the bootstrap Owner or for a change made on the host.
#[tokio::test]
async fn identity_subjects_cannot_impersonate_built_in_initiators() {
    let upstream = MockUpstream::start().await;
    let idp = Idp::new();
    let gw = gateway(&upstream, &idp, "").await;
    let reserved = [
        "bootstrap-admin",
        "cli",
        "file-watch",
        "signal",
        "anonymous",
    ];
    for name in reserved {
        let token = idp.token(name, &["Contributor"]);
        let issued = post(&gw, "/services/tok/token", &token, None).await;
        assert_eq!(issued.status, StatusCode::OK, "{name}: {}", issued.text);
        let access = issued.json()["accessToken"]
            .as_str()
            .expect("accessToken")
            .to_owned();
        assert_eq!(
            support::jwt::segment(&access, 1)["sub"],
            format!("idp:{name}"),
            "the issued token's subject for identity sub {name}"
        );
        let reloaded = post(&gw, "/reload", &token, None).await;
        assert_eq!(reloaded.status, StatusCode::OK, "{name}: {}", reloaded.text);
    }
    let entries = activity(&gw, &bootstrap_credential(&gw).await).await;
    for name in reserved {
        for operation in ["issueToken", "reloadConfig"] {
            let by = |initiator: &str| {
                entries
                    .iter()
                    .filter(|e| e["operationName"] == operation && e["initiator"] == initiator)
                    .count()
            };
            assert_eq!(
                by(&format!("idp:{name}")),
                1,
                "{operation} by idp:{name}: {entries:#?}"
            );
            assert_eq!(by(name), 0, "{operation} shown as {name}: {entries:#?}");
        }
    }
}
