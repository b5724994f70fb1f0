// Generation parameters as text, the way AUTOMATIC1111's web UI writes them into a PNG's
// `parameters` chunk (and reads them back). ComfyUI's A1111-style savers and
// stable-diffusion.cpp write the same layout; the sampler names differ, see `schedulerFor`.
//
//   a watercolor fox <lora:paper:0.8>
//   Negative prompt: blurry
//   Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: sd15, …
import type { SchedulerName } from "webdiffusion";

export interface LoraUse {
  name: string;
  scale: number;
  /** A1111's short sha256 (12 hex digits), when known. */
  hash?: string;
}

export interface ControlNetUse {
  /** The preprocessor: "canny", or "none" when the image already is a control map. */
  module: string;
  model: string;
  weight: number;
  start: number;
  end: number;
  /** Canny thresholds (A1111's "Threshold A/B"). */
  low?: number;
  high?: number;
}

/** What ran: written into PNGs and kept in the history. */
export interface Parameters {
  prompt: string;
  negativePrompt: string;
  steps: number;
  scheduler: SchedulerName;
  guidance: number;
  seed: number;
  width: number;
  height: number;
  model: string;
  loras: LoraUse[];
  controlnets: ControlNetUse[];
  /** The textual-inversion embeddings the prompts named (A1111's `TI hashes`). */
  embeddings?: EmbeddingUse[];
  /** img2img and inpainting. */
  strength?: number;
  maskBlur?: number;
}

/** What a PNG said: any field may be missing; `notes` says what could not be used. */
export interface ParsedParameters {
  prompt: string;
  negativePrompt: string;
  steps?: number;
  scheduler?: SchedulerName;
  guidance?: number;
  seed?: number;
  width?: number;
  height?: number;
  model?: string;
  loras: LoraUse[];
  controlnets: ControlNetUse[];
  embeddings: EmbeddingUse[];
  strength?: number;
  maskBlur?: number;
  notes: string[];
}

/** A textual-inversion embedding by the token prompts name it with, and its file's hash. */
export interface EmbeddingUse {
  token: string;
  hash: string;
}

/** Our schedulers under the names A1111 gives its samplers. */
const A1111_NAMES: Record<SchedulerName, string> = {
  ddim: "DDIM",
  euler: "Euler",
  "euler-a": "Euler a",
  "dpmpp-2m": "DPM++ 2M",
  "dpmpp-2m-karras": "DPM++ 2M Karras",
  heun: "Heun",
  // A1111's PLMS is the linear multistep half of diffusers' PNDM (which SD runs with
  // `skip_prk_steps`), the closest name it has.
  pndm: "PLMS",
  unipc: "UniPC",
  lcm: "LCM",
  ddpm: "DDPM",
  // SD3's flow-matching Euler; A1111-style tools call it "Euler" with a flow schedule.
  "flow-euler": "Euler (flow)",
};

export const SCHEDULERS = Object.keys(A1111_NAMES) as SchedulerName[];

export function samplerName(scheduler: SchedulerName): string {
  return A1111_NAMES[scheduler];
}

/**
 * The scheduler for a sampler name as A1111 ("DPM++ 2M Karras", "Euler a"), ComfyUI
 * ("dpmpp_2m", "euler_ancestral") or sd.cpp ("dpm++2m karras", "euler_a") writes it;
 * `schedule` is A1111's separate "Schedule type" (or ComfyUI's scheduler). `exact` is false
 * where only a close relative exists here (DPM++ 2M SDE → DPM++ 2M).
 */
export function schedulerFor(sampler: string, schedule = ""): { scheduler?: SchedulerName; exact: boolean } {
  let name = sampler.toLowerCase().replace(/^k_/, "").replace(/[_\s]+/g, " ").trim();
  const karras = /karras/.test(name) || /karras/i.test(schedule);
  // sd.cpp and ComfyUI append the sigma schedule to the name; only Karras matters here.
  name = name.replace(/\b(karras|discrete|exponential|automatic|simple|normal|uniform|sgm uniform|ays|gits|smoothstep)\b/g, "").trim();
  const table: [RegExp, SchedulerName, boolean][] = [
    [/^euler \(flow\)$/, "flow-euler", true],
    [/^euler (a|ancestral)$/, "euler-a", true],
    [/^euler$/, "euler", true],
    [/^heun$/, "heun", true],
    [/^(dpm ?\+\+ ?2m|dpmpp 2m)$/, karras ? "dpmpp-2m-karras" : "dpmpp-2m", true],
    [/^(dpm ?\+\+ ?2m|dpmpp 2m)/, karras ? "dpmpp-2m-karras" : "dpmpp-2m", false],
    [/^ddim$/, "ddim", true],
    [/^ddim/, "ddim", false],
    [/^(plms|pndm)$/, "pndm", true],
    [/^ipndm/, "pndm", false],
    [/^uni ?pc$/, "unipc", true],
    [/^uni ?pc/, "unipc", false],
    [/^lcm$/, "lcm", true],
    [/^ddpm$/, "ddpm", true],
  ];
  for (const [re, scheduler, exact] of table) if (re.test(name)) return { scheduler, exact };
  return { exact: false };
}

