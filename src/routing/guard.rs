//! The canary guardrail (`routes[].guard`): each split target's 5xx share
//! over `window`; a non-first target that fails too often is drained
//! (weight 0) until the route's `split` or `guard` changes in the config.
//!
//! A target trips when, over the window, it served at least `min_requests`,
//! more than `max_error_rate` of them were 5xx, and its share is worse than
//! the first target's beyond chance: a two-proportion z-test above 3σ,
//! so a backend-wide outage that hits stable and canary alike does not
//! drain the canary (the test allows for the first target's small counts
//! early on). When the first target answered nothing in the window (drained
//! by config, say), the threshold alone decides. A trip that would leave no weight at all
//! (the first target drained by config) does not happen.
//!
//! Requests only touch atomics; a target's counts are read back only when
//! it answers a 5xx.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use metrics::{Counter, Gauge};

use crate::clock::{self, Clock};
use crate::config::GuardConfig;
use crate::routing::split::bit;
use crate::telemetry::{Metrics, CANARY_GUARD_TRIPPED, CANARY_GUARD_TRIPS_TOTAL};
use crate::upstream::window::Window;

/// How sure the guard must be that a canary is worse than the first target.
const Z_THRESHOLD: f64 = 3.0;

/// A route's guard state: survives reloads that keep the route's `split`
/// and `guard` as they were (see [`fingerprint`]).
pub struct GuardState {
    fingerprint: u64,
    /// Per split entry (config order): a = answers, b = 5xx answers.
    windows: Box<[Window]>,
    /// Bit `i`: split entry `i` is drained by the guard.
    tripped: AtomicU64,
    trips: Mutex<Vec<Trip>>,
    clock: Clock,
}

/// One trip, for `/status` and the log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trip {
    pub upstream: String,
    pub at_unix: u64,
    pub requests: u64,
    pub error_rate: f64,
    pub first_requests: u64,
    pub first_error_rate: f64,
}

