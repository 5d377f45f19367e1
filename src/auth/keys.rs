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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySource {
    pub jwks_file: Option<PathBuf>,
    pub secret: Option<String>,
}

impl KeySource {
    /// Loads the keys now (the same code `check`, start, reload and the
    /// watcher use).
    pub fn load(&self) -> Result<(KeySet, Vec<String>), String> {
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
}

impl KeyStore {
    pub fn new(provider: &str, source: KeySource, initial: Option<Arc<KeySet>>) -> KeyStore {
        let digest = source.digest().unwrap_or_default();
        KeyStore {
            source,
            keys: ArcSwapOption::new(initial),
            watch: Mutex::new((digest, None)),
            provider: Arc::from(provider),
        }
    }

    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// Serves `keys` from now on (a reload read the file again).
    pub fn replace(&self, keys: Arc<KeySet>) {
        if let Some(d) = self.source.digest() {
            *self.watch.lock().unwrap_or_else(|e| e.into_inner()) = (d, None);
        }
        self.keys.store(Some(keys));
    }

    /// One look of the watcher: reloads the JWKS file when its content
    /// changed and held still for one more look. A broken file keeps the
    /// last good keys. Returns `Some(result)` when it tried.
    pub fn check_file(&self) -> Option<Result<usize, String>> {
        let digest = self.source.digest()?;
        {
            let mut w = self.watch.lock().unwrap_or_else(|e| e.into_inner());
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
        Some(match self.source.load() {
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
        secret: config.secret.clone(),
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
            Ok((set, skipped)) => {
                for s in skipped {
                    warn(&at, false, format!("warning: {s}"));
                }
                out.insert(j.name.clone(), Arc::new(set));
            }
            Err(e) => report(&at, false, e),
        }
    }
    out
}
