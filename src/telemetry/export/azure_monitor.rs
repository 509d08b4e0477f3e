//! Azure Monitor (`[telemetry.azure_monitor]`): request telemetry as Application Insights
//! `Request` envelopes and activity entries as custom events (`Event` envelopes), sent as one
//! gzip-compressed JSON array per batch to the connection string's `IngestionEndpoint` +
//! `/v2.1/track` (AZUREML-CONTRACT A4).
//!
//! The answer decides what happens to each item: 200 accepts the batch; 206 (partial) lists the
//! rejected items by index, and only those rejected with a retryable status are sent again;
//! 408, 429, 500, 502, 503, 504 and connection failures retry the whole remainder, honouring
//! `Retry-After`; anything else drops the batch.
//!
//! Written directly rather than through `opentelemetry-application-insights`: that crate
//! exports the OpenTelemetry SDK's spans, which with the SDK cost 15.9 µs of CPU per span against
//! 3.1 µs here (`loadtest/sdk_cost/`); the gateway runs no SDK, its spans are built from the
//! request record.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

use super::{Deliver, FIRST_BACKOFF, Http, Item, Retry, SpanRecord};
use crate::config::AzureMonitorConfig;
use crate::telemetry::activity::{ActivityRecord, Outcome};
use crate::telemetry::json_line::JsonObject;

/// The `exporter` label of this exporter's series.
pub const EXPORTER: &str = "azure_monitor";

/// Statuses worth sending again, for the whole batch or for one item of a 206.
fn retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

pub(crate) struct AzureMonitor {
    http: Http,
    endpoint: http::Uri,
    ikey: String,
    instance: Arc<str>,
    retry: Retry,
}

impl AzureMonitor {
    pub(crate) fn new(
        config: &AzureMonitorConfig,
        http: Http,
        instance: Arc<str>,
        retry: Retry,
    ) -> Self {
        Self {
            http,
            endpoint: config.endpoint.clone(),
            ikey: config.instrumentation_key.clone(),
            instance,
            retry,
        }
    }
}

/// The ingestion service's report (`TrackResponse`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrackResponse {
    #[serde(default)]
    errors: Vec<TrackError>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrackError {
    index: usize,
    status_code: u16,
}

