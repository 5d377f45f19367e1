//! Dev tokens: the signing key `portcullis demo` creates, the JWKS that
//! publishes its public half, and `portcullis token`, which signs a JWT the
//! demo provider accepts. For local use only.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Issuer and audience of the demo provider in the repo's `gateway.yaml`.
pub const DEMO_ISSUER: &str = "portcullis-demo";
pub const DEMO_AUDIENCE: &str = "demo";

/// A signing key, its algorithm and key id.
pub struct SigningKey {
    pub alg: Algorithm,
    pub kid: String,
    key: EncodingKey,
    /// The public key as a JWK.
    pub jwk: serde_json::Value,
}

impl SigningKey {
    /// Reads a PEM private key: ECDSA P-256 (ES256), P-384 (ES384) or
    /// Ed25519 (EdDSA). The key id is derived from the public key, so the
    /// JWKS and the tokens agree without configuration.
    pub fn from_pem(pem: &str) -> Result<SigningKey, String> {
        let kp =
            rcgen::KeyPair::from_pem(pem).map_err(|e| format!("not a usable private key: {e}"))?;
        let public = kp.public_key_raw();
        let kid = {
            let d = Sha256::digest(public);
            d.iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let alg_id = kp.algorithm();
        let (alg, key, jwk) = if alg_id == &rcgen::PKCS_ECDSA_P256_SHA256
            || alg_id == &rcgen::PKCS_ECDSA_P384_SHA384
        {
            let n = (public.len() - 1) / 2;
            let (alg, crv) = if n == 32 {
                (Algorithm::ES256, "P-256")
            } else {
                (Algorithm::ES384, "P-384")
            };
            let key = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
            let jwk = json!({
                "kty": "EC", "crv": crv,
                "x": B64.encode(&public[1..1 + n]), "y": B64.encode(&public[1 + n..]),
            });
            (alg, key, jwk)
        } else if alg_id == &rcgen::PKCS_ED25519 {
            let key = EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
            (
                Algorithm::EdDSA,
                key,
                json!({ "kty": "OKP", "crv": "Ed25519", "x": B64.encode(public) }),
            )
        } else {
            return Err("use an ECDSA P-256/P-384 or Ed25519 key".into());
        };
        let mut jwk = jwk;
        jwk["kid"] = kid.clone().into();
        jwk["use"] = "sig".into();
        jwk["alg"] = format!("{alg:?}").into();
        Ok(SigningKey { alg, kid, key, jwk })
    }

    /// A JWKS document holding this key's public half.
    pub fn jwks(&self) -> String {
        let doc = json!({ "keys": [self.jwk] });
        serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
    }

    /// Signs a token for `sub` with `scope` (space-separated), valid for
    /// `ttl_secs`, issued by `iss` for `aud`.
    pub fn mint(
        &self,
        sub: &str,
        scope: &str,
        ttl_secs: u64,
        iss: &str,
        aud: &str,
    ) -> Result<String, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut claims =
            json!({ "iss": iss, "aud": aud, "sub": sub, "iat": now, "exp": now + ttl_secs });
        if !scope.is_empty() {
            claims["scope"] = scope.into();
        }
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())
    }
}

/// A new dev signing key (ECDSA P-256) as PEM.
pub fn generate_dev_key() -> Result<String, String> {
    rcgen::KeyPair::generate()
        .map(|k| k.serialize_pem())
        .map_err(|e| e.to_string())
}
