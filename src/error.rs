//! `GatewayError`: every failure the gateway itself answers, its HTTP status, the side at fault and
//! the small JSON body the client sees.
//!
//! This module decides *how* an outcome maps to a response; it does not log and does not count.
//! `telemetry::request_log::finish` and the admin handlers do that with the fixed `code()` string, so metrics labels
//! and client bodies share one vocabulary. The mapping functions are exhaustive matches with no
//! wildcard arm: a new variant does not compile until someone decides its status, side and code.

use std::time::Duration;

/// A boxed error from below the gateway (hyper, the upstream connector), kept as a source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

/// Who caused a failure. Recorded so operators can tell "our callers are wrong" from "our model is
/// down" at a glance (pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Auth,
    Capacity,
    Upstream,
    Internal,
}

/// Why authentication failed. Kept coarse on purpose: the client learns only this stable code
/// (and, for tokens, a short RFC 6750 `error_description`), never which byte of a credential was
/// wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header, or not the `Bearer` scheme.
    Missing,
    /// A bearer credential that matches nothing this service accepts (key mode).
    Invalid,
    /// Token mode: over the size limit, checked before any parsing.
    TokenTooLarge,
    /// Token mode: not a well-formed JWS compact token, or no `kid`.
    TokenMalformed,
    /// Token mode: the `kid` names no key this service trusts.
    TokenUnknownKey,
    /// Token mode: the algorithm is not the one configured for the key.
    TokenAlgorithm,
    /// Token mode: the signature does not verify.
    TokenSignature,
    TokenExpired,
    TokenNotYetValid,
    TokenIssuer,
    TokenAudience,
    /// Token mode: a required claim is missing or has the wrong type.
    TokenClaims,
}

impl AuthFailure {
    /// Every failure, so metric handles can be resolved once per service.
    pub const ALL: [Self; 12] = [
        Self::Missing,
        Self::Invalid,
        Self::TokenTooLarge,
        Self::TokenMalformed,
        Self::TokenUnknownKey,
        Self::TokenAlgorithm,
        Self::TokenSignature,
        Self::TokenExpired,
        Self::TokenNotYetValid,
        Self::TokenIssuer,
        Self::TokenAudience,
        Self::TokenClaims,
    ];

    pub const fn index(self) -> usize {
        match self {
            Self::Missing => 0,
            Self::Invalid => 1,
            Self::TokenTooLarge => 2,
            Self::TokenMalformed => 3,
            Self::TokenUnknownKey => 4,
            Self::TokenAlgorithm => 5,
            Self::TokenSignature => 6,
            Self::TokenExpired => 7,
            Self::TokenNotYetValid => 8,
            Self::TokenIssuer => 9,
            Self::TokenAudience => 10,
            Self::TokenClaims => 11,
        }
    }

