//! The request pipeline of the scoring listener and the per-request [`RequestCtx`].
//!
//! `handle` is the outer function hyper calls. It creates the context inside a [`Finish`] guard,
//! runs the phases in `pipeline`, and turns any `GatewayError` into the JSON error response. The
//! guard writes the request record and metrics exactly once: when the response body ends, or when
//! hyper drops the request (client gone) at whatever point it was. Phases, in order (see
//! `docs/request-lifecycle.md`):
//!
//! 1. `select_service`: the client address (trusted proxies), unsafe paths (400), the longest
//!    matching route (404).
//! 2. `network_rules`: `allow_cidrs` (403), before anything about the caller is examined.
//! 3. `early_reject`: size limit from `Content-Length` before any upstream contact (413).
//! 4. `authenticate`: the service's auth mode turns credentials into a `Principal` (401).
//! 5. `rate_limit`: the caller's token bucket (429).
//! 6. admission: a slot in the upstream, waiting in the FIFO queue if needed (503).
//! 7. `upstream_request`: strip hop-by-hop headers, add forwarding, request-id and trace-context
//!    (`traceparent` naming the gateway's span, `tracestate`) headers, rewrite the URI to the upstream with the route prefix removed.
//! 8. `forward`: the pooled client under the scoring timeout (504) with connect errors as 502.
//! 9. `response_filter`: strip hop-by-hop headers, add request-id and refresh-after headers.
//!
//! The request's [`RequestCtx`] (`ctx.rs`) changes only through its transitions; the in-flight
//! gauge and the admission slot live in its guard. Everything else counted or logged about a
//! request is `telemetry::request_log::finish`'s, from the settled exchange.

mod body;
mod ctx;
pub mod headers;
mod linger;
mod watchdog;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::auth::Principal;
use crate::config::AuthMode;
use crate::error::{AuthFailure, GatewayError};
use crate::gateway::Gateway;
use crate::runtime::Service;
use crate::upstream::body::{self as request_body, BodyFault, Progress, RequestBody, Unread};
use crate::upstream::{Lease, UpstreamError};
use body::ProxyBody;
pub use ctx::RequestCtx;
pub use watchdog::{Watchdog, WatchdogHandle};

/// Facts about the client connection, computed once per connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer address as a header value, for `X-Forwarded-For`.
    pub peer_header: HeaderValue,
    /// The connection is TLS (for `X-Forwarded-Proto`).
    pub tls: bool,
    /// Requests begun on this connection.
    begun: AtomicU64,
    /// Requests whose response has not ended yet.
    open: AtomicU32,
    /// Signalled when the connection must be closed with a request body still unread (the
    /// lingering bounds passed): hyper would otherwise wait for that body for ever.
    abandoned: tokio::sync::Notify,
    /// Bounds the connection's admitted requests (see `proxy::watchdog`).
    watchdog: WatchdogHandle,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool, watchdog: WatchdogHandle) -> Self {
        let ip = peer.ip().to_canonical();
        Self {
            tls,
            peer: SocketAddr::new(ip, peer.port()),
            peer_header: HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            begun: AtomicU64::new(0),
            open: AtomicU32::new(0),
            abandoned: tokio::sync::Notify::new(),
            watchdog,
        }
    }

    /// Asks the server to close this connection now (see [`Self::abandoned`]).
    pub fn abandon(&self) {
        self.abandoned.notify_one();
    }

    /// Resolves once [`Self::abandon`] has been called.
    pub async fn abandoned(&self) {
        self.abandoned.notified().await;
    }

    /// Requests begun so far, and how many of them are still open; the server compares two
    /// readings to tell an idle HTTP/1.1 connection from a busy one. (HTTP/1.1 requests run in
    /// their connection's task, which also reads these, so relaxed atomics suffice.)
    pub fn activity(&self) -> (u64, u32) {
        (
            self.begun.load(Ordering::Relaxed),
            self.open.load(Ordering::Relaxed),
        )
    }
}

/// Counts one request as open on its connection until it is dropped, with the request's
/// [`Finish`] guard (so after the last response byte, or when the request is abandoned).
#[derive(Debug)]
pub struct OpenRequest(Arc<ConnInfo>);

