// Pixels ↔ files: the engine speaks ImageData (RGBA), people drop and download PNGs.

/** A PNG of RGBA pixels. */
export async function pngOf(pixels: Uint8ClampedArray<ArrayBuffer>, width: number, height: number): Promise<Blob> {
  const canvas = new OffscreenCanvas(width, height);
  context(canvas).putImageData(new ImageData(pixels, width, height), 0, 0);
  return canvas.convertToBlob({ type: "image/png" });
}

/**
 * An image file as ImageData, scaled (keeping its aspect) so that its longer side is at most
 * `maxSide`, with both sides multiples of 8 as the models need.
 */
export async function imageDataOf(file: Blob, maxSide: number): Promise<ImageData> {
  const bitmap = await createImageBitmap(file);
  const scale = Math.min(1, maxSide / Math.max(bitmap.width, bitmap.height));
  const w = Math.max(8, Math.round((bitmap.width * scale) / 8) * 8);
  const h = Math.max(8, Math.round((bitmap.height * scale) / 8) * 8);
  const canvas = new OffscreenCanvas(w, h);
  const ctx = context(canvas);
  ctx.drawImage(bitmap, 0, 0, w, h);
  bitmap.close();
  return ctx.getImageData(0, 0, w, h);
}

/** Draws ImageData into a visible canvas of the same size. */
export function drawInto(canvas: HTMLCanvasElement, image: ImageData) {
  canvas.width = image.width;
  canvas.height = image.height;
  canvas.getContext("2d")?.putImageData(image, 0, 0);
}

/** The first image file among dropped or pasted items. */
export function imageFile(data: DataTransfer | null): File | null {
  for (const file of data?.files ?? []) if (file.type.startsWith("image/")) return file;
  return null;
}

function context(canvas: OffscreenCanvas): OffscreenCanvasRenderingContext2D {
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  if (!ctx) throw new Error("this browser cannot draw images off screen");
  return ctx;
}
