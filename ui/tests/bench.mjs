// Times the UI in headless Chromium for `cargo xtask bench` (one JSON
// object of milliseconds on stdout), against a running `capsem ui`:
//
//   CAPSEM_UI_LOGIN_URL=... CAPSEM_UI_SANDBOX=bench-ui CAPSEM_UI_NET_ROWS=10000 \
//   CAPSEM_UI_RUNS=5 node tests/bench.mjs
//
// - sandboxes_view_ms: navigation start to the Sandboxes view with its
//   sessions table filled (Chromium's performance.now()), each a reload;
// - network_view_ms: navigation start to the Network view of the sandbox
//   holding at least CAPSEM_UI_NET_ROWS records;
// - keystroke_ms: a key pressed in the browser terminal to its echo shown.
import { chromium } from 'playwright-core';

const env = (/** @type {string} */ name) => {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name}`);
  return value;
};
const LOGIN_URL = env('CAPSEM_UI_LOGIN_URL');
const SANDBOX = env('CAPSEM_UI_SANDBOX');
const NET_ROWS = Number(env('CAPSEM_UI_NET_ROWS'));
const RUNS = Number(env('CAPSEM_UI_RUNS'));
const KEYSTROKES = 30;
const ORIGIN = new URL(LOGIN_URL).origin;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-gpu'],
});
const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
await page.goto(LOGIN_URL);
await page.getByRole('heading', { name: 'Sandboxes', exact: true }).waitFor({ timeout: 60_000 });

/**
 * ms from navigation start until `ready(arg)` holds in the page.
 * @param {string} url
 * @param {(arg: number) => boolean} ready
 * @param {number} [arg]
 */
async function timeTo(url, ready, arg = 0) {
  await page.goto('about:blank');
  await page.goto(url, { waitUntil: 'commit' });
  await page.waitForFunction(ready, arg, { timeout: 120_000, polling: 'raf' });
  return page.evaluate(() => performance.now());
}

const sandboxes = [];
const network = [];
for (let i = 0; i < RUNS; i++) {
  sandboxes.push(
    await timeTo(`${ORIGIN}/#/`, () =>
      document.querySelectorAll('table[aria-labelledby="sessions-heading"] tbody tr').length >= 100,
    ),
  );
  network.push(
    await timeTo(
      `${ORIGIN}/#/network/${encodeURIComponent(SANDBOX)}`,
      (/** @type {number} */ rows) => Number(document.querySelector('[aria-label="Network records"]')?.getAttribute('aria-rowcount') ?? 0) > rows,
      NET_ROWS,
    ),
  );
}

await page.goto(`${ORIGIN}/#/terminal/${encodeURIComponent(SANDBOX)}`);
const screen = page.locator('[role=tabpanel]:not([hidden]) .xterm-rows');
// Rows are divs and spaces non-breaking: the prompt's text, not its line.
await page.waitForFunction(
  () => (document.querySelector('[role=tabpanel]:not([hidden]) .xterm-rows')?.textContent ?? '').replace(/\u00a0/g, ' ').includes('# '),
  null,
  { timeout: 60_000 },
);
const xs = async () => ((await screen.textContent()) ?? '').split('x').length - 1;
const keystroke = [];
for (let i = 0; i < KEYSTROKES; i++) {
  const before = await xs();
  const sent = performance.now();
  await page.keyboard.press('x');
  while ((await xs()) <= before) await new Promise((resolve) => setImmediate(resolve));
  keystroke.push(performance.now() - sent);
}
await page.keyboard.press('Control+U');
await browser.close();
console.log(JSON.stringify({ sandboxes_view_ms: sandboxes, network_view_ms: network, keystroke_ms: keystroke }));
