// The prompt and the Advanced settings: empty fields mean the model's defaults, which the
// placeholders and the section's summary show.
import type { SchedulerName } from "webdiffusion";
import { byId } from "../dom";
import { plural } from "../format";
import { SCHEDULERS, samplerName, type ParsedParameters } from "../params";
import type { Preset } from "../presets";

export interface FormValues {
  prompt: string;
  negativePrompt: string;
  steps?: number;
  guidance?: number;
  scheduler?: SchedulerName;
  seed: number;
  width?: number;
  height?: number;
  /** A1111's prompt syntax and chunks (false: literally, as diffusers). */
  promptWeighting: boolean;
}

type Defaults = Preset["defaults"] | undefined;

const FIELDS = ["prompt", "negative", "steps", "guidance", "scheduler", "seed", "width", "height"] as const;
/** Checkboxes kept with the settings. */
const CHECKS = ["prompt-weighting"] as const;

export class GenerationForm {
  onChange: () => void = () => {};
  private defaults: Defaults;
  private readonly prompt = byId<HTMLTextAreaElement>("prompt");
  private readonly negative = byId<HTMLTextAreaElement>("negative");
  private readonly steps = byId<HTMLInputElement>("steps");
  private readonly guidance = byId<HTMLInputElement>("guidance");
  private readonly scheduler = byId<HTMLSelectElement>("scheduler");
  private readonly seed = byId<HTMLInputElement>("seed");
  private readonly width = byId<HTMLInputElement>("width");
  private readonly height = byId<HTMLInputElement>("height");
  private readonly sizes = byId<HTMLSelectElement>("sizes");
  private readonly weighting = byId<HTMLInputElement>("prompt-weighting");

  constructor() {
    this.scheduler.add(new Option("The model's own", ""));
    for (const s of SCHEDULERS) this.scheduler.add(new Option(s === "pndm" ? "PNDM (PLMS)" : samplerName(s), s));
    for (const input of [this.steps, this.guidance, this.scheduler, this.seed, this.width, this.height, this.prompt, this.negative, this.weighting]) {
      input.addEventListener("input", () => this.changed());
    }
    // A trained size fills width and height (SDXL works best at its aspect-ratio buckets).
    this.sizes.addEventListener("change", () => {
      const [w, h] = this.sizes.value.split("x");
      if (w && h) [this.width.value, this.height.value] = [w, h];
      this.changed();
    });
    byId("defaults-reset").addEventListener("click", () => {
      for (const input of [this.steps, this.guidance, this.scheduler, this.width, this.height]) input.value = "";
      this.changed();
    });
  }

  /** The model's defaults (undefined for a custom URL: the engine's own apply). */
  setDefaults(defaults: Defaults) {
    this.defaults = defaults;
    this.steps.placeholder = String(defaults?.steps ?? 20);
    this.guidance.placeholder = String(defaults?.guidance ?? 7.5);
    this.width.placeholder = this.height.placeholder = defaults ? String(defaults.size) : "model's";
    this.sizes.replaceChildren(new Option("Choose…", ""));
    for (const [w, h] of defaults?.sizes ?? []) this.sizes.add(new Option(`${w}×${h}`, `${w}x${h}`));
    byId("sizes-field").hidden = !defaults?.sizes?.length;
    byId("defaults").textContent = defaults
      ? `This model's defaults: ${plural(defaults.steps, "step")}, CFG ${defaults.guidance}, its own scheduler, ${defaults.size}×${defaults.size}. Empty fields use them.`
      : "Empty fields use the engine's defaults: 20 steps (4 for LCM), CFG 7.5, the model's own scheduler and size.";
    this.changed();
  }

  /** The values to generate with; the seed is drawn here when the field is empty. */
  read(): FormValues {
    return {
      prompt: this.prompt.value.trim(),
      negativePrompt: this.negative.value.trim(),
      steps: number(this.steps) ?? this.defaults?.steps,
      guidance: number(this.guidance) ?? this.defaults?.guidance,
      scheduler: (this.scheduler.value || undefined) as SchedulerName | undefined,
      seed: number(this.seed) ?? Math.floor(Math.random() * 2 ** 32),
      width: number(this.width),
      height: number(this.height),
      promptWeighting: this.weighting.checked,
    };
  }

  /** Fills the fields a PNG or history entry gives; leaves the others alone. */
  apply(p: ParsedParameters) {
    this.prompt.value = p.prompt;
    this.negative.value = p.negativePrompt;
    const set = (input: HTMLInputElement, v?: number) => {
      if (v !== undefined) input.value = String(v);
    };
    set(this.steps, p.steps);
    set(this.guidance, p.guidance);
    set(this.seed, p.seed);
    set(this.width, p.width);
    set(this.height, p.height);
    this.scheduler.value = p.scheduler ?? "";
    this.changed();
  }

  setSeed(seed: number) {
    this.seed.value = String(seed);
    this.changed();
  }

  state(): Record<string, string> {
    return Object.fromEntries([
      ...FIELDS.map((id) => [id, byId<HTMLInputElement>(id).value]),
      ...CHECKS.map((id) => [id, String(byId<HTMLInputElement>(id).checked)]),
    ]);
  }

  restore(state: Record<string, string>) {
    for (const id of FIELDS) if (typeof state[id] === "string") byId<HTMLInputElement>(id).value = state[id];
    for (const id of CHECKS) if (typeof state[id] === "string") byId<HTMLInputElement>(id).checked = state[id] === "true";
    this.changed();
  }

  private changed() {
    const chosen = `${this.width.value}x${this.height.value}`;
    this.sizes.value = [...this.sizes.options].some((o) => o.value === chosen) ? chosen : "";
    const steps = number(this.steps) ?? this.defaults?.steps ?? 20;
    const cfg = number(this.guidance) ?? this.defaults?.guidance ?? 7.5;
    const seed = number(this.seed);
    const w = number(this.width) ?? this.defaults?.size;
    const h = number(this.height) ?? this.defaults?.size;
    byId("advanced-summary").textContent = `${plural(steps, "step")} · CFG ${cfg} · seed ${seed ?? "random"}${w && h ? ` · ${w}×${h}` : ""}`;
    this.onChange();
  }
}

function number(input: HTMLInputElement): number | undefined {
  const v = input.value.trim();
  return v === "" || !Number.isFinite(Number(v)) ? undefined : Number(v);
}
