//! Byte streams between a blocking thread (tar, here and in the guest)
//! and async tasks, through small bounded queues of chunks.

use std::io::{self, Read, Write};

use crate::limits::MAX_CHUNK_BYTES;

/// Reads the chunks a queue delivers, in order.
pub struct QueueReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl QueueReader {
    /// Reads what `rx` receives; only on a blocking thread (tasks send
    /// into the queue without leaving the runtime).
    pub fn new(rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        QueueReader {
            rx,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl Read for QueueReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => (self.chunk, self.at) = (chunk, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Writes chunks of at most [`MAX_CHUNK_BYTES`] into a queue.
pub struct QueueWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl QueueWriter {
    /// Writes into `tx`.
    pub fn new(tx: tokio::sync::mpsc::Sender<Vec<u8>>) -> Self {
        QueueWriter {
            tx,
            buf: Vec::with_capacity(MAX_CHUNK_BYTES),
        }
    }
}

impl Write for QueueWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(MAX_CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == MAX_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(MAX_CHUNK_BYTES));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the host went away"))
    }
}
