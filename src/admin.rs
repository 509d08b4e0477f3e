//! The admin listener: HTTP/1.1, loopback by default, never serves scoring traffic; over TLS
//! with `[server.admin_tls]` (admin listener only: the probe and metrics listeners stay plain,
//! as kubelets and Prometheus expect; the handshake uses `tls_handshake_timeout_ms`). The
//! same handler serves two optional listeners that expose a fixed subset of it ([`Plane`]), so
//! the management API can stay on loopback while the kubelet and Prometheus reach their routes:
//!
//! | route | admin (`admin_listen`) | probe (`probe_listen`) | metrics (`metrics_listen`) |
//! |---|---|---|---|
//! | `GET /healthz`, `GET /livez` | no credential | no credential | — |
//! | `GET /readyz` | no credential | no credential | — |
//! | `GET /metrics` | `metrics/read` (or `public_metrics`) | — | no credential |
//! | management API (below) | credential and role | — | — |
//!
//! - `/healthz` (`/livez`): 200 while the process runs (liveness).
//! - `/readyz`: 200 once listeners are up and every upstream answered its health probe; 503
//!   otherwise and while draining, with per-service detail (names and health, nothing secret).
//! - `/metrics`: the Prometheus text format; no series carries a credential.
//! - the management API (`management`; callers from `auth::admin`, permissions from `policy`),
//!   each route behind one action:
//!   `GET /services` (`services/read`); `POST /services/{name}/listkeys`,
//!   `/services/{name}/regenerateKeys`, `/services/{name}/token`,
//!   `/services/{name}/rotateSigningKey` (their own actions, see `management`);
//!   `GET /activity?limit=N[&scope=fleet]` (`activity/read`); `POST /reload` (`config/reload`); `GET /roles`,
//!   `GET /role-assignments` (`roles/read`); `POST /role-assignments`,
//!   `DELETE /role-assignments/{id}` (`roles/assign`); `GET /cluster` (`cluster/read`: the
//!   cluster backend, etcd endpoint health, this instance and its applied revision, and the live
//!   replicas with theirs). A known path with another method is 405
//!   with `Allow`; anything else 404.
//!
//! On the probe and metrics listeners every other path is 404, and `admin_allow_cidrs` does not
//! apply (it guards the management API; restrict those ports with a network policy instead).
//! Every listener keeps answering during the drain (so orchestrators see 503 on `/readyz`) and
//! closes when background tasks stop.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;

mod management;

use crate::policy::{self, Action};
use management::{ApiError, ServiceOp};
use std::net::IpAddr;

use crate::telemetry::activity::{ActivityRecord, Outcome};
use crate::telemetry::sink::Keep;

/// Largest management request body read.
const MAX_BODY: usize = 64 * 1024;

pub type AdminResponse = Response<Full<Bytes>>;

/// Which listener a request arrived on, and so which routes it may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// `admin_listen`: every route; the management API needs a credential.
    Admin,
    /// `probe_listen`: liveness and readiness only, no credential.
    Probe,
    /// `metrics_listen`: `GET /metrics` only, no credential.
    Metrics,
}

impl Plane {
    /// Whether `route` is served on this plane at all (otherwise 404, as for an unknown path).
    const fn serves(self, route: Route<'_>) -> bool {
        match self {
            Self::Admin => true,
            Self::Probe => matches!(route, Route::Healthz | Route::Readyz),
            Self::Metrics => matches!(route, Route::Metrics),
        }
    }
}

pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, stop: CancellationToken, plane: Plane) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                gw.metrics.accept_errors.inc();
                tracing::warn!(error = %e, "admin accept failed; backing off");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Read per connection, so a reload that adds, removes or replaces `[server.admin_tls]`
        // applies to the next connection.
        let (tls, handshake_timeout) = {
            let state = gw.state();
            let tls = state.admin_tls.clone().filter(|_| plane == Plane::Admin);
            (tls, state.config.server.tls_handshake_timeout)
        };
        let (gw, http, stop) = (Arc::clone(&gw), http.clone(), stop.clone());
        tokio::spawn(async move {
            let served = async {
                let Some(config) = tls else {
                    return serve_connection(&http, TokioIo::new(stream), gw, plane, peer).await;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        serve_connection(&http, TokioIo::new(tls), gw, plane, peer).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                }
            };
            tokio::select! {
                () = served => {},
                () = stop.cancelled() => {}
            }
        });
    }
}

