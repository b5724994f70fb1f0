// The IndexedDB cache (js/cache.js, as shipped in pkg/) against odd and hostile servers,
// and the worker's concurrency, in headless Chromium: gzip-encoded responses, 404s that
// later resolve, resuming without a strong ETag, files changed on the server (304/200,
// offline), packs whose shards changed, deleteCached's path matching, a full disk in the
// middle of a download, and aborting or reloading while generations run in the worker.
// Small in-memory files are served by the test server; only a few tests load a model.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cli, damageChunk, launch, root } from "./helpers.mjs";
import { serve } from "./server.mjs";

// The cache module the package ships (wasm-pack copies crate/js/cache.js into a snippet).
const snippet = readdirSync(join(root, "pkg/snippets")).find((d) => d.startsWith("webdiffusion-"));
const CACHE = process.env.WEBDIFFUSION_CACHE_JS ?? `/pkg/snippets/${snippet}/js/cache.js`;
const MODEL = "/tests/fixtures/sd1-tiny";
const MINUTE = 60 * 1000;

const later = mkdtempSync(join(tmpdir(), "webdiffusion-later-"));
const packs = mkdtempSync(join(tmpdir(), "webdiffusion-packs-"));
let server;
let browser;

before(async () => {
  server = await serve(root, { "/later/": later, "/packs/": packs });
  server.setFile("/blank.html", "<!doctype html><title>cache test</title>");
  browser = await launch();
});

after(async () => {
  await browser?.close();
  server?.close();
  rmSync(later, { recursive: true, force: true });
  rmSync(packs, { recursive: true, force: true });
});

/**
 * A page in a fresh browser context (empty IndexedDB) whose clock `advance(ms)` moves
 * forward; the package's test page (wasm initialised) when `wasm`, else a blank page.
 */
async function openPage({ wasm = false } = {}) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const warnings = [];
  const errors = [];
  page.on("console", (m) => {
    if (m.type() === "warning") warnings.push(m.text());
    if (m.type() === "error") errors.push(m.text());
  });
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.addInitScript(() => {
    const now = Date.now.bind(Date);
    let shift = 0;
    Date.now = () => now() + shift;
    window.advance = (ms) => {
      shift += ms;
    };
  });
  await page.goto(`${server.base}${wasm ? "/tests/web/page.html" : "/blank.html"}`);
  if (wasm) await page.waitForFunction(() => window.ready);
  return { page, context, warnings, errors };
}

/** `fetchFile(url, cache)` in the page: the text it gave (null on 404) or its error. */
function fetchVia(page, url, { chunk = 1024, cache = true, onChunk = false } = {}) {
  return page.evaluate(async ({ module, url, chunk, cache, onChunk }) => {
    const { fetchFile } = await import(module);
    globalThis.__webdiffusionChunkBytes = chunk;
    const progress = [];
    const chunks = [];
    try {
      const out = await fetchFile(url, cache, (p) => progress.push(p),
        onChunk ? (c) => chunks.push(new Uint8Array(c)) : undefined);
      let bytes = out;
      if (out === true) {
        bytes = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
        let at = 0;
        for (const c of chunks) {
          bytes.set(c, at);
          at += c.length;
        }
      }
      return { text: bytes === null ? null : new TextDecoder().decode(bytes), progress, chunks: chunks.length };
    } catch (e) {
      return { error: String(e.message ?? e), name: e.name, progress };
    }
  }, { module: CACHE, url, chunk, cache, onChunk });
}

/** `Pipeline.load(url)` in the page (the pipeline freed at once): "loaded", or its error message. */
const loadModel = (page, url) => page.evaluate(async ({ url }) => {
  try {
    (await window.webdiffusion.Pipeline.load(url, {})).free();
    return "loaded";
  } catch (e) {
    return e.message;
  }
}, { url });
const listCached = (page) => page.evaluate(async (module) => (await import(module)).listCached(), CACHE);
const advance = (page, ms) => page.evaluate((ms) => window.advance(ms), ms);
const requests = (from, name) => server.log.slice(from).filter((r) => r.path.endsWith(name));

/** Text of `lines` numbered lines tagged `tag`: two tags of one length give one size. */
const content = (tag, lines) => Array.from({ length: lines }, (_, i) => `${tag} line ${i}\n`).join("");

test("a gzip-encoded file loads whole, with an unknown total, and is cached at its decoded size", async () => {
  const { page, context } = await openPage();
  const text = content("gz", 2000);
  server.setFile("/mem/gz.txt", text);
  const url = `${server.base}/gzip/mem/gz.txt`;
  const from = server.log.length;
  const first = await fetchVia(page, url, { chunk: 4096 });
  assert.equal(first.error, undefined);
  assert.equal(first.text, text);
  assert.equal(requests(from, "/gzip/mem/gz.txt").length, 1);
  assert.ok(first.progress.length > 1 && first.progress.every((p) => p.total === null),
    `totals ${first.progress.map((p) => p.total)}`);
  assert.equal(first.progress.at(-1).loaded, text.length);
  // Streamed to a caller and uncached, too.
  const streamed = await fetchVia(page, url, { cache: false, onChunk: true, chunk: 4096 });
  assert.equal(streamed.text, text);
  assert.ok(streamed.chunks > 1);

  const cached = (await listCached(page)).find((c) => c.url === url);
  assert.deepEqual(cached, { url, bytes: text.length, complete: true });
  const before = server.log.length;
  const again = await fetchVia(page, url, { chunk: 4096 });
  assert.equal(again.text, text);
  assert.deepEqual(requests(before, "gz.txt"), [], "the second load came from the cache");
  await context.close();
});

