// The model picker: a card per preset with its download size, the GPU memory it needs in
// each precision and whether that fits this GPU; a custom URL; precision; preview decoder.
import { byId, el } from "../dom";
import { formatBytes } from "../format";
import { adapterName } from "../gpu";
import { choosePrecision, fitOn, gpuMemory, memoryBudget, type GpuInfo, type Precision } from "../memory";
import { TAESD, modelName, type Preset } from "../presets";

export interface ModelChoice {
  /** Changes whenever the model must be loaded again. */
  key: string;
  url: string;
  /** What PNG parameters call it ("Model: …"). */
  name: string;
  /** What people call it. */
  label: string;
  preset?: Preset;
  dtype?: "f32" | "f16";
  previewVae?: string;
  /** SD3: false loads the model without T5. */
  t5?: boolean;
  /** The download's size, when known (0 otherwise). */
  expectedBytes: number;
}

export interface ModelState {
  model: string;
  customUrl: string;
  precision: string;
  previewVae: boolean;
}

const FIT_TEXT = { fits: "fits", tight: "tight", "too-big": "too big" } as const;

export class ModelPicker {
  onChange: () => void = () => {};
  private readonly fieldset = byId<HTMLFieldSetElement>("model-presets");
  private readonly customUrl = byId<HTMLInputElement>("custom-url");
  private readonly precision = byId<HTMLSelectElement>("precision");
  private readonly previewVae = byId<HTMLInputElement>("preview-vae");

  constructor(private readonly presets: Preset[], private readonly gpu: GpuInfo | null) {
    for (const preset of presets) this.fieldset.append(this.card(preset));
    this.fieldset.append(el("label", { class: "card" },
      el("input", { type: "radio", name: "model", value: "custom", "aria-labelledby": "preset-custom-name", "aria-describedby": "preset-custom-about" }),
      el("span", { class: "name", id: "preset-custom-name" }, "Custom URL…"),
      el("span", { class: "detail", id: "preset-custom-about" }, "A diffusers folder or a webdiffusion pack (e.g. a q4 pack made with webdiffusion convert)."),
    ));
    (this.fieldset.querySelector<HTMLInputElement>("input[name=model]") as HTMLInputElement).checked = true;
    const f16 = this.precision.querySelector<HTMLOptionElement>("option[value=f16]") as HTMLOptionElement;
    if (!gpu?.f16) {
      f16.disabled = true;
      f16.textContent += " — this GPU lacks shader-f16";
    }
    this.fieldset.addEventListener("change", () => this.changed());
    this.customUrl.addEventListener("change", () => this.changed());
    this.precision.addEventListener("change", () => this.changed());
    this.previewVae.addEventListener("change", () => this.changed());
    byId("gpu-help").textContent = this.help();
    this.changed();
  }

  /** The chosen model, or null when "Custom URL" has no URL yet. */
  choice(): ModelChoice | null {
    const value = this.selected();
    const preset = this.presets.find((p) => p.id === value);
    const dtype = this.precision.value === "f16" || this.precision.value === "f32" ? this.precision.value : undefined;
    const previewVae = this.previewVae.checked ? preset?.previewVae ?? TAESD : undefined;
    let url = preset?.url ?? this.customUrl.value.trim();
    if (!url) return null;
    let expectedBytes = preset?.download ?? 0;
    // Automatic precision takes a q4 pack where one is published and it is what fits best.
    if (preset?.q4 && !dtype && this.gpu && this.recommended(preset) === "q4") {
      url = preset.q4.url;
      expectedBytes = preset.q4.download;
    }
    const t5 = preset?.t5;
    return {
      key: JSON.stringify([url, dtype, previewVae, t5]),
      url,
      name: preset?.id ?? modelName(url),
      label: preset?.name ?? modelName(url),
      preset,
      dtype,
      previewVae,
      t5,
      expectedBytes,
    };
  }

  /**
   * Selects the model PNG parameters name ("Model: sd-turbo"), or failing that the model at
   * `url` (a history entry knows it); false when neither is known here.
   */
  select(name?: string, url?: string): boolean {
    const preset = this.presets.find((p) => p.id === name || p.name === name || (url && (p.url === url || p.q4?.url === url)));
    if (preset) this.radio(preset.id).checked = true;
    else if (url) {
      this.radio("custom").checked = true;
      this.customUrl.value = url;
    } else return false;
    this.changed();
    return true;
  }

  state(): ModelState {
    return { model: this.selected(), customUrl: this.customUrl.value, precision: this.precision.value, previewVae: this.previewVae.checked };
  }

  restore(state: Partial<ModelState>) {
    if (state.model && this.fieldset.querySelector(`input[value="${CSS.escape(state.model)}"]`)) this.radio(state.model).checked = true;
    if (state.customUrl) this.customUrl.value = state.customUrl;
    if (state.precision && !this.precision.querySelector(`option[value="${state.precision}"]`)?.hasAttribute("disabled")) {
      this.precision.value = state.precision;
    }
    if (state.previewVae !== undefined) this.previewVae.checked = state.previewVae;
    this.changed();
  }

