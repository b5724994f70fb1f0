// A static file server for the browser tests: serves the repository (and `mounts`, URL
// prefix → folder, and in-memory files set with `setFile`) with Range requests, ETags,
// Last-Modified and conditional requests (If-None-Match, If-Modified-Since, If-Range), and
// logs every request.
//
// Opt-in odd behaviours, as leading path segments (they combine, e.g. /noetag/cut/mem/a.bin):
//   /flaky/      cuts each file's first download off halfway, for files over 1 MiB (to test
//                resuming)
//   /cut/        the same for files of any size
//   /gzip/       sends the file gzip-encoded (Content-Length is then the compressed size) and
//                ignores Range
//   /noetag/     sends no ETag
//   /weaketag/   sends a weak ETag (W/"…")
//   /nolastmod/  sends no Last-Modified
//   /norange/    ignores Range (always the whole file, 200)
//   /nocond/     ignores If-None-Match and If-Modified-Since (never 304)
//   /spa/        answers a missing file with an HTML page, status 200 and text/html, as a
//                single-page app's fallback does (Vite's dev server, Netlify, …)
//   /spabare/    the same page sent as application/octet-stream
//   /cors/       allows any origin and exposes ETag, but refuses every CORS preflight (as a
//                CDN allowing plain GETs only): cross-origin requests with If-None-Match,
//                If-Modified-Since or If-Range fail
// In-memory files (`setFile(path, bytes)`, `deleteFile(path)`) answer 404 until set, and
// can change between requests: their ETag is a hash of their content.
import { createServer } from "node:http";
import { createHash } from "node:crypto";
import { createReadStream, readFileSync, statSync } from "node:fs";
import { extname, join, normalize } from "node:path";
import { gzipSync } from "node:zlib";

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript",
  ".wasm": "application/wasm", ".json": "application/json", ".css": "text/css", ".png": "image/png",
  ".svg": "image/svg+xml", ".txt": "text/plain" };

const BEHAVIOURS = ["flaky", "cut", "gzip", "noetag", "weaketag", "nolastmod", "norange", "nocond", "cors", "spa", "spabare"];

/** What a single-page app's server sends for any path it has no file for. */
const FALLBACK_PAGE = "<!doctype html>\n<html lang=\"en\"><head><title>app</title></head><body><div id=\"app\"></div></body></html>\n";

