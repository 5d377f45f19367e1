//! The native HTTP/1.1 server: one client connection, request after
//! request, driven by its own task without a dispatcher.
//!
//! Why not hyper's: its HTTP/1.1 server was ~7.4k of the ~28k instructions
//! of a proxied request, and ~7.1k of the ~17.5k of a refusal (callgrind,
//! `benches/instructions.sh`), and it reallocated its read buffer for most
//! requests. This one reads a head into a buffer it keeps, parses it with
//! httparse ([`super::h1`]), awaits [`pipeline::handle`] in place, and
//! writes the head and the first body bytes in one write. hyper still
//! serves HTTP/2, and HTTP/1.1 too with `server.http1: hyper`.
//!
//! The connection's socket and buffers ([`Wire`]) sit behind a mutex shared
//! with the request body ([`H1Body`]), which reads them while the pipeline
//! forwards it; the two never read at once (the connection reads only when
//! no body is being read), so the lock is never contended.
//!
//! What a client gets, as from hyper: keep-alive (HTTP/1.0 with
//! `Connection: keep-alive`), pipelined requests answered in order,
//! `100 Continue` when the body is first read, no body for HEAD, 1xx, 204
//! and 304, chunked responses when the length is unknown (close-delimited
//! for HTTP/1.0), and a request cancelled when its client closes the
//! connection. What it gets beyond hyper: a malformed head is answered with
//! the contract's problem document (400 or 431) before the connection
//! closes.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::h1::{self, BodyFraming, HeadError, RequestHead, ResponseFraming};
use super::{ConnInfo, Cut};
use crate::body::{ClientBody, ResponseBody};
use crate::error::Reject;
use crate::proxy::ResponseFields;
use crate::sync::lock;
use crate::upstream::h1::{
    encode_chunk_size, encode_last_chunk, ChunkedDecoder, Decoded, ProtoError,
};
use crate::{pipeline, proxy, Shared};

/// Room made in the read buffer when it runs low...
const READ_CHUNK: usize = 8 << 10;
/// ...below this.
const MIN_READ: usize = 1 << 10;
/// Response bytes buffered for a client that has not taken them yet; past
/// this, the body is not asked for more until the client reads.
const MAX_BUFFERED: usize = 64 << 10;
/// After an early answer (a 404 before the body was read, a 413), the rest
/// of the body is read and dropped, this much at most, so the connection
/// can carry the next request; NGINX calls it lingering close. A body that
/// does not end in time closes the connection.
const LINGER_BYTES: u64 = 64 << 20;
const LINGER_TIME: Duration = Duration::from_secs(5);
/// The HTTP/2 connection preface a prior-knowledge (h2c) client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The connection's socket and buffers.
struct Wire<S> {
    io: S,
    read: BytesMut,
    write: BytesMut,
    body: BodyRead,
    /// Which request's body `body` is: a body handle that outlived its
    /// request reads nothing.
    seq: u64,
    /// A `100 Continue` is owed before the body's first read.
    continue_owed: bool,
    /// Scratch space for parsing heads.
    fields: Vec<h1::FieldSpan>,
}

/// Where the current request's body is.
enum BodyRead {
    /// Ended, or none.
    Done,
    /// This many bytes left.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Cut off or malformed: where the next request starts is unknown.
    Broken,
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the client closed the connection mid-body")]
    Closed,
    #[error("malformed chunked body: {0}")]
    Chunk(ProtoError),
    #[error("reading the body failed: {0}")]
    Io(io::Error),
}

