//! Every configuration error, by the exact message an operator sees.

use super::*;

/// A temp directory with a valid certificate pair as `good.crt` / `good.key`.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        std::fs::write(dir.path().join("good.crt"), ck.cert.pem()).expect("write");
        std::fs::write(dir.path().join("good.key"), ck.signing_key.serialize_pem()).expect("write");
        std::fs::write(dir.path().join("garbage.key"), "not a key").expect("write");
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("scoregate.toml")
    }

    fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        parse_and_validate(text, &self.path())
    }

    fn issues(&self, text: &str) -> Vec<String> {
        match self.parse(text) {
            Ok(_) => panic!("config unexpectedly valid:\n{text}"),
            Err(e) => e.issues(),
        }
    }
}

const MINIMAL: &str = r#"
[[service]]
name = "iris"
route = "/api/v1/service/iris"
upstream = "http://127.0.0.1:5001"
"#;

#[test]
fn minimal_config_gets_documented_defaults() {
    let d = Dir::new();
    let c = d.parse(MINIMAL).expect("valid");
    assert_eq!(c.server.listen, "127.0.0.1:8443".parse().expect("addr"));
    assert_eq!(
        c.server.admin_listen,
        "127.0.0.1:9901".parse().expect("addr")
    );
    assert_eq!(
        c.server.probe_listen, None,
        "probes stay on the admin listener"
    );
    assert_eq!(c.server.metrics_listen, None);
    assert_eq!(c.server.state_dir, d.dir.path().join("state"));
    assert_eq!(c.server.compute_type, "AKS");
    assert_eq!(c.server.drain_timeout, Duration::from_secs(10));
    assert_eq!(c.server.idle_release, Duration::from_millis(250));
    assert!(c.server.tls.is_none());
    let s = &c.services[0];
    assert_eq!(s.route, "/api/v1/service/iris");
    assert_eq!(s.auth, AuthMode::None);
    assert_eq!(s.scoring_timeout, DEFAULT_SCORING_TIMEOUT);
    assert_eq!(s.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    assert_eq!(s.upstream_keepalive, Duration::from_secs(4));
    assert_eq!(s.upstream.to_string(), "http://127.0.0.1:5001");
    assert_eq!(
        &*s.role_name, "iris",
        "RoleName defaults to the service name"
    );
    assert_eq!(&*c.telemetry.role_name, "scoregate");
}

#[test]
fn otlp_export_settings() {
    let d = Dir::new();
    let c = d
        .parse(&format!(
            "[telemetry.otlp]\nendpoint = \"http://127.0.0.1:4318\"\n{MINIMAL}"
        ))
        .expect("valid");
    let otlp = c.telemetry.otlp.expect("otlp on");
    assert_eq!(otlp.endpoint, "http://127.0.0.1:4318/v1/traces");
    assert_eq!(otlp.logs_endpoint, "http://127.0.0.1:4318/v1/logs");
    assert_eq!(
        (
            otlp.queue.capacity,
            otlp.queue.batch_size,
            otlp.queue.batch_delay
        ),
        (4096, 512, std::time::Duration::from_millis(200))
    );
    for (extra, logs) in [
        (
            "endpoint = \"http://c:4318/otel/v1/traces\"",
            "http://c:4318/otel/v1/logs",
        ),
        (
            "endpoint = \"http://c:4318/spans\"",
            "http://c:4318/v1/logs",
        ),
        (
            "endpoint = \"http://c:4318\"\nlogs_endpoint = \"http://d:4318\"",
            "http://d:4318/v1/logs",
        ),
    ] {
        let c = d
            .parse(&format!("[telemetry.otlp]\n{extra}\n{MINIMAL}"))
            .expect("valid");
        assert_eq!(
            c.telemetry.otlp.expect("otlp").logs_endpoint,
            logs,
            "{extra}"
        );
    }
    assert!(d.parse(MINIMAL).expect("valid").telemetry.otlp.is_none());
    let issues = d.issues(&format!(
        "[telemetry.otlp]\nendpoint = \"grpc://collector:4317\"\nqueue_capacity = 1\n{MINIMAL}"
    ));
    assert_eq!(
        issues,
        [
            "telemetry.otlp.endpoint: \"grpc://collector:4317\" is not an http(s)://host:port[/path] URL (OTLP/HTTP)",
            "telemetry.otlp.queue_capacity: 1 is not between 16 and 1048576",
        ]
    );
    assert_eq!(
        d.issues(&format!("[telemetry.otlp]\n{MINIMAL}")),
        ["telemetry.otlp.endpoint: is required in [telemetry.otlp]"]
    );
}

#[test]
fn otlp_https_ca_and_headers_file() {
    let d = Dir::new();
    std::fs::write(
        d.dir.path().join("otlp-headers"),
        "# key\nx-api-key: abc\n\nx-tenant: t1\n",
    )
    .expect("write");
    let c = d
        .parse(&format!(
            "[telemetry.otlp]\nendpoint = \"https://collector:4318\"\nca = \"good.crt\"\nheaders_file = \"otlp-headers\"\n{MINIMAL}"
        ))
        .expect("valid");
    let otlp = c.telemetry.otlp.expect("otlp on");
    assert_eq!(otlp.endpoint, "https://collector:4318/v1/traces");
    assert_eq!(otlp.ca, Some(d.dir.path().join("good.crt")));
    let names: Vec<&str> = otlp.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["x-api-key", "x-tenant"]);
    assert!(otlp.headers.iter().all(|(_, v)| v.is_sensitive()));
    assert!(
        !format!("{otlp:?}").contains("abc"),
        "Debug hides header values"
    );

    std::fs::write(d.dir.path().join("bad-headers"), "x-api-key abc\n").expect("write");
    std::fs::write(
        d.dir.path().join("reserved-headers"),
        "Content-Type: text/plain\n",
    )
    .expect("write");
    let bad = d.dir.path().join("bad-headers").display().to_string();
    let reserved = d.dir.path().join("reserved-headers").display().to_string();
    for (file, expected) in [
        (
            "bad-headers",
            format!("telemetry.otlp.headers_file: {bad} line 1: expected `Name: value`"),
        ),
        (
            "reserved-headers",
            format!(
                "telemetry.otlp.headers_file: {reserved} line 1: content-type is set by the exporter"
            ),
        ),
    ] {
        assert_eq!(
            d.issues(&format!(
                "[telemetry.otlp]\nendpoint = \"http://127.0.0.1:4318\"\nheaders_file = \"{file}\"\n{MINIMAL}"
            )),
            [expected]
        );
    }
    assert_eq!(
        d.issues(&format!(
            "[telemetry.otlp]\nendpoint = \"http://127.0.0.1:4318\"\nca = \"good.crt\"\n{MINIMAL}"
        )),
        ["telemetry.otlp.ca: applies to an https:// endpoint only"]
    );
}

