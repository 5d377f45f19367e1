//! Canary splits (issue 6, first part): weighted distribution, sticky splits
//! by client key (a growing canary only takes keys), the testers' override
//! header, and `x-portcullis-upstream` on responses.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use common::*;
use http::Request;
use portcullis::{config, Gateway, RunningGateway};

fn config_text(
    stable: SocketAddr,
    canary: SocketAddr,
    weights: (u32, u32),
    route_extra: &str,
    server_extra: &str,
) -> String {
    format!(
        "listeners: [{{ name: http, bind: '127.0.0.1:0' }}]\nadmin: {{ bind: '127.0.0.1:0' }}\n\
         server: {{ access_log: false{server_extra} }}\n\
         upstreams:\n  - {{ name: stable, endpoints: ['{stable}'] }}\n  - {{ name: canary, endpoints: ['{canary}'] }}\n\
         routes:\n  - name: r\n    match: {{ path_prefix: / }}\n    split:\n\
         \x20     - {{ upstream: stable, weight: {} }}\n      - {{ upstream: canary, weight: {} }}\n{route_extra}",
        weights.0, weights.1
    )
}

async fn start_from(path: &Path) -> RunningGateway {
    let loaded = config::load_file(path).unwrap_or_else(|e| panic!("invalid test config:\n{e}"));
    Gateway::start(loaded).await.expect("gateway starts")
}

