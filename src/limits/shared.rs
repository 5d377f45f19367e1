//! A rate-limit policy's buckets in a shared store (`store: redis://…`), so
//! a limit of 100/s means 100/s across every instance.
//!
//! - `sync: exact`: each check is one GCRA step in Redis
//!   ([`super::store::RedisStore::take`]); the fleet admits exactly what one
//!   bucket would.
//! - `sync: batched`: an instance takes up to `lease` tokens at a time
//!   from the shared bucket and serves them from memory, topping up in the
//!   background when half are spent. An instance never holds more than
//!   `lease` tokens of a key, so the fleet admits at most
//!   `instances × lease` more than exact mode would, in exchange for one
//!   Redis call per `lease` requests instead of one per request.
//!
//! In both modes a refusal is remembered until its retry time: other
//! instances can only spend tokens, never add them, so no token can be
//! there earlier, and a client hammering past its limit costs no Redis
//! call at all. Batched mode waits until a whole lease is due, so a client
//! held at its limit still costs one call per lease. Client keys are hashed (SHA-256) before they reach Redis:
//! an API key used as a rate-limit key is never stored in clear.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use metrics::Counter;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::rate::{secs_up, Decision};
use super::store::{Grant, RedisStore, StoreError};
use crate::clock::{nanos as ns, Clock};
use crate::config::{RateLimitConfig, SyncMode};
use crate::telemetry::{Metrics, RATE_LIMIT_STORE_CALLS_TOTAL, RATE_LIMIT_STORE_ERRORS_TOTAL};

/// A lease's tokens unused this long are given up by the sweep (the
/// entry's memory with them); a client back later starts a fresh lease.
const LEASE_IDLE: Duration = Duration::from_secs(10);

/// Redis keys: `portcullis:rl:<policy>:<32 hex digits of SHA-256(key)>`.
const KEY_PREFIX: &str = "portcullis:rl:";

/// The settings a policy's shared state was made for; a reload that
/// changes one makes the state anew (leases and remembered refusals were
/// taken under the old numbers).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub url: String,
    pub sync: SyncMode,
    pub lease: u64,
    pub timeout: Duration,
    pub interval_us: u64,
    pub burst: u64,
}

impl Settings {
    pub fn of(c: &RateLimitConfig, url: &str) -> Settings {
        Settings {
            url: url.to_string(),
            sync: c.sync(),
            lease: u64::from(c.lease()),
            timeout: c.store_timeout(),
            interval_us: interval_us(c),
            burst: u64::from(c.burst),
        }
    }
}

/// Microseconds per token in Redis (its clock counts µs): at least 1, so a
/// Redis policy admits at most 1 000 000/s per key.
fn interval_us(c: &RateLimitConfig) -> u64 {
    (1e6 / c.rate.per_second()).round().max(1.0) as u64
}

/// One policy's shared buckets.
pub struct SharedBuckets {
    pub store: Arc<RedisStore>,
    pub settings: Settings,
    /// `portcullis:rl:<policy>:`
    prefix: Box<[u8]>,
    clock: Clock,
    /// Leases (batched) and remembered refusals (both modes), per key.
    entries: DashMap<Box<[u8]>, Arc<Entry>>,
    live: AtomicUsize,
    /// Checks that could not use the store (the metric, and a count
    /// `/status` can read).
    errors: Counter,
    errors_seen: AtomicU64,
    calls: Counter,
}

/// What an instance knows of one key's shared bucket.
#[derive(Default)]
struct Entry {
    /// Leased tokens not served yet.
    tokens: AtomicU64,
    /// No token before this (ns on the clock; 0: none remembered).
    refused_until: AtomicU64,
    /// The shared bucket's tokens at the last answer (for `RateLimit: r`).
    shared_remaining: AtomicU64,
    /// When the shared bucket is full again, at the last answer (ns).
    full_at: AtomicU64,
    /// The last answer (ns): idle leases are given up.
    answered_at: AtomicU64,
    /// A lease call is in flight; the others wait for `answered`.
    fetching: AtomicBool,
    answered: Notify,
}