test("a 404 is remembered only beside cached files and for minutes; a file that appears later loads", async () => {
  const { page, context } = await openPage();
  // Alone (a model that is not there at all): asked for again at once.
  const lone = `${server.base}/mem/lone/appears.txt`;
  let from = server.log.length;
  assert.equal((await fetchVia(page, lone)).text, null);
  assert.equal((await fetchVia(page, lone)).text, null);
  assert.equal(requests(from, "lone/appears.txt").length, 2, "a 404 alone in its folder is not trusted");
  server.setFile("/mem/lone/appears.txt", content("lone", 20));
  assert.equal((await fetchVia(page, lone)).text, content("lone", 20));

  // Beside a cached file (an optional file of a model, e.g. an fp16 variant): remembered,
  // for 10 minutes.
  server.setFile("/mem/model/config.txt", content("config", 5));
  assert.equal((await fetchVia(page, `${server.base}/mem/model/config.txt`)).text, content("config", 5));
  const url = `${server.base}/mem/model/appears.txt`;
  from = server.log.length;
  assert.equal((await fetchVia(page, url)).text, null);
  assert.equal((await fetchVia(page, url)).text, null);
  assert.equal(requests(from, "model/appears.txt").length, 1, "the 404 is remembered for a while");
  const text = content("here", 50);
  server.setFile("/mem/model/appears.txt", text);
  await advance(page, 5 * MINUTE);
  assert.equal((await fetchVia(page, url)).text, null);
  await advance(page, 6 * MINUTE);
  const found = await fetchVia(page, url);
  assert.equal(found.text, text, "asked again after 10 minutes");
  assert.equal(requests(from, "model/appears.txt").length, 2);
  await context.close();
});

test("an interrupted download resumes only with a strong ETag, else starts over", async () => {
  const { page, context } = await openPage();
  const v1 = content("v1", 400);
  const v2 = content("v2", 400);
  for (const [odd, resumes] of [["noetag", false], ["weaketag", false], ["", true]]) {
    // Changed on the server between the cut-off download and the next one.
    for (const change of [true, false]) {
      const path = `/mem/resume-${odd || "strong"}-${change}.txt`;
      server.setFile(path, v1);
      const url = `${server.base}${odd ? `/${odd}` : ""}/cut${path}`;
      const from = server.log.length;
      const cut = await fetchVia(page, url);
      assert.ok(cut.error, `${url}: the first download is cut off`);
      if (change) server.setFile(path, v2);
      const second = await fetchVia(page, url);
      assert.equal(second.error, undefined, `${url}: ${second.error}`);
      assert.equal(second.text, change ? v2 : v1, `${url}: the server's file, not old and new bytes stitched`);
      const [, again] = requests(from, path);
      if (resumes) {
        assert.match(again.range ?? "", /^bytes=[1-9]\d*-$/, `${url}: resumed with a Range request`);
        assert.equal(again.ifRange, JSON.stringify(createHash("sha1").update(v1).digest("hex").slice(0, 20)));
        assert.equal(again.status, change ? 200 : 206);
      } else {
        assert.equal(again.range, null, `${url}: without a strong ETag the download starts over`);
      }
      const cached = (await listCached(page)).find((c) => c.url === url);
      assert.deepEqual(cached, { url, bytes: v1.length, complete: true });
    }
  }
  await context.close();
});

