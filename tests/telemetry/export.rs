//! OTLP export against a real OTLP/HTTP receiver run by the test: it decodes every
//! `ExportTraceServiceRequest` with the official protobuf definitions (`opentelemetry-proto`),
//! answers as scripted (503 with `Retry-After`, then 200), and the test checks each span's fields
//! against the HTTP semantic conventions. With the receiver down, requests are unaffected and the
//! drop counter rises.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use reqwest::StatusCode;

use super::support::certs::TestCa;
use super::support::check::{header, send_json};
use super::support::process::free_port;
use super::support::tls_upstream::TlsFront;
use super::support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, wait_until};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// What the receiver got: each request's decoded body and its content type.
#[derive(Debug, Default)]
struct Received {
    requests: Vec<(String, ExportTraceServiceRequest)>,
    /// Decoded `/v1/logs` requests.
    logs: Vec<ExportLogsServiceRequest>,
    /// Statuses still to answer before 200s, in order (with `Retry-After: retry_after`).
    script: Vec<u16>,
    retry_after: &'static str,
    answered: Vec<u16>,
    /// The `x-api-key` header of each request (from the exporter's `headers_file`).
    api_keys: Vec<Option<String>>,
}

/// An OTLP/HTTP receiver on loopback that decodes what arrives; stops with the test.
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<Received>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(script: Vec<u16>) -> Self {
        Self::start_with(script, "0").await
    }

    async fn start_with(script: Vec<u16>, retry_after: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let state = Arc::new(Mutex::new(Received {
            script,
            retry_after,
            ..Received::default()
        }));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let state = Arc::clone(&state);
                        async move {
                            let path = req.uri().path().to_owned();
                            let ctype = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let api_key = req
                                .headers()
                                .get("x-api-key")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = req.into_body().collect().await?.to_bytes();
                            let mut s = state.lock().expect("receiver state");
                            let status = if s.script.is_empty() {
                                200
                            } else {
                                s.script.remove(0)
                            };
                            s.answered.push(status);
                            s.api_keys.push(api_key);
                            if status == 200 && path == "/v1/logs" {
                                let decoded = ExportLogsServiceRequest::decode(body)
                                    .expect("a valid ExportLogsServiceRequest");
                                s.logs.push(decoded);
                            } else if status == 200 {
                                assert_eq!(path, "/v1/traces");
                                let decoded = ExportTraceServiceRequest::decode(body)
                                    .expect("a valid ExportTraceServiceRequest");
                                s.requests.push((ctype, decoded));
                            }
                            let resp = hyper::Response::builder()
                                .status(status)
                                .header("retry-after", s.retry_after)
                                .body(Full::new(Bytes::new()))
                                .expect("response");
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            _task: task,
        }
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<(String, String, Span)> {
        let s = self.state.lock().expect("receiver state");
        s.requests
            .iter()
            .flat_map(|(_, req)| req.resource_spans.iter())
            .flat_map(|rs| {
                let resource = rs.resource.clone().unwrap_or_default();
                let name = string_attr(&resource.attributes, "service.name").unwrap_or_default();
                let instance =
                    string_attr(&resource.attributes, "service.instance.id").unwrap_or_default();
                rs.scope_spans
                    .iter()
                    .flat_map(|ss| ss.spans.iter())
                    .map(move |sp| (name.clone(), instance.clone(), sp.clone()))
            })
            .collect()
    }

    async fn span_for(&self, request_id: &str) -> (String, String, Span) {
        let mut found = None;
        wait_until("the span to reach the receiver", || {
            found = self.spans().into_iter().find(|(_, _, s)| {
                string_attr(&s.attributes, "scoregate.request_id").as_deref() == Some(request_id)
            });
            let done = found.is_some();
            async move { done }
        })
        .await;
        found.expect("found")
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(any_value::Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

async fn export_gateway(upstream: &MockUpstream, otlp: &str) -> TestGateway {
    GatewayBuilder::new()
        .telemetry(&format!("otlp = {{ {otlp} }}"))
        .service_with(
            "iris",
            IRIS,
            &upstream.url(),
            "auth = \"key\"\nrole_name = \"iris-model\"",
        )
        .start()
        .await
}

#[tokio::test]
async fn every_request_becomes_a_server_span_at_the_receiver_after_a_retry() {
    let receiver = Receiver::start(vec![503]).await;
    let upstream = MockUpstream::start().await;
    let gw = export_gateway(
        &upstream,
        &format!("endpoint = \"http://{}\"", receiver.addr),
    )
    .await;
    let (primary, _) = gw.list_keys("iris").await;

    let (status, headers, _) = send_json(
        gw.client()
            .post(gw.url(&format!("{IRIS}/score?secret=1")))
            .bearer_auth(&primary)
            .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ok_id = header(&headers, "x-request-id").to_owned();
    let (status, headers, _) = send_json(gw.client().get(gw.url("/nowhere"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let missing_id = header(&headers, "x-request-id").to_owned();

    let (role, instance, span) = receiver.span_for(&ok_id).await;
    let record = gw.record_for(&ok_id).await;
    assert_eq!(role, "iris-model");
    assert_eq!(instance, record["RoleInstance"].as_str().expect("instance"));
    assert_eq!(hex(&span.trace_id), TRACE);
    assert_eq!(hex(&span.parent_span_id), PARENT);
    assert_eq!(
        hex(&span.span_id),
        record["SpanId"].as_str().expect("SpanId")
    );
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(span.name, "POST /score");
    assert!(span.end_time_unix_nano > span.start_time_unix_nano);
    let a = &span.attributes;
    assert_eq!(
        string_attr(a, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        string_attr(a, "url.path").as_deref(),
        Some(format!("{IRIS}/score").as_str()),
        "the query (and its secret) stays out"
    );
    assert_eq!(int_attr(a, "http.response.status_code"), Some(200));
    let authority = gw
        .url("")
        .split("://")
        .nth(1)
        .expect("scheme://authority")
        .to_owned();
    assert_eq!(
        string_attr(a, "server.address").as_deref(),
        Some(authority.as_str())
    );
    assert_eq!(string_attr(a, "scoregate.service").as_deref(), Some("iris"));
    assert_eq!(
        string_attr(a, "scoregate.auth_mode").as_deref(),
        Some("key")
    );
    assert_eq!(
        string_attr(a, "scoregate.principal").as_deref(),
        Some("primary")
    );
    for key in ["scoregate.queue_wait_ms", "scoregate.upstream_duration_ms"] {
        assert!(attr(a, key).is_some(), "{key}");
    }
    assert_eq!(attr(a, "error.type"), None);
    assert_eq!(
        span.status.as_ref().map(|s| s.code),
        Some(0),
        "unset for 2xx"
    );

    let (role, _, span) = receiver.span_for(&missing_id).await;
    assert_eq!(role, "scoregate", "no service: the gateway-wide role name");
    assert_eq!(span.name, "GET /nowhere");
    assert!(span.parent_span_id.is_empty(), "a new trace");
    assert_eq!(
        string_attr(&span.attributes, "error.type").as_deref(),
        Some("route_not_found")
    );

    let s = receiver.state.lock().expect("receiver state");
    assert_eq!(s.answered.first(), Some(&503), "{:?}", s.answered);
    assert!(
        s.requests
            .iter()
            .all(|(ctype, _)| ctype == "application/x-protobuf")
    );
    drop(s);
    assert!(gw.counter(r#"scoregate_export_batches_total{exporter="otlp",result="retried"}"#) >= 1);
    assert_eq!(
        gw.counter(r#"scoregate_export_dropped_total{exporter="otlp"}"#),
        0
    );
}

#[tokio::test]
async fn with_the_receiver_down_requests_are_unaffected_and_drops_are_counted() {
    let upstream = MockUpstream::start().await;
    // Nothing listens there: every batch is retried, the small queue fills, new spans drop.
    let gw = export_gateway(
        &upstream,
        &format!(
            "endpoint = \"http://{}\", queue_capacity = 16, batch_size = 1",
            free_port()
        ),
    )
    .await;
    let (primary, _) = gw.list_keys("iris").await;
    for _ in 0..40 {
        let (status, _, _) = send_json(
            gw.client()
                .post(gw.url(&format!("{IRIS}/score")))
                .bearer_auth(&primary)
                .body("{}"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    wait_until("spans to be dropped", || {
        let dropped = gw.counter(r#"scoregate_export_dropped_total{exporter="otlp"}"#);
        async move { dropped >= 20 }
    })
    .await;
}

/// An `https://` receiver whose certificate comes from a CA named by `ca`, and a `headers_file`
/// whose API key reaches the receiver with every batch.
#[tokio::test]
async fn spans_reach_an_https_receiver_trusted_through_ca_with_the_headers_file() {
    let receiver = Receiver::start(Vec::new()).await;
    let ca = TestCa::new("otlp test CA");
    let front = TlsFront::start(&ca.server_leaf("collector"), receiver.addr).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_path = dir.path().join("collector-ca.pem");
    std::fs::write(&ca_path, &ca.pem).expect("write CA");
    let headers_path = dir.path().join("otlp-headers");
    std::fs::write(
        &headers_path,
        "# the collector's key\nx-api-key: k-123-secret\n",
    )
    .expect("write headers");
    let upstream = MockUpstream::start().await;
    let gw = export_gateway(
        &upstream,
        &format!(
            "endpoint = \"{}\", ca = {:?}, headers_file = {:?}",
            front.url(),
            ca_path.display().to_string(),
            headers_path.display().to_string()
        ),
    )
    .await;
    let (primary, _) = gw.list_keys("iris").await;
    let (status, headers, _) = send_json(
        gw.client()
            .post(gw.url(&format!("{IRIS}/score")))
            .bearer_auth(&primary)
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let id = header(&headers, "x-request-id").to_owned();
    let (role, _, span) = receiver.span_for(&id).await;
    assert_eq!(
        (role.as_str(), span.name.as_str()),
        ("iris-model", "POST /score")
    );
    let s = receiver.state.lock().expect("receiver state");
    assert!(
        s.api_keys
            .iter()
            .all(|k| k.as_deref() == Some("k-123-secret")),
        "{:?}",
        s.api_keys
    );
}

/// At shutdown, a span whose batch is waiting out a long `Retry-After` is sent before `run`
/// returns: the exporter stops waiting and makes one last attempt.
#[tokio::test]
async fn spans_still_queued_at_shutdown_are_sent_before_the_gateway_exits() {
    let receiver = Receiver::start_with(vec![503], "3600").await;
    let upstream = MockUpstream::start().await;
    let mut gw = export_gateway(
        &upstream,
        &format!("endpoint = \"http://{}\"", receiver.addr),
    )
    .await;
    let (primary, _) = gw.list_keys("iris").await;
    let (status, headers, _) = send_json(
        gw.client()
            .post(gw.url(&format!("{IRIS}/score")))
            .bearer_auth(&primary)
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let id = header(&headers, "x-request-id").to_owned();
    wait_until("the first batch to be refused with Retry-After", || {
        let refused = receiver.state.lock().expect("state").answered == [503];
        async move { refused }
    })
    .await;
    gw.shutdown().await;
    let delivered = receiver.spans().into_iter().any(|(_, _, s)| {
        string_attr(&s.attributes, "scoregate.request_id").as_deref() == Some(id.as_str())
    });
    assert!(
        delivered,
        "the queued span was sent before the gateway exited"
    );
}

/// Activity entries (here `regenerateKeys`) reach the receiver's `/v1/logs` as log records with
/// the entry's fields, under the service's role name and this replica's instance.
#[tokio::test]
async fn activity_entries_are_exported_as_log_records() {
    let receiver = Receiver::start(Vec::new()).await;
    let upstream = MockUpstream::start().await;
    let gw = export_gateway(
        &upstream,
        &format!("endpoint = \"http://{}\"", receiver.addr),
    )
    .await;
    let (status, _, resp) = gw
        .manage(
            reqwest::Method::POST,
            "/services/iris/regenerateKeys",
            Some(&serde_json::json!({"keyType": "Secondary"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let mut found = None;
    wait_until("the regenerateKeys log record", || {
        let s = receiver.state.lock().expect("receiver state");
        found = s
            .logs
            .iter()
            .flat_map(|r| r.resource_logs.iter())
            .find_map(|rl| {
                let record = rl
                    .scope_logs
                    .iter()
                    .flat_map(|sl| sl.log_records.iter())
                    .find(|l| {
                        string_attr(&l.attributes, "scoregate.operation").as_deref()
                            == Some("regenerateKeys")
                    })?;
                Some((rl.resource.clone().unwrap_or_default(), record.clone()))
            });
        let done = found.is_some();
        async move { done }
    })
    .await;
    let (resource, log) = found.expect("found");
    let entry = gw
        .records()
        .into_iter()
        .find(|r| r["type"] == "activity" && r["operationName"] == "regenerateKeys")
        .expect("the activity entry in the record stream");
    assert_eq!(
        string_attr(&resource.attributes, "service.name").as_deref(),
        Some("iris-model")
    );
    assert_eq!(
        string_attr(&resource.attributes, "service.instance.id").as_deref(),
        entry["RoleInstance"].as_str()
    );
    let a = &log.attributes;
    assert_eq!(
        string_attr(a, "scoregate.initiator").as_deref(),
        entry["initiator"].as_str()
    );
    assert_eq!(string_attr(a, "scoregate.service").as_deref(), Some("iris"));
    assert_eq!(
        string_attr(a, "scoregate.result").as_deref(),
        Some("Succeeded")
    );
    assert_eq!(
        string_attr(a, "client.address").as_deref(),
        entry["sourceIp"].as_str()
    );
    assert_eq!(log.severity_text, "INFO");
    assert_eq!(log.event_name, "scoregate.activity.regenerateKeys");
    assert!(log.time_unix_nano > 0);
}
