//! Accept loops, TLS handshakes under a timeout, hyper-util serving, and the drain sequence.
//!
//! [`serve`] takes an already-bound listener and a shutdown future (`app` assembles the gateway
//! around it), so `main` binds real ports and tests bind `127.0.0.1:0`. An accept error is
//! logged, counted and briefly backed off; it never ends the loop. Each connection takes its TLS
//! settings from the runtime state in force when it is accepted (so TLS can be turned on, off or
//! given a new client CA by a reload). A failed TLS handshake is counted and ends only its own
//! connection. This module does not authenticate and does not build request records; it hands
//! each request to `proxy::handle`. HTTP/1.1 over TLS is served by `h1`, which lets idle
//! connections give their HTTP and TLS buffers back (`idle_release_ms`); HTTP/2 over TLS by
//! `h2`, which sends GOAWAY to idle and aged connections. `max_connections_per_ip` is held at
//! accept time. The TLS stream is `tls::TlsStream` (rustls' unbuffered API).
//!
//! Shutdown order (STYLE §5): readiness turns 503 → pre-drain delay → stop accepting → graceful
//! shutdown of every connection (hyper-util's watcher; `h1` watches the stop-accepting token and
//! closes parked connections at once), bounded by `drain_timeout` → stop background tasks.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

mod first_byte;
mod h1;
mod h2;
use crate::gateway::Gateway;
use crate::proxy::{self, ConnInfo, Watchdog};
use crate::tls::TlsStream;
use first_byte::FirstByteTimeout;

/// How the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished within the drain timeout.
    Complete,
    /// The deadline passed with connections still open; they were dropped.
    TimedOut,
}

/// Where the scoring listener's connections come from: a bound TCP listener, or (the pipeline
/// tests) in-memory streams.
pub trait Listen: Send {
    type Io: Accepted;
    fn accept(&mut self) -> impl Future<Output = std::io::Result<(Self::Io, SocketAddr)>> + Send;
}

/// An accepted connection.
pub trait Accepted: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Transport settings for a new connection.
    fn prepare(&self) {}
    /// The TCP stream under it, which TLS is served over; `Err(self)` for other streams.
    fn into_tcp(self) -> Result<TcpStream, Self>
    where
        Self: Sized,
    {
        Err(self)
    }
}

impl Listen for TcpListener {
    type Io = TcpStream;

    async fn accept(&mut self) -> std::io::Result<(TcpStream, SocketAddr)> {
        TcpListener::accept(self).await
    }
}

impl Accepted for TcpStream {
    fn prepare(&self) {
        let _ = self.set_nodelay(true);
    }

    fn into_tcp(self) -> Result<TcpStream, Self> {
        Ok(self)
    }
}

/// In-memory connections, each accepted as coming from its address; none more once every
/// sender is gone. Plain HTTP only.
impl Listen for tokio::sync::mpsc::Receiver<(DuplexStream, SocketAddr)> {
    type Io = DuplexStream;

    async fn accept(&mut self) -> std::io::Result<(DuplexStream, SocketAddr)> {
        match self.recv().await {
            Some(accepted) => Ok(accepted),
            None => std::future::pending().await,
        }
    }
}

impl Accepted for DuplexStream {}

/// Serves the scoring listener until `shutdown` resolves, then drains it (readiness 503 →
/// pre-drain delay → stop accepting → graceful shutdown of every connection, bounded by the
/// drain timeout). The delay and the timeout are read from the state in force at that moment.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: impl Listen,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    let lifecycle = Arc::clone(&gw.lifecycle);
    let scoring_graceful = GracefulShutdown::new();
    let scoring = ScoringListener::new(Arc::clone(&gw));
    if gw.state().tls.is_none() {
        tracing::warn!(
            listen = %gw.state().config.server.listen,
            "no [server.tls] table: serving plain HTTP; callers' keys and tokens cross the network unencrypted"
        );
    }
    lifecycle.set_listening();
    // The accept loop runs here rather than in a task so it can lend each connection a watcher
    // of `scoring_graceful`, which this function consumes afterwards to drain.
    let accepting = scoring.accept_loop(
        listener,
        &scoring_graceful,
        lifecycle.stop_accepting.clone(),
    );
    let control = async {
        shutdown.await;
        lifecycle.start_draining();
        let delay = gw.state().config.server.pre_drain_delay;
        tracing::info!(
            delay_ms = delay.as_millis(),
            "draining: readiness is now 503"
        );
        tokio::time::sleep(delay).await;
        lifecycle.stop_accepting.cancel();
    };
    tokio::join!(accepting, control);

    let drain_timeout = gw.state().config.server.drain_timeout;
    match tokio::time::timeout(drain_timeout, scoring_graceful.shutdown()).await {
        Ok(()) => {
            tracing::info!("drain complete: every connection finished");
            Drained::Complete
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = drain_timeout.as_millis(),
                "drain timed out; remaining connections are dropped"
            );
            lifecycle.force_close.cancel();
            Drained::TimedOut
        }
    }
}