test("a stale cached file is revalidated: 304 keeps it, 200 replaces it, offline uses it", async () => {
  const { page, context } = await openPage();
  const v1 = content("v1", 300);
  const v2 = content("v2", 300);
  // With an ETag (If-None-Match), and with only Last-Modified (If-Modified-Since).
  for (const odd of ["", "/noetag"]) {
    const path = `/mem/revalidate${odd.replace("/", "-")}.txt`;
    const t0 = new Date(Date.now() - 60 * MINUTE);
    server.setFile(path, v1, t0);
    const url = `${server.base}${odd}${path}`;
    const from = server.log.length;
    assert.equal((await fetchVia(page, url)).text, v1);
    assert.equal((await fetchVia(page, url)).text, v1);
    assert.equal(requests(from, path).length, 1, "fresh: no request");
    // An optional file beside it that the server does not have.
    const absent = `${server.base}${odd}/mem/absent${odd.replace("/", "-")}.txt`;
    assert.equal((await fetchVia(page, absent)).text, null);

    await advance(page, 10 * MINUTE);
    assert.equal((await fetchVia(page, url)).text, v1);
    const check = requests(from, path)[1];
    assert.ok(odd ? check?.ifModifiedSince === t0.toUTCString() : check?.ifNoneMatch,
      `conditional request: ${JSON.stringify(check)}`);
    assert.equal(check.status, 304);

    server.setFile(path, v2, new Date(t0.getTime() + 10 * 1000));
    assert.equal((await fetchVia(page, url)).text, v1, "confirmed by the 304: fresh again");
    await advance(page, 10 * MINUTE);
    const changed = await fetchVia(page, url);
    assert.equal(changed.text, v2, `${url}: the changed file replaces the cached one`);
    assert.equal(requests(from, path).at(-1).status, 200);
    assert.equal((await fetchVia(page, url)).text, v2);
    assert.equal(requests(from, path).length, 3);

    await advance(page, 10 * MINUTE);
    await context.setOffline(true);
    const offline = await fetchVia(page, url);
    await context.setOffline(false);
    assert.equal(offline.error, undefined, `offline: ${offline.error}`);
    assert.equal(offline.text, v2, "offline, the cached copy is used");
    await context.setOffline(true);
    const stillAbsent = await fetchVia(page, absent);
    await context.setOffline(false);
    assert.deepEqual([stillAbsent.error, stillAbsent.text], [undefined, null], "offline, a known 404 stays one");
  }
  await context.close();
});


test("a cross-origin server that refuses conditional requests (CORS) is revalidated with HEAD", async () => {
  const { page, context } = await openPage();
  const v1 = content("v1", 100);
  const v2 = content("v2", 100);
  const path = "/mem/cors.txt";
  server.setFile(path, v1);
  // The page is on 127.0.0.1, the file on localhost: another origin.
  const url = `${server.base.replace("127.0.0.1", "localhost")}/cors${path}`;
  assert.equal((await fetchVia(page, url)).text, v1);
  let from = server.log.length;
  await advance(page, 11 * MINUTE);
  const same = await fetchVia(page, url);
  assert.deepEqual([same.error, same.text], [undefined, v1]);
  assert.deepEqual(requests(from, path).map((r) => `${r.method} ${r.status}`), ["OPTIONS 204", "HEAD 200"]);
  assert.equal((await fetchVia(page, url)).text, v1, "confirmed: fresh again");

  server.setFile(path, v2);
  await advance(page, 11 * MINUTE);
  from = server.log.length;
  assert.equal((await fetchVia(page, url)).text, v2, "the changed file replaces the cached one");
  assert.deepEqual(requests(from, path).map((r) => `${r.method} ${r.status}`), ["OPTIONS 204", "HEAD 200", "GET 200"]);
  await context.close();
});

test("a damaged chunk is fetched again with each byte handed once, from a server that ignores Range too", async () => {
  const { page, context } = await openPage();
  const v1 = content("v1", 500);
  const v2 = content("v2", 500);
  for (const odd of ["", "/norange"]) {
    const path = `/mem/damaged${odd.replace("/", "-")}.txt`;
    server.setFile(path, v1);
    const url = `${server.base}${odd}${path}`;
    assert.equal((await fetchVia(page, url)).text, v1);
    await damageChunk(page, url, 3);
    const from = server.log.length;
    const repaired = await fetchVia(page, url, { onChunk: true });
    assert.equal(repaired.error, undefined, repaired.error);
    assert.equal(repaired.text, v1, `${url}: every byte once, in order`);
    const [asked] = requests(from, path);
    assert.equal(asked.range, odd ? "bytes=3072-" : "bytes=3072-", "asked from the damaged chunk on");
    assert.equal(asked.status, odd ? 200 : 206);
    assert.equal((await fetchVia(page, url)).text, v1);
    assert.equal(requests(from, path).length, 1, "repaired in the cache");
  }
  // Changed on the server meanwhile (and no Range): the bytes handed over were the old
  // file's, so the load fails plainly, and the next one gets the new file.
  const path = "/mem/damaged-changed.txt";
  server.setFile(path, v1);
  const url = `${server.base}/norange${path}`;
  assert.equal((await fetchVia(page, url)).text, v1);
  await damageChunk(page, url, 3);
  server.setFile(path, v2);
  assert.match((await fetchVia(page, url, { onChunk: true })).error ?? "", /changed on the server.*load again/);
  assert.equal((await fetchVia(page, url)).text, v2);
  await context.close();
});

test("two loads of one file at once download it once", async () => {
  const { page, context } = await openPage();
  const text = content("twice", 400);
  server.setFile("/mem/twice.txt", text);
  const from = server.log.length;
  const url = `${server.base}/mem/twice.txt`;
  const both = await page.evaluate(async ({ module, url }) => {
    const { fetchFile } = await import(module);
    globalThis.__webdiffusionChunkBytes = 1024;
    const decode = (b) => new TextDecoder().decode(b);
    return (await Promise.all([fetchFile(url, true), fetchFile(url, true)])).map(decode);
  }, { module: CACHE, url });
  assert.deepEqual(both, [text, text]);
  assert.equal(requests(from, "twice.txt").length, 1);
  await context.close();
});