#[test]
fn role_names_are_configurable_and_checked() {
    let d = Dir::new();
    let c = d
        .parse(&format!(
            "[telemetry]\nrole_name = \"edge\"\n{MINIMAL}role_name = \"iris-model\"\n"
        ))
        .expect("valid");
    assert_eq!(&*c.services[0].role_name, "iris-model");
    assert_eq!(&*c.telemetry.role_name, "edge");
    let issues = d.issues(&format!(
        "[telemetry]\nrole_name = \"a\\nb\"\n{MINIMAL}role_name = \"\"\n"
    ));
    assert_eq!(
        issues,
        [
            "service[0].role_name: must be 1 to 256 printable characters",
            "telemetry.role_name: must be 1 to 256 printable characters",
        ]
    );
}

#[test]
fn full_example_from_the_issue_is_valid() {
    let d = Dir::new();
    let c = d
        .parse(
            r#"
[server]
listen = "127.0.0.1:8443"
admin_listen = "127.0.0.1:9901"
state_dir = "state"
compute_type = "AKS"
drain_timeout_ms = 10000

[server.tls]
cert = "good.crt"
key = "good.key"

[[service]]
name = "iris"
route = "/api/v1/service/iris/"
upstream = "http://127.0.0.1:5001/base/"
auth = "none"
scoring_timeout_ms = 60000

[[service]]
name = "sidecar"
route = "/"
upstream = "http://[::1]:5002"
"#,
        )
        .expect("valid");
    let tls = c.server.tls.as_ref().expect("tls");
    assert_eq!(tls.cert_path, d.dir.path().join("good.crt"));
    assert_eq!(
        c.services[0].route, "/api/v1/service/iris",
        "trailing slash normalised"
    );
    assert_eq!(c.services[0].upstream.base_path, "/base");
    assert_eq!(c.services[1].route, "", "root route");
}

