import { describe, expect, it } from "vitest";
import { explain, isUnsupported } from "../src/errors";

const error = (message: string, name = "Error") => ({ name, message });

describe("errors people can act on", () => {
  it("a cancelled run", () => {
    expect(explain(error("generation aborted", "AbortError"))).toEqual({ title: "Cancelled.", advice: "" });
  });
  it("a full storage, naming the largest things to delete", () => {
    const e = error("browser storage quota exceeded while caching https://h/unet.safetensors; free space (Pipeline.deleteCached)");
    const r = explain(e, { stored: [{ name: "SD-Turbo", bytes: 2.6 * 1024 ** 3 }, { name: "the history", bytes: 5e6 }, { name: "SD 1.5", bytes: 2.1 * 1024 ** 3 }] });
    expect(r.title).toBe("The browser's storage is full.");
    expect(r.advice).toBe("Delete something under Storage: the largest are SD-Turbo (2.6 GB) and SD 1.5 (2.1 GB).");
    expect(explain(error("x", "QuotaExceededError")).advice).toMatch(/Delete models or old images/);
  });
  it("a wrong model URL: what each marker file answered, with the URL", () => {
    const base = "http://127.0.0.1:5173/models/nope";
    const r = explain(error(`${base}: neither a pack nor a diffusers model folder: ${base}/manifest.json: answered with an HTML page (HTTP 200, text/html); ${base}/model_index.json: not found (HTTP 404). The URL must point at a folder holding manifest.json (a pack) or model_index.json (a diffusers model)`));
    expect(r.title).toBe(`No model found at ${base}.`);
    expect(r.advice).toMatch(/resolve\/main/);
    expect(r.advice).toContain(`What the server sent: ${base}/manifest.json: answered with an HTML page (HTTP 200, text/html); ${base}/model_index.json: not found (HTTP 404).`);
  });
  it("a missing file (HTTP 404), with the URL", () => {
    const r = explain(error("unet's weights are missing: http://h/m/unet/diffusion_pytorch_model.safetensors: not found (HTTP 404)"));
    expect(r.title).toBe("Nothing found at http://h/m/unet/diffusion_pytorch_model.safetensors.");
  });
  it("a web page where a file should be (a single-page-app fallback)", () => {
    const r = explain(error("http://h/m/vae/config.json: answered with an HTML page (HTTP 200, text/html); a diffusers model folder needs it"));
    expect(r.title).toBe("Nothing found at http://h/m/vae/config.json: the server sent a web page instead.");
    expect(r.advice).toMatch(/single-page-app fallback/);
  });
  it("a server that refuses other sites (CORS) or is offline", () => {
    const r = explain(error("download failed for https://example.com/m/model_index.json: Failed to fetch (offline, or the URL is unreachable)"));
    expect(r.title).toBe("Could not download https://example.com/m/model_index.json.");
    expect(r.advice).toMatch(/CORS/);
  });
  it("a gated model", () => {
    expect(explain(error("download failed for https://huggingface.co/x/y/resolve/main/unet/a.safetensors: HTTP 401")).title).toMatch(/refused access/);
  });
  it("out of GPU memory: smaller size or precision", () => {
    const r = explain(error("Out of memory: failed to allocate a buffer of 1073741824 bytes"));
    expect(r.title).toBe("The GPU ran out of memory.");
    expect(r.advice).toMatch(/smaller size.*f16.*q4/);
  });
  it("never a stack trace", () => {
    const r = explain(error("RuntimeError: unreachable\n    at wasm://wasm/0x1f2:1:2\n    at Pipeline.generate (webdiffusion.js:12:3)"));
    expect(r.title).toBe("unreachable");
  });
  it("knows an engine that lacks a request", () => {
    expect(isUnsupported(error("x", "NotSupportedError"))).toBe(true);
    expect(isUnsupported(error("unknown request type: canny"))).toBe(true);
    expect(isUnsupported(error("no model loaded"))).toBe(false);
  });
});
