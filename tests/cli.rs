//! The `scoregate` command line: `check-config`, `run` refusing a bad configuration before it
//! binds anything, and the self-contained `demo`.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::process::{self, free_port};
use support::{GatewayBuilder, within, within_for};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// `EX_CONFIG` from `sysexits.h`.
const EXIT_CONFIG: i32 = 64;

const QUICK: Duration = Duration::from_secs(15);

/// A configuration with five problems in three tables.
const BAD: &str = r#"
[server]
listen = "not-an-address"
drain_timeout_ms = 999999999999

[[service]]
name = "iris"
route = "api/no-leading-slash"
upstream = "ftp://example.com"
auth = "magic"
"#;

#[tokio::test]
async fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_pki, path) = GatewayBuilder::new()
        .service("iris", "/api/v1/service/iris", "http://127.0.0.1:5001")
        .write(dir.path());
    let out = process::run(
        &[
            "check-config",
            "--config",
            path.to_str().expect("UTF-8 path"),
        ],
        QUICK,
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("OK (1 service(s)") && out.stdout.contains("TLS on"),
        "{out:?}"
    );
}

#[tokio::test]
async fn check_config_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, BAD).expect("write bad config");
    let out = process::run(
        &[
            "check-config",
            "--config",
            path.to_str().expect("UTF-8 path"),
        ],
        QUICK,
    )
    .await;
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{out:?}");
    for key in [
        "server.listen:",
        "server.drain_timeout_ms:",
        "service[0].route:",
        "service[0].upstream:",
        "service[0].auth:",
    ] {
        assert!(
            out.stderr.contains(key),
            "stderr lacks {key}:\n{}",
            out.stderr
        );
    }
    assert!(out.stderr.contains("5 problem(s)"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "nothing on stdout: {:?}", out.stdout);
}

#[tokio::test]
async fn check_config_reports_a_missing_file_with_64() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("absent.toml");
    let out = process::run(
        &[
            "check-config",
            "--config",
            path.to_str().expect("UTF-8 path"),
        ],
        QUICK,
    )
    .await;
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{out:?}");
    assert!(out.stderr.contains("absent.toml"), "{}", out.stderr);
}

#[tokio::test]
async fn run_refuses_a_bad_config_before_binding() {
    // The scoring address is held by this test: `run` names it among the problems and binds
    // nothing (no state directory either).
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let held_addr = held.local_addr().expect("held address");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    let text = format!(
        "[server]\nlisten = \"{held_addr}\"\nadmin_listen = \"{}\"\n\n\
         [[service]]\nname = \"iris\"\nroute = \"/iris\"\nupstream = \"http://127.0.0.1:5001\"\nauth = \"magic\"\n",
        free_port()
    );
    std::fs::write(&path, text).expect("write config");
    let out = process::run(
        &["run", "--config", path.to_str().expect("UTF-8 path")],
        QUICK,
    )
    .await;
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{out:?}");
    assert!(out.stderr.contains("service[0].auth:"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("server.listen: cannot listen on {held_addr}:")),
        "{}",
        out.stderr
    );
    assert!(
        !dir.path().join("state").exists(),
        "no state directory was created"
    );

    // A valid file with the same port: the clash alone, naming the listener, still before
    // anything is created.
    let good = GatewayBuilder::new()
        .listen(held_addr, free_port())
        .service("iris", "/iris", "http://127.0.0.1:5001");
    let (_pki, path) = good.write(dir.path());
    let out = process::run(
        &["run", "--config", path.to_str().expect("UTF-8 path")],
        QUICK,
    )
    .await;
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{out:?}");
    assert!(out.stderr.contains("1 problem(s)"), "{}", out.stderr);
    let line = format!("server.listen: cannot listen on {held_addr}: ");
    assert!(
        out.stderr.contains(&line) && out.stderr.to_lowercase().contains("in use"),
        "{}",
        out.stderr
    );
    drop(held);
}