#[test]
fn every_problem_is_reported_together_with_its_key() {
    let d = Dir::new();
    let issues = d.issues(
        r#"
[server]
listen = "localhost:99999"
admin_listen = "nowhere"
drain_timeout_ms = 100000000000
tls_handshake_timeout_ms = 0
idle_release_ms = 100000000000

[server.tls]
cert = "missing.crt"
key = "good.key"

[[service]]
name = "bad name!"
route = "api"
upstream = "htp://x"
auth = "both"

[[service]]
name = "iris"
route = "/a/../b"
upstream = "http://user:pw@host:1"
health_path = "nope"
upstream_keepalive_ms = 100000000000

[[service]]
name = "iris"
route = "/iris"
"#,
    );
    let expected = [
        r#"server.listen: "localhost:99999" is not an IP address and port (e.g. "127.0.0.1:8443" or "[::1]:8443")"#,
        r#"server.admin_listen: "nowhere" is not an IP address and port (e.g. "127.0.0.1:8443" or "[::1]:8443")"#,
        "server.drain_timeout_ms: 100000000000 exceeds the maximum of 86400000 ms (one day)",
        "server.tls_handshake_timeout_ms: 0 is below the minimum of 1 ms",
        "server.idle_release_ms: 100000000000 exceeds the maximum of 86400000 ms (one day)",
        "service[0].name: \"bad name!\" must be 1-64 characters of a-z, A-Z, 0-9, '-' and '_', starting with a letter or digit",
        "service[0].route: \"api\" must start with '/'",
        "service[0].upstream: \"htp://x\" is not an http(s) URL or unix:/socket/path",
        r#"service[0].auth: "both" is not one of "none", "key", "token" (exactly one mode per service)"#,
        "service[1].route: \"/a/../b\" must not contain empty, '.' or '..' segments",
        "service[1].upstream: \"http://user:pw@host:1\" must not carry credentials",
        "service[1].health_path: \"nope\" is not an absolute path",
        "service[1].upstream_keepalive_ms: 100000000000 exceeds the maximum of 86400000 ms (one day)",
        "service[2].upstream: is required",
        "service[2].name: \"iris\" is used by an earlier service",
    ];
    for e in expected {
        assert!(
            issues.iter().any(|i| i == e),
            "missing {e:?} in\n{issues:#?}"
        );
    }
    let cert = issues
        .iter()
        .find(|i| i.starts_with("server.tls.cert: cannot read"))
        .unwrap_or_else(|| panic!("no cert issue in {issues:#?}"));
    assert!(cert.contains("missing.crt"), "{cert}");
    assert_eq!(issues.len(), expected.len() + 1, "{issues:#?}");
}

#[test]
fn tls_problems_name_the_right_field() {
    let d = Dir::new();
    let issues = d.issues(&format!(
        "[server.tls]\ncert = \"good.crt\"\nkey = \"garbage.key\"\n{MINIMAL}"
    ));
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(
        issues[0].starts_with(
            "server.tls.key: cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1) from"
        ),
        "{issues:?}"
    );

    let issues = d.issues(&format!("[server.tls]\ncert = \"good.crt\"\n{MINIMAL}"));
    assert_eq!(
        issues,
        ["server.tls.key: is required when [server.tls] is present"]
    );
}

