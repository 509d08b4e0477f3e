//! Export of request telemetry to a collector: one exporter per configured destination, each a
//! bounded queue drained by its own task.
//!
//! - `otlp` (`[telemetry.otlp]`): one OpenTelemetry server span per request (HTTP semantic
//!   conventions) and every activity entry as a log record, OTLP/HTTP protobuf.
//! - `azure_monitor` (`[telemetry.azure_monitor]`): Application Insights `Request` envelopes and
//!   activity entries as custom events, to the connection string's ingestion endpoint.
//!
//! What they share lives here. A request never waits for export: `finish` offers its span to
//! each exporter's bounded queue and, when a queue is full, the span is dropped and counted
//! (`scoregate_export_dropped_total{exporter}`); activity entries share the queue and its bound.
//! One task per exporter drains its queue: a batch is the first item and what arrives within
//! `batch_delay_ms` after it (a full `batch_size` goes at once), so a busy gateway sends full
//! batches and an idle one sends within the delay; the task retries a refused send
//! with exponential backoff, honouring `Retry-After`; what is still refused after the last
//! attempt is dropped and counted. At shutdown, after the scoring listener has drained,
//! [`Flush::run`] sends what is still queued (a send waiting out a retry gets one last attempt
//! at once), bounded by twice the exporter's timeout.

mod azure_monitor;
mod otlp;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounter;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ExportQueue;
use crate::telemetry::activity::ActivityRecord;
use crate::telemetry::metrics::Metrics;

/// Attempts per batch (the first send and its retries).
const ATTEMPTS: u32 = 5;

/// The first retry waits this long; each next one twice as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A `Retry-After` beyond this is capped (the queue keeps filling meanwhile).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The part of a receiver's answer that is read (a partial-success report is small).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// One request as a span, in the gateway's own types (converted to protobuf on the export task,
/// not on the request path).
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    pub flags: u8,
    pub trace_state: Option<String>,
    pub start: SystemTime,
    pub duration: Duration,
    pub method: http::Method,
    /// The path as received, without the query.
    pub path: String,
    /// The length of the matched route's prefix (`None`: no route matched).
    pub route_len: Option<usize>,
    pub status: u16,
    /// The `Host` the client addressed.
    pub server_address: Option<String>,
    pub client_address: std::net::IpAddr,
    pub request_id: String,
    pub role_name: Arc<str>,
    pub service: Option<Arc<str>>,
    pub auth_mode: Option<&'static str>,
    pub principal: Option<String>,
    pub queue_wait: Option<Duration>,
    pub upstream_duration: Option<Duration>,
    /// The gateway's error code, when the request failed.
    pub error: Option<&'static str>,
}

impl SpanRecord {
    /// The operation name (see [`SpanName`]); written where it is needed, never stored.
    pub fn name(&self) -> SpanName<'_> {
        SpanName::of(&self.method, &self.path, self.route_len)
    }
}

/// A request's operation name, `POST /score`: the method and the path after the route prefix
/// (the whole path when no route matched), without the query. The record's `Name` and the
/// exported span's name.
#[derive(Debug, Clone, Copy)]
pub struct SpanName<'a> {
    pub method: &'a str,
    pub rest: &'a str,
}

impl<'a> SpanName<'a> {
    /// `path` without its query; `route_len`: the matched route prefix's length.
    pub fn of(method: &'a http::Method, path: &'a str, route_len: Option<usize>) -> Self {
        let rest = match route_len {
            Some(len) => match path.get(len..) {
                Some("") | None => "/",
                Some(rest) => rest,
            },
            None => path,
        };
        Self {
            method: method.as_str(),
            rest,
        }
    }

    /// The name as the pieces it is written from, in order (the record writes them as they are).
    pub fn parts(&self) -> [&'a str; 3] {
        [self.method, " ", self.rest]
    }
}

impl std::fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.parts().iter().try_for_each(|part| f.write_str(part))
    }
}

/// A batch of spans as `exporter` (`"otlp"` or `"azure_monitor"`) sends it: the protobuf body,
/// or the gzip-compressed JSON array of envelopes. For `benches/` (the per-span cost of export).
#[doc(hidden)]
pub fn encode_batch(exporter: &str, spans: &[SpanRecord]) -> Vec<u8> {
    match exporter {
        otlp::EXPORTER => otlp::encode(spans, "bench"),
        _ => azure_monitor::encode_spans(spans, "00000000-0000-0000-0000-000000000001", "bench")
            .map(Vec::from)
            .unwrap_or_default(),
    }
}

