//! `MockUpstream`: an in-process HTTP/1.1 scoring container that records what reaches it.
//!
//! Every request is recorded as a [`Seen`] (method, path, query, version, headers) the moment its
//! head arrives; its body counters (`bytes`, `frames`, and whether it ended cleanly or was cut
//! off) update as the body streams in. Records live in a `watch` channel, so tests wait on
//! arrivals and body ends as events ([`MockUpstream::wait_for`]) rather than polling.
//!
//! Behaviour is chosen by the **last path segment**, so it works under any route prefix or
//! upstream base path (`/base/echo` behaves like `/echo`):
//!
//! | segment | behaviour |
//! |---|---|
//! | `GET /` (whole path) | 200 `Healthy`, the Azure ML health answer the gateway probes |
//! | `echo` or anything else | reads the body, answers JSON: `method`, `path`, `query`, `version`, `headers` (name → values), `bodyBytes`, `bodyFnv` ([`Fnv64`]) |
//! | `echo-body` | streams the request body back as the response body, frame by frame |
//! | `stream?bytes=N` | streams `N` pattern bytes ([`super::pattern`]) in 64 KiB chunks |
//! | `slow?ms=N` | waits `N` ms before answering like `echo` |
//! | `hang` | never answers (the connection closes when the mock is dropped) |
//! | `reset` | closes the connection without answering |
//! | `hop` | answers with hop-by-hop headers (`Connection: x-upstream-hop`, `x-upstream-hop`, `Keep-Alive`, `Proxy-Authenticate`, `Proxy-Connection`) plus `x-normal: yes` |
//! | `gate?bytes=N` | waits until the test calls [`MockUpstream::open_gate`], then streams `N` (default 1024) pattern bytes |
//! | `status?code=N` | answers like `echo` with status `N` |
//! | `close` | answers like `echo` with `Connection: close`, then closes the connection |
//! | `early?code=N` | answers `N` (default 200) with `{"early":true}` at once, without reading the body; the body stays unread (the connection open) until the mock is dropped |
//!
//! Health probes (`GET /` without `x-request-id`, which the gateway adds to every forwarded
//! request) are counted separately so they never disturb assertions on proxied traffic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use super::pattern::{self, Fnv64};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type MockBody = BoxBody<Bytes, BoxError>;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Which TCP connection it arrived on: 0 for the mock's first accepted connection, 1 for
    /// the next, and so on.
    pub conn: u64,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: BodySeen,
}

impl Seen {
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// The single value of `name` as text (panics on a non-UTF-8 value).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("header value is text"))
    }

    /// Every value of `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    fn is_probe(&self) -> bool {
        self.method == Method::GET && self.path == "/" && !self.headers.contains_key("x-request-id")
    }
}

/// What arrived of a request body.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodySeen {
    pub bytes: u64,
    /// Data frames received (a body that streams arrives in many).
    pub frames: u64,
    pub end: BodyEnd,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BodyEnd {
    /// Still streaming, or never read (e.g. `/hang`).
    #[default]
    Open,
    /// The body ended as framed.
    Complete,
    /// The connection failed mid-body (the sender gave up or was cut off).
    Aborted,
}

#[derive(Debug)]
struct Shared {
    seen: watch::Sender<Vec<Seen>>,
    gate_open: watch::Sender<bool>,
    /// Cancelled when the mock is dropped.
    stop: CancellationToken,
}

