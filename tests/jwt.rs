//! JWT authentication with tokens from an independent signer
//! (`common::jwt`): every algorithm, every rejection, scopes, forwarded
//! claims, key rotation through the JWKS file, and the verified-token cache.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::jwt::{claims, now, Signer};
use common::*;
use http::Request;
use portcullis::{config, Gateway, RunningGateway};
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

struct Keys {
    rsa: Signer,
    ec256: Signer,
    ec384: Signer,
    ed: Signer,
    hmac: Signer,
}

fn keys() -> Keys {
    Keys {
        rsa: Signer::rsa("r1"),
        ec256: Signer::ec256("e1"),
        ec384: Signer::ec384("e3"),
        ed: Signer::ed25519("d1"),
        hmac: Signer::hmac(SECRET),
    }
}

fn jwks(signers: &[(&Signer, Option<&str>)]) -> String {
    let keys: Vec<_> = signers.iter().map(|(s, alg)| s.jwk(*alg)).collect();
    json!({ "keys": keys }).to_string()
}

fn gateway_yaml(jwks_path: &Path, upstream: std::net::SocketAddr, leeway: &str) -> String {
    format!(
        "listeners: [{{ name: http, bind: '127.0.0.1:0' }}]\n\
         admin: {{ bind: '127.0.0.1:0' }}\nserver: {{ access_log: false }}\n\
         jwt:\n  - name: main\n    issuer: test-issuer\n    audiences: [api]\n\
         \x20   algorithms: [RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512]\n\
         \x20   jwks_file: '{}'\n    secret: '{SECRET}'\n    leeway: {leeway}\n\
         \x20   forward_claims: {{ sub: x-user-id, scope: x-user-scope }}\n\
         upstreams: [{{ name: up, endpoints: ['{upstream}'] }}]\n\
         routes:\n\
         \x20 - {{ name: open, match: {{ path_prefix: /open }}, upstream: up, auth: none }}\n\
         \x20 - {{ name: read, match: {{ path_prefix: /read }}, upstream: up, auth: {{ jwt: main, scopes: ['users:read'] }} }}\n\
         \x20 - {{ name: admin, match: {{ path_prefix: /admin }}, upstream: up, auth: {{ jwt: main, scopes: [admin] }} }}\n",
        jwks_path.display()
    )
}

async fn start(keys: &Keys, leeway: &str) -> (RunningGateway, Upstream, tempfile::TempDir) {
    let up = spawn_upstream("up").await;
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(
        &jwks_path,
        jwks(&[
            (&keys.rsa, None),
            (&keys.ec256, Some("ES256")),
            (&keys.ec384, None),
            (&keys.ed, None),
        ]),
    )
    .unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, gateway_yaml(&jwks_path, up.addr, leeway)).unwrap();
    let loaded = config::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    (Gateway::start(loaded).await.unwrap(), up, dir)
}

async fn get_with(gw: &RunningGateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut b = Request::get(format!("http://{}{path}", gw.addr("http").unwrap()));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&http1_client(), b.body(empty()).unwrap()).await
}

async fn with_token(gw: &RunningGateway, path: &str, token: &str) -> Answer {
    get_with(gw, path, &[("authorization", &format!("Bearer {token}"))]).await
}

/// Asserts a 401 whose challenge names `problem`.
fn assert_invalid(a: &Answer, problem: &str, why: &str) {
    assert_eq!(a.status, 401, "{why}: {}", a.body);
    let challenge = a.headers["www-authenticate"].to_str().unwrap();
    assert_eq!(
        challenge,
        format!("Bearer error=\"invalid_token\", error_description=\"{problem}\""),
        "{why}"
    );
    let doc = a.json();
    assert_eq!(doc["error"], "unauthorized", "{why}");
    assert_eq!(a.headers["content-type"], "application/problem+json");
}