/// The HTTP servers for the scoring listener. Over TLS, ALPN has already chosen the protocol, so
/// the dedicated HTTP/1.1 or HTTP/2 server takes the connection directly (no version sniffing,
/// and an idle HTTP/1.1 connection does not carry HTTP/2 state: ~4 KiB less each). Plain-HTTP
/// listeners sniff with hyper-util's `auto` builder.
struct HttpServers {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    auto: auto::Builder<TokioExecutor>,
}

impl HttpServers {
    fn new(config: &Config) -> Self {
        let s = &config.server;
        // hyper's own bounds sit well above `max_header_bytes`: they are inexact (HTTP/1.1: a
        // read-buffer size a head can overshoot; HTTP/2: 431 without a body), so the exact bound
        // and its JSON answer are the proxy's (`proxy::head_size`); these only stop heads far over it.
        let slack = s.max_header_bytes.saturating_mul(2);
        let header_list = u32::try_from(slack).unwrap_or(u32::MAX);
        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.timer(TokioTimer::new())
            // Also bounds the wait for the first request: the timer starts with the head read.
            .header_read_timeout(s.header_read_timeout)
            // Heads far over the bound, or with too many headers, get 431 from hyper.
            .max_buf_size(slack)
            .max_headers(s.max_headers)
            .keep_alive(true);
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(s.http2_max_concurrent_streams)
            .max_header_list_size(header_list)
            // Detect dead HTTP/2 peers so their streams do not hold resources forever.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(s.header_read_timeout)
            .max_buf_size(slack)
            .max_headers(s.max_headers)
            .keep_alive(true);
        auto.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(s.http2_max_concurrent_streams)
            .max_header_list_size(header_list)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        Self { h1, h2, auto }
    }
}

/// The scoring listener's limits, taken from the runtime state when a connection is accepted:
/// a reload changes them for new connections, and open connections keep theirs.
struct Limits {
    http: HttpServers,
    handshake_timeout: Duration,
    /// Bound on the wait for a connection's first request bytes.
    header_read_timeout: Duration,
    /// When idle HTTP/1.1-over-TLS connections release their buffers, and are closed.
    idle: h1::IdleLimits,
    /// When HTTP/2 connections are sent GOAWAY.
    h2: h2::Lifetime,
}

impl Limits {
    fn new(config: &Config) -> Self {
        let s = &config.server;
        Self {
            http: HttpServers::new(config),
            handshake_timeout: s.tls_handshake_timeout,
            header_read_timeout: s.header_read_timeout,
            idle: h1::IdleLimits {
                release: s.idle_release,
                close: s.header_read_timeout,
                grid_origin: tokio::time::Instant::now(),
            },
            h2: h2::Lifetime {
                idle: s.http2_idle_timeout,
                max_age: s.http2_max_connection_age,
            },
        }
    }
}

/// The scoring listener's per-process state.
struct ScoringListener {
    gw: Arc<Gateway>,
    /// The limits of the state generation that last accepted a connection.
    limits: Mutex<(u64, Arc<Limits>)>,
    /// Open connections, held under the current state's `max_connections`.
    open: AtomicUsize,
    /// A connection closed: the accept loop may have room again.
    closed: Notify,
    /// Open connections per client address, while `max_connections_per_ip` is set.
    per_ip: dashmap::DashMap<std::net::IpAddr, usize>,
    /// Ends the requests of clients that stop taking their response or pass their deadline.
    watchdog: Watchdog,
}

