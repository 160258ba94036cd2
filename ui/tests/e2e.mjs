// Drives the UI in headless Chromium as a user would, against a running
// `capsem ui`:
//
//   CAPSEM_UI_LOGIN_URL='http://127.0.0.1:PORT/login?code=...' \
//   CAPSEM_UI_LOCKED_KEY=vm.memory_mib \
//   CAPSEM_UI_XSS_SESSION=1917c73d \
//   CAPSEM_UI_TTY_SESSION=2a4b1c9e \
//   CAPSEM_UI_SCREENSHOTS=/tmp/shots node tests/e2e.mjs
//
// CAPSEM_UI_LOCKED_KEY is a setting the service's corporate file locks;
// CAPSEM_UI_XSS_SESSION the id (or a prefix) of a session whose command
// holds `<img src=x onerror=alert(1)>`; CAPSEM_UI_TTY_SESSION one that
// ran on a terminal and printed `hello-42-replay`. The run sets vm.cpus to
// 1 in the user's settings.
//
// Exits 1 with what was expected and what the page showed at the first
// step that fails. Leaves no sandbox behind when it passes.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/** @param {string} name @param {string} what */
function required(name, what) {
  const value = process.env[name];
  if (!value) {
    console.error(`e2e: set ${name} to ${what}`);
    process.exit(2);
  }
  return value;
}

const XSS_TEXT = '<img src=x onerror=alert(1)>';
const LOGIN_URL = required('CAPSEM_UI_LOGIN_URL', 'the signed-in URL that `capsem ui` prints');
const LOCKED_KEY = required('CAPSEM_UI_LOCKED_KEY', 'a setting the corporate file locks');
const XSS_SESSION = required('CAPSEM_UI_XSS_SESSION', `the id of a session whose command holds ${XSS_TEXT}`);
const REPLAY_TEXT = 'hello-42-replay';
const TTY_SESSION = required('CAPSEM_UI_TTY_SESSION', `the id of a terminal session that printed ${REPLAY_TEXT}`);
const SHOTS = process.env.CAPSEM_UI_SCREENSHOTS;
const ORIGIN = new URL(LOGIN_URL).origin;
const NAME = 'ui-e2e';
const VIEWPORT = { width: 1280, height: 800 };

const log = (/** @type {string} */ line) => console.log(`e2e: ${line}`);

class StepFailed extends Error {
  /** @param {string} expected @param {string} shown */
  constructor(expected, shown) {
    super(`expected ${expected}\n     the page showed: ${shown}`);
  }
}

if (SHOTS) await mkdir(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-gpu'],
});
// One context: a second page shares the first's sign-in cookie.
const context = await browser.newContext({ viewport: VIEWPORT });

/** Things that fail the run whenever they happen, on any page. */
const problems = /** @type {string[]} */ ([]);
/** @param {import('playwright-core').Page} p @param {string} label */
function watch(p, label) {
  p.on('dialog', (dialog) => {
    problems.push(`${label}: a ${dialog.type()} dialog: ${dialog.message()}`);
    void dialog.dismiss();
  });
  p.on('console', (msg) => {
    if (/content security policy|refused to/i.test(msg.text())) problems.push(`${label}: console ${msg.type()}: ${msg.text()}`);
    else if (msg.type() === 'error') log(`${label}: console error: ${msg.text()}`);
  });
  p.on('pageerror', (error) => problems.push(`${label}: uncaught: ${error.message}`));
}

const page = await context.newPage();
watch(page, 'page 1');
/** The second page, once open: screenshot too if the run fails. */
/** @type {import('playwright-core').Page | undefined} */
let page2;

/** @param {string} file */
async function screenshot(file, on = page) {
  if (!SHOTS) return;
  await on.screenshot({ path: join(SHOTS, file) });
  log(`saved ${join(SHOTS, file)}`);
}

