//! The request's whole path, top to bottom.
//!
//! | # | step | module | can answer |
//! |---|------|--------|------------|
//! | 1 | admit: hop-by-hop headers out, in-flight cap and adaptive limit, request id, head size, request target and `Host`, mTLS subject | `limits::shed`, `proxy`, `limits`, `target` | 503 `overloaded`, 431 `headers_too_large`, 400 `bad_request` |
//! | 2 | route: API version (path segment, header, `Accept`); host, path, method, headers, version; deprecation headers | `routing::version`, `routing` | 400 `bad_request` (versions disagree), 404 `no_route`, 404 `unsupported_version` |
//! | 2b | authenticate: bearer token, scopes, forwarded claims; declared body size | `auth`, `limits` | 401 `unauthorized`, 403 `forbidden`, 503 `auth_unavailable`, 400 `bad_request`, 413 `payload_too_large` |
//! | 2c | rate limit: the route's policy, first key present; in-process, or shared in Redis (the only step besides 5 that may wait on the network, at most `store_timeout`) | `limits::rate`, `limits::shared`, `client_key` | 429 `rate_limited`, 503 `rate_limit_unavailable` |
//! | 2d | priority: room kept for more important routes | `limits::shed` | 503 `overloaded` |
//! | 3 | choose upstream: tester override, sticky or weighted split without the targets the canary guard drained; its bulkhead (`max_in_flight`); the client key for `hash:` balancing | `routing::split`, `limits::shed`, `client_key` | 400 `bad_request`, 503 `overloaded` |
//! | 4 | rewrite: version segment, `strip_prefix`, header hygiene, `traceparent`, `X-Forwarded-*` | `proxy` | |
//! | 5 | forward: circuit breaker; then try by try: healthy endpoint, pooled connection, timeouts, outcome to outlier detection, retry within budget and deadline; the final outcome to the breaker and the canary guard | `upstream::{breaker, attempts, balance, health, retry}` | 503 `upstream_unavailable`, 413 (body cut while streaming), 502 `bad_gateway`, 504 `upstream_timeout` |
//! | 6 | respond: hop-by-hop removal; `x-request-id`, `x-portcullis-upstream`, `Deprecation`/`Sunset`/`Link`, `RateLimit` headers (kept in the exchange, written by the server); drain `Connection: close`, metrics and access log when the body ends | `proxy`, `telemetry` | |
//!
//! [`handle`] never fails: it runs [`run`] and turns a [`Reject`] into the
//! contract's problem document through `error.rs`, the only place that does.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONNECTION, HOST};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Version};
use tokio::time::Instant;

use crate::body::{self, ClientBody, RequestBody, ResponseBody};
use crate::client_key::KeySource;
use crate::config::LimitMode;
use crate::error::Reject;
use crate::limits::shed::{ShedReason, Shedder, Slot};
use crate::proxy::Forwarded;
use crate::routing::version::{RequestVersion, VersionSegment};
use crate::server::ConnInfo;
use crate::snapshot::{Route, Snapshot};
use crate::telemetry::Exchange;
use crate::upstream::{attempts, balance, Balance, Outgoing, Upstream, UpstreamBody};
use crate::{limits, proxy, routing, target, Shared};

