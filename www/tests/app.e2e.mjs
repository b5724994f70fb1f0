// The app as people use it, in headless Chromium on WebGPU (SwiftShader), at 1280×800 and at
// 390×844, found by accessible names where it matters. One page throughout: generating is
// slow on a CPU, and the worker's compiled shaders only last as long as the page. So every
// generation comes first (desktop, LoRA, embeddings, ControlNet + inpainting, cancel; then the phone
// size), then what needs no GPU work: reload, reuse, PNG info, storage, axe. Screenshots of
// both sizes are kept in www/test-results/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { a1111Png, axeViolations, fixtures, launch, nativeImage, pixelsOf, pngParameters, serveApp, worstDifference, www } from "./helpers.mjs";

const PROMPT = "a watercolor fox in the snow";
const NEGATIVE = "blurry, low quality";
const PHONE_PROMPT = "a lighthouse on a cliff";
const LORA = "lora1-sd1-tiny.kohya";
const WAIT = { timeout: 300_000 };
const results = join(www, "test-results");

let server;
let browser;
let page;
const consoleErrors = [];

before(async () => {
  mkdirSync(results, { recursive: true });
  server = await serveApp();
  browser = await launch();
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  page = await context.newPage();
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page.goto(`${server.base}/index.html`);
});

after(async () => {
  await browser?.close();
  server?.close();
});

const prompt = () => page.getByRole("textbox", { name: /^Prompt/ });
const generateButton = () => page.getByRole("button", { name: "Generate", exact: true });
const field = (name) => page.getByRole("spinbutton", { name, exact: true });
const historyImages = () => page.getByRole("region", { name: "History" }).getByRole("img");

/** Opens the `<details>` whose summary starts with `name`. */
async function open(name) {
  await page.locator("details", { has: page.locator(`summary:text-matches("^${name}")`) }).first().evaluate((d) => (d.open = true));
}

async function settings({ steps, guidance, scheduler = "ddim", seed = "" }) {
  await open("Advanced");
  await field("Steps").fill(String(steps));
  await field("Guidance (CFG)").fill(String(guidance));
  await page.getByRole("combobox", { name: "Scheduler" }).selectOption(scheduler);
  await field("Seed").fill(String(seed));
}

/** Waits until the history holds `count` images, failing at once if an error shows. */
async function generated(count) {
  await page.waitForFunction((n) => document.querySelectorAll("#history-list li").length >= n || !document.querySelector("#error").hidden, count, WAIT);
  assert.equal(await page.isHidden("#error"), true, `error: ${await page.textContent("#error")}`);
  assert.equal(await page.locator("#history-list li").count(), count);
}

/** The PNG of the image shown, as the Download PNG link saves it. */
async function downloadShown() {
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("link", { name: "Download PNG" }).click()]);
  return readFileSync(await download.path());
}

async function allSectionsOpen() {
  await page.evaluate(() => document.querySelectorAll("details").forEach((d) => (d.open = true)));
}

test("the tiny test model is preselected and says it makes noise; WebGPU is found; the keyboard reaches the prompt", async () => {
  assert.match(await page.locator("#model-summary").textContent(), /^Tiny test model/);
  assert.match(await page.locator("#model-note").textContent(), /coloured noise/);
  assert.equal(await page.locator("#banner").textContent().then((t) => /no WebGPU/.test(t)), false);
  assert.equal(await generateButton().isEnabled(), true);
  // The first Tab lands on the skip link, visibly; Enter follows it to the prompt.
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Skip to the prompt");
  assert.notEqual(await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle), "none");
  await page.keyboard.press("Enter");
  assert.equal(await page.evaluate(() => document.activeElement.id), "prompt");
});

