//! The management API, shaped like Azure ML's (AZUREML-CONTRACT A1):
//!
//! - `POST /services/{name}/listkeys` → `{"primaryKey","secondaryKey","primaryKeyLastUsed",
//!   "secondaryKeyLastUsed"}` (last-used times are RFC 3339 or null).
//! - `POST /services/{name}/regenerateKeys` with `{"keyType":"Primary"|"Secondary",
//!   "keyValue":null|"..."}` → `{"primaryKey","secondaryKey"}`: the regenerated slot's new key,
//!   and the other slot's key only for a caller that also holds `services/keys/list` (and the
//!   keys are stored plain); otherwise that field is null. A `keyValue` needs
//!   `services/keys/set` as well, so a rotate-only role can neither read nor plant a key.
//! - `POST /services/{name}/token` → `{"accessToken","tokenType":"Bearer","expiryOn",
//!   "refreshAfter"}` (unix seconds) for a token-mode service; `sub` is the caller.
//! - `POST /services/{name}/rotateSigningKey` → `{"kid": "<new signer>"}`; earlier keys keep
//!   verifying until the tokens they signed have expired.
//!
//! Every call is authenticated and authorized before anything else happens. Errors use the same
//! JSON envelope as the data plane, with codes of their own ([`ApiError`]), because management
//! failures (unknown service, wrong mode, read-only keys) have no data-plane equivalent.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

use super::{AdminResponse, json as json_response};
use crate::auth::KeySlot;
use crate::auth::jwt::signing::SigningError;
use crate::auth::keys::{KeyError, Secret};
use crate::error::{AuthFailure, error_body};
use crate::gateway::Gateway;
use crate::policy::{Action, AdminPrincipal};
use crate::policy::{Assignment, Scope};
use crate::reload::WriteError;
use crate::runtime::{RuntimeState, Service};

/// Failures of management calls, each with a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}", .0.message())]
    Unauthenticated(AuthFailure),
    #[error("the caller lacks the permission `{}`", .0.as_str())]
    Forbidden(Action),
    #[error("no service named {0:?}")]
    ServiceNotFound(String),
    #[error("service {0:?} does not use key authentication")]
    NotKeyMode(String),
    #[error("service {0:?} does not use token authentication")]
    NotTokenMode(String),
    #[error("{0}")]
    Signing(#[source] SigningError),
    #[error("signing a token failed")]
    TokenSigning(#[source] jsonwebtoken::errors::Error),
    #[error("{0}")]
    Keys(#[source] KeyError),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("no such management route")]
    RouteNotFound,
    #[error("no role assignment with id {0:?}")]
    AssignmentNotFound(String),
    #[error("role assignment {0:?} is defined in the config file; change it there")]
    AssignmentInConfig(String),
    #[error("storing role assignments failed; see the gateway log")]
    Assignments,
    #[error("the client address may not use the admin listener")]
    ClientNotAllowed,
    #[error("reload rejected, the running configuration stays: {0}")]
    ReloadRejected(String),
    #[error("method not allowed; use {0}")]
    MethodNotAllowed(String),
    /// Fleet mode: etcd cannot take the write now; nothing changed.
    #[error("the cluster store (etcd) is unavailable; nothing was changed, retry later")]
    ClusterUnavailable,
    /// The record stream has not taken activity entries for a while (its output stalled), so
    /// the operation was not run: nothing happens without its audit entry.
    #[error(
        "the activity log cannot record this operation now (the record stream is stalled); nothing was changed, retry later"
    )]
    ActivityStalled,
    /// Fleet mode: another replica changed the same value first; nothing changed.
    #[error("another replica changed this first; nothing was changed, retry")]
    ClusterConflict,
}

