//! The transcript of a terminal session: every byte typed and shown, with
//! times, binary-safe (`docs/transcript.md` describes the format).
//!
//! A file starts with [`MAGIC`], then records: a kind byte (`i` input, `o`
//! output, `r` resize), the time in microseconds since the transcript began
//! (`u64`, little-endian), the payload length (`u32`, little-endian) and
//! the payload. A resize's payload is rows then columns, each `u16`
//! little-endian. Records are written as they happen; a crash loses at most
//! the buffered tail.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The first bytes of every transcript, with the format version.
pub const MAGIC: &[u8; 16] = b"CAPSEM-TTY-REC1\n";
/// A transcript's file name in a session directory.
pub const TRANSCRIPT_FILE: &str = "transcript";

/// What a record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Bytes typed into the terminal.
    Input(Vec<u8>),
    /// Bytes the terminal showed.
    Output(Vec<u8>),
    /// The terminal's new size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
}

/// A transcript being written. Safe to share: records are written whole.
pub struct Transcript {
    file: Mutex<Option<BufWriter<File>>>,
    start: Instant,
}

impl Transcript {
    /// Creates the transcript file (private, 0600).
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = crate::fsutil::create_private(path)?;
        let mut writer = BufWriter::with_capacity(64 * 1024, file);
        writer.write_all(MAGIC)?;
        Ok(Transcript {
            file: Mutex::new(Some(writer)),
            start: Instant::now(),
        })
    }

    /// Appends a record. After a write error (a full disk, say) the
    /// transcript stops, with a warning, and the session goes on.
    pub fn record(&self, record: &Record) {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(writer) = file.as_mut() else { return };
        let at = self.start.elapsed().as_micros() as u64;
        if let Err(e) = write_record(writer, at, record) {
            tracing::warn!("the terminal transcript stopped: {e}");
            *file = None;
        }
    }

    /// Flushes what is buffered.
    pub fn finish(&self) {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(writer) = file.as_mut()
            && let Err(e) = writer.flush()
        {
            tracing::warn!("the terminal transcript is incomplete: {e}");
        }
    }
}

fn write_record(out: &mut impl Write, at_us: u64, record: &Record) -> io::Result<()> {
    let (kind, payload): (u8, std::borrow::Cow<'_, [u8]>) = match record {
        Record::Input(bytes) => (b'i', bytes.into()),
        Record::Output(bytes) => (b'o', bytes.into()),
        Record::Resize { rows, cols } => {
            let mut size = rows.to_le_bytes().to_vec();
            size.extend_from_slice(&cols.to_le_bytes());
            (b'r', size.into())
        }
    };
    out.write_all(&[kind])?;
    out.write_all(&at_us.to_le_bytes())?;
    out.write_all(&(payload.len() as u32).to_le_bytes())?;
    out.write_all(&payload)
}

/// Reads a whole transcript: each record with its time since the start. A
/// truncated last record (a crash mid-write) is dropped.
pub fn read(mut input: impl Read) -> io::Result<Vec<(Duration, Record)>> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    let Some(mut rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a capsem transcript",
        ));
    };
    let mut records = Vec::new();
    while rest.len() >= 13 {
        let (kind, at, len) = (rest[0], &rest[1..9], &rest[9..13]);
        let at = Duration::from_micros(u64::from_le_bytes(at.try_into().expect("8 bytes")));
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(payload) = rest.get(13..13 + len) else {
            break;
        };
        let record = match (kind, payload) {
            (b'i', p) => Record::Input(p.to_vec()),
            (b'o', p) => Record::Output(p.to_vec()),
            (b'r', [r0, r1, c0, c1]) => Record::Resize {
                rows: u16::from_le_bytes([*r0, *r1]),
                cols: u16::from_le_bytes([*c0, *c1]),
            },
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown transcript record {kind:#04x}"),
                ));
            }
        };
        records.push((at, record));
        rest = &rest[13 + len..];
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_binary_safe_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TRANSCRIPT_FILE);
        let transcript = Transcript::create(&path).unwrap();
        let all_bytes: Vec<u8> = (0..=255).collect();
        let written = [
            Record::Resize { rows: 24, cols: 80 },
            Record::Input(b"echo hi\r".to_vec()),
            Record::Output(all_bytes),
            Record::Output(Vec::new()),
        ];
        for record in &written {
            transcript.record(record);
        }
        transcript.finish();
        let read_back = read(File::open(&path).unwrap()).unwrap();
        let records: Vec<Record> = read_back.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(records, written);
        assert!(
            Transcript::create(&path).is_err(),
            "an existing transcript must not be reused"
        );
    }

    #[test]
    fn a_truncated_tail_is_dropped_and_garbage_is_refused() {
        let mut bytes = MAGIC.to_vec();
        write_record(&mut bytes, 5, &Record::Output(b"ok".to_vec())).unwrap();
        write_record(&mut bytes, 6, &Record::Output(b"cut".to_vec())).unwrap();
        bytes.truncate(bytes.len() - 1);
        let records = read(&bytes[..]).unwrap();
        assert_eq!(
            records,
            [(Duration::from_micros(5), Record::Output(b"ok".to_vec()))]
        );
        assert!(read(&b"not a transcript"[..]).is_err());
        let mut bad = MAGIC.to_vec();
        write_record(&mut bad, 1, &Record::Input(vec![])).unwrap();
        bad[MAGIC.len()] = b'?';
        assert!(read(&bad[..]).is_err());
    }
}
