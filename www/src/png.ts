// PNG text chunks: where A1111, ComfyUI, sd.cpp and this app keep generation parameters.

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

export function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

export function isPng(bytes: Uint8Array): boolean {
  return SIGNATURE.every((b, i) => bytes[i] === b);
}

/** `png` with an iTXt chunk `key` = `text` (UTF-8, uncompressed) inserted before IEND. */
export function withTextChunk(png: Uint8Array, key: string, text: string): Uint8Array<ArrayBuffer> {
  const enc = new TextEncoder();
  // keyword \0 compression-flag compression-method language \0 translated-keyword \0 text
  const body = concat([enc.encode(key), new Uint8Array([0, 0, 0, 0, 0]), enc.encode(text)]);
  const chunk = new Uint8Array(12 + body.length);
  const view = new DataView(chunk.buffer);
  view.setUint32(0, body.length);
  chunk.set(enc.encode("iTXt"), 4);
  chunk.set(body, 8);
  view.setUint32(8 + body.length, crc32(chunk.subarray(4, 8 + body.length)));
  const iend = png.length - 12;
  return concat([png.subarray(0, iend), chunk, png.subarray(iend)]);
}

/**
 * The tEXt, zTXt and iTXt chunks of a PNG, by key. Compressed text (zTXt, compressed iTXt)
 * needs the browser's DecompressionStream, hence async.
 */
export async function readTextChunks(png: Uint8Array): Promise<Record<string, string>> {
  if (!isPng(png)) throw new Error("not a PNG file");
  const out: Record<string, string> = {};
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  const utf8 = new TextDecoder();
  const latin1 = new TextDecoder("latin1");
  for (let at = 8; at + 12 <= png.length; ) {
    const len = view.getUint32(at);
    const type = latin1.decode(png.subarray(at + 4, at + 8));
    const body = png.subarray(at + 8, at + 8 + len);
    const nul = body.indexOf(0);
    if (nul > 0) {
      const key = latin1.decode(body.subarray(0, nul));
      if (type === "tEXt") out[key] = latin1.decode(body.subarray(nul + 1));
      if (type === "zTXt") out[key] = latin1.decode(await inflate(body.subarray(nul + 2)));
      if (type === "iTXt") {
        const compressed = body[nul + 1] === 1;
        let rest = body.indexOf(0, nul + 3) + 1; // past the language tag
        rest = body.indexOf(0, rest) + 1; // past the translated keyword
        const text = body.subarray(rest);
        out[key] = utf8.decode(compressed ? await inflate(text) : text);
      }
    }
    if (type === "IEND") break;
    at += 12 + len;
  }
  return out;
}

async function inflate(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function concat(parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
