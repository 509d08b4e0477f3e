//! `TestGateway`: the real gateway (`scoregate::app::run`) in a task of the test's runtime.
//!
//! [`GatewayBuilder`] writes a TOML configuration (TLS on by default, certificates from a
//! [`Pki`]), which goes through `config::load_and_validate` exactly as `scoregate run` would.
//! Both listeners bind `127.0.0.1:0`. The gateway gets its own `Metrics` registry and a record
//! sink writing JSON lines into memory, and stops when the test calls
//! [`TestGateway::begin_shutdown`] / [`TestGateway::shutdown`] (or when it is dropped).

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use scoregate::app::{self, Listeners, Telemetry};
use scoregate::server::Drained;
use scoregate::telemetry::metrics::Metrics;
use scoregate::telemetry::sink::{QueueLimits, RecordOutput, RecordSink, SinkCounters};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Pki, wait_until, within};

/// Builds the configuration of a test gateway.
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    pki: Option<Pki>,
    tls: bool,
    listen: String,
    admin_listen: String,
    server_lines: Vec<String>,
    services: Vec<String>,
    /// Bind both in-process listeners on `[::1]:0` instead of `127.0.0.1:0`.
    ipv6: bool,
    /// Also bind the probe and metrics listeners (`probe_listen`, `metrics_listen`).
    split_planes: bool,
    /// Lines of a `[telemetry]` table (none: the table is left out).
    telemetry_lines: Vec<String>,
    /// A record output replacing the in-memory buffer, with its queue limits; taken by `start`.
    record_output: Arc<Mutex<Option<(RecordOutput, QueueLimits)>>>,
    /// Whole tables appended to the file (e.g. `[cluster]`).
    tables: Vec<String>,
    /// A state directory outside the gateway's temporary directory (to restart on the same
    /// state); default `<dir>/state`.
    state_dir: Option<PathBuf>,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self {
            pki: None,
            tls: true,
            listen: "127.0.0.1:0".to_owned(),
            admin_listen: "127.0.0.1:0".to_owned(),
            server_lines: Vec::new(),
            services: Vec::new(),
            ipv6: false,
            split_planes: false,
            telemetry_lines: Vec::new(),
            record_output: Arc::default(),
            tables: Vec::new(),
            state_dir: None,
        }
    }
}

