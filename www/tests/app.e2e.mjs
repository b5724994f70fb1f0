// The app as a person uses it, in headless Chromium: type a prompt, generate with the tiny
// model, watch progress reach the last step, find the image in the gallery (equal to the
// native CLI's for the same seed), download the PNG with its parameters, and cancel a run.
// A screenshot is kept in www/test-results/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "../../tests/web/node_modules/playwright-core/index.mjs";
import { serve } from "../../tests/web/server.mjs";

const www = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const root = resolve(www, "..");
const cli = join(process.env.CARGO_TARGET_DIR ?? join(homedir(), ".cache/webdiffusion/target"), "release/webdiffusion");
const PROMPT = "a watercolor fox in the snow";
const NEGATIVE = "blurry, low quality";

let server;
let browser;
let page;

before(async () => {
  server = await serve(join(www, "dist"));
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking"],
  });
  page = await (await browser.newContext({ acceptDownloads: true })).newPage();
  await page.goto(`${server.base}/index.html`);
});

after(async () => {
  await browser?.close();
  server?.close();
});

function readSafetensors(path, name) {
  const bytes = readFileSync(path);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString());
  const [a, b] = header[name].data_offsets;
  const data = bytes.subarray(8 + n + a, 8 + n + b);
  return new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.length));
}

test("generate shows progress, adds the native image to the gallery, and downloads it with parameters", async () => {
  assert.equal(await page.isHidden("#no-webgpu"), true, "WebGPU is available");
  await page.fill("#prompt", PROMPT);
  await page.fill("#negative", NEGATIVE);
  await page.fill("#steps", "4");
  await page.fill("#guidance", "7.5");
  await page.selectOption("#scheduler", "ddim");
  await page.fill("#seed", "7");
  await page.click("#generate");
  await page.waitForSelector("#gallery img", { timeout: 300_000 });
  assert.equal(await page.textContent("#error"), "");
  const progress = await page.$eval("#progress", (p) => [p.dataset.step, p.dataset.total]);
  assert.deepEqual(progress, ["4", "4"]);
  assert.match(await page.textContent("#download"), /KB|MB/);

  const pixels = await page.$eval("#gallery img", async (img) => {
    await img.decode();
    const c = document.createElement("canvas");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    return Array.from(ctx.getImageData(0, 0, c.width, c.height).data);
  });
  const dir = mkdtempSync(join(tmpdir(), "webdiffusion-app-"));
  const out = join(dir, "native.safetensors");
  execFileSync(cli, ["generate", "--model", join(root, "tests/fixtures/sd1-tiny"), "--prompt", PROMPT,
    "--negative-prompt", NEGATIVE, "--steps", "4", "--guidance", "7.5", "--scheduler", "ddim", "--seed", "7",
    "--backend", "cpu", "--out-tensor", out]);
  const native = readSafetensors(out, "image");
  let worst = 0;
  for (let i = 0; i < native.length; i++) {
    const px = Math.floor(i / 3);
    worst = Math.max(worst, Math.abs(pixels[px * 4 + (i % 3)] - Math.round(native[i] * 255)));
  }
  assert.ok(worst <= 2, `app image differs from the native one by up to ${worst}/255`);

  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#gallery a")]);
  const png = readFileSync(await download.path());
  const text = png.toString("latin1");
  assert.ok(text.includes("parameters") && text.includes("Seed: 7") && text.includes(PROMPT), "PNG parameters");

  mkdirSync(join(www, "test-results"), { recursive: true });
  await page.screenshot({ path: join(www, "test-results/app.png"), fullPage: true });
});

test("cancel stops a running generation", async () => {
  await page.fill("#steps", "40");
  await page.fill("#seed", "");
  await page.click("#generate");
  await page.waitForFunction(() => Number(document.querySelector("#progress").dataset.step) < 40
    && document.querySelector("#cancel").disabled === false, null, { timeout: 120_000 });
  await page.waitForFunction(() => document.querySelector("#progress").textContent.startsWith("Step"), null, { timeout: 120_000 });
  await page.click("#cancel");
  await page.waitForFunction(() => document.querySelector("#error").textContent === "Cancelled.", null, { timeout: 120_000 });
  assert.equal(await page.$$eval("#gallery img", (imgs) => imgs.length), 1, "no image from the cancelled run");
});

test("the storage panel lists the cached model", async () => {
  await page.waitForFunction(() => document.querySelectorAll("#cached li").length > 0, null, { timeout: 30_000 });
  assert.match(await page.textContent("#cached"), /models\/sd1-tiny.*(KB|MB)/);
});
