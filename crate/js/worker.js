// Runs a Pipeline inside a Web Worker so that a page never freezes while it generates.
//
//   const worker = new Worker(new URL("webdiffusion/worker.js", import.meta.url), { type: "module" });
//   worker.postMessage({ type: "load", url });            // → {type:"progress"}…, {type:"loaded", info}
//   worker.postMessage({ type: "generate", options });    // → {type:"step"}…, {type:"result", result}
//   worker.postMessage({ type: "abort" });                // the running generations reject
//   worker.postMessage({ type: "abort", id });            // only the generate sent with this id
//                                                         // (all of them if none has it)
//   worker.postMessage({ type: "loadLora", source, name }); // → {type:"loraLoaded", lora: {id, name, hash}}
//   worker.postMessage({ type: "freeLora", lora: id });
//   worker.postMessage({ type: "loadEmbedding", source, token }); // → {type:"embeddingLoaded", embedding: {id, token, hash, vectors}}
//   worker.postMessage({ type: "freeEmbedding", embedding: id });
//   worker.postMessage({ type: "countTokens", prompt, embeddings, promptWeighting }); // → {type:"tokens", count}
//   worker.postMessage({ type: "loadControlNet", url }); // → {type:"controlnetLoaded", controlnet: {id, name}}
//   worker.postMessage({ type: "freeControlNet", controlnet: id });
//   // generate's options name them by id: loras: [{ lora: id, scale }], embeddings: [id],
//   // controlnets: [{ controlnet: id, image: ImageData, scale, start, end }]
//   worker.postMessage({ type: "canny", image, low, high }); // → {type:"canny", image: ImageData}
//   worker.postMessage({ type: "cached" });               // → {type:"cached", cached: CachedModel[]}
//   // failures arrive as {type:"error", message, name}; a request's `id`, if any, comes back
//   // in its reply (loaded, result, cached, deleted or error), and in a generate's steps. The
//   // messages are typed in the package's .d.ts as WorkerRequest and WorkerMessage.
//   // Generations may run at once; a load waits for the previous load, and the previous model
//   // is freed once the generations running on it have ended. After an internal failure (a
//   // panic) every request gets an error named InternalError: start a new Worker.
import init, { Pipeline, canny } from "./webdiffusion.js";
// Only a package built for the tests has `__panicForTesting`.
import * as hooks from "./webdiffusion.js";

let pipeline = null;
/** The LoRAs, ControlNets and embeddings loaded for `pipeline`, by id. */
const loras = new Map();
const controlnets = new Map();
const embeddings = new Map();
/** The generations running: { id, controller, pipeline, handles, done }. */
const running = new Set();
/** The last load requested (loads run one after another). */
let loading = Promise.resolve();

/** Frees `handles` (LoRAs, ControlNets, a pipeline) once no running generation uses them. */
async function freeWhenUnused(handles) {
  const users = [...running].filter((run) => handles.some((h) => h === run.pipeline || run.handles.includes(h)));
  await Promise.allSettled(users.map((run) => run.done));
  // After a panic the handles belong to the trapped instance: never free them.
  if (!panicError) for (const handle of handles) handle?.free();
}

/**
 * A LoRA, embedding or ControlNet loaded by `load(target, onProgress)` for the current model;
 * one that arrives after another model was loaded is freed, and `method` says so.
 */
async function loadFor(method, load) {
  if (!pipeline) throw new Error("no model loaded: send {type: 'load', url} first");
  const target = pipeline;
  const handle = await load(target, (p) => self.postMessage({ type: "progress", ...p }));
  if (pipeline !== target) {
    handle.free();
    throw new Error(`${method}: another model was loaded meanwhile; load it again`);
  }
  return handle;
}

/** The embeddings named by `ids`, looked up by id. */
function embeddingsById(ids) {
  return (ids ?? []).map((id) => {
    if (!embeddings.has(id)) throw new Error(`generate: embedding ${id} is not loaded in this worker`);
    return embeddings.get(id);
  });
}

/** `items` with the handle in `key` of each looked up in `loaded` by its id. */
function byId(items, key, loaded, what) {
  return (items ?? []).map((item) => {
    if (!loaded.has(item[key])) throw new Error(`generate: ${what} ${item[key]} is not loaded in this worker`);
    return { ...item, [key]: loaded.get(item[key]) };
  });
}
const ready = init();

/**
 * A panic traps the wasm instance: the promises it was driving never settle and its handles
 * are void. So every running request fails with the panic's message, and so does every later
 * one: this worker is done; start a new Worker (a fresh instance) to go on.
 */
let crashed;
const crash = new Promise((_, reject) => {
  crashed = reject;
});
crash.catch(() => {});
/** The error of the panic, once there was one. */
let panicError = null;
self.addEventListener("webdiffusion-panic", (event) => {
  const error = new Error(`webdiffusion failed internally (${event.detail}); start a new worker to go on`);
  error.name = "InternalError";
  panicError = error;
  crashed(error);
  // The handles belong to the trapped instance: drop them without freeing.
  pipeline = null;
  loras.clear();
  controlnets.clear();
  embeddings.clear();
  running.clear();
});

self.onmessage = async ({ data }) => {
  try {
    if (panicError) throw panicError;
    await ready;
    await Promise.race([handle(data), crash]);
  } catch (e) {
    // A panic in this request's own call surfaces as the trap (a RuntimeError): report the panic.
    const error = panicError ?? e;
    self.postMessage({ type: "error", message: String(error?.message ?? error), name: error?.name ?? "Error", id: data.id });
  }
};