  private selected(): string {
    return this.fieldset.querySelector<HTMLInputElement>("input[name=model]:checked")?.value ?? this.presets[0].id;
  }

  private radio(value: string): HTMLInputElement {
    return this.fieldset.querySelector(`input[value="${CSS.escape(value)}"]`) as HTMLInputElement;
  }

  private recommended(preset: Preset): Precision {
    const size = preset.defaults.size;
    return this.gpu ? choosePrecision(preset.shape, this.gpu, !!preset.q4, size, size) : "f32";
  }

  /** The precision the estimate is for: the one asked for, else what "Automatic" will pick. */
  private precisionFor(preset: Preset): Precision {
    const asked = this.precision.value;
    if (asked === "f16" || asked === "f32") return asked;
    return this.recommended(preset);
  }

  private card(preset: Preset): HTMLElement {
    const size = preset.defaults.size;
    const memory = (["f32", "f16", "q4"] as Precision[]).map((p) => {
      const bytes = formatBytes(gpuMemory(preset.shape, p, size, size));
      if (p === "q4" && !preset.q4) return `q4 ${bytes} (no q4 pack published)`;
      if (p === "f16" && this.gpu && !this.gpu.f16) return `f16 ${bytes} (needs shader-f16)`;
      return `${p} ${bytes}${this.gpu ? ` (${FIT_TEXT[fitOn(preset.shape, p, this.gpu, size, size).fit]})` : ""}`;
    });
    const download = preset.q4 ? `${formatBytes(preset.download)} (${preset.files}), q4 pack ${formatBytes(preset.q4.download)}`
      : `${formatBytes(preset.download)} (${preset.files})`;
    // The radio is named by the model's name alone and described by the rest, so that the
    // card's long text does not become its name.
    const id = `preset-${preset.id}`;
    return el("label", { class: "card" },
      el("input", { type: "radio", name: "model", value: preset.id, "aria-labelledby": `${id}-name`, "aria-describedby": `${id}-fit ${id}-about ${id}-sizes` }),
      el("span", {}, el("span", { class: "name", id: `${id}-name` }, preset.name), el("span", { class: "fit", id: `${id}-fit`, "data-fit-for": preset.id, hidden: "" })),
      el("span", { class: "detail", id: `${id}-about` }, preset.description),
      el("span", { class: "detail", id: `${id}-sizes` }, `Download ${download}. GPU memory at ${size}×${size}: ${memory.join(" · ")}.`),
    );
  }

  private changed() {
    const value = this.selected();
    byId("custom-row").hidden = value !== "custom";
    for (const preset of this.presets) {
      const badge = this.fieldset.querySelector<HTMLElement>(`[data-fit-for="${preset.id}"]`) as HTMLElement;
      if (!this.gpu) continue;
      const p = this.precisionFor(preset);
      const { fit, reason } = fitOn(preset.shape, p, this.gpu, preset.defaults.size, preset.defaults.size);
      badge.hidden = false;
      badge.className = `fit ${fit}`;
      // A software adapter may have the memory, but not the speed.
      badge.textContent = `${FIT_TEXT[fit]} in ${p}${this.gpu.fallback && !preset.test ? ", very slow" : ""}`;
      badge.title = reason;
    }
    const choice = this.choice();
    const preset = choice?.preset;
    const fit = preset && this.gpu ? fitOn(preset.shape, this.precisionFor(preset), this.gpu, preset.defaults.size, preset.defaults.size) : null;
    byId("model-summary").textContent = (choice?.label ?? "custom URL (none yet)") + (fit ? ` · ${FIT_TEXT[fit.fit]}` : "");
    byId("model-note").textContent = this.note(preset, fit?.fit, fit?.reason);
    this.onChange();
  }

  private note(preset: Preset | undefined, fit?: string, reason?: string): string {
    if (preset?.test) return `The ${preset.name.toLowerCase()} makes coloured noise, not pictures: its weights are random. It is here to try the app out offline; pick a real model under Model.`;
    if (preset && this.gpu?.fallback) {
      return `${preset.name} on a software GPU would take many minutes per image. Try it on a device with a real GPU.`;
    }
    if (fit === "too-big") return `${preset?.name} probably does not fit this GPU (${reason}). Pick a smaller model or precision.`;
    return "";
  }

  private help(): string {
    if (!this.gpu) return "No WebGPU adapter: memory needs are shown without a verdict.";
    const kind = this.gpu.fallback ? " — a software fallback that runs on the CPU, fine for the tiny test model only" : "";
    return `Your GPU: ${adapterName(this.gpu)}${kind}; shader-f16 ${this.gpu.f16 ? "yes" : "no"}; ` +
      `largest buffer ${formatBytes(Math.min(this.gpu.maxBufferSize, this.gpu.maxStorageBufferBindingSize))}. ` +
      `Memory needed = the weights in that precision + the largest activations (the VAE's last stage at full size) + 128 MB. ` +
      `"Fits" compares it with a guess, since WebGPU does not tell pages how much memory a GPU has: ${memoryBudget(this.gpu).basis}. ` +
      `A model whose largest buffer exceeds the GPU's limit is "too big" for certain.`;
  }
}
