//! The circuit breaker of one upstream (pipeline step 5). Policy (the
//! thresholds) comes from the snapshot at every call; the state lives in
//! [`crate::state::State`] under the upstream's name, so an open breaker
//! stays open across a config reload.
//!
//! Closed → open after `consecutive_failures` in a row, or once `window`
//! holds at least `min_requests` with a failure share of `failure_ratio`.
//! Open refuses at once (no connect attempt) until `open_for` has passed;
//! then half-open admits `half_open_requests` probes: all succeed → closed,
//! any fails → open again for twice as long, up to `max_open_for`.
//!
//! Requests only touch atomics; a transition takes a mutex. Every
//! transition starts a new epoch, and outcomes of requests admitted in an
//! older epoch are ignored, so a slow request that started while closed
//! cannot trip a breaker that has since been reset.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::{millis, Clock};
use metrics::{Counter, Gauge};

use super::outcome::{Outcome, OutcomeSet};
use super::window::Window;
use crate::config::CircuitBreakerConfig;
use crate::telemetry::{Metrics, CIRCUIT_STATE, CIRCUIT_TRANSITIONS_TOTAL};

/// The compiled `circuit_breaker` block.
#[derive(Debug, Clone)]
pub struct BreakerPolicy {
    consecutive_failures: u32,
    failure_ratio: f64,
    min_requests: u64,
    window_ms: u64,
    open_for: Duration,
    max_open_for: Duration,
    half_open_requests: u32,
    failures: OutcomeSet,
}

impl BreakerPolicy {
    pub fn new(c: &CircuitBreakerConfig) -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: c.consecutive_failures,
            failure_ratio: c.failure_ratio,
            min_requests: u64::from(c.min_requests),
            window_ms: millis(c.window.0),
            open_for: c.open_for.0,
            max_open_for: c.max_open_for.map_or(c.open_for.0, |m| m.0),
            half_open_requests: c.half_open_requests,
            failures: OutcomeSet::new(&c.failures),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    fn from_u8(v: u8) -> BreakerState {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Permission to send one request; hand it back with the outcome to
/// [`Breaker::record`]. Dropped unused (the client went away), it frees its
/// half-open probe slot.
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    epoch: u64,
    probe: bool,
    recorded: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded && self.breaker.epoch.load(Ordering::Acquire) == self.epoch
        {
            self.breaker.probes_admitted.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

struct Transitions {
    to_open: Counter,
    to_half_open: Counter,
    to_closed: Counter,
    gauge: Gauge,
}

/// One upstream's breaker state (long-lived; see the module docs).
pub struct Breaker {
    upstream: Arc<str>,
    clock: Clock,
    state: AtomicU8,
    epoch: AtomicU64,
    /// While open: until when (ms on `clock`) requests are refused.
    open_until: AtomicU64,
    consecutive: AtomicU32,
    /// `a` = successes, `b` = failures.
    window: Window,
    probes_admitted: AtomicU32,
    probes_ok: AtomicU32,
    /// Reopenings from half-open in a row (the open time doubles each).
    reopenings: AtomicU32,
    transition: Mutex<()>,
    metrics: Transitions,
}

/// Retry-After while half-open probes are all taken.
const HALF_OPEN_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Breaker {
    pub fn new(upstream: &str, metrics: &Metrics) -> Breaker {
        let to = |state: &'static str| {
            metrics.counter(
                CIRCUIT_TRANSITIONS_TOTAL,
                &[("upstream", upstream), ("to", state)],
            )
        };
        let gauge = metrics.gauge(CIRCUIT_STATE, &[("upstream", upstream)]);
        gauge.set(0.0);
        Breaker {
            upstream: Arc::from(upstream),
            clock: Clock::new(),
            state: AtomicU8::new(BreakerState::Closed as u8),
            epoch: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            window: Window::default(),
            probes_admitted: AtomicU32::new(0),
            probes_ok: AtomicU32::new(0),
            reopenings: AtomicU32::new(0),
            transition: Mutex::new(()),
            metrics: Transitions {
                to_open: to("open"),
                to_half_open: to("half_open"),
                to_closed: to("closed"),
                gauge,
            },
        }
    }

    /// The state now, and for an open breaker how long it stays open.
    pub fn state(&self) -> (BreakerState, Duration) {
        let state = BreakerState::from_u8(self.state.load(Ordering::Acquire));
        let left = match state {
            BreakerState::Open => Duration::from_millis(
                self.open_until
                    .load(Ordering::Acquire)
                    .saturating_sub(self.clock.now_ms()),
            ),
            _ => Duration::ZERO,
        };
        (state, left)
    }

    /// Lets a request through, or says how long until the breaker may
    /// admit one (`Retry-After`).
    pub fn admit(&self, policy: &BreakerPolicy) -> Result<Ticket<'_>, Duration> {
        loop {
            let epoch = self.epoch.load(Ordering::Acquire);
            match BreakerState::from_u8(self.state.load(Ordering::Acquire)) {
                BreakerState::Closed => return Ok(self.ticket(epoch, false)),
                BreakerState::Open => {
                    let until = self.open_until.load(Ordering::Acquire);
                    let now = self.clock.now_ms();
                    if now < until {
                        return Err(Duration::from_millis(until - now));
                    }
                    self.half_open(epoch);
                }
                BreakerState::HalfOpen => {
                    let admitted = self.probes_admitted.fetch_add(1, Ordering::AcqRel);
                    if admitted < policy.half_open_requests
                        && self.epoch.load(Ordering::Acquire) == epoch
                    {
                        return Ok(self.ticket(epoch, true));
                    }
                    self.probes_admitted.fetch_sub(1, Ordering::AcqRel);
                    if self.epoch.load(Ordering::Acquire) == epoch {
                        return Err(HALF_OPEN_RETRY_AFTER);
                    }
                }
            }
        }
    }

    fn ticket(&self, epoch: u64, probe: bool) -> Ticket<'_> {
        Ticket {
            breaker: self,
            epoch,
            probe,
            recorded: false,
        }
    }

