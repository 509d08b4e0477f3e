//! Admission control: who may enter a service, how many at once, and how fast.
//!
//! - [`ConcurrencyLimit`]: Azure ML's AKS front-end model. At most `max_concurrent_requests`
//!   requests are in the upstream at once; others wait in FIFO order (tokio's semaphore is fair
//!   and `try_acquire` never overtakes a waiter) for at most `max_request_wait`, then get 503; at
//!   most `max_queue_length` may wait, beyond that 503 at once. A waiter whose client disconnects
//!   is dropped, which removes it from the queue. The permit lives in the request context until
//!   the response body has been streamed, because the container is busy until then.
//! - [`RateLimiter`]: an optional token bucket per caller (key slot, token subject, or client IP
//!   for unauthenticated services) → 429 with `Retry-After`.
//! - [`client_ip`] and [`allowed`]: network rules. `X-Forwarded-For` is believed only from
//!   `trusted_proxies`; otherwise the peer address is the client.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ipnet::IpNet;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::{KeySlot, Principal};
use crate::config::RateLimit;
use crate::error::GatewayError;

/// The concurrency limit and wait queue of one service.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    semaphore: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Settings, changeable by a reload without losing track of requests in flight or waiting.
    settings: std::sync::Mutex<Settings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::struct_field_names)] // the names mirror the config keys they come from
struct Settings {
    max_concurrent: usize,
    max_wait: Duration,
    max_queue: usize,
}

/// Decrements the waiting count however the wait ends (admitted, timed out, or dropped because
/// the client went away).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConcurrencyLimit {
    pub fn new(max_concurrent: usize, max_wait: Duration, max_queue: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(max_concurrent)),
            waiting: AtomicUsize::new(0),
            settings: std::sync::Mutex::new(Settings {
                max_concurrent,
                max_wait,
                max_queue,
            }),
        }
    }

    fn settings(&self) -> Settings {
        *self
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot in the upstream, and how long the request waited for it.
    pub async fn admit(&self) -> Result<(OwnedSemaphorePermit, Duration), GatewayError> {
        if let Ok(permit) = Arc::clone(&self.semaphore).try_acquire_owned() {
            return Ok((permit, Duration::ZERO));
        }
        let Settings {
            max_wait,
            max_queue,
            ..
        } = self.settings();
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if queued >= max_queue {
            return Err(GatewayError::QueueFull { limit: max_queue });
        }
        let start = Instant::now();
        match tokio::time::timeout(max_wait, Arc::clone(&self.semaphore).acquire_owned()).await {
            Ok(Ok(permit)) => Ok((permit, start.elapsed())),
            Ok(Err(_)) => Err(GatewayError::Internal("admission semaphore closed")),
            Err(_) => Err(GatewayError::QueueTimeout {
                waited: start.elapsed(),
            }),
        }
    }

    /// Requests waiting right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Applies new settings in place (a reload), so requests in flight keep their slots and
    /// waiters keep their places. A higher limit frees slots at once; a lower one takes effect
    /// as requests in flight finish: a background task claims the surplus slots (in FIFO order
    /// with the waiters) and retires them.
    pub fn reconfigure(&self, max_concurrent: usize, max_wait: Duration, max_queue: usize) {
        let mut settings = self
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = settings.max_concurrent;
        if (old, settings.max_wait, settings.max_queue) == (max_concurrent, max_wait, max_queue) {
            return;
        }
        *settings = Settings {
            max_concurrent,
            max_wait,
            max_queue,
        };
        drop(settings);
        if max_concurrent > old {
            self.semaphore.add_permits(max_concurrent - old);
        } else if max_concurrent < old {
            let surplus = u32::try_from(old - max_concurrent).unwrap_or(u32::MAX);
            let semaphore = Arc::clone(&self.semaphore);
            let retire = async move {
                if let Ok(permits) = semaphore.acquire_many_owned(surplus).await {
                    permits.forget();
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn(retire)),
                Err(_) => tracing::warn!(
                    "no runtime to lower the concurrency limit; it applies after a restart"
                ),
            }
        }
    }
}

/// Whose bucket a request draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BucketKey {
    Slot(KeySlot),
    Subject(Arc<str>),
    Ip(IpAddr),
}

