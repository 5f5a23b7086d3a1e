#!/usr/bin/env node
// Drives the OHIF viewer served by the gateway at /viewer/ in headless Chromium, as a person
// would: the study list loads, a patient-name filter narrows it, and each given study opens
// with a non-blank image in every viewport. Prints one JSON result on stdout; exit 0 if all
// passed, 1 if anything failed, 2 on bad usage.
//
//   node tests/viewer/check.mjs --url http://127.0.0.1:8080 --source web \
//     [--filter Rossi] [--study LABEL=STUDY_UID[:SOP_UID]]... [--out DIR] [--timeout 60]
//
// --source: the OHIF data source, i.e. the gateway's site id. --study: SOP_UID, when given,
// picks the display set holding that instance (studies with several). --out: screenshots of
// failures. The browser is Debian's chromium (CHROMIUM overrides /usr/bin/chromium), never one
// downloaded by Playwright.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
// A viewport shows an image when this share of its pixels is not black and it has more
// than this many grey levels (a flat grey slab, OHIF's look for an undecodable frame, fails).
const MIN_NON_BLACK = 0.02;
const MIN_LEVELS = 8;

function usage(message) {
  process.stderr.write(`check.mjs: ${message}\n`);
  process.exit(2);
}

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    source: { type: 'string' },
    filter: { type: 'string' },
    study: { type: 'string', multiple: true, default: [] },
    out: { type: 'string' },
    timeout: { type: 'string', default: '60' },
  },
});
if (!args.url || !args.source) usage('--url and --source are required');
const base = args.url.replace(/\/+$/, '');
const timeoutMs = Number(args.timeout) * 1000;
const studies = args.study.map(spec => {
  const m = /^([^=]+)=([0-9.]+)(?::([0-9.]+))?$/.exec(spec);
  if (!m) usage(`--study ${spec}: expected LABEL=STUDY_UID[:SOP_UID]`);
  return { label: m[1], study: m[2], sop: m[3] };
});

const started = Date.now();
const seconds = since => Math.round((Date.now() - since) / 100) / 10;
const result = {
  url: base,
  source: args.source,
  ok: false,
  seconds: 0,
  studyList: null,
  filter: null,
  studies: [],
  failedRequests: [],
  consoleErrors: [],
};

// Everything that went wrong on the wire, and in the page's console, tagged with the step.
let step = 'start';
const searches = []; // study searches answered: what the filter asked, and the status
const pending = new Map(); // request -> when it was sent: what a timed-out step still awaited
function watch(page) {
  page.on('request', request => pending.set(request, Date.now()));
  page.on('requestfailed', request => pending.delete(request));
  page.on('requestfinished', async request => {
    pending.delete(request);
    const url = new URL(request.url());
    if (!url.pathname.endsWith('/studies')) return;
    const at = step;
    const status = (await request.response().catch(() => null))?.status();
    searches.push({ step: at, query: decodeURIComponent(url.search), status });
  });
  page.on('response', response => {
    if (response.status() >= 400) {
      const request = response.request();
      result.failedRequests.push({
        step,
        method: request.method(),
        url: response.url(),
        status: response.status(),
        accept: request.headers().accept,
      });
    }
  });
  page.on('requestfailed', request => {
    const error = request.failure()?.errorText ?? 'failed';
    // Requests the viewer cancels itself (prefetch, page change) are no fault.
    if (error === 'net::ERR_ABORTED') return;
    result.failedRequests.push({ step, method: request.method(), url: request.url(), error });
  });
  page.on('console', message => {
    if (message.type() === 'error')
      result.consoleErrors.push({ step, text: message.text().slice(0, 500) });
  });
  page.on('pageerror', error => {
    result.consoleErrors.push({ step, text: String(error).slice(0, 500) });
  });
}

