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
//! Each gateway has its own writer, flushed by a task on its runtime.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Notify;

use crate::sync::lock;

/// Heads up to this size are queued. An idle keep-alive connection's send
/// buffer is empty, and a default one takes 16 KiB at once, so such a head
/// is written whole by one call.
pub const MAX_QUEUED_HEAD: usize = 4096;

/// A gateway's queue of request heads and the signal to its flusher.
pub struct WriteBehind {
    batch: Mutex<Batch>,
    flusher: Notify,
}

struct Batch {
    /// The queued heads, back to back.
    bytes: Vec<u8>,
    /// Each head's connection and the end of its bytes.
    writes: Vec<(Arc<OwnedWriteHalf>, usize)>,
}

impl Batch {
    fn with_capacity() -> Batch {
        Batch {
            bytes: Vec::with_capacity(16 * 1024),
            writes: Vec::with_capacity(64),
        }
    }
}

impl WriteBehind {
    /// A writer when the gateway runs on a current-thread runtime; `None`
    /// on others, where heads are written directly. Its [`flush_forever`]
    /// must be spawned with the gateway's tasks.
    pub fn for_this_runtime() -> Option<Arc<WriteBehind>> {
        let flavor = Handle::try_current().ok()?.runtime_flavor();
        (flavor == RuntimeFlavor::CurrentThread).then(|| {
            Arc::new(WriteBehind {
                batch: Mutex::new(Batch::with_capacity()),
                flusher: Notify::new(),
            })
        })
    }

    /// Queues `head` for `socket`. `false`: too large to queue, the caller
    /// writes it. A queued head that fails to go out leaves the connection
    /// to fail its read, as a lost connection does.
    pub fn queue(&self, socket: &SharedWrite, head: &[u8]) -> bool {
        if head.len() > MAX_QUEUED_HEAD {
            return false;
        }
        let first = {
            let mut batch = lock(&self.batch);
            let first = batch.writes.is_empty();
            batch.bytes.extend_from_slice(head);
            let end = batch.bytes.len();
            batch.writes.push((socket.0.clone(), end));
            first
        };
        if first {
            self.flusher.notify_one();
        }
        true
    }

    /// Writes what was queued each time it is woken: once per batch, after
    /// the tasks that were ready when the batch's first head was queued.
    pub async fn flush_forever(self: Arc<Self>) {
        let mut taken = Batch::with_capacity();
        loop {
            self.flusher.notified().await;
            std::mem::swap(&mut *lock(&self.batch), &mut taken);
            let mut start = 0;
            for (socket, end) in taken.writes.drain(..) {
                write(socket, &taken.bytes[start..end]);
                start = end;
            }
            taken.bytes.clear();
        }
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
        // An error: as above.
        let _ = SharedWrite(socket).write_all(&rest).await;
    });
}

/// A plain connection's write half, shared between the connection and the
/// flusher, and written through the stream underneath.
pub struct SharedWrite(pub Arc<OwnedWriteHalf>);

impl AsyncWrite for SharedWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream: &TcpStream = (*self.0).as_ref();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                written => return Poll::Ready(written),
            }
        }
    }

    /// TCP has nothing buffered to flush.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Arc::get_mut(&mut self.get_mut().0) {
            Some(write) => Pin::new(write).poll_shutdown(cx),
            // A queued head is still to be written: the half shuts down
            // when the last owner drops it.
            None => Poll::Ready(Ok(())),
        }
    }
}
