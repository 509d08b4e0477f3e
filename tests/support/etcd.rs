//! Real etcd for fleet-mode tests: Debian's `etcd` binary (package `etcd-server`) as child
//! processes on free loopback ports, each member with its own temporary data directory, killed
//! by PID when dropped. A 1-node cluster ([`Etcd::start`]) or a 3-node cluster
//! ([`Etcd::cluster`]); readiness is its `/health` endpoint answering `"health":"true"`, polled
//! under the harness deadline. A member can be stopped and started again on the same ports and
//! data (an outage, a leader kill).
//!
//! [`Etcd::start_secure`] starts a member that serves only TLS and requires a client certificate
//! from its own throwaway CA (`--client-cert-auth`); [`Etcd::enable_auth`] turns on etcd's user
//! authentication with a user whose role may touch one namespace only. Readiness and `etcdctl`
//! then go through the same certificates and credentials.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::certs::TestCa;
use super::process::free_ports;
use super::wait_until;

/// The PEM files of a TLS-only etcd: its CA, its server pair and a client pair the CA issued.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// A new CA, a server certificate for loopback and a client certificate, written to `dir`.
    fn issue(dir: &Path) -> Self {
        let ca = TestCa::new("test etcd CA");
        let server = ca.server_leaf("etcd");
        let client = ca.client_leaf("scoregate");
        let files = Self {
            ca: dir.join("etcd-ca.pem"),
            server_cert: dir.join("etcd-server.crt"),
            server_key: dir.join("etcd-server.key"),
            client_cert: dir.join("etcd-client.crt"),
            client_key: dir.join("etcd-client.key"),
        };
        for (path, pem) in [
            (&files.ca, &ca.pem),
            (&files.server_cert, &server.cert_pem),
            (&files.server_key, &server.key_pem),
            (&files.client_cert, &client.cert_pem),
            (&files.client_key, &client.key_pem),
        ] {
            std::fs::write(path, pem).expect("write etcd TLS file");
        }
        files
    }
}

/// One etcd member.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    data: PathBuf,
    child: Option<Child>,
    initial_cluster: String,
    log: PathBuf,
    /// Client TLS required (`https://` client URLs).
    tls: Option<TlsFiles>,
}

/// A running etcd cluster of one or three members.
#[derive(Debug)]
pub struct Etcd {
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
    /// A seal key file (base64 of 32 random bytes) tests point `[cluster] seal_key_file` at.
    pub seal_key: PathBuf,
    /// Set by [`Etcd::start_secure`].
    pub tls: Option<TlsFiles>,
    /// `root`'s password once [`Etcd::enable_auth`] has run (etcdctl then logs in as root).
    root_password: Option<String>,
}

/// Whether this machine has the `etcd` binary (CI installs it; see `.ci/run`).
pub fn available() -> bool {
    std::process::Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Member {
    fn spawn(&mut self, state: &str) {
        let log = std::fs::File::create(&self.log).expect("create etcd log");
        let err = log.try_clone().expect("clone etcd log handle");
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--listen-client-urls")
            .arg(self.url())
            .arg("--advertise-client-urls")
            .arg(self.url())
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", self.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", self.peer))
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg("scoregate-test")
            // Quick elections, so a leader kill is over in well under a second.
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("start etcd (is Debian's etcd-server installed?)");
        self.child = Some(child);
    }

    /// Kills this member (SIGKILL, by PID) and waits for it to exit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts this member again on its ports and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "member {} is running", self.name);
        self.spawn("existing");
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    /// The member's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn healthy(&self) -> bool {
        if let Some(tls) = &self.tls {
            // `/health` wants the client certificate too; etcdctl presents it.
            let out = etcdctl(&self.url(), Some(tls), None)
                .args(["endpoint", "health"])
                .output()
                .await
                .expect("run etcdctl");
            return out.status.success();
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(2))
            .build()
            .expect("health client");
        match client.get(format!("{}/health", self.url())).send().await {
            Ok(r) => r.text().await.is_ok_and(|t| t.contains("\"true\"")),
            Err(_) => false,
        }
    }
}

/// An `etcdctl` (API v3) command against `endpoints`, with the client certificate of `tls` and
/// the `user:password` login, if given.
fn etcdctl(endpoints: &str, tls: Option<&TlsFiles>, user: Option<&str>) -> Command {
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoints)
        .arg("--dial-timeout")
        .arg("2s")
        .kill_on_drop(true);
    if let Some(tls) = tls {
        command
            .arg("--cacert")
            .arg(&tls.ca)
            .arg("--cert")
            .arg(&tls.client_cert)
            .arg("--key")
            .arg(&tls.client_key);
    }
    if let Some(user) = user {
        command.arg("--user").arg(user);
    }
    command
}

