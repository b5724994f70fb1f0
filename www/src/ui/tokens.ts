// The prompt boxes' helpers: weighted spans highlighted behind the text, token counters
// ("12/75", "87/150 · 2 chunks") as the loaded model's tokenizer reads the text, and
// Ctrl+↑/↓ to weigh the selection. Counting needs a loaded model; before one is loaded the
// counters stay empty.
import { byId, el } from "../dom";
import type { Engine } from "../engine";
import { splitLoraTags } from "../params";
import { adjustWeight, weightedSpans } from "../weights";

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
    { input: byId<HTMLTextAreaElement>("prompt"), output: byId("prompt-tokens"), highlight: byId("prompt-highlight"), version: 0 },
    { input: byId<HTMLTextAreaElement>("negative"), output: byId("negative-tokens"), highlight: byId("negative-highlight"), version: 0 },
  ];

  constructor(private readonly engine: Engine, private readonly reading: () => Reading) {
    for (const box of this.boxes) {
      box.input.addEventListener("input", () => this.update());
      box.input.addEventListener("scroll", () => (box.highlight.scrollTop = box.input.scrollTop));
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

  /** Highlights at once, and recounts both boxes a moment after the last change. */
  update() {
    const weighting = this.reading().weighting;
    for (const box of this.boxes) highlight(box.highlight, weighting ? box.input.value : "");
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

/** `text` in `target` with its weighted spans marked (stronger for weights further from 1). */
function highlight(target: HTMLElement, text: string) {
  const nodes: (string | HTMLElement)[] = [];
  let at = 0;
  for (const span of weightedSpans(text)) {
    if (span.start < at) continue;
    nodes.push(text.slice(at, span.start));
    const mark = el("mark", {}, text.slice(span.start, span.end));
    if (span.weight === 0) mark.classList.add("break");
    else {
      if (span.weight < 1) mark.classList.add("less");
      const strength = Math.min(1, Math.abs(Math.log(span.weight)) / Math.log(1.5));
      mark.style.setProperty("--w", (0.35 + 0.65 * strength).toFixed(2));
    }
    nodes.push(mark);
    at = span.end;
  }
  // A final newline needs a character after it to take a line, as in the textarea.
  nodes.push(text.slice(at) + "\u200b");
  target.replaceChildren(...nodes);
}

function show(output: HTMLElement, text: string, bad: boolean) {
  output.textContent = text;
  output.classList.toggle("bad", bad);
}
