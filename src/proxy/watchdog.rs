//! The bounds on a request that only a timer outside the body can enforce: a client that stops
//! taking the response (`send_timeout_ms`) and the optional total deadline
//! (`request_timeout_ms`).
//!
//! A client that stops reading does not make the response body fail: hyper simply stops asking
//! for data (HTTP/1.1: the socket's send buffer is full; HTTP/2: the stream has no flow-control
//! window, e.g. `SETTINGS_INITIAL_WINDOW_SIZE = 0`), so nothing in the body ever runs again and
//! the request would hold its admission slot for as long as the client likes. A [`Watch`] is
//! told when the response hands data to hyper and when hyper asks for more; a task of its own
//! checks how long data has waited for the client, and the deadline. When a bound passes it records why and closes the client connection
//! ([`ConnInfo::abandon`]; hyper offers no way to reset one HTTP/2 stream from outside it), which
//! drops the request: the record is written with the reason and the slot is freed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::ConnInfo;
use crate::error::GatewayError;

/// Watches one request; shared by its context, its response body and the watchdog task.
#[derive(Debug)]
pub struct Watch {
    start: Instant,
    /// When data was last handed to hyper and not yet taken (ms since `start`); `u64::MAX`
    /// while hyper is not waiting on the client (the send timeout does not run).
    asked_ms: AtomicU64,
    /// 0 while running, else one of the `FIRED_*` reasons.
    fired: AtomicU8,
    send_timeout: Duration,
    deadline: Option<Duration>,
    /// Wakes the task to end (the request is over) or to re-plan (the response started).
    wake: Notify,
    /// The request is over: the task ends.
    done: std::sync::atomic::AtomicBool,
}

const FIRED_SEND: u8 = 1;
const FIRED_DEADLINE: u8 = 2;
const NOT_SENDING: u64 = u64::MAX;

impl Watch {
    /// Starts the watchdog task for a request on `conn`. `deadline`: the total bound, if any.
    pub fn start(
        conn: Arc<ConnInfo>,
        send_timeout: Duration,
        deadline: Option<Duration>,
    ) -> Arc<Self> {
        let watch = Arc::new(Self {
            start: Instant::now(),
            asked_ms: AtomicU64::new(NOT_SENDING),
            fired: AtomicU8::new(0),
            send_timeout,
            deadline,
            wake: Notify::new(),
            done: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(Arc::clone(&watch).run(conn));
        watch
    }

    /// Response data (or the head) was handed to hyper: from now on the client has to take it.
    pub fn sending(&self) {
        let was = self.asked_ms.swap(self.elapsed_ms(), Ordering::Relaxed);
        if was == NOT_SENDING {
            self.wake.notify_one();
        }
    }

    /// hyper asked for more: the client took what it had. Until the next [`Self::sending`] the
    /// response waits on the upstream, not on the client.
    pub fn asked(&self) {
        self.asked_ms.store(NOT_SENDING, Ordering::Relaxed);
    }

    /// The request is over (or abandoned): the task ends.
    pub fn finished(&self) {
        self.done.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Why the watchdog ended the request, if it did.
    pub fn fired(&self) -> Option<GatewayError> {
        match self.fired.load(Ordering::Acquire) {
            FIRED_SEND => Some(GatewayError::ClientSendTimeout {
                after: self.send_timeout,
            }),
            FIRED_DEADLINE => Some(GatewayError::RequestDeadline {
                after: self.deadline.unwrap_or_default(),
            }),
            _ => None,
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// The next moment a bound could pass, and which.
    fn next(&self) -> Option<(Instant, u8)> {
        let asked = self.asked_ms.load(Ordering::Relaxed);
        let send = (asked != NOT_SENDING)
            .then(|| self.start + Duration::from_millis(asked) + self.send_timeout);
        let deadline = self.deadline.map(|d| self.start + d);
        match (send, deadline) {
            (Some(s), Some(d)) if d <= s => Some((d, FIRED_DEADLINE)),
            (Some(s), _) => Some((s, FIRED_SEND)),
            (None, Some(d)) => Some((d, FIRED_DEADLINE)),
            (None, None) => None,
        }
    }

    async fn run(self: Arc<Self>, conn: Arc<ConnInfo>) {
        loop {
            if self.done.load(Ordering::Acquire) {
                return;
            }
            let Some((at, reason)) = self.next() else {
                self.wake.notified().await;
                continue;
            };
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(at) => {
                    // hyper may have asked again meanwhile: re-plan unless this bound still holds.
                    if self.done.load(Ordering::Acquire) {
                        return;
                    }
                    if self.next().is_some_and(|(again, r)| r == reason && again <= Instant::now()) {
                        self.fired.store(reason, Ordering::Release);
                        conn.abandon();
                        return;
                    }
                }
            }
        }
    }
}
