//! The system `curl` (Debian 12: 7.88) as a client: what users and the README's demo run, with
//! HTTP/2 and HTTP/1.1 stacks of its own (nghttp2), whose reactions to resets and early answers
//! differ from hyper's. Each call is a child process, killed if the test stops waiting for it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use super::TestGateway;

/// What one `curl` run produced.
#[derive(Debug)]
pub struct CurlAnswer {
    /// `%{http_code}`: 0 when no response was read.
    pub status: u16,
    pub body: Vec<u8>,
    /// curl's exit code (0: the transfer completed).
    pub exit: i32,
    pub stderr: String,
}

impl CurlAnswer {
    /// The `error.code` of the gateway's JSON error envelope; panics (with curl's report) when
    /// the body is not one.
    pub fn error_code(&self) -> String {
        let body: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "curl got no JSON body ({e}): exit {}, status {}, stderr {:?}, body {:?}",
                self.exit,
                self.status,
                self.stderr,
                String::from_utf8_lossy(&self.body)
            )
        });
        body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code in {body}"))
            .to_owned()
    }
}

/// `curl` against a test gateway: trusts its CA, resolves `localhost` to its loopback address.
#[derive(Debug, Clone)]
pub struct Curl {
    ca: PathBuf,
    resolve: String,
    port: u16,
}

impl Curl {
    pub fn new(gw: &TestGateway) -> Self {
        Self {
            ca: gw.pki().ca_path(),
            resolve: format!(
                "localhost:{}:{}",
                gw.scoring_addr.port(),
                gw.scoring_addr.ip()
            ),
            port: gw.scoring_addr.port(),
        }
    }

    /// `POST https://localhost:PORT{path}` with `file` as the body (`--data-binary @file`),
    /// `version` (`--http2`, `--http1.1`) and extra arguments (e.g. `-H`, `Expect:`).
    pub async fn post_file(
        &self,
        version: &str,
        path: &str,
        file: &Path,
        extra: &[&str],
    ) -> CurlAnswer {
        let url = format!("https://localhost:{}{path}", self.port);
        let data = format!("@{}", file.display());
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", version, "--cacert"])
            .arg(&self.ca)
            .args(["--resolve", &self.resolve, "--max-time", "60"])
            .args(["--data-binary", &data])
            .args(["-H", "Content-Type: application/octet-stream"])
            .args(extra)
            .args(["-o", "-", "-w", "\n%{http_code}", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = super::within_for(
            std::time::Duration::from_secs(90),
            "curl to finish (it has --max-time 60)",
            cmd.output(),
        )
        .await
        .expect("run curl (the system curl must be installed)");
        let stdout = out.stdout;
        let split = stdout
            .iter()
            .rposition(|&b| b == b'\n')
            .expect("curl writes the status after a newline");
        let status = std::str::from_utf8(&stdout[split + 1..])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .expect("curl's %{http_code}");
        CurlAnswer {
            status,
            body: stdout[..split].to_vec(),
            exit: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Writes `len` pattern bytes to `dir/name` and returns the path.
pub fn body_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    let path = dir.join(name);
    let bytes: Vec<u8> = (0..len)
        .map(|i| u8::try_from(i % 251).unwrap_or(0))
        .collect();
    std::fs::write(&path, bytes).expect("write the request body file");
    path
}