/// What the shared connection offers a request body.
trait ReadBody: Send + Sync {
    fn poll_body(
        &self,
        seq: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>>;
}

/// A connection's [`Wire`], shared by its task and its request bodies.
struct Line<S> {
    wire: Mutex<Wire<S>>,
    /// See [`Native::closing`].
    closing: Arc<AtomicBool>,
}

/// The request body of a native HTTP/1.1 request.
pub struct H1Body {
    line: Option<Arc<dyn ReadBody>>,
    seq: u64,
    /// Left to read when the length is known.
    left: Option<u64>,
}

impl H1Body {
    fn empty() -> H1Body {
        H1Body {
            line: None,
            seq: 0,
            left: Some(0),
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(line) = &self.line else {
            return Poll::Ready(None);
        };
        let polled = ready!(line.poll_body(self.seq, cx));
        match &polled {
            Some(Ok(frame)) if frame.is_data() => {
                if let (Some(left), Some(data)) = (self.left, frame.data_ref()) {
                    self.left = Some(left.saturating_sub(data.len() as u64));
                }
                if self.left == Some(0) {
                    self.line = None;
                }
            }
            _ => self.line = None,
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.line.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> ReadBody for Line<S> {
    fn poll_body(
        &self,
        seq: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut wire = lock(&self.wire);
        let w = &mut *wire;
        if w.seq != seq {
            return Poll::Ready(Some(Err(BodyError::Closed)));
        }
        if let Err(e) = ready!(w.poll_continue(cx)) {
            w.body = BodyRead::Broken;
            return Poll::Ready(Some(Err(BodyError::Io(e))));
        }
        loop {
            match &mut w.body {
                BodyRead::Done => return Poll::Ready(None),
                BodyRead::Broken => return Poll::Ready(Some(Err(BodyError::Closed))),
                BodyRead::Length(left) => {
                    if !w.read.is_empty() {
                        let take = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(w.read.len());
                        *left -= take as u64;
                        if *left == 0 {
                            w.body = BodyRead::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(w.read.split_to(take).freeze()))));
                    }
                }
                BodyRead::Chunked(decoder) => match decoder.decode(&mut w.read) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(t)) => {
                        w.body = BodyRead::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::End) => {
                        w.body = BodyRead::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => {
                        w.body = BodyRead::Broken;
                        return Poll::Ready(Some(Err(BodyError::Chunk(e))));
                    }
                },
            }
            match ready!(w.poll_read_more(cx)) {
                Ok(0) => {
                    w.body = BodyRead::Broken;
                    return Poll::Ready(Some(Err(BodyError::Closed)));
                }
                Ok(_) => {}
                Err(e) => {
                    w.body = BodyRead::Broken;
                    return Poll::Ready(Some(Err(BodyError::Io(e))));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// Reads what the socket has into the read buffer. `Ok(0)`: the client
    /// closed its side.
    #[inline]
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < MIN_READ {
            self.read.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Sends the `100 Continue` the client waits for, if it is owed, through
    /// the write buffer (idle until the response): a response that comes
    /// while it is half written goes out after it, not into it.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.continue_owed {
            self.continue_owed = false;
            self.write
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        if self.write.is_empty() {
            return Poll::Ready(Ok(()));
        }
        self.poll_write_out(cx)
    }

    /// Writes all of the write buffer, then flushes.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.write.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write.advance(n);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Sends a response body: takes its frames into the write buffer while
    /// that holds less than [`MAX_BUFFERED`], and writes the buffer as the
    /// client takes it. So the head goes out with the first body bytes, a
    /// short body ends in the same write, and a body is only left waiting
    /// (`send_timeout` counts) while the client does not read.
    ///
    /// Called with the wire locked while it polls the response body. That
    /// body never reads this connection: the upstream client writes the
    /// request body whole before it reads the answer, and a body the
    /// pipeline did not finish is only dropped, not read, before this.
    fn poll_send_body(
        &mut self,
        body: &mut ResponseBody,
        out: &mut BodyOut,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            while !out.ended && self.write.len() < MAX_BUFFERED {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        out.encode(frame, &mut self.write);
                        if body.is_end_stream() {
                            out.finish(None, &mut self.write);
                        }
                    }
                    Poll::Ready(None) => out.finish(None, &mut self.write),
                    // The upstream's body broke: the client sees the
                    // response cut short (no last chunk, or fewer bytes
                    // than announced); what is buffered is dropped.
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(io::Error::other(e)));
                    }
                    Poll::Pending => break,
                }
            }
            if self.write.is_empty() {
                // Out to the socket (TLS buffers), then wait for the body.
                ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                return if out.ended {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write.advance(n);
        }
    }
}

/// A response body on its way out.
struct BodyOut {
    chunked: bool,
    /// Data bytes taken from the body.
    sent: u64,
    /// The body has ended (and its last chunk is buffered).
    ended: bool,
}

impl BodyOut {
    fn encode(&mut self, frame: Frame<Bytes>, buf: &mut BytesMut) {
        match frame.into_data() {
            Ok(data) if !data.is_empty() => {
                self.sent += data.len() as u64;
                if self.chunked {
                    encode_chunk_size(data.len(), buf);
                    buf.extend_from_slice(&data);
                    buf.extend_from_slice(b"\r\n");
                } else {
                    buf.extend_from_slice(&data);
                }
            }
            Ok(_) => {}
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    self.finish(Some(&trailers), buf);
                }
            }
        }
    }

