//! The gateway: the published runtime state and the long-lived handles beside it, shared by both
//! listeners and the background tasks.
//!
//! Nothing here changes after startup except through the state cell: `reload::Applier` is the
//! only writer of the state; the metrics registry, the record sink, the activity log and the
//! lifecycle flags live as long as the process.

use std::sync::Arc;

use crate::reload::Applier;
use crate::runtime::{RuntimeState, StateCell};
use crate::shutdown::Lifecycle;
use crate::telemetry::activity::ActivityLog;
use crate::telemetry::export::Exporters;
use crate::telemetry::metrics::{Metrics, ServiceMetrics, UNROUTED};
use crate::telemetry::sink::RecordSink;

/// See the module docs.
#[derive(Debug)]
pub struct Gateway {
    /// The one place a state is published.
    state: StateCell,
    pub metrics: Arc<Metrics>,
    /// Handles for requests that matched no route.
    pub unrouted: ServiceMetrics,
    pub records: RecordSink,
    /// Telemetry export (`[telemetry.otlp]`, `[telemetry.azure_monitor]`; restart-only).
    pub export: Exporters,
    /// Management operations, with their initiators.
    pub activity: Arc<ActivityLog>,
    pub lifecycle: Arc<Lifecycle>,
    /// Wakes the health prober (after a change, so new services are probed at once).
    pub health_wake: Arc<tokio::sync::Notify>,
    /// Builds and publishes every state (see `reload`).
    pub applier: Applier,
}

/// The long-lived handles a gateway is assembled from.
#[derive(Debug)]
pub struct Parts {
    pub state: StateCell,
    pub applier: Applier,
    pub metrics: Arc<Metrics>,
    pub records: RecordSink,
    pub export: Exporters,
    pub activity: Arc<ActivityLog>,
    pub health_wake: Arc<tokio::sync::Notify>,
}

impl Gateway {
    pub fn new(parts: Parts) -> Self {
        Self {
            state: parts.state,
            unrouted: ServiceMetrics::new(&parts.metrics, UNROUTED, "none"),
            metrics: parts.metrics,
            records: parts.records,
            export: parts.export,
            activity: parts.activity,
            lifecycle: Arc::new(Lifecycle::default()),
            health_wake: parts.health_wake,
            applier: parts.applier,
        }
    }

    /// Where finished requests' records, metrics and spans go.
    pub fn outputs(&self) -> crate::telemetry::request_log::Outputs<'_> {
        crate::telemetry::request_log::Outputs {
            records: &self.records,
            metrics: &self.metrics,
            unrouted: &self.unrouted,
            export: &self.export,
        }
    }

    /// The current state: a cheap snapshot to read within a request or call.
    pub fn state(&self) -> arc_swap::Guard<Arc<RuntimeState>> {
        self.state.load()
    }

    /// The current state, owned (to keep across awaits).
    pub fn state_full(&self) -> Arc<RuntimeState> {
        self.state.load_full()
    }

    /// Resolves after each state publication from now on.
    pub fn state_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state.subscribe()
    }

    /// Ready = listening, not draining, every upstream answered its latest health probe, and
    /// every JWKS URL has been fetched once.
    pub fn is_ready(&self) -> bool {
        self.lifecycle.is_listening()
            && !self.lifecycle.is_draining()
            && self.state.services_ready()
    }
}