impl OpenRequest {
    fn new(conn: Arc<ConnInfo>) -> Self {
        conn.begun.fetch_add(1, Ordering::Relaxed);
        conn.open.fetch_add(1, Ordering::Relaxed);
        Self(conn)
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Owns the context of a request; dropping it writes the record (exactly once, by construction).
pub struct Finish {
    pub gw: Arc<Gateway>,
    pub ctx: RequestCtx,
    /// Dropped after the record is written: the request then no longer keeps its connection
    /// busy.
    pub conn: OpenRequest,
    /// The request head; its headers, method and extensions move into the upstream request.
    /// Kept in this box rather than in the request's future, which hyper moves whole.
    pub head: Parts,
}

/// Without the head's headers: they hold the caller's credential until they move upstream.
impl std::fmt::Debug for Finish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finish")
            .field("ctx", &self.ctx)
            .field("conn", &self.conn)
            .field("method", &self.head.method)
            .field("uri", &self.head.uri)
            .finish_non_exhaustive()
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.ctx.settle();
        let state = self.gw.state();
        crate::telemetry::request_log::finish(self.gw.outputs(), &**state, self.ctx.exchange());
    }
}

/// hyper's entry point for every request on the scoring listener.
///
/// A plain function that returns the request's future rather than an `async fn`: an `async
/// fn` keeps its arguments in the future next to the locals made from them, and the future is
/// moved into hyper's slot (HTTP/1.1) or task (HTTP/2) on every request. For the same reason
/// the request head waits in the `Finish` box and the upstream request goes down boxed
/// (loadtest/RESULTS.md has the sizes).
pub fn handle(
    gw: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
    let (head, body) = req.into_parts();
    let ctx = RequestCtx::new(&head, &conn);
    let waits = waits_for_continue(&head);
    // Boxed once: the context then moves from the handler into the response body as a pointer,
    // not as ~400 bytes copied at every hand-over (measurable in profiles).
    let mut fin = Box::new(Finish {
        gw,
        ctx,
        conn: OpenRequest::new(conn),
        head,
    });
    // The body stays here until `upstream_request` takes it, so a refusal can discard it.
    let mut body = Some(body);
    async move {
        let outcome = pipeline(&mut fin, &mut body, waits).await;
        Ok(respond(fin, outcome, body, waits))
    }
}

/// The response to the client once the pipeline is done: the upstream's, or the error's.
fn respond(
    mut fin: Box<Finish>,
    outcome: Result<(Response<Incoming>, Lease), GatewayError>,
    body: Option<Incoming>,
    waits: bool,
) -> Response<ProxyBody> {
    if let Some(watch) = fin.ctx.watch() {
        // The head is ready: from now on the client has to take the response.
        watch.sending();
    }
    match outcome {
        Ok((resp, lease)) => {
            let (parts, body) = resp.into_parts();
            fin.ctx.responding(parts.status.as_u16());
            let idle = fin.ctx.body_idle();
            Response::from_parts(parts, ProxyBody::upstream(body, lease, idle, fin))
        }
        Err(err) => {
            // The answer may come before the body was read (a refusal from the head alone, a
            // body over the limit, an upstream that failed mid-upload): discard the rest so the
            // client gets to read the answer. A stalled or failed body has nothing more to come.
            let unread = match body {
                Some(body) => (!http_body::Body::is_end_stream(&body)).then_some(Unread {
                    body,
                    invited: !waits,
                }),
                None => fin.ctx.request_progress().and_then(|p| p.take_rest()),
            };
            if let Some(unread) = unread
                && !matches!(
                    err,
                    GatewayError::ClientBodyTimeout { .. }
                        | GatewayError::ClientBodyTooSlow { .. }
                        | GatewayError::ClientDisconnected
                )
            {
                // A refusal is >= 400: clients stop uploading when they see it, so its end
                // need not wait for the discard.
                let version = fin.ctx.exchange().version;
                let _ = linger::discard(&fin.gw, &fin.conn.0, version, unread);
            }
            error_response(fin, err)
        }
    }
}

async fn pipeline(
    fin: &mut Finish,
    body: &mut Option<Incoming>,
    waits: bool,
) -> Result<(Response<Incoming>, Lease), GatewayError> {
    let Finish {
        gw,
        ctx,
        conn,
        head: req,
    } = fin;
    let conn_arc = &conn.0;
    let conn: &ConnInfo = conn_arc;
    let (service, strip) = select_service(gw, ctx, req)?;
    ctx.routed(&service);
    network_rules(&service, ctx)?;
    early_reject(&service, req)?;
    ctx.authenticated(authenticate(&service, req).await?);
    rate_limit(&service, ctx)?;
    let (permit, waited) = service.limit.admit().await.inspect_err(|e| {
        if let GatewayError::QueueTimeout { waited } = e {
            ctx.left_queue(*waited);
        }
    })?;
    // From here on the request holds a slot: bound how long a client can keep it.
    let deadline = service
        .config
        .request_timeout
        .map(|d| d.saturating_sub(ctx.exchange().start.elapsed()));
    let watch = conn
        .watchdog
        .watch(Arc::clone(conn_arc), service.config.send_timeout, deadline);
    ctx.admitted(permit, waited, watch);
    let upstream_req = upstream_request(&service, ctx, conn, req, body, strip, waits)?;
    let (mut resp, lease) = forward(&service, ctx, upstream_req).await?;
    response_filter(ctx, &mut resp);
    Ok((resp, lease))
}

