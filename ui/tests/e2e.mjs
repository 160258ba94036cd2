// Drives the UI in headless Chromium as a user would, against a running
// `capsem ui`:
//
//   CAPSEM_UI_LOGIN_URL='http://127.0.0.1:PORT/login?token=...' \
//   CAPSEM_UI_SCREENSHOTS=/tmp/shots node tests/e2e.mjs
//
// Exits 1 with what was expected and what the page showed at the first
// step that fails. Leaves no sandbox behind when it passes.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const LOGIN_URL = process.env.CAPSEM_UI_LOGIN_URL;
const SHOTS = process.env.CAPSEM_UI_SCREENSHOTS;
const NAME = 'ui-e2e';
const VIEWPORT = { width: 1280, height: 800 };

const log = (/** @type {string} */ line) => console.log(`e2e: ${line}`);

class StepFailed extends Error {
  /** @param {string} expected @param {string} shown */
  constructor(expected, shown) {
    super(`expected ${expected}\n     the page showed: ${shown}`);
  }
}

if (!LOGIN_URL) {
  console.error('e2e: set CAPSEM_UI_LOGIN_URL to the signed-in URL that `capsem ui` prints');
  process.exit(2);
}
if (SHOTS) await mkdir(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-gpu'],
});
const page = await browser.newPage({ viewport: VIEWPORT });

/** Things that fail the run whenever they happen. */
const problems = /** @type {string[]} */ ([]);
page.on('dialog', (dialog) => {
  problems.push(`a ${dialog.type()} dialog: ${dialog.message()}`);
  void dialog.dismiss();
});
page.on('console', (msg) => {
  if (/content security policy|refused to/i.test(msg.text())) problems.push(`console ${msg.type()}: ${msg.text()}`);
  else if (msg.type() === 'error') log(`console error: ${msg.text()}`);
});
page.on('pageerror', (error) => problems.push(`uncaught: ${error.message}`));

/** @param {string} file */
async function screenshot(file) {
  if (!SHOTS) return;
  await page.screenshot({ path: join(SHOTS, file) });
  log(`saved ${join(SHOTS, file)}`);
}

/** What a user sees, in short: the URL, the alerts and the main text. */
async function shown() {
  const alerts = await page.getByRole('alert').allInnerTexts().catch(() => []);
  const main = await page.locator('body').innerText().catch(() => '(no page)');
  const squeezed = main.replace(/\s+/g, ' ').trim().slice(0, 600);
  return `${page.url()} ${alerts.length ? `alerts: ${JSON.stringify(alerts)} ` : ''}text: "${squeezed}"`;
}

/**
 * Polls `probe` until it returns something other than undefined/false.
 * @template T
 * @param {string} expected
 * @param {number} seconds
 * @param {() => Promise<T | undefined | false>} probe
 * @param {() => Promise<string>} [describe]
 * @returns {Promise<T>}
 */
async function until(expected, seconds, probe, describe = shown) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new StepFailed(`${expected} (within ${seconds} s)`, await describe());
    await page.waitForTimeout(250);
  }
}

const row = () => page.getByRole('row').filter({ has: page.getByRole('rowheader', { name: NAME, exact: true }) });
const stateOf = async () => ((await row().count()) ? (await row().locator('td').first().innerText()).trim() : undefined);

const terminalRows = () => page.locator('[role=tabpanel]:not([hidden]) .xterm-rows');
/** The visible lines of the shown terminal. */
async function screenLines() {
  const text = await terminalRows().innerText();
  return text.replace(/\u00a0/g, ' ').split('\n').map((l) => l.trimEnd());
}
const screenText = async () => `terminal: ${JSON.stringify((await screenLines().catch(() => [])).filter(Boolean).slice(-12))}`;

/** @param {string} line */
async function typeLine(line) {
  await page.keyboard.type(line);
  await page.keyboard.press('Enter');
}

/**
 * Types `stty size` (tagged with a comment, to tell its answer from an
 * earlier one) and reads the "ROWS COLS" printed after it.
 * @param {string} tag
 * @returns {Promise<{rows: number, cols: number}>}
 */
async function sttySize(tag) {
  const command = `stty size #${tag}`;
  await typeLine(command);
  return until(`\`${command}\` to print "ROWS COLS"`, 30, async () => {
    const lines = await screenLines();
    const at = lines.findLastIndex((l) => l.endsWith(command));
    const answer = at >= 0 && lines.slice(at + 1).find((l) => /^\d+ \d+$/.test(l));
    if (!answer) return undefined;
    const [rows, cols] = answer.split(' ').map(Number);
    return { rows, cols };
  }, screenText);
}

