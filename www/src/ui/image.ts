// The Image / inpainting panel: an input image (dropped, pasted, picked or taken from the
// history), a mask painted over it with a brush, the strength and the mask blur. No mask:
// image to image (`initImage` + `strength`); a mask: inpainting (`mask`, white = repaint).
import { byId } from "../dom";
import { imageDataOf } from "../images";

export interface ImageInput {
  initImage: ImageData;
  strength: number;
  mask?: ImageData;
  maskBlur?: number;
}

export class ImagePanel {
  private image: ImageData | null = null;
  private supported = true;
  private readonly canvas = byId<HTMLCanvasElement>("mask-canvas");
  private readonly ctx: CanvasRenderingContext2D;
  private readonly brush = byId<HTMLInputElement>("brush");
  private readonly erase = byId<HTMLInputElement>("erase");
  private readonly strength = byId<HTMLInputElement>("strength");
  private readonly blur = byId<HTMLInputElement>("mask-blur");

  /** `maxSide`: the longest side input images are scaled to (the model's size). */
  constructor(private readonly maxSide: () => number) {
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true }) as CanvasRenderingContext2D;
    byId<HTMLInputElement>("init-file").addEventListener("change", (e) => {
      const input = e.target as HTMLInputElement;
      const file = input.files?.[0];
      input.value = "";
      if (file) this.setImage(file);
    });
    byId<HTMLInputElement>("mask-file").addEventListener("change", (e) => {
      const input = e.target as HTMLInputElement;
      const file = input.files?.[0];
      input.value = "";
      if (file) this.setMask(file);
    });
    byId("mask-clear").addEventListener("click", () => this.clearMask());
    byId("mask-invert").addEventListener("click", () => this.invertMask());
    byId("init-remove").addEventListener("click", () => this.remove());
    this.paintWithPointer();
    this.summary();
  }

  unsupported(reason: string) {
    this.supported = false;
    byId<HTMLFieldSetElement>("image-fields").disabled = true;
    const note = byId("image-unsupported");
    note.textContent = reason;
    note.hidden = false;
    this.remove();
  }

  async setImage(file: Blob) {
    if (!this.supported) return;
    this.image = await imageDataOf(file, this.maxSide());
    const img = byId<HTMLImageElement>("init-image");
    // Show the scaled pixels the model will get, so that the mask lines up with them.
    const canvas = new OffscreenCanvas(this.image.width, this.image.height);
    canvas.getContext("2d")?.putImageData(this.image, 0, 0);
    img.src = URL.createObjectURL(await canvas.convertToBlob());
    this.canvas.width = this.image.width;
    this.canvas.height = this.image.height;
    byId("mask-editor").hidden = false;
    this.summary();
  }

  /** A mask made elsewhere (white = repaint), scaled to the input image. */
  async setMask(file: Blob) {
    if (!this.image) return;
    const bitmap = await createImageBitmap(file, { resizeWidth: this.image.width, resizeHeight: this.image.height });
    const canvas = new OffscreenCanvas(this.image.width, this.image.height);
    const ctx = canvas.getContext("2d", { willReadFrequently: true }) as OffscreenCanvasRenderingContext2D;
    ctx.drawImage(bitmap, 0, 0);
    const gray = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const overlay = new ImageData(gray.width, gray.height);
    for (let i = 0; i < gray.data.length; i += 4) {
      const v = Math.round(0.299 * gray.data[i] + 0.587 * gray.data[i + 1] + 0.114 * gray.data[i + 2]);
      overlay.data.set([255, 40, 80, v], i);
    }
    this.ctx.putImageData(overlay, 0, 0);
    this.summary();
  }

  /** What to add to the generation, or null without an input image. */
  forGenerate(): ImageInput | null {
    if (!this.supported || !this.image) return null;
    const strength = Number(this.strength.value);
    if (!this.hasMask()) return { initImage: this.image, strength };
    const blur = Number(this.blur.value);
    return { initImage: this.image, strength, mask: this.mask(), ...(blur > 0 ? { maskBlur: blur } : {}) };
  }

  /** The output size an input image sets. */
  size(): [number, number] | null {
    return this.image ? [this.image.width, this.image.height] : null;
  }

  applyStrength(strength?: number, maskBlur?: number) {
    if (strength !== undefined) {
      this.strength.value = String(strength);
      this.strength.dispatchEvent(new Event("input"));
    }
    if (maskBlur !== undefined) this.blur.value = String(maskBlur);
  }

  private remove() {
    this.image = null;
    byId("mask-editor").hidden = true;
    this.clearMask();
    this.summary();
  }

  private clearMask() {
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    this.summary();
  }

  /** Painted ↔ unpainted: the overlay's alpha is the mask. */
  private invertMask() {
    const { width, height } = this.canvas;
    if (!width || !height) return;
    const data = this.ctx.getImageData(0, 0, width, height);
    for (let i = 0; i < data.data.length; i += 4) {
      data.data.set([255, 40, 80, 255 - data.data[i + 3]], i);
    }
    this.ctx.putImageData(data, 0, 0);
    this.summary();
  }

  private hasMask(): boolean {
    const { width, height } = this.canvas;
    if (!this.image || !width || !height) return false;
    const data = this.ctx.getImageData(0, 0, width, height).data;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) return true;
    return false;
  }

  /** White where painted, black elsewhere, opaque: the engine reads it as grayscale. */
  private mask(): ImageData {
    const painted = this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height);
    const mask = new ImageData(painted.width, painted.height);
    for (let i = 0; i < painted.data.length; i += 4) {
      const v = painted.data[i + 3];
      mask.data.set([v, v, v, 255], i);
    }
    return mask;
  }

  private paintWithPointer() {
    let last: [number, number] | null = null;
    const at = (e: PointerEvent): [number, number] => {
      const r = this.canvas.getBoundingClientRect();
      return [((e.clientX - r.left) / r.width) * this.canvas.width, ((e.clientY - r.top) / r.height) * this.canvas.height];
    };
    const stroke = (to: [number, number]) => {
      const r = this.canvas.getBoundingClientRect();
      // The brush size is in screen pixels; the canvas may be shown larger or smaller.
      this.ctx.lineWidth = (Number(this.brush.value) * this.canvas.width) / Math.max(1, r.width);
      this.ctx.lineCap = this.ctx.lineJoin = "round";
      this.ctx.strokeStyle = "rgb(255, 40, 80)";
      this.ctx.globalCompositeOperation = this.erase.checked ? "destination-out" : "source-over";
      this.ctx.beginPath();
      this.ctx.moveTo(...(last ?? to));
      this.ctx.lineTo(...to);
      this.ctx.stroke();
      last = to;
    };
    this.canvas.addEventListener("pointerdown", (e) => {
      this.canvas.setPointerCapture(e.pointerId);
      last = null;
      stroke(at(e));
    });
    this.canvas.addEventListener("pointermove", (e) => {
      if (last) stroke(at(e));
    });
    const end = () => {
      last = null;
      this.summary();
    };
    this.canvas.addEventListener("pointerup", end);
    this.canvas.addEventListener("pointercancel", end);
  }

  private summary() {
    const text = !this.supported ? "not available"
      : !this.image ? ""
      : `${this.hasMask() ? "inpainting" : "image to image"}, ${this.image.width}×${this.image.height}`;
    byId("image-state").textContent = text;
  }
}
