// The wasm package in headless Chromium (WebGPU on SwiftShader), loaded by a plain page as
// a user's page would: same image as the native CLI for the same seed, IndexedDB caching
// (no network on the second load, damaged chunks refetched, interrupted downloads resumed),
// clear errors, and AbortSignal.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cli, damageChunk, gpuErrors, launch, openPage as open, readSafetensors, relL2, root, writeSafetensors } from "./helpers.mjs";
import { serve } from "./server.mjs";

const MODEL = "/tests/fixtures/sd1-tiny";

let server;
let browser;
let context;
const consoleErrors = [];

before(async () => {
  server = await serve(root);
  browser = await launch();
  context = await browser.newContext();
});

after(async () => {
  await browser?.close();
  server?.close();
});

const openPage = () => open(context, server.base, consoleErrors);

const modelRequests = (from) => server.log.slice(from).filter((r) => r.path.includes("/fixtures/"));

test("generates the same latents as the native CLI, with progress", async () => {
  const page = await openPage();
  const out = await page.evaluate(async ({ url }) => {
    const { Pipeline } = window.webdiffusion;
    const progress = [];
    const pipe = await Pipeline.load(url, { onProgress: (p) => progress.push(p) });
    const steps = [];
    const r = await pipe.generate({ prompt: "a red fox", steps: 4, seed: 7, scheduler: "ddim",
      onStep: (s, t, latents, preview, shape) => steps.push([s, t, latents.length, ...shape]) });
    // With the scheduler left out, the result says which one ran: the model's own.
    const own = await pipe.generate({ prompt: "a red fox", steps: 1, seed: 1 });
    return { latents: Array.from(r.latents), width: r.width, height: r.height, steps, info: pipe.info,
      pixels: r.pixels.length, seed: r.seed, files: new Set(progress.map((p) => p.file)).size,
      ran: [r.scheduler, r.steps, r.guidance, own.scheduler, own.steps, own.guidance] };
  }, { url: server.base + MODEL });
  assert.deepEqual(out.ran, ["ddim", 4, 7.5, "pndm", 1, 7.5]);
  // Each step's latents with their shape [1, 4, 16, 16] (the tiny VAE halves 32×32).
  assert.deepEqual(out.steps, [1, 2, 3, 4].map((k) => [k, 4, 4 * 16 * 16, 1, 4, 16, 16]));
  // The model's own settings (sd1-tiny: PNDM, sample_size 16, a ×2 VAE), which the run
  // without options below uses.
  const { schedulers, previewRgb, ...info } = out.info;
  assert.deepEqual(info, { family: "sd", latentChannels: 4, vaeScaleFactor: 2, defaultSize: 32, defaultSteps: 20,
    defaultGuidance: 7.5, scheduler: "pndm", inpainting: false });
  assert.deepEqual(previewRgb.factors[0], [0.298, 0.207, 0.208], "SD's latent → RGB map, a row per channel");
  assert.deepEqual([previewRgb.factors.length, previewRgb.bias], [4, [0, 0, 0]]);
  assert.ok(schedulers.includes("ddim") && schedulers.includes("dpmpp-2m-karras"), schedulers.join());
  assert.equal(out.pixels, out.width * out.height * 4);
  assert.equal(out.seed, 7);
  assert.ok(out.files >= 5, "download progress reported per file");

  const dir = mkdtempSync(join(tmpdir(), "webdiffusion-"));
  const tensors = join(dir, "native.safetensors");
  execFileSync(cli, ["generate", "--model", join(root, MODEL), "--prompt", "a red fox", "--steps", "4",
    "--seed", "7", "--scheduler", "ddim", "--backend", "cpu", "--out-tensor", tensors]);
  const native = readSafetensors(tensors, "latents");
  const err = relL2(Float32Array.from(out.latents), native);
  assert.ok(err <= 1e-3, `browser vs native latents rel-L2 ${err}`);
  await page.close();
});

