//! The two streaming bodies of a proxied exchange.
//!
//! [`RequestBody`] carries the client's body to the upstream frame by frame, counting bytes and
//! enforcing the service's size limit mid-stream; what it saw is shared with the handler through
//! [`Progress`], because the upstream client polls the body on its own connection task.
//! [`ProxyBody`] carries the response to the client (an upstream stream or a gateway-generated
//! body) and owns the request's [`Finish`] guard, so the record is written exactly once, when the
//! last byte is handed to hyper or when hyper drops the body (the client went away).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::Finish;
use super::upstream::Lease;
use crate::error::GatewayError;

/// What the request body wrapper observed; read by the handler after forwarding.
#[derive(Debug, Default)]
pub struct Progress {
    bytes: AtomicU64,
    /// 0 while fine, else one of the `BODY_*` faults below.
    outcome: AtomicU8,
}

const BODY_CLIENT_ERROR: u8 = 1;
const BODY_TOO_LARGE: u8 = 2;
const BODY_IDLE: u8 = 3;

/// The request body stopped for a reason that belongs to the client, not the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    ClientError,
    TooLarge,
    /// No data for longer than the idle timeout.
    Idle,
}

impl Progress {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn fault(&self) -> Option<BodyFault> {
        match self.outcome.load(Ordering::Acquire) {
            BODY_CLIENT_ERROR => Some(BodyFault::ClientError),
            BODY_TOO_LARGE => Some(BodyFault::TooLarge),
            BODY_IDLE => Some(BodyFault::Idle),
            _ => None,
        }
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

/// The body sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    Empty,
    Stream {
        inner: Incoming,
        limit: u64,
        progress: Arc<Progress>,
        idle: IdleTimer,
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
            inner,
            limit,
            progress,
            idle,
        } = self.get_mut()
        else {
            return Poll::Ready(None);
        };
        let polled = match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(polled) => polled,
            Poll::Pending => {
                ready!(idle.poll_expired(cx));
                progress.outcome.store(BODY_IDLE, Ordering::Release);
                return Poll::Ready(Some(Err(RequestBodyError::Idle)));
            }
        };
        idle.progressed();
        match polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
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
                progress.outcome.store(BODY_CLIENT_ERROR, Ordering::Release);
                Poll::Ready(Some(Err(RequestBodyError::Client(e))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// The body sent to the client.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    /// Dropped (writing the record) as soon as the body ends, or with the body.
    finish: Option<Box<Finish>>,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream {
        body: Incoming,
        idle: IdleTimer,
        /// Back to the pool once the body has ended; dropped (closing the connection) if the
        /// body is abandoned or fails.
        conn: Option<Lease>,
    },
}

/// Why the response stream to the client was cut.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    #[error("upstream response body failed")]
    Upstream(#[source] hyper::Error),
    #[error("upstream response body stalled")]
    Idle,
}

impl ProxyBody {
    pub fn full(bytes: Bytes, finish: Box<Finish>) -> Self {
        Self {
            kind: Kind::Full(Some(bytes)),
            finish: Some(finish),
        }
    }

    pub fn upstream(body: Incoming, conn: Lease, idle: Duration, finish: Box<Finish>) -> Self {
        Self {
            kind: Kind::Upstream {
                body,
                idle: IdleTimer::new(idle),
                conn: Some(conn),
            },
            finish: Some(finish),
        }
    }

    fn count(&mut self, n: usize) {
        if let Some(f) = &mut self.finish {
            f.ctx.response_bytes += n as u64;
        }
    }

    /// Marks the response complete and writes the record now, not whenever hyper drops us; the
    /// upstream connection is free for the next request.
    fn complete(&mut self) {
        if let Kind::Upstream { conn, .. } = &mut self.kind
            && let Some(conn) = conn.take()
        {
            conn.release();
        }
        if let Some(mut f) = self.finish.take() {
            f.ctx.response_complete = true;
        }
    }
}

impl Drop for ProxyBody {
    /// A body that had nothing left to send (204, 304, a HEAD response, an empty upstream body)
    /// may be dropped by hyper without ever being polled: that is a complete response, not a
    /// client that went away.
    fn drop(&mut self) {
        if http_body::Body::is_end_stream(self) {
            self.complete();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match &mut this.kind {
            Kind::Full(bytes) => {
                let frame = bytes.take();
                match frame {
                    Some(b) => {
                        this.count(b.len());
                        this.complete();
                        Poll::Ready(Some(Ok(Frame::data(b))))
                    }
                    None => {
                        this.complete();
                        Poll::Ready(None)
                    }
                }
            }
            Kind::Upstream {
                body: inner, idle, ..
            } => {
                let polled = match Pin::new(&mut *inner).poll_frame(cx) {
                    Poll::Ready(polled) => polled,
                    Poll::Pending => {
                        ready!(idle.poll_expired(cx));
                        let after = idle.after();
                        if let Some(f) = &mut this.finish {
                            f.ctx.error = Some(GatewayError::UpstreamBodyTimeout { after });
                        }
                        this.finish.take();
                        return Poll::Ready(Some(Err(ResponseBodyError::Idle)));
                    }
                };
                idle.progressed();
                let end = inner.is_end_stream();
                match polled {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            this.count(data.len());
                        }
                        if end {
                            this.complete();
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(e)) => {
                        if let Some(f) = &mut this.finish {
                            // The status line is already on the wire; only the record learns.
                            f.ctx.error = Some(GatewayError::UpstreamInterrupted);
                        }
                        this.finish.take();
                        Poll::Ready(Some(Err(ResponseBodyError::Upstream(e))))
                    }
                    None => {
                        this.complete();
                        Poll::Ready(None)
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}
