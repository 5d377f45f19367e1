//! Write-behind for request heads on plain upstream connections. The heads
//! queued while the scheduler runs the tasks that are ready go out together
//! after them, written back to back by one task.
//!
//! Why: written as each task reaches them, a batch's requests reached the
//! upstream one every ~8 µs. That is about as fast as a small upstream can
//! answer them, so it ran dry, slept, and was woken again over and over.
//! Each wake-up of a task on another CPU costs the writer too:
//! `_raw_spin_unlock_irqrestore` was 1.88 µs per request behind Portcullis
//! and 1.18 behind HAProxy, whose event loop sends in phases. The cost is a
//! copy of the head and one more task poll per batch, not per request.
//! docs/benchmarks.md has the measurements.
//!
//! Only on the current-thread runtime (`server.workers: 1`), where "after
//! the ready tasks" is the run queue's order. Other runtimes write directly.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::tcp::OwnedWriteHalf;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Notify;

/// Heads up to this size are queued. An idle keep-alive connection's send
/// buffer is empty, and a default one takes 16 KiB at once, so such a head
/// is written whole by one call.
pub const MAX_QUEUED_HEAD: usize = 4096;

enum State {
    /// Not yet looked at on this thread, or its runtime has gone.
    Unknown,
    /// Not a current-thread runtime: heads are written directly.
    Off,
    On(Batch),
}

struct Batch {
    /// The queued heads, back to back.
    bytes: Vec<u8>,
    /// Each head's connection and the end of its bytes.
    writes: Vec<(Arc<OwnedWriteHalf>, usize)>,
    flusher: Arc<Notify>,
    /// Cleared when the flusher task is dropped with its runtime.
    alive: Arc<AtomicBool>,
}

thread_local! {
    static STATE: RefCell<State> = const { RefCell::new(State::Unknown) };
}

/// Queues `head` for `socket`. `false`: not queued (a large head, or not a
/// current-thread runtime): the caller writes it. A queued head that fails
/// to go out leaves the connection to fail its read, as a lost connection
/// does.
pub fn queue(socket: &Arc<OwnedWriteHalf>, head: &[u8]) -> bool {
    if head.len() > MAX_QUEUED_HEAD {
        return false;
    }
    let wake = STATE.with(|state| {
        let mut state = state.borrow_mut();
        if let State::On(batch) = &*state {
            if !batch.alive.load(Ordering::Relaxed) {
                *state = State::Unknown;
            }
        }
        if let State::Unknown = *state {
            *state = start();
        }
        let State::On(batch) = &mut *state else {
            return None;
        };
        let first = batch.writes.is_empty();
        batch.bytes.extend_from_slice(head);
        batch.writes.push((socket.clone(), batch.bytes.len()));
        Some(first.then(|| batch.flusher.clone()))
    });
    match wake {
        None => false,
        Some(flusher) => {
            if let Some(flusher) = flusher {
                flusher.notify_one();
            }
            true
        }
    }
}

/// This thread's state: a flusher task on a current-thread runtime, off
/// otherwise.
fn start() -> State {
    let Ok(handle) = Handle::try_current() else {
        return State::Off;
    };
    if handle.runtime_flavor() != RuntimeFlavor::CurrentThread {
        return State::Off;
    }
    let flusher = Arc::new(Notify::new());
    let alive = Arc::new(AtomicBool::new(true));
    handle.spawn(flush_forever(flusher.clone(), AliveGuard(alive.clone())));
    State::On(Batch {
        bytes: Vec::with_capacity(16 * 1024),
        writes: Vec::with_capacity(64),
        flusher,
        alive,
    })
}

/// Clears `alive` when the flusher task is dropped (its runtime shut down),
/// so the next head on this thread starts a new one.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Writes what was queued each time it is woken: once per batch, after the
/// tasks that were ready when the first head was queued.
async fn flush_forever(flusher: Arc<Notify>, _alive: AliveGuard) {
    let mut bytes = Vec::with_capacity(16 * 1024);
    let mut writes = Vec::with_capacity(64);
    loop {
        flusher.notified().await;
        STATE.with(|state| {
            if let State::On(batch) = &mut *state.borrow_mut() {
                std::mem::swap(&mut batch.bytes, &mut bytes);
                std::mem::swap(&mut batch.writes, &mut writes);
            }
        });
        let mut start = 0;
        for (socket, end) in writes.drain(..) {
            write(socket, &bytes[start..end]);
            start = end;
        }
        bytes.clear();
    }
}

/// Writes `head` now, or hands what is left to a task that waits until the
/// socket takes it.
fn write(socket: Arc<OwnedWriteHalf>, head: &[u8]) {
    let written = match socket.try_write(head) {
        Ok(n) if n == head.len() => return,
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        // Reset or closed: the connection's reader sees it too.
        Err(_) => return,
    };
    let rest = head[written..].to_vec();
    tokio::spawn(async move {
        let mut rest = &rest[..];
        while !rest.is_empty() {
            if socket.writable().await.is_err() {
                return;
            }
            match socket.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    });
}
