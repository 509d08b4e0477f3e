//! Build-time inputs:
//!
//! - the etcd v3 API bindings (fleet mode) from the minimal proto files in `proto/`, with protox,
//!   a protobuf compiler written in Rust: the build needs no system `protoc`, so the README's first
//!   command works on a machine that has only the Rust toolchain;
//! - `SCOREGATE_BUILD_COMMIT` and `SCOREGATE_BUILD_FEATURES` for `--version`: the commit from
//!   `$SCOREGATE_COMMIT` if set (a Docker or tarball build can pass it), else from git when this
//!   directory is a checkout's top level, else `unknown` (a source tarball builds without `.git`
//!   or git).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["rpc.proto", "kv.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .compile_fds(fds)?;
    version_info();
    Ok(())
}

fn version_info() {
    println!("cargo:rerun-if-env-changed=SCOREGATE_COMMIT");
    let commit = std::env::var("SCOREGATE_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SCOREGATE_BUILD_COMMIT={}", commit.trim());
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| k.strip_prefix("CARGO_FEATURE_").map(str::to_lowercase))
        .collect();
    features.sort();
    let features = if features.is_empty() {
        "none".to_owned()
    } else {
        features.join(" ")
    };
    println!("cargo:rustc-env=SCOREGATE_BUILD_FEATURES={features}");
}

/// The short commit of `HEAD`, if the manifest directory is the top level of a git checkout and
/// git runs. Rebuilds when `HEAD` moves (the files git keeps it in are watched).
fn git_commit() -> Option<String> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(&manifest)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    // Inside some other repository (a tarball unpacked in a checkout), that repository's commit
    // would be wrong.
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != manifest.canonicalize().ok()? {
        return None;
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    watch_head(&git);
    Some(commit)
}

/// Reruns this script when `HEAD` or the branch it names moves.
fn watch_head(git: &dyn Fn(&[&str]) -> Option<String>) {
    let (Some(git_dir), Some(common)) = (
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) else {
        return;
    };
    let rerun = |p: &Path| {
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    };
    rerun(&Path::new(&git_dir).join("HEAD"));
    rerun(&Path::new(&common).join("packed-refs"));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        rerun(&Path::new(&common).join(branch));
    }
}
