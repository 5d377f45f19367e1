//! Load shedding and bulkheads (pipeline steps 1, 2d and 5): a cap on
//! requests in flight, lowered by an adaptive limit that follows upstream
//! latency, with room reserved by route priority; and a per-upstream cap.
//!
//! **Adaptive limit** (a gradient limiter, after Netflix's
//! concurrency-limits `Gradient2`): every upstream try reports its latency.
//! Every 100 ms window with samples, the window's mean latency (`short`) is
//! compared with a baseline (`long`: the lowest window mean seen, rising by
//! 1% a window while latency stays above it):
//! `gradient = clamp(tolerance × long / short, 0.5, 1)` and
//! `target = limit × gradient + √limit`; the limit drops to a lower target at
//! once and moves halfway to a higher one, between `min_limit` and
//! `max_in_flight`. While latency stays within `tolerance` × baseline the
//! limit grows by about ½√limit per window; when the backend slows down it
//! nearly halves per window, so requests wait in no queue: the excess gets a
//! fast 503 instead. The baseline follows a
//! lasting rise of latency slowly (it doubles in about 7 s), so a new normal
//! is accepted rather than throttled forever, as Gradient2 does.
//!
//! **Priorities** keep room for what matters: with `L` the current limit,
//! `low` routes are shed above 70% of `L`, `normal` above 90%, `critical`
//! only above `L`. Only admitted requests count towards `L` (a refused one
//! never took a place), so a flood of shed low-priority requests does not
//! crowd out critical ones.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge};

use crate::clock::{millis, Clock};
use crate::config::{LimitMode, Priority, SheddingConfig};
use crate::telemetry::{Metrics, CONCURRENCY_LIMIT, SHED_TOTAL};