/// The client asked for `100 Continue` (HTTP/1.1 only; hyper's HTTP/2 server never sends it)
/// and will not send its body until hyper sends one, which it does when the body is first read.
fn waits_for_continue(req: &Parts) -> bool {
    req.version == Version::HTTP_11
        && req
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Settles who the client is, then finds the longest matching route; returns the service and the
/// length of the route prefix to strip. The route table snapshot is released here, not held
/// across the request's awaits; the service itself stays alive through its `Arc`.
fn select_service(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    req: &Parts,
) -> Result<(Arc<Service>, usize), GatewayError> {
    let state = gw.state();
    let limit = state.config.server.max_header_bytes;
    let size = head_size(req);
    if size > limit {
        return Err(GatewayError::HeadersTooLarge { size, limit });
    }
    let trusted = state.trusted_proxies();
    if !trusted.is_empty() {
        let peer = ctx.exchange().client_ip;
        let client = crate::admission::client_ip(
            peer,
            headers::forwarded_for(&req.headers).as_deref(),
            trusted,
        );
        ctx.client_identified(client, trusted.iter().any(|n| n.contains(&peer)));
    }
    let path = req.uri.path();
    if !headers::path_is_safe(path) {
        return Err(GatewayError::BadRequest(
            "the path must not contain dot segments or encoded slashes",
        ));
    }
    let (service, _) = state.route(path).ok_or(GatewayError::RouteNotFound)?;
    Ok((Arc::clone(service), service.config.route.len()))
}

/// The size of the request head as `max_header_bytes` counts it. HTTP/1.1: the request line and
/// the header lines as sent (`name: value` CRLF, then the empty line). HTTP/2: the header list
/// size of RFC 9113 §6.5.2 (every field, the pseudo-fields included, counts its name, its value
/// and 32).
pub fn head_size(req: &Parts) -> usize {
    let h = &req.headers;
    if req.version >= Version::HTTP_2 {
        let pseudo = [
            (":method".len(), req.method.as_str().len()),
            (":scheme".len(), req.uri.scheme_str().map_or(0, str::len)),
            (
                ":authority".len(),
                req.uri.authority().map_or(0, |a| a.as_str().len()),
            ),
            (
                ":path".len(),
                req.uri.path_and_query().map_or(1, |p| p.as_str().len()),
            ),
        ];
        let pseudo: usize = pseudo.iter().map(|(n, v)| n + v + 32).sum();
        return pseudo
            + h.iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 32)
                .sum::<usize>();
    }
    let target = match req.uri.path_and_query() {
        Some(pq) if req.uri.authority().is_none() => pq.as_str().len(),
        _ => req.uri.to_string().len(),
    };
    // "METHOD target HTTP/1.1\r\n", each "name: value\r\n", the final "\r\n".
    req.method.as_str().len()
        + 1
        + target
        + 11
        + h.iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
        + 2
}

/// `allow_cidrs`: refused before authentication, so a blocked network learns nothing more.
fn network_rules(service: &Service, ctx: &RequestCtx) -> Result<(), GatewayError> {
    let client = ctx.exchange().client_ip;
    if crate::admission::allowed(client, service.config.allow_cidrs.as_deref()) {
        Ok(())
    } else {
        Err(GatewayError::ClientNotAllowed)
    }
}

/// Per-caller token bucket, after authentication so the bucket belongs to the principal.
fn rate_limit(service: &Service, ctx: &RequestCtx) -> Result<(), GatewayError> {
    let Some(limiter) = &service.rate else {
        return Ok(());
    };
    limiter
        .check(
            crate::admission::BucketKey::of(&ctx.exchange().principal, ctx.exchange().client_ip),
            Instant::now(),
        )
        .map_err(|retry_after| GatewayError::RateLimited { retry_after })
}