    /// Counts the outcome of a request [`Breaker::admit`] let through.
    pub fn record(&self, mut ticket: Ticket<'_>, outcome: Outcome, policy: &BreakerPolicy) {
        ticket.recorded = true;
        if self.epoch.load(Ordering::Acquire) != ticket.epoch {
            return;
        }
        let failed = policy.failures.contains(outcome);
        if ticket.probe {
            if failed {
                self.open(ticket.epoch, policy, "a half-open probe failed");
            } else if self.probes_ok.fetch_add(1, Ordering::AcqRel) + 1 >= policy.half_open_requests
            {
                self.close(ticket.epoch);
            }
            return;
        }
        let now = self.clock.now_ms();
        self.window
            .add(now, policy.window_ms, u32::from(!failed), u32::from(failed));
        if !failed {
            self.consecutive.store(0, Ordering::Relaxed);
            return;
        }
        let in_a_row = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if in_a_row >= policy.consecutive_failures {
            self.open(ticket.epoch, policy, "consecutive failures");
            return;
        }
        let (ok, failures) = self.window.totals(now, policy.window_ms);
        let total = ok + failures;
        if total >= policy.min_requests && failures as f64 >= policy.failure_ratio * total as f64 {
            self.open(ticket.epoch, policy, "failure ratio");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        crate::sync::lock(&self.transition)
    }

    fn open(&self, epoch: u64, policy: &BreakerPolicy, why: &'static str) {
        let _guard = self.lock();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        let from = BreakerState::from_u8(self.state.load(Ordering::Acquire));
        let reopenings = if from == BreakerState::HalfOpen {
            self.reopenings.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            0
        };
        let open_for = policy
            .open_for
            .saturating_mul(1u32 << reopenings.min(16))
            .min(policy.max_open_for);
        self.open_until
            .store(self.clock.now_ms() + millis(open_for), Ordering::Release);
        self.state
            .store(BreakerState::Open as u8, Ordering::Release);
        self.epoch.store(epoch + 1, Ordering::Release);
        self.metrics.to_open.increment(1);
        self.metrics.gauge.set(1.0);
        tracing::warn!(
            upstream = %self.upstream,
            from = from.as_str(),
            reason = why,
            open_for_ms = millis(open_for),
            "circuit breaker opened"
        );
    }

    fn half_open(&self, epoch: u64) {
        let _guard = self.lock();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        self.probes_admitted.store(0, Ordering::Release);
        self.probes_ok.store(0, Ordering::Release);
        self.state
            .store(BreakerState::HalfOpen as u8, Ordering::Release);
        self.epoch.store(epoch + 1, Ordering::Release);
        self.metrics.to_half_open.increment(1);
        self.metrics.gauge.set(2.0);
        tracing::info!(upstream = %self.upstream, "circuit breaker half-open: probing");
    }

    fn close(&self, epoch: u64) {
        let _guard = self.lock();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        self.consecutive.store(0, Ordering::Release);
        self.reopenings.store(0, Ordering::Release);
        self.window.clear();
        self.state
            .store(BreakerState::Closed as u8, Ordering::Release);
        self.epoch.store(epoch + 1, Ordering::Release);
        self.metrics.to_closed.increment(1);
        self.metrics.gauge.set(0.0);
        tracing::info!(upstream = %self.upstream, "circuit breaker closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutcomeName;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            min_requests: 10,
            window_ms: 10_000,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(40),
            half_open_requests: 2,
            failures: OutcomeSet::new(&[OutcomeName::ConnectError, OutcomeName::Any5xx]),
        }
    }

    fn run(b: &Breaker, p: &BreakerPolicy, outcome: Outcome) -> bool {
        match b.admit(p) {
            Ok(t) => {
                b.record(t, outcome, p);
                true
            }
            Err(_) => false,
        }
    }

    const FAIL: Outcome = Outcome::Status(503);
    const OK: Outcome = Outcome::Status(200);

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_and_closes() {
        let b = Breaker::new("u", &Metrics::new());
        let p = policy();
        assert!(run(&b, &p, FAIL) && run(&b, &p, OK));
        assert!(run(&b, &p, FAIL) && run(&b, &p, FAIL));
        assert_eq!(
            b.state().0,
            BreakerState::Closed,
            "a success resets the run"
        );
        assert!(run(&b, &p, FAIL));
        let (state, left) = b.state();
        assert_eq!(state, BreakerState::Open);
        assert_eq!(left, Duration::from_secs(10));
        assert_eq!(b.admit(&p).err(), Some(Duration::from_secs(10)));

        tokio::time::advance(Duration::from_secs(10)).await;
        let first = b.admit(&p).ok().unwrap();
        let second = b.admit(&p).ok().unwrap();
        assert_eq!(b.state().0, BreakerState::HalfOpen);
        assert_eq!(
            b.admit(&p).err(),
            Some(HALF_OPEN_RETRY_AFTER),
            "2 probes at most"
        );
        b.record(first, OK, &p);
        assert_eq!(b.state().0, BreakerState::HalfOpen);
        b.record(second, OK, &p);
        assert_eq!(b.state().0, BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_longer_up_to_the_cap() {
        let b = Breaker::new("u", &Metrics::new());
        let p = policy();
        for _ in 0..3 {
            run(&b, &p, FAIL);
        }
        for expected in [20, 40, 40] {
            tokio::time::advance(Duration::from_secs(40)).await;
            assert!(run(&b, &p, Outcome::ConnectError));
            assert_eq!(
                b.state(),
                (BreakerState::Open, Duration::from_secs(expected))
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_opens_once_enough_requests_were_seen() {
        let b = Breaker::new("u", &Metrics::new());
        let p = policy();
        // Alternating: never 3 in a row, but half fail.
        for i in 0..9 {
            run(&b, &p, if i % 2 == 0 { FAIL } else { OK });
        }
        assert_eq!(b.state().0, BreakerState::Closed, "9 < min_requests");
        run(&b, &p, OK);
        run(&b, &p, FAIL);
        assert_eq!(b.state().0, BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_probes_free_their_slot_and_stale_outcomes_are_ignored() {
        let b = Breaker::new("u", &Metrics::new());
        let p = policy();
        let stale = b.admit(&p).ok().unwrap();
        for _ in 0..3 {
            run(&b, &p, FAIL);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(b.admit(&p).ok().unwrap());
        drop(b.admit(&p).ok().unwrap());
        assert!(b.admit(&p).is_ok(), "dropped probes give their slot back");
        // A request admitted while closed, finishing now, changes nothing.
        b.record(stale, FAIL, &p);
        assert_eq!(b.state().0, BreakerState::HalfOpen);
    }
}
