//! The pooled keep-alive client to scoring containers, its timeouts, and the health probe behind
//! `/readyz`.
//!
//! One client per service, so each service's connect timeout and TLS trust apply to its own
//! upstream. An `https://` upstream is verified against the system roots plus an optional
//! `upstream_ca`; a `unix:` upstream is plain HTTP/1.1 over a Unix socket, pooled, probed and
//! timed like a TCP one. Response-header timeouts are applied by the caller (`proxy::forward`)
//! because they are a per-request policy, not a transport setting.
//!
//! # The pool
//!
//! A service has exactly one upstream, so the pool is one stack of idle HTTP/1.1 connections,
//! not a map keyed by host. A request takes the most recently used idle connection (or dials a
//! new one) and gets it as a [`Lease`]; the response body gives the lease back when its last
//! byte has passed ([`Lease::release`]), which is when hyper's connection task has already
//! turned to wait for the next request. A body that is abandoned drops the lease instead, and
//! with it the connection, which cannot be reused with unread bytes on it. Dropping a lease (or
//! an idle connection) ends the connection's task at once, even one stuck writing a request body
//! the container stopped reading (it answered early).
//!
//! An idle connection is reused for `upstream_keepalive_ms` (default 4 s), less than the idle
//! timeout of common container servers (uvicorn and Node.js: 5 s), so the gateway does not send a
//! request on a connection the container is closing at that moment; such a request could not be
//! sent again safely.
//!
//! This replaces hyper-util's general-purpose client, which on every request builds a connect
//! future it rarely needs, clones a pool key, and spawns a task that waits for the connection
//! to become idle again; on the proxy's hot path those were measurable (`loadtest/RESULTS.md`).

use std::future::poll_fn;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::rt::{Read, Write};
use hyper_util::client::legacy::connect::HttpConnector;
use prometheus::IntCounter;
use tower_service::Service;

use crate::config::ServiceConfig;
use body::RequestBody;

pub mod body;

/// Enough idle connections for a burst of concurrent requests without reconnecting.
const POOL_MAX_IDLE: usize = 256;
/// A health answer longer than this is not read to its end (the connection is then dropped).
const PROBE_MAX_BODY: usize = 64 * 1024;

pub use crate::error::BoxError;

/// Why an upstream exchange produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: refused, unreachable, DNS, connect timeout, TLS handshake.
    #[error("connect: {0}")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was sent or the response head was awaited.
    #[error(transparent)]
    Http(hyper::Error),
}

/// The client of one service; clones share the pool.
#[derive(Debug, Clone)]
pub struct UpstreamClient(Arc<Pool>);

#[derive(Debug)]
struct Pool {
    connector: Connector,
    /// `scheme://authority/`: what the connector dials.
    target: Uri,
    /// Most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// Idle connections older than this are not reused (`upstream_keepalive_ms`; zero: none).
    keepalive: Duration,
    /// Counts connections opened (`scoregate_upstream_connections_total`).
    opened: IntCounter,
}

/// Plain `http://` upstreams get no TLS layer at all.
#[derive(Debug, Clone)]
enum Connector {
    Plain(HttpConnector),
    Tls(hyper_rustls::HttpsConnector<HttpConnector>),
    /// A `unix:` upstream: plain HTTP/1.1 over the socket at this path, connected within the
    /// connect timeout.
    Unix(Arc<Path>, Duration),
    /// Connections from a [`Dialer`], for the named service.
    Dial(Dialer, Arc<str>),
}

/// A connection a [`Dialer`] opens: any byte stream.
pub type DialedIo = Box<dyn DialIo>;

/// What a [`Dialer`] connection must be.
pub trait DialIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> DialIo for T {}

type DialFuture = std::pin::Pin<Box<dyn Future<Output = std::io::Result<DialedIo>> + Send>>;

/// Opens upstream connections in place of the network, given the service's name: the pipeline
/// tests' in-memory stand-in containers (`tests/pipeline.rs`), which need no sockets, so
/// tokio's paused clock can drive every timeout. Every service uses it when one is set
/// (`reload::Handles::dialer`).
#[derive(Clone)]
pub struct Dialer(Arc<dyn Fn(&str) -> DialFuture + Send + Sync>);