#[test]
fn duplicate_routes_and_shared_listener_addresses_are_refused() {
    let d = Dir::new();
    let issues = d.issues(
        r#"
[server]
listen = "127.0.0.1:8443"
admin_listen = "127.0.0.1:8443"

[[service]]
name = "a"
route = "/x"
upstream = "http://127.0.0.1:1"

[[service]]
name = "b"
route = "/x/"
upstream = "http://127.0.0.1:2"
"#,
    );
    assert_eq!(
        issues,
        [
            "server.admin_listen: 127.0.0.1:8443 is also server.listen; each listener needs its own address",
            "service[1].route: \"/x\" is used by an earlier service",
        ]
    );
}

#[test]
fn probe_and_metrics_listeners_are_parsed_and_must_not_share_an_address() {
    let d = Dir::new();
    let c = d
        .parse(&format!(
            "[server]\nprobe_listen = \"0.0.0.0:9902\"\nmetrics_listen = \"[::]:9903\"\n{MINIMAL}"
        ))
        .expect("valid");
    assert_eq!(
        c.server.probe_listen,
        Some("0.0.0.0:9902".parse().expect("addr"))
    );
    assert_eq!(
        c.server.metrics_listen,
        Some("[::]:9903".parse().expect("addr"))
    );
    let issues = d.issues(&format!(
        r#"[server]
listen = "127.0.0.1:8443"
admin_listen = "127.0.0.1:9901"
probe_listen = "127.0.0.1:9901"
metrics_listen = "somewhere"
{MINIMAL}"#
    ));
    assert_eq!(
        issues,
        [
            r#"server.metrics_listen: "somewhere" is not an IP address and port (e.g. "127.0.0.1:8443" or "[::1]:8443")"#,
            "server.probe_listen: 127.0.0.1:9901 is also server.admin_listen; each listener needs its own address",
        ]
    );
    let issues = d.issues(&format!(
        "[server]\nprobe_listen = \"127.0.0.1:9902\"\nmetrics_listen = \"127.0.0.1:9902\"\n{MINIMAL}"
    ));
    assert_eq!(
        issues,
        [
            "server.metrics_listen: 127.0.0.1:9902 is also server.probe_listen; each listener needs its own address"
        ]
    );
}

#[test]
fn admin_token_file_must_exist_and_be_long_enough() {
    let d = Dir::new();
    let c = d.parse(MINIMAL).expect("valid");
    assert_eq!(
        c.server.admin_token_file, None,
        "default: state_dir/admin.token"
    );
    std::fs::write(
        d.dir.path().join("admin.token"),
        format!("{}\n", "a".repeat(40)),
    )
    .expect("write");
    std::fs::write(d.dir.path().join("short.token"), "short\n").expect("write");
    let c = d
        .parse(&format!(
            "[server]\nadmin_token_file = \"admin.token\"\n{MINIMAL}"
        ))
        .expect("valid");
    assert_eq!(
        c.server.admin_token_file,
        Some(d.dir.path().join("admin.token"))
    );
    let short = d.dir.path().join("short.token");
    assert_eq!(
        d.issues(&format!(
            "[server]\nadmin_token_file = \"short.token\"\n{MINIMAL}"
        )),
        [format!(
            "server.admin_token_file: {} must hold at least 32 visible characters",
            short.display()
        )]
    );
    let issues = d.issues(&format!(
        "[server]\nadmin_token_file = \"nope.token\"\n{MINIMAL}"
    ));
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(
        issues[0].starts_with("server.admin_token_file: cannot read "),
        "{issues:?}"
    );
}

#[test]
fn no_services_is_an_error() {
    let d = Dir::new();
    assert_eq!(
        d.issues(""),
        ["service: at least one [[service]] is required"]
    );
}

