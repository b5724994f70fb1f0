// Model packs in headless Chromium: a q4 pack of each tiny fixture, written by the native
// `webdiffusion convert`, generates diffusers' 8-step DDIM image within the q4 error limit
// (and the same latents as the native CLI on the same pack); a damaged shard is refused
// by name and not kept in the cache.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cli, gpuErrors, launch, openPage as open, readSafetensors, relL2, root } from "./helpers.mjs";
import { serve } from "./server.mjs";

const MODELS = ["sd1-tiny", "sd2-tiny"];
const Q4_LIMIT = 8e-2;

const packs = mkdtempSync(join(tmpdir(), "webdiffusion-packs-"));
let server;
let browser;
const consoleErrors = [];

before(async () => {
  for (const model of MODELS) {
    execFileSync(cli, ["convert", "--model", join(root, "tests/fixtures", model), "--quant", "q4",
      "--out", join(packs, `${model}-q4`)]);
  }
  server = await serve(root, { "/packs/": packs });
  browser = await launch();
});

after(async () => {
  await browser?.close();
  server?.close();
});

const openPage = async () => open(await browser.newContext(), server.base, consoleErrors);

const PROMPT = "a photograph of an astronaut riding a horse";
const NEGATIVE = "blurry, low quality";

for (const model of MODELS) {
  test(`a q4 pack of ${model} generates diffusers' DDIM image within the q4 limit`, async (t) => {
    const goldens = join(root, "tests/fixtures/goldens", `pipeline-${model}.safetensors`);
    const latents = readSafetensors(goldens, "latents");
    const page = await openPage();
    const from = server.log.length;
    const out = await page.evaluate(async ({ url, latents, prompt, negative }) => {
      const pipe = await window.webdiffusion.Pipeline.load(url, {});
      const r = await pipe.generate({ prompt, negativePrompt: negative, steps: 8, guidance: 7.5,
        scheduler: "ddim", latents: Float32Array.from(latents) });
      const models = await window.webdiffusion.Pipeline.cachedModels();
      return { pixels: Array.from(r.pixels), latents: Array.from(r.latents), models,
        ran: { steps: r.steps, scheduler: r.scheduler, guidance: r.guidance } };
    }, { url: `${server.base}/packs/${model}-q4`, latents: Array.from(latents), prompt: PROMPT,
      negative: NEGATIVE });
    const fetched = server.log.slice(from).map((r) => r.path);
    assert.ok(fetched.includes(`/packs/${model}-q4/manifest.json`), "the manifest was fetched");
    assert.ok(fetched.includes(`/packs/${model}-q4/unet/shard-00000.bin`), "the shards were fetched");
    assert.ok(!fetched.some((p) => p.endsWith(".safetensors")), "no safetensors were asked for");
    assert.deepEqual(out.ran, { steps: 8, scheduler: "ddim", guidance: 7.5 });
    // The storage listing shows the pack as one model holding its manifest and shards.
    const pack = out.models.filter((m) => m.url.includes(`/packs/${model}-q4`));
    assert.equal(pack.length, 1, JSON.stringify(out.models.map((m) => m.url)));
    assert.equal(pack[0].url, `${server.base}/packs/${model}-q4`);
    assert.ok(pack[0].complete && pack[0].bytes > 0 && pack[0].files.length >= 4);

    const rgb = out.pixels.filter((_, i) => i % 4 !== 3).map((v) => v / 255);
    const err = relL2(Float32Array.from(rgb), readSafetensors(goldens, "ddim.image"));
    t.diagnostic(`${model} q4 in the browser: image rel-L2 ${err.toExponential(2)}`);
    assert.ok(err <= Q4_LIMIT, `${model} q4 in the browser: image rel-L2 ${err}`);

    const dir = mkdtempSync(join(tmpdir(), "webdiffusion-"));
    const tensors = join(dir, "native.safetensors");
    execFileSync(cli, ["generate", "--model", join(packs, `${model}-q4`), "--prompt", PROMPT,
      "--negative-prompt", NEGATIVE, "--steps", "8", "--guidance", "7.5", "--scheduler", "ddim",
      "--latents", goldens, "--backend", "cpu", "--out-tensor", tensors]);
    const native = relL2(Float32Array.from(out.latents), readSafetensors(tensors, "latents"));
    assert.ok(native <= 1e-3, `${model} q4: browser vs native latents rel-L2 ${native}`);
    await page.close();
  });
}

test("a damaged shard is refused by name and not kept in the cache", async () => {
  const damaged = join(packs, "damaged");
  cpSync(join(packs, "sd1-tiny-q4"), damaged, { recursive: true });
  const shard = join(damaged, "unet/shard-00000.bin");
  const bytes = readFileSync(shard);
  bytes[100] ^= 0x40;
  writeFileSync(shard, bytes);
  const page = await openPage();
  const out = await page.evaluate(async ({ url }) => {
    let message = null;
    try {
      await window.webdiffusion.Pipeline.load(url, {});
    } catch (e) {
      message = e.message;
    }
    const cached = await window.webdiffusion.Pipeline.cached();
    return { message, cached: cached.map((c) => c.url) };
  }, { url: `${server.base}/packs/damaged` });
  assert.match(out.message ?? "", /damaged\/unet\/shard-00000\.bin.*sha256/);
  assert.ok(!out.cached.some((u) => u.endsWith("damaged/unet/shard-00000.bin")), "dropped from the cache");
  assert.ok(out.cached.some((u) => u.endsWith("damaged/manifest.json")), "the rest stays cached");
  await page.close();
});

test("no shader or WebGPU error was logged", () => {
  assert.deepEqual(gpuErrors(consoleErrors), []);
});
