//! The record stream's writer: lines are serialized on the request path into a shared buffer,
//! and one OS thread takes the whole buffer every few milliseconds and writes it with a single
//! call.
//!
//! A request record is formatted into a per-thread scratch line (no allocation), then copied
//! into the shared buffer under a lock held only for that copy; the writer swaps the buffer for
//! an empty one, so the request path never waits for I/O, and no record is allocated, sent
//! through a channel or freed on another thread. When the writer is behind (`queue_capacity`
//! lines waiting, or `queue_max_bytes` held by lines waiting and the batch being written),
//! records are dropped and counted (`scoregate_request_records_dropped_total`), so a slow sink
//! never slows or blocks a request and never queues without bound, whatever the size of the
//! records (`scoregate_request_record_queue_bytes` shows the bytes held).
//!
//! Activity entries are an audit trail and have a backlog of their own beyond the queue
//! (`QueueLimits::activity_lines`, `activity_bytes`). How an entry is kept is the caller's choice
//! ([`Keep`]): a management operation reserves its entry's place *before* it runs
//! ([`RecordSink::reserve_activity`]); when the backlog is full (the sink has stalled) the
//! reservation waits for the writer up to `activity_wait` and then fails, and the operation is
//! refused without running, so no operation happens without its entry. Changes picked up from
//! files are always kept (one per poll at most). Only refusals that cost their sender nothing
//! (callers without valid credentials) are dropped and counted once the backlog is full.
//!
//! Outputs: stdout (diagnostics go to stderr so stdout stays machine-readable), a file with
//! size-based rotation and a retention count, or any writer (tests). A failing output keeps the
//! gateway serving; failures are counted and reported once per episode in diagnostics.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};

use super::activity::ActivityRecord;

/// Where the record stream goes.
pub enum RecordOutput {
    Stdout,
    /// A file rotated when it would exceed `max_bytes`, keeping `keep` older files
    /// (`path.1` newest … `path.<keep>` oldest).
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: usize,
    },
    /// Any writer, e.g. a test's buffer.
    Writer(Box<dyn Write + Send>),
}

impl std::fmt::Debug for RecordOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdout => f.write_str("Stdout"),
            Self::File {
                path,
                max_bytes,
                keep,
            } => f
                .debug_struct("File")
                .field("path", path)
                .field("max_bytes", max_bytes)
                .field("keep", keep)
                .finish(),
            Self::Writer(_) => f.write_str("Writer"),
        }
    }
}

/// The handle the request path and admin API hold: cheap to clone.
#[derive(Debug, Clone)]
pub struct RecordSink {
    shared: Arc<Shared>,
    /// Whether request records are written at all (`[telemetry] request_records`).
    requests: bool,
    dropped: IntCounter,
    activity_dropped: IntCounter,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when the first line arrives while the writer waits, and on stop.
    wake: Condvar,
    /// Notified when the writer has taken a batch or a reservation is given back: room for
    /// waiting reservations.
    room: tokio::sync::Notify,
    /// How much may wait for the writer.
    limits: QueueLimits,
    /// `buf` plus `in_flight`, kept current under the lock.
    held_bytes: IntGauge,
}

/// Bounds of the record queue: request records beyond `lines` or `bytes` are dropped; activity
/// entries have a backlog of their own beyond those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Lines waiting for the writer (`queue_capacity`).
    pub lines: usize,
    /// Bytes of lines waiting plus the batch being written (`queue_max_bytes`).
    pub bytes: usize,
    /// Activity entries that may wait beyond `lines`: far beyond any real management traffic,
    /// so only a stalled sink fills it.
    pub activity_lines: usize,
    /// Bytes activity entries may hold beyond `bytes`.
    pub activity_bytes: usize,
    /// How long a management operation waits for room for its entry in a full backlog.
    pub activity_wait: Duration,
}

impl QueueLimits {
    /// `[telemetry] queue_max_bytes` when not configured: 16 MiB.
    pub const DEFAULT_BYTES: usize = crate::config::DEFAULT_QUEUE_MAX_BYTES;