/// Serves one admin connection (plain or TLS) until it ends.
async fn serve_connection<I>(
    http: &hyper::server::conn::http1::Builder,
    io: I,
    gw: Arc<Gateway>,
    plane: Plane,
    peer: std::net::SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let gw = Arc::clone(&gw);
        async move { Ok::<_, Infallible>(handle(&gw, plane, peer.ip().to_canonical(), req).await) }
    });
    if let Err(e) = http.serve_connection(io, service).await {
        tracing::debug!(%peer, error = %e, "admin connection error");
    }
}

async fn handle(
    gw: &Arc<Gateway>,
    plane: Plane,
    peer: IpAddr,
    req: Request<Incoming>,
) -> AdminResponse {
    let request_id = crate::proxy::headers::request_id(req.headers());
    let rid = request_id.to_str().unwrap_or_default().to_owned();
    let path = req.uri().path().to_owned();
    // Network rules come before anything else on the admin listener, probes included.
    let admitted =
        plane != Plane::Admin || crate::admission::allowed(peer, gw.state().admin_allow_cidrs());
    let parsed = if admitted {
        Route::parse(req.method(), &path).and_then(|route| {
            if plane.serves(route) {
                Ok(route)
            } else {
                Err(ApiError::RouteNotFound)
            }
        })
    } else {
        Err(ApiError::ClientNotAllowed)
    };
    let mut resp = match parsed {
        // The probe and metrics planes serve only routes that need no credential there.
        Ok(route) if plane != Plane::Admin => {
            unauthenticated(gw, route).unwrap_or_else(|e| e.response(&request_id))
        }
        Ok(route) => dispatch(
            gw,
            &Caller {
                ip: peer,
                request_id: rid,
            },
            route,
            req,
        )
        .await
        .unwrap_or_else(|e| e.response(&request_id)),
        Err(e) => e.response(&request_id),
    };
    resp.headers_mut()
        .insert(crate::proxy::headers::X_REQUEST_ID.clone(), request_id);
    resp
}

/// Where a management call came from, for the activity log.
struct Caller {
    ip: IpAddr,
    request_id: String,
}

