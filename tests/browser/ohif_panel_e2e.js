#!/usr/bin/env node
/*
 * End-to-end check of the AFLoc panel in the OHIF viewer, in a real headless Chromium (Debian's
 * /usr/bin/chromium driven by playwright-core), against the real server and Orthanc (run inside
 * a private network namespace by run_in_netns.sh).
 *
 *   node ohif_panel_e2e.js --base-url URL --orthanc-url URL --study UID --series UID --out DIR
 *        [--checkpoint-dir DIR] [--prompt TEXT] [--second-prompt TEXT] [--report TEXT] [--timeout-s N]
 *
 * What a user does, counted: open the study (one double-click on its row in the study list),
 * type the prompt (the box has the focus), press Enter. The DX study is then opened the stock
 * way (row click, then the "AFLoc (X-ray)" button). With --checkpoint-dir (the folder the server
 * serves), the folder is moved aside at the end and back, to see the panel's "no model" message. Then, for tests/test_ohif_panel.py to
 * compare pixels with the server's data, it saves into OUT:
 *   panel-result.json            steps, user actions, requests, page state, errors
 *   viewport-before.png          the radiograph before any overlay
 *   viewport-heat-full.png       heatmap at opacity 100 % (colours decode to heat values)
 *   viewport-outline-t0.png      opacity 0: outlines only, at the server's threshold
 *   viewport-outline-t1.png      opacity 0 after moving the threshold slider
 *   viewport-outline-panned.png  the same after panning the view (middle-button drag)
 *   heatmap-1.nii                the server's heatmap of the prompt (float32 NIfTI)
 *   label-t0.nrrd, label-t1.nrrd the server's label at both thresholds (raw NRRD)
 *   label-two.nrrd               the server's label for the two-prompt run
 *   accepted-seg.dcm, draft-seg.dcm   the DICOM-SEG instances read back from Orthanc
 *   panel-no-model.png           the panel's message when the server has no model
 *   panel-*.png                  screenshots of each state for the docs
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
const VIEWPORT = { width: 1600, height: 900 };
const THRESHOLD_MOVED = 0.55;

function parseArgs(argv) {
  const args = {
    prompt: 'right pleural effusion',
    secondPrompt: 'cardiomegaly',
    report: '',
    timeoutS: 240,
  };
  const names = {
    '--base-url': 'baseUrl', '--orthanc-url': 'orthancUrl', '--study': 'study', '--series': 'series',
    '--out': 'out', '--checkpoint-dir': 'checkpointDir', '--prompt': 'prompt', '--second-prompt': 'secondPrompt', '--report': 'report', '--timeout-s': 'timeoutS',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (!key || argv[i + 1] === undefined) throw new Error(`bad option ${argv[i]}`);
    args[key] = key === 'timeoutS' ? Number(argv[i + 1]) : argv[i + 1];
  }
  for (const required of ['baseUrl', 'orthancUrl', 'study', 'series', 'out']) {
    if (!args[required]) throw new Error(`--${required} is required`);
  }
  args.baseUrl = args.baseUrl.replace(/\/+$/, '');
  args.orthancUrl = args.orthancUrl.replace(/\/+$/, '');
  return args;
}

function fnv1a(bytes) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) hash = Math.imul(hash ^ bytes[i], 0x01000193) >>> 0;
  return hash;
}

/** Raw NRRD -> {sizes, data}. */
function rawNrrd(buffer) {
  const end = buffer.indexOf('\n\n');
  const header = {};
  for (const line of buffer.subarray(0, end).toString('latin1').split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0 && !line.startsWith('#')) header[line.slice(0, colon).trim()] = line.slice(colon + 1).replace(/^=?\s*/, '');
  }
  if (header.encoding !== 'raw') throw new Error(`NRRD encoding ${header.encoding}, expected raw`);
  return { sizes: header.sizes.split(/\s+/).map(Number), data: buffer.subarray(end + 2) };
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
  const result = {
    ok: false, steps: [], actions: [], requests: [], failedRequests: [], external: [],
    apiErrors: [], pageErrors: [], consoleErrors: [],
  };
  const step = (name) => {
    result.steps.push({ name, at_s: (Date.now() - started) / 1000 });
    console.log(`[ohif_panel_e2e] ${name}`);
  };
  const action = (kind, what) => result.actions.push({ kind, what, at_s: (Date.now() - started) / 1000 });
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'afloc-chromium-'));
  let context;
  let page;
  const watchdog = setTimeout(() => {
    result.error = `gave up after ${args.timeoutS} s`;
    fs.writeFileSync(out('panel-result.json'), JSON.stringify(result, null, 2));
    process.exit(1);
  }, args.timeoutS * 1000);

  // Server-side reference data, fetched from this process (inside the same namespace).
  async function serverLabel(prompt, threshold, file, series = args.series) {
    const form = new FormData();
    form.append('params', JSON.stringify({ prompt, threshold, result_compress: false, save_heatmap: false, result_extension: '.nrrd' }));
    const r = await fetch(`${args.baseUrl}/infer/afloc?image=${encodeURIComponent(series)}&output=image`, { method: 'POST', body: form });
    if (!r.ok) throw new Error(`reference infer answered ${r.status}: ${(await r.text()).slice(0, 300)}`);
    const bytes = Buffer.from(await r.arrayBuffer());
    fs.writeFileSync(out(file), bytes);
    const nrrd = rawNrrd(bytes);
    let nonZero = 0;
    for (const v of nrrd.data) if (v) nonZero++;
    return { sizes: nrrd.sizes, total: nrrd.data.length, nonZero, fnv1a: fnv1a(nrrd.data) };
  }
  async function orthancInstance(sopUID, file) {
    const r = await fetch(`${args.orthancUrl}/tools/lookup`, { method: 'POST', body: sopUID });
    const found = (await r.json()).filter((x) => x.Type === 'Instance');
    if (!found.length) throw new Error(`Orthanc has no instance ${sopUID}`);
    const dicom = await fetch(`${args.orthancUrl}/instances/${found[0].ID}/file`);
    fs.writeFileSync(out(file), Buffer.from(await dicom.arrayBuffer()));
    return found[0].ID;
  }
  const snapshot = () => page.evaluate(() => window.__aflocPanel && window.__aflocPanel.snapshot());
  const viewportShot = async (name) => {
    await page.waitForTimeout(300);
    await page.locator('.cornerstone-viewport-element').first().screenshot({ path: out(name) });
  };
  const waitDrawn = async (predicate, what) =>
    poll(async () => {
      const s = await snapshot();
      return s && s.lastDraw && predicate(s) ? s : null;
    }, 60000, what);

  try {
    // The report the study list's series gets (the PACS helper may already provide one).
    if (args.report) {
      const form = new FormData();
      form.append('info', JSON.stringify({ report: args.report }));
      const r = await fetch(`${args.baseUrl}/datastore/image/info?image=${encodeURIComponent(args.series)}`, { method: 'PUT', body: form });
      result.reportPut = { status: r.status, body: (await r.text()).slice(0, 300) };
    }

    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS, viewport: VIEWPORT,
    });
    page = context.pages()[0] || (await context.newPage());
    page.on('request', (r) => {
      const url = r.url();
      if (!url.startsWith(args.baseUrl) && !url.startsWith('data:') && !url.startsWith('blob:')) result.external.push(url);
      if (/\/(infer|afloc|datastore)\//.test(url)) result.requests.push({ method: r.method(), url: url.slice(args.baseUrl.length), at_s: (Date.now() - started) / 1000 });
    });
    page.on('response', (r) => {
      if (r.url().startsWith(args.baseUrl) && r.status() >= 400) result.apiErrors.push({ status: r.status(), url: r.url() });
    });
    page.on('requestfailed', (r) => result.failedRequests.push({ url: r.url(), error: (r.failure() || {}).errorText }));
    page.on('pageerror', (e) => result.pageErrors.push(String(e.message || e).slice(0, 500)));
    page.on('console', (m) => { if (m.type() === 'error') result.consoleErrors.push(m.text().slice(0, 300)); });

    // 1. Study list (the investigational-use banner is confirmed once per browser, not counted).
    step('study list');
    await page.goto(`${args.baseUrl}/ohif/`, { waitUntil: 'networkidle' });
    const rows = page.locator('table tbody tr');
    await poll(async () => (await rows.count()) > 0, 30000, 'the study list');
    const banner = page.getByRole('button', { name: 'Confirm and Hide' });
    if (await banner.count()) await banner.click().catch(() => {});
    result.fonts = await page.evaluate(async () => {
      await document.fonts.ready;
      return { interLoaded: document.fonts.check('14px Inter'), faces: [...document.fonts].filter((f) => f.status === 'loaded').map((f) => `${f.family} ${f.weight}`) };
    });

    // 2. Open the study: one double-click on its row in the study list (the "open" of
    //    open-type-Enter). lib/ohif/afloc_study_list.js opens a CR/DX study in the AFLoc mode.
    step('open the study in the AFLoc mode (double-click on its row)');
    await page.evaluate(() => { window.__aflocSamePage = true; });
    const summaryRow = page.locator(`tr[data-cy="${args.study}"]`);
    await summaryRow.waitFor({ timeout: 15000 });
    await summaryRow.dblclick();
    action('dblclick', 'study row');
    const opened = result.actions.length;
    await page.waitForURL(/\/ohif\/afloc\?/, { timeout: 30000 });
    await page.locator('.cornerstone-viewport-element').first().waitFor({ state: 'visible', timeout: 30000 });
    await poll(() => imageDrawn(page), 30000, 'the radiograph');
    await page.locator('#afloc-prompt').waitFor({ state: 'visible', timeout: 30000 });
    await poll(async () => { const s = await snapshot(); return s && s.series && s.series.seriesUID === args.series; }, 30000, 'the panel to find the series');
    // Opened inside the page (no reload), by the study-list hook, for the CR study.
    result.openedBy = await page.evaluate(() => ({
      samePage: window.__aflocSamePage === true,
      lastOpen: window.__aflocStudyList ? window.__aflocStudyList.lastOpen : null,
      url: window.location.pathname + window.location.search,
    }));
    await page.waitForTimeout(800);
    result.focusAtOpen = await page.evaluate(() => document.activeElement && document.activeElement.id);
    await poll(async () => ((await page.locator('#afloc-model').textContent()) || '').includes('trained on'), 15000, 'the model line');
    result.modelLine = await page.locator('#afloc-model').textContent();
    await viewportShot('viewport-before.png');
    if (args.report) {
      await poll(async () => ((await snapshot()).reportFindings || []).length > 0, 15000, 'report findings').catch(() => {});
    }
    await page.screenshot({ path: out('panel-open.png') });

    // 3. Type (into the focused box, no click) and Enter.
    step('type the prompt and press Enter');
    const inferReply = page.waitForResponse((r) => r.url().includes('/infer/afloc'), { timeout: 120000 });
    await page.keyboard.type(args.prompt);
    action('type', args.prompt);
    await page.keyboard.press('Enter');
    action('key', 'Enter');
    const reply = await inferReply;
    result.infer = { status: reply.status(), url: reply.url(), body: await reply.json().catch(() => null) };
    const drawn = await waitDrawn((s) => s.result && s.drawCount > 0, 'the overlay');
    result.actionsToOverlay = { fromStudyList: result.actions.length, afterOpen: result.actions.length - opened + 1 };
    result.afterRun = drawn;
    result.messageAfterRun = await page.locator('#afloc-message').textContent();
    await page.waitForTimeout(500);
    await page.screenshot({ path: out('panel-heatmap.png') });
    await viewportShot('viewport-heat-default.png');

    // Reference data from the server: the heatmap the panel drew and the label at its threshold.
    const heatUrl = result.infer.body.prompts[0].heatmap.url;
    const heat = await fetch(args.baseUrl + heatUrl);
    fs.writeFileSync(out('heatmap-1.nii'), Buffer.from(await heat.arrayBuffer()));
    const t0 = drawn.threshold;
    result.serverLabelT0 = await serverLabel(args.prompt, t0, 'label-t0.nrrd');

    // 4. Opacity 100 % (heat colours only) and 0 % (outlines only).
    step('opacity 100% and 0%');
    await page.locator('#afloc-opacity').fill('1');
    await waitDrawn((s) => s.lastDraw.opacity === 1, 'opacity 1');
    await viewportShot('viewport-heat-full.png');
    await page.locator('#afloc-opacity').fill('0');
    const atT0 = await waitDrawn((s) => s.lastDraw.opacity === 0, 'opacity 0');
    await viewportShot('viewport-outline-t0.png');
    result.panelAtT0 = atT0;

    // 5. Move the threshold slider: no request to the server, the same mask as the server's.
    step('move the threshold slider');
    const before = result.requests.length;
    await page.locator('#afloc-threshold').fill(String(THRESHOLD_MOVED));
    const atT1 = await waitDrawn((s) => Math.abs(s.lastDraw.threshold - THRESHOLD_MOVED) < 1e-9, 'the new threshold');
    await viewportShot('viewport-outline-t1.png');
    result.requestsDuringSlider = result.requests.slice(before).length;
    result.panelAtT1 = atT1;
    result.serverLabelT1 = await serverLabel(args.prompt, THRESHOLD_MOVED, 'label-t1.nrrd');

    // 5b. Pan the view (middle button drag): the overlay follows the image.
    step('pan the view');
    const vbox = await page.locator('.cornerstone-viewport-element').first().boundingBox();
    const cx = vbox.x + vbox.width / 2;
    const cy = vbox.y + vbox.height / 2;
    const drawsBefore = (await snapshot()).drawCount;
    const drag = async (dx, dy) => {
      await page.mouse.move(cx, cy);
      await page.mouse.down({ button: 'middle' });
      await page.mouse.move(cx + dx, cy + dy, { steps: 8 });
      await page.mouse.up({ button: 'middle' });
    };
    await drag(70, 30);
    const x0 = atT1.lastDraw.imageCorners[0][0];
    result.panelPanned = await waitDrawn((s) => s.drawCount > drawsBefore && Math.abs(s.lastDraw.imageCorners[0][0] - x0) > 20, 'the overlay to follow the pan');
    await page.waitForTimeout(300);
    result.panelPanned = await snapshot();
    await viewportShot('viewport-outline-panned.png');
    await drag(-70, -30);
    await waitDrawn((s) => Math.abs(s.lastDraw.imageCorners[0][0] - x0) < 2, 'the view back in place');
    await page.locator('#afloc-opacity').fill('0.5');
    await waitDrawn((s) => s.lastDraw.opacity === 0.5, 'opacity 0.5');
    await page.screenshot({ path: out('panel-threshold.png') });

    // 6. Accept (at the moved threshold), then Keep draft.
    step('accept');
    const acceptReply = page.waitForResponse((r) => r.url().includes('/afloc/segments') && r.url().includes('kind=final'), { timeout: 120000 });
    await page.locator('#afloc-accept').click();
    const accepted = await acceptReply;
    result.accept = { status: accepted.status(), body: await accepted.json().catch(() => null) };
    if (accepted.status() !== 200) throw new Error(`Accept answered ${accepted.status()}: ${JSON.stringify(result.accept.body)}`);
    await orthancInstance(result.accept.body.sop_instance_uid, 'accepted-seg.dcm');
    step('keep draft');
    const draftReply = page.waitForResponse((r) => r.url().includes('/afloc/segments') && r.url().includes('kind=draft'), { timeout: 120000 });
    await page.locator('#afloc-draft').click();
    const drafted = await draftReply;
    result.draft = { status: drafted.status(), body: await drafted.json().catch(() => null) };
    if (drafted.status() !== 200) throw new Error(`Keep draft answered ${drafted.status()}: ${JSON.stringify(result.draft.body)}`);
    await orthancInstance(result.draft.body.sop_instance_uid, 'draft-seg.dcm');
    const draftLabel = await fetch(args.baseUrl + result.draft.body.draft.url);
    result.draftFetch = { status: draftLabel.status, bytes: (await draftLabel.arrayBuffer()).byteLength };
    result.storedInPanel = (await poll(async () => {
      const s = await snapshot();
      return s.storedSeries && s.storedSeries.length >= 2 ? s.storedSeries : null;
    }, 20000, 'the stored list')).map((r) => r.description);
    await page.screenshot({ path: out('panel-accepted.png') });

    // 7. Two prompts: distinct colours, the same combined label as the server's.
    step('two prompts');
    await page.locator('#afloc-threshold').fill('0.3');
    const box = page.locator('#afloc-prompt');
    await box.fill(`${args.prompt}; ${args.secondPrompt}`);
    const twoReply = page.waitForResponse((r) => r.url().includes('/infer/afloc'), { timeout: 120000 });
    await box.press('Enter');
    await twoReply;
    const two = await waitDrawn((s) => s.result && s.result.prompts.length === 2, 'two prompts drawn');
    result.panelTwo = two;
    result.serverLabelTwo = await serverLabel(`${args.prompt};${args.secondPrompt}`, two.threshold, 'label-two.nrrd');
    await page.locator('#afloc-opacity').fill('0');
    await waitDrawn((s) => s.lastDraw.opacity === 0 && s.result.prompts.length === 2, 'two prompts at opacity 0');
    await viewportShot('viewport-two.png');
    await page.locator('#afloc-opacity').fill('0.5');
    await waitDrawn((s) => s.lastDraw.opacity === 0.5, 'opacity 0.5');
    await page.screenshot({ path: out('panel-two-prompts.png') });

    // 8. A finding from the report, one click (the server's reading of the report, for comparison).
    const findings = (await snapshot()).reportFindings;
    result.reportFindings = findings;
    result.serverFindings = await (await fetch(`${args.baseUrl}/afloc/findings?image=${encodeURIComponent(args.series)}`)).json();
    if (findings.length) {
      step('report finding');
      const chip = page.locator('.afloc-report-chip').first();
      const chipReply = page.waitForResponse((r) => r.url().includes('/infer/afloc'), { timeout: 120000 });
      await box.fill('');
      await chip.click();
      const r = await chipReply;
      result.reportRun = { status: r.status(), prompt: (await r.request().postData() || '').match(/"prompt": ?"([^"]*)"/)?.[1] || null };
      await waitDrawn((s) => s.result && s.result.prompts.length === 1 && s.result.prompts[0] === findings[0], 'the report finding drawn');
      await page.screenshot({ path: out('panel-report.png') });
    }

    // 9. Errors in the panel: a bad prompt (the server's 400) and the server out of reach.
    step('errors');
    await box.fill('x'.repeat(400));
    await box.press('Enter');
    result.errorBadPrompt = await poll(async () => {
      const s = await snapshot();
      return s.lastError && /prompt|characters/i.test(s.lastError) ? s.lastError : null;
    }, 30000, 'the bad-prompt message');
    result.errorBadPromptVisible = await page.locator('#afloc-message[role="alert"]').isVisible();
    await page.screenshot({ path: out('panel-error.png') });
    await page.route('**/infer/afloc**', (route) => route.abort('connectionrefused'));
    await box.fill(args.prompt);
    await box.press('Enter');
    result.errorServerDown = await poll(async () => {
      const s = await snapshot();
      return s.lastError && /reach/i.test(s.lastError) ? s.lastError : null;
    }, 30000, 'the server-down message');
    await page.unroute('**/infer/afloc**');

    // 10. The study list afterwards: the study now holds SEG series.
    step('study list afterwards');
    await page.goto(`${args.baseUrl}/ohif/`, { waitUntil: 'networkidle' });
    await poll(async () => (await rows.count()) > 0, 30000, 'the study list');
    result.studyListAfter = (await rows.allInnerTexts()).map((t) => t.replace(/\s+/g, ' ').trim()).filter(Boolean);
    await page.screenshot({ path: out('panel-study-list.png') });

    // 11. The DX study (the phantom radiograph, 0.39 mm pixels): open, type, Enter.
    //     Opened the stock way: a click expands the row, its "AFLoc (X-ray)" button opens it
    //     (the expanded row's mode buttons keep working next to the double-click).
    step('the DX study (row click, then the mode button)');
    await rows.filter({ hasText: 'DX' }).first().click();
    result.dxModeButtons = await page.locator('[data-cy^="mode-"]').evaluateAll((els) => els.map((e) => e.getAttribute('data-cy').split('-').slice(0, 2).join('-')));
    await page.getByRole('button', { name: 'AFLoc (X-ray)' }).first().click();
    await page.waitForURL(/\/ohif\/afloc\?/, { timeout: 30000 });
    await poll(() => imageDrawn(page), 30000, 'the DX radiograph');
    await page.locator('#afloc-prompt').waitFor({ state: 'visible', timeout: 30000 });
    const dxSeries = (await poll(async () => { const s = await snapshot(); return s && s.series && s.series.seriesUID !== args.series ? s.series : null; }, 30000, 'the DX series')).seriesUID;
    await page.waitForTimeout(500);
    result.dxFocus = await page.evaluate(() => document.activeElement && document.activeElement.id);
    const dxReply = page.waitForResponse((r) => r.url().includes('/infer/afloc'), { timeout: 120000 });
    await page.keyboard.type(args.prompt);
    await page.keyboard.press('Enter');
    await dxReply;
    result.panelDx = await waitDrawn((s) => s.result && s.series.seriesUID === dxSeries && s.drawCount > 0, 'the DX overlay');
    result.serverLabelDx = await serverLabel(args.prompt, result.panelDx.threshold, 'label-dx.nrrd', dxSeries);
    await page.screenshot({ path: out('panel-dx.png') });

    // 12. No usable model: the served checkpoint folder disappears (moved aside); the server
    //     answers the next run with its 503 message, which the panel shows.
    if (args.checkpointDir) {
      step('no model');
      const aside = `${args.checkpointDir}.removed`;
      fs.renameSync(args.checkpointDir, aside);
      try {
        const box = page.locator('#afloc-prompt');
        await box.fill(args.prompt);
        const noModelReply = page.waitForResponse((r) => r.url().includes('/infer/afloc'), { timeout: 120000 });
        await box.press('Enter');
        const r = await noModelReply;
        result.noModel = { status: r.status(), body: await r.json().catch(() => null) };
        result.noModel.message = await poll(async () => {
          const s = await snapshot();
          return s.lastError && /model/i.test(s.lastError) ? s.lastError : null;
        }, 30000, 'the no-model message');
        result.noModel.visible = await page.locator('#afloc-message[role="alert"]').isVisible();
        result.noModel.shownText = await page.locator('#afloc-message').textContent();
        await page.screenshot({ path: out('panel-no-model.png') });
      } finally {
        fs.renameSync(aside, args.checkpointDir);
      }
    }
    result.ok = true;
  } catch (error) {
    result.error = String((error && error.stack) || error);
    if (page) await page.screenshot({ path: out('panel-failure.png') }).catch(() => {});
  } finally {
    clearTimeout(watchdog);
    result.elapsed_s = (Date.now() - started) / 1000;
    fs.writeFileSync(out('panel-result.json'), JSON.stringify(result, null, 2));
    if (context) await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  console.log(`[ohif_panel_e2e] ${result.ok ? 'passed' : 'FAILED: ' + result.error} (${result.elapsed_s.toFixed(1)} s)`);
  return result.ok ? 0 : 1;
}

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

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(`[ohif_panel_e2e] ${error.stack || error}`);
    process.exit(2);
  }
);