    /// `lines` and `bytes`, with the activity backlog's defaults.
    pub const fn new(lines: usize, bytes: usize) -> Self {
        Self {
            lines,
            bytes,
            activity_lines: 20_000,
            // Entries are a few hundred bytes each.
            activity_bytes: 8 * 1024 * 1024,
            activity_wait: Duration::from_secs(5),
        }
    }

    /// A line limit with the default byte limit.
    pub const fn lines(lines: usize) -> Self {
        Self::new(lines, Self::DEFAULT_BYTES)
    }

    /// The bound activity entries are held to.
    const fn activity(&self) -> Bound {
        Bound {
            lines: self.lines.saturating_add(self.activity_lines),
            bytes: self.bytes.saturating_add(self.activity_bytes),
        }
    }

    const fn records(&self) -> Bound {
        Bound {
            lines: self.lines,
            bytes: self.bytes,
        }
    }
}

/// At most this many lines waiting, and this many bytes held.
#[derive(Debug, Clone, Copy)]
struct Bound {
    lines: usize,
    bytes: usize,
}

/// The bytes one reserved activity entry is counted as until it is written (entries are a few
/// hundred bytes; a reservation errs on the large side).
const RESERVED_ENTRY_BYTES: usize = 2048;

/// How an activity entry is kept when the sink is behind.
#[derive(Debug)]
pub enum Keep {
    /// In the place reserved for it before its operation ran: never dropped.
    Reserved(ActivitySlot),
    /// Always, whatever the backlog (changes picked up from files: one per poll at most).
    Always,
    /// While the backlog has room; dropped and counted beyond it (refusals of callers without
    /// valid credentials, which cost their sender nothing).
    IfRoom,
}

/// A place in the activity backlog, held from before a management operation runs until its
/// entry is written (dropped unused, the place is given back).
#[derive(Debug)]
#[must_use = "a reservation is given back when dropped"]
pub struct ActivitySlot {
    shared: Arc<Shared>,
}

impl Drop for ActivitySlot {
    fn drop(&mut self) {
        let mut p = self.shared.lock();
        p.reserved = p.reserved.saturating_sub(1);
        drop(p);
        self.shared.room.notify_waiters();
    }
}

/// The activity backlog stayed full for `activity_wait`: the sink is not writing.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the record stream has not taken activity entries for {0:?}")]
pub struct ActivityStalled(pub Duration);

/// Lines not yet taken by the writer.
#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    lines: usize,
    /// Bytes of the batch the writer took and is writing (still in memory).
    in_flight: usize,
    /// The writer is blocked on `wake` (it waits only when `buf` is empty).
    writer_waiting: bool,
    /// Write what is here, then stop; later lines are ignored.
    stopping: bool,
    /// Activity entries whose place is reserved ([`ActivitySlot`]) and not yet written.
    reserved: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends one line if fewer than `limit.lines` are waiting and the bytes held stay within
    /// `limit.bytes` (`None`: always); false if it did not fit. `reserved` lines count as
    /// waiting when `count_reserved`. After a stop the line is ignored.
    fn push(&self, line: &[u8], limit: Option<Bound>, count_reserved: bool) -> bool {
        let mut p = self.lock();
        if p.stopping {
            return true;
        }
        let held = p.buf.len() + p.in_flight + line.len();
        if let Some(limit) = limit {
            let reserved = if count_reserved { p.reserved } else { 0 };
            let reserved_bytes = reserved.saturating_mul(RESERVED_ENTRY_BYTES);
            if p.lines + reserved >= limit.lines || held + reserved_bytes > limit.bytes {
                return false;
            }
        }
        let limit = limit.unwrap_or_else(|| self.limits.activity());
        // Grow by doubling, but never past the byte limit, so the buffer's allocation is
        // bounded like its contents.
        let needed = p.buf.len() + line.len();
        if needed > p.buf.capacity() {
            let target = (p.buf.capacity() * 2).clamp(needed, limit.bytes.max(needed));
            let extra = target - p.buf.len();
            p.buf.reserve_exact(extra);
        }
        p.buf.extend_from_slice(line);
        p.lines += 1;
        self.held_bytes.set(i64::try_from(held).unwrap_or(i64::MAX));
        if p.writer_waiting {
            p.writer_waiting = false;
            self.wake.notify_one();
        }
        true
    }
}

