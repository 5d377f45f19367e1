//! HTTP/1.1 towards upstreams, without a connection task: the codec.
//!
//! hyper's client runs each connection as its own task: a request crosses
//! to it through a channel, the response comes back through a oneshot, and
//! the response body through another channel. That is several task wake-ups
//! per request. A prototype that wrote the request and read the answer from
//! the request's own task cost 24% fewer instructions per proxied request
//! (callgrind, `benches/instructions.sh`). This module is the part of that
//! client that is pure byte work, so it can be tested without sockets:
//!
//! - [`encode_head`]: the request line and headers, with the gateway's own
//!   framing (`Content-Length` or `Transfer-Encoding: chunked`);
//! - [`parse_head`]: a response head, and how its body is framed
//!   (RFC 9112 §6.3), refusing what could desynchronise the connection;
//! - [`ChunkedDecoder`]: a chunked body, trailers included.
//!
//! Everything an upstream sends is bounded: the head by
//! [`super::MAX_UPSTREAM_HEAD_BYTES`], a chunk-size line by
//! [`MAX_CHUNK_LINE`], trailers by [`MAX_TRAILER_BYTES`].

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use super::pool::MAX_UPSTREAM_HEAD_BYTES;
use crate::proxy::Forwarded;

/// Response header fields read at most (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// A chunk-size line, extensions included.
pub const MAX_CHUNK_LINE: usize = 4096;
/// All trailer fields of one body together.
pub const MAX_TRAILER_BYTES: usize = 16 << 10;

/// What an upstream sent that the gateway will not relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_UPSTREAM_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid header field")]
    Header,
    #[error("both Content-Length and Transfer-Encoding")]
    BothLengths,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingInHttp10,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("unexpected 101 Switching Protocols")]
    Upgrade,
    #[error("invalid chunk")]
    Chunk,
    #[error("trailers larger than {MAX_TRAILER_BYTES} bytes")]
    TrailersTooLarge,
}

/// How a request body goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body and no framing header.
    Empty,
    /// `Content-Length: n`, exactly `n` bytes follow.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Writes the request line and header fields, then the gateway's own
