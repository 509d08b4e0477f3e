//! OTLP/HTTP (`[telemetry.otlp]`): spans as protobuf `ExportTraceServiceRequest`s to the traces
//! endpoint, activity entries as `ExportLogsServiceRequest`s to the logs endpoint; the headers of
//! `headers_file` on every request. 429, 502, 503, 504 and connection failures are retried.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message as _;

use super::{Deliver, FIRST_BACKOFF, Http, Item, Retry, SpanRecord, unix_nanos};
use crate::config::OtlpConfig;
use crate::telemetry::activity::{ActivityRecord, Outcome};

/// The `exporter` label of this exporter's series.
pub const EXPORTER: &str = "otlp";

pub(crate) struct Otlp {
    http: Http,
    traces: http::Uri,
    logs: http::Uri,
    instance: Arc<str>,
    retry: Retry,
}

impl Otlp {
    pub(crate) fn new(config: &OtlpConfig, http: Http, instance: Arc<str>, retry: Retry) -> Self {
        Self {
            http,
            traces: config.endpoint.clone(),
            logs: config.logs_endpoint.clone(),
            instance,
            retry,
        }
    }

    /// Sends one protobuf body, retrying as the receiver allows; false if it was never accepted.
    async fn send(&self, uri: &http::Uri, body: Bytes, attempts: u32) -> bool {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=attempts {
            let after = match self
                .http
                .post(uri, "application/x-protobuf", false, body.clone())
                .await
            {
                Some(a) if (200..300).contains(&a.status) => {
                    self.retry.succeeded();
                    return true;
                }
                Some(a) if matches!(a.status, 429 | 502 | 503 | 504) => a.retry_after,
                Some(a) => {
                    tracing::warn!(
                        status = a.status,
                        "the OTLP receiver refused a batch; dropped"
                    );
                    break;
                }
                None => None::<Duration>,
            };
            if !self
                .retry
                .wait(attempt, attempts, after, &mut backoff)
                .await
            {
                break;
            }
        }
        self.retry.gave_up();
        false
    }
}

impl Deliver for Otlp {
    async fn deliver(&self, batch: Vec<Item>, attempts: u32) -> u64 {
        let (mut spans, mut entries) = (Vec::new(), Vec::new());
        for item in batch {
            match item {
                Item::Span(span) => spans.push(span),
                Item::Activity(entry) => entries.push(entry),
            }
        }
        let mut lost = 0;
        if !spans.is_empty() {
            let body = Bytes::from(encode(&spans, &self.instance).encode_to_vec());
            if !self.send(&self.traces, body, attempts).await {
                lost += spans.len() as u64;
            }
        }
        if !entries.is_empty() {
            let body = Bytes::from(encode_logs(&entries).encode_to_vec());
            if !self.send(&self.logs, body, attempts).await {
                lost += entries.len() as u64;
            }
        }
        lost
    }

    fn retry(&self) -> &Retry {
        &self.retry
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
    let nanos = unix_nanos(e.timestamp);
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
    let start = unix_nanos(r.start);
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
        start_time_unix_nano: start,
        end_time_unix_nano: unix_nanos(r.start + r.duration),
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
