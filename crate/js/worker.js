// Runs a Pipeline inside a Web Worker so that a page never freezes while it generates.
//
//   const worker = new Worker(new URL("webdiffusion/worker.js", import.meta.url), { type: "module" });
//   worker.postMessage({ type: "load", url });            // → {type:"progress"}…, {type:"loaded"}
//   worker.postMessage({ type: "generate", options });    // → {type:"step"}…, {type:"result", result}
//   worker.postMessage({ type: "abort" });                // the running generation rejects
//   worker.postMessage({ type: "loadLora", source, name }); // → {type:"loraLoaded", lora: {id, name, hash}}
//   worker.postMessage({ type: "freeLora", lora: id });
//   worker.postMessage({ type: "loadControlNet", url }); // → {type:"controlnetLoaded", controlnet: {id, name}}
//   worker.postMessage({ type: "freeControlNet", controlnet: id });
//   // generate's options name them by id: loras: [{ lora: id, scale }],
//   // controlnets: [{ controlnet: id, image: ImageData, scale, start, end }]
//   worker.postMessage({ type: "canny", image, low, high }); // → {type:"canny", image: ImageData}
//   worker.postMessage({ type: "cached" });               // → {type:"cached", cached: CachedModel[]}
//   // failures arrive as {type:"error", message, name}; a request's `id`, if any, comes back
//   // in its reply (loaded, result, cached, deleted or error). The messages are typed in the
//   // package's .d.ts as WorkerRequest and WorkerMessage.
import init, { Pipeline, canny } from "./webdiffusion.js";

let pipeline = null;
let controller = null;
/** The LoRAs and ControlNets loaded for `pipeline`, by id. */
const loras = new Map();
const controlnets = new Map();

/** `items` with the handle in `key` of each looked up in `loaded` by its id. */
function byId(items, key, loaded, what) {
  return (items ?? []).map((item) => {
    if (!loaded.has(item[key])) throw new Error(`generate: ${what} ${item[key]} is not loaded in this worker`);
    return { ...item, [key]: loaded.get(item[key]) };
  });
}
const ready = init();

self.onmessage = async ({ data }) => {
  try {
    await ready;
    if (data.type === "load") {
      const loaded = await Pipeline.load(data.url, {
        cache: data.cache ?? true,
        dtype: data.dtype,
        vae: data.vae,
        previewVae: data.previewVae,
        limits: data.limits,
        onProgress: (p) => self.postMessage({ type: "progress", ...p }),
      });
      // Release the previous model's GPU memory (and its LoRAs and ControlNets) before
      // keeping the new one.
      for (const handles of [loras, controlnets]) {
        for (const handle of handles.values()) handle.free();
        handles.clear();
      }
      pipeline?.free();
      pipeline = loaded;
      self.postMessage({ type: "loaded", url: data.url, id: data.id });
    } else if (data.type === "generate") {
      if (!pipeline) throw new Error("no model loaded: send {type: 'load', url} first");
      controller = new AbortController();
      const result = await pipeline.generate({
        ...data.options,
        loras: byId(data.options.loras, "lora", loras, "LoRA"),
        controlnets: byId(data.options.controlnets, "controlnet", controlnets, "ControlNet"),
        signal: controller.signal,
        onStep: (step, total, latents, preview) => self.postMessage(
          { type: "step", step, total, latents, preview },
          preview ? [latents.buffer, preview.pixels.buffer] : [latents.buffer],
        ),
      });
      self.postMessage({ type: "result", result, id: data.id }, [result.pixels.buffer, result.latents.buffer]);
    } else if (data.type === "loadLora") {
      if (!pipeline) throw new Error("no model loaded: send {type: 'load', url} first");
      const lora = await pipeline.loadLora(data.source, {
        name: data.name,
        onProgress: (p) => self.postMessage({ type: "progress", ...p }),
      });
      loras.set(lora.id, lora);
      self.postMessage({ type: "loraLoaded", lora: { id: lora.id, name: lora.name, hash: lora.hash }, id: data.id });
    } else if (data.type === "freeLora") {
      loras.get(data.lora)?.free();
      loras.delete(data.lora);
    } else if (data.type === "loadControlNet") {
      if (!pipeline) throw new Error("no model loaded: send {type: 'load', url} first");
      const controlnet = await pipeline.loadControlNet(data.url, {
        onProgress: (p) => self.postMessage({ type: "progress", ...p }),
      });
      controlnets.set(controlnet.id, controlnet);
      self.postMessage({ type: "controlnetLoaded", controlnet: { id: controlnet.id, name: controlnet.name }, id: data.id });
    } else if (data.type === "freeControlNet") {
      controlnets.get(data.controlnet)?.free();
      controlnets.delete(data.controlnet);
    } else if (data.type === "canny") {
      self.postMessage({ type: "canny", image: canny(data.image, data.low, data.high), id: data.id });
    } else if (data.type === "abort") {
      controller?.abort();
    } else if (data.type === "cached") {
      self.postMessage({ type: "cached", cached: await Pipeline.cachedModels(), id: data.id });
    } else if (data.type === "deleteCached") {
      await Pipeline.deleteCached(data.url);
      self.postMessage({ type: "deleted", url: data.url, id: data.id });
    }
  } catch (e) {
    self.postMessage({ type: "error", message: String(e?.message ?? e), name: e?.name ?? "Error", id: data.id });
  }
};