#[test]
fn unknown_fields_and_wrong_types_fail_parsing_with_location() {
    let d = Dir::new();
    let err = d
        .parse(&format!("{MINIMAL}scoring_timout_ms = 5\n"))
        .expect_err("typo");
    assert_eq!(
        err.issues(),
        [
            "service[0].scoring_timout_ms: unknown key (line 6, column 1); did you mean `scoring_timeout_ms`?"
        ]
    );

    // Shape and value problems of the whole file together, in file order, each once.
    let issues = d.issues(
        "[server]\ndrain_timeout_ms = \"ten\"\nlisten = \"nowhere\"\n[telemetri]\n\n[[service]]\nname = \"iris\"\nroute = \"/iris\"\nmax_concurent_requests = 4\nupstream = 5\nauth = \"magic\"\n",
    );
    assert_eq!(
        issues,
        [
            "server.drain_timeout_ms: invalid type: string \"ten\", expected u64 (line 2, column 20)",
            "telemetri: unknown key (line 4, column 2); did you mean `telemetry`?",
            "service[0].max_concurent_requests: unknown key (line 9, column 1); did you mean `max_concurrent_requests`?",
            "service[0].upstream: invalid type: integer `5`, expected a string (line 10, column 12)",
            "server.listen: \"nowhere\" is not an IP address and port (e.g. \"127.0.0.1:8443\" or \"[::1]:8443\")",
            "service[0].auth: \"magic\" is not one of \"none\", \"key\", \"token\" (exactly one mode per service)",
        ]
    );
}

#[test]
fn https_upstreams_are_accepted_with_an_optional_ca() {
    let d = Dir::new();
    let c = d
        .parse(&MINIMAL.replace("http://127.0.0.1:5001", "https://model:443"))
        .expect("https upstream");
    assert_eq!(c.services[0].upstream.scheme, http::uri::Scheme::HTTPS);
    let issues = d.issues(&format!("{MINIMAL}upstream_ca = \"missing-ca.pem\"\n"));
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(
        issues[0].starts_with("service[0].upstream_ca: cannot read CA file"),
        "{issues:?}"
    );
}

#[test]
fn unix_socket_upstreams_take_an_optional_base_path_after_a_colon() {
    let d = Dir::new();
    for (text, socket, base, shown) in [
        (
            "unix:/run/model/model.sock",
            "/run/model/model.sock",
            "",
            "unix:/run/model/model.sock",
        ),
        (
            "unix:/run/m.sock:/v2/",
            "/run/m.sock",
            "/v2",
            "unix:/run/m.sock:/v2",
        ),
        ("unix:/run/m.sock:/", "/run/m.sock", "", "unix:/run/m.sock"),
    ] {
        let c = d
            .parse(&MINIMAL.replace("http://127.0.0.1:5001", text))
            .expect(text);
        let upstream = &c.services[0].upstream;
        assert_eq!(
            upstream.socket.as_deref(),
            Some(Path::new(socket)),
            "{text}"
        );
        assert_eq!(upstream.base_path, base, "{text}");
        assert_eq!(upstream.authority.as_str(), "localhost", "{text}");
        assert_eq!(upstream.to_string(), shown, "{text}");
    }
    for (text, why) in [
        ("unix:", "needs an absolute socket path"),
        ("unix:/run/model/", "names a directory, not a socket"),
        ("unix:/run/m.sock:/a?b=1", "must not have a query"),
        (
            r"unix:/run/m\u0001.sock",
            "has a control character in its socket path",
        ),
    ] {
        let issues = d.issues(&MINIMAL.replace("http://127.0.0.1:5001", text));
        assert_eq!(issues.len(), 1, "{text}: {issues:?}");
        assert!(issues[0].contains(why), "{text}: {issues:?}");
    }
}