/// The address already has `max_connections_per_ip` connections open.
struct AddressFull;

/// One connection's place under `max_connections_per_ip`; given back when it ends.
struct IpSlot(Arc<ScoringListener>, std::net::IpAddr);

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.0.per_ip.remove_if_mut(&self.1, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

/// One open connection's place under the cap; gives it back when the connection ends.
struct Slot(Arc<ScoringListener>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.closed.notify_one();
    }
}

impl ScoringListener {
    fn new(gw: Arc<Gateway>) -> Self {
        let state = gw.state_full();
        let limits = (state.generation, Arc::new(Limits::new(&state.config)));
        Self {
            gw,
            limits: Mutex::new(limits),
            open: AtomicUsize::new(0),
            closed: Notify::new(),
            per_ip: dashmap::DashMap::new(),
            watchdog: Watchdog::default(),
        }
    }

    /// The limits of the state in force, rebuilt only when a reload has published a new one.
    fn limits(&self) -> Arc<Limits> {
        let state = self.gw.state();
        let mut held = self.limits.lock().unwrap_or_else(PoisonError::into_inner);
        if held.0 != state.generation {
            *held = (state.generation, Arc::new(Limits::new(&state.config)));
        }
        Arc::clone(&held.1)
    }

    /// A place for one more connection from `ip` under `max_connections_per_ip` (`Ok(None)`:
    /// no bound is set); `Err` when the address has all it may have.
    fn ip_slot(this: &Arc<Self>, ip: std::net::IpAddr) -> Result<Option<IpSlot>, AddressFull> {
        let cap = this.gw.state().config.server.max_connections_per_ip;
        if cap == 0 {
            return Ok(None);
        }
        let mut n = this.per_ip.entry(ip).or_insert(0);
        if *n >= cap {
            return Err(AddressFull);
        }
        *n += 1;
        drop(n);
        Ok(Some(IpSlot(Arc::clone(this), ip)))
    }

