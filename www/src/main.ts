// The app: wires the panels to the engine (the package's Web Worker) and to the history.
// Generating = load the chosen model if needed → collect the panels' inputs → generate with
// a live preview → write the PNG with its parameters → keep it in the history.
import { Engine } from "./engine";
import { explain, isUnsupported, type Explained } from "./errors";
import { byId, mirrorRanges } from "./dom";
import { readAdapter, adapterName } from "./gpu";
import { History, thumbnail, type HistoryEntry } from "./history";
import { imageFile, pngOf } from "./images";
import { asParsed, parametersFromChunks, splitLoraTags, toA1111, type ParsedParameters, type Parameters } from "./params";
import { plural } from "./format";
import { readTextChunks, withTextChunk } from "./png";
import { presets } from "./presets";
import { latentsToRgba } from "./preview";
import type { GenerateOptions, ModelInfo } from "./protocol";
import { ControlNetPanel } from "./ui/controlnet";
import { GenerationForm } from "./ui/form";
import { HistoryView } from "./ui/history";
import { ImagePanel } from "./ui/image";
import { EmbeddingPanel } from "./ui/embeddings";
import { LoraPanel } from "./ui/lora";
import { ModelPicker, type ModelChoice } from "./ui/model";
import { ProgressView } from "./ui/progress";
import { Stage } from "./ui/stage";
import { StorageView } from "./ui/storage";
import { TokenCounter } from "./ui/tokens";

const PRESETS = presets(new URL(import.meta.env.BASE_URL, location.href).href);
const SETTINGS = "webdiffusion-settings";

const gpu = await readAdapter();
const engine = new Engine();
const history = await History.open();
const picker = new ModelPicker(PRESETS, gpu);
const form = new GenerationForm();
const progress = new ProgressView();
const stage = new Stage();
const historyView = new HistoryView();
const storage = new StorageView(nameOf);
const lora = new LoraPanel(engine, async () => !!(await ensureModel()), describe);
const embeddings = new EmbeddingPanel(engine, async () => !!(await ensureModel()), describe);
const tokens = new TokenCounter(engine, () => ({ ready: loaded !== null, embeddings: embeddings.ids(), weighting: form.read().promptWeighting }));
embeddings.onChange = () => tokens.update();
const controlnet = new ControlNetPanel(engine, async () => !!(await ensureModel()), describe);
const imagePanel = new ImagePanel(() => picker.choice()?.preset?.defaults.size ?? 512);
mirrorRanges(document);

const generateButton = byId<HTMLButtonElement>("generate");
const cancelButton = byId<HTMLButtonElement>("cancel");
let loaded: ModelChoice | null = null;
/** What the loaded model is, as the engine reported it. */
let loadedInfo: ModelInfo | null = null;
let loading: Promise<ModelChoice> | null = null;
let busy = false;
let previewNoted = false;

// ——— Model ———

/** Loads the chosen model unless it is loaded already; null when none is chosen. */
async function ensureModel(): Promise<ModelChoice | null> {
  const choice = picker.choice();
  if (!choice) return null;
  if (loaded?.key === choice.key) return loaded;
  if (loading) await loading.catch(() => {});
  if (loaded?.key === choice.key) return loaded;
  loading = (async () => {
    progress.startDownload(`Downloading ${choice.label}`, choice.expectedBytes);
    loadedInfo = await engine.load({ url: choice.url, dtype: choice.dtype, previewVae: choice.previewVae, t5: choice.t5 });
    progress.endDownload();
    // The worker freed the previous model's LoRAs and ControlNets with it.
    lora.clear();
    embeddings.clear();
    controlnet.clear();
    loaded = choice;
    tokens.update();
    previewNoted = false;
    return choice;
  })();
  try {
    return await loading;
  } finally {
    loading = null;
  }
}

picker.onChange = () => {
  form.setDefaults(picker.choice()?.preset?.defaults);
  saveSettings();
};

// ——— Generating ———

/**
 * On a narrow screen the stage (download and step progress, preview, result, errors) sits
 * below every settings panel: bring it into view as a generation starts, so that pressing
 * Generate visibly does something.
 */
