//! Request records: the Application-Insights-style line written once per request, and the writer
//! that gets them to their sink without ever blocking a request.
//!
//! `proxy::finish` builds a [`RequestRecord`] and hands it to [`RecordSink::emit`], which only does
//! a non-blocking `try_send` into a bounded channel. A dedicated OS thread drains the channel,
//! serializes records as JSON lines into one buffer per batch and writes the batch with a single
//! call, so serialization and I/O cost nothing on the async workers and a slow sink drops records
//! (counted in `scoregate_request_records_dropped_total`) instead of queueing without bound.
//! The record holds no credential: `Principal` is a key slot name or a token subject.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::SystemTime;

use http::Method;
use http::header::HeaderValue;
use http::uri::PathAndQuery;
use prometheus::IntCounter;
use serde::{Serialize, Serializer};

use crate::error::{GatewayError, Side};
use crate::proxy::RequestCtx;
use crate::runtime::Gateway;
use crate::telemetry::metrics::{ServiceMetrics, UNROUTED};

/// One request, as written to the record stream. Field names are the documented ones. Values are
/// kept in their `http` types (cheap reference-counted clones) and turned into text by the writer
/// thread, off the request path.
#[derive(Debug, Serialize)]
pub struct RequestRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: SystemTime,
    #[serde(rename = "RequestId", serialize_with = "header_text")]
    pub request_id: HeaderValue,
    #[serde(rename = "ClientRequestId", serialize_with = "opt_header_text")]
    pub client_request_id: Option<HeaderValue>,
    #[serde(rename = "HTTPMethod", serialize_with = "method_text")]
    pub method: Method,
    #[serde(rename = "RequestUrl", serialize_with = "url_text")]
    pub url: Option<PathAndQuery>,
    #[serde(rename = "UserAgent", serialize_with = "opt_header_text")]
    pub user_agent: Option<HeaderValue>,
    #[serde(rename = "StatusCode")]
    pub status: u16,
    #[serde(rename = "Success")]
    pub success: bool,
    /// Milliseconds, fractional.
    #[serde(rename = "Duration")]
    pub duration_ms: f64,
    #[serde(rename = "ComputeType")]
    pub compute_type: Arc<str>,
    #[serde(rename = "ServiceName")]
    pub service: Option<Arc<str>>,
    #[serde(rename = "AuthMode")]
    pub auth_mode: Option<&'static str>,
    #[serde(rename = "Principal")]
    pub principal: Option<String>,
    #[serde(rename = "UpstreamStatusCode")]
    pub upstream_status: Option<u16>,
    #[serde(rename = "UpstreamDuration")]
    pub upstream_duration_ms: Option<f64>,
    #[serde(rename = "RequestBytes")]
    pub request_bytes: u64,
    #[serde(rename = "ResponseBytes")]
    pub response_bytes: u64,
    #[serde(rename = "ErrorCode")]
    pub error_code: Option<&'static str>,
    #[serde(rename = "ClientIp")]
    pub client_ip: IpAddr,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*t))
}

fn header_text<S: Serializer>(v: &HeaderValue, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(v.as_bytes()))
}

#[allow(clippy::ref_option)] // serde's `serialize_with` passes `&Option<T>`
fn opt_header_text<S: Serializer>(v: &Option<HeaderValue>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => header_text(v, s),
        None => s.serialize_none(),
    }
}

fn method_text<S: Serializer>(m: &Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}

#[allow(clippy::ref_option)] // serde's `serialize_with` passes `&Option<T>`
fn url_text<S: Serializer>(v: &Option<PathAndQuery>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_ref().map_or("/", PathAndQuery::as_str))
}

/// Completes a request's telemetry: settles the outcome of a request that ended early, updates
/// the metrics, logs upstream and internal failures with their cause, and emits the record.
/// Called exactly once per request, from `proxy::Finish::drop`.
pub fn finish(gw: &Gateway, ctx: &mut RequestCtx) {
    if !ctx.response_started {
        // hyper dropped the request before any response existed: the client went away.
        ctx.status = GatewayError::ClientDisconnected.status().as_u16();
        ctx.error = Some(GatewayError::ClientDisconnected);
    } else if !ctx.response_complete && ctx.error.is_none() {
        // The status went out but the body did not finish: the client went away mid-response.
        ctx.error = Some(GatewayError::ClientDisconnected);
    }
    let duration = ctx.start.elapsed();
    let service = ctx.service.as_deref();
    let metrics = service.map_or(&gw.unrouted, |s| &s.metrics);
    metrics.count_request(&ctx.method, ctx.status);
    metrics.duration.observe(duration.as_secs_f64());
    if let Some(d) = ctx.upstream_duration {
        metrics.upstream_duration.observe(d.as_secs_f64());
    }
    if service.is_some() {
        metrics.inflight.dec();
    }
    if let crate::auth::Principal::Key(slot) = ctx.principal {
        metrics.count_key_auth(slot);
    }
    if let Some(err) = &ctx.error {
        observe_error(
            gw,
            metrics,
            service.map_or(UNROUTED, |s| &s.config.name),
            ctx,
            err,
        );
    }

    gw.records.emit(RequestRecord {
        kind: "request",
        timestamp: ctx.start_wall,
        request_id: ctx.request_id.clone(),
        client_request_id: ctx.client_request_id.take(),
        method: ctx.method.clone(),
        url: ctx.url.take(),
        user_agent: ctx.user_agent.take(),
        status: ctx.status,
        success: ctx.status < 400,
        duration_ms: duration.as_secs_f64() * 1000.0,
        compute_type: Arc::clone(&gw.compute_type),
        service: service.map(|s| Arc::clone(&s.name)),
        auth_mode: service.map(|s| s.config.auth.as_str()),
        principal: ctx.principal.record_name(),
        upstream_status: ctx.upstream_status,
        upstream_duration_ms: ctx.upstream_duration.map(|d| d.as_secs_f64() * 1000.0),
        request_bytes: ctx.request_bytes(),
        response_bytes: ctx.response_bytes,
        error_code: ctx.error.as_ref().map(GatewayError::code),
        client_ip: ctx.client_ip,
    });
}

