// The storage panel: the browser's quota, each downloaded model (a folder or pack is one)
// with a Delete button, and what the history takes.
import { byId, el } from "../dom";
import { formatBytes, plural } from "../format";
import type { CachedModel } from "../protocol";

export class StorageView {
  onDelete: (url: string) => void = () => {};
  models: CachedModel[] = [];

  /** `nameOf` turns a model URL into a name people know (a preset's). */
  constructor(private readonly nameOf: (url: string) => string) {}

  /** What the history takes, shown at once (the models need the engine, which starts slower). */
  history({ count, bytes }: { count: number; bytes: number }) {
    byId("history-usage").textContent = `${plural(count, "image")}, ${formatBytes(bytes)}.`;
  }

  async render(models: CachedModel[]) {
    this.models = models;
    const estimate = await navigator.storage?.estimate?.().catch(() => undefined);
    byId("storage-estimate").textContent = estimate?.quota
      ? `This site uses ${formatBytes(estimate.usage ?? 0)} of the ${formatBytes(estimate.quota)} the browser allows it.`
      : "";
    byId("cached-models").replaceChildren(...models.map((m) => {
      const name = this.nameOf(m.url);
      const del = el("button", { type: "button", "aria-label": `Delete ${name} from storage` }, "Delete");
      del.addEventListener("click", () => this.onDelete(m.url));
      return el("li", { title: m.url },
        el("span", { class: "grow" }, `${name} · ${formatBytes(m.bytes)}${m.complete ? "" : " (partly downloaded)"}`),
        del);
    }));
    byId("cached-empty").hidden = models.length > 0;
  }
}
