//! OTLP/HTTP export (`[telemetry.otlp]`): one server span per request, following the
//! OpenTelemetry HTTP semantic conventions, sent as protobuf `ExportTraceServiceRequest`s to the
//! traces endpoint, and every activity entry (management operations, reloads) as an OTLP log
//! record in `ExportLogsServiceRequest`s to the logs endpoint.
//!
//! A request never waits for export: `finish` offers its span to a bounded queue and, when the
//! queue is full, the span is dropped and counted (`scoregate_export_dropped_total{exporter}`);
//! activity entries share the queue and its bound.
//! One task drains the queue: it takes everything queued (up to `batch_size`) into one request,
//! so batches grow by themselves while a send is in flight, and retries a refused batch with
//! exponential backoff, honouring `Retry-After` (429, 502, 503, 504, connection failures); a
//! batch still refused after the last attempt is dropped and counted.
//!
//! The endpoint may be `https://` (system roots plus an optional `ca`), and every export request
//! carries the headers of `headers_file` (e.g. a collector's API key). At shutdown, after the
//! scoring listener has drained, [`Flush::run`] sends what is still queued (one attempt per
//! batch, bounded by the export `timeout`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prometheus::IntCounter;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::OtlpConfig;
use crate::telemetry::activity::{ActivityRecord, Outcome};
use crate::telemetry::metrics::Metrics;

/// The `exporter` label of this exporter's series.
const EXPORTER: &str = "otlp";

/// Attempts per batch (the first send and its retries).
const ATTEMPTS: u32 = 5;

/// The first retry waits this long; each next one twice as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A `Retry-After` beyond this is capped (the queue keeps filling meanwhile).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// One request as a span, in the gateway's own types (converted to protobuf on the export task,
/// not on the request path).
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    pub flags: u8,
    pub trace_state: Option<String>,
    /// `POST /score`.
    pub name: String,
    pub start: SystemTime,
    pub duration: Duration,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The `Host` the client addressed.
    pub server_address: Option<String>,
    pub client_address: String,
    pub request_id: String,
    pub role_name: Arc<str>,
    pub service: Option<Arc<str>>,
    pub auth_mode: Option<&'static str>,
    pub principal: Option<String>,
    pub queue_wait: Option<Duration>,
    pub upstream_duration: Option<Duration>,
    /// The gateway's error code, when the request failed.
    pub error: Option<&'static str>,
}

/// What waits in the export queue.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "spans are the common case: boxing them would cost an allocation per request"
)]
enum Item {
    Span(SpanRecord),
    /// Rare next to spans, so boxed to keep the queue's slots small.
    Activity(Box<ActivityRecord>),
}

/// The request side of the exporter: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct OtlpExporter {
    tx: mpsc::Sender<Item>,
    dropped: IntCounter,
}

/// The shutdown side of the exporter, held by the composition root.
#[derive(Debug)]
pub struct Flush {
    stop: CancellationToken,
    task: JoinHandle<()>,
    bound: Duration,
}

impl Flush {
    /// Sends what is still queued and stops the export task; waits at most the export timeout
    /// (plus the batch in flight), so a receiver that is down cannot hold up the exit.
    pub async fn run(self) {
        self.stop.cancel();
        if tokio::time::timeout(self.bound, self.task).await.is_err() {
            tracing::warn!("OTLP export did not finish within its timeout at shutdown");
        }
    }
}

impl OtlpExporter {
    /// Starts the export task (on the current tokio runtime). It ends when [`Flush::run`] asks it
    /// to, or when every exporter handle is gone, after sending what is queued.
    pub fn start(
        config: &OtlpConfig,
        instance: Arc<str>,
        metrics: &Metrics,
    ) -> Result<(Self, Flush), String> {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let dropped = metrics.export_dropped.with_label_values(&[EXPORTER]);
        let tls = crate::tls::client_config(config.ca.as_deref())?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let stop = CancellationToken::new();
        let task = ExportTask {
            config: config.clone(),
            instance,
            client: Client::builder(TokioExecutor::new()).build(connector),
            stop: stop.clone(),
            dropped: dropped.clone(),
            ok: metrics.export_batches.with_label_values(&[EXPORTER, "ok"]),
            retried: metrics
                .export_batches
                .with_label_values(&[EXPORTER, "retried"]),
            failed: metrics
                .export_batches
                .with_label_values(&[EXPORTER, "failed"]),
        };
        let bound = config.timeout * 2;
        let task = tokio::spawn(task.run(rx));
        Ok((Self { tx, dropped }, Flush { stop, task, bound }))
    }

    /// Queues a span, or drops and counts it when the queue is full.
    pub fn offer(&self, span: SpanRecord) {
        self.queue(Item::Span(span));
    }

