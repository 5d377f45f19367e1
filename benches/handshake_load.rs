//! A TLS handshake load generator for `benches/load.sh` (the `handshake` and
//! `resume` scenarios, `HS_CLIENT=rustls`): closed loops that each connect,
//! do a TLS handshake, send one `GET` with `Connection: close`, read the
//! response to EOF and start again. wrk with OpenSSL 3.0 spends about
//! 0.9 ms of CPU per full handshake, so on a 2-core machine it cannot drive
//! more than about 1,000 handshakes/s, less than one proxy core serves. This
//! client uses rustls with aws-lc-rs, as Portcullis does, on one
//! current-thread Tokio runtime (load.sh pins it to the load core), and
//! prints its own CPU per handshake so the load side can be checked.
//!
//! Not a criterion bench: `cargo bench --no-run --bench handshake_load`
//! builds it, and the executable is run directly:
//!
//! ```text
//! handshake_load --url https://localhost:8443/api/bench (--cacert cert.pem | --no-verify) \
//!     [--connections 16] [--duration 10s] [--warmup 0s] [--timeout 2s] [--resume] [--pq]
//! ```
//!
//! The output has the lines of wrk's (`--latency`) that load.sh reads:
//! `N requests in ...`, `Latency Distribution` percentiles, `Socket errors`,
//! `Non-2xx or 3xx responses` and `Requests/sec:`, plus the handshake kinds
//! seen, what was negotiated, and this client's own CPU per handshake.
//!
//! Choices, made to stay comparable with wrk's OpenSSL 3.0 client:
//! - Key exchange: X25519 (with P-256 and P-384 offered, no key share for
//!   them), as OpenSSL 3.0 does. rustls would otherwise send an
//!   X25519MLKEM768 share that a rustls server (Portcullis) picks and
//!   OpenSSL 3.0 servers ignore, so the proxies would not do the same work.
//!   `--pq` offers rustls's default groups (X25519MLKEM768 first).
//! - Cipher suites: rustls's defaults, TLS_AES_256_GCM_SHA384 first, as
//!   OpenSSL's. ALPN: http/1.1 only (wrk offers none; either way no proxy
//!   picks h2). TLS 1.2 and 1.3 offered.
//! - Trust: a server certificate byte-equal to one in `--cacert` is trusted
//!   as it is (pinned; load.sh's certificate is self-signed with CA:TRUE,
//!   which webpki refuses as an end-entity certificate); any other is
//!   verified by webpki against the certificates of `--cacert` as roots,
//!   name included. The handshake signature (CertificateVerify) is
//!   verified too; wrk verifies nothing but that signature. `--no-verify`
//!   checks neither (no `--cacert` needed): the server does the same work,
//!   and the client saves an ECDSA P-256 verification per full handshake,
//!   which costs more than the server's signature (OpenSSL 3.0 `speed` on
//!   the bench machine: 82 µs to verify, 30 µs to sign). A TLS client costs
//!   about as much per handshake as a TLS server, so load.sh uses it by
//!   default (`HS_VERIFY=0`) to leave the proxy core the limit.
//! - Full handshakes by default (`Resumption::disabled()`). With `--resume`
//!   each loop has its own in-memory session cache, as wrk keeps a session
//!   per connection: every connection but a loop's first offers a ticket
//!   from its previous one. One cache shared by all loops would not do: it
//!   keeps at most 8 TLS 1.3 tickets per server, so a burst of more than 8
//!   connections starting together finds it empty and makes full handshakes
//!   (a quarter of them with 16 loops against Portcullis).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, HandshakeKind, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
usage: handshake_load --url https://HOST:PORT/PATH (--cacert PEM | --no-verify) [options]
  --url URL          https:// URL to GET; HOST is sent as SNI and Host
  --cacert PEM       trust these certificates (pinned when the server's is one
                     of them; else as roots for webpki)
  --connections N    concurrent connect/handshake/GET/close loops (default 16)
  --duration D       measured time: 10s, 500ms, 1m, or seconds (default 10s)
  --warmup D         unmeasured time before it, same process (default 0s)
  --timeout D        per connection, connect to EOF (default 2s)
  --resume           allow session resumption (default: every handshake full)
  --no-verify        check neither the certificate nor the handshake
                     signature (then --cacert is not needed)
  --pq               offer rustls's default key exchange groups
                     (X25519MLKEM768 first) instead of X25519 only";