test("1280×800: generate shows progress, keeps the image (equal to the CLI's) in the history with its parameters", async () => {
  await prompt().fill(PROMPT);
  await page.getByRole("textbox", { name: "Negative prompt" }).fill(NEGATIVE);
  await settings({ steps: 2, guidance: 7.5, seed: 7 });
  await generateButton().click();
  await page.waitForFunction(() => /MB|KB/.test(document.querySelector("#download-text").textContent), null, WAIT);
  // The live preview takes the image's place while it runs.
  await page.waitForFunction(() => Number(document.querySelector("#steps-text").dataset.step) >= 1
    && !document.querySelector("#stage-preview").hidden && document.querySelector("#stage-preview").width === 16, null, WAIT);
  assert.match(await page.locator("#steps-text").textContent(), /^Step \d of 2/);
  await generated(1);
  assert.equal(await page.locator("#stage-preview").isHidden(), true);
  assert.equal(await historyImages().first().getAttribute("alt"), PROMPT);
  assert.equal(await page.locator("#stage-image").getAttribute("alt"), PROMPT);

  const native = nativeImage(["--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--steps", "2", "--guidance", "7.5", "--scheduler", "ddim", "--seed", "7"]);
  const worst = worstDifference(await pixelsOf(page, "#stage-image"), native);
  assert.ok(worst <= 2, `the app's image differs from the CLI's by up to ${worst}/255`);

  const parameters = pngParameters(await downloadShown());
  assert.equal(parameters, `${PROMPT}\nNegative prompt: ${NEGATIVE}\n` +
    "Steps: 2, Sampler: DDIM, CFG scale: 7.5, Seed: 7, Size: 32x32, Model: sd1-tiny, Version: webdiffusion");
  await page.screenshot({ path: join(results, "app-1280x800.png"), fullPage: true });
});

test("LoRA: add by file and by URL, remove one, generate with Ctrl+Enter: the CLI's image, named in the parameters", async () => {
  await open("LoRA");
  await page.getByLabel("Add a LoRA file…").setInputFiles(join(fixtures, `lora/${LORA}.safetensors`));
  const strength = page.getByRole("slider", { name: `Strength of ${LORA}` });
  await strength.waitFor(WAIT);
  await strength.fill("0.75");
  await page.getByRole("textbox", { name: "LoRA URL" }).fill(`${server.base}/fixtures/lora/lora2-sd1-tiny.kohya.safetensors`);
  await page.getByRole("button", { name: "Add", exact: true }).click();
  const remove = page.getByRole("button", { name: "Remove lora2-sd1-tiny.kohya" });
  await remove.click(WAIT);
  await remove.waitFor({ state: "detached" });
  assert.equal(await page.getByRole("list", { name: "LoRAs" }).getByRole("listitem").count(), 1);

  await settings({ steps: 1, guidance: 1, seed: 7 });
  await prompt().focus();
  await page.keyboard.press("Control+Enter");
  await generated(2);
  const native = nativeImage(["--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--steps", "1", "--guidance", "1", "--scheduler", "ddim",
    "--seed", "7", "--lora", `${join(fixtures, `lora/${LORA}.safetensors`)}:0.75`]);
  const worst = worstDifference(await pixelsOf(page, "#stage-image"), native);
  assert.ok(worst <= 2, `the app's LoRA image differs from the CLI's by up to ${worst}/255`);
  const parameters = pngParameters(await downloadShown());
  assert.match(parameters, new RegExp(`^${PROMPT} <lora:${LORA}:0.75>\n`));
  assert.match(parameters, new RegExp(`Lora hashes: "${LORA.replace(".", "\\.")}: [0-9a-f]{12}"`));
  assert.doesNotMatch(parameters, /lora2/);

  // PNG info gives a loaded LoRA back its strength and switches it on.
  await strength.fill("1");
  await page.getByRole("checkbox", { name: LORA }).uncheck();
  const png = await downloadShown();
  await page.getByLabel("PNG info").setInputFiles({ name: "with-lora.png", mimeType: "image/png", buffer: png });
  await page.waitForFunction(() => document.querySelector("#lora-list input[type=range]").value === "0.75", null, WAIT);
  assert.equal(await page.getByRole("checkbox", { name: LORA }).isChecked(), true);
  assert.equal(await prompt().inputValue(), PROMPT, "the tag is not left in the prompt");
  // Off again for what follows.
  await page.getByRole("checkbox", { name: LORA }).uncheck();
});

