// The models the picker offers. Sizes come from the repositories' files (SD 1.5 and SD 2.1
// parameter counts: tests/fixtures/configs/param_counts.json); the engine downloads a
// folder's fp16 weight files where the repository has them.
import type { ModelShape } from "./memory";

export interface Preset {
  /** Short, file-name-like: what PNG parameters call the model ("Model: sd15"). */
  id: string;
  name: string;
  /** A diffusers folder or a pack. */
  url: string;
  /** Bytes the engine downloads from `url`. */
  download: number;
  /** What `download` consists of, for the picker. */
  files: string;
  /** A q4 pack of the same model (`webdiffusion convert --quant q4`), where one is hosted. */
  q4?: { url: string; download: number };
  shape: ModelShape;
  /** Defaults the form shows and sends when left empty; `sizes`: the [width, height] the
   *  model was trained on, offered in the form (SDXL's aspect-ratio buckets). */
  defaults: { steps: number; guidance: number; size: number; sizes?: [number, number][] };
  /** Tiny Autoencoder for live previews (diffusers `AutoencoderTiny` folder). */
  previewVae?: string;
  /** SD3: `false` loads the model without its T5 text encoder (not downloaded). */
  t5?: boolean;
  description: string;
  /** Random weights: makes coloured noise, for trying the app out offline. */
  test?: boolean;
}

const M = 1e6;
const HUB = "https://huggingface.co";
/** TAESD decodes SD 1.x and 2.x latents (they share the VAE's latent space). */
export const TAESD = `${HUB}/madebyollin/taesd/resolve/main`;
/** TAESDXL decodes SDXL's. */
export const TAESDXL = `${HUB}/madebyollin/taesdxl/resolve/main`;
/** TAESD3 decodes SD3's 16-channel latents. */
export const TAESD3 = `${HUB}/madebyollin/taesd3/resolve/main`;

/** SD 1.5's networks (SD 1.5, LCM Dreamshaper): CLIP ViT-L/14 text encoder, 49408×768 tokens. */
const SD15: ModelShape = {
  unet: 859.52 * M, textEncoder: 123.06 * M, vae: 83.65 * M,
  tokenEmbedding: 49408 * 768, largestWeight: 49408 * 768,
  // The UNet's widest convolution: 2560 → 1280 channels, 3×3 (118 MB in f32).
  largestLayer: 1280 * 2560 * 9,
  vaeFullResChannels: 256,
};
/** SD 2.1's (SD-Turbo): OpenCLIP ViT-H text encoder, 49408×1024 tokens. */
const SD21: ModelShape = {
  ...SD15, unet: 865.91 * M, textEncoder: 340.39 * M, tokenEmbedding: 49408 * 1024, largestWeight: 49408 * 1024,
};
/** SDXL's (base 1.0, Turbo): CLIP-L (123 M) + OpenCLIP bigG with its projection (695 M),
 *  a 2.57 B UNet, SD's VAE architecture run in f32 (its config says `force_upcast`). */
const SDXL: ModelShape = {
  unet: 2567.46 * M, textEncoder: (123.06 + 694.66) * M, vae: 83.65 * M,
  tokenEmbedding: 49408 * (768 + 1280), largestWeight: 49408 * 1280,
  // The UNet's widest convolution, as SD's: 2560 → 1280 channels, 3×3.
  largestLayer: 1280 * 2560 * 9,
  vaeFullResChannels: 256,
  vaeF32: true,
};
/** SD3.5 Medium's (tests/fixtures/configs/param_counts_sd35.json): a 2.24 B MMDiT, CLIP-L and
 *  bigG with projections (818 M), SD's VAE architecture with 16 latent channels in f32. Its
 *  transformer file also holds a 226 M-value position table, downloaded but computed
 *  instead of kept. Without T5, as loaded with `{ t5: false }`. */
const SD35M: ModelShape = {
  unet: 2243.17 * M, textEncoder: (123.65 + 694.66) * M, vae: 83.82 * M,
  tokenEmbedding: 49408 * (768 + 1280), largestWeight: 49408 * 1280,
  // The dual-attention blocks' AdaLN: 1536 → 9 × 1536.
  largestLayer: 1536 * 1536 * 9,
  vaeFullResChannels: 256,
  vaeF32: true,
};
/** With its T5-XXL encoder (4.76 B; 32128 × 4096 tokens; the widest layer 4096 → 10240). */
const SD35M_T5: ModelShape = {
  ...SD35M, t5: 4762.31 * M, tokenEmbedding: SD35M.tokenEmbedding + 32128 * 4096, largestLayer: 10240 * 4096,
};
/** The bytes of SD3.5 Medium's files (16-bit; the transformer's with its position table). */
const sd35mFiles = (s: ModelShape) => (s.unet + 226.49 * M + s.textEncoder + (s.t5 ?? 0) + s.vae) * 2 + 3 * M;

/** SDXL's aspect-ratio buckets near one megapixel, as [width, height]. */
const SDXL_SIZES: [number, number][] = [
  [1024, 1024], [1152, 896], [896, 1152], [1216, 832], [832, 1216], [1344, 768], [768, 1344], [1536, 640], [640, 1536],
];
/** tests/fixtures/sd1-tiny: widths 16/32, a 32-wide text encoder, a ×2 VAE. */
const TINY: ModelShape = {
  unet: 0.57 * M, textEncoder: 1.61 * M, vae: 0.17 * M,
  tokenEmbedding: 49408 * 32, largestWeight: 49408 * 32, largestLayer: 64 * 64 * 9, vaeFullResChannels: 32,
};

/** fp16 weight files of a folder: 2 bytes per parameter (tokenizer and configs: ~2 MB). */
const fp16Files = (s: ModelShape) => (s.unet + s.textEncoder + s.vae) * 2 + 2 * M;