impl Shared {
    /// Takes one place in the activity backlog if it has room (after a stop, always).
    fn try_reserve(&self) -> bool {
        let mut p = self.lock();
        let bound = self.limits.activity();
        let reserved = p.reserved + 1;
        let held = p.buf.len() + p.in_flight + reserved.saturating_mul(RESERVED_ENTRY_BYTES);
        if p.stopping || (p.lines + reserved <= bound.lines && held <= bound.bytes) {
            p.reserved = reserved;
            return true;
        }
        false
    }
}

/// Stops the writer thread at the end of shutdown.
#[derive(Debug)]
pub struct RecordWriter {
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl RecordWriter {
    /// Writes everything queued so far, then stops the writer. Does not wait for other holders of
    /// a `RecordSink` (connections a timed-out drain left behind); their later lines are dropped.
    pub fn join(mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Counters the writer updates.
#[derive(Debug, Clone)]
pub struct SinkCounters {
    pub dropped: IntCounter,
    pub write_errors: IntCounter,
    pub activity_dropped: IntCounter,
    /// Bytes held by lines waiting and the batch being written.
    pub queue_bytes: IntGauge,
}

impl SinkCounters {
    /// The gateway's series for the record stream in `metrics`.
    pub fn of(metrics: &super::metrics::Metrics) -> Self {
        Self {
            dropped: metrics.records_dropped.clone(),
            write_errors: metrics.record_write_errors.clone(),
            activity_dropped: metrics.activity_dropped.clone(),
            queue_bytes: metrics.record_queue_bytes.clone(),
        }
    }
}

thread_local! {
    /// The line a request record is formatted into before it is copied to the shared buffer;
    /// reused, so formatting allocates nothing once it has grown to a record's size.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

impl RecordSink {
    /// Starts the writer thread. `limits` bound the lines and bytes waiting to be written.
    pub fn spawn(
        output: RecordOutput,
        limits: QueueLimits,
        requests: bool,
        counters: SinkCounters,
    ) -> io::Result<(Self, RecordWriter)> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            room: tokio::sync::Notify::new(),
            limits,
            held_bytes: counters.queue_bytes,
        });
        let write_errors = counters.write_errors.clone();
        let writer_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("scoregate-records".into())
            .spawn(move || {
                let out: Box<dyn Write> = match output {
                    // Not `lock()`: holding the lock for the thread's life would block every other
                    // `println!` in the process (the demo banner, check-config output).
                    RecordOutput::Stdout => Box::new(io::stdout()),
                    RecordOutput::File {
                        path,
                        max_bytes,
                        keep,
                    } => Box::new(RotatingFile::new(path, max_bytes, keep)),
                    RecordOutput::Writer(w) => w,
                };
                write_loop(&writer_shared, out, &write_errors);
            })?;
        Ok((
            Self {
                shared: Arc::clone(&shared),
                requests,
                dropped: counters.dropped,
                activity_dropped: counters.activity_dropped,
            },
            RecordWriter {
                thread: Some(thread),
                shared,
            },
        ))
    }

    /// Queues a request record that `write` formats (one line, newline included), or counts it
    /// as dropped when the writer is behind. Nothing is formatted when records are off.
    pub fn emit(&self, write: impl FnOnce(&mut Vec<u8>)) {
        if !self.requests {
            return;
        }
        SCRATCH.with_borrow_mut(|line| {
            line.clear();
            write(line);
            if !self
                .shared
                .push(line, Some(self.shared.limits.records()), false)
            {
                self.dropped.inc();
            }
            // A freak record (a huge URL) does not keep its memory in every thread.
            if line.capacity() > 64 * 1024 {
                *line = Vec::with_capacity(1024);
            }
        });
    }

    /// A place in the activity backlog for the entry of an operation about to run: at once
    /// while the backlog has room, else when the writer makes room, for at most
    /// `activity_wait`.
    pub async fn reserve_activity(&self) -> Result<ActivitySlot, ActivityStalled> {
        let wait = self.shared.limits.activity_wait;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            // Registered before the check, so room made between the check and the wait wakes it.
            room.as_mut().enable();
            if self.shared.try_reserve() {
                return Ok(ActivitySlot {
                    shared: Arc::clone(&self.shared),
                });
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(ActivityStalled(wait));
            }
        }
    }