impl ApiError {
    pub const fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::ClientNotAllowed => StatusCode::FORBIDDEN,
            Self::ServiceNotFound(_) | Self::RouteNotFound | Self::AssignmentNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Self::ReloadRejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotKeyMode(_) | Self::NotTokenMode(_) | Self::AssignmentInConfig(_) => {
                StatusCode::CONFLICT
            }
            Self::Signing(e) => match e {
                SigningError::ReadOnly { .. } => StatusCode::CONFLICT,
                SigningError::Read { .. }
                | SigningError::Write { .. }
                | SigningError::Invalid { .. }
                | SigningError::Generate(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::TokenSigning(_) | Self::Assignments => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Keys(e) => match e {
                KeyError::ReadOnly { .. } | KeyError::Hashed => StatusCode::CONFLICT,
                KeyError::BadValue(_) => StatusCode::BAD_REQUEST,
                KeyError::Read { .. }
                | KeyError::Write { .. }
                | KeyError::Invalid { .. }
                | KeyError::Random => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::ClusterUnavailable | Self::ActivityStalled => StatusCode::SERVICE_UNAVAILABLE,
            Self::ClusterConflict => StatusCode::CONFLICT,
        }
    }

    pub const fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(f) => f.reason(),
            Self::Forbidden(_) => "forbidden",
            Self::ServiceNotFound(_) => "service_not_found",
            Self::NotKeyMode(_) => "not_key_mode",
            Self::NotTokenMode(_) => "not_token_mode",
            Self::Signing(SigningError::ReadOnly { .. }) => "signing_key_read_only",
            Self::Signing(_) | Self::TokenSigning(_) | Self::Assignments => "internal_error",
            Self::Keys(e) => match e {
                KeyError::ReadOnly { .. } => "keys_read_only",
                KeyError::Hashed => "keys_hashed",
                KeyError::BadValue(_) => "invalid_request",
                KeyError::Read { .. }
                | KeyError::Write { .. }
                | KeyError::Invalid { .. }
                | KeyError::Random => "internal_error",
            },
            Self::InvalidRequest(_) => "invalid_request",
            Self::RouteNotFound => "not_found",
            Self::AssignmentNotFound(_) => "assignment_not_found",
            Self::AssignmentInConfig(_) => "assignment_in_config",
            Self::ClientNotAllowed => "client_ip_not_allowed",
            Self::ReloadRejected(_) => "reload_rejected",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::ClusterUnavailable => "cluster_unavailable",
            Self::ActivityStalled => "activity_log_unavailable",
            Self::ClusterConflict => "cluster_conflict",
        }
    }

    /// The client-facing message: internal failures do not reveal paths or causes.
    fn message(&self) -> String {
        match self {
            Self::Keys(KeyError::Read { .. } | KeyError::Write { .. } | KeyError::Invalid { .. } | KeyError::Random) => {
                "the key store failed; see the gateway log".to_owned()
            }
            Self::Signing(SigningError::ReadOnly { .. }) => {
                "the signing key is provided by an operator-managed read-only file (signing_key_file)".to_owned()
            }
            Self::Signing(_) | Self::TokenSigning(_) => "token signing failed; see the gateway log".to_owned(),
            Self::Keys(KeyError::ReadOnly { .. }) => {
                "keys are provided by an operator-managed read-only file (keys_file); change that file instead".to_owned()
            }
            other => other.to_string(),
        }
    }

    pub fn response(&self, request_id: &HeaderValue) -> AdminResponse {
        let body = error_body(
            self.code(),
            &self.message(),
            request_id.to_str().unwrap_or_default(),
        );
        let mut resp = json_response(self.status(), body.to_vec());
        if matches!(self, Self::Unauthenticated(_)) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The management routes under `/services/{name}/...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceOp {
    ListKeys,
    RegenerateKeys,
    IssueToken,
    RotateSigningKey,
}

impl ServiceOp {
    pub fn parse(op: &str) -> Option<Self> {
        match op {
            "listkeys" | "listKeys" => Some(Self::ListKeys),
            "regenerateKeys" | "regeneratekeys" => Some(Self::RegenerateKeys),
            "token" => Some(Self::IssueToken),
            "rotateSigningKey" | "rotatesigningkey" => Some(Self::RotateSigningKey),
            _ => None,
        }
    }

    pub const fn action(self) -> Action {
        match self {
            Self::ListKeys => Action::KeysList,
            Self::RegenerateKeys => Action::KeysRegenerate,
            Self::IssueToken => Action::TokenIssue,
            Self::RotateSigningKey => Action::SigningKeysRotate,
        }
    }

    /// The activity log's `operationName`.
    pub const fn operation(self) -> &'static str {
        match self {
            Self::ListKeys => "listKeys",
            Self::RegenerateKeys => "regenerateKeys",
            Self::IssueToken => "issueToken",
            Self::RotateSigningKey => "rotateSigningKey",
        }
    }
}

/// Runs one service operation for an authenticated principal, already authorized for the
/// operation's own action; `holds` answers whether the principal also holds another action on
/// this service (what `regenerateKeys` may show or accept depends on it).
pub async fn service_op(
    gw: &Arc<Gateway>,
    principal: &AdminPrincipal,
    holds: &(dyn Fn(Action) -> bool + Sync),
    name: &str,
    op: ServiceOp,
    body: Bytes,
) -> Result<AdminResponse, ApiError> {
    let service = gw
        .state()
        .by_name(name)
        .cloned()
        .ok_or_else(|| ApiError::ServiceNotFound(name.to_owned()))?;
    match op {
        ServiceOp::ListKeys => list_keys(&service),
        ServiceOp::RegenerateKeys => {
            regenerate_keys(gw, &service, &body, &principal.id, holds).await
        }
        ServiceOp::IssueToken => issue_token(&service, &principal.id),
        ServiceOp::RotateSigningKey => rotate_signing_key(gw, &service, &principal.id).await,
    }
}

/// A management write that failed, as the API reports it.
fn write_error(service: &Service, e: WriteError) -> ApiError {
    match e {
        WriteError::Keys(e) => {
            if matches!(e, KeyError::Write { .. } | KeyError::Random) {
                tracing::error!(service = %service.config.name, error = %e, "regenerating a key failed");
            }
            ApiError::Keys(e)
        }
        WriteError::Signing(e) => {
            if !matches!(e, SigningError::ReadOnly { .. }) {
                tracing::error!(service = %service.config.name, error = %e, "rotating the signing key failed");
            }
            ApiError::Signing(e)
        }
        WriteError::Gone(name) => ApiError::ServiceNotFound(name),
        WriteError::Assignments(e) => {
            tracing::error!(error = %e, "persisting a role assignment failed");
            ApiError::Assignments
        }
        WriteError::Task => ApiError::Keys(KeyError::Random),
        WriteError::Cluster(e) => cluster_error(&e),
    }
}

/// A fleet write etcd did not take (nothing changed).
fn cluster_error(e: &crate::cluster::ClusterError) -> ApiError {
    if matches!(e, crate::cluster::ClusterError::Conflict(_)) {
        tracing::info!(error = %e, "a fleet write lost to another replica's");
        return ApiError::ClusterConflict;
    }
    tracing::warn!(error = %e, "a fleet write failed");
    if e.is_unavailable() {
        ApiError::ClusterUnavailable
    } else {
        ApiError::Assignments
    }
}

/// A role-assignment write that failed.
fn assignment_error(e: WriteError) -> ApiError {
    match e {
        WriteError::Cluster(e) => cluster_error(&e),
        other => {
            tracing::error!(error = %other, "persisting a role assignment failed");
            ApiError::Assignments
        }
    }
}

fn issue_token(service: &Service, subject: &str) -> Result<AdminResponse, ApiError> {
    let authority = service
        .tokens()
        .ok_or_else(|| ApiError::NotTokenMode(service.config.name.clone()))?;
    let token = authority.issue(subject).map_err(|e| {
        tracing::error!(service = %service.config.name, error = %e, "signing a token failed");
        ApiError::TokenSigning(e)
    })?;
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_vec(&token).unwrap_or_default(),
    ))
}

async fn rotate_signing_key(
    gw: &Arc<Gateway>,
    service: &Service,
    initiator: &str,
) -> Result<AdminResponse, ApiError> {
    if service.tokens().is_none() {
        return Err(ApiError::NotTokenMode(service.config.name.clone()));
    }
    let kid = gw
        .applier
        .rotate_signing_key(&service.config.name, initiator)
        .await
        .map_err(|e| write_error(service, e))?;
    tracing::info!(service = %service.config.name, kid = %kid, "signing key rotated");
    Ok(json_response(
        StatusCode::OK,
        json!({ "kid": &*kid }).to_string().into_bytes(),
    ))
}

fn list_keys(service: &Service) -> Result<AdminResponse, ApiError> {
    let store = service
        .keys()
        .ok_or_else(|| ApiError::NotKeyMode(service.config.name.clone()))?;
    let listing = store.list().map_err(ApiError::Keys)?;
    let body = json!({
        "primaryKey": listing.primary.expose(),
        "secondaryKey": listing.secondary.expose(),
        "primaryKeyLastUsed": listing.primary_last_used.and_then(rfc3339),
        "secondaryKeyLastUsed": listing.secondary_last_used.and_then(rfc3339),
    });
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}

/// Parses `{"keyType": "Primary"|"Secondary" (any case), "keyValue": null|"..."}`.
pub fn parse_regenerate(body: &[u8]) -> Result<(KeySlot, Option<Secret>), ApiError> {
    let bad = |m: &str| ApiError::InvalidRequest(m.to_owned());
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(bad(
            "request body must be a JSON object with keyType and keyValue",
        ));
    };
    let slot = match fields.remove("keyType") {
        None | Some(Value::Null) => {
            return Err(bad("keyType is required (\"Primary\" or \"Secondary\")"));
        }
        Some(Value::String(t)) if t.eq_ignore_ascii_case("primary") => KeySlot::Primary,
        Some(Value::String(t)) if t.eq_ignore_ascii_case("secondary") => KeySlot::Secondary,
        Some(_) => return Err(bad("keyType must be \"Primary\" or \"Secondary\"")),
    };
    let value = match fields.remove("keyValue") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) => Some(Secret::new(v)),
        Some(_) => return Err(bad("keyValue must be a string or null")),
    };
    if let Some(unknown) = first_key(&fields) {
        return Err(ApiError::InvalidRequest(format!(
            "unknown field {unknown:?}; expected keyType and keyValue"
        )));
    }
    Ok((slot, value))
}

fn first_key(fields: &Map<String, Value>) -> Option<&str> {
    fields.keys().next().map(String::as_str)
}

async fn regenerate_keys(
    gw: &Arc<Gateway>,
    service: &Service,
    body: &[u8],
    initiator: &str,
    holds: &(dyn Fn(Action) -> bool + Sync),
) -> Result<AdminResponse, ApiError> {
    if service.keys().is_none() {
        return Err(ApiError::NotKeyMode(service.config.name.clone()));
    }
    let (slot, value) = parse_regenerate(body)?;
    // Checked before anything is written: a chosen value is a key its chooser knows.
    if value.is_some() && !holds(Action::KeysSet) {
        return Err(ApiError::Forbidden(Action::KeysSet));
    }
    let mut new = gw
        .applier
        .regenerate_key(&service.config.name, slot, value, initiator)
        .await
        .map_err(|e| write_error(service, e))?;
    tracing::info!(service = %service.config.name, slot = slot.as_str(), "key regenerated");
    // Azure's response shape (both fields), but the untouched slot's live key only for a caller
    // who may read keys anyway.
    if !holds(Action::KeysList) {
        match slot {
            KeySlot::Primary => new.secondary = None,
            KeySlot::Secondary => new.primary = None,
        }
    }
    let body = json!({
        "primaryKey": new.primary.as_ref().map(Secret::expose),
        "secondaryKey": new.secondary.as_ref().map(Secret::expose),
    });
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}

/// A "last used" time for the key listing, or `None` (null) for one that cannot be shown: the
/// gateway's own clock, but a clock set past the year 9999 is not worth a panic.
fn rfc3339(unix: u64) -> Option<String> {
    let t = UNIX_EPOCH.checked_add(Duration::from_secs(unix))?;
    crate::telemetry::rfc3339_seconds(t).map(|text| text.to_string())
}

/// `POST /role-assignments` with `{"principal","role","scope"}` → 201 with the assignment.
pub async fn assign_role(
    gw: &Arc<Gateway>,
    state: &RuntimeState,
    body: &[u8],
) -> Result<AdminResponse, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request {
        principal: String,
        role: String,
        #[serde(default)]
        scope: Option<String>,
    }
    let req: Request = serde_json::from_slice(body).map_err(|e| {
        ApiError::InvalidRequest(format!(
            "expected {{\"principal\",\"role\",\"scope\"}}: {e}"
        ))
    })?;
    if req.principal.is_empty() || req.principal.len() > 256 {
        return Err(ApiError::InvalidRequest(
            "principal must be 1 to 256 characters".into(),
        ));
    }
    if state.policy().role(&req.role).is_none() {
        return Err(ApiError::InvalidRequest(format!(
            "role {:?} is not defined",
            req.role
        )));
    }
    let scope_text = req.scope.unwrap_or_else(|| "*".to_owned());
    let scope = Scope::parse(&scope_text).ok_or_else(|| {
        ApiError::InvalidRequest(format!(
            "scope {scope_text:?} is not \"*\" or \"service:NAME\""
        ))
    })?;
    if let Scope::Service(name) = &scope
        && state.by_name(name).is_none()
    {
        return Err(ApiError::ServiceNotFound(name.clone()));
    }
    let assignment = Assignment {
        id: uuid::Uuid::new_v4().to_string(),
        principal: req.principal,
        role: req.role,
        scope,
        source: "api".to_owned(),
    };
    gw.applier
        .add_assignment(assignment.clone())
        .await
        .map_err(assignment_error)?;
    Ok(json_response(
        StatusCode::CREATED,
        serde_json::to_vec(&assignment).unwrap_or_default(),
    ))
}

/// `DELETE /role-assignments/{id}` → 204; config assignments are changed in the config file.
pub async fn remove_assignment(
    gw: &Arc<Gateway>,
    state: &RuntimeState,
    id: &str,
) -> Result<AdminResponse, ApiError> {
    if state.policy().assignments.iter().any(|a| a.id == id) {
        return Err(ApiError::AssignmentInConfig(id.to_owned()));
    }
    match gw.applier.remove_assignment(id).await {
        Ok(true) => Ok(json_response(StatusCode::NO_CONTENT, Vec::new())),
        Ok(false) => Err(ApiError::AssignmentNotFound(id.to_owned())),
        Err(e) => Err(assignment_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regenerate_body_rules() {
        let ok = |b: &str| parse_regenerate(b.as_bytes()).expect(b);
        assert_eq!(
            ok(r#"{"keyType":"Primary","keyValue":null}"#).0,
            KeySlot::Primary
        );
        assert_eq!(ok(r#"{"keyType":"secondary"}"#).0, KeySlot::Secondary);
        assert_eq!(
            ok(r#"{"keyType":"PRIMARY","keyValue":"x"}"#)
                .1
                .expect("value")
                .expose(),
            "x"
        );
        let err = |b: &str| parse_regenerate(b.as_bytes()).expect_err(b).to_string();
        assert!(err("").contains("not valid JSON"));
        assert!(err("[]").contains("JSON object"));
        assert!(err("{}").contains("keyType is required"));
        assert!(err(r#"{"keyType":"Tertiary"}"#).contains("keyType must be"));
        assert!(err(r#"{"keyType":1}"#).contains("keyType must be"));
        assert!(err(r#"{"keyType":"Primary","keyValue":5}"#).contains("keyValue must be"));
        assert!(err(r#"{"keyType":"Primary","extra":1}"#).contains("unknown field \"extra\""));
    }

    #[test]
    fn last_used_times_past_humantime_are_null_not_a_panic() {
        assert_eq!(
            rfc3339(1_796_389_669).as_deref(),
            Some("2026-12-04T13:07:49Z")
        );
        assert_eq!(rfc3339(253_402_300_800), None);
        // Past what SystemTime can hold at all: `UNIX_EPOCH + d` would panic.
        assert_eq!(rfc3339(u64::MAX), None);
    }
}
