// Light or dark, and the terminals' font size: the settings `ui.theme`
// (system, light, dark) and `ui.font_size`. The page's colours are CSS
// variables chosen by `data-theme` on <html> (app.css); the terminal's
// colours are read from them.
import type { ITheme } from '@xterm/xterm';
import { getSetting, type Setting } from './api';

type Choice = 'system' | 'light' | 'dark';

let choice: Choice = 'system';
let fontSize = 13;
const listeners = new Set<() => void>();
const systemDark = matchMedia('(prefers-color-scheme: dark)');

const ANSI = [
  'black', 'red', 'green', 'yellow', 'blue', 'magenta', 'cyan', 'white',
  'brightBlack', 'brightRed', 'brightGreen', 'brightYellow',
  'brightBlue', 'brightMagenta', 'brightCyan', 'brightWhite',
] as const;

export function terminalTheme(): ITheme {
  const css = getComputedStyle(document.documentElement);
  const v = (name: string) => css.getPropertyValue(`--term-${name}`).trim();
  const theme: ITheme = {
    background: v('bg'),
    foreground: v('fg'),
    cursor: v('cursor'),
    cursorAccent: v('bg'),
    selectionBackground: v('selection'),
  };
  ANSI.forEach((color, i) => (theme[color] = v(`ansi-${i}`)));
  return theme;
}

/** Sets `data-theme` from the choice and the system's scheme. */
export function applyTheme(): void {
  const dark = choice === 'dark' || (choice === 'system' && systemDark.matches);
  document.documentElement.dataset.theme = dark ? 'dark' : 'light';
  listeners.forEach((fn) => fn());
}

systemDark.addEventListener('change', applyTheme);

/** Calls `fn` when the colours or the font size change. */
export function onColorSchemeChange(fn: () => void): () => void {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** The terminals' font size in px (`ui.font_size`). */
export function terminalFontSize(): number {
  return fontSize;
}

/** Follows a `ui.*` setting the user just changed, or read at start. */
export function applyUiSetting(setting: Setting): void {
  if (setting.key === 'ui.theme' && typeof setting.value === 'string') {
    choice = setting.value as Choice;
  } else if (setting.key === 'ui.font_size' && typeof setting.value === 'number') {
    fontSize = setting.value;
  } else {
    return;
  }
  applyTheme();
}

/** Reads `ui.theme` and `ui.font_size` (a page not signed in keeps the defaults). */
export async function loadUiSettings(): Promise<void> {
  for (const key of ['ui.theme', 'ui.font_size']) {
    try {
      applyUiSetting(await getSetting(key));
    } catch {
      // The page says why elsewhere (401) or keeps the defaults.
    }
  }
}
