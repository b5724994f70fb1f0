// The customisation tools in headless Chromium (WebGPU on SwiftShader), against the
// diffusers goldens of the tiny fixtures: LoRA (by URL and from bytes).
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

test("no shader or WebGPU error was logged", () => {
  assert.deepEqual(gpuErrors(consoleErrors), []);
});