test("an SDXL folder: both text encoders, pooled and size conditioning, as diffusers", async () => {
  const goldens = join(root, "tests/fixtures/goldens/sdxl-tiny.safetensors");
  const page = await openPage();
  const out = await page.evaluate(async ({ url, latents }) => {
    const pipe = await window.webdiffusion.Pipeline.load(url, {});
    const options = { prompt: "a photograph of an astronaut riding a horse", negativePrompt: "blurry, low quality",
      steps: 4, guidance: 5, latents: Float32Array.from(latents) };
    const r = await pipe.generate(options);
    const sized = await pipe.generate({ ...options, originalSize: [1024, 768], cropTopLeft: [16, 32] });
    const tiled = await pipe.generate({ ...options, steps: 1, vaeTiling: 32 });
    const refused = [];
    for (const bad of [{ originalSize: [64] }, { cropTopLeft: [1.5, 0] }, { targetSize: "64,64" }, { vaeTiling: "yes" }]) {
      await pipe.generate({ ...options, steps: 1, ...bad }).catch((e) => refused.push(String(e)));
    }
    return { info: pipe.info, latents: Array.from(r.latents), sized: Array.from(sized.latents), refused,
      tiled: Array.from(tiled.pixels), ran: [r.scheduler, r.width, r.height] };
  }, { url: server.base + "/tests/fixtures/sdxl-tiny", latents: Array.from(readSafetensors(goldens, "txt2img.latents")) });
  assert.equal(out.info.family, "sdxl");
  assert.deepEqual(out.ran, ["euler", 64, 64]);
  const err = relL2(Float32Array.from(out.latents), readSafetensors(goldens, "euler.latents"));
  assert.ok(err <= 1e-3, `browser vs diffusers SDXL latents rel-L2 ${err}`);
  assert.ok(relL2(Float32Array.from(out.sized), Float32Array.from(out.latents)) > 1e-3, "size conditioning acts");
  assert.equal(out.refused.length, 4, out.refused.join("\n"));
  for (const [message, key] of out.refused.slice(0, 3).map((m, i) => [m, ["originalSize", "cropTopLeft", "targetSize"][i]])) {
    assert.match(message, new RegExp(`\`${key}\` must be an array of two whole numbers`));
  }
  assert.match(out.refused[3], /`vaeTiling` must be true, false or a tile size/);
  // vaeTiling as the CLI's --vae-tiling: the same tiled decode, to the pixel.
  const dir = mkdtempSync(join(tmpdir(), "webdiffusion-"));
  const [latents, tensors] = [join(dir, "latents.safetensors"), join(dir, "tiled.safetensors")];
  writeSafetensors(latents, "latents", readSafetensors(goldens, "txt2img.latents"), [1, 4, 16, 16]);
  execFileSync(cli, ["generate", "--model", join(root, "tests/fixtures/sdxl-tiny"), "--prompt",
    "a photograph of an astronaut riding a horse", "--negative-prompt", "blurry, low quality", "--steps", "1",
    "--guidance", "5", "--latents", latents, "--vae-tiling", "32", "--backend", "cpu", "--out-tensor", tensors]);
  const native = readSafetensors(tensors, "image");
  let worst = 0;
  for (let i = 0; i < native.length; i++) {
    worst = Math.max(worst, Math.abs(out.tiled[Math.floor(i / 3) * 4 + (i % 3)] - native[i] * 255));
  }
  assert.ok(worst <= 2, `tiled decode: browser vs native differ by ${worst} levels`);
  await page.close();
});

