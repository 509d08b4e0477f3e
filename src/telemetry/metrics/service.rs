//! [`ServiceMetrics`]: one service's series (or the unrouted requests'), resolved once.
//!
//! What exists for a service depends on what can happen to it:
//!
//! | series | pre-created | created at first use |
//! |---|---|---|
//! | `requests_total{method,status_class}` | `POST` 2xx and 5xx | any other method × class |
//! | `request_duration_seconds{status_class}` | — | each class |
//! | `upstream_duration_seconds`, `queue_wait_seconds` | — | first forward / first admission |
//! | `admission_rejections_total{reason}`, `auth_failures_total{reason}` | — | each reason |
//! | `inflight_requests`, `queue_length`, `upstream_slots` | yes | — |
//! | `key_auth_total{slot}`, `key_reloads_total{result="error"}` | key mode only | `success` |
//! | `token_cache_total{result}`, `signing_key_reloads_total{result="error"}` | token mode only | `success` |
//!
//! Error counters that alerts watch with `increase()` are pre-created: an increment that creates
//! a series is invisible to `increase()`.
//!
//! Requests that match no service (`service="-"`) get only `requests_total` and
//! `request_duration_seconds`: nothing else can happen to them. A handle created at first use is
//! kept in a `OnceLock`, so after the first time the request path loads one pointer, as for a
//! pre-created one.

use std::sync::OnceLock;

use http::Method;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge};

use super::{Metrics, UNROUTED};
use crate::auth::KeySlot;
use crate::error::{AuthFailure, GatewayError};

/// Methods get their own label value; anything else is counted as `OTHER` so a client cannot
/// inflate cardinality with invented methods.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "OTHER",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// The `reason` values of `scoregate_admission_rejections_total`.
const ADMISSION_REASONS: [&str; 5] = [
    "queue_full",
    "queue_wait_exceeded",
    "rate_limited",
    "body_too_large",
    "cidr_denied",
];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

fn status_class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// The admission-control refusal an error is, as an index into [`ADMISSION_REASONS`].
const fn admission_index(err: &GatewayError) -> Option<usize> {
    match err {
        GatewayError::QueueFull { .. } => Some(0),
        GatewayError::QueueTimeout { .. } => Some(1),
        GatewayError::RateLimited { .. } => Some(2),
        GatewayError::BodyTooLarge { .. } => Some(3),
        GatewayError::ClientNotAllowed => Some(4),
        _ => None,
    }
}

/// The families a service's lazily created series come from.
#[derive(Debug, Clone)]
struct Families {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    queue_wait: HistogramVec,
    admission: IntCounterVec,
    auth_failures: IntCounterVec,
}

/// Handles for one service (or for unrouted requests). See the module documentation for which
/// series exist when. A clone shares the series (handles created at first use so far included).
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    service: Box<str>,
    families: Families,
    requests: [[OnceLock<IntCounter>; 5]; 8],
    duration: [OnceLock<Histogram>; 5],
    upstream_duration: OnceLock<Histogram>,
    queue_wait: OnceLock<Histogram>,
    admission: [OnceLock<IntCounter>; 5],
    auth_failures: [OnceLock<IntCounter>; AuthFailure::ALL.len()],
    /// Requests of this service in progress (unrouted: a gauge outside the registry).
    pub inflight: IntGauge,
    /// Requests waiting for a slot, set when `/metrics` is scraped (`None` when unrouted).
    pub queue_length: Option<IntGauge>,
    /// `max_concurrent_requests`, set when `/metrics` is scraped (`None` when unrouted).
    pub slots: Option<IntGauge>,
    /// Key mode only; indexed by `KeySlot` (primary, secondary).
    key_auth: Option<[IntCounter; 2]>,
    /// `scoregate_token_cache_total{result="hit"|"miss"}` (handed to the token authority).
    /// Token mode: registered counters; other modes: counters outside the registry (no series
    /// may claim a token cache exists).
    pub token_cache_hit: IntCounter,
    pub token_cache_miss: IntCounter,
}

