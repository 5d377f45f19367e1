//! Shared rate limits on Redis (issue 9), against a real `redis-server`
//! that each test starts on a free port: two gateway instances sharing one
//! policy (exact and batched), Redis killed, paused and restarted under
//! load, `on_store_error`, key names and TTLs, start-up without Redis or
//! with a wrong password, and `check` on the new keys. Tests that need a
//! server print why and pass without one, unless PORTCULLIS_REQUIRE_REDIS=1.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::*;
use http::Request;
use portcullis::RunningGateway;

/// The policy under test: 20/s, burst 20, so one bucket admits
/// 20 + 20 × seconds.
const RATE: u32 = 20;
const BURST: u32 = 20;
/// Tokens a batched instance leases at a time.
const LEASE: u32 = 5;
/// `RateLimit-Policy` of every response of the route (w = burst / rate).
const POLICY_HEADER: &str = "\"shared\";q=20;w=1";
/// Closed-loop clients per gateway in [`drive`].
const CLIENTS: usize = 3;

/// The policy `shared` on `store`, keyed by `x-api-key`; `extra` adds
/// entries to its flow mapping (`, sync: batched`).
fn policy(store: &str, extra: &str) -> String {
    format!(
        "rate_limits:\n  - {{ name: shared, key: header:x-api-key, rate: {RATE}/s, \
         burst: {BURST}, store: '{store}'{extra} }}\n"
    )
}

/// One route, everything to `upstream`, under `policy`.
fn config_text(upstream: SocketAddr, policy: &str) -> String {
    format!(
        "listeners:\n  - {{ name: http, bind: '127.0.0.1:0' }}\nadmin: {{ bind: '127.0.0.1:0' }}\n\
         server: {{ access_log: false }}\n{policy}\
         upstreams:\n  - {{ name: a, endpoints: ['{upstream}'] }}\n\
         routes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: a, rate_limit: shared }}\n"
    )
}

async fn gateway_with(upstream: SocketAddr, policy: &str) -> Arc<RunningGateway> {
    Arc::new(start_gateway(&config_text(upstream, policy)).await)
}

/// `n` gateway instances sharing `policy`, returned once each one's store
/// is up (a new store is `connecting`, served like a down one, until then).
async fn fleet(upstream: SocketAddr, policy: &str, n: usize) -> Vec<Arc<RunningGateway>> {
    let mut gws = Vec::new();
    for i in 0..n {
        let gw = gateway_with(upstream, policy).await;
        let (_, took) = wait_store(&gw, &["up"], Duration::from_secs(5)).await;
        eprintln!("instance {i}: store up {took:?} after start");
        gws.push(gw);
    }
    gws
}

/// The policy's entry in the admin `/status`.
async fn store_status(gw: &RunningGateway) -> serde_json::Value {
    let doc = admin(gw, "/status").await.json();
    doc["rate_limits"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["name"] == "shared"))
        .cloned()
        .unwrap_or_else(|| panic!("no `rate_limits` entry named `shared` in /status: {doc}"))
}

