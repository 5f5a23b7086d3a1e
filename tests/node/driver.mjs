// Drives the JavaScript `dicomweb-client` (npm, the browser library of the dcmjs authors) in
// plain Node against a DICOMweb root, with `xhr2` standing in for the browser's XMLHttpRequest.
//
//   node driver.mjs < job.json
//
// job.json: {"root": "http://host:port/site/x/dicom-web",
//            "instances": {"<name>": {"study": ..., "series": ..., "sop": ...}, ...}}
// with the names ybr (a compressed multi-frame: examples_ybr_color.dcm), rtdose (native
// multi-frame: rtdose.dcm), ecg (waveform_ecg.dcm), image (a plain image: CT_small.dcm).
//
// Prints one JSON object on stdout: for every call, what came back (lengths, sha256, media types
// the library saw, the first bytes, images in base64) or the error (status, body), and the log of
// every HTTP exchange (method, URL, Accept, status, Content-Type). The caller checks the values.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import XHR2 from 'xhr2';

// Record every exchange the library makes: the Accept it sends, the status and type it gets.
const exchanges = [];
class RecordingXMLHttpRequest extends XHR2 {
  open(method, url, ...rest) {
    this._exchange = { method, url, accept: null, status: null, contentType: null };
    exchanges.push(this._exchange);
    return super.open(method, url, ...rest);
  }

  setRequestHeader(name, value) {
    if (name.toLowerCase() === 'accept') this._exchange.accept = value;
    return super.setRequestHeader(name, value);
  }

  send(...args) {
    this.addEventListener('loadend', () => {
      this._exchange.status = this.status;
      this._exchange.contentType = this.getResponseHeader('content-type');
    });
    return super.send(...args);
  }
}
globalThis.XMLHttpRequest = RecordingXMLHttpRequest;
// stdout carries the JSON answer only: the library's debug output (console.debug in
// retrieveInstanceFramesThumbnail) goes to stderr.
console.log = console.info = console.debug = (...args) => console.error(...args);

const { api } = (await import('dicomweb-client')).default;

const job = JSON.parse(readFileSync(0, 'utf-8'));
const client = new api.DICOMwebClient({ url: job.root, verbose: false });
const uids = (name) => {
  const { study, series, sop } = job.instances[name];
  return { studyInstanceUID: study, seriesInstanceUID: series, sopInstanceUID: sop };
};

const bytesOf = (value) => new Uint8Array(value instanceof ArrayBuffer ? value : value.buffer);
const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');
const hex = (bytes, n) => Buffer.from(bytes.subarray(0, n)).toString('hex');

// A part as the library hands it over: an ArrayBuffer carrying contentType / transferSyntaxUID.
function describe(part, { withData = false } = {}) {
  const bytes = bytesOf(part);
  const out = {
    length: bytes.length,
    sha256: sha256(bytes),
    magic: hex(bytes, 8),
    contentType: part.contentType ?? null,
    transferSyntaxUID: part.transferSyntaxUID ?? null,
  };
  if (withData) out.base64 = Buffer.from(bytes).toString('base64');
  return out;
}

async function attempt(fn) {
  try {
    return { ok: true, ...(await fn()) };
  } catch (error) {
    let body = error.response;
    if (body instanceof ArrayBuffer) body = Buffer.from(body).toString('utf-8');
    else if (body && typeof body !== 'string') body = JSON.stringify(body);
    return {
      ok: false,
      error: String(error.message ?? error),
      status: error.status ?? null,
      body: body ? String(body).slice(0, 2000) : null,
    };
  }
}

const frames = (name, frameNumbers, mediaTypes) =>
  attempt(async () => {
    const options = { ...uids(name), frameNumbers };
    if (mediaTypes) options.mediaTypes = mediaTypes;
    const parts = await client.retrieveInstanceFrames(options);
    return { frameNumbers, parts: parts.map((p) => describe(p)) };
  });

// BulkDataURIs anywhere in a DICOM JSON dataset, with the tag path that leads to each.
function bulkDataURIs(dataset, path = [], found = []) {
  for (const [tag, element] of Object.entries(dataset)) {
    if (element.BulkDataURI) found.push({ path: [...path, tag], uri: element.BulkDataURI });
    if (element.vr === 'SQ') {
      (element.Value ?? []).forEach((item, index) => bulkDataURIs(item, [...path, tag, index], found));
    }
  }
  return found;
}

const bulk = () =>
  attempt(async () => {
    const metadata = await client.retrieveInstanceMetadata(uids('ecg'));
    const dataset = Array.isArray(metadata) ? metadata[0] : metadata;
    const values = [];
    for (const { path, uri } of bulkDataURIs(dataset)) {
      values.push({
        path,
        uri,
        result: await attempt(async () => {
          const parts = await client.retrieveBulkData({ BulkDataURI: uri });
          return { parts: parts.map((p) => describe(p)) };
        }),
      });
    }
    return { metadataType: Array.isArray(metadata) ? 'array' : typeof metadata, values };
  });

const image = (method, name, mediaType, extra = {}) =>
  attempt(async () => {
    const answer = await client[method]({ ...uids(name), mediaTypes: [{ mediaType }], ...extra });
    // The library returns a one-element array for a single-part answer.
    const parts = Array.isArray(answer) ? answer : [answer];
    return { parts: parts.map((p) => describe(p, { withData: true })) };
  });

const JPEG_BASELINE = '1.2.840.10008.1.2.4.50';
const ALL_30 = Array.from({ length: 30 }, (_, i) => 30 - i); // 30, 29, ... 1: order matters
const results = {};
const calls = {
  // Compressed, asked as stored in their own media type (the Python client's way), all frames.
  ybr_jpeg: () => frames('ybr', ALL_30, [{ mediaType: 'image/jpeg', transferSyntaxUID: JPEG_BASELINE }]),
  // Cornerstone/OHIF's way: octet-stream with transfer-syntax=*, i.e. anything as stored.
  ybr_any: () => frames('ybr', [2, 1], [{ mediaType: 'application/octet-stream', transferSyntaxUID: '*' }]),
  // The library's default (no media types): application/octet-stream, i.e. decoded.
  ybr_decoded: () => frames('ybr', [1]),
  // Native multi-frame, default media type.
  rtdose: () => frames('rtdose', [15, 2, 7]),
  rtdose_all: () => frames('rtdose', Array.from({ length: 15 }, (_, i) => i + 1)),
  bulk,
  rendered_jpeg: () => image('retrieveInstanceRendered', 'image', 'image/jpeg'),
  rendered_png: () => image('retrieveInstanceRendered', 'image', 'image/png'),
  rendered_color_png: () => image('retrieveInstanceRendered', 'ybr', 'image/png'),
  rendered_frame_png: () =>
    image('retrieveInstanceFramesRendered', 'ybr', 'image/png', { frameNumbers: [3] }),
  thumbnail: () =>
    image('retrieveInstanceThumbnail', 'image', 'image/jpeg', { queryParams: { viewport: '64,64' } }),
  thumbnail_frame: () =>
    image('retrieveInstanceFramesThumbnail', 'ybr', 'image/jpeg', {
      frameNumbers: [3],
      queryParams: { viewport: '64,64' },
    }),
};
await Promise.all(
  Object.entries(calls).map(async ([key, call]) => {
    results[key] = await call();
  }),
);
process.stdout.write(`${JSON.stringify({ root: job.root, results, exchanges })}\n`);
