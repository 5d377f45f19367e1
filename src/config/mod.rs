//! `gateway.yaml`, type for type (see CONTRACT.md), and the loader that turns
//! its text into a [`Config`] or into every error it has, each as
//! `PATH:LINE:COL: message`.
//!
//! Flow: text → [`yaml::parse`] (value tree + positions) → `${ENV}` expansion →
//! typed deserialization (unknown keys collected, not fatal) → [`validate`]
//! (cross-references, duplicates, weights). Nothing here knows about runtime.

pub mod diff;
pub mod limits;
pub mod resilience;
pub mod validate;
pub mod values;
pub mod versions;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

pub use limits::{
    Cidr, KeyList, LimitMode, OnStoreError, Priority, Rate, RateLimitConfig, SheddingConfig,
    SyncMode,
};
pub use resilience::{
    Balance, CircuitBreakerConfig, HealthCheckConfig, KeySpec, OutcomeName, OutlierConfig,
    RetryConfig, StatusRange,
};
pub use values::{Dur, Size};
pub use versions::{
    ApiVersion, DeprecationConfig, GuardConfig, Timestamp, VersionSource, VersioningConfig,
};
use yaml::{Pos, Positions};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub jwt: Vec<JwtProviderConfig>,
    #[serde(default)]
    pub shedding: Option<SheddingConfig>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitConfig>,
    #[serde(default)]
    pub versioning: Option<VersioningConfig>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// One JWT provider (`jwt[]`): who issues tokens and with which keys.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderConfig {
    pub name: String,
    /// Required `iss`; not checked when absent.
    #[serde(default)]
    pub issuer: Option<String>,
    /// `aud` must name one of these; not checked when empty.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted `alg` values; `none` never is.
    pub algorithms: Vec<String>,
    /// A JWKS document with the provider's public keys.
    #[serde(default)]
    pub jwks_file: Option<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// With `jwks_url`: how often keys are fetched again (`jwks_file` is
    /// checked every second regardless).
    #[serde(default = "default_jwks_refresh")]
    pub refresh: Dur,
    /// HMAC secret for HS256/384/512.
    #[serde(default)]
    pub secret: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// Claim → header sent upstream.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Also look for the token in this cookie (added to the contract).
    #[serde(default)]
    pub token_cookie: Option<String>,
    /// Also look for the token in this query parameter (added to the contract).
    #[serde(default)]
    pub token_query: Option<String>,
    /// With `jwks_url`: how long the last good keys keep serving while
    /// fetches fail (added to the contract).
    #[serde(default = "default_max_key_age")]
    pub max_key_age: Dur,
    /// `/health/ready` stays 503 until the keys are loaded (added to the contract).
    #[serde(default)]
    pub ready_needs_keys: bool,
}

fn default_max_key_age() -> Dur {
    Dur::secs(24 * 3600)
}

fn default_jwks_refresh() -> Dur {
    Dur::secs(300)
}
fn default_leeway() -> Dur {
    Dur::secs(30)
}

/// A route's `auth`: `none`, or `{ jwt: PROVIDER, scopes: [...] }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAuthConfig {
    None,
    Jwt { jwt: String, scopes: Vec<String> },
}

