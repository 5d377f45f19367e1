//! The upstream resilience keys (issue 7): `balance`, `health_check`,
//! `outlier_detection`, `circuit_breaker` and `retry`, their defaults, and
//! the checks `portcullis check` runs on them. Also the client key syntax
//! (`ip`, `header:<name>`, `claim:<name>`, `client_cert:subject`, `route`)
//! that `balance: hash:<key>` shares with rate limits.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::validate::Report;
use super::values::{Dur, Size};

/// Where a per-client key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    /// The TCP peer's address.
    Ip,
    /// A request header (name lower-cased).
    Header(String),
    /// A claim of the route's verified JWT.
    Claim(String),
    /// The subject of the verified mTLS client certificate.
    ClientCertSubject,
    /// A cookie of the request.
    Cookie(String),
    /// One key for the whole route.
    Route,
}

impl KeySpec {
    pub fn parse(text: &str) -> Result<KeySpec, String> {
        let t = text.trim();
        let named = |kind: &str, name: &str| {
            if name.is_empty() {
                Err(format!("`{kind}:` needs a name, like `{kind}:x-api-key`"))
            } else {
                Ok(name.to_string())
            }
        };
        match t.split_once(':') {
            None if t == "ip" => Ok(KeySpec::Ip),
            None if t == "route" => Ok(KeySpec::Route),
            Some(("header", name)) => {
                let name = named("header", name)?.to_ascii_lowercase();
                http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("`{name}` is not a valid header name"))?;
                Ok(KeySpec::Header(name))
            }
            Some(("claim", name)) => named("claim", name).map(KeySpec::Claim),
            Some(("cookie", name)) => {
                let name = named("cookie", name)?;
                if name.bytes().any(|b| b <= b' ' || b"=;,\"".contains(&b)) {
                    return Err(format!("`{name}` is not a valid cookie name"));
                }
                Ok(KeySpec::Cookie(name))
            }
            Some(("client_cert", "subject")) => Ok(KeySpec::ClientCertSubject),
            _ => Err(format!(
                "unknown key `{t}`: expected `ip`, `header:<name>`, `claim:<name>`, `cookie:<name>`, `client_cert:subject` or `route`"
            )),
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::Ip => f.write_str("ip"),
            KeySpec::Header(h) => write!(f, "header:{h}"),
            KeySpec::Claim(c) => write!(f, "claim:{c}"),
            KeySpec::ClientCertSubject => f.write_str("client_cert:subject"),
            KeySpec::Cookie(c) => write!(f, "cookie:{c}"),
            KeySpec::Route => f.write_str("route"),
        }
    }
}

/// `balance:` of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    /// Power of two random choices, the less loaded wins.
    LeastRequests,
    /// Rendezvous hashing on a client key.
    Hash(KeySpec),
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Balance::RoundRobin => f.write_str("round_robin"),
            Balance::LeastRequests => f.write_str("least_requests"),
            Balance::Hash(k) => write!(f, "hash:{k}"),
        }
    }
}

impl<'de> Deserialize<'de> for Balance {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "round_robin" => Ok(Balance::RoundRobin),
            "least_requests" => Ok(Balance::LeastRequests),
            other => match other.strip_prefix("hash:") {
                Some(key) => match KeySpec::parse(key).map_err(de::Error::custom)? {
                    KeySpec::Route => Err(de::Error::custom(
                        "`hash:route` would send every request to one endpoint; hash on a client key",
                    )),
                    k => Ok(Balance::Hash(k)),
                },
                None => Err(de::Error::custom(format!(
                    "unknown balance `{other}`: expected `round_robin`, `least_requests` or `hash:<key>`"
                ))),
            },
        }
    }
}

/// An upstream outcome, as named in `retry.on` and `circuit_breaker.failures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeName {
    ConnectError,
    Reset,
    Timeout,
    /// Any status from 500 to 599.
    Any5xx,
    Status(u16),
}