#[test]
fn admission_network_and_rate_settings() {
    let d = Dir::new();
    let c = d
        .parse(&format!(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n{MINIMAL}max_concurrent_requests = 4\nmax_request_wait_ms = 250\nallow_cidrs = [\"127.0.0.0/8\", \"fd00::/8\"]\nrate_limit = {{ requests_per_second = 5.0, burst = 10 }}\n"
        ))
        .expect("valid");
    let s = &c.services[0];
    assert_eq!(s.max_concurrent_requests, 4);
    assert_eq!(s.max_request_wait, Duration::from_millis(250));
    assert_eq!(s.max_queue_length, 100);
    assert_eq!(s.allow_cidrs.as_ref().map(Vec::len), Some(2));
    assert_eq!(s.rate_limit.map(|r| r.burst), Some(10));
    assert_eq!(c.server.trusted_proxies.len(), 2);

    let issues = d.issues(&format!(
        "{MINIMAL}max_concurrent_requests = 0\nallow_cidrs = [\"10.0.0.0/33\", \"nope\"]\nrate_limit = {{ requests_per_second = 0.0 }}\n"
    ));
    for expected in [
        "service[0].max_concurrent_requests: 0 is not between 1 and 1000000",
        "service[0].allow_cidrs[0]: \"10.0.0.0/33\" is not an IP address or CIDR (e.g. \"10.0.0.0/8\", \"::1/128\")",
        "service[0].allow_cidrs[1]: \"nope\" is not an IP address or CIDR (e.g. \"10.0.0.0/8\", \"::1/128\")",
        "service[0].rate_limit.requests_per_second: is required and must be between 0 (exclusive) and 1000000",
    ] {
        assert!(
            issues.iter().any(|i| i == expected),
            "missing {expected:?} in {issues:#?}"
        );
    }
}

#[test]
fn exactly_one_auth_mode_per_service() {
    let d = Dir::new();
    let issues = d.issues(&format!(
        "{MINIMAL}auth = \"key\"\n[service.token]\nalgorithm = \"ES256\"\n"
    ));
    assert_eq!(
        issues,
        [
            "service[0].token: applies only to auth = \"token\" (this service uses \"key\"; exactly one mode per service)"
        ]
    );
    let issues = d.issues(&format!(
        "{MINIMAL}auth = \"token\"\nkeys_file = \"good.key\"\n"
    ));
    assert_eq!(
        issues,
        ["service[0].keys_file: applies only to auth = \"key\" (this service uses \"token\")"]
    );
}

#[test]
fn token_settings_are_checked() {
    let d = Dir::new();
    let c = d
        .parse(&format!("{MINIMAL}auth = \"token\"\n"))
        .expect("defaults");
    let t = c.services[0].token.as_ref().expect("token config");
    assert_eq!(t.algorithm, jsonwebtoken::Algorithm::ES256);
    assert_eq!(
        (
            t.lifetime.as_secs(),
            t.refresh_after.as_secs(),
            t.leeway.as_secs()
        ),
        (3600, 1800, 60)
    );
    let issues = d.issues(&format!(
        "{MINIMAL}auth = \"token\"\n[service.token]\nalgorithm = \"none\"\nlifetime_s = 60\nrefresh_after_s = 60\n[[service.token.trusted_issuer]]\nissuer = \"https://login.example\"\n"
    ));
    for expected in [
        "service[0].token.algorithm: \"none\" is not one of \"ES256\", \"ES384\", \"RS256\", \"RS384\", \"RS512\", \"PS256\", \"EdDSA\", \"HS256\"",
        "service[0].token.refresh_after_s: 60 must be less than lifetime_s (60)",
        "service[0].token.trusted_issuer[0].audience: is required",
        "service[0].token.trusted_issuer[0]: needs exactly one of public_keys, jwks_file, jwks_url",
    ] {
        assert!(
            issues.iter().any(|i| i == expected),
            "missing {expected:?} in {issues:#?}"
        );
    }
    let issues = d.issues(&format!(
        "{MINIMAL}auth = \"token\"\n[[service.token.trusted_issuer]]\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"http://example.com/jwks\"\n"
    ));
    assert_eq!(
        issues,
        [
            "service[0].token.trusted_issuer[0].jwks_url: \"http://example.com/jwks\" must be https (plain http only to loopback)"
        ]
    );
}

#[test]
fn unreadable_file_is_a_read_error() {
    let err = load_and_validate(Path::new("/nonexistent/scoregate.toml")).expect_err("missing");
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("cannot read config file /nonexistent/scoregate.toml")
    );
}