/// What waits in an export queue.
#[derive(Debug, Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "spans are the common case: boxing them would cost an allocation per request"
)]
pub enum Item {
    Span(SpanRecord),
    /// Rare next to spans, so boxed to keep the queue's slots small.
    Activity(Box<ActivityRecord>),
}

/// One exporter's request side: cheap to clone, never blocks.
#[derive(Debug, Clone)]
struct Exporter {
    tx: mpsc::Sender<Item>,
    dropped: IntCounter,
    /// Told when a full batch is waiting, so the export task wakes once per batch, not per item.
    full: Arc<Notify>,
    batch_size: usize,
}

impl Exporter {
    fn queue(&self, item: Item) {
        if self.tx.try_send(item).is_err() {
            self.dropped.inc();
            return;
        }
        // Two atomic loads; `notify_one` only once a batch is full (it stores one permit if the
        // task is busy sending, so a backlog is picked up as soon as it comes back).
        if self.tx.max_capacity() - self.tx.capacity() >= self.batch_size {
            self.full.notify_one();
        }
    }
}

/// Every configured exporter; what `finish` and the activity log offer telemetry to.
#[derive(Debug, Clone, Default)]
pub struct Exporters(Vec<Exporter>);

impl Exporters {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Queues a span on every exporter, or drops and counts it where a queue is full.
    pub fn offer(&self, span: SpanRecord) {
        self.offer_item(Item::Span(span));
    }

    /// Queues an activity entry on every exporter (the entry itself is in the record stream and
    /// `GET /activity` regardless).
    pub fn offer_activity(&self, entry: &ActivityRecord) {
        self.offer_item(Item::Activity(Box::new(entry.clone())));
    }

    fn offer_item(&self, item: Item) {
        if let Some((last, others)) = self.0.split_last() {
            for exporter in others {
                exporter.queue(item.clone());
            }
            last.queue(item);
        }
    }
}

/// The shutdown side of the exporters, held by the composition root.
#[derive(Debug, Default)]
pub struct Flush(Vec<(CancellationToken, JoinHandle<()>, Duration)>);

impl Flush {
    /// Sends what is still queued and stops the export tasks; waits at most twice each
    /// exporter's timeout, so a receiver that is down cannot hold up the exit.
    pub async fn run(self) {
        for (stop, _, _) in &self.0 {
            stop.cancel();
        }
        for (_, task, bound) in self.0 {
            if tokio::time::timeout(bound, task).await.is_err() {
                tracing::warn!("telemetry export did not finish within its timeout at shutdown");
            }
        }
    }
}

/// Starts an exporter for each configured destination.
pub fn start(
    config: &crate::config::TelemetryConfig,
    instance: &Arc<str>,
    metrics: &Metrics,
) -> Result<(Exporters, Flush), String> {
    let mut exporters = Exporters::default();
    let mut flush = Flush::default();
    if let Some(c) = &config.otlp {
        let http = Http::new(c.ca.as_deref(), c.queue.timeout, c.headers.clone())?;
        let deliver = otlp::Otlp::new(
            c,
            http,
            Arc::clone(instance),
            Retry::new(metrics, otlp::EXPORTER),
        );
        spawn(
            deliver,
            otlp::EXPORTER,
            c.queue,
            metrics,
            &mut exporters,
            &mut flush,
        );
    }
    if let Some(c) = &config.azure_monitor {
        let http = Http::new(c.ca.as_deref(), c.queue.timeout, Vec::new())?;
        let deliver = azure_monitor::AzureMonitor::new(
            c,
            http,
            Arc::clone(instance),
            Retry::new(metrics, azure_monitor::EXPORTER),
        );
        spawn(
            deliver,
            azure_monitor::EXPORTER,
            c.queue,
            metrics,
            &mut exporters,
            &mut flush,
        );
    }
    Ok((exporters, flush))
}

fn spawn<D: Deliver>(
    deliver: D,
    name: &'static str,
    queue: ExportQueue,
    metrics: &Metrics,
    exporters: &mut Exporters,
    flush: &mut Flush,
) {
    let (tx, rx) = mpsc::channel(queue.capacity);
    let dropped = metrics.export_dropped.with_label_values(&[name]);
    let stop = deliver.retry().stop.clone();
    let full = Arc::new(Notify::new());
    let pipeline = Pipeline {
        deliver,
        batch_size: queue.batch_size,
        batch_delay: queue.batch_delay,
        dropped: dropped.clone(),
        full: Arc::clone(&full),
    };
    let task = tokio::spawn(pipeline.run(rx));
    exporters.0.push(Exporter {
        tx,
        dropped,
        full,
        batch_size: queue.batch_size,
    });
    flush.0.push((stop, task, queue.timeout * 2));
}

