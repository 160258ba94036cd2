//! Output of a guest program that capsem presents as its own report
//! (`capsem doctor`): the guest writes it, so its control characters are
//! shown as escapes rather than obeyed by the user's terminal.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use capsem_core::text::VisibleLines;
use tokio::io::AsyncWrite;

/// Writes what it is given to `inner` with terminal controls made visible.
pub struct Report<W> {
    inner: W,
    lines: VisibleLines,
    /// Converted bytes not yet taken by `inner`.
    pending: Vec<u8>,
}

impl<W> Report<W> {
    /// A report written to `inner`.
    pub fn new(inner: W) -> Self {
        Report {
            inner,
            lines: VisibleLines::default(),
            pending: Vec::new(),
        }
    }
}

impl<W: AsyncWrite + Unpin> Report<W> {
    /// Hands `pending` to `inner` until it is empty or `inner` is full.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Report<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        this.pending = this.lines.push(buf).into_bytes();
        // What `inner` does not take now goes at the next write or flush.
        let _ = this.drain(cx)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn escapes_reach_the_writer_as_text() {
        let mut out = Report::new(Vec::new());
        out.write_all(b"1 passed\n\x1b]0;pwned\x07").await.unwrap();
        out.flush().await.unwrap();
        assert_eq!(out.inner, b"1 passed\n\\x1b]0;pwned\\x07");
    }
}
