// The npm package as a developer installs it: `npm pack`, installed into a fresh Vite +
// TypeScript project, a consumer type-checked strictly and built (the .wasm asset must be
// resolved by the bundler).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, stdio: "pipe", encoding: "utf8" });

const CONSUMER = `import init, { Pipeline, type GenerateResult, type LoadProgress } from "webdiffusion";

async function main(canvas: HTMLCanvasElement): Promise<GenerateResult> {
  await init();
  const pipe = await Pipeline.load("/models/sd-turbo", {
    onProgress: (p: LoadProgress) => console.log(p.file, p.loaded, p.total ?? "?"),
    cache: true,
  });
  const controller = new AbortController();
  const out = await pipe.generate({
    prompt: "a red fox in the snow",
    steps: 1,
    guidance: 0,
    scheduler: "euler-a",
    seed: 42,
    onStep: (step: number, total: number) => console.log(step, total),
    signal: controller.signal,
  });
  canvas.getContext("2d")?.putImageData(new ImageData(out.pixels, out.width, out.height), 0, 0);
  const cached = await Pipeline.cached();
  console.log(cached.map((c) => c.url + " " + (c.bytes ?? 0)));
  return out;
}

main(document.querySelector("canvas") as HTMLCanvasElement);
`;

test("npm pack installs into a Vite + TypeScript project that type-checks strictly and builds", () => {
  const dir = mkdtempSync(join(tmpdir(), "webdiffusion-consumer-"));
  const packed = JSON.parse(run("npm", ["pack", join(root, "pkg"), "--pack-destination", dir, "--json"], root));
  const files = packed[0].files.map((f) => f.path).sort();
  assert.ok(files.includes("webdiffusion_bg.wasm") && files.includes("webdiffusion.d.ts"));
  assert.ok(files.includes("worker.js") && files.includes("README.md"));
  assert.ok(files.every((f) => !f.endsWith(".rs") && !f.startsWith("tests/")), `only what is needed: ${files}`);

  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
  run("npm", ["install", "--no-audit", "--no-fund", join(dir, packed[0].filename),
    "vite@7.3.8", "typescript@5.9.3"], dir);
  writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({
    // Vite's own template settings, strict.
    compilerOptions: { target: "ES2022", module: "ESNext", moduleResolution: "bundler", strict: true,
      noImplicitAny: true, lib: ["ES2022", "DOM", "DOM.Iterable"], noEmit: true, skipLibCheck: true,
      noUnusedLocals: true },
    include: ["main.ts"],
  }));
  writeFileSync(join(dir, "main.ts"), CONSUMER);
  writeFileSync(join(dir, "index.html"), '<canvas></canvas><script type="module" src="/main.ts"></script>');
  run(join(dir, "node_modules/.bin/tsc"), ["-p", "."], dir);
  run(join(dir, "node_modules/.bin/vite"), ["build", "--logLevel", "error"], dir);

  // The types are precise, not `any`: a wrong scheduler name and a numeric prompt fail.
  writeFileSync(join(dir, "main.ts"), `import { Pipeline } from "webdiffusion";
const pipe = await Pipeline.load("/m", {});
await pipe.generate({ prompt: 1, scheduler: "fast" });
`);
  assert.throws(() => run(join(dir, "node_modules/.bin/tsc"), ["-p", "."], dir), (e) =>
    /TS2322|TS2820/.test(String(e.stdout)));
  const assets = readdirSync(join(dir, "dist/assets"));
  assert.ok(assets.some((a) => a.endsWith(".wasm")), `the .wasm is emitted as an asset: ${assets}`);
});