// What a failed step leaves behind: a screenshot, and the requests still unanswered.
async function evidence(page, entry, name) {
  entry.pending = [...pending]
    .map(([request, sent]) => `${request.method()} ${request.url()} (${seconds(sent)} s)`)
    .slice(0, 10);
  entry.screenshot = await screenshot(page, name);
}

async function screenshot(page, name) {
  if (!args.out) return undefined;
  fs.mkdirSync(args.out, { recursive: true });
  const file = path.join(args.out, `${args.source}-${name}.png`.replace(/[^\w.-]/g, '_'));
  await page.screenshot({ path: file }).catch(() => {});
  return file;
}

// OHIF shows a first-run tour in a fresh profile; it covers part of the viewer.
async function skipTour(page) {
  const skip = page.getByRole('button', { name: /skip all/i });
  if (await skip.isVisible().catch(() => false)) await skip.click().catch(() => {});
}

// "1-41 of 41" in the study list's pager: the number of matches the server reported.
async function listTotal(page) {
  const text = await page
    .locator('[aria-label="Rows per page"]')
    .first()
    .textContent({ timeout: 1000 });
  const m = /of\s+(\d+)/.exec(text ?? '');
  return m ? Number(m[1]) : null;
}

async function studyRows(page) {
  return page.locator('tr[aria-selected]').count();
}

// A failure that waiting longer cannot cure.
class Fail extends Error {}

async function waitFor(page, what, predicate) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    await skipTour(page);
    // Other errors are the page changing under our feet (navigation): try again.
    const value = await predicate().catch(error => {
      if (error instanceof Fail) throw error;
      return null;
    });
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await page.waitForTimeout(250);
  }
}

async function checkStudyList(page) {
  step = 'study-list';
  const t = Date.now();
  const entry = { ok: false };
  result.studyList = entry;
  try {
    await page.goto(`${base}/viewer/?datasources=${encodeURIComponent(args.source)}`);
    entry.total = await waitFor(page, 'the study list', async () => {
      const total = await listTotal(page);
      return total && (await studyRows(page)) > 0 ? total : null;
    });
    entry.rows = await studyRows(page);
    entry.ok = true;
  } catch (error) {
    entry.error = String(error.message ?? error);
    await evidence(page, entry, 'study-list');
  }
  entry.seconds = seconds(t);
}

async function checkFilter(page) {
  step = 'filter';
  const t = Date.now();
  const entry = { ok: false, text: args.filter };
  result.filter = entry;
  try {
    const headers = await page.locator('thead th').allTextContents();
    const column = headers.findIndex(h => h.trim().startsWith('Patient'));
    if (column < 0) throw new Error(`no Patient column among ${JSON.stringify(headers)}`);
    const input = page.locator(`tr[data-filter-row] > td:nth-child(${column + 1}) input`).first();
    await input.fill(args.filter);
    const needle = args.filter.toLowerCase();
    const before = result.studyList.total;
    // The server's count must drop, and that many rows must name the patient. (OHIF may leave
    // a stale row behind when two studies share a StudyInstanceUID: reported, not failed.)
    const cells = await waitFor(page, 'the filtered study list', async () => {
      if (!searches.some(q => q.step === 'filter' && /PatientName=/i.test(q.query))) return null;
      const total = await listTotal(page);
      if (total === null || total >= before) return null;
      const texts = await page
        .locator(`tr[aria-selected] > td:nth-child(${column + 1})`)
        .allTextContents();
      return texts.filter(c => c.toLowerCase().includes(needle)).length === total ? texts : null;
    });
    entry.total = await listTotal(page);
    entry.patients = [...new Set(cells.filter(c => c.toLowerCase().includes(needle)))];
    entry.otherRows = cells.filter(c => !c.toLowerCase().includes(needle));
    entry.searches = searches.filter(q => q.step === 'filter');
    entry.ok = true;
  } catch (error) {
    entry.error = String(error.message ?? error);
    await evidence(page, entry, 'filter');
  }
  entry.seconds = seconds(t);
}

