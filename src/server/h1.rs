//! HTTP/1.1 over TLS, with idle connections giving their HTTP buffers back.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for the whole life of an HTTP/1
//! connection, busy or idle, with no setting to shrink them. Keep-alive clients spend most of a
//! connection's life idle, so [`serve`] runs hyper only while requests flow:
//!
//! 1. **Parked**: hold only the TLS stream, with its buffers freed
//!    ([`TlsStream::release_buffers`]), and wait until the client sends, at most the header read
//!    timeout (the keep-alive idle limit); a drain closes the connection here at once.
//! 2. **Serving**: a fresh hyper connection takes the stream. Every `idle_release` the loop
//!    compares the connection's request counters ([`ConnInfo::activity`]); when no request began
//!    during a whole period and none is open, it asks hyper to stop gracefully. hyper is idle
//!    then, so it stops without writing anything and hands back the stream together with any
//!    bytes of a next request that it had already read. The request whose bytes woke the
//!    connection counts as begun at the start of the first period, so one request and a pause
//!    cost one timer wake-up, and the checks fall on a shared grid
//!    ([`IdleLimits::grid_origin`]) so that many connections share their wake-ups.
//! 3. Back to 1, with those bytes put in front of the stream.
//!
//! The client sees no difference: no `Connection: close`, no new handshake, no lost byte. Only a
//! hyper connection that has finished a request is stopped (before that hyper is not idle, and
//! its own header timer bounds a slow head). If it held the start of a next head, those bytes go
//! to the next hyper connection, which then keeps them until the head is complete or its header
//! timer ends the connection, so a client trickling a head cannot reset the timer forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::proxy::ConnInfo;
use crate::tls::TlsStream;

/// How long connections may idle, with and without their buffers.
#[derive(Debug, Clone, Copy)]
pub struct IdleLimits {
    /// No request for this long releases the buffers (zero: never).
    pub release: Duration,
    /// No request for this long closes the connection (`header_read_timeout`).
    pub close: Duration,
    /// Release checks fall on a grid of `release / 8` counted from here, so that the checks of
    /// many connections share one timer wake-up instead of costing one each.
    pub grid_origin: Instant,
}

impl IdleLimits {
    /// The first grid point at least one release period after `now`.
    fn next_check(&self, now: Instant) -> Instant {
        let due = now + self.release;
        let Some(since) = due.checked_duration_since(self.grid_origin) else {
            return due;
        };
        let step = (self.release / 8).max(Duration::from_millis(1)).as_nanos();
        let rest = since.as_nanos() % step;
        if rest == 0 {
            return due;
        }
        // `step - rest` < `step`, which came from a `Duration`, so it fits in a u64.
        due + Duration::from_nanos(u64::try_from(step - rest).unwrap_or(0))
    }
}

/// What one connection needs besides its stream and service.
pub struct Ctx<'a> {
    pub builder: &'a http1::Builder,
    pub conn: &'a ConnInfo,
    pub limits: IdleLimits,
    /// Counts connections in the parked state.
    pub parked: &'a IntGauge,
    /// Counts releases (hyper connections stopped for idleness).
    pub releases: &'a IntCounter,
    /// Cancelled when the gateway starts draining.
    pub draining: &'a CancellationToken,
}