impl<'de> Deserialize<'de> for RouteAuthConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Jwt {
            jwt: String,
            #[serde(default)]
            scopes: Vec<String>,
        }
        match Value::deserialize(d)? {
            Value::String(s) if s == "none" => Ok(RouteAuthConfig::None),
            v @ Value::Object(_) => {
                let j: Jwt = serde_json::from_value(v).map_err(serde::de::Error::custom)?;
                Ok(RouteAuthConfig::Jwt {
                    jwt: j.jwt,
                    scopes: j.scopes,
                })
            }
            _ => Err(serde::de::Error::custom(
                "auth must be `none` or `{ jwt: PROVIDER, scopes: [...] }`",
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: String,
    /// HTTPS on this listener; plain HTTP (and h2c) when absent.
    #[serde(default)]
    pub tls: Option<ListenerTlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// Chosen per handshake by SNI against each certificate's SANs; the
    /// first one serves clients without SNI or with an unknown name.
    pub certificates: Vec<CertKeyConfig>,
    #[serde(default)]
    pub min_version: TlsVersion,
    /// CA bundle (PEM) client certificates must chain to (mTLS).
    #[serde(default)]
    pub client_ca: Option<String>,
    /// `required` when `client_ca` is set and this is not (added to the contract).
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
    /// A TLS handshake that takes longer is dropped (added to the contract).
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Dur,
}

fn default_handshake_timeout() -> Dur {
    Dur::secs(10)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertKeyConfig {
    /// PEM: the leaf certificate first, then its intermediates.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC), unencrypted.
    pub key: String,
}

/// `min_version: "1.2"` or `"1.3"` (a YAML number is taken as its text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    V1_2,
    V1_3,
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match values::string_or_number(d)?.as_str() {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            other => Err(serde::de::Error::custom(format!(
                "min_version must be \"1.2\" or \"1.3\", not `{other}`"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Ask for a certificate; serve clients without one too.
    Optional,
    /// No valid client certificate, no connection.
    Required,
}

/// `upstreams[].tls`: HTTPS to the upstream's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// Name sent in SNI and verified against the endpoint's certificate;
    /// the endpoint's host when absent.
    #[serde(default)]
    pub sni: Option<String>,
    /// CA bundle (PEM) to verify endpoints against; the system's roots when absent.
    #[serde(default)]
    pub ca: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_bind")]
    pub bind: String,
    /// `POST /reload` from other hosts than loopback (added to the contract).
    #[serde(default)]
    pub allow_remote_reload: bool,
}

fn default_admin_bind() -> String {
    "127.0.0.1:9901".into()
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: default_admin_bind(),
            allow_remote_reload: false,
        }
    }
}

/// `workers: auto` or a thread count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workers {
    #[default]
    Auto,
    Count(usize),
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) if s == "auto" => Ok(Workers::Auto),
            Value::Number(n) => match n.as_u64() {
                Some(c) if (1..=1024).contains(&c) => Ok(Workers::Count(c as usize)),
                _ => Err(serde::de::Error::custom(
                    "workers must be `auto` or a count from 1 to 1024",
                )),
            },
            _ => Err(serde::de::Error::custom(
                "workers must be `auto` or a count from 1 to 1024",
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub workers: Workers,
    pub max_connections: usize,
    /// Open connections from one client address (off when unset).
    pub max_connections_per_ip: Option<usize>,
    pub header_read_timeout: Dur,
    /// The longest wait for the next bytes of a request body (408).
    pub body_read_timeout: Dur,
    /// The longest a response may wait on a client that does not read it.
    pub send_timeout: Dur,
    pub idle_timeout: Dur,
    pub max_header_bytes: Size,
    pub max_body_bytes: Size,
    /// Which HTTP/1.1 server serves client connections.
    pub http1: Http1Server,
    pub http2: Http2Config,
    pub drain_delay: Dur,
    pub drain_timeout: Dur,
    /// One JSON line per request on stdout (added to the contract).
    pub access_log: bool,
    /// Peers whose `X-Forwarded-For` is believed for the `ip` client key.
    pub trusted_proxies: Vec<Cidr>,
    /// Tell clients which upstream answered (`x-portcullis-upstream`).
    pub upstream_header: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: Workers::Auto,
            max_connections: 10_000,
            max_connections_per_ip: None,
            header_read_timeout: Dur::secs(10),
            body_read_timeout: Dur::secs(30),
            send_timeout: Dur::secs(60),
            idle_timeout: Dur::secs(60),
            max_header_bytes: Size(16 << 10),
            max_body_bytes: Size(10 << 20),
            http1: Http1Server::Native,
            http2: Http2Config::default(),
            drain_delay: Dur::secs(0),
            drain_timeout: Dur::secs(30),
            access_log: true,
            trusted_proxies: Vec::new(),
            upstream_header: true,
        }
    }
}

/// `server.http1`: the gateway's own HTTP/1.1 server (`native`, the
/// default: fewer instructions per request), or hyper's (`hyper`), kept as
/// a fallback. HTTP/2 is served by hyper either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Http1Server {
    Native,
    Hyper,
}

