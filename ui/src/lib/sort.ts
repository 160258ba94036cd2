// Sorting the tables by a column, one click per column to flip its order.

export interface Sort<K extends string> {
  key: K;
  ascending: boolean;
}

export type SortValue = string | number | null;

/** Orders two column values; unknown ones (null) go last either way. */
export function compareValues(x: SortValue, y: SortValue, ascending: boolean): number {
  if (x === y) return 0;
  if (x === null) return 1;
  if (y === null) return -1;
  const order = typeof x === 'string' ? x.localeCompare(String(y)) : x - Number(y);
  return ascending ? order : -order;
}

/** A click on `key`'s header: that column ascending, or the other way. */
export function nextSort<K extends string>(sort: Sort<K>, key: K): Sort<K> {
  return { key, ascending: sort.key === key ? !sort.ascending : true };
}