    /// Waits until the connection count is below the current state's `max_connections` (a
    /// reload that raises it lets waiting connections in); `false` once accepting stops.
    async fn room(&self, stop: &CancellationToken, changes: &mut watch::Receiver<u64>) -> bool {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            let max = self.gw.state().config.server.max_connections;
            if self.open.load(Ordering::Acquire) < max {
                return true;
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return false,
                () = &mut closed => {}
                Ok(()) = changes.changed() => {}
            }
        }
    }

    async fn accept_loop(
        self,
        mut listener: impl Listen,
        graceful: &GracefulShutdown,
        stop: CancellationToken,
    ) {
        let this = Arc::new(self);
        let mut changes = this.gw.state_changes();
        loop {
            // At the connection cap, stop accepting: new connections wait in the kernel's
            // backlog until one closes, instead of being accepted and starved.
            if !this.room(&stop, &mut changes).await {
                break;
            }
            let accepted = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let ip = peer.ip().to_canonical();
                    let Ok(ip_slot) = Self::ip_slot(&this, ip) else {
                        // Closed at once: one address cannot take every connection.
                        this.gw.metrics.connections_refused_per_ip.inc();
                        tracing::debug!(%peer, "connection refused: max_connections_per_ip");
                        drop(stream);
                        continue;
                    };
                    this.open.fetch_add(1, Ordering::AcqRel);
                    let slot = Slot(Arc::clone(&this));
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        slot.0.connection(stream, peer, watcher).await;
                        drop(ip_slot);
                        drop(slot);
                    });
                }
                Err(e) => {
                    this.gw.metrics.accept_errors.inc();
                    tracing::warn!(error = %e, "accept failed; backing off");
                    // Usually EMFILE: give in-flight connections a moment to release descriptors.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracing::debug!("scoring listener closed");
    }

    /// Serves one connection until it ends, or until the drain deadline forces it closed.
    async fn connection(&self, stream: impl Accepted, peer: SocketAddr, watcher: Watcher) {
        let force = self.gw.lifecycle.force_close.clone();
        tokio::select! {
            () = self.serve(stream, peer, watcher) => {}
            () = force.cancelled() => tracing::debug!(%peer, "connection closed at the drain deadline"),
        }
    }

    async fn serve(&self, stream: impl Accepted, peer: SocketAddr, watcher: Watcher) {
        stream.prepare();
        let limits = self.limits();
        let acceptor = self.gw.state().tls.clone();
        let conn = Arc::new(ConnInfo::new(
            peer,
            acceptor.is_some(),
            self.watchdog.handle(),
        ));
        // A request body that outlived its lingering bounds unread, or a client that stopped
        // taking its response, ends the connection here (`proxy::linger`, `proxy::watchdog`).
        let result = tokio::select! {
            served = self.serve_http(stream, acceptor, &limits, &conn, watcher) => served,
            () = conn.abandoned() => {
                tracing::debug!(%peer, "connection closed by the gateway");
                return;
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }

    /// The TLS handshake (if any) and the HTTP protocol the connection speaks.
    async fn serve_http(
        &self,
        stream: impl Accepted,
        acceptor: Option<Arc<rustls::ServerConfig>>,
        limits: &Limits,
        conn: &Arc<ConnInfo>,
        watcher: Watcher,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let peer = conn.peer;
        let gw = Arc::clone(&self.gw);
        let info = Arc::clone(conn);
        let service = service_fn(move |req| proxy::handle(Arc::clone(&gw), Arc::clone(&info), req));
        match (&acceptor, stream.into_tcp()) {
            (Some(_), Err(_)) => Err("TLS is served over TCP connections only".into()),
            (Some(acceptor), Ok(stream)) => {
                let handshake = async {
                    // A peer that connects and closes without a byte (a TCP health probe, a
                    // port scan) is not a failed handshake; don't count it as one.
                    let mut first = [0u8; 1];
                    if matches!(stream.peek(&mut first).await, Ok(0)) {
                        return None;
                    }
                    // Boxed: the TLS state (about 1.2 KiB) is then never copied between phases.
                    Some(
                        TlsStream::accept(Arc::clone(acceptor), stream)
                            .await
                            .map(Box::new),
                    )
                };
                // Every phase is boxed: the connection's task then holds only the phase it is
                // in (the handshake and each protocol's connection are kilobytes each, and an
                // idle connection should cost as little as possible).
                match Box::pin(tokio::time::timeout(limits.handshake_timeout, handshake)).await {
                    Ok(None) => Ok(()),
                    Ok(Some(Ok(tls))) => {
                        if tls.alpn_protocol() == Some(b"h2") {
                            // The HTTP/2 preface has no timer of its own.
                            let io = FirstByteTimeout::new(tls, limits.header_read_timeout);
                            let http = limits.http.h2.serve_connection(TokioIo::new(io), service);
                            let draining = &self.gw.lifecycle.stop_accepting;
                            let served = Box::pin(h2::serve(http, conn, limits.h2, draining)).await;
                            // As for HTTP/1.1, the drain is signalled through `draining`.
                            drop(watcher);
                            served.map_err(Into::into)
                        } else {
                            let ctx = h1::Ctx {
                                builder: &limits.http.h1,
                                conn,
                                limits: limits.idle,
                                parked: &self.gw.metrics.connections_parked,
                                releases: &self.gw.metrics.connection_releases,
                                draining: &self.gw.lifecycle.stop_accepting,
                            };
                            // The drain is signalled through `draining`; the watcher only has
                            // to live as long as the connection.
                            let served = Box::pin(h1::serve(ctx, tls, service)).await;
                            drop(watcher);
                            served.map_err(Into::into)
                        }
                    }
                    Ok(Some(Err(e))) => {
                        self.gw.metrics.tls_handshake_errors.inc();
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        Ok(())
                    }
                    Err(_) => {
                        self.gw.metrics.tls_handshake_errors.inc();
                        tracing::debug!(%peer, "TLS handshake timed out");
                        Ok(())
                    }
                }
            }
            (None, stream) => {
                let io = match stream {
                    Ok(tcp) => Either::Left(tcp),
                    Err(other) => Either::Right(other),
                };
                let io = FirstByteTimeout::new(io, limits.header_read_timeout);
                let conn = limits
                    .http
                    .auto
                    .serve_connection(TokioIo::new(io), service)
                    .into_owned();
                Box::pin(watcher.watch(conn)).await
            }
        }
    }
}
