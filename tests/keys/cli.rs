//! The offline `scoregate keys` CLI against a running gateway's configuration and state: its
//! changes reach the gateway through the file watch, and it refuses what the API refuses.

use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::support::{GatewayBuilder, IRIS, MockUpstream, process, within};
use super::{OPEN, OTHER, key_file_text, key_gateway, operator_key, reloads, score, wait_reloads};

/// Runs `scoregate keys ...` with `stdin` (if any) and returns its stdout as JSON.
async fn cli_keys(args: &[&str], stdin: Option<&str>) -> Value {
    let mut child = process::command()
        .arg("keys")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn scoregate keys");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        within("write the key to stdin", pipe.write_all(text.as_bytes()))
            .await
            .expect("write stdin");
        drop(pipe);
    }
    let out = within("scoregate keys to exit", child.wait_with_output())
        .await
        .expect("wait for scoregate keys");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scoregate keys {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The file watch must apply an offline change within this long (ten of its 500 ms poll
/// intervals: slack for a busy CI machine, yet far from "never").
const PICKED_UP_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn cli_regen_against_the_running_gateways_state_is_picked_up_by_the_file_watch() {
    let upstream = MockUpstream::start().await;
    let gw = key_gateway(&upstream).await;
    let config = gw.dir().join("scoregate.toml");
    let config = config.to_str().expect("UTF-8 path");
    let (p0, s0) = gw.list_keys("iris").await;

    let out = cli_keys(
        &[
            "regen",
            "--config",
            config,
            "--service",
            "iris",
            "--key",
            "secondary",
        ],
        None,
    )
    .await;
    let changed = Instant::now();
    assert_eq!(out["primaryKey"], p0.as_str(), "{out}");
    let s1 = out["secondaryKey"]
        .as_str()
        .expect("new secondary")
        .to_owned();
    assert_ne!(s1, s0);
    wait_reloads(&gw, "success", 1).await;
    let took = changed.elapsed();
    assert!(took <= PICKED_UP_WITHIN, "picked up after {took:?}");
    assert_eq!(score(&gw, &s0).await, StatusCode::UNAUTHORIZED, "old key");
    assert_eq!(score(&gw, &s1).await, StatusCode::OK, "new key");
    assert_eq!(score(&gw, &p0).await, StatusCode::OK, "untouched slot");

    // `--value -` reads the key from stdin, keeping it out of the process list.
    let chosen = operator_key("stdin");
    let out = cli_keys(
        &[
            "regen",
            "--config",
            config,
            "--service",
            "iris",
            "--key",
            "primary",
            "--value",
            "-",
        ],
        Some(&format!("{chosen}\n")),
    )
    .await;
    let changed = Instant::now();
    assert_eq!(out, json!({"primaryKey": chosen, "secondaryKey": s1}));
    wait_reloads(&gw, "success", 2).await;
    let took = changed.elapsed();
    assert!(took <= PICKED_UP_WITHIN, "picked up after {took:?}");
    assert_eq!(score(&gw, &p0).await, StatusCode::UNAUTHORIZED, "old key");
    assert_eq!(score(&gw, &chosen).await, StatusCode::OK, "new key");

    let listed = cli_keys(&["list", "--config", config, "--service", "iris"], None).await;
    assert_eq!(listed, json!({"primaryKey": chosen, "secondaryKey": s1}));
    assert_eq!(gw.list_keys("iris").await, (chosen, s1));
    assert_eq!(reloads(&gw, "error"), 0);
}

/// `scoregate keys regen --key <slot>` against the gateway's config; returns the printed keys.
async fn cli_regen(config: &str, slot: &str) -> Value {
    cli_keys(
        &[
            "regen",
            "--config",
            config,
            "--service",
            "iris",
            "--key",
            slot,
        ],
        None,
    )
    .await
}

#[tokio::test]
async fn api_regenerate_right_after_a_cli_change_keeps_the_cli_key() {
    let upstream = MockUpstream::start().await;
    // The file watch never polls during this test (an hour's interval, and its first poll is one
    // interval after start), so the running gateway learns of the CLI's change only through the
    // API call, which must read the key file before it writes.
    let gw = GatewayBuilder::new()
        .server("watch_interval_ms = 3600000")
        .service_with("iris", IRIS, &upstream.url(), "auth = \"key\"")
        .start()
        .await;
    gw.wait_ready().await;
    let config = gw.dir().join("scoregate.toml");
    let config = config.to_str().expect("UTF-8 path");

    let s_cli = cli_regen(config, "secondary").await["secondaryKey"]
        .as_str()
        .expect("the CLI's new secondary")
        .to_owned();
    assert_eq!(
        score(&gw, &s_cli).await,
        StatusCode::UNAUTHORIZED,
        "the watch has not applied the CLI's key before the API call"
    );
    let body = gw.regenerate("iris", "Primary", None).await;
    assert_eq!(
        body["secondaryKey"],
        s_cli.as_str(),
        "the API answer shows the secondary on disk: {body}"
    );
    let p_api = body["primaryKey"].as_str().expect("new primary").to_owned();
    assert_eq!(score(&gw, &s_cli).await, StatusCode::OK, "the CLI's key");
    assert_eq!(score(&gw, &p_api).await, StatusCode::OK, "the API's key");
}

/// Runs `scoregate keys ARGS` expecting failure; returns its stderr.
async fn cli_keys_fails(args: &[&str]) -> String {
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    let out = process::run(&all, Duration::from_secs(15)).await;
    assert!(
        !out.status.success(),
        "scoregate {all:?} succeeded: {out:?}"
    );
    assert!(out.stdout.is_empty(), "nothing printed on failure: {out:?}");
    out.stderr
}

#[tokio::test]
async fn cli_refuses_what_the_api_refuses_and_changes_nothing() {
    let upstream = MockUpstream::start().await;
    let secret = tempfile::tempdir().expect("operator dir");
    let keys_file = secret.path().join("keys.json");
    let text = key_file_text(&operator_key("a"), &operator_key("b"));
    std::fs::write(&keys_file, &text).expect("write operator key file");
    let gw = GatewayBuilder::new()
        .service_with("iris", IRIS, &upstream.url(), "auth = \"key\"")
        .service_with(
            "ops",
            OTHER,
            &upstream.url(),
            &format!("auth = \"key\"\nkeys_file = \"{}\"", keys_file.display()),
        )
        .service("open", OPEN, &upstream.url())
        .start()
        .await;
    gw.wait_ready().await;
    let before = gw.list_keys("iris").await;
    let config = gw.dir().join("scoregate.toml");
    let config = config.to_str().expect("UTF-8 path");
    let regen = |service: &'static str| {
        [
            "regen",
            "--config",
            config,
            "--service",
            service,
            "--key",
            "primary",
        ]
    };

    let stderr = cli_keys_fails(&regen("nope")).await;
    assert!(stderr.contains("no service named \"nope\""), "{stderr}");
    let stderr = cli_keys_fails(&regen("open")).await;
    assert!(stderr.contains("not \"key\""), "{stderr}");
    let stderr = cli_keys_fails(&regen("ops")).await;
    assert!(stderr.contains("read-only"), "{stderr}");
    let short = "k".repeat(31);
    let mut args = regen("iris").to_vec();
    args.extend(["--value", short.as_str()]);
    let stderr = cli_keys_fails(&args).await;
    assert!(stderr.contains("keyValue"), "{stderr}");
    assert!(
        !stderr.contains(&short),
        "the refused value is not echoed: {stderr}"
    );

    assert_eq!(gw.list_keys("iris").await, before);
    assert_eq!(
        std::fs::read_to_string(&keys_file).expect("read operator file"),
        text
    );
}
