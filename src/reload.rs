//! Hot reload: read the config file again, validate and compile all of it,
//! bind any new listener, and only then swap — or change nothing.
//!
//! Order of a reload (one at a time; SIGHUP, the file watcher and
//! `POST /reload` all come here):
//! 1. load: parse, validate, read certificate files (same code as `check`);
//! 2. compile the new [`Snapshot`] against the long-lived [`crate::state::State`],
//!    so pools and counters of upstreams that kept their name carry over;
//! 3. plan listeners: sockets are kept per bind address, new addresses are
//!    bound now (a port in use fails the reload here, before any change);
//! 4. swap: the snapshot (requests in flight keep the one they started
//!    with), each kept listener's name/TLS, new listeners start, dropped
//!    ones drain; state no snapshot names any more is forgotten.

use crate::sync::lock;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge};

use crate::config::diff::{diff, Change};
use crate::config::{self, ConfigErrors, Loaded};
use crate::server::listeners::{Bound, Listeners};
use crate::server::{ListenerMetrics, ListenerRuntime};
use crate::snapshot::Snapshot;
use crate::telemetry::{Metrics, CONFIG_GENERATION, CONFIG_RELOADS_TOTAL};
use crate::tls::files::unix_now;
use crate::tls::listener::ListenerTls;
use crate::{Shared, StartError};

/// How often the config file is looked at. A change is applied when two
/// looks in a row agree, so a save lands within about half a second and a
/// burst of saves becomes one reload.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// The last reload, for `/status` and `POST /reload`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadRecord {
    /// `ok`, `unchanged` or `error`.
    pub result: &'static str,
    /// `file`, `SIGHUP`, `admin` or `api`.
    pub trigger: &'static str,
    pub at_unix: i64,
    /// The generation serving after this reload.
    pub generation: u64,
    pub errors: Vec<String>,
    pub changes: Vec<String>,
    pub warnings: Vec<String>,
}

/// Reload bookkeeping shared by every trigger.
pub struct ReloadState {
    /// One reload at a time.
    lock: tokio::sync::Mutex<()>,
    last: Mutex<Option<ReloadRecord>>,
    ok: Counter,
    error: Counter,
    generation: Gauge,
}

impl ReloadState {
    pub fn new(metrics: &Metrics) -> ReloadState {
        let generation = metrics.gauge(CONFIG_GENERATION, &[]);
        generation.set(1.0);
        ReloadState {
            lock: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
            ok: metrics.counter(CONFIG_RELOADS_TOTAL, &[("result", "ok")]),
            error: metrics.counter(CONFIG_RELOADS_TOTAL, &[("result", "error")]),
            generation,
        }
    }

    pub fn last(&self) -> Option<ReloadRecord> {
        lock(&self.last).clone()
    }
}

/// Why a reload changed nothing.
#[derive(Debug)]
pub enum ReloadError {
    /// The new file is invalid; every error as `PATH:LINE:COL: message`.
    Config(ConfigErrors),
    /// A new listener address could not be bound, or TLS set-up failed.
    Start(String),
    /// The gateway is draining.
    Draining,
    /// The gateway was started from text, not from a file.
    NoFile,
}

impl ReloadError {
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReloadError::Config(e) => e.0.iter().map(ToString::to_string).collect(),
            ReloadError::Start(msg) => vec![msg.clone()],
            ReloadError::Draining => vec!["the gateway is shutting down".into()],
            ReloadError::NoFile => vec!["the gateway was not started from a config file".into()],
        }
    }
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

/// Reads the config file again and applies it, or changes nothing.
/// Logs, counts and records the outcome whichever trigger asked.
pub async fn reload(
    shared: &Arc<Shared>,
    trigger: &'static str,
) -> Result<ReloadRecord, ReloadError> {
    let _one_at_a_time = shared.reload.lock.lock().await;
    let outcome = apply(shared).await;
    let snap = shared.snapshot.load();
    let record = match &outcome {
        Ok((changes, warnings)) => ReloadRecord {
            result: if changes.is_none() { "unchanged" } else { "ok" },
            trigger,
            at_unix: unix_now(),
            generation: snap.generation,
            errors: Vec::new(),
            changes: changes.iter().flatten().map(ToString::to_string).collect(),
            warnings: warnings.clone(),
        },
        Err(e) => ReloadRecord {
            result: "error",
            trigger,
            at_unix: unix_now(),
            generation: snap.generation,
            errors: e.lines(),
            changes: Vec::new(),
            warnings: Vec::new(),
        },
    };
    match &outcome {
        Ok(_) => {
            shared.reload.ok.increment(1);
            shared.reload.generation.set(snap.generation as f64);
            tracing::info!(
                trigger,
                generation = snap.generation,
                hash = %&snap.hash[..12.min(snap.hash.len())],
                result = record.result,
                changes = record.changes.len(),
                "config reloaded"
            );
            for c in &record.changes {
                tracing::info!(trigger, "config change: {c}");
            }
            for w in &record.warnings {
                tracing::warn!(trigger, "{w}");
            }
        }
        Err(e) => {
            shared.reload.error.increment(1);
            tracing::error!(
                trigger,
                generation = snap.generation,
                "config reload refused; still serving the previous config:\n{e}"
            );
        }
    }
    *lock(&shared.reload.last) = Some(record.clone());
    outcome.map(|_| record)
}