    /// The client-facing sentence; says no more than the code does.
    pub const fn message(self) -> &'static str {
        match self {
            Self::Missing => "an `Authorization: Bearer <credential>` header is required",
            Self::Invalid => "the bearer credential is not valid here",
            Self::TokenTooLarge => "token too large",
            Self::TokenMalformed => "token malformed",
            Self::TokenUnknownKey => "unknown signing key",
            Self::TokenAlgorithm => "algorithm not accepted",
            Self::TokenSignature => "signature invalid",
            Self::TokenExpired => "token expired",
            Self::TokenNotYetValid => "token not yet valid",
            Self::TokenIssuer => "issuer not accepted",
            Self::TokenAudience => "audience not accepted",
            Self::TokenClaims => "required claim missing or invalid",
        }
    }

    pub const fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing_credentials",
            Self::Invalid => "invalid_credentials",
            Self::TokenTooLarge => "token_too_large",
            Self::TokenMalformed => "token_malformed",
            Self::TokenUnknownKey => "token_unknown_key",
            Self::TokenAlgorithm => "token_algorithm",
            Self::TokenSignature => "token_signature",
            Self::TokenExpired => "token_expired",
            Self::TokenNotYetValid => "token_not_yet_valid",
            Self::TokenIssuer => "token_issuer",
            Self::TokenAudience => "token_audience",
            Self::TokenClaims => "token_claims",
        }
    }

    /// `WWW-Authenticate` per RFC 6750 §3: a bare challenge when no credential was sent (§3.1
    /// says not to include an error code then), `error="invalid_token"` with a short description
    /// for every refused token.
    pub fn challenge(self) -> HeaderValue {
        match self {
            Self::Missing | Self::Invalid => HeaderValue::from_static("Bearer"),
            token => HeaderValue::from_str(&format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                token.message()
            ))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\"")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    // ---- client ----
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("no service is routed at this path")]
    RouteNotFound,
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the request body stalled for {} ms", .after.as_millis())]
    ClientBodyTimeout { after: Duration },
    #[error("the client closed the connection before the response was complete")]
    ClientDisconnected,
    #[error("the request body arrived slower than {min_rate} bytes/s")]
    ClientBodyTooSlow { min_rate: u64 },
    /// Record-only: the client took no response data for this long; the connection was closed.
    #[error("the client took no response data for {} ms", .after.as_millis())]
    ClientSendTimeout { after: Duration },
    /// Record-only: the whole exchange took longer than `request_timeout_ms`; the connection was
    /// closed.
    #[error("the request was not complete within {} ms", .after.as_millis())]
    RequestDeadline { after: Duration },

    // ---- auth ----
    #[error("{}", .0.message())]
    Unauthenticated(AuthFailure),
    /// Refused by a network rule, before authentication.
    #[error("the client address may not call this service")]
    ClientNotAllowed,

    // ---- capacity ----
    #[error("rate limit exceeded; retry in {} ms", .retry_after.as_millis())]
    RateLimited { retry_after: Duration },
    #[error("the service is busy and its wait queue ({limit} requests) is full")]
    QueueFull { limit: usize },
    #[error("the service stayed busy for the whole wait of {} ms", .waited.as_millis())]
    QueueTimeout { waited: Duration },

    // ---- upstream ----
    #[error("could not connect to the scoring container")]
    UpstreamConnect(#[source] BoxError),
    #[error("the scoring container failed while answering")]
    UpstreamProtocol(#[source] hyper::Error),
    #[error("the scoring container sent no response headers within {} ms", .after.as_millis())]
    UpstreamTimeout { after: Duration },
    /// The response had started, so the client saw the upstream's status; only records see this.
    #[error("the scoring container's response stopped before its end")]
    UpstreamInterrupted,
    /// Likewise record-only: the response body stalled longer than the idle timeout.
    #[error("the scoring container's response body stalled for {} ms", .after.as_millis())]
    UpstreamBodyTimeout { after: Duration },

    // ---- internal ----
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl GatewayError {
    pub const fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ClientBodyTimeout { .. }
            | Self::ClientBodyTooSlow { .. }
            | Self::ClientSendTimeout { .. }
            | Self::RequestDeadline { .. } => StatusCode::REQUEST_TIMEOUT,
            // nginx's 499: never seen by the client (it has gone), but it makes records honest.
            Self::ClientDisconnected => match StatusCode::from_u16(499) {
                Ok(code) => code,
                Err(_) => StatusCode::BAD_REQUEST,
            },
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::ClientNotAllowed => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::QueueFull { .. } | Self::QueueTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamConnect(_) | Self::UpstreamProtocol(_) | Self::UpstreamInterrupted => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamTimeout { .. } | Self::UpstreamBodyTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub const fn side(&self) -> Side {
        match self {
            Self::BadRequest(_)
            | Self::RouteNotFound
            | Self::BodyTooLarge { .. }
            | Self::ClientBodyTimeout { .. }
            | Self::ClientBodyTooSlow { .. }
            | Self::ClientSendTimeout { .. }
            | Self::RequestDeadline { .. }
            | Self::ClientDisconnected => Side::Client,
            Self::Unauthenticated(_) | Self::ClientNotAllowed => Side::Auth,
            Self::RateLimited { .. } | Self::QueueFull { .. } | Self::QueueTimeout { .. } => {
                Side::Capacity
            }
            Self::UpstreamConnect(_)
            | Self::UpstreamProtocol(_)
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamInterrupted
            | Self::UpstreamBodyTimeout { .. } => Side::Upstream,
            Self::Internal(_) => Side::Internal,
        }
    }

    /// The stable machine-readable code: the client body's `error.code`, the request record's
    /// `ErrorCode` and the `reason` label of metrics.
    pub const fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::RouteNotFound => "route_not_found",
            Self::BodyTooLarge { .. } => "payload_too_large",
            Self::ClientBodyTimeout { .. } => "request_body_timeout",
            Self::ClientDisconnected => "client_disconnected",
            Self::ClientBodyTooSlow { .. } => "request_body_too_slow",
            Self::ClientSendTimeout { .. } => "client_send_timeout",
            Self::RequestDeadline { .. } => "request_deadline_exceeded",
            Self::Unauthenticated(failure) => failure.reason(),
            Self::ClientNotAllowed => "client_ip_not_allowed",
            Self::RateLimited { .. } => "rate_limited",
            Self::QueueFull { .. } => "queue_full",
            Self::QueueTimeout { .. } => "queue_wait_exceeded",
            Self::UpstreamConnect(_) => "upstream_unreachable",
            Self::UpstreamProtocol(_) => "upstream_error",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::UpstreamInterrupted => "upstream_interrupted",
            Self::UpstreamBodyTimeout { .. } => "upstream_body_timeout",
            Self::Internal(_) => "internal_error",
        }
    }

    /// Whether the connection must be closed after this response: after a refused or stalled
    /// body the rest of it may still be on the wire, and reading it just to discard it helps an
    /// attacker.
    pub const fn close_connection(&self) -> bool {
        match self {
            Self::BodyTooLarge { .. }
            | Self::ClientBodyTimeout { .. }
            | Self::ClientBodyTooSlow { .. }
            | Self::ClientSendTimeout { .. }
            | Self::RequestDeadline { .. }
            | Self::ClientDisconnected => true,
            Self::BadRequest(_)
            | Self::RouteNotFound
            | Self::Unauthenticated(_)
            | Self::ClientNotAllowed
            | Self::RateLimited { .. }
            | Self::QueueFull { .. }
            | Self::QueueTimeout { .. }
            | Self::UpstreamConnect(_)
            | Self::UpstreamProtocol(_)
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamInterrupted
            | Self::UpstreamBodyTimeout { .. }
            | Self::Internal(_) => false,
        }
    }

    /// Extra response headers this error requires: `WWW-Authenticate` for 401 (RFC 9110
    /// §11.6.1, RFC 6750 §3), `Retry-After` for 429 and 503 (RFC 9110 §10.2.3).
    pub fn extra_headers(&self) -> Option<(header::HeaderName, HeaderValue)> {
        match self {
            Self::Unauthenticated(failure) => Some((header::WWW_AUTHENTICATE, failure.challenge())),
            Self::RateLimited { retry_after } => Some((
                header::RETRY_AFTER,
                HeaderValue::from(
                    retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
                ),
            )),
            Self::QueueFull { .. } | Self::QueueTimeout { .. } => {
                Some((header::RETRY_AFTER, HeaderValue::from_static("1")))
            }
            _ => None,
        }
    }

    /// The JSON body: `{"error":{"code":..,"message":..},"requestId":..}`. The message is the
    /// `Display` text of the variant only, never of its source chain (which may name internal
    /// addresses); the chain goes to the diagnostic log.
    pub fn body(&self, request_id: &str) -> Bytes {
        error_body(self.code(), &self.to_string(), request_id)
    }
}

/// Serializes the error envelope shared by the data plane and the admin API.
pub fn error_body(code: &str, message: &str, request_id: &str) -> Bytes {
    #[derive(serde::Serialize)]
    struct Envelope<'a> {
        error: Inner<'a>,
        #[serde(rename = "requestId")]
        request_id: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Inner<'a> {
        code: &'a str,
        message: &'a str,
    }
    let envelope = Envelope {
        error: Inner { code, message },
        request_id,
    };
    // Serializing two &str fields cannot fail; fall back to a fixed body rather than panic.
    serde_json::to_vec(&envelope).map_or_else(
        |_| Bytes::from_static(br#"{"error":{"code":"internal_error","message":""}}"#),
        Bytes::from,
    )
}

#[cfg(test)]
mod tests;