/// (`forwarded`). The client's own `Content-Length` and
/// `Transfer-Encoding` are not copied: `framing` (decided from the body) is
/// written instead, so the bytes that follow always match what the head
/// announces.
pub fn encode_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    forwarded: Option<&Forwarded>,
    framing: RequestFraming,
    out: &mut BytesMut,
) {
    // The gateway's fields are ~200 bytes (`Forwarded::write`).
    out.reserve(256 + target.len() + headers.len() * 32);
    out.extend_from_slice(method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name != CONTENT_LENGTH && name != TRANSFER_ENCODING {
            encode_field(name, value, out);
        }
    }
    if let Some(f) = forwarded {
        f.write(out);
    }
    match framing {
        RequestFraming::Empty => {}
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// The line before a chunk of `len` bytes (`len` > 0) of a chunked body.
pub fn encode_chunk_size(len: usize, out: &mut BytesMut) {
    use std::fmt::Write as _;
    // Writing to a BytesMut cannot fail: it grows.
    let _ = write!(out, "{len:x}\r\n");
}

/// The end of a chunked body: the last chunk, any trailer fields, the
/// empty line.
pub fn encode_last_chunk(trailers: Option<&HeaderMap>, out: &mut BytesMut) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        encode_field(name, value, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// `name: value` and its CRLF.
fn encode_field(name: &HeaderName, value: &HeaderValue, out: &mut BytesMut) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body (an answer to HEAD, 204, 304, `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes: the connection cannot be reused.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: ResponseFraming,
    /// The connection may carry another request after this exchange.
    pub keep_alive: bool,
}

/// Parses one response head from the front of `buf`, taking its bytes out.
/// `Ok(None)`: incomplete, read more. Informational answers (100, 103) are
/// consumed and skipped: hyper's client does the same.
/// `spans` is scratch space, kept by the caller so that it is not made
/// (and zeroed) for every head.
pub fn parse_head(
    buf: &mut BytesMut,
    request_method: &Method,
    spans: &mut Vec<Span>,
) -> Result<Option<Head>, ProtoError> {
    loop {
        let Some((len, status, version)) = parse_spans(buf, spans)? else {
            if buf.len() >= MAX_UPSTREAM_HEAD_BYTES {
                return Err(ProtoError::HeadTooLarge);
            }
            return Ok(None);
        };
        // However the bytes arrived: one read may complete a long head.
        if len > MAX_UPSTREAM_HEAD_BYTES {
            return Err(ProtoError::HeadTooLarge);
        }
        let bytes = buf.split_to(len).freeze();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ProtoError::Upgrade);
        }
        if status.is_informational() {
            continue;
        }
        // Room for the fields the gateway adds on the way to the client
        // (request id, upstream name, RateLimit), so the map is not grown.
        let mut headers = HeaderMap::with_capacity(spans.len() + 4);
        let mut signals = Signals::default();
        for span in spans.iter() {
            let name = HeaderName::from_bytes(&bytes[span.name.0..span.name.1])
                .map_err(|_| ProtoError::Header)?;
            let value = HeaderValue::from_maybe_shared(bytes.slice(span.value.0..span.value.1))
                .map_err(|_| ProtoError::Header)?;
            signals.see(&name, value.as_bytes());
            headers.append(name, value);
        }
        let framing = signals.response_framing(status, version, request_method)?;
        let keep_alive = framing != ResponseFraming::UntilClose && signals.persistent(version);
        return Ok(Some(Head {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// Where a header field's name and value are in the head's bytes, so the
/// buffer can be split and frozen after parsing.
#[derive(Clone, Copy, Default)]
pub struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

/// httparse over `buf`: the head's length, status and version; where its
/// fields are goes to `spans`.
fn parse_spans(
    buf: &[u8],
    spans: &mut Vec<Span>,
) -> Result<Option<(usize, StatusCode, Version)>, ProtoError> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ProtoError::Head(e)),
    };
    let code = resp.code.ok_or(ProtoError::Head(httparse::Error::Status))?;
    let status =
        StatusCode::from_u16(code).map_err(|_| ProtoError::Head(httparse::Error::Status))?;
    let version = match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    spans.clear();
    spans.extend(resp.headers.iter().map(|h| Span {
        name: offset(h.name.as_bytes()),
        value: offset(h.value),
    }));
    Ok(Some((len, status, version)))
}

/// Without the spaces and tabs around it (OWS).
pub(crate) fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &s[start..end]
}

/// What a head's framing and connection fields say, gathered as its
/// fields are read (looking them up afterwards costs a hash per name).
#[derive(Default)]
pub(crate) struct Signals {
    /// `Transfer-Encoding` codings seen, and whether one was not `chunked`.
    pub codings: usize,
    pub other_coding: bool,
    /// The last coding is `chunked`.
    pub last_chunked: bool,
    /// The `Content-Length`, or why it is invalid.
    pub length: Option<Result<u64, &'static str>>,
    /// `Connection` tokens (see [`Self::persistent`]).
    close: bool,
    keep_alive: bool,
    pub expect_continue: bool,
}

impl Signals {
    /// RFC 9112 §6.3, for a response: what delimits its body.
    fn response_framing(
        &self,
        status: StatusCode,
        version: Version,
        request_method: &Method,
    ) -> Result<ResponseFraming, ProtoError> {
        if request_method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(ResponseFraming::Empty);
        }
        if self.codings > 0 {
            // Both: a smuggling attempt or a broken upstream (RFC 9112 §6.3
            // allows TE to win; a gateway should not relay it).
            if self.length.is_some() {
                return Err(ProtoError::BothLengths);
            }
            // 1.0 has no transfer codings: an old intermediary would read
            // the chunk framing as the body (hyper refuses it too).
            if version == Version::HTTP_10 {
                return Err(ProtoError::TransferEncodingInHttp10);
            }
            // Another final coding: the body runs until the close.
            return Ok(if self.last_chunked {
                ResponseFraming::Chunked
            } else {
                ResponseFraming::UntilClose
            });
        }
        // `Content-Length: 5, 5` and repeated equal fields are one length;
        // anything else is refused.
        Ok(match self.length {
            None => ResponseFraming::UntilClose,
            Some(Ok(0)) => ResponseFraming::Empty,
            Some(Ok(n)) => ResponseFraming::Length(n),
            Some(Err(_)) => return Err(ProtoError::ContentLength),
        })
    }

    /// HTTP/1.1 stays open unless `Connection: close`; 1.0 only with
    /// `Connection: keep-alive`.
    pub fn persistent(&self, version: Version) -> bool {
        if version == Version::HTTP_10 {
            self.keep_alive
        } else {
            !self.close
        }
    }

    /// Notes what the field `name: value` says about framing and the
    /// connection.
    pub fn see(&mut self, name: &HeaderName, value: &[u8]) {
        let list = || value.split(|&b| b == b',').map(trim);
        if *name == TRANSFER_ENCODING {
            let before = self.codings;
            for coding in list().filter(|c| !c.is_empty()) {
                self.codings += 1;
                self.last_chunked = coding.eq_ignore_ascii_case(b"chunked");
                self.other_coding |= !self.last_chunked;
            }
            if self.codings == before {
                // An empty field names no coding the gateway knows.
                self.codings += 1;
                self.other_coding = true;
                self.last_chunked = false;
            }
        } else if *name == CONTENT_LENGTH {
            for part in list() {
                let n = parse_decimal(part).ok_or("invalid Content-Length");
                self.length = Some(match (self.length, n) {
                    (Some(Err(e)), _) | (_, Err(e)) => Err(e),
                    (Some(Ok(l)), Ok(n)) if l != n => Err("Content-Length values differ"),
                    (_, Ok(n)) => Ok(n),
                });
            }
        } else if *name == CONNECTION {
            for token in list() {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if *name == EXPECT {
            self.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }
}

/// Digits only (no sign, no spaces), at most 19 of them: no overflow.
pub(crate) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// What a step of the chunked decoder found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailer fields (only when there are some); the body has ended.
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// `buf` holds no complete step: read more.
    NeedMore,
}

/// A chunked body (RFC 9112 §7.1), decoded from a read buffer as it fills.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Trailer bytes seen so far (bounded by [`MAX_TRAILER_BYTES`]).
    trailer_bytes: usize,
    trailers: Option<HeaderMap>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Before a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data: this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
    Done,
}

impl ChunkedDecoder {
    /// Whether the last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes what it can from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtoError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line_end) =
                        find_crlf(buf, MAX_CHUNK_LINE).map_err(|_| ProtoError::Chunk)?
                    else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&buf[..line_end])?;
                    buf.advance(line_end + 2);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtoError::Chunk);
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let room = MAX_TRAILER_BYTES - self.trailer_bytes;
                    let line = find_crlf(buf, room + 2).map_err(|e| match e {
                        LineError::TooLong => ProtoError::TrailersTooLarge,
                        LineError::Bare => ProtoError::Chunk,
                    })?;
                    let Some(line_end) = line else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line_end == 0 {
                        buf.advance(2);
                        self.state = ChunkState::Done;
                        return Ok(match self.trailers.take() {
                            Some(t) => Decoded::Trailers(t),
                            None => Decoded::End,
                        });
                    }
                    self.trailer_bytes += line_end + 2;
                    if self.trailer_bytes > MAX_TRAILER_BYTES {
                        return Err(ProtoError::TrailersTooLarge);
                    }
                    let line = buf.split_to(line_end).freeze();
                    buf.advance(2);
                    let (name, value) = trailer_field(&line)?;
                    self.trailers
                        .get_or_insert_with(HeaderMap::new)
                        .append(name, value);
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// Why a line could not be found.
enum LineError {
    /// No CRLF within the limit.
    TooLong,
    /// A CR or LF alone: lenient parsers and strict ones would disagree
    /// on where the line ends.
    Bare,
}

/// The offset of the first CRLF in `buf`, looking at most `limit` bytes.
fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, LineError> {
    let window = &buf[..buf.len().min(limit)];
    match window.iter().position(|&b| b == b'\n' || b == b'\r') {
        Some(i) if window[i] == b'\r' => match buf.get(i + 1) {
            Some(b'\n') => Ok(Some(i)),
            Some(_) => Err(LineError::Bare),
            None => Ok(None),
        },
        Some(_) => Err(LineError::Bare),
        None if buf.len() >= limit => Err(LineError::TooLong),
        None => Ok(None),
    }
}

/// `1a3f` or `1a3f;ext=value` (extensions ignored), at most 15 hex digits.
fn chunk_size(line: &[u8]) -> Result<u64, ProtoError> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() || digits.len() > 15 {
        return Err(ProtoError::Chunk);
    }
    // Whitespace before `;` (BWS) is tolerated; anything else is not.
    let rest = trim(rest);
    if !rest.is_empty() && rest[0] != b';' {
        return Err(ProtoError::Chunk);
    }
    Ok(digits.iter().fold(0u64, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        (n << 4) | u64::from(v)
    }))
}

/// `name: value` of one trailer line.
fn trailer_field(line: &Bytes) -> Result<(HeaderName, HeaderValue), ProtoError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(ProtoError::Chunk)?;
    let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| ProtoError::Chunk)?;
    let raw = &line[colon + 1..];
    let value = trim(raw);
    let start = colon + 1 + (value.as_ptr() as usize - raw.as_ptr() as usize);
    let value = HeaderValue::from_maybe_shared(line.slice(start..start + value.len()))
        .map_err(|_| ProtoError::Chunk)?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: Method) -> Result<Option<Head>, ProtoError> {
        let mut buf = BytesMut::from(raw);
        parse_head(&mut buf, &method, &mut Vec::new())
    }

    #[test]
    fn request_heads_carry_the_gateways_framing() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("up:80"));
        h.insert("content-length", HeaderValue::from_static("999"));
        h.insert("transfer-encoding", HeaderValue::from_static("gzip"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let mut out = BytesMut::new();
        encode_head(
            &Method::POST,
            "/p?q=1",
            &h,
            None,
            RequestFraming::Length(3),
            &mut out,
        );
        assert_eq!(
            &out[..],
            b"POST /p?q=1 HTTP/1.1\r\nhost: up:80\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 3\r\n\r\n"
        );
        out.clear();
        encode_head(
            &Method::PUT,
            "/",
            &h,
            None,
            RequestFraming::Chunked,
            &mut out,
        );
        assert!(out.ends_with(b"x-a: 2\r\ntransfer-encoding: chunked\r\n\r\n"));
        // The gateway's own fields go after the request's, before framing.
        out.clear();
        let peer = HeaderValue::from_static("192.0.2.1");
        let mut client = h.clone();
        let id = HeaderValue::from_static("id-7");
        let f = crate::proxy::Forwarded::new(&mut client, id, &peer, None, "http");
        encode_head(
            &Method::PUT,
            "/",
            &client,
            Some(&f),
            RequestFraming::Chunked,
            &mut out,
        );
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.contains("x-a: 2\r\nx-request-id: id-7\r\ntraceparent: 00-"),
            "{text}"
        );
        assert!(
            text.ends_with("x-forwarded-for: 192.0.2.1\r\nx-forwarded-proto: http\r\ntransfer-encoding: chunked\r\n\r\n"),
            "{text}"
        );
        out.clear();
        encode_head(
            &Method::GET,
            "/",
            &HeaderMap::new(),
            None,
            RequestFraming::Empty,
            &mut out,
        );
        assert_eq!(&out[..], b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn chunk_framing_for_request_bodies() {
        let mut out = BytesMut::new();
        encode_chunk_size(0x1a3f, &mut out);
        encode_chunk_size(1, &mut out);
        encode_last_chunk(None, &mut out);
        assert_eq!(&out[..], b"1a3f\r\n1\r\n0\r\n\r\n");
        out.clear();
        let mut t = HeaderMap::new();
        t.insert("x-checksum", HeaderValue::from_static("abc"));
        encode_last_chunk(Some(&t), &mut out);
        assert_eq!(&out[..], b"0\r\nx-checksum: abc\r\n\r\n");
    }

    #[test]
    fn response_heads_and_their_framing() {
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, ResponseFraming::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.headers["x-a"], "b");

        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        parse_head(&mut buf, &Method::GET, &mut Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!(
            &buf[..],
            b"hello",
            "the head's bytes are taken out, the body's stay"
        );

        let cases: &[(&str, Method, ResponseFraming, bool)] = &[
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::GET,
                ResponseFraming::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                Method::GET,
                ResponseFraming::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Method::GET,
                ResponseFraming::UntilClose,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                Method::GET,
                ResponseFraming::UntilClose,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Method::GET,
                ResponseFraming::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
                Method::HEAD,
                ResponseFraming::Empty,
                true,
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                Method::GET,
                ResponseFraming::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Method::GET,
                ResponseFraming::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\nContent-Length: 4\r\n\r\n",
                Method::GET,
                ResponseFraming::Length(4),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: Close\r\n\r\n",
                Method::GET,
                ResponseFraming::Length(4),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\n",
                Method::GET,
                ResponseFraming::Length(4),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\n",
                Method::GET,
                ResponseFraming::Length(4),
                true,
            ),
        ];
        for (raw, method, framing, keep_alive) in cases {
            let h = head(raw, method.clone()).unwrap().unwrap();
            assert_eq!(
                (h.framing, h.keep_alive),
                (*framing, *keep_alive),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn informational_answers_are_skipped_and_101_refused() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        );
        let h = parse_head(&mut buf, &Method::POST, &mut Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 201);
        assert!(h.headers.get("link").is_none());
        assert!(buf.is_empty());
        assert_eq!(
            head(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
                Method::GET
            )
            .unwrap_err(),
            ProtoError::Upgrade
        );
    }

    #[test]
    fn heads_that_could_desynchronise_are_refused() {
        let bad: &[(&str, ProtoError)] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                ProtoError::BothLengths,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                ProtoError::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
                ProtoError::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
                ProtoError::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0x3\r\n\r\n",
                ProtoError::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
                ProtoError::ContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
                ProtoError::ContentLength,
            ),
        ];
        for (raw, err) in bad {
            assert_eq!(head(raw, Method::GET).unwrap_err(), *err, "{raw:?}");
        }
        assert!(matches!(
            head("SSH-2.0-OpenSSH\r\n\r\n", Method::GET),
            Err(ProtoError::Head(_))
        ));
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", Method::GET),
            Err(ProtoError::Head(_))
        ));
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\n folded\r\n\r\n", Method::GET),
            Err(ProtoError::Head(_))
        ));
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "a: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(
            head(&many, Method::GET),
            Err(ProtoError::Head(httparse::Error::TooManyHeaders))
        ));
    }

    #[test]
    fn a_head_too_large_is_refused_and_a_partial_one_waits() {
        assert!(head("HTTP/1.1 200 OK\r\nContent-Le", Method::GET)
            .unwrap()
            .is_none());
        let endless = format!(
            "HTTP/1.1 200 OK\r\nx: {}",
            "a".repeat(MAX_UPSTREAM_HEAD_BYTES)
        );
        assert_eq!(
            head(&endless, Method::GET).unwrap_err(),
            ProtoError::HeadTooLarge
        );
    }

    /// Feeds `input` to a decoder `step` bytes at a time; returns the body
    /// and the trailers.
    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), ProtoError> {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => body.extend_from_slice(&b),
                Decoded::Trailers(t) => return Ok((body, Some(t))),
                Decoded::End => return Ok((body, None)),
                Decoded::NeedMore => {
                    if fed == input.len() {
                        return Err(ProtoError::Chunk);
                    }
                    let n = step.min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_at_any_split() {
        let input = b"5\r\nhello\r\na;ext=1\r\n, world!!!\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, 100] {
            let (body, trailers) = decode_all(input, step).unwrap();
            assert_eq!(body, b"hello, world!!!", "step {step}");
            assert!(trailers.is_none());
        }
        let (body, trailers) = decode_all(
            b"3 ; x\r\nabc\r\n0\r\nGrpc-Status: 0\r\nX-T:  v \r\n\r\n",
            4,
        )
        .unwrap();
        assert_eq!(body, b"abc");
        let t = trailers.unwrap();
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t["x-t"], "v");
    }

    #[test]
    fn broken_chunks_are_refused() {
        let bad: &[&[u8]] = &[
            b"g\r\nx\r\n0\r\n\r\n",
            b"\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\rhello",
            b"1000000000000000\r\n",
            b"-1\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"0\r\nno colon\r\n\r\n",
        ];
        for input in bad {
            assert!(
                decode_all(input, 100).is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert_eq!(
            decode_all(long_ext.as_bytes(), 512).unwrap_err(),
            ProtoError::Chunk
        );
        let big_trailers = format!(
            "0\r\n{}\r\n",
            "x-t: v\r\n".repeat(MAX_TRAILER_BYTES / 8 + 1)
        );
        assert_eq!(
            decode_all(big_trailers.as_bytes(), 1024).unwrap_err(),
            ProtoError::TrailersTooLarge
        );
    }

    #[test]
    fn large_chunks_come_out_as_they_arrive() {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::from("100000\r\n");
        buf.extend_from_slice(&[b'x'; 1000]);
        match d.decode(&mut buf).unwrap() {
            Decoded::Data(b) => assert_eq!(b.len(), 1000),
            other => panic!("{other:?}"),
        }
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::NeedMore);
        assert!(!d.is_done());
    }
}
