//! The native HTTP/1.1 server (`server.http1: native`, the default) as a
//! client sees it on the wire: keep-alive and HTTP/1.0, pipelining, HEAD,
//! `100 Continue`, chunked and close-delimited responses, early answers
//! that leave a body unread, malformed heads answered with problem
//! documents, clients that go away mid-request, and the hyper fallback.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// One response read off a raw connection.
#[derive(Debug)]
struct Raw {
    /// Status line and header lines, lower-cased.
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn status(&self) -> u16 {
        self.head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n == name).then(|| v.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw client connection with what it has read and not yet parsed.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        Conn {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// Reads more; false when the gateway closed the connection.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match timeout(Duration::from_secs(5), self.s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("nothing from the gateway for 5 s"),
        }
    }

    /// The next response; `bodiless` for an answer to HEAD. `None`: the
    /// connection closed before a head.
    async fn response(&mut self, bodiless: bool) -> Option<Raw> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_lowercase();
        self.buf.drain(..end);
        let mut raw = Raw {
            head,
            body: Vec::new(),
        };
        let status = raw.status();
        if bodiless || status == 204 || status == 304 || (100..200).contains(&status) {
            return Some(raw);
        }
        if let Some(n) = raw.header("content-length") {
            let n: usize = n.parse().unwrap();
            while self.buf.len() < n {
                assert!(self.fill().await, "closed mid-body: {raw:?}");
            }
            raw.body = self.buf.drain(..n).collect();
        } else if raw.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await, "closed mid-chunk");
                };
                let size =
                    usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap(), 16)
                        .unwrap();
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    assert!(self.fill().await, "closed mid-chunk");
                }
                raw.body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.fill().await {}
            raw.body = std::mem::take(&mut self.buf);
        }
        Some(raw)
    }

    /// Whether the gateway closes the connection within `wait` (reading
    /// and dropping anything else it sends).
    async fn closes_within(&mut self, wait: Duration) -> bool {
        let mut chunk = [0u8; 4096];
        let deadline = Instant::now() + wait;
        loop {
            match timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.s.read(&mut chunk),
            )
            .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_head_has_no_body() {
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(&[up.addr], "", "")).await;
    let mut c = Conn::open(gw.addr("http").unwrap()).await;
    c.send(
        b"GET /one HTTP/1.1\r\nHost: gw\r\n\r\n\
          HEAD /two HTTP/1.1\r\nHost: gw\r\n\r\n\
          GET /three HTTP/1.1\r\nHost: gw\r\n\r\n",
    )
    .await;
    let one = c.response(false).await.unwrap();
    assert_eq!((one.status(), one.text().as_str()), (200, "a /one"));
    assert!(
        one.header("date").is_some_and(|d| d.ends_with(" gmt")),
        "{one:?}"
    );
    assert!(one.header("x-request-id").is_some(), "{one:?}");
    let two = c.response(true).await.unwrap();
    assert_eq!(two.status(), 200);
    assert_eq!(
        two.header("content-length"),
        Some("6"),
        "HEAD keeps the length: {two:?}"
    );
    let three = c.response(false).await.unwrap();
    assert_eq!(
        three.text(),
        "a /three",
        "no stray HEAD body in front of the third answer"
    );
    // Still open for more.
    c.send(b"GET /four HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    assert_eq!(c.response(false).await.unwrap().text(), "a /four");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_closes_unless_kept_alive_and_gets_no_chunks() {
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(&[up.addr], "", "")).await;
    let addr = gw.addr("http").unwrap();

    let mut c = Conn::open(addr).await;
    c.send(b"GET /old HTTP/1.0\r\nHost: gw\r\n\r\n").await;
    let r = c.response(false).await.unwrap();
    assert_eq!((r.status(), r.text().as_str()), (200, "a /old"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closes_within(Duration::from_secs(2)).await);

    let mut c = Conn::open(addr).await;
    for path in ["/k1", "/k2"] {
        c.send(
            format!("GET {path} HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n").as_bytes(),
        )
        .await;
        let r = c.response(false).await.unwrap();
        assert_eq!(r.text(), format!("a {path}"));
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }

    // A body of unknown length (the upstream streams it chunked): chunked
    // for HTTP/1.1, delimited by the close for HTTP/1.0.
    let mut c = Conn::open(addr).await;
    c.send(b"GET /bytes/100000 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body.len(), 100_000);
    let mut c = Conn::open(addr).await;
    c.send(b"GET /bytes/100000 HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.header("transfer-encoding"), None, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert_eq!(r.body.len(), 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered_when_the_body_is_wanted() {
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(&[up.addr], "  max_body_bytes: 1KiB\n", "")).await;
    let addr = gw.addr("http").unwrap();

    let mut c = Conn::open(addr).await;
    c.send(b"PUT /up HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await;
    let cont = c.response(false).await.unwrap();
    assert_eq!(cont.status(), 100, "{cont:?}");
    c.send(b"hello").await;
    let r = c.response(false).await.unwrap();
    assert_eq!((r.status(), r.text().as_str()), (200, "a /up"));
    assert_eq!(
        up.seen.body_bytes.load(std::sync::atomic::Ordering::SeqCst),
        5
    );

    // Refused before the body is read (413 on its declared size): no
    // `100 Continue`, and the connection closes rather than wait for a
    // body the client will not send.
    let mut c = Conn::open(addr).await;
    c.send(b"PUT /up HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.status(), 413, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closes_within(Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_body_is_drained_and_the_connection_goes_on() {
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(&[up.addr], "  max_body_bytes: 1KiB\n", "")).await;
    let mut c = Conn::open(gw.addr("http").unwrap()).await;
    // 413 on the declared length, with the 4 KiB body already sent.
    let mut req = b"POST /big HTTP/1.1\r\nHost: gw\r\nContent-Length: 4096\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'x'; 4096]);
    req.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: gw\r\n\r\n");
    c.send(&req).await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.header("connection"), None, "{r:?}");
    let next = c.response(false).await.unwrap();
    assert_eq!(
        next.text(),
        "a /next",
        "the body was read past, not taken as a request"
    );
    assert_eq!(up.seen.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_a_problem_document_and_a_close() {
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(&[up.addr], "  max_header_bytes: 4KiB\n", "")).await;
    let addr = gw.addr("http").unwrap();

    let mut c = Conn::open(addr).await;
    c.send(b"GET / HTTP/1.1\r\nHost: gw\r\nBad Name: x\r\n\r\n")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.header("connection"), Some("close"));
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(doc["error"], "bad_request");
    assert_eq!(
        doc["detail"],
        "the request is malformed: invalid header field name"
    );
    assert_eq!(doc["request_id"].as_str(), r.header("x-request-id"));
    assert!(c.closes_within(Duration::from_secs(2)).await);

    // Past the server's backstop (twice max_header_bytes): 431.
    let mut c = Conn::open(addr).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: gw\r\nX-Big: {}\r\n\r\n",
        "v".repeat(9000)
    );
    c.send(big.as_bytes()).await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.status(), 431, "{r:?}");
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(doc["error"], "headers_too_large");

    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(
        metric(
            &m,
            "portcullis_connections_cut_total{listener=\"http\",reason=\"malformed_request\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_rejections_total{reason=\"bad_request\",route=\"\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(up.seen.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Nothing else broke.
    assert_eq!(get(addr, "/after").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_request() {
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(&[up.addr], "", "")).await;
    let mut c = Conn::open(gw.addr("http").unwrap()).await;
    c.send(b"GET /delay/3000 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await;
    let in_flight = |m: &str| metric(m, "portcullis_in_flight_requests");
    let start = Instant::now();
    while in_flight(&admin(&gw, "/metrics").await.body) < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(2), "never in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(c);
    let closed = Instant::now();
    loop {
        let m = admin(&gw, "/metrics").await.body;
        if in_flight(&m) == 0.0 {
            break;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(1),
            "still in flight after the client left:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_hyper_is_the_fallback() {
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(&[up.addr], "  http1: hyper\n", "")).await;
    let addr = gw.addr("http").unwrap();
    let mut c = Conn::open(addr).await;
    c.send(b"GET /one HTTP/1.1\r\nHost: gw\r\n\r\nGET /two HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.unwrap().text(), "a /one");
    assert_eq!(c.response(false).await.unwrap().text(), "a /two");
    // hyper answers a malformed head itself, without a problem document.
    let mut c = Conn::open(addr).await;
    c.send(b"GET / HTTP/1.1\r\nHost: gw\r\nBad Name: x\r\n\r\n")
        .await;
    let r = c.response(false).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_ne!(r.header("content-type"), Some("application/problem+json"));
    // HTTP/2 with prior knowledge is served either way.
    let req = http::Request::get(format!("http://{addr}/h2"))
        .body(empty())
        .unwrap();
    let a = send(&http2_client(), req).await;
    assert_eq!(a.body, "a /h2");
}