test("embeddings and prompt weights: token counts, Ctrl+↑, the CLI's image, TI hashes in the parameters", async () => {
  const counter = page.locator("#prompt-tokens");
  await page.waitForFunction(() => /^\d+\/75$/.test(document.querySelector("#prompt-tokens").textContent), null, WAIT);
  await open("Embeddings");
  await page.getByLabel("Add an embedding file…").setInputFiles(join(fixtures, "prompts/easynegative-tiny.safetensors"));
  const item = page.getByRole("list", { name: "Embeddings" }).getByRole("listitem");
  await item.waitFor(WAIT);
  assert.match(await item.textContent(), /easynegative-tiny · 2 tokens/);
  await page.getByRole("button", { name: "Add easynegative-tiny to the negative prompt" }).click();
  const negative = page.getByRole("textbox", { name: /^Negative prompt/ });
  assert.equal(await negative.inputValue(), `easynegative-tiny, ${NEGATIVE}`);

  // Ctrl+↑ weighs the word at the caret; the counter follows the text.
  await prompt().fill("a watercolor fox");
  await prompt().evaluate((t) => t.setSelectionRange(14, 14));
  await prompt().press("Control+ArrowUp");
  await prompt().press("Control+ArrowUp");
  assert.equal(await prompt().inputValue(), "a watercolor (fox:1.2)");
  assert.deepEqual(await page.locator("#prompt-highlight mark").allTextContents(), ["fox"], "the weighted word is highlighted");
  await page.waitForFunction(() => document.querySelector("#prompt-tokens").textContent === "3/75", null, WAIT);
  await prompt().fill("fox ".repeat(80));
  await page.waitForFunction(() => document.querySelector("#prompt-tokens").textContent === "80/150 · 2 chunks", null, WAIT);
  await open("Advanced");
  await page.getByRole("checkbox", { name: /Read prompt weights/ }).uncheck();
  await page.waitForFunction(() => /dropped/.test(document.querySelector("#prompt-tokens").textContent), null, WAIT);
  await page.getByRole("checkbox", { name: /Read prompt weights/ }).check();
  assert.match(await counter.textContent(), /./);

  const weighted = "a watercolor (fox:1.2) in the [snow]";
  await prompt().fill(weighted);
  await settings({ steps: 1, guidance: 2, seed: 11 });
  await generateButton().click();
  await generated(3);
  const native = nativeImage(["--prompt", weighted, "--negative-prompt", `easynegative-tiny, ${NEGATIVE}`, "--steps", "1", "--guidance", "2",
    "--scheduler", "ddim", "--seed", "11", "--embedding", join(fixtures, "prompts/easynegative-tiny.safetensors")]);
  const worst = worstDifference(await pixelsOf(page, "#stage-image"), native);
  assert.ok(worst <= 2, `the app's image with an embedding differs from the CLI's by up to ${worst}/255`);
  const parameters = pngParameters(await downloadShown());
  assert.match(parameters, /TI hashes: "easynegative-tiny: [0-9a-f]{12}"/);

  // Back to the prompt and negative prompt the other tests expect.
  await page.getByRole("button", { name: "Remove easynegative-tiny" }).click();
  await prompt().fill(PROMPT);
  await negative.fill(NEGATIVE);
});

