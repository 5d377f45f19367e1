//! Retries (pipeline step 5): which requests may be tried again, when, and
//! how many retries an upstream can afford (the budget).
//!
//! Eligible: idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE) and
//! requests with `Idempotency-Key`; any method after a connect error (the
//! request never left). The body must have fit the replay buffer. The retry
//! budget keeps retries under `budget` × requests over the last 10 s plus
//! `min_retries_per_second`, so a failing upstream sees at most about
//! (1 + budget) × its normal traffic, never (1 + attempts) ×.

use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};
use metrics::Counter;

use super::outcome::{Outcome, OutcomeSet};
use super::window::Window;
use crate::clock::{millis, Clock};
use crate::config::RetryConfig;
use crate::telemetry::{Metrics, UPSTREAM_RETRIES_TOTAL};

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// How far back the budget looks.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// The compiled `retry` block.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    on: OutcomeSet,
    backoff: Duration,
    max_backoff: Duration,
    budget: f64,
    min_per_window: f64,
    pub replay_buffer: u64,
    pub per_try_timeout: Option<Duration>,
    pub attempts_header: bool,
}

impl RetryPolicy {
    pub fn new(c: &RetryConfig) -> RetryPolicy {
        RetryPolicy {
            attempts: c.attempts,
            on: OutcomeSet::new(&c.on),
            backoff: c.backoff.0,
            max_backoff: c.max_backoff.0,
            budget: c.budget,
            min_per_window: f64::from(c.min_retries_per_second) * BUDGET_WINDOW.as_secs_f64(),
            replay_buffer: c.replay_buffer.0,
            per_try_timeout: c.per_try_timeout.map(|d| d.0),
            attempts_header: c.attempts_header,
        }
    }

    /// May this request be retried at all (before looking at its body)?
    pub fn eligible(method: &Method, headers: &HeaderMap) -> bool {
        matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
        ) || headers.contains_key(&IDEMPOTENCY_KEY)
    }

    /// Does `outcome` call for another try? `idempotent` is
    /// [`RetryPolicy::eligible`]; without it only a connect error qualifies.
    pub fn retries_on(&self, outcome: Outcome, idempotent: bool) -> bool {
        self.on.contains(outcome) && (idempotent || outcome == Outcome::ConnectError)
    }

    /// The pause before retry number `retry` (1-based): full jitter over an
    /// exponentially growing ceiling.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.max_backoff);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// One upstream's retry budget and retry counters (long-lived, in
/// [`crate::state::State`]).
pub struct RetryBudget {
    clock: Clock,
    /// `a` = requests, `b` = retries.
    window: Window,
    pub succeeded: Counter,
    pub failed: Counter,
    pub exhausted: Counter,
}

impl RetryBudget {
    pub fn new(upstream: &str, metrics: &Metrics) -> RetryBudget {
        let result = |r: &'static str| {
            metrics.counter(
                UPSTREAM_RETRIES_TOTAL,
                &[("upstream", upstream), ("result", r)],
            )
        };
        RetryBudget {
            clock: Clock::new(),
            window: Window::default(),
            succeeded: result("success"),
            failed: result("failure"),
            exhausted: result("budget_exhausted"),
        }
    }

    /// Counts a request (first tries only) towards the budget.
    pub fn deposit(&self) {
        self.window
            .add(self.clock.now_ms(), millis(BUDGET_WINDOW), 1, 0);
    }

    /// Takes one retry from the budget; false (and counted) when it is spent.
    pub fn withdraw(&self, policy: &RetryPolicy) -> bool {
        let now = self.clock.now_ms();
        let (requests, retries) = self.window.totals(now, millis(BUDGET_WINDOW));
        let allowed = policy.budget * requests as f64 + policy.min_per_window;
        if (retries as f64) + 1.0 > allowed {
            self.exhausted.increment(1);
            return false;
        }
        self.window.add(now, millis(BUDGET_WINDOW), 0, 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OutcomeName, Size};

    fn policy(budget: f64, min: u32) -> RetryPolicy {
        RetryPolicy::new(&RetryConfig {
            attempts: 2,
            on: vec![OutcomeName::ConnectError, OutcomeName::Status(503)],
            backoff: crate::config::Dur::millis(10),
            max_backoff: crate::config::Dur::millis(40),
            budget,
            min_retries_per_second: min,
            replay_buffer: Size(1024),
            per_try_timeout: None,
            attempts_header: false,
        })
    }

    #[test]
    fn eligibility_and_outcomes() {
        let p = policy(0.2, 0);
        let mut h = HeaderMap::new();
        assert!(RetryPolicy::eligible(&Method::GET, &h));
        assert!(!RetryPolicy::eligible(&Method::POST, &h));
        h.insert(&IDEMPOTENCY_KEY, "k1".parse().unwrap());
        assert!(RetryPolicy::eligible(&Method::POST, &h));
        assert!(p.retries_on(Outcome::Status(503), true));
        assert!(!p.retries_on(Outcome::Status(503), false));
        assert!(p.retries_on(Outcome::ConnectError, false));
        assert!(!p.retries_on(Outcome::Status(502), true));
        assert!(!p.retries_on(Outcome::Reset, true));
    }

    #[test]
    fn backoff_is_jittered_under_a_growing_capped_ceiling() {
        let p = policy(0.2, 0);
        for _ in 0..100 {
            assert!(p.backoff(1) <= Duration::from_millis(10));
            assert!(p.backoff(2) <= Duration::from_millis(20));
            assert!(p.backoff(9) <= Duration::from_millis(40));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries_at_a_share_of_requests() {
        let b = RetryBudget::new("u", &Metrics::new());
        let p = policy(0.2, 0);
        for _ in 0..100 {
            b.deposit();
        }
        let granted = (0..100).filter(|_| b.withdraw(&p)).count();
        assert_eq!(granted, 20);
        // The minimum lets a quiet upstream retry a little.
        let quiet = RetryBudget::new("q", &Metrics::new());
        let p = policy(0.2, 1);
        assert_eq!((0..100).filter(|_| quiet.withdraw(&p)).count(), 10);
        // Retries age out with the window.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!((0..100).filter(|_| quiet.withdraw(&p)).count(), 10);
    }
}
