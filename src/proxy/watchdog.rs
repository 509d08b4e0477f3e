//! The bounds on a request that only a timer outside the body can enforce: a client that stops
//! taking the response (`send_timeout_ms`) and the optional total deadline
//! (`request_timeout_ms`).
//!
//! A client that stops reading does not make the response body fail: hyper simply stops asking
//! for data (HTTP/1.1: the socket's send buffer is full; HTTP/2: the stream has no flow-control
//! window, e.g. `SETTINGS_INITIAL_WINDOW_SIZE = 0`), so nothing in the body ever runs again and
//! the request would hold its admission slot for as long as the client likes. A [`Watch`] is
//! told when the response hands data to hyper and when hyper asks for more. One task per
//! scoring listener ([`Watchdog`]) keeps every admitted request's watch and checks how long
//! data has waited for the client, and the deadline. When a bound passes it records why and
//! closes the client connection ([`ConnInfo::abandon`]; hyper offers no way to reset one
//! HTTP/2 stream from outside it), which drops the request: the record is written with the
//! reason and the slot is freed.
//!
//! The task sleeps until the earliest moment a bound could pass among the watches it saw (with
//! none, while requests keep coming, for the shortest send timeout: no response starting in the
//! meantime can pass its bound sooner), and publishes that moment; a request wakes it only when
//! its own bound would come earlier (the first response after a quiet spell, or a deadline
//! shorter than the others). A request therefore costs a slot in a shared table, not a task, a
//! timer and a wake-up of its own (a task per request was ~1 µs of CPU per request,
//! `loadtest/RESULTS.md`).

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use slab::Slab;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::ConnInfo;
use crate::error::GatewayError;

/// Watches the admitted requests of a listener's connections; its task starts with the first
/// request and ends when the `Watchdog` is dropped.
#[derive(Debug)]
pub struct Watchdog(Arc<Table>);

/// What a connection keeps to have its requests watched ([`Watchdog::handle`]).
#[derive(Debug, Clone)]
pub struct WatchdogHandle(Arc<Table>);

#[derive(Debug)]
struct Table {
    watches: Mutex<Watches>,
    /// When the task looks next, in ms since `epoch`; `u64::MAX` while it is looking or has
    /// nothing to wait for (then every new bound wakes it).
    next_ms: AtomicU64,
    wake: Notify,
    epoch: Instant,
    started: AtomicBool,
    closed: AtomicBool,
    /// Times the task has read the table.
    #[cfg(test)]
    scans: AtomicU64,
}

#[derive(Debug)]
struct Watches {
    slab: Slab<Arc<Watch>>,
    /// Requests admitted so far.
    admitted: u64,
    /// The shortest send timeout of any request admitted so far.
    shortest: Duration,
}

/// Watches one request; shared by its context, its response body and the watchdog's table.
#[derive(Debug)]
pub struct Watch {
    table: Arc<Table>,
    /// The watch's slot in the table.
    key: usize,
    conn: Arc<ConnInfo>,
    start: Instant,
    /// `start` in ms since the table's epoch.
    start_ms: u64,
    /// When data was last handed to hyper and not yet taken (ms since `start`); `u64::MAX`
    /// while hyper is not waiting on the client (the send timeout does not run).
    asked_ms: AtomicU64,
    /// 0 while running, else one of the `FIRED_*` reasons.
    fired: AtomicU8,
    send_timeout: Duration,
    deadline: Option<Duration>,
    /// The request is over: the watch has left the table.
    done: AtomicBool,
}

const FIRED_SEND: u8 = 1;
const FIRED_DEADLINE: u8 = 2;
const NOT_SENDING: u64 = u64::MAX;

impl Default for Watchdog {
    fn default() -> Self {
        Self(Arc::new(Table {
            watches: Mutex::new(Watches {
                slab: Slab::new(),
                admitted: 0,
                shortest: Duration::MAX,
            }),
            next_ms: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
            epoch: Instant::now(),
            started: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            #[cfg(test)]
            scans: AtomicU64::new(0),
        }))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.wake.notify_one();
    }
}

impl Watchdog {
    pub fn handle(&self) -> WatchdogHandle {
        WatchdogHandle(Arc::clone(&self.0))
    }
}