function showStage() {
  const stage = document.querySelector<HTMLElement>(".stage");
  if (!stage || !matchMedia("(max-width: 899px)").matches) return;
  const reduce = matchMedia("(prefers-reduced-motion: reduce)").matches;
  stage.scrollIntoView({ behavior: reduce ? "auto" : "smooth", block: "start" });
}

async function generate() {
  if (busy || !gpu) return;
  const values = form.read();
  if (!values.prompt) {
    showError({ title: "Type a prompt first.", advice: "" });
    byId("prompt").focus();
    return;
  }
  setBusy(true);
  hideError();
  notice("");
  showStage();
  try {
    const model = await ensureModel();
    if (!model) throw new Error("Enter the URL of a model folder under Model → Custom URL.");
    // `<lora:NAME:SCALE>` typed into the prompt works as in A1111, for LoRAs loaded here.
    const tagged = splitLoraTags(values.prompt);
    const loras = lora.active(tagged.loras);
    const control = await controlnet.forGenerate();
    const image = imagePanel.forGenerate();
    const options: GenerateOptions = {
      prompt: tagged.prompt,
      ...(values.promptWeighting ? {} : { promptWeighting: false }),
      ...(embeddings.ids().length ? { embeddings: embeddings.ids() } : {}),
      // An empty field is no negative prompt: SDXL then uses zero negative embeddings.
      negativePrompt: values.negativePrompt || undefined,
      steps: values.steps,
      guidance: values.guidance,
      scheduler: values.scheduler,
      seed: values.seed,
      // An input image sets the size.
      ...(image ? image : { width: values.width, height: values.height }),
      ...(loras.request.length ? { loras: loras.request } : {}),
      ...(control ? { controlnets: [control.input] } : {}),
    };
    progress.startSteps(`Generating with ${model.label}`);
    cancelButton.disabled = false;
    const result = await engine.generate(options);
    cancelButton.disabled = true;
    // What actually ran (the model's own scheduler, LCM's 4 steps, …), not what the form said.
    const params: Parameters = {
      prompt: tagged.prompt, negativePrompt: values.negativePrompt, steps: result.steps, scheduler: result.scheduler,
      guidance: result.guidance, seed: result.seed, width: result.width, height: result.height, model: model.name,
      loras: loras.uses, controlnets: control ? [control.record] : [],
      embeddings: embeddings.used([tagged.prompt, values.negativePrompt]),
      ...(image ? { strength: image.strength, ...(image.maskBlur ? { maskBlur: image.maskBlur } : {}) } : {}),
    };
    const plain = new Uint8Array(await (await pngOf(result.pixels, result.width, result.height)).arrayBuffer());
    const png = new Blob([withTextChunk(plain, "parameters", toA1111(params))], { type: "image/png" });
    const entry = await history.add({ created: Date.now(), params, modelUrl: model.url, thumb: await thumbnail(png) }, png);
    historyView.prepend(entry);
    select(entry, png);
    notice(`Done in ${plural(result.steps, "step")}: added to the history.`);
    navigator.storage?.persist?.().catch(() => {});
  } catch (e) {
    stage.endPreview();
    showError(explainError(e));
  } finally {
    setBusy(false);
    progress.hide();
    refreshStorage();
  }
}

engine.onProgress = (p) => progress.onProgress(p);
engine.onStep = (s) => {
  progress.onStep(s.step, s.total);
  if (s.step === s.total) progress.decoding();
  if (s.preview) {
    stage.preview(new ImageData(s.preview.pixels, s.preview.width, s.preview.height));
    return;
  }
  const [, , h, w] = s.shape;
  stage.preview(new ImageData(latentsToRgba(s.latents, s.shape, loadedInfo?.previewRgb), w, h));
  if (loaded?.previewVae && !previewNoted) {
    previewNoted = true;
    notice("This version of the engine does not decode previews with TAESD yet: showing the quick preview.");
  }
};

function setBusy(value: boolean) {
  busy = value;
  generateButton.disabled = value || !gpu;
  cancelButton.disabled = true;
}

