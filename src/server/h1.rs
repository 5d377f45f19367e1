//! HTTP/1.1 from clients: the byte work of the native server
//! ([`super::http1`]), kept free of sockets so it can be tested alone.
//!
//! - [`parse_head`]: a request head, and how its body is framed
//!   (RFC 9112 §6.3), refusing what could make the gateway and the upstream
//!   disagree on where a request ends (request smuggling);
//! - [`encode_head`]: a response's status line and header fields, with the
//!   framing the gateway chose for its body and a `Date` formatted once a
//!   second.
//!
//! Chunked request bodies are decoded by the upstream side's
//! [`ChunkedDecoder`](crate::upstream::h1::ChunkedDecoder).

use std::cell::RefCell;
use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};

use crate::proxy::ResponseFields;
use crate::upstream::h1::{trim, Signals};

/// Header fields parsed without touching the heap; a head with more is
/// parsed again with room for `max_headers`.
const STACK_HEADERS: usize = 64;

/// Why a request head cannot be served. The connection closes after the
/// answer: where the next request would start is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// 400 `bad_request`, with what was wrong.
    #[error("{0}")]
    Malformed(&'static str),
    /// 431 `headers_too_large`: the head, or its number of fields, is past
    /// the server's backstop.
    #[error("request head too large")]
    TooLarge,
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    Empty,
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: BodyFraming,
    /// The client allows another request on this connection afterwards.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a `100 Continue` before
    /// it sends the body.
    pub expect_continue: bool,
}

/// Parses one request head from the front of `buf`, taking its bytes out.
/// `Ok(None)`: incomplete, read more. A head longer than `max_bytes`, or
/// with more than `max_headers` fields, is [`HeadError::TooLarge`].
/// Empty lines before the request line are skipped (RFC 9112 §2.2).
/// `fields` is scratch space, kept by the caller so that it is not made
/// for every head.
pub fn parse_head(
    buf: &mut BytesMut,
    max_bytes: usize,
    max_headers: usize,
    fields: &mut Vec<FieldSpan>,
) -> Result<Option<RequestHead>, HeadError> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let parsed = match parse_spans(buf, &mut stack, fields) {
        Err(httparse::Error::TooManyHeaders) if max_headers > STACK_HEADERS => {
            let mut heap = Vec::with_capacity(max_headers);
            heap.resize_with(max_headers, MaybeUninit::uninit);
            parse_spans(buf, &mut heap, fields)
        }
        other => other,
    };
    let spans = match parsed {
        Ok(Some(spans)) => spans,
        Ok(None) if buf.len() > max_bytes => return Err(HeadError::TooLarge),
        Ok(None) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(parse_error(e))),
    };
    if spans.len > max_bytes || fields.len() > max_headers {
        return Err(HeadError::TooLarge);
    }
    let bytes = buf.split_to(spans.len).freeze();
    let method = Method::from_bytes(&bytes[spans.method.0..spans.method.1])
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let uri = Uri::from_maybe_shared(bytes.slice(spans.target.0..spans.target.1))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    // Room for the fields the gateway adds on the way upstream (request
    // id, trace context, X-Forwarded-*), so the map is not grown for them.
    let mut headers = HeaderMap::with_capacity(fields.len() + 8);
    let mut signals = Signals::default();
    for &FieldSpan { name, value } in fields.iter() {
        let name = HeaderName::from_bytes(&bytes[name.0..name.1])
            .map_err(|_| HeadError::Malformed("invalid header field name"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(value.0..value.1))
            .map_err(|_| HeadError::Malformed("invalid header field value"))?;
        signals.see(&name, value.as_bytes());
        headers.append(name, value);
    }
    let version = spans.version;
    let (framing, closes) = signals.request_framing(version)?;
    let keep_alive = !closes && method != Method::CONNECT && signals.persistent(version);
    let expect_continue =
        version == Version::HTTP_11 && framing != BodyFraming::Empty && signals.expect_continue;
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// Where the parts of a head are in its bytes, so the buffer can be split
/// and frozen after parsing (httparse borrows it).
struct Spans {
    len: usize,
    version: Version,
    method: (usize, usize),
    target: (usize, usize),
}

/// Where a header field's name and value are in a head's bytes.
#[derive(Clone, Copy)]
pub struct FieldSpan {
    name: (usize, usize),
    value: (usize, usize),
}

fn parse_spans<'b>(
    buf: &'b [u8],
    parsed: &mut [MaybeUninit<httparse::Header<'b>>],
    fields: &mut Vec<FieldSpan>,
) -> Result<Option<Spans>, httparse::Error> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, parsed)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    // A complete head has all three (httparse's contract).
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(httparse::Error::Token);
    };
    fields.clear();
    fields.extend(req.headers.iter().map(|h| FieldSpan {
        name: at(h.name.as_bytes()),
        value: at(h.value),
    }));
    Ok(Some(Spans {
        len,
        version: if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        },
        method: at(method.as_bytes()),
        target: at(target.as_bytes()),
    }))
}

