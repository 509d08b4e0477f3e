//! Azure Monitor export against a local HTTPS ingestion endpoint run by the test (a TLS front
//! with a test CA, named through `[telemetry.azure_monitor] ca`, over a hyper receiver). The
//! receiver checks the transport (POST `/v2.1/track`, JSON, gzip), answers the first POST 429
//! and the second 503 (both with `Retry-After: 0`), and keeps every envelope; the test checks each envelope field against
//! Application Insights' documented schema and the gateway's own record. (A 206 partial answer,
//! which must resend only the retryable rejections, is tested over a socket in the exporter's
//! unit tests, where the batch is known.)

use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use serde_json::Value;

use super::support::certs::TestCa;
use super::support::check::{header, send_json};
use super::support::tls_upstream::TlsFront;
use super::support::{GatewayBuilder, IRIS, MockUpstream, TestGateway, wait_until};

const IKEY: &str = "2f1c7a3e-0d4b-4c55-9a1e-7b6f0c1d2e3f";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[derive(Debug, Default)]
struct Ingested {
    envelopes: Vec<Value>,
    answered: Vec<u16>,
}

/// The ingestion endpoint behind the TLS front; the first POST gets 429, the second 503, the
/// rest 200.
async fn ingestion() -> (SocketAddr, Arc<Mutex<Ingested>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("receiver address");
    let state = Arc::new(Mutex::new(Ingested::default()));
    let shared = Arc::clone(&state);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = Arc::clone(&shared);
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let state = Arc::clone(&state);
                    async move {
                        assert_eq!(req.method(), hyper::Method::POST);
                        assert_eq!(req.uri().path(), "/v2.1/track");
                        let h = req.headers();
                        assert_eq!(h["content-type"], "application/json");
                        assert_eq!(h["content-encoding"], "gzip");
                        let gz = req.into_body().collect().await?.to_bytes();
                        let mut json = String::new();
                        flate2::read::GzDecoder::new(&gz[..])
                            .read_to_string(&mut json)
                            .expect("a gzip body");
                        let batch: Vec<Value> =
                            serde_json::from_str(&json).expect("a JSON array of envelopes");
                        let mut s = state.lock().expect("receiver state");
                        let status = match s.answered.len() {
                            0 => 429,
                            1 => 503,
                            _ => 200,
                        };
                        s.answered.push(status);
                        let n = batch.len();
                        if status == 200 {
                            s.envelopes.extend(batch);
                        }
                        let body = format!(
                            r#"{{"itemsReceived":{n},"itemsAccepted":{},"errors":[]}}"#,
                            if status == 200 { n } else { 0 }
                        );
                        Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .status(status)
                                .header("retry-after", "0")
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, state)
}

/// The first envelope that `pred` accepts, once it has arrived.
async fn envelope(state: &Mutex<Ingested>, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    wait_until(what, || {
        found = state
            .lock()
            .expect("receiver state")
            .envelopes
            .iter()
            .find(|e| pred(e))
            .cloned();
        let done = found.is_some();
        async move { done }
    })
    .await;
    found.expect("found")
}

