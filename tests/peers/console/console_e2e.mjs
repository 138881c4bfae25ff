// End-to-end test of the iotsync web console in a real browser (Debian's Chromium driven
// by playwright-core). Driven step by step by crates/iotsync-server/tests/console_e2e.rs:
// it reads one JSON command per line on stdin and answers one JSON line on stdout
// ({"ok":true,...} or {"ok":false,"error":...}); logs go to stderr.
//
// Env: BASE_URL (the API listener), TOKEN (operator token), SCREENSHOT_DIR, CHROMIUM.

import { createRequire } from 'node:module';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const BASE = process.env.BASE_URL;
const TOKEN = process.env.TOKEN;
const SHOTS = process.env.SCREENSHOT_DIR;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TIMEOUT = 15000;

const log = (...a) => console.error('[console-e2e]', ...a);
const fail = (msg) => { throw new Error(msg); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let browser, context, page, userDir;
const external = [];
const pageErrors = [];
const consoleErrors = [];
const shots = [];

/** Fails if the page prints a placeholder (null, undefined, NaN, [object …]) outside code. */
async function noPlaceholder(where) {
  const found = await page.evaluate(() => {
    // Text node by text node (a printed null is a node of its own), outside code.
    const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
      if (n.parentElement && n.parentElement.closest('pre, code, script, style')) continue;
      if (/\b(null|undefined|NaN)\b|\[object \w+\]/.test(n.nodeValue)) {
        return `${n.parentElement ? n.parentElement.tagName : ''}: ${n.nodeValue.slice(0, 80)}`;
      }
    }
    return null;
  });
  if (found) fail(`${where}: the page shows placeholder text: …${found}…`);
}

async function shot(name, fullPage = true) {
  await noPlaceholder(name);
  const file = path.join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage });
  shots.push(file);
  return file;
}

