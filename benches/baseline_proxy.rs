//! The floor of our stack: the smallest HTTP/1.1 reverse proxy that can be
//! built from the crates Portcullis uses (hyper server, hyper-util pooled
//! client, one current-thread Tokio runtime, mimalloc), forwarding every
//! request to one upstream with no routing, hygiene, metrics or logs.
//! `benches/load.sh` runs it beside Portcullis so each feature's cost is
//! measured against what the stack itself costs (DESIGN.md, Benchmarks).
//!
//! Not a criterion bench: `cargo bench --bench baseline_proxy -- LISTEN UPSTREAM`
//! runs it until killed.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // `cargo bench` appends `--bench`; positional arguments are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1)) else {
        eprintln!("usage: baseline_proxy LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN_ADDR is IP:PORT");
    let authority: Authority = upstream.parse().expect("UPSTREAM_ADDR is HOST:PORT");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
        println!("baseline proxy on {listen} -> {authority}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            let authority = authority.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let client = client.clone();
                    let authority = authority.clone();
                    async move {
                        let (mut parts, body) = req.into_parts();
                        let mut uri = std::mem::take(&mut parts.uri).into_parts();
                        uri.scheme = Some(Scheme::HTTP);
                        uri.authority = Some(authority);
                        parts.uri = Uri::from_parts(uri).expect("valid uri");
                        let resp = client.request(Request::from_parts(parts, body)).await;
                        Ok::<_, Infallible>(match resp {
                            Ok(r) => r.map(Either::Left),
                            Err(_) => {
                                let mut r =
                                    hyper::Response::new(Either::Right(Empty::<Bytes>::new()));
                                *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                                r
                            }
                        })
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
