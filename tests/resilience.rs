//! Upstream resilience (issue 7) against real upstream servers the tests
//! break, slow down, kill and restart: active health checks, outlier
//! ejection, circuit breakers, retries and their budget, deadlines, hash
//! balancing, and all of that across a config reload.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use portcullis::{config, Gateway, RunningGateway};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// An upstream the test controls: what `/health` and every other path
/// answer, an optional delay, and whether it is alive at all.
struct Flaky {
    addr: SocketAddr,
    name: &'static str,
    state: Arc<FlakyState>,
    tasks: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct FlakyState {
    status: AtomicU16,
    health_status: AtomicU16,
    delay_ms: AtomicU64,
    hits: AtomicUsize,
    health_hits: AtomicUsize,
    body_bytes: AtomicUsize,
}

impl Flaky {
    async fn start(name: &'static str) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = Arc::new(FlakyState::default());
        state.status.store(200, Ordering::SeqCst);
        state.health_status.store(200, Ordering::SeqCst);
        let f = Flaky {
            addr: listener.local_addr().unwrap(),
            name,
            state,
            tasks: std::sync::Mutex::new(None),
        };
        f.serve(listener);
        f
    }

    fn serve(&self, listener: TcpListener) {
        let (name, state) = (self.name, self.state.clone());
        let task = tokio::spawn(async move {
            // Connections die with the accept loop (kill drops the set).
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(flaky_answer(name, &state, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        *self.tasks.lock().unwrap() = Some(task);
    }

    fn set(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }
    fn set_health(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }
    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
    fn health_hits(&self) -> usize {
        self.state.health_hits.load(Ordering::SeqCst)
    }

    /// Closes the port and every open connection: connects are refused.
    async fn kill(&self) {
        if let Some(t) = self.tasks.lock().unwrap().take() {
            t.abort();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// Listens on the same port again.
    async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

async fn flaky_answer(
    name: &'static str,
    state: &FlakyState,
    req: Request<hyper::body::Incoming>,
) -> Response<BoxBody> {
    if req.uri().path() == "/health" {
        state.health_hits.fetch_add(1, Ordering::SeqCst);
        let mut r = Response::new(full("health"));
        *r.status_mut() = StatusCode::from_u16(state.health_status.load(Ordering::SeqCst)).unwrap();
        return r;
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    let mut body = req.into_body();
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(d) = frame.data_ref() {
            state.body_bytes.fetch_add(d.len(), Ordering::SeqCst);
        }
    }
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut r = Response::new(full(name));
    *r.status_mut() = StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap();
    r
}

/// One upstream `up` over `endpoints` with the given upstream keys
/// (indented four spaces), and one route `all` with `route_extra`.
fn config_for(endpoints: &[SocketAddr], upstream_extra: &str, route_extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("'{a}'")).collect();
    format!(
        "listeners:\n  - {{ name: http, bind: '127.0.0.1:0' }}\nadmin: {{ bind: '127.0.0.1:0' }}\n\
         server: {{ access_log: false }}\n\
         upstreams:\n  - name: up\n    endpoints: [{}]\n{upstream_extra}\
         routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: up\n{route_extra}",
        eps.join(", ")
    )
}

async fn call(
    gw: &RunningGateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.addr("http").unwrap()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&http1_client(), req.body(full(body.to_string())).unwrap()).await
}

async fn metrics(gw: &RunningGateway) -> String {
    admin(gw, "/metrics").await.body
}

/// Polls `cond` every 20 ms until it holds; panics after `within`.
async fn eventually(within: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const CHECKS: &str = "    health_check: { path: /health, interval: 100ms, timeout: 80ms, healthy_threshold: 2, unhealthy_threshold: 2 }\n";

#[tokio::test]
async fn health_checks_take_a_sick_endpoint_out_and_bring_it_back() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    let gw = start_gateway(&config_for(&[a.addr, b.addr], CHECKS, "")).await;
    eventually(Duration::from_secs(2), "first checks", async || {
        a.health_hits() > 0 && b.health_hits() > 0
    })
    .await;

    a.set_health(503);
    // interval × unhealthy_threshold = 200 ms, plus jitter and slack.
    let took = eventually(Duration::from_secs(1), "a taken out", async || {
        admin(&gw, "/status").await.json()["upstreams"][0]["endpoints"][0]["health"] == "unhealthy"
    })
    .await;
    assert!(took < Duration::from_millis(700), "{took:?}");
    let before = a.hits();
    for _ in 0..10 {
        let r = call(&gw, "GET", "/", &[], "").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "b"));
    }
    assert_eq!(a.hits(), before, "no traffic to an unhealthy endpoint");
    let m = metrics(&gw).await;
    let series = |e: SocketAddr| {
        format!("portcullis_upstream_endpoint_healthy{{upstream=\"up\",endpoint=\"{e}\"}}")
    };
    assert_eq!(metric(&m, &series(a.addr)), 0.0, "{m}");
    assert_eq!(metric(&m, &series(b.addr)), 1.0, "{m}");
    let status = admin(&gw, "/status").await.json();
    let last = &status["upstreams"][0]["endpoints"][0]["last_check"];
    assert_eq!(
        (last["ok"].as_bool(), last["result"].as_str()),
        (Some(false), Some("503"))
    );

    a.set_health(200);
    eventually(Duration::from_secs(1), "a back", async || {
        admin(&gw, "/status").await.json()["upstreams"][0]["endpoints"][0]["health"] == "healthy"
    })
    .await;
    for _ in 0..4 {
        call(&gw, "GET", "/", &[], "").await;
    }
    assert!(a.hits() > before, "traffic returns after recovery");
}

#[tokio::test]
async fn no_healthy_endpoint_answers_503_at_once_without_connecting() {
    let a = Flaky::start("a").await;
    a.set_health(500);
    let gw = start_gateway(&config_for(&[a.addr], CHECKS, "")).await;
    eventually(Duration::from_secs(2), "a out", async || {
        admin(&gw, "/status").await.json()["upstreams"][0]["endpoints"][0]["health"] == "unhealthy"
    })
    .await;
    let started = Instant::now();
    let r = call(&gw, "GET", "/x", &[], "").await;
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    let doc = r.json();
    assert_eq!(doc["error"], "upstream_unavailable");
    assert_eq!(doc["upstream"], "up");
    assert_eq!(doc["retry_after"], 1);
    assert!(
        doc["detail"]
            .as_str()
            .unwrap()
            .contains("no healthy endpoint"),
        "{doc}"
    );
    assert_eq!(a.hits(), 0);
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "portcullis_upstream_requests_total{upstream=\"up\",outcome=\"rejected\"}"
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn passive_detection_ejects_a_refusing_endpoint_but_never_all() {
    let b = Flaky::start("b").await;
    let dead = closed_port().await;
    let outlier = "    outlier_detection: { consecutive_failures: 2, eject_for: 2s }\n";
    let gw = start_gateway(&config_for(&[dead, b.addr], outlier, "")).await;
    let mut bad = 0;
    for _ in 0..20 {
        if call(&gw, "GET", "/", &[], "").await.status == 502 {
            bad += 1;
        }
    }
    assert_eq!(bad, 2, "two connect errors eject the dead endpoint");
    let status = admin(&gw, "/status").await.json();
    let ep = &status["upstreams"][0]["endpoints"][0];
    assert_eq!(ep["health"], "ejected", "{status}");
    assert!(ep["ejected_for_ms"].as_u64().unwrap() > 1000, "{status}");

    // Both dead: at most half (one of two) is ejected; the other still gets tried.
    let (d1, d2) = (closed_port().await, closed_port().await);
    let gw = start_gateway(&config_for(&[d1, d2], outlier, "")).await;
    for _ in 0..10 {
        assert_eq!(call(&gw, "GET", "/", &[], "").await.status, 502);
    }
    let status = admin(&gw, "/status").await.json();
    let ejected = status["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["health"] == "ejected")
        .count();
    assert_eq!(ejected, 1, "{status}");
}

#[tokio::test]
async fn breaker_opens_stops_hitting_the_upstream_then_probes_and_closes() {
    let a = Flaky::start("a").await;
    a.set(500);
    let breaker = "    circuit_breaker: { consecutive_failures: 3, open_for: 300ms, half_open_requests: 2 }\n";
    let gw = start_gateway(&config_for(&[a.addr], breaker, "")).await;
    for _ in 0..3 {
        assert_eq!(call(&gw, "GET", "/", &[], "").await.status, 500);
    }
    let started = Instant::now();
    for _ in 0..10 {
        let r = call(&gw, "GET", "/", &[], "").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["error"], "upstream_unavailable");
        assert_eq!(r.headers["retry-after"], "1");
    }
    assert!(started.elapsed() < Duration::from_millis(250), "fail fast");
    assert_eq!(a.hits(), 3, "an open circuit does not touch the upstream");
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, "portcullis_circuit_state{upstream=\"up\"}"),
        1.0,
        "{m}"
    );
    let status = admin(&gw, "/status").await.json();
    assert_eq!(status["upstreams"][0]["circuit"]["state"], "open");

    // The upstream recovers; after open_for two probes pass and close it.
    a.set(200);
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..2 {
        assert_eq!(call(&gw, "GET", "/", &[], "").await.status, 200);
    }
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, "portcullis_circuit_state{upstream=\"up\"}"),
        0.0,
        "{m}"
    );
    for to in ["open", "half_open", "closed"] {
        let series = format!("portcullis_circuit_transitions_total{{upstream=\"up\",to=\"{to}\"}}");
        assert_eq!(metric(&m, &series), 1.0, "{series}\n{m}");
    }
    assert_eq!(call(&gw, "GET", "/", &[], "").await.status, 200);
}

#[tokio::test]
async fn breaker_opens_on_the_failure_ratio() {
    let up = spawn_upstream("a").await;
    let breaker = "    circuit_breaker: { consecutive_failures: 100, failure_ratio: 0.5, min_requests: 10, window: 10s }\n";
    let gw = start_gateway(&config_for(&[up.addr], breaker, "")).await;
    // Alternating: never two failures in a row, but half of them fail.
    for i in 0..10 {
        let path = if i % 2 == 0 { "/ok" } else { "/status/502" };
        let r = call(&gw, "GET", path, &[], "").await;
        assert_ne!(r.status, 503, "request {i}");
    }
    let r = call(&gw, "GET", "/ok", &[], "").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "upstream_unavailable");
    assert_eq!(up.seen.hits.load(Ordering::SeqCst), 10);
}

