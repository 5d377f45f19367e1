//! Hostile clients and broken upstreams: request smuggling, odd request
//! targets, upstream responses with the same defects. Every case writes raw
//! bytes and reads raw bytes, and checks what the upstream received.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

/// The tests of this file run one at a time: several measure the process's
/// memory, which the others would disturb.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ------------------------------------------------------- recording upstream

/// One request as the upstream read it off the wire.
#[derive(Clone, Debug)]
struct Wire {
    /// The head as sent, request line and header lines.
    head: String,
    body: Vec<u8>,
}

impl Wire {
    fn header_values(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or("")
    }
}

/// A raw HTTP/1.1 upstream that parses strictly (CRLF only, exactly one of
/// `Content-Length` or chunked), records each request and answers `200 ok`
/// on a kept-alive connection. A request it cannot parse strictly is
/// recorded as `malformed` and the connection closed.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Wire>>>,
    malformed: Arc<AtomicUsize>,
}

impl Recorder {
    async fn spawn() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Wire>>> = Arc::default();
        let malformed: Arc<AtomicUsize> = Arc::default();
        let (s, m) = (seen.clone(), malformed.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let (s, m) = (s.clone(), m.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        match parse_request(&buf) {
                            Parsed::Done(wire, used) => {
                                buf.drain(..used);
                                s.lock().unwrap().push(wire);
                                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if stream.write_all(ok).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                            Parsed::Malformed(why) => {
                                eprintln!("upstream read a malformed request: {why}");
                                m.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Parsed::Partial => {}
                        }
                        let mut chunk = [0u8; 8192];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Recorder {
            addr,
            seen,
            malformed,
        }
    }

    /// The requests of one case (marked by its `x-case` header).
    fn of_case(&self, case: &str) -> Vec<Wire> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.header_values("x-case").iter().any(|v| v == case))
            .cloned()
            .collect()
    }
}

enum Parsed {
    Done(Wire, usize),
    Partial,
    Malformed(String),
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A strict HTTP/1.1 request parser: what a picky upstream would accept.
fn parse_request(buf: &[u8]) -> Parsed {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Parsed::Partial;
    };
    let head = match std::str::from_utf8(&buf[..end]) {
        Ok(h) => h.to_string(),
        Err(_) => return Parsed::Malformed("head is not UTF-8".into()),
    };
    if head.contains('\0') {
        return Parsed::Malformed("NUL in head".into());
    }
    for line in head.split("\r\n") {
        if line.contains('\n') || line.contains('\r') {
            return Parsed::Malformed(format!("bare CR or LF in {line:?}"));
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            return Parsed::Malformed("folded header".into());
        }
    }
    let wire = Wire {
        head,
        body: Vec::new(),
    };
    let cl = wire.header_values("content-length");
    let te = wire.header_values("transfer-encoding");
    if !cl.is_empty() && !te.is_empty() {
        return Parsed::Malformed("both Content-Length and Transfer-Encoding".into());
    }
    if cl.len() > 1 {
        return Parsed::Malformed(format!("{} Content-Length headers", cl.len()));
    }
    if wire.header_values("host").len() != 1 {
        return Parsed::Malformed("not exactly one Host".into());
    }
    let mut at = end + 4;
    let mut wire = wire;
    if let Some(cl) = cl.first() {
        let Ok(n) = cl.parse::<usize>() else {
            return Parsed::Malformed(format!("Content-Length {cl:?}"));
        };
        if buf.len() < at + n {
            return Parsed::Partial;
        }
        wire.body = buf[at..at + n].to_vec();
        return Parsed::Done(wire, at + n);
    }
    if te.is_empty() {
        return Parsed::Done(wire, at);
    }
    if te != ["chunked"] {
        return Parsed::Malformed(format!("Transfer-Encoding {te:?}"));
    }
    loop {
        let Some(eol) = find(&buf[at..], b"\r\n") else {
            return Parsed::Partial;
        };
        let line = String::from_utf8_lossy(&buf[at..at + eol]).to_string();
        let Ok(size) = usize::from_str_radix(&line, 16) else {
            return Parsed::Malformed(format!("chunk size {line:?}"));
        };
        at += eol + 2;
        if size == 0 {
            // No trailers from the gateway in these tests.
            if buf.len() < at + 2 {
                return Parsed::Partial;
            }
            if &buf[at..at + 2] != b"\r\n" {
                return Parsed::Malformed("trailers or junk after the last chunk".into());
            }
            return Parsed::Done(wire, at + 2);
        }
        if buf.len() < at + size + 2 {
            return Parsed::Partial;
        }
        wire.body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Parsed::Malformed("chunk not followed by CRLF".into());
        }
        at += size + 2;
    }
}

// --------------------------------------------------------------- raw client

