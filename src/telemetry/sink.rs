//! The record stream's writer: a bounded queue drained by one OS thread that serializes request
//! records and activity entries as JSON lines and writes each batch with a single call.
//!
//! Request records use a non-blocking `try_send`: when the writer is behind they are dropped and
//! counted (`scoregate_request_records_dropped_total`), so a slow sink never slows or blocks a
//! request and never queues without bound. Activity entries are an audit trail and are never
//! dropped: if the queue is full they are handed over from a blocking thread instead.
//!
//! Outputs: stdout (diagnostics go to stderr so stdout stays machine-readable), a file with
//! size-based rotation and a retention count, or any writer (tests). A failing output keeps the
//! gateway serving; failures are counted and reported once per episode in diagnostics.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

use super::activity::ActivityRecord;

/// One line of the record stream.
#[derive(Debug)]
pub enum Line {
    // Both boxed: the queue's slots are then two words each, so a deep queue (allocated up front)
    // costs little memory.
    /// A request record, already serialized (with its newline) on the request path.
    Request(Vec<u8>),
    Activity(Box<ActivityRecord>),
    /// Sent by [`RecordWriter::finish`]: write what came before, then stop.
    Stop,
}

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
    tx: SyncSender<Line>,
    /// Whether request records are written at all (`[telemetry] request_records`).
    requests: bool,
    dropped: IntCounter,
    /// Activity entries that found the queue full, waiting for the writer (bounded).
    backlog: Arc<Mutex<VecDeque<ActivityRecord>>>,
    activity_dropped: IntCounter,
}

/// Activity entries kept while the queue is full. Far beyond any real management traffic; only
/// a flood of refused calls against a stalled sink can fill it, and then the excess is counted.
const BACKLOG_MAX: usize = 20_000;

/// Stops the writer thread at the end of shutdown.
#[derive(Debug)]
pub struct RecordWriter {
    thread: Option<JoinHandle<()>>,
    stop: SyncSender<Line>,
}

impl RecordWriter {
    /// Writes everything queued so far, then stops the writer. Does not wait for other holders of
    /// a `RecordSink` (connections a timed-out drain left behind); their later lines are dropped.
    pub fn join(mut self) {
        let _ = self.stop.send(Line::Stop);
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
}

impl RecordSink {
    /// Starts the writer thread. `capacity` bounds the lines waiting to be written.
    pub fn spawn(
        output: RecordOutput,
        capacity: usize,
        requests: bool,
        counters: SinkCounters,
    ) -> io::Result<(Self, RecordWriter)> {
        let (tx, rx) = sync_channel(capacity);
        let write_errors = counters.write_errors.clone();
        let backlog = Arc::new(Mutex::new(VecDeque::new()));
        let writer_backlog = Arc::clone(&backlog);
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
                write_loop(&rx, &writer_backlog, out, &write_errors);
            })?;
        Ok((
            Self {
                tx: tx.clone(),
                requests,
                dropped: counters.dropped,
                backlog,
                activity_dropped: counters.activity_dropped,
            },
            RecordWriter {
                thread: Some(thread),
                stop: tx,
            },
        ))
    }

    /// Queues a request record, or counts it as dropped when the writer is behind.
    pub fn emit(&self, record: Vec<u8>) {
        if !self.requests {
            return;
        }
        match self.tx.try_send(Line::Request(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Queues an activity entry without blocking: when the queue is full it waits in a bounded
    /// backlog that the writer drains after the queue (so a stalled sink cannot stall management
    /// calls, and a burst of entries is not lost).
    pub fn emit_activity(&self, record: ActivityRecord) {
        match self.tx.try_send(Line::Activity(Box::new(record))) {
            Err(TrySendError::Full(Line::Activity(record))) => {
                let mut backlog = self
                    .backlog
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if backlog.len() < BACKLOG_MAX {
                    backlog.push_back(*record);
                } else {
                    self.activity_dropped.inc();
                }
            }
            // Sent, or the writer is gone (shutdown); a full queue never hands back another kind.
            Ok(()) | Err(TrySendError::Disconnected(_) | TrySendError::Full(_)) => {}
        }
    }
}

/// Most lines written per `write` call; bounds the batch buffer under sustained load.
const MAX_BATCH: usize = 1024;

/// How often the writer looks at the activity backlog when the queue is quiet.
const BACKLOG_CHECK: Duration = Duration::from_millis(200);
/// After each batch the writer pauses this long before draining again. A sender wakes the
/// writer only when it is blocked waiting (its queue was empty); under load the writer is asleep
/// in this pause instead, so records accumulate and are written in batches without a futex
/// wake-up and a context switch per record. Records reach the sink at most this much later.
const BATCH_PAUSE: Duration = Duration::from_millis(5);

fn write_loop(
    rx: &Receiver<Line>,
    backlog: &Mutex<VecDeque<ActivityRecord>>,
    mut out: Box<dyn Write>,
    write_errors: &IntCounter,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut failing = false;
    let mut stopping = false;
    while !stopping {
        buf.clear();
        match rx.recv_timeout(BACKLOG_CHECK) {
            Ok(first) => {
                stopping = append(&mut buf, &first);
                if !stopping {
                    for line in rx.try_iter().take(MAX_BATCH - 1) {
                        if append(&mut buf, &line) {
                            stopping = true;
                            break;
                        }
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => stopping = true,
        }
        let waiting: Vec<ActivityRecord> = backlog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
            .collect();
        for entry in waiting {
            append(&mut buf, &Line::Activity(Box::new(entry)));
        }
        if buf.is_empty() {
            continue;
        }
        // Let the next batch gather (see BATCH_PAUSE) unless this one ended the stream.
        let pause = !stopping;
        match out.write_all(&buf).and_then(|()| out.flush()) {
            Ok(()) => {
                if failing {
                    tracing::info!("the record stream is being written again");
                    failing = false;
                }
            }
            Err(e) => {
                write_errors.inc();
                // Report the first failure of an episode only: a full disk must not flood stderr.
                if !failing {
                    tracing::error!(error = %e, "writing the record stream failed; records are being lost");
                    failing = true;
                }
            }
        }
        if pause {
            std::thread::sleep(BATCH_PAUSE);
        }
    }
}

/// Adds one line to the batch; returns true for the stop marker.
fn append(buf: &mut Vec<u8>, line: &Line) -> bool {
    match line {
        Line::Request(serialized) => buf.extend_from_slice(serialized),
        Line::Activity(a) => {
            // Serializing plain owned data into a Vec cannot fail.
            if serde_json::to_writer(&mut *buf, a).is_ok() {
                buf.push(b'\n');
            }
        }
        Line::Stop => return true,
    }
    false
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