/// Serves one TLS connection over HTTP/1.1 until the client leaves, the idle limit passes, or
/// the gateway drains.
pub async fn serve<S, B>(ctx: Ctx<'_>, tls: Box<TlsStream>, service: S) -> Result<(), hyper::Error>
where
    S: HttpService<Incoming, ResBody = B> + Clone + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut io = Rewind {
        inner: tls,
        prefix: Bytes::new(),
    };
    let mut idle_until = Instant::now() + ctx.limits.close;
    loop {
        // The client sent the bytes that start this hyper connection after it was parked.
        let woken = io.prefix.is_empty() && !io.inner.has_buffered_input();
        if woken {
            // Nothing to read yet: hold no buffer while waiting.
            io.inner.release_buffers();
            let _parked = ParkedGuard::new(ctx.parked);
            tokio::select! {
                biased;
                () = ctx.draining.cancelled() => return close(io).await,
                () = tokio::time::sleep_until(idle_until) => return close(io).await,
                ready = io.inner.tcp().readable() => {
                    if ready.is_err() {
                        return Ok(());
                    }
                }
            }
        }

        // Boxed, so that a parked connection does not keep room for it.
        let mut http = Box::new(
            ctx.builder
                .serve_connection(TokioIo::new(io), service.clone()),
        );
        let release = !ctx.limits.release.is_zero();
        let tick = tokio::time::sleep_until(ctx.limits.next_check(Instant::now()));
        tokio::pin!(tick);
        let start = ctx.conn.activity().0;
        // A connection woken from the park has a request arriving now, at the start of the
        // first period: count it as seen, so that a client making one request and pausing is
        // parked after one period, not two (each check is a timer wake-up). Bytes held over
        // from a release may be a head that completes later, so that case waits a whole
        // period after the request begins.
        let mut seen = if woken { start + 1 } else { start };
        // Whether `seen` was read at an earlier check (a whole period ago) or anticipated.
        let mut checked = false;
        let (mut parked, mut closing) = (false, false);
        let ended = loop {
            tokio::select! {
                biased;
                ended = &mut *http => break ended,
                () = ctx.draining.cancelled(), if !closing => {
                    Pin::new(&mut *http).graceful_shutdown();
                    closing = true;
                }
                () = &mut tick, if release && !closing => {
                    let (begun, open) = ctx.conn.activity();
                    // Only a hyper connection that has finished a request can be idle in
                    // hyper's sense; a fresh one keeps a partial head until hyper's own header
                    // timer ends it.
                    if begun > start && begun == seen && open == 0 {
                        match stop_if_idle(&mut *http) {
                            Some(ended) => {
                                parked = true;
                                break ended;
                            }
                            // Busy after all (e.g. still reading a request body the upstream
                            // did not wait for): hyper now ends the connection after it.
                            None => closing = true,
                        }
                    } else {
                        (seen, checked) = (begun, true);
                        tick.as_mut().reset(ctx.limits.next_check(Instant::now()));
                    }
                }
            }
        };
        let parts = (*http).into_parts();
        io = parts.io.into_inner();
        ended?;
        if !parked {
            return close(io).await;
        }
        ctx.releases.inc();
        // `read_buf` is a view into hyper's whole read buffer; keep a copy of the unread bytes
        // only (the start of a next head, if any), or the buffer would stay allocated.
        io.prefix = if parts.read_buf.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&parts.read_buf)
        };
        // After a check, no request began during the last period; an anticipated request may
        // have begun just before this release, so the idle limit counts from now.
        let quiet = if checked {
            ctx.limits.release
        } else {
            Duration::ZERO
        };
        idle_until = Instant::now() + ctx.limits.close.saturating_sub(quiet);
    }
}

/// Asks hyper to stop and polls it once: an idle HTTP/1 connection stops at once, without
/// writing anything. `None` means hyper was busy; it then finishes the exchange in progress and
/// closes the connection (keep-alive is off from here on).
fn stop_if_idle<S, B>(
    http: &mut http1::Connection<TokioIo<Rewind>, S>,
) -> Option<Result<(), hyper::Error>>
where
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Pin::new(&mut *http).graceful_shutdown();
    match Pin::new(http).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(ended) => Some(ended),
        // The caller polls the connection again, with the task's waker, right after this.
        Poll::Pending => None,
    }
}

/// Ends the connection cleanly: TLS `close_notify`, then the TCP FIN.
async fn close(mut io: Rewind) -> Result<(), hyper::Error> {
    let _ = io.inner.shutdown().await;
    Ok(())
}

/// Keeps the parked-connections gauge right on every exit path.
struct ParkedGuard<'a>(&'a IntGauge);

impl<'a> ParkedGuard<'a> {
    fn new(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for ParkedGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The TLS stream with bytes that a stopped hyper connection had read but not used in front of
/// it. Shutting it down only flushes: [`serve`] decides whether the connection really ends.
struct Rewind {
    inner: Box<TlsStream>,
    prefix: Bytes,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(release_ms: u64, origin: Instant) -> IdleLimits {
        IdleLimits {
            release: Duration::from_millis(release_ms),
            close: Duration::from_secs(30),
            grid_origin: origin,
        }
    }

    #[test]
    fn checks_fall_on_a_grid_of_an_eighth_of_the_period_at_least_one_period_out() {
        let origin = Instant::now();
        let l = limits(1000, origin);
        let ms = Duration::from_millis;
        // On the grid already: exactly one period out.
        assert_eq!(l.next_check(origin), origin + ms(1000));
        assert_eq!(l.next_check(origin + ms(125)), origin + ms(1125));
        // Between grid points: the next one.
        assert_eq!(l.next_check(origin + ms(1)), origin + ms(1125));
        assert_eq!(l.next_check(origin + ms(124)), origin + ms(1125));
        assert_eq!(
            l.next_check(origin + Duration::from_nanos(125_000_001)),
            origin + ms(1250)
        );
        // Connections checking at different instants in one step share a wake-up.
        assert_eq!(
            l.next_check(origin + ms(3010)),
            l.next_check(origin + ms(3120))
        );
    }

    #[test]
    fn short_periods_use_a_one_millisecond_grid() {
        let origin = Instant::now();
        let l = limits(4, origin);
        let at = origin + Duration::from_micros(2_500);
        assert_eq!(l.next_check(at), origin + Duration::from_millis(7));
    }

    #[test]
    fn an_instant_before_the_origin_is_not_rounded() {
        let origin = Instant::now() + Duration::from_secs(10);
        let l = limits(1000, origin);
        let now = origin - Duration::from_secs(5);
        assert_eq!(l.next_check(now), now + Duration::from_secs(1));
    }
}
