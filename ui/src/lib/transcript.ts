// A terminal transcript (docs/transcript.md): `CAPSEM-TTY-REC1\n`, then
// records of kind (1 byte: i, o, r), time since the start in µs (u64 LE),
// payload length (u32 LE) and payload. The guest wrote what the output
// holds, so lengths are checked against what is there and a truncated or
// unknown record ends the reading.

const MAGIC = 'CAPSEM-TTY-REC1\n';
const HEAD = 13;

export type TranscriptRecord =
  | { kind: 'output'; atMs: number; data: Uint8Array }
  | { kind: 'input'; atMs: number; data: Uint8Array }
  | { kind: 'resize'; atMs: number; rows: number; cols: number };

export interface Transcript {
  records: TranscriptRecord[];
  /** The recording's length, ms. */
  lengthMs: number;
  /** Bytes after the last whole record (a crash's tail, or damage). */
  dropped: number;
}

export function parseTranscript(buffer: ArrayBuffer): Transcript {
  const bytes = new Uint8Array(buffer);
  const magic = new TextDecoder().decode(bytes.subarray(0, MAGIC.length));
  if (magic !== MAGIC) throw new Error('this is not a capsem transcript (its header is wrong)');
  const view = new DataView(buffer);
  const records: TranscriptRecord[] = [];
  let at = MAGIC.length;
  while (at + HEAD <= bytes.length) {
    const kind = String.fromCharCode(bytes[at]);
    const atMs = Number(view.getBigUint64(at + 1, true)) / 1000;
    const length = view.getUint32(at + 9, true);
    const start = at + HEAD;
    if (start + length > bytes.length) break;
    const data = bytes.subarray(start, start + length);
    if (kind === 'o') records.push({ kind: 'output', atMs, data });
    else if (kind === 'i') records.push({ kind: 'input', atMs, data });
    else if (kind === 'r' && length === 4) {
      records.push({ kind: 'resize', atMs, rows: view.getUint16(start, true), cols: view.getUint16(start + 2, true) });
    } else break;
    at = start + length;
  }
  const lengthMs = records.length ? records[records.length - 1].atMs : 0;
  return { records, lengthMs, dropped: bytes.length - at };
}
