//! Metrics (names, handles resolved once, the Prometheus exporter), the
//! access log, and log set-up. Used by every pipeline step that counts
//! something and by the respond step, which finishes each [`Exchange`].
//!
//! Each gateway owns its own recorder (no global), so tests can run several
//! gateways in one process. Hot-path handles are resolved when a snapshot is
//! compiled, or once per (route, status) on first use, never looked up by
//! string per request.

mod histogram;

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use http::{HeaderValue, Method};
use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::time::Instant;

use crate::error::CODES;
pub use histogram::DurationHistogram;

pub const REQUESTS_TOTAL: &str = "portcullis_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "portcullis_request_duration_seconds";
pub const IN_FLIGHT_REQUESTS: &str = "portcullis_in_flight_requests";
pub const UPSTREAM_REQUESTS_TOTAL: &str = "portcullis_upstream_requests_total";
pub const REJECTIONS_TOTAL: &str = "portcullis_rejections_total";
pub const UPSTREAM_ENDPOINT_HEALTHY: &str = "portcullis_upstream_endpoint_healthy";
pub const CIRCUIT_STATE: &str = "portcullis_circuit_state";
pub const CIRCUIT_TRANSITIONS_TOTAL: &str = "portcullis_circuit_transitions_total";
pub const UPSTREAM_RETRIES_TOTAL: &str = "portcullis_upstream_retries_total";
pub const UPSTREAM_CONNECTIONS_OPENED_TOTAL: &str = "portcullis_upstream_connections_opened_total";
pub const RATE_LIMITED_TOTAL: &str = "portcullis_rate_limited_total";
pub const RATE_LIMIT_KEYS: &str = "portcullis_rate_limit_keys";
pub const RATE_LIMIT_STORE_ERRORS_TOTAL: &str = "portcullis_rate_limit_store_errors_total";
pub const RATE_LIMIT_STORE_CALLS_TOTAL: &str = "portcullis_rate_limit_store_calls_total";
pub const RATE_LIMIT_STORE_UP: &str = "portcullis_rate_limit_store_up";
pub const SHED_TOTAL: &str = "portcullis_shed_total";
pub const DEPRECATED_REQUESTS_TOTAL: &str = "portcullis_deprecated_requests_total";
pub const CANARY_GUARD_TRIPS_TOTAL: &str = "portcullis_canary_guard_trips_total";
pub const CANARY_GUARD_TRIPPED: &str = "portcullis_canary_guard_tripped";
pub const CONCURRENCY_LIMIT: &str = "portcullis_concurrency_limit";
pub const CONNECTIONS_TOTAL: &str = "portcullis_connections_total";
pub const CONNECTIONS_REJECTED_TOTAL: &str = "portcullis_connections_rejected_total";
pub const CONNECTIONS_CUT_TOTAL: &str = "portcullis_connections_cut_total";
pub const OPEN_CONNECTIONS: &str = "portcullis_open_connections";
pub const CONFIG_GENERATION: &str = "portcullis_config_generation";
pub const CONFIG_RELOADS_TOTAL: &str = "portcullis_config_reloads_total";
pub const JWT_VALIDATIONS_TOTAL: &str = "portcullis_jwt_validations_total";
pub const JWKS_FETCHES_TOTAL: &str = "portcullis_jwks_fetches_total";
pub const JWT_KEYS_AGE_SECONDS: &str = "portcullis_jwt_keys_age_seconds";
pub const TLS_HANDSHAKES_TOTAL: &str = "portcullis_tls_handshakes_total";
pub const TLS_HANDSHAKE_ERRORS_TOTAL: &str = "portcullis_tls_handshake_errors_total";
pub const TLS_CERTIFICATE_RELOADS_TOTAL: &str = "portcullis_tls_certificate_reloads_total";
pub const TLS_CERTIFICATE_NOT_AFTER: &str =
    "portcullis_tls_certificate_not_after_timestamp_seconds";

static METADATA: Metadata<'static> = Metadata::new("portcullis", Level::INFO, None);

/// One gateway's metrics registry.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub in_flight: Gauge,
    /// `request_duration_seconds` by route, rendered after the recorder's
    /// metrics. Kept across reloads, as the recorder keeps its series.
    durations: Mutex<Vec<(Arc<str>, Arc<DurationHistogram>)>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let in_flight = recorder.register_gauge(&Key::from_name(IN_FLIGHT_REQUESTS), &METADATA);
        Arc::new(Metrics {
            recorder,
            handle,
            in_flight,
            durations: Mutex::default(),
        })
    }

    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    /// The duration histogram of `route`: the one already registered under
    /// that name, or a new one.
    fn duration_histogram(&self, route: &Arc<str>) -> Arc<DurationHistogram> {
        let mut durations = self
            .durations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, h)) = durations.iter().find(|(r, _)| r == route) {
            return h.clone();
        }
        let h = Arc::new(DurationHistogram::default());
        durations.push((route.clone(), h.clone()));
        h
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = self.handle.render();
        let durations = self
            .durations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        histogram::render_family(
            REQUEST_DURATION_SECONDS,
            durations.iter().map(|(route, h)| (&**route, &**h)),
            &mut out,
        );
        out
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

/// Per-route metric handles. `route` is "" for requests no route matched.
pub struct RouteMetrics {
    pub route: Arc<str>,
    metrics: Arc<Metrics>,
    duration: Arc<DurationHistogram>,
    /// `requests_total` by status, registered on first use: [class][code % 100].
    statuses: [OnceLock<Box<[OnceLock<Counter>]>>; 5],
    rejections: [OnceLock<Counter>; CODES.len()],
}

