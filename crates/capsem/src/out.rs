//! What capsem itself prints on stdout (listings, logs, JSON). A reader
//! that goes away (`capsem net log | head -1`) ends capsem quietly with
//! exit 0, as ripgrep does, instead of a panic about a broken pipe.

use std::io::{self, Write};

/// Writes `text` to stdout; a closed pipe ends the process with 0, any
/// other error with capsem's failure code.
pub fn write(text: std::fmt::Arguments<'_>) {
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        fail(e);
    }
}

/// Writes raw bytes to stdout (a transcript's output), as [`write`] does.
pub fn bytes(data: &[u8]) {
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_all(data).and_then(|()| stdout.flush()) {
        fail(e);
    }
}

fn fail(e: io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("capsem: writing to stdout: {e}");
    std::process::exit(crate::exit::FAILURE);
}

/// `print!` through [`write`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*)) };
}

/// `println!` through [`write`].
macro_rules! outln {
    () => { $crate::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {out, outln};