    fn finish(&mut self, trailers: Option<&HeaderMap>, buf: &mut BytesMut) {
        if !self.ended && self.chunked {
            encode_last_chunk(trailers, buf);
        }
        self.ended = true;
    }
}

/// How a connection's requests are served (from the listener's settings).
pub(super) struct Limits {
    /// The backstop for a request head: past it, 431 and close. The exact
    /// `max_header_bytes` check is the pipeline's.
    pub max_head_bytes: usize,
    pub max_headers: usize,
    /// `max_header_bytes`, for the 431 document.
    pub max_header_bytes: u64,
}

/// How a native connection ended.
pub(super) enum Ended<S> {
    /// Closed (by either side, or after `Connection: close`).
    Closed,
    /// The client misbehaved; the connection is dropped.
    Cut(Cut),
    /// The client spoke HTTP/2 with prior knowledge: the socket, and the
    /// bytes already read from it, go to the HTTP/2 server.
    Http2(S, Bytes),
}

/// A native connection being served, as the connection's watchdog sees it.
pub(super) struct Native<S> {
    line: Arc<Line<S>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Native<S> {
    pub fn new(io: S) -> Native<S> {
        Native {
            line: Arc::new(Line {
                wire: Mutex::new(Wire {
                    io,
                    read: BytesMut::with_capacity(READ_CHUNK),
                    // Made by the first response.
                    write: BytesMut::new(),
                    body: BodyRead::Done,
                    seq: 0,
                    continue_owed: false,
                    fields: Vec::new(),
                }),
                closing: Arc::new(AtomicBool::new(false)),
            }),
        }
    }

    /// Set for a graceful shutdown (drain, `idle_timeout`): what is in
    /// flight is answered with `Connection: close`; an idle connection
    /// closes at once.
    pub fn closing(&self) -> Arc<AtomicBool> {
        self.line.closing.clone()
    }

    /// Serves requests until the connection ends. A client that opens
    /// with the HTTP/2 preface (prior knowledge, or ALPN `h2`) is handed
    /// back to be served by hyper.
    pub async fn serve(self, shared: &Shared, info: &ConnInfo, limits: &Limits) -> Ended<S> {
        let line = self.line;
        match poll_fn(|cx| line.poll_sniff(cx)).await {
            Ok(false) => {}
            Ok(true) => return line.into_http2(),
            Err(_) => return Ended::Closed,
        }
        let mut seq = 0u64;
        loop {
            let head = match poll_fn(|cx| line.poll_head(cx, limits)).await {
                Ok(Some(head)) => head,
                Ok(None) => return Ended::Closed,
                Err(e) => return line.refuse(shared, limits, e).await,
            };
            seq += 1;
            let method = head.method.clone();
            let version = head.version;
            let keep_alive = head.keep_alive;
            let req = line.request(head, seq);
            let resp = {
                let mut handled = pin!(pipeline::handle(shared, info, req));
                poll_fn(|cx| {
                    if let Poll::Ready(resp) = handled.as_mut().poll(cx) {
                        return Poll::Ready(Some(resp));
                    }
                    if line.poll_client_gone(cx, limits.max_head_bytes) {
                        // The request is cancelled, as with hyper: its
                        // upstream exchange is dropped with it.
                        return Poll::Ready(None);
                    }
                    Poll::Pending
                })
                .await
            };
            let Some(resp) = resp else {
                return Ended::Closed;
            };
            // A client still waiting for `100 Continue` sends no body after
            // a final answer: the connection cannot be read past it.
            let keep_alive = keep_alive && !line.continue_unsent();
            let keep = match line.respond(resp, &method, version, keep_alive).await {
                Ok(keep) => keep,
                Err(_) => return Ended::Closed,
            };
            // What the pipeline left of the request body is read and
            // dropped, so the next request starts where it should.
            if keep && !line.closing.load(Ordering::Relaxed) && line.finish_body().await {
                continue;
            }
            // Closing with unread bytes would make the kernel send a reset,
            // which can destroy the response before the client reads it:
            // the end goes out first, then what is left is read and dropped.
            line.close().await;
            line.finish_body().await;
            return Ended::Closed;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Line<S> {
    /// Reads until the first bytes tell HTTP/2's preface from an HTTP/1
    /// request line. `Ok(true)`: HTTP/2.
    fn poll_sniff(&self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut wire = lock(&self.wire);
        loop {
            let n = wire.read.len().min(H2_PREFACE.len());
            if wire.read[..n] != H2_PREFACE[..n] {
                return Poll::Ready(Ok(false));
            }
            if n == H2_PREFACE.len() {
                return Poll::Ready(Ok(true));
            }
            if self.closing.load(Ordering::Relaxed) && wire.read.is_empty() {
                return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
            }
            match ready!(wire.poll_read_more(cx)) {
                Ok(0) if wire.read.is_empty() => {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
                }
                // A few bytes, then the end: HTTP/1 will answer them.
                Ok(0) => return Poll::Ready(Ok(false)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn into_http2(self: Arc<Self>) -> Ended<S> {
        match Arc::try_unwrap(self) {
            Ok(line) => {
                let wire = line.wire.into_inner().unwrap_or_else(|e| e.into_inner());
                Ended::Http2(wire.io, wire.read.freeze())
            }
            // No request was made, so nothing else holds the line.
            Err(_) => Ended::Closed,
        }
    }

    /// The next request head. `Ok(None)`: the client closed between
    /// requests, or the connection is shutting down while idle.
    fn poll_head(
        &self,
        cx: &mut Context<'_>,
        limits: &Limits,
    ) -> Poll<Result<Option<RequestHead>, HeadError>> {
        let mut wire = lock(&self.wire);
        let wire = &mut *wire;
        loop {
            if !wire.read.is_empty() {
                let head = h1::parse_head(
                    &mut wire.read,
                    limits.max_head_bytes,
                    limits.max_headers,
                    &mut wire.fields,
                )?;
                if let Some(head) = head {
                    return Poll::Ready(Ok(Some(head)));
                }
            } else if self.closing.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(None));
            }
            match ready!(wire.poll_read_more(cx)) {
                Ok(0) if wire.read.iter().all(|b| matches!(b, b'\r' | b'\n')) => {
                    return Poll::Ready(Ok(None))
                }
                Ok(0) => {
                    return Poll::Ready(Err(HeadError::Malformed("the connection closed mid-head")))
                }
                Ok(_) => {}
                Err(_) => return Poll::Ready(Ok(None)),
            }
        }
    }

    /// The request for `head`, its body reading from this connection.
    fn request(self: &Arc<Self>, head: RequestHead, seq: u64) -> Request<ClientBody> {
        let body = match head.framing {
            BodyFraming::Empty => H1Body::empty(),
            framing => {
                let mut wire = lock(&self.wire);
                wire.seq = seq;
                wire.continue_owed = head.expect_continue;
                let left = match framing {
                    BodyFraming::Length(n) => {
                        wire.body = BodyRead::Length(n);
                        Some(n)
                    }
                    _ => {
                        wire.body = BodyRead::Chunked(ChunkedDecoder::default());
                        None
                    }
                };
                H1Body {
                    line: Some(self.clone() as Arc<dyn ReadBody>),
                    seq,
                    left,
                }
            }
        };
        let mut req = Request::new(ClientBody::Native(body));
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers;
        req
    }

    /// The body was never asked for, so its `100 Continue` never went out.
    fn continue_unsent(&self) -> bool {
        let wire = lock(&self.wire);
        !matches!(wire.body, BodyRead::Done) && wire.continue_owed
    }

    /// While a request is handled: has its client closed the connection?
    /// Reads ahead (pipelined requests) up to `cap` bytes to find out; a
    /// socket with nothing to read costs no syscall.
    fn poll_client_gone(&self, cx: &mut Context<'_>, cap: usize) -> bool {
        let mut wire = lock(&self.wire);
        // A body being read owns the reading.
        if !matches!(wire.body, BodyRead::Done) {
            return false;
        }
        while wire.read.len() < cap {
            match wire.poll_read_more(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return false,
            }
        }
        false
    }

    /// Writes `resp`. `Ok(keep)`: whether the connection may carry another
    /// request; `Err`: it failed mid-response and must close.
    async fn respond(
        &self,
        resp: Response<ResponseBody>,
        method: &Method,
        version: Version,
        keep_alive: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = resp.into_parts();
        let framing =
            ResponseFraming::choose(method, parts.status, body.size_hint().exact(), version);
        let keep_alive = keep_alive
            && framing != ResponseFraming::UntilClose
            && !self.closing.load(Ordering::Relaxed);
        let keep = {
            // Empty, or the end of a `100 Continue`, which goes first.
            let mut wire = lock(&self.wire);
            h1::encode_head(
                parts.status,
                &parts.headers,
                body.exchange().map(ResponseFields::new).as_ref(),
                framing,
                keep_alive,
                version,
                &mut wire.write,
            )
        };

        drop(parts);
        if framing == ResponseFraming::NoBody {
            drop(body);
            poll_fn(|cx| lock(&self.wire).poll_write_out(cx)).await?;
            return Ok(keep);
        }
        let mut out = BodyOut {
            chunked: framing == ResponseFraming::Chunked,
            sent: 0,
            ended: false,
        };
        poll_fn(|cx| lock(&self.wire).poll_send_body(&mut body, &mut out, cx)).await?;
        drop(body);
        let mut wire = lock(&self.wire);
        if wire.write.capacity() > MAX_BUFFERED {
            // Grown by a large body: an idle connection does not keep that.
            wire.write = BytesMut::new();
        }
        drop(wire);
        // A length that was not met leaves the client waiting for bytes
        // that will never come: close, so it sees the response cut short.
        Ok(match framing {
            ResponseFraming::Length(n) => keep && out.sent == n,
            _ => keep,
        })
    }

    /// Reads and drops what is left of the request body, within
    /// [`LINGER_BYTES`] and [`LINGER_TIME`]. `true`: the connection is at
    /// the start of the next request.
    async fn finish_body(&self) -> bool {
        let seq = {
            let wire = lock(&self.wire);
            match wire.body {
                BodyRead::Done => return true,
                BodyRead::Broken => return false,
                _ => {}
            }
            if wire.continue_owed {
                // The client waits for a `100 Continue` that will not come
                // and sends no body: close rather than read one.
                return false;
            }
            wire.seq
        };
        let drain = async {
            let mut read = 0u64;
            while read <= LINGER_BYTES {
                match poll_fn(|cx| self.poll_body(seq, cx)).await {
                    None => return true,
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
                    Some(Err(_)) => return false,
                }
            }
            false
        };
        tokio::time::timeout(LINGER_TIME, drain)
            .await
            .unwrap_or(false)
    }

    /// Ends the connection: TLS sends its close_notify, TCP its FIN.
    async fn close(&self) {
        let _ = poll_fn(|cx| Pin::new(&mut lock(&self.wire).io).poll_shutdown(cx)).await;
    }

    /// Answers a head that cannot be served with the contract's problem
    /// document, and closes.
    async fn refuse(&self, shared: &Shared, limits: &Limits, e: HeadError) -> Ended<S> {
        let reject = match e {
            HeadError::Malformed(reason) => Reject::BadRequest { reason },
            HeadError::TooLarge => Reject::HeadersTooLarge {
                limit: limits.max_header_bytes,
            },
        };
        shared
            .snapshot
            .load()
            .unrouted
            .rejected(reject.code_index());
        let id = proxy::request_id(&HeaderMap::new());
        let mut resp = reject.to_response(id.to_str().unwrap_or(""));
        resp.headers_mut().insert(proxy::X_REQUEST_ID.clone(), id);
        if self
            .respond(resp, &Method::GET, Version::HTTP_11, false)
            .await
            .is_ok()
        {
            self.close().await;
        }
        Ended::Cut(Cut::MalformedRequest)
    }
}