test("an SD3 folder: T5 and the MMDiT with flow matching as diffusers, and { t5: false } skips T5's download", async () => {
  const goldens = join(root, "tests/fixtures/goldens/sd3-tiny.safetensors");
  const url = server.base + "/tests/fixtures/sd3-tiny";
  const page = await openPage();
  const run = async (load) => page.evaluate(async ({ url, latents, load }) => {
    const pipe = await window.webdiffusion.Pipeline.load(url, load);
    const options = { prompt: "a photograph of an astronaut riding a horse", negativePrompt: "blurry, low quality",
      steps: 4, guidance: 5, latents: Float32Array.from(latents) };
    const r = await pipe.generate(options);
    const refused = [];
    for (const bad of [{ maxSequenceLength: 600 }, { skipLayerGuidance: [7] }, { scheduler: "ddim" }, { skipLayerGuidance: "7" }]) {
      await pipe.generate({ ...options, steps: 1, ...bad }).catch((e) => refused.push(String(e)));
    }
    return { info: pipe.info, latents: Array.from(r.latents), refused, ran: [r.scheduler, r.width, r.height] };
  }, { url, latents: Array.from(readSafetensors(goldens, "txt2img.latents")), load });
  const before = server.log.length;
  const withT5 = await run({});
  const { schedulers, previewRgb, ...info } = withT5.info;
  assert.deepEqual(info, { family: "sd3", latentChannels: 16, vaeScaleFactor: 4, defaultSize: 64, defaultSteps: 28,
    defaultGuidance: 7.5, scheduler: "flow-euler", inpainting: false });
  assert.deepEqual([previewRgb.factors.length, previewRgb.bias.length], [16, 3], "SD3's map reads 16 channels");
  assert.ok(schedulers.includes("flow-euler"), schedulers.join());
  assert.deepEqual(withT5.ran, ["flow-euler", 64, 64]);
  const err = relL2(Float32Array.from(withT5.latents), readSafetensors(goldens, "euler.latents"));
  assert.ok(err <= 1e-3, `browser vs diffusers SD3 latents rel-L2 ${err}`);
  assert.equal(withT5.refused.length, 4, withT5.refused.join("\n"));
  assert.match(withT5.refused[0], /max_sequence_length: 600 is not in 1..=512/);
  assert.match(withT5.refused[1], /skip layer guidance: layer 7 does not exist \(the transformer has 3 layers\)/);
  assert.match(withT5.refused[2], /ddim is a DDPM-family scheduler; sd3 models run flow-matching schedulers: flow-euler/);
  assert.match(withT5.refused[3], /`skipLayerGuidance` must be an array/);
  assert.ok(server.log.slice(before).some((r) => r.path.includes("/text_encoder_3/")), "T5 downloaded");

  const from = server.log.length;
  const noT5 = await run({ t5: false, cache: false });
  const errNoT5 = relL2(Float32Array.from(noT5.latents), readSafetensors(goldens, "euler_no_t5.latents"));
  assert.ok(errNoT5 <= 1e-3, `browser vs diffusers SD3 without T5 rel-L2 ${errNoT5}`);
  const t5Requests = server.log.slice(from).filter((r) => /\/(text_encoder_3|tokenizer_3)\//.test(r.path));
  assert.deepEqual(t5Requests, [], "nothing of T5 is fetched with { t5: false }");
  await page.close();
});

test("clipSkip, eta and guidanceRescale act as the CLI's --clip-skip, --eta and --guidance-rescale", async () => {
  const page = await openPage();
  const out = await page.evaluate(async ({ url }) => {
    const pipe = await window.webdiffusion.Pipeline.load(url, {});
    const options = { prompt: "a red fox", steps: 3, seed: 5, scheduler: "ddim", clipSkip: 1, eta: 0.5, guidanceRescale: 0.7 };
    const r = await pipe.generate(options);
    const refused = [];
    for (const bad of [{ clipSkip: 99 }, { clipSkip: -1 }, { eta: 2 }, { guidanceRescale: "x" }]) {
      try {
        await pipe.generate({ ...options, ...bad });
        refused.push("resolved");
      } catch (e) {
        refused.push(e.message);
      }
    }
    return { latents: Array.from(r.latents), refused };
  }, { url: server.base + MODEL });
  assert.match(out.refused[0], /clip_skip.*99/);
  assert.match(out.refused[1], /clipSkip/);
  assert.match(out.refused[2], /eta/);
  assert.match(out.refused[3], /guidanceRescale/);
  const dir = mkdtempSync(join(tmpdir(), "webdiffusion-"));
  const tensors = join(dir, "native.safetensors");
  execFileSync(cli, ["generate", "--model", join(root, MODEL), "--prompt", "a red fox", "--steps", "3", "--seed", "5",
    "--scheduler", "ddim", "--clip-skip", "1", "--eta", "0.5", "--guidance-rescale", "0.7", "--backend", "cpu",
    "--out-tensor", tensors]);
  const err = relL2(Float32Array.from(out.latents), readSafetensors(tensors, "latents"));
  assert.ok(err <= 1e-3, `browser vs native latents rel-L2 ${err}`);
  await page.close();
});

test("a second load comes from IndexedDB with no network request", async () => {
  const page = await openPage();
  const from = server.log.length;
  await page.evaluate(async ({ url }) => {
    await window.webdiffusion.Pipeline.load(url, {});
  }, { url: server.base + MODEL });
  assert.deepEqual(modelRequests(from), []);
  const cached = await page.evaluate(() => window.webdiffusion.Pipeline.cached());
  const unet = cached.find((c) => c.url.endsWith("sd1-tiny/unet/diffusion_pytorch_model.safetensors"));
  assert.ok(unet?.complete && unet.bytes > 0, "cached() lists the UNet weights with their size");
  await page.close();
});

test("a damaged chunk is detected and fetched again", async () => {
  const page = await openPage();
  const file = `${server.base}${MODEL}/unet/diffusion_pytorch_model.safetensors`;
  await damageChunk(page, file, 0, 1000);
  const from = server.log.length;
  await page.evaluate(async ({ url }) => {
    await window.webdiffusion.Pipeline.load(url, {});
  }, { url: server.base + MODEL });
  const refetched = modelRequests(from).map((r) => r.path);
  assert.deepEqual(refetched, [`${MODEL}/unet/diffusion_pytorch_model.safetensors`]);
  await page.close();
});

test("an interrupted download resumes from the last stored chunk", async () => {
  const page = await openPage();
  const result = await page.evaluate(async ({ url }) => {
    globalThis.__webdiffusionChunkBytes = 256 * 1024;
    const errors = [];
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await window.webdiffusion.Pipeline.load(url, {});
        return { errors, ok: true };
      } catch (e) {
        errors.push(String(e.message ?? e));
      }
    }
    return { errors, ok: false };
  }, { url: `${server.base}/flaky${MODEL}` });
  assert.ok(result.ok, `loads in the end: ${result.errors}`);
  assert.ok(result.errors.length >= 1, "the cut-off download failed first");
  const resumed = server.log.filter((r) => r.path.startsWith("/flaky/") && r.range && r.range !== "bytes=0-");
  assert.ok(resumed.length >= 1, "a Range request resumed the download");
  await page.close();
});