/// Serves one request. Every response carries `x-request-id`.
pub async fn handle(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<ClientBody>,
) -> Response<ResponseBody> {
    let snap = shared.snapshot.load_full();
    shared.metrics.in_flight.increment(1.0);
    // The client's hop-by-hop headers go before the gateway sets any of its
    // own, so naming one of ours in `Connection` cannot remove it.
    proxy::remove_hop_by_hop(req.headers_mut());
    // The upstream sees the same id the client and the access log see
    // (`proxy::Forwarded`, at the rewrite).
    let request_id = proxy::request_id(req.headers());
    // Boxed from the start: it ends up in the response body, which hyper
    // moves several times.
    let mut exchange = Box::new(Exchange {
        start: Instant::now(),
        method: req.method().clone(),
        path: if snap.access_log {
            req.uri().path().to_owned()
        } else {
            String::new()
        },
        request_id,
        route: snap.unrouted.clone(),
        upstream: None,
        endpoint: None,
        attempts: 0,
        attempts_header: false,
        status: 0,
        error: None,
        bytes_out: 0,
        completed: false,
        access_log: snap.access_log,
        in_flight: shared.metrics.in_flight.clone(),
        rate: None,
        deprecation: None,
        upstream_header: None,
        shadow_limited: None,
        shadow_shed: None,
        slots: [None, None],
        body_failed: false,
        busy: Some(conn.state.busy()),
    });
    let version = req.version();
    let load = Load {
        shedder: &shared.state.shedder,
    };

    let mut resp = match run(&snap, &load, conn, req, &mut exchange).await {
        Ok(resp) => resp,
        Err(reject) => {
            exchange.route.rejected(reject.code_index());
            exchange.error = Some(reject.code());
            let mut resp = reject.to_response(exchange.request_id.to_str().unwrap_or(""));
            if exchange.method == Method::HEAD {
                // hyper's HTTP/1.1 server drops the body of an answer to
                // HEAD, its HTTP/2 server sends it (a protocol error).
                *resp.body_mut() = ResponseBody::full(bytes::Bytes::new());
            }
            resp
        }
    };

    // The gateway's own fields (`x-request-id`, ...) travel in the
    // exchange, and the server writes them: `proxy::ResponseFields`.
    if shared.is_draining() && version <= Version::HTTP_11 {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    exchange.status = resp.status().as_u16();
    resp.body_mut().track(exchange);
    resp
}

/// The gateway's load: admitted requests and the adaptive limit.
struct Load<'a> {
    shedder: &'a Shedder,
}

/// Steps 1–6; any step may refuse with a [`Reject`].
async fn run(
    snap: &Snapshot,
    load: &Load<'_>,
    conn: &ConnInfo,
    mut req: Request<ClientBody>,
    exchange: &mut Exchange,
) -> Result<Response<ResponseBody>, Reject> {
    // 1–3 look only at the head; a refusal there leaves the body unread.
    let Chosen {
        route,
        upstream,
        target,
        key,
        version_segment,
    } = match admit_and_route(snap, load, conn, &mut req, exchange).await {
        Ok(x) => x,
        Err(reject) => {
            body::linger(req.into_body());
            return Err(reject);
        }
    };
    exchange.upstream = Some(upstream.name.clone());

    // 4. rewrite
    let (req, forwarded) = rewrite(
        snap,
        req,
        &route,
        version_segment,
        conn,
        exchange.request_id.clone(),
    )?;

    // 5. forward
    let timeout = route.timeout.unwrap_or(upstream.request_timeout);
    let adaptive = snap
        .shedding
        .as_ref()
        .filter(|p| p.adaptive)
        .map(|p| (load.shedder, p));
    let out = Outgoing {
        req,
        forwarded: Some(&forwarded),
    };
    let resp = forward(&upstream, key, out, timeout, adaptive, exchange).await;
    if let Some(guard) = &route.guard {
        let status = match &resp {
            Ok(r) => r.status(),
            Err(reject) => reject.status(),
        };
        guard.record(target, status.as_u16());
    }
    let resp = resp?;

    // 6. respond
    let (mut parts, body) = resp.into_parts();
    proxy::remove_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, ResponseBody::upstream(body)))
}

/// Where a request goes.
struct Chosen {
    route: Arc<Route>,
    upstream: Arc<Upstream>,
    /// The upstream's place in the route's split (for the canary guard).
    target: usize,
    /// Where the path named the API version (`/v2`), to take out.
    version_segment: Option<VersionSegment>,
    /// The client key's hash, for `hash:<key>` balancing.
    key: Option<u64>,
}

