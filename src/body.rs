//! Body types on both sides of the gateway. Bodies stream frame by frame and
//! are never buffered whole, except a request body up to `retry.replay_buffer`
//! on an upstream with retries ([`Replay`]).
//!
//! - [`RequestBody`]: the client's body on its way upstream, cut at
//!   `max_body_bytes` while streaming (chunked bodies included).
//! - [`ResponseBody`]: what the client receives, either the upstream's body or
//!   a small body the gateway made; it counts bytes and, when the response is
//!   over (finished or abandoned), drops its [`Exchange`] which writes the
//!   access log line and the request metrics exactly once.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::Reject;
use crate::server::http1::H1Body;
use crate::telemetry::Exchange;
use crate::upstream::{SendError, UpstreamBody};

/// The client's request body failed on its way upstream: the client's
/// fault, never the upstream's (no breaker, retry or outlier counts it).
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// It grew past `max_body_bytes` while streaming.
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    /// Bad chunked framing, or the client closed mid-body.
    #[error("the request body is malformed or was cut off: {0}")]
    Broken(Box<dyn std::error::Error + Send + Sync>),
    /// No bytes of it for `body_read_timeout`.
    #[error("no request body bytes for {0:?}")]
    ReadTimeout(Duration),
}

impl ClientBodyError {
    /// What the client is told.
    pub fn reject(&self) -> Reject {
        match self {
            ClientBodyError::TooLarge { limit } => Reject::PayloadTooLarge { limit: *limit },
            ClientBodyError::Broken(_) => Reject::BadRequest {
                reason: "the request body is malformed or was cut off",
            },
            ClientBodyError::ReadTimeout(t) => Reject::RequestTimeout {
                timeout_ms: crate::clock::millis(*t),
            },
        }
    }
}

/// The client's request body as its server reads it: hyper's (HTTP/2, and
/// HTTP/1.1 with `server.http1: hyper`) or the native HTTP/1.1 server's.
pub enum ClientBody {
    Hyper(Incoming),
    Native(H1Body),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::Native(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::Native(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::Native(b) => b.size_hint(),
        }
    }
}