impl GatewayBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses this PKI instead of a fresh one (e.g. to share a CA between gateways).
    #[must_use]
    pub fn pki(mut self, pki: Pki) -> Self {
        self.pki = Some(pki);
        self
    }

    /// Serves plain HTTP (no `[server.tls]` table).
    #[must_use]
    pub fn plain_http(mut self) -> Self {
        self.tls = false;
        self
    }

    /// The addresses written into the file. In-process gateways ignore them (the harness binds
    /// its own listeners); a child process binds them.
    #[must_use]
    pub fn listen(mut self, scoring: SocketAddr, admin: SocketAddr) -> Self {
        self.listen = scoring.to_string();
        self.admin_listen = admin.to_string();
        self
    }

    /// Binds the in-process listeners on `[::1]:0` (IPv6 loopback) instead of `127.0.0.1:0`, so
    /// requests arrive from `::1`.
    #[must_use]
    pub fn ipv6_loopback(mut self) -> Self {
        self.ipv6 = true;
        self
    }

    /// Sets `probe_listen` and `metrics_listen` and binds both (in-process: on port 0 of the
    /// loopback address); their addresses are [`TestGateway::probe_addr`] and
    /// [`TestGateway::metrics_addr`].
    #[must_use]
    pub fn split_admin_plane(mut self) -> Self {
        self.split_planes = true;
        self
    }

    /// Adds a `key = value` line to `[server]`, e.g. `"drain_timeout_ms = 300"`.
    #[must_use]
    pub fn server(mut self, line: &str) -> Self {
        self.server_lines.push(line.to_owned());
        self
    }

    /// Adds a `key = value` line to `[telemetry]`, e.g. `"redact_query_params = [\"session\"]"`.
    /// In-process gateways take only the settings that live in the gateway (redaction); records
    /// go where [`Self::record_output`] says. A child process applies all of them.
    #[must_use]
    pub fn telemetry(mut self, line: &str) -> Self {
        self.telemetry_lines.push(line.to_owned());
        self
    }

    /// Sends an in-process gateway's request records to `output` through a queue of `capacity`
    /// lines, instead of the in-memory buffer [`TestGateway::records`] reads (which then stays
    /// empty). For a stalled or failing sink.
    #[must_use]
    pub fn record_output(self, output: RecordOutput, capacity: usize) -> Self {
        self.record_queue(output, QueueLimits::lines(capacity))
    }

    /// Sends an in-process gateway's request records to `output` through a queue bounded by
    /// `limits` (lines and bytes).
    #[must_use]
    pub fn record_queue(self, output: RecordOutput, limits: QueueLimits) -> Self {
        *self.record_output.lock().expect("record output lock") = Some((output, limits));
        self
    }

    /// Adds a key-less `[[service]]`.
    #[must_use]
    pub fn service(self, name: &str, route: &str, upstream: &str) -> Self {
        self.service_with(name, route, upstream, "")
    }

    /// Adds a `[[service]]` with extra `key = value` lines (newline separated). Unless `extra`
    /// sets it, `max_concurrent_requests` is raised from Azure ML's default of 1 to 256, so tests
    /// about other behaviour are not shaped by admission control; its own tests set it.
    #[must_use]
    pub fn service_with(mut self, name: &str, route: &str, upstream: &str, extra: &str) -> Self {
        let concurrency = if extra.contains("max_concurrent_requests") {
            ""
        } else {
            "max_concurrent_requests = 256\n"
        };
        self.services.push(format!(
            "[[service]]\nname = \"{name}\"\nroute = \"{route}\"\nupstream = \"{upstream}\"\n{concurrency}{extra}\n"
        ));
        self
    }

    /// Appends a whole table (e.g. a `[cluster]` table) to the file.
    pub fn table(mut self, text: &str) -> Self {
        self.tables.push(text.to_owned());
        self
    }

    /// Keeps the state directory at `path` (which outlives the gateway) instead of `<dir>/state`.
    pub fn state_dir(mut self, path: &Path) -> Self {
        self.state_dir = Some(path.to_owned());
        self
    }

    /// The configuration file's text, with its state directory inside `dir`.
    pub fn toml(&self, pki: &Pki, dir: &Path) -> String {
        let state_dir = self.state_dir.clone().unwrap_or_else(|| dir.join("state"));
        let mut text = format!(
            "[server]\nlisten = \"{}\"\nadmin_listen = \"{}\"\nstate_dir = \"{}\"\n",
            self.listen,
            self.admin_listen,
            state_dir.display()
        );
        if self.split_planes {
            text.push_str("probe_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n");
        }
        for line in &self.server_lines {
            text.push_str(line);
            text.push('\n');
        }
        if self.tls {
            write!(
                text,
                "\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                pki.cert_path().display(),
                pki.key_path().display()
            )
            .expect("formatting into a String cannot fail");
        }
        for service in &self.services {
            text.push('\n');
            text.push_str(service);
        }
        if !self.telemetry_lines.is_empty() {
            text.push_str("\n[telemetry]\n");
            for line in &self.telemetry_lines {
                text.push_str(line);
                text.push('\n');
            }
        }
        for table in &self.tables {
            text.push('\n');
            text.push_str(table);
        }
        text
    }

    /// Writes the configuration to `dir/scoregate.toml` and returns the PKI it uses and the path.
    pub fn write(&self, dir: &Path) -> (Pki, PathBuf) {
        let pki = self.pki.clone().unwrap_or_default();
        let path = dir.join("scoregate.toml");
        std::fs::write(&path, self.toml(&pki, dir)).expect("write scoregate.toml");
        (pki, path)
    }

    /// Loads the configuration like `scoregate run` and starts the gateway in a task.
    pub async fn start(self) -> TestGateway {
        super::init_tracing();
        let dir = tempfile::tempdir().expect("create gateway temp dir");
        let (pki, path) = self.write(dir.path());
        let config = scoregate::config::load_and_validate(&path)
            .unwrap_or_else(|e| panic!("test configuration is invalid: {e}"));
        let loopback = if self.ipv6 { "[::1]:0" } else { "127.0.0.1:0" };
        let scoring = TcpListener::bind(loopback)
            .await
            .expect("bind scoring listener");
        let admin = TcpListener::bind(loopback)
            .await
            .expect("bind admin listener");
        let scoring_addr = scoring.local_addr().expect("scoring address");
        let admin_addr = admin.local_addr().expect("admin address");
        let (probe, metrics_listener) = if self.split_planes {
            let probe = TcpListener::bind(loopback)
                .await
                .expect("bind probe listener");
            let metrics = TcpListener::bind(loopback)
                .await
                .expect("bind metrics listener");
            (Some(probe), Some(metrics))
        } else {
            (None, None)
        };
        let probe_addr = probe
            .as_ref()
            .map(|l| l.local_addr().expect("probe address"));
        let metrics_addr = metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("metrics address"));

        let metrics = Arc::new(Metrics::new());
        let records = SharedBuf::default();
        let custom = self
            .record_output
            .lock()
            .expect("record output lock")
            .take();
        let (output, limits) = custom.unwrap_or_else(|| {
            (
                RecordOutput::Writer(Box::new(records.clone())),
                QueueLimits::lines(8192),
            )
        });
        let (sink, _writer) = RecordSink::spawn(output, limits, true, SinkCounters::of(&metrics))
            .expect("start record writer");
        let telemetry = Telemetry {
            metrics: Arc::clone(&metrics),
            records: sink,
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app::run(
            config,
            Listeners {
                scoring,
                admin,
                probe,
                metrics: metrics_listener,
            },
            telemetry,
            async move {
                // A dropped sender (the gateway dropped without shutdown) also stops it.
                let _ = stop_rx.await;
            },
        ));
        TestGateway {
            client: pki.http1_client(scoring_addr),
            h2_client: pki.http2_client(scoring_addr),
            admin_client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("build admin client"),
            scoring_addr,
            admin_addr,
            probe_addr,
            metrics_addr,
            metrics,
            records,
            stop: Some(stop_tx),
            task: Some(task),
            pki,
            dir,
        }
    }
}

