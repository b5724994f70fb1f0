// Downloads model files with progress and keeps them in IndexedDB, in chunks of at most
// 64 MiB, so that a second visit needs no network, an interrupted download resumes from
// the last stored chunk, and a damaged chunk is detected (SHA-256) and fetched again.
//
// Against odd servers and browsers:
// - A cached file is trusted for a while (`freshMs`, 10 minutes), then asked about again
//   with a conditional request (If-None-Match / If-Modified-Since): 304 keeps the cached
//   copy, 200 replaces it, and when the server cannot be reached the cached copy is used.
//   A 404 is remembered as long, but only while its folder holds a cached file (an optional
//   file of a model that loads, e.g. no fp16 variant): a model that was not on the server
//   at all is asked for again on the next load. A replaced pack manifest makes the pack's other files be asked about too, and
//   deleting a file (a shard that failed its sha256 check) makes its pack's manifest be.
// - A download resumes (Range) only when the stored part has a strong ETag (sent as
//   If-Range) and was not content-encoded; otherwise it starts over. Bytes already handed
//   to the caller are never handed again: when the server sends the whole file, its first
//   bytes are checked against the hashes of what was handed.
// - A content-encoded response (gzip, …) has no known length: progress reports a null
//   total, and the size is what arrived.
// - A web page where a file was asked for (a single-page app's fallback: Vite's dev server,
//   Netlify, Cloudflare Pages, …; or an error page sent with status 200), told by its
//   Content-Type or by its first bytes, means the server has no such file: it is never
//   cached or handed over, it is remembered like a 404, and fetchFile rejects with an
//   `HtmlPageError` naming the URL, which the loader reads as "absent" where a file is
//   optional (a pack manifest, an fp16 variant) and reports where it is required.
// - When storing fails (quota exceeded, IndexedDB unavailable), the download goes on
//   without caching; the partial entry is dropped, a warning is logged and the progress
//   reports carry `notCached` (e.g. "storage full").

const DB_NAME = "webdiffusion";
// 64 MiB; tests set globalThis.__webdiffusionChunkBytes to exercise resuming on small files.
const chunkBytes = () => globalThis.__webdiffusionChunkBytes ?? 64 * 1024 * 1024;
/** How long a cached file, or a 404, is trusted before the server is asked again (ms). */
const freshMs = () => globalThis.__webdiffusionFreshMs ?? 10 * 60 * 1000;
/** How long a revalidation waits for the server's answer before using the cached copy. */
const revalidateTimeoutMs = () => globalThis.__webdiffusionRevalidateTimeoutMs ?? 15 * 1000;
const MANIFEST = "manifest.json";

let dbPromise = null;

function request(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function db() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      if (typeof indexedDB === "undefined") throw new Error("IndexedDB is not available");
      const open = indexedDB.open(DB_NAME, 1);
      open.onupgradeneeded = () => {
        open.result.createObjectStore("files", { keyPath: "url" });
        open.result.createObjectStore("chunks");
      };
      open.onsuccess = () => {
        const conn = open.result;
        // Let another tab upgrade the database, and reopen after the browser closed it.
        conn.onversionchange = () => {
          conn.close();
          dbPromise = null;
        };
        conn.onclose = () => {
          dbPromise = null;
        };
        resolve(conn);
      };
      open.onerror = () => reject(open.error);
      open.onblocked = () => reject(new Error("IndexedDB is blocked by another tab"));
    });
    dbPromise.catch(() => {
      dbPromise = null;
    });
  }
  return dbPromise;
}

/** Runs `f(tx)` in a transaction on `names` and resolves to its result once committed. */
async function transact(names, mode, f) {
  const tx = (await db()).transaction(names, mode);
  const done = new Promise((resolve, reject) => {
    tx.oncomplete = resolve;
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new DOMException("IndexedDB transaction aborted", "AbortError"));
  });
  let result;
  try {
    result = await f(tx);
  } catch (e) {
    done.catch(() => {});
    try {
      tx.abort();
    } catch {}
    throw e;
  }
  await done;
  return result;
}