/// Polls `/status` until the store's state is one of `states`; the entry
/// then, and how long it took.
async fn wait_store(
    gw: &RunningGateway,
    states: &[&str],
    within: Duration,
) -> (serde_json::Value, Duration) {
    let start = Instant::now();
    loop {
        let s = store_status(gw).await;
        if states.iter().any(|want| s["store_state"] == *want) {
            return (s, start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "store_state not in {states:?} after {within:?}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The policy's series on one gateway's `/metrics` (absent counters are 0;
/// the `store_up` gauge is `None` when absent).
#[derive(Debug, Default)]
struct StoreMetrics {
    up: Option<f64>,
    errors: f64,
    calls: f64,
    limited: f64,
}

async fn store_metrics(gw: &RunningGateway) -> StoreMetrics {
    let m = admin(gw, "/metrics").await.body;
    let up = "portcullis_rate_limit_store_up{policy=\"shared\"}";
    StoreMetrics {
        up: m.lines().any(|l| l.starts_with(up)).then(|| metric(&m, up)),
        errors: metric(
            &m,
            "portcullis_rate_limit_store_errors_total{policy=\"shared\"}",
        ),
        calls: metric(
            &m,
            "portcullis_rate_limit_store_calls_total{policy=\"shared\"}",
        ),
        limited: metric(
            &m,
            "portcullis_rate_limited_total{policy=\"shared\",mode=\"enforce\"}",
        ),
    }
}

/// The counters summed over the fleet.
async fn fleet_metrics(gws: &[Arc<RunningGateway>]) -> StoreMetrics {
    let mut sum = StoreMetrics::default();
    for gw in gws {
        let m = store_metrics(gw).await;
        sum.errors += m.errors;
        sum.calls += m.calls;
        sum.limited += m.limited;
    }
    sum
}

type Http =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, BoxBody>;

async fn call_with(client: &Http, gw: &RunningGateway, key: &str) -> Answer {
    let req = Request::get(format!("http://{}/", gw.addr("http").unwrap()))
        .header("x-api-key", key)
        .body(empty())
        .unwrap();
    send(client, req).await
}

async fn call(gw: &RunningGateway, key: &str) -> Answer {
    call_with(&http1_client(), gw, key).await
}

/// Calls with `key` until the first 429 (at most 3 × burst calls): the
/// first answer and the refusal.
async fn until_refused(gw: &RunningGateway, key: &str) -> (Answer, Answer) {
    let client = http1_client();
    let first = call_with(&client, gw, key).await;
    for _ in 0..3 * BURST {
        let r = call_with(&client, gw, key).await;
        if r.status == 429 {
            return (first, r);
        }
        assert_eq!(r.status, 200, "{}", r.body);
    }
    panic!("no 429 after {} calls with key `{key}`", 3 * BURST + 1)
}

/// What a client sees of an answer: the status, the rate-limit headers and
/// the problem document without its request id.
fn shape(a: &Answer) -> (u16, Vec<String>, Option<serde_json::Value>) {
    let headers = [
        "content-type",
        "retry-after",
        "ratelimit-policy",
        "ratelimit",
    ]
    .iter()
    .map(|h| format!("{h}: {:?}", a.headers.get(*h)))
    .collect();
    let doc = serde_json::from_str::<serde_json::Value>(&a.body)
        .ok()
        .map(|mut d| {
            if let Some(o) = d.as_object_mut() {
                o.remove("request_id");
            }
            d
        });
    (a.status.as_u16(), headers, doc)
}

/// One response seen by [`drive`].
struct Sample {
    gw: usize,
    sent: Instant,
    status: u16,
    took: Duration,
}

/// What [`drive`] saw: every response, and how long the run took.
struct Run {
    samples: Vec<Sample>,
    elapsed: Duration,
}

impl Run {
    fn count(&self, status: u16) -> usize {
        self.samples.iter().filter(|s| s.status == status).count()
    }

    fn admitted_by(&self, gw: usize) -> usize {
        self.samples
            .iter()
            .filter(|s| s.gw == gw && s.status == 200)
            .count()
    }

    /// Statuses other than 200 and 429.
    fn unexpected(&self) -> Vec<u16> {
        let mut odd: Vec<u16> = self
            .samples
            .iter()
            .map(|s| s.status)
            .filter(|s| ![200, 429].contains(s))
            .collect();
        odd.dedup();
        odd
    }

    /// What one bucket admits over the run: burst + rate × elapsed.
    fn one_bucket(&self) -> f64 {
        f64::from(BURST) + f64::from(RATE) * self.elapsed.as_secs_f64()
    }

    fn latencies(&self) -> Vec<Duration> {
        let mut l: Vec<_> = self.samples.iter().map(|s| s.took).collect();
        l.sort();
        l
    }
}

/// [`CLIENTS`] clients per gateway in closed loops (5 ms apart, far more
/// than the limit) for `run`, all with API key `key`.
async fn drive(gws: &[Arc<RunningGateway>], key: &str, run: Duration) -> Run {
    let start = Instant::now();
    let tasks: Vec<_> = gws
        .iter()
        .enumerate()
        .flat_map(|(i, gw)| (0..CLIENTS).map(move |_| (i, gw.clone())))
        .map(|(i, gw)| {
            let key = key.to_string();
            tokio::spawn(async move {
                let client = http1_client();
                let mut samples = Vec::new();
                while start.elapsed() < run {
                    let sent = Instant::now();
                    let status = call_with(&client, &gw, &key).await.status.as_u16();
                    let took = sent.elapsed();
                    samples.push(Sample {
                        gw: i,
                        sent,
                        status,
                        took,
                    });
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.expect("client task"));
    }
    let elapsed = samples
        .iter()
        .map(|s| (s.sent + s.took).duration_since(start))
        .max()
        .unwrap_or_default();
    Run { samples, elapsed }
}

/// Asserts that two instances together admitted what one bucket admits
/// over the run (±15% + 2), far below what two local buckets would.
fn assert_one_bucket(label: &str, run: &Run) {
    let (admitted, one) = (run.count(200) as f64, run.one_bucket());
    eprintln!(
        "{label}: {admitted} admitted ({} + {}) of {} requests in {:?}; \
         one bucket admits {one:.1}, two local buckets {:.1}",
        run.admitted_by(0),
        run.admitted_by(1),
        run.samples.len(),
        run.elapsed,
        2.0 * one
    );
    assert!(
        (admitted - one).abs() <= 0.15 * one + 2.0,
        "{label}: {admitted} admitted, one bucket admits {one:.1} (±15% + 2)"
    );
    assert!(
        admitted < 0.75 * 2.0 * one,
        "{label}: {admitted} admitted, two local buckets would admit {:.1}",
        2.0 * one
    );
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_mode_two_instances_admit_what_one_bucket_would() {
    let Some(redis) = RedisServer::start(None).await else {
        return;
    };
    let up = spawn_upstream("a").await;
    let gws = fleet(up.addr, &policy(&redis.url(), ", sync: exact"), 2).await;
    let run = drive(&gws, "k1", Duration::from_secs(2)).await;
    let (admitted, refused) = (run.count(200), run.count(429));
    assert_eq!(run.unexpected(), Vec::<u16>::new(), "only 200s and 429s");
    assert_one_bucket("exact", &run);
    assert!(
        run.admitted_by(0) > 0 && run.admitted_by(1) > 0,
        "both instances took part"
    );
    assert_eq!(
        up.seen.hits.load(Ordering::SeqCst),
        admitted,
        "refused requests stay at the gateway"
    );

    // One script call per admitted request; a refused client costs no call
    // until its next token is due (at most one per client of an instance
    // per token interval), not one per refused request.
    let m = fleet_metrics(&gws).await;
    let refused_calls = m.calls - admitted as f64;
    let most = (2 * CLIENTS) as f64 * (f64::from(RATE) * run.elapsed.as_secs_f64() + 1.0);
    eprintln!(
        "exact: {} store calls for {admitted} admitted and {refused} refused requests \
         ({refused_calls} refused calls, at most {most:.0} allowed); {m:?}",
        m.calls
    );
    assert_eq!(m.limited, refused as f64);
    assert!(m.calls >= admitted as f64, "{m:?}");
    assert!(refused_calls <= most, "{refused_calls} calls for refusals");

    // A 429 from the shared store is the local store's 429, headers and all.
    let local = gateway_with(up.addr, &policy("local", "")).await;
    let (shared_first, shared_429) = until_refused(&gws[0], "shape").await;
    let (local_first, local_429) = until_refused(&local, "shape").await;
    assert_eq!(shape(&shared_first), shape(&local_first));
    assert_eq!(shape(&shared_429), shape(&local_429));
    assert_eq!(shared_429.headers["ratelimit-policy"], POLICY_HEADER);
    let doc = shared_429.json();
    assert_eq!(
        (doc["error"].as_str(), doc["policy"].as_str()),
        (Some("rate_limited"), Some("shared"))
    );
    let status = store_status(&gws[0]).await;
    eprintln!("/status: {status}");
    assert_eq!(status["sync"], "exact");
    assert_eq!(status["store"], redis.url());
    assert_eq!(store_status(&local).await["store"], "local");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_mode_overshoots_at_most_instances_times_lease_with_few_store_calls() {
    let Some(redis) = RedisServer::start(None).await else {
        return;
    };
    let up = spawn_upstream("a").await;
    let extra = format!(", sync: batched, lease: {LEASE}");
    let gws = fleet(up.addr, &policy(&redis.url(), &extra), 2).await;
    let run = drive(&gws, "k2", Duration::from_secs(2)).await;
    assert_eq!(run.unexpected(), Vec::<u16>::new(), "only 200s and 429s");
    let (admitted, exact) = (run.count(200) as f64, run.one_bucket());
    let bound = exact + f64::from(2 * LEASE);
    let m = fleet_metrics(&gws).await;
    let requests = run.samples.len() as f64;
    eprintln!(
        "batched: {admitted} admitted ({} + {}) of {requests} requests in {:?}; exact mode \
         admits {exact:.1}, the documented bound is {bound:.1}; {} store calls \
         (admitted / lease = {:.1}); {m:?}",
        run.admitted_by(0),
        run.admitted_by(1),
        run.elapsed,
        m.calls,
        admitted / f64::from(LEASE)
    );
    assert!(
        admitted <= bound + 2.0,
        "{admitted} admitted, bound {bound:.1} (+2)"
    );
    assert!(
        admitted >= 0.75 * exact,
        "{admitted} admitted, exact mode admits {exact:.1}"
    );
    assert_eq!(m.limited, run.count(429) as f64);
    // Leases: about one call per `lease` tokens, never one per request.
    assert!(m.calls > 0.0, "{m:?}");
    assert!(
        m.calls <= requests / 10.0,
        "{} calls for {requests} requests",
        m.calls
    );
    assert!(
        m.calls <= 3.0 * admitted / f64::from(LEASE) + 8.0,
        "{} calls for {admitted} admitted requests with leases of {LEASE}",
        m.calls
    );
    assert_eq!(store_status(&gws[0]).await["sync"], "batched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_falls_back_to_local_buckets_then_sharing_resumes() {
    let Some(mut redis) = RedisServer::start(None).await else {
        return;
    };
    let up = spawn_upstream("a").await;
    let gws = fleet(up.addr, &policy(&redis.url(), ", on_store_error: local"), 2).await;
    let load = {
        let gws = gws.clone();
        tokio::spawn(async move { drive(&gws, "k3", Duration::from_millis(2400)).await })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    redis.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let errors_early = fleet_metrics(&gws).await.errors;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let errors_late = fleet_metrics(&gws).await.errors;
    let run = load.await.expect("load task");

    let lat = run.latencies();
    let after_kill: Vec<usize> = (0..2)
        .map(|gw| {
            run.samples
                .iter()
                .filter(|s| s.gw == gw && s.status == 200 && s.sent > killed)
                .count()
        })
        .collect();
    eprintln!(
        "killed mid-run: {} requests ({} admitted, {} after the kill: {after_kill:?}); \
         latency p50 {:?} p99 {:?} max {:?}; store errors {errors_early} then {errors_late}",
        run.samples.len(),
        run.count(200),
        after_kill.iter().sum::<usize>(),
        lat[lat.len() / 2],
        p99(&lat),
        lat[lat.len() - 1]
    );
    assert_eq!(run.unexpected(), Vec::<u16>::new(), "only 200s and 429s");
    assert!(
        lat[lat.len() - 1] < Duration::from_millis(500),
        "max latency"
    );
    assert!(p99(&lat) < Duration::from_millis(200), "p99 latency");
    assert!(
        after_kill.iter().all(|&n| n > 0),
        "each instance kept admitting from its local bucket: {after_kill:?}"
    );
    assert!(errors_early > 0.0, "store errors counted");
    assert!(
        errors_late > errors_early,
        "checks skipped while down are counted too: {errors_early} then {errors_late}"
    );
    for gw in &gws {
        let (s, _) = wait_store(gw, &["down"], Duration::from_secs(2)).await;
        eprintln!("while down: {s}");
        assert!(s["store_errors"].as_u64().unwrap_or(0) > 0, "{s}");
        assert!(
            s["last_error"].as_str().is_some_and(|e| !e.is_empty()),
            "{s}"
        );
        assert_eq!(s["on_store_error"], "local");
        assert_eq!(store_metrics(gw).await.up, Some(0.0));
    }

    redis.restart().await;
    for (i, gw) in gws.iter().enumerate() {
        let (_, took) = wait_store(gw, &["up"], Duration::from_secs(5)).await;
        eprintln!("instance {i}: store up again {took:?} after the restart");
        assert_eq!(store_metrics(gw).await.up, Some(1.0));
    }
    let after = drive(&gws, "k3-after", Duration::from_millis(1500)).await;
    assert_eq!(after.unexpected(), Vec::<u16>::new());
    assert_one_bucket("after the restart", &after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_costs_each_check_at_most_store_timeout() {
    let Some(redis) = RedisServer::start(None).await else {
        return;
    };
    let up = spawn_upstream("a").await;
    let gws = fleet(up.addr, &policy(&redis.url(), ", store_timeout: 20ms"), 1).await;
    // Redis holds every command (the gateway's scripts and probes) for
    // 1.5 s: a slow store, not a closed one.
    let mut conn = redis.conn().await;
    ::redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query_async::<()>(&mut conn)
        .await
        .expect("CLIENT PAUSE");
    let run = drive(&gws, "k8", Duration::from_millis(1000)).await;
    let lat = run.latencies();
    let m = store_metrics(&gws[0]).await;
    eprintln!(
        "paused Redis, store_timeout 20ms: {} requests ({} admitted), latency p50 {:?} \
         p99 {:?} max {:?}; {m:?}",
        run.samples.len(),
        run.count(200),
        lat[lat.len() / 2],
        p99(&lat),
        lat[lat.len() - 1]
    );
    assert_eq!(run.unexpected(), Vec::<u16>::new(), "only 200s and 429s");
    assert!(run.count(200) > 0, "served from the local bucket");
    assert!(
        lat[lat.len() - 1] < Duration::from_millis(400),
        "no request waits for the paused store"
    );
    assert!(m.errors > 0.0, "{m:?}");
    let (_, took) = wait_store(&gws[0], &["up"], Duration::from_secs(5)).await;
    eprintln!("store up {took:?} after the run (the pause ends 0.5 s after it)");
}

/// A gateway whose store is a closed port.
async fn gateway_without_store(upstream: SocketAddr, extra: &str) -> (Arc<RunningGateway>, u16) {
    let port = closed_port().await.port();
    let store = format!("redis://127.0.0.1:{port}/0");
    let gw = gateway_with(upstream, &policy(&store, extra)).await;
    (gw, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_down_deny_answers_503_rate_limit_unavailable() {
    let up = spawn_upstream("a").await;
    let (gw, _) = gateway_without_store(up.addr, ", on_store_error: deny").await;
    for _ in 0..5 {
        let t = Instant::now();
        let r = call(&gw, "k4").await;
        let took = t.elapsed();
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.headers["retry-after"], "1");
        let doc = r.json();
        assert_eq!(doc["error"], "rate_limit_unavailable", "{doc}");
        assert_eq!(doc["status"], 503);
        assert!(took < Duration::from_millis(500), "{took:?}");
    }
    assert_eq!(up.seen.hits.load(Ordering::SeqCst), 0);
    let (s, _) = wait_store(&gw, &["down", "connecting"], Duration::ZERO).await;
    let m = store_metrics(&gw).await;
    eprintln!("deny: {s}; {m:?}");
    assert_eq!(s["on_store_error"], "deny");
    assert!(m.errors >= 5.0, "{m:?}");
    assert_eq!(m.up, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_down_allow_passes_without_ratelimit_state() {
    let up = spawn_upstream("a").await;
    let (gw, _) = gateway_without_store(up.addr, ", on_store_error: allow").await;
    let n = 2 * BURST as usize;
    for _ in 0..n {
        let r = call(&gw, "k4").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            !r.headers.contains_key("ratelimit"),
            "no RateLimit state without a store: {:?}",
            r.headers
        );
    }
    assert_eq!(up.seen.hits.load(Ordering::SeqCst), n);
    let m = store_metrics(&gw).await;
    eprintln!("allow: {m:?}");
    assert!(m.errors >= n as f64, "{m:?}");
    assert_eq!(store_status(&gw).await["on_store_error"], "allow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_starts_without_redis_serves_from_local_buckets_and_recovers() {
    let up = spawn_upstream("a").await;
    let (gw, port) = gateway_without_store(up.addr, "").await;
    let s = store_status(&gw).await;
    eprintln!("at start: {s}");
    assert!(
        s["store_state"] == "down" || s["store_state"] == "connecting",
        "{s}"
    );
    assert_eq!(s["store"], format!("redis://127.0.0.1:{port}/0"));
    assert_eq!(s["sync"], "exact");
    assert_eq!(s["on_store_error"], "local");

    // The local bucket decides, with the usual headers.
    let (first, refused) = until_refused(&gw, "k7").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["ratelimit-policy"], POLICY_HEADER);
    let state = first.headers["ratelimit"].to_str().unwrap();
    assert!(state.starts_with("\"shared\";r=19;t="), "{state}");
    assert_eq!(refused.json()["error"], "rate_limited");
    assert!(refused.headers.contains_key("retry-after"));
    let (s, _) = wait_store(&gw, &["down"], Duration::from_secs(3)).await;
    assert!(
        s["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{s}"
    );
    assert_eq!(store_metrics(&gw).await.up, Some(0.0));

    // Redis appears on that port: the store comes up by itself.
    let Some(_redis) = RedisServer::start_on(port, None).await else {
        return;
    };
    let (_, took) = wait_store(&gw, &["up"], Duration::from_secs(5)).await;
    eprintln!("store up {took:?} after redis-server started");
    let before = store_metrics(&gw).await.calls;
    for _ in 0..3 {
        let status = call(&gw, "k7-later").await.status;
        assert!(status == 200 || status == 429, "{status}");
    }
    let m = store_metrics(&gw).await;
    assert_eq!(m.up, Some(1.0));
    assert!(m.calls >= before + 3.0, "checks go to Redis now: {m:?}");
}

/// SCAN for every key matching `pattern`.
async fn scan(conn: &mut ::redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let (mut cursor, mut keys) = (0u64, Vec::new());
    loop {
        let (next, batch): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        keys.extend(batch);
        if next == 0 {
            keys.sort();
            return keys;
        }
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_keys_are_named_per_policy_and_client_and_expire_when_full() {
    let Some(redis) = RedisServer::start(None).await else {
        return;
    };
    let up = spawn_upstream("a").await;
    let gws = fleet(up.addr, &policy(&redis.url(), ""), 1).await;
    // Tokens taken per client key: the bucket is full again after n / rate.
    // The smallest last, so that it is still there when we look.
    let taken = [("carol", 20u32), ("bob", 12), ("alice", 8)];
    for (key, n) in taken {
        for _ in 0..n {
            assert_eq!(call(&gws[0], key).await.status, 200);
        }
    }
    let mut conn = redis.conn().await;
    let keys = scan(&mut conn, "portcullis:rl:*").await;
    let mut ttls = Vec::new();
    for k in &keys {
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        ttls.push(ttl);
    }
    eprintln!(
        "keys and PTTL (ms): {:?}",
        keys.iter().zip(&ttls).collect::<Vec<_>>()
    );
    assert_eq!(keys.len(), taken.len(), "one key per client key: {keys:?}");
    for k in &keys {
        let hash = k
            .strip_prefix("portcullis:rl:shared:")
            .unwrap_or_else(|| panic!("`{k}` is not portcullis:rl:<policy>:<hash>"));
        assert!(
            hash.len() == 32 && hash.chars().all(|c| c.is_ascii_hexdigit()),
            "`{k}`: 32 hex digits expected"
        );
        for (client, _) in taken {
            assert!(!k.contains(client), "the client key is hashed: {k}");
        }
    }
    // Each TTL is the time until that bucket is full again: at most n / rate
    // for n tokens taken, so at most burst / rate = 1 s. (If every TTL is
    // under its own bound, the sorted TTLs are under the sorted bounds.)
    let full_after = 1000 * i64::from(BURST) / i64::from(RATE);
    let mut bounds: Vec<i64> = taken
        .iter()
        .map(|(_, n)| 1000 * i64::from(*n) / i64::from(RATE))
        .collect();
    bounds.sort();
    let mut sorted = ttls.clone();
    sorted.sort();
    for (ttl, bound) in sorted.iter().zip(&bounds) {
        assert!(
            *ttl > 0 && *ttl <= bound + 5 && *ttl <= full_after + 5,
            "PTTL {ttl} ms, at most {bound} ms expected: {ttls:?} (bounds {bounds:?})"
        );
    }

    // Full buckets leave Redis: memory is bounded like the local store's.
    tokio::time::sleep(Duration::from_millis(full_after as u64 + 300)).await;
    let left = scan(&mut conn, "portcullis:rl:*").await;
    assert!(left.is_empty(), "keys outlived their TTL: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_redis_answers_with_an_error_falls_back_alone_and_the_store_stays_up() {
    let Some(redis) = RedisServer::start(None).await else {
        return;
    };
    let up = spawn_upstream("a").await;
    let gws = fleet(up.addr, &policy(&redis.url(), ""), 1).await;
    assert_eq!(call(&gws[0], "dave").await.status, 200);
    let mut conn = redis.conn().await;
    let keys = scan(&mut conn, "portcullis:rl:*").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    // Someone else's data under the bucket's name: the script fails on it.
    ::redis::cmd("DEL")
        .arg(&keys[0])
        .query_async::<()>(&mut conn)
        .await
        .expect("DEL");
    ::redis::cmd("HSET")
        .arg(&keys[0])
        .arg("field")
        .arg("value")
        .query_async::<()>(&mut conn)
        .await
        .expect("HSET");
    let before = store_metrics(&gws[0]).await;
    let a = call(&gws[0], "dave").await;
    assert_eq!(a.status, 200, "decided by the local bucket");
    assert!(
        a.headers.contains_key("ratelimit"),
        "with the usual headers"
    );
    let after = store_metrics(&gws[0]).await;
    assert_eq!(after.errors - before.errors, 1.0);
    // Other keys still go to Redis: one bad key does not take the store down.
    assert_eq!(call(&gws[0], "erin").await.status, 200);
    let s = store_status(&gws[0]).await;
    eprintln!("after a WRONGTYPE answer: {s}");
    assert_eq!(s["store_state"], "up", "{s}");
    assert!(
        s["last_error"].as_str().unwrap_or("").contains("WRONGTYPE"),
        "{s}"
    );
    assert_eq!(store_metrics(&gws[0]).await.calls, after.calls + 1.0);
}

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// The real binary, its stdout and stderr read as one stream of lines.
struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    seen: Vec<String>,
}

impl Process {
    fn spawn(config: &Path, env: &[(&str, &str)]) -> Process {
        let mut child = Command::new(BIN)
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the portcullis binary starts");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx2.send(line);
            }
        });
        Process {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line so far or within `within` that `matches`.
    fn try_wait_for(&mut self, within: Duration, matches: impl Fn(&str) -> bool) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| matches(l.as_str())) {
            return Some(l.clone());
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if matches(&line) {
                return Some(line);
            }
        }
    }

    /// Like [`Process::try_wait_for`]; panics with the output so far when
    /// no line matches.
    fn wait_for(&mut self, what: &str, within: Duration, matches: impl Fn(&str) -> bool) -> String {
        self.try_wait_for(within, matches).unwrap_or_else(|| {
            panic!(
                "no {what} within {within:?} (exited: {:?}); output:\n{}",
                self.child.try_wait(),
                self.seen.join("\n")
            )
        })
    }

    /// The address a JSON start-up line with `message` logged in `field`.
    fn logged_addr(&mut self, message: &str, field: &str) -> SocketAddr {
        let is_it = |l: &str| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["message"] == message)
        };
        let line = self.wait_for(message, Duration::from_secs(10), is_it);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v[field]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in `{field}`: {line}"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_clear_start_up_warning_not_a_crash() {
    let (right, wrong) = ("right-horse-battery", "wrong-staple-7e3f");
    let Some(redis) = RedisServer::start(Some(right)).await else {
        return;
    };
    let up = spawn_upstream("a").await;
    // The password comes from the environment, as a deployment would pass it.
    let store = format!(
        "redis://:${{PORTCULLIS_TEST_REDIS_PASSWORD}}@127.0.0.1:{}/0",
        redis.port()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, config_text(up.addr, &policy(&store, ""))).unwrap();
    let mut gw = Process::spawn(&path, &[("PORTCULLIS_TEST_REDIS_PASSWORD", wrong)]);
    let http = gw.logged_addr("listening", "addr");
    let admin_addr = gw.logged_addr("admin port listening", "admin");
    let warning = gw.wait_for("WARN line about the store", Duration::from_secs(10), |l| {
        l.contains("WARN") && l.contains("rate-limit store")
    });
    eprintln!("start-up warning: {warning}");
    let redacted = format!("redis://:***@127.0.0.1:{}/0", redis.port());
    assert!(warning.contains(&redacted), "names the store as {redacted}");
    let lower = warning.to_lowercase();
    assert!(
        lower.contains("wrongpass") || lower.contains("invalid password") || lower.contains("auth"),
        "says why (authentication)"
    );
    assert!(lower.contains("fall"), "says that it falls back");

    // Serving, from the local bucket.
    let req = || {
        Request::get(format!("http://{http}/"))
            .header("x-api-key", "k6")
            .body(empty())
            .unwrap()
    };
    let r = send(&http1_client(), req()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["ratelimit-policy"], POLICY_HEADER);
    let status = get(admin_addr, "/status").await.json();
    let entry = &status["rate_limits"][0];
    eprintln!("/status: {entry}");
    assert_eq!(entry["store"], redacted.as_str());
    assert!(entry["store_state"] != "up", "{entry}");
    assert!(gw.child.try_wait().unwrap().is_none(), "still running");
    assert!(
        !gw.seen
            .iter()
            .any(|l| l.contains("rate-limit store") && l.contains("is up")),
        "never reported up with a wrong password"
    );

    // The server learns that password: the store comes up by itself.
    let mut conn = redis.conn().await;
    ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(wrong)
        .query_async::<()>(&mut conn)
        .await
        .expect("CONFIG SET requirepass");
    let fresh = redis.url_with_password(wrong);
    let mut fresh = ::redis::Client::open(fresh)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("a new connection with the gateway's password is accepted now");
    ::redis::cmd("PING")
        .query_async::<String>(&mut fresh)
        .await
        .expect("PING");
    let up_line = gw.try_wait_for(Duration::from_secs(5), |l| {
        l.contains("INFO") && l.contains("rate-limit store") && l.contains("is up")
    });
    let Some(up_line) = up_line else {
        let status = get(admin_addr, "/status").await.json();
        panic!(
            "the store did not come up within 5 s of the server accepting its password \
             (a new connection with it works); /status: {}\noutput:\n{}",
            status["rate_limits"][0],
            gw.seen.join("\n")
        );
    };
    eprintln!("recovery: {up_line}");
    assert_eq!(send(&http1_client(), req()).await.status, 200);
    let status = get(admin_addr, "/status").await.json();
    assert_eq!(status["rate_limits"][0]["store_state"], "up");
    assert!(status.to_string().contains("***"));

    for secret in [right, wrong] {
        assert!(
            !status.to_string().contains(secret),
            "/status shows a password"
        );
        if let Some(l) = gw.seen.iter().find(|l| l.contains(secret)) {
            panic!("a log line shows a password: {l}");
        }
    }
}

#[test]
fn check_validates_the_store_keys() {
    let head = "listeners: [{ name: http, bind: '127.0.0.1:8080' }]\n";
    let tail = "upstreams: [{ name: u, endpoints: ['127.0.0.1:9000'] }]\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: u, rate_limit: shared }\n";
    let store = "redis://127.0.0.1:6379/0";
    let fine = [
        policy(
            store,
            ", sync: batched, lease: 5, store_timeout: 10ms, on_store_error: deny",
        ),
        policy("rediss://:secret@cache.example:6380/1", ", sync: exact"),
        policy(store, ", store_timeout: 10s, on_store_error: allow"),
    ];
    for p in fine {
        let (code, stderr) = check_text(&format!("{head}{p}{tail}"));
        assert_eq!(code, Some(0), "{p}{stderr}");
    }
    let wrong = [
        policy("memcached://127.0.0.1:11211", ""),
        policy("redis://127.0.0.1:notaport/0", ""),
        policy("local", ", sync: batched"),
        policy(store, ", sync: eventually"),
        policy(store, ", sync: batched, lease: 0"),
        policy(store, ", sync: batched, lease: 21"),
        policy(store, ", store_timeout: 0ms"),
        policy(store, ", store_timeout: 11s"),
        policy(store, ", on_store_error: maybe"),
    ];
    for p in wrong {
        let text = format!("{head}{p}{tail}");
        let (_, stderr) = check_text(&text);
        eprintln!("{}", stderr.trim_end());
        assert_check_reports(&text, &["3:"]);
    }
}
