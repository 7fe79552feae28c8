#!/usr/bin/env node
/*
 * End-to-end check of the OHIF viewer served by the AFLoc Label server, in a real headless
 * Chromium (Debian's /usr/bin/chromium driven by playwright-core).
 *
 * Steps, as a user would take them:
 *   1. /ohif/ (study list): every viewer file loads (no 4xx/5xx, no failed request); the demo
 *      studies are listed by modality.
 *   2. /ohif/afloc?StudyInstanceUIDs=<study>: the radiograph is drawn in the viewport.
 *   3. MONAI Label panel: connect, "Options / Configurations" -> infer / afloc -> prompt,
 *      Confirm, "Auto-Segmentation" -> Run.
 *   4. The label the server sent (NRRD, raw uint8) must be what OHIF's labelmap now holds:
 *      same voxel count, same non-zero count, same FNV-1a hash (so not transposed or cut).
 *   5. Screenshots of the viewport before and after (the caller checks the overlay's pixels)
 *      and of the whole page.
 *   6. From the page, an infer request for every other series (output=json) reports the
 *      image grid and pixel spacing the server read through DICOMweb.
 *
 * Usage: node ohif_e2e.js --base-url URL --study UID --out DIR [--prompt TEXT]
 *                         [--check-series UID ...] [--timeout-s 150]
 * Writes DIR/result.json (always), DIR/study-list.png, DIR/viewport-before.png,
 * DIR/viewport-after.png, DIR/ohif.png (or DIR/failure.png) and DIR/label.nrrd (the label the
 * server sent). Exit status 0 when every check
 * passed, 1 otherwise (the reason is in result.json "error").
 */
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.AFLOC_CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const VIEWPORT = { width: 1600, height: 900 };

function parseArgs(argv) {
  const args = { prompt: 'right pleural effusion', checkSeries: [], timeoutS: 150 };
  for (let i = 0; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`missing value for ${key}`);
    if (key === '--base-url') args.baseUrl = value.replace(/\/+$/, '');
    else if (key === '--study') args.study = value;
    else if (key === '--out') args.out = value;
    else if (key === '--prompt') args.prompt = value;
    else if (key === '--check-series') args.checkSeries.push(value);
    else if (key === '--timeout-s') args.timeoutS = Number(value);
    else throw new Error(`unknown option ${key}`);
  }
  for (const required of ['baseUrl', 'study', 'out']) {
    if (!args[required]) throw new Error(`--${required.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())} is required`);
  }
  return args;
}

/** FNV-1a (32 bit) of a byte array; the same hash the mode's test hook computes in the page. */
function fnv1a(bytes) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) {
    hash = Math.imul(hash ^ bytes[i], 0x01000193) >>> 0;
  }
  return hash;
}

/** A raw (uncompressed) NRRD file -> its header fields and data bytes. */
function parseRawNrrd(buffer) {
  const end = buffer.indexOf('\n\n');
  if (end < 0) throw new Error('label reply is not an NRRD file (no header end)');
  const header = {};
  for (const line of buffer.subarray(0, end).toString('latin1').split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0 && !line.startsWith('#')) header[line.slice(0, colon).trim()] = line.slice(colon + 1).replace(/^=?\s*/, '');
  }
  if (header.encoding !== 'raw') throw new Error(`label NRRD encoding is '${header.encoding}', expected raw`);
  const data = buffer.subarray(end + 2);
  const sizes = (header.sizes || '').split(/\s+/).map(Number);
  const voxels = sizes.reduce((a, b) => a * b, 1);
  if (data.length !== voxels) throw new Error(`label NRRD holds ${data.length} bytes for sizes ${header.sizes}`);
  let nonZero = 0;
  for (const v of data) if (v) nonZero++;
  return { header, sizes, total: voxels, nonZero, fnv1a: fnv1a(data) };
}

