// The token counters under the prompt boxes ("12/75", "87/150 · 2 chunks") as the loaded
// model's tokenizer reads the text, and Ctrl+↑/↓ to weigh the selection. Counting needs a
// loaded model; before one is loaded the counters stay empty.
import { byId } from "../dom";
import type { Engine } from "../engine";
import { splitLoraTags } from "../params";
import { adjustWeight } from "../weights";

export interface Reading {
  /** Whether a model is loaded (counting asks its tokenizer). */
  ready: boolean;
  embeddings: number[];
  weighting: boolean;
}

const CHUNK = 75;

export class TokenCounter {
  private timer = 0;
  private readonly boxes = [
    { input: byId<HTMLTextAreaElement>("prompt"), output: byId("prompt-tokens"), version: 0 },
    { input: byId<HTMLTextAreaElement>("negative"), output: byId("negative-tokens"), version: 0 },
  ];

  constructor(private readonly engine: Engine, private readonly reading: () => Reading) {
    for (const box of this.boxes) {
      box.input.addEventListener("input", () => this.update());
      box.input.addEventListener("keydown", (event) => {
        if (!(event.ctrlKey || event.metaKey) || (event.key !== "ArrowUp" && event.key !== "ArrowDown")) return;
        const edit = adjustWeight(box.input.value, box.input.selectionStart, box.input.selectionEnd, event.key === "ArrowUp" ? 0.1 : -0.1);
        if (!edit) return;
        event.preventDefault();
        box.input.value = edit.text;
        box.input.setSelectionRange(edit.start, edit.end);
        box.input.dispatchEvent(new Event("input"));
      });
    }
  }

  /** Recounts both boxes a moment after the last change. */
  update() {
    clearTimeout(this.timer);
    this.timer = window.setTimeout(() => this.count(), 250);
  }

  private async count() {
    const reading = this.reading();
    for (const box of this.boxes) {
      const version = ++box.version;
      if (!reading.ready) {
        show(box.output, "", false);
        continue;
      }
      try {
        // `<lora:…>` tags are not read by the text encoder.
        const text = splitLoraTags(box.input.value).prompt;
        const { chunks } = await this.engine.countTokens(text, reading.embeddings, reading.weighting);
        if (version !== box.version) continue;
        const tokens = chunks.reduce((a, b) => a + b, 0);
        if (!reading.weighting && tokens > CHUNK) {
          show(box.output, `${tokens}/${CHUNK}: read literally, the words past ${CHUNK} tokens are dropped`, true);
        } else {
          const more = chunks.length > 1 ? ` · ${chunks.length} chunks` : "";
          show(box.output, `${tokens}/${CHUNK * chunks.length}${more}`, false);
        }
      } catch (e) {
        if (version === box.version) show(box.output, e instanceof Error ? e.message : String(e), true);
      }
    }
  }
}

function show(output: HTMLElement, text: string, bad: boolean) {
  output.textContent = text;
  output.classList.toggle("bad", bad);
}