impl<'de> Deserialize<'de> for OutcomeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = OutcomeName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`connect_error`, `reset`, `timeout`, `5xx` or a status like 503")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OutcomeName, E> {
                match v {
                    "connect_error" => Ok(OutcomeName::ConnectError),
                    "reset" => Ok(OutcomeName::Reset),
                    "timeout" => Ok(OutcomeName::Timeout),
                    "5xx" => Ok(OutcomeName::Any5xx),
                    _ => match v.parse::<u64>() {
                        Ok(n) => self.visit_u64(n),
                        Err(_) => Err(E::custom(format!(
                            "unknown outcome `{v}`: expected `connect_error`, `reset`, `timeout`, `5xx` or a status like 503"
                        ))),
                    },
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OutcomeName, E> {
                match u16::try_from(v) {
                    Ok(s) if (400..=599).contains(&s) => Ok(OutcomeName::Status(s)),
                    _ => Err(E::custom(format!(
                        "status {v} is not an error status (400 to 599)"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OutcomeName, E> {
                Err(E::custom(format!(
                    "status {v} is not an error status (400 to 599)"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// Statuses a health check accepts: `200`, or a range `200-399`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange(pub u16, pub u16);

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = super::values::string_or_number(d)?;
        let status = |s: &str| -> Result<u16, D::Error> {
            match s.trim().parse::<u16>() {
                Ok(n) if (100..=599).contains(&n) => Ok(n),
                _ => Err(de::Error::custom(format!(
                    "`{s}` is not an HTTP status (100 to 599)"
                ))),
            }
        };
        match text.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (status(lo)?, status(hi)?);
                if lo > hi {
                    return Err(de::Error::custom(format!(
                        "range `{text}` is empty: {lo} is above {hi}"
                    )));
                }
                Ok(StatusRange(lo, hi))
            }
            None => status(&text).map(|s| StatusRange(s, s)),
        }
    }
}

/// `upstreams[].health_check`: active checks of every endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub path: String,
    #[serde(default = "default_check_interval")]
    pub interval: Dur,
    #[serde(default = "default_check_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Default `[200-399]`.
    #[serde(default = "default_expected_statuses")]
    pub expected_statuses: Vec<StatusRange>,
    /// `Host` of the check request; default the endpoint's address.
    #[serde(default)]
    pub host: Option<String>,
}

fn default_check_interval() -> Dur {
    Dur::secs(2)
}
fn default_check_timeout() -> Dur {
    Dur::millis(500)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_expected_statuses() -> Vec<StatusRange> {
    vec![StatusRange(200, 399)]
}

/// `upstreams[].outlier_detection`: passive ejection on real traffic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Connect errors, resets and timeouts in a row that eject an endpoint.
    #[serde(default = "default_outlier_failures")]
    pub consecutive_failures: u32,
    /// First ejection; each further one in a row doubles it.
    #[serde(default = "default_eject_for")]
    pub eject_for: Dur,
    #[serde(default = "default_max_eject_for")]
    pub max_eject_for: Dur,
    /// Never eject more than this share of an upstream's endpoints.
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: u32,
}

fn default_outlier_failures() -> u32 {
    5
}
fn default_eject_for() -> Dur {
    Dur::secs(30)
}
fn default_max_eject_for() -> Dur {
    Dur::secs(300)
}
fn default_max_ejected_percent() -> u32 {
    50
}

/// `upstreams[].circuit_breaker`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    #[serde(default = "default_breaker_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "default_failure_ratio")]
    pub failure_ratio: f64,
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    #[serde(default = "default_window")]
    pub window: Dur,
    #[serde(default = "default_open_for")]
    pub open_for: Dur,
    /// Each reopening from half-open doubles `open_for` up to this; default
    /// `open_for` (no growth).
    #[serde(default)]
    pub max_open_for: Option<Dur>,
    #[serde(default = "default_half_open_requests")]
    pub half_open_requests: u32,
    /// What counts as a failure.
    #[serde(default = "default_breaker_failures_on")]
    pub failures: Vec<OutcomeName>,
}

fn default_breaker_failures() -> u32 {
    5
}
fn default_failure_ratio() -> f64 {
    0.5
}
fn default_min_requests() -> u32 {
    20
}
fn default_window() -> Dur {
    Dur::secs(10)
}
fn default_open_for() -> Dur {
    Dur::secs(10)
}
fn default_half_open_requests() -> u32 {
    3
}
fn default_breaker_failures_on() -> Vec<OutcomeName> {
    vec![
        OutcomeName::ConnectError,
        OutcomeName::Reset,
        OutcomeName::Timeout,
        OutcomeName::Any5xx,
    ]
}

/// `upstreams[].retry`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Extra tries after the first.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default = "default_retry_on")]
    pub on: Vec<OutcomeName>,
    #[serde(default = "default_backoff")]
    pub backoff: Dur,
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Dur,
    /// Retries never exceed this share of requests (over 10 s)...
    #[serde(default = "default_budget")]
    pub budget: f64,
    /// ...plus this many per second, so a quiet upstream can still retry.
    #[serde(default = "default_min_retries_per_second")]
    pub min_retries_per_second: u32,
    /// Bodies up to this size are held so they can be sent again.
    #[serde(default = "default_replay_buffer")]
    pub replay_buffer: Size,
    /// Each try's own timeout (all tries stay inside the route's timeout).
    #[serde(default)]
    pub per_try_timeout: Option<Dur>,
    /// Send `x-portcullis-attempts` to the client.
    #[serde(default)]
    pub attempts_header: bool,
}

/// The most `retry.attempts` may be: more only multiplies load on a sick upstream.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// The largest `retry.replay_buffer`.
pub const MAX_REPLAY_BUFFER: u64 = 16 << 20;

fn default_attempts() -> u32 {
    2
}
fn default_retry_on() -> Vec<OutcomeName> {
    vec![
        OutcomeName::ConnectError,
        OutcomeName::Status(502),
        OutcomeName::Status(503),
        OutcomeName::Status(504),
    ]
}
fn default_backoff() -> Dur {
    Dur::millis(25)
}
fn default_max_backoff() -> Dur {
    Dur::millis(250)
}
fn default_budget() -> f64 {
    0.2
}
fn default_min_retries_per_second() -> u32 {
    10
}
fn default_replay_buffer() -> Size {
    Size(64 << 10)
}

pub fn validate_health_check(h: &HealthCheckConfig, path: &str, report: &mut Report<'_>) {
    if !h.path.starts_with('/') {
        report(
            &format!("{path}.path"),
            false,
            format!("`{}` must start with `/`", h.path),
        );
    } else if http::uri::PathAndQuery::try_from(h.path.as_str()).is_err() {
        report(
            &format!("{path}.path"),
            false,
            format!("`{}` is not a valid request path", h.path),
        );
    }
    positive(h.interval, &format!("{path}.interval"), report);
    positive(h.timeout, &format!("{path}.timeout"), report);
    if h.timeout > h.interval {
        report(
            &format!("{path}.timeout"),
            false,
            "must not be longer than `interval`".into(),
        );
    }
    at_least_one(
        h.healthy_threshold,
        &format!("{path}.healthy_threshold"),
        report,
    );
    at_least_one(
        h.unhealthy_threshold,
        &format!("{path}.unhealthy_threshold"),
        report,
    );
    if h.expected_statuses.is_empty() {
        report(
            &format!("{path}.expected_statuses"),
            false,
            "needs at least one status or range".into(),
        );
    }
    if let Some(host) = &h.host {
        if http::HeaderValue::from_str(host).is_err() || host.is_empty() {
            report(
                &format!("{path}.host"),
                false,
                format!("`{host}` is not a valid Host header"),
            );
        }
    }
}

pub fn validate_outlier(o: &OutlierConfig, path: &str, report: &mut Report<'_>) {
    at_least_one(
        o.consecutive_failures,
        &format!("{path}.consecutive_failures"),
        report,
    );
    positive(o.eject_for, &format!("{path}.eject_for"), report);
    if o.max_eject_for < o.eject_for {
        report(
            &format!("{path}.max_eject_for"),
            false,
            "must not be shorter than `eject_for`".into(),
        );
    }
    if !(1..=100).contains(&o.max_ejected_percent) {
        report(
            &format!("{path}.max_ejected_percent"),
            false,
            "must be between 1 and 100".into(),
        );
    }
}

pub fn validate_breaker(b: &CircuitBreakerConfig, path: &str, report: &mut Report<'_>) {
    at_least_one(
        b.consecutive_failures,
        &format!("{path}.consecutive_failures"),
        report,
    );
    if !(b.failure_ratio > 0.0 && b.failure_ratio <= 1.0) {
        report(
            &format!("{path}.failure_ratio"),
            false,
            format!("{} is outside (0, 1]", b.failure_ratio),
        );
    }
    at_least_one(b.min_requests, &format!("{path}.min_requests"), report);
    if b.window.0 < std::time::Duration::from_millis(100) {
        report(
            &format!("{path}.window"),
            false,
            "must be at least 100ms".into(),
        );
    }
    positive(b.open_for, &format!("{path}.open_for"), report);
    if b.max_open_for.is_some_and(|m| m < b.open_for) {
        report(
            &format!("{path}.max_open_for"),
            false,
            "must not be shorter than `open_for`".into(),
        );
    }
    at_least_one(
        b.half_open_requests,
        &format!("{path}.half_open_requests"),
        report,
    );
    if b.failures.is_empty() {
        report(
            &format!("{path}.failures"),
            false,
            "needs at least one outcome, or the breaker never opens".into(),
        );
    }
}

pub fn validate_retry(r: &RetryConfig, path: &str, report: &mut Report<'_>) {
    if r.attempts > MAX_RETRY_ATTEMPTS {
        report(
            &format!("{path}.attempts"),
            false,
            format!(
                "{} is too many: at most {MAX_RETRY_ATTEMPTS} extra tries",
                r.attempts
            ),
        );
    }
    if r.on.is_empty() {
        report(
            &format!("{path}.on"),
            false,
            "needs at least one outcome to retry on".into(),
        );
    }
    if r.backoff > r.max_backoff {
        report(
            &format!("{path}.backoff"),
            false,
            format!(
                "{:?} is longer than `max_backoff` ({:?})",
                r.backoff.0, r.max_backoff.0
            ),
        );
    }
    if !(0.0..=1.0).contains(&r.budget) {
        report(
            &format!("{path}.budget"),
            false,
            format!("{} is outside [0, 1]", r.budget),
        );
    }
    if r.replay_buffer.0 > MAX_REPLAY_BUFFER {
        report(
            &format!("{path}.replay_buffer"),
            false,
            "must be at most 16MiB".into(),
        );
    }
    if let Some(t) = r.per_try_timeout {
        positive(t, &format!("{path}.per_try_timeout"), report);
    }
}

fn positive(d: Dur, path: &str, report: &mut Report<'_>) {
    if d.0.is_zero() {
        report(path, false, "must be more than 0".into());
    }
}

fn at_least_one(n: u32, path: &str, report: &mut Report<'_>) {
    if n == 0 {
        report(path, false, "must be at least 1".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_specs() {
        assert_eq!(KeySpec::parse("ip").unwrap(), KeySpec::Ip);
        assert_eq!(
            KeySpec::parse("header:X-Api-Key").unwrap(),
            KeySpec::Header("x-api-key".into())
        );
        assert_eq!(
            KeySpec::parse("claim:sub").unwrap(),
            KeySpec::Claim("sub".into())
        );
        assert_eq!(
            KeySpec::parse("client_cert:subject").unwrap(),
            KeySpec::ClientCertSubject
        );
        assert_eq!(
            KeySpec::parse("cookie:session").unwrap(),
            KeySpec::Cookie("session".into())
        );
        for bad in [
            "",
            "cookie:",
            "cookie:a=b",
            "session:x",
            "header:",
            "header:bad name",
            "client_cert:issuer",
        ] {
            assert!(KeySpec::parse(bad).is_err(), "{bad}");
        }
    }
}
