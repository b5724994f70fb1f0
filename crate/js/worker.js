// Runs a Pipeline inside a Web Worker so that a page never freezes while it generates.
//
//   const worker = new Worker(new URL("webdiffusion/worker.js", import.meta.url), { type: "module" });
//   worker.postMessage({ type: "load", url });            // → {type:"progress"}…, {type:"loaded"}
//   worker.postMessage({ type: "generate", options });    // → {type:"step"}…, {type:"result", result}
//   worker.postMessage({ type: "abort" });                // the running generation rejects
//   // failures arrive as {type:"error", message, name}; a request's `id`, if any, comes back
//   // in its reply (loaded, result, cached, deleted or error)
import init, { Pipeline } from "./webdiffusion.js";

let pipeline = null;
let controller = null;
const ready = init();

self.onmessage = async ({ data }) => {
  try {
    await ready;
    if (data.type === "load") {
      pipeline = await Pipeline.load(data.url, {
        cache: data.cache ?? true,
        onProgress: (p) => self.postMessage({ type: "progress", ...p }),
      });
      self.postMessage({ type: "loaded", url: data.url, id: data.id });
    } else if (data.type === "generate") {
      if (!pipeline) throw new Error("no model loaded: send {type: 'load', url} first");
      controller = new AbortController();
      const result = await pipeline.generate({
        ...data.options,
        signal: controller.signal,
        onStep: (step, total, latents) => self.postMessage({ type: "step", step, total, latents }, [latents.buffer]),
      });
      self.postMessage({ type: "result", result, id: data.id }, [result.pixels.buffer, result.latents.buffer]);
    } else if (data.type === "abort") {
      controller?.abort();
    } else if (data.type === "cached") {
      self.postMessage({ type: "cached", cached: await Pipeline.cached(), id: data.id });
    } else if (data.type === "deleteCached") {
      await Pipeline.deleteCached(data.url);
      self.postMessage({ type: "deleted", url: data.url, id: data.id });
    }
  } catch (e) {
    self.postMessage({ type: "error", message: String(e?.message ?? e), name: e?.name ?? "Error", id: data.id });
  }
};