/// A bad command line: the message, the usage, exit code 2.
fn fail(msg: &str) -> ! {
    eprintln!("handshake_load: {msg}\n{USAGE}");
    std::process::exit(2);
}

/// A start-up failure that is not the command line's shape (a file, a
/// name): the message alone, exit code 2.
fn die(msg: &str) -> ! {
    eprintln!("handshake_load: {msg}");
    std::process::exit(2);
}

struct Args {
    url: String,
    host: String,
    port: u16,
    path: String,
    /// None with --no-verify.
    cacert: Option<PathBuf>,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    timeout: Duration,
    resume: bool,
    pq: bool,
}

/// wrk's duration syntax: `10s`, `500ms`, `1m`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> Option<Duration> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().ok()?;
    Duration::try_from_secs_f64(v * scale).ok()
}

/// `https://host[:port][/path]` into its parts (port 443 by default).
fn parse_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 443,
            None => return None,
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, 443),
        }
    };
    (!host.is_empty()).then(|| (host.to_string(), port, path.to_string()))
}

fn parse_args() -> Args {
    let mut url = None;
    let mut cacert = None;
    let mut connections = 16usize;
    let mut duration = Duration::from_secs(10);
    let mut warmup = Duration::ZERO;
    let mut timeout = Duration::from_secs(2);
    let mut resume = false;
    let mut pq = false;
    let mut no_verify = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .unwrap_or_else(|| fail(&format!("{name} needs a value")))
        };
        match a.as_str() {
            // `cargo bench` passes `--bench` to harness = false targets.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--url" => url = Some(value("--url")),
            "--cacert" => cacert = Some(PathBuf::from(value("--cacert"))),
            "--connections" => {
                let v = value("--connections");
                connections = match v.parse() {
                    Ok(n) if n > 0 => n,
                    _ => fail(&format!(
                        "--connections must be a positive integer, got '{v}'"
                    )),
                };
            }
            "--duration" => {
                let v = value("--duration");
                duration = parse_duration(&v)
                    .filter(|d| !d.is_zero())
                    .unwrap_or_else(|| fail(&format!("--duration must look like 10s, got '{v}'")));
            }
            "--warmup" => {
                let v = value("--warmup");
                warmup = parse_duration(&v)
                    .unwrap_or_else(|| fail(&format!("--warmup must look like 2s, got '{v}'")));
            }
            "--timeout" => {
                let v = value("--timeout");
                timeout = parse_duration(&v)
                    .filter(|d| !d.is_zero())
                    .unwrap_or_else(|| fail(&format!("--timeout must look like 2s, got '{v}'")));
            }
            "--resume" => resume = true,
            "--pq" => pq = true,
            "--no-verify" => no_verify = true,
            other => fail(&format!("unknown argument '{other}'")),
        }
    }
    let url = url.unwrap_or_else(|| fail("--url is required"));
    let (host, port, path) = parse_url(&url).unwrap_or_else(|| {
        fail(&format!(
            "--url must look like https://host:port/path, got '{url}'"
        ))
    });
    if cacert.is_none() && !no_verify {
        fail("--cacert is required (or --no-verify)");
    }
    let cacert = cacert.filter(|_| !no_verify);
    Args {
        url,
        host,
        port,
        path,
        cacert,
        connections,
        duration,
        warmup,
        timeout,
        resume,
        pq,
    }
}

