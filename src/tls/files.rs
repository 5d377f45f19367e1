//! Reading TLS material from disk: certificate chains with their keys, CA
//! bundles, and what a certificate says about itself (SANs, subject,
//! validity). The same functions serve `portcullis check`, start-up, and
//! the certificate watcher, so all three judge files alike.
//!
//! Errors are sentences naming the file, ready for `PATH:LINE:COL: ...`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

use super::provider;

/// A certificate chain and key ready to serve, with what routing by SNI and
/// `/status` need to know of it.
#[derive(Clone)]
pub struct ServedCert {
    pub certified: Arc<CertifiedKey>,
    /// The certificate file, as resolved (for logs and `/status`).
    pub cert_path: PathBuf,
    pub info: CertInfo,
}

impl std::fmt::Debug for ServedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedCert")
            .field("cert_path", &self.cert_path)
            .field("info", &self.info)
            .finish()
    }
}

/// What the leaf certificate says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS SANs, lowercase; wildcards keep their `*.`.
    pub dns_names: Vec<String>,
    pub ip_addrs: Vec<IpAddr>,
    /// RFC 4514-style, e.g. `CN=api.example.com, O=Example`.
    pub subject: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

impl CertInfo {
    /// Parses a DER certificate; `None` if it is not X.509.
    pub fn parse(der: &[u8]) -> Option<CertInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut dns_names = Vec::new();
        let mut ip_addrs = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push(d.to_ascii_lowercase()),
                    GeneralName::IPAddress(bytes) => {
                        if let Ok(b) = <[u8; 4]>::try_from(*bytes) {
                            ip_addrs.push(IpAddr::from(b));
                        } else if let Ok(b) = <[u8; 16]>::try_from(*bytes) {
                            ip_addrs.push(IpAddr::from(b));
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(CertInfo {
            dns_names,
            ip_addrs,
            subject: cert.subject().to_string(),
            not_before_unix: cert.validity().not_before.timestamp(),
            not_after_unix: cert.validity().not_after.timestamp(),
        })
    }

    /// A warning if the certificate is outside its validity period now.
    pub fn validity_warning(&self) -> Option<String> {
        let now = unix_now();
        if now > self.not_after_unix {
            Some(format!(
                "certificate expired on {} (clients will refuse it)",
                format_unix_date(self.not_after_unix)
            ))
        } else if now < self.not_before_unix {
            Some(format!(
                "certificate is not valid before {} (clients will refuse it until then)",
                format_unix_date(self.not_before_unix)
            ))
        } else {
            None
        }
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub fn format_unix_date(unix: i64) -> String {
    let (y, m, d) = civil_date(unix);
    format!("{y:04}-{m:02}-{d:02}")
}

/// (year, month, day) in UTC of a Unix time.
pub fn civil_date(unix: i64) -> (i64, u8, u8) {
    // Civil-from-days (Howard Hinnant's algorithm), to avoid a date crate.
    let days = unix.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // Both are in range by construction (1..=12, 1..=31).
    (y, m as u8, d as u8)
}

/// Which half of a certificate/key pair a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairPart {
    Cert,
    Key,
}

/// Reads a file the config names; `what` says what it should hold.
fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        let served = what != "CA bundle";
        let hint = if served && e.kind() == std::io::ErrorKind::NotFound {
            " (`portcullis demo` creates dev certificates; certs/README.md says how to bring real ones)"
        } else {
            ""
        };
        format!("cannot read {what} `{}`: {e}{hint}", path.display())
    })
}

/// Loads a certificate chain and its private key, checking they belong
/// together.
pub fn load_pair(cert_path: &Path, key_path: &Path) -> Result<ServedCert, (PairPart, String)> {
    let cert_pem = read(cert_path, "certificate").map_err(|e| (PairPart::Cert, e))?;
    let key_pem = read(key_path, "private key").map_err(|e| (PairPart::Key, e))?;
    let chain = parse_certs(&cert_pem, cert_path).map_err(|e| (PairPart::Cert, e))?;
    let info = chain
        .first()
        .and_then(|leaf| CertInfo::parse(leaf))
        .ok_or_else(|| {
            (
                PairPart::Cert,
                format!("`{}` is not a valid X.509 certificate", cert_path.display()),
            )
        })?;
    let key = parse_key(&key_pem, key_path).map_err(|e| (PairPart::Key, e))?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        let msg = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "the private key in `{}` does not match the certificate in `{}`",
                key_path.display(),
                cert_path.display()
            ),
            other => format!(
                "cannot use the private key in `{}`: {other}",
                key_path.display()
            ),
        };
        (PairPart::Key, msg)
    })?;
    Ok(ServedCert {
        certified: Arc::new(certified),
        cert_path: cert_path.to_path_buf(),
        info,
    })
}

fn parse_certs(pem_bytes: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<_, pem::Error>>()
        .map_err(|e| format!("`{}` is not valid PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "`{}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(chain)
}

fn parse_key(pem_bytes: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            if pem_bytes.windows(9).any(|w| w == b"ENCRYPTED") {
                format!(
                    "`{}` holds an encrypted private key; Portcullis needs it unencrypted \
                     (e.g. `openssl pkey -in KEY -out KEY.plain`), readable only by its user",
                    path.display()
                )
            } else {
                format!(
                    "`{}` holds no PEM private key (PKCS#8, RSA or EC)",
                    path.display()
                )
            }
        }
        other => format!(
            "`{}` is not a valid PEM private key: {other}",
            path.display()
        ),
    })
}

/// Loads a CA bundle (one or more PEM certificates).
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let pem_bytes = read(path, "CA bundle")?;
    let certs = parse_certs(&pem_bytes, path)?;
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "`{}` holds no usable CA certificate ({ignored} could not be parsed)",
            path.display()
        ));
    }
    Ok(roots)
}

/// The system's trusted roots (for upstreams without `tls.ca`).
pub fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(format!(
            "no system CA certificates found{why}; install them (ca-certificates) or set `ca`"
        ));
    }
    Ok(roots)
}

/// SHA-256 over the contents of `paths` (missing files hash as empty, so a
/// file appearing or vanishing is a change too).
pub fn digest_files<'a>(paths: impl IntoIterator<Item = &'a Path>) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in paths {
        let bytes = std::fs::read(p).unwrap_or_default();
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_dates_format_as_utc_calendar_days() {
        assert_eq!(format_unix_date(0), "1970-01-01");
        assert_eq!(format_unix_date(951_782_400), "2000-02-29");
        assert_eq!(format_unix_date(1_798_675_200), "2026-12-31");
        assert_eq!(format_unix_date(-86_400), "1969-12-31");
    }
}