/// HTTP/2 limits on client connections (`server.http2`): each bounds what
/// one connection can make the gateway hold or do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Request body bytes one stream may send ahead of the gateway reading them.
    pub initial_stream_window: Size,
    /// The same for all streams of a connection together.
    pub initial_connection_window: Size,
    /// Response bytes buffered per stream for a client that reads slowly.
    pub max_send_buffer: Size,
    /// Streams the client cancels before their response ends; past this
    /// many, and once they are half of the connection's streams, the
    /// connection is closed (HTTP/2 rapid reset, CVE-2023-44487).
    pub max_cancelled_streams: u32,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: 100,
            initial_stream_window: Size(1 << 20),
            initial_connection_window: Size(1 << 20),
            max_send_buffer: Size(128 << 10),
            max_cancelled_streams: 100,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierConfig>,
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Bulkhead: requests in flight to this upstream before 503 `overloaded`.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
}

fn default_connect_timeout() -> Dur {
    Dur::secs(1)
}
fn default_request_timeout() -> Dur {
    Dur::secs(15)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub split: Option<Vec<SplitConfig>>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// No `auth` is the same as `auth: none`.
    #[serde(default)]
    pub auth: Option<RouteAuthConfig>,
    /// A `rate_limits[]` policy by name.
    #[serde(default)]
    pub rate_limit: Option<String>,
    #[serde(default)]
    pub priority: Priority,
    /// Split by a stable hash of this client key instead of at random.
    #[serde(default)]
    pub sticky: Option<StickyKey>,
    /// Let `override_header` pin a request to one of the split's upstreams.
    #[serde(default)]
    pub allow_override: bool,
    #[serde(default = "default_override_header")]
    pub override_header: String,
    /// Forward the path's `v<N>` segment (default: the upstream sees the
    /// path route matching saw, without it).
    #[serde(default)]
    pub keep_version_segment: bool,
    #[serde(default)]
    pub deprecation: Option<DeprecationConfig>,
    #[serde(default)]
    pub guard: Option<GuardConfig>,
}

fn default_override_header() -> String {
    "x-portcullis-upstream".into()
}

/// `routes[].sticky`: a client key (not `route`).
#[derive(Debug, Clone, PartialEq)]
pub struct StickyKey(pub KeySpec);

impl<'de> Deserialize<'de> for StickyKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match KeySpec::parse(&text).map_err(serde::de::Error::custom)? {
            KeySpec::Route => Err(serde::de::Error::custom(
                "`sticky: route` would send everyone to one side; use a client key",
            )),
            k => Ok(StickyKey(k)),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValueConfig>,
    /// Only requests of this API version (see `versioning`).
    #[serde(default)]
    pub version: Option<ApiVersion>,
}

/// A header value to match; YAML numbers and booleans are taken as their text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderValueConfig(pub String);

impl<'de> Deserialize<'de> for HeaderValueConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        values::string_or_number(d).map(HeaderValueConfig)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    pub upstream: String,
    pub weight: u32,
}

/// One problem in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub pos: Pos,
    /// The YAML path of the offending node, e.g. `routes[2].upstream`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.pos.line, self.pos.col, self.message
        )?;
        if !self.path.is_empty() {
            write!(f, " (at `{}`)", self.path)?;
        }
        Ok(())
    }
}

/// All errors of one config file, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A parsed, validated config and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Directory that relative paths in the file are relative to.
    pub base_dir: PathBuf,
    /// Hex SHA-256 of the file's bytes.
    pub hash: String,
    /// Name used in error messages and logs.
    pub file: String,
    /// The file it was read from (`None` for text loaded by [`load_str`]):
    /// what hot reload reads again.
    pub path: Option<PathBuf>,
    /// The document as parsed, after `${ENV}` expansion: what
    /// [`diff::diff`] compares.
    pub raw: Value,
    /// Certificates, keys and CA bundles the config names, read and checked.
    pub tls: crate::tls::TlsMaterial,
    /// Each JWT provider's keys, read and checked.
    pub jwt_keys: std::collections::HashMap<String, std::sync::Arc<crate::auth::keys::KeySet>>,
    /// Problems that do not stop the config (an expired certificate), in
    /// the same `PATH:LINE:COL` form as errors.
    pub warnings: Vec<ConfigError>,
}