impl Dialer {
    pub fn new<F, Fut>(dial: F) -> Self
    where
        F: Fn(&str) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<DialedIo>> + Send + 'static,
    {
        Self(Arc::new(move |service: &str| -> DialFuture {
            Box::pin(dial(service))
        }))
    }
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dialer")
    }
}

/// A connection: the handle to send on, and the guard that ends its task when dropped.
#[derive(Debug)]
struct Conn {
    sender: SendRequest<RequestBody>,
    _close: AbortOnDrop,
}

/// Aborts the connection's task when dropped. hyper ends a connection whose handles are gone
/// only once the exchange in progress is over, which for a request body the container no longer
/// reads is never. (An abort, not a cancellation future polled beside the connection: that was
/// polled on every wake-up of the connection, ~1 % of the proxy's samples.)
#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

/// One upstream connection lent to one request.
#[derive(Debug)]
pub struct Lease {
    conn: Conn,
    pool: Arc<Pool>,
}

impl Lease {
    /// The response has ended: the connection goes back to the pool for the next request.
    pub fn release(self) {
        let Self { conn, pool } = self;
        let sender = &conn.sender;
        if sender.is_closed() || pool.keepalive.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // The stack is ordered by `since`: connections at the bottom that busy traffic never
        // reaches are closed once they have idled too long.
        let expired = idle.partition_point(|c| now.duration_since(c.since) > pool.keepalive);
        idle.drain(..expired);
        if idle.len() < POOL_MAX_IDLE {
            idle.push(Idle { conn, since: now });
        }
    }
}

impl UpstreamClient {
    /// The client of `config`'s upstream; `dialer`, when given, opens its connections.
    pub fn new(
        config: &ServiceConfig,
        opened: IntCounter,
        dialer: Option<&Dialer>,
    ) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let upstream = &config.upstream;
        let target = Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("invalid upstream address: {e}"))?;
        let connector = if let Some(dialer) = dialer {
            Connector::Dial(dialer.clone(), Arc::from(config.name.as_str()))
        } else if let Some(socket) = &upstream.socket {
            Connector::Unix(Arc::from(socket.as_path()), config.connect_timeout)
        } else if upstream.scheme == http::uri::Scheme::HTTPS {
            let tls = crate::tls::client_config(config.upstream_ca.as_deref())?;
            http.enforce_http(false);
            Connector::Tls(
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_only()
                    .enable_http1()
                    .wrap_connector(http),
            )
        } else {
            Connector::Plain(http)
        };
        Ok(Self(Arc::new(Pool {
            connector,
            target,
            idle: Mutex::new(Vec::new()),
            keepalive: config.upstream_keepalive,
            opened,
        })))
    }

    /// Sends `req` (origin-form URI, `Host` set) on a pooled connection or a new one. A pooled
    /// connection the upstream closed while it sat idle fails before the request is written;
    /// the request then goes out once more on a new connection, as hyper-util's client does.
    ///
    /// The request comes boxed: an `async fn` keeps its arguments in its future for its whole
    /// life, and this future lives inside every request's.
    pub async fn send(
        &self,
        req: Box<Request<RequestBody>>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        let req = match poll_fn(|cx| Poll::Ready(self.0.checkout(cx))).await {
            Some(mut conn) => match conn.sender.try_send_request(*req).await {
                Ok(resp) => return Ok((resp, self.lease(conn))),
                // Boxed again (rare): unboxed, it would take its size in the future for good.
                Err(mut e) => match e.take_message() {
                    Some(unsent) => Box::new(unsent),
                    None => return Err(UpstreamError::Http(e.into_error())),
                },
            },
            None => req,
        };
        // Boxed: a new connection is rare next to pooled ones, and its future (connect, TLS,
        // handshake) is kilobytes that every request's future would otherwise carry and move.
        let mut conn = Box::pin(self.0.connect()).await?;
        let resp = conn
            .sender
            .send_request(*req)
            .await
            .map_err(UpstreamError::Http)?;
        Ok((resp, self.lease(conn)))
    }

    fn lease(&self, conn: Conn) -> Lease {
        Lease {
            conn,
            pool: Arc::clone(&self.0),
        }
    }

    /// `GET path` answered with a 2xx within `timeout`. Azure ML containers answer `GET /` with
    /// 200 `Healthy` (AZUREML-CONTRACT B.3). The (small) body is read so the connection can be
    /// reused; it goes back to the pool only if the next probe comes before the pool would
    /// expire it (`upstream_keepalive_ms`), the next probe being `next_in.0` from now after a
    /// healthy answer and `next_in.1` after an unhealthy one: an idle service then holds no
    /// upstream connection between probes (about 29 KiB each, which adds up over many services),
    /// from its very first healthy probe on.
    pub async fn probe(
        &self,
        path: &str,
        host: http::HeaderValue,
        timeout: Duration,
        next_in: (Duration, Duration),
    ) -> bool {
        let Ok(req) = Request::get(path)
            .header(http::header::HOST, host)
            .body(RequestBody::Empty)
        else {
            return false;
        };
        let exchange = async {
            let (resp, lease) = self.send(Box::new(req)).await.ok()?;
            let healthy = resp.status().is_success();
            let body = http_body_util::Limited::new(resp.into_body(), PROBE_MAX_BODY);
            http_body_util::BodyExt::collect(body).await.ok()?;
            let next = if healthy { next_in.0 } else { next_in.1 };
            if next < lease.pool.keepalive {
                lease.release();
            }
            Some(healthy)
        };
        matches!(
            tokio::time::timeout(timeout, exchange).await,
            Ok(Some(true))
        )
    }
}