impl ServiceMetrics {
    /// Handles for `service` in `auth_mode` (`"key"`, `"token"` or `"none"`); the name
    /// [`UNROUTED`] gets the unrouted requests' handles.
    pub fn new(metrics: &Metrics, service: &str, auth_mode: &str) -> Self {
        let routed = service != UNROUTED;
        let this = Self {
            service: service.into(),
            families: Families {
                requests: metrics.requests.clone(),
                request_duration: metrics.request_duration.clone(),
                upstream_duration: metrics.upstream_duration.clone(),
                queue_wait: metrics.queue_wait.clone(),
                admission: metrics.admission_rejections.clone(),
                auth_failures: metrics.auth_failures.clone(),
            },
            requests: Default::default(),
            duration: Default::default(),
            upstream_duration: OnceLock::new(),
            queue_wait: OnceLock::new(),
            admission: Default::default(),
            auth_failures: Default::default(),
            inflight: if routed {
                metrics.inflight.with_label_values(&[service])
            } else {
                detached_gauge()
            },
            queue_length: routed.then(|| metrics.queue_length.with_label_values(&[service])),
            slots: routed.then(|| metrics.upstream_slots.with_label_values(&[service])),
            key_auth: (routed && auth_mode == "key").then(|| {
                ["primary", "secondary"]
                    .map(|slot| metrics.key_auth.with_label_values(&[service, slot]))
            }),
            token_cache_hit: token_counter(metrics, routed && auth_mode == "token", service, "hit"),
            token_cache_miss: token_counter(
                metrics,
                routed && auth_mode == "token",
                service,
                "miss",
            ),
        };
        if routed {
            // Scoring calls are POSTs: their success and server-error counts exist from the
            // start, so ratios and alerts see the first error.
            for class in [1, 4] {
                this.request_counter(1, class);
            }
            let reloads = match auth_mode {
                "key" => Some(&metrics.key_reloads),
                "token" => Some(&metrics.signing_key_reloads),
                _ => None,
            };
            if let Some(family) = reloads {
                family.with_label_values(&[service, "error"]);
            }
        }
        this
    }

    fn request_counter(&self, method: usize, class: usize) -> &IntCounter {
        self.requests[method][class].get_or_init(|| {
            self.families.requests.with_label_values(&[
                &*self.service,
                METHODS[method],
                STATUS_CLASSES[class],
            ])
        })
    }

    pub fn count_request(&self, method: &Method, status: u16) {
        self.request_counter(method_index(method), status_class_index(status))
            .inc();
    }

    /// The whole request, by the status class the client saw.
    pub fn observe_duration(&self, status: u16, seconds: f64) {
        let class = status_class_index(status);
        self.duration[class]
            .get_or_init(|| {
                self.families
                    .request_duration
                    .with_label_values(&[&*self.service, STATUS_CLASSES[class]])
            })
            .observe(seconds);
    }

    pub fn observe_upstream_duration(&self, seconds: f64) {
        self.upstream_duration
            .get_or_init(|| {
                self.families
                    .upstream_duration
                    .with_label_values(&[&*self.service])
            })
            .observe(seconds);
    }

    pub fn observe_queue_wait(&self, seconds: f64) {
        self.queue_wait
            .get_or_init(|| {
                self.families
                    .queue_wait
                    .with_label_values(&[&*self.service])
            })
            .observe(seconds);
    }

    pub fn count_key_auth(&self, slot: KeySlot) {
        if let Some(counters) = &self.key_auth {
            counters[match slot {
                KeySlot::Primary => 0,
                KeySlot::Secondary => 1,
            }]
            .inc();
        }
    }

    pub fn count_auth_failure(&self, failure: AuthFailure) {
        let i = failure.index();
        if let Some(cell) = self.auth_failures.get(i) {
            cell.get_or_init(|| {
                self.families
                    .auth_failures
                    .with_label_values(&[&*self.service, failure.reason()])
            })
            .inc();
        }
    }

    /// Counts `err` in `scoregate_admission_rejections_total` if it is an admission refusal;
    /// returns whether it was.
    pub fn count_admission_rejection(&self, err: &GatewayError) -> bool {
        let Some(i) = admission_index(err) else {
            return false;
        };
        self.admission[i]
            .get_or_init(|| {
                self.families
                    .admission
                    .with_label_values(&[&*self.service, ADMISSION_REASONS[i]])
            })
            .inc();
        true
    }
}

/// A token cache counter: registered for a token-mode service, detached otherwise.
fn token_counter(metrics: &Metrics, token_mode: bool, service: &str, result: &str) -> IntCounter {
    if token_mode {
        metrics.token_cache.with_label_values(&[service, result])
    } else {
        detached_counter()
    }
}

/// A counter outside every registry: counts, but is never exported.
fn detached_counter() -> IntCounter {
    IntCounter::new("detached", "not exported").expect("static metric definition")
}

fn detached_gauge() -> IntGauge {
    IntGauge::new("detached", "not exported").expect("static metric definition")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_cover_odd_codes() {
        assert_eq!(status_class_index(99), 0);
        assert_eq!(status_class_index(499), 3);
        assert_eq!(status_class_index(599), 4);
        assert_eq!(status_class_index(999), 4);
    }

    #[test]
    fn every_admission_reason_has_its_error() {
        use std::time::Duration;
        let errors = [
            GatewayError::QueueFull { limit: 1 },
            GatewayError::QueueTimeout {
                waited: Duration::ZERO,
            },
            GatewayError::RateLimited {
                retry_after: Duration::ZERO,
            },
            GatewayError::BodyTooLarge { limit: 1 },
            GatewayError::ClientNotAllowed,
        ];
        for (i, err) in errors.iter().enumerate() {
            assert_eq!(admission_index(err), Some(i), "{err}");
        }
        assert_eq!(admission_index(&GatewayError::RouteNotFound), None);
    }
}
