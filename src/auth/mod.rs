//! JWT authentication (pipeline step 2b, after routing): find the bearer
//! token, verify it against the route's provider (signature, algorithm,
//! `exp`/`nbf`/`iat`, `iss`, `aud`), check the route's scopes, and forward
//! chosen claims upstream as headers.
//!
//! Verification is by `jsonwebtoken` (aws-lc-rs). What this module adds:
//! - algorithm discipline: the token's `alg` must be in the provider's list
//!   and match the key's family and the JWK's own `alg`; `none` is never
//!   accepted (config refuses it) and an HMAC token is only ever checked
//!   with the provider's `secret`, never with a public key;
//! - a verified-token cache keyed by the token's SHA-256, so a client that
//!   reuses its token costs a hash and a map lookup, not a signature check;
//!   entries end at the token's `exp` and are ignored once the keys change;
//! - errors that say what was wrong without echoing the token, and 503
//!   `auth_unavailable` (not 401) while a provider has no usable keys.

pub mod keys;
pub mod token;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, COOKIE};
use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use metrics::{Counter, Gauge};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::JwtProviderConfig;
use crate::error::Reject;
use crate::telemetry::{Metrics, JWKS_FETCHES_TOTAL, JWT_KEYS_AGE_SECONDS, JWT_VALIDATIONS_TOTAL};
use keys::KeyStore;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Verified tokens remembered per provider; past this, expired entries are
/// dropped, and if that is not enough the cache starts over.
const CACHE_CAPACITY: usize = 100_000;

/// What a verified token gives a request.
pub struct Verified {
    /// Unix seconds; the cache entry is good until then (plus leeway).
    exp: u64,
    key_generation: u64,
    scopes: Vec<String>,
    /// Headers for the upstream, from `forward_claims`.
    forward: Vec<(HeaderName, HeaderValue)>,
    /// The claims client keys (`claim:<name>`) read, as text.
    key_claims: Vec<(String, String)>,
}

impl Verified {
    /// A claim a client key names, as text (arrays space-separated).
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.key_claims
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A claim's value as header or key text: strings as they are, arrays
/// space-separated, anything else as JSON.
fn claim_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

struct JwtMetrics {
    ok: Counter,
    cached: Counter,
    invalid: Counter,
    missing: Counter,
    forbidden: Counter,
    unavailable: Counter,
}

/// A provider as one config generation sees it. Its keys live in a
/// [`KeyStore`] that outlives reloads; its cache does not (a reload may
/// change issuer or audiences).
pub struct JwtProvider {
    pub name: Arc<str>,
    pub keys: Arc<KeyStore>,
    allowed: Vec<Algorithm>,
    validations: Vec<(jsonwebtoken::AlgorithmFamily, Validation)>,
    leeway: u64,
    forward: Vec<(String, HeaderName)>,
    cookie: Option<String>,
    query: Option<String>,
    cache: DashMap<[u8; 32], Arc<Verified>>,
    /// Claims that client keys read (kept on each [`Verified`]).
    key_claims: Vec<String>,
    metrics: JwtMetrics,
}

/// Parses a config `algorithms` entry; `None` for unknown names and `none`.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    if name.eq_ignore_ascii_case("none") {
        return None;
    }
    name.parse().ok()
}

