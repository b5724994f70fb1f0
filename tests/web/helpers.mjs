// What the browser tests share: the repository root and CLI, headless Chromium with WebGPU,
// the test page, and reading goldens.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const targetDir = process.env.CARGO_TARGET_DIR ?? join(homedir(), ".cache/webdiffusion/target");
export const cli = join(targetDir, "release", "webdiffusion");

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu",
      "--disable-background-networking", "--disable-component-update", "--no-first-run"],
  });
}

/// The test page (which loads the package) in `context`, its console errors collected.
export async function openPage(context, base, consoleErrors) {
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page.goto(`${base}/tests/web/page.html`);
  await page.waitForFunction(() => window.ready);
  return page;
}

export function readSafetensors(path, name) {
  const bytes = readFileSync(path);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString());
  const [start, end] = header[name].data_offsets;
  const data = bytes.subarray(8 + headerLen + start, 8 + headerLen + end);
  return new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.length));
}

/** Writes one f32 tensor `name` of `shape` as a safetensors file at `path`. */
export function writeSafetensors(path, name, values, shape) {
  let header = JSON.stringify({ [name]: { dtype: "F32", shape, data_offsets: [0, values.length * 4] } });
  header += " ".repeat((8 - (header.length % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(header.length));
  writeFileSync(path, Buffer.concat([head, Buffer.from(header), Buffer.from(Float32Array.from(values).buffer)]));
}

export function relL2(a, b) {
  assert.equal(a.length, b.length);
  let d = 0;
  let n = 0;
  for (let i = 0; i < a.length; i++) {
    d += (a[i] - b[i]) ** 2;
    n += b[i] ** 2;
  }
  return Math.sqrt(d / n);
}

/// The console errors that mean a shader or the WebGPU device failed.
export const gpuErrors = (consoleErrors) =>
  consoleErrors.filter((e) => /shader|subgroups|WebGPU|wgsl|unreachable/i.test(e));

/** Flips the byte at `at` of the stored chunk `i` of `url` in the page's IndexedDB cache. */
export const damageChunk = (page, url, i, at = 10) => page.evaluate(async ({ key, at }) => {
  const db = await new Promise((ok, err) => {
    const r = indexedDB.open("webdiffusion");
    r.onsuccess = () => ok(r.result);
    r.onerror = () => err(r.error);
  });
  const tx = db.transaction("chunks", "readwrite");
  const chunks = tx.objectStore("chunks");
  const bytes = await new Promise((ok) => { const r = chunks.get(key); r.onsuccess = () => ok(r.result); });
  const damaged = new Uint8Array(bytes);
  damaged[at] ^= 0xff;
  chunks.put(damaged, key);
  await new Promise((ok) => { tx.oncomplete = ok; });
  db.close();
}, { key: `${url}#${i}`, at });
