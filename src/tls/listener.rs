//! One HTTPS listener at run time: the live rustls config (swapped whole
//! when certificate files change), the handshake with its timeout and
//! counted failure reasons, and the watcher that reloads certificates.
//!
//! The watcher reads the listener's files once a second and compares their
//! digest: content, not mtimes, so in-place writes, rename-over saves and
//! Kubernetes' `..data` symlink swaps all count, and a touch does not. A
//! change is applied once the files have stayed the same for one more look,
//! so a cert and key written one after the other are not judged half-way.
//! A broken new set keeps the old one serving and is reported in the log,
//! `/status` and `portcullis_tls_certificate_reloads_total{result="error"}`.

use crate::sync::lock;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use metrics::{Counter, Gauge};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::files::{self, CertInfo};
use super::{load_listener, server_config, watched_files, ListenerMaterial};
use crate::config::ListenerTlsConfig;
use crate::telemetry::{
    Metrics, TLS_CERTIFICATE_NOT_AFTER, TLS_CERTIFICATE_RELOADS_TOTAL, TLS_HANDSHAKES_TOTAL,
    TLS_HANDSHAKE_ERRORS_TOTAL,
};

/// How often certificate files are looked at.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Resumption sessions kept per listener (TLS 1.2 session ids; TLS 1.3
/// and 1.2 tickets need no server memory).
const SESSION_CACHE_SIZE: usize = 4096;

/// Why a TLS handshake failed: the `reason` label of
/// `portcullis_tls_handshake_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not finished within `handshake_timeout`.
    Timeout,
    /// The first bytes are not a TLS record (plain HTTP on an HTTPS port).
    NotTls,
    /// The client closed or reset the connection mid-handshake (truncated
    /// ClientHello, a client that gave up, a scanner).
    Eof,
    /// Malformed or unexpected TLS messages.
    Protocol,
    /// No TLS version in common (e.g. a TLS 1.2 client under `min_version: "1.3"`).
    Version,
    /// No cipher suite, group or signature scheme in common, or no ALPN
    /// protocol we speak.
    Incompatible,
    /// Client certificate missing where required, or not valid for `client_ca`.
    ClientCert,
    /// The client sent a fatal alert (usually: it does not trust our certificate).
    Alert,
    /// Any other I/O error.
    Io,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 9] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::NotTls,
        HandshakeFailure::Eof,
        HandshakeFailure::Protocol,
        HandshakeFailure::Version,
        HandshakeFailure::Incompatible,
        HandshakeFailure::ClientCert,
        HandshakeFailure::Alert,
        HandshakeFailure::Io,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::Eof => "eof",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Version => "version",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::ClientCert => "client_cert",
            HandshakeFailure::Alert => "alert",
            HandshakeFailure::Io => "io",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn classify(e: &std::io::Error) -> HandshakeFailure {
        use rustls::{Error as E, PeerIncompatible as P};
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return match tls {
                E::NoCertificatesPresented | E::InvalidCertificate(_) => {
                    HandshakeFailure::ClientCert
                }
                E::PeerIncompatible(
                    P::SupportedVersionsExtensionRequired
                    | P::Tls12NotOffered
                    | P::Tls12NotOfferedOrEnabled
                    | P::ServerDoesNotSupportTls12Or13
                    | P::ServerTlsVersionIsDisabledByOurConfig,
                ) => HandshakeFailure::Version,
                E::PeerIncompatible(_) | E::NoApplicationProtocol => HandshakeFailure::Incompatible,
                E::AlertReceived(_) => HandshakeFailure::Alert,
                _ => HandshakeFailure::Protocol,
            };
        }
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe => HandshakeFailure::Eof,
            _ => HandshakeFailure::Io,
        }
    }
}

/// What a request learns of its TLS connection.
#[derive(Debug, Clone, Default)]
pub struct TlsConnInfo {
    /// The verified client certificate's subject (mTLS), as forwarded
    /// upstream in `x-client-cert-subject`.
    pub client_subject: Option<HeaderValue>,
}

/// The last certificate reload, for `/status`.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    pub ok: bool,
    pub error: Option<String>,
    pub at_unix: i64,
}

/// What `/status` shows of a TLS listener.
#[derive(Debug, Clone)]
pub struct TlsStatus {
    pub certificates: Vec<(PathBuf, CertInfo)>,
    pub min_version: &'static str,
    pub client_auth: &'static str,
    pub last_reload: Option<ReloadRecord>,
}

struct Watch {
    /// Digest of the files now served.
    applied: [u8; 32],
    /// A digest seen once and not yet applied (waiting for it to settle).
    pending: Option<[u8; 32]>,
    status: TlsStatus,
}

struct TlsMetrics {
    handshakes_tls12: Counter,
    handshakes_tls13: Counter,
    errors: Vec<Counter>,
    reloads_ok: Counter,
    reloads_error: Counter,
    metrics: Arc<Metrics>,
}