/// What the client is told about a head httparse refused.
fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header field name",
        httparse::Error::HeaderValue => "invalid header field value",
        httparse::Error::NewLine => "invalid line ending in the request head",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::Token | httparse::Error::Status => "invalid request line",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

impl Signals {
    /// RFC 9112 §6.3, for a request: what delimits its body, and whether
    /// the connection must close after it.
    ///
    /// - `Transfer-Encoding` must be `chunked` alone (the gateway decodes
    ///   nothing else), and is refused in HTTP/1.0, which has no transfer
    ///   codings.
    /// - With both `Transfer-Encoding` and `Content-Length`, chunked wins
    ///   and the connection closes after the response (§6.1), so bytes the
    ///   other reading would take as a body are never read as a request.
    /// - `Content-Length` values must be digits and all equal.
    fn request_framing(&self, version: Version) -> Result<(BodyFraming, bool), HeadError> {
        if self.codings > 0 {
            if version == Version::HTTP_10 {
                return Err(HeadError::Malformed(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            if self.codings != 1 || self.other_coding {
                return Err(HeadError::Malformed("Transfer-Encoding other than chunked"));
            }
            return Ok((BodyFraming::Chunked, self.length.is_some()));
        }
        Ok(match self.length {
            None | Some(Ok(0)) => (BodyFraming::Empty, false),
            Some(Ok(n)) => (BodyFraming::Length(n), false),
            Some(Err(e)) => return Err(HeadError::Malformed(e)),
        })
    }
}

/// How a response body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body bytes follow: an answer to HEAD, 1xx, 204, 304. The fields
    /// are written as they are (a HEAD answer keeps its `Content-Length`).
    NoBody,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked` (HTTP/1.1 clients).
    Chunked,
    /// Until the gateway closes the connection (HTTP/1.0 clients, length
    /// unknown).
    UntilClose,
}

impl ResponseFraming {
    /// The framing for a response to `method` with `status`, whose body's
    /// length is `exact` when known, to a client speaking `version`.
    pub fn choose(
        method: &Method,
        status: StatusCode,
        exact: Option<u64>,
        version: Version,
    ) -> ResponseFraming {
        if *method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return ResponseFraming::NoBody;
        }
        match exact {
            Some(n) => ResponseFraming::Length(n),
            None if version == Version::HTTP_11 => ResponseFraming::Chunked,
            None => ResponseFraming::UntilClose,
        }
    }
}

/// Writes the status line and header fields. `Content-Length` and
/// `Transfer-Encoding` come from `framing`, not from `headers`, so what
/// follows always matches what the head announces (except for
/// [`ResponseFraming::NoBody`], whose fields are kept). `Connection` is
/// the gateway's: `close` unless `keep_alive` and the response did not say
/// `close` itself (the pipeline does while draining), `keep-alive` for an
/// HTTP/1.0 client kept alive. Returns whether the connection stays open.
/// `Date` is added when missing. The gateway's own `fields` follow the
/// response's, and replace its copies of them.
pub fn encode_head(
    status: StatusCode,
    headers: &HeaderMap,
    fields: Option<&ResponseFields<'_>>,
    framing: ResponseFraming,
    keep_alive: bool,
    version: Version,
    out: &mut BytesMut,
) -> bool {
    out.reserve(128 + headers.len() * 48);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let keep_lengths = framing == ResponseFraming::NoBody && status != StatusCode::NO_CONTENT;
    let mut has_date = false;
    let mut close = false;
    for (name, value) in headers {
        has_date |= *name == DATE;
        if *name == CONNECTION {
            close |= value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(b"close"));
            continue;
        }
        let framing_field = *name == CONTENT_LENGTH || *name == TRANSFER_ENCODING;
        if framing_field && !keep_lengths || fields.is_some_and(|f| f.replaces(name)) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(fields) = fields {
        fields.write(out);
    }
    match framing {
        ResponseFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ResponseFraming::NoBody | ResponseFraming::UntilClose => {}
    }
    let keep = keep_alive && !close;
    match (keep, version) {
        (false, _) => out.extend_from_slice(b"connection: close\r\n"),
        (true, Version::HTTP_10) => out.extend_from_slice(b"connection: keep-alive\r\n"),
        (true, _) => {}
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        with_date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    keep
}

thread_local! {
    /// The current second and its HTTP-date: formatting one costs more
    /// than the rest of a head.
    static DATE_CACHE: RefCell<(u64, Bytes)> = const { RefCell::new((0, Bytes::new())) };
}

/// Calls `f` with the current time as an HTTP-date (RFC 9110 §5.6.7).
fn with_date(f: impl FnOnce(&[u8])) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != now || cache.1.is_empty() {
            let unix = i64::try_from(now).unwrap_or(i64::MAX);
            *cache = (now, Bytes::from(crate::config::versions::http_date(unix)));
        }
        f(&cache.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8192;

    fn parse(raw: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        parse_head(&mut BytesMut::from(raw), MAX, 100, &mut Vec::new())
    }

    fn head(raw: &[u8]) -> RequestHead {
        match parse(raw) {
            Ok(Some(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn request_heads_and_their_framing() {
        let mut buf = BytesMut::from(
            &b"\r\nPOST /p?q=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nX-A: 1\r\nX-A: 2\r\n\r\nabcGET"[..],
        );
        let h = parse_head(&mut buf, MAX, 100, &mut Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!(h.method, Method::POST);
        assert_eq!(h.uri, "/p?q=1");
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.headers["host"], "gw");
        let xa: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(h.framing, BodyFraming::Length(3));
        assert!(h.keep_alive && !h.expect_continue);
        assert_eq!(&buf[..], b"abcGET", "the body and what follows stay");

        let cases: &[(&[u8], BodyFraming, bool)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", BodyFraming::Empty, true),
            (b"GET / HTTP/1.1\nHost: gw\n\n", BodyFraming::Empty, true),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                BodyFraming::Empty,
                true,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 4, 4\r\nContent-Length: 4\r\n\r\n",
                BodyFraming::Length(4),
                true,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding:\tChunked\r\n\r\n",
                BodyFraming::Chunked,
                true,
            ),
            // Both lengths: chunked wins and the connection closes after.
            (
                b"POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n",
                BodyFraming::Chunked,
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n",
                BodyFraming::Empty,
                false,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", BodyFraming::Empty, false),
            (
                b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
                BodyFraming::Empty,
                true,
            ),
            (
                b"CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n\r\n",
                BodyFraming::Empty,
                false,
            ),
        ];
        for (raw, framing, keep_alive) in cases {
            let h = head(raw);
            assert_eq!(
                (h.framing, h.keep_alive),
                (*framing, *keep_alive),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let h = head(b"PUT /u HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n");
        assert!(h.expect_continue);
        let h = head(b"GET /u HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
        assert!(!h.expect_continue, "no body, nothing to wait for");
        let h = head(b"GET http://gw/abs?q=1 HTTP/1.1\r\nHost: gw\r\n\r\n");
        assert_eq!(h.uri.path(), "/abs");
        assert_eq!(h.uri.authority().map(|a| a.as_str()), Some("gw"));
    }

    #[test]
    fn heads_that_could_smuggle_a_request_are_refused() {
        let bad: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 0x3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: \r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: ,\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding:\x0bchunked\r\n\r\n",
            b"GET /a HTTP/1.1\rHost: gw\r\n\r\n",
            b"GET /a HTTP/1.1\r\nX-A: a\0b\r\n\r\n",
            b"GET /a HTTP/1.1\r\nX-A: a\x01b\r\n\r\n",
            b"GET /a HTTP/1.1\r\nX-A: a\x7fb\r\n\r\n",
            b"GET /a HTTP/1.1\r\nX A: b\r\n\r\n",
            b"GET /a HTTP/1.1\r\n Host: gw\r\n\r\n",
            b"GET  /a HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/2.0\r\n\r\n",
            b"G(T /a HTTP/1.1\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        ];
        for raw in bad {
            assert!(
                matches!(parse(raw), Err(HeadError::Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(raw),
                parse(raw)
            );
        }
    }

    #[test]
    fn large_heads_are_refused_and_partial_ones_wait() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: g").unwrap().is_none());
        let endless = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX));
        assert_eq!(parse(endless.as_bytes()).unwrap_err(), HeadError::TooLarge);
        // Complete in one read, yet over the limit.
        let long = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(MAX));
        assert_eq!(parse(long.as_bytes()).unwrap_err(), HeadError::TooLarge);
        // More fields than fit on the stack are parsed, up to the limit.
        let fields = |n: usize| format!("GET / HTTP/1.1\r\n{}\r\n", "a: b\r\n".repeat(n));
        let h = parse_head(
            &mut BytesMut::from(fields(150).as_str()),
            MAX,
            200,
            &mut Vec::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.headers.get_all("a").iter().count(), 150);
        assert_eq!(
            parse_head(
                &mut BytesMut::from(fields(201).as_str()),
                MAX * 2,
                200,
                &mut Vec::new()
            )
            .unwrap_err(),
            HeadError::TooLarge
        );
        assert_eq!(
            parse_head(
                &mut BytesMut::from(fields(101).as_str()),
                MAX,
                100,
                &mut Vec::new()
            )
            .unwrap_err(),
            HeadError::TooLarge
        );
    }

    #[test]
    fn any_split_parses_the_same_and_garbage_never_panics() {
        let samples: &[&[u8]] = &[
            b"POST /p?q=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc",
            b"\r\nGET / HTTP/1.0\nConnection: keep-alive\n\n",
            b"PUT /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        ];
        for raw in samples {
            let whole = format!("{:?}", parse(raw));
            for cut in 0..raw.len() {
                let mut buf = BytesMut::from(&raw[..cut]);
                let mut fields = Vec::new();
                let first = parse_head(&mut buf, MAX, 100, &mut fields).unwrap();
                let done = match first {
                    Some(h) => Ok(Some(h)),
                    None => {
                        buf.extend_from_slice(&raw[cut..]);
                        parse_head(&mut buf, MAX, 100, &mut fields)
                    }
                };
                assert_eq!(format!("{done:?}"), whole, "split at {cut}");
            }
        }
        // Mutated heads: an answer or a refusal, never a panic.
        let mut rng = fastrand::Rng::with_seed(9112);
        for _ in 0..20_000 {
            let mut raw = samples[rng.usize(..samples.len())].to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..raw.len());
                raw[at] = rng.u8(..);
            }
            let _ = parse(&raw);
        }
    }

    fn encoded(
        status: u16,
        headers: &[(&str, &str)],
        framing: ResponseFraming,
        keep: bool,
        version: Version,
    ) -> String {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = BytesMut::new();
        let kept = encode_head(
            StatusCode::from_u16(status).unwrap(),
            &map,
            None,
            framing,
            keep,
            version,
            &mut out,
        );
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(kept, !text.contains("connection: close"), "{text}");
        text
    }

    #[test]
    fn response_heads_carry_the_gateways_framing() {
        let date = ("date", "Tue, 24 Nov 2026 00:00:00 GMT");
        let h = encoded(
            200,
            &[
                ("content-length", "999"),
                ("transfer-encoding", "gzip"),
                ("x-a", "1"),
                ("connection", "x"),
                date,
            ],
            ResponseFraming::Length(5),
            true,
            Version::HTTP_11,
        );
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: Tue, 24 Nov 2026 00:00:00 GMT\r\ncontent-length: 5\r\n\r\n"
        );
        let h = encoded(
            404,
            &[date],
            ResponseFraming::Chunked,
            false,
            Version::HTTP_11,
        );
        assert_eq!(
            h,
            "HTTP/1.1 404 Not Found\r\ndate: Tue, 24 Nov 2026 00:00:00 GMT\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        // HEAD keeps the length it announces; 204 has none.
        let h = encoded(
            200,
            &[("content-length", "7"), date],
            ResponseFraming::NoBody,
            true,
            Version::HTTP_11,
        );
        assert!(h.contains("content-length: 7\r\n"), "{h}");
        let h = encoded(
            204,
            &[("content-length", "0"), date],
            ResponseFraming::NoBody,
            true,
            Version::HTTP_11,
        );
        assert!(!h.contains("content-length"), "{h}");
        // A Date is added when the response has none.
        let h = encoded(599, &[], ResponseFraming::Length(0), true, Version::HTTP_10);
        assert!(
            h.starts_with("HTTP/1.1 599 \r\ncontent-length: 0\r\nconnection: keep-alive\r\ndate: "),
            "{h}"
        );
        assert!(h.ends_with(" GMT\r\n\r\n"), "{h}");
        // The response's own `close` (the pipeline's, while draining) wins.
        let h = encoded(
            200,
            &[("connection", "Keep-Alive, Close"), date],
            ResponseFraming::Length(0),
            true,
            Version::HTTP_11,
        );
        assert!(h.ends_with("connection: close\r\n\r\n"), "{h}");
    }

    #[test]
    fn framing_follows_method_status_and_version() {
        use ResponseFraming::*;
        let get = Method::GET;
        let v11 = Version::HTTP_11;
        assert_eq!(
            ResponseFraming::choose(&get, StatusCode::OK, Some(3), v11),
            Length(3)
        );
        assert_eq!(
            ResponseFraming::choose(&get, StatusCode::OK, None, v11),
            Chunked
        );
        assert_eq!(
            ResponseFraming::choose(&get, StatusCode::OK, None, Version::HTTP_10),
            UntilClose
        );
        assert_eq!(
            ResponseFraming::choose(&Method::HEAD, StatusCode::OK, Some(3), v11),
            NoBody
        );
        assert_eq!(
            ResponseFraming::choose(&get, StatusCode::NO_CONTENT, None, v11),
            NoBody
        );
        assert_eq!(
            ResponseFraming::choose(&get, StatusCode::NOT_MODIFIED, Some(9), v11),
            NoBody
        );
    }
}
