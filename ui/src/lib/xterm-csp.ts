// xterm.js 6's DOM renderer styles itself in two ways that the server's
// CSP (`style-src 'self'`) blocks, each block logged as a violation:
//  - Terminal.open() creates three <style> elements (theme colours, cell
//    sizes, scrollbar) and keeps rewriting their textContent. Blocked, the
//    terminal has no colours and runs of spaces collapse.
//  - Cells in 24-bit colour get `setAttribute('style', 'color:#rrggbb')`.
// The CSSOM is not subject to style-src, so: during open() each <style>
// xterm asks for is an inert <template> whose textContent goes into an
// adopted CSSStyleSheet, and a style attribute set from script is applied
// through `element.style.cssText` (what the attribute would have done).
// That replacement is app-wide: any style attribute set from this page's
// own script applies (as the CSSOM would let it anyway); markup parsed
// from strings still gets no inline style, and nothing else of the CSP
// changes.
import type { Terminal } from '@xterm/xterm';

let bridged = false;

function bridgeStyleAttributes(): void {
  if (bridged) return;
  bridged = true;
  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (this: Element, name: string, value: string) {
    if (this instanceof HTMLElement && name.toLowerCase() === 'style') {
      this.style.cssText = value;
    } else {
      setAttribute.call(this, name, value);
    }
  };
}

/** Opens `term` in `parent`; the returned function drops its stylesheets. */
export function openTerminal(term: Terminal, parent: HTMLElement): () => void {
  bridgeStyleAttributes();
  const doc = parent.ownerDocument;
  const sheets: CSSStyleSheet[] = [];
  const createElement = doc.createElement;
  doc.createElement = function (this: Document, tag: string, options?: ElementCreationOptions) {
    if (tag.toLowerCase() !== 'style') return createElement.call(this, tag, options);
    const sheet = new CSSStyleSheet();
    sheets.push(sheet);
    doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
    const standIn = createElement.call(this, 'template');
    let css = '';
    Object.defineProperty(standIn, 'textContent', {
      get: () => css,
      set: (text: string) => {
        css = text;
        sheet.replaceSync(text);
      },
    });
    return standIn;
  } as typeof doc.createElement;
  try {
    term.open(parent);
  } finally {
    // Removing the own property uncovers Document.prototype.createElement.
    delete (doc as { createElement?: unknown }).createElement;
  }
  return () => {
    doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => !sheets.includes(s));
  };
}
