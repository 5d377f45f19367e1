//! Certificate choice by SNI: an exact SAN wins, then a `*.` wildcard SAN
//! covering exactly one more label, then the listener's first certificate
//! (also for clients that send no SNI, or an IP address).

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::files::ServedCert;

#[derive(Debug)]
pub struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
    /// Lowercase DNS name → index into `certs`.
    exact: HashMap<String, usize>,
    /// Suffix after `*.` (lowercase) → index into `certs`.
    wildcard: HashMap<String, usize>,
}

impl SniResolver {
    /// `served` is in config order; where two certificates share a name,
    /// the first listed keeps it.
    pub fn new(served: &[ServedCert]) -> SniResolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, cert) in served.iter().enumerate() {
            for name in &cert.info.dns_names {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        SniResolver {
            certs: served.iter().map(|c| c.certified.clone()).collect(),
            exact,
            wildcard,
        }
    }

    /// The index of the certificate served for `server_name`.
    pub fn pick(&self, server_name: Option<&str>) -> usize {
        let Some(name) = server_name else {
            return 0;
        };
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(&i) = self.exact.get(name) {
            return i;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent).copied())
            .unwrap_or(0)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certs
            .get(self.pick(client_hello.server_name()))
            .cloned()
    }
}
