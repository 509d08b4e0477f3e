//! Where records go when things go wrong: a stalled sink (records dropped and counted, requests
//! unaffected), an unwritable file, and file output with size-based rotation.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use scoregate::telemetry::request_log::{MAX_FIELD_BYTES, MAX_URL_BYTES};
use scoregate::telemetry::sink::{QueueLimits, RecordOutput, rotated_name};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::support::check::send_json;
use super::support::gateway::SharedBuf;
use super::support::mgmt_keys;
use super::support::process::GatewayProcess;
use super::support::{GatewayBuilder, IRIS, MockUpstream, wait_until, within, within_for};
use super::{OPEN, count};

/// A record writer that blocks on its first write until the test releases it (or drops the
/// sender), then appends to a shared buffer.
struct StalledWriter {
    release: std::sync::mpsc::Receiver<()>,
    entered: Option<oneshot::Sender<()>>,
    released: bool,
    out: SharedBuf,
    /// The size of every write: each is one batch the writer took from the queue.
    batches: Arc<Mutex<Vec<usize>>>,
}

impl Write for StalledWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.released {
            if let Some(entered) = self.entered.take() {
                let _ = entered.send(());
            }
            // Returns on release or when the test drops the sender.
            let _ = self.release.recv();
            self.released = true;
        }
        self.batches.lock().expect("batches lock").push(buf.len());
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The test's side of a [`StalledWriter`].
struct Stall {
    /// Releases the writer (dropping it does too).
    release: std::sync::mpsc::Sender<()>,
    /// Resolves when the writer has entered its first write.
    entered: oneshot::Receiver<()>,
    written: SharedBuf,
    batches: Arc<Mutex<Vec<usize>>>,
}

impl StalledWriter {
    fn new() -> (Self, Stall) {
        let (release, release_rx) = std::sync::mpsc::channel();
        let (entered_tx, entered) = oneshot::channel();
        let stall = Stall {
            release,
            entered,
            written: SharedBuf::default(),
            batches: Arc::default(),
        };
        let writer = Self {
            release: release_rx,
            entered: Some(entered_tx),
            released: false,
            out: stall.written.clone(),
            batches: Arc::clone(&stall.batches),
        };
        (writer, stall)
    }
}