test("ControlNet (Canny, live preview) with inpainting: the CLI's image; or, without engine support, panels that say why", async () => {
  await open("ControlNet");
  await open("Image / inpainting");
  await page.waitForFunction(() => document.querySelector("#generate") && !document.querySelector("#generate").disabled);
  // The app probes the engine at start; give the probe its time.
  await page.waitForTimeout(500);
  if (await page.locator("#controlnet-fields").isDisabled()) {
    assert.match(await page.locator("#controlnet-unsupported").textContent(), /no ControlNet/);
    assert.match(await page.locator("#image-unsupported").textContent(), /no image-to-image/);
    return;
  }
  await page.getByRole("combobox", { name: "ControlNet model" }).selectOption("custom");
  await page.getByRole("textbox", { name: "ControlNet URL" }).fill(`${server.base}/fixtures/controlnet-sd1-tiny`);
  await page.locator("#cn-file").setInputFiles(join(fixtures, "controlnet/control-a.png"));
  // The live Canny preview: some edges, white on black.
  await page.waitForFunction(() => {
    const c = document.querySelector("#cn-canny");
    if (c.hidden || !c.width) return false;
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    return d.some((v, i) => i % 4 === 0 && v === 255) && d.some((v, i) => i % 4 === 0 && v === 0);
  }, null, WAIT);
  await page.getByRole("button", { name: "Load", exact: true }).click();
  await page.waitForFunction(() => /^Loaded/.test(document.querySelector("#cn-status").textContent), null, WAIT);
  assert.equal(await page.getByRole("checkbox", { name: "Use a ControlNet" }).isChecked(), true);

  await page.locator("#init-file").setInputFiles(join(fixtures, "goldens/sd1-tiny-vae-input.png"));
  await page.getByLabel("Load a mask…").setInputFiles(join(fixtures, "inpaint/mask-32.png"));
  await page.waitForFunction(() => /inpainting, 32×32/.test(document.querySelector("#image-state").textContent), null, WAIT);

  await settings({ steps: 2, guidance: 1, seed: 7 });
  await generateButton().click();
  await generated(4);
  const native = nativeImage(["--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--steps", "2", "--guidance", "1", "--scheduler", "ddim",
    "--seed", "7", "--init-image", join(fixtures, "goldens/sd1-tiny-vae-input.png"), "--mask", join(fixtures, "inpaint/mask-32.png"),
    "--strength", "0.75", "--controlnet", join(fixtures, "controlnet-sd1-tiny"), "--control-image", join(fixtures, "controlnet/control-a.png"),
    "--canny", "100,200"]);
  const worst = worstDifference(await pixelsOf(page, "#stage-image"), native);
  assert.ok(worst <= 2, `the app's ControlNet + inpainting image differs from the CLI's by up to ${worst}/255`);
  const parameters = pngParameters(await downloadShown());
  assert.match(parameters, /Denoising strength: 0\.75/);
  assert.match(parameters, /ControlNet 0: "Module: canny, Model: [^,]+, Weight: 1\.0, Threshold A: 100, Threshold B: 200, Guidance Start: 0\.0, Guidance End: 1\.0"/);
  // Off again for what follows.
  await page.getByRole("checkbox", { name: "Use a ControlNet" }).uncheck();
  await page.getByRole("button", { name: "Remove image" }).click();
});

test("1280×800: a wrong model URL says what was not found, with the URL", async () => {
  await open("Model");
  await page.getByRole("radio", { name: "Custom URL…" }).check();
  await page.getByRole("textbox", { name: "Model URL" }).fill(`${server.base}/models/nope`);
  await generateButton().click();
  await page.waitForSelector("#error:not([hidden])", WAIT);
  assert.match(await page.locator("#error-title").textContent(), /^No model found at http:\/\/127\.0\.0\.1:\d+\/models\/nope\.$/);
  assert.match(await page.locator("#error-advice").textContent(), /models\/nope\/model_index\.json: not found \(HTTP 404\)/);
  assert.doesNotMatch(await page.locator("#error").textContent(), /\bat .*\.js:\d+/);
  await page.getByRole("radio", { name: "Tiny test model" }).check();
});

/**
 * Starts a long run and cancels it with `how`, once it is under way (`afterStep`: once its
 * first step is done); nothing is added to the history.
 */
async function cancelRun(how, afterStep) {
  const before = await page.locator("#history-list li").count();
  await settings({ steps: 50, guidance: 1, seed: "" });
  await generateButton().click();
  // Cancel is enabled once the generation is under way (and its step count starts afresh).
  await page.waitForFunction((afterStep) => !document.querySelector("#cancel").disabled
    && (!afterStep || Number(document.querySelector("#steps-text").dataset.step) >= 1), afterStep, WAIT);
  await how();
  await page.waitForFunction(() => !document.querySelector("#error").hidden
    && document.querySelector("#error-title").textContent === "Cancelled.", null, WAIT);
  assert.ok(Number(await page.locator("#steps-text").getAttribute("data-step") ?? 0) < 50);
  assert.equal(await page.locator("#history-list li").count(), before, "no image from the cancelled run");
  assert.equal(await generateButton().isEnabled(), true);
}

