//! Rate limits (pipeline step 2c): a token bucket per client key, kept as
//! GCRA (the generic cell rate algorithm) in one atomic per key.
//!
//! GCRA stores a bucket as its "theoretical arrival time" (TAT): when the
//! bucket would be full again. A request at `now` is allowed when
//! `max(TAT, now) + T - now <= burst × T` (`T` = 1/rate) and then moves TAT
//! forward by `T`; a refused request changes nothing. So a check is one
//! load and one compare-exchange, with no lock and no timer.
//!
//! The buckets of a policy live in [`crate::state::State`] under its name,
//! so they survive reloads; the policy's numbers come from the snapshot.
//! Memory is bounded: a sweep removes keys whose bucket is full again (they
//! would start full anyway), and past `max_keys` live keys new keys share
//! one overflow bucket, so a flood of random keys is limited as one client.
//!
//! With `store: redis://…` the decision comes from the shared store
//! ([`super::shared`]); these in-process buckets then serve
//! `on_store_error: local` while the store cannot answer.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use http::{HeaderMap, HeaderValue};
use metrics::{Counter, Gauge};

use super::shared::SharedBuckets;
use crate::client_key::{ClientKey, KeySource};
use crate::clock::Clock;
use crate::config::limits::is_sf_string;
use crate::config::{LimitMode, OnStoreError, RateLimitConfig};
use crate::error::Reject;
use crate::telemetry::{Exchange, Metrics, RATE_LIMITED_TOTAL, RATE_LIMIT_KEYS};

/// draft-ietf-httpapi-ratelimit-headers: the policy (`"name";q=burst;w=secs`)...
pub static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
/// ...and the client's state in it (`"name";r=remaining;t=secs-to-full`).
pub static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// A policy as one snapshot sees it.
pub struct RatePolicy {
    pub name: Arc<str>,
    /// Tried in order; the first present on the request is its key.
    pub keys: Vec<ClientKey>,
    /// Nanoseconds per token (T).
    interval_ns: u64,
    burst: u64,
    pub mode: LimitMode,
    max_keys: usize,
    /// `RateLimit-Policy` for every response of a limited route.
    policy_header: HeaderValue,
    /// The name as the `RateLimit` fields quote it: `check` refuses names
    /// that are not a plain structured-field string, and nothing else may
    /// reach a head.
    field_name: Arc<str>,
    /// What every limited HTTP/1.1 head carries before the decision's
    /// numbers: `ratelimit-policy: …\r\nratelimit: "name";r=`.
    fields_prefix: Box<[u8]>,
    /// In-process buckets: the store with `store: local`, the fallback
    /// with a shared store.
    pub buckets: Arc<Buckets>,
    /// The shared store's buckets (`store: redis://…`).
    pub shared: Option<Arc<SharedBuckets>>,
    pub on_store_error: OnStoreError,
}

impl RatePolicy {
    pub fn new(
        c: &RateLimitConfig,
        buckets: Arc<Buckets>,
        shared: Option<Arc<SharedBuckets>>,
    ) -> RatePolicy {
        let interval_ns = (1e9 / c.rate.per_second()).round().max(1.0) as u64;
        let burst = u64::from(c.burst);
        // q: the burst; w: seconds to refill it from empty.
        let window = (interval_ns.saturating_mul(burst) as f64 / 1e9)
            .ceil()
            .max(1.0) as u64;
        let name: Arc<str> = Arc::from(c.name.as_str());
        let field_name = match is_sf_string(&name) {
            true => name.clone(),
            false => Arc::from("default"),
        };
        let policy_header =
            HeaderValue::from_str(&format!("\"{field_name}\";q={burst};w={window}"))
                .unwrap_or(HeaderValue::from_static("\"default\""));
        let fields_prefix = [
            &b"ratelimit-policy: "[..],
            policy_header.as_bytes(),
            b"\r\nratelimit: \"",
            field_name.as_bytes(),
            b"\";r=",
        ]
        .concat()
        .into_boxed_slice();
        RatePolicy {
            name,
            field_name,
            fields_prefix,
            keys: c.key.iter().filter_map(ClientKey::new).collect(),
            interval_ns,
            burst,
            mode: c.mode,
            max_keys: c.max_keys,
            policy_header,
            buckets,
            shared,
            on_store_error: c.on_store_error(),
        }
    }

