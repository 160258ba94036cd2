//! The transcript of a terminal session: every byte typed and shown, with
//! times, binary-safe (`docs/transcript.md` describes the format).
//!
//! A file starts with [`MAGIC`], then records: a kind byte (`i` input, `o`
//! output, `r` resize, `c` cut), the time in microseconds since the
//! transcript began (`u64`, little-endian), the payload length (`u32`,
//! little-endian) and the payload. A resize's payload is rows then columns,
//! each `u16` little-endian; a cut has none. Records are written as they
//! happen; a crash loses at most the buffered tail. Records are charged to
//! the session's [`Budget`]: once it is spent, one cut record marks where
//! the transcript stops, and the bytes not kept are counted.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::budget::Budget;

/// The first bytes of every transcript, with the format version.
pub const MAGIC: &[u8; 16] = b"CAPSEM-TTY-REC1\n";
/// A transcript's file name in a session directory.
pub const TRANSCRIPT_FILE: &str = "transcript";
/// The largest payload a reader accepts: records are written in chunks of
/// at most 64 KiB, so a longer one is damage, not data.
const MAX_PAYLOAD: usize = 1024 * 1024;
/// Bytes of a record besides its payload.
const HEADER: usize = 13;

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
    /// The transcript stops here: the session's budget was spent.
    Cut,
}

impl Record {
    fn payload_len(&self) -> usize {
        match self {
            Record::Input(bytes) | Record::Output(bytes) => bytes.len(),
            Record::Resize { .. } => 4,
            Record::Cut => 0,
        }
    }
}

/// A transcript being written. Safe to share: records are written whole.
pub struct Transcript {
    file: Mutex<Option<BufWriter<File>>>,
    start: Instant,
    budget: Arc<Budget>,
    /// Payload bytes not kept once the budget was spent.
    cut: AtomicU64,
}

impl Transcript {
    /// Creates the transcript file (private, 0600), charged to `budget`.
    pub fn create(path: &Path, budget: Arc<Budget>) -> io::Result<Self> {
        let file = crate::fsutil::create_private(path)?;
        let mut writer = BufWriter::with_capacity(64 * 1024, file);
        writer.write_all(MAGIC)?;
        Ok(Transcript {
            file: Mutex::new(Some(writer)),
            start: Instant::now(),
            budget,
            cut: AtomicU64::new(0),
        })
    }

    /// Appends a record. After a write error (a full disk, say) the
    /// transcript stops, with a warning, and the session goes on; once the
    /// session's budget is spent it stops with a cut record.
    pub fn record(&self, record: &Record) {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(writer) = file.as_mut() else {
            self.cut
                .fetch_add(record.payload_len() as u64, Ordering::Relaxed);
            return;
        };
        let at = self.start.elapsed().as_micros() as u64;
        let within = self.budget.take((HEADER + record.payload_len()) as u64);
        let (record, stop) = if within {
            (record, false)
        } else {
            self.cut
                .fetch_add(record.payload_len() as u64, Ordering::Relaxed);
            (&Record::Cut, true)
        };
        let written = write_record(writer, at, record)
            .and_then(|()| if stop { writer.flush() } else { Ok(()) });
        let failed = written
            .inspect_err(|e| tracing::warn!("the terminal transcript stopped: {e}"))
            .is_err();
        if stop || failed {
            *file = None;
        }
    }

    /// Payload bytes not kept because the session's budget was spent (or
    /// the file could not be written).
    pub fn cut_bytes(&self) -> u64 {
        self.cut.load(Ordering::Relaxed)
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
        Record::Cut => (b'c', (&[][..]).into()),
    };
    out.write_all(&[kind])?;
    out.write_all(&at_us.to_le_bytes())?;
    out.write_all(&(payload.len() as u32).to_le_bytes())?;
    out.write_all(&payload)
}

/// Reads a transcript record by record, without holding more than one in
/// memory. A truncated last record (a crash mid-write) ends it quietly;
/// garbage is an error.
pub struct Reader<R> {
    input: BufReader<R>,
    done: bool,
}

