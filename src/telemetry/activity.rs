//! The activity log: one entry per management operation (and per refused management call, and
//! per change picked up from disk), always with its initiator.
//!
//! Entries go to the record stream as `"type":"activity"` JSON lines and into bounded in-memory
//! rings that `GET /activity?limit=N` serves. In the stream, the entry of an authorized
//! management operation is never lost: its place is reserved before the operation runs
//! ([`ActivityLog::reserve`]), and when a stalled sink leaves no room the operation is refused
//! instead (`sink::Keep`). Entries never hold a secret: the initiator is a principal id,
//! `reason` is a fixed message.
//!
//! Refusals of unauthenticated callers (`initiator: "anonymous"`) cost an attacker nothing, so
//! they never share a ring with the audit trail: they are kept apart, aggregated per source
//! (`sourceIp`, `operationName`, `service`, `reason`: one entry, with a `count` once repeated,
//! and the latest time and request id), at most [`ANONYMOUS_CAPACITY`] sources, the least recently seen
//! evicted first. A flood of anonymous calls therefore cannot push an authenticated operation
//! out of `GET /activity`; the record stream still has every refusal as its own line.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use serde::Serialize;

use super::sink::{ActivitySlot, ActivityStalled, Keep, RecordSink};

/// Entries kept in memory for `GET /activity` (besides the anonymous refusals).
pub const RING_CAPACITY: usize = 1000;

/// Aggregated anonymous refusals (distinct sources) kept in memory.
pub const ANONYMOUS_CAPACITY: usize = 100;

/// The initiator of refused unauthenticated calls.
pub const ANONYMOUS: &str = "anonymous";

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
    #[serde(serialize_with = "super::json_line::serialize_rfc3339_micros")]
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
    /// Anonymous refusals in `GET /activity`: how many this entry stands for when more than one
    /// (its `timestamp` and `RequestId` are then the latest one's). Absent on every other entry
    /// and in the record stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The service's `role_name` (or `telemetry.role_name` for entries about no service); set
    /// by [`ActivityLog::record`].
    #[serde(rename = "RoleName")]
    pub role_name: Option<String>,
    /// The replica that did it; set by [`ActivityLog::record`].
    #[serde(rename = "RoleInstance")]
    pub role_instance: Option<Arc<str>>,
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
            count: None,
            role_name: None,
            role_instance: None,
        }
    }

    /// A refused call of a caller without valid credentials.
    fn is_anonymous_denial(&self) -> bool {
        self.initiator == ANONYMOUS && self.result == Outcome::Denied
    }

    /// Whether two anonymous refusals come from the same source and were refused the same way.
    fn same_source(&self, other: &Self) -> bool {
        self.source_ip == other.source_ip
            && self.operation == other.operation
            && self.service == other.service
            && self.reason == other.reason
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
    rings: Mutex<Rings>,
    sink: RecordSink,
    /// Each entry's `RoleName` and `RoleInstance`, from the published state (bound once the
    /// first state exists; entries before that name the service and the host directly).
    roles: OnceLock<Box<dyn Roles>>,
    /// Fleet mode: every successful management write is also sent here (to the fleet's trail in
    /// etcd, `cluster::trail`).
    fleet: OnceLock<tokio::sync::mpsc::UnboundedSender<ActivityRecord>>,
    /// `[telemetry.otlp]` / `[telemetry.azure_monitor]`: every entry is also exported (as an
    /// OTLP log record, an Application Insights custom event).
    export: OnceLock<super::export::Exporters>,
}

/// Where an entry's `RoleName` (by service) and `RoleInstance` come from: the runtime state in
/// force (`runtime::StateCell` implements it), without this module reading the runtime.
pub trait Roles: Send + Sync + std::fmt::Debug {
    /// The role name of `service` (or of entries about no service), and this replica's name.
    fn roles(&self, service: Option<&str>) -> (String, Arc<str>);
}

/// Operations that change shared state: what the fleet's trail keeps.
const FLEET_OPERATIONS: [&str; 4] = [
    "regenerateKeys",
    "rotateSigningKey",
    "assignRole",
    "removeRoleAssignment",
];

#[derive(Debug, Default)]
struct Rings {
    /// Everything but anonymous refusals, oldest first.
    audit: VecDeque<ActivityRecord>,
    /// Aggregated anonymous refusals, least recently seen first.
    anonymous: VecDeque<ActivityRecord>,
}

impl ActivityLog {
    pub fn new(sink: RecordSink) -> Self {
        Self {
            rings: Mutex::new(Rings::default()),
            sink,
            roles: OnceLock::new(),
            fleet: OnceLock::new(),
            export: OnceLock::new(),
        }
    }

    /// Exports every entry from now on (set once).
    pub fn export_to(&self, exporters: super::export::Exporters) {
        let _ = self.export.set(exporters);
    }

