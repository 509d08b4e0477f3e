//! The real `scoregate` binary as a child process: CLI exit codes, signals, memory.
//!
//! Output goes to files in the child's temporary directory (never to an unread pipe that could
//! fill and stall the child), and the child is killed if the test ends first.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use super::{GatewayBuilder, Pki, wait_until, within, within_for};

/// The `scoregate` binary Cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_scoregate");

/// A port that was free a moment ago: bind `127.0.0.1:0`, read the port, release it. Only for
/// child processes, which must be told their ports up front; the small race with other processes
/// is accepted there.
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
}

/// `N` distinct free ports: every listener stays bound until all are, so the kernel cannot hand
/// out the same port twice (two separate [`free_port`] calls can, and then the gateway refuses a
/// config whose two listeners share an address).
pub fn free_ports<const N: usize>() -> [SocketAddr; N] {
    let held: [std::net::TcpListener; N] = std::array::from_fn(|_| {
        std::net::TcpListener::bind("127.0.0.1:0").expect("find a free port")
    });
    held.map(|l| l.local_addr().expect("bound address"))
}

/// `scoregate` with null stdin, killed if dropped while running.
pub fn command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `scoregate args...` to completion within `limit`.
pub async fn run(args: &[&str], limit: Duration) -> Finished {
    let out = within_for(
        limit,
        &format!("scoregate {args:?} to exit"),
        command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output(),
    )
    .await
    .expect("spawn scoregate");
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `scoregate run --config FILE` serving on ports picked for it.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Child,
    pid: u32,
    pub scoring_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pki: Pki,
    dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Writes the builder's configuration (with free ports) and starts the binary on it.
    pub fn start(builder: GatewayBuilder) -> Self {
        Self::start_with_env(builder, &[])
    }

    /// Like [`Self::start`], with extra environment variables (e.g. `SCOREGATE_LOG`).
    pub fn start_with_env(builder: GatewayBuilder, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("create process temp dir");
        let [scoring_addr, admin_addr] = free_ports();
        let (pki, config) = builder.listen(scoring_addr, admin_addr).write(dir.path());
        let file = |name: &str| {
            std::fs::File::create(dir.path().join(name)).expect("create child output file")
        };
        let child = command()
            .arg("run")
            .arg("--config")
            .arg(&config)
            .envs(env.iter().copied())
            .stdout(file("stdout.log"))
            .stderr(file("stderr.log"))
            .spawn()
            .expect("spawn scoregate run");
        let pid = child.id().expect("running child has a pid");
        Self {
            child,
            pid,
            scoring_addr,
            admin_addr,
            pki,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.scoring_addr.port())
    }

    /// An HTTP/1.1 client trusting the process's CA.
    pub fn client(&self) -> reqwest::Client {
        self.pki.http1_client(self.scoring_addr)
    }

    /// An HTTP/2 client trusting the process's CA.
    pub fn h2_client(&self) -> reqwest::Client {
        self.pki.http2_client(self.scoring_addr)
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir().join("stdout.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir().join("stderr.log")).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200; fails at once (with the child's stderr) if it exits.
    pub async fn wait_ready(&mut self) {
        let admin = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("build admin client");
        let url = format!("http://{}/readyz", self.admin_addr);
        let child = &mut self.child;
        let dir = self.dir.path().to_owned();
        wait_until("scoregate process /readyz to answer 200", || {
            let exited = child.try_wait().expect("poll child status");
            let (admin, url, dir) = (admin.clone(), url.clone(), dir.clone());
            async move {
                if let Some(status) = exited {
                    let stderr =
                        std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                    panic!("scoregate exited with {status} before becoming ready:\n{stderr}");
                }
                admin
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
            }
        })
        .await;
    }

    /// Sends `signal` (e.g. `"TERM"`) to the child with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid);
    }

    /// Waits for the child to exit.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        within("scoregate process to exit", self.child.wait())
            .await
            .expect("wait for child")
    }

    /// Peak resident set size (`VmHWM`) in KiB, from `/proc/PID/status`.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/PID/status of the running child");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }
}