    /// Queues an activity entry, kept as `keep` says; never blocks.
    pub fn emit_activity(&self, record: &ActivityRecord, keep: Keep) {
        let mut line = Vec::with_capacity(512);
        // Serializing plain owned data into a Vec cannot fail.
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        let kept = match keep {
            Keep::Reserved(slot) => {
                let kept = self.shared.push(&line, None, false);
                // Written: the reservation is given back (the line now counts itself).
                drop(slot);
                kept
            }
            Keep::Always => self.shared.push(&line, None, false),
            Keep::IfRoom => self
                .shared
                .push(&line, Some(self.shared.limits.activity()), true),
        };
        if !kept {
            self.activity_dropped.inc();
        }
    }
}

/// After each write the writer pauses this long before taking the next batch. A line wakes the
/// writer only when it is waiting on an empty buffer; under load the writer is in this pause
/// instead, so lines accumulate and are written in batches without a futex wake-up and a context
/// switch per record. Records reach the sink at most this much later.
const BATCH_PAUSE: Duration = Duration::from_millis(5);

/// How often an idle writer checks whether anything can still send it lines.
const ORPHAN_CHECK: Duration = Duration::from_secs(1);

/// A batch buffer grown beyond this (a burst) is not kept for the next batch.
const KEEP_BATCH_BYTES: usize = 1 << 20;

fn write_loop(shared: &Arc<Shared>, mut out: Box<dyn Write>, write_errors: &IntCounter) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut failing = false;
    loop {
        let stopping = {
            let mut p = shared.lock();
            while p.buf.is_empty() && !p.stopping {
                // Every sink and the writer's handle are gone (never joined): nobody can add a
                // line any more.
                if Arc::strong_count(shared) == 1 {
                    return;
                }
                p.writer_waiting = true;
                p = shared
                    .wake
                    .wait_timeout(p, ORPHAN_CHECK)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            p.writer_waiting = false;
            std::mem::swap(&mut p.buf, &mut batch);
            p.lines = 0;
            p.in_flight = batch.len();
            p.stopping
        };
        if !batch.is_empty() {
            match out.write_all(&batch).and_then(|()| out.flush()) {
                Ok(()) => {
                    if failing {
                        tracing::info!("the record stream is being written again");
                        failing = false;
                    }
                }
                Err(e) => {
                    write_errors.inc();
                    // Report the first failure of an episode only: a full disk must not flood
                    // stderr.
                    if !failing {
                        tracing::error!(error = %e, "writing the record stream failed; records are being lost");
                        failing = true;
                    }
                }
            }
            batch.clear();
            if batch.capacity() > KEEP_BATCH_BYTES {
                batch = Vec::with_capacity(64 * 1024);
            }
            let mut p = shared.lock();
            p.in_flight = 0;
            shared
                .held_bytes
                .set(i64::try_from(p.buf.len()).unwrap_or(i64::MAX));
            drop(p);
            shared.room.notify_waiters();
        }
        if stopping {
            return;
        }
        // Let the next batch gather.
        std::thread::sleep(BATCH_PAUSE);
    }
}

/// A file that rotates by size. Opening is retried at most once a second while it fails, so an
/// unwritable directory costs one `open` per second, not one per batch.
struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<File>,
    written: u64,
    /// When opening last failed; reopening waits a second after that.
    failed_open: Option<Instant>,
}

