// Downloads model files with progress and keeps them in IndexedDB, in chunks of at most
// 64 MiB, so that a second visit needs no network, an interrupted download resumes from
// the last stored chunk, and a damaged chunk is detected (SHA-256) and fetched again.

const DB_NAME = "webdiffusion";
// 64 MiB; tests set globalThis.__webdiffusionChunkBytes to exercise resuming on small files.
const chunkBytes = () => globalThis.__webdiffusionChunkBytes ?? 64 * 1024 * 1024;

let dbPromise = null;

function request(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function db() {
  if (!dbPromise) {
    const open = indexedDB.open(DB_NAME, 1);
    open.onupgradeneeded = () => {
      open.result.createObjectStore("files", { keyPath: "url" });
      open.result.createObjectStore("chunks");
    };
    dbPromise = request(open);
  }
  return dbPromise;
}

async function store(name, mode, f) {
  const tx = (await db()).transaction(name, mode);
  const result = await f(tx.objectStore(name));
  await new Promise((resolve, reject) => {
    tx.oncomplete = resolve;
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction aborted"));
  });
  return result;
}

const chunkKey = (url, i) => `${url}#${i}`;

async function sha256(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function forget(url) {
  const meta = await store("files", "readonly", (s) => request(s.get(url)));
  await store("chunks", "readwrite", (s) => {
    for (let i = 0; i < (meta?.hashes.length ?? 0) + 1; i++) s.delete(chunkKey(url, i));
  });
  await store("files", "readwrite", (s) => request(s.delete(url)));
}

function quotaError(url, e) {
  const err = new Error(
    `browser storage quota exceeded while caching ${url}; free space (Pipeline.deleteCached) or load with { cache: false }`,
  );
  err.cause = e;
  return err;
}

export function hasWebGpu() {
  return typeof navigator !== "undefined" && !!navigator.gpu;
}

/**
 * The bytes at `url` (Uint8Array), or null on HTTP 404. With `onChunk`, the bytes are
 * handed to it chunk by chunk instead (and never held whole) and it resolves to true.
 */
export async function fetchFile(url, cache, onProgress, onChunk) {
  const report = (loaded, total) => {
    if (typeof onProgress === "function") onProgress({ loaded, total, file: url });
  };
  const sink = new Sink(typeof onChunk === "function" ? onChunk : null);
  if (!cache) return download(url, null, report, sink);
  if (navigator.storage?.persist) navigator.storage.persist().catch(() => {});

  let meta = await store("files", "readonly", (s) => request(s.get(url)));
  // An optional file the server does not have (e.g. no fp16 variant): remembered as
  // absent, so a cached model loads with no request at all.
  if (meta?.missing) return null;
  if (meta) {
    // Verify what is stored; use the chunks before the first damaged or missing one.
    let good = 0;
    for (; good < meta.hashes.length; good++) {
      const bytes = await store("chunks", "readonly", (s) => request(s.get(chunkKey(url, good))));
      if (!bytes || (await sha256(bytes)) !== meta.hashes[good]) break;
      sink.put(new Uint8Array(bytes));
    }
    if (good < meta.hashes.length) {
      meta.hashes.length = good;
      meta.complete = false;
    }
    if (meta.complete) {
      report(meta.size, meta.size);
      return sink.result();
    }
  }
  meta = meta && meta.etag !== undefined ? meta : { url, hashes: [], size: null, etag: null };
  meta.hashes.length = sink.chunks;
  return download(url, { meta, stored: sink.bytes }, report, sink);
}

/** Where downloaded chunks go: to the caller one by one, or gathered into one array. */
class Sink {
  constructor(onChunk) {
    this.onChunk = onChunk;
    this.parts = [];
    this.bytes = 0;
    this.chunks = 0;
  }

  put(chunk) {
    this.bytes += chunk.length;
    this.chunks += 1;
    if (this.onChunk) this.onChunk(chunk);
    else this.parts.push(chunk);
  }

  result() {
    return this.onChunk ? true : concat(this.parts, this.bytes);
  }
}

async function download(url, cached, report, sink) {
  const start = cached?.stored ?? 0;
  let response;
  try {
    const headers = start > 0 ? { Range: `bytes=${start}-` } : {};
    if (start > 0 && cached.meta.etag) headers["If-Range"] = cached.meta.etag;
    response = await fetch(url, { headers });
  } catch (e) {
    const err = new Error(`download failed for ${url}: ${e.message ?? e} (offline, or the URL is unreachable)`);
    err.cause = e;
    throw err;
  }
  if (response.status === 404) {
    if (cached) await store("files", "readwrite", (s) => request(s.put({ url, missing: true, hashes: [] })));
    return null;
  }
  if (!response.ok) throw new Error(`download failed for ${url}: HTTP ${response.status}`);
  const meta = cached?.meta ?? null;
  let offset = start;
  if (start > 0 && response.status !== 206) {
    // The server ignored the range (or the file changed): what was handed over is stale.
    await forget(url).catch(() => {});
    throw new Error(`the server did not resume ${url}; load again to download it whole`);
  }
  const length = Number(response.headers.get("Content-Length"));
  const total = length > 0 ? offset + length : null;
  if (meta) {
    meta.size = total;
    meta.etag = response.headers.get("ETag") ?? "";
    meta.complete = false;
  }
  report(offset, total);

  let pending = [];
  let pendingBytes = 0;
  const flush = async () => {
    const chunk = concat(pending, pendingBytes);
    pending = [];
    pendingBytes = 0;
    sink.put(chunk);
    if (!meta) return;
    try {
      const i = meta.hashes.length;
      const hash = await sha256(chunk);
      await store("chunks", "readwrite", (s) => request(s.put(chunk, chunkKey(url, i))));
      meta.hashes.push(hash);
      await store("files", "readwrite", (s) => request(s.put(meta)));
    } catch (e) {
      await forget(url).catch(() => {});
      if (e?.name === "QuotaExceededError") throw quotaError(url, e);
      throw e;
    }
  };
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    let bytes = value;
    while (bytes.length > 0) {
      const take = Math.min(bytes.length, chunkBytes() - pendingBytes);
      pending.push(bytes.subarray(0, take));
      pendingBytes += take;
      bytes = bytes.subarray(take);
      if (pendingBytes === chunkBytes()) await flush();
    }
    offset += value.length;
    report(offset, total);
  }
  if (pendingBytes > 0 || sink.chunks === 0) await flush();
  const size = sink.bytes;
  if (total !== null && size !== total) {
    throw new Error(`download of ${url} ended early: ${size} of ${total} bytes`);
  }
  if (meta) {
    meta.size = size;
    meta.complete = true;
    await store("files", "readwrite", (s) => request(s.put(meta)));
  }
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
  const all = await store("files", "readonly", (s) => request(s.getAll()));
  return all.filter((m) => !m.missing).map((m) => ({
    url: m.url,
    bytes: m.complete ? m.size : null,
    complete: !!m.complete,
  }));
}

/** Deletes every cached file whose URL starts with `prefix`. */
export async function deleteCached(prefix) {
  const all = await store("files", "readonly", (s) => request(s.getAllKeys()));
  for (const url of all) if (url.startsWith(prefix)) await forget(url);
}
