//! Long-lived objects keyed by name, shared by every snapshot that names
//! them: upstream pools (connections, balancer cursor, outcome counters),
//! endpoints (in-flight counts) and per-route metric handles. A compiled
//! snapshot holds `Arc`s into this registry, so a config reload that keeps a
//! name keeps its object.
//!
//! Only snapshot compilation touches the locks here; requests never do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::auth::keys::{KeySet, KeySource, KeyStore};
use crate::telemetry::{Metrics, RouteMetrics, UpstreamMetrics};
use crate::tls::UpstreamTls;
use crate::upstream::{Endpoint, Pool};

pub struct State {
    pub metrics: Arc<Metrics>,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    endpoints: Mutex<HashMap<(String, String), Arc<Endpoint>>>,
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    key_stores: Mutex<HashMap<String, Arc<KeyStore>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain maps that are
    // still consistent, so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    pub fn new(metrics: Arc<Metrics>) -> State {
        State {
            metrics,
            pools: Mutex::default(),
            endpoints: Mutex::default(),
            routes: Mutex::default(),
            key_stores: Mutex::default(),
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
        let e = Arc::new(Endpoint::new(addr)?);
        endpoints.insert(key, e.clone());
        Ok(e)
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
        lock(&self.endpoints).retain(|(u, addr), _| {
            config
                .upstreams
                .iter()
                .any(|c| c.name == *u && c.endpoints.contains(addr))
        });
        lock(&self.routes)
            .retain(|name, _| name.is_empty() || config.routes.iter().any(|r| r.name == *name));
        lock(&self.key_stores).retain(|name, _| config.jwt.iter().any(|j| j.name == *name));
    }

    /// Metric handles for route `name` ("" for unrouted requests).
    pub fn route_metrics(&self, name: &str) -> Arc<RouteMetrics> {
        lock(&self.routes)
            .entry(name.to_string())
            .or_insert_with(|| RouteMetrics::new(&self.metrics, Arc::from(name)))
            .clone()
    }
}
