//! Upstream connections: a lean HTTP/1.1 keep-alive pool, driven by the
//! request's own task through the codec in [`super::h1`].
//!
//! Each [`Endpoint`] keeps its idle connections, newest last. A request
//! takes the newest one that is still open, or opens a new one (TCP, then
//! TLS for an HTTPS upstream, within `connect_timeout`), writes its head
//! and body, and reads the response head. The connection travels with the
//! response body ([`UpstreamBody`]), which reads it, and comes back when the
//! body ends; a body that is dropped early, fails, or is refused for its
//! framing takes its connection with it, so the next request never reads
//! the rest of an answer meant for another.
//!
//! Why not hyper's client: it runs each connection as a task of its own,
//! so a request crosses to it through a channel, the response comes back
//! through a oneshot and its body through another channel, each a task
//! wake-up. Without them a proxied request costs a quarter fewer
//! instructions (`benches/instructions.sh`, see docs/benchmarks.md).
//!
//! The request body is written whole before the response is read: an
//! upstream that answers early (a 413 before reading an upload) and keeps
//! reading is served normally; one that stops reading without closing
//! holds the request until its `request_timeout`.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::h1::{self, ChunkedDecoder, Decoded, ProtoError, RequestFraming, ResponseFraming};
use super::write_behind::SharedWrite;
use super::{Endpoint, Outgoing, WriteBehind};
use crate::body::RequestBody;
use crate::sync::lock;
use crate::tls::UpstreamTls;

/// Idle upstream connections are closed after this long: shorter than the
/// usual backend keep-alive (60s+), so we rarely reuse a connection the
/// backend is closing.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest upstream response head read: beyond it, or for a head that
/// never ends, the answer is a 502. Eight times NGINX's default
/// `proxy_buffer_size`, a quarter of hyper's default.
pub const MAX_UPSTREAM_HEAD_BYTES: usize = 64 << 10;

/// Room made in a connection's read buffer when it runs low...
const READ_CHUNK: usize = 16 << 10;
/// ...below this.
const MIN_READ: usize = 2 << 10;
/// Request body bytes gathered before a write; larger data frames are
/// written as they come.
const WRITE_GATHER: usize = 16 << 10;

/// Why a request got no response head, or a response body broke.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection: refused, unreachable, unresolvable, or the TLS
    /// handshake failed.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// TCP connect (and TLS handshake) took longer than `connect_timeout`.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The upstream's answer broke HTTP/1.1 framing or syntax.
    #[error("invalid response: {0}")]
    Protocol(#[from] ProtoError),
    /// The connection failed mid-exchange: reset, or closed before the end
    /// of the answer.
    #[error("connection failed: {0}")]
    Io(io::Error),
    /// The client's body failed on its way (its cause says how).
    #[error("request body failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
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
    pub connect_timeout: Duration,
    /// [`UpstreamTls::identity`] for HTTPS pools; a pool is reused across
    /// reloads only with the same TLS settings.
    pub tls_identity: Option<String>,
    /// Round-robin cursor.
    pub(super) cursor: std::sync::atomic::AtomicUsize,
    pub metrics: crate::telemetry::UpstreamMetrics,
    /// The gateway's writer for request heads (one worker only).
    write_behind: Option<Arc<WriteBehind>>,
}

impl Pool {
    pub fn new(
        connect_timeout: Duration,
        tls: Option<&UpstreamTls>,
        metrics: crate::telemetry::UpstreamMetrics,
        write_behind: Option<Arc<WriteBehind>>,
    ) -> Pool {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Pool {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            connector: match tls {
                None => Connector::Plain,
                Some(t) => Connector::Tls {
                    tls: tokio_rustls::TlsConnector::from(t.client.clone()),
                    sni: t.sni.clone(),
                },
            },
            connect_timeout,
            tls_identity: tls.map(|t| t.identity.clone()),
            cursor: std::sync::atomic::AtomicUsize::new(0),
            metrics,
            write_behind,
        }
    }