test("deleteCached deletes whole path segments only", async () => {
  const { page, context } = await openPage();
  const files = ["models/sd/a.txt", "models/sd/unet/b.txt", "models/sd-turbo/a.txt", "models/sdxl.txt"];
  for (const f of files) server.setFile(`/mem/${f}`, content(f, 3));
  for (const f of files) assert.equal((await fetchVia(page, `${server.base}/mem/${f}`)).text, content(f, 3));
  const left = async (prefix) => page.evaluate(async ({ module, prefix, base }) => {
    const { deleteCached, listCached } = await import(module);
    await deleteCached(prefix);
    return (await listCached()).map((c) => c.url.slice(base.length)).sort();
  }, { module: CACHE, prefix, base: `${server.base}/mem/` });
  assert.deepEqual(await left(`${server.base}/mem/models/sd`),
    ["models/sd-turbo/a.txt", "models/sdxl.txt"]);
  assert.deepEqual(await left(`${server.base}/mem/models/sd-turbo/`), ["models/sdxl.txt"]);
  assert.deepEqual(await left(`${server.base}/mem/models/sdxl.txt`), []);
  await context.close();
});

test("a full disk in the middle of a download: loaded without caching, each byte handed once", async () => {
  const { page, context, warnings } = await openPage();
  const text = content("full", 600);
  server.setFile("/mem/full.txt", text);
  for (const onChunk of [true, false]) {
    const url = `${server.base}/mem/full.txt?${onChunk}`;
    // Storing the fourth chunk fails, as IndexedDB does when the quota is exhausted.
    await page.evaluate(() => {
      const put = IDBObjectStore.prototype.put;
      let chunks = 0;
      IDBObjectStore.prototype.put = function (value, key) {
        if (value instanceof Uint8Array && ++chunks > 3) {
          throw new DOMException("the disk is full", "QuotaExceededError");
        }
        return put.call(this, value, key);
      };
      window.unpatch = () => {
        IDBObjectStore.prototype.put = put;
      };
    });
    const out = await fetchVia(page, url, { onChunk });
    await page.evaluate(() => window.unpatch());
    assert.equal(out.error, undefined, out.error);
    assert.equal(out.text, text, "every byte, once, in order");
    if (onChunk) assert.equal(out.chunks, Math.ceil(text.length / 1024));
    assert.equal(out.progress.at(-1).notCached, "storage full", "the progress says why it is not cached");
    assert.ok(!out.progress.some((p) => p.loaded > text.length));
    assert.deepEqual((await listCached(page)).filter((c) => c.url === url), [], "no partial entry is kept");
  }
  assert.ok(warnings.some((w) => /full\.txt.*not cached.*storage full/.test(w)), warnings.join("\n"));
  await context.close();
});

test("Pipeline.load: a model that appears on the server later loads; a full disk loads uncached", async () => {
  const { page, context, warnings } = await openPage({ wasm: true });
  const url = `${server.base}/later/sd1-tiny`;
  const load = () => page.evaluate(async ({ url }) => {
    const progress = [];
    try {
      const pipe = await window.webdiffusion.Pipeline.load(url, { onProgress: (p) => progress.push(p) });
      pipe.free();
      return { notCached: [...new Set(progress.filter((p) => p.notCached).map((p) => p.file))] };
    } catch (e) {
      return { error: e.message };
    }
  }, { url });
  assert.match((await load()).error ?? "", /later\/sd1-tiny\/model_index\.json: not found/);
  cpSync(join(root, MODEL), join(later, "sd1-tiny"), { recursive: true });
  const loaded = await load();
  assert.deepEqual(loaded, { notCached: [] }, "loads as soon as it is on the server");

  // The quota runs out in the middle of the UNet's weights: the load goes on without
  // caching them (the Rust reader sees each byte once) and says so.
  const unet = `${url}/unet/diffusion_pytorch_model.safetensors`;
  await page.evaluate(async ({ module, unet }) => {
    const { deleteCached } = await import(module);
    await deleteCached(unet);
    globalThis.__webdiffusionChunkBytes = 64 * 1024;
    const put = IDBObjectStore.prototype.put;
    let chunks = 0;
    IDBObjectStore.prototype.put = function (value, key) {
      if (value instanceof Uint8Array && ++chunks > 2) throw new DOMException("the disk is full", "QuotaExceededError");
      return put.call(this, value, key);
    };
  }, { module: CACHE, unet });
  const full = await load();
  assert.deepEqual(full, { notCached: [unet] });
  const cached = await page.evaluate(() => window.webdiffusion.Pipeline.cached());
  assert.ok(!cached.some((c) => c.url === unet), "no partial entry of the UNet is kept");
  assert.ok(cached.some((c) => c.url === `${url}/vae/diffusion_pytorch_model.safetensors` && c.complete));
  assert.ok(warnings.some((w) => /unet.*not cached \(storage full\)/.test(w)), warnings.join("\n"));
  await context.close();
});

