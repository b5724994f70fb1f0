// How much GPU memory a model needs in each precision, and whether that fits the adapter.
//
// WebGPU tells a page its adapter's limits (the largest buffer, the largest storage binding)
// and whether it has `shader-f16`, but not how much memory the GPU has. So there are two
// checks: a hard one (the model's largest single buffer against the adapter's limits), and
// an estimate of the total against a guessed budget (see `memoryBudget`), labelled as a guess.

export type Precision = "f32" | "f16" | "q4";

/** What the estimate needs to know about a model. */
export interface ModelShape {
  /** Parameters per component: the denoiser (a UNet, or SD3's transformer), the CLIP text
   *  encoders, SD3's T5 encoder when it is loaded, the VAE. */
  unet: number;
  textEncoder: number;
  t5?: number;
  vae: number;
  /** The token embeddings (CLIP's, and T5's when loaded), which q4 packs keep in 8 or 16
   *  bits (vocabulary × width). */
  tokenEmbedding: number;
  /** Elements of the largest weight tensor (one buffer): for SD, CLIP's token embedding. */
  largestWeight: number;
  /** Elements of the largest conv/linear weight, which a q4 layer dequantizes per call. */
  largestLayer: number;
  /** Channels of the VAE decoder's widest convolution at full resolution (SD: 256). */
  vaeFullResChannels: number;
  /** The VAE runs in f32 whatever the precision (SDXL's config says `force_upcast`). */
  vaeF32?: boolean;
}

const MiB = 1024 * 1024;

/** Bytes per weight. q4 packs: 0.55 for the UNet, as measured on SD 1.5 (README, "Model packs"). */
const WEIGHT_BYTES: Record<Precision, number> = { f32: 4, f16: 2, q4: 0.55 };

export function weightBytes(m: ModelShape, p: Precision): number {
  const params = m.unet + m.textEncoder + (m.t5 ?? 0) + m.vae;
  if (p !== "q4") return params * WEIGHT_BYTES[p];
  // q4 packs keep CLIP's token embedding (and norms, biases, first/last convs: a few MB) in
  // f16 and quantize the rest; one layer at a time is dequantized to f32 while it runs.
  const quantized = params - m.tokenEmbedding;
  return quantized * WEIGHT_BYTES.q4 + m.tokenEmbedding * 2 + m.largestLayer * 4;
}

/**
 * Activations: the peak is the VAE decoder's last upsampling stage, a convolution of
 * `vaeFullResChannels` channels at the full image size whose input and output are both
 * alive (the UNet works at 1/8 of the size, batch 2, far below that; attention is fused and
 * needs no tokens² buffer). q4 computes in f32 (packs dequantize to f32).
 */
export function activationBytes(m: ModelShape, p: Precision, width: number, height: number): number {
  return 2 * m.vaeFullResChannels * width * height * vaeBytes(m, p);
}

/** Bytes per value of the VAE's activations. */
const vaeBytes = (m: ModelShape, p: Precision) => (p === "f16" && !m.vaeF32 ? 2 : 4);

/** Everything else: wgpu staging buffers, the UNet's and CLIP's activations, allocator slack. */
const OVERHEAD = 128 * MiB;

/** The GPU memory a generation of `width`×`height` needs, in bytes (an estimate). */
export function gpuMemory(m: ModelShape, p: Precision, width: number, height: number): number {
  return weightBytes(m, p) + activationBytes(m, p, width, height) + OVERHEAD;
}

/** The largest single buffer: a weight, or one activation of the VAE's widest stage. */
export function largestBuffer(m: ModelShape, p: Precision, width: number, height: number): number {
  return Math.max(weightBuffer(m, p), m.vaeFullResChannels * width * height * vaeBytes(m, p));
}

/** The largest weight buffer. */
const weightBuffer = (m: ModelShape, p: Precision) => (p === "q4" ? m.largestLayer * 4 : m.largestWeight * WEIGHT_BYTES[p]);

/** What the page can learn about its GPU (`navigator.gpu.requestAdapter()`), plus RAM. */
export interface GpuInfo {
  vendor: string;
  architecture: string;
  description: string;
  /** A software adapter (SwiftShader, WARP): the CPU does the work. */
  fallback: boolean;
  f16: boolean;
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
  /** `navigator.deviceMemory` in GB (Chromium only, rounded, at most 8). */
  deviceMemory?: number;
}