async function poll(fn, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  fs.mkdirSync(args.out, { recursive: true });
  const started = Date.now();
  const result = {
    ok: false,
    steps: [],
    ohifResponses: [],
    apiErrors: [],
    failedRequests: [],
    consoleErrors: [],
    pageErrors: [],
  };
  const step = (name) => {
    result.steps.push({ name, at_s: (Date.now() - started) / 1000 });
    console.log(`[ohif_e2e] ${name}`);
  };
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'afloc-chromium-'));
  let context;
  let page;
  const watchdog = setTimeout(() => {
    result.error = `gave up after ${args.timeoutS} s`;
    fs.writeFileSync(path.join(args.out, 'result.json'), JSON.stringify(result, null, 2));
    process.exit(1);
  }, args.timeoutS * 1000);
  try {
    // A fresh profile per run (--user-data-dir): no cookies or cache from earlier runs.
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_FLAGS,
      viewport: VIEWPORT,
    });
    page = context.pages()[0] || (await context.newPage());
    const ohifPrefix = `${args.baseUrl}/ohif/`;
    page.on('response', (r) => {
      if (r.url().startsWith(ohifPrefix)) result.ohifResponses.push({ status: r.status(), url: r.url() });
      else if (r.url().startsWith(args.baseUrl) && r.status() >= 400) result.apiErrors.push({ status: r.status(), url: r.url() });
    });
    page.on('requestfailed', (r) => result.failedRequests.push({ url: r.url(), error: (r.failure() || {}).errorText }));
    page.on('console', (m) => {
      if (m.type() === 'error') result.consoleErrors.push(m.text().slice(0, 500));
    });
    page.on('pageerror', (e) => result.pageErrors.push(String(e.message || e).slice(0, 500)));

    // 1. Study list.
    step('open the study list');
    await page.goto(ohifPrefix, { waitUntil: 'networkidle' });
    const rows = page.locator('table tbody tr');
    await poll(async () => (await rows.count()) > 0, 30000, 'the study list rows');
    const texts = (await rows.allInnerTexts()).map((t) => t.replace(/\s+/g, ' ').trim()).filter(Boolean);
    result.studyList = [...new Set(texts)];
    await dismissBanner(page);
    await page.screenshot({ path: path.join(args.out, 'study-list.png') });
    result.declaredFiles = await fetchDeclaredFiles(page);

    // 2. Viewer with the study.
    step('open the study in the AFLoc mode');
    await page.goto(`${args.baseUrl}/ohif/afloc?StudyInstanceUIDs=${encodeURIComponent(args.study)}`, {
      waitUntil: 'networkidle',
    });
    await dismissBanner(page);
    const viewport = page.locator('.cornerstone-viewport-element').first();
    await viewport.waitFor({ state: 'visible', timeout: 30000 });
    await poll(() => imageDrawn(page), 30000, 'the radiograph to be drawn');
    await page.waitForTimeout(500);
    await viewport.screenshot({ path: path.join(args.out, 'viewport-before.png') });

    // 3. MONAI Label panel: connect, prompt, run.
    step('connect the MONAI Label panel');
    // The AFLoc panel is the first tab on the right; the stock panel is the next one.
    await page.locator('[data-cy$="monailabel-btn"]').first().click();
    await page.locator('td:has(#monailabelServerURL) ~ td button.actionButton').click();
    await page.getByText('Options / Configurations').first().waitFor({ timeout: 30000 });
    step('type the prompt');
    await page.getByText('Options / Configurations').first().click();
    const promptBox = page.locator('#inferaflocprompt');
    await promptBox.waitFor({ timeout: 10000 });
    await promptBox.fill(args.prompt);
    await page.getByRole('button', { name: 'Confirm' }).click();
    await page.locator('label.tab-label', { hasText: 'Auto-Segmentation' }).click();
    step('run Auto-Segmentation');
    const inferReply = page.waitForResponse((r) => r.url().includes('/infer/afloc'), { timeout: 90000 });
    await page.locator('button[title="Run Segmentation"]').click();
    const reply = await inferReply;
    const request = reply.request();
    result.infer = { status: reply.status(), url: reply.url(), params: safeJson(requestParams(request.postData())) };
    if (reply.status() !== 200) throw new Error(`infer request answered ${reply.status()}: ${(await reply.text()).slice(0, 300)}`);
    const labelBytes = await reply.body();
    fs.writeFileSync(path.join(args.out, 'label.nrrd'), labelBytes);
    const label = parseRawNrrd(labelBytes);
    result.infer.label = { sizes: label.sizes, total: label.total, nonZero: label.nonZero, fnv1a: label.fnv1a };
    if (label.nonZero === 0) throw new Error('the label the server sent is empty: nothing to render');

    // 4. OHIF's labelmap holds exactly the label.
    step('wait for the labelmap');
    result.labelmap = await poll(
      async () => {
        const stats = await page.evaluate(() => window.__aflocOhif && window.__aflocOhif.labelmapStats('1'));
        return stats && stats.nonZero > 0 ? stats : null;
      },
      30000,
      'the segmentation to reach the labelmap'
    );
    for (const key of ['total', 'nonZero', 'fnv1a']) {
      if (result.labelmap[key] !== label[key]) {
        throw new Error(`labelmap ${key} ${result.labelmap[key]} differs from the label sent (${label[key]})`);
      }
    }

    // 5. Screenshots with the overlay.
    step('screenshots');
    // The "Successful" notification covers the viewport's corner for 4 s.
    await poll(async () => (await page.getByText('Running Segmentation - Successful').count()) === 0, 15000, 'the notification to close');
    await page.waitForTimeout(500);
    await viewport.screenshot({ path: path.join(args.out, 'viewport-after.png') });
    await page.screenshot({ path: path.join(args.out, 'ohif.png') });

    // 6. Geometry of the other series, asked from the page (same origin, as the panel does).
    result.series = {};
    for (const series of args.checkSeries) {
      step(`infer from the page on series ${series}`);
      result.series[series] = await page.evaluate(
        async ({ series, prompt }) => {
          const form = new FormData();
          form.append('params', JSON.stringify({ prompt, save_heatmap: false }));
          const r = await fetch(`/infer/afloc?image=${encodeURIComponent(series)}&output=json`, { method: 'POST', body: form });
          const body = await r.json();
          return { status: r.status, image: body.image, labelPixels: (body.prompts || []).map((p) => p.label_pixels) };
        },
        { series, prompt: args.prompt }
      );
    }
    result.ok = true;
  } catch (error) {
    result.error = String((error && error.message) || error);
    if (page) await page.screenshot({ path: path.join(args.out, 'failure.png') }).catch(() => {});
  } finally {
    clearTimeout(watchdog);
    result.elapsed_s = (Date.now() - started) / 1000;
    fs.writeFileSync(path.join(args.out, 'result.json'), JSON.stringify(result, null, 2));
    if (context) await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  console.log(`[ohif_e2e] ${result.ok ? 'passed' : 'FAILED: ' + result.error} (${result.elapsed_s.toFixed(1)} s)`);
  return result.ok ? 0 : 1;
}

