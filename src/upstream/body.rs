//! The request body streamed to the scoring container.
//!
//! [`RequestBody`] carries the client's body to the upstream frame by frame, counting bytes and
//! enforcing the service's size limit, idle timeout and minimum rate mid-stream; what it saw is
//! shared with the handler through [`Progress`], because the upstream client polls the body on
//! its own connection task. The client's body itself lives in the `Progress` too, so the handler
//! can take back what the upstream did not read ([`Progress::take_rest`]) when an answer comes
//! first, and discard it (`proxy::linger`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

/// What the request body wrapper observed; read by the handler after forwarding.
#[derive(Debug)]
pub struct Progress {
    bytes: AtomicU64,
    /// 0 while fine, else one of the `BODY_*` faults below.
    outcome: AtomicU8,
    /// The client's body while it streams upstream.
    source: Mutex<Source>,
}

#[derive(Debug)]
struct Source {
    /// `None` once the body has ended, or once the handler took it back.
    body: Option<Incoming>,
    /// The handler took the body back: the upstream request is abandoned.
    taken: bool,
    /// The client will not send its body until invited (`Expect: 100-continue`, HTTP/1.1), and
    /// has not been: hyper sends `100 Continue` when the body is first read.
    uninvited: bool,
    /// The upstream connection's task, waiting for body data; woken when the body is taken.
    waiter: Option<Waker>,
}

/// The part of a request body nobody read, handed back for discarding.
#[derive(Debug)]
pub struct Unread {
    pub body: Incoming,
    /// The client sends (or is sending) its body; `false` for an HTTP/1.1 client still waiting
    /// for the `100 Continue` it asked for.
    pub invited: bool,
}

const BODY_CLIENT_ERROR: u8 = 1;
const BODY_TOO_LARGE: u8 = 2;
const BODY_IDLE: u8 = 3;
const BODY_TOO_SLOW: u8 = 4;

/// The request body stopped for a reason that belongs to the client, not the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    ClientError,
    TooLarge,
    /// No data for longer than the idle timeout.
    Idle,
    /// Slower than `min_body_rate_bytes_per_s`.
    TooSlow,
}

impl Progress {
    /// `waits`: the client asked for `100 Continue` (HTTP/1.1).
    pub fn new(body: Incoming, waits: bool) -> Self {
        Self {
            bytes: AtomicU64::new(0),
            outcome: AtomicU8::new(0),
            source: Mutex::new(Source {
                body: Some(body),
                taken: false,
                uninvited: waits,
                waiter: None,
            }),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn fault(&self) -> Option<BodyFault> {
        match self.outcome.load(Ordering::Acquire) {
            BODY_CLIENT_ERROR => Some(BodyFault::ClientError),
            BODY_TOO_LARGE => Some(BodyFault::TooLarge),
            BODY_IDLE => Some(BodyFault::Idle),
            BODY_TOO_SLOW => Some(BodyFault::TooSlow),
            _ => None,
        }
    }

    fn source(&self) -> MutexGuard<'_, Source> {
        self.source.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes back the rest of the client's body, if it has not ended: the upstream request then
    /// fails (its connection is not reused) and the caller decides what becomes of the rest.
    pub fn take_rest(&self) -> Option<Unread> {
        let mut source = self.source();
        let body = source.body.take()?;
        source.taken = true;
        if let Some(waiter) = source.waiter.take() {
            waiter.wake();
        }
        (!body.is_end_stream()).then_some(Unread {
            body,
            invited: !source.uninvited,
        })
    }
}

/// Error yielded to the upstream client when the request body is cut off.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("client request body failed")]
    Client(#[source] hyper::Error),
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("request body stalled")]
    Idle,
    #[error("request body too slow")]
    TooSlow,
    /// The upstream answered before reading the whole body; the rest is not forwarded.
    #[error("request body no longer forwarded: the upstream has answered")]
    Stopped,
}

/// Cuts off a stream that moves no data for `after`. The timer is only armed when the stream
/// actually has to wait, so a body that arrives in one go costs no timer at all.
#[derive(Debug)]
pub struct IdleTimer {
    after: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Data moved since the timer was last armed.
    progressed: bool,
}

impl IdleTimer {
    pub fn new(after: Duration) -> Self {
        Self {
            after,
            sleep: None,
            progressed: false,
        }
    }