/// Trusts a server certificate that is byte-equal to one of `pinned`, and
/// verifies any other with webpki against the same certificates as roots.
/// The handshake signature is verified in both cases.
#[derive(Debug)]
struct PinnedOrWebPki {
    /// false: --no-verify, everything is accepted unchecked.
    verify: bool,
    pinned: Vec<CertificateDer<'static>>,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.verify
            || self
                .pinned
                .iter()
                .any(|c| c.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.verify {
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.verify {
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn client_config(args: &Args) -> rustls::ClientConfig {
    let mut provider = aws_lc_rs::default_provider();
    if !args.pq {
        // What OpenSSL 3.0 (wrk) offers: a key share for X25519 only.
        provider.kx_groups = vec![
            aws_lc_rs::kx_group::X25519,
            aws_lc_rs::kx_group::SECP256R1,
            aws_lc_rs::kx_group::SECP384R1,
        ];
    }
    let provider = Arc::new(provider);
    let mut pinned: Vec<CertificateDer<'static>> = Vec::new();
    if let Some(path) = &args.cacert {
        pinned = match CertificateDer::pem_file_iter(path) {
            Ok(iter) => iter.filter_map(Result::ok).collect(),
            Err(e) => die(&format!("cannot read --cacert {}: {e}", path.display())),
        };
        if pinned.is_empty() {
            die(&format!(
                "no PEM certificate in --cacert {}",
                path.display()
            ));
        }
    }
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(pinned.iter().cloned());
    let webpki = if added > 0 {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .ok()
    } else {
        None
    };
    let verifier = Arc::new(PinnedOrWebPki {
        verify: args.cacert.is_some(),
        pinned,
        webpki,
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| die(&format!("TLS versions: {e}")))
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    config
}

/// What every loop shares: built once, cloned for nothing per connection.
struct Target {
    addr: SocketAddr,
    /// Borrows a leaked `&'static str`: cloning it does not allocate.
    server_name: ServerName<'static>,
    request: Vec<u8>,
    timeout: Duration,
}

/// One loop's counts; merged at the end.
#[derive(Default)]
struct Stats {
    /// Connect start to the response's EOF, µs, of measured responses.
    latencies_us: Vec<u32>,
    ok: u64,
    non200: u64,
    bytes: u64,
    connect_errors: u64,
    read_errors: u64,
    write_errors: u64,
    timeouts: u64,
    full: u64,
    full_hrr: u64,
    resumed: u64,
    /// The peer closed TCP without a TLS close_notify after a response.
    unclean_eof: u64,
    /// Protocol, cipher suite, key exchange, ALPN of the first handshake.
    negotiated: Option<String>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.latencies_us.extend_from_slice(&o.latencies_us);
        self.ok += o.ok;
        self.non200 += o.non200;
        self.bytes += o.bytes;
        self.connect_errors += o.connect_errors;
        self.read_errors += o.read_errors;
        self.write_errors += o.write_errors;
        self.timeouts += o.timeouts;
        self.full += o.full;
        self.full_hrr += o.full_hrr;
        self.resumed += o.resumed;
        self.unclean_eof += o.unclean_eof;
        if self.negotiated.is_none() {
            self.negotiated = o.negotiated;
        }
    }
}

enum Failure {
    /// TCP connect or TLS handshake (wrk counts both as connect errors).
    Connect,
    Write,
    Read,
}

struct Exchange {
    status_200: bool,
    bytes: u64,
    kind: Option<HandshakeKind>,
    unclean_eof: bool,
}

const STATUS_200: &[u8] = b"HTTP/1.1 200";

/// One connection: connect, handshake, GET, read to EOF. `describe` asks
/// for the negotiated parameters (the first exchange of a loop).
async fn exchange(
    t: &Target,
    connector: &TlsConnector,
    buf: &mut [u8],
    describe: &mut Option<String>,
) -> Result<Exchange, Failure> {
    let tcp = TcpStream::connect(t.addr)
        .await
        .map_err(|_| Failure::Connect)?;
    let _ = tcp.set_nodelay(true);
    let mut tls = connector
        .connect(t.server_name.clone(), tcp)
        .await
        .map_err(|_| Failure::Connect)?;
    let conn = tls.get_ref().1;
    let kind = conn.handshake_kind();
    if describe.is_none() {
        let or_none = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        *describe = Some(format!(
            "{} {}, key exchange {}, ALPN {}",
            or_none(conn.protocol_version().map(|v| format!("{v:?}"))),
            or_none(
                conn.negotiated_cipher_suite()
                    .map(|s| format!("{:?}", s.suite()))
            ),
            or_none(
                conn.negotiated_key_exchange_group()
                    .map(|g| format!("{:?}", g.name()))
            ),
            or_none(
                conn.alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
            ),
        ));
    }
    tls.write_all(&t.request)
        .await
        .map_err(|_| Failure::Write)?;
    tls.flush().await.map_err(|_| Failure::Write)?;
    let mut head = [0u8; STATUS_200.len()];
    let mut head_len = 0;
    let mut bytes = 0u64;
    let mut unclean_eof = false;
    loop {
        match tls.read(buf).await {
            Ok(0) => break,
            Ok(n) => {
                if head_len < head.len() {
                    let k = (head.len() - head_len).min(n);
                    head[head_len..head_len + k].copy_from_slice(&buf[..k]);
                    head_len += k;
                }
                bytes += n as u64;
            }
            // TCP closed without close_notify: the response is whatever
            // came before it (servers may skip close_notify on close).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && bytes > 0 => {
                unclean_eof = true;
                break;
            }
            Err(_) => return Err(Failure::Read),
        }
    }
    if bytes == 0 {
        return Err(Failure::Read);
    }
    Ok(Exchange {
        status_200: head_len == head.len() && head == STATUS_200,
        bytes,
        kind,
        unclean_eof,
    })
}

/// A closed loop until `deadline`; only connections started at or after
/// `measure_from` are counted. A connection still open at the deadline is
/// dropped uncounted, as wrk does.
async fn client_loop(
    t: Arc<Target>,
    connector: TlsConnector,
    measure_from: Instant,
    deadline: Instant,
) -> Stats {
    let mut s = Stats::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let start = Instant::now();
        if start >= deadline {
            break;
        }
        let until = (start + t.timeout).min(deadline);
        let res =
            tokio::time::timeout_at(until, exchange(&t, &connector, &mut buf, &mut s.negotiated))
                .await;
        let end = Instant::now();
        if start < measure_from {
            continue;
        }
        match res {
            // The run's end, not this connection's timeout.
            Err(_) if until == deadline => break,
            Err(_) => s.timeouts += 1,
            Ok(Err(Failure::Connect)) => s.connect_errors += 1,
            Ok(Err(Failure::Write)) => s.write_errors += 1,
            Ok(Err(Failure::Read)) => s.read_errors += 1,
            Ok(Ok(x)) => {
                let us = (end - start).as_micros().min(u32::MAX as u128) as u32;
                s.latencies_us.push(us);
                s.bytes += x.bytes;
                if x.status_200 {
                    s.ok += 1;
                } else {
                    s.non200 += 1;
                }
                match x.kind {
                    Some(HandshakeKind::Full) => s.full += 1,
                    Some(HandshakeKind::FullWithHelloRetryRequest) => s.full_hrr += 1,
                    Some(HandshakeKind::Resumed) => s.resumed += 1,
                    None => {}
                }
                s.unclean_eof += x.unclean_eof as u64;
            }
        }
    }
    s
}

/// User and system CPU of this process so far, in µs.
fn cpu_us() -> (u64, u64) {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0, 0);
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime), us(ru.ru_stime))
}