function cancel() {
  if (!cancelButton.disabled) engine.abort();
}

byId<HTMLFormElement>("form").addEventListener("submit", (e) => {
  e.preventDefault();
  generate();
});
cancelButton.addEventListener("click", cancel);
document.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    generate();
  } else if (e.key === "Escape" && busy) {
    cancel();
  }
});

// ——— History and the image shown ———

async function select(entry: HistoryEntry, png?: Blob) {
  const blob = png ?? (await history.png(entry.id));
  if (!blob) return showError({ title: "That image is no longer stored.", advice: "" });
  stage.show(entry, blob);
  historyView.markCurrent(entry.id);
}

historyView.onSelect = (entry) => select(entry);
historyView.onChange = (usage) => storage.history(usage);

function current(): HistoryEntry {
  return stage.current as HistoryEntry;
}

byId("action-reuse").addEventListener("click", () => applyParameters(asParsed(current().params), "this image", current().modelUrl));
byId("action-seed").addEventListener("click", () => {
  form.setSeed(current().params.seed);
  notice(`Seed ${current().params.seed} set: the next image starts from the same noise.`);
});
byId("action-input").addEventListener("click", async () => {
  const png = await history.png(current().id);
  if (!png) return;
  await imagePanel.setImage(png);
  const section = byId<HTMLDetailsElement>("image-section");
  section.open = true;
  section.querySelector("summary")?.focus();
});
byId("action-delete").addEventListener("click", async () => {
  const entry = current();
  const next = historyView.neighbour(entry.id);
  await history.delete(entry.id);
  historyView.remove(entry.id);
  if (next) await select(next);
  else stage.clear();
  notice("Image deleted.");
  refreshStorage();
});
byId("history-clear").addEventListener("click", () => {
  byId("history-confirm").hidden = false;
  byId("history-clear-no").focus();
});
byId("history-clear-no").addEventListener("click", () => {
  byId("history-confirm").hidden = true;
  byId("history-clear").focus();
});
byId("history-clear-yes").addEventListener("click", async () => {
  await history.clear();
  historyView.render([]);
  stage.clear();
  byId("history-confirm").hidden = true;
  notice("History cleared.");
  refreshStorage();
});

// ——— Parameters from PNGs and history ———

function applyParameters(p: ParsedParameters, source: string, url?: string) {
  form.apply(p);
  const notes = [...p.notes];
  if ((p.model || url) && !picker.select(p.model, url)) {
    notes.push(`Made with “${p.model}”, which is not offered here; the current model is kept.`);
  }
  notes.push(...lora.apply(p.loras), ...embeddings.missing(p.embeddings), ...controlnet.apply(p.controlnets));
  imagePanel.applyStrength(p.strength, p.maskBlur);
  notice([`Parameters taken from ${source}.`, ...notes].join(" "));
}

async function readPngInfo(file: File) {
  try {
    const parsed = parametersFromChunks(await readTextChunks(new Uint8Array(await file.arrayBuffer())));
    if (!parsed) return notice(`${file.name} has no generation parameters.`);
    applyParameters(parsed, file.name);
  } catch {
    notice(`${file.name} is not a PNG file: only PNGs carry parameters.`);
  }
}

byId<HTMLInputElement>("png-info").addEventListener("change", (e) => {
  const input = e.target as HTMLInputElement;
  const file = input.files?.[0];
  if (file) readPngInfo(file).finally(() => (input.value = ""));
});

// A dropped image goes where it was dropped: the input image, the control image, or
// anywhere else, PNG info.
document.addEventListener("dragover", (e) => {
  if (e.dataTransfer?.types.includes("Files")) e.preventDefault();
});
document.addEventListener("drop", (e) => {
  const file = imageFile(e.dataTransfer);
  if (!file) return;
  e.preventDefault();
  const zone = (e.target as Element | null)?.closest?.("#init-drop, #cn-drop")?.id;
  if (zone === "init-drop") imagePanel.setImage(file);
  else if (zone === "cn-drop") controlnet.setImage(file);
  else readPngInfo(file);
});
// A pasted image (not text into a field) becomes the input image.
document.addEventListener("paste", (e) => {
  const file = imageFile(e.clipboardData);
  if (!file) return;
  e.preventDefault();
  byId<HTMLDetailsElement>("image-section").open = true;
  imagePanel.setImage(file);
});

