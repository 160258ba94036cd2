// How sizes and times read in the tables.

export function mib(value: number): string {
  return value >= 1024 && value % 1024 === 0 ? `${value / 1024} GiB` : `${value} MiB`;
}

export function kib(value: number | null): string {
  if (value === null) return '—';
  if (value < 1024) return `${value} KiB`;
  const m = value / 1024;
  return m < 1024 ? `${m.toFixed(m < 100 ? 1 : 0)} MiB` : `${(m / 1024).toFixed(2)} GiB`;
}

export function dateTime(ms: number | null): string {
  return ms === null ? '—' : new Date(ms).toLocaleString();
}

/** A coarse length of time: its two largest units. */
export function duration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  const units: [number, string][] = [
    [Math.floor(s / 86400), 'd'],
    [Math.floor(s / 3600) % 24, 'h'],
    [Math.floor(s / 60) % 60, 'min'],
    [s % 60, 's'],
  ];
  const first = units.findIndex(([n]) => n > 0);
  if (first === -1) return '0 s';
  return units
    .slice(first, first + 2)
    .filter(([n]) => n > 0)
    .map(([n, u]) => `${n} ${u}`)
    .join(' ');
}

export function ago(ms: number | null, now: number): string {
  return ms === null ? '—' : `${duration(now - ms)} ago`;
}

export function bytes(value: number): string {
  if (value < 1024) return `${value} B`;
  return kib(Math.round(value / 1024));
}

/** An estimated cost: cents to four places, so that small calls show. */
export function usd(value: number): string {
  return `$${value.toFixed(value !== 0 && value < 1 ? 4 : 2)}`;
}

/** A short length of time, as requests and queries take. */
export function millis(ms: number | null): string {
  if (ms === null) return '—';
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

/** A moment of a boot, as the log shows it: `+12.345 s`, `+1:02:03.456`. */
export function sinceBoot(ms: number): string {
  const s = Math.max(0, ms) / 1000;
  if (s < 60) return `+${s.toFixed(3)} s`;
  const h = Math.floor(s / 3600);
  const m = Math.floor(s / 60) % 60;
  const rest = (s % 60).toFixed(3).padStart(6, '0');
  return h > 0 ? `+${h}:${String(m).padStart(2, '0')}:${rest}` : `+${m}:${rest}`;
}
