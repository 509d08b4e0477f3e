//! The response body of a proxied exchange.
//!
//! [`ProxyBody`] carries the response to the client (an upstream stream or a gateway-generated
//! body) and owns the request's [`Finish`] guard, so the record is written exactly once, when
//! the last byte is handed to hyper or when hyper drops the body (the client went away). The
//! request body sent upstream is `upstream::body::RequestBody`.

use std::future::Future;
use std::pin::Pin;

use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::Finish;
use crate::error::GatewayError;
use crate::upstream::Lease;
use crate::upstream::body::IdleTimer;

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
        /// The upstream answered before the request body ended: the response's last frame
        /// waits until the rest of the request body has been discarded (see `linger`).
        lingering: Option<Box<Lingering>>,
    },
}

/// The end of a response held back while the rest of the request body is discarded.
#[derive(Debug)]
struct Lingering {
    /// Resolves (its sender dropped) when the discard is over.
    over: oneshot::Receiver<()>,
    /// The response's last frame; `None` if the body ended without one.
    last: Option<Frame<Bytes>>,
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
                lingering: None,
            },
            finish: Some(finish),
        }
    }

    fn count(&mut self, n: usize) {
        if let Some(f) = &mut self.finish {
            f.ctx.sent(n as u64);
        }
    }

    /// Marks the response complete and writes the record now, not whenever hyper drops us; the
    /// upstream connection is free for the next request. If the upstream answered before the
    /// request body ended, the rest of it is not forwarded but discarded (`linger`), the upstream
    /// connection, cut mid-request, is closed instead, and over HTTP/2 `last` (the response's
    /// last frame) is held back until the discard is over: curl 7.88 stops reading its HTTP/2
    /// connection once it has the whole response, so it would never see the flow-control credit
    /// it needs to finish the upload, and would wait for ever.
    fn complete(&mut self, last: Option<Frame<Bytes>>) -> Option<Frame<Bytes>> {
        let mut finish = self.finish.take();
        let unread = finish
            .as_ref()
            .and_then(|f| f.ctx.request_progress()?.take_rest());
        if let Kind::Upstream { conn, .. } = &mut self.kind
            && let Some(conn) = conn.take()
            && unread.is_none()
        {
            conn.release();
        }
        let Some(f) = &mut finish else {
            return last;
        };
        f.ctx.completed();
        let Some(unread) = unread else {
            return last;
        };
        let version = f.ctx.exchange().version;
        let over = super::linger::discard(&f.gw, &f.conn.0, version, unread);
        // Only HTTP/2 needs the hold: over HTTP/1.1 curl reads the answer once its upload is
        // done, and the connection is closed if the discard gives up.
        if let Some(over) = over
            && version >= http::Version::HTTP_2
            && let Kind::Upstream { lingering, .. } = &mut self.kind
        {
            *lingering = Some(Box::new(Lingering { over, last }));
            return None;
        }
        last
    }
}

impl Drop for ProxyBody {
    /// A body that had nothing left to send (204, 304, a HEAD response, an empty upstream body)
    /// may be dropped by hyper without ever being polled: that is a complete response, not a
    /// client that went away.
    fn drop(&mut self) {
        if http_body::Body::is_end_stream(self) {
            self.complete(None);
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
        // The send timeout runs while a frame waits for the client, not while the upstream is.
        let watch = self
            .finish
            .as_ref()
            .and_then(|f| f.ctx.watch())
            .map(Arc::clone);
        if let Some(watch) = &watch {
            watch.asked();
        }
        let polled = self.poll_next_frame(cx);
        if let (Some(watch), Poll::Ready(Some(Ok(_)))) = (&watch, &polled) {
            watch.sending();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint()
    }
}

impl ProxyBody {
    fn poll_next_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = self;
        match &mut this.kind {
            Kind::Full(bytes) => {
                let frame = bytes.take();
                match frame {
                    Some(b) => {
                        this.count(b.len());
                        this.complete(None);
                        Poll::Ready(Some(Ok(Frame::data(b))))
                    }
                    None => {
                        this.complete(None);
                        Poll::Ready(None)
                    }
                }
            }
            Kind::Upstream {
                lingering: Some(held),
                ..
            } => {
                // Either outcome (the sender is dropped) means the discard is over.
                let _ = ready!(Pin::new(&mut held.over).poll(cx));
                let last = held.last.take();
                if let Kind::Upstream { lingering, .. } = &mut this.kind {
                    *lingering = None;
                }
                Poll::Ready(last.map(Ok))
            }
            Kind::Upstream {
                body: inner, idle, ..
            } => {
                let polled = match Pin::new(&mut *inner).poll_frame(cx) {
                    Poll::Ready(polled) => polled,
                    Poll::Pending => {
                        ready!(idle.poll_expired(cx));
                        let after = idle.after();
                        this.fail(GatewayError::UpstreamBodyTimeout { after });
                        return Poll::Ready(Some(Err(ResponseBodyError::Idle)));
                    }
                };
                idle.progressed();
                let end = inner.is_end_stream();
                this.upstream_polled(polled, end, cx)
            }
        }
    }

    /// What the client gets for what the upstream body gave: its frames, counted, the last one
    /// completing the response (held back while a lingering discard runs, see `complete`); an
    /// error ends the response, and only the record learns why (the status is on the wire).
    fn upstream_polled(
        &mut self,
        polled: Option<Result<Frame<Bytes>, hyper::Error>>,
        end: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        match polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.count(data.len());
                }
                if !end {
                    return Poll::Ready(Some(Ok(frame)));
                }
                match self.complete(Some(frame)) {
                    Some(frame) => Poll::Ready(Some(Ok(frame))),
                    // Held back: the next poll waits for the discard.
                    None => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                }
            }
            Some(Err(e)) => {
                self.fail(GatewayError::UpstreamInterrupted);
                Poll::Ready(Some(Err(ResponseBodyError::Upstream(e))))
            }
            None => {
                self.complete(None);
                if matches!(
                    &self.kind,
                    Kind::Upstream {
                        lingering: Some(_),
                        ..
                    }
                ) {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(None)
            }
        }
    }

    /// The response ends with `err`: the record says so, and is written now.
    fn fail(&mut self, err: GatewayError) {
        if let Some(mut f) = self.finish.take() {
            f.ctx.failed(err);
        }
    }

    fn end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream {
                body, lingering, ..
            } => lingering.is_none() && body.is_end_stream(),
        }
    }

    fn hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}
