// The README's "run it" command as a newcomer types it: `scripts/serve-app.sh`, open the URL
// it prints, press Generate with the preselected tiny model, here at phone size (390×844),
// where the image stage sits below the settings. Vite's dev server answers every missing
// file with index.html (status 200, text/html), so this is also the loader's test against a
// single-page-app fallback: the pack probe (`manifest.json`), the fp16 weight variants and
// the tokenizer's alternatives all come back as that page.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { launch, root, www } from "./helpers.mjs";

const WAIT = { timeout: 300_000 };
/** The package is built before the app's tests; a cold build would take much longer. */
const READY_MS = 20 * 60_000;

let server;
let output = "";
let browser;

/** A port nothing listens on. */
const freePort = () => new Promise((resolve) => {
  const s = createServer().listen(0, "127.0.0.1", () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  });
});

before(async () => {
  mkdirSync(join(www, "test-results"), { recursive: true });
  const port = await freePort();
  server = spawn(join(root, "scripts/serve-app.sh"), [], {
    cwd: root, env: { ...process.env, PORT: String(port) }, detached: true, stdio: ["ignore", "pipe", "pipe"],
  });
  server.stdout.on("data", (d) => (output += d));
  server.stderr.on("data", (d) => (output += d));
  browser = await launch();
});

after(async () => {
  await browser?.close();
  // The script and the dev server it started, as Ctrl+C would.
  if (server?.exitCode === null) process.kill(-server.pid, "SIGINT");
});

/** The URL the script prints once the app answers. */
async function readyUrl() {
  const started = Date.now();
  for (;;) {
    const m = /webdiffusion is ready: open (http:\S+)/.exec(output);
    if (m) return m[1];
    assert.equal(server.exitCode, null, `scripts/serve-app.sh exited early:\n${output}`);
    assert.ok(Date.now() - started < READY_MS, `not ready after ${READY_MS / 60_000} minutes:\n${output}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

test("scripts/serve-app.sh says what it does and prints the URL once the app answers", async () => {
  const url = await readyUrl();
  assert.match(output, /\[1\/3\].*\n(.|\n)*\[2\/3\].*\n(.|\n)*\[3\/3\] Starting the app at/);
  assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
});

test("390×844: Generate with the preselected tiny model brings the stage into view and adds an image to the history", async () => {
  const url = await readyUrl();
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  const generate = page.getByRole("button", { name: "Generate", exact: true });
  await page.waitForFunction(() => !document.querySelector("#generate").disabled, null, WAIT);
  assert.match(await page.locator("#model-summary").textContent(), /^Tiny test model/);
  const stageTop = () => page.evaluate(() => document.querySelector(".stage").getBoundingClientRect().top);
  assert.ok((await stageTop()) > 844, "at phone size the stage starts below the first screen");

  await generate.click();
  // The stage (download progress first, then the steps) scrolls into view at once.
  await page.waitForFunction(() => {
    const top = document.querySelector(".stage").getBoundingClientRect().top;
    return top >= 0 && top < innerHeight / 2;
  }, null, { timeout: 10_000 });
  await page.waitForFunction(
    () => document.querySelectorAll("#history-list li").length >= 1 || !document.querySelector("#error").hidden, null, WAIT);
  assert.equal(await page.isHidden("#error"), true, `error: ${await page.textContent("#error")}`);
  assert.equal(await page.locator("#history-list li").count(), 1);
  assert.match(await page.getAttribute("#stage-image", "src"), /^blob:/);
  await page.screenshot({ path: join(www, "test-results", "start-390x844.png") });
  assert.deepEqual(errors, []);
  await page.close();
});