/// A file with problems of every kind: a misspelt key, a wrong type, a bad value, a state
/// directory that cannot be created, a record file whose directory is missing, a listen address
/// in use. `check-config` lists all of them in one run (text and JSON alike) and `run` says the
/// same.
#[tokio::test]
async fn check_config_reports_every_kind_of_problem_at_once() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let held_addr = held.local_addr().expect("held address");
    let dir = tempfile::tempdir().expect("temp dir");
    // A regular file where the state directory's parent should be: no user, root included, can
    // create the state directory there.
    std::fs::write(dir.path().join("blocker"), "").expect("write blocker");
    let path = dir.path().join("many.toml");
    let text = format!(
        "[server]\nlisten = \"{held_addr}\"\nadmin_listen = \"{}\"\nstate_dir = \"blocker/state\"\n\
         drain_timout_ms = 5\nheader_read_timeout_ms = \"30s\"\n\n\
         [telemetry]\noutput = \"file\"\nfile = \"missing/records.jsonl\"\n\n\
         [[service]]\nname = \"iris\"\nroute = \"/iris\"\nupstream = \"http://127.0.0.1:5001\"\n\
         auth = \"magic\"\nmax_concurent_requests = 4\n",
        free_port()
    );
    std::fs::write(&path, text).expect("write config");
    let path = path.to_str().expect("UTF-8 path");

    let text_out = process::run(&["check-config", "--config", path], QUICK).await;
    assert_eq!(text_out.status.code(), Some(EXIT_CONFIG), "{text_out:?}");
    let expected = [
        "server.drain_timout_ms: unknown key (line 5, column 1); did you mean `drain_timeout_ms`?"
            .to_owned(),
        "server.header_read_timeout_ms: invalid type: string \"30s\", expected u64 (line 6, column 26)"
            .to_owned(),
        "service[0].max_concurent_requests: unknown key (line 17, column 1); did you mean `max_concurrent_requests`?"
            .to_owned(),
        "service[0].auth: \"magic\" is not one of \"none\", \"key\", \"token\" (exactly one mode per service)"
            .to_owned(),
        format!(
            "server.state_dir: {} cannot be created: {} is not a directory",
            dir.path().join("blocker/state").display(),
            dir.path().join("blocker").display()
        ),
        format!(
            "telemetry.file: {} cannot be created: its directory {} does not exist",
            dir.path().join("missing/records.jsonl").display(),
            dir.path().join("missing").display()
        ),
        format!("server.listen: cannot listen on {held_addr}: "),
    ];
    let listed: Vec<&str> = text_out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .collect();
    assert_eq!(listed.len(), expected.len(), "{}", text_out.stderr);
    for (line, want) in listed.iter().zip(&expected) {
        assert!(line.starts_with(want.as_str()), "{line}\n  expected {want}");
    }
    assert!(
        text_out
            .stderr
            .starts_with(&format!("{path} has 7 problem(s):")),
        "{}",
        text_out.stderr
    );

    // JSON: the same list on stdout.
    let json_out = process::run(
        &["check-config", "--config", path, "--format", "json"],
        QUICK,
    )
    .await;
    assert_eq!(json_out.status.code(), Some(EXIT_CONFIG), "{json_out:?}");
    let report: serde_json::Value =
        serde_json::from_str(json_out.stdout.trim()).expect("one JSON object on stdout");
    assert_eq!(report["ok"], false);
    assert_eq!(report["file"], path);
    let problems: Vec<String> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| {
            format!(
                "{}: {}",
                p["key"].as_str().expect("key"),
                p["message"].as_str().expect("message")
            )
        })
        .collect();
    assert_eq!(problems, listed);

    // For a running gateway's file, the listen check can be skipped: everything else stays.
    let skip = process::run(
        &["check-config", "--config", path, "--skip-listen-check"],
        QUICK,
    )
    .await;
    assert_eq!(skip.status.code(), Some(EXIT_CONFIG), "{skip:?}");
    assert!(skip.stderr.contains("6 problem(s)"), "{}", skip.stderr);
    assert!(!skip.stderr.contains("server.listen"), "{}", skip.stderr);

    // A file meant for another machine: only the file's own problems.
    let file_only = process::run(&["check-config", "--config", path, "--file-only"], QUICK).await;
    assert_eq!(file_only.status.code(), Some(EXIT_CONFIG), "{file_only:?}");
    assert!(
        file_only.stderr.contains("4 problem(s)"),
        "{}",
        file_only.stderr
    );

    // `run`: the same messages, nothing created.
    let run = process::run(&["run", "--config", path], QUICK).await;
    assert_eq!(run.status.code(), Some(EXIT_CONFIG), "{run:?}");
    assert_eq!(run.stderr, text_out.stderr);
    assert!(!dir.path().join("missing").exists());
    drop(held);
}