impl<R: Read> Reader<R> {
    /// Checks the magic and returns a reader of the records after it.
    pub fn new(input: R) -> io::Result<Self> {
        let mut input = BufReader::with_capacity(64 * 1024, input);
        let mut magic = [0; MAGIC.len()];
        if input.read_exact(&mut magic).is_err() || &magic != MAGIC {
            return Err(invalid("not a capsem transcript".to_owned()));
        }
        Ok(Reader { input, done: false })
    }

    fn next_record(&mut self) -> io::Result<Option<(Duration, Record)>> {
        let mut header = [0u8; HEADER];
        if !read_whole(&mut self.input, &mut header)? {
            return Ok(None);
        }
        let kind = header[0];
        let at = u64::from_le_bytes(header[1..9].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(header[9..13].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD {
            return Err(invalid(format!("a transcript record of {len} bytes")));
        }
        let mut payload = vec![0; len];
        if !read_whole(&mut self.input, &mut payload)? {
            return Ok(None);
        }
        let record = match (kind, payload.as_slice()) {
            (b'i', _) => Record::Input(payload),
            (b'o', _) => Record::Output(payload),
            (b'r', [r0, r1, c0, c1]) => Record::Resize {
                rows: u16::from_le_bytes([*r0, *r1]),
                cols: u16::from_le_bytes([*c0, *c1]),
            },
            (b'c', []) => Record::Cut,
            _ => return Err(invalid(format!("unknown transcript record {kind:#04x}"))),
        };
        Ok(Some((Duration::from_micros(at), record)))
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = io::Result<(Duration, Record)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_record().transpose();
        self.done = !matches!(next, Some(Ok(_)));
        next
    }
}

/// Fills `buf`; `false` if the input ended first (at or inside it).
fn read_whole(input: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_binary_safe_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TRANSCRIPT_FILE);
        let transcript = Transcript::create(&path, Arc::default()).unwrap();
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
        let records: Vec<Record> = Reader::new(File::open(&path).unwrap())
            .unwrap()
            .map(|r| r.unwrap().1)
            .collect();
        assert_eq!(records, written);
        assert!(
            Transcript::create(&path, Arc::default()).is_err(),
            "an existing transcript must not be reused"
        );
    }

    #[test]
    fn a_truncated_tail_is_dropped_and_garbage_is_refused() {
        let mut bytes = MAGIC.to_vec();
        write_record(&mut bytes, 5, &Record::Output(b"ok".to_vec())).unwrap();
        write_record(&mut bytes, 6, &Record::Output(b"cut".to_vec())).unwrap();
        bytes.truncate(bytes.len() - 1);
        let records: Vec<_> = Reader::new(&bytes[..]).unwrap().collect();
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].as_ref().unwrap(),
            &(Duration::from_micros(5), Record::Output(b"ok".to_vec()))
        );
        assert!(Reader::new(&b"not a transcript"[..]).is_err());
        let mut bad = MAGIC.to_vec();
        write_record(&mut bad, 1, &Record::Input(vec![])).unwrap();
        bad[MAGIC.len()] = b'?';
        let mut reader = Reader::new(&bad[..]).unwrap();
        assert!(reader.next().unwrap().is_err());
        assert!(reader.next().is_none(), "a reader stops at an error");
    }

    #[test]
    fn a_forged_length_is_refused_not_allocated() {
        let mut bytes = MAGIC.to_vec();
        bytes.push(b'o');
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        let first = Reader::new(&bytes[..]).unwrap().next().unwrap();
        assert!(first.unwrap_err().to_string().contains("bytes"));
    }

    #[test]
    fn a_spent_budget_cuts_the_transcript_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TRANSCRIPT_FILE);
        let transcript = Transcript::create(&path, Arc::new(Budget::mib(1))).unwrap();
        let chunk = Record::Output(vec![b'x'; 64 * 1024]);
        for _ in 0..40 {
            transcript.record(&chunk);
        }
        transcript.finish();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= 1024 * 1024 + 64, "{size}");
        let records: Vec<Record> = Reader::new(File::open(&path).unwrap())
            .unwrap()
            .map(|r| r.unwrap().1)
            .collect();
        assert_eq!(records.last(), Some(&Record::Cut));
        assert_eq!(records.len(), 16);
        assert_eq!(transcript.cut_bytes(), 25 * 64 * 1024);
    }
}
