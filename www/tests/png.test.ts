import { describe, expect, it } from "vitest";
import { crc32, isPng, readTextChunks, withTextChunk } from "../src/png";

// A 1×1 PNG (from a real encoder), to add chunks to.
const PNG = Uint8Array.from(atob(
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC",
), (c) => c.charCodeAt(0));

/** `png` with a chunk of `type` and `body` before IEND. */
function withChunk(png: Uint8Array, type: string, body: Uint8Array): Uint8Array {
  const chunk = new Uint8Array(12 + body.length);
  const view = new DataView(chunk.buffer);
  view.setUint32(0, body.length);
  chunk.set(new TextEncoder().encode(type), 4);
  chunk.set(body, 8);
  view.setUint32(8 + body.length, crc32(chunk.subarray(4, 8 + body.length)));
  const out = new Uint8Array(png.length + chunk.length);
  out.set(png.subarray(0, png.length - 12));
  out.set(chunk, png.length - 12);
  out.set(png.subarray(png.length - 12), png.length - 12 + chunk.length);
  return out;
}

const latin1 = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0));

/** zlib-compressed UTF-8, as zTXt and compressed iTXt hold it. */
async function deflate(text: string): Promise<Uint8Array> {
  const stream = new Blob([text]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

describe("PNG text chunks", () => {
  it("computes the standard CRC-32", () => {
    expect(crc32(new TextEncoder().encode("123456789"))).toBe(0xcbf43926);
  });

  it("round-trips UTF-8 parameters through an iTXt chunk before IEND", async () => {
    const text = "a fox, ü 東京\nSteps: 4, Seed: 7";
    const out = withTextChunk(PNG, "parameters", text);
    expect(await readTextChunks(out)).toEqual({ parameters: text });
    expect(new TextDecoder().decode(out.subarray(out.length - 8, out.length - 4))).toBe("IEND");
    expect(out.length).toBe(PNG.length + 12 + "parameters".length + 5 + new TextEncoder().encode(text).length);
  });

  it("reads tEXt (Latin-1) as A1111 writes it, and zTXt", async () => {
    let png = withChunk(PNG, "tEXt", latin1("parameters\0café, Steps: 20"));
    png = withChunk(png, "zTXt", new Uint8Array([...latin1("prompt\0\0"), ...(await deflate('{"3": {}}'))]));
    expect(await readTextChunks(png)).toEqual({ parameters: "café, Steps: 20", prompt: '{"3": {}}' });
  });

  it("reads compressed iTXt", async () => {
    const body = new Uint8Array([...latin1("workflow\0\x01\0en\0\0"), ...(await deflate("∑ nodes"))]);
    expect(await readTextChunks(withChunk(PNG, "iTXt", body))).toEqual({ workflow: "∑ nodes" });
  });

  it("refuses what is not a PNG", async () => {
    expect(isPng(PNG)).toBe(true);
    await expect(readTextChunks(new TextEncoder().encode("GIF89a…"))).rejects.toThrow(/not a PNG/);
  });
});
