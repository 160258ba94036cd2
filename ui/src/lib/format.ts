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
