// Runs a Pipeline inside a Web Worker so that a page never freezes while it generates.
//
//   const worker = new Worker(new URL("webdiffusion/worker.js", import.meta.url), { type: "module" });
//   worker.postMessage({ type: "load", url });            // → {type:"progress"}…, {type:"loaded"}
//   worker.postMessage({ type: "generate", options });    // → {type:"step"}…, {type:"result", result}
//   worker.postMessage({ type: "abort" });                // the running generation rejects
//   worker.postMessage({ type: "loadLora", source, name }); // → {type:"loraLoaded", lora: {id, name, hash}}
//   worker.postMessage({ type: "freeLora", lora: id });
//   // generate's options name LoRAs by id: loras: [{ lora: id, scale }]
//   worker.postMessage({ type: "cached" });               // → {type:"cached", cached: CachedModel[]}
//   // failures arrive as {type:"error", message, name}; a request's `id`, if any, comes back
//   // in its reply (loaded, result, cached, deleted or error). The messages are typed in the
//   // package's .d.ts as WorkerRequest and WorkerMessage.
import init, { Pipeline } from "./webdiffusion.js";

let pipeline = null;
let controller = null;
/** The LoRAs loaded for `pipeline`, by id. */
const loras = new Map();
const ready = init();

self.onmessage = async ({ data }) => {
  try {
    await ready;
    if (data.type === "load") {
      const loaded = await Pipeline.load(data.url, {
        cache: data.cache ?? true,
        onProgress: (p) => self.postMessage({ type: "progress", ...p }),
      });
      // Release the previous model's GPU memory (and its LoRAs) before keeping the new one.
      for (const lora of loras.values()) lora.free();
      loras.clear();
      pipeline?.free();
      pipeline = loaded;
      self.postMessage({ type: "loaded", url: data.url, id: data.id });
    } else if (data.type === "generate") {
      if (!pipeline) throw new Error("no model loaded: send {type: 'load', url} first");
      controller = new AbortController();
      const withLoras = (data.options.loras ?? []).map(({ lora, scale }) => {
        if (!loras.has(lora)) throw new Error(`generate: LoRA ${lora} is not loaded in this worker`);
        return { lora: loras.get(lora), scale };
      });
      const result = await pipeline.generate({
        ...data.options,
        loras: withLoras,
        signal: controller.signal,
        onStep: (step, total, latents) => self.postMessage({ type: "step", step, total, latents }, [latents.buffer]),
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
