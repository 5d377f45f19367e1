//! Listeners: the accept loop, the connection cap, HTTP/1.1 and HTTP/2
//! (prior knowledge) on one port, per-connection timeouts, and graceful
//! drain. Each request is handed to [`crate::pipeline::handle`]: by the
//! native HTTP/1.1 server ([`http1`], the default), or through one
//! `service_fn` by hyper (HTTP/2, which the native server hands over when
//! it sees the preface, and HTTP/1.1 with `server.http1: hyper`).
//!
//! Timeouts are watched per connection by [`ConnState`] rather than by
//! hyper's `header_read_timeout`, because hyper's also starts while an idle
//! keep-alive connection waits for its next request, which would make
//! `idle_timeout` meaningless for HTTP/1.1:
//! - `header_read_timeout`: from the first byte of a request head to the
//!   request reaching the gateway (slowloris guard); the connection is closed.
//! - `idle_timeout`: no request in flight and no bytes of a new one; the
//!   connection is shut down gracefully (HTTP/2 gets GOAWAY), and closed if
//!   that has not finished within `send_timeout` (a client that does not
//!   read the end of its last response).
//! - `send_timeout`: a response body handed data that the client has not
//!   taken for this long (it stopped reading: hyper's buffers and the HTTP/2
//!   send buffer are full); the connection is closed.
//!
//! The watchdog also closes an HTTP/2 connection whose client cancels most
//! of its streams before their response ends (rapid reset), and the accept
//! loop enforces `max_connections` and `max_connections_per_ip`. It is not
//! woken per request: it looks every quarter of the shortest timeout, so a
//! timeout fires between 1 and 1.25 times its length.

mod h1;
pub mod http1;
mod io;
pub mod listeners;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::{Counter, Gauge};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{sleep_until, Instant};

use crate::body::ClientBody;
use crate::clock::millis;
use crate::config::{Http1Server, Http2Config, ServerConfig};
use crate::proxy::ResponseFields;
use crate::telemetry::{
    CONNECTIONS_CUT_TOTAL, CONNECTIONS_REJECTED_TOTAL, CONNECTIONS_TOTAL, OPEN_CONNECTIONS,
};
use crate::tls::listener::ListenerTls;
use crate::{pipeline, Shared};

/// What a request knows of its connection.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's IP address as `X-Forwarded-For` carries it.
    pub peer_ip: http::HeaderValue,
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
    /// Requests (streams) begun, and those the client abandoned before
    /// their response ended.
    started: AtomicU32,
    cancelled: AtomicU32,
    /// `server.http2.max_cancelled_streams`.
    cancel_limit: u32,
    /// Response bodies that handed data to the connection and have not been
    /// asked for more yet, and when the oldest such wait began (ms).
    sending: AtomicU32,
    send_since: AtomicU64,
    /// Wakes the watchdog when the client cancelled too much.
    abusive: Notify,
}