#[tokio::test]
async fn every_supported_algorithm_verifies_and_forwards_claims() {
    let k = keys();
    let (gw, up, _dir) = start(&k, "30s").await;
    for (signer, alg) in [
        (&k.rsa, "RS256"),
        (&k.rsa, "RS384"),
        (&k.rsa, "RS512"),
        (&k.rsa, "PS256"),
        (&k.rsa, "PS384"),
        (&k.rsa, "PS512"),
        (&k.ec256, "ES256"),
        (&k.ec384, "ES384"),
        (&k.ed, "EdDSA"),
        (&k.hmac, "HS256"),
        (&k.hmac, "HS384"),
        (&k.hmac, "HS512"),
    ] {
        let token = signer.sign(alg, &claims(&format!("user-{alg}"), "users:read other"));
        let a = with_token(&gw, "/read/x", &token).await;
        assert_eq!(a.status, 200, "{alg}: {}", a.body);
        let seen = up.seen.last_headers.lock().unwrap().clone().unwrap();
        assert_eq!(seen["x-user-id"], format!("user-{alg}").as_str(), "{alg}");
        assert_eq!(seen["x-user-scope"], "users:read other");
        assert_eq!(
            seen["authorization"],
            format!("Bearer {token}").as_str(),
            "the token is passed on"
        );
    }
    // `aud` may be an array; `scp` may carry the scopes.
    let mut c = claims("arr", "");
    c["aud"] = json!(["other", "api"]);
    c["scp"] = json!(["users:read"]);
    assert_eq!(
        with_token(&gw, "/read/y", &k.ec256.sign("ES256", &c))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn bad_tokens_get_a_401_that_says_what_was_wrong() {
    let k = keys();
    let (gw, up, _dir) = start(&k, "30s").await;

    // No token: a bare challenge (RFC 6750: no error code).
    let a = get_with(&gw, "/read/x", &[]).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.headers["www-authenticate"], "Bearer");
    assert_eq!(a.json()["error"], "unauthorized");
    let a = get_with(&gw, "/read/x", &[("authorization", "Basic dXNlcjpwdw==")]).await;
    assert_eq!(a.headers["www-authenticate"], "Bearer");

    let c = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims("u", "users:read");
        f(&mut c);
        c
    };
    let es = |claims: &serde_json::Value| k.ec256.sign("ES256", claims);
    let cases: Vec<(String, &str, &str)> = vec![
        (
            es(&c(&|c| c["exp"] = json!(now() - 100))),
            "token expired",
            "exp in the past beyond leeway",
        ),
        (
            es(&c(&|c| c["nbf"] = json!(now() + 600))),
            "token not valid yet (nbf)",
            "nbf in the future",
        ),
        (
            es(&c(&|c| c["iat"] = json!(now() + 600))),
            "token issued in the future",
            "iat in the future",
        ),
        (
            // A fractional date is a date (fuzz/jwt_parse regression).
            es(&c(&|c| c["iat"] = json!(now() as f64 + 600.5))),
            "token issued in the future",
            "fractional iat in the future",
        ),
        (
            es(&c(&|c| c["iss"] = json!("someone-else"))),
            "wrong issuer",
            "iss",
        ),
        (
            es(&c(&|c| c["aud"] = json!("web"))),
            "wrong audience",
            "aud",
        ),
        (
            es(&c(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            "token lacks a required claim (exp, iss or aud)",
            "no exp",
        ),
        (
            {
                let t = es(&claims("u", "users:read"));
                let (head, _) = t.rsplit_once('.').unwrap();
                let other = es(&claims("v", "users:read"));
                format!("{head}.{}", other.rsplit_once('.').unwrap().1)
            },
            "bad signature",
            "signature of another token",
        ),
        (
            Signer::hmac("another-secret-that-is-long-enough-00")
                .sign("HS256", &claims("u", "users:read")),
            "bad signature",
            "HMAC with the wrong secret",
        ),
        (
            k.ec256
                .sign_with_header("none", json!({}), &claims("u", "users:read")),
            "algorithm not allowed",
            "alg none",
        ),
        (
            // Alg confusion: an HS256 token naming the RSA key's kid is
            // checked with the secret only, never with the public key.
            {
                let mut s = Signer::hmac("attacker-chosen-secret-long-enough-000");
                s.kid = "r1".into();
                s.sign("HS256", &claims("u", "users:read"))
            },
            "bad signature",
            "HS256 naming an RSA kid",
        ),
        (
            // The JWK says alg ES256: an ES384-labelled token cannot use it.
            {
                let mut s = Signer::ec384("e1");
                s.kid = "e1".into();
                s.sign("ES384", &claims("u", "users:read"))
            },
            "unknown key id",
            "JWK alg respected",
        ),
        (
            Signer::ec256("nobody").sign("ES256", &claims("u", "users:read")),
            "unknown key id",
            "unknown kid",
        ),
        (
            k.ec256.sign_with_header(
                "ES256",
                json!({ "kid": "k".repeat(5000) }),
                &claims("u", "users:read"),
            ),
            "unknown key id",
            "huge kid",
        ),
        ("garbage".into(), "malformed token", "one segment"),
        ("a.b".into(), "malformed token", "two segments"),
        ("a.b.c.d".into(), "malformed token", "four segments"),
        ("!!!.@@@.###".into(), "malformed token", "not base64"),
        (
            format!("{}.e30.sig", base64_url("not json")),
            "malformed token",
            "header not JSON",
        ),
        ("x".repeat(9000), "token too large", "over 8 KiB"),
    ];
    for (token, problem, why) in &cases {
        let a = with_token(&gw, "/read/x", token).await;
        assert_invalid(&a, problem, why);
        assert!(
            !a.body.contains(token.as_str()) || token.len() < 8,
            "{why}: token echoed"
        );
    }
    assert_eq!(
        up.seen.hits.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    // Routes without auth are unaffected.
    assert_eq!(get_with(&gw, "/open/x", &[]).await.status, 200);
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(
        metric(
            &m,
            "portcullis_rejections_total{reason=\"unauthorized\",route=\"read\"}"
        ),
        (cases.len() + 2) as f64,
        "{m}"
    );
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn scopes_are_all_required_and_forwarded_headers_cannot_be_spoofed() {
    let k = keys();
    let (gw, up, _dir) = start(&k, "30s").await;
    let reader = k.ec256.sign("ES256", &claims("alice", "users:read"));
    let a = with_token(&gw, "/admin/x", &reader).await;
    assert_eq!(a.status, 403);
    assert_eq!(
        a.headers["www-authenticate"],
        "Bearer error=\"insufficient_scope\", scope=\"admin\""
    );
    assert_eq!(a.json()["error"], "forbidden");
    let mut c = claims("root", "");
    c["scp"] = json!(["admin", "users:read"]);
    assert_eq!(
        with_token(&gw, "/admin/x", &k.ed.sign("EdDSA", &c))
            .await
            .status,
        200
    );

    // Spoofed claim headers are removed on every route, with or without auth.
    let a = get_with(
        &gw,
        "/open/x",
        &[("x-user-id", "root"), ("x-user-scope", "admin")],
    )
    .await;
    assert_eq!(a.status, 200);
    let seen = up.seen.last_headers.lock().unwrap().clone().unwrap();
    assert!(
        seen.get("x-user-id").is_none() && seen.get("x-user-scope").is_none(),
        "{seen:?}"
    );
    let a = get_with(
        &gw,
        "/read/x",
        &[
            ("authorization", &format!("Bearer {reader}")),
            ("x-user-id", "root"),
        ],
    )
    .await;
    assert_eq!(a.status, 200);
    let seen = up.seen.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-user-id"], "alice");
    assert_eq!(seen.get_all("x-user-id").iter().count(), 1);
}

#[tokio::test]
async fn keys_rotate_by_kid_when_the_jwks_file_changes() {
    let k = keys();
    let (gw, _up, dir) = start(&k, "30s").await;
    let new_key = Signer::ec256("e2");
    let new_token = new_key.sign("ES256", &claims("bob", "users:read"));
    let old_token = k.ec256.sign("ES256", &claims("alice", "users:read"));
    assert_invalid(
        &with_token(&gw, "/read/x", &new_token).await,
        "unknown key id",
        "before rotation",
    );
    assert_eq!(with_token(&gw, "/read/x", &old_token).await.status, 200);

    // Rotate: the new key in, the old one out (rename-over save).
    let tmp = dir.path().join("jwks.tmp");
    std::fs::write(&tmp, jwks(&[(&new_key, None), (&k.rsa, None)])).unwrap();
    std::fs::rename(&tmp, dir.path().join("jwks.json")).unwrap();
    let start = Instant::now();
    while with_token(&gw, "/read/x", &new_token).await.status != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "new key not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The old token was cached as valid; the key change voids that.
    assert_invalid(
        &with_token(&gw, "/read/x", &old_token).await,
        "unknown key id",
        "after rotation",
    );

    // A broken JWKS keeps the last good keys.
    std::fs::write(dir.path().join("jwks.json"), "{ not json").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(with_token(&gw, "/read/x", &new_token).await.status, 200);
}

#[tokio::test]
async fn verified_tokens_are_cached_until_they_expire() {
    let k = keys();
    let (gw, _up, _dir) = start(&k, "0s").await;
    let mut c = claims("carol", "users:read");
    c["exp"] = json!(now() + 2);
    let token = k.rsa.sign("RS256", &c);
    for _ in 0..3 {
        assert_eq!(with_token(&gw, "/read/x", &token).await.status, 200);
    }
    let m = admin(&gw, "/metrics").await.body;
    let v = |r: &str| {
        metric(
            &m,
            &format!("portcullis_jwt_validations_total{{provider=\"main\",result=\"{r}\"}}"),
        )
    };
    assert_eq!((v("ok"), v("cached")), (1.0, 2.0), "{m}");
    // The largest `exp` a token can carry is cached like any other (its sum
    // with the leeway once overflowed: fuzz/jwt_parse regression).
    let mut far = claims("dave", "users:read");
    far["exp"] = json!(u64::MAX);
    let far = k.rsa.sign("RS256", &far);
    for _ in 0..3 {
        assert_eq!(with_token(&gw, "/read/x", &far).await.status, 200);
    }
    // Past `exp`, the cached entry does not make it valid again.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_invalid(
        &with_token(&gw, "/read/x", &token).await,
        "token expired",
        "expired in cache",
    );
}

/// A JWKS server on 127.0.0.1: serves `body` with `status`, counts GETs.
struct Idp {
    addr: std::net::SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<(u16, String)>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Idp {
    async fn start(body: String) -> Idp {
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new((200u16, body)));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, h) = (state.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (s, h) = (s.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = s.lock().unwrap().clone();
                        async move {
                            let mut r = http::Response::new(full(body));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        Idp { addr, state, hits }
    }

    fn set(&self, status: u16, body: &str) {
        *self.state.lock().unwrap() = (status, body.to_string());
    }
}

async fn wait_status(gw: &RunningGateway, token: &str, want: u16, within: Duration) -> Answer {
    let start = Instant::now();
    loop {
        let a = with_token(gw, "/read/x", token).await;
        if a.status == want {
            return a;
        }
        assert!(
            start.elapsed() < within,
            "still {} ({}) after {within:?}",
            a.status,
            a.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn jwks_url_keys_load_rotate_on_unknown_kid_and_survive_an_idp_outage() {
    let up = spawn_upstream("up").await;
    let first = Signer::ec256("u1");
    let idp = Idp::start(String::new()).await;
    idp.set(500, "down");
    let yaml = format!(
        "listeners: [{{ name: http, bind: '127.0.0.1:0' }}]\nadmin: {{ bind: '127.0.0.1:0' }}\n\
         server: {{ access_log: false }}\n\
         jwt:\n  - {{ name: main, issuer: test-issuer, audiences: [api], algorithms: [ES256],\n\
         \x20     jwks_url: 'http://{}/jwks', refresh: 1s, max_key_age: 1h, ready_needs_keys: true }}\n\
         upstreams: [{{ name: up, endpoints: ['{}'] }}]\n\
         routes: [{{ name: read, match: {{ path_prefix: /read }}, upstream: up, auth: {{ jwt: main, scopes: ['users:read'] }} }}]\n",
        idp.addr, up.addr
    );
    let gw = start_gateway(&yaml).await;
    let token = first.sign("ES256", &claims("u", "users:read"));

    // The identity provider is down and no keys were ever loaded: our
    // outage, not the client's: 503 with Retry-After, and not ready.
    let a = wait_status(&gw, &token, 503, Duration::from_secs(3)).await;
    assert_eq!(a.json()["error"], "auth_unavailable");
    assert!(a.headers.contains_key("retry-after"));
    assert_eq!(admin(&gw, "/health/ready").await.status, 503);

    // It comes back: keys load within the retry interval; ready.
    idp.set(200, &jwks(&[(&first, None)]));
    wait_status(&gw, &token, 200, Duration::from_secs(5)).await;
    assert_eq!(admin(&gw, "/health/ready").await.status, 200);

    // Junk and outages after that keep the last good keys.
    idp.set(200, "<html>oops</html>");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    idp.set(503, "");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(with_token(&gw, "/read/x", &token).await.status, 200);
    let m = admin(&gw, "/metrics").await.body;
    assert!(
        metric(
            &m,
            "portcullis_jwks_fetches_total{provider=\"main\",result=\"error\"}"
        ) >= 3.0,
        "{m}"
    );

    // Rotation: a token with a new kid triggers a fetch at once (the
    // refresh is slow here), and is accepted right after.
    let yaml_slow = yaml.replace("refresh: 1s", "refresh: 1h");
    drop(gw);
    idp.set(200, &jwks(&[(&first, None)]));
    let gw = start_gateway(&yaml_slow).await;
    wait_status(&gw, &token, 200, Duration::from_secs(5)).await;
    let second = Signer::ec256("u2");
    idp.set(200, &jwks(&[(&first, None), (&second, None)]));
    let new_token = second.sign("ES256", &claims("v", "users:read"));
    let hits_before = idp.hits.load(Ordering::SeqCst);
    assert_invalid(
        &with_token(&gw, "/read/x", &new_token).await,
        "unknown key id",
        "not fetched yet",
    );
    wait_status(&gw, &new_token, 200, Duration::from_secs(3)).await;
    assert_eq!(
        idp.hits.load(Ordering::SeqCst),
        hits_before + 1,
        "one fetch per kid miss"
    );
}

#[tokio::test]
async fn hash_balancing_on_a_claim_keeps_each_subject_on_one_endpoint() {
    let ups = [
        spawn_upstream("e0").await,
        spawn_upstream("e1").await,
        spawn_upstream("e2").await,
    ];
    let eps: Vec<String> = ups.iter().map(|u| format!("'{}'", u.addr)).collect();
    let yaml = format!(
        "listeners: [{{ name: http, bind: '127.0.0.1:0' }}]\n\
         admin: {{ bind: '127.0.0.1:0' }}\nserver: {{ access_log: false }}\n\
         jwt:\n  - {{ name: main, issuer: test-issuer, audiences: [api], algorithms: [HS256], secret: '{SECRET}' }}\n\
         upstreams: [{{ name: up, endpoints: [{}], balance: 'hash:claim:sub' }}]\n\
         routes: [{{ name: r, match: {{ path_prefix: / }}, upstream: up, auth: {{ jwt: main }} }}]\n",
        eps.join(", ")
    );
    let gw = start_gateway(&yaml).await;
    let hmac = Signer::hmac(SECRET);
    let mut owners = std::collections::HashMap::new();
    for i in 0..60 {
        let sub = format!("user-{i}");
        // A fresh token per request: the claim decides, not the token.
        let mut seen = Vec::new();
        for _ in 0..3 {
            let mut c = claims(&sub, "");
            c["jti"] = json!(format!("{}", fastrand::u64(..)));
            let token = hmac.sign("HS256", &c);
            let r = get_with(&gw, "/x", &[("authorization", &format!("Bearer {token}"))]).await;
            assert_eq!(r.status, 200, "{}", r.body);
            seen.push(r.body.split(' ').next().unwrap().to_string());
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{sub}: {seen:?}");
        *owners.entry(seen[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(
        owners.len(),
        3,
        "subjects spread over every endpoint: {owners:?}"
    );
}
