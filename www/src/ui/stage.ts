// The main image area: the chosen image large with its parameters and actions, or the live
// preview while a generation runs, or a hint when there is nothing yet.
import { byId } from "../dom";
import { plural } from "../format";
import { drawInto } from "../images";
import type { HistoryEntry } from "../history";
import { samplerName, type Parameters } from "../params";

export class Stage {
  current: HistoryEntry | null = null;
  private objectUrl = "";
  private readonly image = byId<HTMLImageElement>("stage-image");
  private readonly canvas = byId<HTMLCanvasElement>("stage-preview");

  show(entry: HistoryEntry, png: Blob) {
    this.current = entry;
    URL.revokeObjectURL(this.objectUrl);
    this.objectUrl = URL.createObjectURL(png);
    this.image.src = this.objectUrl;
    this.image.alt = entry.params.prompt || "Image without a prompt";
    // Small images (the tiny model's 32×32) are scaled up: keep their pixels crisp.
    this.image.classList.toggle("pixelated", Math.max(entry.params.width, entry.params.height) < 256);
    const link = byId<HTMLAnchorElement>("action-download");
    link.href = this.objectUrl;
    link.download = `webdiffusion-${entry.params.seed}.png`;
    byId("stage-caption").replaceChildren(...caption(entry.params));
    this.image.hidden = false;
    this.canvas.hidden = true;
    byId("stage-empty").hidden = true;
    byId("stage-actions").hidden = false;
  }

  /** Draws the live preview over whatever was shown. */
  preview(image: ImageData) {
    drawInto(this.canvas, image);
    this.canvas.classList.add("pixelated");
    this.canvas.hidden = false;
    this.image.hidden = true;
    byId("stage-empty").hidden = true;
  }

  /** The run ended without an image: show what was there before. */
  endPreview() {
    this.canvas.hidden = true;
    this.image.hidden = !this.current;
    byId("stage-empty").hidden = !!this.current;
  }

  clear() {
    this.current = null;
    URL.revokeObjectURL(this.objectUrl);
    this.image.removeAttribute("src");
    byId("stage-caption").replaceChildren();
    byId("stage-actions").hidden = true;
    this.endPreview();
  }
}

function caption(p: Parameters): (Node | string)[] {
  const strong = document.createElement("strong");
  strong.textContent = p.prompt;
  const settings = [plural(p.steps, "step"), samplerName(p.scheduler), `CFG ${p.guidance}`, `seed ${p.seed}`, `${p.width}×${p.height}`, p.model,
    ...p.loras.map((l) => `LoRA ${l.name} ${l.scale}`),
    ...p.controlnets.map((c) => `ControlNet ${c.model} ${c.weight}`),
    ...(p.strength !== undefined ? [`strength ${p.strength}`] : [])];
  return [strong, ...(p.negativePrompt ? [` · not: ${p.negativePrompt}`] : []), document.createElement("br"), settings.join(" · ")];
}
