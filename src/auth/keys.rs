//! A JWT provider's verification keys: parsed from a JWKS document and/or
//! an HMAC secret, held in a [`KeyStore`] that outlives config reloads
//! (keyed by provider name in [`crate::state::State`]) and is refreshed when
//! the JWKS file changes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::tls::files::unix_now;

/// One verification key.
pub struct Key {
    pub kid: Option<String>,
    /// The JWK's own `alg`, which a token must then use.
    pub alg: Option<Algorithm>,
    pub decoding: DecodingKey,
}

/// A provider's keys at one moment. Each load gets a new `generation`, so
/// cached verifications made with older keys are not trusted.
pub struct KeySet {
    pub generation: u64,
    pub keys: Vec<Key>,
    pub loaded_at_unix: i64,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("generation", &self.generation)
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|k| k.kid.as_deref())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Keys that cannot verify
    /// signatures (`use: enc`, unknown `kty`, bad parameters) are skipped and
    /// reported; a document with no usable key is an error.
    pub fn from_jwks(json: &[u8], secret: Option<&str>) -> Result<(KeySet, Vec<String>), String> {
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| format!("not a JSON document: {e}"))?;
        let Some(items) = doc.get("keys").and_then(Value::as_array) else {
            return Err("not a JWKS: no `keys` array".into());
        };
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let name = item
                .get("kid")
                .and_then(Value::as_str)
                .map(|k| format!("key `{k}`"))
                .unwrap_or_else(|| format!("key #{i}"));
            match parse_key(item) {
                Ok(Some(k)) => keys.push(k),
                Ok(None) => skipped.push(format!("{name} is skipped: it is not for signatures")),
                Err(e) => skipped.push(format!("{name} is skipped: {e}")),
            }
        }
        if keys.is_empty() {
            let why = skipped
                .first()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            return Err(format!("the JWKS has no usable signing key{why}"));
        }
        let mut set = KeySet::with_secret(secret);
        set.keys.extend(keys);
        Ok((set, skipped))
    }

    /// Only the HMAC secret (or nothing).
    pub fn with_secret(secret: Option<&str>) -> KeySet {
        KeySet {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            keys: secret
                .map(|s| Key {
                    kid: None,
                    alg: None,
                    decoding: DecodingKey::from_secret(s.as_bytes()),
                })
                .into_iter()
                .collect(),
            loaded_at_unix: unix_now(),
        }
    }
}

fn parse_key(item: &Value) -> Result<Option<Key>, String> {
    let jwk: Jwk = serde_json::from_value(item.clone()).map_err(|e| e.to_string())?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(None);
    }
    let alg = match jwk.common.key_algorithm {
        Some(a) => Some(
            Algorithm::try_from(a)
                .map_err(|_| format!("its `alg` {a} is not a signature algorithm"))?,
        ),
        None => None,
    };
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    Ok(Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        decoding,
    }))
}

/// Where a provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySource {
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub secret: Option<String>,
    /// With `jwks_url`: how often keys are fetched again.
    pub refresh: std::time::Duration,
    /// With `jwks_url`: how long the last good keys serve while fetches fail.
    pub max_key_age: std::time::Duration,
    /// Readiness waits for the first keys.
    pub ready_needs_keys: bool,
}

impl KeySource {
    /// Loads the keys now (the same code `check`, start, reload and the
    /// watcher use). A `jwks_url` provider has none until its first fetch.
    pub fn load(&self) -> Result<Option<(KeySet, Vec<String>)>, String> {
        if self.jwks_url.is_some() {
            return Ok(None);
        }
        self.load_local().map(Some)
    }

    fn load_local(&self) -> Result<(KeySet, Vec<String>), String> {
        match &self.jwks_file {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("cannot read JWKS `{}`: {e}", path.display()))?;
                KeySet::from_jwks(&bytes, self.secret.as_deref())
                    .map_err(|e| format!("`{}`: {e}", path.display()))
            }
            None => Ok((KeySet::with_secret(self.secret.as_deref()), Vec::new())),
        }
    }

    fn digest(&self) -> Option<[u8; 32]> {
        self.jwks_file
            .as_deref()
            .map(|p: &Path| crate::tls::files::digest_files([p]))
    }
}

