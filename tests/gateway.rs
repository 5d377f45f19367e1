//! End-to-end behaviour of the proxy core over real sockets: real upstream
//! servers on 127.0.0.1:0, a real gateway, real HTTP/1.1 and HTTP/2 clients.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_http1_and_http2_prior_knowledge() {
    let up = spawn_upstream("alpha").await;
    let gw = start_gateway(&simple_config(&[up.addr], "", "")).await;
    let addr = gw.addr("http").unwrap();

    let a = get(addr, "/hello?x=1").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "alpha /hello");
    assert_eq!(
        up.seen.last_path.lock().unwrap().as_deref(),
        Some("/hello?x=1")
    );

    let req = Request::get(format!("http://{addr}/h2"))
        .body(empty())
        .unwrap();
    let a = send(&http2_client(), req).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "alpha /h2");
    // The upstream still gets a Host header (from :authority).
    let host = up.seen.last_headers.lock().unwrap().as_ref().unwrap()["host"].clone();
    assert_eq!(host, addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let up = spawn_upstream("alpha").await;
    let gw = start_gateway(&simple_config(&[up.addr], "", "")).await;
    let addr = gw.addr("http").unwrap();
    for i in 0..20 {
        let a = get(addr, &format!("/n/{i}")).await;
        assert_eq!(a.status, 200);
    }
    assert_eq!(up.seen.hits.load(Ordering::SeqCst), 20);
    assert_eq!(
        up.seen.connections.load(Ordering::SeqCst),
        1,
        "one pooled upstream connection"
    );
    let metrics = admin(&gw, "/metrics").await.body;
    let opened = r#"portcullis_upstream_connections_opened_total{upstream="up"}"#;
    assert_eq!(metric(&metrics, opened), 1.0, "{metrics}");
    let status = admin(&gw, "/status").await.json();
    assert_eq!(
        status["upstreams"][0]["endpoints"][0]["idle_connections"],
        1
    );
}

/// With one worker (a current-thread runtime), a bodiless request's head is
/// queued and written after the tasks that are ready have run
/// (`upstream::write_behind`). Concurrent requests all reach the upstream
/// and come back, kept-alive connections are reused, and a head too large
/// to queue is written directly. Each gateway has its own writer, flushed
/// on its own runtime: one left over from the first runtime would leave the
/// second's requests unsent, and this test would time out.
#[test]
fn queued_request_heads_reach_the_upstream_on_each_runtime_of_a_thread() {
    for round in 0..2 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let up = spawn_upstream("alpha").await;
            let gw = start_gateway(&simple_config(&[up.addr], "", "")).await;
            let addr = gw.addr("http").unwrap();
            let batch: Vec<_> = (0..32)
                .map(|i| tokio::spawn(async move { get(addr, &format!("/n/{i}")).await }))
                .collect();
            for (i, task) in batch.into_iter().enumerate() {
                let a = tokio::time::timeout(Duration::from_secs(5), task)
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: /n/{i} unanswered after 5 s"))
                    .unwrap();
                assert_eq!(a.status, 200, "round {round}");
                assert_eq!(a.body, format!("alpha /n/{i}"), "round {round}");
            }
            let opened = up.seen.connections.load(Ordering::SeqCst);
            for i in 0..10 {
                assert_eq!(get(addr, &format!("/again/{i}")).await.status, 200);
            }
            assert_eq!(
                up.seen.connections.load(Ordering::SeqCst),
                opened,
                "round {round}: sequential requests reuse the pool"
            );
            let big = "x".repeat(6000);
            let req = Request::get(format!("http://{addr}/big"))
                .header("x-big", &big)
                .body(empty())
                .unwrap();
            assert_eq!(send(&http1_client(), req).await.status, 200);
            let seen = up.seen.last_headers.lock().unwrap().clone().unwrap();
            assert_eq!(seen["x-big"], big.as_str(), "round {round}");
        });
    }
}