/// Which side answered, by its body (`stable /` or `canary /`) and header.
async fn side(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        BoxBody,
    >,
    gw: &RunningGateway,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::get(format!("http://{}/", gw.addr("http").unwrap()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(client, req.body(empty()).unwrap()).await
}

fn name(a: &Answer) -> &str {
    a.body.split(' ').next().unwrap_or("")
}

#[tokio::test]
async fn a_95_5_split_over_10000_requests_stays_within_the_binomial_bound() {
    let (stable, canary) = (
        spawn_upstream("stable").await,
        spawn_upstream("canary").await,
    );
    let gw = start_gateway(&config_text(stable.addr, canary.addr, (95, 5), "", "")).await;
    let client = http1_client();
    let mut on_canary = 0;
    for _ in 0..10_000 {
        let a = side(&client, &gw, &[]).await;
        assert_eq!(
            a.headers["x-portcullis-upstream"],
            name(&a),
            "the header names the side"
        );
        on_canary += usize::from(name(&a) == "canary");
    }
    // 500 expected, σ ≈ 21.8: ±4σ.
    assert!((413..=587).contains(&on_canary), "{on_canary}");
}

#[tokio::test]
async fn sticky_keys_stay_on_their_side_and_a_growing_canary_only_takes_keys() {
    let (stable, canary) = (
        spawn_upstream("stable").await,
        spawn_upstream("canary").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let sticky = "    sticky: header:x-user\n";
    std::fs::write(
        &path,
        config_text(stable.addr, canary.addr, (80, 20), sticky, ""),
    )
    .unwrap();
    let gw = start_from(&path).await;
    let client = http1_client();
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let mut before = HashMap::new();
    for u in &users {
        let first = name(&side(&client, &gw, &[("x-user", u)]).await).to_string();
        for _ in 0..2 {
            assert_eq!(
                name(&side(&client, &gw, &[("x-user", u)]).await),
                first,
                "{u}"
            );
        }
        before.insert(u.clone(), first);
    }
    let on_canary = before.values().filter(|s| *s == "canary").count();
    // 200 expected, σ ≈ 12.6.
    assert!((150..=250).contains(&on_canary), "{on_canary}");

    // The canary grows from 20 to 40: stable users move over, none come back.
    std::fs::write(
        &path,
        config_text(stable.addr, canary.addr, (60, 40), sticky, ""),
    )
    .unwrap();
    gw.reload().await.expect("reload");
    let mut moved = 0;
    for u in &users {
        let now = name(&side(&client, &gw, &[("x-user", u)]).await).to_string();
        if now != before[u] {
            assert_eq!(
                (before[u].as_str(), now.as_str()),
                ("stable", "canary"),
                "{u}"
            );
            moved += 1;
        }
    }
    assert!((150..=250).contains(&moved), "{moved}");

    // A cookie works as a key too; requests without it are split by weight.
    std::fs::write(
        &path,
        config_text(
            stable.addr,
            canary.addr,
            (50, 50),
            "    sticky: cookie:session\n",
            "",
        ),
    )
    .unwrap();
    gw.reload().await.expect("reload");
    let cookie = [("cookie", "theme=dark; session=abc123")];
    let first = name(&side(&client, &gw, &cookie).await).to_string();
    for _ in 0..20 {
        assert_eq!(name(&side(&client, &gw, &cookie).await), first);
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        seen.insert(name(&side(&client, &gw, &[]).await).to_string());
    }
    assert_eq!(seen.len(), 2, "no key: weighted random");
}

#[tokio::test]
async fn testers_pin_a_side_only_where_the_route_allows_it() {
    let (stable, canary) = (
        spawn_upstream("stable").await,
        spawn_upstream("canary").await,
    );
    let client = http1_client();
    // The canary is drained (weight 0) but reachable by the override.
    let allowed = start_gateway(&config_text(
        stable.addr,
        canary.addr,
        (1, 0),
        "    allow_override: true\n",
        "",
    ))
    .await;
    let pin = [("x-portcullis-upstream", "canary")];
    for _ in 0..5 {
        assert_eq!(name(&side(&client, &allowed, &pin).await), "canary");
        assert_eq!(
            name(&side(&client, &allowed, &[]).await),
            "stable",
            "weight 0 drains"
        );
    }
    let r = side(&client, &allowed, &[("x-portcullis-upstream", "users")]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_request");

    // Without allow_override the header is ignored; outsiders cannot reach the canary.
    let denied = start_gateway(&config_text(stable.addr, canary.addr, (1, 0), "", "")).await;
    for _ in 0..5 {
        assert_eq!(name(&side(&client, &denied, &pin).await), "stable");
    }

    // server.upstream_header: false keeps upstream names private.
    let quiet = start_gateway(&config_text(
        stable.addr,
        canary.addr,
        (1, 0),
        "",
        ", upstream_header: false",
    ))
    .await;
    let a = side(&client, &quiet, &[]).await;
    assert_eq!(name(&a), "stable");
    assert!(!a.headers.contains_key("x-portcullis-upstream"));
}

#[test]
fn check_reports_split_problems_with_their_lines() {
    let head = "listeners: [{ name: http, bind: '127.0.0.1:8080' }]\n\
                upstreams: [{ name: a, endpoints: ['127.0.0.1:9001'] }, { name: b, endpoints: ['127.0.0.1:9002'] }]\n\
                routes:\n";
    let cases = [
        (
            "  - { name: r, match: { path_prefix: / }, split: [{ upstream: a, weight: 1 }, { upstream: a, weight: 2 }] }\n",
            "4:91: upstream `a` is already in this split (split[0])",
        ),
        (
            "  - { name: r, match: { path_prefix: / }, split: [{ upstream: a, weight: 1 }], sticky: 'session:x' }\n",
            "4:88: unknown key `session:x`",
        ),
        (
            "  - { name: r, match: { path_prefix: / }, split: [{ upstream: a, weight: 1 }], sticky: route }\n",
            "4:88: `sticky: route` would send everyone to one side",
        ),
        (
            "  - { name: r, match: { path_prefix: / }, upstream: a, sticky: ip }\n",
            "4:56: `sticky` chooses among a `split`'s upstreams",
        ),
        (
            "  - { name: r, match: { path_prefix: / }, split: [{ upstream: a, weight: 1 }], allow_override: true, override_header: 'bad header' }\n",
            "4:119: `bad header` is not a valid header name",
        ),
        (
            "  - { name: r, match: { path_prefix: / }, split: [{ upstream: a, weight: 0 }, { upstream: b, weight: 0 }] }\n",
            "4:50: split weights sum to 0",
        ),
    ];
    for (route, expected) in cases {
        assert_check_reports(&format!("{head}{route}"), &[expected]);
    }
}