const RETRY: &str = "    retry: { attempts: 1, on: [connect_error, 503], backoff: 1ms, max_backoff: 5ms, attempts_header: true }\n";

#[tokio::test]
async fn a_get_that_gets_503_is_retried_on_the_other_endpoint() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    a.set(503);
    let gw = start_gateway(&config_for(&[a.addr, b.addr], RETRY, "")).await;
    let mut retried = 0;
    for _ in 0..10 {
        let r = call(&gw, "GET", "/", &[], "").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "b"));
        let attempts = r.headers["x-portcullis-attempts"]
            .to_str()
            .unwrap()
            .to_string();
        if attempts == "2" {
            retried += 1;
        } else {
            assert_eq!(attempts, "1");
        }
    }
    assert_eq!(retried, a.hits(), "each 503 from a was retried once");
    assert!(retried >= 3, "round robin sends about half to a: {retried}");
    assert_eq!(b.hits(), 10);
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "portcullis_upstream_retries_total{upstream=\"up\",result=\"success\"}"
        ),
        retried as f64,
        "{m}"
    );
}

#[tokio::test]
async fn a_post_is_retried_only_with_an_idempotency_key_or_after_a_connect_error() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    a.set(503);
    let gw = start_gateway(&config_for(&[a.addr, b.addr], RETRY, "")).await;
    let mut refused = 0;
    for _ in 0..6 {
        let r = call(&gw, "POST", "/orders", &[], "hello").await;
        if r.status == 503 {
            assert_eq!(r.body, "a", "the upstream's own 503, passed through");
            refused += 1;
        }
    }
    assert_eq!(refused, a.hits(), "no POST was retried");
    assert_eq!(a.hits() + b.hits(), 6);

    let (a_before, b_before) = (a.hits(), b.hits());
    for i in 0..6 {
        let key = format!("order-{i}");
        let r = call(
            &gw,
            "POST",
            "/orders",
            &[("idempotency-key", &key)],
            "hello",
        )
        .await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "b"));
    }
    assert!(a.hits() > a_before);
    assert_eq!(b.hits() - b_before, 6);
    assert_eq!(
        b.state.body_bytes.load(Ordering::SeqCst),
        5 * b.hits(),
        "the replayed body arrives whole"
    );

    // A refused connect never reached the upstream: any method may retry.
    let dead = closed_port().await;
    let gw = start_gateway(&config_for(&[dead, b.addr], RETRY, "")).await;
    for _ in 0..6 {
        let r = call(&gw, "POST", "/orders", &[], "hello").await;
        assert_eq!(r.status, 200);
    }
}