impl RotatingFile {
    fn new(path: PathBuf, max_bytes: u64, keep: usize) -> Self {
        Self {
            path,
            max_bytes,
            keep,
            file: None,
            written: 0,
            failed_open: None,
        }
    }

    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            if self
                .failed_open
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            {
                return Err(io::Error::other(
                    "record file unavailable (retrying every second)",
                ));
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .inspect_err(|_| self.failed_open = Some(Instant::now()))?;
            self.failed_open = None;
            self.written = file.metadata().map_or(0, |m| m.len());
            self.file = Some(file);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("record file unavailable"))
    }

    /// `path` → `path.1` → … → `path.<keep>` (the oldest is removed).
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let numbered = |n: usize| rotated_name(&self.path, n);
        if self.keep == 0 {
            return std::fs::remove_file(&self.path);
        }
        let _ = std::fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))
    }
}

/// The name of the `n`th rotated file.
pub fn rotated_name(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.written > 0
            && self.written + buf.len() as u64 > self.max_bytes
            && let Err(e) = self.rotate()
        {
            tracing::warn!(error = %e, file = %self.path.display(), "rotating the record file failed");
        }
        let result = self.open()?.write_all(buf);
        match result {
            Ok(()) => {
                self.written += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Reopen on the next batch (the file may have been removed or its disk remounted).
                self.file = None;
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotating_file_keeps_the_configured_number_of_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("records.jsonl");
        let mut f = RotatingFile::new(path.clone(), 100, 2);
        for i in 0..10 {
            f.write_all(format!("{i:059}\n").as_bytes()).expect("write");
        }
        let read = |p: &Path| std::fs::read_to_string(p).expect("read");
        // 60-byte lines, 100-byte limit: one line per file.
        assert_eq!(read(&path), format!("{:059}\n", 9));
        assert_eq!(read(&rotated_name(&path, 1)), format!("{:059}\n", 8));
        assert_eq!(read(&rotated_name(&path, 2)), format!("{:059}\n", 7));
        assert!(!rotated_name(&path, 3).exists());
    }

    /// Counters of the test's own (unregistered) series.
    fn counters() -> SinkCounters {
        SinkCounters {
            dropped: IntCounter::new("d", "d").expect("counter"),
            write_errors: IntCounter::new("w", "w").expect("counter"),
            activity_dropped: IntCounter::new("a", "a").expect("counter"),
            queue_bytes: IntGauge::new("q", "q").expect("gauge"),
        }
    }

    /// A test output that keeps what is written and says when the writer thread dropped it.
    struct Watched {
        lines: Arc<Mutex<Vec<u8>>>,
        dropped: std::sync::mpsc::Sender<()>,
    }

    impl Write for Watched {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.lines
                .lock()
                .expect("lines lock")
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Drop for Watched {
        fn drop(&mut self) {
            let _ = self.dropped.send(());
        }
    }

    #[test]
    fn the_writer_writes_every_line_and_ends_when_nothing_can_send_any_more() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (dropped_tx, dropped_rx) = std::sync::mpsc::channel();
        let out = Watched {
            lines: Arc::clone(&lines),
            dropped: dropped_tx,
        };
        let counters = counters();
        let (sink, writer) = RecordSink::spawn(
            RecordOutput::Writer(Box::new(out)),
            QueueLimits::lines(16),
            true,
            counters,
        )
        .expect("spawn");
        for i in 0..3 {
            sink.emit(|line| line.extend_from_slice(format!("{i}\n").as_bytes()));
        }
        // Neither joined nor stopped: the writer still writes what was sent, then ends.
        drop((sink, writer));
        dropped_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer thread ended");
        assert_eq!(&*lines.lock().expect("lines lock"), b"0\n1\n2\n");
    }

    /// An output whose first write blocks until the test releases it (or drops the sender).
    struct Held {
        entered: Option<std::sync::mpsc::Sender<()>>,
        release: std::sync::mpsc::Receiver<()>,
        lines: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Held {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(entered) = self.entered.take() {
                let _ = entered.send(());
                let _ = self.release.recv();
            }
            self.lines
                .lock()
                .expect("lines lock")
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A sink whose writer is stuck in its first write (of one request record), with one queue
    /// line and an activity backlog of two; the sender releases the writer.
    fn stalled(
        wait: Duration,
    ) -> (
        RecordSink,
        RecordWriter,
        std::sync::mpsc::Sender<()>,
        Arc<Mutex<Vec<u8>>>,
    ) {
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = Held {
            entered: Some(entered_tx),
            release: release_rx,
            lines: Arc::clone(&lines),
        };
        let counters = counters();
        let limits = QueueLimits {
            activity_lines: 2,
            activity_wait: wait,
            ..QueueLimits::lines(1)
        };
        let (sink, writer) =
            RecordSink::spawn(RecordOutput::Writer(Box::new(out)), limits, true, counters)
                .expect("spawn");
        sink.emit(|line| line.extend_from_slice(b"request\n"));
        entered_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer took the first line");
        (sink, writer, release_tx, lines)
    }

    fn entry(operation: &'static str) -> ActivityRecord {
        ActivityRecord::new(
            operation,
            "admin",
            crate::telemetry::activity::Outcome::Succeeded,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_activity_backlog_refuses_a_reservation_after_the_wait_and_drops_only_if_room_entries()
     {
        let wait = Duration::from_secs(5);
        let (sink, writer, release, lines) = stalled(wait);
        // Three places: one queue line and two of backlog.
        let slots: Vec<ActivitySlot> =
            futures_util::future::join_all((0..3).map(|_| sink.reserve_activity()))
                .await
                .into_iter()
                .map(|r| r.expect("room for three"))
                .collect();
        let started = tokio::time::Instant::now();
        let refused = sink.reserve_activity().await;
        assert!(matches!(refused, Err(ActivityStalled(w)) if w == wait));
        assert_eq!(
            started.elapsed(),
            wait,
            "refused after waiting activity_wait"
        );

        // Reserved places are not given to entries that are kept only if there is room.
        sink.emit_activity(&entry("anonymous"), Keep::IfRoom);
        assert_eq!(sink.activity_dropped.get(), 1);
        // An entry that is always kept is, beyond the bound.
        sink.emit_activity(&entry("fileChange"), Keep::Always);
        // A reserved entry is written in its place; a reservation given back makes room.
        let mut slots = slots.into_iter();
        let first = slots.next().expect("slot");
        sink.emit_activity(&entry("regenerateKeys"), Keep::Reserved(first));
        drop(slots);
        let again = sink.reserve_activity().await.expect("room again");
        drop(again);
        assert_eq!(sink.activity_dropped.get(), 1);

        drop(release);
        writer.join();
        let text = String::from_utf8(lines.lock().expect("lines").clone()).expect("UTF-8");
        assert!(text.starts_with("request\n"), "{text}");
        assert!(text.contains("fileChange") && text.contains("regenerateKeys"));
        assert!(!text.contains("anonymous"), "{text}");
    }

    #[tokio::test]
    async fn a_waiting_reservation_gets_its_place_when_the_writer_drains() {
        // Bounded far above the test's runtime; the reservation must not need it.
        let (sink, writer, release, lines) = stalled(Duration::from_secs(60));
        for i in 0..3 {
            sink.emit_activity(&entry(["a", "b", "c"][i]), Keep::Always);
        }
        let waiting = tokio::spawn({
            let sink = sink.clone();
            async move { sink.reserve_activity().await.map(|slot| (sink, slot)) }
        });
        drop(release);
        let (sink, slot) = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the reservation was granted once the writer drained")
            .expect("task")
            .expect("a place");
        sink.emit_activity(&entry("regenerateKeys"), Keep::Reserved(slot));
        writer.join();
        let text = String::from_utf8(lines.lock().expect("lines").clone()).expect("UTF-8");
        assert!(text.contains("regenerateKeys"), "{text}");
    }

    #[test]
    fn unwritable_directory_reports_errors_without_panicking() {
        let mut f = RotatingFile::new(PathBuf::from("/nonexistent-dir/records.jsonl"), 100, 2);
        assert!(f.write_all(b"x\n").is_err());
        assert!(
            f.write_all(b"x\n").is_err(),
            "retry is throttled, still an error"
        );
    }
}
