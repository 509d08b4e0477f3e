//! [`RequestCtx`]: one request from its arrival to the end of its response.
//!
//! Its fields are private. The pipeline moves it through transitions, in the order a request
//! meets them (`client_identified`, `routed`, `authenticated`, `admitted`, `body_streaming`,
//! `upstream_answered`, `responding` or `refused`, `sent`, `completed`, `failed`), and
//! [`RequestCtx::settle`], called once by the request's `Finish` guard, decides the outcome of a
//! request that ended early (client gone, watchdog fired) and gives back its upstream slot.
//! Telemetry then reads the settled [`Exchange`] and decides nothing.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header;
use http::request::Parts;
use prometheus::IntGauge;
use tokio::sync::OwnedSemaphorePermit;

use super::ConnInfo;
use super::headers;
use super::watchdog::Watch;
use crate::auth::Principal;
use crate::error::GatewayError;
use crate::runtime::Service;
use crate::telemetry::request_log::{Exchange, ServiceFacts};
use crate::telemetry::trace::TraceContext;
use crate::upstream::body::Progress;

/// A routed request's hold on its service: counted in `scoregate_inflight_requests` from routing
/// on, and holding an upstream slot from admission until the response is done. Dropping it gives
/// both back, whichever way the request ends.
#[derive(Debug)]
struct InFlight {
    gauge: IntGauge,
    permit: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self {
            gauge: gauge.clone(),
            permit: None,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Everything known about one request, from arrival to the end of its response.
#[derive(Debug)]
pub struct RequestCtx {
    /// What telemetry reads once the request is settled.
    x: Exchange,
    /// The peer is a trusted proxy, so its `X-Forwarded-For` chain is extended, not replaced.
    peer_trusted: bool,
    /// From routing to the end of the response.
    in_flight: Option<InFlight>,
    /// Enforces `send_timeout_ms` and `request_timeout_ms` from admission on.
    watch: Option<Arc<Watch>>,
    /// Shared with the request body while it streams upstream.
    request_progress: Option<Arc<Progress>>,
    /// Response headers were produced (the client may have seen the status).
    response_started: bool,
    /// The last response byte was handed to hyper.
    response_complete: bool,
    /// The routed service's `body_idle_timeout_ms` (60 s before routing).
    body_idle: Duration,
}

impl RequestCtx {
    pub(super) fn new(req: &Parts, conn: &ConnInfo) -> Self {
        let h = &req.headers;
        Self {
            x: Exchange {
                request_id: headers::request_id(h),
                client_request_id: h.get(&headers::X_MS_CLIENT_REQUEST_ID).cloned(),
                trace: TraceContext::from_headers(h),
                start: Instant::now(),
                start_wall: SystemTime::now(),
                method: req.method.clone(),
                version: req.version,
                url: req.uri.path_and_query().cloned(),
                user_agent: h.get(header::USER_AGENT).cloned(),
                host: h.get(header::HOST).cloned(),
                client_ip: conn.peer.ip(),
                service: None,
                principal: Principal::Anonymous,
                status: 0,
                upstream_status: None,
                upstream_duration: None,
                queue_wait: None,
                request_bytes: 0,
                response_bytes: 0,
                error: None,
            },
            peer_trusted: false,
            in_flight: None,
            watch: None,
            request_progress: None,
            response_started: false,
            response_complete: false,
            body_idle: Duration::from_secs(60),
        }
    }

    /// The request as known so far; final once the request has been settled.
    pub fn exchange(&self) -> &Exchange {
        &self.x
    }

    pub(super) fn peer_trusted(&self) -> bool {
        self.peer_trusted
    }

    pub(super) fn watch(&self) -> Option<&Arc<Watch>> {
        self.watch.as_ref()
    }

    pub(super) fn request_progress(&self) -> Option<&Arc<Progress>> {
        self.request_progress.as_ref()
    }

    /// How long the upstream's response body may stall (the routed service's
    /// `body_idle_timeout_ms`).
    pub(super) fn body_idle(&self) -> Duration {
        self.body_idle
    }

    /// A trusted proxy forwarded the request: `ip` is the client it names.
    pub(super) fn client_identified(&mut self, ip: IpAddr, peer_trusted: bool) {
        self.x.client_ip = ip;
        self.peer_trusted = peer_trusted;
    }

    /// The request belongs to `service` and counts as in flight there until it ends.
    pub(super) fn routed(&mut self, service: &Arc<Service>) {
        self.in_flight = Some(InFlight::new(&service.metrics.inflight));
        self.body_idle = service.config.body_idle_timeout;
        self.x.service = Some(Arc::clone(service) as Arc<dyn ServiceFacts>);
    }

    pub(super) fn authenticated(&mut self, principal: Principal) {
        self.x.principal = principal;
    }

    /// The request waited `waited` in the queue and left it without a slot.
    pub(super) fn left_queue(&mut self, waited: Duration) {
        self.x.queue_wait = Some(waited);
    }

    /// The request holds an upstream slot after waiting `waited` for it; `watch` bounds how long
    /// the client may keep it.
    pub(super) fn admitted(
        &mut self,
        permit: OwnedSemaphorePermit,
        waited: Duration,
        watch: Arc<Watch>,
    ) {
        self.x.queue_wait = Some(waited);
        if let Some(hold) = &mut self.in_flight {
            hold.permit = Some(permit);
        }
        self.watch = Some(watch);
    }

    /// The request body streams upstream through `progress`.
    pub(super) fn body_streaming(&mut self, progress: Arc<Progress>) {
        self.request_progress = Some(progress);
    }

    /// The upstream answered with `status` (its head) after `took`.
    pub(super) fn upstream_answered(&mut self, status: u16, took: Duration) {
        self.x.upstream_status = Some(status);
        self.x.upstream_duration = Some(took);
    }

    /// The upstream had the request for `took` and then failed or timed out.
    pub(super) fn upstream_took(&mut self, took: Duration) {
        self.x.upstream_duration = Some(took);
    }

    /// The response head with `status` goes to the client.
    pub(super) fn responding(&mut self, status: u16) {
        self.x.status = status;
        self.response_started = true;
    }

    /// The gateway answers with `err` itself (its JSON error response).
    pub(super) fn refused(&mut self, err: GatewayError) {
        self.responding(err.status().as_u16());
        self.x.error = Some(err);
    }

    /// The response failed after its head went out; only the record learns why.
    pub(super) fn failed(&mut self, err: GatewayError) {
        self.x.error = Some(err);
    }

    /// `n` more response body bytes went to the client.
    pub(super) fn sent(&mut self, n: u64) {
        self.x.response_bytes += n;
    }

    /// The last response byte was handed to hyper.
    pub(super) fn completed(&mut self) {
        self.response_complete = true;
    }

    /// The one place the outcome is decided, when the request has ended (once, from `Finish`):
    /// a watchdog that fired says why the connection was closed; a request dropped before any
    /// response existed, or whose body did not finish, lost its client. Gives back the upstream
    /// slot and the in-flight count.
    pub(super) fn settle(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.finished();
            if let Some(stalled) = watch.fired() {
                self.x.error = Some(stalled);
            }
        }
        if !self.response_started {
            // hyper dropped the request before any response existed: the client went away, or
            // the watchdog closed its connection (and said why).
            let err = self
                .x
                .error
                .take()
                .unwrap_or(GatewayError::ClientDisconnected);
            self.x.status = err.status().as_u16();
            self.x.error = Some(err);
        } else if !self.response_complete && self.x.error.is_none() {
            // The status went out but the body did not finish: the client went away mid-response.
            self.x.error = Some(GatewayError::ClientDisconnected);
        }
        self.x.request_bytes = self.request_progress.as_ref().map_or(0, |p| p.bytes());
        self.in_flight = None;
    }
}