#[tokio::test]
async fn the_retry_budget_caps_extra_load_on_a_failing_upstream() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    a.set(503);
    b.set(503);
    let retry = "    retry: { attempts: 3, on: [503], backoff: 1ms, max_backoff: 2ms, budget: 0.2, min_retries_per_second: 0 }\n";
    let gw = start_gateway(&config_for(&[a.addr, b.addr], retry, "")).await;
    for _ in 0..100 {
        assert_eq!(call(&gw, "GET", "/", &[], "").await.status, 503);
    }
    let hits = a.hits() + b.hits();
    // Without a budget: 400 hits. With it: at most 100 + 20% of 100.
    assert!(
        (100..=121).contains(&hits),
        "{hits} upstream hits for 100 requests"
    );
    let m = metrics(&gw).await;
    let exhausted = metric(
        &m,
        "portcullis_upstream_retries_total{upstream=\"up\",result=\"budget_exhausted\"}",
    );
    assert!(exhausted >= 70.0, "{m}");
}

#[tokio::test]
async fn all_tries_stay_inside_the_route_timeout() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    a.state.delay_ms.store(3000, Ordering::SeqCst);
    b.state.delay_ms.store(3000, Ordering::SeqCst);
    let retry = "    retry: { attempts: 5, on: [timeout], backoff: 1ms, max_backoff: 2ms, per_try_timeout: 150ms, attempts_header: true }\n";
    let gw = start_gateway(&config_for(
        &[a.addr, b.addr],
        retry,
        "    timeout: 400ms\n",
    ))
    .await;
    let started = Instant::now();
    let r = call(&gw, "GET", "/", &[], "").await;
    let took = started.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(380) && took < Duration::from_millis(900),
        "{took:?}"
    );
    let attempts: u32 = r.headers["x-portcullis-attempts"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((2..=4).contains(&attempts), "{attempts}");
    assert!(
        a.hits() >= 1 && b.hits() >= 1,
        "retries go to the other endpoint"
    );
}

