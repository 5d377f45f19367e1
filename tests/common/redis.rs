//! A real `redis-server` for the shared rate-limit tests: one per test, on
//! a free port on 127.0.0.1, without persistence; killed and restarted on
//! the same port on demand.
//!
//! Without `redis-server` on PATH, [`RedisServer::start`] prints why and
//! returns `None` (the test passes without running), unless
//! `PORTCULLIS_REQUIRE_REDIS=1`, which CI sets so these tests cannot skip
//! silently: then it panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

const SKIPPED: &str =
    "skipped: redis-server is not installed (apt-get install redis-server; .ci/run installs it)";

/// A running `redis-server`; killed when dropped.
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    password: Option<String>,
    /// Its working directory and log file (`redis.log`).
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// A server on a free port, with `requirepass` when `password` is set.
    pub async fn start(password: Option<&str>) -> Option<RedisServer> {
        // Bound, then released: the server takes it over (a race with
        // another process is possible but rare, and fails loudly below).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on 127.0.0.1")
            .port();
        RedisServer::start_on(port, password).await
    }

    /// A server on `port` (e.g. one a gateway already points at).
    pub async fn start_on(port: u16, password: Option<&str>) -> Option<RedisServer> {
        let Some(bin) = find_on_path("redis-server") else {
            if std::env::var("PORTCULLIS_REQUIRE_REDIS").as_deref() == Ok("1") {
                panic!("PORTCULLIS_REQUIRE_REDIS=1 but redis-server is not on PATH");
            }
            eprintln!("{SKIPPED}");
            return None;
        };
        let mut server = RedisServer {
            bin,
            port,
            password: password.map(str::to_string),
            dir: tempfile::tempdir().expect("a temp dir for redis-server"),
            child: None,
        };
        server.spawn().await;
        Some(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://[:PASSWORD@]127.0.0.1:PORT/0`, with the server's password.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => self.url_with_password(p),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// The server's URL with `password` (right or wrong) in it.
    pub fn url_with_password(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}/0", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid Redis URL")
    }

    /// A connection for the test's own commands (SCAN, PTTL, CONFIG...).
    pub async fn conn(&self) -> MultiplexedConnection {
        self.try_conn()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to redis-server on {}: {e}", self.port))
    }

    /// Kills the server (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts a new one on the same port
    /// (empty: nothing is persisted).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn try_conn(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        self.client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Starts the process and waits (up to 10 s) until it answers PING.
    async fn spawn(&mut self) {
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "redis-server on port {} exited ({status}) at start:\n{}",
                    self.port,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let last_error = match self.try_conn().await {
                Ok(mut conn) => match redis::cmd("PING").query_async::<String>(&mut conn).await {
                    Ok(_) => return,
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} does not answer PING after 10 s ({last_error}):\n{}",
                self.port,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
