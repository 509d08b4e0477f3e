//! `scoregate demo`: the one-command first run. Needs no files: it makes a throwaway CA and
//! server certificate in memory (rcgen), starts the built-in sample model on loopback, starts the
//! gateway in front of it with TLS, sends one real scoring call through it, prints the URL and a
//! ready `curl` command, and serves until Ctrl-C or the time limit. Its state directory is a
//! fresh temporary directory, removed at exit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{self, Listeners, Telemetry};
use crate::config::{self, Config};
use crate::telemetry::metrics::Metrics;

/// Options of the `demo` command.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The demo stops by itself after this long.
    pub duration: Duration,
    /// Write request records to stdout (off by default to keep the demo output readable).
    pub records: bool,
}

/// A throwaway certificate authority and a server certificate it signed, in memory.
pub struct DemoPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for DemoPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DemoPki { .. }")
    }
}

/// Makes a CA and a server certificate for `localhost`, `127.0.0.1` and `::1`.
pub fn make_pki() -> anyhow::Result<DemoPki> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "scoregate demo CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_demo_validity(&mut ca_params);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "scoregate demo");
    set_demo_validity(&mut params);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(DemoPki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// From yesterday to 90 days from now, the lifetime public CAs give: rcgen's default runs from 1975
/// to the year 4096, which TLS scanners rightly flag, and a demo certificate has no reason to
/// outlive the demo (testssl rates fewer than 60 days left as a finding too).
fn set_demo_validity(params: &mut rcgen::CertificateParams) {
    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);
    let day = |t: std::time::SystemTime| {
        // RFC 3339 starts with the UTC date: YYYY-MM-DD.
        let text = humantime::format_rfc3339_seconds(t).to_string();
        let year = text.get(0..4).and_then(|p| p.parse().ok()).unwrap_or(2026);
        let month = text.get(5..7).and_then(|p| p.parse().ok()).unwrap_or(1);
        let day = text.get(8..10).and_then(|p| p.parse().ok()).unwrap_or(1);
        rcgen::date_time_ymd(year, month, day)
    };
    let now = std::time::SystemTime::now();
    params.not_before = day(now - DAY);
    params.not_after = day(now + 90 * DAY);
}

/// The demo's configuration text: one key-protected service in front of the sample model.
fn demo_config_text(opts: &DemoOptions, model: SocketAddr, state_dir: &Path) -> String {
    format!(
        r#"[server]
listen = "{listen}"
admin_listen = "{admin}"
state_dir = "{state}"
compute_type = "demo"
drain_timeout_ms = 2000

[server.tls]
cert = "server.crt"
key = "server.key"

[[service]]
name = "iris"
route = "/api/v1/service/iris"
upstream = "http://{model}"
auth = "key"

[[service]]
name = "iris-token"
route = "/api/v1/service/iris-token"
upstream = "http://{model}"
auth = "token"
"#,
        listen = opts.listen,
        admin = opts.admin_listen,
        state = state_dir.display(),
    )
}

