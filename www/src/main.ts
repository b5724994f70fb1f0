// The page: a form, progress, a live preview, a gallery and the storage panel. The model
// runs in a Web Worker (the package's worker.js) so that the page never freezes.
import type { CachedModel, GenerateResult, LoadProgress, SchedulerName, WorkerGenerateOptions, WorkerMessage, WorkerRequest } from "webdiffusion";
import { a1111Parameters, downloadStatus, formatBytes, latentsToRgba, withTextChunk } from "./lib";

/** Model presets; the first is the tiny test model served with the app. */
const PRESETS: { name: string; url: string; steps: number; guidance: number }[] = [
  { name: "Tiny test model (offline)", url: new URL("/models/sd1-tiny", location.href).href, steps: 8, guidance: 7.5 },
  { name: "Stable Diffusion 1.5", url: "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main", steps: 20, guidance: 7.5 },
  { name: "SD-Turbo", url: "https://huggingface.co/stabilityai/sd-turbo/resolve/main", steps: 1, guidance: 0 },
  { name: "LCM Dreamshaper v7", url: "https://huggingface.co/SimianLuo/LCM_Dreamshaper_v7/resolve/main", steps: 4, guidance: 8 },
];
const SCHEDULERS: (SchedulerName | "")[] = ["", "ddim", "euler", "euler-a", "dpmpp-2m", "dpmpp-2m-karras",
  "heun", "pndm", "unipc", "lcm", "ddpm"];

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const model = $<HTMLSelectElement>("model");
const customRow = $<HTMLLabelElement>("custom-row");
const generateButton = $<HTMLButtonElement>("generate");
const cancelButton = $<HTMLButtonElement>("cancel");
const errorText = $<HTMLParagraphElement>("error");

for (const [i, p] of PRESETS.entries()) model.add(new Option(p.name, String(i)));
model.add(new Option("Custom URL…", "custom"));
for (const s of SCHEDULERS) $<HTMLSelectElement>("scheduler").add(new Option(s || "model's own", s));
model.onchange = () => {
  customRow.hidden = model.value !== "custom";
  const preset = PRESETS[Number(model.value)];
  if (preset) {
    $<HTMLInputElement>("steps").value = String(preset.steps);
    $<HTMLInputElement>("guidance").value = String(preset.guidance);
  }
};
model.onchange(new Event("change"));

const worker = new Worker(new URL("../node_modules/webdiffusion/worker.js", import.meta.url), { type: "module" });
let loadedUrl: string | null = null;
const pending = new Map<number, { resolve: (v: WorkerMessage) => void; reject: (e: Error) => void }>();
let nextId = 0;
const files = new Map<string, { loaded: number; total: number | null; start: number }>();
let stepStart = 0;

/** Sends a request to the worker; resolves with its reply. */
function call(message: WorkerRequest): Promise<WorkerMessage> {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ ...message, id } satisfies WorkerRequest);
  });
}

worker.onmessage = ({ data }: MessageEvent<WorkerMessage>) => {
  if (data.type === "progress") showDownload(data);
  else if (data.type === "step") showStep(data.step, data.total, data.latents);
  else if (data.id !== undefined && pending.has(data.id)) {
    const { resolve, reject } = pending.get(data.id)!;
    pending.delete(data.id);
    if (data.type !== "error") return resolve(data);
    const e = new Error(data.message);
    e.name = data.name;
    reject(e);
  }
};

function showDownload(p: LoadProgress) {
  const f = files.get(p.file) ?? { loaded: 0, total: p.total, start: performance.now() };
  f.loaded = p.loaded;
  f.total = p.total;
  files.set(p.file, f);
  const loaded = [...files.values()].reduce((n, x) => n + x.loaded, 0);
  const total = [...files.values()].reduce((n, x) => n + (x.total ?? x.loaded), 0);
  const first = Math.min(...[...files.values()].map((x) => x.start));
  $("download").textContent = `Download: ${downloadStatus(loaded, total, (performance.now() - first) / 1000)}`;
  $("files").replaceChildren(...[...files.entries()].map(([url, x]) => {
    const li = document.createElement("li");
    li.textContent = `${url.split("/").slice(-2).join("/")}: ${formatBytes(x.loaded)}${x.total ? ` of ${formatBytes(x.total)}` : ""}`;
    return li;
  }));
}

function showStep(step: number, total: number, latents: Float32Array) {
  const rate = step / ((performance.now() - stepStart) / 1000);
  $("progress").textContent = `Step ${step} of ${total} · ${rate.toFixed(2)} it/s`;
  $("progress").dataset.step = String(step);
  $("progress").dataset.total = String(total);
  const canvas = $<HTMLCanvasElement>("preview");
  const side = Math.round(Math.sqrt(latents.length / 4));
  canvas.width = canvas.height = side;
  canvas.getContext("2d")?.putImageData(new ImageData(latentsToRgba(latents, side, side), side, side), 0, 0);
}