/// A provider's live keys; survives reloads that keep the provider's name
/// and key source.
pub struct KeyStore {
    pub source: KeySource,
    keys: ArcSwapOption<KeySet>,
    /// Digest of the JWKS file as loaded, and one seen but not yet settled.
    watch: Mutex<([u8; 32], Option<[u8; 32]>)>,
    pub provider: Arc<str>,
    /// `jwks_url` fetching: when the last attempt started, whether one is
    /// running, and whether a token named an unknown `kid`.
    last_fetch: Mutex<Option<std::time::Instant>>,
    fetching: std::sync::atomic::AtomicBool,
    kid_miss: std::sync::atomic::AtomicBool,
}

/// After a token names an unknown `kid`, the JWKS is fetched again at once,
/// but not more often than this: however many unknown kids clients send
/// (an attacker can send any), the identity provider sees at most one
/// extra request per second from each gateway.
pub const KID_MISS_REFETCH: std::time::Duration = std::time::Duration::from_secs(1);
/// While a provider has no keys, fetches are retried this often.
pub const EMPTY_RETRY: std::time::Duration = std::time::Duration::from_secs(2);
/// A JWKS response larger than this is refused.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

impl KeyStore {
    pub fn new(provider: &str, source: KeySource, initial: Option<Arc<KeySet>>) -> KeyStore {
        let digest = source.digest().unwrap_or_default();
        KeyStore {
            source,
            keys: ArcSwapOption::new(initial),
            watch: Mutex::new((digest, None)),
            provider: Arc::from(provider),
            last_fetch: Mutex::new(None),
            fetching: std::sync::atomic::AtomicBool::new(false),
            kid_miss: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// The keys to verify with now: `None` while there are none, or (with
    /// `jwks_url`) when the last good ones are older than `max_key_age`.
    pub fn usable(&self) -> Option<Arc<KeySet>> {
        let keys = self.keys.load_full()?;
        if self.source.jwks_url.is_some() {
            let age = unix_now().saturating_sub(keys.loaded_at_unix);
            if u64::try_from(age).unwrap_or(0) > self.source.max_key_age.as_secs() {
                return None;
            }
        }
        Some(keys)
    }

    /// A token named a `kid` these keys lack: fetch again soon.
    pub fn kid_missed(&self) {
        if self.source.jwks_url.is_some() {
            self.kid_miss.store(true, Ordering::Relaxed);
            wake_fetcher();
        }
    }

    /// Claims the next fetch if one is due now (at most one runs at a time).
    pub fn begin_fetch(&self, now: std::time::Instant) -> bool {
        self.fetch_due(now)
            && self
                .fetching
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether a `jwks_url` fetch is due now.
    fn fetch_due(&self, now: std::time::Instant) -> bool {
        if self.source.jwks_url.is_none() || self.fetching.load(Ordering::Relaxed) {
            return false;
        }
        let last = *crate::sync::lock(&self.last_fetch);
        let Some(last) = last else { return true };
        let since = now.saturating_duration_since(last);
        if self.keys.load().is_none() {
            return since >= EMPTY_RETRY;
        }
        (self.kid_miss.load(Ordering::Relaxed) && since >= KID_MISS_REFETCH)
            || since >= self.source.refresh
    }

    /// Fetches the JWKS from `jwks_url` and serves it if it is good; a
    /// failure keeps the last good keys. Call after [`KeyStore::begin_fetch`].
    pub async fn fetch(&self, client: &JwksClient) -> Result<usize, String> {
        let Some(url) = &self.source.jwks_url else {
            self.fetching.store(false, Ordering::Relaxed);
            return Ok(0);
        };
        *crate::sync::lock(&self.last_fetch) = Some(std::time::Instant::now());
        self.kid_miss.store(false, Ordering::Relaxed);
        let result = client.get(url).await.and_then(|body| {
            KeySet::from_jwks(&body, self.source.secret.as_deref())
                .map_err(|e| format!("{url}: {e}"))
        });
        self.fetching.store(false, Ordering::Relaxed);
        let (set, skipped) = result?;
        for s in skipped {
            tracing::warn!(provider = %self.provider, "{s}");
        }
        let n = set.keys.len();
        self.keys.store(Some(Arc::new(set)));
        Ok(n)
    }

    /// Serves `keys` from now on (a reload read the file again).
    pub fn replace(&self, keys: Arc<KeySet>) {
        if let Some(d) = self.source.digest() {
            *crate::sync::lock(&self.watch) = (d, None);
        }
        self.keys.store(Some(keys));
    }

    /// One look of the watcher: reloads the JWKS file when its content
    /// changed and held still for one more look. A broken file keeps the
    /// last good keys. Returns `Some(result)` when it tried.
    pub fn check_file(&self) -> Option<Result<usize, String>> {
        let digest = self.source.digest()?;
        {
            let mut w = crate::sync::lock(&self.watch);
            if digest == w.0 {
                w.1 = None;
                return None;
            }
            if w.1 != Some(digest) {
                w.1 = Some(digest);
                return None;
            }
            *w = (digest, None);
        }
        Some(match self.source.load_local() {
            Ok((set, skipped)) => {
                for s in skipped {
                    tracing::warn!(provider = %self.provider, "{s}");
                }
                let n = set.keys.len();
                self.keys.store(Some(Arc::new(set)));
                Ok(n)
            }
            Err(e) => Err(e),
        })
    }
}

/// Where `config` says provider keys come from.
pub fn source_for(config: &crate::config::JwtProviderConfig, base_dir: &Path) -> KeySource {
    KeySource {
        jwks_file: config.jwks_file.as_ref().map(|f| base_dir.join(f)),
        jwks_url: config.jwks_url.clone(),
        secret: config.secret.clone(),
        refresh: config.refresh.0,
        max_key_age: config.max_key_age.0,
        ready_needs_keys: config.ready_needs_keys,
    }
}

/// Loads every provider's keys for a config being loaded; errors and
/// warnings carry the config path (as in [`crate::tls::load_material`]).
pub fn load_all(
    config: &crate::config::Config,
    base_dir: &Path,
    report: &mut crate::tls::Report<'_>,
    warn: &mut crate::tls::Report<'_>,
) -> std::collections::HashMap<String, Arc<KeySet>> {
    let mut out = std::collections::HashMap::new();
    for (i, j) in config.jwt.iter().enumerate() {
        let at = format!("jwt[{i}].jwks_file");
        match source_for(j, base_dir).load() {
            Ok(Some((set, skipped))) => {
                for s in skipped {
                    warn(&at, false, format!("warning: {s}"));
                }
                out.insert(j.name.clone(), Arc::new(set));
            }
            // Fetched at run time; `check` does not need the network.
            Ok(None) => {}
            Err(e) => report(&at, false, e),
        }
    }
    out
}

/// Wakes the JWKS fetcher (a token named an unknown `kid`).
pub fn wake_fetcher() {
    fetcher_wakeup().notify_one();
}

pub fn fetcher_wakeup() -> &'static tokio::sync::Notify {
    static NOTIFY: std::sync::OnceLock<tokio::sync::Notify> = std::sync::OnceLock::new();
    NOTIFY.get_or_init(tokio::sync::Notify::new)
}

/// How long one JWKS fetch may take, connect to last byte.
pub const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// An HTTP(S) client for JWKS documents (system roots for HTTPS).
pub struct JwksClient {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Empty<bytes::Bytes>,
    >,
}

impl JwksClient {
    pub fn new() -> JwksClient {
        let roots =
            crate::tls::files::system_roots().unwrap_or_else(|_| rustls::RootCertStore::empty());
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        JwksClient {
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build(connector),
        }
    }

    /// GETs `url`: a 2xx answer's body, at most [`MAX_JWKS_BYTES`], within
    /// [`FETCH_TIMEOUT`].
    pub async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        use http_body_util::BodyExt;
        let req = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(http_body_util::Empty::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let fetch = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("{url}: answered {}", resp.status()));
            }
            let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("{url}: {e} (at most {MAX_JWKS_BYTES} bytes)"))?;
            Ok(body.to_bytes().to_vec())
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("{url}: no complete answer within {FETCH_TIMEOUT:?}"))?
    }
}

impl Default for JwksClient {
    fn default() -> Self {
        JwksClient::new()
    }
}