impl RouteMetrics {
    pub fn new(metrics: &Arc<Metrics>, route: Arc<str>) -> Arc<RouteMetrics> {
        let duration = metrics.duration_histogram(&route);
        Arc::new(RouteMetrics {
            route,
            metrics: metrics.clone(),
            duration,
            statuses: Default::default(),
            rejections: Default::default(),
        })
    }

    fn status_counter(&self, status: u16) -> Option<&Counter> {
        if !(100..600).contains(&status) {
            return None;
        }
        let class = self.statuses[usize::from(status / 100 - 1)]
            .get_or_init(|| (0..100).map(|_| OnceLock::new()).collect());
        Some(class[usize::from(status % 100)].get_or_init(|| {
            self.metrics.counter(
                REQUESTS_TOTAL,
                &[("route", &self.route), ("status", &status.to_string())],
            )
        }))
    }

    /// Counts one refusal under its error code.
    pub fn rejected(&self, code_index: usize) {
        if let Some(slot) = self.rejections.get(code_index) {
            slot.get_or_init(|| {
                self.metrics.counter(
                    REJECTIONS_TOTAL,
                    &[("reason", CODES[code_index]), ("route", &self.route)],
                )
            })
            .increment(1);
        }
    }
}

/// Per-upstream outcome counters for `portcullis_upstream_requests_total`.
pub struct UpstreamMetrics {
    pub ok: Counter,
    pub error: Counter,
    pub timeout: Counter,
    /// Refused without trying: circuit open or no healthy endpoint.
    pub rejected: Counter,
    /// Connections opened to the upstream's endpoints: with keep-alive
    /// working, it grows with concurrency, not with requests.
    pub connections: Counter,
}

impl UpstreamMetrics {
    pub fn new(metrics: &Metrics, upstream: &str) -> UpstreamMetrics {
        let c = |outcome| {
            metrics.counter(
                UPSTREAM_REQUESTS_TOTAL,
                &[("upstream", upstream), ("outcome", outcome)],
            )
        };
        UpstreamMetrics {
            ok: c("ok"),
            error: c("error"),
            timeout: c("timeout"),
            rejected: c("rejected"),
            connections: metrics
                .counter(UPSTREAM_CONNECTIONS_OPENED_TOTAL, &[("upstream", upstream)]),
        }
    }
}

/// One request's bookkeeping from arrival to the last byte of its response.
/// Dropping it records the status and duration metrics and writes the
/// access log line, exactly once.
pub struct Exchange {
    pub start: Instant,
    pub method: Method,
    /// The request path, kept only when the access log is on.
    pub path: String,
    pub request_id: HeaderValue,
    pub route: Arc<RouteMetrics>,
    pub upstream: Option<Arc<str>>,
    pub endpoint: Option<Arc<str>>,
    /// Tries sent upstream (more than 1 after retries).
    pub attempts: u32,
    /// Send `x-portcullis-attempts` (the upstream's `retry.attempts_header`).
    pub attempts_header: bool,
    pub status: u16,
    pub error: Option<&'static str>,
    pub bytes_out: u64,
    /// The response body was sent to its end (false: the client went away or
    /// the upstream broke off).
    pub completed: bool,
    pub access_log: bool,
    pub in_flight: Gauge,
    /// `x-portcullis-upstream` for the response.
    pub upstream_header: Option<HeaderValue>,
    /// `Deprecation`, `Sunset`, `Link` for the response (deprecated routes).
    pub deprecation: Option<Arc<crate::routing::version::Deprecation>>,
    /// The policy and its decision, for the response's `RateLimit-Policy`
    /// and `RateLimit` (enforced rate limits).
    pub rate: Option<(
        std::sync::Arc<crate::limits::rate::RatePolicy>,
        crate::limits::rate::Decision,
    )>,
    /// The policy that would have refused this request in shadow mode.
    pub shadow_limited: Option<Arc<str>>,
    /// The shedding reason that would have refused it in shadow mode.
    pub shadow_shed: Option<&'static str>,
    /// Places in the gateway's and the upstream's in-flight counts, given
    /// back when the response is over.
    pub slots: [Option<crate::limits::shed::Slot>; 2],
    /// The upstream's body failed mid-stream (not the client's doing).
    pub body_failed: bool,
    /// Held until the response is over: marks the connection busy.
    pub busy: Option<crate::server::Busy>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let (false, false, Some(busy)) = (self.completed, self.body_failed, &self.busy) {
            // The client went away or reset the stream before the end.
            busy.cancelled();
        }
        let elapsed = self.start.elapsed();
        self.in_flight.decrement(1.0);
        if let Some(c) = self.route.status_counter(self.status) {
            c.increment(1);
        }
        self.route.duration.record(elapsed);
        if self.access_log {
            self.log(elapsed);
        }
    }
}

impl Exchange {
    fn log(&self, elapsed: Duration) {
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            route = %self.route.route,
            upstream = self.upstream.as_deref().unwrap_or(""),
            endpoint = self.endpoint.as_deref().unwrap_or(""),
            attempts = self.attempts,
            status = self.status,
            duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            bytes_out = self.bytes_out,
            request_id = self.request_id.to_str().unwrap_or(""),
            error = self.error.unwrap_or(""),
            shadow_rate_limited = self.shadow_limited.as_deref().unwrap_or(""),
            shadow_shed = self.shadow_shed.unwrap_or(""),
            completed = self.completed,
        );
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the process-wide log subscriber: stdout, written by a background
/// thread so a slow terminal never blocks a worker. Keep the guard alive
/// until exit so buffered lines are flushed.
pub fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    // rustls logs what clients do wrong (an IP address in SNI, a bad
    // alert) at warn, once per handshake: any client could flood the log.
    // Those failures are counted in portcullis_tls_handshake_errors_total
    // instead; `RUST_LOG=rustls=debug` brings the lines back.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("portcullis: logging already initialised: {e}");
    }
    guard
}
