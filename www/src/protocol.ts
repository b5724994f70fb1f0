// The worker's messages as this app uses them: the package's types (webdiffusion.d.ts) plus
// what the engine is gaining (ControlNet, Canny, init images and masks, precision and preview
// decoders on load), spelled exactly as the engine will take them. Where the package's
// types already have a message, the union simply holds it twice.
import type { CachedModel, LoadProgress, WorkerGenerateOptions, WorkerLora, WorkerMessage, WorkerRequest } from "webdiffusion";

export type { CachedModel, LoadProgress, WorkerLora };

export interface ControlNetInput {
  controlnet: number;
  image: ImageData;
  scale?: number;
  start?: number;
  end?: number;
}

export type GenerateOptions = WorkerGenerateOptions & {
  controlnets?: ControlNetInput[];
  initImage?: ImageData;
  strength?: number;
  mask?: ImageData;
  maskBlur?: number;
};

export type LoadRequest = {
  type: "load";
  url: string;
  cache?: boolean;
  dtype?: "f32" | "f16";
  vae?: string;
  previewVae?: string;
  id?: number;
};

export type Request =
  | Exclude<WorkerRequest, { type: "load" } | { type: "generate" }>
  | LoadRequest
  | { type: "generate"; options: GenerateOptions; id?: number }
  | { type: "loadControlNet"; url: string; id?: number }
  | { type: "freeControlNet"; controlnet: number; id?: number }
  | { type: "canny"; image: ImageData; low: number; high: number; id?: number };

/** A preview decoded by the preview VAE (TAESD), RGBA. */
export interface Preview {
  width: number;
  height: number;
  pixels: Uint8ClampedArray<ArrayBuffer>;
}

export type StepMessage = { type: "step"; step: number; total: number; latents: Float32Array<ArrayBuffer>; preview?: Preview };

export type Message =
  | Exclude<WorkerMessage, { type: "step" }>
  | StepMessage
  | { type: "controlnetLoaded"; controlnet: { id: number; name: string }; id?: number }
  | { type: "canny"; image: ImageData; id?: number };