#[tokio::test]
async fn check_config_json_summarises_a_good_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_pki, path) = GatewayBuilder::new()
        .service("iris", "/api/v1/service/iris", "http://127.0.0.1:5001")
        .write(dir.path());
    let path = path.to_str().expect("UTF-8 path");
    let out = process::run(
        &["check-config", "--config", path, "--format", "json"],
        QUICK,
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["problems"], serde_json::json!([]));
    assert_eq!(report["services"], serde_json::json!(["iris"]));
    assert_eq!(report["tls"], true);
}

/// `unix:` upstreams: the syntax is checked with the file, and the socket on this machine: a
/// missing directory or a path that is not a socket is a problem naming the service's key; a
/// socket not created yet (the container has not started) is not.
#[tokio::test]
async fn check_config_checks_unix_socket_upstreams() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    std::fs::write(d.join("plain-file"), "").expect("write a regular file");
    let long = format!("/{}", "s".repeat(107));
    let upstreams = [
        "unix:relative/model.sock".to_owned(),
        format!("unix:{}", d.join("model.sock").display()),
        format!("unix:{}:base", d.join("model.sock").display()),
        format!("unix:{long}"),
        format!("unix:{}", d.join("missing/model.sock").display()),
        format!("unix:{}:/base", d.join("plain-file").display()),
    ];
    let mut builder = GatewayBuilder::new();
    for (i, upstream) in upstreams.iter().enumerate() {
        builder = builder.service(&format!("s{i}"), &format!("/s{i}"), upstream);
    }
    let (_pki, path) = builder.write(d);
    let path = path.to_str().expect("UTF-8 path");

    let out = process::run(&["check-config", "--config", path], QUICK).await;
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{out:?}");
    let listed: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .collect();
    let expected = [
        "service[0].upstream: \"unix:relative/model.sock\" needs an absolute socket path (unix:/run/model/model.sock)".to_owned(),
        format!(
            "service[2].upstream: {:?} has a base path that does not start with '/' (unix:/path/model.sock:/base; a socket path cannot contain ':')",
            upstreams[2]
        ),
        format!(
            "service[3].upstream: {:?} has a socket path longer than 107 bytes, the limit of a Unix socket address",
            upstreams[3]
        ),
        format!(
            "service[4].upstream: {} cannot be reached: its directory {} does not exist (in a pod, mount the volume the container creates its socket in)",
            d.join("missing/model.sock").display(),
            d.join("missing").display()
        ),
        format!(
            "service[5].upstream: {} exists and is not a socket",
            d.join("plain-file").display()
        ),
    ];
    assert_eq!(listed, expected, "{}", out.stderr);

    // The socket of service 1 exists once its container listens: still fine.
    let _socket =
        std::os::unix::net::UnixListener::bind(d.join("model.sock")).expect("bind the socket");
    let again = process::run(&["check-config", "--config", path], QUICK).await;
    assert!(again.stderr.contains("5 problem(s)"), "{}", again.stderr);
    assert!(!again.stderr.contains("service[1]"), "{}", again.stderr);
}

/// A state directory other users may write to (where they could plant files or links next to
/// the credentials) is a configuration error naming it, in `check-config` and in `run`.
#[tokio::test]
async fn a_group_or_world_writable_state_dir_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let (_pki, path) = GatewayBuilder::new()
        .service("iris", "/api/v1/service/iris", "http://127.0.0.1:5001")
        .write(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("create state dir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod 777");
    let path = path.to_str().expect("UTF-8 path");
    for command in ["check-config", "run"] {
        let out = process::run(&[command, "--config", path], QUICK).await;
        assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{command}: {out:?}");
        assert!(
            out.stderr.contains("server.state_dir:")
                && out.stderr.contains(&state.display().to_string())
                && out.stderr.contains("777"),
            "{command}: {}",
            out.stderr
        );
    }
    assert_eq!(
        std::fs::read_dir(&state).expect("list state").count(),
        0,
        "nothing was written into the refused directory"
    );
    // Control: the same file with a private directory passes.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod 700");
    let out = process::run(&["check-config", "--config", path], QUICK).await;
    assert!(out.status.success(), "{out:?}");
}

