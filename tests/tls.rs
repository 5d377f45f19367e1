//! HTTPS listeners and HTTPS upstreams, with real rustls clients and
//! servers and certificates made by the test: SNI, ALPN, versions, mTLS,
//! certificate reload, handshake failures, and curl where installed.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use portcullis::RunningGateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway with one HTTPS listener `https` (and nothing else) in front of
/// `upstream`. `tls_extra` is added to the `tls:` block, `routes` replaces
/// the default catch-all route.
fn https_config(
    certs: &[(String, String)],
    tls_extra: &str,
    upstream: SocketAddr,
    routes: Option<&str>,
) -> String {
    let mut certs_yaml = String::new();
    for (c, k) in certs {
        certs_yaml.push_str(&format!("        - {{ cert: '{c}', key: '{k}' }}\n"));
    }
    let routes =
        routes.unwrap_or("  - name: all\n    match: { path_prefix: / }\n    upstream: up\n");
    format!(
        "listeners:\n  - name: https\n    bind: '127.0.0.1:0'\n    tls:\n      certificates:\n\
         {certs_yaml}{tls_extra}\
         admin: {{ bind: '127.0.0.1:0' }}\nserver:\n  access_log: false\n\
         upstreams:\n  - name: up\n    endpoints: ['{upstream}']\n\
         routes:\n{routes}"
    )
}

fn https_addr(gw: &RunningGateway) -> SocketAddr {
    gw.addr("https").unwrap()
}

async fn metrics_text(gw: &RunningGateway) -> String {
    admin(gw, "/metrics").await.body
}

fn handshake_errors(text: &str, reason: &str) -> f64 {
    metric(
        text,
        &format!("portcullis_tls_handshake_errors_total{{listener=\"https\",reason=\"{reason}\"}}"),
    )
}

#[tokio::test]
async fn https_serves_http2_and_http1_as_alpn_chooses() {
    let up = spawn_upstream("up").await;
    let pki = Pki::new();
    let cert = pki.server("localhost", &["localhost", "127.0.0.1"]);
    let gw = start_gateway(&https_config(&[cert], "", up.addr, None)).await;
    let addr = https_addr(&gw);

    for (alpn, want_h2) in [
        (vec![&b"h2"[..], b"http/1.1"], true),
        (vec![&b"http/1.1"[..]], false),
        (vec![], false),
    ] {
        let opts = ClientOpts {
            alpn: alpn.clone(),
            ..ClientOpts::trusting(&pki.ca)
        };
        let tls = tls_connect(addr, "localhost", &opts).await.unwrap();
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let mut http = TlsHttp::new(tls).await.unwrap();
        assert_eq!(
            http.is_h2(),
            want_h2,
            "ALPN offered {alpn:?}, got {negotiated:?}"
        );
        // Two requests on one connection: keep-alive / multiplexing works.
        for _ in 0..2 {
            let a = http.get("/hello", &[]).await.unwrap();
            assert_eq!(a.status, 200);
            assert_eq!(a.body, "up /hello");
        }
        let seen = up.seen.last_headers.lock().unwrap().clone().unwrap();
        assert_eq!(seen["x-forwarded-proto"], "https");
    }
    let m = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &m,
            "portcullis_tls_handshakes_total{listener=\"https\",version=\"1.3\"}"
        ),
        3.0,
        "{m}"
    );
}

