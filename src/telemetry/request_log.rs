//! Request records: the Application-Insights-style line written exactly once per request.
//!
//! [`finish`] (called from `proxy::Finish::drop`, once the pipeline has settled the request's
//! outcome) reads the finished [`Exchange`] and decides nothing: it updates metrics, logs
//! upstream and internal failures with their cause chain, writes the record line straight from
//! the exchange (`json_line`: no intermediate struct, no copies of request text) and hands it to
//! the non-blocking sink (`telemetry::sink`), whose thread only batches lines into writes.
//! The record holds no credential: `Principal` is a key slot name or a token subject, and the URL
//! passes through `redact` first.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::HeaderValue;
use http::uri::PathAndQuery;
use http::{Method, Version};

use super::json_line::JsonObject;
use super::trace::TraceContext;
use crate::auth::Principal;

use crate::error::{GatewayError, Side};
use crate::telemetry::export::Exporters;
use crate::telemetry::metrics::{Metrics, ServiceMetrics, UNROUTED};
use crate::telemetry::redact::Redaction;
use crate::telemetry::sink::RecordSink;

/// What a record needs from the service that handled the request (`runtime::Service`
/// implements it), so telemetry does not read the runtime.
pub trait ServiceFacts: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &Arc<str>;
    fn auth_mode(&self) -> &'static str;
    /// Bytes of the route prefix (the operation name is the path after it).
    fn route_len(&self) -> usize;
    fn role_name(&self) -> &Arc<str>;
    fn metrics(&self) -> &ServiceMetrics;
}

/// What a record needs from the runtime state in force (`runtime::RuntimeState` implements it).
pub trait StateFacts {
    fn redaction(&self) -> &Redaction;
    fn compute_type(&self) -> &str;
    /// `[telemetry] request_records`.
    fn request_records(&self) -> bool;
    /// `[telemetry] role_name`: the `RoleName` of requests that matched no service.
    fn role_name(&self) -> &Arc<str>;
    fn role_instance(&self) -> &Arc<str>;
}

/// Where a finished request's telemetry goes: the gateway's long-lived handles.
#[derive(Debug, Clone, Copy)]
pub struct Outputs<'a> {
    pub records: &'a RecordSink,
    pub metrics: &'a Metrics,
    /// Handles for requests that matched no route.
    pub unrouted: &'a ServiceMetrics,
    pub export: &'a Exporters,
}

/// One request as telemetry sees it: what arrived, and how it ended. The request pipeline owns
/// it (`proxy::RequestCtx`, which changes it only through its transitions and settles the
/// outcome); telemetry gets a shared reference to the settled exchange.
#[derive(Debug)]
pub struct Exchange {
    pub request_id: HeaderValue,
    pub client_request_id: Option<HeaderValue>,
    /// The caller's trace continued (or a new one) with the gateway's span in it.
    pub trace: TraceContext,
    pub start: Instant,
    pub start_wall: SystemTime,
    pub method: Method,
    pub version: Version,
    /// Path and query exactly as received.
    pub url: Option<PathAndQuery>,
    pub user_agent: Option<HeaderValue>,
    /// The `Host` the client addressed (`server.address` of exported spans).
    pub host: Option<HeaderValue>,
    /// The caller's address: the peer, or what a trusted proxy says in `X-Forwarded-For`.
    pub client_ip: IpAddr,
    pub service: Option<Arc<dyn ServiceFacts>>,
    pub principal: Principal,
    /// The status sent to the client (once settled: the error's status if it left first).
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub upstream_duration: Option<Duration>,
    /// Time spent waiting for a free upstream slot (`None`: never reached the queue).
    pub queue_wait: Option<Duration>,
    /// Request body bytes read from the client (set when the request is settled).
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub error: Option<GatewayError>,
}

/// The longest `RequestUrl` written (Application Insights' `url` limit); longer ones are cut
/// and marked (`json_line::TRUNCATED`).
pub const MAX_URL_BYTES: usize = 2048;

/// The longest value of any other text field a client controls (`UserAgent`, `RequestId`,
/// `ClientRequestId`, `Principal`); Application Insights' limit for names and sources.
pub const MAX_FIELD_BYTES: usize = 1024;