#[test]
fn record_queue_bytes_default_and_bounds() {
    let d = Dir::new();
    let c = d.parse(MINIMAL).expect("valid");
    assert_eq!(c.telemetry.queue_max_bytes, 16 * 1024 * 1024);
    let c = d
        .parse(&format!("[telemetry]\nqueue_max_bytes = 65536\n{MINIMAL}"))
        .expect("64 KiB is allowed");
    assert_eq!(c.telemetry.queue_max_bytes, 65_536);
    for bad in ["1024", "2147483648"] {
        let issues = d.issues(&format!("[telemetry]\nqueue_max_bytes = {bad}\n{MINIMAL}"));
        assert_eq!(
            issues,
            [format!(
                "telemetry.queue_max_bytes: {bad} is not between 65536 (64 KiB) and 1073741824 (1 GiB)"
            )]
        );
    }
}

#[test]
fn admin_listener_on_the_network_warns_and_admin_tls_is_validated() {
    let d = Dir::new();
    let warnings = |server: &str| {
        d.parse(&format!("[server]\n{server}\n{MINIMAL}"))
            .expect("valid")
            .server
            .warnings()
    };
    assert!(warnings("").is_empty(), "loopback by default");
    let open = warnings("admin_listen = \"0.0.0.0:9901\"");
    assert_eq!(open.len(), 2, "{open:?}");
    assert!(
        open[0].starts_with("server.admin_listen: 0.0.0.0:9901 is not a loopback address")
            && open[0].contains("server.admin_allow_cidrs is unset"),
        "{open:?}"
    );
    assert!(
        open[1].contains("[server.admin_tls] is not set"),
        "{open:?}"
    );
    let guarded = warnings(
        "admin_listen = \"0.0.0.0:9901\"\nadmin_allow_cidrs = [\"10.0.0.0/8\"]\n\
         admin_tls = { cert = \"good.crt\", key = \"good.key\" }",
    );
    assert!(guarded.is_empty(), "{guarded:?}");

    let issues = d.issues(&format!(
        "[server]\nadmin_tls = {{ cert = \"missing.crt\" }}\n{MINIMAL}"
    ));
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(
        issues[0],
        "server.admin_tls.key: is required when [server.admin_tls] is present"
    );
    let issues = d.issues(&format!(
        "[server]\nadmin_tls = {{ cert = \"good.crt\", key = \"garbage.key\" }}\n{MINIMAL}"
    ));
    assert!(
        issues.len() == 1 && issues[0].starts_with("server.admin_tls.key: "),
        "{issues:?}"
    );
}

#[test]
fn lingering_bounds_have_defaults_and_are_validated_by_key() {
    let d = Dir::new();
    let c = d.parse(MINIMAL).expect("valid");
    assert_eq!(c.server.lingering_timeout, Duration::from_secs(5));
    assert_eq!(c.server.lingering_max_bytes, 64 * 1024 * 1024);
    let issues = d.issues(&format!(
        "[server]\nlingering_timeout_ms = 100000000000\nlingering_max_bytes = 2000000000000\n{MINIMAL}"
    ));
    assert_eq!(
        issues,
        [
            "server.lingering_timeout_ms: 100000000000 exceeds the maximum of 86400000 ms (one day)",
            "server.lingering_max_bytes: 2000000000000 exceeds the maximum of 1099511627776 (1 TiB)",
        ]
    );
}