impl Deliver for AzureMonitor {
    async fn deliver(&self, batch: Vec<Item>, attempts: u32) -> u64 {
        // Each envelope serialized once; a resend after a 206 joins the remaining ones again.
        let mut pending: Vec<Vec<u8>> = batch
            .iter()
            .filter_map(|item| serialize(item, &self.ikey, &self.instance))
            .collect();
        let mut lost = (batch.len() - pending.len()) as u64;
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=attempts {
            let Some(body) = gzip_array(&pending) else {
                break;
            };
            let after = match self
                .http
                .post(&self.endpoint, "application/json", true, body)
                .await
            {
                Some(a) if a.status == 200 => {
                    self.retry.succeeded();
                    return lost;
                }
                Some(a) if a.status == 206 => {
                    let Ok(report) = serde_json::from_slice::<TrackResponse>(&a.body) else {
                        tracing::warn!("Azure Monitor answered 206 without a readable report");
                        break;
                    };
                    let (retry, refused) = again(pending, &report.errors);
                    pending = retry;
                    lost += refused;
                    if pending.is_empty() {
                        self.retry.succeeded();
                        return lost;
                    }
                    a.retry_after
                }
                Some(a) if retryable(a.status) => a.retry_after,
                Some(a) => {
                    tracing::warn!(status = a.status, "Azure Monitor refused a batch; dropped");
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
        lost + pending.len() as u64
    }

    fn retry(&self) -> &Retry {
        &self.retry
    }
}

/// One item as its JSON envelope.
fn serialize(item: &Item, ikey: &str, instance: &str) -> Option<Vec<u8>> {
    match item {
        Item::Span(span) => Some(request_envelope(span, ikey, instance)),
        Item::Activity(entry) => serde_json::to_vec(&event_envelope(entry, ikey)).ok(),
    }
}

/// A batch of spans as it is sent: the gzip-compressed JSON array of their envelopes.
pub(crate) fn encode_spans(spans: &[SpanRecord], ikey: &str, instance: &str) -> Option<Bytes> {
    let items: Vec<Vec<u8>> = spans
        .iter()
        .map(|s| request_envelope(s, ikey, instance))
        .collect();
    gzip_array(&items)
}

/// After a 206: the items of `sent` rejected with a retryable status (in their order), and how
/// many were rejected for good.
fn again<T>(sent: Vec<T>, errors: &[TrackError]) -> (Vec<T>, u64) {
    let status: BTreeMap<usize, u16> = errors
        .iter()
        .filter(|e| e.index < sent.len())
        .map(|e| (e.index, e.status_code))
        .collect();
    let refused = status.values().filter(|s| !retryable(**s)).count() as u64;
    let retry = sent
        .into_iter()
        .enumerate()
        .filter(|(i, _)| status.get(i).is_some_and(|s| retryable(*s)))
        .map(|(_, v)| v)
        .collect();
    (retry, refused)
}

/// The serialized envelopes as one JSON array, gzip-compressed.
fn gzip_array(items: &[Vec<u8>]) -> Option<Bytes> {
    let size: usize = items.iter().map(|i| i.len() + 1).sum();
    let mut gz = GzEncoder::new(Vec::with_capacity(size / 4 + 64), Compression::fast());
    gz.write_all(b"[").ok()?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            gz.write_all(b",").ok()?;
        }
        gz.write_all(item).ok()?;
    }
    gz.write_all(b"]").ok()?;
    gz.finish().ok().map(Bytes::from)
}

/// Application Insights' `TimeSpan` format: `d.hh:mm:ss.ffffff`.
struct TimeSpan(Duration);

impl std::fmt::Display for TimeSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.as_secs();
        write!(
            f,
            "{}.{:02}:{:02}:{:02}.{:06}",
            secs / 86_400,
            secs / 3600 % 24,
            secs / 60 % 60,
            secs % 60,
            self.0.subsec_micros()
        )
    }
}

const SDK_VERSION: &str = concat!("scoregate:", env!("CARGO_PKG_VERSION"));

/// `TelemetryItem`: what every envelope carries.
#[derive(Serialize)]
struct Envelope<'a, T, D> {
    ver: u8,
    name: &'static str,
    #[serde(serialize_with = "crate::telemetry::json_line::serialize_rfc3339_micros")]
    time: std::time::SystemTime,
    #[serde(rename = "sampleRate")]
    sample_rate: f64,
    #[serde(rename = "iKey")]
    ikey: &'a str,
    tags: T,
    data: Data<D>,
}

#[derive(Serialize)]
struct Data<D> {
    #[serde(rename = "baseType")]
    base_type: &'static str,
    #[serde(rename = "baseData")]
    base_data: D,
}

