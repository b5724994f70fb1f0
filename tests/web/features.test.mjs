// The customisation tools in headless Chromium (WebGPU on SwiftShader), against the
// diffusers goldens of the tiny fixtures: LoRA (by URL and from bytes), ControlNet with a
// guidance window, canny(), img2img, inpainting with a 9-channel and a 4-channel model, and
// TAESD (final decoder and previews) on a device at WebGPU's default limits.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { gpuErrors, launch, openPage as open, readSafetensors, relL2, root } from "./helpers.mjs";
import { serve } from "./server.mjs";

const FIX = "/tests/fixtures";
const PROMPT = "a photograph of an astronaut riding a horse";
const NEGATIVE = "blurry, low quality";

let server;
let browser;
const consoleErrors = [];

before(async () => {
  server = await serve(root);
  browser = await launch();
});

after(async () => {
  await browser?.close();
  server?.close();
});

const openPage = async () => open(await browser.newContext(), server.base, consoleErrors);
const golden = (file, name) => readSafetensors(join(root, "tests/fixtures", file), name);

test("a LoRA loaded by URL or from bytes gives diffusers' latents; a freed one is refused", async () => {
  const page = await openPage();
  const latents = golden("goldens/pipeline-sd1-tiny.safetensors", "latents");
  const peft = readFileSync(join(root, "tests/fixtures/lora/lora1-sd1-tiny.peft.safetensors"));
  const out = await page.evaluate(async ({ base, latents, peft, prompt, negative }) => {
    const { Pipeline } = window.webdiffusion;
    const pipe = await Pipeline.load(`${base}/sd1-tiny`, {});
    const options = { prompt, negativePrompt: negative, steps: 8, guidance: 7.5,
      latents: Float32Array.from(latents) };
    const byUrl = await pipe.loadLora(`${base}/lora/lora1-sd1-tiny.kohya.safetensors`);
    const a = await pipe.generate({ ...options, loras: [{ lora: byUrl, scale: 0.75 }] });
    const fromBytes = await pipe.loadLora(Uint8Array.from(peft), { name: "style" });
    const b = await pipe.generate({ ...options, loras: [{ lora: fromBytes, scale: 0.75 }] });
    const names = [byUrl.name, fromBytes.name, byUrl.hash.length];
    byUrl.free();
    let freed = null;
    try {
      await pipe.generate({ ...options, steps: 1, loras: [{ lora: byUrl, scale: 1 }] });
    } catch (e) {
      freed = e.message;
    }
    let wrong = null;
    try {
      await pipe.loadLora(`${base}/lora/lora1-sd2-tiny.kohya.safetensors`);
    } catch (e) {
      wrong = e.message;
    }
    return { a: Array.from(a.latents), b: Array.from(b.latents), names, freed, wrong };
  }, { base: `${server.base}${FIX}`, latents: Array.from(latents), peft: Array.from(peft),
    prompt: PROMPT, negative: NEGATIVE });
  const expected = golden("lora/goldens-sd1-tiny.safetensors", "pipeline.latents");
  for (const [what, got] of [["by URL (Kohya)", out.a], ["from bytes (PEFT)", out.b]]) {
    const err = relL2(Float32Array.from(got), expected);
    assert.ok(err <= 1e-3, `LoRA ${what}: latents rel-L2 ${err}`);
  }
  assert.deepEqual(out.names, ["lora1-sd1-tiny.kohya", "style", 12]);
  assert.match(out.freed ?? "", /loras\[0\]\.lora/);
  assert.match(out.wrong ?? "", /lora1-sd2-tiny\.kohya\.safetensors.*do not fit/);
  await page.close();
});

/// In the page: the PNG at `url` as ImageData.
const IMAGE_DATA = `async (url) => {
  const bitmap = await createImageBitmap(await (await fetch(url)).blob());
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
}`;