impl WatchdogHandle {
    /// Watches a request on `conn` from now on. `deadline`: the total bound, if any.
    pub fn watch(
        &self,
        conn: Arc<ConnInfo>,
        send_timeout: Duration,
        deadline: Option<Duration>,
    ) -> Arc<Watch> {
        let table = &self.0;
        if !table.started.load(Ordering::Relaxed) && !table.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(Arc::clone(table).run());
        }
        let start = Instant::now();
        let start_ms = table.ms(start);
        let watch = {
            let mut watches = table.lock();
            watches.admitted += 1;
            watches.shortest = watches.shortest.min(send_timeout);
            let entry = watches.slab.vacant_entry();
            let watch = Arc::new(Watch {
                table: Arc::clone(table),
                key: entry.key(),
                conn,
                start,
                start_ms,
                asked_ms: AtomicU64::new(NOT_SENDING),
                fired: AtomicU8::new(0),
                send_timeout,
                deadline,
                done: AtomicBool::new(false),
            });
            entry.insert(Arc::clone(&watch));
            watch
        };
        if let Some(d) = deadline {
            table.bound_at(start_ms.saturating_add(millis(d)));
        }
        watch
    }
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, Watches> {
        self.watches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ms(&self, at: Instant) -> u64 {
        millis(at.saturating_duration_since(self.epoch))
    }

    /// A bound may pass at `at_ms`: wakes the task if it would otherwise look later.
    fn bound_at(&self, at_ms: u64) {
        if at_ms < self.next_ms.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    async fn run(self: Arc<Self>) {
        let mut sleep = pin!(tokio::time::sleep_until(self.epoch));
        let mut admitted = 0;
        loop {
            // Bounds that appear while the table is read see `u64::MAX` and wake the task again.
            self.next_ms.store(u64::MAX, Ordering::SeqCst);
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let now = Instant::now();
            let (earliest, seen) = self.check(now);
            // With nothing to wait for yet requests coming in, look again after the shortest
            // send timeout: no response that starts before then can pass its bound earlier, so
            // responses of short exchanges do not wake the task one by one.
            let at = earliest.or_else(|| (seen.0 != admitted).then(|| now.checked_add(seen.1))?);
            admitted = seen.0;
            let Some(at) = at else {
                self.wake.notified().await;
                continue;
            };
            self.next_ms.store(self.ms(at), Ordering::SeqCst);
            sleep.as_mut().reset(at);
            tokio::select! {
                () = self.wake.notified() => {}
                () = &mut sleep => {}
            }
        }
    }

    /// Ends the requests whose bound has passed by `now`. Returns the earliest bound still to
    /// come, and how many requests have been admitted with what shortest send timeout.
    fn check(&self, now: Instant) -> (Option<Instant>, (u64, Duration)) {
        let mut passed = Vec::new();
        let mut earliest: Option<Instant> = None;
        let watches = self.lock();
        #[cfg(test)]
        self.scans.fetch_add(1, Ordering::Relaxed);
        let seen = (watches.admitted, watches.shortest);
        for (_, watch) in &watches.slab {
            if watch.fired.load(Ordering::Acquire) != 0 {
                continue;
            }
            match watch.next() {
                Some((at, reason)) if at <= now => passed.push((Arc::clone(watch), reason)),
                Some((at, _)) => earliest = Some(earliest.map_or(at, |e| e.min(at))),
                None => {}
            }
        }
        drop(watches);
        for (watch, reason) in passed {
            watch.fired.store(reason, Ordering::Release);
            watch.conn.abandon();
        }
        (earliest, seen)
    }
}

impl Watch {
    /// Response data (or the head) was handed to hyper: from now on the client has to take it.
    pub fn sending(&self) {
        let now = self.elapsed_ms();
        let was = self.asked_ms.swap(now, Ordering::SeqCst);
        if was == NOT_SENDING {
            let at = self.start_ms.saturating_add(now);
            self.table
                .bound_at(at.saturating_add(millis(self.send_timeout)));
        }
    }

    /// hyper asked for more: the client took what it had. Until the next [`Self::sending`] the
    /// response waits on the upstream, not on the client.
    pub fn asked(&self) {
        self.asked_ms.store(NOT_SENDING, Ordering::Relaxed);
    }

    /// The request is over (or abandoned): the watch leaves the table.
    pub fn finished(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.table.lock().slab.remove(self.key);
        }
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
        let asked = self.asked_ms.load(Ordering::SeqCst);
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
}

/// Whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(dog: &Watchdog) -> Arc<ConnInfo> {
        Arc::new(ConnInfo::new(
            ([127, 0, 0, 1], 1).into(),
            true,
            dog.handle(),
        ))
    }

    const SECOND: Duration = Duration::from_secs(1);

    /// `conn` is abandoned exactly `after` from now (to the millisecond, in virtual time).
    async fn abandoned_after(conn: &ConnInfo, after: Duration) {
        let start = Instant::now();
        conn.abandoned().await;
        let took = start.elapsed();
        assert!(
            took.abs_diff(after) <= Duration::from_millis(1),
            "abandoned after {took:?}, expected {after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_the_client_stops_taking_is_ended_at_the_send_timeout() {
        let dog = Watchdog::default();
        let c = conn(&dog);
        let watch = dog.handle().watch(Arc::clone(&c), 5 * SECOND, None);
        // Waiting on the upstream does not count.
        tokio::time::sleep(60 * SECOND).await;
        assert!(watch.fired().is_none());
        watch.sending();
        abandoned_after(&c, 5 * SECOND).await;
        assert!(matches!(
            watch.fired(),
            Some(GatewayError::ClientSendTimeout { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_each_piece_in_time_is_never_ended() {
        let dog = Watchdog::default();
        let c = conn(&dog);
        let watch = dog.handle().watch(Arc::clone(&c), 5 * SECOND, None);
        for _ in 0..10 {
            watch.sending();
            tokio::time::sleep(4 * SECOND).await;
            watch.asked();
        }
        assert!(watch.fired().is_none());
        // The last piece is not taken: the bound runs from when it was handed over.
        watch.sending();
        abandoned_after(&c, 5 * SECOND).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_bound_wakes_a_watchdog_waiting_for_a_later_one() {
        let dog = Watchdog::default();
        let slow = conn(&dog);
        let first = dog
            .handle()
            .watch(Arc::clone(&slow), 60 * SECOND, Some(600 * SECOND));
        first.sending();
        // Let the task plan its wake-up for the first request's bound (60 s from now).
        tokio::time::sleep(SECOND).await;
        let fast = conn(&dog);
        let second = dog.handle().watch(Arc::clone(&fast), 2 * SECOND, None);
        second.sending();
        abandoned_after(&fast, 2 * SECOND).await;
        assert!(
            first.fired().is_none(),
            "only the second request passed its bound"
        );
        // A deadline shorter than every bound already planned wakes it too.
        let third = conn(&dog);
        let watch = dog
            .handle()
            .watch(Arc::clone(&third), 60 * SECOND, Some(3 * SECOND));
        abandoned_after(&third, 3 * SECOND).await;
        assert!(matches!(
            watch.fired(),
            Some(GatewayError::RequestDeadline { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn short_exchanges_do_not_wake_the_watchdog_one_by_one() {
        let dog = Watchdog::default();
        for _ in 0..100 {
            let watch = dog.handle().watch(conn(&dog), 5 * SECOND, None);
            watch.sending();
            watch.finished();
            // The task runs here, woken by the response, and finds nothing left to wait for.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The first response wakes it; it then looks again every 5 s while requests come.
        let scans = dog.0.scans.load(Ordering::Relaxed);
        assert!(scans <= 3, "{scans} scans for 100 requests in 1 s");
        // A response that then stalls is still ended at its bound.
        let c = conn(&dog);
        let watch = dog.handle().watch(Arc::clone(&c), 5 * SECOND, None);
        tokio::time::sleep(20 * SECOND).await;
        watch.sending();
        abandoned_after(&c, 5 * SECOND).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_request_leaves_the_table_and_is_not_ended() {
        let dog = Watchdog::default();
        let c = conn(&dog);
        let watch = dog.handle().watch(Arc::clone(&c), SECOND, Some(2 * SECOND));
        watch.sending();
        watch.finished();
        assert!(dog.0.lock().slab.is_empty());
        let later = dog.handle().watch(conn(&dog), SECOND, None);
        assert_eq!(later.key, watch.key, "the slot is reused");
        // Only the first call counts: the slot is someone else's now.
        watch.finished();
        assert_eq!(dog.0.lock().slab.len(), 1);
        later.finished();
        assert!(dog.0.lock().slab.is_empty());
        tokio::time::sleep(10 * SECOND).await;
        assert!(watch.fired().is_none() && later.fired().is_none());
    }
}