/// Failure-side metrics and the diagnostic line with the full cause chain.
fn observe_error(
    gw: &Gateway,
    metrics: &ServiceMetrics,
    service: &str,
    ctx: &RequestCtx,
    err: &GatewayError,
) {
    match err.side() {
        Side::Auth => match err {
            GatewayError::Unauthenticated(failure) => metrics.count_auth_failure(*failure),
            _ => gw
                .metrics
                .auth_failures
                .with_label_values(&[service, err.code()])
                .inc(),
        },
        Side::Upstream => {
            gw.metrics
                .upstream_errors
                .with_label_values(&[service, err.code()])
                .inc();
            tracing::warn!(
                request_id = %String::from_utf8_lossy(ctx.request_id.as_bytes()),
                service,
                code = err.code(),
                error = %ErrorChain(err),
                "upstream failure"
            );
        }
        Side::Internal => tracing::error!(
            request_id = %String::from_utf8_lossy(ctx.request_id.as_bytes()),
            service,
            error = %ErrorChain(err),
            "internal error"
        ),
        Side::Client | Side::Capacity => {}
    }
}

/// Displays an error followed by its `source()` chain: `a: b: c`.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// Where records go.
pub enum RecordOutput {
    /// Standard output (the default; diagnostics go to stderr so stdout stays machine-readable).
    Stdout,
    /// Any writer, e.g. a file or a test's buffer.
    Writer(Box<dyn Write + Send>),
}

impl std::fmt::Debug for RecordOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdout => f.write_str("Stdout"),
            Self::Writer(_) => f.write_str("Writer"),
        }
    }
}

/// The request path's handle: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct RecordSink {
    tx: Option<SyncSender<RequestRecord>>,
    dropped: IntCounter,
}

/// Joins the writer thread once every `RecordSink` clone is gone (at the end of shutdown).
#[derive(Debug)]
pub struct RecordWriter {
    thread: Option<JoinHandle<()>>,
}

impl RecordWriter {
    /// Waits for the writer to flush what is queued. Call after the last sink is dropped.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl RecordSink {
    /// A sink that discards records (records turned off).
    pub fn disabled(dropped: IntCounter) -> Self {
        Self { tx: None, dropped }
    }

    /// Starts the writer thread. `capacity` bounds the records waiting to be written.
    pub fn spawn(
        output: RecordOutput,
        capacity: usize,
        dropped: IntCounter,
        write_errors: IntCounter,
    ) -> std::io::Result<(Self, RecordWriter)> {
        let (tx, rx) = sync_channel(capacity);
        let thread = std::thread::Builder::new()
            .name("scoregate-records".into())
            .spawn(move || {
                let out: Box<dyn Write> = match output {
                    // Not `lock()`: holding the lock for the thread's life would block every other
                    // `println!` in the process (the demo banner, check-config output).
                    RecordOutput::Stdout => Box::new(std::io::stdout()),
                    RecordOutput::Writer(w) => w,
                };
                write_loop(&rx, out, &write_errors);
            })?;
        Ok((
            Self {
                tx: Some(tx),
                dropped,
            },
            RecordWriter {
                thread: Some(thread),
            },
        ))
    }

    /// Queues a record, or counts it as dropped when the writer is behind.
    pub fn emit(&self, record: RequestRecord) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// Most records written per `write` call; bounds the batch buffer under sustained load.
const MAX_BATCH: usize = 1024;

fn write_loop(rx: &Receiver<RequestRecord>, mut out: Box<dyn Write>, write_errors: &IntCounter) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut failing = false;
    // `recv` returns Err once every sender is gone and the queue is empty: a clean stop.
    while let Ok(first) = rx.recv() {
        buf.clear();
        append(&mut buf, &first);
        for record in rx.try_iter().take(MAX_BATCH - 1) {
            append(&mut buf, &record);
        }
        match out.write_all(&buf).and_then(|()| out.flush()) {
            Ok(()) => {
                if failing {
                    tracing::info!("request records are being written again");
                    failing = false;
                }
            }
            Err(e) => {
                write_errors.inc();
                // Log the first failure of a run only: a full disk must not flood stderr.
                if !failing {
                    tracing::error!(error = %e, "writing request records failed; records are being lost");
                    failing = true;
                }
            }
        }
    }
}

fn append(buf: &mut Vec<u8>, record: &RequestRecord) {
    // Serializing plain owned data into a Vec cannot fail.
    if serde_json::to_writer(&mut *buf, record).is_ok() {
        buf.push(b'\n');
    }
}
