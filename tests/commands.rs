//! The command line as documented: `--version` (version, commit, features), usage errors with
//! exit code 2, `SCOREGATE_CONFIG` as the default for `--config`, shell completions, the manual
//! page, and the README's commands, which parse as printed and (where they need no model or
//! network) run as printed.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser as _;
use scoregate::cli::args::Cli;
use support::GatewayBuilder;
use support::pki::Pki;
use support::process::{self, free_ports};

const QUICK: Duration = Duration::from_secs(15);

/// The commit `--version` should name: git's view of this checkout, or `unknown` without one.
fn expected_commit() -> String {
    let manifest = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(manifest)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if let Ok(c) = std::env::var("SCOREGATE_COMMIT")
        && !c.trim().is_empty()
    {
        return c.trim().to_owned();
    }
    let top =
        git(&["rev-parse", "--show-toplevel"]).and_then(|t| Path::new(&t).canonicalize().ok());
    if top != Path::new(manifest).canonicalize().ok() {
        return "unknown".to_owned();
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}

#[tokio::test]
async fn version_names_the_commit_and_features() {
    let out = process::run(&["--version"], QUICK).await;
    assert!(out.status.success(), "{out:?}");
    let line = out.stdout.trim();
    assert_eq!(
        line,
        format!(
            "scoregate {} (commit {}, features: none, TLS: rustls with aws-lc-rs)",
            env!("CARGO_PKG_VERSION"),
            expected_commit()
        )
    );
}

#[tokio::test]
async fn usage_errors_exit_2_and_help_documents_the_exit_codes() {
    for args in [
        &["run"][..],
        &["check-config", "--config", "x.toml", "--format", "yaml"],
        &["no-such-command"],
        &["completions", "tcsh"],
    ] {
        let out = process::command()
            .args(args)
            .env_remove("SCOREGATE_CONFIG")
            .output()
            .await
            .expect("run scoregate");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    let help = process::run(&["--help"], QUICK).await;
    assert!(help.status.success());
    for code in [
        "0 success",
        "1 failure",
        "2 usage error",
        "64 the configuration",
    ] {
        assert!(help.stdout.contains(code), "{code}: {}", help.stdout);
    }
}

#[tokio::test]
async fn scoregate_config_is_the_default_for_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_pki, path) = GatewayBuilder::new()
        .service("iris", "/iris", "http://127.0.0.1:5001")
        .write(dir.path());
    let out = process::command()
        .args(["check-config"])
        .env("SCOREGATE_CONFIG", &path)
        .output()
        .await
        .expect("run scoregate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.starts_with(&format!("{}: OK", path.display())),
        "{stdout}"
    );
    // The flag wins over the variable.
    let out = process::command()
        .args(["check-config", "--config", "/nonexistent/scoregate.toml"])
        .env("SCOREGATE_CONFIG", &path)
        .output()
        .await
        .expect("run scoregate");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/scoregate.toml"));
}

#[tokio::test]
async fn completions_for_each_shell_and_the_manual_page() {
    for (shell, marker) in [
        ("bash", "complete -F _scoregate"),
        ("zsh", "#compdef scoregate"),
        ("fish", "complete -c scoregate"),
    ] {
        let out = process::run(&["completions", shell], QUICK).await;
        assert!(out.status.success(), "{shell}: {out:?}");
        for word in [
            marker,
            "check-config",
            "skip-listen-check",
            "rotate-signing-key",
        ] {
            assert!(out.stdout.contains(word), "{shell} lacks {word}");
        }
    }
    // The bash script is valid bash.
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("scoregate.bash");
    let out = process::run(&["completions", "bash"], QUICK).await;
    std::fs::write(&script, &out.stdout).expect("write script");
    let syntax = tokio::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .await
        .expect("bash -n");
    assert!(syntax.status.success(), "{syntax:?}");

    let man = process::run(&["man"], QUICK).await;
    assert!(man.status.success(), "{man:?}");
    assert!(man.stdout.starts_with(".ie"), "{}", &man.stdout[..80]);
    assert!(man.stdout.contains(".TH scoregate 1"), "{}", man.stdout);
    for word in ["check\\-config", "completions", "SCOREGATE_CONFIG"] {
        assert!(man.stdout.contains(word), "the manual lacks {word}");
    }
}

