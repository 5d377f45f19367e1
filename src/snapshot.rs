//! A validated [`Config`](crate::config::Config) compiled into the immutable
//! [`Snapshot`] every request reads: the route table, each route's weighted
//! targets, and the limits, with `Arc`s into the long-lived
//! [`State`]. One `ArcSwap<Snapshot>` holds it; a request loads it once and
//! keeps it to its end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, Method};

use crate::auth::JwtProvider;
use crate::client_key::ClientKey;
use crate::config::{
    self, AdminConfig, Cidr, ConfigError, ConfigErrors, KeySpec, Loaded, Priority, RouteAuthConfig,
    ServerConfig,
};
use crate::limits::rate::RatePolicy;
use crate::limits::shed::ShedPolicy;
use crate::limits::SizeLimits;
use crate::routing::guard::{self, Guard};
use crate::routing::split::Split;
use crate::routing::version::{Deprecation, Versioning};
use crate::routing::{Conditions, PathMatch, Router};
use crate::server::{ConnRuntime, ConnSettings};
use crate::state::State;
use crate::telemetry::{RouteMetrics, DEPRECATED_REQUESTS_TOTAL};
use crate::upstream::breaker::BreakerPolicy;
use crate::upstream::health::OutlierPolicy;
use crate::upstream::retry::RetryPolicy;
use crate::upstream::{Balance, Upstream};

/// A route's JWT requirement.
pub struct RouteAuth {
    pub provider: Arc<JwtProvider>,
    pub scopes: Vec<String>,
    /// The scopes space-separated, for `WWW-Authenticate` and the problem.
    pub scope_text: Arc<str>,
}

/// A route ready to serve.
pub struct Route {
    pub name: Arc<str>,
    pub split: Split<Arc<Upstream>>,
    /// Overrides the upstream's `request_timeout`.
    pub timeout: Option<Duration>,
    pub strip_prefix: Option<String>,
    pub metrics: Arc<RouteMetrics>,
    /// `None` for `auth: none` (or no `auth`).
    pub auth: Option<RouteAuth>,
    pub rate_limit: Option<Arc<RatePolicy>>,
    pub priority: Priority,
    /// Split by this client key's hash instead of at random.
    pub sticky: Option<ClientKey>,
    /// With `allow_override`: the header that pins a request to one of
    /// `pinnable` (every upstream of the split, drained ones included).
    pub override_header: Option<HeaderName>,
    pub pinnable: Vec<Arc<Upstream>>,
    /// Forward the path's version segment (`keep_version_segment`).
    pub keep_version_segment: bool,
    /// Headers and a counter for a version on its way out.
    pub deprecation: Option<Arc<Deprecation>>,
    /// The canary guardrail.
    pub guard: Option<Arc<Guard>>,
}

/// Everything a request needs from the config, compiled.
pub struct Snapshot {
    pub generation: u64,
    /// Hex SHA-256 of the config file.
    pub hash: String,
    pub file: String,
    pub loaded_at: SystemTime,
    pub router: Router<Route>,
    /// Metric handles for requests no route matched.
    pub unrouted: Arc<RouteMetrics>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub limits: SizeLimits,
    pub access_log: bool,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    /// Connection settings and the hyper builder for new connections.
    pub conn: Arc<ConnRuntime>,
    /// The config document as loaded, for the next reload's diff.
    pub raw: serde_json::Value,
    /// Headers any provider forwards claims in: removed from every request
    /// before routing, so clients cannot spoof them.
    pub claim_headers: Vec<HeaderName>,
    pub shedding: Option<ShedPolicy>,
    /// Peers whose `X-Forwarded-For` names the client for `ip` keys.
    pub trusted_proxies: Vec<Cidr>,
    /// Send `x-portcullis-upstream` on proxied responses.
    pub upstream_header: bool,
    /// Where a request's API version is read from.
    pub versioning: Option<Versioning>,
    /// Every route's canary guard, for `/status`.
    pub guards: Vec<Arc<Guard>>,
    /// Every rate-limit policy, in config order, for `/status`.
    pub rate_limits: Vec<Arc<RatePolicy>>,
}