/// See the module documentation.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    /// Set when the mock listens on a Unix socket instead (`addr` is then unspecified).
    socket: Option<PathBuf>,
    shared: Arc<Shared>,
    /// Cancelled on drop: closes the listener and every connection (including `/hang`).
    stop: CancellationToken,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl MockUpstream {
    /// Starts on `127.0.0.1:0`.
    pub async fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind mock upstream on 127.0.0.1:0")
    }

    /// Starts on a given address (e.g. a port the gateway already points at).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Self::serve(Listener::Tcp(listener), addr, None))
    }

    /// Starts on a Unix socket at `path` (as a container run with uvicorn `--uds`).
    pub fn start_unix(path: &Path) -> std::io::Result<Self> {
        let listener = UnixListener::bind(path)?;
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Ok(Self::serve(
            Listener::Unix(listener),
            unspecified,
            Some(path.to_owned()),
        ))
    }

    /// Serves `listener` until the mock is dropped.
    fn serve(listener: Listener, addr: SocketAddr, socket: Option<PathBuf>) -> Self {
        let stop = CancellationToken::new();
        let shared = Self::shared(&stop);
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop.clone()));
        Self {
            addr,
            socket,
            shared,
            stop,
        }
    }

    fn shared(stop: &CancellationToken) -> Arc<Shared> {
        Arc::new(Shared {
            seen: watch::Sender::new(Vec::new()),
            gate_open: watch::Sender::new(false),
            stop: stop.clone(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        assert!(self.socket.is_none(), "a Unix-socket mock has no address");
        self.addr
    }

    /// `http://127.0.0.1:PORT` (or `unix:/path` for [`Self::start_unix`]), the form a
    /// `[[service]] upstream` takes.
    pub fn url(&self) -> String {
        match &self.socket {
            Some(path) => format!("unix:{}", path.display()),
            None => format!("http://{}", self.addr),
        }
    }

    /// Every request except health probes, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared
            .seen
            .borrow()
            .iter()
            .filter(|s| !s.is_probe())
            .cloned()
            .collect()
    }

    /// How many health probes arrived.
    pub fn probe_count(&self) -> usize {
        self.shared
            .seen
            .borrow()
            .iter()
            .filter(|s| s.is_probe())
            .count()
    }

    /// Waits (under the harness deadline) for a non-probe request matching `pred` and returns
    /// its latest state. Re-evaluated on every arrival and body update.
    pub async fn wait_for(&self, what: &str, mut pred: impl FnMut(&Seen) -> bool) -> Seen {
        let mut rx = self.shared.seen.subscribe();
        super::within(what, async {
            let seen = rx
                .wait_for(|all| all.iter().any(|s| !s.is_probe() && pred(s)))
                .await
                .expect("mock upstream state outlives its receivers");
            seen.iter()
                .find(|s| !s.is_probe() && pred(s))
                .cloned()
                .expect("the request wait_for just matched")
        })
        .await
    }

    /// Waits until `n` requests to a path ending in `/gate` are being held.
    pub async fn wait_gate_arrivals(&self, n: usize) {
        let mut rx = self.shared.seen.subscribe();
        super::within("requests to arrive at /gate", async {
            rx.wait_for(|all| all.iter().filter(|s| s.path.ends_with("/gate")).count() >= n)
                .await
                .expect("mock upstream state outlives its receivers");
        })
        .await;
    }

    /// Releases every request held at `/gate`, now and later.
    pub fn open_gate(&self) {
        self.shared.gate_open.send_replace(true);
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>, stop: CancellationToken) {
    for conn in 0.. {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = async {
                match &listener {
                    Listener::Tcp(l) => l.accept().await.map(|(s, _)| Either::Left(s)),
                    Listener::Unix(l) => l.accept().await.map(|(s, _)| Either::Right(s)),
                }
            } => accepted,
        };
        let Ok(stream) = accepted else { continue };
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&shared), conn, req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    conn: u64,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, BoxError> {
    let (parts, incoming) = req.into_parts();
    let seen = Seen {
        conn,
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        version: parts.version,
        headers: parts.headers.clone(),
        body: BodySeen::default(),
    };
    let mut index = 0;
    shared.seen.send_modify(|all| {
        index = all.len();
        all.push(seen.clone());
    });
    let body = Tracked {
        inner: incoming,
        shared: Arc::clone(&shared),
        index,
    };
    let segment = seen.path.rsplit('/').next().unwrap_or_default();
    let param = |name: &str| query_param(seen.query.as_deref(), name);

    if seen.method == Method::GET && seen.path == "/" {
        return Ok(text(StatusCode::OK, "Healthy"));
    }
    match segment {
        "echo-body" => {
            let mut resp = Response::new(body.map_err(BoxError::from).boxed());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/octet-stream"),
            );
            Ok(resp)
        }
        "stream" => Ok(pattern_response(param("bytes").unwrap_or(0))),
        "slow" => {
            tokio::time::sleep(Duration::from_millis(param("ms").unwrap_or(0))).await;
            echo(&seen, body, StatusCode::OK).await
        }
        "hang" => std::future::pending().await,
        "reset" => Err("closing the connection without an answer (/reset)".into()),
        "hop" => Ok(hop_response()),
        "close" => {
            let mut resp = echo(&seen, body, StatusCode::OK).await?;
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            Ok(resp)
        }
        "gate" => {
            let mut open = shared.gate_open.subscribe();
            open.wait_for(|open| *open)
                .await
                .expect("gate sender outlives its receivers");
            Ok(pattern_response(param("bytes").unwrap_or(1024)))
        }
        "early" => {
            // Held, not dropped: hyper would otherwise close the connection, and a container
            // that answers early may well keep it open without reading.
            let stop = shared.stop.clone();
            tokio::spawn(async move {
                let _unread = body;
                stop.cancelled().await;
            });
            let mut resp = Response::new(full(Bytes::from_static(br#"{"early":true}"#)));
            *resp.status_mut() = status_param(param("code"));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        }
        "status" => echo(&seen, body, status_param(param("code"))).await,
        _ => echo(&seen, body, StatusCode::OK).await,
    }
}

fn status_param(code: Option<u64>) -> StatusCode {
    code.and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK)
}

fn query_param(query: Option<&str>, name: &str) -> Option<u64> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

async fn echo(
    seen: &Seen,
    mut body: Tracked,
    status: StatusCode,
) -> Result<Response<MockBody>, BoxError> {
    let mut fnv = Fnv64::default();
    let mut len: u64 = 0;
    while let Some(frame) = body.frame().await {
        // A body cut off mid-stream fails the exchange: the connection closes unanswered.
        if let Some(data) = frame?.data_ref() {
            fnv.update(data);
            len += data.len() as u64;
        }
    }
    let mut headers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in &seen.headers {
        headers
            .entry(name.as_str())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let json = serde_json::json!({
        "method": seen.method.as_str(),
        "path": seen.path,
        "query": seen.query,
        "version": format!("{:?}", seen.version),
        "headers": headers,
        "bodyBytes": len,
        "bodyFnv": fnv.hex(),
    });
    let mut resp = Response::new(full(Bytes::from(json.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn full(bytes: Bytes) -> MockBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn text(status: StatusCode, body: &'static str) -> Response<MockBody> {
    let mut resp = Response::new(full(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}

fn pattern_response(total: u64) -> Response<MockBody> {
    let frames = pattern::stream::<BoxError>(total).map_ok(Frame::data);
    Response::new(BodyExt::boxed(StreamBody::new(frames)))
}

fn hop_response() -> Response<MockBody> {
    let mut resp = text(StatusCode::OK, "hop");
    let h = resp.headers_mut();
    for (name, value) in [
        ("connection", "x-upstream-hop"),
        ("x-upstream-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-authenticate", "Basic realm=\"upstream\""),
        ("proxy-connection", "keep-alive"),
        ("x-normal", "yes"),
    ] {
        h.insert(
            header::HeaderName::from_static(name),
            header::HeaderValue::from_static(value),
        );
    }
    resp
}

/// The request body, counted into the shared record as it streams.
struct Tracked {
    inner: Incoming,
    shared: Arc<Shared>,
    index: usize,
}

impl Tracked {
    fn update(&self, f: impl FnOnce(&mut BodySeen)) {
        self.shared
            .seen
            .send_modify(|all| f(&mut all[self.index].body));
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.update(|b| {
                        b.bytes += n;
                        b.frames += 1;
                    });
                }
                if this.inner.is_end_stream() {
                    this.update(|b| b.end = BodyEnd::Complete);
                }
            }
            Some(Err(_)) => this.update(|b| b.end = BodyEnd::Aborted),
            None => this.update(|b| b.end = BodyEnd::Complete),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
