//! The load-protection keys (issue 5): `rate_limits`, `shedding`, route
//! `rate_limit` and `priority`, upstream `max_in_flight`,
//! `server.trusted_proxies`; their value syntaxes (`100/s`, CIDRs) and the
//! checks `portcullis check` runs on them.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::resilience::KeySpec;
use super::validate::Report;
use super::Dur;

/// A rate written `<count>/<unit>`: `100/s`, `600/m`, `10000/h`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub count: f64,
    pub per: Duration,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.count / self.per.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let err = || {
        format!(
            "invalid rate `{text}`: expected a number per unit, like `100/s`, `600/m` or `10000/h`"
        )
    };
    let (count, unit) = text.trim().split_once('/').ok_or_else(err)?;
    let count: f64 = count.trim().parse().map_err(|_| err())?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(err()),
    };
    if !count.is_finite() || count <= 0.0 {
        return Err(format!("rate `{text}` must be more than 0"));
    }
    let rate = Rate { count, per };
    if rate.per_second() > 1e9 {
        return Err(format!("rate `{text}` is too high (at most 1000000000/s)"));
    }
    if rate.per_second() < 1.0 / 86_400.0 {
        return Err(format!("rate `{text}` is too low (at least one a day)"));
    }
    Ok(rate)
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = super::values::string_or_number(d)?;
        parse_rate(&text).map_err(de::Error::custom)
    }
}

/// `enforce` (refuse) or `shadow` (count and log, let through).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    #[default]
    Enforce,
    Shadow,
}

/// One key or a list of keys, the first present wins.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyList(pub Vec<KeySpec>);

impl KeyList {
    pub fn iter(&self) -> impl Iterator<Item = &KeySpec> {
        self.0.iter()
    }
}

impl<'de> Deserialize<'de> for KeyList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let texts = match OneOrMany::deserialize(d)? {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(ts) => ts,
        };
        if texts.is_empty() {
            return Err(de::Error::custom("needs at least one key, like `[ip]`"));
        }
        texts
            .iter()
            .map(|t| KeySpec::parse(t).map_err(de::Error::custom))
            .collect::<Result<Vec<_>, _>>()
            .map(KeyList)
    }
}

/// `rate_limits[]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub name: String,
    pub key: KeyList,
    pub rate: Rate,
    pub burst: u32,
    #[serde(default)]
    pub mode: LimitMode,
    /// `local` (the default, in-process) or a Redis URL
    /// (`redis://[:password@]host:port[/db]`, `rediss://` for TLS) whose
    /// buckets every instance with the same policy name shares.
    #[serde(default)]
    pub store: Option<String>,
    /// Live keys before new ones share one overflow bucket.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// With a Redis store: every check in Redis, or leases served locally.
    /// The four store keys are `None` when unset, so `check` can refuse
    /// them on a local policy rather than ignore them.
    #[serde(default)]
    pub sync: Option<SyncMode>,
    /// `sync: batched`: tokens an instance takes from Redis at a time.
    #[serde(default)]
    pub lease: Option<u32>,
    /// The longest wait for Redis on one check.
    #[serde(default)]
    pub store_timeout: Option<Dur>,
    /// What a check does when Redis cannot answer.
    #[serde(default)]
    pub on_store_error: Option<OnStoreError>,
}

/// `rate_limits[].sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// One atomic script in Redis per check: the fleet admits exactly what
    /// one bucket would.
    #[default]
    Exact,
    /// Tokens leased from Redis in batches and served locally: fewer Redis
    /// calls, at most `instances × lease` admitted beyond the limit.
    Batched,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Exact => "exact",
            SyncMode::Batched => "batched",
        }
    }
}

/// `rate_limits[].on_store_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Decide with this instance's own bucket.
    #[default]
    Local,
    /// Let the request through.
    Allow,
    /// Refuse: 503 `rate_limit_unavailable`.
    Deny,
}

impl OnStoreError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreError::Local => "local",
            OnStoreError::Allow => "allow",
            OnStoreError::Deny => "deny",
        }
    }
}

/// Default `store_timeout`: a Redis round trip on a LAN is well under a
/// millisecond; 5 ms leaves room for a busy server without letting an
/// outage add more than that to a request.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(5);

impl RateLimitConfig {
    /// The Redis URL, when the policy has a shared store.
    pub fn redis_url(&self) -> Option<&str> {
        self.store
            .as_deref()
            .filter(|s| s.starts_with("redis://") || s.starts_with("rediss://"))
    }

    pub fn sync(&self) -> SyncMode {
        self.sync.unwrap_or_default()
    }

    /// Tokens per lease: as set, else a tenth of the burst (1 to 1000).
    pub fn lease(&self) -> u32 {
        self.lease.unwrap_or((self.burst / 10).clamp(1, 1000))
    }

    pub fn store_timeout(&self) -> Duration {
        self.store_timeout.map_or(DEFAULT_STORE_TIMEOUT, |d| d.0)
    }

    pub fn on_store_error(&self) -> OnStoreError {
        self.on_store_error.unwrap_or_default()
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`: URLs go to logs,
/// `/status` and metrics without their password.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let user = match userinfo.split_once(':') {
        Some((user, _)) => user,
        // redis-rs reads `redis://secret@host` as a user name; still a
        // secret often enough to hide.
        None => "",
    };
    format!("{scheme}://{user}:***{}", &rest[at..])
}

fn default_max_keys() -> usize {
    1_000_000
}