// ——— Storage ———

function nameOf(url: string): string {
  const preset = PRESETS.find((p) => p.url === url || p.q4?.url === url);
  return preset?.name ?? url.replace(/^https?:\/\//, "");
}

async function refreshStorage() {
  await storage.render(await engine.cached().catch(() => []));
}

storage.onDelete = async (url) => {
  try {
    await engine.deleteCached(url);
    const still = loaded?.url === url ? " It stays loaded until you close this tab." : "";
    notice(`Deleted ${nameOf(url)} from storage.${still}`);
  } catch (e) {
    showError(explainError(e));
  }
  refreshStorage();
};

// ——— Errors and notices ———

function explainError(e: unknown): Explained {
  const stored = [
    ...storage.models.map((m) => ({ name: nameOf(m.url), bytes: m.bytes })),
    { name: "the history", bytes: historyView.usage().bytes },
  ];
  return explain(e as Error, { stored });
}

function describe(e: unknown): string {
  const { title, advice } = explainError(e);
  return advice ? `${title} ${advice}` : title;
}

function showError({ title, advice }: Explained) {
  byId("error-title").textContent = title;
  byId("error-advice").textContent = advice;
  byId("error").hidden = false;
}

function hideError() {
  byId("error").hidden = true;
  byId("error-title").textContent = byId("error-advice").textContent = "";
}

function notice(text: string) {
  byId("notice").textContent = text;
}

// ——— Settings kept across visits ———

let saveTimer = 0;
function saveSettings() {
  clearTimeout(saveTimer);
  saveTimer = window.setTimeout(() => {
    localStorage.setItem(SETTINGS, JSON.stringify({ form: form.state(), model: picker.state() }));
  }, 300);
}
form.onChange = () => {
  saveSettings();
  tokens.update();
};

function restoreSettings() {
  try {
    const saved = JSON.parse(localStorage.getItem(SETTINGS) ?? "{}");
    if (saved.model) picker.restore(saved.model);
    if (saved.form) form.restore(saved.form);
  } catch {
    localStorage.removeItem(SETTINGS);
  }
}

// ——— Start ———

/**
 * ControlNet, Canny and input images arrived in the engine together: a worker that answers
 * a Canny request has all three. Options on existing messages cannot be probed (an older
 * engine ignores unknown options), so this one request stands for them.
 */
async function probeFeatures() {
  await engine.cached().catch(() => {}); // the worker is up (its wasm compiled)
  try {
    await engine.canny(new ImageData(8, 8), 100, 200, 10_000);
  } catch (e) {
    const why = isUnsupported(e as Error) ? "This version of the engine has" : "The engine failed a test request, so it seems to have";
    controlnet.unsupported(`${why} no ControlNet yet.`);
    imagePanel.unsupported(`${why} no image-to-image or inpainting yet.`);
  }
}

function showBanner() {
  const banner = byId("banner");
  if (!gpu) {
    banner.hidden = false;
    banner.classList.add("bad");
    banner.textContent = "This browser offers no WebGPU, which webdiffusion needs to run the model on your GPU. " +
      "Use a recent Chrome, Edge or Safari, or enable WebGPU in your browser's settings.";
  } else if (gpu.fallback) {
    banner.hidden = false;
    banner.textContent = `WebGPU here runs on a software fallback (${adapterName(gpu)}, on the CPU): ` +
      "the tiny test model works, real models would take many minutes per image.";
  }
}

restoreSettings();
tokens.update();
form.setDefaults(picker.choice()?.preset?.defaults);
showBanner();
setBusy(false);
const entries = await history.list();
historyView.render(entries);
if (entries[0]) await select(entries[0]);
if (gpu) {
  refreshStorage();
  probeFeatures();
}
