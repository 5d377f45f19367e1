//! `portcullis demo` and `portcullis backend`: small JSON backends for a
//! newcomer's first run (and for load tests), and the ready-to-paste
//! commands printed once the demo gateway is up.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use rustls::pki_types::pem::PemObject;

use crate::config::Config;

/// Binds a demo backend called `name` on `addr` and serves it in the
/// background. It answers `/health` with `{"status":"ok"}` and anything else
/// with JSON naming itself and describing the request it saw (the body is
/// read and counted, not kept). `/_demo/sick` makes it answer everything,
/// `/health` included, with 503 until `/_demo/well`: a way to watch health
/// checks, retries and the circuit breaker at work.
pub async fn spawn_backend(addr: SocketAddr, name: &str) -> std::io::Result<SocketAddr> {
    spawn_backend_with_delay(addr, name, Duration::ZERO).await
}

/// [`spawn_backend`], but every answer except `/health`'s waits `delay`
/// first: a slow endpoint whose health checks still pass (`portcullis
/// backend --delay`, for `benches/chaos.sh`).
pub async fn spawn_backend_with_delay(
    addr: SocketAddr,
    name: &str,
    delay: Duration,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let name: Arc<str> = Arc::from(name);
    let sick = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let name = name.clone();
            let builder = builder.clone();
            let sick = sick.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let name = name.clone();
                    let sick = sick.clone();
                    async move { Ok::<_, Infallible>(backend_answer(&name, delay, &sick, req).await) }
                });
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(local)
}

async fn backend_answer(
    name: &str,
    delay: Duration,
    sick: &AtomicBool,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, mut body) = req.into_parts();
    match parts.uri.path() {
        "/_demo/sick" => sick.store(true, Ordering::Relaxed),
        "/_demo/well" => sick.store(false, Ordering::Relaxed),
        _ => {}
    }
    if sick.load(Ordering::Relaxed) {
        let text = format!("{}\n", serde_json::json!({ "backend": name, "sick": true }));
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return resp;
    }
    let body_text = if parts.uri.path() == "/health" {
        r#"{"status":"ok"}"#.to_string()
    } else {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut body_bytes: u64 = 0;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                body_bytes += d.len() as u64;
            }
        }
        let headers: BTreeMap<&str, &str> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("<binary>")))
            .collect();
        let doc = serde_json::json!({
            "backend": name,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "headers": headers,
            "body_bytes": body_bytes,
        });
        doc.to_string()
    };
    let mut resp = Response::new(Full::new(Bytes::from(body_text + "\n")));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The dev certificate files `portcullis demo` keeps in `certs/`.
pub const DEV_CERT_FILES: [&str; 8] = [
    "ca.crt",
    "ca.key",
    "localhost.crt",
    "localhost.key",
    "client.crt",
    "client.key",
    "jwt-dev.key",
    "jwks.json",
];

/// The demo's JWT signing key (in the certs directory).
pub const DEV_JWT_KEY: &str = "jwt-dev.key";

/// Creates a dev CA, a `localhost`/`127.0.0.1`/`::1` server certificate, a
/// client certificate (`CN=demo-client`), a JWT signing key and the JWKS
/// publishing it, in `dir`, unless they are all there and the server
/// certificate is still valid for a week. Returns whether it wrote them.
pub fn ensure_dev_certs(dir: &std::path::Path) -> std::io::Result<bool> {
    use crate::tls::{devcert::DevCa, files};
    let present = DEV_CERT_FILES.iter().all(|f| dir.join(f).is_file());
    let fresh = std::fs::read(dir.join("localhost.crt"))
        .ok()
        .and_then(|pem| {
            rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
                .next()
                .and_then(Result::ok)
        })
        .and_then(|der| files::CertInfo::parse(&der))
        .is_some_and(|info| info.not_after_unix > files::unix_now() + 7 * 86_400);
    if present && fresh {
        return Ok(false);
    }
    let err = |e: rcgen::Error| std::io::Error::other(e.to_string());
    let ca = DevCa::new("Portcullis dev CA").map_err(err)?;
    let server = ca
        .server_cert(
            &["localhost", "127.0.0.1", "::1"],
            365,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )
        .map_err(err)?;
    let client = ca.client_cert("demo-client", 365).map_err(err)?;
    let jwt_key = crate::auth::token::generate_dev_key().map_err(std::io::Error::other)?;
    let jwks = crate::auth::token::SigningKey::from_pem(&jwt_key)
        .map_err(std::io::Error::other)?
        .jwks();
    std::fs::create_dir_all(dir)?;
    for (name, text, secret) in [
        ("ca.crt", &ca.pem.cert, false),
        ("ca.key", &ca.pem.key, true),
        ("localhost.crt", &server.cert, false),
        ("localhost.key", &server.key, true),
        ("client.crt", &client.cert, false),
        ("client.key", &client.key, true),
        (DEV_JWT_KEY, &jwt_key, true),
        ("jwks.json", &jwks, false),
    ] {
        write_file(&dir.join(name), text.as_bytes(), secret)?;
    }
    Ok(true)
}