/// Every admin route, with the action it requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'p> {
    Healthz,
    Readyz,
    Metrics,
    Activity,
    Reload,
    Services,
    Service { name: &'p str, op: ServiceOp },
    Roles,
    Assignments,
    Assign,
    Unassign { id: &'p str },
    Cluster,
}

impl<'p> Route<'p> {
    /// Whether successful calls are written to the activity log (reads of the log and of
    /// metrics are not; refusals of any protected route always are).
    const fn audited(self) -> bool {
        matches!(
            self,
            Self::Service { .. } | Self::Assign | Self::Unassign { .. }
        )
    }

    fn parse(method: &Method, path: &'p str) -> Result<Self, ApiError> {
        let allowed: &[(Method, Self)] = &match path {
            "/healthz" | "/livez" => vec![(Method::GET, Self::Healthz)],
            "/readyz" => vec![(Method::GET, Self::Readyz)],
            "/metrics" => vec![(Method::GET, Self::Metrics)],
            "/activity" => vec![(Method::GET, Self::Activity)],
            "/reload" => vec![(Method::POST, Self::Reload)],
            "/services" => vec![(Method::GET, Self::Services)],
            "/roles" => vec![(Method::GET, Self::Roles)],
            "/cluster" => vec![(Method::GET, Self::Cluster)],
            "/role-assignments" => vec![
                (Method::GET, Self::Assignments),
                (Method::POST, Self::Assign),
            ],
            _ => match path.strip_prefix("/role-assignments/") {
                Some(id) if !id.is_empty() && !id.contains('/') => {
                    vec![(Method::DELETE, Self::Unassign { id })]
                }
                _ => {
                    let (name, op) = service_route(path).ok_or(ApiError::RouteNotFound)?;
                    vec![(Method::POST, Self::Service { name, op })]
                }
            },
        };
        allowed
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, route)| *route)
            .ok_or_else(|| {
                let methods: Vec<&str> = allowed.iter().map(|(m, _)| m.as_str()).collect();
                ApiError::MethodNotAllowed(methods.join(", "))
            })
    }

    /// The permission the route needs; `None` for the unauthenticated probes.
    fn action(self, gw: &Gateway) -> Option<Action> {
        match self {
            Self::Healthz | Self::Readyz => None,
            Self::Metrics => {
                (!gw.state().config.server.public_metrics).then_some(Action::MetricsRead)
            }
            Self::Activity => Some(Action::ActivityRead),
            Self::Reload => Some(Action::ConfigReload),
            Self::Services => Some(Action::ServicesRead),
            Self::Service { op, .. } => Some(op.action()),
            Self::Roles | Self::Assignments => Some(Action::RolesRead),
            Self::Assign | Self::Unassign { .. } => Some(Action::RolesAssign),
            Self::Cluster => Some(Action::ClusterRead),
        }
    }

    const fn operation(self) -> &'static str {
        match self {
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Metrics => "readMetrics",
            Self::Activity => "readActivity",
            Self::Reload => "reloadConfig",
            Self::Services => "listServices",
            Self::Service { op, .. } => op.operation(),
            Self::Roles => "listRoles",
            Self::Assignments => "listRoleAssignments",
            Self::Assign => "assignRole",
            Self::Unassign { .. } => "removeRoleAssignment",
            Self::Cluster => "readCluster",
        }
    }

    const fn service(self) -> Option<&'p str> {
        match self {
            Self::Service { name, .. } => Some(name),
            Self::Healthz
            | Self::Readyz
            | Self::Metrics
            | Self::Activity
            | Self::Reload
            | Self::Services
            | Self::Roles
            | Self::Assignments
            | Self::Assign
            | Self::Unassign { .. }
            | Self::Cluster => None,
        }
    }
}

/// Authenticates and authorizes (recording refusals), then runs the route.
async fn dispatch(
    gw: &Arc<Gateway>,
    caller: &Caller,
    route: Route<'_>,
    req: Request<Incoming>,
) -> Result<AdminResponse, ApiError> {
    let Some(action) = route.action(gw) else {
        return unauthenticated(gw, route);
    };
    let entry = |initiator: &str, outcome| {
        let mut e = ActivityRecord::new(route.operation(), initiator, outcome)
            .source(caller.ip, caller.request_id.clone());
        if let Some(s) = route.service() {
            e = e.service(s);
        }
        e
    };
    let state = gw.state_full();
    let principal = match state
        .admin
        .authenticate(req.headers(), state.identity.as_ref())
        .await
    {
        Ok(p) => p,
        Err(failure) => {
            gw.activity.record(
                entry(crate::telemetry::activity::ANONYMOUS, Outcome::Denied)
                    .reason(failure.reason()),
                Keep::IfRoom,
            );
            return Err(ApiError::Unauthenticated(failure));
        }
    };
    // An operation that changes state or reveals secrets runs only once its activity entry has
    // a place in the record stream (a stalled sink refuses it instead: no unaudited change).
    // Reads and metrics do not wait for the sink, so a stall stays observable.
    let slot = if route.audited() || matches!(route, Route::Reload) {
        Some(
            gw.activity
                .reserve()
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, operation = route.operation(), "management operation refused: its activity entry cannot be recorded");
                    ApiError::ActivityStalled
                })?,
        )
    } else {
        None
    };
    let keep = |slot: Option<_>| slot.map_or(Keep::IfRoom, Keep::Reserved);
    if let Err(missing) = policy::authorize(
        &principal,
        action,
        route.service(),
        state.policy(),
        &state.assignments,
    ) {
        gw.activity.record(
            entry(&principal.id, Outcome::Denied)
                .reason(format!("missing permission {}", missing.as_str())),
            keep(slot),
        );
        return Err(ApiError::Forbidden(missing));
    }
    let result = run_route(gw, &state, caller, &principal, route, req).await;
    if route.audited() {
        let outcome = match &result {
            Ok(_) => entry(&principal.id, Outcome::Succeeded),
            // A permission the operation needs beyond the route's own (`services/keys/set`).
            Err(ApiError::Forbidden(missing)) => entry(&principal.id, Outcome::Denied)
                .reason(format!("missing permission {}", missing.as_str())),
            Err(e) => entry(&principal.id, Outcome::Failed).reason(e.code()),
        };
        gw.activity.record(outcome, keep(slot));
    }
    result
}

