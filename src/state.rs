//! Long-lived objects keyed by name, shared by every snapshot that names
//! them: upstream pools (connections, balancer cursor, outcome counters),
//! endpoints (in-flight counts, health verdicts), circuit breakers, retry
//! budgets, health-check tasks, JWT key stores and per-route metric handles.
//! A compiled snapshot holds `Arc`s into this registry, so a config reload
//! that keeps a name keeps its object (an open breaker stays open, an
//! unhealthy endpoint stays out).
//!
//! Only snapshot compilation and reload touch the locks here; requests
//! never do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::atomic::AtomicUsize;

use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::auth::keys::{KeySet, KeySource, KeyStore};
use crate::limits::rate::Buckets;
use crate::limits::shared::{Settings, SharedBuckets};
use crate::limits::shed::Shedder;
use crate::limits::store::RedisStore;
use crate::routing::guard::GuardState;
use crate::snapshot::Snapshot;
use crate::sync::lock;
use crate::telemetry::{Metrics, RouteMetrics, UpstreamMetrics, UPSTREAM_ENDPOINT_HEALTHY};
use crate::tls::UpstreamTls;
use crate::upstream::breaker::Breaker;
use crate::upstream::health::{self, CheckSettings};
use crate::upstream::retry::RetryBudget;
use crate::upstream::{Endpoint, Pool, WriteBehind};

type EndpointKey = (String, String);

pub struct State {
    pub metrics: Arc<Metrics>,
    /// In-flight count and adaptive limit of the whole gateway.
    pub shedder: Shedder,
    buckets: Mutex<HashMap<String, Arc<Buckets>>>,
    /// Shared rate-limit stores by URL, each with its probe task.
    stores: Mutex<HashMap<String, StoreProbe>>,
    /// Each Redis policy's shared buckets, by policy name.
    shared_buckets: Mutex<HashMap<String, Arc<SharedBuckets>>>,
    upstream_in_flight: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    /// Given to every pool: request heads written per scheduler pass.
    write_behind: Option<Arc<WriteBehind>>,
    endpoints: Mutex<HashMap<EndpointKey, Arc<Endpoint>>>,
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    budgets: Mutex<HashMap<String, Arc<RetryBudget>>>,
    checkers: Mutex<HashMap<EndpointKey, Checker>>,
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    key_stores: Mutex<HashMap<String, Arc<KeyStore>>>,
    guards: Mutex<HashMap<String, Arc<GuardState>>>,
}

/// A running health-check task and the channel that retunes it.
struct Checker {
    settings: watch::Sender<Arc<CheckSettings>>,
    task: AbortHandle,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A shared store and the task that probes it.
struct StoreProbe {
    store: Arc<RedisStore>,
    task: Option<AbortHandle>,
}

impl Drop for StoreProbe {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl State {
    pub fn new(metrics: Arc<Metrics>, write_behind: Option<Arc<WriteBehind>>) -> State {
        State {
            write_behind,
            shedder: Shedder::new(&metrics),
            buckets: Mutex::default(),
            stores: Mutex::default(),
            shared_buckets: Mutex::default(),
            upstream_in_flight: Mutex::default(),
            metrics,
            pools: Mutex::default(),
            endpoints: Mutex::default(),
            breakers: Mutex::default(),
            budgets: Mutex::default(),
            checkers: Mutex::default(),
            routes: Mutex::default(),
            key_stores: Mutex::default(),
            guards: Mutex::default(),
        }
    }

    /// The pool of upstream `name`; a new one when its connector's settings
    /// (connect timeout, TLS) changed.
    pub fn pool(
        &self,
        name: &str,
        connect_timeout: Duration,
        tls: Option<&UpstreamTls>,
    ) -> Arc<Pool> {
        let mut pools = lock(&self.pools);
        if let Some(p) = pools.get(name) {
            if p.connect_timeout == connect_timeout
                && p.tls_identity.as_deref() == tls.map(|t| t.identity.as_str())
            {
                return p.clone();
            }
        }
        let pool = Arc::new(Pool::new(
            connect_timeout,
            tls,
            UpstreamMetrics::new(&self.metrics, name),
            self.write_behind.clone(),
        ));
        pools.insert(name.to_string(), pool.clone());
        pool
    }

    /// Endpoint `addr` of upstream `upstream`.
    pub fn endpoint(
        &self,
        upstream: &str,
        addr: &str,
    ) -> Result<Arc<Endpoint>, http::uri::InvalidUri> {
        let mut endpoints = lock(&self.endpoints);
        let key = (upstream.to_string(), addr.to_string());
        if let Some(e) = endpoints.get(&key) {
            return Ok(e.clone());
        }
        let healthy = self.metrics.gauge(
            UPSTREAM_ENDPOINT_HEALTHY,
            &[("upstream", upstream), ("endpoint", addr)],
        );
        let e = Arc::new(Endpoint::new(addr, healthy)?);
        endpoints.insert(key, e.clone());
        Ok(e)
    }