/// The client's request body, limited to `limit` bytes, each read waiting
/// at most `read_timeout`. It may start with bytes already read (a replayed
/// or partly buffered body).
pub struct RequestBody {
    /// Sent before anything from `inner`.
    prefix: Option<Bytes>,
    /// `None` once the limit was hit and the rest handed to [`linger`], or
    /// for a body held whole in `prefix`.
    inner: Option<ClientBody>,
    /// Trailers read while buffering, sent last.
    /// Boxed: rare, and inline it would make every request 88 bytes
    /// larger, copied at each step of the way upstream.
    trailers: Option<Box<HeaderMap>>,
    limit: u64,
    seen: u64,
    read_timeout: Duration,
    /// Armed when a read finds nothing to read; boxed, and made only then,
    /// because a body that arrives with its head never waits.
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl RequestBody {
    pub fn new(inner: ClientBody, limit: u64, read_timeout: Duration) -> Self {
        RequestBody {
            prefix: None,
            inner: Some(inner),
            trailers: None,
            limit,
            seen: 0,
            read_timeout,
            wait: None,
            waiting: false,
        }
    }

    /// No body (health checks).
    pub fn empty() -> Self {
        Self::whole(Bytes::new(), None)
    }

    fn whole(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        RequestBody {
            prefix: (!data.is_empty()).then_some(data),
            inner: None,
            trailers: trailers.map(Box::new),
            limit: u64::MAX,
            seen: 0,
            read_timeout: Duration::MAX,
            wait: None,
            waiting: false,
        }
    }

    /// Has the client sent nothing for `read_timeout` while this waits?
    fn read_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.waiting {
            let Some(deadline) = tokio::time::Instant::now().checked_add(self.read_timeout) else {
                return false;
            };
            match &mut self.wait {
                Some(wait) => wait.as_mut().reset(deadline),
                None => self.wait = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.waiting = true;
        }
        self.wait
            .as_mut()
            .is_some_and(|wait| std::future::Future::poll(wait.as_mut(), cx).is_ready())
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(*t))));
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if !matches!(polled, Poll::Pending) {
            this.waiting = false;
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        if let Some(rest) = this.inner.take() {
                            linger(rest);
                        }
                        return Poll::Ready(Some(Err(Box::new(ClientBodyError::TooLarge {
                            limit: this.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(Box::new(ClientBodyError::Broken(e)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if this.read_timed_out(cx) => {
                // The rest of the body is not wanted; the client connection
                // closes after the 408, as its framing is now unknown.
                this.inner = None;
                Poll::Ready(Some(Err(Box::new(ClientBodyError::ReadTimeout(
                    this.read_timeout,
                )))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none()
            && self.trailers.is_none()
            && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        match &self.inner {
            None => SizeHint::with_exact(prefix),
            Some(inner) => {
                let h = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(h.lower() + prefix);
                if let Some(upper) = h.upper() {
                    hint.set_upper(upper + prefix);
                }
                hint
            }
        }
    }
}

/// A request body read ahead so it can be sent more than once (retries).
pub enum Replay {
    /// The whole body, replayable.
    Whole(Bytes, Option<HeaderMap>),
    /// Too large to hold: what was read, then the rest; sent once.
    Streamed(Option<RequestBody>),
}

impl Replay {
    /// Reads `body` until its end or past `buffer` bytes. A body over its
    /// limit (`max_body_bytes`) is a 413, one the client breaks off a 400,
    /// one it stops sending a 408.
    pub async fn read(body: RequestBody, buffer: u64) -> Result<Replay, Reject> {
        let mut body = body;
        if body.is_end_stream() {
            return Ok(Replay::Whole(Bytes::new(), None));
        }
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut held = 0u64;
        while held <= buffer {
            match body.frame().await {
                None => {
                    return Ok(Replay::Whole(concat(chunks, held), None));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        held += data.len() as u64;
                        chunks.push(data);
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().ok();
                        return Ok(Replay::Whole(concat(chunks, held), trailers));
                    }
                },
                Some(Err(e)) => {
                    // Nothing is sent upstream (a truncated body would be worse).
                    return Err(match e.downcast::<ClientBodyError>() {
                        Ok(e) => e.reject(),
                        Err(_) => Reject::BadRequest {
                            reason: "the request body was cut off",
                        },
                    });
                }
            }
        }
        body.prefix = Some(concat(chunks, held));
        body.seen = held;
        Ok(Replay::Streamed(Some(body)))
    }

    /// Can the body be sent again after this try?
    pub fn replayable(&self) -> bool {
        matches!(self, Replay::Whole(..))
    }

    /// The body for the next try; `None` once a streamed body was sent.
    pub fn body_for_try(&mut self) -> Option<RequestBody> {
        match self {
            Replay::Whole(data, trailers) => {
                Some(RequestBody::whole(data.clone(), trailers.clone()))
            }
            Replay::Streamed(body) => body.take(),
        }
    }
}

fn concat(chunks: Vec<Bytes>, len: u64) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.into_iter().next().unwrap_or_default(),
        _ => {
            let mut out = bytes::BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
            for c in chunks {
                out.extend_from_slice(&c);
            }
            out.freeze()
        }
    }
}

/// How long, and how much, of an unwanted request body is read and thrown
/// away after the gateway answered early.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: u64 = 64 << 20;

/// Reads and discards what is left of a request body the gateway will not
/// forward (it answered 404, 413, ... before reading it), for a bounded time
/// and size. Closing a socket with unread data makes the kernel send a
/// reset, which can destroy the error response before the client reads it;
/// NGINX calls the same remedy "lingering close". The native HTTP/1.1
/// server does this itself after the response, on its own connection.
pub fn linger(body: ClientBody) {
    match body {
        ClientBody::Hyper(body) if !body.is_end_stream() => {
            tokio::spawn(drain(
                body,
                LINGER_BYTES,
                tokio::time::Instant::now() + LINGER_TIME,
            ));
        }
        _ => {}
    }
}

/// Reads `body` and drops what it reads, until it ends, fails, `limit`
/// bytes were read, or `deadline` passes.
pub async fn drain<B: Body + Unpin>(mut body: B, limit: u64, deadline: tokio::time::Instant) {
    let mut read = 0u64;
    while read < limit {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, |d| d.remaining() as u64);
            }
            _ => break,
        }
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner {
        Upstream { #[pin] body: UpstreamBody },
        Full { data: Option<Bytes> },
    }
}

pin_project_lite::pin_project! {
    /// The body sent to the client.
    pub struct ResponseBody {
        #[pin]
        inner: Inner,
        // Boxed: hyper moves the response several times on its way out.
        exchange: Option<Box<Exchange>>,
    }
}

impl ResponseBody {
    /// A body the gateway made itself.
    pub fn full(data: Bytes) -> Self {
        ResponseBody {
            inner: Inner::Full {
                data: (!data.is_empty()).then_some(data),
            },
            exchange: None,
        }
    }

    /// The upstream's body, streamed through.
    pub fn upstream(body: UpstreamBody) -> Self {
        ResponseBody {
            inner: Inner::Upstream { body },
            exchange: None,
        }
    }

    /// The request's bookkeeping, until the body ends.
    pub fn exchange(&self) -> Option<&Exchange> {
        self.exchange.as_deref()
    }

    /// Attaches the request's bookkeeping; it is finished when the body ends
    /// or is dropped.
    pub fn track(&mut self, mut exchange: Box<Exchange>) {
        // An empty body, or any body of a HEAD response, is never polled.
        exchange.completed = self.is_end_stream() || exchange.method == http::Method::HEAD;
        if !exchange.completed {
            // Until hyper first asks for the body: a client that reads
            // nothing (or an HTTP/2 window of 0) never lets it.
            if let Some(busy) = exchange.busy.as_mut() {
                busy.handed();
            }
        }
        self.exchange = Some(exchange);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = SendError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, SendError>>> {
        let mut this = self.project();
        let busy = this.exchange.as_mut().and_then(|ex| ex.busy.as_mut());
        if let Some(busy) = busy {
            busy.taken();
        }
        let polled = match this.inner.as_mut().project() {
            InnerProj::Upstream { body } => body.poll_frame(cx),
            InnerProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(ex)) = (frame.data_ref(), this.exchange.as_mut()) {
                    ex.bytes_out += data.len() as u64;
                }
                // With a known length hyper stops polling after the last
                // byte instead of waiting for the end of the stream.
                let ended = match this.inner.as_ref().get_ref() {
                    Inner::Upstream { body } => body.is_end_stream(),
                    Inner::Full { data } => data.is_none(),
                };
                if ended {
                    if let Some(mut ex) = this.exchange.take() {
                        ex.completed = true;
                    }
                } else if let Some(busy) = this.exchange.as_mut().and_then(|ex| ex.busy.as_mut()) {
                    // Until hyper asks again: a client that stops reading
                    // stops it asking (send_timeout).
                    busy.handed();
                }
            }
            Poll::Ready(None) => {
                if let Some(mut ex) = this.exchange.take() {
                    ex.completed = true;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(ex) = this.exchange.as_mut() {
                    ex.body_failed = true;
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream { body } => body.is_end_stream(),
            Inner::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream { body } => body.size_hint(),
            Inner::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