/// Refuses what can be refused from the head alone, before any upstream contact.
fn early_reject(service: &Service, req: &Parts) -> Result<(), GatewayError> {
    let limit = service.config.max_body_bytes;
    if let Some(len) = req.headers.get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(GatewayError::BadRequest("invalid Content-Length"))?;
        if len > limit {
            return Err(GatewayError::BodyTooLarge { limit });
        }
    }
    Ok(())
}

async fn authenticate(service: &Service, req: &Parts) -> Result<Principal, GatewayError> {
    service
        .auth
        .authenticate(&req.headers)
        .await
        .map_err(GatewayError::Unauthenticated)
}

/// Builds the request sent upstream: same method, headers minus hop-by-hop (and credentials the
/// gateway consumed), forwarding headers, the request id, and the URI rewritten to the upstream
/// with the route prefix removed. `waits`: the client waits for `100 Continue` (read by `handle`).
fn upstream_request(
    service: &Service,
    ctx: &mut RequestCtx,
    conn: &ConnInfo,
    parts: &mut Parts,
    incoming: &mut Option<Incoming>,
    strip: usize,
    waits: bool,
) -> Result<Box<Request<RequestBody>>, GatewayError> {
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });

    headers::remove_hop_by_hop(&mut parts.headers);
    if service.config.auth != AuthMode::None {
        // The scoring container never sees the caller's key or token.
        parts.headers.remove(header::AUTHORIZATION);
    }
    // Only the gateway speaks for the caller's identity: whatever the auth mode, a client-sent
    // subject is dropped under every spelling a server might read as its name.
    let configured = service
        .config
        .token
        .as_ref()
        .and_then(|t| t.subject_header.as_ref());
    headers::remove_lookalikes(&mut parts.headers, &headers::X_SCOREGATE_SUBJECT);
    if let Some(name) = configured {
        if *name != headers::X_SCOREGATE_SUBJECT {
            headers::remove_lookalikes(&mut parts.headers, name);
        }
        if let Principal::Token { subject, .. } = &ctx.exchange().principal {
            // Verification refused subjects that are not valid header values (401).
            let value = HeaderValue::from_str(subject)
                .map_err(|_| GatewayError::Unauthenticated(AuthFailure::TokenClaims))?;
            parts.headers.insert(name.clone(), value);
        }
    }
    // A trusted proxy's chain is extended with the proxy itself; anyone else's is replaced.
    let trusted_chain = ctx
        .peer_trusted()
        .then(|| headers::forwarded_for(&parts.headers))
        .flatten();
    let forwarded_for = match trusted_chain {
        Some(mut chain) => {
            chain.push_str(", ");
            chain.push_str(conn.peer_header.to_str().unwrap_or_default());
            HeaderValue::from_str(&chain).unwrap_or_else(|_| conn.peer_header.clone())
        }
        None => conn.peer_header.clone(),
    };
    headers::set_forwarded(&mut parts.headers, forwarded_for, conn.tls, host);
    parts.headers.insert(
        headers::X_REQUEST_ID.clone(),
        ctx.exchange().request_id.clone(),
    );
    // W3C Trace Context: the gateway's span is the scoring container's parent.
    ctx.exchange()
        .trace
        .set_upstream_headers(&mut parts.headers);
    parts
        .headers
        .insert(header::HOST, service.host_header.clone());
    let uri = upstream_uri(&service.config.upstream, &parts.uri, strip)?;

    // Taken last: if anything above refuses the request, the caller still has the body.
    let body = match incoming.take() {
        Some(incoming) if !http_body::Body::is_end_stream(&incoming) => {
            let progress = Arc::new(Progress::new(incoming, waits));
            ctx.body_streaming(Arc::clone(&progress));
            RequestBody::Stream {
                limit: service.config.max_body_bytes,
                progress,
                idle: request_body::IdleTimer::new(service.config.body_idle_timeout),
                rate: request_body::MinRate::new(
                    service.config.min_body_rate,
                    service.config.min_body_rate_window,
                ),
            }
        }
        _ => RequestBody::Empty,
    };
    // Built in its box, from the head's parts (the head stays with the handler, emptied).
    let mut req = Box::new(Request::new(body));
    *req.method_mut() = std::mem::replace(&mut parts.method, http::Method::GET);
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = std::mem::take(&mut parts.headers);
    *req.extensions_mut() = std::mem::take(&mut parts.extensions);
    Ok(req)
}