/// One listener's TLS at run time.
pub struct ListenerTls {
    pub listener: Arc<str>,
    settings: ListenerTlsConfig,
    base_dir: PathBuf,
    current: ArcSwap<ServerConfig>,
    pub handshake_timeout: Duration,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
    metrics: TlsMetrics,
    watch: Mutex<Watch>,
}

impl ListenerTls {
    /// `previous` is the listener's TLS before a reload: its ticket keys and
    /// session cache carry over, so clients resume across the reload.
    pub fn new(
        listener: &str,
        settings: &ListenerTlsConfig,
        base_dir: PathBuf,
        material: &ListenerMaterial,
        metrics: &Arc<Metrics>,
        previous: Option<&ListenerTls>,
    ) -> Result<Arc<ListenerTls>, String> {
        let (ticketer, sessions) = match previous {
            Some(p) => (p.ticketer.clone(), p.sessions.clone()),
            None => (
                rustls::crypto::aws_lc_rs::Ticketer::new()
                    .map_err(|e| format!("cannot create the TLS session ticketer: {e}"))?,
                ServerSessionMemoryCache::new(SESSION_CACHE_SIZE) as Arc<dyn StoresServerSessions>,
            ),
        };
        let config = server_config(settings, material, ticketer.clone(), sessions.clone())?;
        let label = [("listener", listener)];
        let m = TlsMetrics {
            handshakes_tls12: metrics.counter(
                TLS_HANDSHAKES_TOTAL,
                &[("listener", listener), ("version", "1.2")],
            ),
            handshakes_tls13: metrics.counter(
                TLS_HANDSHAKES_TOTAL,
                &[("listener", listener), ("version", "1.3")],
            ),
            errors: HandshakeFailure::ALL
                .iter()
                .map(|r| {
                    metrics.counter(
                        TLS_HANDSHAKE_ERRORS_TOTAL,
                        &[("listener", listener), ("reason", r.as_str())],
                    )
                })
                .collect(),
            reloads_ok: metrics
                .counter(TLS_CERTIFICATE_RELOADS_TOTAL, &[label[0], ("result", "ok")]),
            reloads_error: metrics.counter(
                TLS_CERTIFICATE_RELOADS_TOTAL,
                &[label[0], ("result", "error")],
            ),
            metrics: metrics.clone(),
        };
        let tls = Arc::new(ListenerTls {
            listener: Arc::from(listener),
            settings: settings.clone(),
            base_dir,
            current: ArcSwap::from_pointee(config),
            handshake_timeout: settings.handshake_timeout.0,
            ticketer,
            sessions,
            metrics: m,
            watch: Mutex::new(Watch {
                applied: material.digest,
                pending: None,
                status: TlsStatus {
                    certificates: Vec::new(),
                    min_version: match settings.min_version {
                        crate::config::TlsVersion::V1_2 => "1.2",
                        crate::config::TlsVersion::V1_3 => "1.3",
                    },
                    client_auth: match (&settings.client_ca, settings.client_auth) {
                        (None, _) => "none",
                        (Some(_), Some(crate::config::ClientAuth::Optional)) => "optional",
                        (Some(_), _) => "required",
                    },
                    last_reload: None,
                },
            }),
        });
        tls.record_served(material);
        Ok(tls)
    }

    /// Updates `/status` and the expiry gauges for what is now served.
    fn record_served(&self, material: &ListenerMaterial) {
        for c in &material.certs {
            let path = c.cert_path.display().to_string();
            let gauge: Gauge = self.metrics.metrics.gauge(
                TLS_CERTIFICATE_NOT_AFTER,
                &[("listener", &self.listener), ("certificate", &path)],
            );
            gauge.set(c.info.not_after_unix as f64);
        }
        lock(&self.watch).status.certificates = material
            .certs
            .iter()
            .map(|c| (c.cert_path.clone(), c.info.clone()))
            .collect();
    }

    /// Whether this is what a reload asks for: same listener name and
    /// settings, and the files still as served (then it is kept as is).
    pub fn same_as(
        &self,
        listener: &str,
        settings: &ListenerTlsConfig,
        base_dir: &std::path::Path,
        material: &ListenerMaterial,
    ) -> bool {
        *self.listener == *listener
            && self.settings == *settings
            && self.base_dir == base_dir
            && lock(&self.watch).applied == material.digest
    }

    pub fn status(&self) -> TlsStatus {
        lock(&self.watch).status.clone()
    }