/// The shell commands of README.md's `sh` blocks, continuation lines joined.
fn readme_shell_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let mut lines = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in readme.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_sh = trimmed == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        if let Some(start) = line.trim_end().strip_suffix('\\') {
            pending.push_str(start.trim());
            pending.push(' ');
            continue;
        }
        pending.push_str(line.trim());
        lines.push(std::mem::take(&mut pending));
    }
    lines
}

/// Every `scoregate ...` invocation in `line` (at the start, or inside `$(...)`), up to a pipe,
/// a closing parenthesis, a comment or the end.
fn invocations(line: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("scoregate ") {
        let before = rest[..at].trim_end();
        let command_position = before.is_empty() || before.ends_with("$(");
        let tail = &rest[at..];
        let end = tail.find(['|', ')', '#', ';', '&']).unwrap_or(tail.len());
        if command_position {
            found.push(tail[..end].split_whitespace().map(str::to_owned).collect());
        }
        rest = &tail["scoregate ".len()..];
    }
    found
}

#[test]
fn every_command_in_the_readme_parses_as_printed() {
    let commands: Vec<Vec<String>> = readme_shell_lines()
        .iter()
        .flat_map(|l| invocations(l))
        .collect();
    // run, check-config, keys list at least: a README without them would pass vacuously.
    assert!(commands.len() >= 4, "{commands:?}");
    for words in &commands {
        if let Err(e) = Cli::try_parse_from(words) {
            panic!("README command {words:?} does not parse:\n{e}");
        }
    }
}

/// `check-config` and the `keys list | sed` key extraction, exactly as the README prints them,
/// in a copy of the repository's `config/` with a generated certificate in `certs/` (what
/// `certs/gen-dev-certs.sh certs/` makes) and the example's ports moved to free ones.
#[tokio::test]
async fn the_readme_commands_run_as_printed() {
    let root = tempfile::tempdir().expect("temp dir");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir(root.path().join("config")).expect("mkdir config");
    std::fs::create_dir(root.path().join("certs")).expect("mkdir certs");
    let [listen, admin] = free_ports::<2>();
    let example = std::fs::read_to_string(repo.join("config/scoregate.example.toml"))
        .expect("read the example config")
        .replace("127.0.0.1:8443", &listen.to_string())
        .replace("127.0.0.1:9901", &admin.to_string());
    std::fs::write(root.path().join("config/scoregate.example.toml"), example)
        .expect("write the example config");
    let pki = Pki::new();
    std::fs::copy(pki.cert_path(), root.path().join("certs/server.crt")).expect("copy cert");
    std::fs::copy(pki.key_path(), root.path().join("certs/server.key")).expect("copy key");

    let lines = readme_shell_lines();
    let printed = |prefix: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("the README has no line starting {prefix:?}"))
            .clone()
    };
    let bin_dir = Path::new(process::BIN).parent().expect("binary directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let shell = |script: String| {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .current_dir(root.path())
            .env("PATH", &path)
            .env_remove("SCOREGATE_CONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    };

    let check = printed("scoregate check-config --config config/scoregate.example.toml");
    let out = support::within_for(QUICK, "check-config", shell(check).output())
        .await
        .expect("run check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains(": OK (1 service(s)"), "{stdout}");

    // The README's key extraction, then the key it printed.
    let extract = printed("PRIMARY_KEY=$(scoregate keys list");
    let out = support::within_for(
        QUICK,
        "keys list | sed",
        shell(format!("{extract}\nprintf '%s' \"$PRIMARY_KEY\"")).output(),
    )
    .await
    .expect("run the key extraction");
    assert!(out.status.success(), "{out:?}");
    let extracted = String::from_utf8_lossy(&out.stdout).into_owned();
    let listed = shell(
        "scoregate keys list --config config/scoregate.example.toml --service iris".to_owned(),
    )
    .output()
    .await
    .expect("keys list");
    let keys: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("keys JSON");
    assert_eq!(extracted, keys["primaryKey"].as_str().expect("primaryKey"));
    assert!(extracted.len() >= 32, "{extracted:?}");
}
