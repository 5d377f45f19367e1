//! Portcullis: a layer-7 reverse proxy and API gateway.
//!
//! [`Gateway::start`] takes a loaded config, compiles its [`Snapshot`], binds
//! the listeners and the admin port, and returns a [`RunningGateway`] with
//! the bound addresses and the drain handle. The binary (`main.rs`) is a thin
//! CLI over this; tests and benches start gateways in-process the same way.
//!
//! Where to read next: `pipeline.rs` is a request's whole path.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod auth;
pub mod body;
pub mod client_key;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod limits;
pub mod pipeline;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod sync;
pub mod target;
pub mod telemetry;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use config::{ConfigErrors, Loaded};
use server::listeners::Listeners;
use snapshot::Snapshot;
use state::State;
use telemetry::Metrics;

/// What every request and the admin port share.
pub struct Shared {
    /// All of the config, compiled; swapped whole, never in parts.
    pub snapshot: ArcSwap<Snapshot>,
    pub state: State,
    pub metrics: Arc<Metrics>,
    /// Running listeners, by bind address.
    pub listeners: Listeners,
    /// Open client connections (against `server.max_connections`).
    pub conns: server::ConnCount,
    pub reload: reload::ReloadState,
    /// The file hot reload reads (`None` when started from text).
    pub config_path: Option<PathBuf>,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Shared {
    /// `/health/ready`: listeners bound, config loaded, not shutting down.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Listeners stopped accepting; HTTP/1 responses say `Connection: close`.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("listener `{listener}`: {message}")]
    Tls { listener: String, message: String },
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How often rate-limit keys whose bucket is full again are forgotten.
const BUCKET_SWEEP_EVERY: Duration = Duration::from_secs(10);

pub struct Gateway;

impl Gateway {
    /// Compiles `loaded`, binds every listener and the admin port, and starts
    /// serving. Must be called inside a Tokio runtime. Config-file watching
    /// is separate: [`RunningGateway::watch_config`].
    pub async fn start(loaded: Loaded) -> Result<RunningGateway, StartError> {
        let metrics = Metrics::new();
        let write_behind = upstream::WriteBehind::for_this_runtime();
        let state = State::new(metrics.clone(), write_behind.clone());
        let snapshot = Snapshot::compile(&loaded, &state, 1)?;
        let config = &loaded.config;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }

        // Bind everything before serving anything: a port in use fails the
        // whole start with a clear message.
        let plan = reload::plan_listeners(&loaded, None, &metrics).await?;
        let admin_addr = config::validate::parse_bind(&config.admin.bind).map_err(|msg| {
            ConfigErrors(vec![config::ConfigError {
                file: loaded.file.clone(),
                pos: Default::default(),
                path: "admin.bind".into(),
                message: msg,
            }])
        })?;
        let admin_listener = bind(admin_addr, "the admin port".into()).await?;

        let (tracker, done_rx) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            state,
            metrics: metrics.clone(),
            listeners: Listeners::new(tracker),
            conns: server::ConnCount::default(),
            reload: reload::ReloadState::new(&metrics),
            config_path: loaded.path.clone(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        });
        reload::start_listeners(plan, &shared);
        shared.state.sync_health_checks(&shared.snapshot.load());

        let mut tasks = Vec::new();
        let admin = admin_listener.local_addr().unwrap_or(admin_addr);
        tracing::info!(%admin, "admin port listening");
        tasks.push(tokio::spawn(admin::serve(admin_listener, shared.clone())));
        if let Some(write_behind) = write_behind {
            tasks.push(tokio::spawn(write_behind.flush_forever()));
        }
        let upkeep = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                // Requests expire idle connections as they pass; this
                // closes those of endpoints no request reaches.
                for endpoint in upkeep.state.all_endpoints() {
                    endpoint.idle.sweep();
                }
            }
        }));
        tasks.push(tokio::spawn(tls::listener::watch(shared.clone())));
        tasks.push(tokio::spawn(auth::watch(shared.clone())));
        tasks.push(tokio::spawn(limits::rate::sweep_forever(
            shared.clone(),
            BUCKET_SWEEP_EVERY,
        )));
        shared
            .state
            .shedder
            .reset(shared.snapshot.load().shedding.as_ref());
        shared.ready.store(true, Ordering::Relaxed);
        Ok(RunningGateway {
            shared,
            admin,
            done_rx,
            tasks,
        })
    }
}

async fn bind(addr: SocketAddr, what: String) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// A started gateway. Dropping it stops the listeners at once; call
/// [`RunningGateway::shutdown`] for the contract's graceful drain.
pub struct RunningGateway {
    shared: Arc<Shared>,
    admin: SocketAddr,
    done_rx: mpsc::Receiver<()>,
    tasks: Vec<JoinHandle<()>>,
}

/// How a drain ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished.
    Clean,
    /// `drain_timeout` passed with connections still open.
    TimedOut,
}

impl RunningGateway {
    /// The bound address of listener `name` (useful with port 0).
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// `(name, bound address)` of the listeners running now.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.shared.listeners.addrs()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Reloads the config file now (what `SIGHUP` does).
    pub async fn reload(&self) -> Result<reload::ReloadRecord, reload::ReloadError> {
        reload::reload(&self.shared, "api").await
    }

    /// Starts watching the config file for changes (`portcullis run` does;
    /// tests that reload explicitly do not).
    pub fn watch_config(&mut self) {
        if let Some(path) = self.shared.config_path.clone() {
            self.tasks
                .push(tokio::spawn(reload::watch_file(self.shared.clone(), path)));
        }
    }

    /// The contract's Shutdown: readiness 503 at once; keep serving for
    /// `drain_delay`; stop accepting, `Connection: close` on HTTP/1 and
    /// GOAWAY on HTTP/2; wait up to `drain_timeout` for in-flight work.
    pub async fn shutdown(mut self) -> Drained {
        self.shared.ready.store(false, Ordering::Relaxed);
        // The config serving when the drain starts decides its timings.
        let server = self.shared.snapshot.load().server.clone();
        let (drain_delay, drain_timeout) = (server.drain_delay.0, server.drain_timeout.0);
        tracing::info!(
            drain_delay_ms = drain_delay.as_millis() as u64,
            "shutdown: readiness is now 503; still serving for drain_delay"
        );
        tokio::time::sleep(drain_delay).await;
        self.shared.draining.store(true, Ordering::Relaxed);
        self.shared.listeners.stop_all();
        tracing::info!(
            drain_timeout_ms = drain_timeout.as_millis() as u64,
            "shutdown: stopped accepting; waiting for in-flight requests"
        );
        match tokio::time::timeout(drain_timeout, self.done_rx.recv()).await {
            Ok(_) => {
                tracing::info!("shutdown: drained");
                Drained::Clean
            }
            Err(_) => {
                tracing::warn!("shutdown: drain_timeout passed with requests still in flight");
                Drained::TimedOut
            }
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.shared.listeners.abort_all();
        self.shared.state.stop_health_checks();
        for t in &self.tasks {
            t.abort();
        }
    }
}
