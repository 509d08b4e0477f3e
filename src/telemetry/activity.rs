//! The activity log: one entry per management operation (and per refused management call, and
//! per change picked up from disk), always with its initiator.
//!
//! Entries go to the record stream as `"type":"activity"` JSON lines (never dropped) and into a
//! bounded in-memory ring that `GET /activity?limit=N` serves. Entries never hold a secret: the
//! initiator is a principal id, `reason` is a fixed message.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use serde::{Serialize, Serializer};

use super::sink::RecordSink;
use crate::runtime::StateCell;

/// Entries kept in memory for `GET /activity`.
pub const RING_CAPACITY: usize = 1000;

/// How a management operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    Succeeded,
    Failed,
    /// Refused before it ran: unauthenticated or not permitted.
    Denied,
}

/// One activity entry. Field names are the documented ones.
#[derive(Debug, Clone, Serialize)]
pub struct ActivityRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: SystemTime,
    #[serde(rename = "operationName")]
    pub operation: &'static str,
    /// The authenticated principal (`bootstrap-admin`, or `idp:<sub>` for an identity token),
    /// `"anonymous"` for refused unauthenticated calls, or
    /// `"file-watch"` / `"cli"` / `"signal"` for changes that did not come through the API.
    pub initiator: String,
    pub service: Option<String>,
    pub result: Outcome,
    #[serde(rename = "sourceIp")]
    pub source_ip: Option<IpAddr>,
    #[serde(rename = "RequestId")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The service's `role_name` (or `telemetry.role_name` for entries about no service); set
    /// by [`ActivityLog::record`].
    #[serde(rename = "RoleName")]
    pub role_name: Option<String>,
    /// The replica that did it; set by [`ActivityLog::record`].
    #[serde(rename = "RoleInstance")]
    pub role_instance: Option<Arc<str>>,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*t))
}

impl ActivityRecord {
    pub fn new(operation: &'static str, initiator: impl Into<String>, result: Outcome) -> Self {
        Self {
            kind: "activity",
            timestamp: SystemTime::now(),
            operation,
            initiator: initiator.into(),
            service: None,
            result,
            source_ip: None,
            request_id: None,
            reason: None,
            role_name: None,
            role_instance: None,
        }
    }

    #[must_use]
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    #[must_use]
    pub fn source(mut self, ip: IpAddr, request_id: impl Into<String>) -> Self {
        self.source_ip = Some(ip);
        self.request_id = Some(request_id.into());
        self
    }

    #[must_use]
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// Writes entries to the record stream and keeps the most recent ones.
#[derive(Debug)]
pub struct ActivityLog {
    ring: Mutex<VecDeque<ActivityRecord>>,
    sink: RecordSink,
    /// The published state, for each entry's `RoleName` and `RoleInstance` (bound once the
    /// first state exists; entries before that name the service and the host directly).
    state: OnceLock<StateCell>,
}

impl ActivityLog {
    pub fn new(sink: RecordSink) -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(64)),
            sink,
            state: OnceLock::new(),
        }
    }

    /// Reads role names and the instance from `cell` from now on (the first binding stays).
    pub fn bind(&self, cell: &StateCell) {
        let _ = self.state.set(cell.clone());
    }

    pub fn record(&self, mut entry: ActivityRecord) {
        let service = entry.service.as_deref();
        let (role_name, role_instance) = match self.state.get() {
            Some(cell) => {
                let state = cell.load();
                (
                    state.role_name(service).to_owned(),
                    Arc::clone(&state.role_instance),
                )
            }
            None => (
                service.unwrap_or("scoregate").to_owned(),
                Arc::from(super::role::instance(None)),
            ),
        };
        entry.role_name = Some(role_name);
        entry.role_instance = Some(role_instance);
        self.sink.emit_activity(&entry);
        let mut ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ring.len() == RING_CAPACITY {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// The newest `limit` entries, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<ActivityRecord> {
        let ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.iter()
            .skip(ring.len().saturating_sub(limit))
            .cloned()
            .collect()
    }
}
