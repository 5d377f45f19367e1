//! Endpoint health (pipeline step 5 reads it when choosing an endpoint):
//! active checks (`health_check`: a `GET` every `interval`, thresholds in a
//! row flip the verdict) and passive outlier detection (`outlier_detection`:
//! connect errors, resets and timeouts on real traffic eject an endpoint for
//! a while, never more than `max_ejected_percent` of an upstream).
//!
//! The verdicts live on the long-lived [`Endpoint`]; checker tasks are owned
//! by [`crate::state::State`], which starts, retunes and stops them as
//! configs come and go (`sync_health_checks`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderValue, HOST, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use metrics::Gauge;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Endpoint, Outgoing, Pool, SendError, Upstream};
use crate::body::{self, RequestBody};
use crate::clock::{millis, Clock};
use crate::config::{HealthCheckConfig, OutlierConfig, StatusRange};

/// An endpoint's health verdicts (part of [`Endpoint`]).
pub struct Health {
    /// The active checks' verdict; true when checks are off.
    up: AtomicBool,
    /// Until when (ms since `clock`) outlier detection has ejected the
    /// endpoint; 0 when it is not ejected.
    ejected_until: AtomicU64,
    /// Transport failures in a row on real traffic.
    failures_in_a_row: AtomicU32,
    /// Ejections in a row (each doubles the ejection time).
    ejections: AtomicU32,
    clock: Clock,
    last_check: Mutex<Option<CheckResult>>,
    gauge: Gauge,
}

/// What the last active check saw, for `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckResult {
    pub ok: bool,
    /// `200`, or `connect error`, `timeout`...
    pub result: String,
    pub at_unix: u64,
    pub duration_ms: u64,
}

impl Health {
    pub fn new(gauge: Gauge) -> Health {
        gauge.set(1.0);
        Health {
            up: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            failures_in_a_row: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            clock: Clock::new(),
            last_check: Mutex::new(None),
            gauge,
        }
    }

    /// May requests go here? Two atomic loads; the clock is read only while
    /// an ejection is in force.
    pub fn available(&self) -> bool {
        if !self.up.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || self.clock.now_ms() >= until
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// How long the endpoint stays ejected (zero when it is not).
    pub fn ejected_for(&self) -> Duration {
        let until = self.ejected_until.load(Ordering::Relaxed);
        Duration::from_millis(until.saturating_sub(self.clock.now_ms()))
    }

    pub fn last_check(&self) -> Option<CheckResult> {
        crate::sync::lock(&self.last_check).clone()
    }

    fn update_gauge(&self) {
        self.gauge.set(if self.available() { 1.0 } else { 0.0 });
    }

    /// Checks are turned off for this endpoint: it counts as up.
    pub fn reset_active(&self) {
        self.up.store(true, Ordering::Relaxed);
        *crate::sync::lock(&self.last_check) = None;
        self.update_gauge();
    }
}

/// The compiled `outlier_detection` block.
#[derive(Debug, Clone)]
pub struct OutlierPolicy {
    consecutive_failures: u32,
    eject_for: Duration,
    max_eject_for: Duration,
    max_ejected_percent: u32,
}

impl OutlierPolicy {
    pub fn new(c: &OutlierConfig) -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: c.consecutive_failures,
            eject_for: c.eject_for.0,
            max_eject_for: c.max_eject_for.0,
            max_ejected_percent: c.max_ejected_percent,
        }
    }
}

/// Feeds one real request's result to outlier detection.
pub fn observe(upstream: &Upstream, endpoint: &Arc<Endpoint>, transport_failure: bool) {
    let Some(policy) = &upstream.outlier else {
        return;
    };
    let health = &endpoint.health;
    if !transport_failure {
        if health.failures_in_a_row.load(Ordering::Relaxed) != 0 {
            health.failures_in_a_row.store(0, Ordering::Relaxed);
        }
        if health.ejected_until.load(Ordering::Relaxed) == 0 {
            health.ejections.store(0, Ordering::Relaxed);
        }
        return;
    }
    let in_a_row = health.failures_in_a_row.fetch_add(1, Ordering::AcqRel) + 1;
    if in_a_row < policy.consecutive_failures || health.ejected_until.load(Ordering::Acquire) != 0 {
        return;
    }
    // The cap: a bug that fails every request must not empty the upstream.
    let n = upstream.endpoints.len();
    let ejected = upstream
        .endpoints
        .iter()
        .filter(|e| e.health.ejected_until.load(Ordering::Relaxed) != 0)
        .count();
    let allowed = n * policy.max_ejected_percent as usize / 100;
    if ejected + 1 > allowed {
        tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.addr,
            "not ejected: max_ejected_percent reached");
        return;
    }
    let times = health.ejections.fetch_add(1, Ordering::AcqRel);
    let eject_for = policy
        .eject_for
        .saturating_mul(1u32 << times.min(16))
        .min(policy.max_eject_for);
    let until = health.clock.now_ms() + millis(eject_for).max(1);
    if health
        .ejected_until
        .compare_exchange(0, until, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    health.failures_in_a_row.store(0, Ordering::Relaxed);
    health.update_gauge();
    tracing::warn!(upstream = %upstream.name, endpoint = %endpoint.addr,
        failures = in_a_row, eject_for_ms = millis(eject_for), "endpoint ejected");
    let endpoint = endpoint.clone();
    let upstream_name = upstream.name.clone();
    tokio::spawn(async move {
        tokio::time::sleep(eject_for).await;
        let health = &endpoint.health;
        health.ejected_until.store(0, Ordering::Release);
        health.update_gauge();
        tracing::info!(upstream = %upstream_name, endpoint = %endpoint.addr,
            "endpoint back from ejection");
    });
}