    /// Sends `out` to `endpoint` on an idle connection, or a new one, and
    /// waits for the response head. The request goes in origin form, with
    /// the endpoint as `Host` when it has none.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        out: Outgoing<'_>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let Outgoing { mut req, forwarded } = out;
        to_origin_form(req.uri_mut());
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, endpoint.host.clone());
        }
        let (head, body) = req.into_parts();
        let framing = request_framing(&head.headers, &body);
        let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut body = Some(body);
        loop {
            let (mut conn, reused) = match endpoint.idle.take(self.id) {
                Some(conn) => (conn, true),
                // Boxed: a connect is rare under keep-alive, and inline its
                // state (1.3 KB with TLS) would be half of this future,
                // copied with every request's future as it is nested.
                None => (Box::pin(self.connect(endpoint)).await?, false),
            };
            conn.out.clear();
            h1::encode_head(
                &head.method,
                target,
                &head.headers,
                forwarded,
                framing,
                &mut conn.out,
            );
            let sent = match (framing, body.take()) {
                (RequestFraming::Empty, _) | (_, None) => {
                    let queue = self.write_behind.as_deref();
                    conn.send_head(queue).await.map_err(SendError::Io)
                }
                // Boxed: most requests have no body, and inline its state
                // would be copied along with every request's future.
                (_, Some(b)) => Box::pin(conn.write_body(b, framing)).await,
            };
            let answered = match sent {
                Ok(()) => conn.read_head(&head.method).await,
                Err(e) => Err(e),
            };
            match answered {
                Ok(h) => return Ok(UpstreamBody::response(h, conn, endpoint, self.id)),
                // A kept-alive connection the upstream closed or reset as the
                // request went out, before a complete answer head (possibly
                // after part of one): a bodiless request of a safe method is
                // sent again on a new connection.
                Err(SendError::Io(e))
                    if reused
                        && framing == RequestFraming::Empty
                        && safe(&head.method)
                        && closed_early(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A new connection to `endpoint`.
    async fn connect(&self, endpoint: &Endpoint) -> Result<Box<Conn>, SendError> {
        let connecting = async {
            let tcp = TcpStream::connect(&*endpoint.addr).await?;
            tcp.set_nodelay(true)?;
            match &self.connector {
                Connector::Plain => {
                    let (read, write) = tcp.into_split();
                    Ok::<Io, io::Error>(Io::Plain {
                        read,
                        write: SharedWrite(Arc::new(write)),
                    })
                }
                Connector::Tls { tls, sni } => {
                    let name = match sni {
                        Some(name) => name.clone(),
                        None => server_name(endpoint.authority.host())?,
                    };
                    Ok(Io::Tls(Box::new(tls.connect(name, tcp).await?)))
                }
            }
        };
        let io = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(SendError::ConnectTimeout)
            }
            Ok(Err(e)) => return Err(SendError::Connect(e)),
            Err(_elapsed) => return Err(SendError::ConnectTimeout),
        };
        self.metrics.connections.increment(1);
        Ok(Box::new(Conn {
            io,
            buf: BytesMut::new(),
            out: BytesMut::new(),
            spans: Vec::with_capacity(h1::MAX_HEADERS),
        }))
    }
}

/// How the request's body goes: as the client framed it when it gave a
/// length, chunked when it did not, nothing for a body that has ended.
fn request_framing(headers: &HeaderMap, body: &RequestBody) -> RequestFraming {
    if headers.contains_key(CONTENT_LENGTH) {
        if let Some(n) = body.size_hint().exact() {
            return RequestFraming::Length(n);
        }
    }
    if body.is_end_stream() {
        RequestFraming::Empty
    } else {
        RequestFraming::Chunked
    }
}

