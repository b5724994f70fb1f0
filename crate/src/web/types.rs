//! The TypeScript declarations of the package's options, results and worker messages
//! (wasm-bindgen writes the classes' own).

use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** Download progress of one file, in bytes (`total` is null when the server does not say,
 *  e.g. for a gzip-encoded response). `notCached` says why the file is not being kept in
 *  IndexedDB (e.g. "storage full"); it still loads. */
export interface LoadProgress { loaded: number; total: number | null; file: string; notCached?: string }
/**
 * Dispatched on `globalThis` as `"webdiffusion-panic"` (a `CustomEvent` whose `detail` is the
 * message) when the engine fails internally. The instance is then trapped: the promises it
 * was running never settle and its handles are void. A fresh instance is a fresh import (a
 * new Worker, or a reload). The package's worker.js answers every running and later request
 * with an `InternalError`.
 */
export type PanicEvent = CustomEvent<string>;
export interface LoadOptions {
  onProgress?: (progress: LoadProgress) => void;
  /** Keep the files in IndexedDB (default true). */
  cache?: boolean;
  /** What the networks compute in: f16 (half the GPU memory; the default where the
   *  adapter offers `shader-f16`) or f32 (the default elsewhere; asking for f16 there is an
   *  error). */
  dtype?: "f32" | "f16";
  /** Another VAE to decode (and encode) with, instead of the model's: a folder (or pack)
   *  of an AutoencoderKL, or of an AutoencoderTiny (TAESD: much faster). */
  vae?: string;
  /** A preview decoder (TAESD, e.g. madebyollin/taesd): `onStep` then also receives an
   *  image of the current latents each step. */
  previewVae?: string;
  /** The WebGPU device's limits: the adapter's own (default), or WebGPU's defaults (128 MiB
   *  per storage binding, 256 MiB per buffer, as many GPUs and phones expose) to check that
   *  a model runs within them. Only the page's first load chooses. */
  limits?: "adapter" | "default";
  /** SD3: load the T5 text encoder when the model has one (default true). `false` skips
   *  its download (2–5 GB) and memory; its part of the text embeddings is then zeros, as
   *  diffusers does without it, which weakens long or detailed prompts. */
  t5?: boolean;
}
/** An image of the latents while they are denoised, decoded by the preview VAE. */
export interface Preview { width: number; height: number; pixels: Uint8ClampedArray<ArrayBuffer> }
export type SchedulerName = "ddim" | "euler" | "euler-a" | "dpmpp-2m" | "dpmpp-2m-karras"
  | "heun" | "pndm" | "unipc" | "lcm" | "ddpm" | "flow-euler";
