// The live preview without a preview decoder: latents → RGB by the linear map the engine
// gives for the model's family (`ModelInfo.previewRgb`).

/** rgb[c] = bias[c] + Σₖ factors[k][c] · latents[k], in [-1, 1]. */
export interface RgbMap {
  factors: number[][];
  bias: number[];
}

/** SD 1.x/2.x's map, for an engine that gives none. */
const SD_RGB: RgbMap = {
  factors: [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
  ],
  bias: [0, 0, 0],
};

/**
 * RGBA pixels (h × w) previewing latents of `shape` [1, c, h, w] (as the engine's step
 * messages give it) through `map` (a row per channel). Without a map that fits, 4 channels
 * read as SD's and other counts show their first three channels as RGB.
 */
export function latentsToRgba(latents: Float32Array, shape: readonly number[], map?: RgbMap): Uint8ClampedArray<ArrayBuffer> {
  const [, channels, h, w] = shape;
  const n = h * w;
  const fits = map && map.factors.length === channels ? map : channels === SD_RGB.factors.length ? SD_RGB : undefined;
  const { factors, bias } = fits ?? {
    factors: Array.from({ length: Math.min(channels, 3) }, (_, k) => [0, 1, 2].map((c) => (c === k ? 1 : 0))),
    bias: [0, 0, 0],
  };
  const rgba = new Uint8ClampedArray(n * 4);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) {
      let v = bias[c] ?? 0;
      for (let k = 0; k < factors.length; k++) v += latents[k * n + i] * factors[k][c];
      rgba[i * 4 + c] = ((v + 1) / 2) * 255;
    }
    rgba[i * 4 + 3] = 255;
  }
  return rgba;
}