/// A counted place: the count goes down when it is dropped.
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// Takes a place in `count`; the count after taking it.
    pub fn take(count: &Arc<AtomicUsize>) -> (Slot, usize) {
        let n = count.fetch_add(1, Ordering::AcqRel) + 1;
        (Slot(count.clone()), n)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a request was shed (the `reason` label of `portcullis_shed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// Over `shedding.max_in_flight`.
    MaxInFlight,
    /// Over the adaptive limit.
    Adaptive,
    /// Over the share its route's priority may use.
    Priority,
    /// Over its upstream's `max_in_flight`.
    Upstream,
}

impl ShedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::MaxInFlight => "max_in_flight",
            ShedReason::Adaptive => "adaptive",
            ShedReason::Priority => "priority",
            ShedReason::Upstream => "upstream_max_in_flight",
        }
    }
    const ALL: [ShedReason; 4] = [
        ShedReason::MaxInFlight,
        ShedReason::Adaptive,
        ShedReason::Priority,
        ShedReason::Upstream,
    ];
}

/// The compiled `shedding` block.
#[derive(Debug, Clone, PartialEq)]
pub struct ShedPolicy {
    pub max_in_flight: usize,
    pub adaptive: bool,
    min_limit: f64,
    tolerance: f64,
    pub mode: LimitMode,
}

impl ShedPolicy {
    pub fn new(c: &SheddingConfig) -> ShedPolicy {
        ShedPolicy {
            max_in_flight: c.max_in_flight as usize,
            adaptive: c.adaptive,
            min_limit: f64::from(c.min_limit()),
            tolerance: c.tolerance,
            mode: c.mode,
        }
    }
}

/// Window of the adaptive limit.
const WINDOW: Duration = Duration::from_millis(100);
/// How fast the baseline rises, per window, while latency stays above it
/// (1%: it doubles in about 7 s).
const BASELINE_DRIFT: f64 = 0.01;

struct Adaptive {
    limit: f64,
    /// Baseline latency, ns; 0 until the first window.
    long: f64,
}

/// The gateway's shedding state (long-lived, in [`crate::state::State`]).
pub struct Shedder {
    clock: Clock,
    pub in_flight: Arc<AtomicUsize>,
    /// The adaptive limit now (`max_in_flight` when adaptive is off).
    limit: AtomicUsize,
    window_start_ms: AtomicU64,
    window_sum_ns: AtomicU64,
    window_count: AtomicU32,
    adaptive: Mutex<Adaptive>,
    /// [reason][0 enforce, 1 shadow]
    shed: [[Counter; 2]; 4],
    limit_gauge: Gauge,
}

impl Shedder {
    pub fn new(metrics: &Metrics) -> Shedder {
        let counter = |reason: ShedReason, mode: &'static str| {
            metrics.counter(SHED_TOTAL, &[("reason", reason.as_str()), ("mode", mode)])
        };
        Shedder {
            clock: Clock::new(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            limit: AtomicUsize::new(usize::MAX),
            window_start_ms: AtomicU64::new(0),
            window_sum_ns: AtomicU64::new(0),
            window_count: AtomicU32::new(0),
            adaptive: Mutex::new(Adaptive {
                limit: f64::MAX,
                long: 0.0,
            }),
            shed: ShedReason::ALL.map(|r| [counter(r, "enforce"), counter(r, "shadow")]),
            limit_gauge: metrics.gauge(CONCURRENCY_LIMIT, &[]),
        }
    }

    /// Counts a shed request; true when it must really be refused.
    pub fn shed(&self, reason: ShedReason, mode: LimitMode) -> bool {
        let i = ShedReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        match mode {
            LimitMode::Enforce => {
                self.shed[i][0].increment(1);
                true
            }
            LimitMode::Shadow => {
                self.shed[i][1].increment(1);
                false
            }
        }
    }

    /// The limit requests are held to now.
    pub fn limit(&self, policy: &ShedPolicy) -> usize {
        if policy.adaptive {
            self.limit.load(Ordering::Relaxed).min(policy.max_in_flight)
        } else {
            policy.max_in_flight
        }
    }

    /// Why a request of `priority` would be shed with `in_flight` admitted
    /// requests (itself included); `None` when it may go on.
    pub fn over(
        &self,
        policy: &ShedPolicy,
        priority: Priority,
        in_flight: usize,
    ) -> Option<ShedReason> {
        if in_flight > policy.max_in_flight {
            return Some(ShedReason::MaxInFlight);
        }
        let limit = self.limit(policy);
        if policy.adaptive && in_flight > limit {
            return Some(ShedReason::Adaptive);
        }
        let share = match priority {
            Priority::Critical => return None,
            Priority::Normal => 0.9,
            Priority::Low => 0.7,
        };
        (in_flight as f64 > share * limit as f64).then_some(ShedReason::Priority)
    }

    /// Step 1, before any other work: would even a critical request be
    /// shed now?
    pub fn full(&self, policy: &ShedPolicy) -> Option<ShedReason> {
        let next = self.in_flight.load(Ordering::Relaxed) + 1;
        self.over(policy, Priority::Critical, next)
    }

    /// Step 2d: takes a place among the admitted requests, or says why not.
    pub fn admit(&self, policy: &ShedPolicy, priority: Priority) -> Result<Slot, ShedReason> {
        let (slot, n) = Slot::take(&self.in_flight);
        match self.over(policy, priority, n) {
            None => Ok(slot),
            Some(reason) => Err(reason),
        }
    }

    /// Feeds one upstream try's latency to the adaptive limit.
    pub fn sample(&self, policy: &ShedPolicy, latency: Duration) {
        if !policy.adaptive {
            return;
        }
        let ns = crate::clock::nanos(latency);
        self.window_sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.window_count.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now_ms();
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now < start + millis(WINDOW) {
            return;
        }
        // One request per window closes it; the others go on.
        if self
            .window_start_ms
            .compare_exchange(start, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let sum = self.window_sum_ns.swap(0, Ordering::AcqRel);
        let count = self.window_count.swap(0, Ordering::AcqRel);
        if count == 0 {
            return;
        }
        let short = sum as f64 / f64::from(count);
        let mut a = crate::sync::lock(&self.adaptive);
        let max = policy.max_in_flight as f64;
        if a.limit > max {
            a.limit = max;
        }
        if a.long == 0.0 {
            a.long = short;
        }
        let gradient = (policy.tolerance * a.long / short.max(1.0)).clamp(0.5, 1.0);
        let target = a.limit * gradient + a.limit.sqrt();
        // Down at once (queues build fast), up halfway (probe gently).
        let next = if target < a.limit {
            target
        } else {
            0.5 * a.limit + 0.5 * target
        };
        a.limit = next.clamp(policy.min_limit, max);
        a.long = if short < a.long {
            short
        } else {
            a.long * (1.0 + BASELINE_DRIFT)
        };
        let limit = a.limit as usize;
        drop(a);
        self.limit.store(limit, Ordering::Relaxed);
        self.limit_gauge.set(limit as f64);
    }

    /// Forgets the adaptive state (shedding turned off or adaptive changed).
    pub fn reset(&self, policy: Option<&ShedPolicy>) {
        let mut a = crate::sync::lock(&self.adaptive);
        let max = policy.map_or(f64::MAX, |p| p.max_in_flight as f64);
        a.limit = max;
        a.long = 0.0;
        let limit = policy.map_or(usize::MAX, |p| p.max_in_flight);
        self.limit.store(limit, Ordering::Relaxed);
        self.limit_gauge
            .set(policy.map_or(0.0, |p| p.max_in_flight as f64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(adaptive: bool) -> ShedPolicy {
        ShedPolicy {
            max_in_flight: 100,
            adaptive,
            min_limit: 4.0,
            tolerance: 2.0,
            mode: LimitMode::Enforce,
        }
    }

    #[test]
    fn caps_and_priorities() {
        let s = Shedder::new(&Metrics::new());
        let p = policy(false);
        let critical = Priority::Critical;
        assert_eq!(s.over(&p, critical, 100), None);
        assert_eq!(s.over(&p, critical, 101), Some(ShedReason::MaxInFlight));
        assert_eq!(s.over(&p, Priority::Low, 71), Some(ShedReason::Priority));
        assert_eq!(s.over(&p, Priority::Low, 70), None);
        assert_eq!(s.over(&p, Priority::Normal, 91), Some(ShedReason::Priority));
        assert_eq!(s.over(&p, Priority::Normal, 90), None);
        // Admitted places are given back when dropped; refused ones too.
        let slots: Vec<Slot> = (0..70)
            .map(|_| s.admit(&p, Priority::Low).ok().unwrap())
            .collect();
        assert_eq!(s.admit(&p, Priority::Low).err(), Some(ShedReason::Priority));
        assert!(s.admit(&p, critical).is_ok());
        assert_eq!(s.in_flight.load(Ordering::SeqCst), 70);
        drop(slots);
        assert_eq!(s.in_flight.load(Ordering::SeqCst), 0);
        assert_eq!(s.full(&p), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_adaptive_limit_falls_when_latency_climbs_and_recovers() {
        let s = Shedder::new(&Metrics::new());
        let p = policy(true);
        s.reset(Some(&p));
        let windows = |latency_ms: u64, n: usize| {
            for _ in 0..n {
                for _ in 0..10 {
                    s.sample(&p, Duration::from_millis(latency_ms));
                }
            }
        };
        // Steady 10 ms: the limit stays at the cap.
        for _ in 0..5 {
            windows(10, 1);
            tokio::time::advance(WINDOW).await;
        }
        assert_eq!(s.limit(&p), 100);
        // The backend slows tenfold: the limit falls fast.
        for _ in 0..10 {
            windows(100, 1);
            tokio::time::advance(WINDOW).await;
        }
        let low = s.limit(&p);
        assert!(low < 40, "{low}");
        assert_eq!(
            s.over(&p, Priority::Critical, low + 1),
            Some(ShedReason::Adaptive)
        );
        // Back to 10 ms: it climbs again.
        for _ in 0..30 {
            windows(10, 1);
            tokio::time::advance(WINDOW).await;
        }
        assert!(s.limit(&p) > low * 2, "{} after {low}", s.limit(&p));
    }
}
