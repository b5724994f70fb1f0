import { describe, expect, it } from "vitest";
import { a1111Parameters, crc32, downloadStatus, formatBytes, latentsToRgba, readTextChunks, withTextChunk } from "../src/lib";

// A 1×1 PNG (from a real encoder), to add chunks to.
const PNG = Uint8Array.from(atob(
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC",
), (c) => c.charCodeAt(0));

describe("png text chunks", () => {
  it("computes the standard CRC-32", () => {
    expect(crc32(new TextEncoder().encode("123456789"))).toBe(0xcbf43926);
  });
  it("round-trips parameters through an iTXt chunk before IEND", () => {
    const text = "a fox, ü 東京\nSteps: 4, Seed: 7";
    const out = withTextChunk(PNG, "parameters", text);
    expect(readTextChunks(out)).toEqual({ parameters: text });
    expect(new TextDecoder().decode(out.subarray(out.length - 8, out.length - 4))).toBe("IEND");
    expect(out.length).toBe(PNG.length + 12 + "parameters".length + 5 + new TextEncoder().encode(text).length);
  });
});

describe("A1111 parameters", () => {
  it("has the prompt, the negative prompt and the settings line", () => {
    const p = { prompt: "a fox", negativePrompt: "blurry", steps: 20, sampler: "euler-a", guidance: 7.5,
      seed: 42, width: 512, height: 512, model: "sd15" };
    expect(a1111Parameters(p)).toBe(
      "a fox\nNegative prompt: blurry\nSteps: 20, Sampler: euler-a, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: sd15",
    );
    expect(a1111Parameters({ ...p, negativePrompt: "" }).split("\n")).toHaveLength(2);
  });
});

describe("progress text", () => {
  it("shows size, speed and time left", () => {
    expect(formatBytes(3 * 1024 * 1024)).toBe("3.0 MB");
    expect(downloadStatus(10 * 1024 * 1024, 40 * 1024 * 1024, 5)).toBe("10.0 MB of 40.0 MB · 2.0 MB/s · 15 s left");
    expect(downloadStatus(1024 * 1024, null, 0)).toBe("1.0 MB");
  });
});

describe("latent preview", () => {
  it("maps zero latents to mid grey and is opaque", () => {
    const rgba = latentsToRgba(new Float32Array(4 * 2 * 3), 2, 3);
    expect(rgba.length).toBe(2 * 3 * 4);
    expect(Array.from(rgba.subarray(0, 4))).toEqual([128, 128, 128, 255]);
  });
  it("reads channel k of pixel i at k·h·w + i", () => {
    const latents = new Float32Array(4);
    latents[0] = 1; // channel 0 only: r = 0.298, g = 0.207, b = 0.208
    const rgba = latentsToRgba(latents, 1, 1);
    expect(Array.from(rgba.subarray(0, 3))).toEqual([165, 154, 154]);
  });
});