impl Entry {
    /// Takes one leased token; the tokens left.
    fn take_token(&self) -> Option<u64> {
        self.tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(1))
            .ok()
            .map(|before| before - 1)
    }

    fn refusal(&self, now: u64) -> Option<Decision> {
        let until = self.refused_until.load(Ordering::Relaxed);
        (until > now).then(|| Decision {
            allowed: false,
            remaining: 0,
            reset_secs: secs_up(self.full_at.load(Ordering::Relaxed).saturating_sub(now)),
            retry_after_secs: secs_up(until - now),
        })
    }

    /// Records an answer from Redis. A refusal is remembered until the
    /// next token is due, plus `wait_more` (batched mode: until a whole
    /// lease is due, so a client over its limit costs one call per lease,
    /// not one per token; the tokens wait in the shared bucket meanwhile).
    fn answer(&self, g: &Grant, now: u64, wait_more: u64) {
        self.tokens.fetch_add(g.granted, Ordering::AcqRel);
        self.shared_remaining.store(g.remaining, Ordering::Relaxed);
        self.full_at
            .store(now.saturating_add(ns(g.full_in)), Ordering::Relaxed);
        self.answered_at.store(now, Ordering::Relaxed);
        if g.granted == 0 {
            self.refused_until.store(
                now.saturating_add(ns(g.retry_in)).saturating_add(wait_more),
                Ordering::Relaxed,
            );
        }
    }

    /// An admission served from the lease: the client may still use what
    /// this instance holds plus what the shared bucket held at the last
    /// answer.
    fn allowed(&self, left: u64, burst: u64, now: u64) -> Decision {
        Decision {
            allowed: true,
            remaining: left
                .saturating_add(self.shared_remaining.load(Ordering::Relaxed))
                .min(burst),
            reset_secs: secs_up(self.full_at.load(Ordering::Relaxed).saturating_sub(now)),
            retry_after_secs: 0,
        }
    }
}

/// The store could not decide (the policy's `on_store_error` will).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUnavailable;

impl SharedBuckets {
    pub fn new(
        policy: &str,
        store: Arc<RedisStore>,
        settings: Settings,
        metrics: &Metrics,
    ) -> SharedBuckets {
        let labels = [("policy", policy)];
        SharedBuckets {
            store,
            settings,
            prefix: format!("{KEY_PREFIX}{policy}:").into_bytes().into(),
            clock: Clock::new(),
            entries: DashMap::new(),
            live: AtomicUsize::new(0),
            errors: metrics.counter(RATE_LIMIT_STORE_ERRORS_TOTAL, &labels),
            errors_seen: AtomicU64::new(0),
            calls: metrics.counter(RATE_LIMIT_STORE_CALLS_TOTAL, &labels),
        }
    }

    /// Takes one token for `key` from the shared bucket.
    pub async fn check(
        self: &Arc<Self>,
        key: &[u8],
        max_keys: usize,
    ) -> Result<Decision, StoreUnavailable> {
        let now = self.clock.now_ns();
        if self.settings.sync == SyncMode::Batched {
            let entry = match self.entries.get(key) {
                Some(entry) => {
                    // The hot path: a token from the lease, no await.
                    if let Some(left) = entry.take_token() {
                        self.top_up(&entry, key, left);
                        return Ok(entry.allowed(left, self.settings.burst, now));
                    }
                    entry.clone()
                }
                None => match self.new_entry(key, max_keys) {
                    Some(entry) => entry,
                    // Past max_keys: this key is checked exactly.
                    None => return self.exact(key, now, max_keys).await,
                },
            };
            return self.from_lease(&entry, key, now).await;
        }
        self.exact(key, now, max_keys).await
    }

    /// Exact mode: one GCRA step in Redis, unless a refusal is remembered.
    async fn exact(
        &self,
        key: &[u8],
        now: u64,
        max_keys: usize,
    ) -> Result<Decision, StoreUnavailable> {
        if let Some(refused) = self.entries.get(key).and_then(|e| e.refusal(now)) {
            return Ok(refused);
        }
        let g = self.call(key, 1).await?;
        if g.granted == 0 {
            if let Some(entry) = self.new_entry(key, max_keys) {
                entry.answer(&g, self.clock.now_ns(), 0);
            }
            return Ok(Decision {
                allowed: false,
                remaining: 0,
                reset_secs: secs_up(ns(g.full_in)),
                retry_after_secs: secs_up(ns(g.retry_in)),
            });
        }
        Ok(Decision {
            allowed: true,
            remaining: g.remaining,
            reset_secs: secs_up(ns(g.full_in)),
            retry_after_secs: 0,
        })
    }