    /// Takes one token for `key` (bytes of the first key present; empty
    /// when the request has none of them) from the in-process buckets.
    pub fn check(&self, key: &[u8]) -> Decision {
        self.buckets
            .check(key, self.interval_ns, self.burst, self.max_keys)
    }

    /// Takes one token for `key` from the policy's store. `None`: the
    /// shared store could not answer and `on_store_error: allow` lets the
    /// request through undecided. A refusal of `deny` is a 503.
    async fn decide(&self, key: &[u8]) -> Result<Option<Decision>, Reject> {
        let Some(shared) = &self.shared else {
            return Ok(Some(self.check(key)));
        };
        match shared.check(key, self.max_keys).await {
            Ok(decision) => Ok(Some(decision)),
            Err(_) => match self.on_store_error {
                OnStoreError::Local => Ok(Some(self.check(key))),
                OnStoreError::Allow => Ok(None),
                // Shadow mode refuses nothing, store outages included.
                OnStoreError::Deny if self.mode == LimitMode::Shadow => Ok(None),
                OnStoreError::Deny => Err(Reject::RateLimitUnavailable {
                    policy: self.name.clone(),
                }),
            },
        }
    }

    /// Step 2c: charges the request to its key's bucket. Enforced, an empty
    /// bucket is a 429 and every response gets the `RateLimit` headers; in
    /// shadow mode nothing is refused, but what would have been is counted
    /// and marked for the access log. Requests with none of the keys share
    /// one bucket (the empty key), so leaving a header out is no way around
    /// the limit.
    pub async fn admit(
        self: &Arc<Self>,
        keys: &KeySource<'_>,
        exchange: &mut Exchange,
    ) -> Result<(), Reject> {
        let key = self.keys.iter().find_map(|k| k.read(keys));
        let key = key.as_ref().map_or(&b""[..], |k| k.as_bytes());
        let Some(decision) = self.decide(key).await? else {
            return Ok(());
        };
        let enforce = self.mode == LimitMode::Enforce;
        if enforce {
            exchange.rate = Some((self.clone(), decision));
        }
        if decision.allowed {
            return Ok(());
        }
        if enforce {
            self.buckets.enforced.increment(1);
            return Err(Reject::RateLimited {
                policy: self.name.clone(),
                retry_after_secs: decision.retry_after_secs.max(1),
            });
        }
        self.buckets.shadowed.increment(1);
        exchange.shadow_limited = Some(self.name.clone());
        Ok(())
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Tokens left after this request.
    pub remaining: u64,
    /// Seconds until the bucket is full again (`RateLimit: t`).
    pub reset_secs: u64,
    /// When refused: seconds until one token is back (`Retry-After`).
    pub retry_after_secs: u64,
}

impl Decision {
    /// Writes the `RateLimit` field's value for this decision.
    fn write(&self, policy: &str, out: &mut BytesMut) {
        out.extend_from_slice(b"\"");
        out.extend_from_slice(policy.as_bytes());
        out.extend_from_slice(b"\";r=");
        self.write_numbers(out);
    }

    /// The value's end: `remaining;t=reset`.
    fn write_numbers(&self, out: &mut BytesMut) {
        // Without `fmt`: `format!` was 60% of a limited request's
        // rate-limit cost (callgrind).
        out.extend_from_slice(itoa::Buffer::new().format(self.remaining).as_bytes());
        out.extend_from_slice(b";t=");
        out.extend_from_slice(itoa::Buffer::new().format(self.reset_secs).as_bytes());
    }

