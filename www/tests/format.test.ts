import { describe, expect, it } from "vitest";
import { downloadStatus, formatBytes, formatDuration, plural, stepStatus } from "../src/format";
import { latentsToRgba } from "../src/preview";
import { modelName, presets } from "../src/presets";

describe("progress text", () => {
  it("download: size, speed and time left", () => {
    expect(formatBytes(3 * 1024 * 1024)).toBe("3.0 MB");
    expect(formatBytes(2.5 * 1024 ** 3)).toBe("2.5 GB");
    expect(downloadStatus(10 * 1024 * 1024, 40 * 1024 * 1024, 5)).toBe("10.0 MB of 40.0 MB · 2.0 MB/s · 15 s left");
    expect(downloadStatus(1024 * 1024, null, 0)).toBe("1.0 MB");
  });
  it("steps: it/s, or s/it when slow, and time left", () => {
    expect(stepStatus(1, 20, 0)).toBe("Step 1 of 20");
    expect(stepStatus(5, 20, 2)).toBe("Step 5 of 20 · 2.00 it/s · 8 s left");
    expect(stepStatus(5, 20, 0.25)).toBe("Step 5 of 20 · 4.0 s/it · 1 min 0 s left");
    expect(formatDuration(Number.NaN)).toBe("–");
    expect([plural(1, "step"), plural(4, "step")]).toEqual(["1 step", "4 steps"]);
  });
});

describe("latent preview", () => {
  it("maps zero latents to mid grey and is opaque", () => {
    const rgba = latentsToRgba(new Float32Array(4 * 2 * 3), [1, 4, 2, 3]);
    expect(rgba.length).toBe(2 * 3 * 4);
    expect(Array.from(rgba.subarray(0, 4))).toEqual([128, 128, 128, 255]);
  });
  it("reads channel k of pixel i at k·h·w + i", () => {
    const latents = new Float32Array(4);
    latents[0] = 1; // channel 0 only: r = 0.298, g = 0.207, b = 0.208
    expect(Array.from(latentsToRgba(latents, [1, 4, 1, 1]).subarray(0, 3))).toEqual([165, 154, 154]);
  });
  it("uses the engine's map for the model's family, with its bias", () => {
    const latents = new Float32Array(16);
    latents[15] = 1; // the last of 16 channels
    const factors = Array.from({ length: 16 }, (_, k) => (k === 15 ? [0.5, 0, -0.5] : [0, 0, 0]));
    const rgba = Array.from(latentsToRgba(latents, [1, 16, 1, 1], { factors, bias: [0, 0.5, 0] }));
    expect(rgba).toEqual([191, 191, 64, 255]);
  });
  it("lays latents out by their shape, whatever their channel count", () => {
    // 16 channels (SD3-like), 1×2: the first three channels are R, G and B.
    const latents = new Float32Array(16 * 2);
    latents[1] = 1; // channel 0, pixel 1
    latents[2 + 0] = -1; // channel 1, pixel 0
    const rgba = Array.from(latentsToRgba(latents, [1, 16, 1, 2]));
    expect(rgba).toEqual([128, 0, 128, 255, 255, 128, 128, 255]);
  });
});

describe("presets", () => {
  it("the tiny test model comes first, served by the app, and says it makes noise", () => {
    const [tiny, ...rest] = presets("https://example.com/app/");
    expect(tiny.url).toBe("https://example.com/app/models/sd1-tiny");
    expect(tiny.test).toBe(true);
    expect(tiny.description).toMatch(/noise/);
    expect(rest.map((p) => p.id)).toEqual(["stable-diffusion-v1-5", "sd-turbo", "lcm-dreamshaper-v7", "sdxl-turbo",
      "stable-diffusion-xl-base-1.0", "sd3.5-medium", "sd3.5-medium-no-t5"]);
  });
  it("SD3.5 Medium comes with and without T5: the same folder, T5 left out of the second's download", () => {
    const [withT5, without] = presets("http://x/").slice(6);
    expect(without.url).toBe(withT5.url);
    expect([withT5.t5, without.t5]).toEqual([undefined, false]);
    // T5-XXL: 4.76 G parameters in 16 bits.
    expect((withT5.download - without.download) / 1e9).toBeCloseTo(9.52, 2);
    expect(without.defaults).toEqual(withT5.defaults);
  });
  it("SDXL-Turbo runs one step without guidance at 512²; SDXL base offers its trained sizes at about 1 MP", () => {
    const [turbo, base] = presets("http://x/").slice(4);
    expect(turbo.defaults).toEqual({ steps: 1, guidance: 0, size: 512 });
    expect(base.defaults.size).toBe(1024);
    expect(base.defaults.guidance).toBeGreaterThanOrEqual(5);
    expect(base.defaults.guidance).toBeLessThanOrEqual(7);
    for (const [w, h] of base.defaults.sizes ?? []) {
      expect(w % 64 + h % 64).toBe(0);
      expect(Math.abs(w * h - 1024 * 1024) / (1024 * 1024)).toBeLessThan(0.07);
    }
    expect(base.defaults.sizes).toContainEqual([832, 1216]);
    // fp16 files: 3.47 G parameters.
    expect(base.download / 1024 ** 3).toBeCloseTo(6.46, 1);
  });
  it("SD 1.5's fp16 download is about 2 GB", () => {
    expect(presets("http://x/")[1].download / 1024 ** 3).toBeCloseTo(1.99, 1);
  });
  it("names models by their hub repository or last path part", () => {
    expect(modelName("https://huggingface.co/stabilityai/sd-turbo/resolve/main")).toBe("sd-turbo");
    expect(modelName("http://127.0.0.1:5173/models/sd1-tiny/")).toBe("sd1-tiny");
  });
});
