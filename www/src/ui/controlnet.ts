// The ControlNet panel: a model (presets or a URL), a control image, optionally turned into
// Canny edges (previewed live as the thresholds move), a weight and the part of the run it
// acts on. One ControlNet at a time; the engine takes a list.
import { byId } from "../dom";
import type { Engine } from "../engine";
import { isUnsupported } from "../errors";
import { drawInto, imageDataOf } from "../images";
import type { ControlNetUse } from "../params";
import { CONTROLNETS, modelName } from "../presets";
import type { ControlNetInput } from "../protocol";

export class ControlNetPanel {
  private loaded: { id: number; name: string; url: string } | null = null;
  private image: ImageData | null = null;
  private cannyTimer = 0;
  private supported = true;
  private readonly fields = byId<HTMLFieldSetElement>("controlnet-fields");
  private readonly enabled = byId<HTMLInputElement>("cn-enabled");
  private readonly model = byId<HTMLSelectElement>("cn-model");
  private readonly url = byId<HTMLInputElement>("cn-url");
  private readonly module = byId<HTMLSelectElement>("cn-module");
  private readonly low = byId<HTMLInputElement>("cn-low");
  private readonly high = byId<HTMLInputElement>("cn-high");
  private readonly weight = byId<HTMLInputElement>("cn-weight");
  private readonly start = byId<HTMLInputElement>("cn-start");
  private readonly end = byId<HTMLInputElement>("cn-end");
  private readonly status = byId("cn-status");

  constructor(private readonly engine: Engine, private readonly ready: () => Promise<boolean>, private readonly describe: (e: unknown) => string) {
    for (const c of CONTROLNETS) this.model.add(new Option(c.name, c.url));
    this.model.add(new Option("Custom URL…", "custom"));
    this.model.addEventListener("change", () => {
      byId("cn-url-row").hidden = this.model.value !== "custom";
      const preset = CONTROLNETS.find((c) => c.url === this.model.value);
      if (preset) this.module.value = preset.module;
      this.moduleChanged();
    });
    byId("cn-load").addEventListener("click", () => this.load().catch(() => {}));
    this.module.addEventListener("change", () => this.moduleChanged());
    for (const t of [this.low, this.high]) t.addEventListener("input", () => this.scheduleCanny());
    this.enabled.addEventListener("change", () => this.summary());
    byId<HTMLInputElement>("cn-file").addEventListener("change", (e) => {
      const input = e.target as HTMLInputElement;
      const file = input.files?.[0];
      input.value = "";
      if (file) this.setImage(file);
    });
    this.moduleChanged();
  }

  /** Turns the panel off with a reason, when the engine has no ControlNet. */
  unsupported(reason: string) {
    this.supported = false;
    this.fields.disabled = true;
    const note = byId("controlnet-unsupported");
    note.textContent = reason;
    note.hidden = false;
    this.summary();
  }

  /** The model changed: the worker freed its ControlNets; the next generation loads again. */
  clear() {
    this.loaded = null;
  }

  async setImage(file: Blob) {
    if (!this.supported) return;
    // Control images are resized to the output by the engine; 1024 px keeps edges sharp enough.
    this.image = await imageDataOf(file, 1024);
    const img = byId<HTMLImageElement>("cn-image");
    img.src = URL.createObjectURL(file);
    img.hidden = false;
    this.enabled.checked = true;
    this.summary();
    this.scheduleCanny();
  }

  /** The ControlNet to generate with (loading it when needed), or null when it is off. */
  async forGenerate(): Promise<{ input: ControlNetInput; record: ControlNetUse } | null> {
    if (!this.supported || !this.enabled.checked) return null;
    if (!this.image) throw new Error("ControlNet: drop a control image first, or switch “Use a ControlNet” off.");
    const url = this.selectedUrl();
    if (!this.loaded || this.loaded.url !== url) await this.load();
    const loaded = this.loaded as NonNullable<typeof this.loaded>;
    const canny = this.module.value === "canny";
    const low = Number(this.low.value);
    const high = Number(this.high.value);
    const image = canny ? await this.engine.canny(this.image, low, high) : this.image;
    const [weight, start, end] = [Number(this.weight.value), Number(this.start.value), Number(this.end.value)];
    return {
      input: { controlnet: loaded.id, image, scale: weight, start, end },
      record: { module: canny ? "canny" : "none", model: loaded.name, weight, start, end, ...(canny ? { low, high } : {}) },
    };
  }

  /** Takes a PNG's ControlNet settings (the control image itself is not in the PNG). */
  apply(units: ControlNetUse[]): string[] {
    const unit = units[0];
    if (!unit || !this.supported) return unit ? ["The PNG used a ControlNet, which this engine does not have."] : [];
    const preset = CONTROLNETS.find((c) => modelName(c.url) === unit.model);
    if (preset) this.model.value = preset.url;
    this.module.value = unit.module === "canny" ? "canny" : "none";
    const set = (input: HTMLInputElement, v?: number) => {
      if (v === undefined) return;
      input.value = String(v);
      input.dispatchEvent(new Event("input"));
    };
    set(this.weight, unit.weight);
    set(this.start, unit.start);
    set(this.end, unit.end);
    set(this.low, unit.low);
    set(this.high, unit.high);
    this.moduleChanged();
    const notes = ["ControlNet settings applied: drop the control image to use them."];
    if (!preset) notes.push(`ControlNet “${unit.model}” is not a preset here: enter its URL in the ControlNet panel.`);
    return notes;
  }

  private selectedUrl(): string {
    return this.model.value === "custom" ? this.url.value.trim() : this.model.value;
  }

  private async load() {
    const url = this.selectedUrl();
    if (!url) throw this.fail(new Error("ControlNet: enter the URL of a ControlNet folder."));
    this.say(`Loading ${modelName(url)}…`);
    try {
      if (!(await this.ready())) throw new Error("Choose a model first.");
      const controlnet = await this.engine.loadControlNet(url);
      if (this.loaded) this.engine.freeControlNet(this.loaded.id);
      this.loaded = { ...controlnet, url };
      this.say(`Loaded ${controlnet.name}.`);
    } catch (e) {
      throw this.fail(e);
    }
  }

  private fail(e: unknown): unknown {
    if (isUnsupported(e as Error)) this.unsupported("This version of the engine has no ControlNet yet.");
    else this.say(this.describe(e), true);
    return e;
  }

  private moduleChanged() {
    byId("cn-canny-controls").hidden = this.module.value !== "canny";
    this.scheduleCanny();
  }

  /** A live preview of the edges, a moment after the thresholds stop moving. */
  private scheduleCanny() {
    clearTimeout(this.cannyTimer);
    const canvas = byId<HTMLCanvasElement>("cn-canny");
    canvas.hidden = this.module.value !== "canny" || !this.image;
    if (canvas.hidden || !this.image) return;
    const image = this.image;
    this.cannyTimer = window.setTimeout(async () => {
      try {
        drawInto(canvas, await this.engine.canny(image, Number(this.low.value), Number(this.high.value)));
      } catch (e) {
        this.fail(e);
      }
    }, 150);
  }

  private summary() {
    byId("controlnet-state").textContent = !this.supported ? "not available" : this.enabled.checked ? "on" : "";
  }

  private say(text: string, bad = false) {
    this.status.textContent = text;
    this.status.classList.toggle("bad", bad);
  }
}
