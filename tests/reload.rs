//! Hot reload: a config file edited under a running gateway, applied by the
//! file watcher or `POST /reload`; invalid files change nothing; listeners,
//! pools and certificates; in-flight requests; no leaks.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use http::Request;
use portcullis::{config, Gateway, RunningGateway};

/// A gateway config: plain listener `http`, upstreams `a` and `b`, and the
/// given routes (YAML list items).
fn config_text(a: SocketAddr, b: SocketAddr, extra_listeners: &str, routes: &str) -> String {
    format!(
        "listeners:\n  - {{ name: http, bind: '127.0.0.1:0' }}\n{extra_listeners}\
         admin: {{ bind: '127.0.0.1:0' }}\nserver: {{ access_log: false }}\n\
         upstreams:\n  - {{ name: a, endpoints: ['{a}'] }}\n  - {{ name: b, endpoints: ['{b}'] }}\n\
         routes:\n{routes}"
    )
}

const ROUTE_A: &str = "  - { name: ra, match: { path_prefix: /a }, upstream: a }\n";
const ROUTE_B: &str = "  - { name: rb, match: { path_prefix: /b }, upstream: b }\n";

async fn start_from(path: &Path) -> RunningGateway {
    let loaded = config::load_file(path).unwrap_or_else(|e| panic!("invalid test config:\n{e}"));
    Gateway::start(loaded).await.expect("gateway starts")
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Polls `GET path` until it answers `status` (or panics after `within`).
async fn wait_for_status(gw: &RunningGateway, path: &str, status: u16, within: Duration) {
    let start = Instant::now();
    loop {
        let a = get(gw.addr("http").unwrap(), path).await;
        if a.status == status {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{path} still {} after {within:?}",
            a.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_reload(gw: &RunningGateway) -> Answer {
    let req = Request::post(format!("http://{}/reload", gw.admin_addr()))
        .body(empty())
        .unwrap();
    send(&http1_client(), req).await
}

fn reloads(text: &str, result: &str) -> f64 {
    metric(
        text,
        &format!("portcullis_config_reloads_total{{result=\"{result}\"}}"),
    )
}

#[tokio::test]
async fn a_saved_edit_goes_live_within_a_second_and_is_summarised() {
    let (a, b) = (spawn_upstream("a").await, spawn_upstream("b").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    write(&path, &config_text(a.addr, b.addr, "", ROUTE_A));
    let mut gw = start_from(&path).await;
    gw.watch_config();
    assert_eq!(get(gw.addr("http").unwrap(), "/b/1").await.status, 404);

    // In-place write: a new route, and route `ra` now splits to `b`.
    let routes = format!(
        "  - name: ra\n    match: {{ path_prefix: /a }}\n    split:\n      - {{ upstream: a, weight: 0 }}\n      - {{ upstream: b, weight: 1 }}\n{ROUTE_B}"
    );
    let saved = Instant::now();
    write(&path, &config_text(a.addr, b.addr, "", &routes));
    wait_for_status(&gw, "/b/1", 200, Duration::from_secs(3)).await;
    assert!(
        saved.elapsed() < Duration::from_millis(1500),
        "{:?}",
        saved.elapsed()
    );
    assert_eq!(get(gw.addr("http").unwrap(), "/a/1").await.body, "b /a/1");

    let status = admin(&gw, "/status").await.json();
    assert_eq!(status["generation"], 2);
    let last = &status["last_reload"];
    assert_eq!(last["result"], "ok");
    assert_eq!(last["trigger"], "file");
    let changes: Vec<&str> = last["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(changes.contains(&"+ route `rb`"), "{changes:?}");
    assert!(
        changes
            .iter()
            .any(|c| c.starts_with("~ route `ra`: split: (unset) → ")),
        "{changes:?}"
    );
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(reloads(&m, "ok"), 1.0, "{m}");
    assert_eq!(metric(&m, "portcullis_config_generation"), 2.0);

    // Several quick saves become one reload of the last one.
    for weight in 1..=5 {
        let routes = format!(
            "  - name: ra\n    match: {{ path_prefix: /a }}\n    split:\n      - {{ upstream: a, weight: {weight} }}\n      - {{ upstream: b, weight: 0 }}\n{ROUTE_B}"
        );
        write(&path, &config_text(a.addr, b.addr, "", &routes));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_status(&gw, "/a/x", 200, Duration::from_secs(3)).await;
    let start = Instant::now();
    while get(gw.addr("http").unwrap(), "/a/x").await.body != "a /a/x" {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "weights not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(reloads(&m, "ok"), 2.0, "bursts are debounced: {m}");
}

#[tokio::test]
async fn rename_saves_and_kubernetes_symlink_swaps_are_noticed() {
    let (a, b) = (spawn_upstream("a").await, spawn_upstream("b").await);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The ConfigMap layout: gateway.yaml -> ..data/gateway.yaml, ..data -> v1.
    std::fs::create_dir(root.join("v1")).unwrap();
    write(
        &root.join("v1/gateway.yaml"),
        &config_text(a.addr, b.addr, "", ROUTE_A),
    );
    std::os::unix::fs::symlink("v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/gateway.yaml", root.join("gateway.yaml")).unwrap();
    let path = root.join("gateway.yaml");
    let mut gw = start_from(&path).await;
    gw.watch_config();
    assert_eq!(get(gw.addr("http").unwrap(), "/b/1").await.status, 404);

    std::fs::create_dir(root.join("v2")).unwrap();
    write(
        &root.join("v2/gateway.yaml"),
        &config_text(a.addr, b.addr, "", &format!("{ROUTE_A}{ROUTE_B}")),
    );
    std::os::unix::fs::symlink("v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    wait_for_status(&gw, "/b/1", 200, Duration::from_secs(3)).await;

    // An editor's save: write a temp file, rename it over the config.
    let tmp = root.join(".gateway.yaml.swp");
    write(&tmp, &config_text(a.addr, b.addr, "", ROUTE_B));
    std::fs::rename(&tmp, &path).unwrap();
    wait_for_status(&gw, "/a/1", 404, Duration::from_secs(3)).await;
    assert_eq!(get(gw.addr("http").unwrap(), "/b/1").await.status, 200);
}

#[tokio::test]
async fn invalid_files_change_nothing_and_say_why() {
    let (a, b) = (spawn_upstream("a").await, spawn_upstream("b").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    write(&path, &config_text(a.addr, b.addr, "", ROUTE_A));
    let gw = start_from(&path).await;
    let file = path.display().to_string();

    // YAML syntax error.
    write(&path, "listeners:\n  - name: [http\n");
    let r = post_reload(&gw).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let doc = r.json();
    assert_eq!(doc["result"], "error");
    let err = doc["errors"][0].as_str().unwrap();
    assert!(
        err.starts_with(&format!("{file}:3:1: YAML syntax")),
        "{err}"
    );

    // Valid YAML, invalid config: unknown upstream, with its line.
    let bad = config_text(
        a.addr,
        b.addr,
        "",
        "  - { name: rc, match: { path_prefix: /c }, upstream: c }\n",
    );
    write(&path, &bad);
    let r = post_reload(&gw).await;
    assert_eq!(r.status, 422);
    let err = r.json()["errors"][0].as_str().unwrap().to_string();
    assert!(
        err.starts_with(&format!("{file}:9:")) && err.contains("unknown upstream `c`"),
        "{err}"
    );

    // Old behaviour throughout; the error is in /status and the metrics.
    assert_eq!(get(gw.addr("http").unwrap(), "/a/1").await.status, 200);
    assert_eq!(get(gw.addr("http").unwrap(), "/c/1").await.status, 404);
    let status = admin(&gw, "/status").await.json();
    assert_eq!(status["generation"], 1);
    assert_eq!(status["last_reload"]["result"], "error");
    assert!(status["loaded_at_unix"].as_u64().unwrap() > 0);
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!((reloads(&m, "error"), reloads(&m, "ok")), (2.0, 0.0), "{m}");

    // Fixed: applied, and POST /reload answers with the new generation.
    write(
        &path,
        &config_text(a.addr, b.addr, "", &format!("{ROUTE_A}{ROUTE_B}")),
    );
    let r = post_reload(&gw).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let doc = r.json();
    assert_eq!(
        (doc["result"].as_str(), doc["generation"].as_u64()),
        (Some("ok"), Some(2))
    );
    assert_eq!(doc["changes"][0], "+ route `rb`");
    // Nothing new: "unchanged", same generation.
    let doc = post_reload(&gw).await.json();
    assert_eq!(
        (doc["result"].as_str(), doc["generation"].as_u64()),
        (Some("unchanged"), Some(2))
    );
    // Only POST.
    assert_eq!(admin(&gw, "/reload").await.status, 405);
}

#[tokio::test]
async fn in_flight_requests_finish_on_their_config_and_pools_survive() {
    let (a, b) = (spawn_upstream("a").await, spawn_upstream("b").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    write(&path, &config_text(a.addr, b.addr, "", ROUTE_A));
    let gw = start_from(&path).await;
    let addr = gw.addr("http").unwrap();

    assert_eq!(get(addr, "/a/warm").await.status, 200);
    assert_eq!(a.seen.connections.load(Ordering::SeqCst), 1);

    // An unrelated change keeps upstream `a`'s pool (and its connection).
    write(
        &path,
        &config_text(a.addr, b.addr, "", &format!("{ROUTE_A}{ROUTE_B}")),
    );
    gw.reload().await.unwrap();
    assert_eq!(get(addr, "/a/again").await.status, 200);
    assert_eq!(
        a.seen.connections.load(Ordering::SeqCst),
        1,
        "pool kept across reload"
    );

    // A slow request in flight while its route is removed still finishes.
    let slow = tokio::spawn(async move { get(addr, "/a/delay/400").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    write(&path, &config_text(a.addr, b.addr, "", ROUTE_B));
    gw.reload().await.unwrap();
    assert_eq!(
        get(addr, "/a/new").await.status,
        404,
        "new requests see the new config"
    );
    let done = slow.await.unwrap();
    assert_eq!(
        (done.status.as_u16(), done.body.as_str()),
        (200, "a /a/delay/400")
    );

    // Route `ra`'s duration histogram counts across the reloads: the two
    // quick requests and the slow one (counted when its body has ended).
    let count = "portcullis_request_duration_seconds_count{route=\"ra\"}";
    let start = Instant::now();
    let text = loop {
        let text = admin(&gw, "/metrics").await.body;
        if metric(&text, count) == 3.0 || start.elapsed() > Duration::from_secs(2) {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(metric(&text, count), 3.0, "{text}");
    let quick = "portcullis_request_duration_seconds_bucket{route=\"ra\",le=\"0.25\"}";
    assert_eq!(metric(&text, quick), 2.0, "{text}");
    assert!(
        metric(
            &text,
            "portcullis_request_duration_seconds_sum{route=\"ra\"}"
        ) >= 0.4,
        "{text}"
    );
}

#[tokio::test]
async fn listeners_come_and_go_and_a_taken_port_rejects_the_whole_reload() {
    let (a, b) = (spawn_upstream("a").await, spawn_upstream("b").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    write(&path, &config_text(a.addr, b.addr, "", ROUTE_A));
    let gw = start_from(&path).await;

    let extra = "  - { name: extra, bind: '127.0.0.2:0' }\n";
    write(&path, &config_text(a.addr, b.addr, extra, ROUTE_A));
    gw.reload().await.unwrap();
    let extra_addr = gw.addr("extra").expect("new listener bound");
    assert_eq!(get(extra_addr, "/a/1").await.status, 200);

    // A connection with a request in flight on a listener being removed
    // finishes; then the address stops accepting.
    let slow = tokio::spawn(async move { get(extra_addr, "/a/delay/400").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    write(&path, &config_text(a.addr, b.addr, "", ROUTE_A));
    gw.reload().await.unwrap();
    assert!(gw.addr("extra").is_none());
    assert_eq!(slow.await.unwrap().status, 200);
    let start = Instant::now();
    while tokio::net::TcpStream::connect(extra_addr).await.is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "removed listener still accepts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A port in use: nothing of the reload applies, not even the route.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = format!(
        "  - {{ name: busy, bind: '{}' }}\n",
        taken.local_addr().unwrap()
    );
    write(
        &path,
        &config_text(a.addr, b.addr, &busy, &format!("{ROUTE_A}{ROUTE_B}")),
    );
    let err = gw.reload().await.expect_err("bind fails").to_string();
    assert!(
        err.contains("cannot listen on") && err.contains("listener `busy`"),
        "{err}"
    );
    assert_eq!(get(gw.addr("http").unwrap(), "/b/1").await.status, 404);
    assert!(gw.addr("busy").is_none());
    assert_eq!(admin(&gw, "/status").await.json()["generation"], 3);
}

#[tokio::test]
async fn a_listeners_certificate_changes_with_the_config() {
    let up = spawn_upstream("up").await;
    let pki = Pki::new();
    let one = pki.server("one", &["localhost"]);
    let two = pki.server("two", &["localhost"]);
    let text = |cert: &(String, String)| {
        format!(
            "listeners:\n  - name: https\n    bind: '127.0.0.1:0'\n    tls:\n      certificates:\n        - {{ cert: '{}', key: '{}' }}\n\
             admin: {{ bind: '127.0.0.1:0' }}\nserver: {{ access_log: false }}\n\
             upstreams:\n  - {{ name: up, endpoints: ['{}'] }}\n\
             routes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: up }}\n",
            cert.0, cert.1, up.addr
        )
    };
    let path = pki.dir.path().join("gateway.yaml");
    write(&path, &text(&one));
    let gw = start_from(&path).await;
    let addr = gw.addr("https").unwrap();
    let trusting = ClientOpts::trusting(&pki.ca);
    let tls = tls_connect(addr, "localhost", &trusting).await.unwrap();
    let der = |p: &str| pem_cert_der(&std::fs::read_to_string(p).unwrap());
    assert!(served_cert(&tls) == der(&one.0));
    let mut open = TlsHttp::new(tls).await.unwrap();

    write(&path, &text(&two));
    gw.reload().await.unwrap();
    assert_eq!(gw.addr("https"), Some(addr), "same socket");
    let tls = tls_connect(addr, "localhost", &trusting).await.unwrap();
    assert!(served_cert(&tls) == der(&two.0));
    assert_eq!(
        open.get("/still", &[]).await.unwrap().status,
        200,
        "open connection kept"
    );
}

/// A GET on a connection that closes after it (no client or server
/// connection task left behind to blur task counts).
async fn get_and_close(addr: SocketAddr, path: &str) -> u16 {
    let req = Request::get(format!("http://{addr}{path}"))
        .header("connection", "close")
        .body(empty())
        .unwrap();
    send(&http1_client(), req).await.status.as_u16()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reloads_leak_no_tasks_or_file_descriptors() {
    let (a, b) = (spawn_upstream("a").await, spawn_upstream("b").await);
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("gateway.yaml");
    let texts: Vec<String> = (0..2)
        .map(|i| {
            let routes = format!(
                "  - name: ra\n    match: {{ path_prefix: /a }}\n    split:\n      - {{ upstream: a, weight: {} }}\n      - {{ upstream: b, weight: 1 }}\n",
                i + 1
            );
            // Alternate an extra listener and upstream too.
            let extra = if i == 0 { "  - { name: extra, bind: '127.0.0.2:0' }\n" } else { "" };
            config_text(a.addr, b.addr, extra, &routes)
        })
        .collect();
    write(&path, &texts[1]);
    let gw = start_from(&path).await;
    let addr = gw.addr("http").unwrap();
    for i in 0..2 {
        write(&path, &texts[i % 2]);
        gw.reload().await.unwrap();
    }
    // Both upstreams' pools hold a connection before counting.
    for _ in 0..8 {
        assert_eq!(get_and_close(addr, "/a/1").await, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let (tasks_before, fds_before) = (metrics.num_alive_tasks(), open_fds());

    for i in 0..1000 {
        write(&path, &texts[i % 2]);
        let r = gw.reload().await.unwrap();
        assert_eq!(r.result, "ok");
    }
    for _ in 0..8 {
        assert_eq!(get_and_close(addr, "/a/1").await, 200);
    }
    // Removed listeners' accept loops end on their own.
    let start = Instant::now();
    loop {
        let (tasks, fds) = (metrics.num_alive_tasks(), open_fds());
        // Slack for pool connections opened meanwhile and for other tests'
        // files (fds are per process); a per-reload leak would be ~500.
        if tasks <= tasks_before + 10 && fds <= fds_before + 50 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "tasks {tasks_before} → {tasks}, fds {fds_before} → {fds}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(admin(&gw, "/status").await.json()["generation"], 1003);
}
