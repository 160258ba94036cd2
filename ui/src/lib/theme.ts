// The terminal's colours come from the page's CSS variables, so light and
// dark follow `prefers-color-scheme` in one place (app.css).
import type { ITheme } from '@xterm/xterm';

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

/** Calls `fn` when the system switches between light and dark. */
export function onColorSchemeChange(fn: () => void): () => void {
  const query = matchMedia('(prefers-color-scheme: dark)');
  query.addEventListener('change', fn);
  return () => query.removeEventListener('change', fn);
}