/// Writes the request record line (JSON and a newline). Field names are the documented ones;
/// values come straight from the request context, so nothing is copied or allocated beyond the
/// line itself. The URL passes through redaction; `Principal` is a slot name or a subject.
fn record_line(
    state: &dyn StateFacts,
    ctx: &Exchange,
    duration: std::time::Duration,
    line: &mut Vec<u8>,
) {
    let service = ctx.service.as_deref();
    let mut o = JsonObject::new(line);
    o.str("type", "request");
    o.timestamp_micros("timestamp", ctx.start_wall);
    o.capped_opt_bytes(
        "RequestId",
        Some(ctx.request_id.as_bytes()),
        MAX_FIELD_BYTES,
    );
    o.capped_opt_bytes(
        "ClientRequestId",
        ctx.client_request_id.as_ref().map(HeaderValue::as_bytes),
        MAX_FIELD_BYTES,
    );
    o.str("HTTPMethod", ctx.method.as_str());
    let url = ctx
        .url
        .as_ref()
        .map_or(Cow::Borrowed("/"), |pq| state.redaction().url(pq.as_str()));
    // Redacted before it is cut, so a cut never exposes part of a sensitive value.
    o.capped_str("RequestUrl", &url, MAX_URL_BYTES);
    o.capped_opt_bytes(
        "UserAgent",
        ctx.user_agent.as_ref().map(HeaderValue::as_bytes),
        MAX_FIELD_BYTES,
    );
    o.u64("StatusCode", u64::from(ctx.status));
    o.bool("Success", ctx.status < 400);
    o.millis("Duration", duration);
    o.str("ComputeType", state.compute_type());
    o.opt_str("ServiceName", service.map(|s| &**s.name()));
    o.opt_str("AuthMode", service.map(ServiceFacts::auth_mode));
    let principal = match &ctx.principal {
        Principal::Anonymous => None,
        Principal::Key(slot) => Some(slot.as_str()),
        Principal::Token { subject, .. } => Some(&**subject),
    };
    match principal {
        Some(p) => o.capped_str("Principal", p, MAX_FIELD_BYTES),
        None => o.null("Principal"),
    }
    o.opt_u64("UpstreamStatusCode", ctx.upstream_status.map(u64::from));
    o.opt_millis("UpstreamDuration", ctx.upstream_duration);
    o.opt_millis("QueueWait", ctx.queue_wait);
    o.u64("RequestBytes", ctx.request_bytes);
    o.u64("ResponseBytes", ctx.response_bytes);
    o.opt_str("ErrorCode", ctx.error.as_ref().map(GatewayError::code));
    o.ip("ClientIp", ctx.client_ip);
    o.hex("OperationId", &ctx.trace.trace_id.0);
    match ctx.trace.parent_id {
        Some(parent) => o.hex("ParentId", &parent.0),
        None => o.null("ParentId"),
    }
    o.hex("SpanId", &ctx.trace.span_id.0);
    let name = super::export::SpanName::of(
        &ctx.method,
        ctx.url.as_ref().map_or("/", PathAndQuery::path),
        service.map(ServiceFacts::route_len),
    );
    o.concat("Name", &name.parts());
    o.str(
        "RoleName",
        service
            .map_or(state.role_name(), ServiceFacts::role_name)
            .as_ref(),
    );
    o.str("RoleInstance", state.role_instance());
    o.end();
    line.push(b'\n');
}

/// Completes a request's telemetry from its settled exchange: updates the metrics, logs upstream
/// and internal failures with their cause, and emits the record (and the exported span). Called
/// exactly once per request, from `proxy::Finish::drop`.
pub fn finish(out: Outputs<'_>, state: &dyn StateFacts, ctx: &Exchange) {
    let duration = ctx.start.elapsed();
    let service = ctx.service.as_deref();
    let metrics = service.map_or(out.unrouted, ServiceFacts::metrics);
    metrics.count_request(&ctx.method, ctx.status);
    metrics.observe_duration(ctx.status, duration.as_secs_f64());
    if let Some(d) = ctx.upstream_duration {
        metrics.observe_upstream_duration(d.as_secs_f64());
    }
    if let Some(d) = ctx.queue_wait {
        metrics.observe_queue_wait(d.as_secs_f64());
    }
    if let Principal::Key(slot) = ctx.principal {
        metrics.count_key_auth(slot);
    }
    if let Some(err) = &ctx.error {
        observe_error(
            out.metrics,
            metrics,
            service.map_or(UNROUTED, |s| s.name()),
            ctx,
            err,
        );
    }

    if state.request_records() {
        out.records
            .emit(|line| record_line(state, ctx, duration, line));
    }
    if !out.export.is_empty() {
        out.export.offer(span_record(state, ctx, duration));
    }
}

/// The request as an exported span (only built when export is on).
fn span_record(
    state: &dyn StateFacts,
    ctx: &Exchange,
    duration: std::time::Duration,
) -> super::export::SpanRecord {
    let service = ctx.service.as_deref();
    let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    super::export::SpanRecord {
        trace_id: ctx.trace.trace_id.0,
        span_id: ctx.trace.span_id.0,
        parent_id: ctx.trace.parent_id.map(|p| p.0),
        flags: ctx.trace.flags,
        trace_state: ctx.trace.state.as_ref().map(text),
        start: ctx.start_wall,
        duration,
        method: ctx.method.clone(),
        path: ctx
            .url
            .as_ref()
            .map_or_else(|| "/".to_owned(), |pq| pq.path().to_owned()),
        route_len: service.map(ServiceFacts::route_len),
        status: ctx.status,
        server_address: ctx.host.as_ref().map(text),
        client_address: ctx.client_ip,
        request_id: text(&ctx.request_id),
        role_name: Arc::clone(service.map_or(state.role_name(), ServiceFacts::role_name)),
        service: service.map(|s| Arc::clone(s.name())),
        auth_mode: service.map(ServiceFacts::auth_mode),
        principal: match &ctx.principal {
            Principal::Anonymous => None,
            Principal::Key(slot) => Some(slot.as_str().to_owned()),
            Principal::Token { subject, .. } => Some(subject.to_string()),
        },
        queue_wait: ctx.queue_wait,
        upstream_duration: ctx.upstream_duration,
        error: ctx.error.as_ref().map(GatewayError::code),
    }
}

/// Failure-side metrics and the diagnostic line with the full cause chain.
fn observe_error(
    all: &Metrics,
    metrics: &ServiceMetrics,
    service: &str,
    ctx: &Exchange,
    err: &GatewayError,
) {
    // Admission refusals (queue, rate limit, body size, network rules) have their own family.
    if metrics.count_admission_rejection(err) {
        return;
    }
    match err.side() {
        Side::Auth => match err {
            GatewayError::Unauthenticated(failure) => metrics.count_auth_failure(*failure),
            _ => all
                .auth_failures
                .with_label_values(&[service, err.code()])
                .inc(),
        },
        Side::Upstream => {
            all.upstream_errors
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