test("a full disk loads the model without caching and leaves no half-written entry", async () => {
  const page = await openPage();
  const out = await page.evaluate(async ({ url }) => {
    const put = IDBObjectStore.prototype.put;
    IDBObjectStore.prototype.put = function (value, key) {
      if (value instanceof Uint8Array) throw new DOMException("the disk is full", "QuotaExceededError");
      return put.call(this, value, key);
    };
    let message = null;
    const notCached = new Set();
    try {
      const pipe = await window.webdiffusion.Pipeline.load(url, {
        onProgress: (p) => p.notCached && notCached.add(p.notCached),
      });
      pipe.free();
    } catch (e) {
      message = e.message;
    } finally {
      IDBObjectStore.prototype.put = put;
    }
    const cached = await window.webdiffusion.Pipeline.cached();
    const partial = cached.filter((c) => c.url.startsWith(url) && !c.complete).map((c) => c.url);
    return { message, notCached: [...notCached], partial };
  }, { url: `${server.base}/tests/fixtures/sd2-tiny` });
  assert.equal(out.message, null, "the model loaded");
  assert.ok(out.notCached.some((why) => /storage full/.test(why)), JSON.stringify(out.notCached));
  assert.deepEqual(out.partial, [], "no partial entry stays in the cache");
  await page.close();
});

test("bad URLs reject with clear errors", async () => {
  const page = await openPage();
  const errors = await page.evaluate(async ({ missing, unreachable, model }) => {
    const messages = [];
    for (const [url, options] of [[missing, {}], [unreachable, {}], [model, { dtype: "f16" }]]) {
      try {
        await window.webdiffusion.Pipeline.load(url, { cache: false, ...options });
        messages.push("resolved");
      } catch (e) {
        messages.push(e.message);
      }
    }
    return messages;
  }, { missing: `${server.base}/no/such/model`, unreachable: "http://127.0.0.1:9/model",
    model: server.base + MODEL });
  assert.match(errors[0], /no\/such\/model.*404/);
  assert.match(errors[1], /127\.0\.0\.1:9.*download failed|download failed.*127\.0\.0\.1:9/);
  // SwiftShader has no shader-f16: f32 is chosen by default, and asking for f16 is refused.
  assert.match(errors[2], /dtype.*shader-f16/);
  await page.close();
});

test("AbortSignal stops a generation between steps", async () => {
  const page = await openPage();
  const out = await page.evaluate(async ({ url }) => {
    const pipe = await window.webdiffusion.Pipeline.load(url, {});
    const controller = new AbortController();
    const steps = [];
    try {
      await pipe.generate({ prompt: "x", steps: 6, scheduler: "ddim", signal: controller.signal,
        onStep: (s) => { steps.push(s); if (s === 2) controller.abort(); } });
      return { steps, error: null };
    } catch (e) {
      return { steps, error: e.name };
    }
  }, { url: server.base + MODEL });
  assert.equal(out.error, "AbortError");
  assert.deepEqual(out.steps, [1, 2]);
  await page.close();
});

test("no shader or WebGPU error was logged", () => {
  assert.deepEqual(gpuErrors(consoleErrors), []);
});
