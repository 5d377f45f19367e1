//! A client socket that tells its [`ConnState`] when bytes arrive, so the
//! connection watchdog can time a request head from its first byte.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ConnState;

pin_project_lite::pin_project! {
    pub struct WatchedIo<S> {
        #[pin]
        inner: S,
        state: Arc<ConnState>,
        // Bytes read already, to be read again first (see `unread`).
        prefix: Bytes,
    }
}

impl<S> WatchedIo<S> {
    pub fn new(inner: S, state: Arc<ConnState>) -> Self {
        WatchedIo {
            inner,
            state,
            prefix: Bytes::new(),
        }
    }

    /// Puts back bytes already read from the socket: the native HTTP/1.1
    /// server's look at a connection's first bytes found HTTP/2, and hyper
    /// reads them again.
    pub fn unread(mut self, prefix: Bytes) -> Self {
        self.prefix = prefix;
        self
    }
}

impl<S: AsyncRead> AsyncRead for WatchedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.state.on_read();
        }
        polled
    }
}

impl<S: AsyncWrite> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