/// Steps 1–4. `Ok(None)` when the file is byte-for-byte what is served.
async fn apply(shared: &Arc<Shared>) -> Result<(Option<Vec<Change>>, Vec<String>), ReloadError> {
    if shared.is_draining() || !shared.is_ready() {
        return Err(ReloadError::Draining);
    }
    let path = shared.config_path.clone().ok_or(ReloadError::NoFile)?;
    // Certificate files are read and parsed too: off the event loop.
    let loaded = tokio::task::spawn_blocking(move || config::load_file(&path))
        .await
        .map_err(|e| ReloadError::Start(format!("config loader failed: {e}")))?
        .map_err(ReloadError::Config)?;
    let old = shared.snapshot.load_full();
    if loaded.hash == old.hash {
        return Ok((None, Vec::new()));
    }
    let mut warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    let new = Snapshot::compile(&loaded, &shared.state, old.generation + 1)
        .map_err(ReloadError::Config)?;
    let plan = plan_listeners(&loaded, Some(&shared.listeners), &shared.metrics)
        .await
        .map_err(|e| ReloadError::Start(e.to_string()))?;
    if loaded.config.admin.bind != old.admin.bind {
        warnings.push(format!(
            "admin.bind changed to {}: the admin port moves at the next restart (still {})",
            loaded.config.admin.bind, old.admin.bind
        ));
    }
    if loaded.config.server.workers != old.server.workers {
        warnings.push("server.workers changed: takes effect at the next restart".into());
    }
    let changes = diff(&old.raw, &loaded.raw);

    // Point of no return: everything below only swaps.
    let new = Arc::new(new);
    if new.shedding != old.shedding {
        shared.state.shedder.reset(new.shedding.as_ref());
    }
    shared.snapshot.store(new.clone());
    start_listeners(plan, shared);
    shared.state.retain(&loaded.config);
    shared.state.sync_health_checks(&new);
    Ok((Some(changes), warnings))
}

/// A listener of the new config: the socket it will use and what its
/// accept loop will read.
pub struct Planned {
    pub bind: SocketAddr,
    socket: Socket,
    runtime: ListenerRuntime,
}

enum Socket {
    /// Bound now; starts serving when the plan is applied.
    New(Bound),
    /// Already serving on this address; gets the new runtime.
    Existing(Arc<ArcSwap<ListenerRuntime>>),
}

/// Prepares every listener of `loaded`: reuses the sockets `running` has
/// for the same addresses, binds the others, and builds TLS. Any failure
/// leaves nothing changed (sockets bound here close when dropped).
pub async fn plan_listeners(
    loaded: &Loaded,
    running: Option<&Listeners>,
    metrics: &Arc<Metrics>,
) -> Result<Vec<Planned>, StartError> {
    let mut plan = Vec::new();
    for l in &loaded.config.listeners {
        let bind = config::validate::parse_bind(&l.bind).map_err(|message| StartError::Tls {
            listener: l.name.clone(),
            message,
        })?;
        let existing = running.and_then(|r| r.runtime_for(bind));
        let previous = existing.as_ref().and_then(|rt| rt.load().tls.clone());
        let tls = match (&l.tls, loaded.tls.listeners.get(&l.name)) {
            (Some(settings), Some(material)) => Some(match previous {
                Some(p) if p.same_as(&l.name, settings, &loaded.base_dir, material) => p,
                p => ListenerTls::new(
                    &l.name,
                    settings,
                    loaded.base_dir.clone(),
                    material,
                    metrics,
                    p.as_deref(),
                )
                .map_err(|message| StartError::Tls {
                    listener: l.name.clone(),
                    message,
                })?,
            }),
            (Some(_), None) => {
                return Err(StartError::Tls {
                    listener: l.name.clone(),
                    message: "its certificates were not loaded".into(),
                })
            }
            (None, _) => None,
        };
        let socket = match existing {
            Some(rt) => Socket::Existing(rt),
            None => Socket::New(Bound {
                bind,
                listener: crate::bind(bind, format!("listener `{}`", l.name)).await?,
            }),
        };
        plan.push(Planned {
            bind,
            socket,
            runtime: ListenerRuntime {
                name: Arc::from(l.name.as_str()),
                tls,
                metrics: ListenerMetrics::new(metrics, &l.name),
            },
        });
    }
    Ok(plan)
}

/// Applies a plan: new sockets start serving, kept ones switch runtime,
/// and listeners the plan does not name stop and drain.
pub fn start_listeners(plan: Vec<Planned>, shared: &Arc<Shared>) {
    let keep: Vec<SocketAddr> = plan.iter().map(|p| p.bind).collect();
    for p in plan {
        match p.socket {
            Socket::Existing(rt) => rt.store(Arc::new(p.runtime)),
            Socket::New(bound) => {
                shared.listeners.start(bound, p.runtime, shared);
            }
        }
    }
    shared.listeners.retain(&keep);
}

/// Watches the config file: reloads when its content changed and then held
/// still for one more look. Survives editors that replace the file by
/// rename and Kubernetes `..data` symlink swaps (the path is read afresh
/// each time); a file briefly missing mid-save is not an error.
pub async fn watch_file(shared: Arc<Shared>, path: PathBuf) {
    let mut applied = shared.snapshot.load().hash.clone();
    let mut pending: Option<String> = None;
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.is_draining() {
            return;
        }
        let Ok(bytes) = tokio::fs::read(&path).await else {
            continue;
        };
        let hash = config::sha256_hex(&bytes);
        if hash == applied || hash == shared.snapshot.load().hash {
            applied = hash;
            pending = None;
            continue;
        }
        if pending.as_deref() != Some(hash.as_str()) {
            pending = Some(hash);
            continue;
        }
        // Held still: apply. A refused file is not retried until it changes.
        let _ = reload(&shared, "file").await;
        applied = hash;
        pending = None;
    }
}
