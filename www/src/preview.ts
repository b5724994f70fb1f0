// The live preview without a preview decoder: latents → RGB by a linear map.

/** SD 1.x/2.x latent channels → RGB, a linear fit good enough for a live preview. */
const LATENT_RGB = [
  [0.298, 0.207, 0.208],
  [0.187, 0.286, 0.173],
  [-0.158, 0.189, 0.264],
  [-0.184, -0.271, -0.473],
];

/** RGBA pixels (h × w) previewing latents [1, 4, h, w]. */
export function latentsToRgba(latents: Float32Array, h: number, w: number): Uint8ClampedArray<ArrayBuffer> {
  const n = h * w;
  const rgba = new Uint8ClampedArray(n * 4);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) {
      let v = 0;
      for (let k = 0; k < 4; k++) v += latents[k * n + i] * LATENT_RGB[k][c];
      rgba[i * 4 + c] = ((v + 1) / 2) * 255;
    }
    rgba[i * 4 + 3] = 255;
  }
  return rgba;
}

/** The latents' height and width, given the aspect of the image being made. */
export function latentSize(latents: Float32Array, width: number, height: number): [number, number] {
  const n = latents.length / 4;
  const w = Math.round(Math.sqrt((n * width) / height));
  return [n / w, w];
}