/// Runs the demo; returns when it is stopped.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    let pki = make_pki()?;
    // The key lives only in the demo's private temporary directory, removed at exit.
    crate::state::write_atomic(&dir.0.join("server.key"), pki.key_pem.as_bytes(), 0o600)?;
    crate::state::write_atomic(&dir.0.join("server.crt"), pki.cert_pem.as_bytes(), 0o644)?;
    let ca_path = dir.0.join("ca.pem");
    crate::state::write_atomic(&ca_path, pki.ca_pem.as_bytes(), 0o644)?;

    let stop_model = CancellationToken::new();
    let model_listener = TcpListener::bind("127.0.0.1:0").await?;
    let model_addr = model_listener.local_addr()?;
    let model = tokio::spawn(crate::sample_model::serve(
        model_listener,
        stop_model.clone(),
    ));

    let config_path = dir.0.join("scoregate.toml");
    let text = demo_config_text(&opts, model_addr, &dir.0.join("state"));
    crate::state::write_atomic(&config_path, text.as_bytes(), 0o600)?;
    let config = config::load_and_validate(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Generate the service's keys now (the gateway then loads the same file) to show the key.
    let primary = match config.services.first() {
        Some(service) => {
            crate::cli::open_keys(&config_path, &service.name)?
                .1
                .list()?
                .primary
        }
        None => anyhow::bail!("the demo configuration has no service"),
    };
    let listeners = Listeners::bind(&config).await.with_context(|| {
        format!(
            "cannot listen on {} / {} (pass --listen / --admin-listen to pick other ports)",
            opts.listen, opts.admin_listen
        )
    })?;
    let scoring_addr = listeners.scoring.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;

    let metrics = Arc::new(Metrics::new());
    let mut telemetry_config = config.telemetry.clone();
    telemetry_config.request_records = opts.records;
    let (records, writer) = crate::telemetry::start_records(&telemetry_config, &metrics)?;
    let telemetry = Telemetry { metrics, records };

    let stop = CancellationToken::new();
    let gateway = tokio::spawn(app::run(config.clone(), listeners, telemetry, {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));

    let url = format!(
        "https://localhost:{}/api/v1/service/iris/score",
        scoring_addr.port()
    );
    match self_check(scoring_addr, &pki.ca_pem, primary.expose()).await {
        Ok(body) => println!("self-check: POST {url} -> 200 {body}"),
        Err(e) => eprintln!("self-check failed: {e:#}"),
    }
    print_banner(
        &config,
        &url,
        &ca_path,
        admin_addr,
        opts.duration,
        primary.expose(),
    );

    tokio::select! {
        () = crate::shutdown::signal() => {}
        () = tokio::time::sleep(opts.duration) => {
            eprintln!("demo time limit reached ({} s); stopping", opts.duration.as_secs());
        }
    }
    stop.cancel();
    let drained = gateway.await??;
    stop_model.cancel();
    let _ = model.await;
    writer.join();
    eprintln!("scoregate demo stopped ({drained:?})");
    Ok(())
}

/// Sends one scoring call through the gateway over verified TLS and returns the response body.
/// The sample model's listener is bound before the gateway starts, so no warm-up is needed.
async fn self_check(addr: SocketAddr, ca_pem: &str, key: &str) -> anyhow::Result<String> {
    use http_body_util::{BodyExt, Full};
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(
        ca_pem.as_bytes(),
    )?)?;
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let stream = connector
        .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
        .await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::post("/api/v1/service/iris/score")
        .header(http::header::HOST, "localhost")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Full::new(bytes::Bytes::from_static(
            br#"{"data": [[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.8, 2.3]]}"#,
        )))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        Ok(body)
    } else {
        anyhow::bail!("{status}: {body}")
    }
}

fn print_banner(
    config: &Config,
    url: &str,
    ca: &Path,
    admin: SocketAddr,
    duration: Duration,
    key: &str,
) {
    let service = config.services.first().map_or("iris", |s| s.name.as_str());
    println!(
        r#"
scoregate demo is running (stops by itself in {secs} s, or press Ctrl-C)

  service "{service}" (built-in iris model, key auth) at {url}
  admin: http://{admin}/readyz
  management API credential: {admin_token}

Score through the gateway (TLS verified against the demo's throwaway CA, primary key):

  curl --cacert {ca} {url} \
       -H 'Authorization: Bearer {key}' \
       -H 'Content-Type: application/json' \
       -d '{{"data": [[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.8, 2.3]]}}'

Without the key the gateway answers 401. Rotate the secondary key (zero downtime):

  curl -X POST http://{admin}/services/{service}/regenerateKeys \
       -H "Authorization: Bearer $(cat {admin_token})" \
       -H 'Content-Type: application/json' -d '{{"keyType": "Secondary"}}'

Token mode: the same model as "iris-token". Fetch a short-lived token, then score with it:

  TOKEN=$(curl -s -X POST http://{admin}/services/iris-token/token \
       -H "Authorization: Bearer $(cat {admin_token})" | sed 's/.*"accessToken":"\([^"]*\)".*/\1/')
  curl --cacert {ca} {token_url} \
       -H "Authorization: Bearer $TOKEN" \
       -H 'Content-Type: application/json' \
       -d '{{"data": [[5.1, 3.5, 1.4, 0.2]]}}' -i
"#,
        secs = duration.as_secs(),
        ca = ca.display(),
        admin_token = config
            .server
            .state_dir
            .join(crate::auth::admin::BOOTSTRAP_FILE)
            .display(),
        token_url = url.replace("/iris/", "/iris-token/"),
    );
}

/// A private temporary directory removed on drop (the demo's only files).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(std::io::Error::other)?;
        let name = format!("scoregate-demo-{:016x}", u64::from_le_bytes(random));
        let path = std::env::temp_dir().join(name);
        crate::state::ensure_state_dir(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