    /// Queues an activity entry as a log record, or drops and counts it when the queue is full
    /// (the entry itself is in the record stream and `GET /activity` regardless).
    pub fn offer_activity(&self, entry: &ActivityRecord) {
        self.queue(Item::Activity(Box::new(entry.clone())));
    }

    fn queue(&self, item: Item) {
        if self.tx.try_send(item).is_err() {
            self.dropped.inc();
        }
    }
}

struct ExportTask {
    config: OtlpConfig,
    instance: Arc<str>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    stop: CancellationToken,
    dropped: IntCounter,
    ok: IntCounter,
    retried: IntCounter,
    failed: IntCounter,
}

/// Why a send did not succeed.
enum SendError {
    /// Worth trying again, after at least this long if the receiver said so.
    Retry(Option<Duration>),
    /// The receiver refused the batch itself (a 4xx other than 429).
    Refused,
}

impl ExportTask {
    async fn run(self, mut rx: mpsc::Receiver<Item>) {
        let mut batch = Vec::with_capacity(self.config.batch_size);
        loop {
            let first = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                span = rx.recv() => match span {
                    Some(span) => span,
                    None => break,
                },
            };
            batch.push(first);
            self.send_batch(&mut batch, &mut rx, ATTEMPTS).await;
        }
        // Shutdown: what is still queued goes out, one attempt per batch.
        rx.close();
        while let Ok(first) = rx.try_recv() {
            batch.push(first);
            self.send_batch(&mut batch, &mut rx, 1).await;
        }
    }

    /// Fills `batch` from the queue (up to `batch_size`), sends its spans and its log records
    /// (one request each), and empties it.
    async fn send_batch(
        &self,
        batch: &mut Vec<Item>,
        rx: &mut mpsc::Receiver<Item>,
        attempts: u32,
    ) {
        while batch.len() < self.config.batch_size {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let (mut spans, mut entries) = (Vec::new(), Vec::new());
        for item in batch.drain(..) {
            match item {
                Item::Span(span) => spans.push(span),
                Item::Activity(entry) => entries.push(entry),
            }
        }
        if !spans.is_empty() {
            let body = Bytes::from(encode(&spans, &self.instance).encode_to_vec());
            if !self.deliver(&self.config.endpoint, body, attempts).await {
                self.dropped.inc_by(spans.len() as u64);
            }
        }
        if !entries.is_empty() {
            let body = Bytes::from(encode_logs(&entries).encode_to_vec());
            if !self
                .deliver(&self.config.logs_endpoint, body, attempts)
                .await
            {
                self.dropped.inc_by(entries.len() as u64);
            }
        }
    }

    /// Sends one batch, retrying as the receiver allows (not once shutdown has begun); false if
    /// it was never accepted.
    async fn deliver(&self, endpoint: &http::Uri, body: Bytes, attempts: u32) -> bool {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=attempts {
            match self.send(endpoint, body.clone()).await {
                Ok(()) => {
                    self.ok.inc();
                    return true;
                }
                Err(SendError::Retry(after)) if attempt < attempts && !self.stop.is_cancelled() => {
                    self.retried.inc();
                    let wait = after.map_or(backoff, |a| a.min(MAX_RETRY_AFTER));
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        // Shutdown: one last attempt instead of the wait.
                        () = self.stop.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                // Refused for good, the last attempt, or shutdown.
                Err(_) => break,
            }
        }
        self.failed.inc();
        false
    }

    async fn send(&self, endpoint: &http::Uri, body: Bytes) -> Result<(), SendError> {
        let mut req = http::Request::post(endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(body))
            .map_err(|_| SendError::Refused)?;
        for (name, value) in &self.config.headers {
            req.headers_mut().append(name, value.clone());
        }
        let resp = match tokio::time::timeout(self.config.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "OTLP export failed; retrying");
                return Err(SendError::Retry(None));
            }
            Err(_) => return Err(SendError::Retry(None)),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read the answer so the connection can be reused; its content is not needed.
        let _ = tokio::time::timeout(self.config.timeout, resp.into_body().collect()).await;
        match status.as_u16() {
            200..=299 => Ok(()),
            429 | 502 | 503 | 504 => Err(SendError::Retry(retry_after)),
            code => {
                tracing::warn!(status = code, "the OTLP receiver refused a batch; dropped");
                Err(SendError::Refused)
            }
        }
    }
}

