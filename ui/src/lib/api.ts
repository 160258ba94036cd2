// Typed calls to the capsem service API (docs/api.md), same origin.

export type SandboxState = 'starting' | 'running' | 'stopped' | 'suspended';

export interface SandboxInfo {
  name: string;
  state: SandboxState;
  created_ms: number | null;
  started_ms: number | null;
  cpus: number;
  memory_mib: number;
  disk_gib: number;
  session: string | null;
  host_rss_kib: number | null;
  last_activity_ms: number | null;
}

export interface CreateRequest {
  name?: string;
  cpus?: number;
  memory_mib?: number;
}

export type Lifecycle = 'start' | 'stop' | 'suspend' | 'resume';

/** An answer other than 2xx; `message` is the server's own words. */
export class ApiError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
  }
}

export const NAME_PATTERN = /^[a-z0-9][a-z0-9-]{0,62}$/;

let unauthorized: () => void = () => {};

/** Called on any 401: the page has no (valid) session cookie. */
export function onUnauthorized(handler: () => void): void {
  unauthorized = handler;
}

async function request(path: string, init: RequestInit = {}): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(path, { ...init, credentials: 'same-origin' });
  } catch (e) {
    if (init.signal?.aborted) throw e;
    throw new ApiError(0, 'The capsem service is not answering.');
  }
  if (res.ok) return res;
  if (res.status === 401) unauthorized();
  throw new ApiError(res.status, await errorMessage(res));
}

async function errorMessage(res: Response): Promise<string> {
  const text = await res.text().catch(() => '');
  try {
    const body: unknown = JSON.parse(text);
    if (body && typeof body === 'object' && 'error' in body && typeof body.error === 'string') {
      return body.error;
    }
  } catch {
    // Not JSON (e.g. a proxy's page): fall back to the text itself.
  }
  return text.trim().slice(0, 500) || `${res.status} ${res.statusText}`;
}

async function json<T>(path: string, init?: RequestInit): Promise<T> {
  return (await request(path, init)).json() as Promise<T>;
}

const sandboxPath = (name: string) => `/v1/sandboxes/${encodeURIComponent(name)}`;

export const listSandboxes = () => json<SandboxInfo[]>('/v1/sandboxes');

export const getSandbox = (name: string) => json<SandboxInfo>(sandboxPath(name));

export const createSandbox = (req: CreateRequest) =>
  json<SandboxInfo>('/v1/sandboxes', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(req),
  });

export async function changeState(name: string, action: Lifecycle): Promise<void> {
  await request(`${sandboxPath(name)}/${action}`, { method: 'POST' });
}

export async function removeSandbox(name: string): Promise<void> {
  await request(`${sandboxPath(name)}?force=true`, { method: 'DELETE' });
}

/**
 * Streams the sandbox's log: `onText` gets the whole log so far, then each
 * new piece, until the sandbox stops (the stream ends) or `signal` aborts.
 */
export async function followLogs(
  name: string,
  onText: (chunk: string) => void,
  signal: AbortSignal,
): Promise<void> {
  const res = await request(`${sandboxPath(name)}/logs?follow=true`, { signal });
  if (!res.body) {
    onText(await res.text());
    return;
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    onText(value);
  }
}

export type SettingKind =
  | 'bool'
  | 'int'
  | 'choice'
  | 'text'
  | 'json'
  | 'toml'
  | 'secret'
  | 'domains'
  | 'overrides'
  | 'ranges'
  | 'ca_file'
  | 'globs';

export type SettingValue = boolean | number | string | null;

/** docs/json.md, "setting"; a secret's value is only its masked text. */
export interface Setting {
  key: string;
  value: SettingValue;
  default: SettingValue;
  kind: SettingKind;
  choices?: string[];
  range?: [number, number];
  source: 'default' | 'user' | 'corp';
  locked: boolean;
  description: string;
}

export interface SettingAnswer {
  /** null: a guest.env variable reset away. */
  setting: Setting | null;
  warnings: string[];
}

const settingPath = (key: string) => `/v1/settings/${encodeURIComponent(key)}`;

export const listSettings = () => json<Setting[]>('/v1/settings');

export const getSetting = (key: string) => json<Setting>(settingPath(key));

/** `value` spelled as on the command line (`true`, `2`, `a.com, b.com`). */
export const putSetting = (key: string, value: string) =>
  json<SettingAnswer>(settingPath(key), {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ value }),
  });

/** Back to the default: the key leaves user.toml. */
export const resetSetting = (key: string) => json<SettingAnswer>(settingPath(key), { method: 'DELETE' });

