//! Version routing and canary releases (issue 6, second part): every
//! version source and their precedence, conflicts, the default,
//! `unsupported_version`, the version segment the upstream sees,
//! deprecation headers, and the canary guard tripping on a failing canary.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use http::Request;
use portcullis::RunningGateway;

/// v1 and v2 of `users` side by side (v1 deprecated), `orders` at v2 only
/// keeping the version segment, and `health` at every version.
fn versioned_config(v1: &Upstream, v2: &Upstream, versioning: &str) -> String {
    format!(
        "listeners: [{{ name: http, bind: '127.0.0.1:0' }}]\nadmin: {{ bind: '127.0.0.1:0' }}\n\
         server: {{ access_log: false }}\n\
         {versioning}\
         upstreams:\n  - {{ name: v1, endpoints: ['{}'] }}\n  - {{ name: v2, endpoints: ['{}'] }}\n\
         routes:\n\
         \x20 - name: users-v1\n    match: {{ path_prefix: /api/users, version: 1 }}\n    upstream: v1\n\
         \x20   deprecation: {{ sunset: 2027-06-30, link: /api/v2/users }}\n\
         \x20 - name: users-v2\n    match: {{ path_prefix: /api/users, version: \"2\" }}\n    upstream: v2\n    strip_prefix: /api\n\
         \x20 - name: orders-v2\n    match: {{ path_prefix: /api/orders, version: 2 }}\n    upstream: v2\n    keep_version_segment: true\n\
         \x20 - name: health\n    match: {{ path: /health }}\n    upstream: v1\n",
        v1.addr, v2.addr
    )
}

const VERSIONING: &str = "versioning:\n  from: [path, header, accept]\n  header: API-Version\n  \
                          accept_vendor: vnd.example\n  default: \"1\"\n";

/// Request headers, as name and value.
type Headers<'a> = &'a [(&'a str, &'a str)];