/// Steps 1–3: load and limits, trace context, route, authentication, rate
/// limit, upstream.
async fn admit_and_route(
    snap: &Snapshot,
    load: &Load<'_>,
    conn: &ConnInfo,
    req: &mut Request<ClientBody>,
    exchange: &mut Exchange,
) -> Result<Chosen, Reject> {
    // 1. admit: shed first, so a refusal costs next to nothing.
    if let Some(policy) = &snap.shedding {
        if let Some(reason) = load.shedder.full(policy) {
            shed(load.shedder, policy.mode, reason, None, exchange)?;
        }
    }
    limits::check_head(req, &snap.limits)?;
    target::check(req)?;
    // Before routing, so routes can match on the verified subject.
    proxy::set_client_cert_subject(req.headers_mut(), conn.client_cert_subject.as_ref());
    // Claim headers only the gateway may set (from a verified token).
    for h in &snap.claim_headers {
        req.headers_mut().remove(h);
    }

    // 2. route: the version first, as it takes its segment out of the path
    let host = routing::request_host(req.uri(), req.headers());
    let version = match &snap.versioning {
        Some(v) => v.resolve(req.uri().path(), req.headers())?,
        None => RequestVersion::NONE,
    };
    let path = version.routing_path(req.uri().path());
    let route = match snap
        .router
        .find(host, &path, req.method(), req.headers(), version.version)
    {
        Some(route) => route.clone(),
        None => return Err(not_found(snap, host, &path, req, version.version)),
    };
    // With a segment the routed path is already an owned copy: keep it
    // for the rewrite rather than build it again.
    let version_segment = version.segment.map(|range| VersionSegment {
        range,
        routed: path.into_owned(),
    });
    exchange.route = route.metrics.clone();
    if let Some(d) = &route.deprecation {
        d.requests.increment(1);
        exchange.deprecation = Some(d.clone());
    }

    // 2b. authenticate
    let token = match &route.auth {
        Some(auth) => Some(
            auth.provider
                .authenticate(req, &auth.scopes, &auth.scope_text)?,
        ),
        None => None,
    };
    limits::check_declared_body(req, &snap.limits)?;
    let keys = KeySource {
        peer: proxy::client_ip(conn.peer.ip(), req.headers(), &snap.trusted_proxies),
        headers: req.headers(),
        client_cert_subject: conn.client_cert_subject.as_ref(),
        token: token.as_deref(),
        route: &route.name,
    };

    // 2c. rate limit
    if let Some(policy) = &route.rate_limit {
        policy.admit(&keys, exchange).await?;
    }

    // 2d. priority: take a place among the admitted requests
    if let Some(policy) = &snap.shedding {
        match load.shedder.admit(policy, route.priority) {
            Ok(slot) => exchange.slots[0] = Some(slot),
            Err(reason) => shed(load.shedder, policy.mode, reason, None, exchange)?,
        }
    }

    // 3. choose upstream
    let (target, upstream) = routing::split::choose(&route, &keys)?;
    if snap.upstream_header {
        exchange.upstream_header = Some(upstream.name_header.clone());
    }
    if let Some((max, count)) = &upstream.bulkhead {
        let (slot, n) = Slot::take(count);
        if n > *max {
            drop(slot);
            let mode = snap
                .shedding
                .as_ref()
                .map_or(LimitMode::Enforce, |p| p.mode);
            shed(
                load.shedder,
                mode,
                ShedReason::Upstream,
                Some(&upstream),
                exchange,
            )?;
        } else {
            exchange.slots[1] = Some(slot);
        }
    }
    let key = match &upstream.balance {
        Balance::Hash(key) => key.read(&keys).map(|k| balance::hash_bytes(k.as_bytes())),
        _ => None,
    };
    Ok(Chosen {
        route,
        upstream,
        target,
        key,
        version_segment,
    })
}