/// Writes `bytes` on a new connection and reads everything the gateway
/// sends until it closes the connection, or nothing more arrived for
/// `settle`.
async fn exchange(addr: SocketAddr, bytes: &[u8], settle: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The gateway may close before reading everything (a 400): fine.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut chunk = [0u8; 4096];
        match timeout(settle, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
        if Instant::now() > deadline {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `portcullis_connections_cut_total` of listener `http` for `reason`.
fn cuts(metrics: &str, reason: &str) -> f64 {
    metric(
        metrics,
        &format!("portcullis_connections_cut_total{{listener=\"http\",reason=\"{reason}\"}}"),
    )
}

/// How many HTTP responses `text` holds.
fn responses(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count()
}

// ------------------------------------------------------------ smuggling

/// What the gateway must do with a request.
enum Expect {
    /// 400, and the upstream sees nothing of it.
    Rejected,
    /// Forwarded once, in this clean form: (request line, body).
    Clean(&'static str, &'static [u8]),
    /// The same, and the connection closes after the response, so what
    /// followed the body is never read as a request.
    CleanThenClosed(&'static str, &'static [u8]),
}

struct Case {
    name: &'static str,
    /// The raw request; `{case}` is replaced by an `x-case` header line.
    raw: &'static [u8],
    expect: Expect,
}

const CASES: &[Case] = &[
    // ---- Content-Length and Transfer-Encoding
    // Both: chunked wins, Content-Length is dropped, and the connection
    // closes after the response (RFC 9112 §6.1), so the bytes after the
    // chunked body are never a second request.
    Case {
        name: "cl-then-te",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n{case}\r\n",
        expect: Expect::CleanThenClosed("POST /a HTTP/1.1", b""),
    },
    Case {
        name: "te-then-cl",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n{case}\r\n",
        expect: Expect::CleanThenClosed("POST /a HTTP/1.1", b"abc"),
    },
    Case {
        name: "two-content-lengths",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        expect: Expect::Rejected,
    },
    Case {
        name: "content-length-list",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Content-Length: 3, 4\r\n\r\nabcd",
        expect: Expect::Rejected,
    },
    Case {
        name: "content-length-plus-sign",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Content-Length: +3\r\n\r\nabc",
        expect: Expect::Rejected,
    },
    Case {
        name: "content-length-negative",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Content-Length: -1\r\n\r\nabc",
        expect: Expect::Rejected,
    },
    Case {
        name: "content-length-hex",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Content-Length: 0x3\r\n\r\nabc",
        expect: Expect::Rejected,
    },
    Case {
        name: "same-content-length-twice",
        raw: b"POST /same HTTP/1.1\r\nHost: gw\r\n{case}Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        expect: Expect::Clean("POST /same HTTP/1.1", b"abc"),
    },
    Case {
        name: "te-chunked-then-identity",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Transfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "te-xchunked",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Transfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "te-two-headers-last-not-chunked",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "te-space-before-colon",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Transfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "te-folded",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Transfer-Encoding: identity\r\n chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "te-vertical-tab",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Transfer-Encoding:\x0bchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "te-in-http10",
        raw: b"POST /a HTTP/1.0\r\nHost: gw\r\n{case}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "te-upper-case-with-tab",
        raw: b"POST /chunked HTTP/1.1\r\nHost: gw\r\n{case}Transfer-Encoding:\tChunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        expect: Expect::Clean("POST /chunked HTTP/1.1", b"abc"),
    },
    // ---- chunked bodies
    Case {
        name: "chunk-size-not-hex",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "chunk-size-overflow",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Transfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "chunk-size-negative",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "chunk-longer-than-its-size",
        raw: b"POST /a HTTP/1.1\r\nHost: gw\r\n{case}Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
        expect: Expect::Rejected,
    },
    // ---- line endings and control characters
    Case {
        name: "bare-cr-in-head",
        raw: b"GET /a HTTP/1.1\rHost: gw\r\n{case}\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "nul-in-value",
        raw: b"GET /a HTTP/1.1\r\nHost: gw\r\n{case}X-A: a\0b\r\n\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "control-char-in-value",
        raw: b"GET /a HTTP/1.1\r\nHost: gw\r\n{case}X-A: a\x01b\r\n\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "del-in-value",
        raw: b"GET /a HTTP/1.1\r\nHost: gw\r\n{case}X-A: a\x7fb\r\n\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "nul-in-name",
        raw: b"GET /a HTTP/1.1\r\nHost: gw\r\n{case}X-\0A: b\r\n\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "space-in-name",
        raw: b"GET /a HTTP/1.1\r\nHost: gw\r\n{case}X A: b\r\n\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "first-header-folded",
        raw: b"GET /a HTTP/1.1\r\n Host: gw\r\n{case}\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "two-spaces-in-request-line",
        raw: b"GET  /a HTTP/1.1\r\nHost: gw\r\n{case}\r\n",
        expect: Expect::Rejected,
    },
    // ---- request targets and Host
    Case {
        name: "absolute-form",
        raw: b"GET http://gw/abs?q=1 HTTP/1.1\r\nHost: gw\r\n{case}\r\n",
        expect: Expect::Clean("GET /abs?q=1 HTTP/1.1", b""),
    },
    Case {
        name: "absolute-form-host-differs",
        raw: b"GET http://gw/abs HTTP/1.1\r\nHost: admin.internal\r\n{case}\r\n",
        expect: Expect::Clean("GET /abs HTTP/1.1", b""),
    },
    Case {
        name: "two-hosts",
        raw: b"GET /a HTTP/1.1\r\nHost: gw\r\nHost: admin.internal\r\n{case}\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "no-host",
        raw: b"GET /a HTTP/1.1\r\n{case}\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "asterisk-form",
        raw: b"GET * HTTP/1.1\r\nHost: gw\r\n{case}\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "authority-form",
        raw: b"GET gw:80 HTTP/1.1\r\nHost: gw\r\n{case}\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "connect",
        raw: b"CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n{case}\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "dot-dot-segment",
        raw: b"GET /public/../admin HTTP/1.1\r\nHost: gw\r\n{case}\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "encoded-dot-dot-segment",
        raw: b"GET /public/%2e%2E/admin HTTP/1.1\r\nHost: gw\r\n{case}\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "dot-segment",
        raw: b"GET /./admin HTTP/1.1\r\nHost: gw\r\n{case}\r\n",
        expect: Expect::Rejected,
    },
    Case {
        name: "bare-lf-line-endings",
        raw: b"GET /lf HTTP/1.1\nHost: gw\n{case}\n",
        expect: Expect::Clean("GET /lf HTTP/1.1", b""),
    },
];

fn render(case: &Case) -> Vec<u8> {
    let marker = format!("x-case: {}\r\n", case.name);
    let raw = case.raw;
    let mut out = Vec::with_capacity(raw.len() + marker.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i..].starts_with(b"{case}") {
            // Keep the case's own line endings (bare LF stays bare LF).
            let lf_only = !raw.windows(2).any(|w| w == b"\r\n");
            if lf_only {
                out.extend_from_slice(marker.replace("\r\n", "\n").as_bytes());
            } else {
                out.extend_from_slice(marker.as_bytes());
            }
            i += b"{case}".len();
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_and_odd_targets_are_refused_or_normalised() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let up = Recorder::spawn().await;
    let gw = start_gateway(&simple_config(&[up.addr], "", "")).await;
    let addr = gw.addr("http").unwrap();

    let runs = CASES.iter().map(|case| async move {
        let text = exchange(addr, &render(case), Duration::from_millis(400)).await;
        (case, text)
    });
    let mut failures = Vec::new();
    for (case, text) in futures_join(runs).await {
        let seen = up.of_case(case.name);
        let status = text.get(..12).unwrap_or("");
        match case.expect {
            Expect::Rejected => {
                if status != "HTTP/1.1 400" || responses(&text) != 1 || !seen.is_empty() {
                    failures.push(format!(
                        "{}: wanted one 400 and nothing upstream; got {} response(s) {status:?}, upstream saw {seen:?}\n{text}",
                        case.name,
                        responses(&text)
                    ));
                }
            }
            Expect::Clean(line, body) | Expect::CleanThenClosed(line, body) => {
                let closed = text
                    .to_ascii_lowercase()
                    .contains("\r\nconnection: close\r\n");
                if matches!(case.expect, Expect::CleanThenClosed(..)) && !closed {
                    failures.push(format!(
                        "{}: the connection was not closed\n{text}",
                        case.name
                    ));
                }
                let clean = seen.len() == 1
                    && seen[0].request_line() == line
                    && seen[0].body == body
                    && seen[0].header_values("host") == ["gw"];
                if status != "HTTP/1.1 200" || responses(&text) != 1 || !clean {
                    failures.push(format!(
                        "{}: wanted one 200 and upstream {line:?} with body {:?}; got {} response(s) {status:?}, upstream saw {seen:?}\n{text}",
                        case.name,
                        String::from_utf8_lossy(body),
                        responses(&text)
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(
        up.malformed.load(Ordering::SeqCst),
        0,
        "the upstream read a malformed request"
    );

    // Nothing else broke: a plain request on a fresh connection is served.
    let a = get(addr, "/after").await;
    assert_eq!(a.status, 200);

    // Heads the HTTP/1.1 server cannot parse are answered and the connection
    // closed, counted as cuts; the pipeline's 400s are counted by route.
    let m = admin(&gw, "/metrics").await.body;
    let unparsed = cuts(&m, "malformed_request");
    assert!(unparsed >= 15.0, "{unparsed}\n{m}");
    let ours = metric(
        &m,
        "portcullis_rejections_total{reason=\"bad_request\",route=\"\"}",
    ) + metric(
        &m,
        "portcullis_rejections_total{reason=\"bad_request\",route=\"all\"}",
    );
    assert!(ours >= 10.0, "{ours}\n{m}");
}

/// Runs futures concurrently, keeping their order.
async fn futures_join<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

// ------------------------------------------------------- broken upstreams

/// A raw upstream that answers each request per its path (see
/// [`broken_upstreams_get_502_and_their_connections_are_dropped`]) and
/// records which paths each connection served.
async fn spawn_broken_upstream() -> (SocketAddr, Arc<Mutex<Vec<Vec<String>>>>) {
    let conns: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let id = {
                let mut c = c.lock().unwrap();
                c.push(Vec::new());
                c.len() - 1
            };
            let c = c.clone();
            tokio::spawn(async move { serve_broken(stream, id, c).await });
        }
    });
    (addr, conns)
}

async fn serve_broken(mut s: TcpStream, id: usize, conns: Arc<Mutex<Vec<Vec<String>>>>) {
    let mut buf = Vec::new();
    loop {
        let wire = loop {
            match parse_request(&buf) {
                Parsed::Done(wire, used) => {
                    buf.drain(..used);
                    break wire;
                }
                Parsed::Malformed(_) => return,
                Parsed::Partial => {}
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let path = wire
            .request_line()
            .split(' ')
            .nth(1)
            .unwrap_or("")
            .to_string();
        conns.lock().unwrap()[id].push(path.clone());
        let fixed: &[u8] = match path.as_str() {
            "/cl-and-te" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "/two-content-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
            "/bad-status" => b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
            "/not-http" => b"hello, I am not HTTP\r\n\r\n",
            "/nul-in-header" => b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n",
            "/te-in-http10" => b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "/switching-protocols" => {
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: upgrade\r\n\r\n"
            }
            "/bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
            "/ok" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            _ => b"",
        };
        if !fixed.is_empty() {
            if s.write_all(fixed).await.is_err() {
                return;
            }
            continue;
        }
        match path.as_str() {
            "/huge-header" => {
                let mut r = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
                r.extend(std::iter::repeat_n(b'a', 256 << 10));
                r.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
                let _ = s.write_all(&r).await;
            }
            "/endless-header" => {
                // Until the gateway hangs up (bounded: 64 MiB).
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
                let line = format!("X-More: {}\r\n", "a".repeat(1000));
                for _ in 0..(64 << 10) {
                    if s.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
            "/informational-flood" => {
                // 100 Continue after 100 Continue, for at most 5 s.
                let until = Instant::now() + Duration::from_secs(5);
                while Instant::now() < until {
                    if s.write_all(&b"HTTP/1.1 100 Continue\r\n\r\n".repeat(100))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            // "/silent" and the rest: never answer, until the gateway hangs up.
            _ => {
                let mut sink = [0u8; 1024];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            }
        }
        return;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_upstreams_get_502_and_their_connections_are_dropped() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (up, conns) = spawn_broken_upstream().await;
    let gw = start_gateway(&simple_config(&[up], "", "    request_timeout: 1s\n")).await;
    let addr = gw.addr("http").unwrap();
    let client = http1_client();

    let bad = [
        ("/cl-and-te", 502),
        ("/two-content-lengths", 502),
        ("/bad-status", 502),
        ("/not-http", 502),
        ("/nul-in-header", 502),
        ("/te-in-http10", 502),
        ("/switching-protocols", 502),
        ("/huge-header", 502),
        ("/endless-header", 502),
        ("/silent", 504),
    ];
    for (path, status) in bad {
        let start = Instant::now();
        let a = get(addr, path).await;
        assert_eq!(a.status, status, "{path}: {}", a.body);
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{path} took {:?}",
            start.elapsed()
        );
        // The gateway is fine: the next request on a clean connection works.
        let ok = send(
            &client,
            http::Request::get(format!("http://{addr}/ok"))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(ok.status, 200, "after {path}");
    }

    // 1xx responses are read and dropped (hyper's client does not hand
    // them over); a flood of them ends at request_timeout.
    let start = Instant::now();
    let a = get(addr, "/informational-flood").await;
    assert_eq!(a.status, 504, "{}", a.body);
    assert!(start.elapsed() < Duration::from_secs(3));

    // A body defect after the head went out: the client sees the response
    // broken off, never a clean end it could mistake for the whole body.
    // When the defect is in the same read as the head, the connection is
    // cut before the head is flushed: no response at all, just as broken.
    let answer = client
        .request(
            http::Request::get(format!("http://{addr}/bad-chunk"))
                .body(empty())
                .unwrap(),
        )
        .await;
    if let Ok(resp) = answer {
        assert_eq!(resp.status(), 200);
        use http_body_util::BodyExt;
        assert!(resp.into_body().collect().await.is_err());
    }

    // No connection that carried a broken answer carried anything after it.
    let conns = conns.lock().unwrap().clone();
    for served in &conns {
        if let Some(i) = served.iter().position(|p| p != "/ok") {
            assert_eq!(
                i + 1,
                served.len(),
                "a connection was reused after {}: {served:?}",
                served[i]
            );
        }
    }
}

// ------------------------------------------------------------ slow clients

/// Reads one HTTP/1.1 response head and body (by `content-length`) or
/// until the connection closes; returns the text and whether it closed.
async fn read_until_close(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let closed = timeout(wait, s.read_to_end(&mut out)).await.is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_cut_with_408_and_a_slow_one_is_not() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(
        &[up.addr],
        "  body_read_timeout: 400ms\n",
        "",
    ))
    .await;
    let addr = gw.addr("http").unwrap();

    // 10 of 100 bytes, then nothing.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let start = Instant::now();
    let (text, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    let took = start.elapsed();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"request_timeout\""), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(closed, "the connection stays open after the 408");
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "cut after {took:?}"
    );

    // A chunked body that stops before its last chunk: the same.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    let (text, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(closed);

    // A body that trickles, each piece within the timeout, is forwarded whole.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /slow HTTP/1.1\r\nHost: gw\r\nContent-Length: 8\r\n\r\n")
        .await
        .unwrap();
    for b in b"abcdefgh" {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(&[*b]).await.unwrap();
    }
    let mut buf = vec![0u8; 4096];
    let n = timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("a /slow"), "{text}");

    // The timeouts were the client's: counted as such, not as upstream trouble.
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(
        metric(
            &m,
            "portcullis_rejections_total{reason=\"request_timeout\",route=\"all\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_upstream_requests_total{outcome=\"error\",upstream=\"up\"}"
        ),
        0.0,
        "{m}"
    );
}

/// An upstream that answers every request with a 1 GiB body, written as
/// fast as the gateway takes it; counts the bytes it managed to write.
async fn spawn_endless_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let written: Arc<AtomicUsize> = Arc::default();
    let w = written.clone();
    let addr = spawn_raw(move |mut s| {
        let w = w.clone();
        async move {
            let mut head = [0u8; 4096];
            if !matches!(s.read(&mut head).await, Ok(n) if n > 0) {
                return;
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
                .await;
            let chunk = vec![b'x'; 64 << 10];
            for _ in 0..(1 << 14) {
                match s.write(&chunk).await {
                    Ok(n) if n > 0 => {
                        w.fetch_add(n, Ordering::SeqCst);
                    }
                    _ => return,
                }
            }
        }
    })
    .await;
    (addr, written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_and_memory_stays_bounded() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(&[up.addr], "  send_timeout: 500ms\n", "")).await;
    let addr = gw.addr("http").unwrap();

    // A slow reader that keeps reading is not cut: 4 MiB, 256 KiB per 100 ms.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /bytes/4194304 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 << 10];
    while got < (4 << 20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got += n,
            other => panic!("slow reader cut after {got} bytes: {other:?}"),
        }
    }

    // One that asks for 1 GiB and reads nothing is cut after send_timeout,
    // once the buffers between are full; meanwhile the gateway reads from
    // the upstream no more than those buffers hold.
    let (writer, written) = spawn_endless_upstream().await;
    let gw2 = start_gateway(&simple_config(&[writer], "  send_timeout: 500ms\n", "")).await;
    let addr2 = gw2.addr("http").unwrap();
    let before = rss_kib();
    let mut s = TcpStream::connect(addr2).await.unwrap();
    s.write_all(b"GET /endless HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let cut = loop {
        let m = admin(&gw2, "/metrics").await.body;
        let cut = cuts(&m, "send_timeout");
        if cut >= 1.0 || start.elapsed() > Duration::from_secs(10) {
            break cut;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(cut, 1.0, "not cut within 10 s");
    let took = start.elapsed();
    let grew = rss_kib().saturating_sub(before);
    // The kernel's socket buffers (a few MiB each way on loopback) hold
    // most of what the upstream wrote; the gateway's own are 64 KiB.
    let upstream_wrote = written.load(Ordering::SeqCst);
    eprintln!(
        "reader that stops: cut after {took:?}; upstream wrote {upstream_wrote} bytes; RSS grew by {grew} KiB"
    );
    assert!(
        upstream_wrote < 48 << 20,
        "the upstream wrote {upstream_wrote} bytes for a client that read none"
    );
    assert!(grew < 16 << 10, "RSS grew by {grew} KiB");
    assert!(took < Duration::from_secs(5), "cut after {took:?}");
    // What the client finds when it reads at last: part of the body, then
    // the end of the connection (no clean end it could mistake for 1 GiB).
    let mut total = 0usize;
    loop {
        match timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("connection still open after {total} bytes"),
        }
    }
    assert!(total < upstream_wrote, "read {total} bytes");

    // Everyone else is served.
    assert_eq!(get(addr, "/after").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_ip_refuses_one_address_and_serves_others() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(
        &[up.addr],
        "  max_connections_per_ip: 2\n",
        "",
    ))
    .await;
    let addr = gw.addr("http").unwrap();
    let from = |ip: &str| {
        let local: SocketAddr = format!("{ip}:0").parse().unwrap();
        async move {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(local).unwrap();
            sock.connect(addr).await.unwrap()
        }
    };
    let served = |mut s: TcpStream| async move {
        let _ = s.write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n").await;
        let mut buf = [0u8; 512];
        let n = timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .map_or(0, |r| r.unwrap_or(0));
        (buf[..n].starts_with(b"HTTP/1.1 200"), s)
    };

    let (ok1, first) = served(from("127.0.0.1").await).await;
    let (ok2, _second) = served(from("127.0.0.1").await).await;
    assert!(ok1 && ok2);
    // The third from the same address is closed at once...
    let (ok3, _) = served(from("127.0.0.1").await).await;
    assert!(!ok3, "a third connection from 127.0.0.1 was served");
    // ...while another address is served.
    let (ok4, _other) = served(from("127.0.0.2").await).await;
    assert!(ok4, "127.0.0.2 was refused");
    // Once one closes, the address may connect again.
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ok5, _) = served(from("127.0.0.1").await).await;
    assert!(ok5, "127.0.0.1 still refused after closing one");

    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(
        metric(
            &m,
            "portcullis_connections_rejected_total{listener=\"http\",reason=\"max_connections_per_ip\"}"
        ),
        1.0,
        "{m}"
    );
}

// ------------------------------------------------------------ HTTP/2 abuse

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

/// An HPACK integer with an `n`-bit prefix whose other bits are `flags`.
fn hpack_int(n: u8, flags: u8, mut v: usize) -> Vec<u8> {
    let max = (1usize << n) - 1;
    if v < max {
        return vec![flags | v as u8];
    }
    let mut out = vec![flags | max as u8];
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
    out
}

fn hpack_string(s: &[u8]) -> Vec<u8> {
    let mut out = hpack_int(7, 0, s.len());
    out.extend_from_slice(s);
    out
}

/// A literal header without indexing, its name from the static table.
fn hpack_literal(name_index: usize, value: &str) -> Vec<u8> {
    let mut out = hpack_int(4, 0, name_index);
    out.extend(hpack_string(value.as_bytes()));
    out
}

/// `GET http://gw<path>`.
fn request_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86]; // :method GET, :scheme http
    b.extend(hpack_literal(4, path)); // :path
    b.extend(hpack_literal(1, "gw")); // :authority
    b
}

/// An HTTP/2 connection after the preface and the client's SETTINGS.
async fn h2_raw(addr: SocketAddr, client_settings: &[(u16, u32)]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(settings(client_settings));
    s.write_all(&hello).await.unwrap();
    s
}

/// One frame read off the wire.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Reads frames until the peer closes, `quiet` passes with nothing, or
/// `limit` passes; acknowledges the server's SETTINGS.
async fn h2_frames(s: &mut TcpStream, quiet: Duration, limit: Duration) -> (Vec<Frame>, bool) {
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    let deadline = Instant::now() + limit;
    loop {
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let f = Frame {
                kind: buf[3],
                flags: buf[4],
                stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
                payload: buf[9..9 + len].to_vec(),
            };
            buf.drain(..9 + len);
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                let _ = s.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
            }
            frames.push(f);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let mut chunk = [0u8; 16384];
        match timeout(quiet.min(left), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (frames, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return (frames, false),
        }
    }
}

fn setting(frames: &[Frame], id: u16) -> Option<u32> {
    frames
        .iter()
        .filter(|f| f.kind == SETTINGS && f.flags & ACK == 0)
        .flat_map(|f| f.payload.chunks(6))
        .find(|c| c.len() == 6 && u16::from_be_bytes([c[0], c[1]]) == id)
        .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_limits_are_announced_and_enforced() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(
        &[up.addr],
        "  http2:\n    max_concurrent_streams: 4\n    initial_stream_window: 128KiB\n",
        "",
    ))
    .await;
    let addr = gw.addr("http").unwrap();

    // Six requests at once where four are allowed.
    let mut s = h2_raw(addr, &[]).await;
    let mut burst = Vec::new();
    for i in 0..6u32 {
        burst.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1 + 2 * i,
            &request_block("/delay/300"),
        ));
    }
    s.write_all(&burst).await.unwrap();
    let (frames, _) = h2_frames(&mut s, Duration::from_millis(1500), Duration::from_secs(5)).await;
    assert_eq!(setting(&frames, 0x3), Some(4), "MAX_CONCURRENT_STREAMS");
    assert_eq!(
        setting(&frames, 0x4),
        Some(128 << 10),
        "INITIAL_WINDOW_SIZE"
    );
    let answered: Vec<u32> = frames
        .iter()
        .filter(|f| f.kind == HEADERS)
        .map(|f| f.stream)
        .collect();
    let refused: Vec<u32> = frames
        .iter()
        .filter(|f| f.kind == RST_STREAM || f.kind == GOAWAY)
        .map(|f| f.stream)
        .collect();
    let mut answered = answered;
    answered.sort_unstable();
    assert_eq!(answered, [1, 3, 5, 7], "{frames:?}");
    assert!(
        !refused.is_empty(),
        "the streams past the limit were not refused: {frames:?}"
    );
    assert_eq!(up.seen.hits.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_header_floods_are_refused_without_holding_memory() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(&[up.addr], "", "")).await;
    let addr = gw.addr("http").unwrap();
    let before = rss_kib();

    // CONTINUATION flood: a header block that never ends, 16 MiB of it.
    let s = h2_raw(addr, &[]).await;
    let (mut reader, mut writer) = s.into_split();
    let flood = tokio::spawn(async move {
        let mut block = Vec::new();
        for i in 0..16 {
            let name = format!("x-flood-{i}");
            block.push(0x00); // literal without indexing, new name
            block.extend(hpack_string(name.as_bytes()));
            block.extend(hpack_string("a".repeat(1000).as_bytes()));
        }
        if writer
            .write_all(&frame(HEADERS, END_STREAM, 1, &request_block("/flood")))
            .await
            .is_err()
        {
            return 0;
        }
        let mut sent = 0usize;
        while sent < 16 << 20 {
            if writer
                .write_all(&frame(CONTINUATION, 0, 1, &block))
                .await
                .is_err()
            {
                break;
            }
            sent += block.len();
        }
        sent
    });
    let mut seen = Vec::new();
    let closed = timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(closed, "the connection was not closed within 10 s");
    let sent = flood.await.unwrap();
    eprintln!("CONTINUATION flood: connection closed after {sent} bytes of header block");
    assert!(
        sent < 16 << 20,
        "all 16 MiB of CONTINUATION frames were taken"
    );

    // HPACK bomb: a 4000-byte header put in the dynamic table once, then
    // referred to 3000 times (12 MB once decoded) in one 3 KiB frame.
    let mut s2 = h2_raw(addr, &[]).await;
    let mut block = request_block("/bomb");
    block.push(0x40); // literal with incremental indexing, new name
    block.extend(hpack_string(b"x-bomb"));
    block.extend(hpack_string("b".repeat(4000).as_bytes()));
    block.extend(std::iter::repeat_n(0xbe, 3000)); // index 62: that entry
    s2.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
        .await
        .unwrap();
    let (frames, _) = h2_frames(&mut s2, Duration::from_millis(1000), Duration::from_secs(5)).await;
    let refused = frames.iter().any(|f| {
        (f.kind == RST_STREAM || f.kind == GOAWAY)
            || (f.kind == HEADERS && f.stream == 1 && !f.payload.contains(&0x88))
    });
    assert!(refused, "the bomb was not refused: {frames:?}");
    assert!(
        !frames
            .iter()
            .any(|f| f.kind == DATA && f.stream == 1 && f.payload.ends_with(b"/bomb")),
        "the bomb reached the upstream"
    );

    assert_eq!(
        up.seen.hits.load(Ordering::SeqCst),
        0,
        "a flood reached the upstream"
    );
    let grew = rss_kib().saturating_sub(before);
    eprintln!("header floods: RSS grew by {grew} KiB");
    assert!(grew < 32 << 10, "RSS grew by {grew} KiB");
    // Everyone else is served, over HTTP/2 too.
    let a = send(
        &http2_client(),
        http::Request::get(format!("http://{addr}/after"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
}

/// CPU time of every thread of this process so far, in ns (for the notes
/// these tests print; never asserted).
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_closes_the_connection() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(
        &[up.addr],
        "  http2:\n    max_cancelled_streams: 50\n",
        "",
    ))
    .await;
    let addr = gw.addr("http").unwrap();

    // Rounds of 10 requests that reach the upstream and are then reset,
    // at most 100 rounds: the gateway closes the connection after about
    // 50 cancelled streams.
    let cpu_before = cpu_ns();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client;
    let mut sent = 0;
    'rounds: for _ in 0..100 {
        let mut streams = Vec::new();
        for _ in 0..10 {
            client = match client.ready().await {
                Ok(c) => c,
                Err(_) => break 'rounds,
            };
            let req = http::Request::get(format!("http://{addr}/delay/5000"))
                .body(())
                .unwrap();
            match client.send_request(req, true) {
                Ok((resp, stream)) => streams.push((resp, stream)),
                Err(_) => break 'rounds,
            }
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        for (resp, mut stream) in streams {
            stream.send_reset(h2::Reason::CANCEL);
            drop(resp);
        }
    }
    let ended = timeout(Duration::from_secs(5), conn).await;
    eprintln!(
        "rapid reset: connection closed after {sent} streams; {} us of CPU per stream (client, gateway and upstream together)",
        cpu_ns().saturating_sub(cpu_before) / 1000 / (sent as u64).max(1)
    );
    assert!(
        ended.is_ok(),
        "the connection is still open after {sent} streams"
    );
    assert!(sent <= 200, "{sent} streams before the connection closed");

    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(cuts(&m, "rapid_reset"), 1.0, "{m}");
    // Everyone else is served. Gateway-made answers to HEAD (whose body is
    // never sent) are not cancellations: 120 on one connection are fine.
    let client = http2_client();
    let cpu_before = cpu_ns();
    let status = |method: http::Method, path: &'static str| {
        let client = client.clone();
        async move {
            let req = http::Request::builder()
                .method(method)
                .uri(format!("http://{addr}{path}"))
                .body(empty())
                .unwrap();
            send(&client, req).await.status
        }
    };
    for _ in 0..200 {
        assert_eq!(status(http::Method::GET, "/x").await, 200);
    }
    eprintln!(
        "for comparison, a whole proxied HTTP/2 request: {} us of CPU",
        cpu_ns().saturating_sub(cpu_before) / 1000 / 200
    );
    for _ in 0..120 {
        assert_eq!(status(http::Method::HEAD, "/a/../b").await, 400);
    }
    assert_eq!(status(http::Method::GET, "/after").await, 200);
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(cuts(&m, "rapid_reset"), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_that_never_opens_its_window_is_cut() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(&[up.addr], "  send_timeout: 500ms\n", "")).await;
    let addr = gw.addr("http").unwrap();
    let before = rss_kib();

    // INITIAL_WINDOW_SIZE 0: the gateway may send no response body at all.
    let mut s = h2_raw(addr, &[(0x4, 0)]).await;
    let mut burst = Vec::new();
    for i in 0..10u32 {
        burst.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1 + 2 * i,
            &request_block("/bytes/104857600"),
        ));
    }
    s.write_all(&burst).await.unwrap();
    let start = Instant::now();
    let (frames, closed) = h2_frames(&mut s, Duration::from_secs(5), Duration::from_secs(8)).await;
    assert!(closed, "still open after {:?}: {frames:?}", start.elapsed());
    assert!(
        !frames
            .iter()
            .any(|f| f.kind == DATA && !f.payload.is_empty()),
        "data sent beyond a window of 0"
    );
    let grew = rss_kib().saturating_sub(before);
    assert!(grew < 32 << 10, "RSS grew by {grew} KiB");
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(cuts(&m, "send_timeout"), 1.0, "{m}");
}

#[test]
fn check_explains_bad_hardening_settings() {
    let text = "listeners: [{ name: http, bind: '127.0.0.1:0' }]\n\
        server:\n\
        \x20 body_read_timeout: 0s\n\
        \x20 send_timeout: 0s\n\
        \x20 max_connections_per_ip: 0\n\
        \x20 http2:\n\
        \x20   max_concurrent_streams: 0\n\
        \x20   initial_stream_window: 1KiB\n\
        \x20   initial_connection_window: 4GiB\n\
        \x20   max_send_buffer: 1GiB\n\
        \x20   max_cancelled_streams: 0\n\
        upstreams: [{ name: u, endpoints: ['127.0.0.1:9000'] }]\n\
        routes: [{ name: r, match: { path_prefix: / }, upstream: u }]\n";
    assert_check_reports(
        text,
        &[
            "3:22: must be more than 0",
            "4:17: must be more than 0",
            "5:27: must be at least 1 (leave it out for no per-address cap)",
            "7:29: must be at least 1",
            "8:28: must be between 64KiB and 2GiB - 1",
            "9:32: must be between 64KiB and 2GiB - 1",
            "10:22: must be between 16KiB and 64MiB",
            "11:28: must be at least 1",
        ],
    );
    // A typo under http2 is named, with the keys it could have meant.
    let typo = "listeners: [{ name: http, bind: '127.0.0.1:0' }]\n\
        server:\n\
        \x20 http2:\n\
        \x20   max_concurent_streams: 10\n\
        upstreams: [{ name: u, endpoints: ['127.0.0.1:9000'] }]\n\
        routes: [{ name: r, match: { path_prefix: / }, upstream: u }]\n";
    let (code, stderr) = check_text(typo);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "FILE:4:5: unknown key `max_concurent_streams`; expected one of `max_concurrent_streams`"
        ),
        "{stderr}"
    );
}
