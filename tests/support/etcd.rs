//! Real etcd for fleet-mode tests: Debian's `etcd` binary (package `etcd-server`) as child
//! processes on free loopback ports, each member with its own temporary data directory, killed
//! by PID when dropped. A 1-node cluster ([`Etcd::start`]) or a 3-node cluster
//! ([`Etcd::cluster`]); readiness is its `/health` endpoint answering `"health":"true"`, polled
//! under the harness deadline. A member can be stopped and started again on the same ports and
//! data (an outage, a leader kill).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::process::free_ports;
use super::wait_until;

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
}

/// A running etcd cluster of one or three members.
#[derive(Debug)]
pub struct Etcd {
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
    /// A seal key file (base64 of 32 random bytes) tests point `[cluster] seal_key_file` at.
    pub seal_key: PathBuf,
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
        let child = Command::new("etcd")
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--listen-client-urls")
            .arg(format!("http://{}", self.client))
            .arg("--advertise-client-urls")
            .arg(format!("http://{}", self.client))
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
        format!("http://{}", self.client)
    }

    /// The member's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn healthy(&self) -> bool {
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

impl Etcd {
    /// A 1-node cluster.
    pub async fn start() -> Self {
        Self::with_members(1).await
    }

    /// A 3-node cluster.
    pub async fn cluster() -> Self {
        Self::with_members(3).await
    }

    async fn with_members(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("etcd temp dir");
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
            scoregate::cluster::seal::SealKey::generate().expect("seal key"),
        )
        .expect("write seal key");
        let etcd = Self {
            members,
            dir,
            seal_key,
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
        format!(
            "[cluster]\nbackend = \"etcd\"\nendpoints = [{endpoints}]\nnamespace = \"{namespace}\"\ninstance = \"{instance}\"\nseal_key_file = \"{}\"\ndial_timeout_ms = 1000\n",
            self.seal_key.display()
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `etcdctl get --prefix PREFIX` against this cluster: keys and values as printed.
    pub async fn etcdctl_get_prefix(&self, prefix: &str) -> Vec<u8> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoints().join(","))
            .arg("get")
            .arg("--prefix")
            .arg(prefix)
            .kill_on_drop(true)
            .output()
            .await
            .expect("run etcdctl");
        assert!(
            out.status.success(),
            "etcdctl get failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}
