//! Request records: the Application-Insights-style line written exactly once per request.
//!
//! [`finish`] (called from `proxy::Finish::drop`) settles the outcome, updates metrics, logs
//! upstream and internal failures with their cause chain, and hands a [`RequestRecord`] to the
//! non-blocking sink (`telemetry::sink`), which serializes it off the async workers. The record
//! holds no credential: `Principal` is a key slot name or a token subject, and the URL passes
//! through `redact` first.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::Method;
use http::header::HeaderValue;
use http::uri::PathAndQuery;
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
    #[serde(rename = "RequestId")]
    pub request_id: Box<str>,
    #[serde(rename = "ClientRequestId")]
    pub client_request_id: Option<Box<str>>,
    #[serde(rename = "HTTPMethod", serialize_with = "method_text")]
    pub method: Method,
    /// Path and query as received, sensitive query values redacted.
    #[serde(rename = "RequestUrl")]
    pub url: Box<str>,
    #[serde(rename = "UserAgent")]
    pub user_agent: Option<Box<str>>,
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
    pub principal: Option<crate::auth::RecordName>,
    #[serde(rename = "UpstreamStatusCode")]
    pub upstream_status: Option<u16>,
    #[serde(rename = "UpstreamDuration")]
    pub upstream_duration_ms: Option<f64>,
    /// Milliseconds waited for a free upstream slot (null if the request never queued).
    #[serde(rename = "QueueWait")]
    pub queue_wait_ms: Option<f64>,
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

fn method_text<S: Serializer>(m: &Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}

/// Request text copied out of hyper's buffers. Copying ~100 bytes here is cheaper than
/// sharing: a shared `Bytes` would keep the connection's read buffer referenced until the
/// writer thread serialized the record, forcing hyper to allocate a fresh buffer (and copy)
/// for the next request, and the writer would drop the last reference from another thread.
fn owned(v: &HeaderValue) -> Box<str> {
    String::from_utf8_lossy(v.as_bytes()).into()
}

fn recorded_url(pq: Option<&PathAndQuery>, rules: &super::redact::Redaction) -> Box<str> {
    pq.map_or_else(|| "/".into(), |pq| rules.url(pq.as_str()).into())
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
    if let Some(d) = ctx.queue_wait {
        metrics.queue_wait.observe(d.as_secs_f64());
    }
    // The upstream slot is free once the response is done (or abandoned).
    ctx.permit = None;
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
        request_id: owned(&ctx.request_id),
        client_request_id: ctx.client_request_id.as_ref().map(owned),
        method: ctx.method.clone(),
        url: recorded_url(ctx.url.as_ref(), &gw.redaction),
        user_agent: ctx.user_agent.as_ref().map(owned),
        status: ctx.status,
        success: ctx.status < 400,
        duration_ms: duration.as_secs_f64() * 1000.0,
        compute_type: Arc::clone(&gw.compute_type),
        service: service.map(|s| Arc::clone(&s.name)),
        auth_mode: service.map(|s| s.config.auth.as_str()),
        principal: ctx.principal.record_name(),
        upstream_status: ctx.upstream_status,
        upstream_duration_ms: ctx.upstream_duration.map(|d| d.as_secs_f64() * 1000.0),
        queue_wait_ms: ctx.queue_wait.map(|d| d.as_secs_f64() * 1000.0),
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
