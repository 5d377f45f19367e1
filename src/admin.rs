//! The admin port: `/health/live`, `/health/ready`, `/metrics`, `/status`,
//! and `POST /reload`. Never shed, never routed, never counted as traffic.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::Shared;

/// Serves the admin endpoints until the process ends.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move {
                    if req.uri().path() == "/reload" {
                        return Ok::<_, Infallible>(reload(&shared, &req, peer).await);
                    }
                    Ok::<_, Infallible>(answer(&shared, &req))
                }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// `POST /reload`: reloads the config file and answers with the outcome:
/// 200 with the new generation and changes, or 422 with every error as
/// `PATH:LINE:COL: message`. Loopback clients only, unless
/// `admin.allow_remote_reload`.
async fn reload(
    shared: &Arc<Shared>,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "POST only\n".into(),
        );
    }
    if !peer.ip().is_loopback() && !shared.snapshot.load().admin.allow_remote_reload {
        return reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "POST /reload is allowed from loopback only (admin.allow_remote_reload)\n".into(),
        );
    }
    let (status, doc) = match crate::reload::reload(shared, "admin").await {
        Ok(record) => (StatusCode::OK, serde_json::to_value(&record)),
        Err(e) => {
            let record = shared.reload.last();
            let status = match e {
                crate::reload::ReloadError::Draining => StatusCode::SERVICE_UNAVAILABLE,
                crate::reload::ReloadError::NoFile => StatusCode::CONFLICT,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            (status, serde_json::to_value(&record))
        }
    };
    let mut text = doc
        .ok()
        .and_then(|d| serde_json::to_string_pretty(&d).ok())
        .unwrap_or_default();
    text.push('\n');
    reply(status, "application/json", text)
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/health/live" => reply(StatusCode::OK, "text/plain", "live\n".into()),
        "/health/ready" => {
            if shared.is_ready() && shared.state.keys_ready() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            shared.metrics.render(),
        ),
        "/status" => reply(StatusCode::OK, "application/json", status(shared)),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn status(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    let upstreams: Vec<_> = snap
        .upstreams
        .iter()
        .map(|u| {
            let breaker = u.breaker.as_ref().map(|(_, b)| {
                let (state, left) = b.state();
                serde_json::json!({
                    "state": state.as_str(),
                    "open_for_ms": left.as_millis() as u64,
                })
            });
            serde_json::json!({
                "name": &*u.name,
                "balance": u.balance.to_string(),
                "circuit": breaker,
                "endpoints": u.endpoints.iter().map(|e| {
                    let h = &e.health;
                    let ejected = h.ejected_for();
                    serde_json::json!({
                        "address": &*e.addr,
                        "in_flight": e.in_flight(),
                        "idle_connections": e.idle.len(),
                        // healthy: takes traffic; unhealthy: failed its
                        // checks; ejected: outlier detection took it out.
                        "health": if !h.is_up() {
                            "unhealthy"
                        } else if !ejected.is_zero() {
                            "ejected"
                        } else {
                            "healthy"
                        },
                        "checked": u.health_check.is_some(),
                        "ejected_for_ms": ejected.as_millis() as u64,
                        "last_check": h.last_check(),
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    let loaded = snap
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let listeners: Vec<_> = shared
        .listeners
        .tls()
        .iter()
        .map(|l| {
            let st = l.status();
            serde_json::json!({
                "name": &*l.listener,
                "tls": {
                    "min_version": st.min_version,
                    "client_auth": st.client_auth,
                    "certificates": st.certificates.iter().map(|(path, info)| serde_json::json!({
                        "file": path.display().to_string(),
                        "subject": info.subject,
                        "dns_names": info.dns_names,
                        "ip_addresses": info.ip_addrs,
                        "not_after": crate::tls::files::format_unix_date(info.not_after_unix),
                        "not_after_unix": info.not_after_unix,
                    })).collect::<Vec<_>>(),
                    "last_reload": st.last_reload.map(|r| serde_json::json!({
                        "result": if r.ok { "ok" } else { "error" },
                        "error": r.error,
                        "at_unix": r.at_unix,
                    })),
                },
            })
        })
        .collect();
    let doc = serde_json::json!({
        "generation": snap.generation,
        "config_file": snap.file,
        "config_hash": snap.hash,
        // When the config now serving was loaded: the last good config.
        "loaded_at_unix": loaded,
        "last_reload": shared.reload.last(),
        "ready": shared.is_ready(),
        "draining": shared.is_draining(),
        "routes": snap.router.len(),
        "upstreams": upstreams,
        "canary_guards": snap.guards.iter().map(|g| g.status()).collect::<Vec<_>>(),
        "rate_limits": snap.rate_limits.iter().map(|p| rate_limit_status(p)).collect::<Vec<_>>(),
        "tls_listeners": listeners,
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

/// A rate-limit policy in `/status`: its store and, for a shared store,
/// whether it answers.
fn rate_limit_status(p: &crate::limits::rate::RatePolicy) -> serde_json::Value {
    let Some(shared) = &p.shared else {
        return serde_json::json!({
            "name": &*p.name,
            "store": "local",
            "keys": p.buckets.live_keys(),
        });
    };
    let store = &shared.store;
    serde_json::json!({
        "name": &*p.name,
        "store": &*store.url,
        "sync": shared.settings.sync.as_str(),
        "lease": (shared.settings.sync == crate::config::SyncMode::Batched).then_some(shared.settings.lease),
        "store_timeout_ms": shared.settings.timeout.as_secs_f64() * 1000.0,
        "on_store_error": p.on_store_error.as_str(),
        "store_state": store.state_name(),
        "store_errors": shared.errors(),
        "last_error": store.last_error(),
        // Keys whose fallback bucket (`on_store_error: local`) is in use.
        "local_keys": p.buckets.live_keys(),
    })
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