test("a ControlNet with a guidance window gives diffusers' latents; canny() is OpenCV's", async () => {
  const page = await openPage();
  const latents = golden("goldens/pipeline-sd1-tiny.safetensors", "latents");
  const out = await page.evaluate(async ({ base, latents, prompt, negative, imageData }) => {
    const { Pipeline, canny } = window.webdiffusion;
    const load = eval(imageData);
    const pipe = await Pipeline.load(`${base}/sd1-tiny`, {});
    const controlnet = await pipe.loadControlNet(`${base}/controlnet-sd1-tiny`);
    const image = await load(`${base}/controlnet/control-a.png`);
    const r = await pipe.generate({ prompt, negativePrompt: negative, steps: 8, guidance: 7.5,
      latents: Float32Array.from(latents),
      controlnets: [{ controlnet, image, scale: 0.8, start: 0.25, end: 0.75 }] });
    let wrong = null;
    try {
      await pipe.loadControlNet(`${base}/controlnet-sd2-tiny`);
    } catch (e) {
      wrong = e.message;
    }
    const edges = canny(await load(`${base}/canny/shapes-96x96.png`), 100, 200);
    const opencv = await load(`${base}/canny/shapes-96x96.canny-100-200.png`);
    let differ = 0;
    for (let i = 0; i < edges.data.length; i += 4) differ += edges.data[i] !== opencv.data[i];
    return { latents: Array.from(r.latents), name: controlnet.name, wrong, differ,
      edges: [edges.width, edges.height, edges.data.filter((v, i) => i % 4 === 0 && v === 255).length] };
  }, { base: `${server.base}${FIX}`, latents: Array.from(latents), prompt: PROMPT, negative: NEGATIVE,
    imageData: IMAGE_DATA });
  const err = relL2(Float32Array.from(out.latents), golden("controlnet/goldens-sd1-tiny.safetensors", "window.latents"));
  assert.ok(err <= 1e-3, `ControlNet window: latents rel-L2 ${err}`);
  assert.equal(out.name, "controlnet-sd1-tiny");
  assert.match(out.wrong ?? "", /controlnet-sd2-tiny\/config\.json.*another model family/);
  assert.equal(out.differ, 0, "canny() matches OpenCV pixel for pixel");
  assert.ok(out.edges[0] === 96 && out.edges[1] === 96 && out.edges[2] > 50);
  await page.close();
});

test("img2img and both kinds of inpainting give diffusers' latents", async () => {
  const page = await openPage();
  const pipeline = golden("goldens/pipeline-sd1-tiny.safetensors", "img2img.noise");
  const inpaint = (model, name) => golden(`inpaint/goldens-${model}.safetensors`, name);
  const out = await page.evaluate(async ({ base, noise, s075, latents, prompt, negative, imageData }) => {
    const { Pipeline } = window.webdiffusion;
    const load = eval(imageData);
    const initImage = await load(`${base}/goldens/sd1-tiny-vae-input.png`);
    const mask = await load(`${base}/inpaint/mask-32.png`);
    const common = { prompt, negativePrompt: negative, steps: 8, guidance: 7.5 };
    const sd1 = await Pipeline.load(`${base}/sd1-tiny`, {});
    const img2img = await sd1.generate({ ...common, initImage, strength: 0.6,
      noise: Float32Array.from(noise) });
    const blend = await sd1.generate({ ...common, initImage, mask, strength: 1,
      latents: Float32Array.from(latents) });
    sd1.free();
    const inpainting = await Pipeline.load(`${base}/sd1-tiny-inpaint`, {});
    const channels = await inpainting.generate({ ...common, initImage, mask, strength: 0.75,
      noise: Float32Array.from(s075) });
    return [img2img, blend, channels].map((r) => Array.from(r.latents));
  }, { base: `${server.base}${FIX}`, noise: Array.from(pipeline), latents: Array.from(inpaint("sd1-tiny", "latents_in")),
    s075: Array.from(inpaint("sd1-tiny-inpaint", "s075.noise")), prompt: PROMPT, negative: NEGATIVE,
    imageData: IMAGE_DATA });
  const expected = [
    ["img2img", golden("goldens/pipeline-sd1-tiny.safetensors", "img2img.own.latents")],
    ["4-channel inpainting at strength 1", inpaint("sd1-tiny", "s1.latents")],
    ["9-channel inpainting at strength 0.75", inpaint("sd1-tiny-inpaint", "s075.latents")],
  ];
  for (const [i, [what, want]] of expected.entries()) {
    const err = relL2(Float32Array.from(out[i]), want);
    assert.ok(err <= 1e-3, `${what}: latents rel-L2 ${err}`);
  }
  await page.close();
});

test("at WebGPU's default limits, TAESD decodes the final image and each step's preview", async () => {
  const page = await openPage();
  const latents = golden("goldens/pipeline-sd1-tiny.safetensors", "latents");
  const out = await page.evaluate(async ({ base, latents, prompt, negative }) => {
    const { Pipeline } = window.webdiffusion;
    const taesd = `${base}/taesd-tiny`;
    const pipe = await Pipeline.load(`${base}/sd1-tiny`, { limits: "default", vae: taesd, previewVae: taesd });
    const previews = [];
    const r = await pipe.generate({ prompt, negativePrompt: negative, steps: 8, guidance: 7.5,
      latents: Float32Array.from(latents),
      onStep: (step, total, _, preview) => previews.push([preview?.width, preview?.height, preview?.pixels.length]) });
    let other = null;
    try {
      await Pipeline.load(`${base}/sd1-tiny`, {});
    } catch (e) {
      other = e.message;
    }
    return { latents: Array.from(r.latents), pixels: Array.from(r.pixels), size: [r.width, r.height], previews, other };
  }, { base: `${server.base}${FIX}`, latents: Array.from(latents), prompt: PROMPT, negative: NEGATIVE });
  const own = golden("goldens/pipeline-sd1-tiny.safetensors", "own.latents");
  const err = relL2(Float32Array.from(out.latents), own);
  assert.ok(err <= 1e-3, `latents with TAESD as the VAE: rel-L2 ${err}`);
  assert.deepEqual(out.size, [128, 128]);
  const rgb = out.pixels.filter((_, i) => i % 4 !== 3).map((v) => v / 255);
  const image = relL2(Float32Array.from(rgb), golden("taesd/goldens.safetensors", "pipeline.image"));
  assert.ok(image <= 5e-3, `TAESD image: rel-L2 ${image}`);
  assert.equal(out.previews.length, 9, "a preview after every UNet call (PNDM: 9)");
  assert.deepEqual(out.previews[0], [128, 128, 128 * 128 * 4]);
  assert.match(out.other ?? "", /limits/);
  await page.close();
});