/// Runs an authorized route for `principal`.
async fn run_route(
    gw: &Arc<Gateway>,
    state: &Arc<crate::runtime::RuntimeState>,
    caller: &Caller,
    principal: &policy::AdminPrincipal,
    route: Route<'_>,
    req: Request<Incoming>,
) -> Result<AdminResponse, ApiError> {
    match route {
        Route::Metrics => Ok(metrics(gw)),
        Route::Activity => activity(gw, req.uri().query()).await,
        Route::Services => Ok(services(gw)),
        Route::Roles => Ok(json(
            StatusCode::OK,
            serde_json::to_vec(&state.policy().roles).unwrap_or_default(),
        )),
        Route::Assignments => {
            let mut all = state.policy().assignments.clone();
            all.extend(state.assignments.iter().cloned());
            Ok(json(
                StatusCode::OK,
                serde_json::to_vec(&all).unwrap_or_default(),
            ))
        }
        Route::Assign => {
            let body = read_body(req).await?;
            management::assign_role(gw, state, &body).await
        }
        Route::Unassign { id } => management::remove_assignment(gw, state, id).await,
        Route::Cluster => Ok(cluster(gw).await),
        // A reload writes its own activity entry (it also runs for signals and file changes).
        Route::Reload => gw
            .applier
            .reload(&principal.id, Some((caller.ip, caller.request_id.clone())))
            .await
            .map(|summary| {
                json(
                    StatusCode::OK,
                    serde_json::to_vec(&summary).unwrap_or_default(),
                )
            })
            .map_err(|e| ApiError::ReloadRejected(e.to_string())),
        Route::Service { name, op } => {
            let body = read_body(req).await?;
            let holds = |extra: Action| {
                policy::authorize(
                    principal,
                    extra,
                    route.service(),
                    state.policy(),
                    &state.assignments,
                )
                .is_ok()
            };
            management::service_op(gw, principal, &holds, name, op, body).await
        }
        Route::Healthz | Route::Readyz => Err(ApiError::RouteNotFound),
    }
}

/// Answers a route that needs no credential: the probes, and `/metrics` where it is public.
/// Any other route is not served this way.
fn unauthenticated(gw: &Gateway, route: Route<'_>) -> Result<AdminResponse, ApiError> {
    match route {
        Route::Healthz => Ok(json(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())),
        Route::Readyz => Ok(readyz(gw)),
        Route::Metrics => Ok(metrics(gw)),
        _ => Err(ApiError::RouteNotFound),
    }
}

/// `/services/{name}/{op}` → (name, op).
fn service_route(path: &str) -> Option<(&str, ServiceOp)> {
    let rest = path.strip_prefix("/services/")?;
    let (name, op) = rest.split_once('/')?;
    Some((name, ServiceOp::parse(op)?))
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    use http_body_util::{BodyExt, Limited};
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|_| {
            ApiError::InvalidRequest(format!("request body unreadable or over {MAX_BODY} bytes"))
        })
}