impl Etcd {
    /// A 1-node cluster.
    pub async fn start() -> Self {
        Self::with_members(1, false).await
    }

    /// A 3-node cluster.
    pub async fn cluster() -> Self {
        Self::with_members(3, false).await
    }

    /// A 1-node cluster that serves only TLS and requires a client certificate ([`Etcd::tls`]).
    pub async fn start_secure() -> Self {
        Self::with_members(1, true).await
    }

    async fn with_members(n: usize, secure: bool) -> Self {
        let dir = tempfile::tempdir().expect("etcd temp dir");
        let tls = secure.then(|| TlsFiles::issue(dir.path()));
        let ports: [SocketAddr; 6] = free_ports();
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                data: dir.path().join(format!("m{i}.etcd")),
                child: None,
                initial_cluster: String::new(),
                log: dir.path().join(format!("m{i}.log")),
                tls: tls.clone(),
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster.clone_from(&initial);
            m.spawn("new");
        }
        let seal_key = dir.path().join("seal.key");
        std::fs::write(
            &seal_key,
            scoregate::seal::SealKey::generate().expect("seal key"),
        )
        .expect("write seal key");
        let etcd = Self {
            members,
            dir,
            seal_key,
            tls,
            root_password: None,
        };
        etcd.wait_healthy().await;
        etcd
    }

    /// Waits until every running member reports healthy (a leader is elected).
    pub async fn wait_healthy(&self) {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            wait_until(&format!("etcd member {} healthy", m.name), || m.healthy()).await;
        }
    }

    /// Every member's client URL, as `[cluster] endpoints` wants them.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::url).collect()
    }

    /// A `[cluster]` table for this etcd, namespace and instance.
    pub fn cluster_toml(&self, namespace: &str, instance: &str) -> String {
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.cluster_toml_for(namespace, instance, &all)
    }

    /// A `[cluster]` table that names only the members at `members` (a replica that can be cut
    /// off by stopping them).
    pub fn cluster_toml_for(&self, namespace: &str, instance: &str, members: &[usize]) -> String {
        let endpoints = members
            .iter()
            .map(|&i| self.members[i].url())
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Fails fast on a stopped member (connection refused), bounded by 1 s otherwise.
        let mut table = format!(
            "[cluster]\nbackend = \"etcd\"\nendpoints = [{endpoints}]\nnamespace = \"{namespace}\"\ninstance = \"{instance}\"\nseal_key_file = \"{}\"\ndial_timeout_ms = 1000\n",
            self.seal_key.display()
        );
        if let Some(tls) = &self.tls {
            for (name, path) in [
                ("ca", &tls.ca),
                ("cert", &tls.client_cert),
                ("key", &tls.client_key),
            ] {
                let _ = writeln!(table, "{name} = \"{}\"", path.display());
            }
        }
        table
    }

    /// Turns on etcd's authentication: a `root` user (who etcdctl logs in as from now on) and
    /// user `name` with `password`, whose one role may read and write `/scoregate/<namespace>/`
    /// only.
    pub async fn enable_auth(&mut self, name: &str, password: &str, namespace: &str) {
        let root = "root-test-password";
        let prefix = format!("/scoregate/{namespace}/");
        let steps: [Vec<String>; 6] = [
            vec!["user".into(), "add".into(), format!("root:{root}")],
            vec![
                "user".into(),
                "grant-role".into(),
                "root".into(),
                "root".into(),
            ],
            vec!["user".into(), "add".into(), format!("{name}:{password}")],
            vec!["role".into(), "add".into(), "fleet".into()],
            vec![
                "role".into(),
                "grant-permission".into(),
                "fleet".into(),
                "--prefix=true".into(),
                "readwrite".into(),
                prefix,
            ],
            vec![
                "user".into(),
                "grant-role".into(),
                name.into(),
                "fleet".into(),
            ],
        ];
        for step in steps {
            self.etcdctl_ok(&step).await;
        }
        self.etcdctl_ok(&["auth".to_owned(), "enable".to_owned()])
            .await;
        self.root_password = Some(root.to_owned());
    }

    /// Runs etcdctl with `args` (as root once auth is on) and asserts it succeeds.
    pub async fn etcdctl_ok(&self, args: &[String]) -> Vec<u8> {
        let user = self.root_password.as_ref().map(|p| format!("root:{p}"));
        let out = etcdctl(
            &self.endpoints().join(","),
            self.tls.as_ref(),
            user.as_deref(),
        )
        .args(args)
        .output()
        .await
        .expect("run etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `etcdctl get --prefix PREFIX` against this cluster: keys and values as printed.
    pub async fn etcdctl_get_prefix(&self, prefix: &str) -> Vec<u8> {
        self.etcdctl_ok(&["get".to_owned(), "--prefix".to_owned(), prefix.to_owned()])
            .await
    }
}