async fn ask(gw: &RunningGateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(format!("http://{}{path}", gw.addr("http").unwrap()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&http1_client(), req.body(empty()).unwrap()).await
}

#[tokio::test]
async fn every_source_the_default_and_what_the_upstream_sees() {
    let (v1, v2) = (spawn_upstream("v1").await, spawn_upstream("v2").await);
    let gw = start_gateway(&versioned_config(&v1, &v2, VERSIONING)).await;
    let cases: [(&str, Headers<'_>, &str); 8] = [
        // No version anywhere: the default, 1.
        ("/api/users/42", &[], "v1 /api/users/42"),
        // The path segment; matching and the upstream see the path without it.
        ("/api/v2/users/42", &[], "v2 /users/42"),
        ("/api/v1/users/42?x=1", &[], "v1 /api/users/42"),
        ("/api/users/42", &[("api-version", "2")], "v2 /users/42"),
        ("/api/users/42", &[("api-version", "v2")], "v2 /users/42"),
        (
            "/api/users/42",
            &[("accept", "application/vnd.example.v2+json")],
            "v2 /users/42",
        ),
        // Sources that agree are fine.
        (
            "/api/v2/users/1",
            &[
                ("api-version", "2"),
                ("accept", "application/vnd.example.v2+json"),
            ],
            "v2 /users/1",
        ),
        // keep_version_segment: the upstream gets the path as sent.
        ("/api/v2/orders/7", &[], "v2 /api/v2/orders/7"),
    ];
    for (path, headers, expected) in cases {
        let a = ask(&gw, path, headers).await;
        assert_eq!(
            (a.status.as_u16(), a.body.as_str()),
            (200, expected),
            "{path} {headers:?}"
        );
    }
    assert_eq!(
        v1.seen.last_path.lock().unwrap().as_deref(),
        Some("/api/users/42?x=1"),
        "the query string survives the rewrite"
    );
    // A route without `version` serves every version.
    for v in ["1", "2", "9"] {
        assert_eq!(ask(&gw, "/health", &[("api-version", v)]).await.status, 200);
    }
}

#[tokio::test]
async fn conflicts_malformed_versions_and_unsupported_versions() {
    let (v1, v2) = (spawn_upstream("v1").await, spawn_upstream("v2").await);
    let gw = start_gateway(&versioned_config(&v1, &v2, VERSIONING)).await;

    let a = ask(&gw, "/api/v1/users", &[("api-version", "2")]).await;
    assert_eq!(a.status, 400);
    let doc = a.json();
    assert_eq!(doc["error"], "bad_request");
    assert_eq!(
        doc["detail"],
        "the request names two versions: 1 by its path and 2 by its header"
    );
    let a = ask(
        &gw,
        "/api/users",
        &[
            ("api-version", "2"),
            ("accept", "application/vnd.example.v3+json"),
        ],
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(a.json()["detail"]
        .as_str()
        .unwrap()
        .contains("3 by its accept"));
    let a = ask(&gw, "/api/users", &[("api-version", "latest")]).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"], "bad_request");

    let a = ask(&gw, "/api/v3/users/42", &[]).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.headers["content-type"], "application/problem+json");
    let doc = a.json();
    assert_eq!(doc["error"], "unsupported_version");
    assert_eq!(doc["supported_versions"], serde_json::json!(["1", "2"]));
    assert_eq!(
        doc["detail"],
        "version 3 is not served at this path; it serves versions 1, 2"
    );
    // /api/orders is served at v2 only.
    let doc = ask(&gw, "/api/orders", &[("api-version", "1")])
        .await
        .json();
    assert_eq!(doc["supported_versions"], serde_json::json!(["2"]));
    // A path no route serves at any version stays `no_route`.
    let a = ask(&gw, "/api/v3/nothing", &[]).await;
    assert_eq!(
        (a.status.as_u16(), a.json()["error"].as_str()),
        (404, Some("no_route"))
    );
    assert_eq!(
        v1.seen.hits.load(Ordering::SeqCst),
        0,
        "nothing was forwarded"
    );
    assert_eq!(
        v2.seen.hits.load(Ordering::SeqCst),
        0,
        "nothing was forwarded"
    );

    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(
        metric(
            &m,
            "portcullis_rejections_total{reason=\"unsupported_version\",route=\"\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_rejections_total{reason=\"bad_request\",route=\"\"}"
        ),
        3.0
    );

    // Nothing else broke: good requests still go through.
    assert_eq!(ask(&gw, "/api/v2/users/1", &[]).await.body, "v2 /users/1");
}

#[tokio::test]
async fn without_a_default_a_versioned_path_needs_a_version() {
    let (v1, v2) = (spawn_upstream("v1").await, spawn_upstream("v2").await);
    let versioning = "versioning: { from: [path, header] }\n";
    let gw = start_gateway(&versioned_config(&v1, &v2, versioning)).await;
    let a = ask(&gw, "/api/users", &[]).await;
    assert_eq!(a.status, 404);
    let doc = a.json();
    assert_eq!(doc["error"], "unsupported_version");
    assert_eq!(
        doc["detail"],
        "this path needs an API version; it serves versions 1, 2"
    );
    assert_eq!(ask(&gw, "/health", &[]).await.status, 200);
    // `accept` is not a source here: its version is not read.
    let a = ask(
        &gw,
        "/api/users",
        &[("accept", "application/vnd.example.v2+json")],
    )
    .await;
    assert_eq!(a.status, 404);
    assert_eq!(ask(&gw, "/api/v1/users", &[]).await.body, "v1 /api/users");
}

#[tokio::test]
async fn deprecated_routes_say_so_in_exact_headers_and_are_counted() {
    let (v1, v2) = (spawn_upstream("v1").await, spawn_upstream("v2").await);
    let gw = start_gateway(&versioned_config(&v1, &v2, VERSIONING)).await;
    for _ in 0..3 {
        let a = ask(&gw, "/api/v1/users/1", &[]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["deprecation"], "true");
        assert_eq!(a.headers["sunset"], "Wed, 30 Jun 2027 00:00:00 GMT");
        assert_eq!(
            a.headers["link"],
            "</api/v2/users>; rel=\"successor-version\""
        );
    }
    let a = ask(&gw, "/api/v2/users/1", &[]).await;
    assert!(!a.headers.contains_key("deprecation"));
    assert!(!a.headers.contains_key("sunset"));
    assert!(!a.headers.contains_key("link"));
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(
        metric(
            &m,
            "portcullis_deprecated_requests_total{route=\"users-v1\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_deprecated_requests_total{route=\"users-v2\"}"
        ),
        0.0
    );

    // RFC 9745's date form when `since` is given.
    let text = versioned_config(&v1, &v2, VERSIONING).replace(
        "deprecation: { sunset",
        "deprecation: { since: '2023-06-30T23:59:59Z', sunset",
    );
    let gw = start_gateway(&text).await;
    let a = ask(&gw, "/api/users/1", &[]).await;
    assert_eq!(a.headers["deprecation"], "@1688169599");
}

/// A gateway splitting `/` between a healthy `stable` and a `canary` whose
/// failure rate the test controls.
fn guarded_config(
    stable: &Upstream,
    canary: &Upstream,
    weights: (u32, u32),
    guard: &str,
) -> String {
    format!(
        "listeners: [{{ name: http, bind: '127.0.0.1:0' }}]\nadmin: {{ bind: '127.0.0.1:0' }}\n\
         server: {{ access_log: false }}\n\
         upstreams:\n  - {{ name: stable, endpoints: ['{}'] }}\n  - {{ name: canary, endpoints: ['{}'] }}\n\
         routes:\n  - name: r\n    match: {{ path_prefix: / }}\n    split:\n\
         \x20     - {{ upstream: stable, weight: {} }}\n      - {{ upstream: canary, weight: {} }}\n\
         \x20   guard: {guard}\n",
        stable.addr, canary.addr, weights.0, weights.1
    )
}

/// Sends `n` requests; how many the canary answered.
async fn canary_share(gw: &RunningGateway, n: usize) -> usize {
    let mut on_canary = 0;
    for _ in 0..n {
        let a = ask(gw, "/", &[]).await;
        on_canary += usize::from(a.headers["x-portcullis-upstream"] == "canary");
    }
    on_canary
}

#[tokio::test]
async fn the_guard_drains_a_canary_that_starts_failing_and_only_then() {
    let fail_every = Arc::new(AtomicUsize::new(0));
    let stable = spawn_upstream("stable").await;
    let canary = spawn_flaky_upstream("canary", fail_every.clone()).await;
    let guard = "{ max_error_rate: 0.05, min_requests: 50, window: 30s }";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, guarded_config(&stable, &canary, (50, 50), guard)).unwrap();
    let loaded = portcullis::config::load_file(&path).unwrap();
    let gw = portcullis::Gateway::start(loaded).await.unwrap();

    // A healthy canary keeps its half, however long.
    let on_canary = canary_share(&gw, 400).await;
    assert!((140..=260).contains(&on_canary), "{on_canary}");
    let status = admin(&gw, "/status").await.json();
    assert_eq!(status["canary_guards"][0]["targets"][1]["tripped"], false);

    // It starts failing one request in five: drained within a few hundred.
    fail_every.store(5, Ordering::SeqCst);
    let mut tripped_after = None;
    for i in 0..600 {
        ask(&gw, "/", &[]).await;
        let m = admin(&gw, "/metrics").await.body;
        let series = "portcullis_canary_guard_trips_total{route=\"r\",upstream=\"canary\"}";
        if metric(&m, series) == 1.0 {
            tripped_after = Some(i);
            break;
        }
    }
    assert!(tripped_after.is_some(), "the guard never tripped");
    assert_eq!(
        canary_share(&gw, 200).await,
        0,
        "a drained canary gets nothing"
    );
    let status = admin(&gw, "/status").await.json();
    let g = &status["canary_guards"][0];
    assert_eq!(g["route"], "r");
    assert_eq!(g["targets"][1]["tripped"], true);
    assert_eq!(g["targets"][0]["tripped"], false);
    assert_eq!(g["trips"][0]["upstream"], "canary");
    assert!(g["trips"][0]["error_rate"].as_f64().unwrap() > 0.05);
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(
        metric(
            &m,
            "portcullis_canary_guard_tripped{route=\"r\",upstream=\"canary\"}"
        ),
        1.0
    );
    // This route does not allow overrides: the header changes nothing.
    let a = ask(&gw, "/", &[("x-portcullis-upstream", "canary")]).await;
    assert_eq!(a.headers["x-portcullis-upstream"], "stable");

    // A reload that leaves the split and guard alone keeps it drained.
    fail_every.store(0, Ordering::SeqCst);
    let text = guarded_config(&stable, &canary, (50, 50), guard);
    std::fs::write(
        &path,
        text.replace(
            "access_log: false",
            "access_log: false, upstream_header: true",
        ),
    )
    .unwrap();
    gw.reload().await.expect("reload");
    assert_eq!(canary_share(&gw, 100).await, 0);
    // Changing the split brings it back.
    std::fs::write(&path, guarded_config(&stable, &canary, (60, 40), guard)).unwrap();
    gw.reload().await.expect("reload");
    assert!(canary_share(&gw, 200).await > 40);
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(
        metric(
            &m,
            "portcullis_canary_guard_tripped{route=\"r\",upstream=\"canary\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn the_guard_waits_for_min_requests_and_spares_a_canary_as_good_as_stable() {
    // 20% failures, but min_requests is never reached in the window.
    let fail_every = Arc::new(AtomicUsize::new(5));
    let stable = spawn_upstream("stable").await;
    let canary = spawn_flaky_upstream("canary", fail_every.clone()).await;
    let guard = "{ max_error_rate: 0.05, min_requests: 1000, window: 30s }";
    let gw = start_gateway(&guarded_config(&stable, &canary, (50, 50), guard)).await;
    let on_canary = canary_share(&gw, 300).await;
    assert!(on_canary > 100, "{on_canary}");

    // Both sides fail alike (the backend, not the release): no trip.
    let flaky_stable = Arc::new(AtomicUsize::new(5));
    let stable = spawn_flaky_upstream("stable", flaky_stable).await;
    let guard = "{ max_error_rate: 0.05, min_requests: 50, window: 30s }";
    let gw = start_gateway(&guarded_config(&stable, &canary, (50, 50), guard)).await;
    let on_canary = canary_share(&gw, 600).await;
    assert!(on_canary > 200, "{on_canary}");
    let m = admin(&gw, "/metrics").await.body;
    assert_eq!(
        metric(
            &m,
            "portcullis_canary_guard_trips_total{route=\"r\",upstream=\"canary\"}"
        ),
        0.0
    );
}

#[test]
fn check_reports_version_and_release_problems_with_their_lines() {
    let head = "listeners: [{ name: http, bind: '127.0.0.1:8080' }]\n\
                upstreams: [{ name: a, endpoints: ['127.0.0.1:9001'] }, { name: b, endpoints: ['127.0.0.1:9002'] }]\n";
    let versioning = "versioning: { from: [path, header] }\n";
    let cases: [(&str, &str); 9] = [
        (
            "versioning: { from: [path, query] }\nroutes: [{ name: r, match: { path_prefix: / }, upstream: a }]\n",
            "3:28: unknown variant `query`, expected one of `path`, `header`, `accept`",
        ),
        (
            "versioning: { from: [accept] }\nroutes: [{ name: r, match: { path_prefix: / }, upstream: a }]\n",
            "3:21: `accept` needs `accept_vendor`",
        ),
        (
            "versioning: { default: two }\nroutes: [{ name: r, match: { path_prefix: / }, upstream: a }]\n",
            "3:24: `two` is not a version",
        ),
        (
            "routes: [{ name: r, match: { path_prefix: /, version: 2 }, upstream: a }]\n",
            "3:46: `version` needs a top-level `versioning` block",
        ),
        (
            "routes:\n  - { name: r, match: { path_prefix: / }, upstream: a, deprecation: { sunset: 2027-13-45 } }\n",
            "4:79: `2027-13-45` is not a date",
        ),
        (
            "routes:\n  - { name: r, match: { path_prefix: / }, upstream: a, deprecation: { link: '<x>' } }\n",
            "4:77: `<x>` is not a URI reference",
        ),
        (
            "routes:\n  - { name: r, match: { path_prefix: /api/, methods: [get, post] }, upstream: a }\n  - { name: s, match: { path_prefix: /api, methods: [POST, GET] }, upstream: b }\n",
            "5:16: matches exactly what routes[0] (`r`) matches",
        ),
        (
            "routes:\n  - { name: r, match: { path_prefix: / }, upstream: a, guard: { max_error_rate: 0.05 } }\n",
            "4:56: `guard` watches the canaries of a `split`",
        ),
        (
            "routes:\n  - { name: r, match: { path_prefix: / }, split: [{ upstream: a, weight: 1 }, { upstream: b, weight: 1 }], guard: { max_error_rate: 5 } }\n",
            "4:133: must be a share between 0 and 1",
        ),
    ];
    for (rest, expected) in cases {
        assert_check_reports(&format!("{head}{rest}"), &[expected]);
    }
    // The same match at another version is a different route, and fine.
    let ok = format!(
        "{head}{versioning}routes:\n  - {{ name: r, match: {{ path_prefix: /api, version: 1 }}, upstream: a }}\n  - {{ name: s, match: {{ path_prefix: /api, version: 2 }}, upstream: b }}\n"
    );
    let (code, stderr) = check_text(&ok);
    assert_eq!(code, Some(0), "{stderr}");
}