test("no shader or WebGPU error was logged", () => {
  assert.deepEqual(gpuErrors(consoleErrors), []);
});

test("prompt weights, long prompts and embeddings give the reference's image; bad embeddings are refused", async () => {
  const page = await openPage();
  const settings = JSON.parse(readFileSync(join(root, "tests/fixtures/goldens/prompts-weighting.json"), "utf8"));
  const run = settings.image_runs["sd1-tiny"];
  const file = "goldens/prompts-weighting.safetensors";
  const init = golden(file, "sd1-tiny.image_run.init_latents");
  const easy = readFileSync(join(root, "tests/fixtures/prompts/easynegative-tiny.safetensors"));
  const out = await page.evaluate(async ({ base, run, init, easy }) => {
    const { Pipeline } = window.webdiffusion;
    const pipe = await Pipeline.load(`${base}/sd1-tiny`, {});
    // Loaded in the reference's order: ids follow the vocabulary in load order.
    const cat = await pipe.loadEmbedding(`${base}/prompts/cat-toy.safetensors`);
    const negative = await pipe.loadEmbedding(Uint8Array.from(easy), { token: "easynegative-tiny" });
    const embeddings = [cat, negative];
    const result = await pipe.generate({
      prompt: run.prompt, negativePrompt: run.negative_prompt, steps: run.num_inference_steps,
      guidance: run.guidance_scale, width: run.width, height: run.height,
      latents: Float32Array.from(init), embeddings,
    });
    const counts = [
      pipe.countTokens(run.prompt, { embeddings }),
      pipe.countTokens(run.prompt, { promptWeighting: false }),
      pipe.countTokens("easynegative-tiny", { embeddings }),
    ];
    const handles = embeddings.map((e) => [e.token, e.vectors]);
    const hash = negative.hash;
    const errors = [];
    for (const bad of [
      () => pipe.loadEmbedding(`${base}/prompts/nan-emb.safetensors`),
      () => pipe.loadEmbedding(`${base}/prompts/wide-emb.safetensors`),
      () => pipe.loadEmbedding(new Uint8Array([0x80, 2, 0x7d, 0x71])),
      () => pipe.generate({ prompt: "word ".repeat(1300), steps: 1 }),
      () => pipe.generate({ prompt: "x", steps: 1, promptWeighting: "yes" }),
      () => {
        cat.free();
        return pipe.generate({ prompt: "x", steps: 1, embeddings: [cat] });
      },
    ]) {
      try {
        await bad();
        errors.push(null);
      } catch (e) {
        errors.push(e.message);
      }
    }
    return { latents: Array.from(result.latents), counts, errors, handles, hash };
  }, { base: `${server.base}${FIX}`, run, init: Array.from(init), easy: Array.from(easy) });
  const err = relL2(Float32Array.from(out.latents), golden(file, "sd1-tiny.image_run.latents"));
  assert.ok(err <= 1e-3, `latents rel-L2 ${err}`);
  assert.deepEqual(out.handles, [["<cat-toy>", 1], ["easynegative-tiny", 2]]);
  assert.match(out.hash, /^[0-9a-f]{12}$/);
  assert.deepEqual(out.counts[0], { chunks: [75, 75, 15], maxChunks: 16 });
  assert.ok(out.counts[1].chunks.length === 3, "read literally, the count goes past 75");
  assert.deepEqual(out.counts[2].chunks, [2]);
  assert.match(out.errors[0] ?? "", /nan-emb\.safetensors.*non-finite/);
  assert.match(out.errors[1] ?? "", /wide-emb\.safetensors.*40.*32/);
  assert.match(out.errors[2] ?? "", /pickle/);
  assert.match(out.errors[3] ?? "", /prompt.*1200 tokens/);
  assert.match(out.errors[4] ?? "", /promptWeighting/);
  assert.match(out.errors[5] ?? "", /embeddings\[0\]/);
  await page.close();
});