    /// Batched mode with no token at hand: wait for the lease call in
    /// flight, or make one. Bounded by the store timeout, and by a few
    /// rounds when other requests take the new tokens first.
    async fn from_lease(
        self: &Arc<Self>,
        entry: &Arc<Entry>,
        key: &[u8],
        now: u64,
    ) -> Result<Decision, StoreUnavailable> {
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        for _ in 0..4 {
            if let Some(left) = entry.take_token() {
                return Ok(entry.allowed(left, self.settings.burst, now));
            }
            if let Some(refused) = entry.refusal(self.clock.now_ns()) {
                return Ok(refused);
            }
            if entry.fetching.swap(true, Ordering::AcqRel) {
                // Another request's lease call: wait for its answer.
                let answered = entry.answered.notified();
                tokio::pin!(answered);
                answered.as_mut().enable();
                if entry.fetching.load(Ordering::Acquire)
                    && tokio::time::timeout_at(deadline, answered).await.is_err()
                {
                    return Err(self.unavailable(None));
                }
                continue;
            }
            let result = self.lease(entry, key).await;
            result?;
        }
        Err(self.unavailable(None))
    }

    /// Starts a lease call in the background when the lease runs low, so
    /// requests seldom wait for Redis.
    fn top_up(self: &Arc<Self>, entry: &Arc<Entry>, key: &[u8], left: u64) {
        if left >= self.settings.lease / 2
            || !self.store.is_up()
            || entry.fetching.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (this, entry, key) = (self.clone(), entry.clone(), Box::<[u8]>::from(key));
        tokio::spawn(async move {
            let _ = this.lease(&entry, &key).await;
        });
    }

    /// One lease call, by the request that set `entry.fetching`: asks for
    /// what tops the lease up to `lease` tokens (so an instance never
    /// holds more), then wakes the requests waiting for it.
    async fn lease(&self, entry: &Entry, key: &[u8]) -> Result<(), StoreUnavailable> {
        let held = entry.tokens.load(Ordering::Acquire);
        let want = self.settings.lease.saturating_sub(held).max(1);
        let result = self.call(key, want).await;
        if let Ok(g) = &result {
            let lease_due = (self.settings.lease.saturating_sub(1))
                .saturating_mul(self.settings.interval_us)
                .saturating_mul(1000);
            entry.answer(g, self.clock.now_ns(), lease_due);
        }
        entry.fetching.store(false, Ordering::Release);
        entry.answered.notify_waiters();
        result.map(|_| ())
    }

    /// One script call for `key` (hashed), or a fallback when the store is
    /// not up or does not answer in time.
    async fn call(&self, key: &[u8], want: u64) -> Result<Grant, StoreUnavailable> {
        if !self.store.is_up() {
            return Err(self.unavailable(None));
        }
        self.calls.increment(1);
        let redis_key = self.redis_key(key);
        let s = &self.settings;
        self.store
            .take(&redis_key, s.interval_us, s.burst, want, s.timeout)
            .await
            .map_err(|e| self.unavailable(Some(&e)))
    }

    /// Checks that could not use the store so far.
    pub fn errors(&self) -> u64 {
        self.errors_seen.load(Ordering::Relaxed)
    }

    fn unavailable(&self, error: Option<&StoreError>) -> StoreUnavailable {
        self.errors.increment(1);
        self.errors_seen.fetch_add(1, Ordering::Relaxed);
        self.store.failed(error);
        StoreUnavailable
    }

