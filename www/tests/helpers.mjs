// What the app's browser tests share: the built app served with the test fixtures, headless
// Chromium with WebGPU (SwiftShader), the native CLI as the reference image, reading pixels
// and PNG parameters, and axe-core.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "../../tests/web/node_modules/playwright-core/index.mjs";
import { serve } from "../../tests/web/server.mjs";

export const www = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const root = resolve(www, "..");
export const fixtures = join(root, "tests/fixtures");
const cli = join(process.env.CARGO_TARGET_DIR ?? join(homedir(), ".cache/webdiffusion/target"), "release/webdiffusion");

/** The built app (www/dist) with the fixtures under /fixtures/. */
export function serveApp() {
  return serve(join(www, "dist"), { "/fixtures/": fixtures });
}

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking", "--no-first-run"],
  });
}

/** The CLI's image for the same settings (`args` after `generate`), f32 RGB in [0, 1]. */
export function nativeImage(args) {
  const out = join(mkdtempSync(join(tmpdir(), "webdiffusion-app-")), "native.safetensors");
  execFileSync(cli, ["generate", "--model", join(fixtures, "sd1-tiny"), "--backend", "cpu", ...args, "--out-tensor", out]);
  const bytes = readFileSync(out);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString());
  const [a, b] = header.image.data_offsets;
  const data = bytes.subarray(8 + n + a, 8 + n + b);
  return new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.length));
}

/** The largest difference, in 1/255 steps, between RGBA `pixels` and the CLI's RGB image. */
export function worstDifference(pixels, native) {
  let worst = 0;
  for (let i = 0; i < native.length; i++) {
    const px = Math.floor(i / 3);
    worst = Math.max(worst, Math.abs(pixels[px * 4 + (i % 3)] - Math.round(native[i] * 255)));
  }
  return worst;
}

/** The RGBA pixels of the image `selector` shows. */
export function pixelsOf(page, selector) {
  return page.$eval(selector, async (img) => {
    await img.decode();
    const c = document.createElement("canvas");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    return Array.from(ctx.getImageData(0, 0, c.width, c.height).data);
  });
}

/** The text of a PNG's `parameters` chunk (tEXt or uncompressed iTXt). */
export function pngParameters(png) {
  for (let at = 8; at + 12 <= png.length;) {
    const len = png.readUInt32BE(at);
    const type = png.toString("latin1", at + 4, at + 8);
    const body = png.subarray(at + 8, at + 8 + len);
    if ((type === "tEXt" || type === "iTXt") && body.toString("latin1", 0, 11) === "parameters\0") {
      if (type === "tEXt") return body.toString("latin1", 11);
      let rest = body.indexOf(0, 13) + 1;
      rest = body.indexOf(0, rest) + 1;
      return body.toString("utf8", rest);
    }
    at += 12 + len;
  }
  return null;
}

/** A PNG (the tiny model's size) with `text` as A1111's tEXt `parameters`. */
export function a1111Png(text) {
  const png = readFileSync(join(fixtures, "goldens/sd1-tiny-vae-input.png"));
  const body = Buffer.concat([Buffer.from("parameters\0", "latin1"), Buffer.from(text, "latin1")]);
  const chunk = Buffer.alloc(12 + body.length);
  chunk.writeUInt32BE(body.length, 0);
  chunk.write("tEXt", 4, "latin1");
  body.copy(chunk, 8);
  chunk.writeUInt32BE(crc32(chunk.subarray(4, 8 + body.length)), 8 + body.length);
  return Buffer.concat([png.subarray(0, png.length - 12), chunk, png.subarray(png.length - 12)]);
}

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

/** axe-core's serious and critical violations on the page as it is, one line each. */
export async function axeViolations(page) {
  if (!(await page.evaluate(() => "axe" in window))) {
    await page.addScriptTag({ path: join(www, "node_modules/axe-core/axe.min.js") });
  }
  const violations = await page.evaluate(async () => (await window.axe.run(document, { resultTypes: ["violations"] })).violations);
  return violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
}
