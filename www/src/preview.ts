// The live preview without a preview decoder: latents → RGB by a linear map.

/** SD 1.x/2.x latent channels → RGB, a linear fit good enough for a live preview. */
const LATENT_RGB = [
  [0.298, 0.207, 0.208],
  [0.187, 0.286, 0.173],
  [-0.158, 0.189, 0.264],
  [-0.184, -0.271, -0.473],
];

/**
 * RGBA pixels (h × w) previewing latents of `shape` [1, c, h, w] (as the engine's step
 * messages give it). SD's 4 channels go through the fitted map; latents with other channel
 * counts show their first three channels as RGB.
 */
export function latentsToRgba(latents: Float32Array, shape: readonly number[]): Uint8ClampedArray<ArrayBuffer> {
  const [, channels, h, w] = shape;
  const n = h * w;
  const map = channels === LATENT_RGB.length
    ? LATENT_RGB
    : Array.from({ length: Math.min(channels, 3) }, (_, k) => [0, 1, 2].map((c) => (c === k ? 1 : 0)));
  const rgba = new Uint8ClampedArray(n * 4);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) {
      let v = 0;
      for (let k = 0; k < map.length; k++) v += latents[k * n + i] * map[k][c];
      rgba[i * 4 + c] = ((v + 1) / 2) * 255;
    }
    rgba[i * 4 + 3] = 255;
  }
  return rgba;
}