/// One call of the admin listener without a credential, refused (an anonymous activity entry).
async fn refused_anonymous_call(gw: &super::support::TestGateway) {
    let (status, _, _) = mgmt_keys::call(
        gw.admin_client(),
        Method::GET,
        &gw.admin_url("/activity"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Record lines written to `buf`, parsed.
fn lines_of(buf: &SharedBuf) -> Vec<Value> {
    let bytes = buf.0.lock().expect("buffer lock").clone();
    String::from_utf8(bytes)
        .expect("UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

#[tokio::test]
async fn a_stalled_record_sink_drops_and_counts_records_without_slowing_requests() {
    const QUEUE: usize = 16;
    const MORE: usize = 40;
    let upstream = MockUpstream::start().await;
    let (writer, stall) = StalledWriter::new();
    let Stall {
        release: release_tx,
        entered: entered_rx,
        written,
        ..
    } = stall;
    let gw = GatewayBuilder::new()
        .service("open", OPEN, &upstream.url())
        .record_output(RecordOutput::Writer(Box::new(writer)), QUEUE)
        .start()
        .await;
    let url = gw.url("/api/v1/service/open/echo");

    // The first record reaches the writer, which then stalls.
    let (status, _, _) = send_json(gw.client().post(&url).body("{}")).await;
    assert_eq!(status, StatusCode::OK);
    within("the record writer to stall", entered_rx)
        .await
        .expect("the writer signals its first write");

    // Requests keep being answered promptly; records beyond the queue are dropped and counted.
    for i in 0..MORE {
        let started = Instant::now();
        let resp = within_for(
            Duration::from_secs(5),
            "a request while the record sink is stalled",
            gw.client().post(&url).body("{}").send(),
        )
        .await
        .expect("gateway answered");
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        within("body", resp.bytes()).await.expect("body");
        assert!(started.elapsed() < Duration::from_secs(5), "request {i}");
    }
    let dropped = MORE - QUEUE;
    wait_until("the dropped records to be counted", || async {
        count(&gw, "scoregate_request_records_dropped_total") >= dropped as u64
    })
    .await;
    assert_eq!(
        count(&gw, "scoregate_request_records_dropped_total"),
        dropped as u64,
        "one record in the writer, {QUEUE} queued, the rest dropped"
    );

    // Once the sink moves again, what was queued is written.
    release_tx.send(()).expect("the writer is waiting");
    wait_until("the queued records to be written", || async {
        lines_of(&written).len() > QUEUE
    })
    .await;
    assert_eq!(lines_of(&written).len(), 1 + QUEUE);
    assert_eq!(count(&gw, "scoregate_request_record_write_errors_total"), 0);
}

/// Oversized requests against a stalled sink (issue 15 item 6): every client-controlled field is
/// cut to its limit with a visible marker, and the queue holds at most `queue_max_bytes`; the
/// rest is dropped and counted.
#[tokio::test]
async fn a_stalled_sink_holds_at_most_queue_max_bytes_of_truncated_records() {
    const QUEUE_BYTES: usize = 64 * 1024;
    const REQUESTS: usize = 200;
    const LONG: usize = 20_000;
    let upstream = MockUpstream::start().await;
    let (writer, stall) = StalledWriter::new();
    let Stall {
        release: release_tx,
        entered: entered_rx,
        written,
        batches,
    } = stall;
    let gw = GatewayBuilder::new()
        .service("open", OPEN, &upstream.url())
        .record_queue(
            RecordOutput::Writer(Box::new(writer)),
            QueueLimits::new(16_384, QUEUE_BYTES),
        )
        .start()
        .await;
    let (status, _, _) = send_json(gw.client().post(gw.url("/api/v1/service/open/echo"))).await;
    assert_eq!(status, StatusCode::OK);
    within("the record writer to stall", entered_rx)
        .await
        .expect("the writer signals its first write");

    // Unauthenticated, unrouted requests with 20 KB paths and user agents.
    let path = format!("/nope/{}", "a".repeat(LONG));
    let agent = format!("ua-{}", "b".repeat(LONG));
    for i in 0..REQUESTS {
        let resp = within(
            "an oversized request while the sink is stalled",
            gw.client()
                .get(gw.url(&path))
                .header("user-agent", &agent)
                .send(),
        )
        .await
        .expect("gateway answered");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "request {i}");
    }
    // A record is at least its two capped fields long, so at most this many fit the queue.
    let fit = QUEUE_BYTES / (MAX_URL_BYTES + MAX_FIELD_BYTES);
    let dropped = || count(&gw, "scoregate_request_records_dropped_total");
    wait_until("records beyond queue_max_bytes to be dropped", || async {
        dropped() >= (REQUESTS - fit) as u64
    })
    .await;
    let held = count(&gw, "scoregate_request_record_queue_bytes");
    assert!(
        held > 0 && held <= QUEUE_BYTES as u64,
        "{held} bytes held, limit {QUEUE_BYTES}"
    );

    release_tx.send(()).expect("the writer is waiting");
    wait_until("every record to be written or dropped", || async {
        lines_of(&written).len() as u64 + dropped() == REQUESTS as u64 + 1
    })
    .await;
    let sizes = batches.lock().expect("batches lock").clone();
    assert!(
        sizes.get(1).is_some_and(|&b| b <= QUEUE_BYTES),
        "the batch gathered while stalled: {sizes:?}"
    );
    let records = lines_of(&written);
    let oversized: Vec<&Value> = records.iter().filter(|r| r["StatusCode"] == 404).collect();
    assert!(!oversized.is_empty(), "{records:?}");
    for record in oversized {
        let url = record["RequestUrl"].as_str().expect("RequestUrl");
        assert!(url.starts_with("/nope/aaa"), "{url}");
        assert!(
            url.ends_with(&format!("...[truncated, {} bytes]", path.len())),
            "{url}"
        );
        assert!(url.len() <= MAX_URL_BYTES + 40, "{}", url.len());
        let ua = record["UserAgent"].as_str().expect("UserAgent");
        assert!(ua.starts_with("ua-bbb"), "{ua}");
        assert!(
            ua.ends_with(&format!("...[truncated, {} bytes]", agent.len())),
            "{ua}"
        );
        assert!(ua.len() <= MAX_FIELD_BYTES + 40, "{}", ua.len());
    }
    wait_until("the queue to be empty again", || async {
        count(&gw, "scoregate_request_record_queue_bytes") == 0
    })
    .await;
}

#[tokio::test]
async fn a_stalled_record_sink_does_not_stall_management_operations() {
    const QUEUE: usize = 16;
    let upstream = MockUpstream::start().await;
    let (writer, stall) = StalledWriter::new();
    let Stall {
        release: release_tx,
        entered: entered_rx,
        ..
    } = stall;
    let gw = GatewayBuilder::new()
        .service_with("iris", IRIS, &upstream.url(), "auth = \"key\"")
        .record_output(RecordOutput::Writer(Box::new(writer)), QUEUE)
        .start()
        .await;
    gw.wait_ready().await;
    let (status, _, _) = send_json(gw.client().post(gw.url("/api/v1/service/iris/score"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    within("the record writer to stall", entered_rx)
        .await
        .expect("the writer signals its first write");

    // Unauthenticated callers of the admin listener: each refusal is an activity entry.
    for _ in 0..600 {
        refused_anonymous_call(&gw).await;
    }
    let token = gw.admin_token().await;
    let regenerated = tokio::time::timeout(
        Duration::from_secs(5),
        mgmt_keys::call(
            gw.admin_client(),
            Method::POST,
            &gw.admin_url("/services/iris/regenerateKeys"),
            Some(&token),
            Some(&json!({"keyType": "Secondary"})),
        ),
    )
    .await;
    // Let the parked threads go before asserting, so a failure does not leave them behind.
    drop(release_tx);
    let (status, _, body) = regenerated.expect("regenerateKeys answered within 5 s");
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn with_the_activity_backlog_full_an_operation_is_refused_unrun_and_runs_once_the_sink_drains()
 {
    let upstream = MockUpstream::start().await;
    let (writer, stall) = StalledWriter::new();
    let Stall {
        release: release_tx,
        entered: entered_rx,
        written,
        ..
    } = stall;
    // Two queue lines, four of activity backlog; a refused reservation gives up after 300 ms.
    let limits = QueueLimits {
        activity_lines: 4,
        activity_wait: Duration::from_millis(300),
        ..QueueLimits::lines(2)
    };
    let gw = GatewayBuilder::new()
        .service_with("iris", IRIS, &upstream.url(), "auth = \"key\"")
        .record_queue(RecordOutput::Writer(Box::new(writer)), limits)
        .start()
        .await;
    // listkeys is audited: its entry is the first line, and the writer stalls on it.
    let before = gw.list_keys("iris").await;
    within("the record writer to stall", entered_rx)
        .await
        .expect("the writer signals its first write");
    // Refusals of callers without credentials fill the backlog and are then dropped.
    let mut anonymous = 0;
    while gw.counter("scoregate_activity_records_dropped_total") == 0 {
        anonymous += 1;
        assert!(anonymous <= 20, "the backlog of 6 lines never filled");
        refused_anonymous_call(&gw).await;
    }

    // No room for its entry: the operation is refused and does not run.
    let (status, headers, body) = gw
        .manage(
            Method::POST,
            "/services/iris/regenerateKeys",
            Some(&json!({"keyType": "Secondary"})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    mgmt_keys::assert_admin_error(&headers, &body, "activity_log_unavailable");
    // Reads do not wait for the sink: metrics still show the stall.
    let (status, _, _) = gw.manage(Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);

    // The writer drains: the keys are those from before, and the operation now runs.
    drop(release_tx);
    assert_eq!(gw.list_keys("iris").await, before, "nothing changed");
    let body = gw.regenerate("iris", "Secondary", None).await;
    assert_ne!(body["secondaryKey"], before.1.as_str());
    wait_until("the regenerateKeys entry in the record stream", || async {
        lines_of(&written)
            .iter()
            .any(|l| l["type"] == "activity" && l["operationName"] == "regenerateKeys")
    })
    .await;
    let lines = lines_of(&written);
    let audited = |op: &str| {
        lines
            .iter()
            .filter(|l| l["type"] == "activity" && l["operationName"] == op)
            .count()
    };
    // Every authorized operation's entry is there; only anonymous refusals were dropped.
    assert_eq!(audited("regenerateKeys"), 1, "only the operation that ran");
    assert_eq!(audited("listKeys"), 2);
    let refusals = lines
        .iter()
        .filter(|l| l["type"] == "activity" && l["initiator"] == "anonymous")
        .count();
    let dropped = gw.counter("scoregate_activity_records_dropped_total");
    assert_eq!(
        refusals + usize::try_from(dropped).expect("fits"),
        anonymous
    );
}

#[tokio::test]
async fn an_unwritable_record_file_keeps_the_gateway_serving_and_counts_errors() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing");
    let path = missing.join("records.jsonl");
    let gw = GatewayBuilder::new()
        .service("open", OPEN, &upstream.url())
        .record_output(
            RecordOutput::File {
                path: path.clone(),
                max_bytes: 1 << 20,
                keep: 2,
            },
            1024,
        )
        .start()
        .await;
    let url = gw.url("/api/v1/service/open/echo");
    for _ in 0..5 {
        let (status, _, _) = send_json(gw.client().post(&url).body("{}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    wait_until("record write errors to be counted", || async {
        count(&gw, "scoregate_request_record_write_errors_total") >= 1
    })
    .await;
    assert!(!path.exists());

    // When the directory appears, writing resumes (the file is reopened at most once a second).
    std::fs::create_dir(&missing).expect("create the directory");
    wait_until("records to be written to the file again", || async {
        let (status, _, _) = send_json(gw.client().post(&url).body("{}")).await;
        assert_eq!(status, StatusCode::OK);
        std::fs::read_to_string(&path).is_ok_and(|t| !t.is_empty())
    })
    .await;
    let text = std::fs::read_to_string(&path).expect("read records");
    for line in text.lines() {
        let record: Value = serde_json::from_str(line).expect("each line is JSON");
        assert_eq!(record["type"], "request");
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: line is not JSON ({e}): {l}", path.display()))
        })
        .collect()
}

/// The `i` query parameter of a record's URL.
fn index_of(record: &Value) -> u64 {
    record["RequestUrl"]
        .as_str()
        .and_then(|u| u.rsplit_once("i="))
        .and_then(|(_, i)| i.parse().ok())
        .unwrap_or_else(|| panic!("no index in {record}"))
}

#[tokio::test]
async fn file_output_rotates_and_keeps_the_configured_number_of_files() {
    const REQUESTS: u64 = 60;
    let upstream = MockUpstream::start().await;
    let out = tempfile::tempdir().expect("records dir");
    let path = out.path().join("records.jsonl");
    let builder = GatewayBuilder::new()
        .service("open", OPEN, &upstream.url())
        .telemetry("output = \"file\"")
        .telemetry(&format!("file = \"{}\"", path.display()))
        .telemetry("file_max_bytes = 4096")
        .telemetry("file_keep = 2");
    let mut gw = GatewayProcess::start(builder);
    gw.wait_ready().await;
    let client = gw.client();
    let third = rotated_name(&path, 3);
    for i in 0..REQUESTS {
        let resp = within(
            "request",
            client
                .post(gw.url(&format!("/api/v1/service/open/echo?i={i}")))
                .body("{}")
                .send(),
        )
        .await
        .expect("gateway answered");
        assert_eq!(resp.status(), StatusCode::OK);
        within("body", resp.bytes()).await.expect("body");
        assert!(!third.exists(), "a third rotated file after request {i}");
    }
    let last = REQUESTS - 1;
    wait_until("the last request's record in the current file", || async {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains(&format!("i={last}\"")))
    })
    .await;
    gw.signal("TERM");
    assert!(gw.wait_exit().await.success(), "{}", gw.stderr());

    let files = [rotated_name(&path, 2), rotated_name(&path, 1), path.clone()];
    let mut indices = Vec::new();
    for file in &files {
        let lines = read_lines(file);
        assert!(!lines.is_empty(), "{} is empty", file.display());
        for record in &lines {
            assert_eq!(record["type"], "request", "{record}");
            indices.push(index_of(record));
        }
    }
    assert!(!third.exists(), "file_keep = 2 keeps two rotated files");
    assert!(
        indices.windows(2).all(|w| w[0] + 1 == w[1]),
        "oldest file first, no gaps within what is kept: {indices:?}"
    );
    assert_eq!(indices.last(), Some(&last));
    assert!(indices[0] > 0, "the oldest records were rotated away");
}
