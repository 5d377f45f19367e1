//! Rate limits, load shedding, priorities and bulkheads (issue 5), against
//! real upstreams and real clients: bursts and refills, RateLimit headers,
//! key isolation and sources, shadow mode, the in-flight cap with a slow
//! upstream, per-upstream bulkheads and critical traffic under overload.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::{Request, StatusCode};
use portcullis::RunningGateway;

fn config(upstreams: &str, routes: &str, top: &str) -> String {
    format!(
        "listeners:\n  - {{ name: http, bind: '127.0.0.1:0' }}\nadmin: {{ bind: '127.0.0.1:0' }}\n\
         server: {{ access_log: false, trusted_proxies: ['127.0.0.1'] }}\n{top}\
         upstreams:\n{upstreams}routes:\n{routes}"
    )
}

async fn call(gw: &RunningGateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(format!("http://{}{path}", gw.addr("http").unwrap()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&http1_client(), req.body(empty()).unwrap()).await
}

fn up(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("  - {{ name: {name}, endpoints: ['{addr}']{extra} }}\n")
}

fn route(name: &str, prefix: &str, upstream: &str, extra: &str) -> String {
    format!(
        "  - {{ name: {name}, match: {{ path_prefix: {prefix} }}, upstream: {upstream}{extra} }}\n"
    )
}

const POLICY: &str =
    "rate_limits:\n  - { name: per-client, key: [header:x-api-key, ip], rate: 2/s, burst: 3 }\n";

/// The gateway's own response fields replace the upstream's copies, one
/// line each, whichever server writes the head: the native HTTP/1.1 one
/// (which writes them into the head itself), hyper's HTTP/1.1 and HTTP/2.
/// Those the gateway does not set on a route pass as the upstream sent them.
#[tokio::test]
async fn gateway_response_fields_replace_the_upstreams() {
    let a = spawn_upstream("a").await;
    for http1 in ["native", "hyper"] {
        let retry = ", retry: { attempts: 1, on: [503], attempts_header: true }";
        let routes = route(
            "limited",
            "/limited",
            "a",
            ", rate_limit: per-client, strip_prefix: /limited",
        ) + &route("open", "/gateway-fields", "a", "");
        let mut yaml = config(&up("a", a.addr, retry), &routes, POLICY);
        yaml = yaml.replace("server: {", &format!("server: {{ http1: {http1},"));
        let gw = start_gateway(&yaml).await;
        let addr = gw.addr("http").unwrap();
        for (client, proto) in [(http1_client(), "HTTP/1.1"), (http2_client(), "HTTP/2")] {
            let get = |path: &str, id: &str| {
                Request::get(format!("http://{addr}{path}"))
                    .header("x-request-id", id)
                    .header("x-api-key", "fields")
                    .body(empty())
                    .unwrap()
            };
            let what = format!("{http1} server, {proto}");
            let r = send(&client, get("/limited/gateway-fields", "client-id-1")).await;
            assert_eq!(r.status, 200, "{what}");
            let one = |name: &str| {
                let lines: Vec<_> = r.headers.get_all(name).iter().collect();
                assert_eq!(lines.len(), 1, "{what}: {name}: {:?}", r.headers);
                lines[0].to_str().unwrap().to_string()
            };
            assert_eq!(one("x-request-id"), "client-id-1", "{what}");
            assert_eq!(one("x-portcullis-upstream"), "a", "{what}");
            assert_eq!(one("x-portcullis-attempts"), "1", "{what}");
            assert_eq!(one("ratelimit-policy"), "\"per-client\";q=3;w=2", "{what}");
            assert!(one("ratelimit").starts_with("\"per-client\";r="), "{what}");
            // Not set by the gateway on this route: the upstream's own.
            assert_eq!(one("deprecation"), "@1", "{what}");
            assert_eq!(one("x-upstream-public"), "1", "{what}");

            let r = send(&client, get("/gateway-fields", "client-id-2")).await;
            assert_eq!(r.status, 200, "{what}");
            assert_eq!(r.headers["x-request-id"], "client-id-2", "{what}");
            assert_eq!(r.headers.get_all("x-request-id").iter().count(), 1);
            // No policy on this route: a backend's own limits show through.
            assert_eq!(r.headers["ratelimit"], "\"upstream\";r=9;t=9", "{what}");
            assert_eq!(r.headers["ratelimit-policy"], "\"upstream\";q=9;w=9");
        }
    }
}

#[tokio::test]
async fn a_burst_then_429_with_retry_after_and_ratelimit_headers_then_refill() {
    let a = spawn_upstream("a").await;
    let gw = start_gateway(&config(
        &up("a", a.addr, ""),
        &route("r", "/", "a", ", rate_limit: per-client"),
        POLICY,
    ))
    .await;
    let key = [("x-api-key", "k1")];
    for remaining in [2, 1, 0] {
        let r = call(&gw, "/x", &key).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["ratelimit-policy"], "\"per-client\";q=3;w=2");
        let state = r.headers["ratelimit"].to_str().unwrap().to_string();
        assert!(
            state.starts_with(&format!("\"per-client\";r={remaining};t=")),
            "{state}"
        );
    }
    let r = call(&gw, "/x", &key).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.headers["ratelimit"], "\"per-client\";r=0;t=2");
    let doc = r.json();
    assert_eq!(doc["error"], "rate_limited");
    assert_eq!(doc["policy"], "per-client");
    assert_eq!(doc["retry_after"], 1);
    assert_eq!(
        a.seen.hits.load(Ordering::SeqCst),
        3,
        "refused requests stay here"
    );

    // One token every 500 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(call(&gw, "/x", &key).await.status, 200);
    assert_eq!(call(&gw, "/x", &key).await.status, 429);
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(
        metric(
            &m,
            "portcullis_rate_limited_total{policy=\"per-client\",mode=\"enforce\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_rejections_total{reason=\"rate_limited\",route=\"r\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn keys_are_isolated_and_come_from_the_first_source_present() {
    let a = spawn_upstream("a").await;
    let gw = start_gateway(&config(
        &up("a", a.addr, ""),
        &route("r", "/", "a", ", rate_limit: per-client"),
        POLICY,
    ))
    .await;
    let status = async |h: &[(&str, &str)]| call(&gw, "/", h).await.status.as_u16();
    for _ in 0..3 {
        assert_eq!(status(&[("x-api-key", "alice")]).await, 200);
    }
    assert_eq!(status(&[("x-api-key", "alice")]).await, 429);
    assert_eq!(
        status(&[("x-api-key", "bob")]).await,
        200,
        "bob has his own bucket"
    );

    // No API key: the client's address. The peer (127.0.0.1) is a trusted
    // proxy, so X-Forwarded-For names the client, read from the right.
    let ip = |addr: &'static str| [("x-forwarded-for", addr)];
    for _ in 0..3 {
        assert_eq!(status(&ip("203.0.113.7")).await, 200);
    }
    assert_eq!(status(&ip("203.0.113.7")).await, 429);
    assert_eq!(
        status(&[("x-forwarded-for", "198.51.100.1, 203.0.113.7")]).await,
        429,
        "an address the client wrote on the left changes nothing"
    );
    assert_eq!(status(&ip("203.0.113.8")).await, 200, "another client");
    assert_eq!(
        status(&[("x-api-key", "carol"), ("x-forwarded-for", "203.0.113.7")]).await,
        200
    );
}

#[tokio::test]
async fn shadow_mode_refuses_nothing_and_counts_what_enforce_refuses() {
    let a = spawn_upstream("a").await;
    let policies = "rate_limits:\n\
        \x20 - { name: strict, key: header:x-api-key, rate: 1/s, burst: 2 }\n\
        \x20 - { name: trial, key: header:x-api-key, rate: 1/s, burst: 2, mode: shadow }\n";
    let routes = format!(
        "{}{}",
        route("enforced", "/e", "a", ", rate_limit: strict"),
        route("shadowed", "/s", "a", ", rate_limit: trial")
    );
    let gw = start_gateway(&config(&up("a", a.addr, ""), &routes, policies)).await;
    let mut refused = 0;
    for i in 0..12 {
        let key = format!("k{}", i % 3);
        let h = [("x-api-key", key.as_str())];
        if call(&gw, "/e", &h).await.status == 429 {
            refused += 1;
        }
        let r = call(&gw, "/s", &h).await;
        assert_eq!(r.status, 200, "shadow mode lets everything through");
        assert!(
            !r.headers.contains_key("ratelimit"),
            "no headers in shadow mode"
        );
    }
    assert!(refused >= 5, "{refused}");
    let m = admin(&gw, "/metrics").await.body;
    let count = |p: &str, mode: &str| {
        metric(
            &m,
            &format!("portcullis_rate_limited_total{{policy=\"{p}\",mode=\"{mode}\"}}"),
        )
    };
    assert_eq!(count("strict", "enforce"), f64::from(refused));
    assert_eq!(count("trial", "shadow"), f64::from(refused), "{m}");
}

#[tokio::test]
async fn the_in_flight_cap_sheds_exactly_the_excess_while_admin_answers() {
    let slow = spawn_upstream_with_delay("slow", Duration::from_millis(400)).await;
    let gw = Arc::new(
        start_gateway(&config(
            &up("slow", slow.addr, ""),
            // Critical: the whole cap (normal routes may use 90% of it).
            &route("r", "/", "slow", ", priority: critical"),
            "shedding: { max_in_flight: 4 }\n",
        ))
        .await,
    );
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = call(&gw, "/", &[]).await;
            (r, started.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // While the upstream holds four requests, the admin port is not shed.
    let ready = admin(&gw, "/health/ready").await;
    assert_eq!(ready.status, 200);
    let mut ok = 0;
    for t in tasks {
        let (r, took) = t.await.unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(r.json()["error"], "overloaded");
                assert_eq!(r.headers["retry-after"], "1");
                assert!(took < Duration::from_millis(100), "shed fast: {took:?}");
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok, 4);
    assert_eq!(slow.seen.hits.load(Ordering::SeqCst), 4);
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(
        metric(
            &m,
            "portcullis_shed_total{reason=\"max_in_flight\",mode=\"enforce\"}"
        ),
        6.0,
        "{m}"
    );
}

#[tokio::test]
async fn an_upstream_bulkhead_only_sheds_its_own_routes() {
    let slow = spawn_upstream_with_delay("slow", Duration::from_millis(400)).await;
    let fast = spawn_upstream("fast").await;
    let upstreams = format!(
        "{}{}",
        up("slow", slow.addr, ", max_in_flight: 2"),
        up("fast", fast.addr, "")
    );
    let routes = format!(
        "{}{}",
        route("slow", "/slow", "slow", ""),
        route("fast", "/fast", "fast", "")
    );
    let gw = Arc::new(start_gateway(&config(&upstreams, &routes, "")).await);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move { call(&gw, "/slow", &[]).await }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..5 {
        assert_eq!(
            call(&gw, "/fast", &[]).await.status,
            200,
            "other upstreams unaffected"
        );
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == 503 {
            let doc = r.json();
            assert_eq!(
                (doc["error"].as_str(), doc["upstream"].as_str()),
                (Some("overloaded"), Some("slow"))
            );
        }
        statuses.push(r.status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503, 503, 503]);
}

#[tokio::test]
async fn critical_traffic_keeps_its_room_when_low_priority_overloads() {
    let slow = spawn_upstream_with_delay("slow", Duration::from_millis(50)).await;
    let routes = format!(
        "{}{}",
        route("low", "/low", "slow", ", priority: low"),
        route("critical", "/critical", "slow", ", priority: critical")
    );
    let gw = Arc::new(
        start_gateway(&config(
            &up("slow", slow.addr, ""),
            &routes,
            "shedding: { max_in_flight: 10 }\n",
        ))
        .await,
    );
    // 18 low-priority clients and 2 critical ones (10% of the traffic), in
    // closed loops for 1.5 s.
    let until = Instant::now() + Duration::from_millis(1500);
    let client = |path: &'static str| {
        let gw = gw.clone();
        tokio::spawn(async move {
            let (mut ok, mut total) = (0u32, 0u32);
            while Instant::now() < until {
                total += 1;
                if call(&gw, path, &[]).await.status == StatusCode::OK {
                    ok += 1;
                }
            }
            (ok, total)
        })
    };
    let lows: Vec<_> = (0..18).map(|_| client("/low")).collect();
    let criticals: Vec<_> = (0..2).map(|_| client("/critical")).collect();
    let (mut low_ok, mut low_total, mut crit_ok, mut crit_total) = (0, 0, 0, 0);
    for t in lows {
        let (ok, total) = t.await.unwrap();
        low_ok += ok;
        low_total += total;
    }
    for t in criticals {
        let (ok, total) = t.await.unwrap();
        crit_ok += ok;
        crit_total += total;
    }
    assert!(
        low_ok < low_total,
        "low traffic was shed: {low_ok}/{low_total}"
    );
    assert!(
        f64::from(crit_ok) >= 0.99 * f64::from(crit_total),
        "critical: {crit_ok}/{crit_total}"
    );
    let m = admin(&gw, "/metrics").await.body;
    assert!(
        metric(
            &m,
            "portcullis_shed_total{reason=\"priority\",mode=\"enforce\"}"
        ) > 0.0
    );
}

#[test]
fn check_reports_limit_problems_with_their_lines() {
    let head = "listeners: [{ name: http, bind: '127.0.0.1:8080' }]\n";
    let tail = "upstreams: [{ name: u, endpoints: ['127.0.0.1:9000'] }]\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: u }\n";
    let cases = [
        ("rate_limits: [{ name: a, key: ip, rate: 0/s, burst: 5 }]\n", "2:41: rate `0/s` must be more than 0"),
        ("rate_limits: [{ name: a, key: ip, rate: 5/d, burst: 5 }]\n", "2:41: invalid rate `5/d`"),
        ("rate_limits: [{ name: a, key: ip, rate: 2000000000/s, burst: 5 }]\n", "2:41: rate `2000000000/s` is too high"),
        ("rate_limits: [{ name: a, key: ip, rate: 5/s, burst: 0 }]\n", "2:53: must be at least 1"),
        // Quoted in the RateLimit headers: nothing that could end the quote or the line.
        ("rate_limits: [{ name: 'per \"client\"', key: ip, rate: 5/s, burst: 1 }]\n", "2:23: must be printable ASCII without `\"` or `\\`"),
        ("rate_limits: [{ name: \"a\\tb\", key: ip, rate: 5/s, burst: 1 }]\n", "2:23: must be printable ASCII"),
        ("rate_limits: [{ name: 'per client', key: ip, rate: 5/s, burst: 1 }]\n", ""),
        ("rate_limits: [{ name: a, key: [ip, session:x], rate: 5/s, burst: 1 }]\n", "2:31: unknown key `session:x`"),
        // Shared stores (issue 9): the URL, and store keys that would be ignored.
        ("rate_limits: [{ name: a, key: ip, rate: 5/s, burst: 1, store: 'memcached://h:1' }]\n", "2:63: unknown store `memcached://h:1`: expected `local`, `redis://host:port[/db]` or `rediss://host:port[/db]`"),
        ("rate_limits: [{ name: a, key: ip, rate: 5/s, burst: 1, store: 'redis://127.0.0.1:notaport' }]\n", "2:63: invalid Redis URL `redis://127.0.0.1:notaport`"),
        ("rate_limits: [{ name: a, key: ip, rate: 5/s, burst: 1, store: 'redis://:hunter2@h:notaport' }]\n", "2:63: invalid Redis URL `redis://:***@h:notaport`"),
        ("rate_limits: [{ name: a, key: ip, rate: 5/s, burst: 1, sync: batched }]\n", "2:62: only applies to a shared store: set `store: redis://host:port` or remove it"),
        ("rate_limits: [{ name: a, key: ip, rate: 5/s, burst: 5, store: 'redis://h:1', lease: 2 }]\n", "2:85: only applies with `sync: batched`"),
        ("rate_limits: [{ name: a, key: ip, rate: 5/s, burst: 5, store: 'redis://h:1', sync: batched, lease: 9 }]\n", "2:100: must be between 1 and the burst (5)"),
        ("rate_limits: [{ name: a, key: ip, rate: 5/s, burst: 5, store: 'redis://h:1', store_timeout: 0s }]\n", "2:93: must be between 1ms and 10s"),
        ("rate_limits: [{ name: a, key: ip, rate: 5/s, burst: 5, store: 'redis://h:1', on_store_error: maybe }]\n", "2:94: unknown variant `maybe`, expected one of `local`, `allow`, `deny`"),
        ("rate_limits: [{ name: a, key: ip, rate: 5/s, burst: 5, store: 'rediss://:pw@h:1/2', sync: batched, lease: 5, store_timeout: 20ms, on_store_error: deny }]\n", ""),
        ("shedding: { max_in_flight: 0 }\n", "2:28: must be between 1 and 10000000"),
        ("shedding: { max_in_flight: 10, min_limit: 20 }\n", "2:43: must be between 1 and `max_in_flight`"),
        ("server: { trusted_proxies: ['10.0.0.0/33'] }\n", "2:29: `10.0.0.0/33` is not an address block"),
        ("rate_limits: [{ name: per-client, key: ip, rate: 5/s, burst: 1 }]\n", ""),
    ];
    for (extra, expected) in cases {
        let text = format!("{head}{extra}{tail}");
        if expected.is_empty() {
            let (code, stderr) = check_text(&text);
            assert_eq!(code, Some(0), "{stderr}");
        } else {
            assert_check_reports(&text, &[expected]);
        }
    }
    // A Redis password never reaches the output.
    let (_, stderr) = check_text(&format!(
        "{head}rate_limits: [{{ name: a, key: ip, rate: 5/s, burst: 1, store: 'redis://:hunter2@h:notaport' }}]\n{tail}"
    ));
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // References and route keys.
    let routes = "rate_limits: [{ name: per-client, key: ip, rate: 5/s, burst: 1 }]\n\
        upstreams: [{ name: u, endpoints: ['127.0.0.1:9000'], max_in_flight: 0 }]\nroutes:\n\
        \x20 - { name: r, match: { path_prefix: / }, upstream: u, rate_limit: per-clinet }\n\
        \x20 - { name: s, match: { path_prefix: /s }, upstream: u, priority: urgent }\n";
    assert_check_reports(
        &format!("{head}{routes}"),
        &[
            "3:70: must be at least 1",
            "5:68: unknown rate limit `per-clinet`, did you mean `per-client`?",
            "6:67: unknown variant `urgent`, expected one of `critical`, `normal`, `low`",
        ],
    );
}

/// An upstream that, once `slow` is set, serves 4 requests at a time, 20 ms
/// each: more concurrency only queues inside it.
async fn spawn_saturating_upstream(slow: Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let workers = Arc::new(tokio::sync::Semaphore::new(4));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (slow, workers) = (slow.clone(), workers.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let (slow, workers) = (slow.clone(), workers.clone());
                    async move {
                        if slow.load(Ordering::SeqCst) {
                            let _worker = workers.acquire().await.unwrap();
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(full("ok")))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// 32 clients in closed loops for `run`; the latencies of the 200s after
/// `skip`, sorted, and how many were shed.
async fn drive(gw: &Arc<RunningGateway>, run: Duration, skip: Duration) -> (Vec<Duration>, usize) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move {
                let (mut lat, mut shed) = (Vec::new(), 0);
                while start.elapsed() < run {
                    let t = Instant::now();
                    let r = call(&gw, "/", &[]).await;
                    match r.status.as_u16() {
                        200 if start.elapsed() > skip => lat.push(t.elapsed()),
                        200 => {}
                        503 => {
                            shed += 1;
                            // A polite client backs off (and the test's
                            // own CPU goes to the requests it measures).
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        s => panic!("unexpected {s}"),
                    }
                }
                (lat, shed)
            })
        })
        .collect();
    let (mut all, mut shed) = (Vec::new(), 0);
    for t in tasks {
        let (lat, s) = t.await.unwrap();
        all.extend(lat);
        shed += s;
    }
    all.sort();
    (all, shed)
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_falls_when_the_backend_slows_and_keeps_latency_bounded() {
    let mut results = Vec::new();
    for adaptive in [false, true] {
        let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let addr = spawn_saturating_upstream(slow.clone()).await;
        let shedding =
            format!("shedding: {{ max_in_flight: 64, adaptive: {adaptive}, min_limit: 4 }}\n");
        let gw = Arc::new(
            start_gateway(&config(
                &up("a", addr, ""),
                &route("r", "/", "a", ", priority: critical"),
                &shedding,
            ))
            .await,
        );
        // A fast baseline, then the backend slows down.
        drive(&gw, Duration::from_millis(500), Duration::ZERO).await;
        slow.store(true, Ordering::SeqCst);
        let (lat, shed) = drive(&gw, Duration::from_millis(1500), Duration::from_millis(600)).await;
        let m = admin(&gw, "/metrics").await.body;
        let limit = metric(&m, "portcullis_concurrency_limit");
        eprintln!(
            "adaptive={adaptive}: p50 {:?} p90 {:?} p99 {:?} max {:?}",
            lat[lat.len() / 2],
            lat[lat.len() * 9 / 10],
            p99(&lat),
            lat[lat.len() - 1]
        );
        results.push((p99(&lat), shed, limit, lat.len()));
    }
    eprintln!("(p99, shed, limit, samples) fixed / adaptive: {results:?}");
    let (fixed, adaptive) = (results[0], results[1]);
    // Without the adaptive limit 32 requests queue for 4 workers: ~160 ms.
    assert!(fixed.0 >= Duration::from_millis(120), "{fixed:?}");
    assert_eq!(fixed.1, 0, "nothing is shed below the fixed cap");
    // With it the limit falls, the excess is refused at once, and admitted
    // requests wait in no queue.
    assert!(adaptive.2 <= 16.0, "limit {}", adaptive.2);
    assert!(adaptive.1 > 0, "the excess was shed");
    assert!(
        adaptive.0 < fixed.0 / 2,
        "p99 {:?} with the adaptive limit, {:?} without",
        adaptive.0,
        fixed.0
    );
}

#[tokio::test]
async fn a_drained_bucket_survives_a_reload_and_new_numbers_apply_at_once() {
    let a = spawn_upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let text = |burst: u32, extra_route: &str| {
        config(
            &up("a", a.addr, ""),
            &format!("{}{extra_route}", route("r", "/", "a", ", rate_limit: per-client")),
            &format!("rate_limits:\n  - {{ name: per-client, key: header:x-api-key, rate: 1/m, burst: {burst} }}\n"),
        )
    };
    std::fs::write(&path, text(2, "")).unwrap();
    let loaded = portcullis::config::load_file(&path).unwrap();
    let gw = portcullis::Gateway::start(loaded).await.unwrap();
    let key = [("x-api-key", "k")];
    assert_eq!(call(&gw, "/", &key).await.status, 200);
    assert_eq!(call(&gw, "/", &key).await.status, 200);
    assert_eq!(call(&gw, "/", &key).await.status, 429);

    // An unrelated change: the bucket is still empty.
    std::fs::write(&path, text(2, &route("other", "/other", "a", ""))).unwrap();
    gw.reload().await.expect("reload");
    assert_eq!(call(&gw, "/", &key).await.status, 429, "still drained");

    // A bigger burst applies at once to the same bucket.
    std::fs::write(&path, text(4, "")).unwrap();
    gw.reload().await.expect("reload");
    assert_eq!(call(&gw, "/", &key).await.status, 200);
    assert_eq!(call(&gw, "/", &key).await.status, 200);
    assert_eq!(call(&gw, "/", &key).await.status, 429);
}