/**
 * Every file the page declares (scripts, styles, icons, the manifest and its icons), fetched
 * from the page: headless Chromium never asks for icons by itself, and they are the files in
 * sub-folders (assets/) that MONAI Label's own route answers with index.html.
 */
async function fetchDeclaredFiles(page) {
  return page.evaluate(async () => {
    const urls = new Set();
    for (const el of document.querySelectorAll('link[href], script[src]')) {
      urls.add(new URL(el.getAttribute('href') || el.getAttribute('src'), document.baseURI).href);
    }
    const manifest = document.querySelector('link[rel="manifest"]');
    if (manifest) {
      const body = await (await fetch(manifest.href)).json();
      for (const icon of body.icons || []) urls.add(new URL(icon.src, manifest.href).href);
    }
    const local = [...urls].filter((u) => u.startsWith(window.location.origin + '/ohif/'));
    return Promise.all(
      local.map(async (url) => {
        const r = await fetch(url, { cache: 'no-store' });
        return { url, status: r.status, contentType: r.headers.get('content-type') };
      })
    );
  });
}

/** OHIF's "investigational use only" banner covers the bottom of the viewport. */
async function dismissBanner(page) {
  const button = page.getByRole('button', { name: 'Confirm and Hide' });
  if (await button.count()) await button.click().catch(() => {});
}

/** Whether the viewport canvas shows more than a blank frame. */
async function imageDrawn(page) {
  return page.evaluate(() => {
    const canvas = document.querySelector('.cornerstone-viewport-element canvas');
    if (!canvas || !canvas.width) return false;
    const copy = document.createElement('canvas');
    copy.width = 64;
    copy.height = 64;
    const ctx = copy.getContext('2d');
    ctx.drawImage(canvas, 0, 0, 64, 64);
    const pixels = ctx.getImageData(0, 0, 64, 64).data;
    let bright = 0;
    for (let i = 0; i < pixels.length; i += 4) if (pixels[i] + pixels[i + 1] + pixels[i + 2] > 90) bright++;
    return bright > 64 * 64 * 0.1;
  });
}

function requestParams(postData) {
  const match = /name="params"\r?\n\r?\n([\s\S]*?)\r?\n--/.exec(postData || '');
  return match ? match[1] : null;
}

function safeJson(text) {
  try {
    return JSON.parse(text);
  } catch (error) {
    return text;
  }
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(`[ohif_e2e] ${error.stack || error}`);
    process.exit(2);
  }
);