/// `d.hh:mm:ss.ffffff`, Application Insights' `TimeSpan` format.
fn is_timespan(s: &str) -> bool {
    let Some((days, rest)) = s.split_once('.') else {
        return false;
    };
    let parts: Vec<&str> = rest.split([':', '.']).collect();
    !days.is_empty()
        && days.bytes().all(|b| b.is_ascii_digit())
        && parts.len() == 4
        && parts[..3].iter().all(|p| p.len() == 2)
        && parts[3].len() == 6
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// The fields every envelope carries (`TelemetryItem`).
fn check_envelope(e: &Value, name: &str, base_type: &str) {
    assert_eq!(e["ver"], 1, "{e}");
    assert_eq!(e["name"], name);
    assert_eq!(e["iKey"], IKEY);
    assert_eq!(e["sampleRate"], 100.0);
    let time = e["time"].as_str().expect("time");
    humantime::parse_rfc3339(time).unwrap_or_else(|err| panic!("time {time:?}: {err}"));
    assert_eq!(e["data"]["baseType"], base_type);
    assert_eq!(e["data"]["baseData"]["ver"], 2);
    let tags = e["tags"].as_object().expect("tags");
    assert!(tags.values().all(Value::is_string), "{tags:?}");
    assert!(
        e["data"]["baseData"]["properties"]
            .as_object()
            .expect("properties")
            .iter()
            .all(|(k, v)| k.len() <= 150 && v.as_str().is_some_and(|v| v.len() <= 8192)),
        "properties are strings within the documented limits"
    );
}

/// A gateway exporting to `front` (certificate from `ca`), its connection string and CA file
/// written to `dir`.
async fn azure_gateway(
    ca: &TestCa,
    front: &TlsFront,
    dir: &std::path::Path,
    upstream: &MockUpstream,
) -> TestGateway {
    let ca_path = dir.join("ingestion-ca.pem");
    std::fs::write(&ca_path, &ca.pem).expect("write CA");
    let cs_path = dir.join("connection-string");
    std::fs::write(
        &cs_path,
        format!(
            "InstrumentationKey={IKEY};IngestionEndpoint={}/;LiveEndpoint=https://live.invalid/\n",
            front.url()
        ),
    )
    .expect("write connection string");
    GatewayBuilder::new()
        .telemetry(&format!(
            "azure_monitor = {{ connection_string_file = {:?}, ca = {:?} }}",
            cs_path.display().to_string(),
            ca_path.display().to_string()
        ))
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
async fn requests_and_management_operations_reach_an_https_ingestion_endpoint() {
    let (receiver, state) = ingestion().await;
    let ca = TestCa::new("ingestion test CA");
    let front = TlsFront::start(&ca.server_leaf("ingestion"), receiver).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = MockUpstream::start().await;
    let gw = azure_gateway(&ca, &front, dir.path(), &upstream).await;
    let (primary, _) = gw.list_keys("iris").await;
    let (status, headers, _) = send_json(
        gw.client()
            .post(gw.url(&format!("{IRIS}/score?token=secret")))
            .bearer_auth(&primary)
            .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
            .body("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let id = header(&headers, "x-request-id").to_owned();

    let e = envelope(&state, "the request envelope", |e| {
        e["data"]["baseData"]["properties"]["RequestId"] == id.as_str()
    })
    .await;
    let record = gw.record_for(&id).await;
    check_envelope(&e, "Microsoft.ApplicationInsights.Request", "RequestData");
    let tags = &e["tags"];
    assert_eq!(tags["ai.operation.id"], TRACE);
    assert_eq!(tags["ai.operation.id"], record["OperationId"]);
    assert_eq!(tags["ai.operation.parentId"], PARENT);
    assert_eq!(tags["ai.operation.name"], "POST /score");
    assert_eq!(tags["ai.cloud.role"], "iris-model");
    assert_eq!(tags["ai.cloud.roleInstance"], record["RoleInstance"]);
    let d = &e["data"]["baseData"];
    assert_eq!(d["id"], record["SpanId"]);
    assert_eq!(d["name"], "POST /score");
    assert!(
        is_timespan(d["duration"].as_str().expect("duration")),
        "{d}"
    );
    assert_eq!(d["responseCode"], "200");
    assert_eq!(d["success"], true);
    assert_eq!(
        d["url"],
        format!("{IRIS}/score"),
        "no query (and no secret)"
    );
    let p = &d["properties"];
    assert_eq!(p["HTTPMethod"], "POST");
    assert_eq!(p["Service"], "iris");
    assert_eq!(p["AuthMode"], "key");
    assert_eq!(p["Principal"], "primary");
    assert!(d["measurements"]["UpstreamMs"].is_f64(), "{d}");

    let (status, _, resp) = gw
        .manage(
            reqwest::Method::POST,
            "/services/iris/regenerateKeys",
            Some(&serde_json::json!({"keyType": "Secondary"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let e = envelope(&state, "the regenerateKeys event", |e| {
        e["data"]["baseData"]["name"] == "regenerateKeys"
    })
    .await;
    check_envelope(&e, "Microsoft.ApplicationInsights.Event", "EventData");
    assert_eq!(e["tags"]["ai.cloud.role"], "iris-model");
    let p = &e["data"]["baseData"]["properties"];
    assert_eq!(p["operationName"], "regenerateKeys");
    assert_eq!(p["result"], "Succeeded");
    assert_eq!(p["service"], "iris");
    assert!(p["initiator"].is_string());

    let s = state.lock().expect("receiver state");
    assert_eq!(s.answered[..2], [429, 503], "{:?}", s.answered);
    drop(s);
    assert!(
        gw.counter(r#"scoregate_export_batches_total{exporter="azure_monitor",result="retried"}"#)
            >= 2
    );
    assert_eq!(
        gw.counter(r#"scoregate_export_dropped_total{exporter="azure_monitor"}"#),
        0
    );
}