/// A non-loopback admin listener without `admin_allow_cidrs` or `[server.admin_tls]` is valid,
/// but `check-config` warns about both on stderr (exit status 0); nothing is bound.
#[tokio::test]
async fn check_config_warns_about_an_open_admin_listener() {
    let dir = tempfile::tempdir().expect("temp dir");
    let builder = GatewayBuilder::new()
        .listen(free_port(), "0.0.0.0:9901".parse().expect("address"))
        .service("iris", "/api/v1/service/iris", "http://127.0.0.1:5001");
    let (_pki, path) = builder.write(dir.path());
    let path = path.to_str().expect("UTF-8 path");
    let out = process::run(&["check-config", "--config", path], QUICK).await;
    assert!(out.status.success(), "{out:?}");
    for expected in [
        "warning: server.admin_listen: 0.0.0.0:9901 is not a loopback address and server.admin_allow_cidrs is unset",
        "[server.admin_tls] is not set",
    ] {
        assert!(out.stderr.contains(expected), "{expected}: {}", out.stderr);
    }
    let (pki, path) = builder
        .server("admin_allow_cidrs = [\"10.0.0.0/8\"]")
        .write(dir.path());
    let text = std::fs::read_to_string(&path).expect("read config");
    let text = text.replacen(
        "[server]\n",
        &format!(
            "[server]\nadmin_tls = {{ cert = \"{}\", key = \"{}\" }}\n",
            pki.cert_path().display(),
            pki.key_path().display()
        ),
        1,
    );
    std::fs::write(&path, text).expect("write config");
    let out = process::run(
        &[
            "check-config",
            "--config",
            path.to_str().expect("UTF-8 path"),
        ],
        QUICK,
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
}

/// What the demo printed up to its curl command.
struct Banner {
    lines: Vec<String>,
    /// The whole `curl --cacert CA URL \ ...` command, continuation lines joined.
    curl: String,
    /// The URL after `admin: `.
    admin: String,
}

/// Reads the demo's stdout until the curl command (the demo keeps running meanwhile).
async fn read_banner<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
) -> Banner {
    let mut seen = Vec::new();
    let mut admin = None;
    within("the demo banner", async {
        loop {
            let line = lines
                .next_line()
                .await
                .expect("read demo stdout")
                .unwrap_or_else(|| panic!("demo stdout ended early:\n{}", seen.join("\n")));
            if let Some(url) = line.trim().strip_prefix("admin: ") {
                admin = Some(url.to_owned());
            }
            let curl = line.trim_start().starts_with("curl ").then(|| line.clone());
            seen.push(line);
            if let Some(mut curl) = curl {
                // Continuation lines end with a backslash.
                while curl.trim_end().ends_with('\\') {
                    let next = lines
                        .next_line()
                        .await
                        .expect("read demo stdout")
                        .unwrap_or_else(|| panic!("curl command cut short:\n{curl}"));
                    curl = format!("{} {}", curl.trim_end().trim_end_matches('\\'), next.trim());
                    seen.push(next);
                }
                let admin = admin
                    .take()
                    .unwrap_or_else(|| panic!("no admin line:\n{}", seen.join("\n")));
                return Banner {
                    lines: seen,
                    curl,
                    admin,
                };
            }
        }
    })
    .await
}

/// Calls the scoring URL of a printed `curl --cacert CA URL` line the way curl would: trusting
/// only that CA file. Returns the scoring result.
async fn score_like_curl(curl: &str) -> serde_json::Value {
    let words: Vec<&str> = curl.split_whitespace().collect();
    assert_eq!(&words[..2], ["curl", "--cacert"], "{curl}");
    let (ca_path, url) = (words[2], words[3]);
    // The demo's service uses key auth: the command carries the primary key.
    let key = curl
        .split("'Authorization: Bearer ")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("no Authorization header in {curl}"));
    let port: u16 = url
        .strip_prefix("https://localhost:")
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("URL {url} is not https://localhost:PORT/..."));
    assert_ne!(port, 0, "{url}");
    let ca = std::fs::read(ca_path).expect("the printed CA file exists while the demo runs");
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("CA PEM")])
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .no_proxy()
        .build()
        .expect("client");
    let resp = within(
        "scoring call to the printed URL",
        client
            .post(url)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#)
            .send(),
    )
    .await
    .expect("the printed URL answers");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    within("score body", resp.json()).await.expect("JSON")
}

