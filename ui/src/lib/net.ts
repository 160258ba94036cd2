// The Network view's rows: the `dns`, `net` and `model_call` records of a
// boot (docs/json.md) in one shape, merged by time.
import type { NetEvent } from './api';

export type Kind = NetEvent['type'];
export type Verdict = 'allowed' | 'denied' | 'error';

export interface ModelUse {
  model: string | null;
  input_tokens: number;
  output_tokens: number;
  cost_usd: number | null;
}

export interface NetRow {
  /** Arrival order: the row's key, and the order of rows at one time. */
  seq: number;
  /** Since the boot's session started. */
  at_ms: number;
  kind: Kind;
  /** What the Kind column says: `dns`, the protocol of a request, `model`. */
  label: string;
  process: string | null;
  pid: number | null;
  method: string | null;
  /** The DNS name, the request's domain (or address), a model call's provider. */
  domain: string | null;
  port: number | null;
  path: string | null;
  status: number | null;
  bytes_up: number | null;
  bytes_down: number | null;
  duration_ms: number | null;
  verdict: Verdict;
  rule: string | null;
  /** A request's error, the address a DNS answer gave, a model call's stop reason. */
  detail: string | null;
  model: ModelUse | null;
}

const blank = {
  process: null,
  pid: null,
  method: null,
  port: null,
  path: null,
  status: null,
  bytes_up: null,
  bytes_down: null,
  duration_ms: null,
  rule: null,
  detail: null,
  model: null,
};

export function toRow(event: NetEvent, seq: number): NetRow {
  switch (event.type) {
    case 'dns': {
      const d = event.data;
      return {
        ...blank,
        seq,
        at_ms: d.at_ms,
        kind: 'dns',
        label: 'dns',
        domain: d.name,
        verdict: d.allowed ? 'allowed' : 'denied',
        rule: d.rule,
        detail: d.address,
      };
    }
    case 'net': {
      const n = event.data;
      return {
        seq,
        at_ms: n.at_ms,
        kind: 'net',
        label: n.protocol,
        process: n.process,
        pid: n.pid,
        method: n.method,
        domain: n.domain ?? n.ip,
        port: n.port,
        path: n.path,
        status: n.status,
        bytes_up: n.bytes_up,
        bytes_down: n.bytes_down,
        duration_ms: n.duration_ms,
        verdict: n.decision,
        rule: n.rule,
        detail: n.error,
        model: null,
      };
    }
    case 'model_call': {
      const m = event.data;
      return {
        ...blank,
        seq,
        at_ms: m.at_ms,
        kind: 'model_call',
        label: 'model',
        domain: m.provider,
        path: m.path,
        status: m.status,
        duration_ms: m.duration_ms,
        // A call the proxy saw and priced went through.
        verdict: 'allowed',
        detail: m.stop_reason,
        model: { model: m.model, input_tokens: m.input_tokens, output_tokens: m.output_tokens, cost_usd: m.cost_usd },
      };
    }
  }
}

export const byTime = (a: NetRow, b: NetRow) => a.at_ms - b.at_ms || a.seq - b.seq;

/** `rows` and `more` (each in time order) as one list in time order. */
export function merge(rows: NetRow[], more: NetRow[]): NetRow[] {
  if (more.length === 0) return rows;
  const last = rows[rows.length - 1];
  // New records come in order; only the first answer of a stream (dns,
  // then net, then model_call records) needs sorting.
  return !last || byTime(last, more[0]) <= 0 ? rows.concat(more) : rows.concat(more).sort(byTime);
}

export interface Totals {
  allowed: number;
  denied: number;
  errors: number;
  dnsQueries: number;
  dnsRefused: number;
  modelCalls: number;
  inputTokens: number;
  outputTokens: number;
  /** The sum of the calls with a known price; `unpriced` had none. */
  cost: number;
  unpriced: number;
}

export function totals(rows: NetRow[]): Totals {
  const t: Totals = {
    allowed: 0,
    denied: 0,
    errors: 0,
    dnsQueries: 0,
    dnsRefused: 0,
    modelCalls: 0,
    inputTokens: 0,
    outputTokens: 0,
    cost: 0,
    unpriced: 0,
  };
  for (const r of rows) {
    if (r.kind === 'net') {
      if (r.verdict === 'allowed') t.allowed++;
      else if (r.verdict === 'denied') t.denied++;
      else t.errors++;
    } else if (r.kind === 'dns') {
      t.dnsQueries++;
      if (r.verdict === 'denied') t.dnsRefused++;
    } else if (r.model) {
      t.modelCalls++;
      t.inputTokens += r.model.input_tokens;
      t.outputTokens += r.model.output_tokens;
      if (r.model.cost_usd === null) t.unpriced++;
      else t.cost += r.model.cost_usd;
    }
  }
  return t;
}

export interface Intervals {
  /** Seconds since the boot at the start of each interval. */
  starts: number[];
  allowed: number[];
  /** Requests denied, and DNS names refused (a request that never left). */
  denied: number[];
  stepSeconds: number;
}

/** The lengths an interval may have, in seconds. */
export const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
const MAX_BARS = 120;

/** Requests per interval, the interval chosen for at most 120 of them. */
export function intervals(rows: NetRow[]): Intervals {
  const span = Math.max(1, (rows[rows.length - 1]?.at_ms ?? 0) / 1000);
  const step = STEPS.find((s) => span / s < MAX_BARS) ?? STEPS[STEPS.length - 1];
  const count = Math.floor(span / step) + 1;
  const result: Intervals = {
    starts: Array.from({ length: count }, (_, i) => i * step),
    allowed: new Array<number>(count).fill(0),
    denied: new Array<number>(count).fill(0),
    stepSeconds: step,
  };
  for (const r of rows) {
    const i = Math.min(count - 1, Math.floor(r.at_ms / 1000 / step));
    if (r.kind === 'net' && r.verdict === 'allowed') result.allowed[i]++;
    else if (r.verdict === 'denied') result.denied[i]++;
  }
  return result;
}