export interface NetworkTotals {
  allowed: number;
  denied: number;
  errors: number;
  bytes_up: number;
  bytes_down: number;
  dns_queries: number;
  dns_denied: number;
  model_calls: number;
  input_tokens: number;
  output_tokens: number;
  cost_usd: number;
}

export type SessionStatus = 'running' | 'exited' | 'failed' | 'killed' | 'timed_out';

/** docs/json.md, "session" (the fields the UI reads), with its network totals. */
export interface Session {
  id: string;
  started_at_ms: number;
  ended_at_ms: number | null;
  status: SessionStatus;
  command: string;
  exit_code: number | null;
  error: string | null;
  cpus: number;
  memory_mib: number;
  network: NetworkTotals;
}

export const listSessions = (limit: number) => json<Session[]>(`/v1/sessions?limit=${limit}`);

/** A command's start, signal or end in a session. */
export interface ExecMark {
  at_ms: number;
  exec: number;
  kind: 'started' | 'signal' | 'exited' | 'timed_out';
  value: number | null;
  command: string | null;
}

/** `GET /v1/sessions/{id}`. */
export interface SessionDetail {
  session: Session & {
    accel: string | null;
    capsem_version: string;
    /** ms since capsem started, by `NAME_ms`. */
    phases: Record<string, number> | null;
    transcript_cut_bytes: number;
  };
  network: NetworkTotals;
  execs: ExecMark[];
  execs_cut: boolean;
  transcript_bytes: number | null;
}

const sessionPath = (id: string) => `/v1/sessions/${encodeURIComponent(id)}`;

export const getSession = (id: string) => json<SessionDetail>(sessionPath(id));

export async function getTranscript(id: string): Promise<ArrayBuffer> {
  return (await request(`${sessionPath(id)}/transcript`)).arrayBuffer();
}

/** docs/json.md, "dns"; `at_ms` is since the boot's session started. */
export interface DnsRecord {
  at_ms: number;
  name: string;
  allowed: boolean;
  rule: string;
  address: string | null;
}

/** docs/json.md, "net"; `pid` and `process` are the guest's word. */
export interface NetRecord {
  at_ms: number;
  reported_by: 'host' | 'guest';
  pid: number | null;
  process: string | null;
  protocol: string;
  domain: string | null;
  ip: string | null;
  port: number;
  method: string | null;
  path: string | null;
  status: number | null;
  bytes_up: number;
  bytes_down: number;
  duration_ms: number | null;
  decision: 'allowed' | 'denied' | 'error';
  rule: string | null;
  error: string | null;
}

/** docs/json.md, "model_call". */
export interface ModelCallRecord {
  at_ms: number;
  provider: string;
  model: string | null;
  path: string | null;
  status: number | null;
  input_tokens: number;
  output_tokens: number;
  stop_reason: string | null;
  duration_ms: number;
  cost_usd: number | null;
}

export type NetEvent =
  | { type: 'dns'; data: DnsRecord }
  | { type: 'net'; data: NetRecord }
  | { type: 'model_call'; data: ModelCallRecord };

const NET_TYPES: ReadonlySet<string> = new Set(['dns', 'net', 'model_call']);

/**
 * Streams the network records of the sandbox's current (or last) boot:
 * `onEvents` gets those of each piece of the stream as they arrive, until
 * the sandbox stops (the stream ends: the promise resolves) or `signal`
 * aborts. Lines of a type this UI does not know are skipped.
 */
export async function followNet(
  name: string,
  onEvents: (events: NetEvent[]) => void,
  signal: AbortSignal,
): Promise<void> {
  const res = await request(`${sandboxPath(name)}/net?follow=true`, { signal });
  let rest = '';
  const take = (text: string, last: boolean) => {
    const lines = (rest + text).split('\n');
    rest = last ? '' : (lines.pop() ?? '');
    const events: NetEvent[] = [];
    for (const line of lines) {
      if (!line.trim()) continue;
      let event: { type?: unknown };
      try {
        event = JSON.parse(line) as { type?: unknown };
      } catch {
        throw new Error(`the service sent a line that is not JSON: ${line.slice(0, 200)}`);
      }
      if (typeof event.type === 'string' && NET_TYPES.has(event.type)) events.push(event as NetEvent);
    }
    if (events.length) onEvents(events);
  };
  if (!res.body) {
    take(await res.text(), true);
    return;
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return take('', true);
    take(value, false);
  }
}

/** The exec WebSocket's URL for `name`, on this page's own host. */
export function execUrl(name: string): string {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}${sandboxPath(name)}/exec`;
}

/** What to tell the user about a failed call. */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
