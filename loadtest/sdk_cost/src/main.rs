//! CPU per span of the maintained OpenTelemetry path, the one issue 17 asks to prefer unless it
//! costs more than 1 µs per request: the SDK's tracer and `BatchSpanProcessor` (its own thread)
//! feeding `opentelemetry-otlp`'s HTTP/protobuf exporter or `opentelemetry-application-insights`'
//! exporter (JSON envelopes, gzip). Each span carries what scoregate's spans carry (the HTTP
//! semantic conventions and the scoregate attributes). The HTTP client discards each request
//! after keeping its size, so no network or receiver is measured, only the SDK and the encoder.
//!
//! CPU is the process's user + system time (`getrusage`, every thread) from the first span to the
//! end of `force_flush`, divided by the spans exported, so the batch thread's encoding counts.
//! The queue is sized so nothing is dropped, which the run checks.
//!
//!     cargo run --release --manifest-path loadtest/sdk_cost/Cargo.toml [SPANS] [ROUNDS]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};

/// The real exporter, counting the spans it is handed (so a drop anywhere before it shows).
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    spans: Arc<AtomicU64>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.spans.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.inner.export(batch).await
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Answers every export with 200 and an empty body; counts requests and body bytes.
#[derive(Debug, Clone, Default)]
struct NullClient {
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl HttpClient for NullClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(request.body().len() as u64, Ordering::Relaxed);
        let body = if request.uri().path().ends_with("/track") {
            // Application Insights' answer: every item accepted (the count is not checked).
            Bytes::from_static(br#"{"itemsReceived":0,"itemsAccepted":0,"errors":[]}"#)
        } else {
            Bytes::new()
        };
        Ok(Response::builder().status(200).body(body)?)
    }
}

/// utime + stime of every thread of this process.
fn cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn provider(
    kind: &str,
    client: NullClient,
    spans: usize,
    exported: &Arc<AtomicU64>,
) -> SdkTracerProvider {
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(spans + 1)
        .with_max_export_batch_size(512)
        .with_scheduled_delay(Duration::from_millis(200))
        .build();
    let resource = Resource::builder()
        .with_attributes([
            KeyValue::new("service.name", "iris"),
            KeyValue::new("service.instance.id", "scoring-7d9f-abcde"),
        ])
        .build();
    let processor = match kind {
        "otlp" => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint("http://127.0.0.1:4318/v1/traces")
                .with_http_client(client)
                .build()
                .expect("OTLP exporter");
            batched(exporter, exported, config)
        }
        _ => {
            let exporter = opentelemetry_application_insights::Exporter::new_from_connection_string(
                "InstrumentationKey=00000000-0000-0000-0000-000000000001;IngestionEndpoint=http://127.0.0.1:9/",
                client,
            )
            .expect("Application Insights exporter");
            batched(exporter, exported, config)
        }
    };
    SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build()
}

/// `exporter` behind a batch processor, its spans counted into `exported`.
fn batched<E: SpanExporter + 'static>(
    exporter: E,
    exported: &Arc<AtomicU64>,
    config: opentelemetry_sdk::trace::BatchConfig,
) -> BatchSpanProcessor {
    let exporter = Counted {
        inner: exporter,
        spans: Arc::clone(exported),
    };
    BatchSpanProcessor::builder(exporter)
        .with_batch_config(config)
        .build()
}

/// One run: `spans` spans through `kind`'s pipeline; CPU per span in µs.
fn run(kind: &str, spans: usize) -> f64 {
    let client = NullClient::default();
    let exported = Arc::new(AtomicU64::new(0));
    let provider = provider(kind, client.clone(), spans, &exported);
    let tracer = provider.tracer("scoregate");
    let start = cpu();
    let wall = Instant::now();
    for i in 0..spans {
        let mut span = tracer
            .span_builder("POST /score")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("url.path", "/api/v1/service/iris/score"),
                KeyValue::new("http.response.status_code", 200_i64),
                KeyValue::new("client.address", "10.1.2.3"),
                KeyValue::new("server.address", "scoring.example.com"),
                KeyValue::new(
                    "scoregate.request_id",
                    format!("7b0c2f3e-5d41-4b6a-9e1f-{i:012}"),
                ),
                KeyValue::new("scoregate.service", "iris"),
                KeyValue::new("scoregate.auth_mode", "key"),
                KeyValue::new("scoregate.principal", "primary"),
                KeyValue::new("scoregate.queue_wait_ms", 0.0),
                KeyValue::new("scoregate.upstream_duration_ms", 1.25),
            ])
            .start(&tracer);
        span.end();
    }
    provider.force_flush().expect("flush");
    let used = cpu() - start;
    let wall = wall.elapsed();
    let _ = provider.shutdown();
    let requests = client.requests.load(Ordering::Relaxed);
    let bytes = client.bytes.load(Ordering::Relaxed);
    let per_span = used.as_secs_f64() * 1e6 / spans as f64;
    println!(
        "{kind:5} {spans} spans: {per_span:.2} µs CPU per span (wall {:.2} s; {requests} exports, \
         {:.0} bytes per span)",
        wall.as_secs_f64(),
        bytes as f64 / spans as f64
    );
    let exported = exported.load(Ordering::Relaxed);
    assert_eq!(
        exported, spans as u64,
        "spans were dropped before the exporter"
    );
    per_span
}

fn main() {
    let mut args = std::env::args().skip(1);
    let spans: usize = args.next().map_or(100_000, |a| a.parse().expect("SPANS"));
    let rounds: usize = args.next().map_or(5, |a| a.parse().expect("ROUNDS"));
    let mut results: Vec<(&str, Vec<f64>)> = vec![("otlp", Vec::new()), ("azure", Vec::new())];
    for round in 0..rounds {
        // Alternate the order, so a drift of the host favours neither.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let kind = results[i].0;
            let per_span = run(kind, spans);
            results[i].1.push(per_span);
        }
    }
    for (kind, mut v) in results {
        v.sort_by(f64::total_cmp);
        println!(
            "{kind:5} median {:.2} µs CPU per span over {rounds} rounds (min {:.2}, max {:.2})",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
}
