//! TLS: HTTPS listeners (certificates chosen by SNI, ALPN `h2` and
//! `http/1.1`, TLS 1.2/1.3, mTLS, session resumption, certificate reload)
//! and HTTPS to upstreams. rustls with the aws-lc-rs provider does the
//! cryptography; this module decides what it is given.
//!
//! - [`files`]: reading certificates, keys and CA bundles (shared by
//!   `check`, start-up and the watcher).
//! - [`sni`]: which certificate a handshake gets.
//! - [`listener`]: one listener's live TLS config, the handshake with its
//!   timeout and failure reasons, and the certificate watcher.
//!
//! Config loading calls [`load_material`] after validation, so `portcullis
//! check` reports unreadable or mismatched files with their line, exactly as
//! a start or reload would.

pub mod devcert;
pub mod files;
pub mod listener;
pub mod sni;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, StoresServerSessions, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{ClientAuth, Config, ListenerTlsConfig, TlsVersion, UpstreamTlsConfig};
use files::ServedCert;

/// The process's one crypto provider: aws-lc-rs with rustls's default
/// (safe) cipher suites and key exchange groups.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Everything TLS that a config's files hold, read and checked.
#[derive(Default, Clone)]
pub struct TlsMaterial {
    /// By listener name.
    pub listeners: HashMap<String, Arc<ListenerMaterial>>,
    /// By upstream name.
    pub upstreams: HashMap<String, Arc<UpstreamTls>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("listeners", &self.listeners.keys().collect::<Vec<_>>())
            .field("upstreams", &self.upstreams.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One listener's certificates and client CA, as read from disk.
pub struct ListenerMaterial {
    pub certs: Vec<ServedCert>,
    pub client_roots: Option<Arc<RootCertStore>>,
    /// Digest of every file read, for the watcher to notice changes.
    pub digest: [u8; 32],
}

/// How to reach one upstream over TLS.
pub struct UpstreamTls {
    pub client: Arc<ClientConfig>,
    /// SNI and the name verified; the endpoint's host when `None`.
    pub sni: Option<rustls::pki_types::ServerName<'static>>,
    /// Equal for equal settings and CA contents (a pool is reused only then).
    pub identity: String,
}

/// A problem with one file-backed key, relative to its `tls` block.
pub struct Problem {
    /// e.g. `certificates[0].key`.
    pub path: String,
    pub message: String,
}

/// What loading one listener's files found.
pub struct ListenerLoad {
    pub material: Option<ListenerMaterial>,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

/// The files a listener's TLS depends on, resolved against `base_dir`.
pub fn watched_files(tls: &ListenerTlsConfig, base_dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = tls
        .certificates
        .iter()
        .flat_map(|c| [base_dir.join(&c.cert), base_dir.join(&c.key)])
        .collect();
    if let Some(ca) = &tls.client_ca {
        paths.push(base_dir.join(ca));
    }
    paths
}

/// Reads and checks one listener's certificates, keys and client CA.
pub fn load_listener(tls: &ListenerTlsConfig, base_dir: &Path) -> ListenerLoad {
    let paths = watched_files(tls, base_dir);
    // Digest first: if a file changes while we read, the watcher sees a
    // difference on its next look and loads again.
    let digest = files::digest_files(paths.iter().map(PathBuf::as_path));
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut certs = Vec::new();
    for (i, pair) in tls.certificates.iter().enumerate() {
        match files::load_pair(&base_dir.join(&pair.cert), &base_dir.join(&pair.key)) {
            Ok(served) => {
                if let Some(w) = served.info.validity_warning() {
                    warnings.push(Problem {
                        path: format!("certificates[{i}].cert"),
                        message: format!("warning: {w}"),
                    });
                }
                certs.push(served);
            }
            Err((part, message)) => errors.push(Problem {
                path: format!(
                    "certificates[{i}].{}",
                    match part {
                        files::PairPart::Cert => "cert",
                        files::PairPart::Key => "key",
                    }
                ),
                message,
            }),
        }
    }
    let client_roots = match &tls.client_ca {
        Some(ca) => match files::load_roots(&base_dir.join(ca)) {
            Ok(roots) => Some(Arc::new(roots)),
            Err(message) => {
                errors.push(Problem {
                    path: "client_ca".into(),
                    message,
                });
                None
            }
        },
        None => None,
    };
    let material = errors.is_empty().then_some(ListenerMaterial {
        certs,
        client_roots,
        digest,
    });
    ListenerLoad {
        material,
        errors,
        warnings,
    }
}

/// Builds the client config for HTTPS to one upstream.
pub fn load_upstream(tls: &UpstreamTlsConfig, base_dir: &Path) -> Result<UpstreamTls, Problem> {
    let (roots, identity) = match &tls.ca {
        Some(ca) => {
            let path = base_dir.join(ca);
            let roots = files::load_roots(&path).map_err(|message| Problem {
                path: "ca".into(),
                message,
            })?;
            let digest = files::digest_files([path.as_path()]);
            (roots, format!("ca:{}:{}", path.display(), hex(&digest)))
        }
        None => (
            files::system_roots().map_err(|message| Problem {
                path: String::new(),
                message,
            })?,
            "system".to_string(),
        ),
    };
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Problem {
            path: String::new(),
            message: format!("TLS set-up failed: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let sni = match &tls.sni {
        Some(name) => Some(
            rustls::pki_types::ServerName::try_from(name.clone()).map_err(|_| Problem {
                path: "sni".into(),
                message: format!("`{name}` is not a valid DNS name or IP address"),
            })?,
        ),
        None => None,
    };
    Ok(UpstreamTls {
        client: Arc::new(client),
        sni,
        identity: format!("{identity};sni={:?}", tls.sni),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `report(path, at_key, message)` as in [`crate::config::validate`].
pub type Report<'a> = dyn FnMut(&str, bool, String) + 'a;

/// Reads every file a valid config's TLS settings name. Errors go to
/// `report`, warnings (expired certificates) to `warn`; both carry the
/// config path of the key at fault.
pub fn load_material(
    config: &Config,
    base_dir: &Path,
    report: &mut Report<'_>,
    warn: &mut Report<'_>,
) -> TlsMaterial {
    let mut material = TlsMaterial::default();
    for (i, l) in config.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let at = format!("listeners[{i}].tls");
        let load = load_listener(tls, base_dir);
        for p in load.errors {
            report(&format!("{at}.{}", p.path), false, p.message);
        }
        for p in load.warnings {
            warn(&format!("{at}.{}", p.path), false, p.message);
        }
        if let Some(m) = load.material {
            material.listeners.insert(l.name.clone(), Arc::new(m));
        }
    }
    for (i, u) in config.upstreams.iter().enumerate() {
        let Some(tls) = &u.tls else { continue };
        let at = format!("upstreams[{i}].tls");
        match load_upstream(tls, base_dir) {
            Ok(t) => {
                material.upstreams.insert(u.name.clone(), Arc::new(t));
            }
            Err(p) if p.path.is_empty() => report(&at, true, p.message),
            Err(p) => report(&format!("{at}.{}", p.path), false, p.message),
        }
    }
    material
}

/// The rustls server config for a listener. `ticketer` and `sessions`
/// outlive certificate reloads so resumption keeps working across them.
pub fn server_config(
    tls: &ListenerTlsConfig,
    material: &ListenerMaterial,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
) -> Result<ServerConfig, String> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS set-up failed: {e}"))?;
    let builder = match &material.client_roots {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            let verifier = match tls.client_auth.unwrap_or(ClientAuth::Required) {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("cannot use client_ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(sni::SniResolver::new(&material.certs)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = ticketer;
    config.session_storage = sessions;
    Ok(config)
}
