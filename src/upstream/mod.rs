//! Upstreams (pipeline step 5, `forward`): the pooled client per upstream,
//! endpoint choice, and one proxied exchange with its timeouts and error
//! mapping.
//!
//! An [`Upstream`] is the snapshot's view (policy: balance, timeouts,
//! breaker, retry and outlier thresholds); its [`Pool`], [`Endpoint`]s (with
//! their health), [`Breaker`] and [`RetryBudget`] come from
//! [`crate::state::State`], keyed by name, so connections, counters and
//! verdicts outlive a config reload.

pub mod attempts;
pub mod balance;
pub mod breaker;
pub mod health;
pub mod outcome;
pub mod poison;
pub mod retry;
pub mod window;

use std::error::Error as StdError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{ClientBodyError, RequestBody};
use crate::client_key::ClientKey;
use crate::config::HealthCheckConfig;
use crate::error::{Reject, UpstreamFailure};
use crate::telemetry::UpstreamMetrics;
use crate::tls::UpstreamTls;
use breaker::{Breaker, BreakerPolicy};
use health::{Health, OutlierPolicy};
use hyper_rustls::HttpsConnector;
use outcome::Outcome;
use poison::{Poison, Poisonable};
use retry::{RetryBudget, RetryPolicy};

/// Idle upstream connections are closed after this long: shorter than the
/// usual backend keep-alive (60s+), so we rarely reuse a connection the
/// backend is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest upstream response head read (hyper's read buffer): beyond
/// it, or for a head that never ends, the answer is a 502. Eight times
/// NGINX's default `proxy_buffer_size`, a quarter of hyper's default.
pub const MAX_UPSTREAM_HEAD_BYTES: usize = 64 << 10;

/// The pooled client: plain HTTP, or HTTPS through rustls.
enum PoolClient {
    Plain(Client<Poisonable<HttpConnector>, RequestBody>),
    Tls(Client<Poisonable<HttpsConnector<HttpConnector>>, RequestBody>),
}

/// One upstream's connection pool (long-lived; see module docs).
pub struct Pool {
    client: PoolClient,
    pub connect_timeout: Duration,
    /// [`UpstreamTls::identity`] for HTTPS pools; a pool is reused across
    /// reloads only with the same TLS settings.
    pub tls_identity: Option<String>,
    /// Round-robin cursor.
    cursor: AtomicUsize,
    pub metrics: UpstreamMetrics,
}

impl Pool {
    pub fn new(
        connect_timeout: Duration,
        tls: Option<&UpstreamTls>,
        metrics: UpstreamMetrics,
    ) -> Pool {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http1_max_buf_size(MAX_UPSTREAM_HEAD_BYTES);
        let client = match tls {
            None => {
                connector.enforce_http(true);
                PoolClient::Plain(builder.build(Poisonable(connector)))
            }
            Some(tls) => {
                connector.enforce_http(false);
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config((*tls.client).clone())
                    .https_only();
                let https = match &tls.sni {
                    Some(name) => https.with_server_name_resolver(
                        hyper_rustls::FixedServerNameResolver::new(name.clone()),
                    ),
                    None => https,
                };
                PoolClient::Tls(
                    builder.build(Poisonable(https.enable_http1().wrap_connector(connector))),
                )
            }
        };
        Pool {
            client,
            connect_timeout,
            tls_identity: tls.map(|t| t.identity.clone()),
            cursor: AtomicUsize::new(0),
            metrics,
        }
    }

    pub fn scheme(&self) -> Scheme {
        match self.client {
            PoolClient::Plain(_) => Scheme::HTTP,
            PoolClient::Tls(_) => Scheme::HTTPS,
        }
    }

    /// Sends `req` (absolute URI) on a pooled connection.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        match &self.client {
            PoolClient::Plain(c) => c.request(req).await,
            PoolClient::Tls(c) => c.request(req).await,
        }
    }
}

