//! Upstream connections: a lean HTTP/1.1 keep-alive pool over hyper's
//! client connections (`hyper::client::conn::http1`).
//!
//! Each [`Endpoint`] keeps its idle connections, newest last. A request
//! takes the newest one that is ready, or opens a new one (TCP, then TLS
//! for an HTTPS upstream, within `connect_timeout`). The connection comes
//! back with the end of the response body ([`UpstreamBody`]); a body that
//! is dropped early, fails, or is refused for its framing takes its
//! connection with it, so the next request never reads the rest of an
//! answer meant for another.
//!
//! Why not hyper-util's pooled `Client`: per request it builds a connect
//! future it rarely uses, hashes the authority under a lock, allocates the
//! response's extensions, and spawns a task to put the connection back. Here
//! a request costs one uncontended lock to take a connection and one to
//! give it back; a task is spawned only when the connection is not ready
//! at the end of the body (the upstream asked to close, or the request body
//! is still being written).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Endpoint;
use crate::body::RequestBody;
use crate::sync::lock;
use crate::tls::UpstreamTls;

/// Idle upstream connections are closed after this long: shorter than the
/// usual backend keep-alive (60s+), so we rarely reuse a connection the
/// backend is closing.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest upstream response head read (hyper's read buffer): beyond
/// it, or for a head that never ends, the answer is a 502. Eight times
/// NGINX's default `proxy_buffer_size`, a quarter of hyper's default.
pub const MAX_UPSTREAM_HEAD_BYTES: usize = 64 << 10;

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection: refused, unreachable, unresolvable, or the TLS
    /// handshake failed.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// TCP connect (and TLS handshake) took longer than `connect_timeout`.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The exchange failed on an open connection (reset, garbage, the
    /// client's body failing on its way: see the error's sources).
    #[error(transparent)]
    Exchange(hyper::Error),
}

/// How a pool opens connections.
enum Connector {
    Plain,
    Tls {
        tls: tokio_rustls::TlsConnector,
        /// `tls.sni`; else the endpoint's host.
        sni: Option<ServerName<'static>>,
    },
}

/// One upstream's connection settings and counters (long-lived; see the
/// module docs of `upstream`). The connections themselves are on the
/// endpoints, tagged with their pool's `id`: a pool replaced by a reload
/// (new TLS settings) never hands out its predecessor's connections.
pub struct Pool {
    id: u64,
    connector: Connector,
    http1: http1::Builder,
    pub connect_timeout: Duration,
    /// [`UpstreamTls::identity`] for HTTPS pools; a pool is reused across
    /// reloads only with the same TLS settings.
    pub tls_identity: Option<String>,
    /// Round-robin cursor.
    pub(super) cursor: std::sync::atomic::AtomicUsize,
    pub metrics: crate::telemetry::UpstreamMetrics,
}

impl Pool {
    pub fn new(
        connect_timeout: Duration,
        tls: Option<&UpstreamTls>,
        metrics: crate::telemetry::UpstreamMetrics,
    ) -> Pool {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let mut http1 = http1::Builder::new();
        http1.max_buf_size(MAX_UPSTREAM_HEAD_BYTES);
        Pool {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            connector: match tls {
                None => Connector::Plain,
                Some(t) => Connector::Tls {
                    tls: tokio_rustls::TlsConnector::from(t.client.clone()),
                    sni: t.sni.clone(),
                },
            },
            http1,
            connect_timeout,
            tls_identity: tls.map(|t| t.identity.clone()),
            cursor: std::sync::atomic::AtomicUsize::new(0),
            metrics,
        }
    }

    /// Sends `req` to `endpoint` on an idle connection, or a new one, and
    /// waits for the response head. The request goes in origin form, with
    /// the endpoint as `Host` when it has none.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        to_origin_form(req.uri_mut());
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, endpoint.host.clone());
        }
        let mut reused = true;
        loop {
            let mut sender = match endpoint.idle.take(self.id) {
                Some(sender) => sender,
                None => {
                    reused = false;
                    self.connect(endpoint).await?
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        sender,
                        endpoint: endpoint.clone(),
                        pool: self.id,
                    };
                    return Ok(resp.map(|body| UpstreamBody::new(body, lease)));
                }
                Err(mut e) => match e.take_message() {
                    // An idle connection the upstream closed before the
                    // request went out: nothing was sent, try a new one.
                    Some(back) if reused => req = back,
                    _ => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
    }

    /// A new connection to `endpoint`, its hyper task spawned.
    async fn connect(&self, endpoint: &Endpoint) -> Result<SendRequest<RequestBody>, SendError> {
        let connecting = async {
            let tcp = TcpStream::connect(&*endpoint.addr).await?;
            tcp.set_nodelay(true)?;
            match &self.connector {
                Connector::Plain => self.handshake(tcp).await,
                Connector::Tls { tls, sni } => {
                    let name = match sni {
                        Some(name) => name.clone(),
                        None => server_name(endpoint.authority.host())?,
                    };
                    let stream = tls.connect(name, tcp).await?;
                    self.handshake(stream).await
                }
            }
        };
        let sender = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(sender)) => sender,
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(SendError::ConnectTimeout)
            }
            Ok(Err(e)) => return Err(SendError::Connect(e)),
            Err(_elapsed) => return Err(SendError::ConnectTimeout),
        };
        self.metrics.connections.increment(1);
        Ok(sender)
    }

    async fn handshake<T>(&self, io: T) -> io::Result<SendRequest<RequestBody>>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = self
            .http1
            .handshake(TokioIo::new(io))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// The name verified in the endpoint's certificate: its host, an IP
