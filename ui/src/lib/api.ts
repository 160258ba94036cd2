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

/** The exec WebSocket's URL for `name`, on this page's own host. */
export function execUrl(name: string): string {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}${sandboxPath(name)}/exec`;
}

/** What to tell the user about a failed call. */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
