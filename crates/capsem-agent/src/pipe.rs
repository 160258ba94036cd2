//! Non-blocking pipe ends for a command's stdio.
//!
//! The reader can be asked to read only what is already buffered
//! ([`PipeReader::read_now`]): once a command has exited, its output is
//! drained up to the point where the pipe is empty, without waiting for
//! background processes that still hold the write end.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;

fn nonblocking(fd: OwnedFd) -> io::Result<AsyncFd<File>> {
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    register(File::from(fd))
}

/// Hands a non-blocking file to the tokio reactor.
pub fn register(file: File) -> io::Result<AsyncFd<File>> {
    // SAFETY: the File owns its descriptor, which therefore stays open and
    // unchanged until the AsyncFd (which owns the File) is dropped, and
    // `as_raw_fd` on a File always returns that same descriptor.
    unsafe { AsyncFd::register(file) }.map_err(io::Error::from)
}

/// The read end of a command's stdout or stderr.
pub struct PipeReader {
    fd: AsyncFd<File>,
}

impl PipeReader {
    /// Wraps the read end of a pipe.
    pub fn new(fd: impl Into<OwnedFd>) -> io::Result<Self> {
        Ok(PipeReader {
            fd: nonblocking(fd.into())?,
        })
    }

    /// Reads what is available, waiting for data. `Ok(0)` is end of file.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| fd.get_ref().read(buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Fills `buf` with what is buffered right now, in as many reads as
    /// that takes; returns how much. A terminal hands out a few KiB per
    /// read, so this gathers a whole chunk before it crosses the channel.
    /// An error ends the gathering; the next read reports it.
    pub fn read_available(&self, buf: &mut [u8]) -> usize {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read_now(&mut buf[filled..]) {
                Ok(Some(n)) if n > 0 => filled += n,
                _ => break,
            }
        }
        filled
    }

    /// Reads what is buffered right now. `None` when the pipe is empty but
    /// still open.
    pub fn read_now(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.fd.get_ref().read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The write end of a command's stdin.
pub struct PipeWriter {
    fd: AsyncFd<File>,
}

impl PipeWriter {
    /// Wraps the write end of a pipe.
    pub fn new(fd: impl Into<OwnedFd>) -> io::Result<Self> {
        Ok(PipeWriter {
            fd: nonblocking(fd.into())?,
        })
    }

    /// Writes all of `data`, waiting while the pipe is full.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| fd.get_ref().write(data)) {
                Ok(result) => data = &data[result?..],
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}
