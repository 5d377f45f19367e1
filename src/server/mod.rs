//! Listeners: the accept loop, the connection cap, HTTP/1.1 and HTTP/2
//! (prior knowledge) on one port, per-connection timeouts, and graceful
//! drain. Each request is handed to [`crate::pipeline::handle`] through one
//! `service_fn`.
//!
//! Timeouts are watched per connection by [`ConnState`] rather than by
//! hyper's `header_read_timeout`, because hyper's also starts while an idle
//! keep-alive connection waits for its next request, which would make
//! `idle_timeout` meaningless for HTTP/1.1:
//! - `header_read_timeout`: from the first byte of a request head to the
//!   request reaching the gateway (slowloris guard); the connection is closed.
//! - `idle_timeout`: no request in flight and no bytes of a new one; the
//!   connection is shut down gracefully (HTTP/2 gets GOAWAY).

mod io;
pub mod listeners;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::{Counter, Gauge};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use crate::clock::millis;
use crate::config::ServerConfig;
use crate::telemetry::{CONNECTIONS_REJECTED_TOTAL, CONNECTIONS_TOTAL, OPEN_CONNECTIONS};
use crate::tls::listener::ListenerTls;
use crate::{pipeline, Shared};

/// What a request knows of its connection.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `X-Forwarded-Proto` for requests on this listener.
    pub proto: &'static str,
    pub state: Arc<ConnState>,
    /// The verified client certificate's subject (mTLS listeners only).
    pub client_cert_subject: Option<http::HeaderValue>,
}

/// Activity of one connection, shared by its reader and its requests.
pub struct ConnState {
    epoch: Instant,
    /// Requests whose response is not finished.
    active: AtomicU32,
    /// When `active` last dropped to 0 (ms since `epoch`).
    idle_since: AtomicU64,
    /// When bytes of a new request head began to arrive while idle (ms since
    /// `epoch`, +1 so that 0 means "none").
    head_since: AtomicU64,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            epoch: Instant::now(),
            active: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch
            .elapsed()
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// Called on every read that returned bytes.
    fn on_read(&self) {
        if self.active.load(Ordering::Relaxed) == 0 && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// Marks the connection busy until the returned guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// What the watchdog should do now, or when to look again.
    fn check(&self, header_timeout: u64, idle_timeout: u64) -> Watch {
        let now = self.now_ms();
        if self.active.load(Ordering::Relaxed) > 0 {
            return Watch::Later(now + idle_timeout.min(header_timeout));
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 {
            let deadline = head - 1 + header_timeout;
            return if now >= deadline {
                Watch::HeaderTimeout
            } else {
                Watch::Later(deadline)
            };
        }
        let deadline = self.idle_since.load(Ordering::Relaxed) + idle_timeout;
        if now >= deadline {
            Watch::Idle
        } else {
            Watch::Later(deadline)
        }
    }
}

enum Watch {
    Later(u64),
    HeaderTimeout,
    Idle,
}

/// A request in flight on a connection.
pub struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle_since.store(self.0.now_ms(), Ordering::Relaxed);
        }
    }
}

/// Settings every connection of a listener uses (from the start-up config).
#[derive(Clone)]
pub struct ConnSettings {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
}

impl ConnSettings {
    pub fn from_config(s: &ServerConfig) -> ConnSettings {
        ConnSettings {
            header_read_timeout: s.header_read_timeout.0,
            idle_timeout: s.idle_timeout.0,
            max_header_bytes: usize::try_from(s.max_header_bytes.0).unwrap_or(usize::MAX),
        }
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        // Hyper's own limit is a backstop at twice ours, so requests between
        // the two get the contract's 431 document from the pipeline.
        let hyper_limit = (self.max_header_bytes * 2).max(8192);
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(hyper_limit)
            .max_headers((self.max_header_bytes / 16).clamp(100, 4096));
        b.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(hyper_limit).unwrap_or(u32::MAX))
            .max_concurrent_streams(256);
        b
    }
}

/// Drain signalling for one listener's accept loop and connections.
#[derive(Clone)]
pub struct Drain {
    /// Flips to true when the listener must stop accepting and its
    /// connections shut down gracefully (process drain, or the listener was
    /// removed by a reload).
    pub stop: watch::Receiver<bool>,
    /// Every connection task holds a clone; when all are gone, drain is done.
    pub tracker: mpsc::Sender<()>,
}

/// Per-listener connection metrics.
pub struct ListenerMetrics {
    accepted: Counter,
    rejected: Counter,
    open: Gauge,
}

impl ListenerMetrics {
    pub fn new(metrics: &crate::telemetry::Metrics, listener: &str) -> ListenerMetrics {
        ListenerMetrics {
            accepted: metrics.counter(CONNECTIONS_TOTAL, &[("listener", listener)]),
            rejected: metrics.counter(CONNECTIONS_REJECTED_TOTAL, &[("listener", listener)]),
            open: metrics.gauge(OPEN_CONNECTIONS, &[("listener", listener)]),
        }
    }
}