/** The entity tag without its weak prefix, for If-None-Match's weak comparison. */
const opaque = (tag) => tag.trim().replace(/^W\//i, "");

export function serve(root, mounts = {}) {
  const log = [];
  const cut = new Set();
  /** In-memory files: path → { body: Buffer, mtime: Date }. */
  const files = new Map();
  const server = createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    let path = decodeURIComponent(url.pathname);
    const entry = { path, range: req.headers.range ?? null, method: req.method,
      ifNoneMatch: req.headers["if-none-match"] ?? null,
      ifModifiedSince: req.headers["if-modified-since"] ?? null,
      ifRange: req.headers["if-range"] ?? null, status: null };
    log.push(entry);
    const reply = (status, headers) => {
      entry.status = status;
      res.writeHead(status, headers);
    };
    const odd = new Set();
    for (;;) {
      const name = BEHAVIOURS.find((b) => path.startsWith(`/${b}/`));
      if (!name) break;
      odd.add(name);
      path = path.slice(name.length + 1);
    }
    if (odd.has("cors")) {
      res.setHeader("Access-Control-Allow-Origin", "*");
      res.setHeader("Access-Control-Expose-Headers", "ETag, Content-Range, Content-Encoding");
      if (req.method === "OPTIONS") {
        // A preflight: no Access-Control-Allow-Headers, so it fails.
        reply(204);
        res.end();
        return;
      }
    }

    // The file: in memory, under a mount, or in the repository.
    let body = null;
    let size;
    let mtime;
    let tag;
    const memory = files.get(path);
    if (memory) {
      body = memory.body;
      size = body.length;
      mtime = memory.mtime;
      tag = createHash("sha1").update(body).digest("hex").slice(0, 20);
    } else {
      const mount = Object.keys(mounts).find((prefix) => path.startsWith(prefix));
      const file = mount
        ? join(mounts[mount], normalize(path.slice(mount.length)))
        : join(root, normalize(path));
      let stat;
      try {
        stat = statSync(file);
        if (!stat.isFile()) throw new Error("not a file");
      } catch {
        if (odd.has("spa") || odd.has("spabare")) {
          reply(200, { "Content-Type": odd.has("spa") ? "text/html; charset=utf-8" : "application/octet-stream",
            "Content-Length": Buffer.byteLength(FALLBACK_PAGE), "Cache-Control": "no-store" });
          res.end(req.method === "HEAD" ? undefined : FALLBACK_PAGE);
          return;
        }
        reply(404);
        res.end("not found");
        return;
      }
      size = stat.size;
      mtime = stat.mtime;
      tag = `${stat.size}-${stat.mtimeMs}`;
      if (odd.has("gzip")) body = readFileSync(file);
      else body = { file };
    }
    const etag = odd.has("weaketag") ? `W/"${tag}"` : `"${tag}"`;
    const type = TYPES[extname(path)] ?? "application/octet-stream";
    const headers = { "Content-Type": type, "Cache-Control": "no-store" };
    if (!odd.has("noetag")) headers.ETag = etag;
    if (!odd.has("nolastmod")) headers["Last-Modified"] = mtime.toUTCString();
    if (!odd.has("norange") && !odd.has("gzip")) headers["Accept-Ranges"] = "bytes";

    // Conditional requests: If-None-Match first; If-Modified-Since only without it.
    if (!odd.has("nocond")) {
      const none = req.headers["if-none-match"];
      const since = Date.parse(req.headers["if-modified-since"] ?? "");
      const notModified = none !== undefined
        ? !odd.has("noetag") && none.split(",").some((t) => t.trim() === "*" || opaque(t) === opaque(etag))
        : !odd.has("nolastmod") && !Number.isNaN(since) && Math.floor(mtime.getTime() / 1000) * 1000 <= since;
      if (notModified) {
        reply(304, headers);
        res.end();
        return;
      }
    }

    if (odd.has("gzip")) {
      const zipped = gzipSync(body);
      reply(200, { ...headers, "Content-Encoding": "gzip", "Content-Length": zipped.length });
      res.end(req.method === "HEAD" ? undefined : zipped);
      return;
    }

    let start = 0;
    const end = size - 1;
    const range = odd.has("norange") ? null : /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    // If-Range: the range only if the file is still the one the client has (strong match).
    const ifRange = req.headers["if-range"];
    const current = ifRange === undefined || (!ifRange.startsWith("W/") && !etag.startsWith("W/") &&
      !odd.has("noetag") && ifRange === etag);
    if (range && current && Number(range[1]) < size) {
      start = Number(range[1]);
      reply(206, { ...headers, "Content-Range": `bytes ${start}-${end}/${size}`,
        "Content-Length": end - start + 1 });
    } else {
      reply(200, { ...headers, "Content-Length": size });
    }
    if (req.method === "HEAD" || size === 0) return res.end();
    const cutNow = (odd.has("cut") || (odd.has("flaky") && size > 1 << 20)) && start === 0;
    const stop = cutNow && !cut.has(path) ? Math.floor(size / 2) : end;
    if (stop < end) cut.add(path);
    if (Buffer.isBuffer(body)) res.write(body.subarray(start, stop + 1));
    const done = () => (stop < end
      // Half the file sent: drop the connection.
      ? setTimeout(() => res.destroy(), 50)
      : res.end());
    if (Buffer.isBuffer(body)) return done();
    const read = createReadStream(body.file, { start, end: stop });
    read.on("end", done);
    read.pipe(res, { end: false });
  });
  const setFile = (path, bytes, mtime = new Date()) => {
    files.set(path, { body: Buffer.from(bytes), mtime });
  };
  const deleteFile = (path) => files.delete(path);
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      const base = `http://127.0.0.1:${server.address().port}`;
      resolve({ base, log, files, setFile, deleteFile, close: () => server.close() });
    });
  });
}
