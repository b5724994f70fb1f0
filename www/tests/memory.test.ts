import { describe, expect, it } from "vitest";
import { activationBytes, choosePrecision, fitOn, gpuMemory, largestBuffer, memoryBudget, weightBytes, type GpuInfo } from "../src/memory";
import { presets } from "../src/presets";

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const [tiny, sd15, turbo, , , sdxl, sd35m, sd35mNoT5] = presets("http://localhost/").map((p) => p.shape);

const swiftshader: GpuInfo = { vendor: "google", architecture: "swiftshader", description: "", fallback: true, f16: false,
  maxBufferSize: GiB, maxStorageBufferBindingSize: GiB, deviceMemory: 8 };
const nvidia: GpuInfo = { vendor: "nvidia", architecture: "ampere", description: "", fallback: false, f16: true,
  maxBufferSize: 4 * GiB, maxStorageBufferBindingSize: 2 * GiB };
const intel: GpuInfo = { vendor: "intel", architecture: "gen-12lp", description: "", fallback: false, f16: true,
  maxBufferSize: 2 * GiB, maxStorageBufferBindingSize: 2 * GiB, deviceMemory: 8 };

describe("GPU memory estimates for SD 1.5 at 512×512", () => {
  it("weights: 4 bytes per parameter in f32, 2 in f16, about 0.55 in q4 plus f16 token embeddings", () => {
    expect(weightBytes(sd15, "f32") / GiB).toBeCloseTo(3.97, 2); // 1.066 G parameters
    expect(weightBytes(sd15, "f16") / GiB).toBeCloseTo(1.99, 2);
    expect(weightBytes(sd15, "q4") / GiB).toBeGreaterThan(0.65);
    expect(weightBytes(sd15, "q4") / GiB).toBeLessThan(0.8);
  });
  it("activations: the VAE's last stage, 256 channels at full size, input and output", () => {
    expect(activationBytes(sd15, "f32", 512, 512)).toBe(2 * 256 * 512 * 512 * 4);
    expect(activationBytes(sd15, "f16", 512, 512)).toBe(512 * MiB / 2);
  });
  it("totals: about 4.6 GB in f32, 2.4 GB in f16, 1.3 GB in q4", () => {
    expect(gpuMemory(sd15, "f32", 512, 512) / GiB).toBeCloseTo(4.6, 1);
    expect(gpuMemory(sd15, "f16", 512, 512) / GiB).toBeCloseTo(2.4, 1);
    expect(gpuMemory(sd15, "q4", 512, 512) / GiB).toBeCloseTo(1.3, 1);
    expect(gpuMemory(sd15, "f32", 768, 768)).toBeGreaterThan(gpuMemory(sd15, "f32", 512, 512));
  });
  it("SD 2.1's larger text encoder needs more", () => {
    expect(gpuMemory(turbo, "f16", 512, 512)).toBeGreaterThan(gpuMemory(sd15, "f16", 512, 512) + 400 * MiB);
  });
  it("the largest buffer is a VAE activation at 512², CLIP's token embedding when small", () => {
    expect(largestBuffer(sd15, "f32", 512, 512)).toBe(256 * 512 * 512 * 4);
    expect(largestBuffer(sd15, "f32", 64, 64)).toBe(49408 * 768 * 4);
  });
});

describe("GPU memory estimates for SDXL", () => {
  it("its VAE stays in f32 in every precision (force_upcast)", () => {
    expect(activationBytes(sdxl, "f16", 512, 512)).toBe(activationBytes(sdxl, "f32", 512, 512));
    expect(largestBuffer(sdxl, "f16", 1024, 1024)).toBe(256 * 1024 * 1024 * 4);
  });
  it("at 1024² the VAE is tiled where a whole image's activations exceed the GPU's buffer limit", () => {
    // 1 GiB for the whole image: over the 128 MiB default binding, so it is tiled and fits.
    const small: GpuInfo = { ...nvidia, maxBufferSize: 256 * MiB, maxStorageBufferBindingSize: 128 * MiB };
    const fit = fitOn(sdxl, "q4", small, 1024, 1024);
    expect(fit.fit).not.toBe("too-big");
    expect(fit.bytes).toBeLessThan(gpuMemory(sdxl, "q4", 1024, 1024));
  });
  it("weights: 3.47 G parameters, 6.5 GB in f16", () => {
    expect(weightBytes(sdxl, "f16") / GiB).toBeCloseTo(6.46, 1);
    expect(gpuMemory(sdxl, "f16", 1024, 1024)).toBeGreaterThan(gpuMemory(sdxl, "f16", 512, 512));
  });
});

