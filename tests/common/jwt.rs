//! An independent JWT signer for the tests: keys from rcgen, signatures by
//! aws-lc-rs directly, encoding by hand, so the gateway's verifier
//! (jsonwebtoken) is checked against something that is not itself.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::{json, Value};

pub enum Key {
    Rsa(RsaKeyPair),
    Ec256(EcdsaKeyPair),
    Ec384(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Hmac(Vec<u8>),
}

pub struct Signer {
    pub kid: String,
    pub key: Key,
}

fn pkcs8(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
    let kp = if std::ptr::eq(alg, &rcgen::PKCS_RSA_SHA256) {
        rcgen::KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048).unwrap()
    } else {
        rcgen::KeyPair::generate_for(alg).unwrap()
    };
    kp.serialize_der()
}

impl Signer {
    pub fn rsa(kid: &str) -> Signer {
        let der = pkcs8(&rcgen::PKCS_RSA_SHA256);
        Signer {
            kid: kid.into(),
            key: Key::Rsa(RsaKeyPair::from_pkcs8(&der).unwrap()),
        }
    }
    pub fn ec256(kid: &str) -> Signer {
        let der = pkcs8(&rcgen::PKCS_ECDSA_P256_SHA256);
        Signer {
            kid: kid.into(),
            key: Key::Ec256(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                    .unwrap(),
            ),
        }
    }
    pub fn ec384(kid: &str) -> Signer {
        let der = pkcs8(&rcgen::PKCS_ECDSA_P384_SHA384);
        Signer {
            kid: kid.into(),
            key: Key::Ec384(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &der)
                    .unwrap(),
            ),
        }
    }
    pub fn ed25519(kid: &str) -> Signer {
        let der = pkcs8(&rcgen::PKCS_ED25519);
        Signer {
            kid: kid.into(),
            key: Key::Ed(Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).unwrap()),
        }
    }
    pub fn hmac(secret: &str) -> Signer {
        Signer {
            kid: String::new(),
            key: Key::Hmac(secret.as_bytes().to_vec()),
        }
    }

    /// The public key as a JWK (with `kid`; `alg` when given).
    pub fn jwk(&self, alg: Option<&str>) -> Value {
        let mut jwk = match &self.key {
            Key::Rsa(k) => {
                let p = k.public_key();
                json!({
                    "kty": "RSA",
                    "n": B64.encode(p.modulus().big_endian_without_leading_zero()),
                    "e": B64.encode(p.exponent().big_endian_without_leading_zero()),
                })
            }
            Key::Ec256(k) | Key::Ec384(k) => {
                let point = k.public_key().as_ref();
                let n = (point.len() - 1) / 2;
                json!({
                    "kty": "EC",
                    "crv": if n == 32 { "P-256" } else { "P-384" },
                    "x": B64.encode(&point[1..1 + n]),
                    "y": B64.encode(&point[1 + n..]),
                })
            }
            Key::Ed(k) => json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": B64.encode(k.public_key().as_ref()),
            }),
            Key::Hmac(_) => panic!("no JWK for a shared secret"),
        };
        jwk["kid"] = self.kid.clone().into();
        jwk["use"] = "sig".into();
        if let Some(a) = alg {
            jwk["alg"] = a.into();
        }
        jwk
    }

    /// A compact JWS with header `{alg, typ, kid}` (+ `extra_header`).
    pub fn sign(&self, alg: &str, claims: &Value) -> String {
        self.sign_with_header(alg, json!({}), claims)
    }

    pub fn sign_with_header(&self, alg: &str, extra_header: Value, claims: &Value) -> String {
        let mut header = json!({ "alg": alg, "typ": "JWT" });
        if !self.kid.is_empty() {
            header["kid"] = self.kid.clone().into();
        }
        if let Value::Object(extra) = extra_header {
            for (k, v) in extra {
                header[k] = v;
            }
        }
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self.signature(alg, input.as_bytes());
        format!("{input}.{}", B64.encode(sig))
    }

    fn signature(&self, alg: &str, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match (&self.key, alg) {
            (Key::Rsa(k), _) => {
                let padding: &dyn signature::RsaEncoding = match alg {
                    "RS256" => &signature::RSA_PKCS1_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "PS384" => &signature::RSA_PSS_SHA384,
                    "PS512" => &signature::RSA_PSS_SHA512,
                    other => panic!("RSA cannot sign {other}"),
                };
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(padding, &rng, msg, &mut sig).unwrap();
                sig
            }
            (Key::Ec256(k) | Key::Ec384(k), _) => k.sign(&rng, msg).unwrap().as_ref().to_vec(),
            (Key::Ed(k), _) => k.sign(msg).as_ref().to_vec(),
            (Key::Hmac(secret), _) => {
                let a = match alg {
                    "HS256" => aws_lc_rs::hmac::HMAC_SHA256,
                    "HS384" => aws_lc_rs::hmac::HMAC_SHA384,
                    "HS512" => aws_lc_rs::hmac::HMAC_SHA512,
                    other => panic!("HMAC cannot sign {other}"),
                };
                aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(a, secret), msg)
                    .as_ref()
                    .to_vec()
            }
        }
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims for the test provider (`iss: test-issuer`, `aud: api`), valid
/// for an hour.
pub fn claims(sub: &str, scope: &str) -> Value {
    json!({
        "iss": "test-issuer",
        "aud": "api",
        "sub": sub,
        "scope": scope,
        "iat": now(),
        "exp": now() + 3600,
    })
}