    /// `portcullis:rl:<policy>:` + 32 hex digits of SHA-256(key).
    fn redis_key(&self, key: &[u8]) -> Vec<u8> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(key);
        let mut out = Vec::with_capacity(self.prefix.len() + 32);
        out.extend_from_slice(&self.prefix);
        for b in &digest[..16] {
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 15)]);
        }
        out
    }

    /// A new entry for `key`, unless `max_keys` are live.
    fn new_entry(&self, key: &[u8], max_keys: usize) -> Option<Arc<Entry>> {
        if let Some(e) = self.entries.get(key) {
            return Some(e.clone());
        }
        if self.live.load(Ordering::Relaxed) >= max_keys {
            return None;
        }
        let entry = self.entries.entry(Box::from(key)).or_insert_with(|| {
            self.live.fetch_add(1, Ordering::Relaxed);
            Arc::new(Entry::default())
        });
        Some(entry.clone())
    }

    /// Forgets entries with nothing worth keeping: no refusal to remember,
    /// no call in flight, and no lease or one idle for [`LEASE_IDLE`].
    /// Returns the entries left.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_ns();
        let idle = ns(LEASE_IDLE);
        self.entries.retain(|_, e| {
            e.fetching.load(Ordering::Relaxed)
                || e.refused_until.load(Ordering::Relaxed) > now
                || (e.tokens.load(Ordering::Relaxed) > 0
                    && now.saturating_sub(e.answered_at.load(Ordering::Relaxed)) < idle)
        });
        let left = self.entries.len();
        self.live.store(left, Ordering::Relaxed);
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_lease_is_served_then_a_refusal_is_remembered_until_its_retry_time() {
        let e = Entry::default();
        assert_eq!(e.take_token(), None, "no lease yet");
        let granted = Grant {
            granted: 3,
            remaining: 7,
            full_in: Duration::from_millis(300),
            retry_in: Duration::ZERO,
        };
        e.answer(&granted, SEC, 0);
        let served: Vec<u64> = std::iter::from_fn(|| e.take_token()).collect();
        assert_eq!(served, [2, 1, 0]);
        let d = e.allowed(0, 10, SEC);
        assert_eq!((d.allowed, d.remaining, d.reset_secs), (true, 7, 1));
        assert!(
            e.refusal(SEC).is_none(),
            "tokens ran out, nothing refused yet"
        );

        let none = Grant {
            granted: 0,
            remaining: 0,
            full_in: Duration::from_secs(2),
            retry_in: Duration::from_millis(1500),
        };
        e.answer(&none, 2 * SEC, 0);
        let refused = e.refusal(2 * SEC).expect("remembered");
        assert_eq!(
            (
                refused.allowed,
                refused.retry_after_secs,
                refused.reset_secs
            ),
            (false, 2, 2)
        );
        assert!(e.refusal(2 * SEC + 1_499_000_000).is_some());
        assert!(
            e.refusal(2 * SEC + 1_500_000_000).is_none(),
            "forgotten when the token is due"
        );
        // Batched: remembered until a whole lease is due.
        e.answer(&none, 4 * SEC, SEC);
        assert!(e.refusal(4 * SEC + 2_499_000_000).is_some());
        assert!(e.refusal(4 * SEC + 2_500_000_000).is_none());
    }

    #[tokio::test]
    async fn redis_keys_hash_the_client_key_under_the_policy_name() {
        let store = RedisStore::new("redis://127.0.0.1:1/0").expect("a valid URL");
        let settings = Settings {
            url: "redis://127.0.0.1:1/0".into(),
            sync: SyncMode::Exact,
            lease: 1,
            timeout: Duration::from_millis(5),
            interval_us: 1000,
            burst: 1,
        };
        let b = Arc::new(SharedBuckets::new(
            "per-client",
            store,
            settings,
            &Metrics::new(),
        ));
        let key = String::from_utf8(b.redis_key(b"secret-api-key")).expect("ASCII");
        assert_eq!(key.len(), "portcullis:rl:per-client:".len() + 32);
        assert!(key.starts_with("portcullis:rl:per-client:"));
        assert!(!key.contains("secret"), "{key}");
        assert_ne!(key, String::from_utf8_lossy(&b.redis_key(b"other-key")));
        // The store is not up (nothing listens on port 1): no wait, no call.
        let started = std::time::Instant::now();
        assert_eq!(b.check(b"k", 10).await, Err(StoreUnavailable));
        assert!(started.elapsed() < Duration::from_millis(50));
        assert_eq!(b.errors(), 1);
    }
}
