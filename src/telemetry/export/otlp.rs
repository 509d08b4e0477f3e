//! OTLP/HTTP (`[telemetry.otlp]`): spans as protobuf `ExportTraceServiceRequest`s to the traces
//! endpoint, activity entries as `ExportLogsServiceRequest`s to the logs endpoint; the headers of
//! `headers_file` on every request. 429, 502, 503, 504 and connection failures are retried.
//!
//! Spans are written to the wire directly (with `opentelemetry-proto`'s field numbers; the tests
//! decode them with its message types), not through the SDK and `opentelemetry-otlp`, which
//! cost 2.99 µs of CPU per span against 0.48 µs here (`loadtest/sdk_cost/`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status};
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
            let body = Bytes::from(encode(&spans, &self.instance));
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

/// The protobuf `ExportTraceServiceRequest`: one `ResourceSpans` per role name
/// (`service.name`), all with this instance's `service.instance.id`. Written straight from the
/// span records with `prost`'s wire primitives (`wire`): building the generated message structs
/// cost two allocations per attribute, which under load was most of the exporter's CPU.
pub(super) fn encode(batch: &[SpanRecord], instance: &str) -> Vec<u8> {
    let mut by_role: BTreeMap<&str, Vec<&SpanRecord>> = BTreeMap::new();
    for record in batch {
        by_role.entry(&record.role_name).or_default().push(record);
    }
    let mut out = Vec::with_capacity(batch.len() * 512);
    let (mut resource_spans, mut scope_spans, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
    for (role, records) in by_role {
        // ScopeSpans { scope = 1, spans = 2 }
        scope_spans.clear();
        scratch.clear();
        wire::string(1, "scoregate", &mut scratch);
        wire::string(2, env!("CARGO_PKG_VERSION"), &mut scratch);
        wire::bytes(1, &scratch, &mut scope_spans);
        for record in records {
            scratch.clear();
            span_of(record, &mut scratch);
            wire::bytes(2, &scratch, &mut scope_spans);
        }
        // ResourceSpans { resource = 1 { attributes = 1 }, scope_spans = 2 }
        resource_spans.clear();
        scratch.clear();
        wire::kv_str(1, "service.name", role, &mut scratch);
        wire::kv_str(1, "service.instance.id", instance, &mut scratch);
        wire::bytes(1, &scratch, &mut resource_spans);
        wire::bytes(2, &scope_spans, &mut resource_spans);
        // ExportTraceServiceRequest { resource_spans = 1 }
        wire::bytes(1, &resource_spans, &mut out);
    }
    out
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

/// One `Span` message (field numbers of `opentelemetry/proto/trace/v1/trace.proto`): a server
/// span following the HTTP semantic conventions, plus scoregate's attributes.
fn span_of(r: &SpanRecord, buf: &mut Vec<u8>) {
    const ATTRIBUTES: u32 = 9;
    const SERVER: u64 = span::SpanKind::Server as u64;
    wire::bytes(1, &r.trace_id, buf);
    wire::bytes(2, &r.span_id, buf);
    if let Some(state) = &r.trace_state {
        wire::string(3, state, buf);
    }
    if let Some(parent) = &r.parent_id {
        wire::bytes(4, parent, buf);
    }
    let name = r.name();
    wire::string_parts(5, &[name.method, " ", name.rest], buf);
    wire::varint(6, SERVER, buf);
    wire::fixed64(7, unix_nanos(r.start), buf);
    wire::fixed64(8, unix_nanos(r.start + r.duration), buf);
    wire::kv_str(ATTRIBUTES, "http.request.method", r.method.as_str(), buf);
    wire::kv_str(ATTRIBUTES, "url.path", &r.path, buf);
    wire::kv_int(
        ATTRIBUTES,
        "http.response.status_code",
        i64::from(r.status),
        buf,
    );
    let mut ip = IpText::default();
    wire::kv_str(ATTRIBUTES, "client.address", ip.of(r.client_address), buf);
    wire::kv_str(ATTRIBUTES, "scoregate.request_id", &r.request_id, buf);
    let optional = [
        ("server.address", r.server_address.as_deref()),
        ("error.type", r.error),
        ("scoregate.service", r.service.as_deref()),
        ("scoregate.auth_mode", r.auth_mode),
        ("scoregate.principal", r.principal.as_deref()),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            wire::kv_str(ATTRIBUTES, key, v, buf);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if let Some(q) = r.queue_wait {
        wire::kv_f64(ATTRIBUTES, "scoregate.queue_wait_ms", ms(q), buf);
    }
    if let Some(u) = r.upstream_duration {
        wire::kv_f64(ATTRIBUTES, "scoregate.upstream_duration_ms", ms(u), buf);
    }
    // Status { code = 3 }: HTTP semantic conventions make a server span an error for 5xx only;
    // otherwise the code is Unset (0, an empty message).
    if r.status >= 500 {
        wire::bytes(15, &[0x18, status::StatusCode::Error as u8], buf);
    } else {
        wire::bytes(15, &[], buf);
    }
    wire::fixed32(16, u32::from(r.flags), buf);
}

/// An IP address as text on the stack (at most 45 bytes: an IPv6 address with an IPv4 tail).
struct IpText {
    buf: [u8; 48],
}

impl Default for IpText {
    fn default() -> Self {
        Self { buf: [0; 48] }
    }
}

impl IpText {
    fn of(&mut self, ip: std::net::IpAddr) -> &str {
        use std::io::Write as _;
        let mut cursor = std::io::Cursor::new(&mut self.buf[..]);
        // 48 bytes hold every address: the write cannot fail.
        let _ = write!(cursor, "{ip}");
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        std::str::from_utf8(&self.buf[..len]).unwrap_or_default()
    }
}

/// Protobuf wire encoding of the few fields the span encoder writes (`prost::encoding`'s
/// primitives; nested messages are written to a scratch buffer first, then copied in behind
/// their length).
mod wire {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

    /// A length-delimited field: bytes, a string or a nested message already encoded.
    pub fn bytes(tag: u32, value: &[u8], buf: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.extend_from_slice(value);
    }

    pub fn string(tag: u32, value: &str, buf: &mut Vec<u8>) {
        bytes(tag, value.as_bytes(), buf);
    }

    /// A string field whose value is `parts` joined, without joining them first.
    pub fn string_parts(tag: u32, parts: &[&str], buf: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(parts.iter().map(|p| p.len() as u64).sum(), buf);
        for part in parts {
            buf.extend_from_slice(part.as_bytes());
        }
    }

    pub fn varint(tag: u32, value: u64, buf: &mut Vec<u8>) {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }

    pub fn fixed64(tag: u32, value: u64, buf: &mut Vec<u8>) {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }

    pub fn fixed32(tag: u32, value: u32, buf: &mut Vec<u8>) {
        encode_key(tag, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }

    /// The length of a string field with tag 1 or 2 (one-byte key) holding `len` bytes.
    fn field_len(len: usize) -> usize {
        1 + encoded_len_varint(len as u64) + len
    }

    /// `KeyValue { key = 1, value = 2: AnyValue { one value field } }`, where `any` is the
    /// length of the `AnyValue`'s own field; `write` writes that field.
    fn kv(tag: u32, key: &str, any: usize, buf: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint((field_len(key.len()) + field_len(any)) as u64, buf);
        string(1, key, buf);
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(any as u64, buf);
        write(buf);
    }

    /// `AnyValue.string_value = 1`.
    pub fn kv_str(tag: u32, key: &str, value: &str, buf: &mut Vec<u8>) {
        kv(tag, key, field_len(value.len()), buf, |buf| {
            string(1, value, buf);
        });
    }

    /// `AnyValue.int_value = 3`.
    pub fn kv_int(tag: u32, key: &str, value: i64, buf: &mut Vec<u8>) {
        // int64 is a varint of the two's-complement value.
        #[allow(clippy::cast_sign_loss, reason = "protobuf int64 encoding")]
        let raw = value as u64;
        kv(tag, key, 1 + encoded_len_varint(raw), buf, |buf| {
            varint(3, raw, buf);
        });
    }

    /// `AnyValue.double_value = 4`.
    pub fn kv_f64(tag: u32, key: &str, value: f64, buf: &mut Vec<u8>) {
        kv(tag, key, 9, buf, |buf| fixed64(4, value.to_bits(), buf));
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

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::Span;

    use super::*;
    use crate::telemetry::export::tests::span;

    fn attr(span: &Span, key: &str) -> Option<any_value::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    }

    /// The hand-written encoder against the official message definitions: what it writes
    /// decodes, field by field, to what the records say.
    #[test]
    #[allow(clippy::too_many_lines, reason = "one scenario, field by field")]
    fn spans_written_on_the_wire_decode_as_the_official_messages() {
        let ok = span("r-ok");
        let mut failed = span("r-failed");
        failed.role_name = Arc::from("other-role");
        failed.status = 503;
        failed.error = Some("upstream_timeout");
        failed.parent_id = Some([7; 8]);
        failed.trace_state = Some("vendor=x".to_owned());
        failed.client_address = "2001:db8::ffff:192.0.2.1".parse().expect("ip");
        failed.server_address = Some("models.example".to_owned());
        failed.queue_wait = Some(Duration::from_micros(1500));
        failed.upstream_duration = Some(Duration::from_millis(30_000));
        failed.route_len = None;
        failed.flags = 0;

        let bytes = encode(&[ok.clone(), failed.clone()], "pod-a");
        let request = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(request.resource_spans.len(), 2, "one per role name");
        let mut seen = Vec::new();
        for rs in &request.resource_spans {
            let resource = rs.resource.as_ref().expect("resource");
            let value = |k: &str| {
                resource
                    .attributes
                    .iter()
                    .find(|kv| kv.key == k)
                    .and_then(|kv| kv.value.clone()?.value)
            };
            let Some(any_value::Value::StringValue(role)) = value("service.name") else {
                panic!("service.name");
            };
            assert_eq!(
                value("service.instance.id"),
                Some(any_value::Value::StringValue("pod-a".to_owned()))
            );
            let scope = &rs.scope_spans[0];
            assert_eq!(scope.scope.as_ref().expect("scope").name, "scoregate");
            assert_eq!(scope.spans.len(), 1);
            seen.push((role, scope.spans[0].clone()));
        }
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        let (role, s) = &seen[0];
        assert_eq!(role, "iris");
        assert_eq!(s.trace_id, ok.trace_id);
        assert_eq!(s.span_id, ok.span_id);
        assert!(s.parent_span_id.is_empty() && s.trace_state.is_empty());
        assert_eq!(s.name, "POST /score");
        assert_eq!(s.kind, span::SpanKind::Server as i32);
        assert_eq!(s.flags, 1);
        assert_eq!(
            s.end_time_unix_nano - s.start_time_unix_nano,
            3_000_000,
            "3 ms"
        );
        assert_eq!(s.status.as_ref().expect("status").code, 0, "Unset");
        assert_eq!(
            attr(s, "http.response.status_code"),
            Some(any_value::Value::IntValue(200))
        );
        assert_eq!(
            attr(s, "client.address"),
            Some(any_value::Value::StringValue("127.0.0.1".to_owned()))
        );
        assert_eq!(attr(s, "error.type"), None);

        let (role, s) = &seen[1];
        assert_eq!(role, "other-role");
        assert_eq!(s.parent_span_id, [7; 8]);
        assert_eq!(s.trace_state, "vendor=x");
        assert_eq!(s.name, "POST /iris/score", "no route: the whole path");
        assert_eq!(s.flags, 0);
        let status = s.status.as_ref().expect("status");
        assert_eq!(status.code, status::StatusCode::Error as i32);
        let text = |k: &str| match attr(s, k) {
            Some(any_value::Value::StringValue(v)) => v,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(text("client.address"), "2001:db8::ffff:c000:201");
        assert_eq!(text("server.address"), "models.example");
        assert_eq!(text("error.type"), "upstream_timeout");
        assert_eq!(text("http.request.method"), "POST");
        assert_eq!(text("url.path"), "/iris/score");
        assert_eq!(text("scoregate.request_id"), "r-failed");
        assert_eq!(text("scoregate.principal"), "primary");
        assert_eq!(
            attr(s, "http.response.status_code"),
            Some(any_value::Value::IntValue(503))
        );
        assert_eq!(
            attr(s, "scoregate.queue_wait_ms"),
            Some(any_value::Value::DoubleValue(1.5))
        );
        assert_eq!(
            attr(s, "scoregate.upstream_duration_ms"),
            Some(any_value::Value::DoubleValue(30_000.0))
        );
    }
}
