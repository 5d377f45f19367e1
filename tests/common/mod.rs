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
/// - `/delay/<ms>` (also behind a route prefix: `/a/delay/<ms>`): waits,
///   then answers like the default
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
    spawn_upstream_with(name, delay, Arc::default()).await
}

/// Like [`spawn_upstream`], except that while `fail_every` is N > 0, every
/// Nth request gets a 500.
pub async fn spawn_flaky_upstream(name: &'static str, fail_every: Arc<AtomicUsize>) -> Upstream {
    spawn_upstream_with(name, Duration::ZERO, fail_every).await
}

async fn spawn_upstream_with(
    name: &'static str,
    delay: Duration,
    fail_every: Arc<AtomicUsize>,
) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            s.connections.fetch_add(1, Ordering::SeqCst);
            let (s, fail_every) = (s.clone(), fail_every.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (s, fail_every) = (s.clone(), fail_every.clone());
                    async move {
                        let every = fail_every.load(Ordering::SeqCst);
                        let mut r = answer(name, delay, &s, req).await;
                        if every > 0 && s.hits.load(Ordering::SeqCst) % every == 0 {
                            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<_, Infallible>(r)
                    }
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
    // Also behind a route's prefix (`/a/delay/400`).
    if let Some((_, ms)) = path.split_once("/delay/") {
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
    if path == "/gateway-fields" {
        // Copies of every field the gateway may set on a response.
        return Response::builder()
            .header("x-request-id", "upstream-id")
            .header("x-portcullis-upstream", "forged")
            .header("x-portcullis-attempts", "99")
            .header("ratelimit-policy", "\"upstream\";q=9;w=9")
            .header("ratelimit", "\"upstream\";r=9;t=9")
            .header("deprecation", "@1")
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

// ------------------------------------------------------------------ TLS

pub use portcullis::tls::devcert::{DevCa, PemPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A test PKI in a temp dir: a CA, and certificate files written on demand.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: DevCa,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::new("Test CA").unwrap();
        std::fs::write(dir.path().join("ca.crt"), &ca.pem.cert).unwrap();
        Pki { dir, ca }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Writes `<stem>.crt` and `<stem>.key`; returns their paths.
    pub fn write_pair(&self, stem: &str, pair: &PemPair) -> (String, String) {
        let (c, k) = (
            self.path(&format!("{stem}.crt")),
            self.path(&format!("{stem}.key")),
        );
        std::fs::write(&c, &pair.cert).unwrap();
        std::fs::write(&k, &pair.key).unwrap();
        (c, k)
    }

    /// A server certificate (ECDSA P-256) for `names`, written as `<stem>.*`.
    pub fn server(&self, stem: &str, names: &[&str]) -> (String, String) {
        let pair = self
            .ca
            .server_cert(names, 30, &rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap();
        self.write_pair(stem, &pair)
    }
}

/// What a TLS test client offers.
#[derive(Clone)]
pub struct ClientOpts {
    /// PEM of the CA to trust; `None` accepts any certificate (to inspect
    /// which one the server chose).
    pub trust: Option<String>,
    pub alpn: Vec<&'static [u8]>,
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    pub client_cert: Option<PemPair>,
}

impl ClientOpts {
    pub fn trusting(ca: &DevCa) -> ClientOpts {
        ClientOpts {
            trust: Some(ca.pem.cert.clone()),
            alpn: vec![b"h2", b"http/1.1"],
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            client_cert: None,
        }
    }
}

/// Accepts any server certificate: only for tests that look at which
/// certificate was served.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub fn client_config(opts: &ClientOpts) -> rustls::ClientConfig {
    let provider = portcullis::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&opts.versions)
        .unwrap();
    let builder = match &opts.trust {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider))),
    };
    let mut config = match &opts.client_cert {
        Some(pair) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(pair.cert.as_bytes())
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = opts.alpn.iter().map(|p| p.to_vec()).collect();
    config
}

pub type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects and runs the TLS handshake with SNI `server_name` (an IP
/// address sends no SNI).
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    opts: &ClientOpts,
) -> std::io::Result<ClientTls> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(opts)));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    connector.connect(name, tcp).await
}

/// The leaf certificate the server presented.
pub fn served_cert(tls: &ClientTls) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// The first certificate in a PEM file's text.
pub fn pem_cert_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
}

/// An HTTP connection over TLS, HTTP/2 or HTTP/1.1 as ALPN chose.
pub enum TlsHttp {
    H1(hyper::client::conn::http1::SendRequest<BoxBody>),
    H2(hyper::client::conn::http2::SendRequest<BoxBody>),
}

impl TlsHttp {
    pub async fn new(tls: ClientTls) -> hyper::Result<TlsHttp> {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Ok(TlsHttp::H2(sender))
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(TlsHttp::H1(sender))
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, TlsHttp::H2(_))
    }

    /// GET `path` with the given extra headers; the body read whole.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> hyper::Result<Answer> {
        let mut b = Request::get(format!("https://localhost{path}"));
        if let TlsHttp::H1(_) = self {
            b = Request::get(path).header("host", "localhost");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(empty()).unwrap();
        let resp = match self {
            TlsHttp::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            TlsHttp::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
}

/// One HTTPS GET on a new connection.
pub async fn https_get(
    addr: SocketAddr,
    server_name: &str,
    opts: &ClientOpts,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let tls = tls_connect(addr, server_name, opts)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut http = TlsHttp::new(tls).await.map_err(|e| format!("http: {e}"))?;
    http.get(path, headers)
        .await
        .map_err(|e| format!("request: {e}"))
}

/// A test upstream like [`spawn_upstream`] that speaks HTTPS with `pair`.
pub async fn spawn_tls_upstream(name: &'static str, pair: &PemPair) -> Upstream {
    let chain: Vec<_> = CertificateDer::pem_slice_iter(pair.cert.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(portcullis::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            s.connections.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(move |req| {
                    let s = s.clone();
                    async move { Ok::<_, Infallible>(answer(name, Duration::ZERO, &s, req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Upstream { addr, name, seen }
}
pub mod jwt;
pub mod redis;

/// Runs `portcullis check` on `text` (written to a fresh file): the exit
/// code and stderr, with the file's path shown as `FILE`.
pub fn check_text(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(path.to_str().unwrap(), "FILE");
    (out.status.code(), stderr)
}

/// Asserts that `portcullis check` rejects `text` (exit 1, no panic) and
/// reports each of `expected` (`LINE:COL: message start`) for the file.
pub fn assert_check_reports(text: &str, expected: &[&str]) {
    let (code, stderr) = check_text(text);
    assert_eq!(code, Some(1), "check should fail on:\n{text}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for e in expected {
        assert!(
            stderr.contains(&format!("FILE:{e}")),
            "missing `FILE:{e}` in:\n{stderr}"
        );
    }
}