const chunkKey = (url, i) => `${url}#${i}`;
const getMeta = (url) => transact("files", "readonly", (tx) => request(tx.objectStore("files").get(url)));
const putMeta = (meta) => transact("files", "readwrite", (tx) => request(tx.objectStore("files").put(meta)));
const getChunk = (url, i) =>
  transact("chunks", "readonly", (tx) => request(tx.objectStore("chunks").get(chunkKey(url, i))));

async function sha256(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Drops `url`'s entry and all its chunks. */
function forget(url) {
  return transact(["files", "chunks"], "readwrite", (tx) => {
    tx.objectStore("chunks").delete(IDBKeyRange.bound(`${url}#`, `${url}#\uffff`));
    tx.objectStore("files").delete(url);
  });
}

/**
 * Remembers that the server has no file at `url` (for `freshMs`): it answered 404, or with
 * the web page `page` (what `pageAnswer` said of it).
 */
const remember404 = (url, page = null) =>
  forget(url)
    .then(() => putMeta({ url, missing: true, page, hashes: [], checked: Date.now() }))
    .catch(() => {});

/**
 * What a response is when it is a web page, not a file (`text/html` or XHTML): e.g.
 * "an HTML page (HTTP 200, text/html)"; null otherwise. No file the loader asks for is one.
 */
function pageAnswer(response) {
  const type = (response.headers.get("Content-Type") ?? "").split(";")[0].trim().toLowerCase();
  if (type !== "text/html" && type !== "application/xhtml+xml") return null;
  return `an HTML page (HTTP ${response.status}, ${type})`;
}

/** Whether `bytes` start like an HTML document (a page sent with another Content-Type). */
function looksLikePage(bytes) {
  const head = new TextDecoder().decode(bytes.subarray(0, 64)).replace(/^\uFEFF?\s*/, "").toLowerCase();
  return /^<(!doctype html|html[\s>]|head[\s>]|body[\s>])/.test(head);
}

/**
 * The error for a web page answered in place of the file at `url`. Its `answer` says what
 * came back, for messages that list what was tried.
 */
function pageError(url, page) {
  const err = new Error(`${url} answered with ${page}, not the file: the server has no such file ` +
    "and sends a web page in its place (a single-page-app fallback or an error page)");
  err.name = "HtmlPageError";
  err.url = url;
  err.answer = `answered with ${page}`;
  return err;
}

/** The cached files under the folder `dir` ("…/") are asked about again on their next load. */
async function expireUnder(dir) {
  await transact("files", "readwrite", async (tx) => {
    const files = tx.objectStore("files");
    const all = await request(files.getAll(IDBKeyRange.bound(dir, `${dir}\uffff`)));
    for (const meta of all) {
      if (meta.complete && meta.checked) files.put({ ...meta, checked: 0 });
    }
  });
}

/** The packs `url` may belong to: `manifest.json` in each folder above it. */
function manifestsAbove(url) {
  const out = [];
  let at = url.lastIndexOf("/");
  while (at > 0 && url[at - 1] !== "/") {
    out.push(`${url.slice(0, at + 1)}${MANIFEST}`);
    at = url.lastIndexOf("/", at - 1);
  }
  return out.filter((m) => m !== url);
}

/** Files of a pack were bad or missing: its manifest is asked about on the next load. */
async function expireManifestsAbove(...urls) {
  const manifests = new Set(urls.flatMap(manifestsAbove));
  await transact("files", "readwrite", async (tx) => {
    const files = tx.objectStore("files");
    for (const manifest of manifests) {
      const meta = await request(files.get(manifest));
      if (meta?.complete && meta.checked) files.put({ ...meta, checked: 0 });
    }
  }).catch(() => {});
}

export function hasWebGpu() {
  return typeof navigator !== "undefined" && !!navigator.gpu;
}

/**
 * The bytes at `url` (Uint8Array), or null on HTTP 404. With `onChunk`, the bytes are
 * handed to it chunk by chunk instead (and never held whole) and it resolves to true.
 * `onProgress` gets `{ loaded, total, file }` (`total` null when unknown), plus
 * `notCached` (why, e.g. "storage full") when the file could not be kept in the cache.
 */
export async function fetchFile(url, cache, onProgress, onChunk) {
  const sink = new Sink(url, onProgress, onChunk);
  if (cache) {
    try {
      await db();
    } catch (e) {
      sink.notCaching(e);
      cache = false;
    }
  }
  if (!cache) {
    const response = await send(url, {}, { httpCache: true });
    if (response.status === 404) return null;
    if (!response.ok) throw httpError(url, response);
    const page = pageAnswer(response);
    if (page) {
      cancel(response);
      throw pageError(url, page);
    }
    return receive(url, response, sink, null);
  }
  if (navigator.storage?.persist) navigator.storage.persist().catch(() => {});
  // One download of a URL at a time (in this page and across tabs): a second waits, then
  // finds the file cached.
  if (navigator.locks?.request) {
    return navigator.locks.request(`webdiffusion ${url}`, () => fetchCached(url, sink));
  }
  return fetchCached(url, sink);
}

async function fetchCached(url, sink) {
  let meta;
  try {
    meta = await getMeta(url);
  } catch (e) {
    sink.notCaching(e);
  }
  if (sink.notCached) return fresh(url, sink, false);
  const age = Date.now() - (meta?.checked ?? 0);
  const isFresh = age >= 0 && age < freshMs();
  if (meta?.missing) {
    // An optional file the server does not have (e.g. no fp16 variant): remembered as
    // absent for a while, so a cached model loads with no request at all.
    const beside = await folderHoldsFiles(url);
    if (isFresh && beside) {
      if (meta.page) throw pageError(url, meta.page);
      return null;
    }
    let response;
    try {
      response = await send(url, {});
    } catch (e) {
      // Offline: as far as is known, still absent.
      if (beside && meta.page) throw pageError(url, meta.page);
      if (beside) return null;
      throw e;
    }
    return fresh(url, sink, true, response);
  }
  if (!meta || !Array.isArray(meta.hashes)) return fresh(url, sink, !!meta);
  if (meta.complete) return isFresh ? fromCache(url, meta, sink) : revalidate(url, meta, sink);
  if (meta.hashes.length > 0 && resumable(meta)) return resume(url, meta, sink);
  // Without a strong validator the stored part may belong to another version of the file.
  return fresh(url, sink, true);
}

/** Whether the folder of `url` holds a cached file (not only 404s). */
async function folderHoldsFiles(url) {
  const dir = url.slice(0, url.lastIndexOf("/") + 1);
  try {
    const all = await transact("files", "readonly", (tx) =>
      request(tx.objectStore("files").getAll(IDBKeyRange.bound(dir, `${dir}\uffff`))));
    return all.some((m) => !m.missing);
  } catch {
    return false;
  }
}

/** A strong ETag (not W/"…"), which alone makes a Range request safe (If-Range). */
const strong = (etag) => typeof etag === "string" && etag !== "" && !/^W\//i.test(etag);
const resumable = (meta) => strong(meta.etag) && !meta.encoded;
const chunkOf = (meta) => meta.chunk ?? 64 * 1024 * 1024;

function encoded(response) {
  const encoding = (response.headers.get("Content-Encoding") ?? "").trim().toLowerCase();
  return encoding !== "" && encoding !== "identity";
}

/** A new cache entry for the file `response` brings. */
function entry(url, response) {
  return {
    url,
    hashes: [],
    chunk: chunkBytes(),
    size: null,
    complete: false,
    etag: response.headers.get("ETag"),
    lastModified: response.headers.get("Last-Modified"),
    encoded: encoded(response),
    checked: Date.now(),
  };
}

/**
 * A fresh download (dropping what was stored under `url` first when `stored`), of
 * `response` when the request was sent already.
 */
async function fresh(url, sink, stored, response = null) {
  response ??= await send(url, {});
  const caching = !sink.notCached;
  if (response.status === 404) {
    if (caching) {
      await remember404(url);
      await expireManifestsAbove(url);
    }
    return null;
  }
  if (!response.ok) throw httpError(url, response);
  const page = pageAnswer(response);
  if (page) {
    cancel(response);
    if (caching) {
      await remember404(url, page);
      await expireManifestsAbove(url);
    }
    throw pageError(url, page);
  }
  if (!caching) return receive(url, response, sink, null);
  let meta = entry(url, response);
  if (stored) {
    try {
      await forget(url);
    } catch (e) {
      sink.notCaching(e);
      meta = null;
    }
  }
  return receive(url, response, sink, meta);
}

/** A complete cached file not checked for a while: is it still the server's? */
async function revalidate(url, meta, sink) {
  const headers = {};
  if (meta.etag) headers["If-None-Match"] = meta.etag;
  else if (meta.lastModified) headers["If-Modified-Since"] = meta.lastModified;
  else return fromCache(url, meta, sink, true); // nothing to ask with: trust it
  let response;
  try {
    response = await send(url, headers, { timeoutMs: revalidateTimeoutMs() });
  } catch {
    // Offline, unreachable, too slow, or a cross-origin server that refuses conditional
    // requests (CORS preflight): ask with a plain HEAD, else use the cached copy.
    response = await send(url, {}, { method: "HEAD", timeoutMs: revalidateTimeoutMs() }).catch(() => null);
    if (!response) return fromCache(url, meta, sink);
  }
  if (response.status === 404 || response.status === 410) {
    cancel(response);
    await remember404(url);
    return null;
  }
  const page = response.ok && pageAnswer(response);
  if (page) {
    // Gone from the server, which now sends its fallback page.
    cancel(response);
    await remember404(url, page);
    throw pageError(url, page);
  }
  if (response.status === 304 || (response.ok && same(meta, response))) {
    cancel(response);
    return fromCache(url, meta, sink, true);
  }
  if (response.status !== 200) {
    // A server error: the cached copy will do until the next try.
    cancel(response);
    console.warn(`webdiffusion: revalidating ${url} gave HTTP ${response.status}; using the cached copy`);
    return fromCache(url, meta, sink);
  }
  // Changed on the server: replace the stored file.
  if (url.endsWith(`/${MANIFEST}`)) {
    // A new pack manifest: the pack's other files may have changed too.
    await expireUnder(url.slice(0, -MANIFEST.length)).catch(() => {});
  }
  if (response.method === "HEAD") return fresh(url, sink, true);
  try {
    await forget(url);
  } catch (e) {
    sink.notCaching(e);
    return receive(url, response, sink, null);
  }
  return receive(url, response, sink, entry(url, response));
}

/** Whether `response` (to a request the server did not answer with 304) is `meta`'s file. */
function same(meta, response) {
  const etag = response.headers.get("ETag");
  if (etag || meta.etag) return strong(etag) && etag === meta.etag;
  const lastModified = response.headers.get("Last-Modified");
  const length = response.headers.get("Content-Length");
  return !!lastModified && lastModified === meta.lastModified && !encoded(response) && !meta.encoded &&
    length !== null && Number(length) === meta.size;
}

/**
 * Hands over the cached chunks; fetches the rest from the first damaged or missing one.
 * `checked`: the server just confirmed the file.
 */
async function fromCache(url, meta, sink, checked = false) {
  const good = await handStored(url, meta, sink, meta.hashes.length);
  if (good === meta.hashes.length) {
    if (checked) {
      meta.checked = Date.now();
      await putMeta(meta).catch(() => {});
    }
    sink.report(meta.size, meta.size);
    return sink.result();
  }
  meta.hashes.length = good;
  meta.complete = false;
  await putMeta(meta).catch((e) => sink.notCaching(e));
  return repair(url, meta, sink);
}

/** Hands over the first `n` stored chunks that are intact; returns how many were. */
async function handStored(url, meta, sink, n) {
  for (let i = 0; i < n; i++) {
    let bytes;
    try {
      bytes = await getChunk(url, i);
      if (!bytes || (await sha256(bytes)) !== meta.hashes[i]) return i;
      // A web page stored in place of a file (by a version that took it for one): damaged.
      if (i === 0 && looksLikePage(new Uint8Array(bytes))) return i;
    } catch {
      return i;
    }
    sink.put(new Uint8Array(bytes));
  }
  return n;
}

/** The rest of a file of which the first `meta.hashes.length` chunks were handed over. */
async function repair(url, meta, sink) {
  const handed = meta.hashes.slice();
  const offset = sink.bytes;
  const ranged = offset > 0 && resumable(meta);
  const headers = ranged ? { Range: `bytes=${offset}-`, "If-Range": meta.etag } : {};
  let response;
  try {
    response = await send(url, headers);
  } catch (e) {
    if (!ranged) throw e;
    response = await send(url, {});
  }
  if (!response.ok) {
    cancel(response);
    if (response.status !== 404) throw httpError(url, response);
    if (!sink.notCached) await forget(url).catch(() => {});
    throw new Error(`${url}: not found (HTTP 404) while fetching the rest of its cached copy; load again`);
  }
  const page = pageAnswer(response);
  if (page) {
    cancel(response);
    if (!sink.notCached) await remember404(url, page);
    throw pageError(url, page);
  }
  const caching = sink.notCached ? null : meta;
  if (response.status === 206) {
    if (ranged && rangeStart(response) === offset && !encoded(response)) {
      return receive(url, response, sink, caching, { start: offset });
    }
    cancel(response);
    throw new Error(`the server sent another part of ${url} than asked for; load again`);
  }
  // The whole file: its first bytes must be those handed over already.
  if (caching) Object.assign(caching, entry(url, response), { hashes: handed.slice(), chunk: chunkOf(meta) });
  return receive(url, response, sink, caching, { handed });
}

/** An interrupted download with a strong ETag: continue it where the stored part ends. */
async function resume(url, meta, sink) {
  const offset = meta.hashes.length * chunkOf(meta);
  let response;
  try {
    response = await send(url, { Range: `bytes=${offset}-`, "If-Range": meta.etag });
  } catch (e) {
    // Reachable with a plain request (a cross-origin server that refuses If-Range)? Then
    // start over; else keep the stored part for later.
    const head = await send(url, {}, { method: "HEAD" }).catch(() => null);
    cancel(head);
    if (!head) throw e;
    return fresh(url, sink, true);
  }
  if (response.status === 404) {
    cancel(response);
    await remember404(url);
    await expireManifestsAbove(url);
    return null;
  }
  if (!response.ok) throw httpError(url, response);
  const page = pageAnswer(response);
  if (page) {
    cancel(response);
    await remember404(url, page);
    throw pageError(url, page);
  }
  if (response.status === 206 && rangeStart(response) === offset && !encoded(response)) {
    const good = await handStored(url, meta, sink, meta.hashes.length);
    if (good < meta.hashes.length) {
      cancel(response);
      meta.hashes.length = good;
      await putMeta(meta).catch((e) => sink.notCaching(e));
      return repair(url, meta, sink);
    }
    return receive(url, response, sink, meta, { start: offset });
  }
  if (response.status === 206) {
    cancel(response);
    return fresh(url, sink, true);
  }
  // 200: the file changed (If-Range did not match), or the server ignores ranges.
  try {
    await forget(url);
  } catch (e) {
    sink.notCaching(e);
    return receive(url, response, sink, null);
  }
  return receive(url, response, sink, entry(url, response));
}

/** Where a 206 response's bytes start in the file, from its Content-Range. */
function rangeStart(response) {
  const m = /^\s*bytes\s+(\d+)-/i.exec(response.headers.get("Content-Range") ?? "");
  return m ? Number(m[1]) : -1;
}

function cancel(response) {
  response?.body?.cancel().catch(() => {});
}

function httpError(url, response) {
  return new Error(`download failed for ${url}: HTTP ${response.status}`);
}

/**
 * fetch(), its failure worded. `timeoutMs` bounds the wait for the response's headers;
 * downloads for the cache bypass the browser's HTTP cache (`httpCache` false).
 */
async function send(url, headers, { method = "GET", timeoutMs = 0, httpCache = false } = {}) {
  const controller = timeoutMs > 0 ? new AbortController() : null;
  const timer = controller && setTimeout(() => controller.abort(), timeoutMs);
  try {
    const response = await fetch(url, {
      method,
      headers,
      signal: controller?.signal,
      ...(httpCache ? {} : { cache: "no-store" }),
    });
    Object.defineProperty(response, "method", { value: method });
    return response;
  } catch (e) {
    const err = new Error(`download failed for ${url}: ${e.message ?? e} (offline, or the URL is unreachable)`);
    err.cause = e;
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** Where downloaded chunks go: to the caller one by one, or gathered into one array. */
class Sink {
  constructor(url, onProgress, onChunk) {
    this.url = url;
    this.onProgress = typeof onProgress === "function" ? onProgress : null;
    this.onChunk = typeof onChunk === "function" ? onChunk : null;
    this.parts = [];
    this.bytes = 0;
    this.chunks = 0;
    /** Why the file is not being cached (null while it is). */
    this.notCached = null;
  }

  put(chunk) {
    this.bytes += chunk.length;
    this.chunks += 1;
    if (this.onChunk) this.onChunk(chunk);
    else this.parts.push(chunk);
  }

  report(loaded, total) {
    if (!this.onProgress) return;
    const progress = { loaded, total, file: this.url };
    if (this.notCached) progress.notCached = this.notCached;
    this.onProgress(progress);
  }

  /** Storing failed with `e`: the download goes on without the cache. */
  notCaching(e) {
    if (this.notCached) return;
    this.notCached = e?.name === "QuotaExceededError" ? "storage full" : `storage error: ${e?.message ?? e}`;
    console.warn(`webdiffusion: ${this.url} is not cached (${this.notCached}); loading it from the network only`);
  }

  result() {
    return this.onChunk ? true : concat(this.parts, this.bytes);
  }
}

/**
 * Reads `response`'s body into `sink` in chunks, storing each in the cache under `meta`
 * (null: not caching). `start`: where the body starts in the file (a 206). `handed`: the
 * hashes of the chunks already handed over, which the body's first bytes must match.
 */
async function receive(url, response, sink, meta, { start = 0, handed = [] } = {}) {
  handed = handed.slice();
  // With a Content-Encoding, Content-Length counts the encoded bytes: the size is unknown.
  const lengthHeader = response.headers.get("Content-Length");
  const length = !encoded(response) && /^\s*\d+\s*$/.test(lengthHeader ?? "") ? Number(lengthHeader) : null;
  const total = length !== null ? start + length : null;
  const chunk = meta ? chunkOf(meta) : chunkBytes();
  let position = start;
  let verified = 0;
  sink.report(Math.max(position, sink.bytes), total);

  const drop = async (e) => {
    meta = null;
    sink.notCaching(e);
    await forget(url).catch(() => {});
  };
  if (meta) {
    try {
      await putMeta(meta);
    } catch (e) {
      await drop(e);
    }
  }

  let pending = [];
  let pendingBytes = 0;
  const flush = async () => {
    const bytes = concat(pending, pendingBytes);
    pending = [];
    pendingBytes = 0;
    if (verified < handed.length) {
      // Already handed over (from the cache): the server's bytes must be the same.
      if (bytes.length !== chunk || (await sha256(bytes)) !== handed[verified]) {
        if (meta) await forget(url).catch(() => {});
        throw new Error(`${url} changed on the server while it was read from the cache; load again`);
      }
      verified += 1;
      return;
    }
    if (sink.chunks === 0 && start === 0 && looksLikePage(bytes)) {
      // A web page sent as something else (text/plain, octet-stream, no type at all).
      const page = `an HTML page (HTTP ${response.status}, ${response.headers.get("Content-Type") || "no Content-Type"})`;
      if (meta) await remember404(url, page);
      throw pageError(url, page);
    }
    sink.put(bytes);
    if (!meta) return;
    try {
      const hash = await sha256(bytes);
      await transact(["chunks", "files"], "readwrite", (tx) => {
        tx.objectStore("chunks").put(bytes, chunkKey(url, meta.hashes.length));
        tx.objectStore("files").put({ ...meta, hashes: [...meta.hashes, hash] });
      });
      meta.hashes.push(hash);
    } catch (e) {
      await drop(e);
    }
  };

  const reader = response.body.getReader();
  try {
    for (;;) {
      let read;
      try {
        read = await reader.read();
      } catch (e) {
        const err = new Error(`download of ${url} broke off after ${position} bytes: ${e.message ?? e}`);
        err.cause = e;
        throw err;
      }
      if (read.done) break;
      let bytes = read.value;
      position += bytes.length;
      while (bytes.length > 0) {
        const take = Math.min(bytes.length, chunk - pendingBytes);
        pending.push(bytes.subarray(0, take));
        pendingBytes += take;
        bytes = bytes.subarray(take);
        if (pendingBytes === chunk) await flush();
      }
      sink.report(Math.max(position, sink.bytes), total);
    }
  } catch (e) {
    reader.cancel().catch(() => {});
    throw e;
  }
  if (verified < handed.length) {
    if (meta) await forget(url).catch(() => {});
    throw new Error(`${url} changed on the server while it was read from the cache; load again`);
  }
  if (pendingBytes > 0 || sink.chunks === 0) await flush();
  const size = position;
  if (total !== null && size !== total) {
    throw new Error(size < total
      ? `download of ${url} ended early: ${size} of ${total} bytes`
      : `download of ${url} sent ${size} bytes, more than the ${total} announced`);
  }
  if (meta) {
    meta.size = size;
    meta.complete = true;
    meta.checked = Date.now();
    try {
      await putMeta(meta);
    } catch (e) {
      await drop(e);
    }
  }
  if (sink.notCached) sink.report(size, total);
  return sink.result();
}

function concat(parts, size) {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Cached files: [{ url, bytes, complete }]. */
export async function listCached() {
  const all = await transact("files", "readonly", (tx) => request(tx.objectStore("files").getAll()));
  return all.filter((m) => !m.missing).map((m) => ({
    url: m.url,
    bytes: m.complete ? m.size : null,
    complete: !!m.complete,
  }));
}

/**
 * Deletes every cached file at or under `prefix` (whole path segments: ".../sd" is not
 * ".../sd-turbo"). A pack whose file is deleted has its manifest asked about on its next
 * load (a shard that failed its sha256 check may mean that the pack changed).
 */
export async function deleteCached(prefix) {
  const root = prefix.replace(/\/+$/, "");
  const all = await transact("files", "readonly", (tx) => request(tx.objectStore("files").getAllKeys()));
  const gone = all.filter((url) => url === root || url === prefix || url.startsWith(`${root}/`));
  for (const url of gone) await forget(url);
  await expireManifestsAbove(...gone.filter((url) => !url.endsWith(`/${MANIFEST}`)));
}
