// The worker's messages as this app uses them: the package's own types (webdiffusion.d.ts),
// under the names the app's modules use.
import type { WorkerGenerateOptions, WorkerMessage, WorkerRequest } from "webdiffusion";

export type { CachedModel, LoadProgress, ModelInfo, WorkerEmbedding, WorkerLora } from "webdiffusion";

/** A ControlNet in a generation, named by the id the worker gave it. */
export type ControlNetInput = NonNullable<WorkerGenerateOptions["controlnets"]>[number];
export type GenerateOptions = WorkerGenerateOptions;
export type LoadRequest = Extract<WorkerRequest, { type: "load" }>;
export type Request = WorkerRequest;
export type StepMessage = Extract<WorkerMessage, { type: "step" }>;
export type Message = WorkerMessage;