/// What a checker task needs; replaced whole when the config changes.
pub struct CheckSettings {
    pub upstream: Arc<str>,
    pub config: HealthCheckConfig,
    pub pool: Arc<Pool>,
}

impl PartialEq for CheckSettings {
    fn eq(&self, other: &Self) -> bool {
        self.upstream == other.upstream
            && self.config == other.config
            && Arc::ptr_eq(&self.pool, &other.pool)
    }
}

/// Checks `endpoint` until aborted, reading the newest settings before each
/// check.
pub async fn run_checks(
    endpoint: Arc<Endpoint>,
    mut settings: watch::Receiver<Arc<CheckSettings>>,
) {
    // A random start spreads the checks of many endpoints over the interval.
    let first = settings.borrow().config.interval.0;
    tokio::time::sleep(first.mul_f64(fastrand::f64())).await;
    let mut successes = 0u32;
    let mut failures = 0u32;
    loop {
        let s = settings.borrow_and_update().clone();
        let started = Instant::now();
        let result = check_once(&endpoint, &s).await;
        let duration_ms = millis(started.elapsed());
        let ok = matches!(result, Ok(status) if accepts(&s.config.expected_statuses, status));
        let text = match &result {
            Ok(status) => status.as_u16().to_string(),
            Err(e) => (*e).to_string(),
        };
        let health = &endpoint.health;
        *crate::sync::lock(&health.last_check) = Some(CheckResult {
            ok,
            result: text.clone(),
            at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            duration_ms,
        });
        if ok {
            failures = 0;
            successes = successes.saturating_add(1);
        } else {
            successes = 0;
            failures = failures.saturating_add(1);
        }
        let up = health.up.load(Ordering::Relaxed);
        if up && failures >= s.config.unhealthy_threshold {
            health.up.store(false, Ordering::Relaxed);
            health.update_gauge();
            tracing::warn!(upstream = %s.upstream, endpoint = %endpoint.addr, result = %text,
                failures, "endpoint unhealthy: taken out of rotation");
        } else if !up && successes >= s.config.healthy_threshold {
            health.up.store(true, Ordering::Relaxed);
            health.update_gauge();
            tracing::info!(upstream = %s.upstream, endpoint = %endpoint.addr,
                successes, "endpoint healthy: back in rotation");
        }
        // ±10% jitter keeps checks from falling into lock-step.
        let pause = s.config.interval.0.mul_f64(0.9 + 0.2 * fastrand::f64());
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            // New settings (a reload): check at once with them.
            changed = settings.changed() => if changed.is_err() { return },
        }
    }
}

fn accepts(ranges: &[StatusRange], status: StatusCode) -> bool {
    let s = status.as_u16();
    ranges.iter().any(|r| (r.0..=r.1).contains(&s))
}

/// The most of a check's response body read, so its connection can be
/// used again; a longer body closes the connection.
const CHECK_BODY_BYTES: u64 = 64 << 10;

/// One check, on a pooled connection like a request's: a dead idle
/// connection fails the check no more than it would fail a request.
async fn check_once(
    endpoint: &Arc<Endpoint>,
    s: &CheckSettings,
) -> Result<StatusCode, &'static str> {
    let uri = Uri::try_from(s.config.path.as_str()).map_err(|_| "invalid check URI")?;
    let host = match &s.config.host {
        Some(h) => HeaderValue::from_str(h).map_err(|_| "invalid host")?,
        None => endpoint.host.clone(),
    };
    let mut req = Request::new(RequestBody::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    req.headers_mut().insert(HOST, host);
    req.headers_mut().insert(
        USER_AGENT,
        HeaderValue::from_static("portcullis-health-check"),
    );
    let deadline = Instant::now() + s.config.timeout.0;
    let resp = match tokio::time::timeout_at(
        deadline,
        s.pool.send(
            endpoint,
            Outgoing {
                req,
                forwarded: None,
            },
        ),
    )
    .await
    {
        Ok(Ok(resp)) => resp,
        Ok(Err(SendError::Connect(_) | SendError::ConnectTimeout)) => return Err("connect error"),
        Ok(Err(SendError::Protocol(_))) => return Err("invalid response"),
        Ok(Err(SendError::Io(_) | SendError::Body(_))) => return Err("reset"),
        Err(_) => return Err("timeout"),
    };
    let status = resp.status();
    // Read to the end (bounded), which gives the connection back; one
    // byte past the limit tells a longer body.
    body::drain(resp.into_body(), CHECK_BODY_BYTES + 1, deadline).await;
    Ok(status)
}