impl BucketKey {
    pub fn of(principal: &Principal, client_ip: IpAddr) -> Self {
        match principal {
            Principal::Key(slot) => Self::Slot(*slot),
            Principal::Token { subject, .. } => Self::Subject(Arc::clone(subject)),
            Principal::Anonymous => Self::Ip(client_ip),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets per caller for one service.
#[derive(Debug)]
pub struct RateLimiter {
    pub limit: RateLimit,
    buckets: DashMap<BucketKey, Bucket>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: DashMap::new(),
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until one is available.
    pub fn check(&self, key: BucketKey, now: Instant) -> Result<(), Duration> {
        let rate = self.limit.requests_per_second;
        let burst = f64::from(self.limit.burst);
        let mut entry = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let bucket = entry.value_mut();
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Forgets buckets that have refilled completely: they behave exactly like new ones.
    pub fn evict_full(&self, now: Instant) {
        let refill =
            Duration::from_secs_f64(f64::from(self.limit.burst) / self.limit.requests_per_second);
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < refill);
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The client address: the peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, xff: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let Some(chain) = xff else {
        return peer;
    };
    let mut leftmost = peer;
    for hop in chain.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // A malformed entry ends what can be believed.
            return leftmost;
        };
        let ip = ip.to_canonical();
        if !trusted.iter().any(|n| n.contains(&ip)) {
            return ip;
        }
        leftmost = ip;
    }
    leftmost
}

/// Whether `ip` passes an allow list (`None` allows everyone).
pub fn allowed(ip: IpAddr, cidrs: Option<&[IpNet]>) -> bool {
    cidrs.is_none_or(|nets| nets.iter().any(|n| n.contains(&ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("cidr")).collect()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8", "::1/128"]);
        let xff = "6.6.6.6, 203.0.113.7, 10.1.1.1";
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // Untrusted peer: its own address, whatever it claims.
        assert_eq!(
            client_ip(ip("198.51.100.1"), Some(xff), &trusted),
            ip("198.51.100.1")
        );
        // Trusted peer: the right-most untrusted hop (the left-most ones could be spoofed).
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some(xff), &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(client_ip(ip("::1"), Some(xff), &trusted), ip("203.0.113.7"));
        assert_eq!(client_ip(ip("10.0.0.2"), None, &trusted), ip("10.0.0.2"));
        let junk = "nonsense, 10.2.2.2";
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some(junk), &trusted),
            ip("10.2.2.2")
        );
        assert_eq!(client_ip(ip("10.0.0.2"), Some(xff), &[]), ip("10.0.0.2"));
    }

    #[test]
    fn allow_lists_cover_v4_and_v6() {
        let list = nets(&["127.0.0.0/8", "fd00::/8"]);
        assert!(allowed("127.0.0.1".parse().expect("ip"), Some(&list)));
        assert!(allowed("fd12::1".parse().expect("ip"), Some(&list)));
        assert!(!allowed("::1".parse().expect("ip"), Some(&list)));
        assert!(!allowed("192.168.1.1".parse().expect("ip"), Some(&list)));
        assert!(allowed("192.168.1.1".parse().expect("ip"), None));
    }

    #[test]
    fn token_bucket_allows_burst_then_refills() {
        let limiter = RateLimiter::new(RateLimit {
            requests_per_second: 2.0,
            burst: 3,
        });
        let t0 = Instant::now();
        let key = || BucketKey::Slot(KeySlot::Primary);
        for _ in 0..3 {
            assert!(limiter.check(key(), t0).is_ok());
        }
        let wait = limiter.check(key(), t0).expect_err("burst used up");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Other callers have their own bucket.
        assert!(
            limiter
                .check(BucketKey::Slot(KeySlot::Secondary), t0)
                .is_ok()
        );
        assert!(
            limiter
                .check(key(), t0 + Duration::from_millis(500))
                .is_ok()
        );
        assert!(
            limiter
                .check(key(), t0 + Duration::from_millis(500))
                .is_err()
        );
        limiter.evict_full(t0 + Duration::from_secs(10));
        assert!(limiter.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn queue_is_fifo_bounded_and_times_out() {
        let limit = Arc::new(ConcurrencyLimit::new(1, Duration::from_millis(500), 2));
        let (first, waited) = limit.admit().await.expect("free slot");
        assert_eq!(waited, Duration::ZERO);
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let spawn = |n: u32| {
            let (limit, order) = (Arc::clone(&limit), Arc::clone(&order));
            tokio::spawn(async move {
                let result = limit.admit().await;
                order.lock().expect("lock").push(n);
                result.map(|(permit, _)| drop(permit))
            })
        };
        let a = spawn(1);
        tokio::task::yield_now().await;
        let b = spawn(2);
        tokio::task::yield_now().await;
        assert_eq!(limit.waiting(), 2);
        // The queue is full: a third is refused at once.
        assert!(matches!(
            limit.admit().await,
            Err(GatewayError::QueueFull { limit: 2 })
        ));
        tokio::time::advance(Duration::from_millis(100)).await;
        drop(first);
        a.await.expect("join").expect("admitted");
        b.await.expect("join").expect("admitted");
        assert_eq!(*order.lock().expect("lock"), vec![1, 2], "FIFO");

        // A waiter that outlives the wait gets the timeout.
        let (_busy, _) = limit.admit().await.expect("slot");
        let timed_out = limit.admit().await;
        assert!(
            matches!(timed_out, Err(GatewayError::QueueTimeout { .. })),
            "{timed_out:?}"
        );
        assert_eq!(limit.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_leaves_the_queue() {
        let limit = Arc::new(ConcurrencyLimit::new(1, Duration::from_secs(10), 1));
        let (busy, _) = limit.admit().await.expect("slot");
        let l = Arc::clone(&limit);
        let waiter = tokio::spawn(async move { l.admit().await.map(drop) });
        tokio::task::yield_now().await;
        assert_eq!(limit.waiting(), 1);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(limit.waiting(), 0, "the queue slot is free again");
        drop(busy);
        let _slot = limit.admit().await.expect("slot after the waiter left");
    }
}