impl Pool {
    /// The most recently used idle connection that is ready for a request. Connections the
    /// upstream closed, or that are still busy (a request body the upstream did not wait for),
    /// are dropped on the way.
    fn checkout(&self, cx: &mut Context<'_>) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while let Some(mut conn) = idle.pop() {
            if now.duration_since(conn.since) > self.keepalive {
                // Everything below is older still.
                idle.clear();
                return None;
            }
            if let Poll::Ready(Ok(())) = conn.conn.sender.poll_ready(cx) {
                return Some(conn.conn);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Conn, UpstreamError> {
        let target = self.target.clone();
        self.opened.inc();
        match self.connector.clone() {
            Connector::Plain(mut c) => {
                let io = c
                    .call(target)
                    .await
                    .map_err(|e| UpstreamError::Connect(e.into()))?;
                handshake(io).await
            }
            Connector::Tls(mut c) => {
                let io = c.call(target).await.map_err(UpstreamError::Connect)?;
                handshake(io).await
            }
            Connector::Unix(path, timeout) => {
                let io = connect_unix(&path, timeout)
                    .await
                    .map_err(|e| UpstreamError::Connect(e.into()))?;
                handshake(hyper_util::rt::TokioIo::new(io)).await
            }
            Connector::Dial(dialer, service) => {
                let io = (dialer.0)(&service)
                    .await
                    .map_err(|e| UpstreamError::Connect(e.into()))?;
                handshake(hyper_util::rt::TokioIo::new(io)).await
            }
        }
    }
}

/// A connection to a `unix:` upstream's socket; the error names the socket.
async fn connect_unix(path: &Path, timeout: Duration) -> std::io::Result<tokio::net::UnixStream> {
    let named =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("unix:{}: {e}", path.display()));
    match tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path)).await {
        Ok(connected) => connected.map_err(named),
        Err(_) => Err(named(std::io::ErrorKind::TimedOut.into())),
    }
}

/// Starts HTTP/1.1 on a new connection; its I/O runs in a task of its own until the connection
/// closes, or until the returned [`Conn`] is dropped.
async fn handshake<T>(io: T) -> Result<Conn, UpstreamError>
where
    T: Read + Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect(e.into()))?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(Conn {
        sender,
        _close: AbortOnDrop(task.abort_handle()),
    })
}
