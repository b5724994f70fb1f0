// The package's Web Worker, as promises: each request gets an id and resolves with the reply
// that carries it back; download progress and steps go to listeners. The model never runs
// on the page's thread, so the page stays responsive while it generates.
import type { CachedModel, GenerateOptions, LoadProgress, LoadRequest, Message, ModelInfo, Request, StepMessage, WorkerEmbedding, WorkerLora } from "./protocol";
import type { GenerateResult, TokenCount } from "webdiffusion";

type Reply<T extends Message["type"]> = Extract<Message, { type: T }>;

export class Engine {
  onProgress: (p: LoadProgress) => void = () => {};
  onStep: (s: StepMessage) => void = () => {};
  private readonly worker: Worker;
  private readonly pending = new Map<number, { resolve: (m: Message) => void; reject: (e: Error) => void }>();
  private nextId = 1;

  constructor() {
    this.worker = new Worker(new URL("../node_modules/webdiffusion/worker.js", import.meta.url), { type: "module" });
    this.worker.onmessage = ({ data }: MessageEvent<Message>) => this.receive(data);
    // The worker script itself failed (e.g. the wasm file is missing): fail everything waiting.
    this.worker.onerror = (event) => {
      const error = named(`the engine failed to start: ${event.message || "its script did not load"}`, "EngineError");
      for (const { reject } of this.pending.values()) reject(error);
      this.pending.clear();
    };
  }

  /** Loads a model; resolves with what it is (family, latent channels, defaults). */
  async load(request: Omit<LoadRequest, "type" | "id">): Promise<ModelInfo> {
    return (await this.request({ type: "load", ...request }, "loaded")).info;
  }

  async generate(options: GenerateOptions): Promise<GenerateResult> {
    return (await this.request({ type: "generate", options }, "result")).result;
  }

  /** Stops the running generation, which then rejects with an AbortError. */
  abort() {
    this.worker.postMessage({ type: "abort" } satisfies Request);
  }

  async loadLora(source: string | Uint8Array<ArrayBuffer>, name?: string): Promise<WorkerLora> {
    return (await this.request({ type: "loadLora", source, name }, "loraLoaded")).lora;
  }

  freeLora(lora: number) {
    this.worker.postMessage({ type: "freeLora", lora } satisfies Request);
  }

  async loadEmbedding(source: string | Uint8Array<ArrayBuffer>, token?: string): Promise<WorkerEmbedding> {
    return (await this.request({ type: "loadEmbedding", source, token }, "embeddingLoaded")).embedding;
  }

  freeEmbedding(embedding: number) {
    this.worker.postMessage({ type: "freeEmbedding", embedding } satisfies Request);
  }

  /** The tokens in each chunk of `prompt`, as `generate` would read it. */
  async countTokens(prompt: string, embeddings: number[], promptWeighting: boolean): Promise<TokenCount> {
    return (await this.request({ type: "countTokens", prompt, embeddings, promptWeighting }, "tokens")).count;
  }

  async loadControlNet(url: string): Promise<{ id: number; name: string }> {
    return (await this.request({ type: "loadControlNet", url }, "controlnetLoaded")).controlnet;
  }

  freeControlNet(controlnet: number) {
    this.worker.postMessage({ type: "freeControlNet", controlnet } satisfies Request);
  }

  /** Canny edges (white on black), computed as OpenCV does. `timeout` in ms, for probing. */
  async canny(image: ImageData, low: number, high: number, timeout?: number): Promise<ImageData> {
    return (await this.request({ type: "canny", image, low, high }, "canny", timeout)).image;
  }

  async cached(): Promise<CachedModel[]> {
    return (await this.request({ type: "cached" }, "cached")).cached;
  }

  async deleteCached(url: string): Promise<void> {
    await this.request({ type: "deleteCached", url }, "deleted");
  }

  /**
   * Sends `message` and resolves with the reply of type `expect`. An engine that does not
   * know a request type may never answer it; `timeout` (ms) turns that into an error named
   * "NotSupportedError" for requests that should answer at once.
   */
  private request<T extends Message["type"]>(message: Request, expect: T, timeout?: number): Promise<Reply<T>> {
    const id = this.nextId++;
    return new Promise<Reply<T>>((resolve, reject) => {
      const timer = timeout === undefined ? 0 : setTimeout(() => {
        this.pending.delete(id);
        reject(named(`the engine did not answer a “${message.type}” request`, "NotSupportedError"));
      }, timeout);
      this.pending.set(id, {
        resolve: (reply) => {
          clearTimeout(timer);
          if (reply.type === expect) resolve(reply as Reply<T>);
          else reject(named(`unexpected reply “${reply.type}” to “${message.type}”`, "EngineError"));
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      // LoRA and embedding bytes move to the worker rather than being copied.
      const bytes = (message.type === "loadLora" || message.type === "loadEmbedding") && message.source instanceof Uint8Array;
      const transfer = bytes ? [(message.source as Uint8Array).buffer] : [];
      this.worker.postMessage({ ...message, id }, transfer);
    });
  }

  private receive(data: Message) {
    if (data.type === "progress") return this.onProgress(data);
    if (data.type === "step") return this.onStep(data);
    const waiting = data.id === undefined ? undefined : this.pending.get(data.id);
    if (!waiting || data.id === undefined) return;
    this.pending.delete(data.id);
    if (data.type === "error") waiting.reject(named(data.message, data.name));
    else waiting.resolve(data);
  }
}

function named(message: string, name: string): Error {
  const e = new Error(message);
  e.name = name;
  return e;
}