/// wrk's time format: 812.00us, 2.73ms, 1.02s.
fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2}s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{us:.2}us")
    }
}

/// wrk's byte format (powers of 1024): 1.20MB.
fn fmt_bytes(b: f64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.2}{}", units[i])
}

fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn main() {
    let args = parse_args();
    let addr = (args.host.as_str(), args.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| die(&format!("cannot resolve {}:{}", args.host, args.port)));
    let host: &'static str = Box::leak(args.host.clone().into_boxed_str());
    let server_name = ServerName::try_from(host)
        .unwrap_or_else(|_| fail(&format!("'{host}' is not a valid TLS server name")));
    let config = Arc::new(client_config(&args));
    // One connector for all loops; with --resume one per loop, each with
    // its own session cache (see the top of this file).
    let connectors: Vec<TlsConnector> = (0..args.connections)
        .map(|_| {
            if args.resume {
                let mut c = (*config).clone();
                c.resumption = Resumption::in_memory_sessions(8);
                TlsConnector::from(Arc::new(c))
            } else {
                TlsConnector::from(config.clone())
            }
        })
        .collect();
    let host_header = if args.port == 443 {
        host.to_string()
    } else if host.contains(':') {
        format!("[{host}]:{}", args.port)
    } else {
        format!("{host}:{}", args.port)
    };
    let target = Arc::new(Target {
        addr,
        server_name,
        request: format!(
            "GET {} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n",
            args.path
        )
        .into_bytes(),
        timeout: args.timeout,
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("tokio runtime: {e}")));
    println!(
        "Running {} test @ {}",
        fmt_duration(args.duration),
        args.url
    );
    println!(
        "  1 threads and {} connections (handshake_load: rustls {}, {}, {})",
        args.connections,
        if args.pq { "default groups" } else { "X25519" },
        if args.cacert.is_some() {
            "verified"
        } else {
            "not verified"
        },
        if args.resume {
            "resumption allowed"
        } else {
            "full handshakes only"
        }
    );
    let (stats, elapsed, cpu) = rt.block_on(async {
        let start = Instant::now();
        let measure_from = start + args.warmup;
        let deadline = measure_from + args.duration;
        let handles: Vec<_> = connectors
            .into_iter()
            .map(|c| tokio::spawn(client_loop(target.clone(), c, measure_from, deadline)))
            .collect();
        tokio::time::sleep_until(measure_from).await;
        let cpu0 = cpu_us();
        let mut all = Stats::default();
        for h in handles {
            match h.await {
                Ok(s) => all.merge(s),
                Err(e) => eprintln!("handshake_load: a loop failed: {e}"),
            }
        }
        // The window the counted connections started in (cpu0 may be read a
        // little after its start on a busy machine).
        let elapsed = measure_from.elapsed();
        let cpu1 = cpu_us();
        (
            all,
            elapsed,
            (cpu1.0.saturating_sub(cpu0.0), cpu1.1.saturating_sub(cpu0.1)),
        )
    });
    report(stats, elapsed, cpu);
}

