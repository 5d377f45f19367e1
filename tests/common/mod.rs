//! Shared test helpers: real upstream servers on 127.0.0.1:0, a gateway
//! started in-process from YAML text, and real HTTP/1.1 and HTTP/2 clients.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use portcullis::{config, Gateway, RunningGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// What a test upstream saw.
#[derive(Default)]
pub struct Seen {
    pub hits: AtomicUsize,
    pub connections: AtomicUsize,
    pub last_headers: Mutex<Option<HeaderMap>>,
    pub last_path: Mutex<Option<String>>,
    pub body_bytes: AtomicUsize,
}

/// A real HTTP server on 127.0.0.1:0 that answers per path:
/// - `/delay/<ms>`: waits, then answers like the default
/// - `/status/<code>`: answers with that status
/// - `/bytes/<n>`: streams n bytes of body in 64 KiB chunks
/// - `/hop`: answers with hop-by-hop headers that must not reach the client
/// - anything else: `<name> <path>` as text, after reading (and counting) the body
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub seen: Arc<Seen>,
}

pub async fn spawn_upstream(name: &'static str) -> Upstream {
    spawn_upstream_with_delay(name, Duration::ZERO).await
}

/// Like [`spawn_upstream`], with every answer delayed by `delay`.
pub async fn spawn_upstream_with_delay(name: &'static str, delay: Duration) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            s.connections.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let s = s.clone();
                    async move { Ok::<_, Infallible>(answer(name, delay, &s, req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, name, seen }
}

async fn answer(
    name: &'static str,
    delay: Duration,
    seen: &Seen,
    req: Request<Incoming>,
) -> Response<BoxBody> {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    *seen.last_headers.lock().unwrap() = Some(req.headers().clone());
    *seen.last_path.lock().unwrap() = Some(req.uri().to_string());
    tokio::time::sleep(delay).await;
    if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(format!("{name} status")));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        return r;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return Response::new(stream_bytes(n.parse().unwrap()));
    }
    if path == "/hop" {
        return Response::builder()
            .header("connection", "x-upstream-private")
            .header("x-upstream-private", "1")
            .header("keep-alive", "timeout=5")
            .header("x-upstream-public", "1")
            .body(full(name.to_string()))
            .unwrap();
    }
    let mut body = req.into_body();
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(d) = frame.data_ref() {
            seen.body_bytes.fetch_add(d.len(), Ordering::SeqCst);
        }
    }
    Response::new(full(format!("{name} {path}")))
}

pub fn full(s: impl Into<Bytes>) -> BoxBody {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> BoxBody {
    full(Bytes::new())
}

/// A body of `n` zero bytes, produced 64 KiB at a time (never held whole).
pub fn stream_bytes(n: u64) -> BoxBody {
    struct Gen {
        left: u64,
        chunk: Bytes,
    }
    impl http_body::Body for Gen {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            let take = self.left.min(self.chunk.len() as u64) as usize;
            self.left -= take as u64;
            std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..take)))))
        }
    }
    Gen {
        left: n,
        chunk: Bytes::from(vec![0u8; 64 << 10]),
    }
    .boxed()
}

/// A raw TCP "upstream" that does `behave` with each connection.
pub async fn spawn_raw<F, Fut>(behave: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let behave = Arc::new(behave);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let behave = behave.clone();
            tokio::spawn(async move { behave(stream).await });
        }
    });
    addr
}

/// An address where nothing listens.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Starts a gateway from YAML text. The admin port and listeners should use
/// port 0.
pub async fn start_gateway(yaml: &str) -> RunningGateway {
    let loaded = config::load_str(yaml, "test.yaml", PathBuf::from("."), &|n| {
        std::env::var(n).ok()
    })
    .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
    Gateway::start(loaded).await.expect("gateway starts")
}

/// A one-route gateway in front of `upstream_addrs` (one upstream `up`).
pub fn simple_config(endpoints: &[SocketAddr], extra_server: &str, extra_upstream: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("'{a}'")).collect();
    format!(
        "listeners:\n  - {{ name: http, bind: '127.0.0.1:0' }}\nadmin: {{ bind: '127.0.0.1:0' }}\n\
         server:\n  access_log: false\n{extra_server}\
         upstreams:\n  - name: up\n    endpoints: [{}]\n{extra_upstream}\
         routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: up\n",
        eps.join(", ")
    )
}

pub fn http1_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, BoxBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn http2_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, BoxBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A response read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, BoxBody>,
    req: Request<BoxBody>,
) -> Answer {
    let resp = client.request(req).await.expect("request completes");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body completes").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(empty())
        .unwrap();
    send(&http1_client(), req).await
}

/// Fetches a text endpoint of the admin port.
pub async fn admin(gw: &RunningGateway, path: &str) -> Answer {
    get(gw.admin_addr(), path).await
}

/// The value of a metric line `name{labels}` in Prometheus text, or 0.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Sends raw bytes on a new connection and reads until the peer closes or
/// `wait` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Resident memory of this process in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Reads an HTTP/1.1 response to the end of the connection and checks it is
/// a 200 that announced `Connection: close` (what a drain must produce).
pub async fn expect_final_response(stream: &mut TcpStream, wait: Duration) {
    let mut out = Vec::new();
    tokio::time::timeout(wait, stream.read_to_end(&mut out))
        .await
        .expect("response within the wait")
        .expect("read");
    let text = String::from_utf8_lossy(&out).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
}