/// One request as a `Microsoft.ApplicationInsights.Request` envelope (Application Insights'
/// `TelemetryItem` with `RequestData`), written field by field: through serde's data model it
/// cost 1.7 µs per span, most of the exporter's cost (`benches/hot_paths.rs`, `export`).
fn request_envelope(r: &SpanRecord, ikey: &str, instance: &str) -> Vec<u8> {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut buf = Vec::with_capacity(768);
    let mut e = JsonObject::new(&mut buf);
    e.u64("ver", 1);
    e.str("name", "Microsoft.ApplicationInsights.Request");
    e.timestamp_micros("time", r.start);
    e.f64("sampleRate", 100.0);
    e.str("iKey", ikey);
    let mut tags = e.object("tags");
    tags.hex("ai.operation.id", &r.trace_id);
    if let Some(parent) = &r.parent_id {
        tags.hex("ai.operation.parentId", parent);
    }
    tags.display("ai.operation.name", r.name());
    tags.str("ai.cloud.role", &r.role_name);
    tags.str("ai.cloud.roleInstance", instance);
    tags.ip("ai.location.ip", r.client_address);
    tags.str("ai.internal.sdkVersion", SDK_VERSION);
    tags.end();
    let mut data = e.object("data");
    data.str("baseType", "RequestData");
    let mut base = data.object("baseData");
    base.u64("ver", 2);
    base.hex("id", &r.span_id);
    base.display("name", r.name());
    base.display("duration", TimeSpan(r.duration));
    base.display("responseCode", r.status);
    base.bool("success", r.status < 400);
    base.str("url", &r.path);
    base.ip("source", r.client_address);
    let mut props = base.object("properties");
    props.str("RequestId", &r.request_id);
    props.str("HTTPMethod", r.method.as_str());
    props.display("StatusCode", r.status);
    for (key, value) in [
        ("Service", r.service.as_deref()),
        ("AuthMode", r.auth_mode),
        ("Principal", r.principal.as_deref()),
        ("ErrorCode", r.error),
        ("Host", r.server_address.as_deref()),
    ] {
        if let Some(value) = value {
            props.str(key, value);
        }
    }
    props.end();
    let mut measurements = base.object("measurements");
    if let Some(wait) = r.queue_wait {
        measurements.f64("QueueWaitMs", ms(wait));
    }
    if let Some(upstream) = r.upstream_duration {
        measurements.f64("UpstreamMs", ms(upstream));
    }
    measurements.end();
    base.end();
    data.end();
    e.end();
    buf
}

#[derive(Serialize)]
struct EventTags<'a> {
    #[serde(rename = "ai.cloud.role")]
    role: &'a str,
    #[serde(rename = "ai.cloud.roleInstance")]
    role_instance: &'a str,
    #[serde(rename = "ai.internal.sdkVersion")]
    sdk: &'static str,
}

#[derive(Serialize)]
struct EventData<'a> {
    ver: u8,
    name: &'a str,
    properties: BTreeMap<&'static str, String>,
}