#[tokio::test]
async fn the_certificate_is_chosen_by_sni_with_wildcards_and_a_default() {
    let up = spawn_upstream("up").await;
    let pki = Pki::new();
    // Three key types: ECDSA, RSA and Ed25519.
    let a = pki.server("a", &["a.example.com"]);
    let b = pki.write_pair(
        "b",
        &pki.ca
            .server_cert(
                &["b.example.com", "*.b.example.com"],
                30,
                &rcgen::PKCS_RSA_SHA256,
            )
            .unwrap(),
    );
    let c = pki.write_pair(
        "c",
        &pki.ca
            .server_cert(&["c.example.com"], 30, &rcgen::PKCS_ED25519)
            .unwrap(),
    );
    let der = |path: &str| pem_cert_der(&std::fs::read_to_string(path).unwrap());
    let (a_der, b_der, c_der) = (der(&a.0), der(&b.0), der(&c.0));
    let gw = start_gateway(&https_config(&[a, b, c], "", up.addr, None)).await;
    let addr = https_addr(&gw);

    let any = ClientOpts {
        trust: None,
        ..ClientOpts::trusting(&pki.ca)
    };
    for (sni, want, why) in [
        ("a.example.com", &a_der, "exact SAN"),
        ("b.example.com", &b_der, "exact SAN of the second cert"),
        ("API.B.example.com", &b_der, "wildcard, case-insensitive"),
        ("c.example.com", &c_der, "Ed25519 cert by SAN"),
        (
            "x.y.b.example.com",
            &a_der,
            "a wildcard covers one label only",
        ),
        ("unknown.test", &a_der, "unknown name: the first cert"),
        ("127.0.0.1", &a_der, "no SNI (IP address): the first cert"),
    ] {
        let tls = tls_connect(addr, sni, &any).await.unwrap();
        assert!(served_cert(&tls) == *want, "{sni}: {why}");
    }
    // And with verification on, each name's certificate is valid for it.
    let verified = ClientOpts::trusting(&pki.ca);
    for name in ["a.example.com", "x.b.example.com", "c.example.com"] {
        let a = https_get(addr, name, &verified, "/", &[]).await.unwrap();
        assert_eq!(a.status, 200, "{name}");
    }
}