/** A ControlNet in a generation. */
export interface ControlNetUse {
  controlnet: ControlNet;
  /** The control image, any size (resized to the output size); alpha is ignored. */
  image: ImageData;
  /** Conditioning scale (default 1). */
  scale?: number;
  /** The fraction of the steps during which it acts (default 0 to 1). */
  start?: number;
  end?: number;
}
export interface GenerateOptions {
  /** Read as AUTOMATIC1111 reads it (unless `promptWeighting` is false): `(word:1.3)`,
   *  `(word)` ×1.1, `[word]` ÷1.1, a backslash before a bracket for a literal one, `BREAK` to start a new
   *  chunk; past 75 tokens it goes on in chunks of 75 (at most 16, 1200 tokens). */
  prompt: string;
  /** What to steer away from. SDXL without one uses zero negative embeddings (diffusers'
   *  `force_zeros_for_empty_prompt`); `""` is encoded like a prompt. */
  negativePrompt?: string;
  /** `false`: read the prompts literally, brackets as text, cut at 75 tokens, as
   *  diffusers does (default true). */
  promptWeighting?: boolean;
  /** Textual-inversion embeddings loaded with this pipeline's `loadEmbedding`: the prompts
   *  name them by their `token` (SD 1.x/2.x and SDXL). */
  embeddings?: Embedding[];
  /** Default: 20 (4 for LCM, 28 for SD3). */
  steps?: number;
  /** Classifier-free guidance scale (default 7.5); 1 or less runs the UNet once per step. */
  guidance?: number;
  /** diffusers' `guidance_rescale` (default 0, off): rescales the guided prediction towards
   *  the conditional one's standard deviation (for v-prediction models trained with zero
   *  terminal SNR). */
  guidanceRescale?: number;
  /** DDIM's η in [0, 1] (default 0, deterministic). */
  eta?: number;
  /** Text encoder layers to skip from the end (default 0), as diffusers' `clip_skip`:
   *  A1111's "Clip skip: 2" is `clipSkip: 1`. */
  clipSkip?: number;
  /** SD3: the T5 tokens the prompt is read as (diffusers' `max_sequence_length`, default
   *  256, at most 512). */
  maxSequenceLength?: number;
  /** SD3: skip-layer guidance over these transformer layers (SD3.5 Medium: [7, 8, 9]),
   *  as diffusers' `skip_guidance_layers` (from 1% to 20% of the steps). */
  skipLayerGuidance?: number[];
  /** SD3: skip-layer guidance's scale (default 2.8). */
  skipLayerScale?: number;
  /** Default: the model's own scheduler (flow matching for SD3: "flow-euler"). */
  scheduler?: SchedulerName;
  /** SDXL's size conditioning, [height, width] in pixels (default: the output size): the
   *  size the model is told the original picture had. Ignored by SD 1.x/2.x. */
  originalSize?: [number, number];
  /** SDXL: the crop's top-left corner [top, left] (default [0, 0]). */
  cropTopLeft?: [number, number];
  /** SDXL: the target size [height, width] (default: the output size). */
  targetSize?: [number, number];
  /** Tiled VAE decoding and encoding (diffusers' `enable_vae_tiling`: overlapping tiles,
   *  blended): `true` for tiles of the VAE's `sample_size`, a number for tiles of that many
   *  pixels. Default (`false`): tiles only when the whole image would not fit the device's
   *  largest buffer (SDXL at 1024² under WebGPU's default limits). */
  vaeTiling?: boolean | number;
  /** Default: random (returned in the result). */
  seed?: number;
  /** Default: the model's own size; with an init image, its size. */
  width?: number;
  height?: number;
  /** The initial noise [1, C, height/8, width/8] (C = `info.latentChannels`: 4 for SD and
   *  SDXL, 16 for SD3), used as is, times the scheduler's initial sigma (with an inpainting
   *  mask at strength 1 too). */
  latents?: Float32Array;
  /** img2img and inpainting: the image to start from (alpha ignored). */
  initImage?: ImageData;
  /** How much to change the init image, in (0, 1] (default 0.8). */
  strength?: number;
  /** The noise added to the init image's latents (and blending the kept part back in when
   *  inpainting), [1, 4, h, w]; default: drawn from the seed. */
  noise?: Float32Array;
  /** Inpainting: white where to repaint (read as grayscale, alpha ignored), the init
   *  image's size. An inpainting model without an init image repaints everything. */
  mask?: ImageData;
  /** Inpainting: paste the init image back outside the mask blurred by this many pixels
   *  (default 0 = off). */
  maskBlur?: number;
  /** LoRAs loaded with this pipeline's `loadLora`, each at its scale (default 1; 0 or
   *  negative allowed). */
  loras?: { lora: Lora; scale?: number }[];
  /** ControlNets loaded with this pipeline's `loadControlNet`; their residuals add up. */
  controlnets?: ControlNetUse[];
  /** After each step, with the current latents (`shape`: [1, channels, h, w]), and with a
   *  preview image when a preview VAE was loaded. */
  onStep?: (step: number, total: number, latents: Float32Array<ArrayBuffer>, preview: Preview | undefined,
    shape: [number, number, number, number]) => void;
  signal?: AbortSignal;
}
/** What a loaded model is (`Pipeline.info`, and the worker's `loaded` message). */
export interface ModelInfo {
  /** The model family: "sd" (Stable Diffusion 1.x/2.x, Turbo, LCM, inpainting), "sdxl"
   *  (SDXL base, Turbo and fine-tunes) or "sd3" (SD3/SD3.5). */
  family: "sd" | "sdxl" | "sd3";
  /** Channels of the latents (`onStep`'s and the result's). */
  latentChannels: number;
  /** Pixels per latent along each side. */
  vaeScaleFactor: number;
  /** The size a generation without width/height makes (square). */
  defaultSize: number;
  /** Steps and guidance a generation without them runs. */
  defaultSteps: number;
  defaultGuidance: number;
  /** The model's own scheduler; null when it ships one the engine does not run (a
   *  generation must then name one). */
  scheduler: SchedulerName | null;
  /** Every scheduler `generate` takes. */
  schedulers: SchedulerName[];
  /** Whether the UNet is an inpainting model's (9 input channels). */
  inpainting: boolean;
  /** A linear map from latents (`onStep`'s) to RGB in [-1, 1] for a preview without a
   *  decoder: rgb[c] = bias[c] + Σₖ factors[k][c] · latents[k] (a row per latent channel). */
  previewRgb: { factors: number[][]; bias: number[] };
}
/** What ran, every default resolved (the model's own scheduler, LCM's 4 steps, …). */
export interface GenerateResult {
  width: number;
  height: number;
  /** RGBA, row-major, ready for `new ImageData(pixels, width, height)`. */
  pixels: Uint8ClampedArray<ArrayBuffer>;
  /** The final latents, before VAE decoding. */
  latents: Float32Array<ArrayBuffer>;
  seed: number;
  steps: number;
  scheduler: SchedulerName;
  guidance: number;
}
export interface LoraOptions {
  onProgress?: (progress: LoadProgress) => void;
  /** Keep a fetched file in IndexedDB (default true). */
  cache?: boolean;
  /** How the LoRA is named in parameters (default: the file name without extension). */
  name?: string;
}
export interface EmbeddingOptions {
  onProgress?: (progress: LoadProgress) => void;
  /** Keep a fetched file in IndexedDB (default true). */
  cache?: boolean;
  /** The word prompts name it by (default: the file's own key, or for AUTOMATIC1111's
   *  files, whose key is `emb_params` or `clip_l`/`clip_g`, the file name without
   *  extension; such a file given as bytes needs one). */
  token?: string;
}
/** `countTokens`' options: as `generate` reads the prompt. */
export interface CountOptions { embeddings?: Embedding[]; promptWeighting?: boolean }
/** The tokens in each chunk of 75 a prompt fills (a prompt holds at most `maxChunks`). */
export interface TokenCount { chunks: number[]; maxChunks: number }
export interface CachedFile { url: string; bytes: number | null; complete: boolean }
/** A cached model: a pack, a diffusers folder or a single file, with its files. */
export interface CachedModel { url: string; bytes: number; complete: boolean; files: CachedFile[] }