impl JwtProvider {
    /// `config` is validated (algorithms parse, header names are valid).
    /// `key_claims`: the claims any client key (`claim:<name>`) reads.
    pub fn new(
        config: &JwtProviderConfig,
        keys: Arc<KeyStore>,
        key_claims: Vec<String>,
        metrics: &Metrics,
    ) -> JwtProvider {
        let allowed: Vec<Algorithm> = config
            .algorithms
            .iter()
            .filter_map(|a| parse_algorithm(a))
            .collect();
        let leeway = config.leeway.0.as_secs();
        let mut validations = Vec::new();
        for alg in &allowed {
            let family = alg.family();
            if validations.iter().any(|(f, _)| *f == family) {
                continue;
            }
            let mut v = Validation::new(*alg);
            // jsonwebtoken wants every listed algorithm to fit the key.
            v.algorithms = allowed
                .iter()
                .copied()
                .filter(|a| a.family() == family)
                .collect();
            v.leeway = leeway;
            v.validate_nbf = true;
            v.set_required_spec_claims(&["exp"]);
            if let Some(iss) = &config.issuer {
                v.set_issuer(&[iss]);
                v.required_spec_claims.insert("iss".into());
            }
            if config.audiences.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&config.audiences);
                v.required_spec_claims.insert("aud".into());
            }
            validations.push((family, v));
        }
        let label = |result: &'static str| {
            metrics.counter(
                JWT_VALIDATIONS_TOTAL,
                &[("provider", &config.name), ("result", result)],
            )
        };
        JwtProvider {
            name: Arc::from(config.name.as_str()),
            keys,
            allowed,
            validations,
            leeway,
            forward: config
                .forward_claims
                .iter()
                .filter_map(|(claim, header)| {
                    Some((
                        claim.clone(),
                        HeaderName::from_bytes(header.as_bytes()).ok()?,
                    ))
                })
                .collect(),
            cookie: config.token_cookie.clone(),
            query: config.token_query.clone(),
            cache: DashMap::new(),
            key_claims,
            metrics: JwtMetrics {
                ok: label("ok"),
                cached: label("cached"),
                invalid: label("invalid"),
                missing: label("missing"),
                forbidden: label("forbidden"),
                unavailable: label("unavailable"),
            },
        }
    }

    /// Forgets every verified token (benchmarks measure cold verification
    /// with it).
    #[doc(hidden)]
    pub fn clear_cache(&self) {
        self.cache.clear();
    }

    /// The header names this provider forwards (stripped from every request).
    pub fn forwarded_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.forward.iter().map(|(_, h)| h)
    }

    /// Checks the request's token and the route's `scopes`; on success puts
    /// the forwarded claims into `headers`.
    pub fn authenticate<B>(
        &self,
        req: &mut http::Request<B>,
        scopes: &[String],
        scope_text: &Arc<str>,
    ) -> Result<Arc<Verified>, Reject> {
        let Some(token) = self.token(req.headers(), req.uri().query()) else {
            self.metrics.missing.increment(1);
            return Err(Reject::Unauthorized { problem: None });
        };
        let verified = match self.verify(token) {
            Ok(v) => v,
            Err(e) => {
                match e {
                    Reject::AuthUnavailable { .. } => self.metrics.unavailable.increment(1),
                    _ => self.metrics.invalid.increment(1),
                }
                return Err(e);
            }
        };
        if !scopes
            .iter()
            .all(|s| verified.scopes.iter().any(|t| t == s))
        {
            self.metrics.forbidden.increment(1);
            return Err(Reject::Forbidden {
                scope: scope_text.clone(),
            });
        }
        let headers = req.headers_mut();
        for (name, value) in &verified.forward {
            headers.insert(name.clone(), value.clone());
        }
        Ok(verified)
    }

    /// `Authorization: Bearer`, then the cookie, then the query parameter.
    fn token<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
        if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(rest.trim());
            }
        }
        if let Some(name) = &self.cookie {
            for v in headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
            {
                for pair in v.split(';') {
                    if let Some((k, val)) = pair.trim().split_once('=') {
                        if k == name {
                            return Some(val);
                        }
                    }
                }
            }
        }
        if let (Some(name), Some(q)) = (&self.query, query) {
            for pair in q.split('&') {
                if let Some((k, val)) = pair.split_once('=') {
                    if k == name {
                        return Some(val);
                    }
                }
            }
        }
        None
    }

    fn verify(&self, token: &str) -> Result<Arc<Verified>, Reject> {
        let bad = |problem| Reject::Unauthorized {
            problem: Some(problem),
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(bad("token too large"));
        }
        let Some(keys) = self.keys.usable() else {
            return Err(Reject::AuthUnavailable {
                provider: self.name.clone(),
            });
        };
        let now = now_unix();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cache.get(&digest) {
            if hit.key_generation == keys.generation && hit.exp.saturating_add(self.leeway) > now {
                self.metrics.cached.increment(1);
                return Ok(hit.clone());
            }
        }

        if token.split('.').count() != 3 {
            return Err(bad("malformed token"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad(header_problem(token)))?;
        if !self.allowed.contains(&header.alg) {
            return Err(bad("algorithm not allowed"));
        }
        let family = header.alg.family();
        let Some((_, validation)) = self.validations.iter().find(|(f, _)| *f == family) else {
            return Err(bad("algorithm not allowed"));
        };
        let kid = header.kid.as_deref();
        let mut candidates = keys
            .keys
            .iter()
            .filter(|k| k.decoding.family() == family)
            .filter(|k| k.alg.is_none_or(|a| a == header.alg))
            .filter(|k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
            .peekable();
        if candidates.peek().is_none() {
            if kid.is_some() {
                self.keys.kid_missed();
            }
            return Err(bad(if kid.is_some() {
                "unknown key id"
            } else {
                "no key for this algorithm"
            }));
        }
        let mut last = bad("bad signature");
        let mut claims = None;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => {
                    last = bad(describe(e.kind()));
                    break;
                }
            }
        }
        let claims = claims.ok_or(last)?;
        // Dates may be fractional (jsonwebtoken accepts them): read them as
        // numbers, not only as integers, or a future `iat` slips through.
        if claims
            .get("iat")
            .and_then(unix_seconds)
            .is_some_and(|iat| iat > now.saturating_add(self.leeway))
        {
            return Err(bad("token issued in the future"));
        }
        let exp = claims.get("exp").and_then(unix_seconds).unwrap_or(0);
        let verified = Arc::new(Verified {
            exp,
            key_generation: keys.generation,
            scopes: scopes_of(&claims),
            forward: self
                .forward
                .iter()
                .filter_map(|(claim, header)| {
                    let text = claim_text(claims.get(claim)?);
                    Some((header.clone(), HeaderValue::from_str(&text).ok()?))
                })
                .collect(),
            key_claims: self
                .key_claims
                .iter()
                .filter_map(|name| Some((name.clone(), claim_text(claims.get(name)?))))
                .collect(),
        });
        self.remember(digest, verified.clone(), now);
        self.metrics.ok.increment(1);
        Ok(verified)
    }

    fn remember(&self, digest: [u8; 32], verified: Arc<Verified>, now: u64) {
        if self.cache.len() >= CACHE_CAPACITY {
            self.cache
                .retain(|_, v| v.exp.saturating_add(self.leeway) > now);
            if self.cache.len() >= CACHE_CAPACITY {
                self.cache.clear();
            }
        }
        self.cache.insert(digest, verified);
    }
}

