//! The activity log: one entry per management operation (and per refused management call, and
//! per change picked up from disk), always with its initiator.
//!
//! Entries go to the record stream as `"type":"activity"` JSON lines (never dropped) and into a
//! bounded in-memory ring that `GET /activity?limit=N` serves. Entries never hold a secret: the
//! initiator is a principal id, `reason` is a fixed message.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Serialize, Serializer};

use super::sink::RecordSink;

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
}

impl ActivityLog {
    pub fn new(sink: RecordSink) -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(64)),
            sink,
        }
    }

    pub fn record(&self, entry: ActivityRecord) {
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