#[test]
fn slow_client_bounds_have_defaults_and_are_validated_by_key() {
    let d = Dir::new();
    let c = d.parse(MINIMAL).expect("valid");
    let s = &c.services[0];
    assert_eq!(s.send_timeout, Duration::from_secs(30));
    assert_eq!(s.request_timeout, None);
    assert_eq!(s.min_body_rate, 500);
    assert_eq!(s.min_body_rate_window, Duration::from_secs(10));
    let issues = d.issues(&format!(
        "{MINIMAL}send_timeout_ms = 0\nrequest_timeout_ms = 100000000000\nmin_body_rate_window_ms = 10\n"
    ));
    assert_eq!(
        issues,
        [
            "service[0].send_timeout_ms: 0 is below the minimum of 1 ms",
            "service[0].request_timeout_ms: 100000000000 exceeds the maximum of 86400000 ms (one day)",
            "service[0].min_body_rate_window_ms: 10 is below the minimum of 100 ms",
        ]
    );
}

#[test]
fn http2_lifetime_and_per_ip_bounds_have_defaults_and_are_validated_by_key() {
    let d = Dir::new();
    let c = d.parse(MINIMAL).expect("valid");
    assert_eq!(c.server.http2_idle_timeout, Duration::from_secs(30));
    assert_eq!(c.server.http2_max_connection_age, None);
    assert_eq!(c.server.max_connections_per_ip, 0);
    let issues = d.issues(&format!(
        "[server]\nhttp2_idle_timeout_ms = 0\nhttp2_max_connection_age_ms = 100000000000\nmax_connections_per_ip = 2000000\n{MINIMAL}"
    ));
    assert_eq!(
        issues,
        [
            "server.http2_idle_timeout_ms: 0 is below the minimum of 1 ms",
            "server.http2_max_connection_age_ms: 100000000000 exceeds the maximum of 86400000 ms (one day)",
            "server.max_connections_per_ip: 2000000 is not between 0 and 1000000",
        ]
    );
}

#[test]
fn azure_monitor_connection_string() {
    let d = Dir::new();
    let write = |name: &str, text: &str| {
        std::fs::write(d.dir.path().join(name), text).expect("write");
        format!("[telemetry.azure_monitor]\nconnection_string_file = \"{name}\"\n{MINIMAL}")
    };
    let c = d
        .parse(&write(
            "cs",
            "InstrumentationKey=abc-123;IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/;LiveEndpoint=https://x/\n",
        ))
        .expect("valid");
    let am = c.telemetry.azure_monitor.expect("on");
    assert_eq!(
        am.endpoint,
        "https://westeurope-5.in.applicationinsights.azure.com/v2.1/track"
    );
    assert_eq!(am.instrumentation_key, "abc-123");
    assert!(
        !format!("{am:?}").contains("abc-123"),
        "Debug hides the key"
    );
    let c = d
        .parse(&write("plain", "instrumentationkey=k1"))
        .expect("valid");
    assert_eq!(
        c.telemetry.azure_monitor.expect("on").endpoint,
        "https://dc.services.visualstudio.com/v2.1/track"
    );
    let path = |name: &str| d.dir.path().join(name).display().to_string();
    for (name, text, problem) in [
        (
            "nokey",
            "IngestionEndpoint=https://x/",
            "no valid InstrumentationKey",
        ),
        (
            "garbage",
            "just text",
            "expected Name=value pairs separated by ';'",
        ),
        (
            "ftp",
            "InstrumentationKey=k;IngestionEndpoint=ftp://x/",
            "IngestionEndpoint \"ftp://x/\" is not an http(s):// URL",
        ),
    ] {
        assert_eq!(
            d.issues(&write(name, text)),
            [format!(
                "telemetry.azure_monitor.connection_string_file: {}: {problem}",
                path(name)
            )]
        );
    }
    assert_eq!(
        d.issues(&format!("[telemetry.azure_monitor]\n{MINIMAL}")),
        [
            "telemetry.azure_monitor.connection_string_file: is required in [telemetry.azure_monitor]"
        ]
    );
}