fn report(mut s: Stats, elapsed: Duration, cpu: (u64, u64)) {
    let n = s.latencies_us.len();
    s.latencies_us.sort_unstable();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let lat = &s.latencies_us;
    let (mean, stdev, max, within) = if n == 0 {
        (0.0, 0.0, 0.0, 0.0)
    } else {
        let mean = lat.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = lat.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let sd = var.sqrt();
        let within = lat
            .iter()
            .filter(|&&v| (v as f64 - mean).abs() <= sd)
            .count() as f64
            * 100.0
            / n as f64;
        (mean, sd, lat[n - 1] as f64, within)
    };
    let pct = |p: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let i = ((p / 100.0) * n as f64).ceil() as usize;
        lat[i.clamp(1, n) - 1] as f64
    };
    println!("  Thread Stats   Avg      Stdev     Max   +/- Stdev");
    println!(
        "    Latency   {:>8}  {:>8}  {:>8}  {:>7.2}%",
        fmt_us(mean),
        fmt_us(stdev),
        fmt_us(max),
        within
    );
    println!("  Latency Distribution");
    for p in [50.0, 75.0, 90.0, 99.0] {
        println!("  {:>4}%  {:>8}", p as u32, fmt_us(pct(p)));
    }
    println!(
        "  {n} requests in {:.2}s, {} read",
        secs,
        fmt_bytes(s.bytes as f64)
    );
    println!(
        "  Socket errors: connect {}, read {}, write {}, timeout {}",
        s.connect_errors, s.read_errors, s.write_errors, s.timeouts
    );
    if s.non200 > 0 {
        println!("  Non-2xx or 3xx responses: {}", s.non200);
    }
    println!(
        "  Handshakes: {} full, {} full with HelloRetryRequest, {} resumed",
        s.full, s.full_hrr, s.resumed
    );
    if let Some(neg) = &s.negotiated {
        println!("  Negotiated: {neg}");
    }
    if s.unclean_eof > 0 {
        println!(
            "  Closed without close_notify: {} (counted as complete responses)",
            s.unclean_eof
        );
    }
    let per = |v: u64| if n > 0 { v as f64 / n as f64 } else { 0.0 };
    println!(
        "  Client CPU: {:.2} us per handshake (user {:.2}, sys {:.2}); {:.1}% of one core",
        per(cpu.0 + cpu.1),
        per(cpu.0),
        per(cpu.1),
        (cpu.0 + cpu.1) as f64 / 1e4 / secs
    );
    println!("Requests/sec: {:>10.2}", n as f64 / secs);
    println!("Transfer/sec: {:>10}", fmt_bytes(s.bytes as f64 / secs));
}