    /// The circuit breaker of upstream `name`.
    pub fn breaker(&self, name: &str) -> Arc<Breaker> {
        lock(&self.breakers)
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Breaker::new(name, &self.metrics)))
            .clone()
    }

    /// The buckets of rate-limit policy `name`.
    pub fn buckets(&self, name: &str) -> Arc<Buckets> {
        lock(&self.buckets)
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Buckets::new(name, &self.metrics)))
            .clone()
    }

    /// Every policy's buckets (for the sweep).
    pub fn all_buckets(&self) -> Vec<Arc<Buckets>> {
        lock(&self.buckets).values().cloned().collect()
    }

    /// Redis policy `c`'s shared buckets on the store at `url`: kept while
    /// its settings stay the same. Making a store starts its probe, so this
    /// must run inside Tokio; nothing here waits for Redis.
    pub fn shared_buckets(
        &self,
        c: &crate::config::RateLimitConfig,
        url: &str,
    ) -> Result<Arc<SharedBuckets>, String> {
        let settings = Settings::of(c, url);
        let mut all = lock(&self.shared_buckets);
        if let Some(b) = all.get(&c.name) {
            if b.settings == settings {
                return Ok(b.clone());
            }
        }
        let store = self.redis_store(url)?;
        let b = Arc::new(SharedBuckets::new(&c.name, store, settings, &self.metrics));
        all.insert(c.name.clone(), b.clone());
        Ok(b)
    }

    fn redis_store(&self, url: &str) -> Result<Arc<RedisStore>, String> {
        let mut stores = lock(&self.stores);
        if let Some(s) = stores.get(url) {
            return Ok(s.store.clone());
        }
        let store = RedisStore::new(url).map_err(|e| {
            format!(
                "cannot use Redis store `{}`: {e}",
                crate::config::limits::redact_url(url)
            )
        })?;
        let task = store.start_probe();
        stores.insert(
            url.to_string(),
            StoreProbe {
                store: store.clone(),
                task,
            },
        );
        Ok(store)
    }

    /// Tells each store which policies use it (for its log lines and
    /// their `up` gauges).
    pub fn name_store_users(&self, config: &crate::config::Config) {
        let stores = lock(&self.stores);
        for (url, probe) in stores.iter() {
            let users: Vec<_> = config
                .rate_limits
                .iter()
                .filter(|r| r.redis_url() == Some(url.as_str()))
                .collect();
            let names: Vec<_> = users
                .iter()
                .map(|r| (r.name.as_str(), r.on_store_error()))
                .collect();
            let gauges = users
                .iter()
                .map(|r| {
                    self.metrics.gauge(
                        crate::telemetry::RATE_LIMIT_STORE_UP,
                        &[("policy", r.name.as_str())],
                    )
                })
                .collect();
            probe.store.set_users(&names, gauges);
        }
    }

    /// Every endpoint (for the idle-connection sweep).
    pub fn all_endpoints(&self) -> Vec<Arc<Endpoint>> {
        lock(&self.endpoints).values().cloned().collect()
    }

    /// Every Redis policy's shared buckets (for the sweep).
    pub fn all_shared_buckets(&self) -> Vec<Arc<SharedBuckets>> {
        lock(&self.shared_buckets).values().cloned().collect()
    }

    /// The in-flight count of upstream `name` (its bulkhead).
    pub fn upstream_in_flight(&self, name: &str) -> Arc<AtomicUsize> {
        lock(&self.upstream_in_flight)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The retry budget of upstream `name`.
    pub fn retry_budget(&self, name: &str) -> Arc<RetryBudget> {
        lock(&self.budgets)
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(RetryBudget::new(name, &self.metrics)))
            .clone()
    }

    /// Makes the running health checks match `snap`: a checker per endpoint
    /// of every upstream with a `health_check`, retuned in place when its
    /// settings changed; every other checker stopped, and endpoints whose
    /// checks were turned off count as up again. Must run inside Tokio.
    pub fn sync_health_checks(&self, snap: &Snapshot) {
        let mut checkers = lock(&self.checkers);
        let mut wanted: HashMap<EndpointKey, (Arc<CheckSettings>, Arc<Endpoint>)> = HashMap::new();
        for u in &snap.upstreams {
            for e in &u.endpoints {
                let key = (u.name.to_string(), e.addr.to_string());
                match &u.health_check {
                    Some(config) => {
                        let settings = Arc::new(CheckSettings {
                            upstream: u.name.clone(),
                            config: config.clone(),
                            pool: u.pool.clone(),
                        });
                        wanted.insert(key, (settings, e.clone()));
                    }
                    None => {
                        if checkers.remove(&key).is_some() {
                            e.health.reset_active();
                        }
                    }
                }
            }
        }
        checkers.retain(|key, _| wanted.contains_key(key));
        for (key, (settings, endpoint)) in wanted {
            match checkers.get(&key) {
                Some(c) => {
                    if **c.settings.borrow() != *settings {
                        c.settings.send_replace(settings);
                    }
                }
                None => {
                    let (tx, rx) = watch::channel(settings);
                    let task = tokio::spawn(health::run_checks(endpoint, rx)).abort_handle();
                    checkers.insert(key, Checker { settings: tx, task });
                }
            }
        }
    }

    /// Stops every health check (gateway shutdown).
    pub fn stop_health_checks(&self) {
        lock(&self.checkers).clear();
    }

    /// The key store of JWT provider `name`, with `keys` (just loaded by
    /// the config loader) as its current keys. Kept across reloads while the
    /// key source stays the same.
    pub fn key_store(
        &self,
        name: &str,
        source: KeySource,
        keys: Option<Arc<KeySet>>,
    ) -> Arc<KeyStore> {
        let mut stores = lock(&self.key_stores);
        if let Some(s) = stores.get(name) {
            if s.source == source {
                if let Some(k) = keys {
                    s.replace(k);
                }
                return s.clone();
            }
        }
        let store = Arc::new(KeyStore::new(name, source, keys));
        stores.insert(name.to_string(), store.clone());
        store
    }

    /// False while a provider with `ready_needs_keys` has no keys yet.
    pub fn keys_ready(&self) -> bool {
        lock(&self.key_stores)
            .values()
            .all(|s| !s.source.ready_needs_keys || s.current().is_some())
    }

    /// Every JWT provider's key store (for the JWKS watcher).
    pub fn key_stores(&self) -> Vec<Arc<KeyStore>> {
        lock(&self.key_stores).values().cloned().collect()
    }

    /// Forgets everything `config` no longer names. Snapshots still in use
    /// keep their `Arc`s until their last request ends; then idle pooled
    /// connections of removed upstreams close.
    pub fn retain(&self, config: &crate::config::Config) {
        let upstream = |n: &str| config.upstreams.iter().any(|u| u.name == n);
        lock(&self.pools).retain(|name, _| upstream(name));
        let endpoint = |u: &str, addr: &String| {
            config
                .upstreams
                .iter()
                .any(|c| c.name == *u && c.endpoints.contains(addr))
        };
        lock(&self.endpoints).retain(|(u, addr), _| endpoint(u, addr));
        lock(&self.checkers).retain(|(u, addr), _| endpoint(u, addr));
        let with = |n: &str, has: fn(&crate::config::UpstreamConfig) -> bool| {
            config.upstreams.iter().any(|u| u.name == n && has(u))
        };
        lock(&self.breakers).retain(|name, _| with(name, |u| u.circuit_breaker.is_some()));
        lock(&self.budgets).retain(|name, _| with(name, |u| u.retry.is_some()));
        lock(&self.upstream_in_flight).retain(|name, _| upstream(name));
        lock(&self.buckets).retain(|name, _| config.rate_limits.iter().any(|r| r.name == *name));
        lock(&self.shared_buckets).retain(|name, b| {
            config
                .rate_limits
                .iter()
                .any(|r| r.name == *name && r.redis_url() == Some(b.settings.url.as_str()))
        });
        lock(&self.stores).retain(|url, _| {
            config
                .rate_limits
                .iter()
                .any(|r| r.redis_url() == Some(url.as_str()))
        });
        lock(&self.routes)
            .retain(|name, _| name.is_empty() || config.routes.iter().any(|r| r.name == *name));
        lock(&self.key_stores).retain(|name, _| config.jwt.iter().any(|j| j.name == *name));
        lock(&self.guards).retain(|name, _| {
            config
                .routes
                .iter()
                .any(|r| r.name == *name && r.guard.is_some())
        });
    }

    /// Route `name`'s canary guard state: kept while the route's `split`
    /// and `guard` stay as they were (`fingerprint`), fresh otherwise, so
    /// a drained canary comes back only when its config changes.
    pub fn guard_state(&self, name: &str, fingerprint: u64, targets: usize) -> Arc<GuardState> {
        let mut guards = lock(&self.guards);
        match guards.get(name) {
            Some(g) if g.fingerprint() == fingerprint => g.clone(),
            _ => {
                let g = Arc::new(GuardState::new(fingerprint, targets));
                guards.insert(name.to_string(), g.clone());
                g
            }
        }
    }

    /// Metric handles for route `name` ("" for unrouted requests).
    pub fn route_metrics(&self, name: &str) -> Arc<RouteMetrics> {
        lock(&self.routes)
            .entry(name.to_string())
            .or_insert_with(|| RouteMetrics::new(&self.metrics, Arc::from(name)))
            .clone()
    }
}