test("1280×800: Escape cancels a running generation", async () => {
  await cancelRun(() => page.keyboard.press("Escape"), true);
});

test("390×844: generate with the button; the image lands in the history; Cancel cancels", async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  const count = await page.locator("#history-list li").count();
  await prompt().fill(PHONE_PROMPT);
  await settings({ steps: 1, guidance: 1, seed: 11 });
  await generateButton().click();
  await generated(count + 1);
  assert.equal(await historyImages().first().getAttribute("alt"), PHONE_PROMPT);
  await page.evaluate(() => document.querySelectorAll("details").forEach((d) => (d.open = false)));
  await page.screenshot({ path: join(results, "app-390x844.png"), fullPage: true });
  await cancelRun(() => page.getByRole("button", { name: "Cancel" }).click(), false);
});

for (const [width, height] of [[390, 844], [1280, 800]]) {
  test(`${width}×${height}: after a reload the history is still there, and its parameters can be reused`, async () => {
    await page.setViewportSize({ width, height });
    await page.reload();
    await historyImages().first().waitFor(WAIT);
    const alts = await historyImages().evaluateAll((imgs) => imgs.map((i) => i.alt));
    assert.ok(alts.includes(PROMPT) && alts.includes(PHONE_PROMPT), `history after reload: ${alts}`);
    assert.equal(await page.locator("#stage-image").getAttribute("alt"), PHONE_PROMPT, "the newest image is shown");
    await open("Advanced");

    await prompt().fill("something else");
    await field("Seed").fill("");
    await page.getByRole("region", { name: "History" }).getByRole("button", { name: PROMPT }).last().click();
    await page.getByRole("button", { name: "Reuse parameters" }).click();
    assert.equal(await prompt().inputValue(), PROMPT);
    assert.equal(await page.getByRole("textbox", { name: "Negative prompt" }).inputValue(), NEGATIVE);
    assert.equal(await field("Steps").inputValue(), "2");
    assert.equal(await field("Seed").inputValue(), "7");
    assert.equal(await page.getByRole("combobox", { name: "Scheduler" }).inputValue(), "ddim");

    await field("Seed").fill("");
    await page.getByRole("region", { name: "History" }).getByRole("button", { name: PHONE_PROMPT }).click();
    await page.getByRole("button", { name: "Reuse seed" }).click();
    assert.equal(await field("Seed").inputValue(), "11");

    if (await page.locator("#image-fields").isEnabled()) {
      await page.getByRole("button", { name: "Use as input image" }).click();
      await page.waitForFunction(() => /image to image, 32×32/.test(document.querySelector("#image-state").textContent), null, WAIT);
      await page.getByRole("button", { name: "Remove image" }).click();
    }
  });

  test(`${width}×${height}: a PNG from the history dropped on the page fills the form; PNG info reads an A1111 PNG`, async () => {
    const png = await downloadShown(); // the phone-size image, shown last
    await prompt().fill("");
    await page.locator("#stage-figure").evaluate((target, bytes) => {
      const data = new DataTransfer();
      data.items.add(new File([new Uint8Array(bytes)], "from-history.png", { type: "image/png" }));
      target.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
    }, [...png]);
    await page.waitForFunction((p) => document.querySelector("#prompt").value === p, PHONE_PROMPT, WAIT);
    assert.equal(await field("Steps").inputValue(), "1");
    assert.match(await page.getByRole("status").filter({ hasText: "Parameters" }).textContent(), /from-history\.png/);

    const a1111 = "a castle in the clouds, dramatic light <lora:paper_cut:0.6>\nNegative prompt: lowres\n" +
      'Steps: 23, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 48x40, Model hash: 6ce0161689, ' +
      'Model: v1-5-pruned-emaonly, Lora hashes: "paper_cut: 0123456789ab", Version: v1.10.1';
    await page.getByLabel("PNG info").setInputFiles({ name: "a1111.png", mimeType: "image/png", buffer: a1111Png(a1111) });
    await page.waitForFunction(() => document.querySelector("#prompt").value === "a castle in the clouds, dramatic light", null, WAIT);
    assert.equal(await page.getByRole("combobox", { name: "Scheduler" }).inputValue(), "dpmpp-2m-karras");
    assert.deepEqual([await field("Steps").inputValue(), await field("Guidance (CFG)").inputValue(), await field("Seed").inputValue(),
      await field("Width").inputValue(), await field("Height").inputValue()], ["23", "6.5", "1234", "48", "40"]);
    const notice = await page.locator("#notice").textContent();
    assert.match(notice, /LoRA “paper_cut” \(strength 0\.6\) is not loaded/);
    assert.match(notice, /“v1-5-pruned-emaonly”, which is not offered here/);
  });
}