/// Why a header jsonwebtoken cannot read is refused: an `alg` it does not
/// know (`none`, `HS1`, ...) is an algorithm problem, anything else is
/// malformed.
fn header_problem(token: &str) -> &'static str {
    use base64::Engine;
    let alg_named = token
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .is_some_and(|h| h.get("alg").is_some_and(Value::is_string));
    if alg_named {
        "algorithm not allowed"
    } else {
        "malformed token"
    }
}

/// `scope` (space-separated) or `scp` (array or string).
fn scopes_of(claims: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_whitespace().map(str::to_string)),
            Some(Value::Array(items)) => {
                out.extend(items.iter().filter_map(Value::as_str).map(str::to_string))
            }
            _ => {}
        }
    }
    out
}

/// A sentence for `error_description`: what was wrong, never the token.
fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim (exp, iss or aud)",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm => "algorithm not allowed for this key",
        ErrorKind::InvalidClaimFormat(_) => "malformed claims",
        _ => "malformed token",
    }
}

/// A JWT date (`iat`, `exp`): whole seconds, rounded down; `None` for
/// anything but a non-negative number.
fn unix_seconds(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        let f = v.as_f64()?;
        // `as` saturates: a huge date becomes u64::MAX, never a panic.
        (f >= 0.0).then(|| f.floor() as u64)
    })
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Key-age gauges, refreshed by the watcher.
pub struct KeyAge(pub Gauge);

impl KeyAge {
    pub fn new(metrics: &Metrics, provider: &str) -> KeyAge {
        KeyAge(metrics.gauge(JWT_KEYS_AGE_SECONDS, &[("provider", provider)]))
    }
}

/// Looks at every provider's JWKS file once a second (content digest, as
/// for certificates), and updates the key-age gauges.
pub async fn watch(shared: Arc<crate::Shared>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let client = Arc::new(keys::JwksClient::new());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = keys::fetcher_wakeup().notified() => {}
        }
        let stores = shared.state.key_stores();
        if stores.is_empty() {
            continue;
        }
        // jwks_url: each due fetch runs on its own, so a slow identity
        // provider delays nobody else.
        let now = std::time::Instant::now();
        for store in stores.iter().filter(|s| s.begin_fetch(now)) {
            let (store, client) = (store.clone(), client.clone());
            let failures = shared.metrics.counter(
                JWKS_FETCHES_TOTAL,
                &[("provider", &store.provider), ("result", "error")],
            );
            let oks = shared.metrics.counter(
                JWKS_FETCHES_TOTAL,
                &[("provider", &store.provider), ("result", "ok")],
            );
            tokio::spawn(async move {
                match store.fetch(&client).await {
                    Ok(n) => {
                        oks.increment(1);
                        tracing::info!(provider = %store.provider, keys = n, "JWKS fetched");
                    }
                    Err(e) => {
                        failures.increment(1);
                        let kept = if store.current().is_some() {
                            "keeping the last good keys"
                        } else {
                            "no keys yet: requests get 503 auth_unavailable"
                        };
                        tracing::error!(provider = %store.provider, error = %e, "JWKS fetch failed; {kept}");
                    }
                }
            });
        }
        let metrics = shared.metrics.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let now = crate::tls::files::unix_now();
            for store in &stores {
                match store.check_file() {
                    Some(Ok(n)) => {
                        tracing::info!(provider = %store.provider, keys = n, "JWKS reloaded")
                    }
                    Some(Err(e)) => {
                        tracing::error!(provider = %store.provider, error = %e, "JWKS reload failed; keeping the last good keys")
                    }
                    None => {}
                }
                if let Some(k) = store.current() {
                    KeyAge::new(&metrics, &store.provider)
                        .0
                        .set((now - k.loaded_at_unix) as f64);
                }
            }
        })
        .await;
    }
}
