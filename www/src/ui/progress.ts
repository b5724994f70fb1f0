// Two bars: the download (one for the whole model, files behind a disclosure) and the steps.
import { byId, el } from "../dom";
import { downloadStatus, formatBytes, stepStatus } from "../format";
import type { LoadProgress } from "../protocol";

export class ProgressView {
  private readonly download = byId("download");
  private readonly downloadBar = byId<HTMLProgressElement>("download-bar");
  private readonly downloadText = byId("download-text");
  private readonly fileList = byId("download-file-list");
  private readonly steps = byId("steps-meter");
  private readonly stepsBar = byId<HTMLProgressElement>("steps-bar");
  private readonly stepsText = byId("steps-text");
  private files = new Map<string, { loaded: number; total: number | null }>();
  private expected = 0;
  private downloadStart = 0;
  private stepStart = 0;
  private firstStep = 0;

  /** A download begins; `expected` is its known size (0 when unknown). */
  startDownload(label: string, expected: number) {
    this.files.clear();
    this.expected = expected;
    this.downloadStart = performance.now();
    byId("download-label").textContent = label;
    this.downloadBar.removeAttribute("value"); // indeterminate until bytes arrive
    this.downloadText.textContent = "Starting…";
    this.fileList.replaceChildren();
    this.download.hidden = false;
  }

  onProgress(p: LoadProgress) {
    this.files.set(p.file, { loaded: p.loaded, total: p.total });
    const all = [...this.files.values()];
    const loaded = all.reduce((n, f) => n + f.loaded, 0);
    // Files are discovered one after another: the preset's size keeps the bar from jumping back.
    const total = Math.max(this.expected, all.reduce((n, f) => n + (f.total ?? f.loaded), 0));
    this.downloadBar.max = total || 1;
    this.downloadBar.value = Math.min(loaded, total);
    this.downloadText.textContent = downloadStatus(loaded, total || null, (performance.now() - this.downloadStart) / 1000);
    this.fileList.replaceChildren(...[...this.files].map(([url, f]) =>
      el("li", {}, `${url.split("/").slice(-2).join("/")}: ${formatBytes(f.loaded)}${f.total ? ` of ${formatBytes(f.total)}` : ""}`)));
  }

  /** The download is over; the model is being set up on the GPU. */
  endDownload() {
    const loaded = [...this.files.values()].reduce((n, f) => n + f.loaded, 0);
    this.downloadBar.max = 1;
    this.downloadBar.value = 1;
    const seconds = ((performance.now() - this.downloadStart) / 1000).toFixed(1);
    this.downloadText.textContent = loaded ? `${formatBytes(loaded)} loaded in ${seconds} s` : `Loaded in ${seconds} s`;
  }

  startSteps(label: string) {
    this.stepStart = 0;
    byId("steps-label").textContent = label;
    this.stepsBar.removeAttribute("value");
    this.stepsText.textContent = "Encoding the prompt…";
    delete this.stepsText.dataset.step;
    this.steps.hidden = false;
  }

  onStep(step: number, total: number) {
    // The rate counts from the first step, so that prompt encoding and shader compilation
    // (seconds on a first run) do not make it look slow.
    if (step <= 1 || !this.stepStart) {
      this.stepStart = performance.now();
      this.firstStep = step;
    }
    const seconds = (performance.now() - this.stepStart) / 1000;
    const rate = step > this.firstStep && seconds > 0 ? (step - this.firstStep) / seconds : 0;
    this.stepsBar.max = total;
    this.stepsBar.value = step;
    this.stepsText.textContent = stepStatus(step, total, rate);
    this.stepsText.dataset.step = String(step);
    this.stepsText.dataset.total = String(total);
  }

  /** Decoding the image after the last step. */
  decoding() {
    this.stepsText.textContent += " · decoding…";
  }

  hide() {
    this.download.hidden = true;
    this.steps.hidden = true;
  }
}