/// Methods a client may send again on its own (RFC 9110 §9.2.1).
fn safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The connection was found closed, not broken by what we sent.
fn closed_early(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// An upstream connection's stream.
enum Io {
    /// Split so that [`WriteBehind`] can write a queued head while the
    /// connection's task waits to read.
    Plain {
        read: OwnedReadHalf,
        write: SharedWrite,
    },
    /// Boxed: a TLS stream is large, and most upstreams are plain.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain { read, .. } => Pin::new(read).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain { write, .. } => Pin::new(write).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain { write, .. } => Pin::new(write).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain { write, .. } => Pin::new(write).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open upstream connection, with what was read from it and not used
/// yet, and the buffer a request head is written into. Always boxed: it
/// travels with each response, which hyper moves several times.
struct Conn {
    io: Io,
    buf: BytesMut,
    out: BytesMut,
    /// Scratch space for parsing response heads.
    spans: Vec<h1::Span>,
}

impl Conn {
    /// Sends a bodiless request's head (in `out`): queued to go out with
    /// the others of this scheduler pass when it can be, else written.
    async fn send_head(&mut self, queue: Option<&WriteBehind>) -> io::Result<()> {
        if let (Io::Plain { write, .. }, Some(queue)) = (&self.io, queue) {
            if queue.queue(write, &self.out) {
                self.out.clear();
                return Ok(());
            }
        }
        self.write_out().await
    }

    /// Writes `out` and empties it.
    async fn write_out(&mut self) -> io::Result<()> {
        self.io.write_all(&self.out).await?;
        self.out.clear();
        self.io.flush().await
    }

    /// Writes the head in `out`, then `body` in `framing`. Small frames are
    /// gathered behind the head; whatever is gathered goes out before
    /// waiting for the client.
    async fn write_body(
        &mut self,
        mut body: RequestBody,
        framing: RequestFraming,
    ) -> Result<(), SendError> {
        let chunked = framing == RequestFraming::Chunked;
        let mut sent = 0u64;
        let mut ended = false;
        loop {
            let polled = std::future::poll_fn(|cx| {
                Poll::Ready(match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(frame) => Some(frame),
                    Poll::Pending => None,
                })
            })
            .await;
            let frame = match polled {
                Some(frame) => frame,
                None => {
                    if !self.out.is_empty() {
                        self.write_out().await.map_err(SendError::Io)?;
                    }
                    std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            let frame = match frame {
                None => break,
                Some(Err(e)) => return Err(SendError::Body(e)),
                Some(Ok(frame)) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let (true, Ok(trailers)) = (chunked, frame.into_trailers()) {
                        h1::encode_last_chunk(Some(&trailers), &mut self.out);
                        ended = true;
                    }
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            if let RequestFraming::Length(n) = framing {
                if sent > n {
                    return Err(SendError::Body(
                        "the request body is longer than its Content-Length".into(),
                    ));
                }
            }
            if chunked {
                h1::encode_chunk_size(data.len(), &mut self.out);
            }
            if data.len() >= WRITE_GATHER {
                self.write_out().await.map_err(SendError::Io)?;
                self.io.write_all(&data).await.map_err(SendError::Io)?;
            } else {
                self.out.extend_from_slice(&data);
            }
            if chunked {
                self.out.extend_from_slice(b"\r\n");
            }
            if self.out.len() >= WRITE_GATHER {
                self.write_out().await.map_err(SendError::Io)?;
            }
        }
        if let RequestFraming::Length(n) = framing {
            if sent != n {
                return Err(SendError::Body(
                    "the request body is shorter than its Content-Length".into(),
                ));
            }
        }
        if chunked && !ended {
            h1::encode_last_chunk(None, &mut self.out);
        }
        self.write_out().await.map_err(SendError::Io)
    }

    /// Reads until a whole response head is in, and takes it out.
    async fn read_head(&mut self, method: &Method) -> Result<h1::Head, SendError> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = h1::parse_head(&mut self.buf, method, &mut self.spans)? {
                    return Ok(head);
                }
            }
            let n = std::future::poll_fn(|cx| self.poll_read_more(cx))
                .await
                .map_err(SendError::Io)?;
            if n == 0 {
                return Err(SendError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before a complete response head",
                )));
            }
        }
    }

    /// Reads more of the connection into `buf`, both for a response head
    /// and for its body; `Ok(0)` at its end. Room is made
    /// [`READ_CHUNK`] at a time when less than [`MIN_READ`] is left, so the
    /// buffer is not reallocated for every read.
    // Inlined: shared by the head and the body, it was left a call and
    // cost ~150 instructions a request (callgrind).
    #[inline]
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Whether an idle connection can carry a request: nothing unread, and
    /// the upstream has neither closed it nor sent anything unasked. One
    /// read attempt, without waiting; a syscall only when the socket was
    /// reported readable.
    fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
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
    conn: Box<Conn>,
    since: Instant,
}

