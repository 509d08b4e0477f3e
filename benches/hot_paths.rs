//! Micro-benchmarks of the per-request hot functions: the key check, token verification (cold
//! and cached), the request checks every request passes (path safety, request id), and handing
//! a request record to the record writer.
//!
//! `cargo bench --bench hot_paths`. Numbers and the machine they came from are recorded in
//! `loadtest/RESULTS.md`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use std::sync::Arc;

use scoregate::auth::ServiceAuth;
use scoregate::auth::jwt::cache::TokenCache;
use scoregate::auth::jwt::signing::SigningFile;
use scoregate::auth::jwt::{CacheCounters, TokenAuthority};
use scoregate::auth::keys::{KeyFile, KeySet, KeySource, KeyStorage};
use scoregate::config::{SigningSource, TokenConfig};

/// A service's two keys, as the runtime state holds them.
fn key_store(dir: &std::path::Path) -> Arc<KeySet> {
    let file = KeyFile::new(KeySource::State {
        path: dir.join("keys/iris.json"),
        storage: KeyStorage::Plain,
    });
    Arc::new(file.generate().expect("keys").0)
}

fn keys(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = key_store(dir.path());
    let listing = store.list().expect("keys");
    let secondary = listing.secondary.expose().to_owned();
    let wrong = "x".repeat(43);
    let mut g = c.benchmark_group("key_check");
    g.bench_function("verify_secondary_hit", |b| {
        b.iter(|| store.verify(black_box(secondary.as_bytes())));
    });
    g.bench_function("verify_miss", |b| {
        b.iter(|| store.verify(black_box(wrong.as_bytes())));
    });
    let auth = ServiceAuth::Key(Arc::clone(&store));
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {secondary}")).expect("header"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    g.bench_function("authenticate_header", |b| {
        b.iter(|| rt.block_on(auth.authenticate(black_box(&headers))));
    });
    g.finish();
}

fn authority(dir: &std::path::Path, algorithm: jsonwebtoken::Algorithm) -> TokenAuthority {
    let m = scoregate::telemetry::metrics::Metrics::new();
    let service = scoregate::telemetry::metrics::ServiceMetrics::new(&m, "iris", "token");
    let counters = CacheCounters {
        hit: service.token_cache_hit,
        miss: service.token_cache_miss,
    };
    let config = TokenConfig {
        algorithm,
        issuer: "scoregate".into(),
        lifetime: Duration::from_secs(3600),
        refresh_after: Duration::from_secs(1800),
        leeway: Duration::from_secs(60),
        signing: SigningSource::State {
            path: dir.join(format!("signing-{algorithm:?}.json")),
        },
        subject_header: None,
        cache_entries: 100_000,
        trusted: Vec::new(),
    };
    let signing = SigningFile::new(
        config.signing.clone(),
        algorithm,
        TokenAuthority::overlap(&config),
    )
    .generate()
    .expect("signing key")
    .0;
    TokenAuthority::new(
        "iris",
        config,
        Arc::new(signing),
        Vec::new(),
        Arc::new(TokenCache::new(100_000)),
        counters,
    )
}

fn tokens(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("token_verify");
    for alg in [
        jsonwebtoken::Algorithm::ES256,
        jsonwebtoken::Algorithm::RS256,
        jsonwebtoken::Algorithm::EdDSA,
        jsonwebtoken::Algorithm::HS256,
    ] {
        let a = authority(dir.path(), alg);
        let token = a.issue("bench").expect("issue").access_token;
        g.bench_function(format!("{alg:?}_cold"), |b| {
            b.iter(|| {
                // An empty kid list clears the cache, so every verification does the signature work.
                a.cache.retain_kids(&[]);
                rt.block_on(a.verify(black_box(token.as_bytes())))
            });
        });
        g.bench_function(format!("{alg:?}_cached"), |b| {
            b.iter(|| rt.block_on(a.verify(black_box(token.as_bytes()))));
        });
    }
    g.finish();
}

fn request(c: &mut Criterion) {
    use scoregate::proxy::headers::{new_request_id, path_is_safe, request_id};
    let mut g = c.benchmark_group("request");
    g.bench_function("path_is_safe", |b| {
        b.iter(|| path_is_safe(black_box("/api/v1/service/iris/score")));
    });
    let mut with_id = HeaderMap::new();
    with_id.insert(
        "x-request-id",
        HeaderValue::from_static("3f2c1e9a-5b7d-4c8e-9a1b-2d3e4f5a6b7c"),
    );
    g.bench_function("request_id_kept", |b| {
        b.iter(|| request_id(black_box(&with_id)));
    });
    // A new id, then the two clones every request makes (upstream request, response).
    g.bench_function("request_id_new_and_cloned", |b| {
        b.iter(|| {
            let id = new_request_id();
            (id.clone(), id.clone(), id)
        });
    });
    trace_context(&mut g);
    g.finish();
}

