//! HTTP/2 connections that cannot be held open for ever.
//!
//! hyper's HTTP/2 server has no idle timeout: `header_read_timeout_ms` covers only the preface,
//! and any client answers keep-alive PINGs, so silent connections would fill `max_connections`
//! with no credential at all. [`serve`] runs hyper's connection and ends it gracefully (GOAWAY,
//! then close once open streams finish) when
//!
//! - no stream was open and none began for `http2_idle_timeout_ms`, or
//! - the connection is older than `http2_max_connection_age_ms` (when set), so long-lived clients
//!   reconnect (and rebalance, and pick up a new certificate) now and then, or
//! - the gateway drains.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http2;
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::proxy::ConnInfo;

/// How long an HTTP/2 connection may stay open.
#[derive(Debug, Clone, Copy)]
pub struct Lifetime {
    /// No open stream for this long sends GOAWAY.
    pub idle: Duration,
    /// GOAWAY this long after the connection began (`None`: no bound).
    pub max_age: Option<Duration>,
}

/// Serves one HTTP/2 connection until the client leaves, it idles or ages out, or the gateway
/// drains.
pub async fn serve<I, S, B>(
    conn: http2::Connection<TokioIo<I>, S, TokioExecutor>,
    info: &ConnInfo,
    lifetime: Lifetime,
    draining: &CancellationToken,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = std::pin::pin!(conn);
    let started = Instant::now();
    let idle = tokio::time::sleep(lifetime.idle);
    tokio::pin!(idle);
    let age = tokio::time::sleep_until(started + lifetime.max_age.unwrap_or(Duration::ZERO));
    tokio::pin!(age);
    let mut seen = info.activity().0;
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            ended = conn.as_mut() => return ended,
            () = draining.cancelled(), if !closing => {
                goaway(conn.as_mut(), &mut closing);
            }
            () = &mut age, if !closing && lifetime.max_age.is_some() => {
                tracing::debug!(peer = %info.peer, "HTTP/2 connection reached its maximum age");
                goaway(conn.as_mut(), &mut closing);
            }
            () = &mut idle, if !closing => {
                let (begun, open) = info.activity();
                if begun == seen && open == 0 {
                    tracing::debug!(peer = %info.peer, "HTTP/2 connection idle");
                    goaway(conn.as_mut(), &mut closing);
                } else {
                    seen = begun;
                    idle.as_mut().reset(Instant::now() + lifetime.idle);
                }
            }
        }
    }
}

fn goaway<C: GracefulShutdown>(conn: Pin<&mut C>, closing: &mut bool) {
    conn.shutdown_gracefully();
    *closing = true;
}

/// hyper's HTTP/2 connection, as far as [`serve`] needs it.
trait GracefulShutdown: Future {
    fn shutdown_gracefully(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulShutdown for http2::Connection<TokioIo<I>, S, TokioExecutor>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}