// In the page: each viewport of OHIF's grid (OHIF exposes cornerstone and its services), the
// image it has drawn (not merely asked for) and its canvas's share of non-black pixels and
// number of grey levels. Thumbnails are drawn by other, off-grid viewports: left out.
function measureViewports() {
  const grid = window.services?.viewportGridService?.getState?.().viewports;
  const engines = window.cornerstone?.getRenderingEngines?.() ?? [];
  return engines.flatMap(engine =>
    engine
      .getViewports()
      .filter(viewport => !grid || grid.has(viewport.id))
      .map(viewport => {
        const canvas = viewport.canvas;
        const { width, height } = canvas;
        const wanted = viewport.getCurrentImageId?.() ?? null;
        const imageId = viewport.getCornerstoneImage?.()?.imageId ?? null;
        if (!width || !height)
          return { id: viewport.id, wanted, imageId, width, height, nonBlack: 0, levels: 0 };
        const data = canvas.getContext('2d').getImageData(0, 0, width, height).data;
        let lit = 0;
        const levels = new Set();
        for (let i = 0; i < data.length; i += 4) {
          const grey = Math.round((data[i] + data[i + 1] + data[i + 2]) / 3);
          if (grey > 16) lit += 1;
          levels.add(grey);
        }
        const nonBlack = Math.round((lit / (width * height)) * 1000) / 1000;
        return { id: viewport.id, wanted, imageId, width, height, nonBlack, levels: levels.size };
      }),
  );
}

const rendered = v => v.nonBlack > MIN_NON_BLACK && v.levels > MIN_LEVELS;

// The failed request (this step) for a cornerstone image id: wadors:{frame URL}.
function failedRequestFor(imageId) {
  const path = new URL(imageId.replace(/^wadors:/, ''), base).pathname;
  return result.failedRequests.find(f => f.step === step && new URL(f.url).pathname === path);
}

async function checkStudy(page, { label, study, sop }) {
  step = `study:${label}`;
  const t = Date.now();
  const entry = { label, study, sop, ok: false };
  result.studies.push(entry);
  const query = new URLSearchParams({ StudyInstanceUIDs: study });
  if (sop) query.set('initialSOPInstanceUID', sop);
  try {
    await page.goto(`${base}/viewer/viewer/${encodeURIComponent(args.source)}?${query}`);
    let last = [];
    try {
      await waitFor(page, 'a rendered image', async () => {
        last = await page.evaluate(measureViewports);
        // The viewports asked to show that instance (or all), each with the very image drawn.
        const mine = sop ? last.filter(v => v.wanted?.includes(`/instances/${sop}/`)) : last;
        for (const v of mine) {
          const failed = v.wanted && v.imageId !== v.wanted && failedRequestFor(v.wanted);
          if (failed) throw new Fail(`${failed.status ?? failed.error} on ${failed.url}`);
        }
        return mine.length > 0 && mine.every(v => v.imageId === v.wanted && rendered(v));
      });
      entry.ok = true;
    } finally {
      entry.viewports = last;
    }
  } catch (error) {
    entry.error = String(error.message ?? error);
    await evidence(page, entry, label);
  }
  entry.seconds = seconds(t);
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ncpeh-viewer-'));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 900 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(timeoutMs);
  watch(page);
  await checkStudyList(page);
  if (args.filter && result.studyList.ok) await checkFilter(page);
  for (const s of studies) await checkStudy(page, s);
  result.ok =
    result.studyList.ok &&
    (!args.filter || result.filter?.ok === true) &&
    result.studies.every(s => s.ok);
} catch (error) {
  result.error = String(error.message ?? error);
} finally {
  await context?.close().catch(() => {});
  fs.rmSync(profile, { recursive: true, force: true });
}
result.seconds = seconds(started);
process.stdout.write(JSON.stringify(result, null, 2) + '\n');
process.exit(result.ok ? 0 : 1);