/// An activity entry as a custom event (`Microsoft.ApplicationInsights.Event`) named after its
/// operation, the entry's fields as properties.
fn event_envelope<'a>(
    e: &'a ActivityRecord,
    ikey: &'a str,
) -> Envelope<'a, EventTags<'a>, EventData<'a>> {
    let result = match e.result {
        Outcome::Succeeded => "Succeeded",
        Outcome::Failed => "Failed",
        Outcome::Denied => "Denied",
    };
    let mut properties = BTreeMap::from([
        ("operationName", e.operation.to_owned()),
        ("initiator", e.initiator.clone()),
        ("result", result.to_owned()),
    ]);
    let source = e.source_ip.map(|ip| ip.to_string());
    let optional = [
        ("service", e.service.as_deref()),
        ("RequestId", e.request_id.as_deref()),
        ("reason", e.reason.as_deref()),
        ("sourceIp", source.as_deref()),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            properties.insert(name, v.to_owned());
        }
    }
    Envelope {
        ver: 1,
        name: "Microsoft.ApplicationInsights.Event",
        time: e.timestamp,
        sample_rate: 100.0,
        ikey,
        tags: EventTags {
            role: e.role_name.as_deref().unwrap_or("scoregate"),
            role_instance: e.role_instance.as_deref().unwrap_or_default(),
            sdk: SDK_VERSION,
        },
        data: Data {
            base_type: "EventData",
            base_data: EventData {
                ver: 2,
                name: e.operation,
                properties,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::telemetry::export::tests::span;

    #[test]
    fn timespans_are_days_hours_minutes_seconds_micros() {
        let timespan = |d| TimeSpan(d).to_string();
        assert_eq!(timespan(Duration::from_micros(1_234)), "0.00:00:00.001234");
        assert_eq!(
            timespan(Duration::from_secs(90_061) + Duration::from_micros(5)),
            "1.01:01:01.000005"
        );
    }

    /// A receiver on loopback that answers each POST with the next of `answers` (then 200)
    /// and keeps every decoded (gunzipped) body.
    async fn receiver(
        answers: Vec<(u16, &'static str)>,
    ) -> (String, Arc<std::sync::Mutex<Vec<Value>>>) {
        use http_body_util::BodyExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let answers = Arc::new(std::sync::Mutex::new(answers));
        let seen = Arc::clone(&bodies);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, answers) = (Arc::clone(&seen), Arc::clone(&answers));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (seen, answers) = (Arc::clone(&seen), Arc::clone(&answers));
                            async move {
                                let gz = req.into_body().collect().await?.to_bytes();
                                let mut json = String::new();
                                std::io::Read::read_to_string(
                                    &mut flate2::read::GzDecoder::new(&gz[..]),
                                    &mut json,
                                )
                                .expect("gzip");
                                seen.lock()
                                    .expect("bodies")
                                    .push(serde_json::from_str::<Value>(&json).expect("JSON"));
                                let (status, body) = {
                                    let mut a = answers.lock().expect("answers");
                                    if a.is_empty() { (200, "") } else { a.remove(0) }
                                };
                                Ok::<_, hyper::Error>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .header("retry-after", "0")
                                        .body(http_body_util::Full::new(Bytes::from_static(
                                            body.as_bytes(),
                                        )))
                                        .expect("response"),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (format!("http://{addr}/v2.1/track"), bodies)
    }

    /// Over a real socket: a 206 that rejects item 0 with 500 (retryable) and item 2 with 400
    /// (not) makes the next send carry item 0 alone, and item 2 is counted as lost.
    #[tokio::test]
    async fn after_a_partial_answer_only_the_retryable_rejections_are_sent_again() {
        let (url, bodies) = receiver(vec![(
            206,
            r#"{"itemsReceived":3,"itemsAccepted":1,"errors":[{"index":0,"statusCode":500,"message":"busy"},{"index":2,"statusCode":400,"message":"bad"}]}"#,
        )])
        .await;
        let config = AzureMonitorConfig {
            endpoint: url.parse().expect("url"),
            instrumentation_key: "00000000-0000-0000-0000-000000000001".to_owned(),
            queue: crate::config::ExportQueue {
                capacity: 16,
                batch_size: 16,
                batch_delay: Duration::ZERO,
                timeout: Duration::from_secs(10),
            },
            ca: None,
        };
        let metrics = crate::telemetry::metrics::Metrics::new();
        let exporter = AzureMonitor::new(
            &config,
            Http::new(None, config.queue.timeout, Vec::new()).expect("client"),
            Arc::from("pod-a"),
            Retry::new(&metrics, EXPORTER),
        );
        let batch = ["r0", "r1", "r2"].map(|id| Item::Span(span(id))).to_vec();
        let lost = exporter.deliver(batch, 5).await;
        assert_eq!(lost, 1, "item 2 was refused for good");
        let bodies = bodies.lock().expect("bodies");
        let ids = |body: &Value| -> Vec<String> {
            body.as_array()
                .expect("an array of envelopes")
                .iter()
                .map(|e| {
                    e["data"]["baseData"]["properties"]["RequestId"]
                        .as_str()
                        .expect("id")
                        .to_owned()
                })
                .collect()
        };
        assert_eq!(bodies.len(), 2);
        assert_eq!(ids(&bodies[0]), ["r0", "r1", "r2"]);
        assert_eq!(ids(&bodies[1]), ["r0"]);
    }

    #[test]
    fn a_partial_answer_keeps_only_items_rejected_with_a_retryable_status() {
        let sent = vec![json!(0), json!(1), json!(2), json!(3)];
        let errors = [
            TrackError {
                index: 1,
                status_code: 500,
            },
            TrackError {
                index: 2,
                status_code: 400,
            },
            TrackError {
                index: 3,
                status_code: 429,
            },
        ];
        assert_eq!(again(sent, &errors), (vec![json!(1), json!(3)], 1));
    }
}