/// W3C trace context per request: read (or start) the trace, then the `traceparent` sent
/// upstream.
fn trace_context(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    use scoregate::telemetry::trace::TraceContext;
    let mut continued = HeaderMap::new();
    continued.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    g.bench_function("trace_continued_and_sent", |b| {
        b.iter(|| TraceContext::from_headers(black_box(&continued)).traceparent());
    });
    let none = HeaderMap::new();
    g.bench_function("trace_new_and_sent", |b| {
        b.iter(|| TraceContext::from_headers(black_box(&none)).traceparent());
    });
}

/// `RecordSink::emit` with a record-sized line: the per-thread scratch line, the lock and the
/// copy into the shared buffer. Timed in bursts of 150 lines with a 5 ms pause between them (not
/// timed), in which the writer thread takes the batch, as under 30,000 requests/s; without the
/// pauses the buffer would grow to megabytes between the writer's turns, which real traffic
/// does not do.
fn records(c: &mut Criterion) {
    use prometheus::{IntCounter, IntGauge};
    use scoregate::telemetry::sink::{QueueLimits, RecordOutput, RecordSink, SinkCounters};
    const BURST: u64 = 150;
    let counters = SinkCounters {
        dropped: IntCounter::new("dropped", "dropped").expect("counter"),
        write_errors: IntCounter::new("write_errors", "write errors").expect("counter"),
        activity_dropped: IntCounter::new("activity_dropped", "activity").expect("counter"),
        queue_bytes: IntGauge::new("queue_bytes", "queue bytes").expect("gauge"),
    };
    let (sink, writer) = RecordSink::spawn(
        RecordOutput::Writer(Box::new(std::io::sink())),
        QueueLimits::lines(16_384),
        true,
        counters,
    )
    .expect("record writer");
    let line = [b'x'; 450];
    let mut g = c.benchmark_group("records");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(50))
        .measurement_time(Duration::from_millis(300));
    g.bench_function("emit_450_bytes", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(BURST);
                let start = std::time::Instant::now();
                for _ in 0..n {
                    sink.emit(|buf| {
                        buf.extend_from_slice(black_box(&line));
                        buf.push(b'\n');
                    });
                }
                timed += start.elapsed();
                left -= n;
                std::thread::sleep(Duration::from_millis(5));
            }
            timed
        });
    });
    g.finish();
    drop(sink);
    writer.join();
}

/// What export costs per span once it is off the request path: a batch of 512 key-mode spans
/// encoded as each exporter sends it (OTLP protobuf; Azure Monitor JSON envelopes, gzip level 1).
/// Divide by 512 for the cost per request.
fn export(c: &mut Criterion) {
    use scoregate::telemetry::export::{SpanRecord, encode_batch};
    let spans: Vec<SpanRecord> = (0..512u32)
        .map(|i| SpanRecord {
            trace_id: [i.to_le_bytes()[0]; 16],
            span_id: [7; 8],
            parent_id: None,
            flags: 1,
            trace_state: None,
            start: std::time::SystemTime::now(),
            duration: Duration::from_micros(1_234 + u64::from(i)),
            method: http::Method::POST,
            path: "/api/v1/service/iris/score".to_owned(),
            route_len: Some("/api/v1/service/iris".len()),
            status: 200,
            server_address: Some("127.0.0.1:8443".to_owned()),
            client_address: std::net::Ipv4Addr::LOCALHOST.into(),
            request_id: format!("8c2f5d0e-3b7a-4c1e-9f6d-{i:012}"),
            role_name: "iris".into(),
            service: Some("iris".into()),
            auth_mode: Some("key"),
            principal: Some("primary".to_owned()),
            queue_wait: Some(Duration::from_micros(3)),
            upstream_duration: Some(Duration::from_micros(900)),
            error: None,
        })
        .collect();
    let mut g = c.benchmark_group("export");
    g.sample_size(20);
    for exporter in ["otlp", "azure_monitor"] {
        g.bench_function(format!("{exporter}_batch_of_512"), |b| {
            b.iter(|| encode_batch(exporter, black_box(&spans)));
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = keys, tokens, request, records, export
}
criterion_main!(benches);
