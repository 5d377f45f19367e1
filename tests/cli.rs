//! The built binary: `check` output and exit codes, start-up failures, and
//! the SIGTERM drain of a real process.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The repo's gateway.yaml names the dev certificates `portcullis demo`
/// creates; on a fresh clone they do not exist yet.
#[test]
fn check_accepts_the_repos_gateway_yaml_once_the_demo_made_its_certs() {
    let dir = tempfile::tempdir().unwrap();
    let repo_yaml = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml");
    let path = dir.path().join("gateway.yaml");
    std::fs::copy(repo_yaml, &path).unwrap();

    // Fresh clone: the missing certificate is reported with its line and a hint.
    let out = Command::new(BIN)
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read certificate")
            && stderr.contains("`portcullis demo` creates dev certificates"),
        "{stderr}"
    );

    assert!(portcullis::demo::ensure_dev_certs(&dir.path().join("certs")).unwrap());
    assert!(
        !portcullis::demo::ensure_dev_certs(&dir.path().join("certs")).unwrap(),
        "kept when present"
    );
    let out = Command::new(BIN)
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok: 2 listener(s), 3 upstream(s), 6 route(s)"),
        "{stdout}"
    );
}

#[test]
fn check_reports_tls_file_problems_with_their_lines() {
    let pki = Pki::new();
    let good = pki.server("good", &["localhost"]);
    let other = pki.server("other", &["localhost"]);
    let expired = pki.write_pair(
        "expired",
        &pki.ca.sign_with_validity(&["localhost"], -30, -1).unwrap(),
    );
    std::fs::write(pki.path("garbage.key"), "not a key\n").unwrap();
    let yaml = format!(
        "\
listeners:
  - name: missing
    bind: 127.0.0.1:8443
    tls:
      certificates:
        - cert: nope.crt
          key: {good_key}
  - name: mismatch
    bind: 127.0.0.1:8444
    tls:
      certificates:
        - cert: {good_cert}
          key: {other_key}
  - name: garbage
    bind: 127.0.0.1:8445
    tls:
      certificates:
        - cert: {good_cert}
          key: garbage.key
      client_ca: no-such-ca.crt
upstreams:
  - name: u
    endpoints: [127.0.0.1:9000]
    tls: {{ ca: missing-ca.crt }}
",
        good_cert = good.0,
        good_key = good.1,
        other_key = other.1,
    );
    let path = pki.dir.path().join("tls.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for expected in [
        format!("{file}:6:17: cannot read certificate"),
        format!(
            "{file}:13:16: the private key in `{}` does not match the certificate",
            other.1
        ),
        format!(
            "{file}:19:16: `{}` holds no PEM private key",
            pki.path("garbage.key")
        ),
        format!("{file}:20:18: cannot read CA bundle"),
        format!("{file}:24:16: cannot read CA bundle"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");

    // client_auth without client_ca is an error; an expired certificate a
    // warning that does not fail the check.
    let yaml = format!(
        "\
listeners:
  - name: https
    bind: 127.0.0.1:8443
    tls:
      certificates:
        - {{ cert: {}, key: {} }}
      client_auth: required
",
        good.0, good.1
    );
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{file}:7:7: `client_auth` needs `client_ca`")),
        "{stderr}"
    );

    let yaml = format!(
        "listeners:\n  - name: https\n    bind: 127.0.0.1:8443\n    tls:\n      certificates:\n        - {{ cert: {}, key: {} }}\n",
        expired.0, expired.1
    );
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{file}:6:19: warning: certificate expired on")),
        "{stderr}"
    );
}

#[test]
fn check_reports_every_error_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "bad.yaml",
        "\
listeners:
  - name: http
    bind: 127.0.0.1:8080
    tls_typo: true
server:
  idle_timeout: 60 seconds
  max_body_bytes: 10 megs
upstreams:
  - name: users
    endpoints: ['127.0.0.1:${PORTCULLIS_TEST_UNSET}']
  - name: users
    endpoints: [127.0.0.1:9102]
routes:
  - name: r
    match: { path_prefix: /api }
    upstream: user
  - name: s
    match: { path: /s }
    split:
      - { upstream: users, weight: 0 }