async fn start_from(path: &Path) -> RunningGateway {
    let loaded = config::load_file(path).unwrap_or_else(|e| panic!("invalid test config:\n{e}"));
    Gateway::start(loaded).await.expect("gateway starts")
}

#[tokio::test]
async fn hash_balancing_keeps_keys_on_endpoints_and_moves_few_when_one_goes() {
    let ups = [
        spawn_upstream("e0").await,
        spawn_upstream("e1").await,
        spawn_upstream("e2").await,
        spawn_upstream("e3").await,
    ];
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let balance = "    balance: hash:header:x-user\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, config_for(&addrs, balance, "")).unwrap();
    let gw = start_from(&path).await;
    let owner = async |user: &str| {
        let r = call(&gw, "GET", "/", &[("x-user", user)], "").await;
        r.body.split(' ').next().unwrap().to_string()
    };
    let users: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let mut before = Vec::new();
    for u in &users {
        let first = owner(u).await;
        assert_eq!(owner(u).await, first, "{u} stays on its endpoint");
        before.push(first);
    }
    for e in ["e0", "e1", "e2", "e3"] {
        let n = before.iter().filter(|o| *o == e).count();
        assert!((20..=80).contains(&n), "{e} holds {n} of 200 keys");
    }

    // e3 leaves: only its keys move.
    std::fs::write(&path, config_for(&addrs[..3], balance, "")).unwrap();
    gw.reload().await.expect("reload");
    let mut moved = 0;
    for (u, was) in users.iter().zip(&before) {
        let now = owner(u).await;
        if now != *was {
            assert_eq!(was, "e3", "{u} moved from {was} to {now}");
            moved += 1;
        }
    }
    let on_e3 = before.iter().filter(|o| *o == "e3").count();
    assert_eq!(moved, on_e3);
}

