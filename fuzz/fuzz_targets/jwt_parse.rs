//! The JWT path (src/auth): `JwtProvider::authenticate` on a request with a
//! fuzzed token, everything a token goes through before (and, in mode `S`,
//! after) its signature check. Must never panic.
//!
//! The only public entry is `authenticate` on a request, so two providers
//! are built once from config text with `config::load_str`, as the gateway
//! builds them: `hmac` (HS256/HS384 secret; cookie and query tokens too) and
//! `public` (ES256/RS256/PS256 from a fixed JWKS, with issuer and audience).
//!
//! Input, by its first byte:
//! - `S`: `HEADER-JSON \n CLAIMS-JSON`: the target base64url-encodes both and
//!   signs them with the `hmac` provider's secret, so the fuzzer reaches the
//!   claim checks, scopes, forwarded claims and the verified-token cache
//!   (each token is presented twice). Checked: an accepted token's `alg` is
//!   one the provider lists, it has a numeric `exp` (a NumericDate may have
//!   a fraction), its `iat` is not in the future (beyond the leeway), it has
//!   the route's scope, `sub` is forwarded, and the cached answer agrees
//!   with the first.
//! - `J`: the rest is a JWKS document for `KeySet::from_jwks`.
//! - anything else: lines `Authorization value \n Cookie value \n request
//!   target (query) \n p` (`p`: the `public` provider, else `hmac`).

#![no_main]

use std::sync::{Arc, OnceLock};

use base64::Engine;
use http::{HeaderValue, Request};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use portcullis::auth::keys::{source_for, KeySet, KeyStore};
use portcullis::auth::JwtProvider;
use portcullis::config;
use portcullis::telemetry::Metrics;
use serde_json::Value;

const SECRET: &str = "fuzz-secret-0123456789abcdef-0123456789";

const CONFIG: &str = r#"
listeners:
  - { name: http, bind: "127.0.0.1:0" }
jwt:
  - name: hmac
    algorithms: [HS256, HS384]
    secret: fuzz-secret-0123456789abcdef-0123456789
    leeway: 30s
    forward_claims: { sub: x-user-id, scope: x-user-scope, role: x-user-role }
    token_cookie: session
    token_query: access_token
  - name: public
    algorithms: [ES256, RS256, PS256]
    jwks_url: https://idp.example/jwks.json
    issuer: https://idp.example
    audiences: [api, other]
    leeway: 0s
"#;

/// Public keys only: nothing here can sign.
const JWKS: &str = r#"{"keys": [
  {"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256", "use": "sig",
   "x": "g8Qk-uV6wk2LZIEAF_QeQ1ujqxR19lwwVOIObM8fZeo",
   "y": "D70vLEgw_GxMUj0q1EaV6aHhreaFQ5mOSrSBDPR9CRE"},
  {"kty": "RSA", "kid": "rsa-1", "e": "AQAB",
   "n": "q5EpDDW4cyCtfbry6E2owPtoif1gCerS4nEOwPi1Xot-SKuEJDoc_Hs1pTw4OGq8m4BTuIb0Nq7CE33zA2y07hFS_CVhihkVbTFLJT7pxMlybC8-D0BDCv9w8d4aCTgsierxeoHYYhaWOyplE9CJgxl3SMcLyuq92H-tZf27ATzcq6Sr-WhAu6UPIQp_CGj2CFizNe0-_hs3AJAvEFkQTeiNkDJ8tIbnOgyoTNEwq46MSpgBGEj9tqWVSNGFhS4oxV1U706qew7ZbuKk8JZAitdh9dFd-iIMtjthWeYzWvJycG1WYguZxrxs36pmmYf8cIb9o9rEAv_ZrElQ46_apQ"}
]}"#;

struct Providers {
    hmac: JwtProvider,
    public: JwtProvider,
    allowed_hmac: Vec<&'static str>,
    leeway_hmac: u64,
}

fn providers() -> &'static Providers {
    static P: OnceLock<Providers> = OnceLock::new();
    P.get_or_init(|| {
        let base = std::path::PathBuf::from(".");
        let loaded = config::load_str(CONFIG, "jwt_parse.yaml", base.clone(), &|_| None)
            .unwrap_or_else(|e| panic!("the fuzz config does not load: {e}"));
        let metrics = Metrics::new();
        let build = |name: &str, keys: Arc<KeySet>| {
            let cfg = loaded.config.jwt.iter().find(|j| j.name == name).unwrap();
            let store = KeyStore::new(name, source_for(cfg, &base), Some(keys));
            JwtProvider::new(
                cfg,
                Arc::new(store),
                vec!["sub".into(), "tenant".into()],
                &metrics,
            )
        };
        let hmac_keys = loaded.jwt_keys.get("hmac").cloned().expect("hmac keys");
        let (public_keys, skipped) = KeySet::from_jwks(JWKS.as_bytes(), None).expect("fuzz JWKS");
        assert!(skipped.is_empty(), "{skipped:?}");
        Providers {
            hmac: build("hmac", hmac_keys),
            public: build("public", Arc::new(public_keys)),
            allowed_hmac: vec!["HS256", "HS384"],
            leeway_hmac: 30,
        }
    })
}

fn scopes() -> (&'static [String], &'static Arc<str>) {
    static S: OnceLock<(Vec<String>, Arc<str>)> = OnceLock::new();
    let s = S.get_or_init(|| (vec!["read".to_string()], Arc::from("read")));
    (&s.0, &s.1)
}