    pub fn progressed(&mut self) {
        self.progressed = true;
    }

    /// Called when the inner stream is pending: `Ready` means the stream has been idle too long.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = tokio::time::Instant::now() + self.after;
        match &mut self.sleep {
            Some(sleep) if self.progressed => sleep.as_mut().reset(deadline),
            Some(_) => {}
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.progressed = false;
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    pub fn after(&self) -> Duration {
        self.after
    }
}

/// A minimum data rate, checked over consecutive windows as data arrives: a body that trickles
/// (each piece inside the idle timeout, so it never stalls) still cannot hold its admission slot
/// for long. A body with no data at all is the idle timer's business.
#[derive(Debug)]
pub struct MinRate {
    /// Bytes per second; 0: no minimum.
    per_s: u64,
    window: Duration,
    /// Start of the current window (`None` until the first poll).
    since: Option<tokio::time::Instant>,
    bytes: u64,
}

impl MinRate {
    pub fn new(per_s: u64, window: Duration) -> Self {
        Self {
            per_s,
            window,
            since: None,
            bytes: 0,
        }
    }

    /// Counts `n` bytes; `false` when a whole window passed below the rate.
    fn record(&mut self, n: usize) -> bool {
        if self.per_s == 0 {
            return true;
        }
        let now = tokio::time::Instant::now();
        let since = *self.since.get_or_insert(now);
        self.bytes += n as u64;
        let elapsed = now.duration_since(since);
        if elapsed < self.window {
            return true;
        }
        let needed = u128::from(self.per_s) * elapsed.as_millis() / 1000;
        if u128::from(self.bytes) < needed {
            return false;
        }
        self.since = Some(now);
        self.bytes = 0;
        true
    }

    /// Starts the first window when the body is first asked for.
    fn start(&mut self) {
        if self.since.is_none() && self.per_s != 0 {
            self.since = Some(tokio::time::Instant::now());
        }
    }
}

/// The body sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    Empty,
    Stream {
        limit: u64,
        /// Holds the client's body (see [`Progress::take_rest`]).
        progress: Arc<Progress>,
        idle: IdleTimer,
        rate: MinRate,
    },
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Self::Stream {
            limit,
            progress,
            idle,
            rate,
        } = self.get_mut()
        else {
            return Poll::Ready(None);
        };
        rate.start();
        let mut source = progress.source();
        source.uninvited = false;
        let Some(inner) = source.body.as_mut() else {
            // Taken back: ending the body here would tell the upstream it had all of it.
            return Poll::Ready(source.taken.then_some(Err(RequestBodyError::Stopped)));
        };
        let polled = match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(polled) => polled,
            Poll::Pending => {
                if !source
                    .waiter
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    source.waiter = Some(cx.waker().clone());
                }
                drop(source);
                ready!(idle.poll_expired(cx));
                progress.outcome.store(BODY_IDLE, Ordering::Release);
                return Poll::Ready(Some(Err(RequestBodyError::Idle)));
            }
        };
        idle.progressed();
        let ended = inner.is_end_stream();
        match polled {
            Some(Ok(frame)) => {
                if ended {
                    source.body = None;
                }
                drop(source);
                if let Some(data) = frame.data_ref() {
                    if !rate.record(data.len()) {
                        progress.outcome.store(BODY_TOO_SLOW, Ordering::Release);
                        return Poll::Ready(Some(Err(RequestBodyError::TooSlow)));
                    }
                    let total = progress
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if total > *limit {
                        progress.outcome.store(BODY_TOO_LARGE, Ordering::Release);
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge {
                            limit: *limit,
                        })));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                source.body = None;
                progress.outcome.store(BODY_CLIENT_ERROR, Ordering::Release);
                Poll::Ready(Some(Err(RequestBodyError::Client(e))))
            }
            None => {
                source.body = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Stream { progress, .. } => {
                let source = progress.source();
                source
                    .body
                    .as_ref()
                    .map_or(!source.taken, Incoming::is_end_stream)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Stream { progress, .. } => progress
                .source()
                .body
                .as_ref()
                .map_or_else(SizeHint::default, Incoming::size_hint),
        }
    }
}