impl GuardState {
    pub fn new(fingerprint: u64, targets: usize) -> GuardState {
        GuardState {
            fingerprint,
            windows: (0..targets).map(|_| Window::default()).collect(),
            tripped: AtomicU64::new(0),
            trips: Mutex::new(Vec::new()),
            clock: Clock::new(),
        }
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

/// What identifies a guard's configuration: the route's split and guard.
pub fn fingerprint(route: &crate::config::RouteConfig) -> u64 {
    let text = format!("{:?}{:?}", route.split, route.guard);
    crate::upstream::balance::hash_bytes(text.as_bytes())
}

/// A route's guard, compiled for one snapshot.
pub struct Guard {
    route: Arc<str>,
    max_error_rate: f64,
    min_requests: u64,
    window_ms: u64,
    state: Arc<GuardState>,
    /// Per split entry: upstream name, weight, trip metrics.
    targets: Vec<GuardTarget>,
}

struct GuardTarget {
    upstream: Arc<str>,
    weight: u32,
    /// Trip metrics; `None` for the first target, which never trips.
    metrics: Option<(Counter, Gauge)>,
}

impl Guard {
    pub fn new(
        route: Arc<str>,
        config: &GuardConfig,
        state: Arc<GuardState>,
        split: &[(Arc<str>, u32)],
        metrics: &Metrics,
    ) -> Guard {
        let targets: Vec<GuardTarget> = split
            .iter()
            .enumerate()
            .map(|(i, (upstream, weight))| {
                let labels = [("route", &*route), ("upstream", &**upstream)];
                GuardTarget {
                    upstream: upstream.clone(),
                    weight: *weight,
                    metrics: (i > 0).then(|| {
                        (
                            metrics.counter(CANARY_GUARD_TRIPS_TOTAL, &labels),
                            metrics.gauge(CANARY_GUARD_TRIPPED, &labels),
                        )
                    }),
                }
            })
            .collect();
        let tripped = state.tripped.load(Ordering::Relaxed);
        for (i, t) in targets.iter().enumerate() {
            if let Some((_, gauge)) = &t.metrics {
                gauge.set(f64::from(u8::from(bit(i) & tripped != 0)));
            }
        }
        Guard {
            route,
            max_error_rate: config.max_error_rate,
            min_requests: u64::from(config.min_requests),
            window_ms: clock::millis(config.window.0).max(1),
            state,
            targets,
        }
    }

    /// The drained split entries, as a bitmask of their indices.
    pub fn tripped(&self) -> u64 {
        self.state.tripped.load(Ordering::Relaxed)
    }

    /// Counts split entry `index`'s answer; a 5xx from a canary may trip it.
    pub fn record(&self, index: usize, status: u16) {
        let Some(window) = self.state.windows.get(index) else {
            return;
        };
        let failed = status >= 500;
        let now = self.state.clock.now_ms();
        window.add(now, self.window_ms, 1, u32::from(failed));
        // An entry without a bit (past the 64th) cannot be drained: without
        // this, each of its 5xx would count, log and record a new "trip".
        let bit = bit(index);
        if failed && index > 0 && bit != 0 && self.tripped() & bit == 0 {
            self.evaluate(index, now);
        }
    }

    fn evaluate(&self, index: usize, now: u64) {
        let (n, bad) = self.state.windows[index].totals(now, self.window_ms);
        if n < self.min_requests || n == 0 {
            return;
        }
        let rate = bad as f64 / n as f64;
        if rate <= self.max_error_rate {
            return;
        }
        let (n0, bad0) = self.state.windows[0].totals(now, self.window_ms);
        let rate0 = if n0 == 0 {
            0.0
        } else {
            bad0 as f64 / n0 as f64
        };
        if n0 > 0 && !worse_beyond_chance(bad, n, bad0, n0) {
            return;
        }
        // Never drain the last weight the route has.
        let tripped = self.tripped() | bit(index);
        let left: u64 = self
            .targets
            .iter()
            .enumerate()
            .filter(|(i, _)| tripped & bit(*i) == 0)
            .map(|(_, t)| u64::from(t.weight))
            .sum();
        if left == 0 {
            return;
        }
        if self.state.tripped.fetch_or(bit(index), Ordering::AcqRel) & bit(index) != 0 {
            return; // another request tripped it first
        }
        let target = &self.targets[index];
        if let Some((trips, tripped)) = &target.metrics {
            trips.increment(1);
            tripped.set(1.0);
        }
        tracing::warn!(
            route = %self.route,
            upstream = %target.upstream,
            error_rate = rate,
            requests = n,
            first_error_rate = rate0,
            first_requests = n0,
            "canary guard tripped: this upstream gets no more of the route's split until its `split` or `guard` changes"
        );
        let trip = Trip {
            upstream: target.upstream.to_string(),
            at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            requests: n,
            error_rate: rate,
            first_requests: n0,
            first_error_rate: rate0,
        };
        crate::sync::lock(&self.state.trips).push(trip);
    }

    /// For `/status`.
    pub fn status(&self) -> serde_json::Value {
        let now = self.state.clock.now_ms();
        let trips = crate::sync::lock(&self.state.trips).clone();
        serde_json::json!({
            "route": &*self.route,
            "max_error_rate": self.max_error_rate,
            "min_requests": self.min_requests,
            "window_ms": self.window_ms,
            "targets": self.targets.iter().enumerate().map(|(i, t)| {
                let (n, bad) = self.state.windows[i].totals(now, self.window_ms);
                serde_json::json!({
                    "upstream": &*t.upstream,
                    "weight": t.weight,
                    "tripped": self.tripped() & bit(i) != 0,
                    "requests": n,
                    "errors": bad,
                })
            }).collect::<Vec<_>>(),
            "trips": trips,
        })
    }
}

/// Two-proportion z-test: is `bad / n` above `bad0 / n0` by more than
/// [`Z_THRESHOLD`] standard errors?
fn worse_beyond_chance(bad: u64, n: u64, bad0: u64, n0: u64) -> bool {
    let (n, n0) = (n as f64, n0 as f64);
    let (p, p0) = (bad as f64 / n, bad0 as f64 / n0);
    let pooled = (bad + bad0) as f64 / (n + n0);
    let se = (pooled * (1.0 - pooled) * (1.0 / n + 1.0 / n0)).sqrt();
    if se == 0.0 {
        return p > p0;
    }
    (p - p0) / se > Z_THRESHOLD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(weights: &[u32]) -> Guard {
        let config = GuardConfig {
            max_error_rate: 0.05,
            min_requests: 100,
            window: crate::config::Dur::secs(60),
        };
        let split: Vec<(Arc<str>, u32)> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| (Arc::from(format!("u{i}")), *w))
            .collect();
        Guard::new(
            Arc::from("r"),
            &config,
            Arc::new(GuardState::new(0, split.len())),
            &split,
            &Metrics::new(),
        )
    }

    /// `n` answers, every `every`-th a 502 (0: none).
    fn feed(g: &Guard, index: usize, n: u32, every: u32) {
        for i in 1..=n {
            let failed = every > 0 && i % every == 0;
            g.record(index, if failed { 502 } else { 200 });
        }
    }

    #[test]
    fn a_failing_canary_trips_a_healthy_one_does_not() {
        let g = guard(&[90, 10]);
        feed(&g, 0, 1000, 0);
        feed(&g, 1, 200, 50); // 2%: under the threshold
        assert_eq!(g.tripped(), 0);
        feed(&g, 1, 200, 5); // now 12% over 400
        assert_eq!(g.tripped(), 0b10);
        assert_eq!(g.status()["trips"][0]["upstream"], "u1");
    }

    #[test]
    fn not_below_min_requests_nor_when_stable_is_as_bad() {
        let g = guard(&[50, 50]);
        feed(&g, 1, 99, 2); // 50% errors, but 99 answers
        assert_eq!(g.tripped(), 0);
        // A backend-wide outage: stable fails as often as the canary.
        let g = guard(&[50, 50]);
        feed(&g, 0, 500, 2);
        feed(&g, 1, 500, 2);
        assert_eq!(g.tripped(), 0);
    }

    #[test]
    fn early_on_a_few_stable_answers_are_compared_not_ignored() {
        // Both fail one in five; stable has answered fewer than min_requests.
        let g = guard(&[50, 50]);
        feed(&g, 0, 40, 5);
        feed(&g, 1, 300, 5);
        assert_eq!(g.tripped(), 0);
        // With no stable answers at all the threshold alone decides.
        let g = guard(&[50, 50]);
        feed(&g, 1, 100, 5);
        assert_eq!(g.tripped(), 0b10);
    }

    #[test]
    fn the_last_weight_is_never_drained() {
        let g = guard(&[0, 10]);
        feed(&g, 1, 200, 2);
        assert_eq!(g.tripped(), 0);
    }

    #[test]
    fn entries_past_the_64th_are_never_drained_nor_counted_as_trips() {
        let mut weights = vec![1u32; 66];
        weights[0] = 100;
        let g = guard(&weights);
        feed(&g, 65, 300, 1); // all 5xx
        assert_eq!(g.tripped(), 0);
        assert!(g.status()["trips"].as_array().unwrap().is_empty());
    }

    #[test]
    fn z_test() {
        assert!(worse_beyond_chance(20, 100, 0, 1900));
        assert!(!worse_beyond_chance(12, 100, 190, 1900));
        assert!(!worse_beyond_chance(5, 5, 5, 5));
        assert!(worse_beyond_chance(5, 5, 0, 5));
    }
}