/// Reads and loads a config file.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            pos: Pos { line: 1, col: 1 },
            path: String::new(),
            message: format!("cannot read config file: {e}"),
        }])
    })?;
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let mut loaded = load_str(&text, &file, base_dir, &|n| std::env::var(n).ok())?;
    loaded.path = Some(path.to_path_buf());
    Ok(loaded)
}

/// Loads config text; `file` names it in errors, `env` resolves `${NAME}`.
pub fn load_str(
    text: &str,
    file: &str,
    base_dir: PathBuf,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    let err = |pos: Pos, path: &str, message: String| ConfigError {
        file: file.to_string(),
        pos,
        path: path.to_string(),
        message,
    };
    let (mut value, positions) = yaml::parse(text)
        .map_err(|e| ConfigErrors(vec![err(e.pos, "", format!("YAML syntax: {}", e.message))]))?;
    if value.is_null() {
        value = Value::Object(Default::default());
    }

    let mut errors = Vec::new();
    expand_env_in(&mut value, "", env, &mut |path, msg| {
        errors.push(err(positions.value(path), path, msg));
    });
    let raw = value.clone();
    let typed = deserialize_all(value, &positions, &err, &mut errors);
    let mut tls = crate::tls::TlsMaterial::default();
    let mut jwt_keys = std::collections::HashMap::new();
    let mut warnings = Vec::new();
    if let Some(config) = &typed {
        // A node already reported (bad value, unset variable) is not
        // reported again by validation.
        let reported: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
        validate::validate(config, &mut |path: &str, at_key: bool, msg: String| {
            let covered = |r: &String| {
                path.strip_prefix(r.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            };
            if reported.iter().any(covered) {
                return;
            }
            let pos = if at_key {
                positions.key(path)
            } else {
                positions.value(path)
            };
            errors.push(err(pos, path, msg));
        });
        // Files are read only for a config that is otherwise sound, so a
        // typo'd path is reported once, as the key it is.
        if errors.is_empty() {
            let at = |path: &str, at_key: bool| {
                if at_key {
                    positions.key(path)
                } else {
                    positions.value(path)
                }
            };
            let mut file_errors = Vec::new();
            tls = crate::tls::load_material(
                config,
                &base_dir,
                &mut |path: &str, at_key: bool, msg: String| {
                    file_errors.push(err(at(path, at_key), path, msg));
                },
                &mut |path: &str, at_key: bool, msg: String| {
                    warnings.push(err(at(path, at_key), path, msg));
                },
            );
            jwt_keys = crate::auth::keys::load_all(
                config,
                &base_dir,
                &mut |path: &str, at_key: bool, msg: String| {
                    file_errors.push(err(at(path, at_key), path, msg));
                },
                &mut |path: &str, at_key: bool, msg: String| {
                    warnings.push(err(at(path, at_key), path, msg));
                },
            );
            errors.extend(file_errors);
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| (e.pos.line, e.pos.col));
        errors.dedup();
        return Err(ConfigErrors(errors));
    }
    let config = typed
        .ok_or_else(|| ConfigErrors(vec![err(Pos::default(), "", "invalid config".into())]))?;
    Ok(Loaded {
        config,
        base_dir,
        hash: sha256_hex(text.as_bytes()),
        file: file.to_string(),
        path: None,
        raw,
        tls,
        jwt_keys,
        warnings,
    })
}

/// Hex SHA-256, as in [`Loaded::hash`].
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn expand_env_in(
    value: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    report: &mut dyn FnMut(&str, String),
) {
    match value {
        Value::String(s) if s.contains("${") => match values::expand_env(s, env) {
            Ok(expanded) => *s = expanded,
            Err(msg) => report(path, msg),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env_in(item, &yaml::join_index(path, i), env, report);
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                expand_env_in(v, &yaml::join_key(path, k), env, report);
            }
        }
        _ => {}
    }
}