async function removeSandbox() {
  await row().getByRole('button', { name: `Remove ${NAME}`, exact: true }).click();
  const dialog = page.getByRole('dialog', { name: `Remove ${NAME}?` });
  await until(`a confirmation dialog "Remove ${NAME}?"`, 10, () => dialog.isVisible());
  await dialog.getByRole('button', { name: 'Remove', exact: true }).click();
  await until(`the row ${NAME} to disappear`, 120, async () => (await row().count()) === 0);
}

try {
  log(`opening the login URL`);
  await page.goto(LOGIN_URL);
  await until('to land on / showing the Sandboxes view', 30, async () =>
    new URL(page.url()).pathname === '/' && page.getByRole('heading', { name: 'Sandboxes', exact: true }).isVisible(),
  );
  await until('the sandbox list to load', 30, async () => !(await page.getByText('Loading…').isVisible()));
  log('signed in: the Sandboxes view is shown');

  if (await row().count()) {
    log(`removing ${NAME}, left over from an earlier run`);
    await removeSandbox();
  }

  log(`creating ${NAME} from the form`);
  await page.getByRole('textbox', { name: /^Name/ }).fill(NAME);
  await page.getByRole('button', { name: 'Create', exact: true }).click();
  const state = await until(`a row ${NAME} in state running`, 120, async () => {
    const failure = page.locator('form').getByRole('alert');
    if (await failure.count()) throw new StepFailed(`${NAME} to be created`, await failure.innerText());
    return (await stateOf()) === 'running' && 'running';
  }).catch((e) => {
    if (e instanceof StepFailed) throw e;
    throw new StepFailed(`a row ${NAME} in state running`, String(e));
  });
  log(`${NAME} is ${state}`);
  await screenshot('sandboxes.png');

  log(`opening its terminal`);
  await row().getByRole('link', { name: `Terminal on ${NAME}`, exact: true }).click();
  await until('a terminal showing a prompt', 30, async () => (await screenLines()).some((l) => l.trim() !== ''), screenText);
  await page.locator('[role=tabpanel]:not([hidden]) .xterm').click();

  await typeLine('echo hi-$RANDOM');
  const echoed = await until('the output line hi-<digits>', 30, async () => {
    const line = (await screenLines()).find((l) => /^hi-\d+$/.test(l));
    return line;
  }, screenText);
  log(`the shell answered ${echoed}`);

  const first = await sttySize('before');
  const shownRows = await terminalRows().locator(':scope > div').count();
  if (first.rows !== shownRows) {
    throw new StepFailed(`stty's rows to be the terminal's ${shownRows} rows`, `stty size: ${first.rows} ${first.cols}`);
  }
  log(`stty size: ${first.rows} ${first.cols}`);
  await screenshot('terminal.png');

  await page.setViewportSize({ width: 900, height: 600 });
  await until('the terminal to be resized to the smaller window', 15, async () =>
    (await terminalRows().locator(':scope > div').count()) !== shownRows, screenText);
  const second = await sttySize('after');
  if (second.rows === first.rows && second.cols === first.cols) {
    throw new StepFailed('a different `stty size` after resizing the window to 900x600', `${second.rows} ${second.cols} both times`);
  }
  log(`after resizing to 900x600, stty size: ${second.rows} ${second.cols}`);
  await page.setViewportSize(VIEWPORT);

  log(`opening the sandbox page of ${NAME}`);
  await page.getByRole('link', { name: 'Sandboxes', exact: true }).click();
  await row().getByRole('link', { name: NAME, exact: true }).click();
  await until(`the page of ${NAME} with its log`, 30, async () =>
    (await page.getByRole('heading', { name: NAME, exact: true }).isVisible()) &&
    (await page.locator('pre').innerText()).trim() !== '',
  );
  await screenshot('sandbox.png');

  if (problems.length) throw new StepFailed('no dialog, CSP violation or uncaught error', problems.join('\n'));
  log('no dialog, CSP violation or uncaught error so far');

  log(`removing ${NAME}`);
  await page.getByRole('link', { name: 'Sandboxes', exact: true }).click();
  await until(`the row ${NAME}`, 30, async () => (await row().count()) === 1);
  await removeSandbox();
  log(`${NAME} is gone`);

  if (problems.length) throw new StepFailed('no dialog, CSP violation or uncaught error', problems.join('\n'));
  log('PASS');
  await browser.close();
} catch (e) {
  console.log(`e2e: FAIL: ${e instanceof StepFailed ? e.message : e instanceof Error ? e.stack : String(e)}`);
  if (problems.length) console.log(`e2e: also seen:\n  ${problems.join('\n  ')}`);
  await screenshot('failure.png').catch(() => {});
  await browser.close();
  process.exit(1);
}