    /// Sends every successful management write to `tx` from now on (fleet mode; set once).
    pub fn forward_writes(&self, tx: tokio::sync::mpsc::UnboundedSender<ActivityRecord>) {
        let _ = self.fleet.set(tx);
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, Rings> {
        self.rings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads role names and the instance from `roles` from now on (the first binding stays).
    pub fn bind(&self, roles: impl Roles + 'static) {
        let _ = self.roles.set(Box::new(roles));
    }

    /// A place in the record stream for the entry of an operation about to run (see
    /// `RecordSink::reserve_activity`); `Err` means the sink has stalled and the operation
    /// should not run.
    pub async fn reserve(&self) -> Result<ActivitySlot, ActivityStalled> {
        self.sink.reserve_activity().await
    }

    /// Records `entry`; `keep` says what happens to its line in the record stream when the sink
    /// is behind.
    pub fn record(&self, mut entry: ActivityRecord, keep: Keep) {
        let service = entry.service.as_deref();
        let (role_name, role_instance) = match self.roles.get() {
            Some(roles) => roles.roles(service),
            None => (
                service.unwrap_or("scoregate").to_owned(),
                Arc::from(super::role::instance(None)),
            ),
        };
        entry.role_name = Some(role_name);
        entry.role_instance = Some(role_instance);
        self.sink.emit_activity(&entry, keep);
        if let Some(exporters) = self.export.get() {
            exporters.offer_activity(&entry);
        }
        if let Some(tx) = self.fleet.get()
            && matches!(entry.result, Outcome::Succeeded)
            && FLEET_OPERATIONS.contains(&entry.operation)
        {
            let _ = tx.send(entry.clone());
        }
        let mut rings = self.rings();
        if entry.is_anonymous_denial() {
            let anonymous = &mut rings.anonymous;
            let mut entry = entry;
            let seen = anonymous.iter().position(|e| e.same_source(&entry));
            if let Some(earlier) = seen.and_then(|i| anonymous.remove(i)) {
                entry.count = Some(earlier.count.unwrap_or(1).saturating_add(1));
            } else if anonymous.len() == ANONYMOUS_CAPACITY {
                anonymous.pop_front();
            }
            anonymous.push_back(entry);
            return;
        }
        if rings.audit.len() == RING_CAPACITY {
            rings.audit.pop_front();
        }
        rings.audit.push_back(entry);
    }

    /// The newest `limit` entries of both rings, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<ActivityRecord> {
        let rings = self.rings();
        let newest = |ring: &VecDeque<ActivityRecord>| {
            ring.iter()
                .skip(ring.len().saturating_sub(limit))
                .cloned()
                .collect::<Vec<_>>()
        };
        let mut entries = newest(&rings.audit);
        entries.extend(newest(&rings.anonymous));
        drop(rings);
        // Stable: entries with equal times keep their ring order.
        entries.sort_by_key(|e| e.timestamp);
        entries.split_off(entries.len().saturating_sub(limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::sink::{QueueLimits, RecordOutput, SinkCounters};

    fn log() -> (ActivityLog, crate::telemetry::sink::RecordWriter) {
        let counters = SinkCounters::of(&crate::telemetry::metrics::Metrics::new());
        let (sink, writer) = RecordSink::spawn(
            RecordOutput::Writer(Box::new(std::io::sink())),
            QueueLimits::lines(64),
            true,
            counters,
        )
        .expect("spawn");
        (ActivityLog::new(sink), writer)
    }

    fn denial(ip: u8) -> ActivityRecord {
        ActivityRecord::new("listKeys", ANONYMOUS, Outcome::Denied)
            .source(IpAddr::from([10, 0, 0, ip]), format!("rid-{ip}"))
            .reason("missing_credentials")
    }

    #[test]
    fn anonymous_sources_are_bounded_least_recently_seen_first_and_never_evict_the_audit() {
        let (log, writer) = log();
        log.record(
            ActivityRecord::new("listKeys", "bootstrap-admin", Outcome::Succeeded),
            Keep::Always,
        );
        // More distinct sources than kept; source 0 repeats, so it stays the most recent.
        for ip in 0..=u8::try_from(ANONYMOUS_CAPACITY).expect("fits") {
            log.record(denial(ip), Keep::IfRoom);
            log.record(denial(0), Keep::IfRoom);
        }
        let all = log.recent(RING_CAPACITY);
        let anonymous: Vec<&ActivityRecord> =
            all.iter().filter(|e| e.initiator == ANONYMOUS).collect();
        assert_eq!(anonymous.len(), ANONYMOUS_CAPACITY);
        assert!(all.iter().any(|e| e.initiator == "bootstrap-admin"));
        let zero = anonymous
            .iter()
            .find(|e| e.source_ip == Some(IpAddr::from([10, 0, 0, 0])))
            .expect("the repeating source is kept");
        // Twice in the first round, once in each of the other ANONYMOUS_CAPACITY rounds.
        assert_eq!(zero.count, Some(ANONYMOUS_CAPACITY as u64 + 2));
        assert!(
            !anonymous
                .iter()
                .any(|e| e.source_ip == Some(IpAddr::from([10, 0, 0, 1]))),
            "the least recently seen source was evicted"
        );
        drop(log);
        writer.join();
    }
}