/// The upstream request target (origin-form: the connection already names the upstream): its
/// base path, then the request path with the first `strip` bytes (the route prefix) removed,
/// then the query.
fn upstream_uri(
    upstream: &crate::config::Upstream,
    uri: &Uri,
    strip: usize,
) -> Result<Uri, GatewayError> {
    if strip == 0
        && upstream.base_path.is_empty()
        && let Some(pq) = uri.path_and_query()
    {
        // Sidecar route "/": the path and query go through unchanged, without a copy.
        return Ok(Uri::from(pq.clone()));
    }
    let path = uri.path();
    let rest = match path.get(strip..) {
        Some("") | None => "/",
        Some(rest) => rest,
    };
    let query = uri.query();
    let mut pq = String::with_capacity(
        upstream.base_path.len() + rest.len() + 1 + query.map_or(0, str::len),
    );
    pq.push_str(&upstream.base_path);
    pq.push_str(rest);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    PathAndQuery::try_from(pq)
        .map(Uri::from)
        .map_err(|_| GatewayError::BadRequest("path cannot be forwarded"))
}

/// Sends the request under the scoring timeout, which covers connecting and waiting for the
/// response headers; the body then streams without this deadline.
async fn forward(
    service: &Service,
    ctx: &mut RequestCtx,
    req: Box<Request<RequestBody>>,
) -> Result<(Response<Incoming>, Lease), GatewayError> {
    let started = Instant::now();
    let timeout = service.config.scoring_timeout;
    let result = tokio::time::timeout(timeout, service.upstream.send(req)).await;
    let elapsed = started.elapsed();
    let fault = ctx.request_progress().and_then(|p| p.fault());
    match result {
        Ok(Ok((resp, lease))) => {
            ctx.upstream_answered(resp.status().as_u16(), elapsed);
            Ok((resp, lease))
        }
        // A failure caused by the client's own body belongs to the client, whatever the
        // upstream client reports.
        Ok(Err(_)) if fault == Some(BodyFault::TooLarge) => Err(GatewayError::BodyTooLarge {
            limit: service.config.max_body_bytes,
        }),
        Ok(Err(_)) if fault == Some(BodyFault::ClientError) => {
            Err(GatewayError::ClientDisconnected)
        }
        Ok(Err(_)) if fault == Some(BodyFault::Idle) => Err(GatewayError::ClientBodyTimeout {
            after: service.config.body_idle_timeout,
        }),
        Ok(Err(_)) if fault == Some(BodyFault::TooSlow) => Err(GatewayError::ClientBodyTooSlow {
            min_rate: service.config.min_body_rate,
        }),
        Ok(Err(UpstreamError::Connect(e))) => Err(GatewayError::UpstreamConnect(e)),
        Ok(Err(UpstreamError::Http(e))) => {
            ctx.upstream_took(elapsed);
            Err(GatewayError::UpstreamProtocol(e))
        }
        Err(_) => {
            ctx.upstream_took(elapsed);
            Err(GatewayError::UpstreamTimeout { after: timeout })
        }
    }
}

fn response_filter(ctx: &RequestCtx, resp: &mut Response<Incoming>) {
    let h = resp.headers_mut();
    headers::remove_hop_by_hop(h);
    let x = ctx.exchange();
    headers::set_response_ids(h, &x.request_id, x.client_request_id.as_ref());
    set_refresh_after(ctx, h);
}

/// Token callers learn on every response when to fetch a new token.
fn set_refresh_after(ctx: &RequestCtx, h: &mut http::HeaderMap) {
    if let Principal::Token {
        refresh_after: Some(at),
        ..
    } = ctx.exchange().principal
    {
        h.insert(
            headers::X_TOKEN_REFRESH_AFTER.clone(),
            HeaderValue::from(at),
        );
    }
}

/// The JSON error response; the error itself moves into the context for the record and log.
fn error_response(mut fin: Box<Finish>, err: GatewayError) -> Response<ProxyBody> {
    let ctx = &mut fin.ctx;
    let x = ctx.exchange();
    let body = err.body(x.request_id.to_str().unwrap_or_default());
    let mut resp = Response::new(());
    *resp.status_mut() = err.status();
    let h = resp.headers_mut();
    headers::set_gateway_json(h);
    headers::set_response_ids(h, &x.request_id, x.client_request_id.as_ref());
    if let Some((name, value)) = err.extra_headers() {
        h.insert(name, value);
    }
    set_refresh_after(ctx, h);
    // `Connection` is an HTTP/1 header; HTTP/2 has no equivalent per-request close.
    if err.close_connection() && x.version < Version::HTTP_2 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    ctx.refused(err);
    let (parts, ()) = resp.into_parts();
    Response::from_parts(parts, ProxyBody::full(body, fin))
}
