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
pub mod h1;
pub mod health;
pub mod outcome;
pub mod pool;
pub mod retry;
pub mod window;
mod write_behind;

pub use write_behind::WriteBehind;

use std::error::Error as StdError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderValue, Request, Response};
use tokio::time::Instant;

use crate::body::{ClientBodyError, RequestBody};
use crate::client_key::ClientKey;
use crate::config::HealthCheckConfig;
use crate::error::{Reject, UpstreamFailure};
use crate::proxy::Forwarded;
use breaker::{Breaker, BreakerPolicy};
use health::{Health, OutlierPolicy};
use outcome::Outcome;
use pool::IdleConns;
pub use pool::{Pool, SendError, UpstreamBody, MAX_UPSTREAM_HEAD_BYTES};
use retry::{RetryBudget, RetryPolicy};

/// A request on its way to an upstream: the client's, rewritten, and the
/// fields the gateway adds to its head itself (`None` for the gateway's own
/// requests, the health checks).
pub struct Outgoing<'a> {
    pub req: Request<RequestBody>,
    pub forwarded: Option<&'a Forwarded>,
}

/// One backend address of an upstream (long-lived).
pub struct Endpoint {
    /// As written in the config: `127.0.0.1:9101`.
    pub addr: Arc<str>,
    authority: Authority,
    /// `Host` for a request that has none (HTTP/1.0): the address.
    host: HeaderValue,
    /// Connections to it, ready for the next request.
    pub idle: IdleConns,
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
            host: HeaderValue::from_str(addr).unwrap_or(HeaderValue::from_static("localhost")),
            idle: IdleConns::default(),
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

/// Sends `out` (hygiene already applied) to `endpoint` and waits until
/// `deadline` for the response head; `timeout` (the time the try was
/// given) is for the 504's detail.
pub async fn forward(
    upstream: &Upstream,
    endpoint: &Arc<Endpoint>,
    mut out: Outgoing<'_>,
    deadline: Instant,
    timeout: Duration,
) -> Result<Response<UpstreamBody>, Reject> {
    // HTTP/2 clients' requests go upstream as HTTP/1.1.
    *out.req.version_mut() = http::Version::HTTP_11;
    let result = {
        // A guard, not a pair of calls: the client may go away mid-await,
        // dropping this future, and the count must still come down.
        let _sending = InFlight::enter(&endpoint.in_flight);
        // `timeout_at`: the caller has read the clock already (a read is
        // ~50 ns on this VM, and a request still reads it about nine times).
        tokio::time::timeout_at(deadline, upstream.pool.send(endpoint, out)).await
    };

    let metrics = &upstream.pool.metrics;
    match result {
        // A head that could be read two ways (both lengths, a 1xx final
        // answer) never gets here: the reader (`h1.rs`) refuses it as a
        // protocol error and drops its connection.
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

/// What a try came to, for retries, the breaker and outlier detection;
/// `None` when the client, not the upstream, is at fault (its body).
pub fn outcome_of<B>(result: &Result<Response<B>, Reject>) -> Option<Outcome> {
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

fn classify(e: &SendError) -> UpstreamFailure {
    match e {
        SendError::Connect(_) => UpstreamFailure::Connect,
        SendError::ConnectTimeout => UpstreamFailure::ConnectTimeout,
        SendError::Protocol(_) => UpstreamFailure::Protocol,
        SendError::Io(_) | SendError::Body(_) => UpstreamFailure::Reset,
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
