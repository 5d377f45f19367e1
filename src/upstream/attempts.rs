//! Tries (pipeline step 5): one request sent to an upstream until its
//! answer is final. Each try picks an available endpoint (a fresh one for a
//! retry), runs one exchange, and feeds its outcome to outlier detection and
//! the adaptive concurrency limit; the retry policy and budget decide
//! whether another try follows. The circuit breaker around all of it is in
//! `pipeline::forward`.

use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;

use super::outcome::Outcome;
use super::retry::RetryPolicy;
use super::{health, Outgoing, Upstream, UpstreamBody};
use crate::body::Replay;
use crate::error::Reject;
use crate::limits::shed::{ShedPolicy, Shedder};
use crate::telemetry::Exchange;

/// Tries the upstream until an answer is final, and says what it came to.
/// A retry needs a `retry` policy, an outcome on its `on` list (for a
/// non-idempotent request only a connect error), a body that fit the replay
/// buffer, a retry left in the budget and time left before the route's
/// deadline; it goes to an endpoint not tried yet when one is available.
pub async fn try_until_final(
    upstream: &Upstream,
    key: Option<u64>,
    out: Outgoing<'_>,
    timeout: Duration,
    adaptive: Adaptive<'_>,
    exchange: &mut Exchange,
) -> (Result<Response<UpstreamBody>, Reject>, Option<Outcome>) {
    let now = Instant::now();
    let deadline = now + timeout;
    exchange.attempts = 1;
    let Some((policy, budget)) = &upstream.retry else {
        let (result, outcome, _) =
            try_once(upstream, key, 0, out, (now, deadline), adaptive, exchange).await;
        return (result, outcome);
    };
    budget.deposit();
    exchange.attempts_header = policy.attempts_header;
    let idempotent = RetryPolicy::eligible(out.req.method(), out.req.headers());
    let forwarded = out.forwarded;
    let (head, body) = out.req.into_parts();
    let mut body = match Replay::read(body, policy.replay_buffer).await {
        Ok(body) => body,
        Err(reject) => return (Err(reject), None),
    };
    let mut tried = 0u64;
    let mut attempt = 1;
    loop {
        let Some(this_body) = body.body_for_try() else {
            // Unreachable: only a replayable body is tried again.
            let reason = "the request body cannot be sent again";
            return (Err(Reject::BadRequest { reason }), None);
        };
        let now = Instant::now();
        let per_try = policy
            .per_try_timeout
            .map_or(deadline, |t| deadline.min(now + t));
        let out = Outgoing {
            req: Request::from_parts(copy_head(&head), this_body),
            forwarded,
        };
        let (result, outcome, index) = try_once(
            upstream,
            key,
            tried,
            out,
            (now, per_try),
            adaptive,
            exchange,
        )
        .await;
        let again = outcome.is_some_and(|o| policy.retries_on(o, idempotent));
        if attempt > 1 && outcome.is_some() {
            let counter = if again {
                &budget.failed
            } else {
                &budget.succeeded
            };
            counter.increment(1);
        }
        if !again || attempt > policy.attempts || !body.replayable() || !budget.withdraw(policy) {
            return (result, outcome);
        }
        let pause = policy.backoff(attempt);
        if Instant::now() + pause >= deadline {
            return (result, outcome);
        }
        if let Some(i) = index.filter(|i| *i < 64) {
            tried |= 1 << i;
        }
        drop(result);
        tokio::time::sleep(pause).await;
        attempt += 1;
        exchange.attempts = attempt;
    }
}

/// The adaptive concurrency limit, fed with each try's latency.
pub type Adaptive<'a> = Option<(&'a Shedder, &'a ShedPolicy)>;

/// One try, from `started` (the caller's clock reading) to `deadline`: the
/// balancer picks an available endpoint, the exchange runs, and its
/// outcome feeds outlier detection and the adaptive limit. Returns the
/// result, its outcome (`None` when the upstream was not at fault or not
/// tried) and the endpoint's index.
async fn try_once(
    upstream: &Upstream,
    key: Option<u64>,
    tried: u64,
    out: Outgoing<'_>,
    (started, deadline): (Instant, Instant),
    adaptive: Adaptive<'_>,
    exchange: &mut Exchange,
) -> (
    Result<Response<UpstreamBody>, Reject>,
    Option<Outcome>,
    Option<usize>,
) {
    let Some((index, endpoint)) = upstream.pick(key, tried) else {
        let wait = upstream
            .health_check
            .as_ref()
            .map_or(Duration::from_secs(1), |h| h.interval.0);
        return (
            Err(unavailable(upstream, "no healthy endpoint", wait)),
            None,
            None,
        );
    };
    exchange.endpoint = Some(endpoint.addr.clone());
    let timeout = deadline.saturating_duration_since(started);
    let result = super::forward(upstream, endpoint, out, deadline, timeout).await;
    let outcome = super::outcome_of(&result);
    if let (Some((shedder, policy)), Some(_)) = (adaptive, outcome) {
        shedder.sample(policy, started.elapsed());
    }
    if let Some(o) = outcome {
        health::observe(upstream, endpoint, o.is_transport_failure());
    }
    (result, outcome, Some(index))
}

pub fn unavailable(upstream: &Upstream, reason: &'static str, wait: Duration) -> Reject {
    upstream.pool.metrics.rejected.increment(1);
    Reject::UpstreamUnavailable {
        upstream: upstream.name.clone(),
        reason,
        // Whole seconds, rounded up: never 0, never earlier than useful.
        retry_after_secs: wait
            .as_millis()
            .div_ceil(1000)
            .max(1)
            .try_into()
            .unwrap_or(u64::MAX),
    }
}

/// A copy of a request head for one more try.
fn copy_head(head: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req.into_parts().0
}
