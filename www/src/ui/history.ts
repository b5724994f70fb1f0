// The history grid: a thumbnail button per image, newest first, alt text from its prompt.
import { byId, el } from "../dom";
import { plural } from "../format";
import type { HistoryEntry } from "../history";

export class HistoryView {
  onSelect: (entry: HistoryEntry) => void = () => {};
  /** After every change, with what the history now takes. */
  onChange: (usage: { count: number; bytes: number }) => void = () => {};
  private readonly list = byId("history-list");
  private readonly urls = new Map<number, string>();
  private entries: HistoryEntry[] = [];

  render(entries: HistoryEntry[]) {
    for (const url of this.urls.values()) URL.revokeObjectURL(url);
    this.urls.clear();
    this.entries = entries;
    this.list.replaceChildren(...entries.map((e) => this.item(e)));
    this.counted();
  }

  prepend(entry: HistoryEntry) {
    this.entries.unshift(entry);
    this.list.prepend(this.item(entry));
    this.counted();
  }

  remove(id: number) {
    URL.revokeObjectURL(this.urls.get(id) ?? "");
    this.urls.delete(id);
    this.entries = this.entries.filter((e) => e.id !== id);
    this.list.querySelector(`[data-id="${id}"]`)?.remove();
    this.counted();
  }

  /** The entry after `id` (or before it, at the end), to show once `id` is gone. */
  neighbour(id: number): HistoryEntry | undefined {
    const i = this.entries.findIndex((e) => e.id === id);
    return this.entries[i + 1] ?? this.entries[i - 1];
  }

  first(): HistoryEntry | undefined {
    return this.entries[0];
  }

  usage(): { count: number; bytes: number } {
    return { count: this.entries.length, bytes: this.entries.reduce((n, e) => n + e.bytes + e.thumb.size, 0) };
  }

  markCurrent(id: number | undefined) {
    for (const button of this.list.querySelectorAll("button")) {
      button.setAttribute("aria-current", String(button.closest("li")?.dataset.id === String(id)));
    }
  }

  private item(entry: HistoryEntry): HTMLElement {
    const url = URL.createObjectURL(entry.thumb);
    this.urls.set(entry.id, url);
    const img = el("img", { src: url, alt: entry.params.prompt || "Image without a prompt", loading: "lazy" });
    if (Math.max(entry.params.width, entry.params.height) < 256) img.classList.add("pixelated");
    const button = el("button", { type: "button", title: `Seed ${entry.params.seed}, ${new Date(entry.created).toLocaleString()}` }, img);
    button.addEventListener("click", () => this.onSelect(entry));
    return el("li", { "data-id": String(entry.id) }, button);
  }

  private counted() {
    byId("history-count").textContent = this.entries.length ? plural(this.entries.length, "image") : "";
    byId("history-empty").hidden = this.entries.length > 0;
    byId("history-clear").hidden = this.entries.length === 0;
    this.onChange(this.usage());
  }
}