",
    );
    let out = Command::new(BIN)
        .args(["check", path.to_str().unwrap()])
        .env_remove("PORTCULLIS_TEST_UNSET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for expected in [
        format!("{file}:4:5: unknown key `tls_typo`"),
        format!("{file}:6:17: invalid duration `60 seconds`"),
        format!("{file}:7:19: invalid size `10 megs`"),
        format!("{file}:10:17: environment variable `PORTCULLIS_TEST_UNSET` is not set"),
        format!("{file}:11:11: duplicate name `users`"),
        format!("{file}:16:15: unknown upstream `user`, did you mean `users`?"),
        format!("{file}:20:7: split weights sum to 0"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_reports_yaml_syntax_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "syntax.yaml", "listeners:\n  - name: [http\n");
    let out = Command::new(BIN)
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3:1: YAML syntax", path.display())),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .args(["check", "/nonexistent/gw.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("/nonexistent/gw.yaml:1:1: cannot read config file"));
}

#[test]
fn run_fails_cleanly_when_a_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "gw.yaml",
        &format!(
            "listeners: [{{ name: http, bind: '{}' }}]\nadmin: {{ bind: '127.0.0.1:0' }}\n",
            taken.local_addr().unwrap()
        ),
    );
    let out = Command::new(BIN)
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot listen on") && stderr.contains("listener `http`"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A running binary and the addresses it logged.
struct Running {
    child: Child,
    http: SocketAddr,
    admin: SocketAddr,
    /// Stdout lines after start-up.
    logs: std::sync::mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn spawn_binary(config: &std::path::Path) -> Running {
    spawn_binary_with(config, &[])
}

fn spawn_binary_with(config: &std::path::Path, extra_args: &[&str]) -> Running {
    let mut child = Command::new(BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .args(extra_args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut http, mut admin) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.is_none() || admin.is_none() {
        assert!(
            Instant::now() < deadline,
            "gateway did not log its addresses"
        );
        let line = lines.next().expect("gateway exited early").unwrap();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        match v["message"].as_str() {
            Some("listening") => http = v["addr"].as_str().and_then(|a| a.parse().ok()),
            Some("admin port listening") => {
                admin = v["admin"].as_str().and_then(|a| a.parse().ok())
            }
            _ => {}
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    let (tx, logs) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Running {
        child,
        http: http.unwrap(),
        admin: admin.unwrap(),
        logs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits_zero() {
    let up = spawn_upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = simple_config(
        &[up.addr],
        "  drain_delay: 500ms\n  drain_timeout: 5s\n",
        "",
    );
    let path = write_config(&dir, "gw.yaml", &yaml);
    let mut gw = spawn_binary(&path);
    assert_eq!(get(gw.http, "/before").await.status, 200);

    // An HTTP/1.1 request that is still in flight when SIGTERM arrives.
    let mut slow = TcpStream::connect(gw.http).await.unwrap();
    slow.write_all(b"GET /delay/1200 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let sent_at = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Readiness turns 503 at once; traffic is still served during drain_delay.
    assert_eq!(get(gw.admin, "/health/ready").await.status, 503);
    assert_eq!(get(gw.http, "/during-delay").await.status, 200);

    // The in-flight request completes, with Connection: close.
    expect_final_response(&mut slow, Duration::from_secs(5)).await;

    // Then the process exits 0, well within drain_timeout.
    let deadline = Instant::now() + Duration::from_secs(5);
    let code = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "gateway did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0));
    assert!(
        sent_at.elapsed() >= Duration::from_millis(500),
        "exited before drain_delay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_is_one_json_line_per_request() {
    let up = spawn_upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = simple_config(&[up.addr], "", "")
        .replace("access_log: false", "access_log: true")
        .replace("path_prefix: /", "path_prefix: /logged");
    let path = write_config(&dir, "gw.yaml", &yaml);
    let gw = spawn_binary(&path);
    let a = get(gw.http, "/logged?q=1").await;
    assert_eq!(a.status, 200);
    let id = a.headers["x-request-id"].to_str().unwrap().to_string();
    let next_access_line = || loop {
        let line = gw
            .logs
            .recv_timeout(Duration::from_secs(5))
            .expect("an access log line");
        if line.contains("\"target\":\"access\"") {
            break serde_json::from_str::<serde_json::Value>(&line).unwrap();
        }
    };
    let v = next_access_line();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/logged");
    assert_eq!(v["route"], "all");
    assert_eq!(v["upstream"], "up");
    assert_eq!(v["endpoint"], up.addr.to_string());
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes_out"], "a /logged".len());
    assert_eq!(v["request_id"], id);
    assert_eq!(v["completed"], true);
    assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);

    assert_eq!(v["error"], "");

    // A refusal carries its error code.
    assert_eq!(get(gw.http, "/elsewhere").await.status, 404);
    let v = next_access_line();
    assert_eq!(v["status"], 404);
    assert_eq!(v["route"], "");
    assert_eq!(v["error"], "no_route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_no_watch_leaves_the_file_alone_until_then() {
    let up = spawn_upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = simple_config(&[up.addr], "", "").replace("path_prefix: /", "path_prefix: /old");
    let path = write_config(&dir, "gw.yaml", &yaml);
    let gw = spawn_binary_with(&path, &["--no-watch"]);
    assert_eq!(get(gw.http, "/new").await.status, 404);

    write_config(&dir, "gw.yaml", &yaml.replace("/old", "/new"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        get(gw.http, "/new").await.status,
        404,
        "--no-watch: not applied by itself"
    );

    let status = Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(3);
    while get(gw.http, "/new").await.status != 200 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = get(gw.admin, "/status").await.json()["last_reload"].clone();
    assert_eq!(
        (last["result"].as_str(), last["trigger"].as_str()),
        (Some("ok"), Some("SIGHUP"))
    );
    assert!(gw.child.id() > 0, "still running");
}

#[test]
fn check_diff_prints_what_a_reload_would_change() {
    let dir = tempfile::tempdir().unwrap();
    let old = write_config(
        &dir,
        "old.yaml",
        "listeners: [{ name: http, bind: '127.0.0.1:8080' }]\n\
         upstreams:\n  - { name: a, endpoints: ['127.0.0.1:9001'] }\n  - { name: gone, endpoints: ['127.0.0.1:9002'] }\n\
         routes:\n  - { name: r, match: { path_prefix: /a }, upstream: a }\n",
    );
    let new = write_config(
        &dir,
        "new.yaml",
        "listeners: [{ name: http, bind: '127.0.0.1:8080' }]\n\
         upstreams:\n  - { name: a, endpoints: ['127.0.0.1:9001', '127.0.0.1:9003'] }\n\
         routes:\n  - { name: r, match: { path_prefix: /a }, upstream: a, timeout: 2s }\n\
         \x20 - { name: s, match: { path: /s }, upstream: a }\n",
    );
    let out = Command::new(BIN)
        .args([
            "check",
            "--diff",
            old.to_str().unwrap(),
            new.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "~ route `r`: timeout: (unset) → 2s",
        "+ route `s`",
        "- upstream `gone`",
        "~ upstream `a`: endpoints: [\"127.0.0.1:9001\"] → [\"127.0.0.1:9001\",\"127.0.0.1:9003\"]",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing `{line}` in:\n{stdout}"
        );
    }
    assert!(stdout.contains("new.yaml: ok:"), "{stdout}");

    // An invalid NEW fails as `check` always does; no diff is printed.
    let bad = write_config(&dir, "bad.yaml", "listeners: []\n");
    let out = Command::new(BIN)
        .args([
            "check",
            "--diff",
            old.to_str().unwrap(),
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
}

#[test]
fn check_reports_jwt_problems_with_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.json"), "{\"keys\": 7}").unwrap();
    let path = write_config(
        &dir,
        "jwt.yaml",
        "\
listeners: [{ name: http, bind: '127.0.0.1:8080' }]
jwt:
  - name: main
    algorithms: [RS256, none, HS256, XS999]
    jwks_file: missing.json
  - name: junk
    algorithms: [ES256]
    jwks_file: junk.json
  - name: hmac
    algorithms: [ES256]
    secret: short
upstreams: [{ name: u, endpoints: ['127.0.0.1:9000'] }]
routes:
  - { name: r, match: { path_prefix: / }, upstream: u, auth: { jwt: mian } }
",
    );
    let run = || {
        Command::new(BIN)
            .args(["check", path.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for expected in [
        format!("{file}:4:25: `none` is never accepted"),
        format!("{file}:4:31: HS256 needs `secret`"),
        format!("{file}:4:38: unknown algorithm `XS999`"),
        format!("{file}:11:5: `secret` is only used by HS256/384/512"),
        format!("{file}:10:18: ES256 needs public keys: set `jwks_file`"),
        format!("{file}:11:13: an HMAC secret must be at least 32 bytes"),
        format!("{file}:14:69: unknown JWT provider `mian`, did you mean `main`?"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    // Files are read once the rest is valid: fix the rest, see the files.
    let fixed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[RS256, none, HS256, XS999]", "[RS256]")
        .replace(
            "algorithms: [ES256]\n    secret: short",
            "algorithms: [HS256]\n    secret: '0123456789abcdef0123456789abcdef'",
        )
        .replace("jwt: mian", "jwt: main");
    std::fs::write(&path, fixed).unwrap();
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{file}:5:16: cannot read JWKS")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:8:16: `"))
            && stderr.contains("not a JWKS: no `keys` array"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn portcullis_token_mints_what_the_demo_provider_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    portcullis::demo::ensure_dev_certs(&certs).unwrap();
    let key = certs.join("jwt-dev.key");
    let out = Command::new(BIN)
        .args([
            "token",
            "--sub",
            "alice",
            "--scope",
            "users:read",
            "--ttl",
            "10m",
        ])
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");

    let up = spawn_upstream("up").await;
    let yaml = format!(
        "listeners: [{{ name: http, bind: '127.0.0.1:0' }}]\nadmin: {{ bind: '127.0.0.1:0' }}\n\
         server: {{ access_log: false }}\n\
         jwt: [{{ name: demo, issuer: portcullis-demo, audiences: [demo], algorithms: [ES256], jwks_file: '{}', forward_claims: {{ sub: x-user-id }} }}]\n\
         upstreams: [{{ name: up, endpoints: ['{}'] }}]\n\
         routes: [{{ name: me, match: {{ path_prefix: / }}, upstream: up, auth: {{ jwt: demo, scopes: ['users:read'] }} }}]\n",
        certs.join("jwks.json").display(),
        up.addr
    );
    let gw = start_gateway(&yaml).await;
    let req = http::Request::get(format!("http://{}/me", gw.addr("http").unwrap()))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    let a = send(&http1_client(), req).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen = up.seen.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-user-id"], "alice");

    // Bad input: a clear message, exit 1.
    let out = Command::new(BIN)
        .args(["token", "--ttl", "soon"])
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ttl must be a duration"));
    let out = Command::new(BIN)
        .args(["token", "--key", "/nonexistent.key"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`portcullis demo` creates the dev key"));
}

#[test]
fn check_reports_resilience_problems_with_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "resilience.yaml",
        "\
listeners: [{ name: http, bind: '127.0.0.1:8080' }]
upstreams:
  - name: users
    endpoints: [127.0.0.1:9101]
    balance: hash:session:x
    health_check:
      path: health
      unhealthy_threshold: 0
      expected_statuses: [200-199]
    circuit_breaker:
      failure_ratio: 1.5
      half_open_requests: 0
    retry:
      attempts: 50
      on: [connect_error, 200]
      backoff: 1s
      max_backoff: 100ms
    outlier_detection: { max_ejected_percent: 0 }
  - name: other
    endpoints: [127.0.0.1:9102]
    health_check: { path: /h, interval: 1s, timeout: 2s, healthy_threshold: 0 }
    circuit_breaker: { consecutive_failures: 0, failure_ratio: 0, window: 10ms }
routes:
  - { name: r, match: { path_prefix: / }, upstream: users }
",
    );
    let out = Command::new(BIN)
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for expected in [
        format!("{file}:5:14: unknown key `session:x`: expected `ip`, `header:<name>`"),
        format!("{file}:7:13: `health` must start with `/`"),
        format!("{file}:8:28: must be at least 1"),
        format!("{file}:9:27: range `200-199` is empty"),
        format!("{file}:11:22: 1.5 is outside (0, 1]"),
        format!("{file}:12:27: must be at least 1"),
        format!("{file}:14:17: 50 is too many: at most 10 extra tries"),
        format!("{file}:15:27: status 200 is not an error status"),
        format!("{file}:16:16: 1s is longer than `max_backoff` (100ms)"),
        format!("{file}:18:47: must be between 1 and 100"),
        format!("{file}:21:54: must not be longer than `interval`"),
        format!("{file}:21:77: must be at least 1"),
        format!("{file}:22:46: must be at least 1"),
        format!("{file}:22:64: 0 is outside (0, 1]"),
        format!("{file}:22:75: must be at least 100ms"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}
