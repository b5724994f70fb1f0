// Pure helpers of the app (unit-tested with Vitest): formatting, PNG text chunks, the
// A1111 parameters line, and the latent preview.

export function formatBytes(n: number): string {
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  if (n < 1024 * 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(1)} MB`;
  return `${(n / (1024 * 1024 * 1024)).toFixed(2)} GB`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "–";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  const m = Math.floor(seconds / 60);
  return `${m} min ${Math.round(seconds - m * 60)} s`;
}

/** "12.0 MB of 40.0 MB · 3.1 MB/s · 9 s left" for a download started `elapsed` s ago. */
export function downloadStatus(loaded: number, total: number | null, elapsed: number): string {
  const speed = elapsed > 0 ? loaded / elapsed : 0;
  const parts = [total ? `${formatBytes(loaded)} of ${formatBytes(total)}` : formatBytes(loaded)];
  if (speed > 0) parts.push(`${formatBytes(speed)}/s`);
  if (total && speed > 0) parts.push(`${formatDuration((total - loaded) / speed)} left`);
  return parts.join(" · ");
}

export interface Parameters {
  prompt: string;
  negativePrompt: string;
  steps: number;
  sampler: string;
  guidance: number;
  seed: number;
  width: number;
  height: number;
  model: string;
}

/** The `parameters` text AUTOMATIC1111's web UI writes and reads. */
export function a1111Parameters(p: Parameters): string {
  const lines = [p.prompt];
  if (p.negativePrompt) lines.push(`Negative prompt: ${p.negativePrompt}`);
  lines.push(
    `Steps: ${p.steps}, Sampler: ${p.sampler}, CFG scale: ${p.guidance}, Seed: ${p.seed}, ` +
      `Size: ${p.width}x${p.height}, Model: ${p.model}`,
  );
  return lines.join("\n");
}

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

/** `png` with an iTXt chunk `key` = `text` (UTF-8) inserted before IEND. */
export function withTextChunk(png: Uint8Array, key: string, text: string): Uint8Array {
  const enc = new TextEncoder();
  const body = concat([enc.encode(key), new Uint8Array([0, 0, 0, 0, 0]), enc.encode(text)]);
  const type = enc.encode("iTXt");
  const chunk = new Uint8Array(12 + body.length);
  const view = new DataView(chunk.buffer);
  view.setUint32(0, body.length);
  chunk.set(type, 4);
  chunk.set(body, 8);
  view.setUint32(8 + body.length, crc32(chunk.subarray(4, 8 + body.length)));
  const iend = png.length - 12;
  return concat([png.subarray(0, iend), chunk, png.subarray(iend)]);
}

/** The tEXt and iTXt chunks of a PNG, by key. */
export function readTextChunks(png: Uint8Array): Record<string, string> {
  const out: Record<string, string> = {};
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  const dec = new TextDecoder();
  for (let at = 8; at + 12 <= png.length; ) {
    const len = view.getUint32(at);
    const type = dec.decode(png.subarray(at + 4, at + 8));
    const body = png.subarray(at + 8, at + 8 + len);
    const nul = body.indexOf(0);
    if (type === "tEXt" && nul > 0) out[dec.decode(body.subarray(0, nul))] = dec.decode(body.subarray(nul + 1));
    if (type === "iTXt" && nul > 0) {
      // keyword \0 compression-flag compression-method language \0 translated \0 text
      let rest = nul + 3;
      rest = body.indexOf(0, rest) + 1;
      rest = body.indexOf(0, rest) + 1;
      out[dec.decode(body.subarray(0, nul))] = dec.decode(body.subarray(rest));
    }
    at += 12 + len;
  }
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** SD 1.x/2.x latent channels → RGB, a linear fit good enough for a live preview. */
const LATENT_RGB = [
  [0.298, 0.207, 0.208],
  [0.187, 0.286, 0.173],
  [-0.158, 0.189, 0.264],
  [-0.184, -0.271, -0.473],
];

/** RGBA pixels (h × w) previewing latents [1, 4, h, w]. */
export function latentsToRgba(latents: Float32Array, h: number, w: number): Uint8ClampedArray<ArrayBuffer> {
  const n = h * w;
  const rgba = new Uint8ClampedArray(n * 4);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) {
      let v = 0;
      for (let k = 0; k < 4; k++) v += latents[k * n + i] * LATENT_RGB[k][c];
      rgba[i * 4 + c] = ((v + 1) / 2) * 255;
    }
    rgba[i * 4 + 3] = 255;
  }
  return rgba;
}