/// Deserializes the whole tree, collecting as many errors as it can: each
/// type error's node is removed and deserialization retried, so one bad
/// duration does not hide the next, and every unknown key is reported.
fn deserialize_all(
    mut value: Value,
    positions: &Positions,
    err: &dyn Fn(Pos, &str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> Option<Config> {
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, Config>(value.clone()) {
            // Nodes with errors were removed; what is left is still worth
            // validating, so cross-reference errors show up too.
            Ok(config) => return Some(config),
            Err(e) => {
                let path = error_path(e.path());
                let message = e.inner().to_string();
                if let Some(field) = message.strip_prefix("unknown field `") {
                    let field = field.split('`').next().unwrap_or_default();
                    // The error's path already ends at the unknown key.
                    let full = if path.ends_with(field) {
                        path.clone()
                    } else {
                        yaml::join_key(&path, field)
                    };
                    let expected = message.split_once(", expected").map(|(_, x)| x.trim());
                    let mut msg = unknown_key_message(&full);
                    if let Some(expected) = expected {
                        msg = format!("{msg}; expected {expected}");
                    }
                    errors.push(err(positions.key(&full), &full, msg));
                    if !remove_path(&mut value, &full) {
                        return None;
                    }
                    removed.push(full);
                } else {
                    if removed.contains(&path) {
                        // A bad list item was nulled (to keep its siblings'
                        // paths) and the null fails too: drop the list.
                        match path.rfind('[').map(|i| path[..i].to_string()) {
                            Some(list) if !removed.contains(&list) => {
                                if !remove_path(&mut value, &list) {
                                    return None;
                                }
                                removed.push(list);
                                continue;
                            }
                            _ => return None,
                        }
                    }
                    let missing_after_removal = message.starts_with("missing field")
                        && removed.iter().any(|r| r.starts_with(&path));
                    if !missing_after_removal {
                        errors.push(err(positions.value(&path), &path, message));
                    }
                    if path.is_empty() || !remove_path(&mut value, &path) {
                        return None;
                    }
                    removed.push(path);
                }
            }
        }
    }
    None
}

fn unknown_key_message(path: &str) -> String {
    let key = path.rsplit(['.', '[']).next().unwrap_or(path);
    format!("unknown key `{key}`")
}

fn error_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            serde_path_to_error::Segment::Seq { index } => {
                out = yaml::join_index(&out, *index);
            }
            serde_path_to_error::Segment::Map { key } => out = yaml::join_key(&out, key),
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
        }
    }
    out
}

/// Removes the node at `path` from the tree; false if it was not there.
fn remove_path(value: &mut Value, path: &str) -> bool {
    let (parent_path, last) = match path.rfind(['.', '[']) {
        Some(i) => (&path[..i], &path[i..]),
        None => ("", path),
    };
    let Some(parent) = lookup_mut(value, parent_path) else {
        return false;
    };
    if let Some(idx) = last.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        let (Ok(i), Value::Array(items)) = (idx.parse::<usize>(), parent) else {
            return false;
        };
        if i < items.len() {
            // Replace rather than remove so later indices keep their paths.
            items[i] = Value::Null;
            return true;
        }
        return false;
    }
    let key = last.trim_start_matches('.');
    match parent {
        Value::Object(map) => map.remove(key).is_some(),
        _ => false,
    }
}

fn lookup_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let mut cur = value;
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let i: usize = r[..end].parse().ok()?;
            cur = cur.get_mut(i)?;
            rest = &r[end + 1..];
        } else {
            let r = rest.strip_prefix('.').unwrap_or(rest);
            let end = r.find(['.', '[']).unwrap_or(r.len());
            cur = cur.get_mut(&r[..end])?;
            rest = &r[end..];
        }
    }
    Some(cur)
}

#[cfg(test)]
mod tests;