fn request(authorization: Option<&[u8]>, cookie: Option<&[u8]>, target: &[u8]) -> Request<()> {
    let uri = http::Uri::try_from(target).unwrap_or_else(|_| http::Uri::from_static("/"));
    let mut req = Request::builder().uri(uri).body(()).unwrap();
    if let Some(v) = authorization.and_then(|a| HeaderValue::from_bytes(a).ok()) {
        req.headers_mut().insert(http::header::AUTHORIZATION, v);
    }
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_bytes(c).ok()) {
        req.headers_mut().insert(http::header::COOKIE, v);
    }
    req
}

/// `FUZZ_DEBUG=1`: say what each input got (for writing seeds).
fn debug() -> bool {
    static D: OnceLock<bool> = OnceLock::new();
    *D.get_or_init(|| std::env::var_os("FUZZ_DEBUG").is_some())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn signed(data: &[u8]) {
    let p = providers();
    p.hmac.clear_cache();
    let mut parts = data.splitn(2, |b| *b == b'\n');
    let header = parts.next().unwrap_or_default();
    let claims = parts.next().unwrap_or_default();
    let header_json: Option<Value> = serde_json::from_slice(header).ok();
    let claims_json: Option<Value> = serde_json::from_slice(claims).ok();
    let alg_named = header_json
        .as_ref()
        .and_then(|h| h.get("alg"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let alg = match alg_named.as_deref() {
        Some("HS384") => Algorithm::HS384,
        Some("HS512") => Algorithm::HS512,
        _ => Algorithm::HS256,
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let Ok(signature) = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        alg,
    ) else {
        return;
    };
    let token = format!("Bearer {message}.{signature}");
    let (scopes, scope_text) = scopes();

    let mut first_req = request(Some(token.as_bytes()), None, b"/");
    let first = p.hmac.authenticate(&mut first_req, scopes, scope_text);
    let mut second_req = request(Some(token.as_bytes()), None, b"/");
    let second = p.hmac.authenticate(&mut second_req, scopes, scope_text);
    if debug() {
        eprintln!(
            "signed {token}: {:?} / {:?}",
            first.as_ref().err(),
            second.as_ref().err()
        );
    }

    if let Ok(verified) = &first {
        let _ = verified.claim("sub");
        let alg = alg_named.as_deref().unwrap_or("");
        assert!(
            p.allowed_hmac.contains(&alg),
            "accepted a token whose alg is {alg:?}: {}",
            String::from_utf8_lossy(header)
        );
        let claims = claims_json
            .as_ref()
            .expect("accepted claims that are not JSON");
        // NumericDate (RFC 7519 §2): any JSON number, fractions included.
        let exp = claims.get("exp").and_then(Value::as_f64);
        assert!(
            exp.is_some(),
            "accepted a token without a numeric exp: {claims}"
        );
        let leeway = p.leeway_hmac as f64;
        if let Some(iat) = claims.get("iat").and_then(Value::as_f64) {
            assert!(
                iat <= now() as f64 + leeway + 2.0,
                "accepted a token issued in the future (iat {iat}): {claims}"
            );
        }
        let has_scope = ["scope", "scp"].iter().any(|c| match claims.get(*c) {
            Some(Value::String(s)) => s.split_whitespace().any(|t| t == "read"),
            Some(Value::Array(a)) => a.iter().any(|t| t.as_str() == Some("read")),
            _ => false,
        });
        assert!(
            has_scope,
            "accepted a token without the route's scope: {claims}"
        );
        if let Some(Value::String(sub)) = claims.get("sub") {
            if HeaderValue::from_str(sub).is_ok() {
                assert_eq!(
                    first_req.headers().get("x-user-id").map(|v| v.as_bytes()),
                    Some(sub.as_bytes()),
                    "sub not forwarded"
                );
            }
        }
        // The cached answer agrees, unless the token expired in between.
        let expiring = exp.is_some_and(|e| e + leeway <= now() as f64 + 2.0);
        assert!(
            second.is_ok() || expiring,
            "verified, then refused from the cache: {:?}",
            second.err()
        );
    } else if second.is_ok() {
        panic!("refused ({:?}), then accepted", first.err());
    }
}

fn raw(data: &[u8]) {
    let p = providers();
    p.hmac.clear_cache();
    p.public.clear_cache();
    let mut lines = data.split(|b| *b == b'\n');
    let authorization = lines.next();
    let cookie = lines.next();
    let target = lines.next().unwrap_or(b"/");
    let provider = if lines.next() == Some(b"p") {
        &p.public
    } else {
        &p.hmac
    };
    let (scopes, scope_text) = scopes();
    let mut req = request(authorization, cookie, target);
    let result = provider.authenticate(&mut req, scopes, scope_text);
    if debug() {
        eprintln!("raw ({}): {:?}", provider.name, result.as_ref().err());
    }
    // Nothing unsigned gets in (these providers' keys cannot be forged here).
    assert!(result.is_err(), "accepted an unsigned token");
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((b'S', rest)) => signed(rest),
        Some((b'J', rest)) => {
            if let Ok((set, _skipped)) = KeySet::from_jwks(rest, None) {
                assert!(!set.keys.is_empty(), "a JWKS without keys was accepted");
            }
        }
        Some((_, rest)) => raw(rest),
        None => {}
    }
});
