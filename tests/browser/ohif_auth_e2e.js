#!/usr/bin/env node
/*
 * The OHIF viewer and the AFLoc panel against a server with authentication on, in a real
 * headless Chromium (run_in_netns.sh ... auth: the server runs with MONAI_LABEL_AUTH_ENABLE=true
 * and tests/token_issuer.py as its identity provider, users uma/uma-pw and alice/alice-pw).
 *
 *   node ohif_auth_e2e.js --base-url URL --study UID --series UID --out DIR [--prompt TEXT] [--timeout-s N]
 *
 * Steps: the study list without a token (its QIDO-RS request is refused: the sign-in form shows),
 * a wrong password (refused, said so), the right one (the study list appears); double-click the
 * study, type, Enter: the overlay is drawn (every data request carried the token); Sign out in
 * the panel, Enter: the panel says to sign in; a rejected token: the panel says so; sign in from
 * the panel, Enter: the overlay again. Writes OUT/auth-result.json and auth-*.png.
 */
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.AFLOC_CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

function parseArgs(argv) {
  const args = { prompt: 'right pleural effusion', timeoutS: 180 };
  const names = { '--base-url': 'baseUrl', '--study': 'study', '--series': 'series', '--out': 'out', '--prompt': 'prompt', '--timeout-s': 'timeoutS' };
  for (let i = 0; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (!key || argv[i + 1] === undefined) throw new Error(`bad option ${argv[i]}`);
    args[key] = key === 'timeoutS' ? Number(argv[i + 1]) : argv[i + 1];
  }
  for (const required of ['baseUrl', 'study', 'series', 'out']) if (!args[required]) throw new Error(`--${required} is required`);
  args.baseUrl = args.baseUrl.replace(/\/+$/, '');
  return args;
}