/** A1111 quotes a value that holds a comma, a colon or a newline (as JSON). */
function quote(value: string): string {
  return /[,:\n"]/.test(value) ? JSON.stringify(value) : value;
}

/** Python prints floats with a decimal point: 1 → "1.0". */
function pyFloat(x: number): string {
  return Number.isInteger(x) ? x.toFixed(1) : String(x);
}

const TAG = /\s*<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>/g;

/** The prompt without `<lora:NAME:SCALE>` tags, and the tags. */
export function splitLoraTags(prompt: string): { prompt: string; loras: LoraUse[] } {
  const loras: LoraUse[] = [];
  const rest = prompt.replace(TAG, (_, name: string, scale?: string) => {
    const n = Number(scale);
    loras.push({ name: name.trim(), scale: scale === undefined || scale === "" || !Number.isFinite(n) ? 1 : n });
    return "";
  });
  return { prompt: rest.trim(), loras };
}

/** The `parameters` text AUTOMATIC1111's web UI writes and reads. */
export function toA1111(p: Parameters): string {
  const tags = p.loras.map((l) => ` <lora:${l.name}:${l.scale}>`).join("");
  const lines = [p.prompt + tags];
  if (p.negativePrompt) lines.push(`Negative prompt: ${p.negativePrompt}`);
  const fields: [string, string][] = [
    ["Steps", String(p.steps)],
    ["Sampler", samplerName(p.scheduler)],
    ["CFG scale", String(p.guidance)],
    ["Seed", String(p.seed)],
    ["Size", `${p.width}x${p.height}`],
    ["Model", p.model],
  ];
  if (p.strength !== undefined) fields.push(["Denoising strength", String(p.strength)]);
  if (p.maskBlur) fields.push(["Mask blur", String(p.maskBlur)]);
  p.controlnets.forEach((c, i) => {
    const thresholds = c.module === "canny" && c.low !== undefined && c.high !== undefined
      ? `, Threshold A: ${c.low}, Threshold B: ${c.high}` : "";
    fields.push([`ControlNet ${i}`, `Module: ${c.module}, Model: ${c.model}, Weight: ${pyFloat(c.weight)}${thresholds}, ` +
      `Guidance Start: ${pyFloat(c.start)}, Guidance End: ${pyFloat(c.end)}`]);
  });
  const hashed = p.loras.filter((l) => l.hash);
  if (hashed.length) fields.push(["Lora hashes", hashed.map((l) => `${l.name}: ${l.hash}`).join(", ")]);
  const tis = p.embeddings ?? [];
  if (tis.length) fields.push(["TI hashes", tis.map((e) => `${e.token}: ${e.hash}`).join(", ")]);
  fields.push(["Version", "webdiffusion"]);
  lines.push(fields.map(([k, v]) => `${k}: ${quote(v)}`).join(", "));
  return lines.join("\n");
}

/** `Key: value, Key: "quoted, value", …` → entries (A1111's `re_param`). */
export function parseFields(line: string): [string, string][] {
  const re = /\s*(\w[\w \-/+]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)/g;
  const out: [string, string][] = [];
  for (const m of line.matchAll(re)) {
    if (m[0] === "") break;
    let value = m[2].trim();
    if (value.startsWith('"')) {
      try {
        value = JSON.parse(value);
      } catch {
        value = value.slice(1, -1);
      }
    }
    out.push([m[1].trim(), value]);
  }
  return out;
}

/** A1111's `parameters` text → parameters (see `parse_generation_parameters` in A1111). */
export function parseA1111(text: string): ParsedParameters {
  const lines = text.trim().replace(/\r\n/g, "\n").split("\n");
  let last = lines.pop() ?? "";
  // The settings line has at least three `Key: value` pairs; otherwise it is prompt text.
  if (parseFields(last).length < 3) {
    lines.push(last);
    last = "";
  }
  let prompt = "";
  let negative = "";
  let inNegative = false;
  for (let line of lines) {
    line = line.trim();
    if (line.startsWith("Negative prompt:")) {
      inNegative = true;
      line = line.slice("Negative prompt:".length).trim();
    }
    if (inNegative) negative += (negative ? "\n" : "") + line;
    else prompt += (prompt ? "\n" : "") + line;
  }
  const fields = new Map(parseFields(last));
  const tags = splitLoraTags(prompt);
  const out: ParsedParameters = { prompt: tags.prompt, negativePrompt: negative, loras: tags.loras, controlnets: [], embeddings: [], notes: [] };

  const num = (key: string): number | undefined => {
    const v = fields.get(key);
    const n = v === undefined || v.trim() === "" ? NaN : Number(v);
    return Number.isFinite(n) ? n : undefined;
  };
  out.steps = num("Steps");
  out.guidance = num("CFG scale");
  out.seed = num("Seed");
  out.strength = num("Denoising strength");
  out.maskBlur = num("Mask blur");
  out.model = fields.get("Model");
  const size = /^(\d+)\s*x\s*(\d+)$/.exec(fields.get("Size") ?? "");
  if (size) [out.width, out.height] = [Number(size[1]), Number(size[2])];

  const sampler = fields.get("Sampler");
  if (sampler) {
    const { scheduler, exact } = schedulerFor(sampler, fields.get("Schedule type") ?? fields.get("Scheduler"));
    out.scheduler = scheduler;
    if (!scheduler) out.notes.push(`Sampler “${sampler}” has no counterpart here; the model's own scheduler is kept.`);
    else if (!exact) out.notes.push(`Sampler “${sampler}” is not available; the closest, ${samplerName(scheduler)}, is used.`);
  }

  for (const entry of (fields.get("Lora hashes") ?? "").split(",")) {
    const [name, hash] = entry.split(":").map((s) => s.trim());
    const lora = out.loras.find((l) => l.name === name);
    if (lora && hash) lora.hash = hash;
  }
  for (const entry of (fields.get("TI hashes") ?? "").split(",")) {
    const at = entry.lastIndexOf(":");
    const [token, hash] = [entry.slice(0, at).trim(), entry.slice(at + 1).trim()];
    if (at > 0 && token && hash) out.embeddings.push({ token, hash });
  }

  for (const [key, value] of fields) {
    if (!/^ControlNet \d+$/.test(key)) continue;
    const unit = new Map(parseFields(value));
    const n = (k: string, fallback: number) => {
      const v = Number(unit.get(k));
      return unit.has(k) && Number.isFinite(v) ? v : fallback;
    };
    const module = unit.get("Module") ?? "none";
    out.controlnets.push({
      module,
      // A1111 appends the model's hash: "control_v11p_sd15_canny [d14c016b]".
      model: (unit.get("Model") ?? "").replace(/\s*\[[0-9a-f]+\]$/i, ""),
      weight: n("Weight", 1),
      start: n("Guidance Start", 0),
      end: n("Guidance End", 1),
      ...(unit.has("Threshold A") ? { low: n("Threshold A", 100), high: n("Threshold B", 200) } : {}),
    });
  }
  return out;
}

/**
 * ComfyUI's own `prompt` chunk (its API graph, JSON) → parameters: the first KSampler's
 * settings, the texts of the CLIPTextEncode nodes wired to its positive and negative inputs,
 * the latent's size and the LoraLoaders. Best effort: graphs vary without end.
 */
export function parseComfyPrompt(json: string): ParsedParameters | null {
  let graph: Record<string, { class_type?: string; inputs?: Record<string, unknown> }>;
  try {
    graph = JSON.parse(json);
  } catch {
    return null;
  }
  const nodes = Object.values(graph ?? {});
  const sampler = nodes.find((n) => /^KSampler/.test(n.class_type ?? ""));
  if (!sampler?.inputs) return null;
  const inputs = sampler.inputs;
  const linked = (link: unknown) => (Array.isArray(link) ? graph[String(link[0])] : undefined);
  const text = (link: unknown) => {
    const t = linked(link)?.inputs?.text;
    return typeof t === "string" ? t : "";
  };
  const number = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : undefined);
  const out: ParsedParameters = {
    prompt: text(inputs.positive),
    negativePrompt: text(inputs.negative),
    steps: number(inputs.steps),
    guidance: number(inputs.cfg),
    seed: number(inputs.seed ?? inputs.noise_seed),
    loras: [],
    controlnets: [],
    embeddings: [],
    notes: [],
  };
  const latent = linked(inputs.latent_image)?.inputs;
  out.width = number(latent?.width);
  out.height = number(latent?.height);
  if (typeof inputs.sampler_name === "string") {
    const { scheduler } = schedulerFor(inputs.sampler_name, String(inputs.scheduler ?? ""));
    out.scheduler = scheduler;
    if (!scheduler) out.notes.push(`Sampler “${inputs.sampler_name}” has no counterpart here; the model's own scheduler is kept.`);
  }
  for (const node of nodes) {
    if (!/^LoraLoader/.test(node.class_type ?? "") || typeof node.inputs?.lora_name !== "string") continue;
    const name = node.inputs.lora_name.replace(/^.*[\\/]/, "").replace(/\.[^.]+$/, "");
    out.loras.push({ name, scale: number(node.inputs.strength_model) ?? 1 });
  }
  return out;
}

/** Parameters from a PNG's text chunks: A1111's `parameters`, else ComfyUI's `prompt`. */
export function parametersFromChunks(chunks: Record<string, string>): ParsedParameters | null {
  if (chunks.parameters) return parseA1111(chunks.parameters);
  if (chunks.prompt) return parseComfyPrompt(chunks.prompt);
  return null;
}

/** A stored Parameters, as if read back from its PNG. */
export function asParsed(p: Parameters): ParsedParameters {
  return {
    ...p, loras: p.loras.map((l) => ({ ...l })), controlnets: p.controlnets.map((c) => ({ ...c })),
    embeddings: (p.embeddings ?? []).map((e) => ({ ...e })), notes: [],
  };
}