impl ConnState {
    fn new(cancel_limit: u32) -> ConnState {
        ConnState {
            epoch: Instant::now(),
            active: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            started: AtomicU32::new(0),
            cancelled: AtomicU32::new(0),
            cancel_limit,
            sending: AtomicU32::new(0),
            send_since: AtomicU64::new(0),
            abusive: Notify::new(),
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
        self.started.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        Busy {
            state: self.clone(),
            sending: false,
        }
    }

    /// A response body handed data to the connection and waits to be asked
    /// for more.
    pub fn send_waiting(&self) {
        if self.sending.fetch_add(1, Ordering::Relaxed) == 0 {
            self.send_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// The connection took what a body handed it (or the body is gone).
    pub fn send_taken(&self) {
        if self.sending.fetch_sub(1, Ordering::Relaxed) > 1 {
            // Others still wait: the clock restarts, as the client reads.
            self.send_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// What the watchdog should do now, or when to look again.
    fn check(&self, t: &Timeouts) -> Watch {
        let now = self.now_ms();
        // A request head or a stalled response may begin at any moment
        // without waking the watchdog (that would cost a wake-up per
        // request): it looks again a quarter of the shortest timeout later,
        // so each timeout fires within 1.25 times its length.
        let soon = now + (t.header.min(t.idle).min(t.send) / 4).max(10);
        let at = |deadline: u64, due: Watch| {
            if now >= deadline {
                due
            } else {
                Watch::Later(deadline.min(soon))
            }
        };
        if self.active.load(Ordering::Relaxed) > 0 {
            if self.sending.load(Ordering::Relaxed) > 0 {
                return at(
                    self.send_since.load(Ordering::Relaxed) + t.send,
                    Watch::SendTimeout,
                );
            }
            return Watch::Later(soon);
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 {
            return at(head - 1 + t.header, Watch::HeaderTimeout);
        }
        at(
            self.idle_since.load(Ordering::Relaxed) + t.idle,
            Watch::Idle,
        )
    }
}

/// A connection's timeouts, in ms.
struct Timeouts {
    header: u64,
    idle: u64,
    send: u64,
}

enum Watch {
    Later(u64),
    HeaderTimeout,
    SendTimeout,
    Idle,
}

/// A request in flight on a connection.
pub struct Busy {
    state: Arc<ConnState>,
    /// Its response body handed data the connection has not taken yet.
    sending: bool,
}

impl Busy {
    /// The response body handed data to the connection; it waits to be
    /// asked for more.
    pub fn handed(&mut self) {
        if !self.sending {
            self.sending = true;
            self.state.send_waiting();
        }
    }

    /// The connection asked the response body for more.
    pub fn taken(&mut self) {
        if self.sending {
            self.sending = false;
            self.state.send_taken();
        }
    }

    /// The client abandoned this request before its response ended (HTTP/2
    /// reset, or a closed connection). Past the limit, when such requests
    /// are half of all, the connection is abusive.
    pub fn cancelled(&self) {
        let state = &self.state;
        let cancelled = state.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        if cancelled >= state.cancel_limit
            && u64::from(cancelled) * 2 >= u64::from(state.started.load(Ordering::Relaxed))
        {
            state.abusive.notify_one();
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.taken();
        if self.state.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.state
                .idle_since
                .store(self.state.now_ms(), Ordering::Relaxed);
        }
    }
}

/// Settings every connection of a listener uses (from the start-up config).
#[derive(Clone)]
pub struct ConnSettings {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections_per_ip: Option<usize>,
    pub http1: Http1Server,
    pub http2: Http2Config,
}

impl ConnSettings {
    pub fn from_config(s: &ServerConfig) -> ConnSettings {
        ConnSettings {
            header_read_timeout: s.header_read_timeout.0,
            idle_timeout: s.idle_timeout.0,
            send_timeout: s.send_timeout.0,
            max_header_bytes: usize::try_from(s.max_header_bytes.0).unwrap_or(usize::MAX),
            max_connections_per_ip: s.max_connections_per_ip,
            http1: s.http1,
            http2: s.http2.clone(),
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            header: millis(self.header_read_timeout),
            idle: millis(self.idle_timeout),
            send: millis(self.send_timeout),
        }
    }

    /// The HTTP/1.1 servers' own limit on a request head is a backstop at
    /// twice `max_header_bytes`, so heads between the two get the
    /// contract's 431 document from the pipeline, which measures them as
    /// the client sent them.
    fn head_backstop(&self) -> usize {
        (self.max_header_bytes * 2).max(8192)
    }

    fn max_headers(&self) -> usize {
        (self.max_header_bytes / 16).clamp(100, 4096)
    }

    fn http1_limits(&self) -> http1::Limits {
        http1::Limits {
            max_head_bytes: self.head_backstop(),
            max_headers: self.max_headers(),
            max_header_bytes: self.max_header_bytes as u64,
        }
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        let hyper_limit = self.head_backstop();
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(hyper_limit)
            .max_headers(self.max_headers());
        // Each HTTP/2 limit bounds what one connection can pin: streams ×
        // send buffer for responses, the connection window for uploads, the
        // header list (HPACK-decoded, CONTINUATION frames included) for heads.
        let h2 = &self.http2;
        let window = |s: crate::config::Size| u32::try_from(s.0).unwrap_or(u32::MAX);
        b.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(hyper_limit).unwrap_or(u32::MAX))
            .max_concurrent_streams(h2.max_concurrent_streams)
            .initial_stream_window_size(window(h2.initial_stream_window))
            .initial_connection_window_size(window(h2.initial_connection_window))
            .max_send_buf_size(usize::try_from(h2.max_send_buffer.0).unwrap_or(usize::MAX));
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
    /// By [`Refusal`].
    rejected: [Counter; 2],
    /// By [`Cut`].
    cut: [Counter; 4],
    open: Gauge,
}

impl ListenerMetrics {
    pub fn new(metrics: &crate::telemetry::Metrics, listener: &str) -> ListenerMetrics {
        let rejected = |reason| {
            metrics.counter(
                CONNECTIONS_REJECTED_TOTAL,
                &[("listener", listener), ("reason", reason)],
            )
        };
        let cut = |reason| {
            metrics.counter(
                CONNECTIONS_CUT_TOTAL,
                &[("listener", listener), ("reason", reason)],
            )
        };
        ListenerMetrics {
            accepted: metrics.counter(CONNECTIONS_TOTAL, &[("listener", listener)]),
            rejected: [
                rejected("max_connections"),
                rejected("max_connections_per_ip"),
            ],
            cut: [
                cut("header_read_timeout"),
                cut("send_timeout"),
                cut("rapid_reset"),
                cut("malformed_request"),
            ],
            open: metrics.gauge(OPEN_CONNECTIONS, &[("listener", listener)]),
        }
    }
}

/// Why the gateway closed a connection on a misbehaving client (the
/// `reason` label of `portcullis_connections_cut_total`).
#[derive(Clone, Copy)]
enum Cut {
    HeaderReadTimeout,
    SendTimeout,
    RapidReset,
    MalformedRequest,
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

/// Open client connections across all listeners, and per client address,
/// against the current `max_connections` and `max_connections_per_ip`
/// (counters rather than semaphores so a reload can change the caps).
/// Addresses are counted even with no per-address cap, so that setting one
/// by reload applies to the connections already open.
#[derive(Default)]
pub struct ConnCount(Arc<Counts>);

#[derive(Default)]
struct Counts {
    total: AtomicUsize,
    /// Only addresses with an open connection have an entry.
    per_ip: DashMap<IpAddr, usize>,
}

/// Which cap refused a connection (the `reason` label).
#[derive(Clone, Copy)]
enum Refusal {
    Total,
    PerIp,
}

/// One open connection's place under the caps.
pub struct ConnPermit {
    counts: Arc<Counts>,
    ip: IpAddr,
}

impl ConnCount {
    fn try_acquire(
        &self,
        ip: IpAddr,
        max: usize,
        max_per_ip: Option<usize>,
    ) -> Result<ConnPermit, Refusal> {
        let counts = &self.0;
        if counts.total.fetch_add(1, Ordering::Relaxed) >= max {
            counts.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Total);
        }
        {
            let mut open = counts.per_ip.entry(ip).or_insert(0);
            if max_per_ip.is_none_or(|cap| *open < cap) {
                *open += 1;
                return Ok(ConnPermit {
                    counts: counts.clone(),
                    ip,
                });
            }
        }
        counts.total.fetch_sub(1, Ordering::Relaxed);
        Err(Refusal::PerIp)
    }

    pub fn open(&self) -> usize {
        self.0.total.load(Ordering::Relaxed)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::Relaxed);
        self.counts.per_ip.remove_if_mut(&self.ip, |_, open| {
            *open = open.saturating_sub(1);
            *open == 0
        });
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
        let cap_per_ip = snap.conn.settings.max_connections_per_ip;
        let permit =
            match shared
                .conns
                .try_acquire(peer.ip(), snap.server.max_connections, cap_per_ip)
            {
                Ok(permit) => permit,
                Err(refusal) => {
                    // Over a cap: close at once; existing connections go on.
                    rt.metrics.rejected[refusal as usize].increment(1);
                    drop(stream);
                    continue;
                }
            };
        rt.metrics.accepted.increment(1);
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            peer,
            shared: shared.clone(),
            conn: snap.conn.clone(),
            drain: drain.clone(),
            _permit: permit,
            listener: rt.clone(),
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
    listener: Arc<ListenerRuntime>,
}

impl Connection {
    /// Serves HTTP/1.1 and HTTP/2 on `stream` (TCP or TLS) until it closes,
    /// times out, misbehaves, or drain shuts it down.
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
            listener,
        } = self;
        let settings = &rt.settings;
        let metrics = &listener.metrics;
        metrics.open.increment(1.0);
        let state = Arc::new(ConnState::new(settings.http2.max_cancelled_streams));
        let info = Arc::new(ConnInfo {
            peer,
            peer_ip: crate::proxy::ip_header(peer.ip()),
            proto,
            state: state.clone(),
            client_cert_subject,
        });
        let io = io::WatchedIo::new(stream, state.clone());
        let mut watch = Watchdog {
            state: state.clone(),
            t: settings.timeouts(),
            stop: drain.stop.clone(),
            next: state.epoch,
            shutdown_at: None,
        };
        let cut = match settings.http1 {
            Http1Server::Hyper => watch.hyper(&rt, io, &shared, &info).await,
            Http1Server::Native => {
                let native = http1::Native::new(io);
                let closing = native.closing();
                let limits = settings.http1_limits();
                let served = native.serve(&shared, &info, &limits);
                let ended = watch
                    .run(std::pin::pin!(served), |_| {
                        closing.store(true, Ordering::Relaxed)
                    })
                    .await;
                match ended {
                    Ok(http1::Ended::Closed) => None,
                    Ok(http1::Ended::Cut(cut)) | Err(cut) => Some(cut),
                    Ok(http1::Ended::Http2(io, read)) => {
                        watch.hyper(&rt, io.unread(read), &shared, &info).await
                    }
                }
            }
        };
        if let Some(cut) = cut {
            metrics.cut[cut as usize].increment(1);
            match cut {
                Cut::HeaderReadTimeout => {
                    tracing::debug!(%peer, "request head not received within header_read_timeout; closing")
                }
                Cut::SendTimeout => {
                    tracing::debug!(%peer, "client did not read its response within send_timeout; closing")
                }
                Cut::MalformedRequest => {
                    tracing::debug!(%peer, "request could not be parsed; answered 400 or 431 and closed")
                }
                Cut::RapidReset => tracing::warn!(
                    %peer,
                    listener = %listener.name,
                    started = state.started.load(Ordering::Relaxed),
                    cancelled = state.cancelled.load(Ordering::Relaxed),
                    "client cancelled most of its requests (HTTP/2 rapid reset?); connection closed"
                ),
            }
        }
        metrics.open.decrement(1.0);
        drop(drain.tracker);
    }
}

/// Watches one connection while it is served: its timeouts, drain, and
/// HTTP/2 rapid reset.
struct Watchdog {
    state: Arc<ConnState>,
    t: Timeouts,
    stop: watch::Receiver<bool>,
    next: Instant,
    /// When the graceful shutdown began (drain, or idle_timeout).
    shutdown_at: Option<Instant>,
}

impl Watchdog {
    /// Drives `conn` to its end, or until the client misbehaves (the
    /// [`Cut`]; `conn` is then dropped, which closes the connection).
    /// `shut_down` asks `conn` to finish what is in flight and close.
    async fn run<F: std::future::Future>(
        &mut self,
        mut conn: std::pin::Pin<&mut F>,
        mut shut_down: impl FnMut(std::pin::Pin<&mut F>),
    ) -> Result<F::Output, Cut> {
        let state = &self.state;
        loop {
            tokio::select! {
                served = conn.as_mut() => return Ok(served),
                _ = self.stop.wait_for(|s| *s), if self.shutdown_at.is_none() => {
                    shut_down(conn.as_mut());
                    self.shutdown_at = Some(Instant::now());
                }
                _ = state.abusive.notified() => return Err(Cut::RapidReset),
                _ = sleep_until(self.next) => match state.check(&self.t) {
                    Watch::Later(at) => self.next = state.epoch + Duration::from_millis(at),
                    Watch::HeaderTimeout => return Err(Cut::HeaderReadTimeout),
                    Watch::SendTimeout => return Err(Cut::SendTimeout),
                    Watch::Idle => {
                        let send = Duration::from_millis(self.t.send);
                        match self.shutdown_at {
                            None => {
                                shut_down(conn.as_mut());
                                self.shutdown_at = Some(Instant::now());
                                self.next = Instant::now() + send;
                            }
                            // Nothing in flight, yet not closed: the client
                            // does not take the end of its last response.
                            Some(at) if at.elapsed() >= send => return Err(Cut::SendTimeout),
                            Some(at) => self.next = at + send,
                        }
                    }
                },
            }
        }
    }

    /// Serves the connection with hyper (HTTP/2, or HTTP/1.1 with
    /// `server.http1: hyper`).
    async fn hyper<S>(
        &mut self,
        rt: &ConnRuntime,
        io: S,
        shared: &Arc<Shared>,
        info: &Arc<ConnInfo>,
    ) -> Option<Cut>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = shared.clone();
        let info = info.clone();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let shared = shared.clone();
            let info = info.clone();
            async move {
                let req = req.map(ClientBody::Hyper);
                let (mut parts, body) = pipeline::handle(&shared, &info, req).await.into_parts();
                // The native server writes these into the head itself.
                if let Some(exchange) = body.exchange() {
                    ResponseFields::new(exchange).insert(&mut parts.headers);
                }
                Ok::<_, Infallible>(http::Response::from_parts(parts, body))
            }
        });
        let conn = rt.builder.serve_connection(TokioIo::new(io), service);
        let served = self
            .run(std::pin::pin!(conn), |conn| conn.graceful_shutdown())
            .await;
        match served {
            // hyper answered 400 or 431 itself and closed.
            Ok(Err(e))
                if e.downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_parse) =>
            {
                Some(Cut::MalformedRequest)
            }
            Ok(_) => None,
            Err(cut) => Some(cut),
        }
    }
}