async function poll(fn, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await fn();
    if (value) return value;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  fs.mkdirSync(args.out, { recursive: true });
  const out = (name) => path.join(args.out, name);
  const started = Date.now();
  const result = { ok: false, steps: [], actions: [], dataRequests: [], pageErrors: [] };
  const step = (name) => {
    result.steps.push({ name, at_s: (Date.now() - started) / 1000 });
    console.log(`[ohif_auth_e2e] ${name}`);
  };
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'afloc-chromium-'));
  let context;
  let page;
  const watchdog = setTimeout(() => {
    result.error = `gave up after ${args.timeoutS} s`;
    fs.writeFileSync(out('auth-result.json'), JSON.stringify(result, null, 2));
    process.exit(1);
  }, args.timeoutS * 1000);
  const snapshot = () => page.evaluate(() => window.__aflocPanel && window.__aflocPanel.snapshot());
  const panelError = (pattern, what) =>
    poll(async () => {
      const s = await snapshot();
      return s && s.lastError && pattern.test(s.lastError) ? s.lastError : null;
    }, 30000, what);
  const runPrompt = async (what) => {
    const box = page.locator('#afloc-prompt');
    await box.fill(args.prompt);
    const reply = page.waitForResponse((r) => r.url().includes('/infer/afloc'), { timeout: 120000 });
    await box.press('Enter');
    return { status: (await reply).status(), what };
  };

  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS, viewport: { width: 1600, height: 900 },
    });
    page = context.pages()[0] || (await context.newPage());
    // Every request for data (not the viewer's own files): did it carry a token, what came back.
    page.on('response', (r) => {
      const url = r.url();
      if (!url.startsWith(args.baseUrl) || url.startsWith(`${args.baseUrl}/ohif/`)) return;
      const auth = r.request().headers().authorization || '';
      result.dataRequests.push({ path: url.slice(args.baseUrl.length).split('?')[0], status: r.status(), bearer: auth.startsWith('Bearer ') });
    });
    page.on('pageerror', (e) => result.pageErrors.push(String(e.message || e).slice(0, 500)));

    // 1. The study list without a token: QIDO-RS is refused, the sign-in form shows.
    step('study list without a token');
    await page.goto(`${args.baseUrl}/ohif/`, { waitUntil: 'domcontentloaded' });
    await page.locator('#afloc-signin').waitFor({ state: 'visible', timeout: 60000 });
    result.atStart = {
      message: await page.locator('#afloc-signin-message').textContent(),
      rows: await page.locator('tr[data-cy^="studyRow-"]').count(),
      refused: result.dataRequests.filter((r) => r.status === 401).map((r) => r.path),
    };
    await page.screenshot({ path: out('auth-signin.png') });

    // 2. A wrong password, then the right one: the page reloads with the token, the list shows.
    step('sign in: wrong password, then the right one');
    await page.locator('#afloc-signin-user').fill('uma');
    await page.locator('#afloc-signin-password').fill('wrong');
    await page.locator('#afloc-signin-submit').click();
    result.wrongPassword = await poll(async () => {
      const text = await page.locator('#afloc-signin-message').textContent();
      return /failed/i.test(text) ? text : null;
    }, 30000, 'the wrong-password message');
    await page.locator('#afloc-signin-password').fill('uma-pw');
    result.marks = { signedIn: result.dataRequests.length };
    await page.locator('#afloc-signin-submit').click();
    const row = page.locator(`tr[data-cy="${args.study}"]`);
    await row.waitFor({ state: 'visible', timeout: 60000 });
    // The investigational-use banner (bottom of the page) is confirmed once, not counted.
    const banner = page.getByRole('button', { name: 'Confirm and Hide' });
    if (await banner.count()) await banner.click().catch(() => {});
    result.signedInList = {
      rows: await page.locator('tr[data-cy^="studyRow-"]').count(),
      formShown: await page.evaluate(() => window.__aflocSignIn.shown()),
    };

    // 3. Open (double-click), type, Enter: the overlay, with the token on every data request.
    step('open, type, Enter');
    await row.dblclick();
    await page.waitForURL(/\/ohif\/afloc\?/, { timeout: 30000 });
    await page.locator('#afloc-prompt').waitFor({ state: 'visible', timeout: 60000 });
    await poll(async () => { const s = await snapshot(); return s && s.series && s.series.seriesUID === args.series; }, 60000, 'the panel to find the series');
    await page.waitForTimeout(500);
    result.focusAtOpen = await page.evaluate(() => document.activeElement && document.activeElement.id);
    const inferReply = page.waitForResponse((r) => r.url().includes('/infer/afloc'), { timeout: 120000 });
    await page.keyboard.type(args.prompt);
    await page.keyboard.press('Enter');
    result.infer = (await inferReply).status();
    const drawn = await poll(async () => { const s = await snapshot(); return s && s.result && s.drawCount > 0 ? s : null; }, 60000, 'the overlay');
    result.drawn = { label: drawn.result.label, signedIn: drawn.signedIn, message: drawn.message };
    result.panelAuthSummary = await page.locator('#afloc-auth-summary').textContent();
    result.marks.signedOut = result.dataRequests.length;
    await page.screenshot({ path: out('auth-overlay.png') });

    // 4. Sign out in the panel, Enter: the panel says to sign in and opens its sign-in section.
    step('sign out, Enter');
    await page.locator('#afloc-auth-summary').click();
    await page.locator('#afloc-sign-out').click();
    result.signedOut = await runPrompt('after sign-out');
    result.signedOut.message = await panelError(/sign in/i, 'the sign-in message');
    result.signedOut.sectionOpen = await page.evaluate(() => document.getElementById('afloc-auth').open);
    result.signedOut.alert = await page.locator('#afloc-message[role="alert"]').isVisible();
    await page.screenshot({ path: out('auth-401.png') });

    // 5. A token the server rejects (as an expired one is): pasted, then one kept in the tab.
    step('rejected token');
    await page.locator('#afloc-auth-token').fill('not.a.token');
    await page.locator('#afloc-sign-in').click();
    result.pastedBad = await panelError(/Sign-in failed/, 'the refused pasted token');
    await page.evaluate(() => window.__aflocPanel.setToken('not.a.token', 'stale'));
    result.rejected = await runPrompt('with a rejected token');
    result.rejected.message = await panelError(/rejected your sign-in token/, 'the rejected-token message');

    // 6. Sign in from the panel (user name and password), Enter: the overlay again.
    step('sign in from the panel, Enter');
    await page.evaluate(() => window.__aflocPanel.setToken(null));
    await page.locator('#afloc-auth-user').fill('alice');
    await page.locator('#afloc-auth-password').fill('alice-pw');
    await page.locator('#afloc-sign-in').click();
    result.panelSignIn = await poll(async () => {
      const s = await snapshot();
      return s && s.signedIn ? s.signedIn : null;
    }, 30000, 'the panel sign-in');
    const drawsBefore = (await snapshot()).drawCount;
    result.again = await runPrompt('after signing in from the panel');
    const again = await poll(async () => { const s = await snapshot(); return s.drawCount > drawsBefore ? s : null; }, 60000, 'the overlay again');
    result.again.label = again.result.label;
    await page.screenshot({ path: out('auth-panel-signed-in.png') });
    result.ok = true;
  } catch (error) {
    result.error = String((error && error.stack) || error);
    if (page) await page.screenshot({ path: out('auth-failure.png') }).catch(() => {});
  } finally {
    clearTimeout(watchdog);
    result.elapsed_s = (Date.now() - started) / 1000;
    fs.writeFileSync(out('auth-result.json'), JSON.stringify(result, null, 2));
    if (context) await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  console.log(`[ohif_auth_e2e] ${result.ok ? 'passed' : 'FAILED: ' + result.error} (${result.elapsed_s.toFixed(1)} s)`);
  return result.ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(`[ohif_auth_e2e] ${error.stack || error}`);
    process.exit(2);
  }
);