/// One backend address of an upstream (long-lived).
pub struct Endpoint {
    /// As written in the config: `127.0.0.1:9101`.
    pub addr: Arc<str>,
    authority: Authority,
    /// Requests sent and not yet answered (response head), for `least_requests`.
    in_flight: AtomicUsize,
    /// A hash of `addr`, for `hash:<key>` balancing.
    pub seed: u64,
    pub health: Health,
}

impl Endpoint {
    /// `addr` is validated as HOST:PORT by config validation; `healthy` is
    /// its `portcullis_upstream_endpoint_healthy` gauge.
    pub fn new(addr: &str, healthy: metrics::Gauge) -> Result<Endpoint, http::uri::InvalidUri> {
        Ok(Endpoint {
            addr: Arc::from(addr),
            authority: Authority::try_from(addr)?,
            in_flight: AtomicUsize::new(0),
            seed: balance::hash_bytes(addr.as_bytes()),
            health: Health::new(healthy),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// One request in an endpoint's `in_flight` count while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize) -> InFlight<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream as the snapshot sees it.
pub struct Upstream {
    pub name: Arc<str>,
    /// `name` as a header value (`x-portcullis-upstream`), made once.
    pub name_header: http::HeaderValue,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub balance: Balance,
    pub request_timeout: Duration,
    pub pool: Arc<Pool>,
    pub health_check: Option<HealthCheckConfig>,
    pub outlier: Option<OutlierPolicy>,
    pub breaker: Option<(BreakerPolicy, Arc<Breaker>)>,
    pub retry: Option<(RetryPolicy, Arc<RetryBudget>)>,
    /// `max_in_flight` and the upstream's in-flight count.
    pub bulkhead: Option<(usize, Arc<std::sync::atomic::AtomicUsize>)>,
}

/// `balance:`, compiled.
pub enum Balance {
    RoundRobin,
    LeastRequests,
    Hash(ClientKey),
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Balance::RoundRobin => f.write_str("round_robin"),
            Balance::LeastRequests => f.write_str("least_requests"),
            Balance::Hash(key) => write!(f, "hash:{key}"),
        }
    }
}

impl Upstream {
    /// Chooses the endpoint for the next try among the available ones,
    /// preferring those not in `tried` (bit i = endpoint i). `key` is the
    /// request's client-key hash for `hash:<key>` balancing. `None`: no
    /// endpoint is available.
    pub fn pick(&self, key: Option<u64>, tried: u64) -> Option<(usize, &Arc<Endpoint>)> {
        let eps = &self.endpoints;
        let fresh = |i: usize| i >= 64 || tried & (1 << i) == 0;
        let choose = |ok: &dyn Fn(usize) -> bool| -> Option<usize> {
            let n = eps.len();
            match (&self.balance, key) {
                (Balance::Hash(_), Some(k)) => balance::rendezvous(n, |i| eps[i].seed, k, ok),
                (Balance::LeastRequests, _) => {
                    balance::least_requests(n, ok, |i| eps[i].in_flight())
                }
                _ => {
                    // Only first tries move the cursor: if retries did too, a
                    // failing endpoint would come up for every other request.
                    let cursor = if tried == 0 {
                        self.pool.cursor.fetch_add(1, Ordering::Relaxed)
                    } else {
                        self.pool.cursor.load(Ordering::Relaxed)
                    };
                    balance::round_robin(n, cursor, ok)
                }
            }
        };
        let i = choose(&|i| fresh(i) && eps[i].health.available())
            .or_else(|| choose(&|i| eps[i].health.available()))?;
        Some((i, &eps[i]))
    }
}

/// Sends `req` (origin-form URI, hygiene already applied) to `endpoint` and
/// waits up to `timeout` for the response head.
pub async fn forward(
    upstream: &Upstream,
    endpoint: &Endpoint,
    req: Request<RequestBody>,
    timeout: Duration,
) -> Result<Response<Incoming>, Reject> {
    let (mut parts, body) = req.into_parts();
    // Moved, not cloned: cloning a fresh `Bytes` allocates.
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    let pool = &upstream.pool;
    uri.scheme = Some(pool.scheme());
    uri.authority = Some(endpoint.authority.clone());
    parts.uri = Uri::from_parts(uri).map_err(|_| Reject::BadRequest {
        reason: "the request target cannot be forwarded",
    })?;
    // HTTP/2 clients' requests go upstream as HTTP/1.1.
    parts.version = http::Version::HTTP_11;
    let req = Request::from_parts(parts, body);

    let result = {
        // A guard, not a pair of calls: the client may go away mid-await,
        // dropping this future, and the count must still come down.
        let _sending = InFlight::enter(&endpoint.in_flight);
        tokio::time::timeout(timeout, pool.send(req)).await
    };

    let metrics = &upstream.pool.metrics;
    match result {
        Ok(Ok(resp)) if !well_framed(&resp) => {
            // hyper may have read the whole answer and pooled the
            // connection already.
            if let Some(poison) = resp.extensions().get::<Poison>() {
                poison.poison();
            }
            metrics.error.increment(1);
            Err(Reject::BadGateway {
                upstream: upstream.name.clone(),
                cause: UpstreamFailure::Protocol,
            })
        }
        Ok(Ok(resp)) => {
            metrics.ok.increment(1);
            Ok(resp)
        }
        Ok(Err(e)) => {
            if let Some(client) = find_cause::<ClientBodyError>(&e) {
                // The client's fault, not the upstream's.
                return Err(client.reject());
            }
            metrics.error.increment(1);
            Err(Reject::BadGateway {
                upstream: upstream.name.clone(),
                cause: classify(&e),
            })
        }
        Err(_elapsed) => {
            metrics.timeout.increment(1);
            Err(Reject::UpstreamTimeout {
                upstream: upstream.name.clone(),
                timeout_ms: timeout.as_millis().try_into().unwrap_or(u64::MAX),
            })
        }
    }
}

/// What hyper's client lets through but the gateway must not pass on: a
/// 1xx final answer (a `101` nobody asked for: the gateway never forwards
/// `Upgrade`), or both `Transfer-Encoding` and `Content-Length`, which hyper
/// reads as chunked but the client would read by the length.
fn well_framed(resp: &Response<Incoming>) -> bool {
    let h = resp.headers();
    let both_lengths = h.contains_key(http::header::TRANSFER_ENCODING)
        && h.contains_key(http::header::CONTENT_LENGTH);
    !(resp.status().is_informational() || both_lengths)
}

/// What a try came to, for retries, the breaker and outlier detection;
/// `None` when the client, not the upstream, is at fault (its body).
pub fn outcome_of(result: &Result<Response<Incoming>, Reject>) -> Option<Outcome> {
    match result {
        Ok(resp) => Some(Outcome::Status(resp.status().as_u16())),
        Err(Reject::BadGateway { cause, .. }) => Some(match cause {
            UpstreamFailure::Connect | UpstreamFailure::ConnectTimeout => Outcome::ConnectError,
            UpstreamFailure::Reset | UpstreamFailure::Protocol => Outcome::Reset,
        }),
        Err(Reject::UpstreamTimeout { .. }) => Some(Outcome::Timeout),
        Err(_) => None,
    }
}

fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamFailure {
    if e.is_connect() {
        let timed_out = find_cause::<std::io::Error>(e)
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        return if timed_out {
            UpstreamFailure::ConnectTimeout
        } else {
            UpstreamFailure::Connect
        };
    }
    match find_cause::<hyper::Error>(e) {
        Some(h) if h.is_parse() || h.is_parse_status() => UpstreamFailure::Protocol,
        _ => UpstreamFailure::Reset,
    }
}

/// The first error of type `T` in `e`'s source chain.
fn find_cause<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}
