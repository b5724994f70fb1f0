// The embeddings panel: textual-inversion files (EasyNegative and the like) added by URL or
// file. Every loaded embedding goes with each generation; a prompt uses one by naming its
// token. They live in the worker with the model they were loaded for, as LoRAs do.
import { addByUrlOrFile, byId, el } from "../dom";
import type { Engine } from "../engine";
import { plural } from "../format";

export interface EmbeddingUse {
  token: string;
  hash: string;
}

interface Loaded extends EmbeddingUse {
  id: number;
  row: HTMLElement;
}

export class EmbeddingPanel {
  /** Called when the loaded embeddings change (the token counts depend on them). */
  onChange: () => void = () => {};
  private loaded: Loaded[] = [];
  private readonly list = byId("embedding-list");
  private readonly message = byId("embedding-message");
  private readonly url = byId<HTMLInputElement>("embedding-url");
  private readonly addButton = byId<HTMLButtonElement>("embedding-add-url");

  /** `ready` loads the chosen model first (an embedding is matched against it). */
  constructor(private readonly engine: Engine, private readonly ready: () => Promise<boolean>, private readonly describe: (e: unknown) => string) {
    // As in AUTOMATIC1111, a file is named in prompts by its name without extension.
    addByUrlOrFile("embedding", (source, token) => this.add(source, token), () => this.say("Enter the URL of a .safetensors embedding first.", true));
  }

  /** The worker ids of every loaded embedding. */
  ids(): number[] {
    return this.loaded.map((l) => l.id);
  }

  /** The embeddings `prompts` name, for the parameters' `TI hashes`. */
  used(prompts: string[]): EmbeddingUse[] {
    return this.loaded.filter((l) => prompts.some((p) => p.includes(l.token))).map(({ token, hash }) => ({ token, hash }));
  }

  /** Notes for the embeddings a PNG's parameters name that are not loaded here. */
  missing(uses: EmbeddingUse[]): string[] {
    return uses.filter((u) => !this.loaded.some((l) => l.token === u.token))
      .map((u) => `Embedding “${u.token}” is not loaded: add it in the Embeddings panel, or the prompt reads its name as words.`);
  }

  /** The model changed: its embeddings are gone. */
  clear() {
    if (!this.loaded.length) return;
    this.loaded = [];
    this.list.replaceChildren();
    this.say("Another model was loaded, which removed the embeddings: add them again to use them with it.");
    this.changed();
  }

  private async add(source: string | Uint8Array<ArrayBuffer>, token?: string) {
    this.addButton.disabled = true;
    this.say(`Loading ${token ?? source}…`);
    try {
      if (!(await this.ready())) return this.say("Choose a model first.", true);
      const e = await this.engine.loadEmbedding(source, token);
      const same = this.loaded.find((l) => l.token === e.token);
      if (same) {
        // One word, one embedding: the newer file replaces the older.
        this.engine.freeEmbedding(same.id);
        same.row.remove();
        this.loaded = this.loaded.filter((l) => l !== same);
      }
      this.list.append(this.row(e.id, e.token, e.hash, e.vectors));
      this.url.value = "";
      this.say(`Added ${e.token}: write “${e.token}” in a prompt to use it.`);
    } catch (e) {
      this.say(this.describe(e), true);
    } finally {
      this.addButton.disabled = false;
      this.changed();
    }
  }

  private row(id: number, token: string, hash: string, vectors: number): HTMLElement {
    const remove = el("button", { type: "button", "aria-label": `Remove ${token}` }, "Remove");
    const toNegative = el("button", { type: "button", "aria-label": `Add ${token} to the negative prompt` }, "To negative");
    const row = el("li", { title: `sha256 ${hash}…` },
      el("span", { class: "grow" }, el("code", {}, token), ` · ${plural(vectors, "token")}`),
      toNegative, remove);
    const loaded: Loaded = { id, token, hash, row };
    toNegative.addEventListener("click", () => {
      const negative = byId<HTMLTextAreaElement>("negative");
      if (!negative.value.includes(token)) {
        negative.value = negative.value.trim() ? `${token}, ${negative.value.trim()}` : token;
        negative.dispatchEvent(new Event("input"));
      }
    });
    remove.addEventListener("click", () => {
      this.engine.freeEmbedding(id);
      this.loaded = this.loaded.filter((l) => l !== loaded);
      row.remove();
      this.say(`Removed ${token}.`);
      this.changed();
    });
    this.loaded.push(loaded);
    return row;
  }

  private changed() {
    byId("embedding-count").textContent = this.loaded.length ? `${this.loaded.length} loaded` : "";
    this.onChange();
  }

  private say(text: string, bad = false) {
    this.message.textContent = text;
    this.message.classList.toggle("bad", bad);
  }
}