/// `shedding`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SheddingConfig {
    /// Hard cap on requests in flight.
    pub max_in_flight: u32,
    /// Also lower the cap while upstream latency climbs.
    #[serde(default)]
    pub adaptive: bool,
    /// The adaptive limit never goes below this (default 16, or
    /// `max_in_flight` if that is lower).
    #[serde(default)]
    pub min_limit: Option<u32>,
    /// Latency above `tolerance` × the baseline lowers the adaptive limit.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    #[serde(default)]
    pub mode: LimitMode,
}

impl SheddingConfig {
    pub fn min_limit(&self) -> u32 {
        self.min_limit.unwrap_or(16).min(self.max_in_flight)
    }
}
fn default_tolerance() -> f64 {
    2.0
}

/// `routes[].priority`: who is shed first under pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Critical,
    #[default]
    Normal,
    Low,
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let err = || format!("`{text}` is not an address block like `10.0.0.0/8` or `fd00::/8`");
        let (ip, prefix) = match text.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(err)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Cidr::parse(&text).map_err(de::Error::custom)
    }
}

/// The most keys a policy may keep (about 100 bytes each).
const MAX_KEYS_CAP: usize = 100_000_000;

/// Whether `text` can go between the quotes of a structured-field string
/// (RFC 8941 §3.3.3) as it is: printable ASCII without `"` or `\`.
pub fn is_sf_string(text: &str) -> bool {
    text.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

pub fn validate_rate_limit(r: &RateLimitConfig, path: &str, report: &mut Report<'_>) {
    if !is_sf_string(&r.name) {
        report(
            &format!("{path}.name"),
            false,
            "must be printable ASCII without `\"` or `\\`: it is quoted in the \
             `RateLimit` and `RateLimit-Policy` response headers"
                .into(),
        );
    }
    if r.burst == 0 {
        report(
            &format!("{path}.burst"),
            false,
            "must be at least 1 (the requests allowed at once)".into(),
        );
    } else if r.burst > 1_000_000_000 {
        report(
            &format!("{path}.burst"),
            false,
            "is absurd: at most 1000000000".into(),
        );
    }
    if r.max_keys == 0 || r.max_keys > MAX_KEYS_CAP {
        report(
            &format!("{path}.max_keys"),
            false,
            format!("must be between 1 and {MAX_KEYS_CAP}"),
        );
    }
    match r.store.as_deref() {
        None | Some("local") => {}
        Some(url) if r.redis_url().is_some() => {
            if let Err(e) = redis::Client::open(url) {
                report(
                    &format!("{path}.store"),
                    false,
                    format!(
                        "invalid Redis URL `{}`: {e}; expected `redis://[:password@]host:port[/db]` or `rediss://...`",
                        redact_url(url)
                    ),
                );
            }
        }
        Some(s) => report(
            &format!("{path}.store"),
            false,
            format!(
                "unknown store `{}`: expected `local`, `redis://host:port[/db]` or `rediss://host:port[/db]`",
                redact_url(s)
            ),
        ),
    }
    validate_store_keys(r, path, report);
}

/// The keys that only mean something with a Redis store.
fn validate_store_keys(r: &RateLimitConfig, path: &str, report: &mut Report<'_>) {
    if r.redis_url().is_none() {
        let set = [
            ("sync", r.sync.is_some()),
            ("lease", r.lease.is_some()),
            ("store_timeout", r.store_timeout.is_some()),
            ("on_store_error", r.on_store_error.is_some()),
        ];
        for (key, _) in set.iter().filter(|(_, set)| *set) {
            report(
                &format!("{path}.{key}"),
                false,
                "only applies to a shared store: set `store: redis://host:port` or remove it"
                    .into(),
            );
        }
        return;
    }
    if let Some(lease) = r.lease {
        if r.sync() != SyncMode::Batched {
            report(
                &format!("{path}.lease"),
                false,
                "only applies with `sync: batched`".into(),
            );
        } else if lease == 0 || lease > r.burst {
            report(
                &format!("{path}.lease"),
                false,
                format!(
                    "must be between 1 and the burst ({}): a lease is part of one bucket",
                    r.burst
                ),
            );
        }
    }
    if let Some(t) = r.store_timeout {
        if t.0 < Duration::from_millis(1) || t.0 > Duration::from_secs(10) {
            report(
                &format!("{path}.store_timeout"),
                false,
                "must be between 1ms and 10s (a rate-limit check waits this long at most)".into(),
            );
        }
    }
}

pub fn validate_shedding(s: &SheddingConfig, report: &mut Report<'_>) {
    if s.max_in_flight == 0 || s.max_in_flight > 10_000_000 {
        report(
            "shedding.max_in_flight",
            false,
            "must be between 1 and 10000000".into(),
        );
    }
    if s.min_limit.is_some_and(|m| m == 0 || m > s.max_in_flight) {
        report(
            "shedding.min_limit",
            false,
            "must be between 1 and `max_in_flight`".into(),
        );
    }
    if !(s.tolerance >= 1.0 && s.tolerance <= 100.0) {
        report(
            "shedding.tolerance",
            false,
            format!("{} is outside [1, 100]", s.tolerance),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100/s").unwrap().per_second(), 100.0);
        assert_eq!(parse_rate("60/m").unwrap().per_second(), 1.0);
        assert_eq!(parse_rate("0.5/s").unwrap().per_second(), 0.5);
        for bad in ["0/s", "-1/s", "100", "100/d", "x/s", "2000000000/s", "1/h0"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "10.0.0/8", "host/8", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redis_urls_lose_their_password() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://:s3cret@h:6379", "redis://:***@h:6379"),
            ("rediss://app:s3cret@h:6380/2", "rediss://app:***@h:6380/2"),
            ("redis://s3cret@h", "redis://:***@h"),
            ("redis://:p@ss@h/0", "redis://:***@h/0"),
            ("local", "local"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
