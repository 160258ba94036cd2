// Hash routes, so the server serves only `/` and `/assets/*`.

export type Route =
  | { view: 'sandboxes' }
  | { view: 'sandbox'; name: string }
  | { view: 'session'; id: string }
  | { view: 'terminal'; name: string | null }
  | { view: 'network'; name: string | null }
  | { view: 'settings' };

export const href = {
  sandboxes: '#/',
  sandbox: (name: string) => `#/sandbox/${encodeURIComponent(name)}`,
  session: (id: string) => `#/session/${encodeURIComponent(id)}`,
  terminal: (name?: string) => (name ? `#/terminal/${encodeURIComponent(name)}` : '#/terminal'),
  network: (name?: string) => (name ? `#/network/${encodeURIComponent(name)}` : '#/network'),
  settings: '#/settings',
};

function decode(part: string): string | null {
  try {
    return decodeURIComponent(part);
  } catch {
    return null;
  }
}

/** Anything unknown is the home page. */
export function parseRoute(hash: string): Route {
  const [view, part, ...rest] = hash.replace(/^#\/?/, '').split('/');
  const name = part && rest.length === 0 ? decode(part) : null;
  if (view === 'sandbox' && name) return { view: 'sandbox', name };
  if (view === 'session' && name) return { view: 'session', id: name };
  if (view === 'terminal' && (name || !part)) return { view: 'terminal', name };
  if (view === 'network' && (name || !part)) return { view: 'network', name };
  if (view === 'settings' && !part) return { view: 'settings' };
  return { view: 'sandboxes' };
}