/** A LoRA loaded in the worker, named by its id in `generate`'s `loras`. */
export interface WorkerLora { id: number; name: string; hash: string }
/** A ControlNet loaded in the worker, named by its id in `generate`'s `controlnets`. */
export interface WorkerControlNet { id: number; name: string }
/** An embedding loaded in the worker, named by its id in `generate`'s `embeddings`. */
export interface WorkerEmbedding { id: number; token: string; hash: string; vectors: number }
/** `generate`'s options as the worker takes them: LoRAs, ControlNets and embeddings by id. */
export type WorkerGenerateOptions = Omit<GenerateOptions, "onStep" | "signal" | "loras" | "controlnets" | "embeddings"> & {
  loras?: { lora: number; scale?: number }[];
  embeddings?: number[];
  controlnets?: (Omit<ControlNetUse, "controlnet"> & { controlnet: number })[];
};
/** Messages to the package's `worker.js`; a request's `id` comes back in its reply. */
export type WorkerRequest =
  | { type: "load"; url: string; cache?: boolean; dtype?: "f32" | "f16"; vae?: string;
      previewVae?: string; limits?: "adapter" | "default"; t5?: boolean; id?: number }
  | { type: "generate"; options: WorkerGenerateOptions; id?: number }
  | { type: "loadLora"; source: string | Uint8Array; name?: string; id?: number }
  | { type: "freeLora"; lora: number; id?: number }
  | { type: "loadEmbedding"; source: string | Uint8Array; token?: string; id?: number }
  | { type: "freeEmbedding"; embedding: number; id?: number }
  | { type: "countTokens"; prompt: string; embeddings?: number[]; promptWeighting?: boolean; id?: number }
  | { type: "loadControlNet"; url: string; id?: number }
  | { type: "freeControlNet"; controlnet: number; id?: number }
  | { type: "canny"; image: ImageData; low: number; high: number; id?: number }
  | { type: "abort"; id?: number }
  | { type: "cached"; id?: number }
  | { type: "deleteCached"; url: string; id?: number };
/** Messages from `worker.js`. */
export type WorkerMessage =
  | ({ type: "progress" } & LoadProgress)
  | { type: "loaded"; url: string; info: ModelInfo; id?: number }
  | { type: "step"; step: number; total: number; latents: Float32Array<ArrayBuffer>; preview?: Preview;
      shape: [number, number, number, number]; id?: number }
  | { type: "result"; result: GenerateResult; id?: number }
  | { type: "loraLoaded"; lora: WorkerLora; id?: number }
  | { type: "embeddingLoaded"; embedding: WorkerEmbedding; id?: number }
  | { type: "tokens"; count: TokenCount; id?: number }
  | { type: "controlnetLoaded"; controlnet: WorkerControlNet; id?: number }
  | { type: "canny"; image: ImageData; id?: number }
  | { type: "cached"; cached: CachedModel[]; id?: number }
  | { type: "deleted"; url: string; id?: number }
  /** `name`: the error's (AbortError, InternalError after a panic: start a new Worker,
   *  NotSupportedError for an unknown message type, …). */
  | { type: "error"; message: string; name: string; id?: number };
"#;
