// The terminal WebSocket (docs/api.md, "Terminals"): the exec protocol,
// with a terminal that stays when this page goes and is attached again
// by its id when it comes back.
import { execUrl } from './api';

export type ExecEnd =
  | { type: 'exited'; code: number | null; signal: number | null }
  | { type: 'timed_out' }
  | { type: 'error'; message: string }
  | { type: 'unreachable' }
  | { type: 'disconnected' };

export interface ExecHandlers {
  /** The terminal's id, to attach to it again after a reload. */
  attached(id: number): void;
  /** stdout and stderr bytes alike: a tty merges them anyway. */
  output(data: Uint8Array): void;
  end(how: ExecEnd): void;
}

const SIGHUP = 1;

const STDOUT = 1;
const STDERR = 2;
// The server closes on a message over 1 MiB; the CLI sends 32 KiB pieces.
const STDIN_CHUNK = 32 * 1024;

/**
 * A command on a terminal in sandbox `name`: a new one running `argv`, or
 * terminal `id` attached again. `end` is called exactly once.
 */
export class ExecSession {
  private readonly ws: WebSocket;
  private readonly encoder = new TextEncoder();
  private ended = false;

  constructor(
    name: string,
    start: { id: number } | { argv: string[]; tty: { rows: number; cols: number } },
    handlers: ExecHandlers,
  ) {
    const base = execUrl(name).replace(/\/exec$/, '/terminal');
    const ws = new WebSocket('id' in start ? `${base}?id=${start.id}` : base);
    ws.binaryType = 'arraybuffer';
    let opened = false;
    const finish = (how: ExecEnd) => {
      if (this.ended) return;
      this.ended = true;
      handlers.end(how);
    };
    ws.onopen = () => {
      opened = true;
      if (!('id' in start)) ws.send(JSON.stringify({ command: { Argv: start.argv }, tty: start.tty }));
    };
    ws.onmessage = (ev: MessageEvent<ArrayBuffer | string>) => {
      if (typeof ev.data === 'string') {
        const id = attachedId(ev.data);
        if (id !== null) return handlers.attached(id);
        finish(parseEnd(ev.data));
        ws.close();
        return;
      }
      const frame = new Uint8Array(ev.data);
      if (frame[0] === STDOUT || frame[0] === STDERR) handlers.output(frame.subarray(1));
    };
    ws.onclose = () => finish(opened ? { type: 'disconnected' } : { type: 'unreachable' });
    this.ws = ws;
  }

  get open(): boolean {
    return !this.ended && this.ws.readyState === WebSocket.OPEN;
  }

  input(data: string | Uint8Array<ArrayBuffer>): void {
    if (!this.open) return;
    const bytes = typeof data === 'string' ? this.encoder.encode(data) : data;
    for (let i = 0; i < bytes.length; i += STDIN_CHUNK) {
      this.ws.send(bytes.subarray(i, i + STDIN_CHUNK));
    }
  }

  resize(rows: number, cols: number): void {
    if (this.open) this.ws.send(JSON.stringify({ type: 'resize', rows, cols }));
  }

  /** Hangs the command up: the shell gets SIGHUP and the terminal ends. */
  close(): void {
    if (this.open) this.ws.send(JSON.stringify({ type: 'signal', signal: SIGHUP }));
    this.ended = true;
    this.ws.close();
  }
}

/** The id of an `attached` message, else null. */
function attachedId(text: string): number | null {
  try {
    const msg = JSON.parse(text) as Record<string, unknown>;
    return msg.type === 'attached' && typeof msg.id === 'number' ? msg.id : null;
  } catch {
    return null;
  }
}

function parseEnd(text: string): ExecEnd {
  try {
    const msg = JSON.parse(text) as Record<string, unknown>;
    switch (msg.type) {
      case 'exited':
        return {
          type: 'exited',
          code: typeof msg.code === 'number' ? msg.code : null,
          signal: typeof msg.signal === 'number' ? msg.signal : null,
        };
      case 'timed_out':
        return { type: 'timed_out' };
      case 'error':
        return { type: 'error', message: String(msg.message) };
    }
  } catch {
    // Fall through: the server broke the protocol.
  }
  return { type: 'error', message: `unexpected message from the service: ${text.slice(0, 200)}` };
}

/** The line a terminal shows when its shell is gone. */
export function describeEnd(how: ExecEnd, name: string): string {
  switch (how.type) {
    case 'exited':
      return how.signal !== null
        ? `[the shell was killed by signal ${how.signal}]`
        : `[the shell exited with code ${how.code ?? '?'}]`;
    case 'timed_out':
      return '[the shell timed out]';
    case 'error':
      return `[error: ${how.message}]`;
    case 'unreachable':
      return `[could not connect to ${name}: is it running?]`;
    case 'disconnected':
      return `[disconnected from ${name}]`;
  }
}