/// How one kind of receiver is sent a batch.
pub(crate) trait Deliver: Send + Sync + 'static {
    /// Sends `batch` with at most `attempts` attempts; returns how many items were never
    /// accepted.
    fn deliver(&self, batch: Vec<Item>, attempts: u32) -> impl Future<Output = u64> + Send;

    fn retry(&self) -> &Retry;
}

/// The queue-draining loop shared by every exporter.
struct Pipeline<D> {
    deliver: D,
    batch_size: usize,
    batch_delay: Duration,
    dropped: IntCounter,
    full: Arc<Notify>,
}

impl<D: Deliver> Pipeline<D> {
    async fn run(self, mut rx: mpsc::Receiver<Item>) {
        let stop = self.deliver.retry().stop.clone();
        loop {
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                item = rx.recv() => match item {
                    Some(item) => item,
                    None => break,
                },
            };
            let batch = self.gather(first, &mut rx, &stop).await;
            self.send(batch, ATTEMPTS).await;
        }
        // Shutdown: what is still queued goes out, one attempt per batch.
        rx.close();
        while let Ok(first) = rx.try_recv() {
            let mut batch = vec![first];
            while batch.len() < self.batch_size
                && let Ok(item) = rx.try_recv()
            {
                batch.push(item);
            }
            self.send(batch, 1).await;
        }
    }

    /// `first` and what arrives within `batch_delay` after it, up to `batch_size` (a full batch
    /// goes at once; so does everything when shutdown begins).
    ///
    /// The task does not wait on the queue item by item: that would wake it once per request,
    /// which cost more than the export itself under load. It sleeps until the deadline, a full
    /// batch (`Exporter::queue` notifies) or shutdown, and then takes what is queued.
    async fn gather(
        &self,
        first: Item,
        rx: &mut mpsc::Receiver<Item>,
        stop: &CancellationToken,
    ) -> Vec<Item> {
        let mut batch = vec![first];
        let deadline = tokio::time::sleep(self.batch_delay);
        tokio::pin!(deadline);
        let mut last_look = false;
        loop {
            while batch.len() < self.batch_size
                && let Ok(item) = rx.try_recv()
            {
                batch.push(item);
            }
            if last_look || batch.len() >= self.batch_size {
                break;
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = &mut deadline => last_look = true,
                () = self.full.notified() => {}
            }
        }
        batch
    }

    async fn send(&self, batch: Vec<Item>, attempts: u32) {
        let lost = self.deliver.deliver(batch, attempts).await;
        self.dropped.inc_by(lost);
    }
}

/// Retry bookkeeping of one exporter: backoff, `Retry-After`, shutdown, and the batch counters.
#[derive(Debug)]
pub(crate) struct Retry {
    stop: CancellationToken,
    ok: IntCounter,
    retried: IntCounter,
    failed: IntCounter,
}

impl Retry {
    fn new(metrics: &Metrics, exporter: &str) -> Self {
        let batches = |result| {
            metrics
                .export_batches
                .with_label_values(&[exporter, result])
        };
        Self {
            stop: CancellationToken::new(),
            ok: batches("ok"),
            retried: batches("retried"),
            failed: batches("failed"),
        }
    }

    fn succeeded(&self) {
        self.ok.inc();
    }

    fn gave_up(&self) {
        self.failed.inc();
    }

    /// Waits before the attempt after `attempt`: `after` if the receiver said so (capped), else
    /// the current backoff, which then doubles. False when no further attempt is to be made (the
    /// last one was made, or shutdown has begun; a wait in progress when shutdown begins ends at
    /// once and one last attempt follows).
    async fn wait(
        &self,
        attempt: u32,
        attempts: u32,
        after: Option<Duration>,
        backoff: &mut Duration,
    ) -> bool {
        if attempt >= attempts || self.stop.is_cancelled() {
            return false;
        }
        self.retried.inc();
        let wait = after.map_or(*backoff, |a| a.min(MAX_RETRY_AFTER));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.stop.cancelled() => {}
        }
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        true
    }
}