/// Starts a gateway with one key-less service, `iris` at [`super::IRIS`], in front of `upstream`.
pub async fn iris_gateway(upstream: &str) -> TestGateway {
    GatewayBuilder::new()
        .service("iris", super::IRIS, upstream)
        .start()
        .await
}

/// A running gateway. See the module documentation.
#[derive(Debug)]
pub struct TestGateway {
    pub scoring_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The probe listener, with [`GatewayBuilder::split_admin_plane`].
    pub probe_addr: Option<SocketAddr>,
    /// The metrics listener, with [`GatewayBuilder::split_admin_plane`].
    pub metrics_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    records: SharedBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<Drained>>>,
    client: reqwest::Client,
    h2_client: reqwest::Client,
    admin_client: reqwest::Client,
    pki: Pki,
    dir: tempfile::TempDir,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl TestGateway {
    /// `https://localhost:PORT{path}` on the scoring listener.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.scoring_addr.port())
    }

    /// `http://127.0.0.1:PORT{path}` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// An HTTP/1.1-only client trusting the gateway's CA (connections are pooled).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// An HTTP/2-only client trusting the gateway's CA.
    pub fn h2_client(&self) -> &reqwest::Client {
        &self.h2_client
    }

    /// A plain-HTTP client for the admin listener.
    pub fn admin_client(&self) -> &reqwest::Client {
        &self.admin_client
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The gateway's private temporary directory (configuration, state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `GET` on the admin listener: status and JSON body.
    pub async fn admin_get(&self, path: &str) -> (StatusCode, serde_json::Value) {
        let resp = within(
            &format!("admin GET {path}"),
            self.admin_client.get(self.admin_url(path)).send(),
        )
        .await
        .unwrap_or_else(|e| panic!("admin GET {path}: {e}"));
        let status = resp.status();
        let body = within("admin body", resp.json::<serde_json::Value>())
            .await
            .unwrap_or_else(|e| panic!("admin GET {path}: body is not JSON: {e}"));
        (status, body)
    }

    /// Waits until `/readyz` answers 200 (listeners up, every upstream healthy).
    pub async fn wait_ready(&self) {
        wait_until("gateway /readyz to answer 200", || async {
            self.admin_get("/readyz").await.0 == StatusCode::OK
        })
        .await;
    }

    /// Resolves the shutdown future passed to `app::run` (readiness turns 503 and the drain
    /// begins). Idempotent.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Begins shutdown if needed and waits for `app::run` to return its drain outcome.
    pub async fn shutdown(&mut self) -> Drained {
        self.begin_shutdown();
        let task = self.task.take().expect("shutdown awaited only once");
        within("app::run to return after shutdown", task)
            .await
            .expect("gateway task did not panic")
            .expect("app::run returned an error")
    }

    /// Every request record written so far, parsed.
    pub fn records(&self) -> Vec<serde_json::Value> {
        let bytes = self.records.0.lock().expect("record buffer lock").clone();
        String::from_utf8(bytes)
            .expect("records are UTF-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("each record line is JSON"))
            .collect()
    }

    /// Waits until at least `n` records were written (records are written by a separate thread
    /// after the response ends) and returns them all.
    pub async fn wait_for_records(&self, n: usize) -> Vec<serde_json::Value> {
        wait_until(&format!("{n} request record(s)"), || async {
            self.records().len() >= n
        })
        .await;
        self.records()
    }

    /// Waits for the record of the request with this id.
    pub async fn record_for(&self, request_id: &str) -> serde_json::Value {
        wait_until(&format!("the record of request {request_id}"), || async {
            self.records().iter().any(|r| r["RequestId"] == request_id)
        })
        .await;
        self.records()
            .into_iter()
            .find(|r| r["RequestId"] == request_id)
            .expect("record found above")
    }

    /// The Prometheus text exposition of this gateway's registry.
    pub fn metrics_text(&self) -> String {
        String::from_utf8(self.metrics.render()).expect("metrics text is UTF-8")
    }

    /// The value of one series, written exactly as exposed (labels sorted), e.g.
    /// `scoregate_upstream_errors_total{kind="upstream_timeout",service="iris"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics_text(), series)
    }

    /// The value of an integer series (a counter, a gauge of counts, a histogram's `_count`),
    /// 0 while the series does not exist.
    pub fn counter(&self, series: &str) -> u64 {
        self.metrics_text()
            .lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| {
                    value
                        .parse()
                        .unwrap_or_else(|_| panic!("{series} is not an integer: {value}"))
                })
            })
            .unwrap_or(0)
    }
}

/// Finds `series` in a Prometheus text exposition and parses its value.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("metric value is a number"))
        })
}

/// A `Write` that appends to shared memory: the in-process request record sink.
#[derive(Debug, Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("record buffer lock poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