/// Writes `bytes` to `path`; `secret` files are readable by their owner only.
fn write_file(path: &std::path::Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(bytes)
}

/// Starts a backend for every loopback endpoint in `config`, named
/// `<upstream>-<n>`. Returns what it started.
pub async fn spawn_backends(config: &Config) -> Result<Vec<(String, SocketAddr)>, String> {
    let mut started = Vec::new();
    for u in &config.upstreams {
        for (i, e) in u.endpoints.iter().enumerate() {
            let Ok(addr) = e.parse::<SocketAddr>() else {
                continue;
            };
            if !addr.ip().is_loopback() {
                continue;
            }
            let name = format!("{}-{}", u.name, i + 1);
            let local = spawn_backend(addr, &name)
                .await
                .map_err(|err| format!("cannot start demo backend {name} on {addr}: {err}"))?;
            started.push((name, local));
        }
    }
    Ok(started)
}

/// The commands printed when the demo is up: one `curl` per route, the
/// admin endpoints, and a `wrk` run.
///
/// `token` is a fresh dev token for routes with `auth`.
pub fn commands(
    config: &Config,
    listeners: &[(String, SocketAddr)],
    admin: SocketAddr,
    token: Option<&str>,
) -> String {
    let is_tls = |name: &str| {
        config
            .listeners
            .iter()
            .any(|l| l.name == name && l.tls.is_some())
    };
    let plain = listeners.iter().find(|(n, _)| !is_tls(n));
    let Some((_, gw)) = plain.or(listeners.first()) else {
        return String::new();
    };
    let scheme = if plain.is_some() { "http" } else { "https" };
    let base = format!("{scheme}://{}", loopback(*gw));
    let mut out = String::new();
    out.push_str("\nPortcullis demo is up. Try:\n\n");
    let mut wrk_path = None;
    for r in &config.routes {
        let m = &r.matcher;
        let path = example_path(m).unwrap_or_else(|| "/".into());
        let mut args = String::new();
        if let Some(h) = &m.host {
            args.push_str(&format!(" -H 'Host: {}'", h.replace('*', "demo")));
        }
        for (k, v) in &m.headers {
            args.push_str(&format!(" -H '{k}: {}'", v.0));
        }
        // A version other than the default is asked for by header.
        if let (Some(v), Some(versioning)) = (m.version, &config.versioning) {
            if versioning.default != Some(v) {
                args.push_str(&format!(" -H '{}: {v}'", versioning.header));
            }
        }
        let needs_token = matches!(r.auth, Some(crate::config::RouteAuthConfig::Jwt { .. }));
        if needs_token {
            match token {
                Some(t) => args.push_str(&format!(" -H 'Authorization: Bearer {t}'")),
                None => continue,
            }
        }
        let method = m
            .methods
            .as_ref()
            .and_then(|ms| ms.first())
            .map(|x| x.to_ascii_uppercase())
            .unwrap_or_else(|| "GET".into());
        let method_arg = if method == "GET" {
            String::new()
        } else {
            format!(" -X {method}")
        };
        let note = if needs_token {
            " (JWT; without the header: 401. More tokens: portcullis token --sub alice --scope users:read)"
        } else {
            ""
        };
        out.push_str(&format!(
            "  # route `{}`{note}\n  curl -si{method_arg}{args} {base}{path}\n\n",
            r.name
        ));
        if wrk_path.is_none() && args.is_empty() && method == "GET" {
            wrk_path = Some(path);
        }
    }
    for l in config.listeners.iter().filter(|l| l.tls.is_some()) {
        let Some((_, addr)) = listeners.iter().find(|(n, _)| *n == l.name) else {
            continue;
        };
        let url = format!(
            "https://localhost:{}{}",
            addr.port(),
            wrk_path.as_deref().unwrap_or("/")
        );
        out.push_str(&format!(
            "  # HTTPS on listener `{}` (trust the dev CA; HTTP/2 by ALPN)\n  \
             curl -si --cacert certs/ca.crt --http2 {url}\n",
            l.name
        ));
        if l.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
            out.push_str(&format!(
                "  # mTLS: the backend sees x-client-cert-subject: CN=demo-client\n  \
                 curl -s --cacert certs/ca.crt --cert certs/client.crt \
                 --key certs/client.key {url}\n"
            ));
        }
        out.push('\n');
    }
    let admin = format!("http://{}", loopback(admin));
    // Resilience: make one endpoint of an upstream with retries sick.
    let resilient = config
        .upstreams
        .iter()
        .find(|u| u.retry.is_some() && u.endpoints.len() > 1);
    let route_to = |upstream: &str| {
        config.routes.iter().find(|r| {
            r.auth.is_none()
                && (r.upstream.as_deref() == Some(upstream)
                    || r.split
                        .as_ref()
                        .is_some_and(|s| s.iter().any(|t| t.upstream == upstream)))
        })
    };
    if let (Some(u), Some(route)) = (resilient, resilient.and_then(|u| route_to(&u.name))) {
        let sick = &u.endpoints[u.endpoints.len() - 1];
        let path = example_path(&route.matcher).unwrap_or_else(|| "/".into());
        out.push_str(&format!(
            "  # resilience: make backend {sick} of `{}` answer 503 (its /health too).\n  \
             # Retries hide it at once (x-portcullis-attempts: 2), health checks take it\n  \
             # out within seconds (see /status), and /_demo/well brings it back.\n  \
             curl -s http://{sick}/_demo/sick\n  \
             for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}} attempts=%header{{x-portcullis-attempts}}\\n' {base}{path}; done\n  \
             curl -s {admin}/status | grep -E '\"(address|health)\"'\n  \
             curl -s http://{sick}/_demo/well\n\n",
            u.name
        ));
    }
    // Canary: pin a request to the last side of a split that allows it.
    let pinnable = config.routes.iter().find_map(|r| {
        let last = r.split.as_ref()?.last()?;
        let path = prefix_example(&r.matcher)?;
        (r.allow_override && r.auth.is_none()).then_some((r, last, path))
    });
    if let Some((route, last, path)) = pinnable {
        out.push_str(&format!(
            "  # canary on route `{}`: testers pin `{}`; x-portcullis-upstream says who answered\n  \
             curl -si -H '{}: {}' {base}{path}\n\n",
            route.name, last.upstream, route.override_header, last.upstream,
        ));
    }
    // Canary guard: make the last split target fail and watch it drained.
    let guarded = config.routes.iter().find_map(|r| {
        let last = r.split.as_ref()?.last()?;
        let upstream = config.upstreams.iter().find(|u| u.name == last.upstream)?;
        let path = prefix_example(&r.matcher)?;
        (r.guard.is_some()
            && r.auth.is_none()
            && r.matcher
                .version
                .is_none_or(|v| config.versioning.as_ref().and_then(|c| c.default) == Some(v)))
        .then_some((r, upstream, path))
    });
    if let Some((route, upstream, path)) = guarded {
        let sick = &upstream.endpoints[0];
        out.push_str(&format!(
            "  # canary guard on route `{}`: make `{}` fail, send traffic, see it drained
  \
             # (/status canary_guards; it stays drained until the route's split changes)
  \
             curl -s http://{sick}/_demo/sick
  \
             for i in $(seq 400); do curl -s -o /dev/null -H \"x-user: u$i\" {base}{path}; done
  \
             curl -s {admin}/metrics | grep canary_guard
  \
             curl -s http://{sick}/_demo/well
\n",
            route.name, upstream.name,
        ));
    }
    // Versions: ask for a version that is not served.
    if config.versioning.is_some() {
        if let Some(r) = config.routes.iter().find(|r| r.deprecation.is_some()) {
            if let Some(p) = r
                .matcher
                .path_prefix
                .as_deref()
                .or(r.matcher.path.as_deref())
            {
                let p = p.trim_end_matches('/');
                let (head, tail) = p.rsplit_once('/').unwrap_or(("", p));
                out.push_str(&format!(
                    "  # versions: `{}` is deprecated (see its Deprecation, Sunset and Link headers);\n  \
                     # a version no route serves is a 404 that lists the served ones\n  \
                     curl -s {base}{head}/v9/{tail}\n\n",
                    r.name,
                ));
            }
        }
    }
    // Rate limits: a route with a local policy, hit a few times more than
    // its burst; then where a shared (Redis) policy is.
    let limited = config.routes.iter().find_map(|r| {
        let policy = config
            .rate_limits
            .iter()
            .find(|p| Some(&p.name) == r.rate_limit.as_ref() && p.redis_url().is_none())?;
        let path = example_path(&r.matcher)?;
        (r.auth.is_none() && r.matcher.headers.is_empty()).then_some((r, policy, path))
    });
    if let Some((route, policy, path)) = limited {
        out.push_str(&format!(
            "  # rate limit `{}` on route `{}`: {} at once, then {} per client (429 beyond)\n  \
             for i in $(seq {}); do curl -s -o /dev/null -w '%{{http_code}} %header{{ratelimit}}\\n' -H 'x-api-key: demo' {base}{path}; done\n\n",
            policy.name,
            route.name,
            policy.burst,
            policy.rate,
            policy.burst + 2,
        ));
    }
    for policy in &config.rate_limits {
        let Some(url) = policy.redis_url() else {
            continue;
        };
        let routes: Vec<&str> = config
            .routes
            .iter()
            .filter(|r| r.rate_limit.as_ref() == Some(&policy.name))
            .map(|r| r.name.as_str())
            .collect();
        out.push_str(&format!(
            "  # rate limit `{}` (routes: {}) is shared on Redis at {} (sync: {}):\n  \
             # with no Redis there the log says so and each instance limits on its own;\n  \
             # start one and `store_state` turns \"up\" within a second\n  \
             redis-server --port {} --save '' --daemonize yes; sleep 1; curl -s {admin}/status | grep -B4 -A8 '\"{}\"'\n\n",
            policy.name,
            routes.join(", "),
            crate::config::limits::redact_url(url),
            policy.sync().as_str(),
            redis_port(url),
            policy.name,
        ));
    }
    out.push_str(&format!(
        "  # no route: a problem document\n  curl -si {base}/nope\n\n\
         \x20 # hardening (docs/security.md): a `..` segment is refused, whatever route it would reach\n  \
         curl -s --path-as-is {base}/public/../admin\n\n\
         \x20 # admin port\n  curl -s {admin}/status\n  curl -s {admin}/metrics | grep portcullis_\n\n\
         \x20 # load (install wrk: apt-get install wrk)\n  wrk -t2 -c32 -d10s {base}{}\n\n\
         Edit gateway.yaml and save: the change is live within a second\n\
         (`curl -s {admin}/status` shows the generation and what changed).\n\
         Ctrl-C drains and stops.\n",
        wrk_path.unwrap_or_else(|| "/".into())
    ));
    out
}

/// A path a route serves, for a printed command: its exact `path`, else
/// [`prefix_example`].
/// The port of a Redis URL, for the demo's `redis-server` command.
fn redis_port(url: &str) -> u16 {
    redis::Client::open(url)
        .ok()
        .and_then(|c| match c.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(_, port) | redis::ConnectionAddr::TcpTls { port, .. } => {
                Some(*port)
            }
            _ => None,
        })
        .unwrap_or(6379)
}

fn example_path(m: &crate::config::MatchConfig) -> Option<String> {
    m.path.clone().or_else(|| prefix_example(m))
}

/// `/api/users` → `/api/users/42`: a path under the route's prefix.
fn prefix_example(m: &crate::config::MatchConfig) -> Option<String> {
    let p = m.path_prefix.as_ref()?;
    Some(format!("{}/42", p.trim_end_matches('/')))
}

/// `0.0.0.0:8080` is printed as `127.0.0.1:8080`: something a curl can reach.
fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}