/// address (brackets off) or a DNS name.
fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// `/path?query` from whatever form the client used (HTTP/2 and HTTP/1.1
/// absolute-form requests carry a scheme and authority).
fn to_origin_form(uri: &mut Uri) {
    if uri.scheme().is_none() && uri.authority().is_none() && uri.path_and_query().is_some() {
        return;
    }
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *uri = Uri::from(pq);
}

/// An endpoint's idle connections, newest last.
#[derive(Default)]
pub struct IdleConns(Mutex<VecDeque<IdleConn>>);

struct IdleConn {
    /// The [`Pool::id`] that opened it.
    pool: u64,
    sender: SendRequest<RequestBody>,
    since: Instant,
}

impl IdleConns {
    /// The newest ready connection of pool `pool`; closed ones, and those
    /// of a replaced pool, are dropped on the way.
    fn take(&self, pool: u64) -> Option<SendRequest<RequestBody>> {
        let mut idle = lock(&self.0);
        while let Some(conn) = idle.pop_back() {
            // Only ready connections are put back, and nothing else sends
            // on them: one that is not ready any more is closing.
            if conn.pool == pool && conn.sender.is_ready() {
                return Some(conn.sender);
            }
        }
        None
    }

    fn put(&self, pool: u64, sender: SendRequest<RequestBody>) {
        let now = Instant::now();
        let mut idle = lock(&self.0);
        expire(&mut idle, now);
        idle.push_back(IdleConn {
            pool,
            sender,
            since: now,
        });
    }

    /// Closes connections idle for [`IDLE_TIMEOUT`] (the periodic sweep,
    /// for endpoints no request reaches), and those already closed.
    pub fn sweep(&self) {
        let mut idle = lock(&self.0);
        expire(&mut idle, Instant::now());
        idle.retain(|c| !c.sender.is_closed());
    }

    /// How many connections are idle.
    pub fn len(&self) -> usize {
        lock(&self.0).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops the connections idle for longer than [`IDLE_TIMEOUT`]: the oldest
/// are at the front.
fn expire(idle: &mut VecDeque<IdleConn>, now: Instant) {
    while idle
        .front()
        .is_some_and(|c| now.saturating_duration_since(c.since) >= IDLE_TIMEOUT)
    {
        idle.pop_front();
    }
}

/// A connection lent to one response; back to its endpoint when the body
/// ends, closed when it is dropped.
struct Lease {
    sender: SendRequest<RequestBody>,
    endpoint: Arc<Endpoint>,
    pool: u64,
}

impl Lease {
    fn release(self) {
        if self.sender.is_ready() {
            self.endpoint.idle.put(self.pool, self.sender);
            return;
        }
        if self.sender.is_closed() {
            return;
        }
        // hyper's task has not finished the exchange (the upstream asked to
        // close, or the request body is still going out): put it back once
        // it has, if it stays open.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Lease {
            mut sender,
            endpoint,
            pool,
        } = self;
        runtime.spawn(async move {
            if sender.ready().await.is_ok() {
                endpoint.idle.put(pool, sender);
            }
        });
    }
}

pin_project_lite::pin_project! {
    /// An upstream's response body; its connection goes back to the pool
    /// when it ends.
    pub struct UpstreamBody {
        #[pin]
        body: Incoming,
        lease: Option<Lease>,
    }
}

impl UpstreamBody {
    fn new(body: Incoming, lease: Lease) -> UpstreamBody {
        if body.is_end_stream() {
            // No body (204, 304, an answer to HEAD, `Content-Length: 0`).
            lease.release();
            return UpstreamBody { body, lease: None };
        }
        UpstreamBody {
            body,
            lease: Some(lease),
        }
    }

    /// The connection is not used again (an answer refused for its
    /// framing): the rest of the stream may belong to it.
    pub fn discard_connection(&mut self) {
        self.lease = None;
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.body.as_mut().poll_frame(cx);
        let ended = match &polled {
            // With a known length the last data frame ends it: the client
            // side stops polling there.
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            Poll::Ready(None) => true,
            Poll::Ready(Some(Err(_))) => {
                *this.lease = None;
                false
            }
            Poll::Pending => false,
        };
        if ended {
            if let Some(lease) = this.lease.take() {
                lease.release();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_go_in_origin_form() {
        let mut u: Uri = "http://example.com:8080/a/b?x=1".parse().unwrap();
        to_origin_form(&mut u);
        assert_eq!(u, "/a/b?x=1");
        let mut u: Uri = "https://example.com".parse().unwrap();
        to_origin_form(&mut u);
        assert_eq!(u, "/");
        let mut u: Uri = "/kept?q".parse().unwrap();
        to_origin_form(&mut u);
        assert_eq!(u, "/kept?q");
    }

    #[test]
    fn server_names_from_hosts() {
        assert!(matches!(
            server_name("[::1]").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("users.internal").unwrap(),
            ServerName::DnsName(_)
        ));
    }
}