function modelUrl(): string {
  return model.value === "custom" ? $<HTMLInputElement>("custom-url").value.trim() : PRESETS[Number(model.value)].url;
}

const numberOf = (id: string): number | undefined => {
  const v = $<HTMLInputElement>(id).value;
  return v === "" ? undefined : Number(v);
};

$<HTMLFormElement>("form").onsubmit = async (event) => {
  event.preventDefault();
  errorText.textContent = "";
  generateButton.disabled = true;
  try {
    const url = modelUrl();
    if (!url) throw new Error("enter the URL of a diffusers model folder");
    if (url !== loadedUrl) {
      files.clear();
      await call({ type: "load", url });
      loadedUrl = url;
      $("download").textContent += " · done";
    }
    const seed = numberOf("seed") ?? Math.floor(Math.random() * 2 ** 32);
    const options: WorkerGenerateOptions = {
      prompt: $<HTMLTextAreaElement>("prompt").value,
      negativePrompt: $<HTMLTextAreaElement>("negative").value,
      steps: numberOf("steps"),
      guidance: numberOf("guidance"),
      scheduler: ($<HTMLSelectElement>("scheduler").value || undefined) as SchedulerName | undefined,
      width: numberOf("width"),
      height: numberOf("height"),
      seed,
    };
    cancelButton.disabled = false;
    stepStart = performance.now();
    const reply = await call({ type: "generate", options });
    if (reply.type === "result") addToGallery(reply.result, options);
  } catch (e) {
    const err = e as Error;
    errorText.textContent = err.name === "AbortError" ? "Cancelled." : err.message;
  } finally {
    generateButton.disabled = false;
    cancelButton.disabled = true;
    refreshStorage();
  }
};

cancelButton.onclick = () => worker.postMessage({ type: "abort" });

async function addToGallery(result: GenerateResult, options: WorkerGenerateOptions) {
  const canvas = document.createElement("canvas");
  canvas.width = result.width;
  canvas.height = result.height;
  canvas.getContext("2d")?.putImageData(new ImageData(result.pixels, result.width, result.height), 0, 0);
  const blob = await new Promise<Blob>((ok) => canvas.toBlob((b) => ok(b as Blob), "image/png"));
  // What actually ran (the model's own scheduler, LCM's 4 steps, …), not what the form said.
  const parameters = a1111Parameters({
    prompt: options.prompt, negativePrompt: options.negativePrompt ?? "", steps: result.steps,
    sampler: result.scheduler, guidance: result.guidance, seed: result.seed,
    width: result.width, height: result.height, model: model.selectedOptions[0].text,
  });
  const png = withTextChunk(new Uint8Array(await blob.arrayBuffer()), "parameters", parameters);
  const href = URL.createObjectURL(new Blob([png as Uint8Array<ArrayBuffer>], { type: "image/png" }));
  const figure = document.createElement("figure");
  figure.innerHTML = `<img alt=""><figcaption></figcaption>`;
  const img = figure.querySelector("img") as HTMLImageElement;
  img.src = href;
  img.dataset.seed = String(result.seed);
  const caption = figure.querySelector("figcaption") as HTMLElement;
  caption.textContent = `seed ${result.seed} · `;
  const link = document.createElement("a");
  link.href = href;
  link.download = `webdiffusion-${result.seed}.png`;
  link.textContent = "download PNG";
  caption.append(link);
  $("gallery").prepend(figure);
}

async function refreshStorage() {
  const estimate = await navigator.storage?.estimate?.();
  if (estimate?.quota) $("estimate").textContent = `Browser storage: ${formatBytes(estimate.usage ?? 0)} used of ${formatBytes(estimate.quota)}`;
  const reply = await call({ type: "cached" });
  const models: CachedModel[] = reply.type === "cached" ? reply.cached : [];
  $("cached").replaceChildren(...models.map(({ url, bytes }) => {
    const li = document.createElement("li");
    li.textContent = `${url} · ${formatBytes(bytes)} `;
    const del = document.createElement("button");
    del.textContent = "Delete";
    del.onclick = async () => {
      await call({ type: "deleteCached", url });
      if (loadedUrl === url) loadedUrl = null;
      refreshStorage();
    };
    li.append(del);
    return li;
  }));
}

if (!("gpu" in navigator)) {
  const p = $("no-webgpu");
  p.hidden = false;
  p.textContent = "This browser has no WebGPU, which webdiffusion needs to run the model on your GPU. " +
    "Use a recent Chrome, Edge or Safari (or enable WebGPU in your browser's settings).";
  generateButton.disabled = true;
} else {
  refreshStorage();
}