    /// The `RateLimit` field for this decision.
    fn header(&self, policy: &str) -> Option<HeaderValue> {
        // Two 20-digit numbers at most.
        let mut text = BytesMut::with_capacity(policy.len() + 7 + 40);
        self.write(policy, &mut text);
        HeaderValue::from_maybe_shared(text.freeze()).ok()
    }
}

impl RatePolicy {
    /// Writes `RateLimit-Policy` and `RateLimit` for `decision` as lines
    /// of an HTTP/1.1 head.
    pub fn write_fields(&self, decision: &Decision, out: &mut BytesMut) {
        out.extend_from_slice(&self.fields_prefix);
        decision.write_numbers(out);
        out.extend_from_slice(b"\r\n");
    }

    /// Sets `RateLimit-Policy` and `RateLimit` for `decision` in `headers`.
    pub fn insert_fields(&self, decision: &Decision, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY.clone(), self.policy_header.clone());
        if let Some(state) = decision.header(&self.field_name) {
            headers.insert(RATELIMIT.clone(), state);
        }
    }
}

/// One policy's buckets (long-lived; see the module docs).
pub struct Buckets {
    clock: Clock,
    map: DashMap<Box<[u8]>, AtomicU64>,
    /// Shared by keys that arrive while `max_keys` are live.
    overflow: AtomicU64,
    live: AtomicUsize,
    pub enforced: Counter,
    pub shadowed: Counter,
    keys_gauge: Gauge,
}

impl Buckets {
    pub fn new(policy: &str, metrics: &Metrics) -> Buckets {
        let limited = |mode: &'static str| {
            metrics.counter(RATE_LIMITED_TOTAL, &[("policy", policy), ("mode", mode)])
        };
        Buckets {
            clock: Clock::new(),
            map: DashMap::new(),
            overflow: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            enforced: limited("enforce"),
            shadowed: limited("shadow"),
            keys_gauge: metrics.gauge(RATE_LIMIT_KEYS, &[("policy", policy)]),
        }
    }

    /// Live keys (what the sweep has not removed yet).
    pub fn live_keys(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    fn check(&self, key: &[u8], interval_ns: u64, burst: u64, max_keys: usize) -> Decision {
        let now = self.clock.now_ns();
        if let Some(cell) = self.map.get(key) {
            return gcra(&cell, now, interval_ns, burst);
        }
        if self.live.load(Ordering::Relaxed) >= max_keys {
            return gcra(&self.overflow, now, interval_ns, burst);
        }
        let cell = self.map.entry(Box::from(key)).or_insert_with(|| {
            self.live.fetch_add(1, Ordering::Relaxed);
            AtomicU64::new(0)
        });
        gcra(&cell, now, interval_ns, burst)
    }

    /// Forgets keys whose bucket is full again; returns how many are left.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_ns();
        self.map.retain(|_, tat| tat.load(Ordering::Relaxed) > now);
        let left = self.map.len();
        self.live.store(left, Ordering::Relaxed);
        self.keys_gauge.set(left as f64);
        left
    }
}

/// One GCRA step on `cell` (the key's TAT, in ns on the buckets' clock).
fn gcra(cell: &AtomicU64, now: u64, interval: u64, burst: u64) -> Decision {
    let capacity = interval.saturating_mul(burst);
    let mut tat = cell.load(Ordering::Acquire);
    loop {
        let new_tat = tat.max(now).saturating_add(interval);
        let ahead = new_tat - now;
        if ahead > capacity {
            let wait = ahead - capacity;
            return Decision {
                allowed: false,
                remaining: 0,
                reset_secs: secs_up(tat.saturating_sub(now)),
                retry_after_secs: secs_up(wait),
            };
        }
        match cell.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                return Decision {
                    allowed: true,
                    remaining: (capacity - ahead) / interval,
                    reset_secs: secs_up(ahead),
                    retry_after_secs: 0,
                };
            }
            Err(seen) => tat = seen,
        }
    }
}