async function handle(data) {
  if (data.type === "load") {
    loading = loading.catch(() => {}).then(async () => {
      const loaded = await Pipeline.load(data.url, {
        cache: data.cache ?? true,
        dtype: data.dtype,
        vae: data.vae,
        previewVae: data.previewVae,
        limits: data.limits,
        t5: data.t5,
        onProgress: (p) => self.postMessage({ type: "progress", ...p }),
      });
      // The previous model's GPU memory (and its LoRAs' and ControlNets') is released
      // once the generations running on it have ended.
      const old = [...loras.values(), ...controlnets.values(), ...embeddings.values(), pipeline];
      loras.clear();
      controlnets.clear();
      embeddings.clear();
      pipeline = loaded;
      freeWhenUnused(old);
    });
    await loading;
    self.postMessage({ type: "loaded", url: data.url, info: pipeline.info, id: data.id });
  } else if (data.type === "generate") {
    if (!pipeline) await loading.catch(() => {});
    if (!pipeline) throw new Error("no model loaded: send {type: 'load', url} first");
    const options = {
      ...data.options,
      loras: byId(data.options.loras, "lora", loras, "LoRA"),
      controlnets: byId(data.options.controlnets, "controlnet", controlnets, "ControlNet"),
      embeddings: embeddingsById(data.options.embeddings),
    };
    let ended;
    const run = {
      id: data.id,
      controller: new AbortController(),
      pipeline,
      handles: [...options.loras.map((l) => l.lora), ...options.controlnets.map((c) => c.controlnet), ...options.embeddings],
      done: new Promise((resolve) => {
        ended = resolve;
      }),
    };
    running.add(run);
    try {
      const result = await run.pipeline.generate({
        ...options,
        signal: run.controller.signal,
        onStep: (step, total, latents, preview, shape) => self.postMessage(
          { type: "step", step, total, latents, preview, shape, id: data.id },
          preview ? [latents.buffer, preview.pixels.buffer] : [latents.buffer],
        ),
      });
      self.postMessage({ type: "result", result, id: data.id }, [result.pixels.buffer, result.latents.buffer]);
    } finally {
      running.delete(run);
      ended();
    }
  } else if (data.type === "loadLora") {
    const lora = await loadFor("loadLora", (target, onProgress) => target.loadLora(data.source, { name: data.name, onProgress }));
    loras.set(lora.id, lora);
    self.postMessage({ type: "loraLoaded", lora: { id: lora.id, name: lora.name, hash: lora.hash }, id: data.id });
  } else if (data.type === "freeLora") {
    const lora = loras.get(data.lora);
    loras.delete(data.lora);
    if (lora) freeWhenUnused([lora]);
  } else if (data.type === "loadEmbedding") {
    const embedding = await loadFor("loadEmbedding", (target, onProgress) => target.loadEmbedding(data.source, { token: data.token, onProgress }));
    embeddings.set(embedding.id, embedding);
    const { id, token, hash, vectors } = embedding;
    self.postMessage({ type: "embeddingLoaded", embedding: { id, token, hash, vectors }, id: data.id });
  } else if (data.type === "freeEmbedding") {
    const embedding = embeddings.get(data.embedding);
    embeddings.delete(data.embedding);
    if (embedding) freeWhenUnused([embedding]);
  } else if (data.type === "countTokens") {
    if (!pipeline) throw new Error("no model loaded: send {type: 'load', url} first");
    const count = pipeline.countTokens(data.prompt, {
      embeddings: embeddingsById(data.embeddings),
      promptWeighting: data.promptWeighting,
    });
    self.postMessage({ type: "tokens", count, id: data.id });
  } else if (data.type === "loadControlNet") {
    const controlnet = await loadFor("loadControlNet", (target, onProgress) => target.loadControlNet(data.url, { onProgress }));
    controlnets.set(controlnet.id, controlnet);
    self.postMessage({ type: "controlnetLoaded", controlnet: { id: controlnet.id, name: controlnet.name }, id: data.id });
  } else if (data.type === "freeControlNet") {
    const controlnet = controlnets.get(data.controlnet);
    controlnets.delete(data.controlnet);
    if (controlnet) freeWhenUnused([controlnet]);
  } else if (data.type === "canny") {
    self.postMessage({ type: "canny", image: canny(data.image, data.low, data.high), id: data.id });
  } else if (data.type === "abort") {
    // The generate sent with this id, else all of them.
    const chosen = [...running].filter((run) => data.id !== undefined && run.id === data.id);
    for (const run of chosen.length > 0 ? chosen : running) run.controller.abort();
  } else if (data.type === "cached") {
    self.postMessage({ type: "cached", cached: await Pipeline.cachedModels(), id: data.id });
  } else if (data.type === "deleteCached") {
    await Pipeline.deleteCached(data.url);
    self.postMessage({ type: "deleted", url: data.url, id: data.id });
  } else if (data.type === "__panicForTesting" && hooks.__panicForTesting) {
    // Not part of the protocol: lets the tests check the recovery from a real panic.
    hooks.__panicForTesting();
  } else {
    const error = new Error(`unknown message type ${JSON.stringify(data?.type)}`);
    error.name = "NotSupportedError";
    throw error;
  }
}
