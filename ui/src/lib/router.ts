// Hash routes, so the server serves only `/` and `/assets/*`.

export type Route =
  | { view: 'sandboxes' }
  | { view: 'sandbox'; name: string }
  | { view: 'terminal'; name: string | null };

export const href = {
  sandboxes: '#/',
  sandbox: (name: string) => `#/sandbox/${encodeURIComponent(name)}`,
  terminal: (name?: string) => (name ? `#/terminal/${encodeURIComponent(name)}` : '#/terminal'),
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
  if (view === 'terminal' && (name || !part)) return { view: 'terminal', name };
  return { view: 'sandboxes' };
}