describe("what fits", () => {
  it("on SwiftShader with 8 GB of RAM: the tiny model, not SD 1.5 in f32", () => {
    expect(fitOn(tiny, "f32", swiftshader, 32, 32).fit).toBe("fits");
    const sd = fitOn(sd15, "f32", swiftshader, 512, 512);
    expect(sd.fit).toBe("too-big");
    expect(sd.reason).toMatch(/more than the estimated 4.0 GB/);
  });
  it("a buffer over the adapter's limit is too big whatever the memory", () => {
    const small = { ...nvidia, maxStorageBufferBindingSize: 128 * MiB };
    const r = fitOn(sd15, "f32", small, 512, 512);
    expect(r.fit).toBe("too-big");
    // CLIP's token embedding in f32 (the VAE's 256 MB activation would be tiled).
    expect(r.reason).toBe("needs a 145 MB buffer; this GPU allows 128 MB");
    // In f16 the VAE's widest activation is exactly 128 MiB: just allowed, whole.
    expect(fitOn(sd15, "f16", small, 512, 512).fit).toBe("fits");
    // 1.6 GB of activations at 1280² exceed a 1 GiB buffer: tiled, counted as tiles.
    const tiled = fitOn(sd15, "f32", swiftshader, 1280, 1280);
    expect(tiled.bytes).toBeLessThan(gpuMemory(sd15, "f32", 1280, 1280));
  });
  it("on a discrete GPU (6 GB assumed): f16 fits, f32 is tight", () => {
    expect(fitOn(sd15, "f16", nvidia, 512, 512).fit).toBe("fits");
    expect(fitOn(sd15, "f32", nvidia, 512, 512).fit).toBe("tight");
  });
  it("says what the budget rests on", () => {
    expect(memoryBudget(swiftshader)).toEqual({ bytes: 4 * GiB, basis: expect.stringMatching(/software adapter.*half of the 8 GB/) });
    expect(memoryBudget({ ...intel, deviceMemory: undefined }).bytes).toBe(2 * GiB);
    expect(memoryBudget(nvidia).basis).toMatch(/6 GB assumed/);
  });
});

describe("choosing a precision", () => {
  it("f16 where the GPU has shader-f16 and it fits", () => {
    expect(choosePrecision(sd15, nvidia, false, 512, 512)).toBe("f16");
    expect(choosePrecision(sd15, intel, true, 512, 512)).toBe("f16");
  });
  it("a q4 pack that fits before f32 that is tight; f32 when it is all there is", () => {
    const noF16 = { ...nvidia, f16: false };
    expect(choosePrecision(sd15, noF16, true, 512, 512)).toBe("q4");
    expect(choosePrecision(sd15, noF16, false, 512, 512)).toBe("f32");
  });
  it("the smallest when nothing fits", () => {
    expect(choosePrecision(sd15, { ...swiftshader, deviceMemory: 1 }, true, 512, 512)).toBe("q4");
  });
});

describe("SD3.5 Medium, with and without T5", () => {
  it("weights: 7.9 G parameters with T5 (14.7 GB in f16), 3.1 G without (5.9 GB)", () => {
    expect(weightBytes(sd35m, "f16") / GiB).toBeCloseTo(14.7, 1);
    expect(weightBytes(sd35mNoT5, "f16") / GiB).toBeCloseTo(5.9, 1);
  });
  it("without T5 it needs 8.9 GB less in f16; q4 weights take 1.8 GB, 4 GB in all at 1024² (f32 VAE)", () => {
    const saved = gpuMemory(sd35m, "f16", 1024, 1024) - gpuMemory(sd35mNoT5, "f16", 1024, 1024);
    expect(saved / GiB).toBeCloseTo(8.9, 1);
    expect(weightBytes(sd35mNoT5, "q4") / GiB).toBeCloseTo(1.8, 1);
    expect(gpuMemory(sd35mNoT5, "q4", 1024, 1024) / GiB).toBeLessThan(4);
  });
  it("on a discrete GPU (6 GB assumed) nothing with T5 fits; without T5 q4 does", () => {
    expect(fitOn(sd35m, "f16", nvidia, 1024, 1024).fit).toBe("too-big");
    expect(fitOn(sd35mNoT5, "q4", nvidia, 1024, 1024).fit).toBe("fits");
  });
});