/** Waits until fn() returns a truthy value (polling), else fails with `what`. */
async function until(what, fn, timeout = TIMEOUT) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    await sleep(150);
  }
  fail(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

async function rest(method, p, body) {
  const r = await fetch(`${BASE}/api/v1${p}`, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

const heading = (name) => page.getByRole('heading', { name, exact: true, level: 1 });
const alertText = async (scope) => (await scope.locator('.msg.error').first().textContent()) || '';

async function expectVisible(locator, what) {
  try {
    await locator.first().waitFor({ state: 'visible', timeout: TIMEOUT });
  } catch (_) {
    fail(`${what} is not visible`);
  }
}

async function noHorizontalOverflow(where) {
  const [sw, iw] = await page.evaluate(() => [document.scrollingElement.scrollWidth, window.innerWidth]);
  if (sw > iw + 1) fail(`${where}: the page scrolls sideways at phone width (${sw} > ${iw})`);
}

async function groupMetric(appKey, metric) {
  const el = page.locator(`section.group-card[data-group="${appKey}"] [data-metric="${metric}"]`);
  if ((await el.count()) === 0) return null;
  const t = (await el.textContent()) || '';
  return Number(t.replace(/[^0-9.]/g, ''));
}

/** The datetime-local value (the page's local time, to the second) of `ms`. */
const localValue = (ms) => page.evaluate((t) => {
  const d = new Date(t);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}, ms);

const ctx = {};

const steps = {
  async start() {
    userDir = mkdtempSync(path.join(tmpdir(), 'iotsync-console-chromium-'));
    mkdirSync(SHOTS, { recursive: true });
    // A fresh temporary profile every run.
    context = await chromium.launchPersistentContext(userDir, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 900 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
        '--no-first-run', '--disable-component-update', '--disable-sync'],
    });
    browser = context;
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: BASE });
    page = context.pages()[0] || await context.newPage();
    page.setDefaultTimeout(TIMEOUT);
    page.on('request', (r) => {
      const u = r.url();
      if (!u.startsWith(BASE) && !u.startsWith('data:')) external.push(u);
    });
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => {
      // The API's intentional 4xx answers are logged by Chromium as failed loads; all
      // else (CSP violations, script errors) counts.
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) consoleErrors.push(m.text());
    });
    return { version: context.browser() ? context.browser().version() : 'chromium' };
  },

  async sign_in_and_projects() {
    await page.goto(BASE);
    await expectVisible(heading('Sign in to iotsync'), 'the sign-in page');
    await shot('01-sign-in');
    const token = page.getByLabel('Operator token');
    await token.fill('not-the-operator-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    const err = await until('the sign-in error', async () => alertText(page));
    if (!err.includes('operator token is not valid')) fail(`unexpected sign-in error: ${err}`);
    if ((await token.getAttribute('aria-invalid')) !== 'true') fail('the token field is not marked invalid');
    await shot('02-sign-in-error');
    await token.fill(TOKEN);
    await token.press('Enter'); // keyboard submit
    await expectVisible(heading('Project Management'), 'Project Management after sign-in');
    const cookies = await context.cookies();
    const c = cookies.find((x) => x.name === 'iotsync_session');
    if (!c) fail('no session cookie');
    if (!c.httpOnly || c.sameSite !== 'Strict') fail(`session cookie flags: ${JSON.stringify(c)}`);

    // Create two projects; the first one's secret is shown once.
    await page.getByLabel('Project name').fill('Greenhouse');
    await page.getByRole('button', { name: 'Create project' }).click();
    const panel = page.locator('section.secret');
    await expectVisible(panel, 'the new credentials panel');
    const appSecret = (await panel.locator('[data-secret=appSecret]').textContent()).trim();
    const appKey = (await panel.locator('[data-secret=appKey]').textContent()).trim();
    if (appSecret.length !== 32) fail(`appSecret shown: ${appSecret}`);
    await panel.getByRole('button', { name: 'Copy AppSecret' }).click();
    await until('the Copied confirmation', async () => (await panel.getByRole('button', { name: 'Copy AppSecret' }).textContent()) === 'Copied');
    await shot('03-project-created');
    await panel.getByRole('button', { name: 'I have saved the AppSecret' }).click();
    if (await panel.count()) fail('the credentials panel stayed');
    const row = page.locator('#projects-table tbody tr', { hasText: 'Greenhouse' });
    const projectId = (await row.locator('td').nth(1).textContent()).trim();

    await page.getByLabel('Project name').fill('Warehouse');
    await page.getByRole('button', { name: 'Create project' }).click();
    await expectVisible(page.locator('section.secret', { hasText: 'Warehouse' }), 'the second project');
    await page.getByRole('button', { name: 'I have saved the AppSecret' }).click();
    await until('two projects listed', async () => (await page.locator('#projects-table tbody tr').count()) === 2);

    // Search.
    await page.getByLabel('Search projects').fill('green');
    await page.getByRole('button', { name: 'Search', exact: true }).click();
    await until('the search result', async () => {
      const rows = page.locator('#projects-table tbody tr');
      return (await rows.count()) === 1 && (await rows.first().textContent()).includes('Greenhouse');
    });
    await shot('04-projects-search');
    await page.getByRole('button', { name: 'Clear' }).click();
    await until('the full list again', async () => (await page.locator('#projects-table tbody tr').count()) === 2);

    // Rotate credentials: a confirmation dialog, then the new secret once.
    await page.locator('#projects-table tbody tr', { hasText: 'Greenhouse' }).getByRole('button', { name: 'Rotate credentials' }).click();
    const dlg = page.getByRole('dialog');
    await expectVisible(dlg, 'the rotate confirmation');
    await shot('05-rotate-confirm', false);
    await dlg.getByRole('button', { name: 'Rotate AppSecret' }).click();
    const rotated = page.locator('section.secret', { hasText: 'New credentials' });
    await expectVisible(rotated, 'the rotated credentials');
    const newSecret = (await rotated.locator('[data-secret=appSecret]').textContent()).trim();
    if (newSecret === appSecret || newSecret.length !== 32) fail('rotation did not show a new secret');
    await rotated.getByRole('button', { name: 'I have saved the AppSecret' }).click();
    Object.assign(ctx, { projectId, appKey });
    return { projectId, appKey, rotated: true };
  },

  async project_home() {
    await page.locator('#projects-table').getByRole('link', { name: 'Greenhouse', exact: true }).click();
    await expectVisible(heading('Greenhouse'), 'the project home');
    const prodForm = page.getByRole('form', { name: 'Add product' });
    // A rule violation: the API's own message, the field marked.
    await prodForm.getByLabel('Product name').fill('Lamp');
    await prodForm.getByLabel('Device type').fill('Light');
    await prodForm.getByLabel('ProductKey (optional)').fill('bad key!');
    await prodForm.getByRole('button', { name: 'Add product' }).click();
    const section = page.locator('section', { has: page.getByRole('heading', { name: 'Products', exact: true }) });
    const err = await until('the productKey error', async () => alertText(section));
    if (!err.includes('productKey') || !err.includes('invalid_argument')) fail(`product error: ${err}`);
    if ((await prodForm.getByLabel('ProductKey (optional)').getAttribute('aria-invalid')) !== 'true') fail('productKey not marked invalid');
    await shot('06-product-error');
    await prodForm.getByLabel('ProductKey (optional)').fill('');
    await prodForm.getByRole('button', { name: 'Add product' }).click();
    await until('Lamp listed', async () => (await page.locator('table', { hasText: 'Lamp' }).count()) > 0);
    const f2 = page.getByRole('form', { name: 'Add product' });
    await f2.getByLabel('Product name').fill('Plug');
    await f2.getByLabel('Device type').fill('Socket');
    await f2.getByRole('button', { name: 'Add product' }).click();
    await until('Plug listed', async () => (await page.locator('table', { hasText: 'Plug' }).count()) > 0);

    const devForm = page.getByRole('form', { name: 'Add device' });
    await devForm.getByLabel('Product').selectOption({ label: await devForm.getByLabel('Product').locator('option', { hasText: 'Lamp' }).textContent() });
    await devForm.getByLabel('Device name').fill('lamp-01');
    await devForm.getByRole('button', { name: 'Add device' }).click();
    await expectVisible(page.getByText('Its DeviceSecret is shown only now'), 'the device secret');
    const devRow = page.locator('tr', { hasText: 'lamp-01' }).first();
    const status = (await devRow.locator('.badge').textContent()).trim();
    if (status !== 'inactive') fail(`new device status: ${status}`);
    const iotId = (await devRow.locator('td').nth(2).textContent()).trim();

    const userForm = page.getByRole('form', { name: 'Add user' });
    await userForm.getByLabel('Login name').fill('ann');
    await userForm.getByLabel('Email').fill('ann@example.test');
    await userForm.getByRole('button', { name: 'Add user' }).click();
    await until('ann listed', async () => (await page.locator('table', { hasText: 'ann@example.test' }).count()) > 0);
    const bindForm = page.getByRole('form', { name: 'Bind a user to a device' });
    await bindForm.getByRole('button', { name: 'Bind' }).click();
    await until('the binding listed', async () => (await page.getByRole('button', { name: /^Unbind ann from lamp-01/ }).count()) === 1);
    await shot('07-project-home');
    Object.assign(ctx, { iotId });
    return { iotId };
  },

  async device_properties_shown() {
    await page.reload();
    await expectVisible(heading('Greenhouse'), 'the project home');
    const cell = page.locator('tr', { hasText: 'lamp-01' }).first().locator('td[data-label="Last properties"]');
    const t = await until('the last properties', async () => {
      const text = await cell.textContent();
      return text.includes('x') && text.includes('= 1') ? text : null;
    });
    return { lastProperties: t };
  },

  async sync_settings({ bound }) {
    await page.goto(`${BASE}/#/projects`);
    await expectVisible(heading('Project Management'), 'Project Management');
    await page.getByRole('link', { name: 'Project Settings of Greenhouse' }).click();
    await expectVisible(heading('Project Settings'), 'Project Settings');
    const tab = page.getByRole('tab', { name: 'Device Data Synchronization' });
    if ((await tab.getAttribute('aria-selected')) !== 'true') fail('the sync tab is not selected');
    await expectVisible(page.locator('#sync-status', { hasText: 'Disabled' }), 'the Disabled status');
    const amqp = page.getByRole('radio', { name: /AMQP 1\.0/ });
    if (!(await amqp.isChecked())) fail('AMQP is not the default method');
    const amqpLabel = await page.locator('label.choice', { has: amqp }).textContent();
    if (!amqpLabel.includes('Recommended')) fail('AMQP is not marked recommended');
    if (!(await page.getByRole('switch', { name: 'Synchronize Plug' }).isDisabled())) fail('product switches usable while sync is off');
    await shot('08-sync-disabled');

    await page.getByRole('button', { name: 'Enable', exact: true }).click();
    await expectVisible(page.locator('#sync-status', { hasText: 'Enabled' }), 'the Enabled status');
    await expectVisible(page.locator('#sync-method', { hasText: 'AMQP 1.0' }), 'the AMQP method');
    for (const name of ['Lamp', 'Plug']) {
      const sw = page.getByRole('switch', { name: `Synchronize ${name}` });
      if (!(await sw.isChecked()) || (await sw.isDisabled())) fail(`${name} is not on after enabling`);
    }

    // A rule violation from a stale page: someone disabled sync meanwhile.
    const r = await rest('POST', `/projects/${ctx.projectId}/sync/disable`, {});
    if (r.status !== 200) fail(`REST disable: ${JSON.stringify(r)}`);
    await page.getByRole('button', { name: 'Disable', exact: true }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Disable' }).click();
    const statusPanel = page.locator('section', { has: page.locator('#sync-title') });
    const ruleErr = await until('the rule error', async () => alertText(statusPanel));
    if (!ruleErr.includes('sync.not_enabled')) fail(`expected sync.not_enabled, got ${ruleErr}`);
    await shot('09-sync-rule-error');
    await page.reload();
    await expectVisible(page.locator('#sync-status', { hasText: 'Disabled' }), 'Disabled after reload');
    await page.getByRole('button', { name: 'Enable', exact: true }).click();
    await expectVisible(page.locator('#sync-status', { hasText: 'Enabled' }), 'Enabled again');

    // Switch one product off; it stays off after a reload.
    const plug = page.getByRole('switch', { name: 'Synchronize Plug' });
    await plug.click();
    await until('Plug off', async () => !(await plug.isChecked()) && !(await plug.isDisabled()));
    await page.reload();
    await expectVisible(page.locator('#sync-status', { hasText: 'Enabled' }), 'Enabled after reload');
    if (await page.getByRole('switch', { name: 'Synchronize Plug' }).isChecked()) fail('Plug is on after reload');
    if (!(await page.getByRole('switch', { name: 'Synchronize Lamp' }).isChecked())) fail('Lamp is off after reload');
    const api = await rest('GET', `/projects/${ctx.projectId}/sync`);
    const plugState = api.body.products.find((p) => p.name === 'Plug');
    if (plugState.enabled !== false) fail(`API says Plug: ${JSON.stringify(plugState)}`);

    // Connection details with copyable samples.
    const conn = page.locator('section', { has: page.locator('#conn-title') });
    const connText = await conn.textContent();
    // The endpoints are the ports the server bound (it was started on port 0).
    for (const url of [bound.amqp, bound.http2]) {
      if (!connText.includes(url)) fail(`the connection details do not show the bound endpoint ${url}`);
    }
    if (/:\/\/[^\s/]+:0(?!\d)/.test(connText)) fail('the connection details show a port 0 endpoint');
    if (!connText.includes(`appKey=${ctx.appKey}`)) fail('the username recipe does not carry the appKey');
    const py = await conn.getByLabel('Python qpid-proton sample', { exact: true }).textContent();
    if (!py.includes('authMode=appkey')) fail('python sample');
    const pyRun = await conn.getByLabel('Python qpid-proton sample command', { exact: true }).textContent();
    if (!pyRun.includes(`IOTSYNC_APP_KEY=${ctx.appKey}`) || !pyRun.includes(`IOTSYNC_ENDPOINT=${bound.amqp}`)) fail(`python sample command: ${pyRun}`);
    const rs = await conn.getByLabel('Rust AMQP sample', { exact: true }).textContent();
    if (!rs.includes('AmqpConsumer::builder()')) fail('the Rust sample is not the SDK example');
    await conn.getByRole('button', { name: 'Copy Python qpid-proton sample', exact: true }).click();
    const clip = await page.evaluate(() => navigator.clipboard.readText());
    if (!clip.includes('from proton.reactor import Container')) fail('the sample was not copied');
    await shot('10-sync-enabled');
    return { plugOff: true };
  },

  async consumer_groups() {
    await page.goto(`${BASE}/#/p/${ctx.projectId}/settings/sync`);
    await expectVisible(page.locator('#sync-status', { hasText: 'Enabled' }), 'the Enabled status');
    const sec = page.locator('#consumer-groups');
    await expectVisible(sec.getByRole('heading', { name: 'Consumer groups' }), 'the Consumer groups section');
    // The default group was declared when sync was enabled.
    await expectVisible(sec.locator('td code', { hasText: ctx.appKey }), 'the default group');
    const form = sec.getByRole('form', { name: 'Declare a consumer group' });
    // A bad topic is refused naming the field.
    await form.getByLabel('Group name').fill('billing');
    await form.getByLabel('Data').selectOption('device');
    await form.getByLabel('Topics (optional)').fill('/${pk}/${dn}/thing/event/property/post\n/${pk}/${dn}/nope');
    await form.getByRole('button', { name: 'Declare group' }).click();
    const err = await until('the topic error', async () => alertText(sec));
    if (!err.includes('topics[1]') || !err.includes('invalid_argument')) fail(`expected a topics[1] error, got ${err}`);
    if ((await form.getByLabel('Topics (optional)').getAttribute('aria-invalid')) !== 'true') fail('the topics field is not marked invalid');
    await form.getByLabel('Topics (optional)').fill('/${pk}/${dn}/thing/event/property/post');
    await form.getByRole('button', { name: 'Declare group' }).click();
    const row = page.locator('#consumer-groups tr', { has: page.locator('code', { hasText: /^billing$/ }) });
    await expectVisible(row, 'the billing row');
    const takes = await row.textContent();
    if (!takes.includes('Device data') || !takes.includes('device.property.post')) fail(`billing takes: ${takes}`);
    let r = await rest('GET', `/projects/${ctx.projectId}/consumer-groups/billing`);
    if (r.status !== 200 || r.body.kinds[0] !== 'device.property.post') fail(`REST billing: ${JSON.stringify(r)}`);
    await shot('10b-consumer-groups');
    // Delete it through the UI.
    await row.getByRole('button', { name: 'Delete consumer group billing' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
    await until('the billing row gone', async () => (await page.locator('#consumer-groups tr', { has: page.locator('code', { hasText: /^billing$/ }) }).count()) === 0);
    r = await rest('GET', `/projects/${ctx.projectId}/consumer-groups/billing`);
    if (r.status !== 404) fail(`billing still there: ${JSON.stringify(r)}`);
    return { declared: 'billing', deleted: 'billing' };
  },

  async api_operations() {
    await page.getByRole('tab', { name: 'API Operations' }).click();
    await expectVisible(page.getByRole('heading', { name: 'User accounts' }), 'the User accounts group');
    const token = page.locator('section[data-group=cloud_token]');
    if (!(await token.textContent()).includes('/cloud/token')) fail('no /cloud/token path');
    if (!(await token.locator('.badge').textContent()).includes('Activated')) fail('cloud token not activated');
    const ua = page.locator('section[data-group=user_account]');
    if ((await ua.locator('.badge').textContent()).trim() !== 'Not activated') fail('user accounts activated by default?');
    const uaText = await ua.textContent();
    if (!uaText.includes('/cloud/account/queryIdentityByPage')) fail('operation path missing');
    await ua.getByRole('switch', { name: 'User accounts service activation' }).click();
    await until('User accounts activated', async () =>
      (await page.locator('section[data-group=user_account] .badge').textContent()).trim() === 'Activated');
    const r = await rest('GET', `/projects/${ctx.projectId}/api-operations`);
    if (!r.body.find((g) => g.group === 'user_account').activated) fail('API does not show the activation');
    // Keyboard: arrow keys move between tabs.
    await page.getByRole('tab', { name: 'API Operations' }).focus();
    await page.keyboard.press('ArrowLeft');
    await expectVisible(page.locator('#sync-title'), 'the sync tab after ArrowLeft');
    await page.getByRole('tab', { name: 'API Operations' }).click();
    await expectVisible(page.locator('section[data-group=user_account]'), 'API Operations again');
    await shot('11-api-operations');
    return { activated: 'user_account' };
  },

  async monitor({ expect, name }) {
    const url = `${BASE}/#/p/${ctx.projectId}/monitoring`;
    if (page.url() !== url) {
      await page.goto(url);
      await expectVisible(heading('Monitoring'), 'the Monitoring page');
    }
    const got = await until(`stacked ${expect}`, async () => {
      const stacked = await groupMetric(ctx.appKey, 'stacked');
      const consumers = await groupMetric(ctx.appKey, 'consumers');
      const ok = expect === 'zero' ? (stacked === null || stacked === 0)
        : expect === 'up' ? stacked >= 1
          : stacked === 0 && consumers >= 1;
      return ok ? { stacked, consumers } : null;
    }, 20000);
    if (expect === 'down') {
      const consumers = page.locator('section', { has: page.locator('#consumers-title') });
      await until('the consumer listed', async () => (await consumers.textContent()).includes('console-e2e'));
      const svgLabel = await page.locator(`section.group-card[data-group="${ctx.appKey}"] svg[role=img]`).first().getAttribute('aria-label');
      if (!svgLabel.startsWith('Stacked messages')) fail(`chart label: ${svgLabel}`);
      // The chart has drawn a line from the polled history.
      const pts = await page.locator(`section.group-card[data-group="${ctx.appKey}"] polyline.line-stacked`).getAttribute('points');
      if (!pts || pts.split(' ').length < 2) fail('no sparkline drawn');
    }
    if (name) await shot(name);
    return got;
  },

  // Sets a stacked threshold the default group is over (it has a message stacked): after
  // the API's error for a bad value, the card turns red with since when.
  async alert_threshold() {
    const card = page.locator(`section.group-card[data-group="${ctx.appKey}"]`);
    await card.locator('details.alert-settings > summary').click();
    const form = card.getByRole('form', { name: `Alert thresholds of ${ctx.appKey}` });
    const stacked = form.getByLabel('Stacked messages above');
    await stacked.fill('-1');
    await form.getByRole('button', { name: 'Save thresholds' }).click();
    const err = await until('the threshold error', async () => alertText(card));
    if (!err.includes('stackedMax')) fail(`threshold error: ${err}`);
    if ((await stacked.getAttribute('aria-invalid')) !== 'true') fail(`stackedMax not marked invalid (${err})`);
    await stacked.fill('0');
    await form.getByRole('button', { name: 'Save thresholds' }).click();
    await until('the saved confirmation', async () => ((await card.locator('.msg.ok').textContent()) || '').includes('alerts when stacked > 0'));
    const state = card.locator('.alert-state.alerting');
    await until('the red alert state', async () => (await card.getAttribute('data-alert')) === 'alerting' && (await state.count()) === 1, 20000);
    const text = await state.textContent();
    if (!/Alerting since \S/.test(text)) fail(`alert text: ${text}`);
    const [color, border] = await card.evaluate((el) => {
      const s = getComputedStyle(el.querySelector('.alert-state.alerting'));
      return [s.color, getComputedStyle(el).borderTopColor];
    });
    // --bad: #b3261e (light) or #ff8a80 (dark): red well above green and blue.
    const red = (c) => { const [r, g, b] = c.match(/\d+/g).map(Number); return r > 150 && r > g + 60 && r > b + 60; };
    if (!red(color) || !red(border)) fail(`alert not red: text ${color}, border ${border}`);
    // The form kept what was typed across the page's refreshes.
    await sleep(2500);
    if ((await stacked.inputValue()) !== '0') fail(`the threshold box lost its value: ${await stacked.inputValue()}`);
    await shot('12b-monitoring-alerting');
    return { text };
  },

  // The group drained: the red state is gone.
  async alert_recovered() {
    const card = page.locator(`section.group-card[data-group="${ctx.appKey}"]`);
    await until('the alert to end', async () => (await card.getAttribute('data-alert')) === 'ok'
      && (await card.locator('.alert-state.alerting').count()) === 0, 20000);
    const text = await card.locator('.alert-state').textContent();
    if (!text.includes('Alerts when stacked > 0')) fail(`alert state: ${text}`);
    return { text };
  },

  // keepAcknowledged on the settings page: on by default, off, on again (the API agrees).
  async keep_acknowledged() {
    const sw = page.getByRole('switch', { name: 'Keep acknowledged messages' });
    await expectVisible(sw, 'the keep acknowledged switch');
    if (!(await sw.isChecked())) fail('keepAcknowledged is not on by default');
    const api = async () => (await rest('GET', `/projects/${ctx.projectId}/sync/backlog-settings`)).body.keepAcknowledged;
    await sw.click();
    await until('keepAcknowledged off', async () => !(await sw.isChecked()) && !(await sw.isDisabled()) && (await api()) === false);
    await shot('10c-backlog-settings');
    await sw.click();
    await until('keepAcknowledged on', async () => (await sw.isChecked()) && !(await sw.isDisabled()) && (await api()) === true);
    return { keepAcknowledged: true };
  },

  // Replays the default group from `from` (ms) with the card's date-time picker: a time
  // in the future first (the API's error, the field marked), then `from`; the stack
  // shows the replayed count.
  async replay({ from, want, name }) {
    const url = `${BASE}/#/p/${ctx.projectId}/monitoring`;
    if (page.url() !== url) {
      await page.goto(url);
      await expectVisible(heading('Monitoring'), 'the Monitoring page');
    }
    const card = page.locator(`section.group-card[data-group="${ctx.appKey}"] .backlog-actions`);
    await until('nothing stacked before the replay', async () => (await groupMetric(ctx.appKey, 'stacked')) === 0, 20000);
    const form = card.getByRole('form', { name: `Replay ${ctx.appKey} from a time` });
    const picker = form.getByLabel('Replay from');
    if ((await picker.getAttribute('type')) !== 'datetime-local') fail('the replay time is not a date-time picker');
    await picker.fill(await localValue(Date.now() + 86400000));
    await form.getByRole('button', { name: 'Replay' }).click();
    const err = await until('the future-time error', async () => {
      const t = await alertText(card);
      return t.includes('later than now') ? t : null;
    });
    if (!err.includes('invalid_argument')) fail(`replay error: ${err}`);
    if ((await picker.getAttribute('aria-invalid')) !== 'true') fail(`the replay time is not marked invalid (${err})`);
    await picker.fill(await localValue(from));
    await form.getByRole('button', { name: 'Replay' }).click();
    const ok = await until('the replay result', async () => {
      const t = (await card.locator('.msg').textContent()) || '';
      return t.startsWith('Replayed from') ? t : null;
    });
    const m = ok.match(/: (\d+) replayed, (\d+) dropped.* owes (\d+) now/);
    if (!m) fail(`replay result: ${ok}`);
    if ((await picker.getAttribute('aria-invalid')) === 'true') fail('the replay time stayed marked invalid');
    const [replayed, dropped, owed] = m.slice(1).map(Number);
    if (replayed !== want || owed !== want) fail(`replayed ${replayed}, owes ${owed}; want ${want}`);
    await until(`stacked ${want} after the replay`, async () => (await groupMetric(ctx.appKey, 'stacked')) === want, 20000);
    if (name) await shot(name);
    return { replayed, dropped, owed, text: ok };
  },

  // The message search: an unknown id, one of `ids` by id (stacked in the default group
  // after the replay), the device's messages since `from` in pages of 5, by productKey and
  // device name without a range, and a range the API refuses.
  async search({ ids, from }) {
    const sec = page.locator('#message-search');
    const results = sec.locator('#message-results');
    const byId = sec.getByRole('search', { name: 'Find a message by ID' });
    await byId.getByLabel('Message ID').fill('no-such-message-01');
    await byId.getByRole('button', { name: 'Find message' }).click();
    await until('not found', async () => ((await results.locator('[data-result=not-found]').textContent().catch(() => '')) || '').includes('Not found'));
    await byId.getByLabel('Message ID').fill(ids[2]);
    await byId.getByRole('button', { name: 'Find message' }).click();
    const row = results.locator('#messages-table tbody tr', { hasText: ids[2] });
    await expectVisible(row, 'the message found by id');
    const st = row.locator(`li[data-group="${ctx.appKey}"]`);
    if ((await st.getAttribute('data-state')) !== 'stacked') fail(`state after the replay: ${await st.getAttribute('data-state')}`);
    const stText = await st.textContent();
    if (!stText.includes('Stacked')) fail(`group state shown: ${stText}`);
    const rowText = await row.textContent();
    if (!rowText.includes('/thing/event/property/post')) fail(`topic not shown: ${rowText}`);
    // The report of x = 12 (the third of the six, x = 10…15).
    if (!rowText.includes('x = 12')) fail(`payload summary not shown: ${rowText}`);
    await row.locator('details.payload > summary').click();
    const full = await row.locator('details.payload pre').textContent();
    if (!full.includes('"x"')) fail(`payload: ${full}`);
    await shot('22-message-by-id');

    // By device and time range, newest first, paged.
    const dev = sec.getByRole('search', { name: "Search a device's messages" });
    await dev.getByLabel('iotId').fill(ctx.iotId);
    await dev.getByLabel('From (optional)').fill(await localValue(from));
    await dev.getByLabel('Per page').selectOption('5');
    await dev.getByRole('button', { name: 'Search device' }).click();
    const listed = async () => results.locator('#messages-table tbody tr').allTextContents();
    const first = await until('page 1 of the device', async () => {
      const rows = await listed();
      return rows.length === 5 && rows.every((t) => t.includes('/thing/event/property/post')) ? rows : null;
    });
    // Newest first: the last report (ids[5]) leads.
    if (!first[0].includes(ids[5]) || !first[4].includes(ids[1])) fail(`page 1 order: ${first.map((t) => t.slice(0, 40)).join(' | ')}`);
    if (!(await results.locator('[data-result=device]').textContent()).includes('page 1')) fail('no page number');
    await shot('23-device-messages');
    await results.getByRole('button', { name: 'Older' }).click();
    const second = await until('page 2 of the device', async () => {
      const rows = await listed();
      return rows.length === 1 && rows[0].includes(ids[0]) ? rows : null;
    });
    if (!(await results.getByRole('button', { name: 'Older' }).isDisabled())) fail('Older offered on the last page');
    await results.getByRole('button', { name: 'Newer' }).click();
    await until('page 1 again', async () => (await listed()).length === 5);

    // By productKey and device name, no range: the older reports too.
    const devices = await rest('GET', `/projects/${ctx.projectId}/devices?pageSize=50`);
    const lamp = devices.body.items.find((d) => d.iotId === ctx.iotId);
    await dev.getByLabel('iotId').fill('');
    await dev.getByLabel('From (optional)').fill('');
    await dev.getByLabel('ProductKey').fill(lamp.productKey);
    await dev.getByLabel('Device name').fill(lamp.deviceName);
    await dev.getByLabel('Per page').selectOption('20');
    await dev.getByRole('button', { name: 'Search device' }).click();
    const all = await until('all of the device', async () => {
      const rows = await listed();
      return rows.length > ids.length ? rows : null;
    });
    // A range backwards: the API's error, its field marked.
    await dev.getByLabel('From (optional)').fill(await localValue(from + 60000));
    await dev.getByLabel('To (optional)').fill(await localValue(from));
    await dev.getByRole('button', { name: 'Search device' }).click();
    const err = await until('the range error', async () => alertText(sec));
    if (!err.includes('later than to')) fail(`range error: ${err}`);
    if ((await dev.getByLabel('From (optional)').getAttribute('aria-invalid')) !== 'true') fail('from not marked invalid');
    if ((await results.locator('#messages-table').count()) !== 0) fail('stale results left beside the error');
    await dev.getByLabel('From (optional)').fill('');
    await dev.getByLabel('To (optional)').fill('');
    ctx.messageIds = ids;
    return { pages: [first.length, second.length], all: all.length };
  },

  // The message `id`, taken by a consumer that holds it: in flight, to that consumer.
  async in_flight({ id }) {
    const byId = page.getByRole('search', { name: 'Find a message by ID' });
    await byId.getByLabel('Message ID').fill(id);
    await byId.getByRole('button', { name: 'Find message' }).click();
    const st = page.locator(`#messages-table tbody tr li[data-group="${ctx.appKey}"]`);
    const text = await until('the message in flight', async () => (await st.getAttribute('data-state')) === 'inFlight' && st.textContent());
    if (!text.includes('In flight') || !text.includes('to 127.0.0.1:2 (console-e2e-replay)') || !text.includes('ack due by')) fail(`in flight shown as: ${text}`);
    await shot('25b-message-in-flight');
    return { text };
  },

  // Opens the purge confirmation of the default group and leaves it open: it names the
  // count the card shows.
  async purge_open() {
    const card = page.locator(`section.group-card[data-group="${ctx.appKey}"] .backlog-actions`);
    const n = await groupMetric(ctx.appKey, 'stacked');
    await card.getByRole('button', { name: `Purge ${ctx.appKey}` }).click();
    const dlg = page.getByRole('dialog');
    await expectVisible(dlg, 'the purge confirmation');
    const title = await dlg.locator('#confirm-title').textContent();
    const want = `Drop the ${n} message${n === 1 ? '' : 's'} group ${ctx.appKey} still owes?`;
    if (title !== want) fail(`purge confirmation: "${title}", want "${want}"`);
    await shot('24-purge-confirm', false);
    return { count: n, title };
  },

  // Confirms the open purge after the group was drained meanwhile: the API's 409.
  async purge_refused() {
    const card = page.locator(`section.group-card[data-group="${ctx.appKey}"] .backlog-actions`);
    await page.getByRole('dialog').getByRole('button', { name: 'Purge' }).click();
    const err = await until('the purge conflict', async () => alertText(card));
    if (!err.includes('purge.count_changed') || !err.includes('owes 0 messages now')) fail(`purge error: ${err}`);
    await until('nothing stacked', async () => (await groupMetric(ctx.appKey, 'stacked')) === 0, 20000);
    await until('purge not offered with nothing owed', async () => card.getByRole('button', { name: `Purge ${ctx.appKey}` }).isDisabled());
    await shot('25-purge-refused');
    return { error: err };
  },

  async purge({ want }) {
    const card = page.locator(`section.group-card[data-group="${ctx.appKey}"] .backlog-actions`);
    await card.getByRole('button', { name: `Purge ${ctx.appKey}` }).click();
    const dlg = page.getByRole('dialog');
    await expectVisible(dlg, 'the purge confirmation');
    if (!(await dlg.locator('#confirm-title').textContent()).startsWith(`Drop the ${want} messages`)) fail('purge count');
    await dlg.getByRole('button', { name: 'Purge' }).click();
    const ok = await until('the purge result', async () => {
      const t = (await card.locator('.msg').textContent()) || '';
      return t.startsWith('Purged') ? t : null;
    });
    const m = ok.match(/: (\d+) dropped.* owes (\d+) now/);
    if (!m || Number(m[2]) !== 0) fail(`purge result: ${ok}`);
    await until('stacked 0 after the purge', async () => (await groupMetric(ctx.appKey, 'stacked')) === 0
      && (await groupMetric(ctx.appKey, 'dropped')) === want, 20000);
    await shot('26-purged');
    return { dropped: Number(m[1]), text: ok };
  },

  async dead_letter_retry() {
    const dead = page.locator('section', { has: page.locator('#dead-title') });
    await until('a dead letter listed', async () => (await dead.locator('tbody tr').count()) === 1, 20000);
    await shot('14-dead-letter');
    const topic = await dead.locator('td[data-label=Topic]').textContent();
    await dead.getByRole('button', { name: /^Retry / }).click();
    await until('the retry confirmation', async () => (await dead.locator('.msg.ok').textContent()).includes('queued for delivery again'));
    await until('the dead letter gone', async () => (await dead.locator('tbody tr').count()) === 0, 20000);
    return { topic };
  },

  async dead_letter_drop() {
    const dead = page.locator('section', { has: page.locator('#dead-title') });
    await until('a dead letter listed again', async () => (await dead.locator('tbody tr').count()) === 1, 20000);
    await dead.getByRole('button', { name: /^Drop / }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Drop' }).click();
    await until('the dead letter dropped', async () => (await dead.locator('tbody tr').count()) === 0, 20000);
    const audit = page.locator('section', { has: page.locator('#audit-title') });
    const auditText = await audit.textContent();
    for (const a of ['sync.enable', 'sync.product', 'sync.disable']) if (!auditText.includes(a)) fail(`audit log lacks ${a}`);
    await shot('15-monitoring-audit');
    return { dropped: true };
  },

  async mixed_project() {
    const r = await rest('POST', '/admin/import', {
      name: 'Old shop', appKey: '31415926', appSecret: 'imported-secret-1',
      sync: { enabled: true, deviceData: 'http2', userData: 'legacy_http', legacyHttpUrl: 'http://127.0.0.1:9/push' },
    });
    if (r.status !== 201) fail(`import: ${JSON.stringify(r)}`);
    const pid = r.body.projectId;
    await page.goto(`${BASE}/#/p/${pid}/settings/sync`);
    await expectVisible(heading('Project Settings'), 'settings of the imported project');
    const callout = page.locator('[data-state=mixed]');
    await expectVisible(callout, 'the mixed-configuration explanation');
    const t = await callout.textContent();
    if (!t.includes('disable data synchronization and enable it again with a single method')) fail(`mixed text: ${t}`);
    if (await page.getByRole('button', { name: /Switch to AMQP/ }).count()) fail('a switch offered in mixed mode');
    const url = page.getByLabel('Legacy HTTP push URL');
    await url.fill('not a url');
    await page.getByRole('button', { name: 'Save URL' }).click();
    const statusPanel = page.locator('section', { has: page.locator('#sync-title') });
    const err = await until('the URL error', async () => alertText(statusPanel));
    if ((await url.getAttribute('aria-invalid')) !== 'true') fail(`url not marked invalid (${err})`);
    await shot('12-sync-mixed');

    // An http2 project offers the direct switch to AMQP.
    const p2 = await rest('POST', '/projects', { name: 'Gateway' });
    await rest('POST', `/projects/${p2.body.projectId}/sync/enable`, { method: 'http2' });
    await page.goto(`${BASE}/#/p/${p2.body.projectId}/settings/sync`);
    await expectVisible(page.locator('[data-state=http2]'), 'the http2 switch explanation');
    await shot('13-sync-http2');
    await page.getByRole('button', { name: 'Switch to AMQP (recommended)' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Switch to AMQP' }).click();
    await expectVisible(page.locator('#sync-method', { hasText: 'AMQP 1.0' }), 'AMQP after the switch');
    return { mixedError: err };
  },

  async phone() {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${BASE}/#/projects`);
    await expectVisible(heading('Project Management'), 'Project Management on a phone');
    await noHorizontalOverflow('Project Management');
    await shot('16-phone-projects');
    await page.goto(`${BASE}/#/p/${ctx.projectId}`);
    await expectVisible(heading('Greenhouse'), 'project home on a phone');
    await noHorizontalOverflow('project home');
    await shot('17-phone-home');
    await page.goto(`${BASE}/#/p/${ctx.projectId}/settings/sync`);
    await expectVisible(page.locator('#sync-status'), 'sync tab on a phone');
    await noHorizontalOverflow('Device Data Synchronization');
    await shot('18-phone-sync');
    await page.goto(`${BASE}/#/p/${ctx.projectId}/monitoring`);
    await expectVisible(heading('Monitoring'), 'monitoring on a phone');
    await noHorizontalOverflow('Monitoring');
    if (ctx.messageIds) {
      const byId = page.getByRole('search', { name: 'Find a message by ID' });
      await byId.getByLabel('Message ID').fill(ctx.messageIds[0]);
      await byId.getByRole('button', { name: 'Find message' }).click();
      await expectVisible(page.locator('#messages-table'), 'a message found on a phone');
      await noHorizontalOverflow('Monitoring with a message found');
      await page.locator('#message-results').scrollIntoViewIfNeeded();
      await shot('19b-phone-message', false);
    }
    await shot('19-phone-monitoring');
    await page.setViewportSize({ width: 1280, height: 900 });
    return {};
  },

  async csrf_and_sign_out() {
    const probe = () => page.evaluate(async () => {
      const list = await fetch('/api/v1/projects', { credentials: 'same-origin' });
      const write = await fetch('/api/v1/projects', {
        method: 'POST', credentials: 'same-origin', headers: { 'Content-Type': 'application/json' }, body: '{"name":"csrf"}',
      });
      return { list: list.status, write: write.status, writeBody: await write.json() };
    });
    const before = await probe();
    if (before.list !== 200) fail(`cookie GET: ${JSON.stringify(before)}`);
    if (before.write !== 403 || before.writeBody.code !== 'csrf') fail(`write without CSRF header: ${JSON.stringify(before)}`);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await expectVisible(heading('Sign in to iotsync'), 'the sign-in page after sign-out');
    await shot('20-signed-out');
    const after = await probe();
    if (after.list !== 401) fail(`after sign-out: ${JSON.stringify(after)}`);
    return { before, after: after.list };
  },

  async finish() {
    const result = { external, pageErrors, consoleErrors, shots };
    await browser.close();
    rmSync(userDir, { recursive: true, force: true });
    if (external.length) fail(`external requests: ${external.join(', ')}`);
    if (pageErrors.length) fail(`page errors: ${pageErrors.join(' | ')}`);
    if (consoleErrors.length) fail(`console errors: ${consoleErrors.join(' | ')}`);
    return result;
  },
};

const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    process.stdout.write(`${JSON.stringify({ ok: false, error: `bad command: ${line}` })}\n`);
    continue;
  }
  const fn = steps[cmd.cmd];
  try {
    if (!fn) fail(`unknown step ${cmd.cmd}`);
    log('step', cmd.cmd);
    const out = await fn(cmd);
    process.stdout.write(`${JSON.stringify({ ok: true, ...out })}\n`);
  } catch (e) {
    let file = null;
    try { if (page) file = await shot(`error-${cmd.cmd}`); } catch (_) { /* best effort */ }
    process.stdout.write(`${JSON.stringify({ ok: false, error: String(e && e.stack ? e.stack : e), screenshot: file })}\n`);
  }
  if (cmd.cmd === 'finish') break;
}
if (browser) await browser.close().catch(() => {});
if (userDir) rmSync(userDir, { recursive: true, force: true });
process.exit(0);