/// The next request head on a raw upstream's connection (`buf` keeps
/// what was read past it); `None` when the connection ends or stays silent
/// for 5 s.
async fn next_head(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// A raw upstream answering each request on a connection with `200 n`,
/// then, per `close`: `Some(None)` closes with `Connection: close`,
/// `Some(Some(t))` closes silently `t` after the answer (a keep-alive
/// timeout shorter than the gateway's), `None` keeps it open.
async fn closing_upstream(close: Option<Option<Duration>>) -> std::net::SocketAddr {
    spawn_raw(move |mut s| async move {
        let mut buf = Vec::new();
        while next_head(&mut s, &mut buf).await.is_some() {
            let connection = if close == Some(None) {
                "close"
            } else {
                "keep-alive"
            };
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: {connection}\r\n\r\nok"
            );
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            match close {
                Some(None) => return,
                Some(Some(after)) => {
                    tokio::time::sleep(after).await;
                    return;
                }
                None => {}
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_its_connections_costs_no_request() {
    let opened = r#"portcullis_upstream_connections_opened_total{upstream="up"}"#;

    // `Connection: close` on every answer: a new connection each time,
    // never a dead one reused.
    let up = closing_upstream(Some(None)).await;
    let gw = start_gateway(&simple_config(&[up], "", "")).await;
    let addr = gw.addr("http").unwrap();
    for i in 0..10 {
        let a = get(addr, &format!("/close/{i}")).await;
        assert_eq!(
            (a.status.as_u16(), a.body.as_str()),
            (200, "ok"),
            "request {i}"
        );
    }
    let metrics = admin(&gw, "/metrics").await.body;
    assert_eq!(metric(&metrics, opened), 10.0, "{metrics}");

    // Closed silently 50 ms after each answer, requests 200 ms apart: each
    // finds its pooled connection dead and opens a new one, unseen.
    let up = closing_upstream(Some(Some(Duration::from_millis(50)))).await;
    let gw = start_gateway(&simple_config(&[up], "", "")).await;
    let addr = gw.addr("http").unwrap();
    for i in 0..5 {
        let a = get(addr, &format!("/idle/{i}")).await;
        assert_eq!(
            (a.status.as_u16(), a.body.as_str()),
            (200, "ok"),
            "request {i}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = admin(&gw, "/metrics").await.body;
    assert_eq!(metric(&metrics, opened), 5.0, "{metrics}");
    let status = admin(&gw, "/status").await.json();
    let idle = &status["upstreams"][0]["endpoints"][0]["idle_connections"];
    assert!(idle.as_u64().unwrap() <= 1, "{status}");

    // Kept open: ten requests, one connection.
    let up = closing_upstream(None).await;
    let gw = start_gateway(&simple_config(&[up], "", "")).await;
    let addr = gw.addr("http").unwrap();
    for i in 0..10 {
        let a = get(addr, &format!("/open/{i}")).await;
        assert_eq!(a.status, 200, "request {i}");
    }
    let metrics = admin(&gw, "/metrics").await.body;
    assert_eq!(metric(&metrics, opened), 1.0, "{metrics}");
}

/// An upstream that answers each path with a fixed answer, framed its way;
/// `/until-close` and `/http10` end their connection after answering.
async fn framing_upstream() -> std::net::SocketAddr {
    spawn_raw(move |mut s| async move {
        let mut buf = Vec::new();
        while let Some(head) = next_head(&mut s, &mut buf).await {
            let mut line = head.split(' ');
            let (method, path) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
            let answer: &[u8] = match (method, path) {
                ("HEAD", _) => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                (_, "/length") => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                (_, "/chunked") => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-checksum: 1\r\n\r\n",
                (_, "/no-content") => b"HTTP/1.1 204 No Content\r\n\r\n",
                (_, "/continue") => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                (_, "/until-close") => b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
                (_, "/http10") => b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n10",
                _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            };
            if s.write_all(answer).await.is_err() {
                return;
            }
            if path == "/until-close" || path == "/http10" {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_framing_is_relayed_and_only_clean_connections_reused() {
    let opened = r#"portcullis_upstream_connections_opened_total{upstream="up"}"#;
    let up = framing_upstream().await;
    let gw = start_gateway(&simple_config(&[up], "", "")).await;
    let addr = gw.addr("http").unwrap();
    let client = http1_client();
    let opened_now = || async { metric(&admin(&gw, "/metrics").await.body, opened) };

    // Length, chunked (extensions and trailers), 204, HEAD and a 100
    // Continue before the answer: all on one kept-alive connection.
    for (path, status, body) in [
        ("/length", 200, "hello"),
        ("/chunked", 200, "hello world"),
        ("/no-content", 204, ""),
        ("/continue", 200, "ok"),
        ("/length", 200, "hello"),
    ] {
        let a = get(addr, path).await;
        assert_eq!(
            (a.status.as_u16(), a.body.as_str()),
            (status, body),
            "{path}"
        );
    }
    let head = send(
        &client,
        Request::head(format!("http://{addr}/length"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!((head.status.as_u16(), head.body.as_str()), (200, ""));
    assert_eq!(opened_now().await, 1.0);

    // A body that runs until the upstream closes: relayed whole; the
    // connection cannot be used again, so the next request opens one.
    let a = get(addr, "/until-close").await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "until the end"));
    let a = get(addr, "/length").await;
    assert_eq!(a.body, "hello");
    assert_eq!(opened_now().await, 2.0);

    // HTTP/1.0 without keep-alive: answered, and not reused.
    let a = get(addr, "/http10").await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "10"));
    let a = get(addr, "/length").await;
    assert_eq!(a.body, "hello");
    assert_eq!(opened_now().await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_without_buffering() {
    const SIZE: u64 = 256 << 20;
    let up = spawn_upstream("alpha").await;
    let gw = start_gateway(&simple_config(&[up.addr], "  max_body_bytes: 1GiB\n", "")).await;
    let addr = gw.addr("http").unwrap();
    let client = http1_client();
    let before = rss_kib();

    // Upload, chunked (no Content-Length), 256 MiB.
    let req = Request::post(format!("http://{addr}/upload"))
        .body(stream_bytes(SIZE))
        .unwrap();
    let a = send(&client, req).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(up.seen.body_bytes.load(Ordering::SeqCst) as u64, SIZE);

    // Download, 256 MiB, counted as it arrives.
    use http_body_util::BodyExt;
    let req = Request::get(format!("http://{addr}/bytes/{SIZE}"))
        .body(empty())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, SIZE);
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    // Gateway, upstream and client share this process; 512 MiB went through.
    assert!(
        grown_mib < 64,
        "memory grew by {grown_mib} MiB while streaming"
    );
}

/// (method, path, headers, expected body or status) for one routing check.
type RouteCase<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

fn routing_config(a: &Upstream, b: &Upstream, c: &Upstream) -> String {
    format!(
        "listeners:\n  - {{ name: http, bind: '127.0.0.1:0' }}\nadmin: {{ bind: '127.0.0.1:0' }}\n\
server: {{ access_log: false }}\n\
upstreams:\n\
  - {{ name: a, endpoints: ['{}'] }}\n\
  - {{ name: b, endpoints: ['{}'] }}\n\
  - {{ name: c, endpoints: ['{}'] }}\n\
routes:\n\
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: a }}\n\
  - {{ name: users, match: {{ path_prefix: /api/users }}, upstream: b, strip_prefix: /api }}\n\
  - {{ name: me, match: {{ path: /api/users/me }}, upstream: c }}\n\
  - {{ name: post-only, match: {{ path_prefix: /write, methods: [POST] }}, upstream: a }}\n\
  - {{ name: hosted, match: {{ path_prefix: /h, host: '*.example.com' }}, upstream: b }}\n\
  - {{ name: beta, match: {{ path_prefix: /f, headers: {{ x-beta: 'on' }} }}, upstream: c }}\n\
  - {{ name: stable, match: {{ path_prefix: /f }}, upstream: a }}\n",
        a.addr, b.addr, c.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_rules() {
    let (a, b, c) = (
        spawn_upstream("a").await,
        spawn_upstream("b").await,
        spawn_upstream("c").await,
    );
    let gw = start_gateway(&routing_config(&a, &b, &c)).await;
    let addr = gw.addr("http").unwrap();
    let client = http1_client();
    let req = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let mut r = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(empty()).unwrap()
    };
    // (method, path, headers) → the body `<upstream> <path it saw>`, or the status.
    let cases: &[RouteCase<'_>] = &[
        // Longest prefix wins, on segment boundaries; strip_prefix rewrites.
        ("GET", "/api/users/42?q=1", &[], "b /users/42"),
        ("GET", "/api/users", &[], "b /users"),
        ("GET", "/api/usersX", &[], "a /api/usersX"),
        // An exact path beats any prefix.
        ("GET", "/api/users/me", &[], "c /api/users/me"),
        // Methods.
        ("POST", "/write", &[], "a /write"),
        ("GET", "/write", &[], "404"),
        // Host wildcard, case-insensitive, port ignored.
        ("GET", "/h", &[("host", "X.Example.COM:8080")], "b /h"),
        ("GET", "/h", &[("host", "example.com")], "404"),
        // Header match; ties on the same prefix go to the first listed.
        ("GET", "/f", &[("x-beta", "on")], "c /f"),
        ("GET", "/f", &[("x-beta", "off")], "a /f"),
    ];
    for (method, path, headers, want) in cases {
        let a = send(&client, req(method, path, headers)).await;
        if a.status == 200 {
            assert_eq!(a.body, *want, "{method} {path} {headers:?}");
        } else {
            assert_eq!(a.status.as_str(), *want, "{method} {path} {headers:?}");
            assert_eq!(a.json()["error"], "no_route");
        }
    }
    // strip_prefix keeps the query string.
    send(&client, req("GET", "/api/users/7?q=1&r=2", &[])).await;
    assert_eq!(
        b.seen.last_path.lock().unwrap().as_deref(),
        Some("/users/7?q=1&r=2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_a_problem_document_and_is_counted() {
    let up = spawn_upstream("a").await;
    let yaml = simple_config(&[up.addr], "", "").replace("path_prefix: /", "path_prefix: /only");
    let gw = start_gateway(&yaml).await;
    let a = get(gw.addr("http").unwrap(), "/elsewhere").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.headers["content-type"], "application/problem+json");
    let doc = a.json();
    assert_eq!(doc["type"], "urn:portcullis:problem:no_route");
    assert_eq!(doc["title"], "Not Found");
    assert_eq!(doc["status"], 404);
    assert_eq!(doc["error"], "no_route");
    assert_eq!(
        doc["request_id"],
        a.headers["x-request-id"].to_str().unwrap()
    );
    assert!(doc["detail"].as_str().unwrap().len() > 5);
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(
        metric(
            &m,
            "portcullis_rejections_total{reason=\"no_route\",route=\"\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "portcullis_requests_total{route=\"\",status=\"404\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(up.seen.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_follows_weights() {
    let (stable, canary) = (
        spawn_upstream("stable").await,
        spawn_upstream("canary").await,
    );
    let yaml = format!(
        "listeners: [{{ name: http, bind: '127.0.0.1:0' }}]\nadmin: {{ bind: '127.0.0.1:0' }}\n\
         server: {{ access_log: false }}\n\
         upstreams:\n  - {{ name: s, endpoints: ['{}'] }}\n  - {{ name: c, endpoints: ['{}'] }}\n\
         routes:\n  - name: r\n    match: {{ path_prefix: / }}\n    split:\n      - {{ upstream: s, weight: 80 }}\n      - {{ upstream: c, weight: 20 }}\n",
        stable.addr, canary.addr
    );
    let gw = start_gateway(&yaml).await;
    let addr = gw.addr("http").unwrap();
    let client = http1_client();
    const N: usize = 2000;
    for _ in 0..N {
        let req = Request::get(format!("http://{addr}/"))
            .body(empty())
            .unwrap();
        assert_eq!(send(&client, req).await.status, 200);
    }
    let share = canary.seen.hits.load(Ordering::SeqCst) as f64 / N as f64;
    // 20% ± 4.5% (five standard deviations at N = 2000).
    assert!((0.155..0.245).contains(&share), "canary share {share}");
    assert_eq!(
        stable.seen.hits.load(Ordering::SeqCst) + canary.seen.hits.load(Ordering::SeqCst),
        N
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_least_requests() {
    let (e1, e2) = (spawn_upstream("e1").await, spawn_upstream("e2").await);
    let gw = start_gateway(&simple_config(&[e1.addr, e2.addr], "", "")).await;
    let addr = gw.addr("http").unwrap();
    for _ in 0..10 {
        get(addr, "/").await;
    }
    assert_eq!(e1.seen.hits.load(Ordering::SeqCst), 5);
    assert_eq!(e2.seen.hits.load(Ordering::SeqCst), 5);

    // least_requests: a slow endpoint keeps requests in flight, so most new
    // requests go to the fast one.
    let slow = spawn_upstream_with_delay("slow", Duration::from_millis(400)).await;
    let fast = spawn_upstream("fast").await;
    let gw = start_gateway(&simple_config(
        &[slow.addr, fast.addr],
        "",
        "    balance: least_requests\n",
    ))
    .await;
    let addr = gw.addr("http").unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move { get(addr, "/").await.status }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let slow_hits = slow.seen.hits.load(Ordering::SeqCst);
    assert!(slow_hits <= 3, "slow endpoint got {slow_hits} of 20");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_hygiene_both_ways() {
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(&[up.addr], "", "")).await;
    let addr = gw.addr("http").unwrap();
    let req = Request::get(format!("http://{addr}/hop"))
        .header("connection", "x-client-private")
        .header("x-client-private", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "secret")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "forged.example")
        .header("x-request-id", "not a sane id")
        .header("traceparent", "00-not-a-trace")
        .header("host", "api.example.com")
        .body(empty())
        .unwrap();
    let a = send(&http1_client(), req).await;
    assert_eq!(a.status, 200);
    // Towards the upstream.
    let seen = up.seen.last_headers.lock().unwrap().clone().unwrap();
    for gone in [
        "x-client-private",
        "keep-alive",
        "te",
        "proxy-authorization",
    ] {
        assert!(
            !seen.contains_key(gone),
            "{gone} reached the upstream: {seen:?}"
        );
    }
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "api.example.com");
    assert_eq!(seen["host"], "api.example.com");
    assert_eq!(seen["x-request-id"], a.headers["x-request-id"]);
    assert_ne!(seen["traceparent"], "00-not-a-trace");
    // The gateway's fields replace the client's copies: one line each.
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
        "traceparent",
    ] {
        assert_eq!(seen.get_all(name).iter().count(), 1, "{name}: {seen:?}");
    }
    // Towards the client.
    assert!(
        !a.headers.contains_key("x-upstream-private"),
        "{:?}",
        a.headers
    );
    assert!(!a.headers.contains_key("keep-alive"), "{:?}", a.headers);
    assert_eq!(a.headers["x-upstream-public"], "1");

    // A client naming the gateway's own headers in `Connection` removes its
    // own copies, never the gateway's (fuzz/header_hygiene regression), and
    // every X-Forwarded-For line reaches the upstream, in order.
    let req = Request::get(format!("http://{addr}/"))
        .header(
            "connection",
            "x-request-id, traceparent, x-forwarded-for, x-client-cert-subject",
        )
        .header("x-request-id", "client-id")
        .header("x-client-cert-subject", "CN=forged")
        .header("x-forwarded-for", "203.0.113.7")
        .body(empty())
        .unwrap();
    let a = send(&http1_client(), req).await;
    let seen = up.seen.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-request-id"], a.headers["x-request-id"]);
    assert_ne!(seen["x-request-id"], "client-id", "hop-by-hop: dropped");
    assert!(seen.contains_key("traceparent"));
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert!(!seen.contains_key("x-client-cert-subject"));
    let req = Request::get(format!("http://{addr}/"))
        .header("x-forwarded-for", "1.1.1.1")
        .header("x-forwarded-for", "2.2.2.2")
        .body(empty())
        .unwrap();
    send(&http1_client(), req).await;
    let seen = up.seen.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_and_traceparent() {
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(&[up.addr], "", "")).await;
    let addr = gw.addr("http").unwrap();
    let client = http1_client();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::get(format!("http://{addr}/"))
        .header("x-request-id", "client-id-1")
        .header("traceparent", tp)
        .body(empty())
        .unwrap();
    let a = send(&client, req).await;
    assert_eq!(a.headers["x-request-id"], "client-id-1");
    let seen = up.seen.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-request-id"], "client-id-1");
    assert_eq!(seen["traceparent"], tp);

    let a = get(addr, "/").await;
    let id = a.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    let seen = up.seen.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(
        seen["x-request-id"],
        id.as_str(),
        "a generated id is forwarded too"
    );
    let created = seen["traceparent"].to_str().unwrap();
    assert!(
        portcullis::proxy::valid_traceparent(created.as_bytes()),
        "{created}"
    );
    // A malformed traceparent is replaced.
    let req = Request::get(format!("http://{addr}/"))
        .header("traceparent", "garbage")
        .body(empty())
        .unwrap();
    send(&client, req).await;
    let seen = up.seen.last_headers.lock().unwrap().clone().unwrap();
    assert!(portcullis::proxy::valid_traceparent(
        seen["traceparent"].as_bytes()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_body_limits() {
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(
        &[up.addr],
        "  max_header_bytes: 2KiB\n  max_body_bytes: 1KiB\n",
        "",
    ))
    .await;
    let addr = gw.addr("http").unwrap();
    let client = http1_client();

    let req = Request::get(format!("http://{addr}/"))
        .header("x-big", "v".repeat(3000))
        .body(empty())
        .unwrap();
    let a = send(&client, req).await;
    assert_eq!(a.status, 431);
    assert_eq!(a.json()["error"], "headers_too_large");

    let req = Request::post(format!("http://{addr}/"))
        .body(full(vec![b'x'; 2048]))
        .unwrap();
    let a = send(&client, req).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.json()["error"], "payload_too_large");

    // Chunked: no Content-Length; cut while streaming.
    let req = Request::post(format!("http://{addr}/chunked"))
        .body(stream_bytes(1 << 20))
        .unwrap();
    let a = send(&client, req).await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(a.json()["error"], "payload_too_large");

    // Within the limits all is well, on the same gateway.
    let req = Request::post(format!("http://{addr}/ok"))
        .body(full(vec![b'x'; 1000]))
        .unwrap();
    assert_eq!(send(&client, req).await.status, 200);
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(
        metric(
            &m,
            "portcullis_rejections_total{reason=\"payload_too_large\",route=\"all\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_rejections_total{reason=\"headers_too_large\",route=\"\"}"
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_extra_connections_and_keeps_serving() {
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(&[up.addr], "  max_connections: 2\n", "")).await;
    let addr = gw.addr("http").unwrap();
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The third is closed at once.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = third.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        third.read(&mut buf).await
    })
    .await
    .expect("closed quickly");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "third connection was served: {n:?}"
    );
    // The first two still work.
    for s in [&mut first, &mut second] {
        s.write_all(b"GET /still HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    let m = admin(&gw, "/metrics").await.body;
    assert!(
        metric(
            &m,
            "portcullis_connections_rejected_total{listener=\"http\",reason=\"max_connections\"}"
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_but_idle_keep_alive_lives_until_idle_timeout() {
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(
        &[up.addr],
        "  header_read_timeout: 300ms\n  idle_timeout: 1500ms\n",
        "",
    ))
    .await;
    let addr = gw.addr("http").unwrap();

    // A head trickled byte by byte is cut after header_read_timeout.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    let mut closed = false;
    for b in b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: 1234567890\r\n".iter() {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !closed {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("closed");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "slowloris lasted {took:?}"
    );

    // An idle keep-alive connection outlives header_read_timeout...
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1024];
    s.write_all(b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(s.read(&mut buf).await.unwrap() > 0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.write_all(b"GET /2 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // ...and is closed once idle_timeout passes.
    let start = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(4), s.read(&mut buf))
        .await
        .expect("closed after idle_timeout");
    assert!(matches!(n, Ok(0) | Err(_)));
    let idle = start.elapsed();
    assert!(
        idle > Duration::from_millis(1000) && idle < Duration::from_millis(3000),
        "closed after {idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeouts() {
    // request_timeout (overridden by the route's timeout) → 504.
    let up = spawn_upstream("a").await;
    let yaml = simple_config(&[up.addr], "", "    request_timeout: 10s\n").replace(
        "    upstream: up\n",
        "    upstream: up\n    timeout: 200ms\n",
    );
    let gw = start_gateway(&yaml).await;
    let start = Instant::now();
    let a = get(gw.addr("http").unwrap(), "/delay/3000").await;
    assert_eq!(a.status, 504);
    assert_eq!(a.json()["error"], "upstream_timeout");
    assert_eq!(a.json()["upstream"], "up");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );

    // connect_timeout → 502: a listener whose accept queue is full never
    // completes the handshake.
    let blackhole = full_backlog_listener();
    let addr = blackhole.0;
    let gw = start_gateway(&simple_config(&[addr], "", "    connect_timeout: 300ms\n")).await;
    let start = Instant::now();
    let a = get(gw.addr("http").unwrap(), "/").await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(a.json()["error"], "bad_gateway");
    assert!(
        a.json()["detail"]
            .as_str()
            .unwrap()
            .contains("connect timed out"),
        "{}",
        a.body
    );
    assert!(
        start.elapsed() < Duration::from_millis(2000),
        "{:?}",
        start.elapsed()
    );
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(
        metric(
            &m,
            "portcullis_upstream_requests_total{upstream=\"up\",outcome=\"error\"}"
        ),
        1.0,
        "{m}"
    );
}

/// A loopback listener that never accepts, with its tiny backlog filled, so
/// new connection attempts hang in SYN_SENT. Keep the returned value alive.
fn full_backlog_listener() -> (
    std::net::SocketAddr,
    socket2::Socket,
    Vec<std::net::TcpStream>,
) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fillers.push(std::net::TcpStream::from(s));
    }
    std::thread::sleep(Duration::from_millis(100));
    (addr, sock, fillers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_502() {
    let refused = closed_port().await;
    let reset = spawn_raw(|s| async move { drop(s) }).await;
    let garbage = spawn_raw(|mut s| async move {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
    })
    .await;
    for (what, addr, cause) in [
        ("refused", refused, "refused"),
        ("reset", reset, "closed"),
        ("garbage", garbage, "invalid"),
    ] {
        let gw = start_gateway(&simple_config(&[addr], "", "")).await;
        let a = get(gw.addr("http").unwrap(), "/").await;
        assert_eq!(a.status, 502, "{what}: {}", a.body);
        let doc = a.json();
        assert_eq!(doc["error"], "bad_gateway", "{what}");
        assert!(
            doc["detail"].as_str().unwrap().contains(cause),
            "{what}: {doc}"
        );
        // The gateway itself is fine afterwards.
        assert_eq!(admin(&gw, "/health/live").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(&[up.addr], "", "")).await;
    get(gw.addr("http").unwrap(), "/x").await;
    assert_eq!(admin(&gw, "/health/live").await.status, 200);
    assert_eq!(admin(&gw, "/health/ready").await.status, 200);
    let m = admin(&gw, "/metrics").await;
    assert_eq!(m.status, 200);
    for series in [
        "portcullis_requests_total{route=\"all\",status=\"200\"} 1",
        "portcullis_request_duration_seconds_bucket{route=\"all\",le=\"+Inf\"} 1\n",
        "portcullis_request_duration_seconds_count{route=\"all\"} 1\n",
        "portcullis_upstream_requests_total{upstream=\"up\",outcome=\"ok\"} 1",
        "portcullis_in_flight_requests 0",
    ] {
        assert!(m.body.contains(series), "missing {series} in\n{}", m.body);
    }
    let status = admin(&gw, "/status").await.json();
    assert_eq!(status["generation"], 1);
    assert_eq!(status["config_hash"].as_str().unwrap().len(), 64);
    assert_eq!(status["upstreams"][0]["name"], "up");
    assert_eq!(
        status["upstreams"][0]["endpoints"][0]["address"],
        up.addr.to_string()
    );
    assert_eq!(admin(&gw, "/nope").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_drain_in_process() {
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(
        &[up.addr],
        "  drain_delay: 400ms\n  drain_timeout: 5s\n",
        "",
    ))
    .await;
    let addr = gw.addr("http").unwrap();
    let admin_addr = gw.admin_addr();

    // A keep-alive HTTP/1.1 connection with a slow request in flight.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /delay/900 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let drained = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // During drain_delay: not ready, but still serving new connections.
    assert_eq!(get(admin_addr, "/health/ready").await.status, 503);
    assert_eq!(get(addr, "/during-delay").await.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // After drain_delay: no new connections.
    let refused = TcpStream::connect(addr).await;
    assert!(
        refused.is_err(),
        "listener still accepting after drain_delay"
    );
    // The in-flight request finishes, marked Connection: close.
    expect_final_response(&mut conn, Duration::from_secs(3)).await;
    assert_eq!(drained.await.unwrap(), portcullis::Drained::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_drain_sends_goaway_to_http2_clients() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let up = spawn_upstream("a").await;
    let gw = start_gateway(&simple_config(
        &[up.addr],
        "  drain_delay: 0s\n  drain_timeout: 5s\n",
        "",
    ))
    .await;
    let addr = gw.addr("http").unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn_done = tokio::spawn(conn);
    let slow = sender.send_request(
        Request::get(format!("http://{addr}/delay/600"))
            .body(empty())
            .unwrap(),
    );
    let slow = tokio::spawn(slow);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let drained = tokio::spawn(gw.shutdown());
    // The stream in flight completes...
    let resp = slow
        .await
        .unwrap()
        .expect("in-flight HTTP/2 request completes");
    assert_eq!(resp.status(), 200);
    // ...and the server ends the connection (GOAWAY), so the client's
    // connection task finishes and new streams are refused.
    tokio::time::timeout(Duration::from_secs(3), conn_done)
        .await
        .expect("connection closed")
        .unwrap()
        .unwrap();
    let again = sender
        .send_request(
            Request::get(format!("http://{addr}/"))
                .body(empty())
                .unwrap(),
        )
        .await;
    assert!(again.is_err(), "a new stream was accepted after GOAWAY");
    assert_eq!(drained.await.unwrap(), portcullis::Drained::Clean);
}