test("a pack changed on the server is picked up after a shard fails its sha256 check", async () => {
  const v1 = join(packs, "v1");
  execFileSync(cli, ["convert", "--model", join(root, MODEL), "--quant", "q4", "--out", v1]);
  // The same pack with other UNet weights (one byte changed), its manifest updated.
  const v2 = join(packs, "v2");
  cpSync(v1, v2, { recursive: true });
  const shard = readFileSync(join(v2, "unet/shard-00000.bin"));
  const oldHash = createHash("sha256").update(shard).digest("hex");
  shard[shard.length - 1] ^= 1;
  writeFileSync(join(v2, "unet/shard-00000.bin"), shard);
  const manifest = readFileSync(join(v2, "manifest.json"), "utf8");
  assert.ok(manifest.includes(oldHash));
  writeFileSync(join(v2, "manifest.json"), manifest.replace(oldHash, createHash("sha256").update(shard).digest("hex")));
  const served = join(packs, "pack");
  cpSync(v1, served, { recursive: true });

  const { page, context } = await openPage({ wasm: true });
  const url = `${server.base}/packs/pack`;
  const load = () => loadModel(page, url);
  assert.equal(await load(), "loaded");
  // The server gets the new pack; the cache still holds the old manifest (fresh) when
  // the UNet shard has to be fetched again (evicted here).
  rmSync(served, { recursive: true });
  cpSync(v2, served, { recursive: true });
  await page.evaluate(async ({ key }) => {
    const db = await new Promise((ok, err) => {
      const r = indexedDB.open("webdiffusion");
      r.onsuccess = () => ok(r.result);
      r.onerror = () => err(r.error);
    });
    const tx = db.transaction("files", "readwrite");
    tx.objectStore("files").delete(key);
    await new Promise((ok) => { tx.oncomplete = ok; });
    db.close();
  }, { key: `${url}/unet/shard-00000.bin` });
  assert.match(await load(), /unet\/shard-00000\.bin.*sha256/);
  const from = server.log.length;
  assert.equal(await load(), "loaded", "the next load asks for the manifest again and gets the new pack");
  const asked = requests(from, "/packs/pack/manifest.json");
  assert.ok(asked.length === 1 && asked[0].ifNoneMatch && asked[0].status === 200, JSON.stringify(asked));
  await context.close();
});


test("a web page in place of a file (a single-page-app fallback) is an error naming the URL, never cached", async () => {
  const { page, context } = await openPage();
  // Told by its Content-Type (text/html), or by its first bytes when sent as something else.
  for (const [odd, type] of [["spa", "text/html"], ["spabare", "application/octet-stream"]]) {
    for (const options of [{}, { cache: false }, { onChunk: true }]) {
      const url = `${server.base}/${odd}/mem/page/missing-${Object.keys(options).join("") || "cached"}.json`;
      const got = await fetchVia(page, url, options);
      assert.equal(got.name, "HtmlPageError", `${url}: ${JSON.stringify(got)}`);
      assert.equal(got.error.startsWith(`${url} answered with an HTML page (HTTP 200, ${type})`), true, got.error);
      assert.equal(got.chunks ?? 0, 0, "no byte of the page was handed over");
    }
  }
  const cached = await listCached(page);
  assert.deepEqual(cached.filter((c) => c.url.includes("/mem/page/")), [], "no page is listed as a cached file");

  // A page that an earlier version cached as a file is dropped and the file fetched again.
  const url = `${server.base}/mem/old/manifest.json`;
  server.setFile("/mem/old/manifest.json", "{\"format\": \"x\"}");
  await page.evaluate(async ({ url, html }) => {
    const bytes = new TextEncoder().encode(html);
    const hash = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)),
      (b) => b.toString(16).padStart(2, "0")).join("");
    const db = await new Promise((ok, err) => {
      const r = indexedDB.open("webdiffusion");
      r.onsuccess = () => ok(r.result);
      r.onerror = () => err(r.error);
    });
    const tx = db.transaction(["files", "chunks"], "readwrite");
    tx.objectStore("chunks").put(bytes, `${url}#0`);
    tx.objectStore("files").put({ url, hashes: [hash], chunk: 1024, size: bytes.length, complete: true,
      etag: null, lastModified: null, encoded: false, checked: Date.now() });
    await new Promise((ok) => { tx.oncomplete = ok; });
    db.close();
  }, { url, html: "<!DOCTYPE html><html><body>app</body></html>" });
  assert.equal((await fetchVia(page, url)).text, "{\"format\": \"x\"}");
  await context.close();
});