/// The HTTP side shared by the exporters: a pooled HTTP/1.1 client for http and https (system
/// roots plus an optional CA), extra headers on every request, and a bound on each exchange.
pub(crate) struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// A receiver's answer.
pub(crate) struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

impl Http {
    fn new(
        ca: Option<&Path>,
        timeout: Duration,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    ) -> Result<Self, String> {
        let tls = crate::tls::client_config(ca)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
            headers,
        })
    }

    /// POSTs `body`; `None` when the receiver could not be reached or did not answer in time.
    async fn post(
        &self,
        uri: &http::Uri,
        content_type: &'static str,
        gzip: bool,
        body: Bytes,
    ) -> Option<Answer> {
        let mut req = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .ok()?;
        if gzip {
            req.headers_mut().insert(
                http::header::CONTENT_ENCODING,
                http::HeaderValue::from_static("gzip"),
            );
        }
        for (name, value) in &self.headers {
            req.headers_mut().append(name, value.clone());
        }
        let exchange = async {
            let resp = match self.client.request(req).await {
                Ok(resp) => resp,
                Err(e) => {
                    tracing::debug!(error = %e, %uri, "telemetry export failed; retrying");
                    return None;
                }
            };
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            // Read the answer so the connection can be reused (and a partial-success report
            // can be parsed).
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            Some(Answer {
                status,
                retry_after,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .ok()
            .flatten()
    }
}

/// Nanoseconds since the Unix epoch (0 before it).
fn unix_nanos(t: SystemTime) -> u64 {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A span as a key-mode request to `iris` makes it.
    pub(crate) fn span(request_id: &str) -> SpanRecord {
        SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: None,
            flags: 1,
            trace_state: None,
            start: std::time::SystemTime::now(),
            duration: Duration::from_millis(3),
            method: http::Method::POST,
            path: "/iris/score".to_owned(),
            route_len: Some("/iris".len()),
            status: 200,
            server_address: None,
            client_address: std::net::Ipv4Addr::LOCALHOST.into(),
            request_id: request_id.to_owned(),
            role_name: Arc::from("iris"),
            service: Some(Arc::from("iris")),
            auth_mode: Some("key"),
            principal: Some("primary".to_owned()),
            queue_wait: None,
            upstream_duration: None,
            error: None,
        }
    }

    /// Hands each batch it is given (the request ids) to the test.
    struct Recorder {
        sent: mpsc::UnboundedSender<Vec<String>>,
        retry: Retry,
    }

    impl Deliver for Recorder {
        async fn deliver(&self, batch: Vec<Item>, _attempts: u32) -> u64 {
            let ids = batch
                .iter()
                .map(|item| match item {
                    Item::Span(s) => s.request_id.clone(),
                    Item::Activity(_) => "activity".to_owned(),
                })
                .collect();
            let _ = self.sent.send(ids);
            0
        }

        fn retry(&self) -> &Retry {
            &self.retry
        }
    }

    /// On the paused clock: a full batch leaves at once, without waiting for `batch_delay`
    /// (the queue tells the sleeping task), and what is left leaves when the delay is over.
    #[tokio::test(start_paused = true)]
    async fn a_full_batch_leaves_at_once_and_the_rest_after_the_delay() {
        let metrics = Metrics::new();
        let (sent_tx, mut sent) = mpsc::unbounded_channel();
        let recorder = Recorder {
            sent: sent_tx,
            retry: Retry::new(&metrics, "test"),
        };
        let queue = ExportQueue {
            capacity: 16,
            batch_size: 3,
            batch_delay: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        };
        let (mut exporters, mut flush) = (Exporters::default(), Flush::default());
        spawn(
            recorder,
            "test",
            queue,
            &metrics,
            &mut exporters,
            &mut flush,
        );
        let start = tokio::time::Instant::now();

        exporters.offer(span("a"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        for id in ["b", "c", "d"] {
            exporters.offer(span(id));
        }
        let first = sent.recv().await.expect("first batch");
        assert_eq!(first, ["a", "b", "c"]);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(300),
            "no wait once full"
        );

        let second = sent.recv().await.expect("second batch");
        assert_eq!(second, ["d"]);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(1300),
            "a partial batch waits batch_delay after its first item"
        );

        exporters.offer(span("e"));
        flush.run().await;
        assert_eq!(sent.recv().await.expect("at shutdown"), ["e"]);
        assert!(
            start.elapsed() < Duration::from_millis(2300),
            "shutdown does not wait out the delay"
        );
    }
}