    /// Runs the TLS handshake on a fresh connection, bounded by
    /// `handshake_timeout`. Failures are counted and logged at debug level
    /// (they are the client's doing and can be frequent); `None` then.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
    ) -> Option<(TlsStream<TcpStream>, TlsConnInfo)> {
        let config = self.current.load_full();
        let result = tokio::time::timeout(self.handshake_timeout, async move {
            refuse_plain_http(&stream).await?;
            TlsAcceptor::from(config)
                .accept(stream)
                .await
                .map_err(|e| HandshakeFailure::classify(&e))
        })
        .await
        .unwrap_or(Err(HandshakeFailure::Timeout));
        match result {
            Ok(tls) => {
                let conn = tls.get_ref().1;
                match conn.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_2) => {
                        self.metrics.handshakes_tls12.increment(1)
                    }
                    _ => self.metrics.handshakes_tls13.increment(1),
                }
                let client_subject = conn
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| CertInfo::parse(leaf))
                    .map(|info| subject_header(&info.subject));
                Some((tls, TlsConnInfo { client_subject }))
            }
            Err(reason) => {
                if let Some(c) = self.metrics.errors.get(reason.index()) {
                    c.increment(1);
                }
                tracing::debug!(listener = %self.listener, %peer, reason = reason.as_str(), "TLS handshake failed");
                None
            }
        }
    }

    /// One look of the watcher: reload if the files changed and settled.
    pub fn check_files(&self) {
        let paths = watched_files(&self.settings, &self.base_dir);
        let digest = files::digest_files(paths.iter().map(PathBuf::as_path));
        {
            let mut w = lock(&self.watch);
            if digest == w.applied {
                w.pending = None;
                return;
            }
            if w.pending != Some(digest) {
                // Changed since the last look: wait for it to settle.
                w.pending = Some(digest);
                return;
            }
        }
        self.reload();
    }

    /// Reads the files again and, if they are good, serves them to new
    /// handshakes; connections already open keep their session.
    pub fn reload(&self) {
        let load = load_listener(&self.settings, &self.base_dir);
        let outcome = match load.material {
            Some(material) => server_config(
                &self.settings,
                &material,
                self.ticketer.clone(),
                self.sessions.clone(),
            )
            .map(|config| (config, material)),
            None => Err(load
                .errors
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")),
        };
        let at_unix = files::unix_now();
        match outcome {
            Ok((config, material)) => {
                self.current.store(Arc::new(config));
                self.record_served(&material);
                let mut w = lock(&self.watch);
                w.applied = material.digest;
                w.pending = None;
                w.status.last_reload = Some(ReloadRecord {
                    ok: true,
                    error: None,
                    at_unix,
                });
                drop(w);
                self.metrics.reloads_ok.increment(1);
                for p in &load.warnings {
                    tracing::warn!(listener = %self.listener, "{}", p.message);
                }
                tracing::info!(listener = %self.listener, "TLS certificates reloaded; new handshakes use them");
            }
            Err(error) => {
                // Keep serving the old certificates; do not retry until the
                // files change again.
                let mut w = lock(&self.watch);
                if let Some(d) = w.pending.take() {
                    w.applied = d;
                }
                w.status.last_reload = Some(ReloadRecord {
                    ok: false,
                    error: Some(error.clone()),
                    at_unix,
                });
                drop(w);
                self.metrics.reloads_error.increment(1);
                tracing::error!(listener = %self.listener, %error, "TLS certificate reload failed; still serving the previous certificates");
            }
        }
    }
}

/// Looks at the first byte before rustls does: a TLS connection starts with
/// a handshake record (0x16). Plain HTTP gets a one-line 400 telling the
/// client to use `https://` (as NGINX does), then the connection closes.
async fn refuse_plain_http(stream: &TcpStream) -> Result<(), HandshakeFailure> {
    let mut first = [0u8; 1];
    let n = stream
        .peek(&mut first)
        .await
        .map_err(|e| HandshakeFailure::classify(&e))?;
    if n == 0 {
        return Err(HandshakeFailure::Eof);
    }
    if first[0] == 0x16 {
        return Ok(());
    }
    if first[0].is_ascii_uppercase() {
        const BODY: &str = concat!(
            r#"{"type":"urn:portcullis:problem:bad_request","title":"Bad Request","status":400,"#,
            r#""detail":"This port speaks HTTPS; use an https:// URL.","error":"bad_request"}"#
        );
        let reply = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
            BODY.len()
        );
        // `&TcpStream` cannot write through tokio's traits; try_write is
        // enough for one small reply on a fresh socket.
        let _ = stream.writable().await;
        let _ = stream.try_write(reply.as_bytes());
    }
    Err(HandshakeFailure::NotTls)
}

/// The subject as a header value; bytes a header cannot carry become `?`.
fn subject_header(subject: &str) -> HeaderValue {
    HeaderValue::from_str(subject).unwrap_or_else(|_| {
        let cleaned: String = subject
            .chars()
            .map(|c| {
                if c == ' ' || c.is_ascii_graphic() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        HeaderValue::from_str(&cleaned).unwrap_or(HeaderValue::from_static("?"))
    })
}

/// Runs [`ListenerTls::check_files`] for every HTTPS listener running
/// (the set changes with config reloads) once per [`WATCH_INTERVAL`]. File
/// reads happen on the blocking pool.
pub async fn watch(shared: Arc<crate::Shared>) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let listeners = shared.listeners.tls();
        if listeners.is_empty() {
            continue;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for l in &listeners {
                l.check_files();
            }
        })
        .await;
    }
}