/// The protobuf request: one `ResourceSpans` per role name (`service.name`), all with this
/// instance's `service.instance.id`.
fn encode(batch: &[SpanRecord], instance: &str) -> ExportTraceServiceRequest {
    let mut by_role: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
    for record in batch {
        by_role
            .entry(&record.role_name)
            .or_default()
            .push(span_of(record));
    }
    ExportTraceServiceRequest {
        resource_spans: by_role
            .into_iter()
            .map(|(role, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv_str("service.name", role),
                        kv_str("service.instance.id", instance),
                    ],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

/// The protobuf request of activity entries: one `ResourceLogs` per (role name, instance).
fn encode_logs(entries: &[Box<ActivityRecord>]) -> ExportLogsServiceRequest {
    let mut by_role: BTreeMap<(&str, &str), Vec<LogRecord>> = BTreeMap::new();
    for entry in entries {
        let role = entry.role_name.as_deref().unwrap_or("scoregate");
        let instance = entry.role_instance.as_deref().unwrap_or_default();
        by_role
            .entry((role, instance))
            .or_default()
            .push(log_of(entry));
    }
    ExportLogsServiceRequest {
        resource_logs: by_role
            .into_iter()
            .map(|((role, instance), log_records)| ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv_str("service.name", role),
                        kv_str("service.instance.id", instance),
                    ],
                    ..Resource::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

/// An activity entry as a log record: the operation name is the body and the event name, the
/// entry's fields are attributes (the record stream's names), and a failure or a denial is a
/// warning.
fn log_of(e: &ActivityRecord) -> LogRecord {
    let at = e
        .timestamp
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let nanos = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
    let result = match e.result {
        Outcome::Succeeded => "Succeeded",
        Outcome::Failed => "Failed",
        Outcome::Denied => "Denied",
    };
    let (severity, text) = match e.result {
        Outcome::Succeeded => (SeverityNumber::Info, "INFO"),
        Outcome::Failed | Outcome::Denied => (SeverityNumber::Warn, "WARN"),
    };
    let mut attributes = vec![
        kv_str("scoregate.operation", e.operation),
        kv_str("scoregate.initiator", &e.initiator),
        kv_str("scoregate.result", result),
    ];
    let optional = [
        ("scoregate.service", e.service.as_deref()),
        ("scoregate.request_id", e.request_id.as_deref()),
        ("scoregate.reason", e.reason.as_deref()),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            attributes.push(kv_str(key, v));
        }
    }
    if let Some(ip) = e.source_ip {
        attributes.push(kv_str("client.address", &ip.to_string()));
    }
    LogRecord {
        time_unix_nano: nanos,
        observed_time_unix_nano: nanos,
        severity_number: severity as i32,
        severity_text: text.to_owned(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(e.operation.to_owned())),
        }),
        attributes,
        event_name: format!("scoregate.activity.{}", e.operation),
        ..LogRecord::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "scoregate".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..InstrumentationScope::default()
    }
}

fn span_of(r: &SpanRecord) -> Span {
    let start = r
        .start
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let mut attributes = vec![
        kv_str("http.request.method", &r.method),
        kv_str("url.path", &r.path),
        kv_int("http.response.status_code", i64::from(r.status)),
        kv_str("client.address", &r.client_address),
        kv_str("scoregate.request_id", &r.request_id),
    ];
    if let Some(host) = &r.server_address {
        attributes.push(kv_str("server.address", host));
    }
    if let Some(e) = r.error {
        attributes.push(kv_str("error.type", e));
    }
    if let Some(s) = &r.service {
        attributes.push(kv_str("scoregate.service", s));
    }
    if let Some(a) = r.auth_mode {
        attributes.push(kv_str("scoregate.auth_mode", a));
    }
    if let Some(p) = &r.principal {
        attributes.push(kv_str("scoregate.principal", p));
    }
    if let Some(q) = r.queue_wait {
        attributes.push(kv_f64("scoregate.queue_wait_ms", q.as_secs_f64() * 1000.0));
    }
    if let Some(u) = r.upstream_duration {
        attributes.push(kv_f64(
            "scoregate.upstream_duration_ms",
            u.as_secs_f64() * 1000.0,
        ));
    }
    Span {
        trace_id: r.trace_id.to_vec(),
        span_id: r.span_id.to_vec(),
        trace_state: r.trace_state.clone().unwrap_or_default(),
        parent_span_id: r.parent_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags: u32::from(r.flags),
        name: r.name.clone(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: nanos(start),
        end_time_unix_nano: nanos(start + r.duration),
        attributes,
        // HTTP semantic conventions: a server span is an error for 5xx only.
        status: Some(Status {
            message: String::new(),
            code: if r.status >= 500 {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Unset as i32
            },
        }),
        ..Span::default()
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_owned()))
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

fn kv_f64(key: &str, value: f64) -> KeyValue {
    kv(key, any_value::Value::DoubleValue(value))
}
