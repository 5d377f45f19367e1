//! Taking one upstream connection out of the pool after hyper has already
//! put it back.
//!
//! An answer the gateway refuses for its framing (`Transfer-Encoding` and
//! `Content-Length` together) may be read to its end with the head, and
//! hyper then pools the connection, whose next bytes the upstream may mean
//! as the rest of that answer. hyper-util can only poison a connection
//! through a per-request capture (a channel and an extension map for every
//! request), so each connection carries a [`Poison`] instead, handed back
//! on every response as an extension (hyper-util already sets one there
//! for the connection's addresses). Poisoned, the connection reads as
//! closed, so the idle pool drops it, and refuses writes, so a request
//! that races for it fails rather than read a desynchronised answer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};

/// The handle a response carries to its connection.
#[derive(Clone, Default)]
pub struct Poison(Arc<Pill>);

#[derive(Default)]
struct Pill {
    poisoned: AtomicBool,
    /// The connection's reader, woken to see that it is closed.
    reader: AtomicWaker,
}

impl Poison {
    /// The connection is not used again.
    pub fn poison(&self) {
        self.0.poisoned.store(true, Ordering::Release);
        self.0.reader.wake();
    }

    fn is_poisoned(&self) -> bool {
        self.0.poisoned.load(Ordering::Acquire)
    }
}

/// A connector whose connections can be poisoned.
#[derive(Clone)]
pub struct Poisonable<C>(pub C);

impl<C> tower_service::Service<Uri> for Poisonable<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
{
    type Response = PoisonableIo<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Boxed once per connection, not per request.
        let connecting = self.0.call(uri);
        Box::pin(async move {
            Ok(PoisonableIo {
                inner: connecting.await?,
                poison: Poison::default(),
            })
        })
    }
}

pin_project_lite::pin_project! {
    /// An upstream connection's transport, with its [`Poison`].
    pub struct PoisonableIo<T> {
        #[pin]
        inner: T,
        poison: Poison,
    }
}

impl<T: Connection> Connection for PoisonableIo<T> {
    fn connected(&self) -> Connected {
        self.inner.connected().extra(self.poison.clone())
    }
}

impl<T: Read> Read for PoisonableIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        this.poison.0.reader.register(cx.waker());
        if this.poison.is_poisoned() {
            // End of stream: hyper closes the connection.
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

fn poisoned() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "upstream connection dropped after a badly framed response",
    )
}

impl<T: Write> Write for PoisonableIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if this.poison.is_poisoned() {
            return Poll::Ready(Err(poisoned()));
        }
        this.inner.poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if this.poison.is_poisoned() {
            return Poll::Ready(Err(poisoned()));
        }
        this.inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
