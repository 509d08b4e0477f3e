//! The shutdown signal and the readiness state it flips.
//!
//! `signal()` resolves on the first SIGTERM or SIGINT. `Lifecycle` holds the two facts `/readyz`
//! reports (listeners up, draining) and the token that stops accept loops and background tasks.
//! The drain order itself (readiness → pre-drain delay → stop accepting → drain connections with a
//! deadline → cancel background tasks) is carried out by `server::run`; this module owns no
//! listeners.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, draining"),
                _ = int.recv() => tracing::info!("SIGINT received, draining"),
            }
        }
        // Installing a handler only fails if the runtime has no signal driver; fall back to
        // Ctrl-C so the process still stops cleanly.
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("interrupt received, draining");
        }
    }
}

/// Process-wide lifecycle flags, shared by the listeners, the admin server and background tasks.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// Set once both listeners accept connections.
    listening: AtomicBool,
    /// Set when shutdown begins; `/readyz` answers 503 from then on.
    draining: AtomicBool,
    /// Stops accept loops (cancelled after the pre-drain delay).
    pub stop_accepting: CancellationToken,
    /// Stops background tasks (health probes, watchers) after the drain.
    pub stop_background: CancellationToken,
    /// Closes every connection still open when the drain timeout has passed.
    pub force_close: CancellationToken,
}

impl Lifecycle {
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