impl IdleConns {
    /// The newest usable connection of pool `pool`; closed ones, and those
    /// of a replaced pool, are dropped on the way.
    fn take(&self, pool: u64) -> Option<Box<Conn>> {
        let mut idle = lock(&self.0);
        while let Some(mut c) = idle.pop_back() {
            if c.pool == pool && c.conn.is_usable() {
                return Some(c.conn);
            }
        }
        None
    }

    fn put(&self, pool: u64, conn: Box<Conn>) {
        let now = Instant::now();
        let mut idle = lock(&self.0);
        expire(&mut idle, now);
        idle.push_back(IdleConn {
            pool,
            conn,
            since: now,
        });
    }

    /// Closes connections idle for [`IDLE_TIMEOUT`] (the periodic sweep,
    /// for endpoints no request reaches), and those the upstream closed.
    pub fn sweep(&self) {
        let mut idle = lock(&self.0);
        expire(&mut idle, Instant::now());
        idle.retain_mut(|c| c.conn.is_usable());
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

/// Where a response body stands.
enum BodyState {
    Length(u64),
    /// Boxed: rare next to `Length`, and large.
    Chunked(Box<ChunkedDecoder>),
    UntilClose,
    Done,
}

/// An upstream's response body, read from its connection as the client
/// side asks for it. The connection goes back to its endpoint when the body
/// has ended cleanly and both sides keep it alive; otherwise it is closed.
pub struct UpstreamBody {
    state: BodyState,
    /// `None` once given back or dropped.
    conn: Option<Box<Conn>>,
    /// Where it goes back to, and whether it may.
    endpoint: Arc<Endpoint>,
    pool: u64,
    reusable: bool,
}

impl UpstreamBody {
    fn response(
        head: h1::Head,
        conn: Box<Conn>,
        endpoint: &Arc<Endpoint>,
        pool: u64,
    ) -> Response<UpstreamBody> {
        let state = match head.framing {
            ResponseFraming::Empty => BodyState::Done,
            ResponseFraming::Length(n) => BodyState::Length(n),
            ResponseFraming::Chunked => BodyState::Chunked(Box::default()),
            ResponseFraming::UntilClose => BodyState::UntilClose,
        };
        let mut body = UpstreamBody {
            state,
            conn: Some(conn),
            endpoint: endpoint.clone(),
            pool,
            reusable: head.keep_alive,
        };
        if matches!(body.state, BodyState::Done) {
            // No body (204, 304, an answer to HEAD, `Content-Length: 0`).
            body.finish();
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        resp
    }

    /// The body has ended: the connection goes back if it can carry
    /// another exchange (nothing read past this answer).
    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.buf.is_empty() {
                self.endpoint.idle.put(self.pool, conn);
            }
        }
    }

    /// Reads more of the connection into its buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, SendError>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let read = ready!(conn.poll_read_more(cx));
        Poll::Ready(read.map_err(SendError::Io))
    }

    fn fail(&mut self, e: SendError) -> Poll<Option<Result<Frame<Bytes>, SendError>>> {
        self.state = BodyState::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = SendError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, SendError>>> {
        let this = self.get_mut();
        loop {
            let buffered = this.conn.as_ref().map_or(0, |c| c.buf.len());
            match &mut this.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(left) if buffered > 0 => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buffered);
                    *left -= take as u64;
                    let ended = *left == 0;
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    let data = conn.buf.split_to(take).freeze();
                    if ended {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::Chunked(decoder) if buffered > 0 => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    match decoder.decode(&mut conn.buf) {
                        Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Decoded::Trailers(trailers)) => {
                            this.finish();
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(Decoded::End) => {
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Ok(Decoded::NeedMore) => {}
                        Err(e) => return this.fail(e.into()),
                    }
                }
                BodyState::UntilClose if buffered > 0 => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                _ => {}
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) if matches!(this.state, BodyState::UntilClose) => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail(SendError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed before the end of the response body",
                    )))
                }
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
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