/// `demo` on port 0: the printed URLs name the real ports, the printed curl target answers,
/// and the demo stops by itself with status 0, removing its files.
#[tokio::test]
async fn demo_runs_self_checks_prints_working_urls_and_stops_by_itself() {
    let mut child = process::command()
        .args([
            "demo",
            "--seconds",
            "3",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn scoregate demo");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();

    let banner = read_banner(&mut lines).await;
    let text = banner.lines.join("\n");
    let self_check = banner
        .lines
        .iter()
        .find(|l| l.starts_with("self-check: "))
        .unwrap_or_else(|| panic!("no self-check line:\n{text}"));
    assert!(self_check.contains(" -> 200 "), "{self_check}");
    assert!(!text.contains(":0/"), "a printed URL names port 0:\n{text}");

    let scored = score_like_curl(&banner.curl).await;
    assert_eq!(scored["result"], serde_json::json!(["setosa"]));
    let plain = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let ready = within("printed admin URL", plain.get(&banner.admin).send())
        .await
        .expect("the printed admin URL answers");
    assert_eq!(ready.status(), reqwest::StatusCode::OK, "{}", banner.admin);

    let status = within_for(QUICK, "the demo to stop by itself", child.wait())
        .await
        .expect("wait for demo");
    let stderr = within("demo stderr", stderr_task)
        .await
        .expect("stderr task");
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    assert!(stderr.contains("time limit reached"), "{stderr}");
    let ca_path = banner.curl.split_whitespace().nth(2).expect("CA path");
    assert!(
        !std::path::Path::new(ca_path).exists(),
        "the demo removes its temporary directory"
    );
}

/// `token issue` signs offline with the service's signing key: the printed token is accepted by
/// a gateway started afterwards on the same state directory, and refused by another service.
#[tokio::test]
async fn token_issue_prints_a_token_the_gateway_accepts() {
    let upstream = support::MockUpstream::start().await;
    let gw = GatewayBuilder::new()
        .service_with("iris", support::IRIS, &upstream.url(), "auth = \"token\"")
        .start()
        .await;
    gw.wait_ready().await;
    let path = gw.dir().join("scoregate.toml");
    let out = process::run(
        &[
            "token",
            "issue",
            "--config",
            path.to_str().expect("UTF-8 path"),
            "--service",
            "iris",
            "--subject",
            "batch-job",
        ],
        QUICK,
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let issued: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).expect("JSON on stdout");
    assert_eq!(issued["tokenType"], "Bearer");
    assert!(
        issued["refreshAfter"].as_u64() < issued["expiryOn"].as_u64(),
        "{issued}"
    );
    let token = issued["accessToken"].as_str().expect("accessToken");
    let resp = within(
        "scoring call with the offline token",
        gw.client()
            .post(gw.url(&format!("{}/echo", support::IRIS)))
            .bearer_auth(token)
            .body("{}")
            .send(),
    )
    .await
    .expect("request");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);

    let refused = process::run(
        &[
            "token",
            "issue",
            "--config",
            path.to_str().expect("UTF-8 path"),
            "--service",
            "nope",
        ],
        QUICK,
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("no service named \"nope\""),
        "{refused:?}"
    );
}

#[tokio::test]
async fn cluster_seal_key_prints_a_fresh_32_byte_key() {
    let a = process::run(&["cluster", "seal-key"], support::DEADLINE).await;
    let b = process::run(&["cluster", "seal-key"], support::DEADLINE).await;
    assert!(a.status.success(), "{}", a.stderr);
    assert!(
        scoregate::seal::SealKey::parse(&a.stdout).is_some(),
        "{:?}",
        a.stdout
    );
    assert_ne!(a.stdout, b.stdout, "each key is random");
}
