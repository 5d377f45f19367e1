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
pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod limits;
pub mod pipeline;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use config::{ConfigErrors, Loaded};
use snapshot::Snapshot;
use state::State;
use telemetry::Metrics;

/// What every request and the admin port share.
pub struct Shared {
    /// All of the config, compiled; swapped whole, never in parts.
    pub snapshot: ArcSwap<Snapshot>,
    pub state: State,
    pub metrics: Arc<Metrics>,
    /// HTTPS listeners' live TLS (for `/status`).
    pub tls_listeners: Vec<Arc<tls::listener::ListenerTls>>,
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

pub struct Gateway;

impl Gateway {
    /// Compiles `loaded`, binds every listener and the admin port, and starts
    /// serving. Must be called inside a Tokio runtime.
    pub async fn start(loaded: Loaded) -> Result<RunningGateway, StartError> {
        let metrics = Metrics::new();
        let state = State::new(metrics.clone());
        let snapshot = Snapshot::compile(&loaded, &state, 1)?;
        let config = &loaded.config;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }

        // Bind everything before serving anything: a port in use fails the
        // whole start with a clear message.
        let mut bound = Vec::new();
        for l in &config.listeners {
            let addr = config::validate::parse_bind(&l.bind).map_err(|msg| {
                ConfigErrors(vec![config::ConfigError {
                    file: loaded.file.clone(),
                    pos: Default::default(),
                    path: "listeners".into(),
                    message: msg,
                }])
            })?;
            let listener = bind(addr, format!("listener `{}`", l.name)).await?;
            let tls = match (&l.tls, loaded.tls.listeners.get(&l.name)) {
                (Some(settings), Some(material)) => Some(
                    tls::listener::ListenerTls::new(
                        &l.name,
                        settings,
                        loaded.base_dir.clone(),
                        material,
                        &metrics,
                    )
                    .map_err(|message| StartError::Tls {
                        listener: l.name.clone(),
                        message,
                    })?,
                ),
                (Some(_), None) => {
                    return Err(StartError::Tls {
                        listener: l.name.clone(),
                        message: "its certificates were not loaded".into(),
                    })
                }
                (None, _) => None,
            };
            bound.push((l.name.clone(), listener, tls));
        }
        let admin_addr = config::validate::parse_bind(&config.admin.bind).map_err(|msg| {
            ConfigErrors(vec![config::ConfigError {
                file: loaded.file.clone(),
                pos: Default::default(),
                path: "admin.bind".into(),
                message: msg,
            }])
        })?;
        let admin_listener = bind(admin_addr, "the admin port".into()).await?;

        let tls_listeners: Vec<_> = bound.iter().filter_map(|(_, _, t)| t.clone()).collect();
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            state,
            metrics: metrics.clone(),
            tls_listeners: tls_listeners.clone(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        });

        let (stop_tx, stop_rx) = watch::channel(false);
        let (tracker, done_rx) = mpsc::channel(1);
        let drain = server::Drain {
            stop: stop_rx,
            tracker: tracker.clone(),
        };
        let settings = server::ConnSettings::from_config(&config.server);
        let limit = Arc::new(Semaphore::new(config.server.max_connections));
        let mut tasks = Vec::new();
        let mut listeners = Vec::new();
        for (name, listener, tls) in bound {
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                what: format!("listener `{name}`"),
                addr: admin_addr,
                source,
            })?;
            tracing::info!(listener = %name, %addr, tls = tls.is_some(), "listening");
            listeners.push((name.clone(), addr));
            tasks.push(tokio::spawn(server::serve(
                listener,
                name,
                tls,
                shared.clone(),
                settings.clone(),
                limit.clone(),
                drain.clone(),
            )));
        }
        let admin = admin_listener.local_addr().unwrap_or(admin_addr);
        tracing::info!(%admin, "admin port listening");
        tasks.push(tokio::spawn(admin::serve(admin_listener, shared.clone())));
        tasks.push(tokio::spawn(tls::listener::watch(tls_listeners)));
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.run_upkeep();
            }
        }));
        shared.ready.store(true, Ordering::Relaxed);
        Ok(RunningGateway {
            shared,
            listeners,
            admin,
            stop_tx,
            tracker: Some(tracker),
            done_rx,
            drain_delay: config.server.drain_delay.0,
            drain_timeout: config.server.drain_timeout.0,
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
    listeners: Vec<(String, SocketAddr)>,
    admin: SocketAddr,
    stop_tx: watch::Sender<bool>,
    tracker: Option<mpsc::Sender<()>>,
    done_rx: mpsc::Receiver<()>,
    drain_delay: Duration,
    drain_timeout: Duration,
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
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The contract's Shutdown: readiness 503 at once; keep serving for
    /// `drain_delay`; stop accepting, `Connection: close` on HTTP/1 and
    /// GOAWAY on HTTP/2; wait up to `drain_timeout` for in-flight work.
    pub async fn shutdown(mut self) -> Drained {
        self.shared.ready.store(false, Ordering::Relaxed);
        tracing::info!(
            drain_delay_ms = self.drain_delay.as_millis() as u64,
            "shutdown: readiness is now 503; still serving for drain_delay"
        );
        tokio::time::sleep(self.drain_delay).await;
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = self.stop_tx.send(true);
        self.tracker = None;
        tracing::info!(
            drain_timeout_ms = self.drain_timeout.as_millis() as u64,
            "shutdown: stopped accepting; waiting for in-flight requests"
        );
        match tokio::time::timeout(self.drain_timeout, self.done_rx.recv()).await {
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
        let _ = self.stop_tx.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}
