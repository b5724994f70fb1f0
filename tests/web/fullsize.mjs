// The full-size check (run by scripts/fullsize-browser.sh, not in CI: it takes tens of
// minutes on SwiftShader). A full-size model pack runs through the npm package in headless
// Chromium as a user's page would run it: load with progress into IndexedDB, one step at
// 64×64 decoded by TAESD (SD3: FULLSIZE_SIZE, its own VAE), then a reload (load only) with the network off. Once with the adapter's
// limits and once with the device at WebGPU's default limits (128 MiB per storage binding,
// 256 MiB per buffer). Prints bytes, times, wasm memory and any error; exits 1 on a failure.
//   [FULLSIZE_SIZE=PX] node fullsize.mjs PACK_DIR TAESD_DIR|none [NATIVE_IMAGE.safetensors]
// (`none`: the model's own VAE decodes, as for SD3's 16-channel latents)
import { readFileSync } from "node:fs";
import { launch, readSafetensors, root } from "./helpers.mjs";
import { serve } from "./server.mjs";

const [packDir, taesdDir, nativeImage] = process.argv.slice(2);
if (!packDir || !taesdDir) {
  console.error("usage: node fullsize.mjs PACK_DIR TAESD_DIR [NATIVE_IMAGE.safetensors]");
  process.exit(2);
}
const manifest = JSON.parse(readFileSync(`${packDir}/manifest.json`, "utf8"));
const packBytes = Object.values(manifest.components)
  .flatMap((c) => c.shards)
  .reduce((n, s) => n + s.bytes, 0);

const withTaesd = taesdDir !== "none";
const server = await serve(root, { "/fullsize/": packDir, ...(withTaesd ? { "/taesd/": taesdDir } : {}) });
const browser = await launch();
const MiB = 2 ** 20;
const side = Number(process.env.FULLSIZE_SIZE ?? 64);
const request = { prompt: "a red fox in the snow", steps: 1, guidance: 0, width: side, height: side, seed: 42 };
const results = [];
let failed = false;

/** One load + generate in `page`; returns what it measured (or the error). */
function run(page, limits, generate = true) {
  return page.evaluate(async ({ base, limits, request, generate, withTaesd }) => {
    const { Pipeline, init } = window.webdiffusion;
    const wasm = await init();
    const memory = () => wasm.memory.buffer.byteLength;
    const totals = new Map();
    let loaded = 0;
    const out = { limits, memoryStart: memory() };
    try {
      const t0 = performance.now();
      const pipe = await Pipeline.load(`${base}/fullsize`, {
        limits,
        dtype: "f32",
        vae: withTaesd ? `${base}/taesd` : undefined,
        onProgress: (p) => {
          totals.set(p.file, p.loaded);
          loaded = [...totals.values()].reduce((a, b) => a + b, 0);
          out.memoryPeak = Math.max(out.memoryPeak ?? 0, memory());
        },
      });
      out.loadMs = performance.now() - t0;
      out.memoryAfterLoad = memory();
      out.bytesLoaded = loaded;
      if (!generate) {
        pipe.free();
        return out;
      }
      const t1 = performance.now();
      const r = await pipe.generate(request);
      out.generateMs = performance.now() - t1;
      out.memoryAfterGenerate = memory();
      out.size = [r.width, r.height];
      out.pixels = Array.from(r.pixels);
      out.finite = Array.from(r.latents).every(Number.isFinite);
      pipe.free();
      const estimate = await navigator.storage.estimate();
      out.stored = estimate.usage;
    } catch (e) {
      out.error = String(e?.message ?? e);
    }
    out.memoryPeak = Math.max(out.memoryPeak ?? 0, memory());
    return out;
  }, { base: server.base, limits, request, generate, withTaesd });
}

for (const limits of ["adapter", "default"]) {
  const context = await browser.newContext();
  const errors = [];
  const open = async () => {
    const page = await context.newPage();
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(`${server.base}/tests/web/page.html`);
    await page.waitForFunction(() => window.ready);
    return page;
  };
  console.error(`[${limits} limits] first load …`);
  let page = await open();
  const first = await run(page, limits);
  await page.close();
  console.error(`[${limits} limits] reload offline …`);
  const before = server.log.length;
  page = await open();
  await context.setOffline(true);
  // Loading from IndexedDB is what is measured here; the step was timed above.
  const offline = await run(page, limits, false);
  const requests = server.log.slice(before).filter((r) => r.path.startsWith("/fullsize/")).length;
  await context.setOffline(false);
  await context.close();
  results.push({ limits, first, offline, requests, errors: errors.filter((e) => /limit|exceed|GPUValidationError|unreachable/i.test(e)) });
  if (first.error || offline.error || !first.finite || requests > 0) failed = true;
}
await browser.close();
server.close();

const fmt = (ms) => (ms === undefined ? "-" : `${(ms / 1000).toFixed(1)} s`);
const mb = (b) => (b === undefined ? "-" : `${(b / MiB).toFixed(0)} MiB`);
console.log(`pack: ${(packBytes / 1e6).toFixed(0)} MB in ${Object.keys(manifest.components).join(", ")} (${manifest.quant})`);
console.log(`| limits | load (network) | load (IndexedDB, offline) | 1 step ${side}×${side}${withTaesd ? " + TAESD" : ""} | bytes downloaded | stored | wasm memory peak (load) | after generate | error |`);
console.log("|---|---|---|---|---|---|---|---|---|");
for (const { limits, first, offline, errors } of results) {
  const error = first.error ?? offline.error ?? (errors[0] ?? "none");
  console.log(`| ${limits} | ${fmt(first.loadMs)} | ${fmt(offline.loadMs)} | ${fmt(first.generateMs)} | ${mb(first.bytesLoaded)} | ${mb(first.stored)} | ${mb(first.memoryPeak)} | ${mb(first.memoryAfterGenerate)} | ${error} |`);
}
for (const r of results) {
  console.log(`${r.limits}: the offline reload made ${r.requests} requests to the pack`);
}
if (nativeImage && results[0].first.pixels) {
  // The native CLI's image [H, W, 3] in [0, 1] against the browser's RGBA bytes.
  const image = readSafetensors(nativeImage, "image");
  let worst = 0;
  results[0].first.pixels.forEach((v, i) => {
    if (i % 4 === 3) return;
    const j = Math.floor(i / 4) * 3 + (i % 4);
    worst = Math.max(worst, Math.abs(v - Math.round(image[j] * 255)));
  });
  console.log(`native CLI vs browser: largest pixel difference ${worst} of 255`);
}
process.exit(failed ? 1 : 0);