const INTEGRATED = /^(intel|apple|arm|qualcomm|imagination|img-tec|mali|powervr|broadcom|samsung)/i;

/**
 * A guess at the memory a page may use on this GPU, and what the guess rests on.
 * - Software adapters and integrated GPUs share system RAM: half of `deviceMemory` (which
 *   Chromium caps at 8 GB, so at most 4 GB), or 2 GB when the browser does not say.
 * - NVIDIA and AMD, usually discrete: 6 GB, what most such cards of the last years have.
 * - Anything else: 3 GB.
 */
export function memoryBudget(gpu: GpuInfo): { bytes: number; basis: string } {
  const GB = 1024 * MiB;
  const ram = gpu.deviceMemory;
  if (gpu.fallback || INTEGRATED.test(gpu.vendor)) {
    const kind = gpu.fallback ? "a software adapter" : "an integrated GPU";
    return ram
      ? { bytes: (ram / 2) * GB, basis: `${kind} sharing system memory: half of the ${ram} GB the browser reports` }
      : { bytes: 2 * GB, basis: `${kind} sharing system memory (the browser does not report how much): 2 GB assumed` };
  }
  if (/^(nvidia|amd|ati)/i.test(gpu.vendor)) {
    return { bytes: 6 * GB, basis: `a ${gpu.vendor.toUpperCase()} GPU, usually discrete: 6 GB assumed (WebGPU does not report memory)` };
  }
  return { bytes: 3 * GB, basis: "an unknown GPU: 3 GB assumed (WebGPU does not report memory)" };
}

export type Fit = "fits" | "tight" | "too-big";

export interface FitResult {
  fit: Fit;
  bytes: number;
  reason: string;
}

/** Whether precision `p` of model `m` fits this GPU at `width`×`height`. */
export function fitOn(m: ModelShape, p: Precision, gpu: GpuInfo, width: number, height: number): FitResult {
  const limit = Math.min(gpu.maxBufferSize, gpu.maxStorageBufferBindingSize);
  // A whole image whose VAE activations exceed the limit is decoded in tiles (the engine's
  // automatic tiled VAE): then a tile's activations, at most a buffer each, count.
  const tiled = m.vaeFullResChannels * width * height * vaeBytes(m, p) > limit;
  const bytes = tiled ? weightBytes(m, p) + 2 * limit + OVERHEAD : gpuMemory(m, p, width, height);
  const buffer = tiled ? weightBuffer(m, p) : largestBuffer(m, p, width, height);
  if (buffer > limit) {
    return { fit: "too-big", bytes, reason: `needs a ${mb(buffer)} buffer; this GPU allows ${mb(limit)}` };
  }
  const budget = memoryBudget(gpu).bytes;
  // Under 70% of the guess leaves room for the browser, other tabs and the guess's error.
  if (bytes <= 0.7 * budget) return { fit: "fits", bytes, reason: `about ${mb(bytes)} of an estimated ${mb(budget)}` };
  if (bytes <= budget) return { fit: "tight", bytes, reason: `about ${mb(bytes)} of an estimated ${mb(budget)}: may run out` };
  return { fit: "too-big", bytes, reason: `about ${mb(bytes)}, more than the estimated ${mb(budget)}` };
}

/** The precision to use: the first that fits of f16 (when the GPU has `shader-f16`), f32, q4
 *  (when a q4 pack exists); else the first that is tight; else the smallest. */
export function choosePrecision(m: ModelShape, gpu: GpuInfo, hasQ4: boolean, width: number, height: number): Precision {
  const candidates = (["f16", "f32", "q4"] as Precision[]).filter((p) => (p !== "f16" || gpu.f16) && (p !== "q4" || hasQ4));
  const fits = candidates.map((p) => [p, fitOn(m, p, gpu, width, height).fit] as const);
  return (fits.find(([, f]) => f === "fits") ?? fits.find(([, f]) => f === "tight"))?.[0]
    ?? candidates.reduce((a, b) => (gpuMemory(m, b, width, height) < gpuMemory(m, a, width, height) ? b : a));
}

function mb(bytes: number): string {
  return bytes >= 1024 * MiB ? `${(bytes / (1024 * MiB)).toFixed(1)} GB` : `${Math.round(bytes / MiB)} MB`;
}
