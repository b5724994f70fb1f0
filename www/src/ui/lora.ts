// The LoRA panel: add by URL or file, a strength each (−2…2), on/off, remove. LoRAs live in
// the worker with the model they were loaded for; loading another model frees them there,
// so `clear` drops the list here too.
import { addByUrlOrFile, byId, el } from "../dom";
import type { Engine } from "../engine";
import type { LoraUse } from "../params";

interface Loaded {
  id: number;
  name: string;
  hash: string;
  use: HTMLInputElement;
  strength: HTMLInputElement;
  row: HTMLElement;
}

export class LoraPanel {
  private loaded: Loaded[] = [];
  private readonly list = byId("lora-list");
  private readonly message = byId("lora-message");
  private readonly url = byId<HTMLInputElement>("lora-url");
  private readonly addButton = byId<HTMLButtonElement>("lora-add-url");

  /** `ready` loads the chosen model first (a LoRA is matched against it). */
  constructor(private readonly engine: Engine, private readonly ready: () => Promise<boolean>, private readonly describe: (e: unknown) => string) {
    addByUrlOrFile("lora", (source, name) => this.add(source, name), () => this.say("Enter the URL of a .safetensors LoRA first.", true));
  }

  /**
   * The LoRAs to generate with, as the worker names them and as parameters record them.
   * `tags` (`<lora:NAME:SCALE>` from the prompt) switch loaded LoRAs on at their scale.
   */
  active(tags: LoraUse[] = []): { request: { lora: number; scale: number }[]; uses: LoraUse[] } {
    const missing = tags.filter((t) => !this.loaded.some((l) => l.name === t.name));
    if (missing.length) throw new Error(`The prompt names LoRA “${missing[0].name}”, which is not loaded: add it in the LoRA panel.`);
    const on = this.loaded.flatMap((l) => {
      const tag = tags.find((t) => t.name === l.name);
      return tag || l.use.checked ? [{ l, scale: tag ? tag.scale : Number(l.strength.value) }] : [];
    });
    return {
      request: on.map(({ l, scale }) => ({ lora: l.id, scale })),
      uses: on.map(({ l, scale }) => ({ name: l.name, scale, hash: l.hash })),
    };
  }

  /** The model changed: its LoRAs are gone. */
  clear() {
    if (!this.loaded.length) return;
    this.loaded = [];
    this.list.replaceChildren();
    this.say("Another model was loaded, which removed the LoRAs: add them again to use them with it.");
    this.count();
  }

  /**
   * Takes the LoRAs of a PNG's parameters: those loaded here are switched on at the given
   * strength, the others off; returns notes about the ones not loaded.
   */
  apply(uses: LoraUse[]): string[] {
    for (const l of this.loaded) {
      const use = uses.find((u) => u.name === l.name);
      l.use.checked = !!use;
      if (use) this.setStrength(l, use.scale);
    }
    this.count();
    return uses.filter((u) => !this.loaded.some((l) => l.name === u.name))
      .map((u) => `LoRA “${u.name}” (strength ${u.scale}) is not loaded: add it in the LoRA panel to use it.`);
  }

  private async add(source: string | Uint8Array<ArrayBuffer>, name?: string) {
    this.addButton.disabled = true;
    this.say(`Loading ${name ?? source}…`);
    try {
      if (!(await this.ready())) return this.say("Choose a model first.", true);
      const lora = await this.engine.loadLora(source, name);
      const existing = this.loaded.find((l) => l.id === lora.id);
      if (!existing) this.list.append(this.row(lora.id, lora.name, lora.hash));
      this.url.value = "";
      this.say(`Added ${lora.name}.`);
    } catch (e) {
      this.say(this.describe(e), true);
    } finally {
      this.addButton.disabled = false;
      this.count();
    }
  }

  private row(id: number, name: string, hash: string): HTMLElement {
    const use = el("input", { type: "checkbox" });
    use.checked = true;
    const strength = el("input", { type: "range", min: "-2", max: "2", step: "0.05", value: "1", "aria-label": `Strength of ${name}` });
    const output = el("output", {}, "1");
    strength.addEventListener("input", () => (output.value = strength.value));
    use.addEventListener("change", () => this.count());
    const remove = el("button", { type: "button", "aria-label": `Remove ${name}` }, "Remove");
    const row = el("li", { title: `sha256 ${hash}…` },
      el("label", { class: "check grow" }, use, name),
      el("span", { class: "range grow" }, strength, output),
      remove);
    const loaded: Loaded = { id, name, hash, use, strength, row };
    remove.addEventListener("click", () => {
      this.engine.freeLora(id);
      this.loaded = this.loaded.filter((l) => l !== loaded);
      row.remove();
      this.say(`Removed ${name}.`);
      this.count();
    });
    this.loaded.push(loaded);
    return row;
  }

  private setStrength(l: Loaded, scale: number) {
    l.strength.value = String(scale);
    l.strength.dispatchEvent(new Event("input"));
  }

  private count() {
    const on = this.loaded.filter((l) => l.use.checked).length;
    byId("lora-count").textContent = this.loaded.length ? `${on} of ${this.loaded.length} on` : "";
  }

  private say(text: string, bad = false) {
    this.message.textContent = text;
    this.message.classList.toggle("bad", bad);
  }
}