/// No route: a 404 that says which versions the path is served at, if any.
fn not_found(
    snap: &Snapshot,
    host: Option<&str>,
    path: &str,
    req: &Request<ClientBody>,
    version: Option<u32>,
) -> Reject {
    if snap.versioning.is_none() {
        return Reject::NoRoute;
    }
    let supported = snap
        .router
        .served_versions(host, path, req.method(), req.headers());
    if supported.is_empty() {
        Reject::NoRoute
    } else {
        Reject::UnsupportedVersion { version, supported }
    }
}

/// Refuses a request (enforce) or marks it for the access log (shadow).
fn shed(
    shedder: &Shedder,
    mode: LimitMode,
    reason: ShedReason,
    upstream: Option<&Upstream>,
    exchange: &mut Exchange,
) -> Result<(), Reject> {
    if shedder.shed(reason, mode) {
        return Err(Reject::Overloaded {
            reason: reason.as_str(),
            upstream: upstream.map(|u| u.name.clone()),
        });
    }
    exchange.shadow_shed = Some(reason.as_str());
    Ok(())
}

/// Step 5: the circuit breaker admits the request, which is then tried
/// until its answer is final; the breaker counts that final answer, so one
/// dying endpoint whose requests are retried elsewhere does not open the
/// circuit of a healthy upstream.
async fn forward(
    upstream: &Upstream,
    key: Option<u64>,
    out: Outgoing<'_>,
    timeout: Duration,
    adaptive: attempts::Adaptive<'_>,
    exchange: &mut Exchange,
) -> Result<Response<UpstreamBody>, Reject> {
    let Some((policy, breaker)) = &upstream.breaker else {
        return attempts::try_until_final(upstream, key, out, timeout, adaptive, exchange)
            .await
            .0;
    };
    let ticket = breaker
        .admit(policy)
        .map_err(|wait| attempts::unavailable(upstream, "circuit open", wait))?;
    let (result, outcome) =
        attempts::try_until_final(upstream, key, out, timeout, adaptive, exchange).await;
    match outcome {
        Some(o) => breaker.record(ticket, o, policy),
        // The client's fault or nothing tried: a probe slot is given back.
        None => drop(ticket),
    }
    result
}

/// Applies the route's path rewrite and the header hygiene, and wraps the
/// body in its size limit and read timeout. The gateway's own fields for
/// the upstream come back beside the request.
fn rewrite(
    snap: &Snapshot,
    req: Request<ClientBody>,
    route: &Arc<Route>,
    version_segment: Option<VersionSegment>,
    conn: &ConnInfo,
    request_id: HeaderValue,
) -> Result<(Request<RequestBody>, Forwarded), Reject> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path();
    let upstream_path = routing::version::upstream_path(
        path,
        version_segment,
        route.keep_version_segment,
        route.strip_prefix.as_deref(),
    );
    // Rewrites only take bytes out: the same length is the same path.
    if upstream_path.len() != path.len() {
        let new = match parts.uri.query() {
            Some(q) => format!("{upstream_path}?{q}"),
            None => upstream_path.into_owned(),
        };
        let invalid = || Reject::BadRequest {
            reason: "the rewritten path is invalid",
        };
        let pq = PathAndQuery::try_from(new).map_err(|_| invalid())?;
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(pq);
        parts.uri = http::Uri::from_parts(uri).map_err(|_| invalid())?;
    }
    let host = match parts.headers.get(HOST) {
        Some(h) => Some(h.clone()),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    // Only forwarded requests need trace context: a refusal skips it.
    let forwarded = Forwarded::new(
        &mut parts.headers,
        request_id,
        &conn.peer_ip,
        host.as_ref(),
        conn.proto,
    );
    let body = RequestBody::new(
        body,
        snap.limits.max_body_bytes,
        snap.server.body_read_timeout.0,
    );
    Ok((Request::from_parts(parts, body), forwarded))
}
