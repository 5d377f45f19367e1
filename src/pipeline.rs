//! The request's whole path, top to bottom.
//!
//! | # | step | module | can answer |
//! |---|------|--------|------------|
//! | 1 | admit: request id, traceparent, head size, mTLS subject | `proxy`, `limits` | 431 `headers_too_large` |
//! | 2 | route: host, path, method, headers | `routing` | 404 `no_route` |
//! | 2b | authenticate: bearer token, scopes, forwarded claims; declared body size | `auth`, `limits` | 401 `unauthorized`, 403 `forbidden`, 503 `auth_unavailable`, 400 `bad_request`, 413 `payload_too_large` |
//! | 3 | choose backend: weighted split, balancer | `routing::split`, `upstream` | |
//! | 4 | rewrite: `strip_prefix`, header hygiene, `X-Forwarded-*` | `proxy` | |
//! | 5 | forward: pooled connection, timeouts | `upstream` | 413 (body cut while streaming), 502 `bad_gateway`, 504 `upstream_timeout` |
//! | 6 | respond: hop-by-hop removal, `x-request-id`, drain `Connection: close`, metrics and access log when the body ends | `proxy`, `telemetry` | |
//!
//! [`handle`] never fails: it runs [`run`] and turns a [`Reject`] into the
//! contract's problem document through `error.rs`, the only place that does.

use std::sync::Arc;

use http::header::{HeaderValue, CONNECTION, HOST};
use http::uri::PathAndQuery;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{self, RequestBody, ResponseBody};
use crate::error::{Reject, UpstreamFailure};
use crate::server::ConnInfo;
use crate::snapshot::{Route, Snapshot};
use crate::telemetry::Exchange;
use crate::upstream::{Endpoint, Upstream};
use crate::{limits, proxy, routing, upstream, Shared};

/// Serves one request. Every response carries `x-request-id`.
pub async fn handle(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let snap = shared.snapshot.load_full();
    shared.metrics.in_flight.increment(1.0);
    let request_id = proxy::request_id(req.headers());
    // The upstream sees the same id the client and the access log see.
    req.headers_mut()
        .insert(proxy::X_REQUEST_ID.clone(), request_id.clone());
    let mut exchange = Exchange {
        start: Instant::now(),
        method: req.method().clone(),
        path: if snap.access_log {
            req.uri().path().to_owned()
        } else {
            String::new()
        },
        request_id: request_id.clone(),
        route: snap.unrouted.clone(),
        upstream: None,
        endpoint: None,
        status: 0,
        error: None,
        bytes_out: 0,
        completed: false,
        access_log: snap.access_log,
        in_flight: shared.metrics.in_flight.clone(),
        _busy: Some(conn.state.busy()),
    };
    let version = req.version();

    let mut resp = match run(&snap, conn, req, &mut exchange).await {
        Ok(resp) => resp,
        Err(reject) => {
            exchange.route.rejected(reject.code_index());
            exchange.error = Some(reject.code());
            reject.to_response(request_id.to_str().unwrap_or(""))
        }
    };

    let headers = resp.headers_mut();
    headers.insert(proxy::X_REQUEST_ID.clone(), request_id);
    if shared.is_draining() && version <= Version::HTTP_11 {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    exchange.status = resp.status().as_u16();
    resp.body_mut().track(exchange);
    resp
}

/// Steps 1–6; any step may refuse with a [`Reject`].
async fn run(
    snap: &Snapshot,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    exchange: &mut Exchange,
) -> Result<Response<ResponseBody>, Reject> {
    // 1–3 look only at the head; a refusal there leaves the body unread.
    let Chosen {
        route,
        upstream,
        endpoint,
    } = match admit_and_route(snap, conn, &mut req, exchange) {
        Ok(x) => x,
        Err(reject) => {
            body::linger(req.into_body());
            return Err(reject);
        }
    };
    exchange.upstream = Some(upstream.name.clone());
    exchange.endpoint = Some(endpoint.addr.clone());

    // 4. rewrite
    let req = rewrite(req, &route, conn, snap.limits.max_body_bytes)?;

    // 5. forward
    let timeout = route.timeout.unwrap_or(upstream.request_timeout);
    let resp = upstream::forward(&upstream, &endpoint, req, timeout).await?;

    // 6. respond
    let (mut parts, body) = resp.into_parts();
    proxy::remove_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, ResponseBody::upstream(body)))
}

/// Where a request goes.
struct Chosen {
    route: Arc<Route>,
    upstream: Arc<Upstream>,
    endpoint: Arc<Endpoint>,
}

/// Steps 1–3: limits and trace context, route, backend.
fn admit_and_route(
    snap: &Snapshot,
    conn: &ConnInfo,
    req: &mut Request<Incoming>,
    exchange: &mut Exchange,
) -> Result<Chosen, Reject> {
    // 1. admit
    limits::check_head(req, &snap.limits)?;
    proxy::ensure_traceparent(req.headers_mut());
    // Before routing, so routes can match on the verified subject.
    proxy::set_client_cert_subject(req.headers_mut(), conn.client_cert_subject.as_ref());
    // Claim headers only the gateway may set (from a verified token).
    for h in &snap.claim_headers {
        req.headers_mut().remove(h);
    }

    // 2. route
    let host = routing::request_host(req.uri(), req.headers());
    let route = snap
        .router
        .find(host, req.uri().path(), req.method(), req.headers())
        .ok_or(Reject::NoRoute)?
        .clone();
    exchange.route = route.metrics.clone();

    // 2b. authenticate
    if let Some(auth) = &route.auth {
        auth.provider
            .authenticate(req, &auth.scopes, &auth.scope_text)?;
    }
    limits::check_declared_body(req, &snap.limits)?;

    // 3. choose backend
    let upstream = route.split.pick().ok_or(Reject::NoRoute)?.clone();
    let endpoint = upstream
        .pick()
        .ok_or_else(|| Reject::BadGateway {
            upstream: upstream.name.clone(),
            cause: UpstreamFailure::Connect,
        })?
        .clone();
    Ok(Chosen {
        route,
        upstream,
        endpoint,
    })
}

/// Applies the route's path rewrite and the header hygiene, and wraps the
/// body in its size limit.
fn rewrite(
    req: Request<Incoming>,
    route: &Arc<Route>,
    conn: &ConnInfo,
    max_body_bytes: u64,
) -> Result<Request<RequestBody>, Reject> {
    let (mut parts, body) = req.into_parts();
    if let Some(prefix) = &route.strip_prefix {
        if let Some(rest) = routing::strip_prefix(parts.uri.path(), prefix) {
            let new = match parts.uri.query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_string(),
            };
            let pq = PathAndQuery::try_from(new).map_err(|_| Reject::BadRequest {
                reason: "the rewritten path is invalid",
            })?;
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.path_and_query = Some(pq);
            parts.uri = http::Uri::from_parts(uri).map_err(|_| Reject::BadRequest {
                reason: "the rewritten path is invalid",
            })?;
        }
    }
    let host = match parts.headers.get(HOST) {
        Some(h) => Some(h.clone()),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    proxy::to_upstream(
        &mut parts.headers,
        conn.peer.ip(),
        host.as_ref(),
        conn.proto,
    );
    Ok(Request::from_parts(
        parts,
        RequestBody::new(body, max_body_bytes),
    ))
}
