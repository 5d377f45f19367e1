//! The set of running listeners, keyed by bind address: a reload keeps the
//! socket of every address it still names (swapping the listener's name and
//! TLS for new connections), binds the new ones before changing anything,
//! and drains the ones it dropped.

use crate::sync::lock;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{serve, Drain, ListenerRuntime};
use crate::tls::listener::ListenerTls;
use crate::Shared;

/// One running listener.
struct Entry {
    /// The address as configured (`127.0.0.1:0` stays `:0`).
    bind: SocketAddr,
    /// The address bound.
    addr: SocketAddr,
    runtime: Arc<ArcSwap<ListenerRuntime>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A socket bound for a listener that is not serving yet.
pub struct Bound {
    pub bind: SocketAddr,
    pub listener: TcpListener,
}

pub struct Listeners {
    entries: Mutex<Vec<Entry>>,
    /// Handed to every connection; dropped when the process drains, so the
    /// drain knows when the last connection is gone.
    tracker: Mutex<Option<mpsc::Sender<()>>>,
}

impl Listeners {
    pub fn new(tracker: mpsc::Sender<()>) -> Listeners {
        Listeners {
            entries: Mutex::default(),
            tracker: Mutex::new(Some(tracker)),
        }
    }

    /// The runtime of the listener bound to `bind`, if one is running.
    pub fn runtime_for(&self, bind: SocketAddr) -> Option<Arc<ArcSwap<ListenerRuntime>>> {
        lock(&self.entries)
            .iter()
            .find(|e| e.bind == bind)
            .map(|e| e.runtime.clone())
    }

    /// Starts serving `bound`. Returns false (and serves nothing) once the
    /// process drain has begun.
    pub fn start(&self, bound: Bound, runtime: ListenerRuntime, shared: &Arc<Shared>) -> bool {
        let Some(tracker) = lock(&self.tracker).clone() else {
            return false;
        };
        let addr = bound.listener.local_addr().unwrap_or(bound.bind);
        tracing::info!(listener = %runtime.name, %addr, tls = runtime.tls.is_some(), "listening");
        let runtime = Arc::new(ArcSwap::from_pointee(runtime));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(
            bound.listener,
            runtime.clone(),
            shared.clone(),
            Drain {
                stop: stop_rx,
                tracker,
            },
        ));
        lock(&self.entries).push(Entry {
            bind: bound.bind,
            addr,
            runtime,
            stop,
            task,
        });
        true
    }

    /// Stops every listener whose bind address is not in `keep`: it stops
    /// accepting and its connections finish their requests and close.
    pub fn retain(&self, keep: &[SocketAddr]) {
        lock(&self.entries).retain(|e| {
            let kept = keep.contains(&e.bind);
            if !kept {
                tracing::info!(listener = %e.runtime.load().name, addr = %e.addr, "listener removed; draining its connections");
                let _ = e.stop.send(true);
            }
            kept
        });
    }

    /// The process drain: every listener stops accepting and every
    /// connection shuts down gracefully.
    pub fn stop_all(&self) {
        lock(&self.tracker).take();
        for e in lock(&self.entries).iter() {
            let _ = e.stop.send(true);
        }
    }

    /// Stops everything at once (the gateway was dropped).
    pub fn abort_all(&self) {
        lock(&self.tracker).take();
        for e in lock(&self.entries).drain(..) {
            let _ = e.stop.send(true);
            e.task.abort();
        }
    }

    /// `(name, bound address)` of every listener, in start order.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        lock(&self.entries)
            .iter()
            .map(|e| (e.runtime.load().name.to_string(), e.addr))
            .collect()
    }

    /// The TLS state of every HTTPS listener.
    pub fn tls(&self) -> Vec<Arc<ListenerTls>> {
        lock(&self.entries)
            .iter()
            .filter_map(|e| e.runtime.load().tls.clone())
            .collect()
    }
}
