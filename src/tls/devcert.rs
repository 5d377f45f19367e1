//! A development CA and the certificates it signs, made with rcgen: used by
//! `portcullis demo` (files under `certs/`) and by the tests. Never for
//! production: the CA key sits next to the certificates it signs.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::files::{civil_date, unix_now};

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct PemPair {
    pub cert: String,
    pub key: String,
}

/// A CA that can sign server and client certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: PemPair,
}

/// From now (minus a day, for clock skew) to `days` from now.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = unix_now();
    let date = |unix: i64| {
        let (y, m, d) = civil_date(unix);
        rcgen::date_time_ymd(i32::try_from(y).unwrap_or(2000), m, d)
    };
    params.not_before = date(now - 86_400);
    params.not_after = date(now + days * 86_400);
}

impl DevCa {
    /// A new self-signed CA (ECDSA P-256), valid for ten years.
    pub fn new(name: &str) -> Result<DevCa, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, 3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pem = PemPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(DevCa {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// A server certificate for `names` (DNS names, `*.` wildcards, or IP
    /// addresses), valid for `days`, with a fresh key of `alg`.
    pub fn server_cert(
        &self,
        names: &[&str],
        days: i64,
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> Result<PemPair, rcgen::Error> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, days);
        self.sign(params, alg)
    }

    /// A client certificate (mTLS) whose subject is `CN=<common_name>`.
    pub fn client_cert(&self, common_name: &str, days: i64) -> Result<PemPair, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, days);
        self.sign(params, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// A server certificate for `names` valid from `not_before_days` to
    /// `not_after_days` from today (negative: in the past), for tests of
    /// the validity warnings.
    pub fn sign_with_validity(
        &self,
        names: &[&str],
        not_before_days: i64,
        not_after_days: i64,
    ) -> Result<PemPair, rcgen::Error> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        let now = unix_now();
        let date = |unix: i64| {
            let (y, m, d) = civil_date(unix);
            rcgen::date_time_ymd(i32::try_from(y).unwrap_or(2000), m, d)
        };
        params.not_before = date(now + not_before_days * 86_400);
        params.not_after = date(now + not_after_days * 86_400);
        self.sign(params, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    fn sign(
        &self,
        params: CertificateParams,
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> Result<PemPair, rcgen::Error> {
        let key = if std::ptr::eq(alg, &rcgen::PKCS_RSA_SHA256) {
            KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048)?
        } else {
            KeyPair::generate_for(alg)?
        };
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(PemPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}