impl Snapshot {
    /// Compiles a validated config. Fails only on what validation cannot
    /// know; such errors still carry the config path.
    pub fn compile(
        loaded: &Loaded,
        state: &State,
        generation: u64,
    ) -> Result<Snapshot, ConfigErrors> {
        let config = &loaded.config;
        let mut errors = Vec::new();
        let mut upstreams: HashMap<&str, Arc<Upstream>> = HashMap::new();
        let mut upstream_list = Vec::new();
        for (i, u) in config.upstreams.iter().enumerate() {
            let mut endpoints = Vec::new();
            for (j, addr) in u.endpoints.iter().enumerate() {
                match state.endpoint(&u.name, addr) {
                    Ok(e) => endpoints.push(e),
                    Err(e) => errors.push(ConfigError {
                        file: loaded.file.clone(),
                        pos: Default::default(),
                        path: format!("upstreams[{i}].endpoints[{j}]"),
                        message: format!("`{addr}` is not a valid endpoint: {e}"),
                    }),
                }
            }
            let upstream = Arc::new(Upstream {
                name: Arc::from(u.name.as_str()),
                name_header: HeaderValue::from_str(&u.name)
                    .unwrap_or(HeaderValue::from_static("-")),
                endpoints,
                balance: match &u.balance {
                    config::Balance::RoundRobin => Balance::RoundRobin,
                    config::Balance::LeastRequests => Balance::LeastRequests,
                    config::Balance::Hash(spec) => match ClientKey::new(spec) {
                        Some(key) => Balance::Hash(key),
                        None => Balance::RoundRobin,
                    },
                },
                request_timeout: u.request_timeout.0,
                pool: state.pool(
                    &u.name,
                    u.connect_timeout.0,
                    loaded.tls.upstreams.get(&u.name).map(|t| &**t),
                ),
                health_check: u.health_check.clone(),
                outlier: u.outlier_detection.as_ref().map(OutlierPolicy::new),
                breaker: u
                    .circuit_breaker
                    .as_ref()
                    .map(|b| (BreakerPolicy::new(b), state.breaker(&u.name))),
                retry: u
                    .retry
                    .as_ref()
                    .filter(|r| r.attempts > 0)
                    .map(|r| (RetryPolicy::new(r), state.retry_budget(&u.name))),
                bulkhead: u
                    .max_in_flight
                    .map(|max| (max as usize, state.upstream_in_flight(&u.name))),
            });
            upstreams.insert(&u.name, upstream.clone());
            upstream_list.push(upstream);
        }

        // Claims that client keys read, kept on every verified token.
        let mut key_claims: Vec<String> = config
            .upstreams
            .iter()
            .filter_map(|u| match &u.balance {
                config::Balance::Hash(KeySpec::Claim(c)) => Some(c.clone()),
                _ => None,
            })
            .collect();
        for r in &config.rate_limits {
            for k in r.key.iter() {
                if let KeySpec::Claim(c) = k {
                    if !key_claims.contains(c) {
                        key_claims.push(c.clone());
                    }
                }
            }
        }
        let mut policies: HashMap<&str, Arc<RatePolicy>> = HashMap::new();
        for (i, r) in config.rate_limits.iter().enumerate() {
            let shared = match r.redis_url() {
                Some(url) => match state.shared_buckets(r, url) {
                    Ok(shared) => Some(shared),
                    Err(e) => {
                        errors.push(ConfigError {
                            file: loaded.file.clone(),
                            pos: Default::default(),
                            path: format!("rate_limits[{i}].store"),
                            message: e,
                        });
                        None
                    }
                },
                None => None,
            };
            let policy = RatePolicy::new(r, state.buckets(&r.name), shared);
            policies.insert(r.name.as_str(), Arc::new(policy));
        }
        state.name_store_users(config);
        let mut providers: HashMap<&str, Arc<JwtProvider>> = HashMap::new();
        let mut claim_headers: Vec<HeaderName> = Vec::new();
        for j in &config.jwt {
            let store = state.key_store(
                &j.name,
                crate::auth::keys::source_for(j, &loaded.base_dir),
                loaded.jwt_keys.get(&j.name).cloned(),
            );
            let provider = Arc::new(JwtProvider::new(
                j,
                store,
                key_claims.clone(),
                &state.metrics,
            ));
            for h in provider.forwarded_headers() {
                if !claim_headers.contains(h) {
                    claim_headers.push(h.clone());
                }
            }
            providers.insert(&j.name, provider);
        }

        let mut router = Router::new();
        let mut guards = Vec::new();
        for r in &config.routes {
            let targets: Vec<(u32, Arc<Upstream>)> = match (&r.upstream, &r.split) {
                (Some(name), _) => upstreams
                    .get(name.as_str())
                    .map(|u| (1, u.clone()))
                    .into_iter()
                    .collect(),
                (None, Some(split)) => split
                    .iter()
                    .filter_map(|s| {
                        upstreams
                            .get(s.upstream.as_str())
                            .map(|u| (s.weight, u.clone()))
                    })
                    .collect(),
                (None, None) => Vec::new(),
            };
            let m = &r.matcher;
            let path = match (&m.path, &m.path_prefix) {
                (Some(p), _) => PathMatch::Exact(p.clone()),
                (None, Some(p)) => PathMatch::Prefix(p.clone()),
                (None, None) => PathMatch::Prefix("/".into()),
            };
            let conditions = Conditions {
                host: m.host.as_ref().map(|h| match h.strip_prefix('*') {
                    Some(suffix) => (suffix.to_ascii_lowercase(), true),
                    None => (h.to_ascii_lowercase(), false),
                }),
                methods: m.methods.as_ref().map(|ms| {
                    ms.iter()
                        .filter_map(|x| Method::from_bytes(x.to_ascii_uppercase().as_bytes()).ok())
                        .collect()
                }),
                headers: m
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((
                            HeaderName::from_bytes(k.as_bytes()).ok()?,
                            HeaderValue::from_str(&v.0).ok()?,
                        ))
                    })
                    .collect(),
                version: m.version.map(|v| v.0),
            };
            let name: Arc<str> = Arc::from(r.name.as_str());
            let guard = match (&r.guard, &r.split) {
                (Some(g), Some(split)) => {
                    let entries: Vec<(Arc<str>, u32)> = split
                        .iter()
                        .map(|s| (Arc::from(s.upstream.as_str()), s.weight))
                        .collect();
                    let guard_state =
                        state.guard_state(&r.name, guard::fingerprint(r), entries.len());
                    let g = Arc::new(Guard::new(
                        name.clone(),
                        g,
                        guard_state,
                        &entries,
                        &state.metrics,
                    ));
                    guards.push(g.clone());
                    Some(g)
                }
                _ => None,
            };
            let route = Route {
                name,
                split: Split::new(targets),
                timeout: r.timeout.map(|t| t.0),
                strip_prefix: r.strip_prefix.clone(),
                metrics: state.route_metrics(&r.name),
                auth: match &r.auth {
                    Some(RouteAuthConfig::Jwt { jwt, scopes }) => {
                        providers.get(jwt.as_str()).map(|p| RouteAuth {
                            provider: p.clone(),
                            scopes: scopes.clone(),
                            scope_text: Arc::from(scopes.join(" ")),
                        })
                    }
                    _ => None,
                },
                rate_limit: r
                    .rate_limit
                    .as_deref()
                    .and_then(|name| policies.get(name).cloned()),
                priority: r.priority,
                sticky: r.sticky.as_ref().and_then(|k| ClientKey::new(&k.0)),
                override_header: r
                    .allow_override
                    .then(|| HeaderName::from_bytes(r.override_header.as_bytes()).ok())
                    .flatten(),
                pinnable: r
                    .split
                    .iter()
                    .flatten()
                    .filter_map(|s| upstreams.get(s.upstream.as_str()).cloned())
                    .collect(),
                keep_version_segment: r.keep_version_segment,
                deprecation: r.deprecation.as_ref().map(|d| {
                    Arc::new(Deprecation::new(
                        d,
                        state
                            .metrics
                            .counter(DEPRECATED_REQUESTS_TOTAL, &[("route", &r.name)]),
                    ))
                }),
                guard,
            };
            router.add(path, conditions, Arc::new(route));
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Snapshot {
            generation,
            hash: loaded.hash.clone(),
            file: loaded.file.clone(),
            loaded_at: SystemTime::now(),
            router,
            unrouted: state.route_metrics(""),
            upstreams: upstream_list,
            limits: SizeLimits {
                max_header_bytes: config.server.max_header_bytes.0,
                max_body_bytes: config.server.max_body_bytes.0,
            },
            access_log: config.server.access_log,
            server: config.server.clone(),
            admin: config.admin.clone(),
            conn: Arc::new(ConnRuntime::new(ConnSettings::from_config(&config.server))),
            raw: loaded.raw.clone(),
            claim_headers,
            shedding: config.shedding.as_ref().map(ShedPolicy::new),
            trusted_proxies: config.server.trusted_proxies.clone(),
            upstream_header: config.server.upstream_header,
            versioning: config.versioning.as_ref().and_then(Versioning::new),
            guards,
            rate_limits: config
                .rate_limits
                .iter()
                .filter_map(|r| policies.get(r.name.as_str()).cloned())
                .collect(),
        })
    }
}