test("the storage panel lists the tiny model, which can be deleted", async () => {
  await open("Downloaded models");
  const del = page.getByRole("button", { name: "Delete Tiny test model from storage" });
  await del.waitFor(WAIT);
  assert.match(await page.locator("#history-usage").textContent(), /^\d+ images?, \d+ KB\.$/);
  await del.click();
  await del.waitFor({ state: "detached", ...WAIT });
  assert.match(await page.locator("#notice").textContent(), /Deleted Tiny test model from storage/);
});

for (const [width, height, scheme] of [[1280, 800, "light"], [390, 844, "light"], [1280, 800, "dark"]]) {
  test(`axe: no serious or critical violations at ${width}×${height} (${scheme}), folded and with every section open`, async () => {
    await page.setViewportSize({ width, height });
    await page.emulateMedia({ colorScheme: scheme });
    assert.deepEqual(await axeViolations(page), []);
    await allSectionsOpen();
    assert.deepEqual(await axeViolations(page), []);
    await page.screenshot({ path: join(results, `app-${width}x${height}-${scheme}-open.png`), fullPage: true });
    await page.evaluate(() => document.querySelectorAll("details").forEach((d) => (d.open = false)));
  });
}

test("history: delete one image, then clear them all; the storage panel counts them", async () => {
  await page.reload();
  await historyImages().first().waitFor(WAIT);
  const count = await historyImages().count();
  await open("Downloaded models");
  assert.match(await page.locator("#history-usage").textContent(), new RegExp(`^${count} images, `));
  await page.getByRole("button", { name: "Delete", exact: true }).click();
  await page.waitForFunction((n) => document.querySelectorAll("#history-list li").length === n, count - 1, WAIT);
  await page.waitForFunction((n) => document.querySelector("#history-usage").textContent.startsWith(`${n} image`), count - 1, WAIT);
  await page.getByRole("button", { name: "Clear history…" }).click();
  await page.getByRole("button", { name: "Delete all images" }).click();
  await page.getByText("Nothing yet.").waitFor(WAIT);
  assert.equal(await historyImages().count(), 0);
  assert.equal(await page.locator("#stage-actions").isHidden(), true);
  await page.reload();
  await page.getByText("Nothing yet.").waitFor(WAIT);
  assert.equal(await historyImages().count(), 0, "cleared for good");
});

test("without WebGPU the page says so and Generate is off", async () => {
  const plain = await (await import("../../tests/web/node_modules/playwright-core/index.mjs")).chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--headless=new", "--no-sandbox", "--disable-webgpu"],
  });
  try {
    const other = await plain.newPage();
    await other.goto(`${server.base}/index.html`);
    await other.waitForSelector("#banner:not([hidden])", WAIT);
    assert.match(await other.locator("#banner").textContent(), /no WebGPU.*Chrome, Edge or Safari/);
    assert.equal(await other.getByRole("button", { name: "Generate", exact: true }).isDisabled(), true);
  } finally {
    await plain.close();
  }
});

test("no uncaught errors on the page", () => {
  assert.deepEqual(consoleErrors, []);
});