/** The presets, the tiny test model first; `base` is the app's URL (it serves the tiny one). */
export function presets(base: string): Preset[] {
  return [
    {
      id: "sd1-tiny",
      name: "Tiny test model",
      url: new URL("models/sd1-tiny", base).href,
      download: 7.7 * M,
      files: "served with this app",
      shape: TINY,
      // Few steps: it only makes noise, and on a software GPU each step takes seconds.
      defaults: { steps: 4, guidance: 7.5, size: 32 },
      previewVae: new URL("models/taesd-tiny", base).href,
      description: "Makes coloured noise, not pictures: its weights are random. 32×32, for trying the app out offline.",
      test: true,
    },
    {
      id: "stable-diffusion-v1-5",
      name: "Stable Diffusion 1.5",
      url: `${HUB}/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main`,
      download: fp16Files(SD15),
      files: "fp16 files",
      shape: SD15,
      defaults: { steps: 20, guidance: 7.5, size: 512 },
      previewVae: TAESD,
      description: "The classic: 512×512, works with most LoRAs and ControlNets.",
    },
    {
      id: "sd-turbo",
      name: "SD-Turbo",
      url: `${HUB}/stabilityai/sd-turbo/resolve/main`,
      download: fp16Files(SD21),
      files: "fp16 files",
      shape: SD21,
      defaults: { steps: 1, guidance: 0, size: 512 },
      previewVae: TAESD,
      description: "One step, no guidance: an image in seconds. SD 2.1 based.",
    },
    {
      id: "lcm-dreamshaper-v7",
      name: "LCM Dreamshaper v7",
      url: `${HUB}/SimianLuo/LCM_Dreamshaper_v7/resolve/main`,
      // The repository has float32 files only.
      download: (SD15.unet + SD15.textEncoder + SD15.vae) * 4 + 2 * M,
      files: "float32 files",
      shape: SD15,
      defaults: { steps: 4, guidance: 8, size: 768 },
      previewVae: TAESD,
      description: "Four steps at 768×768, SD 1.5 based.",
    },
    {
      id: "sdxl-turbo",
      name: "SDXL-Turbo",
      url: `${HUB}/stabilityai/sdxl-turbo/resolve/main`,
      download: fp16Files(SDXL),
      files: "fp16 files",
      shape: SDXL,
      defaults: { steps: 1, guidance: 0, size: 512 },
      previewVae: TAESDXL,
      description: "One step, no guidance, 512×512: SDXL's quality at SD-Turbo's speed. Needs a large GPU.",
    },
    {
      id: "stable-diffusion-xl-base-1.0",
      name: "SDXL 1.0",
      url: `${HUB}/stabilityai/stable-diffusion-xl-base-1.0/resolve/main`,
      download: fp16Files(SDXL),
      files: "fp16 files",
      shape: SDXL,
      defaults: { steps: 25, guidance: 6, size: 1024, sizes: SDXL_SIZES },
      previewVae: TAESDXL,
      description: "1024×1024 and SDXL's wide and tall sizes; most shared LoRAs are for it. Needs a large GPU.",
    },
    {
      id: "sd3.5-medium",
      name: "SD3.5 Medium",
      url: `${HUB}/stabilityai/stable-diffusion-3.5-medium/resolve/main`,
      download: sd35mFiles(SD35M_T5),
      files: "16-bit files with T5",
      shape: SD35M_T5,
      defaults: { steps: 40, guidance: 4.5, size: 1024, sizes: SDXL_SIZES },
      previewVae: TAESD3,
      description: "A diffusion transformer (MMDiT) with flow matching; reads long, detailed prompts through T5. " +
        "Very large: a 16 GB download. The repository is gated: if it is refused, host a pack (webdiffusion convert) and use its URL.",
    },
    {
      id: "sd3.5-medium-no-t5",
      name: "SD3.5 Medium without T5",
      url: `${HUB}/stabilityai/stable-diffusion-3.5-medium/resolve/main`,
      download: sd35mFiles(SD35M),
      files: "16-bit files, T5 left out",
      shape: SD35M,
      t5: false,
      defaults: { steps: 40, guidance: 4.5, size: 1024, sizes: SDXL_SIZES },
      previewVae: TAESD3,
      description: "SD3.5 Medium with zeros in place of T5, as diffusers without it: 10 GB less to download and hold, " +
        "shorter prompts understood less well. Gated repository, as above.",
    },
  ];
}

/** ControlNets in diffusers layout, for SD 1.5 and for SDXL (a ControlNet of the other family
 *  is refused by the engine, naming both). */
export const CONTROLNETS = [
  { name: "Canny edges (SD 1.5)", url: `${HUB}/lllyasviel/control_v11p_sd15_canny/resolve/main`, module: "canny" },
  { name: "Depth (SD 1.5)", url: `${HUB}/lllyasviel/control_v11f1p_sd15_depth/resolve/main`, module: "none" },
  { name: "OpenPose (SD 1.5)", url: `${HUB}/lllyasviel/control_v11p_sd15_openpose/resolve/main`, module: "none" },
  { name: "Canny edges (SDXL)", url: `${HUB}/diffusers/controlnet-canny-sdxl-1.0/resolve/main`, module: "canny" },
  { name: "Depth (SDXL)", url: `${HUB}/diffusers/controlnet-depth-sdxl-1.0/resolve/main`, module: "none" },
];

/** A short name for a model URL: the hub repository's name, else the last path part. */
export function modelName(url: string): string {
  const parts = url.replace(/\/+$/, "").split("/");
  const hub = parts.indexOf("resolve");
  return (hub > 1 ? parts[hub - 1] : parts[parts.length - 1]) || url;
}
