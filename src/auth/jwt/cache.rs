//! Verified tokens, cached so a client reusing its token pays for one signature check per token,
//! not per request.
//!
//! Keyed by the SHA-256 of the whole token (a collision would be needed to ride on another
//! token's verification). Bounded: when full, expired entries go first, then an arbitrary tenth.
//! A hit still checks `exp` and `nbf` against the clock; entries vouched for by a retired signing
//! key are removed with it ([`TokenCache::retain_kids`]).

use std::sync::Arc;

use dashmap::DashMap;

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedToken {
    pub subject: Arc<str>,
    pub exp: u64,
    pub nbf: Option<u64>,
    pub refresh_after: Option<u64>,
    /// The key that verified the signature.
    pub kid: Arc<str>,
    /// Whose key: `None` for the service's own signing keys, else the trusted issuer's index.
    pub issuer: Option<usize>,
}

#[derive(Debug)]
pub struct TokenCache {
    map: DashMap<[u8; 32], CachedToken>,
    capacity: usize,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: DashMap::new(),
            capacity,
        }
    }

    pub fn get(&self, digest: &[u8; 32]) -> Option<CachedToken> {
        self.map.get(digest).map(|e| e.value().clone())
    }

    pub fn remove(&self, digest: &[u8; 32]) {
        self.map.remove(digest);
    }

    pub fn insert(&self, digest: [u8; 32], entry: CachedToken, now: u64) {
        if self.map.len() >= self.capacity {
            self.evict(now);
        }
        self.map.insert(digest, entry);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn evict(&self, now: u64) {
        self.map.retain(|_, e| e.exp > now);
        if self.map.len() < self.capacity {
            return;
        }
        let excess = self.map.len() + 1 - self.capacity;
        let victims: Vec<[u8; 32]> = self
            .map
            .iter()
            .take(excess.max(self.capacity / 10))
            .map(|e| *e.key())
            .collect();
        for k in victims {
            self.map.remove(&k);
        }
    }

    /// Keeps only entries verified by one of `kids`.
    pub fn retain_kids(&self, kids: &[Arc<str>]) {
        self.map.retain(|_, e| kids.iter().any(|k| **k == *e.kid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(exp: u64, kid: &str) -> CachedToken {
        CachedToken {
            subject: Arc::from("s"),
            exp,
            nbf: None,
            refresh_after: None,
            kid: Arc::from(kid),
            issuer: None,
        }
    }

    #[test]
    fn bounded_with_expired_entries_evicted_first() {
        let cache = TokenCache::new(4);
        cache.insert([1; 32], entry(10, "a"), 0);
        cache.insert([2; 32], entry(100, "a"), 0);
        cache.insert([3; 32], entry(100, "a"), 0);
        cache.insert([4; 32], entry(100, "a"), 0);
        // Full at now=50: the expired entry makes room.
        cache.insert([5; 32], entry(100, "a"), 50);
        assert_eq!(cache.len(), 4);
        assert!(cache.get(&[1; 32]).is_none());
        assert!(cache.get(&[5; 32]).is_some());
        // Full with nothing expired: still bounded.
        cache.insert([6; 32], entry(100, "a"), 50);
        assert!(cache.len() <= 4);
        assert!(cache.get(&[6; 32]).is_some());
    }

    #[test]
    fn retiring_a_key_drops_what_it_verified() {
        let cache = TokenCache::new(10);
        cache.insert([1; 32], entry(100, "old"), 0);
        cache.insert([2; 32], entry(100, "new"), 0);
        cache.retain_kids(&[Arc::from("new")]);
        assert!(cache.get(&[1; 32]).is_none());
        assert!(cache.get(&[2; 32]).is_some());
    }
}