#[tokio::test]
async fn min_version_1_3_refuses_tls_1_2_clients_and_default_allows_them() {
    let up = spawn_upstream("up").await;
    let pki = Pki::new();
    let cert = pki.server("localhost", &["localhost"]);
    let tls12_only = ClientOpts {
        versions: vec![&rustls::version::TLS12],
        ..ClientOpts::trusting(&pki.ca)
    };

    let strict = start_gateway(&https_config(
        std::slice::from_ref(&cert),
        "      min_version: \"1.3\"\n",
        up.addr,
        None,
    ))
    .await;
    let err = tls_connect(https_addr(&strict), "localhost", &tls12_only)
        .await
        .expect_err("TLS 1.2 refused");
    assert!(
        err.to_string().contains("Alert") || err.to_string().contains("alert"),
        "{err}"
    );
    let ok = https_get(
        https_addr(&strict),
        "localhost",
        &ClientOpts::trusting(&pki.ca),
        "/",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(
        handshake_errors(&metrics_text(&strict).await, "version"),
        1.0
    );

    let default = start_gateway(&https_config(&[cert], "", up.addr, None)).await;
    let tls = tls_connect(https_addr(&default), "localhost", &tls12_only)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let a = TlsHttp::new(tls)
        .await
        .unwrap()
        .get("/", &[])
        .await
        .unwrap();
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn mtls_required_keeps_clients_without_a_valid_certificate_out() {
    let up = spawn_upstream("up").await;
    let pki = Pki::new();
    let cert = pki.server("localhost", &["localhost"]);
    let cfg = https_config(
        &[cert],
        &format!(
            "      client_ca: '{}'\n      client_auth: required\n",
            pki.path("ca.crt")
        ),
        up.addr,
        None,
    );
    let gw = start_gateway(&cfg).await;
    let addr = https_addr(&gw);

    // No certificate. (In TLS 1.3 the client may finish its side first and
    // learn of the refusal at its first request.)
    let none = https_get(addr, "localhost", &ClientOpts::trusting(&pki.ca), "/", &[]).await;
    assert!(none.is_err(), "no client cert must not be served");
    // A certificate from another CA.
    let other = DevCa::new("Other CA").unwrap();
    let stranger = ClientOpts {
        client_cert: Some(other.client_cert("mallory", 30).unwrap()),
        ..ClientOpts::trusting(&pki.ca)
    };
    assert!(https_get(addr, "localhost", &stranger, "/", &[])
        .await
        .is_err());
    assert_eq!(
        up.seen.hits.load(Ordering::SeqCst),
        0,
        "nothing reached routing"
    );

    let alice = ClientOpts {
        client_cert: Some(pki.ca.client_cert("alice", 30).unwrap()),
        ..ClientOpts::trusting(&pki.ca)
    };
    let a = https_get(
        addr,
        "localhost",
        &alice,
        "/",
        &[("x-client-cert-subject", "CN=root")],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    let seen = up.seen.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-client-cert-subject"], "CN=alice");

    let m = metrics_text(&gw).await;
    assert_eq!(handshake_errors(&m, "client_cert"), 2.0, "{m}");
}

#[tokio::test]
async fn mtls_optional_forwards_only_a_verified_subject_and_routes_can_match_it() {
    let up = spawn_upstream("up").await;
    let admin_up = spawn_upstream("admin").await;
    let pki = Pki::new();
    let cert = pki.server("localhost", &["localhost"]);
    let routes = "  - name: admin\n    match: { path_prefix: /, headers: { x-client-cert-subject: CN=admin } }\n    upstream: admin\n\
         \x20 - name: all\n    match: { path_prefix: / }\n    upstream: up\n";
    let cfg = https_config(
        &[cert],
        &format!(
            "      client_ca: '{}'\n      client_auth: optional\n",
            pki.path("ca.crt")
        ),
        up.addr,
        Some(routes),
    )
    .replace(
        "routes:\n",
        &format!(
            "  - name: admin\n    endpoints: ['{}']\nroutes:\n",
            admin_up.addr
        ),
    );
    let gw = start_gateway(&cfg).await;
    let addr = https_addr(&gw);

    // Without a certificate: served, and a forged header is dropped, so it
    // neither reaches the upstream nor selects the admin route.
    let anon = ClientOpts::trusting(&pki.ca);
    let a = https_get(
        addr,
        "localhost",
        &anon,
        "/x",
        &[("x-client-cert-subject", "CN=admin")],
    )
    .await
    .unwrap();
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "up /x"));
    let seen = up.seen.last_headers.lock().unwrap().clone().unwrap();
    assert!(seen.get("x-client-cert-subject").is_none(), "{seen:?}");

    let alice = ClientOpts {
        client_cert: Some(pki.ca.client_cert("alice", 30).unwrap()),
        ..ClientOpts::trusting(&pki.ca)
    };
    let a = https_get(addr, "localhost", &alice, "/x", &[])
        .await
        .unwrap();
    assert_eq!(a.body, "up /x");
    let seen = up.seen.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-client-cert-subject"], "CN=alice");

    let admin_client = ClientOpts {
        client_cert: Some(pki.ca.client_cert("admin", 30).unwrap()),
        ..ClientOpts::trusting(&pki.ca)
    };
    let a = https_get(addr, "localhost", &admin_client, "/x", &[])
        .await
        .unwrap();
    assert_eq!(a.body, "admin /x");
}

/// Polls new connections until the served certificate is `want` (or panics
/// after `within`).
async fn wait_for_cert(
    addr: SocketAddr,
    want: &rustls::pki_types::CertificateDer<'_>,
    within: Duration,
) {
    let any = ClientOpts {
        trust: None,
        ..ClientOpts::trusting(&DevCa::new("unused").unwrap())
    };
    let start = Instant::now();
    loop {
        let tls = tls_connect(addr, "localhost", &any).await.unwrap();
        if served_cert(&tls) == *want {
            return;
        }
        assert!(
            start.elapsed() < within,
            "certificate not reloaded within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn certificates_reload_when_files_change_and_a_broken_set_keeps_the_old_one() {
    let up = spawn_upstream("up").await;
    let pki = Pki::new();
    let first = pki
        .ca
        .server_cert(&["localhost"], 30, &rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap();
    let paths = pki.write_pair("live", &first);
    let gw = start_gateway(&https_config(
        std::slice::from_ref(&paths),
        "",
        up.addr,
        None,
    ))
    .await;
    let addr = https_addr(&gw);
    let trusting = ClientOpts::trusting(&pki.ca);

    // A connection opened before the change...
    let tls = tls_connect(addr, "localhost", &trusting).await.unwrap();
    assert!(served_cert(&tls) == pem_cert_der(&first.cert));
    let mut old_conn = TlsHttp::new(tls).await.unwrap();
    assert_eq!(old_conn.get("/a", &[]).await.unwrap().status, 200);

    // ...rename-over save of a new pair (as editors and ConfigMaps do).
    let second = pki
        .ca
        .server_cert(&["localhost"], 60, &rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap();
    let tmp = pki.write_pair("next", &second);
    std::fs::rename(&tmp.0, &paths.0).unwrap();
    std::fs::rename(&tmp.1, &paths.1).unwrap();
    wait_for_cert(addr, &pem_cert_der(&second.cert), Duration::from_secs(5)).await;
    // ...keeps working on its old session.
    assert_eq!(old_conn.get("/b", &[]).await.unwrap().status, 200);

    // A broken key: the second certificate keeps serving; the error shows.
    std::fs::write(
        &paths.1,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let start = Instant::now();
    loop {
        let status = admin(&gw, "/status").await.json();
        let reload = &status["tls_listeners"][0]["tls"]["last_reload"];
        if reload["result"] == "error" {
            let err = reload["error"].as_str().unwrap();
            assert!(err.contains("live.key"), "{err}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "reload error not reported: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tls = tls_connect(addr, "localhost", &trusting).await.unwrap();
    assert!(served_cert(&tls) == pem_cert_der(&second.cert));
    assert_eq!(
        TlsHttp::new(tls)
            .await
            .unwrap()
            .get("/c", &[])
            .await
            .unwrap()
            .status,
        200
    );

    let m = metrics_text(&gw).await;
    let reloads = |result: &str| {
        metric(
            &m,
            &format!(
                "portcullis_tls_certificate_reloads_total{{listener=\"https\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!((reloads("ok"), reloads("error")), (1.0, 1.0), "{m}");
}

#[tokio::test]
async fn bad_handshakes_are_closed_quickly_counted_and_harm_nothing_else() {
    let up = spawn_upstream("up").await;
    let pki = Pki::new();
    let cert = pki.server("localhost", &["localhost"]);
    let gw = start_gateway(&https_config(
        &[cert],
        "      handshake_timeout: 300ms\n",
        up.addr,
        None,
    ))
    .await;
    let addr = https_addr(&gw);

    // Plain HTTP on the TLS port: a clear 400, then close.
    let text = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("use an https:// URL"), "{text}");

    // A handshake that never starts, and a truncated ClientHello: closed
    // by the handshake timeout.
    for bytes in [
        &b""[..],
        &[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03][..],
    ] {
        let start = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "closed by the server");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
    // A client that sends half a hello and hangs up.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01])
        .await
        .unwrap();
    drop(s);
    // Garbage that looks like a TLS record.
    let text = raw_exchange(
        addr,
        &[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff],
        Duration::from_secs(2),
    )
    .await;
    assert!(!text.starts_with("HTTP"), "{text}");

    // Meanwhile a real client is served.
    let a = https_get(
        addr,
        "localhost",
        &ClientOpts::trusting(&pki.ca),
        "/ok",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);

    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = metrics_text(&gw).await;
    assert_eq!(handshake_errors(&m, "not_tls"), 1.0, "{m}");
    assert_eq!(handshake_errors(&m, "timeout"), 2.0, "{m}");
    assert_eq!(handshake_errors(&m, "eof"), 1.0, "{m}");
    assert_eq!(handshake_errors(&m, "protocol"), 1.0, "{m}");
}

#[tokio::test]
async fn upstreams_are_reached_over_https_with_their_ca_and_sni() {
    let pki = Pki::new();
    let backend_pair = pki
        .ca
        .server_cert(&["backend.internal"], 30, &rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap();
    let backend = spawn_tls_upstream("secure", &backend_pair).await;
    let ip_pair = pki
        .ca
        .server_cert(&["127.0.0.1"], 30, &rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap();
    let by_ip = spawn_tls_upstream("by-ip", &ip_pair).await;
    let other = DevCa::new("Other CA").unwrap();
    std::fs::write(pki.path("other-ca.crt"), &other.pem.cert).unwrap();

    let ca = pki.path("ca.crt");
    let other_ca = pki.path("other-ca.crt");
    let yaml = format!(
        "listeners:\n  - {{ name: http, bind: '127.0.0.1:0' }}\nadmin: {{ bind: '127.0.0.1:0' }}\n\
         server: {{ access_log: false }}\n\
         upstreams:\n\
         \x20 - {{ name: sni, endpoints: ['{b}'], tls: {{ sni: backend.internal, ca: '{ca}' }} }}\n\
         \x20 - {{ name: ip, endpoints: ['{i}'], tls: {{ ca: '{ca}' }} }}\n\
         \x20 - {{ name: wrong-ca, endpoints: ['{b}'], tls: {{ sni: backend.internal, ca: '{other_ca}' }} }}\n\
         \x20 - {{ name: wrong-name, endpoints: ['{b}'], tls: {{ sni: elsewhere.internal, ca: '{ca}' }} }}\n\
         routes:\n\
         \x20 - {{ name: sni, match: {{ path_prefix: /sni }}, upstream: sni }}\n\
         \x20 - {{ name: ip, match: {{ path_prefix: /ip }}, upstream: ip }}\n\
         \x20 - {{ name: wrong-ca, match: {{ path_prefix: /wrong-ca }}, upstream: wrong-ca }}\n\
         \x20 - {{ name: wrong-name, match: {{ path_prefix: /wrong-name }}, upstream: wrong-name }}\n",
        b = backend.addr,
        i = by_ip.addr,
    );
    let gw = start_gateway(&yaml).await;
    let addr = gw.addr("http").unwrap();

    let a = get(addr, "/sni/x").await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "secure /sni/x"));
    let a = get(addr, "/sni/y").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        backend.seen.connections.load(Ordering::SeqCst),
        1,
        "TLS connections are pooled"
    );
    let a = get(addr, "/ip/x").await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "by-ip /ip/x"));
    for path in ["/wrong-ca/x", "/wrong-name/x"] {
        let a = get(addr, path).await;
        assert_eq!(a.status, 502, "{path}: {}", a.body);
        assert_eq!(a.json()["error"], "bad_gateway");
    }
}

#[tokio::test]
async fn curl_speaks_http2_over_tls_to_the_gateway() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let up = spawn_upstream("up").await;
    let pki = Pki::new();
    let cert = pki.server("localhost", &["localhost", "127.0.0.1"]);
    let gw = start_gateway(&https_config(&[cert], "", up.addr, None)).await;
    let url = format!("https://localhost:{}/curl", https_addr(&gw).port());
    let ca = pki.path("ca.crt");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-s",
                "--http2",
                "--cacert",
                &ca,
                "-w",
                "\n%{http_version}",
                &url,
            ])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text, "up /curl\n2");
}

#[tokio::test]
async fn openssl_s_client_sees_the_version_floor() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("skipped: openssl is not installed");
        return;
    }
    let up = spawn_upstream("up").await;
    let pki = Pki::new();
    let cert = pki.server("localhost", &["localhost"]);
    let gw = start_gateway(&https_config(
        &[cert],
        "      min_version: \"1.3\"\n",
        up.addr,
        None,
    ))
    .await;
    let connect = format!("127.0.0.1:{}", https_addr(&gw).port());
    let ca = pki.path("ca.crt");
    let s_client = move |version: &'static str| {
        let (connect, ca) = (connect.clone(), ca.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("openssl")
                .args(["s_client", "-connect", &connect, "-servername", "localhost"])
                .args(["-CAfile", &ca, "-brief", version])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
    };
    let ok = s_client("-tls1_3").await.unwrap();
    let text =
        String::from_utf8_lossy(&ok.stderr).into_owned() + &String::from_utf8_lossy(&ok.stdout);
    assert!(text.contains("Protocol version: TLSv1.3"), "{text}");
    assert!(text.contains("Verification: OK"), "{text}");
    let refused = s_client("-tls1_2").await.unwrap();
    assert!(!refused.status.success(), "TLS 1.2 must be refused");
}