/** What a user sees, in short: the URL, the alerts and the main text. */
async function shown(on = page) {
  const alerts = await on.getByRole('alert').allInnerTexts().catch(() => []);
  const main = await on.locator('body').innerText().catch(() => '(no page)');
  const squeezed = main.replace(/\s+/g, ' ').trim().slice(0, 600);
  return `${on.url()} ${alerts.length ? `alerts: ${JSON.stringify(alerts)} ` : ''}text: "${squeezed}"`;
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
    await new Promise((resolve) => setTimeout(resolve, 250));
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

/** @param {string} text */
const escapeRegExp = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The inline error of a setting's row, if it shows one. */
async function inlineError(/** @type {import('playwright-core').Locator} */ form) {
  const alert = form.getByRole('alert');
  return (await alert.count()) ? (await alert.innerText()).trim() : undefined;
}

/**
 * Saves `value` through vm.cpus's control; resolves once the answer is in.
 * @param {string} value
 */
async function saveCpus(value) {
  const form = page.getByRole('form', { name: 'Setting vm.cpus', exact: true });
  await page.getByLabel('vm.cpus', { exact: true }).fill(value);
  await form.getByRole('button', { name: 'Save vm.cpus', exact: true }).click();
  await until('the answer to saving vm.cpus', 15, async () => (await form.getAttribute('aria-busy')) === 'false');
  return form;
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

  log(`finding session ${XSS_SESSION} in Recent sessions`);
  await page.getByRole('searchbox', { name: 'Filter sessions by id or command' }).fill(XSS_SESSION);
  const sessionRow = page
    .getByRole('table', { name: 'Recent sessions' })
    .getByRole('row')
    .filter({ has: page.getByRole('rowheader', { name: new RegExp(`^${escapeRegExp(XSS_SESSION)}`) }) });
  await until(`a row for session ${XSS_SESSION} in Recent sessions`, 30, async () => (await sessionRow.count()) === 1);
  const command = await sessionRow.getByRole('cell').first().innerText();
  if (!command.includes(XSS_TEXT)) {
    throw new StepFailed(`the command of ${XSS_SESSION} to hold the text ${XSS_TEXT}`, `command: ${JSON.stringify(command)}`);
  }
  if (!(await page.getByText(XSS_TEXT).first().isVisible())) {
    throw new StepFailed(`the text ${XSS_TEXT} to be visible`, await shown());
  }
  const images = await page.locator('img[src="x"]').count();
  if (images) throw new StepFailed('no <img src="x"> in the document', `${images} of them`);
  if (problems.length) throw new StepFailed('no dialog, CSP violation or uncaught error', problems.join('\n'));
  log(`its command shows as text: ${JSON.stringify(command)}; no img element, no dialog`);
  log(`opening the page of terminal session ${TTY_SESSION}`);
  await page.getByRole('searchbox', { name: 'Filter sessions by id or command' }).fill(TTY_SESSION);
  const ttyRow = page
    .getByRole('table', { name: 'Recent sessions' })
    .getByRole('row')
    .filter({ has: page.getByRole('rowheader', { name: new RegExp(`^${escapeRegExp(TTY_SESSION)}`) }) });
  await until(`a row for session ${TTY_SESSION}`, 30, async () => (await ttyRow.count()) === 1);
  await ttyRow.getByRole('link').first().click();
  const phaseRows = page.getByRole('table', { name: 'Phases' }).getByRole('row');
  await until('the session page with its phases', 30, async () =>
    (await page.getByRole('heading', { name: /^Session / }).isVisible()) && (await phaseRows.count()) > 2,
  );
  const commands = (await page.getByRole('table', { name: 'Commands' }).innerText()).replace(/\s+/g, ' ');
  if (!commands.includes('started') || !commands.includes('exited')) {
    throw new StepFailed("the Commands table to show the command's start and end", commands);
  }
  log(`${await phaseRows.count() - 1} phases; commands: ${JSON.stringify(commands.slice(0, 160))}`);
  const replayed = async () => (await page.locator('.player .xterm-rows').innerText()).includes(REPLAY_TEXT);
  const replayText = async () => `replay: ${JSON.stringify(await page.locator('.player .xterm-rows').innerText().catch(() => ''))}`;
  await until('the transcript to load', 30, () => page.getByRole('button', { name: 'Show all' }).isEnabled());
  await page.getByLabel('Speed').selectOption('16');
  await page.getByRole('button', { name: 'Play' }).click();
  await until(`the replay at 16× to show ${REPLAY_TEXT}`, 60, replayed, replayText);
  await page.getByRole('button', { name: 'Restart' }).click();
  if (await replayed()) throw new StepFailed('Restart to clear the terminal', await replayText());
  await page.getByRole('button', { name: 'Show all' }).click();
  await until(`Show all to show ${REPLAY_TEXT} at once`, 10, replayed, replayText);
  log('the transcript replays: played at 16×, restarted, shown all at once');
  await page.getByRole('heading', { name: /^Session / }).scrollIntoViewIfNeeded();
  await screenshot('session.png');

  log(`the page of session ${XSS_SESSION} shows its command as text`);
  await page.evaluate((id) => (location.hash = `#/session/${id}`), XSS_SESSION);
  await until(`the command ${XSS_TEXT} on its page`, 30, () => page.getByText(XSS_TEXT).first().isVisible());
  if (await page.locator('img[src="x"]').count()) throw new StepFailed('no <img src="x"> on the session page', await shown());
  await page.getByRole('link', { name: 'Sandboxes', exact: true }).click();
  await until('the Sandboxes view again', 30, () => page.getByRole('searchbox', { name: 'Filter sessions by id or command' }).isVisible());
  await page.getByRole('searchbox', { name: 'Filter sessions by id or command' }).fill('');

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

  // A reload attaches to the same shell: its output is shown again and
  // its variables are still set.
  await typeLine('kept=$((6*7))');
  await page.reload();
  await until(`the reloaded page to show ${echoed} again`, 30, async () => (await screenLines()).includes(echoed), screenText);
  await page.locator('[role=tabpanel]:not([hidden]) .xterm').click();
  await typeLine('echo kept-$kept');
  await until('the same shell to answer kept-42', 30, async () => (await screenLines()).includes('kept-42'), screenText);
  log(`after a reload, the same shell: ${echoed} shown again, kept-42`);

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

  log(`opening a second page on the Network view of ${NAME}`);
  const net = await context.newPage();
  page2 = net;
  watch(net, 'page 2');
  await net.goto(`${ORIGIN}/#/network/${NAME}`);
  await until(`the second page to follow the network activity of ${NAME}`, 30, () =>
    net.getByText('Following', { exact: true }).isVisible(), () => shown(net));
  let navigations = 0;
  net.on('framenavigated', (frame) => {
    if (frame === net.mainFrame()) navigations++;
  });
  await net.evaluate(() => (document.documentElement.dataset.e2e = 'first document'));
  const sameDocument = async () =>
    navigations === 0 && (await net.evaluate(() => document.documentElement.dataset.e2e)) === 'first document';

  log('typing `curl -sS https://denied.test` in the first page\'s terminal');
  await page.bringToFront();
  await page.locator('[role=tabpanel]:not([hidden]) .xterm').click();
  await typeLine('curl -sS https://denied.test');
  const deniedRow = net
    .getByRole('row')
    .filter({ has: net.getByRole('cell', { name: 'denied.test', exact: true }) })
    .filter({ has: net.getByRole('cell', { name: 'denied', exact: true }) });
  await until('a row for denied.test with verdict denied on the second page', 30, async () =>
    (await deniedRow.count()) > 0, () => shown(net));
  if (!(await sameDocument())) {
    throw new StepFailed('the second page to show it without navigating', `${navigations} navigation(s), now at ${net.url()}`);
  }
  log(`the second page shows denied.test denied: ${JSON.stringify((await deniedRow.first().innerText()).replace(/\s+/g, ' '))}`);
  await screenshot('network.png', net);

  log('setting vm.cpus to 1 on the Settings page');
  await page.getByRole('link', { name: 'Settings', exact: true }).click();
  const cpus = page.getByLabel('vm.cpus', { exact: true });
  await until('the control of vm.cpus', 30, () => cpus.isVisible());
  let cpusForm = await saveCpus('1');
  const savedAsUser = async () =>
    (await cpus.inputValue()) === '1' &&
    (await cpusForm.innerText()).includes('source: user') &&
    (await inlineError(cpusForm)) === undefined;
  if (!(await savedAsUser())) throw new StepFailed('vm.cpus to show 1 with source user', await cpusForm.innerText());
  log('vm.cpus is 1, source user');

  const locked = page.getByLabel(LOCKED_KEY, { exact: true });
  const lockedForm = page.getByRole('form', { name: `Setting ${LOCKED_KEY}`, exact: true });
  if (!(await locked.isDisabled()) || !(await lockedForm.innerText()).includes('locked by your organization')) {
    throw new StepFailed(`the control of ${LOCKED_KEY} disabled and marked locked by your organization`, await lockedForm.innerText());
  }
  log(`${LOCKED_KEY} is disabled and says it is locked by your organization`);

  cpusForm = await saveCpus('999');
  const refusal = await until('the server\'s error next to vm.cpus', 15, () => inlineError(cpusForm));
  const alerts = await page.getByRole('alert').count();
  if (alerts !== 1 || (await cpus.inputValue()) !== '999') {
    throw new StepFailed('the one error inline, the field still holding 999', `${alerts} alert(s), field ${JSON.stringify(await cpus.inputValue())}`);
  }
  log(`999 is refused inline: ${JSON.stringify(refusal)}`);
  await cpusForm.scrollIntoViewIfNeeded();
  await screenshot('settings.png');
  cpusForm = await saveCpus('1');
  if (!(await savedAsUser())) throw new StepFailed('vm.cpus back at 1 with source user and no error', await cpusForm.innerText());
  log('vm.cpus is back at 1');

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

  await until('the second page to say the sandbox stopped', 60, () =>
    net.getByText('The sandbox stopped; no more records.').isVisible(), () => shown(net));
  if (!(await sameDocument())) throw new StepFailed('the second page never to navigate', `${navigations} navigation(s)`);
  log('the second page says the sandbox stopped; no more records');

  if (problems.length) throw new StepFailed('no dialog, CSP violation or uncaught error', problems.join('\n'));
  log('PASS');
  await browser.close();
} catch (e) {
  console.log(`e2e: FAIL: ${e instanceof StepFailed ? e.message : e instanceof Error ? e.stack : String(e)}`);
  if (problems.length) console.log(`e2e: also seen:\n  ${problems.join('\n  ')}`);
  await screenshot('failure.png').catch(() => {});
  if (page2) await screenshot('failure-2.png', page2).catch(() => {});
  await browser.close();
  process.exit(1);
}