/// Whole seconds, rounded up.
pub(super) fn secs_up(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// Sweeps every policy's buckets every `every` until the task is aborted.
pub async fn sweep_forever(shared: Arc<crate::Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for buckets in shared.state.all_buckets() {
            // Off the event loop: a million keys take a few tens of ms.
            let _ = tokio::task::spawn_blocking(move || buckets.sweep()).await;
        }
        for buckets in shared.state.all_shared_buckets() {
            let _ = tokio::task::spawn_blocking(move || buckets.sweep()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratelimit_field_text() {
        let d = Decision {
            allowed: true,
            remaining: 0,
            reset_secs: 18_446_744_073_709_551_615,
            retry_after_secs: 0,
        };
        assert_eq!(
            d.header("api").unwrap(),
            "\"api\";r=0;t=18446744073709551615"
        );
        let d = Decision {
            remaining: 1207,
            reset_secs: 60,
            ..d
        };
        assert_eq!(d.header("per-key").unwrap(), "\"per-key\";r=1207;t=60");
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_burst_then_one_token_per_interval() {
        let cell = AtomicU64::new(0);
        let (t, burst) = (SEC / 10, 3); // 10/s, burst 3
        let now = 5 * SEC;
        let d: Vec<Decision> = (0..4).map(|_| gcra(&cell, now, t, burst)).collect();
        assert_eq!(
            d.iter()
                .map(|d| (d.allowed, d.remaining))
                .collect::<Vec<_>>(),
            vec![(true, 2), (true, 1), (true, 0), (false, 0)]
        );
        assert_eq!(d[3].retry_after_secs, 1, "100 ms, rounded up");
        assert_eq!(d[2].reset_secs, 1, "300 ms to full, rounded up");
        // 100 ms later exactly one more.
        assert!(gcra(&cell, now + t, t, burst).allowed);
        assert!(!gcra(&cell, now + t, t, burst).allowed);
        // After 300 ms idle the whole burst is back.
        let later = now + 4 * t;
        assert_eq!(
            (0..5)
                .filter(|_| gcra(&cell, later, t, burst).allowed)
                .count(),
            3
        );
    }

    #[test]
    fn a_slow_rate_says_how_long_to_wait() {
        let cell = AtomicU64::new(0);
        let t = 60 * SEC; // 1/m
        assert!(gcra(&cell, SEC, t, 1).allowed);
        let refused = gcra(&cell, 2 * SEC, t, 1);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_secs, 59);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_isolated_swept_when_full_and_capped() {
        let b = Buckets::new("p", &Metrics::new());
        let (t, burst) = (SEC, 2);
        assert!(b.check(b"a", t, burst, 3).allowed);
        assert!(b.check(b"a", t, burst, 3).allowed);
        assert!(!b.check(b"a", t, burst, 3).allowed);
        assert!(
            b.check(b"b", t, burst, 3).allowed,
            "another key has its own bucket"
        );
        assert_eq!(b.live_keys(), 2);
        // At the cap, new keys share the overflow bucket.
        assert!(b.check(b"c", t, burst, 3).allowed);
        assert!(b.check(b"d", t, burst, 3).allowed);
        assert!(b.check(b"e", t, burst, 3).allowed);
        assert!(
            !b.check(b"f", t, burst, 3).allowed,
            "d, e and f share one bucket"
        );
        assert_eq!(b.live_keys(), 3);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(b.sweep(), 1, "b and c are full again; a is not");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.sweep(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_million_random_keys_stay_within_the_cap_and_are_swept() {
        let b = Buckets::new("p", &Metrics::new());
        let (t, burst, cap) = (SEC / 100, 10, 100_000);
        for _ in 0..1_000_000 {
            let key = fastrand::u64(..).to_le_bytes();
            b.check(&key, t, burst, cap);
        }
        assert_eq!(b.live_keys(), cap, "live keys stop at max_keys");
        // Everyone beyond the cap shared one bucket: it is empty now.
        assert!(!b.check(b"newcomer", t, burst, cap).allowed);
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(
            b.sweep(),
            0,
            "one token refills in 10 ms: every bucket is full again"
        );
        assert!(b.check(b"newcomer", t, burst, cap).allowed);
    }
}