/// `GET /services`: what is configured and how it is doing (no secrets).
fn services(gw: &Gateway) -> AdminResponse {
    let state = gw.state();
    let list: Vec<serde_json::Value> = state
        .services()
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.config.name,
                "route": if s.config.route.is_empty() { "/" } else { s.config.route.as_str() },
                "upstream": s.config.upstream.to_string(),
                "authMode": s.config.auth.as_str(),
                "healthy": s.is_healthy(),
                "maxConcurrentRequests": s.config.max_concurrent_requests,
                "waiting": s.limit.waiting(),
            })
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::to_vec(&list).unwrap_or_default(),
    )
}

fn metrics(gw: &Gateway) -> AdminResponse {
    refresh_scrape_gauges(gw);
    let mut resp = Response::new(Full::new(Bytes::from(gw.metrics.render())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// Gauges read from live state when scraped, instead of being kept current on the request path:
/// each service's wait queue and slots, and the certificate new handshakes get.
fn refresh_scrape_gauges(gw: &Gateway) {
    let state = gw.state();
    for s in state.services() {
        if let Some(gauge) = &s.metrics.queue_length {
            gauge.set(i64::try_from(s.limit.waiting()).unwrap_or(i64::MAX));
        }
        if let Some(gauge) = &s.metrics.slots {
            gauge.set(i64::try_from(s.config.max_concurrent_requests).unwrap_or(i64::MAX));
        }
    }
    let expiry = state
        .cert
        .as_ref()
        .and_then(|key| key.cert.first())
        .and_then(|leaf| crate::tls::not_after(leaf));
    if let Some(expiry) = expiry {
        gw.metrics
            .certificate_expiry
            .with_label_values(&["scoring"])
            .set(expiry);
        // A certificate file can be replaced (and rejected) only when there is one; the error
        // series exists from then on, so `increase()` sees the first failure.
        gw.metrics.certificate_reloads.with_label_values(&["error"]);
    }
}

/// `GET /activity?limit=N` (default 100, at most the ring's capacity); with `scope=fleet` in
/// fleet mode, the newest management writes of every replica from etcd (503
/// `cluster_unavailable` when etcd cannot be read).
async fn activity(gw: &Gateway, query: Option<&str>) -> Result<AdminResponse, ApiError> {
    let param = |name: &str| {
        query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    };
    let limit = param("limit")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(100)
        .min(crate::telemetry::activity::RING_CAPACITY);
    if param("scope") == Some("fleet")
        && let Some(cluster) = gw.applier.cluster()
    {
        let entries = crate::cluster::trail::recent(cluster, limit)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "reading the fleet's activity trail failed");
                ApiError::ClusterUnavailable
            })?;
        return Ok(json(
            StatusCode::OK,
            serde_json::to_vec(&entries).unwrap_or_default(),
        ));
    }
    let entries = gw.activity.recent(limit);
    Ok(json(
        StatusCode::OK,
        serde_json::to_vec(&entries).unwrap_or_default(),
    ))
}

/// `GET /cluster` (see `cluster::View`).
async fn cluster(gw: &Gateway) -> AdminResponse {
    let view = crate::cluster::view(gw.applier.cluster()).await;
    json(
        StatusCode::OK,
        serde_json::to_vec(&view).unwrap_or_default(),
    )
}

fn readyz(gw: &Gateway) -> AdminResponse {
    #[derive(serde::Serialize)]
    struct Ready<'a> {
        status: &'static str,
        listening: bool,
        draining: bool,
        services: Vec<ServiceHealth<'a>>,
    }
    #[derive(serde::Serialize)]
    struct ServiceHealth<'a> {
        name: &'a str,
        healthy: bool,
    }
    let state = gw.state();
    let ready = gw.is_ready();
    let body = Ready {
        status: if ready { "ready" } else { "not_ready" },
        listening: gw.lifecycle.is_listening(),
        draining: gw.lifecycle.is_draining(),
        services: state
            .services()
            .iter()
            .map(|s| ServiceHealth {
                name: &s.config.name,
                healthy: s.is_healthy(),
            })
            .collect(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, serde_json::to_vec(&body).unwrap_or_default())
}

pub fn json(status: StatusCode, body: Vec<u8>) -> AdminResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    crate::proxy::headers::set_gateway_json(resp.headers_mut());
    resp
}