test("Pipeline.load behind a single-page-app fallback: a folder loads; what is missing is named with what came back", async () => {
  const { page, context } = await openPage({ wasm: true });
  const load = (url) => loadModel(page, url);
  // manifest.json, the fp16 weight variants and tokenizer.json all answer with the page.
  for (const odd of ["spa", "spabare"]) {
    const url = `${server.base}/${odd}${MODEL}`;
    assert.equal(await load(url), "loaded", url);
    const cached = (await listCached(page)).filter((c) => c.url.startsWith(`${url}/`)).map((c) => c.url.slice(url.length));
    assert.ok(cached.includes("/unet/diffusion_pytorch_model.safetensors"), cached.join());
    assert.deepEqual(cached.filter((f) => /manifest|fp16|tokenizer\.json/.test(f)), [], "no page was cached");
    const from = server.log.length;
    assert.equal(await load(url), "loaded");
    assert.deepEqual(requests(from, ""), [], `${url}: the second load needs no request, pages remembered as absent`);
  }

  const none = `${server.base}/spa/no/such/model`;
  assert.match(await load(none), new RegExp(`^${none}: neither a pack nor a diffusers model folder: ` +
    `${none}/manifest\\.json: answered with an HTML page \\(HTTP 200, text/html\\); ` +
    `${none}/model_index\\.json: answered with an HTML page \\(HTTP 200, text/html\\)`));

  // Required files answered with the page: the UNet's weights (both variants), the tokenizer.
  for (const [name, remove, expected] of [
    ["no-unet", "unet/diffusion_pytorch_model.safetensors",
      /unet's weights are missing: \S+\/spa\/later\/no-unet\/unet\/diffusion_pytorch_model\.fp16\.safetensors: answered with an HTML page \(HTTP 200, text\/html\); \S+\/unet\/diffusion_pytorch_model\.safetensors: answered with an HTML page/],
    ["no-vocab", "tokenizer/vocab.json",
      /tokenizer needs tokenizer\.json, or vocab\.json and merges\.txt: .*later\/no-vocab\/tokenizer\/tokenizer\.json: answered with an HTML page \(HTTP 200, text\/html\); \S+\/tokenizer\/vocab\.json: answered with an HTML page/],
    ["no-vae-config", "vae/config.json",
      /later\/no-vae-config\/vae\/config\.json: answered with an HTML page \(HTTP 200, text\/html\); a diffusers model folder needs it/],
  ]) {
    cpSync(join(root, MODEL), join(later, name), { recursive: true });
    rmSync(join(later, name, remove));
    assert.match(await load(`${server.base}/spa/later/${name}`), expected);
  }
  await context.close();
});


// worker.js over a stand-in for the package: generations that take 20 ms a step and honour
// their signal, and a Pipeline that records when it is freed (and fails if it is freed
// while generating), so the worker's concurrency is tested fast and exactly.
const MOCK = `
const channel = new BroadcastChannel("webdiffusion-mock");
const log = (event) => channel.postMessage(event);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let next = 1;
export default async function init() {}
export function canny() {}
export function __panicForTesting() {}
export class Pipeline {
  static async load(url, options) {
    await sleep(50);
    options.onProgress?.({ loaded: 1, total: 1, file: url });
    const pipe = new Pipeline(\`\${url}#\${next++}\`);
    log({ event: "load", pipeline: pipe.name });
    return pipe;
  }
  constructor(name) {
    this.name = name;
    this.generating = 0;
    this.freed = false;
  }
  async generate(options) {
    if (this.freed) throw new Error("null pointer passed to rust");
    if (options.prompt === "panic") {
      // What the package does on a panic: the event, then a promise that never settles.
      log({ event: "panic", pipeline: this.name });
      globalThis.dispatchEvent(new CustomEvent("webdiffusion-panic", { detail: "panicked at mock.rs:1:1" }));
      return new Promise(() => {});
    }
    this.generating++;
    try {
      for (let step = 1; step <= options.steps; step++) {
        await sleep(20);
        if (options.signal?.aborted) throw new DOMException("the generation was aborted", "AbortError");
        if (this.freed) throw new Error(\`\${this.name} was freed while generating\`);
        options.onStep?.(step, options.steps, new Float32Array(4));
      }
      return { pixels: new Uint8ClampedArray(4), latents: new Float32Array(4), width: 1, height: 1,
        seed: options.seed, steps: options.steps, scheduler: "ddim", guidance: 7.5 };
    } finally {
      this.generating--;
      log({ event: "ended", pipeline: this.name, seed: options.seed });
    }
  }
  free() {
    log({ event: "free", pipeline: this.name, generating: this.generating });
    this.freed = true;
  }
}
`;

/** Runs `script(worker, helpers)` in a page against worker.js over the stand-in package. */
async function withMockWorker(script) {
  server.setFile("/mock/worker.js", readFileSync(join(root, "pkg/worker.js")));
  server.setFile("/mock/webdiffusion.js", MOCK);
  const { page, context } = await openPage();
  const out = await page.evaluate(async (script) => {
    const events = [];
    new BroadcastChannel("webdiffusion-mock").onmessage = ({ data }) => events.push(data);
    const worker = new Worker("/mock/worker.js", { type: "module" });
    const replies = new Map();
    const steps = [];
    const waiting = [];
    worker.onmessage = ({ data }) => {
      if (data.type === "step") steps.push(data.id);
      else if (data.type !== "progress") replies.set(data.id, data);
      for (const w of waiting.splice(0)) w();
    };
    // Waits until `ready()` (checked at each message), at most 20 s.
    const until = async (ready, what = "a reply") => {
      const deadline = Date.now() + 20000;
      while (!ready()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((resolve) => {
          waiting.push(resolve);
          setTimeout(resolve, 1000);
        });
      }
    };
    const reply = async (id) => {
      await until(() => replies.has(id), `the reply to ${id}`);
      const { type, name, message } = replies.get(id);
      return { type, name: name ?? null, message: message ?? null };
    };
    const generate = (id, steps) => worker.postMessage({ type: "generate", id,
      options: { prompt: "a red fox", steps, seed: id } });
    const out = await eval(script)({ worker, steps, until, reply, generate });
    await new Promise((resolve) => setTimeout(resolve, 100));
    worker.terminate();
    return { ...out, stepIds: [...new Set(steps)], events };
  }, script.toString());
  await context.close();
  return out;
}

test("the worker aborts each of two concurrent generations on its own", async () => {
  const out = await withMockWorker(async ({ worker, steps, until, reply, generate }) => {
    worker.postMessage({ type: "load", url: "/model", id: 1 });
    const loaded = await reply(1);
    generate(2, 150);
    generate(3, 150);
    await until(() => steps.length >= 4, "steps of both");
    // Abort the first by its id: the second goes on; then abort (all) stops it.
    worker.postMessage({ type: "abort", id: 2 });
    const first = await reply(2);
    const stepsAfter = steps.length;
    await until(() => steps.length > stepsAfter + 2, "steps of the other generation");
    const other = await Promise.race([reply(3), new Promise((resolve) => setTimeout(() => resolve("running"), 0))]);
    worker.postMessage({ type: "abort" });
    const second = await reply(3);
    generate(4, 2);
    const after = await reply(4);
    return { loaded, first, other, second, after };
  });
  assert.equal(out.loaded.type, "loaded");
  assert.deepEqual(out.first, { type: "error", name: "AbortError", message: "the generation was aborted" });
  assert.equal(out.other, "running", "aborting the first by its id left the second running");
  assert.equal(out.second.name, "AbortError");
  assert.equal(out.after.type, "result", "a generation after the aborts runs");
  assert.deepEqual(out.stepIds, [2, 3, 4], "step messages carry their generate's id");
});

test("a load while a generation runs frees the old model only after the generation ended", async () => {
  const out = await withMockWorker(async ({ worker, steps, until, reply, generate }) => {
    worker.postMessage({ type: "load", url: "/model", id: 1 });
    await reply(1);
    generate(2, 40);
    await until(() => steps.length > 0, "a step");
    worker.postMessage({ type: "load", url: "/model", id: 3 });
    const reloaded = await reply(3);
    const during = await reply(2);
    generate(4, 2);
    const after = await reply(4);
    return { reloaded, during, after };
  });
  assert.equal(out.reloaded.type, "loaded");
  assert.deepEqual(out.during, { type: "result", name: null, message: null },
    "the generation running during the load ended normally");
  assert.equal(out.after.type, "result", "the new model generates");
  const frees = out.events.filter((e) => e.event === "free");
  assert.deepEqual(frees, [{ event: "free", pipeline: "/model#1", generating: 0 }],
    "the first model is freed, once, when nothing runs on it");
  const freedAt = out.events.findIndex((e) => e.event === "free");
  const endedAt = out.events.findIndex((e) => e.event === "ended" && e.seed === 2);
  assert.ok(endedAt >= 0 && endedAt < freedAt, JSON.stringify(out.events));
});

test("a panic rejects the worker's running and later requests, and frees no trapped handle", async () => {
  const out = await withMockWorker(async ({ worker, steps, until, reply, generate }) => {
    worker.postMessage({ type: "frobnicate", id: 7 });
    const unknown = await reply(7);
    worker.postMessage({ type: "load", url: "/model", id: 1 });
    await reply(1);
    generate(2, 200);
    await until(() => steps.length > 0, "a step");
    worker.postMessage({ type: "generate", id: 3, options: { prompt: "panic", steps: 1 } });
    const running = await reply(2);
    const panicked = await reply(3);
    generate(4, 1);
    const later = await reply(4);
    worker.postMessage({ type: "load", url: "/model", id: 5 });
    const reload = await reply(5);
    return { unknown, running, panicked, later, reload };
  });
  assert.deepEqual(out.unknown, { type: "error", name: "NotSupportedError", message: 'unknown message type "frobnicate"' });
  const dead = /^webdiffusion failed internally \(panicked at mock\.rs:1:1\); start a new worker to go on$/;
  for (const what of ["running", "panicked", "later", "reload"]) {
    assert.equal(out[what].name, "InternalError", what);
    assert.match(out[what].message, dead, what);
  }
  assert.deepEqual(out.events.filter((e) => e.event === "free"), [], "no handle of the trapped instance is freed");
});

// The instance stays trapped (a fresh one is a fresh import: a new Worker, or a reload).
test("a panic in the package traps the call and dispatches an event naming it", async () => {
  const { page, context } = await openPage({ wasm: true });
  const out = await page.evaluate(async () => {
    const { __panicForTesting } = window.webdiffusion;
    const events = [];
    globalThis.addEventListener("webdiffusion-panic", (e) => events.push(e.detail));
    let thrown = null;
    try {
      __panicForTesting();
    } catch (e) {
      thrown = String(e);
    }
    return { events, thrown };
  });
  await context.close();
  assert.equal(out.events.length, 1, JSON.stringify(out.events));
  assert.match(out.events[0], /panic requested by __panicForTesting/);
  assert.ok(out.thrown !== null, "the trapping call threw");
});

test("after a real panic in the package's worker, a new worker loads and generates the same image", async () => {
  const { page, context } = await openPage();
  const url = server.base + MODEL;
  const out = await page.evaluate(async ({ url }) => {
    const ask = (worker, message) => new Promise((resolve) => {
      const listen = ({ data }) => {
        if (data.id === message.id && data.type !== "step") {
          worker.removeEventListener("message", listen);
          resolve(data);
        }
      };
      worker.addEventListener("message", listen);
      worker.postMessage(message);
    });
    const options = { prompt: "a red fox", steps: 1, width: 64, height: 64, seed: 3 };
    const first = new Worker("/pkg/worker.js", { type: "module" });
    await ask(first, { type: "load", url, cache: false, id: 1 });
    const before = await ask(first, { type: "generate", options, id: 2 });
    const panic = await ask(first, { type: "__panicForTesting", id: 3 });
    const later = await ask(first, { type: "generate", options, id: 4 });
    first.terminate();
    const second = new Worker("/pkg/worker.js", { type: "module" });
    const again = await ask(second, { type: "load", url, cache: false, id: 1 });
    const after = await ask(second, { type: "generate", options, id: 2 });
    second.terminate();
    const same = before.result && after.result &&
      before.result.pixels.every((v, i) => v === after.result.pixels[i]);
    return { before: before.type, panic: [panic.name, panic.message], later: later.name,
      again: again.type, after: after.type, same };
  }, { url });
  await context.close();
  assert.equal(out.before, "result");
  assert.equal(out.panic[0], "InternalError");
  assert.match(out.panic[1], /panic requested by __panicForTesting.*start a new worker/s);
  assert.equal(out.later, "InternalError", "the trapped worker refuses later requests");
  assert.equal(out.again, "loaded");
  assert.equal(out.after, "result");
  assert.ok(out.same, "the new worker gives the same image");
});

test("the package's worker loads a model from the cache and lists it", async () => {
  const { page, context } = await openPage();
  const url = server.base + MODEL;
  const out = await page.evaluate(async ({ url, embeddingUrl }) => {
    const worker = new Worker("/pkg/worker.js", { type: "module" });
    const replies = [];
    const reply = (id) => new Promise((resolve) => {
      worker.addEventListener("message", ({ data }) => {
        if (data.id === id) resolve(data);
      });
    });
    const ask = (message) => {
      const answer = reply(message.id);
      worker.postMessage(message);
      return answer;
    };
    const loaded = await ask({ type: "load", url, id: 1 });
    replies.push(loaded.type);
    replies.push((await ask({ type: "load", url, id: 2 })).type);
    const cached = await ask({ type: "cached", id: 3 });
    replies.push((await ask({ type: "generate", id: 4, options: { prompt: "x", steps: 1, loras: [{ lora: 9 }] } })).message);
    // Embeddings by id: loaded, counted with, and an unknown id refused.
    const embedding = (await ask({ type: "loadEmbedding", source: embeddingUrl, id: 5 })).embedding;
    const count = (await ask({ type: "countTokens", prompt: "a <cat-toy> fox", embeddings: [embedding.id], id: 6 })).count;
    replies.push((await ask({ type: "generate", id: 7, options: { prompt: "x", steps: 1, embeddings: [999] } })).message);
    worker.terminate();
    return { replies, info: loaded.info, models: cached.cached.map((m) => [m.url, m.complete]), embedding, count };
  }, { url, embeddingUrl: `${server.base}/tests/fixtures/prompts/cat-toy.safetensors` });
  assert.deepEqual(out.replies, ["loaded", "loaded", "generate: LoRA 9 is not loaded in this worker",
    "generate: embedding 999 is not loaded in this worker"]);
  assert.equal(out.embedding.token, "<cat-toy>");
  assert.equal(out.embedding.vectors, 1);
  assert.deepEqual(out.count, { chunks: [3], maxChunks: 16 });
  assert.equal(out.info.previewRgb.factors.length, 4, "a preview map row per latent channel");
  assert.equal(out.info.previewRgb.bias.length, 3);
  assert.equal(out.info.family, "sd", "the loaded message says what the model is");
  assert.equal(out.info.latentChannels, 4);
  assert.deepEqual(out.models, [[url, true]]);
  await context.close();
});