#[tokio::test]
async fn an_open_breaker_survives_a_reload_and_removed_checks_stop() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    a.set(500);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let breaker = "    circuit_breaker: { consecutive_failures: 2, open_for: 30s }\n";
    let text = |eps: &[SocketAddr], route_extra: &str| {
        config_for(eps, &format!("{CHECKS}{breaker}"), route_extra)
    };
    std::fs::write(&path, text(&[a.addr, b.addr], "")).unwrap();
    let gw = start_from(&path).await;
    b.set(500);
    for _ in 0..2 {
        assert_eq!(call(&gw, "GET", "/", &[], "").await.status, 500);
    }
    assert_eq!(call(&gw, "GET", "/", &[], "").await.status, 503);
    eventually(Duration::from_secs(2), "b checked", async || {
        b.health_hits() > 0
    })
    .await;

    // Reload: a new route timeout, and endpoint b removed.
    std::fs::write(&path, text(&[a.addr], "    timeout: 5s\n")).unwrap();
    gw.reload().await.expect("reload");
    let hits = a.hits();
    let r = call(&gw, "GET", "/", &[], "").await;
    assert_eq!(r.status, 503, "still open after the reload");
    assert_eq!(r.json()["error"], "upstream_unavailable");
    let retry_after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((25..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(a.hits(), hits);

    // b's checker stopped with its endpoint; a's keeps going.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (b_checks, a_checks) = (b.health_hits(), a.health_hits());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.health_hits(), b_checks, "no checks of a removed endpoint");
    assert!(a.health_hits() > a_checks);
}

#[tokio::test]
async fn a_killed_endpoint_is_detected_and_a_restarted_one_returns() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    let extra = format!("{CHECKS}{RETRY}");
    let gw = start_gateway(&config_for(&[a.addr, b.addr], &extra, "")).await;
    a.kill().await;
    // With retries on connect errors, no client sees the death.
    for _ in 0..20 {
        let r = call(&gw, "GET", "/", &[], "").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "b"));
    }
    eventually(Duration::from_secs(1), "a taken out", async || {
        admin(&gw, "/status").await.json()["upstreams"][0]["endpoints"][0]["health"] == "unhealthy"
    })
    .await;
    a.restart().await;
    eventually(Duration::from_secs(2), "a back in rotation", async || {
        call(&gw, "GET", "/", &[], "").await.body == "a"
    })
    .await;
}

#[tokio::test]
async fn one_dead_endpoint_does_not_open_the_circuit_when_retries_hide_it() {
    let (a, b) = (Flaky::start("a").await, Flaky::start("b").await);
    let extra =
        format!("{RETRY}    circuit_breaker: {{ consecutive_failures: 2, open_for: 30s }}\n");
    let gw = start_gateway(&config_for(&[a.addr, b.addr], &extra, "")).await;
    a.kill().await;
    for _ in 0..20 {
        let r = call(&gw, "GET", "/", &[], "").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "b"));
    }
    let status = admin(&gw, "/status").await.json();
    assert_eq!(
        status["upstreams"][0]["circuit"]["state"], "closed",
        "{status}"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_leaves_no_request_counted_in_flight() {
    let a = Flaky::start("a").await;
    a.state.delay_ms.store(5000, Ordering::SeqCst);
    let gw = start_gateway(&config_for(&[a.addr], "", "")).await;
    for _ in 0..3 {
        let req = call(&gw, "GET", "/", &[], "");
        assert!(tokio::time::timeout(Duration::from_millis(100), req)
            .await
            .is_err());
    }
    eventually(Duration::from_secs(2), "in_flight back to 0", async || {
        admin(&gw, "/status").await.json()["upstreams"][0]["endpoints"][0]["in_flight"] == 0
    })
    .await;
}