/// What a listener's accept loop reads for each new connection; a reload
/// swaps it (name, TLS) without touching the socket or open connections.
pub struct ListenerRuntime {
    pub name: Arc<str>,
    pub tls: Option<Arc<ListenerTls>>,
    pub metrics: ListenerMetrics,
}

/// The connection settings of one config generation, with the hyper
/// builder made from them (held by the snapshot; new connections use the
/// current one).
pub struct ConnRuntime {
    pub settings: ConnSettings,
    builder: Arc<auto::Builder<TokioExecutor>>,
}

impl ConnRuntime {
    pub fn new(settings: ConnSettings) -> ConnRuntime {
        let builder = Arc::new(settings.builder());
        ConnRuntime { settings, builder }
    }
}

/// Open client connections across all listeners, against the current
/// `max_connections` (a counter rather than a semaphore so a reload can
/// change the cap).
#[derive(Default)]
pub struct ConnCount(Arc<AtomicUsize>);

/// One open connection's place under the cap.
pub struct ConnPermit(Arc<AtomicUsize>);

impl ConnCount {
    fn try_acquire(&self, max: usize) -> Option<ConnPermit> {
        if self.0.fetch_add(1, Ordering::Relaxed) >= max {
            self.0.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ConnPermit(self.0.clone()))
    }

    pub fn open(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections on `listener` until its drain signal.
pub async fn serve(
    listener: TcpListener,
    runtime: Arc<ArcSwap<ListenerRuntime>>,
    shared: Arc<Shared>,
    drain: Drain,
) {
    let mut stop = drain.stop.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        let rt = runtime.load_full();
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %rt.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let snap = shared.snapshot.load();
        let Some(permit) = shared.conns.try_acquire(snap.server.max_connections) else {
            // Over max_connections: close at once; existing connections go on.
            rt.metrics.rejected.increment(1);
            drop(stream);
            continue;
        };
        rt.metrics.accepted.increment(1);
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            peer,
            shared: shared.clone(),
            conn: snap.conn.clone(),
            drain: drain.clone(),
            _permit: permit,
            open: rt.metrics.open.clone(),
        };
        drop(snap);
        match &rt.tls {
            None => {
                tokio::spawn(conn.serve(stream, "http", None));
            }
            Some(tls) => {
                let tls = tls.clone();
                tokio::spawn(async move {
                    // The connection counts against max_connections (and
                    // holds up drain) from accept, handshake included.
                    if let Some((stream, info)) = tls.handshake(stream, peer).await {
                        conn.serve(stream, "https", info.client_subject).await;
                    }
                });
            }
        }
    }
    tracing::info!(listener = %runtime.load().name, "listener stopped accepting");
}

/// An accepted connection, before its HTTP serving starts.
struct Connection {
    peer: SocketAddr,
    shared: Arc<Shared>,
    conn: Arc<ConnRuntime>,
    drain: Drain,
    _permit: ConnPermit,
    open: Gauge,
}

impl Connection {
    /// Serves HTTP/1.1 and HTTP/2 on `stream` (TCP or TLS) until it closes,
    /// times out, or drain shuts it down.
    async fn serve<S>(
        self,
        stream: S,
        proto: &'static str,
        client_cert_subject: Option<http::HeaderValue>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            peer,
            shared,
            conn: rt,
            drain,
            _permit,
            open,
        } = self;
        let settings = &rt.settings;
        open.increment(1.0);
        let state = Arc::new(ConnState::new());
        let info = Arc::new(ConnInfo {
            peer,
            proto,
            state: state.clone(),
            client_cert_subject,
        });
        let service = service_fn(move |req| {
            let shared = shared.clone();
            let info = info.clone();
            async move { Ok::<_, Infallible>(pipeline::handle(&shared, &info, req).await) }
        });
        let io = TokioIo::new(io::WatchedIo::new(stream, state.clone()));
        let conn = rt.builder.serve_connection(io, service);
        let mut conn = std::pin::pin!(conn);
        let mut stop = drain.stop.clone();
        let header_ms = millis(settings.header_read_timeout);
        let idle_ms = millis(settings.idle_timeout);
        let mut next = state.epoch + Duration::from_millis(header_ms.min(idle_ms));
        let mut shutting_down = false;
        loop {
            tokio::select! {
                _ = conn.as_mut() => break,
                _ = stop.wait_for(|s| *s), if !shutting_down => {
                    conn.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
                _ = sleep_until(next), if !shutting_down => {
                    match state.check(header_ms, idle_ms) {
                        Watch::Later(at) => next = state.epoch + Duration::from_millis(at),
                        Watch::HeaderTimeout => {
                            tracing::debug!(%peer, "request head not received within header_read_timeout; closing");
                            break;
                        }
                        Watch::Idle => {
                            conn.as_mut().graceful_shutdown();
                            shutting_down = true;
                        }
                    }
                }
            }
        }
        open.decrement(1.0);
        drop(drain.tracker);
    }
}
