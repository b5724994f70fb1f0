// A static file server for the browser tests: serves the repository (and `mounts`, URL
// prefix → folder) with Range requests and ETags, logs every request, and under /flaky/
// cuts each file's first download off halfway (to test resuming).
import { createServer } from "node:http";
import { createReadStream, statSync } from "node:fs";
import { extname, join, normalize } from "node:path";

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript",
  ".wasm": "application/wasm", ".json": "application/json", ".css": "text/css", ".png": "image/png",
  ".svg": "image/svg+xml", ".txt": "text/plain" };

export function serve(root, mounts = {}) {
  const log = [];
  const cut = new Set();
  const server = createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    let path = decodeURIComponent(url.pathname);
    log.push({ path, range: req.headers.range ?? null });
    const flaky = path.startsWith("/flaky/");
    if (flaky) path = path.slice("/flaky".length);
    const mount = Object.keys(mounts).find((prefix) => path.startsWith(prefix));
    const file = mount
      ? join(mounts[mount], normalize(path.slice(mount.length)))
      : join(root, normalize(path));
    let stat;
    try {
      stat = statSync(file);
      if (!stat.isFile()) throw new Error("not a file");
    } catch {
      res.writeHead(404).end("not found");
      return;
    }
    const etag = `"${stat.size}-${stat.mtimeMs}"`;
    const headers = { "Content-Type": TYPES[extname(file)] ?? "application/octet-stream",
      ETag: etag, "Accept-Ranges": "bytes", "Cache-Control": "no-store" };
    let start = 0;
    let end = stat.size - 1;
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    if (range && Number(range[1]) < stat.size) {
      start = Number(range[1]);
      res.writeHead(206, { ...headers, "Content-Range": `bytes ${start}-${end}/${stat.size}`,
        "Content-Length": end - start + 1 });
    } else {
      res.writeHead(200, { ...headers, "Content-Length": stat.size });
    }
    if (req.method === "HEAD") return res.end();
    if (flaky && !cut.has(path) && start === 0 && stat.size > 1 << 20) {
      // Send half the file, then drop the connection.
      cut.add(path);
      const half = createReadStream(file, { start: 0, end: Math.floor(stat.size / 2) });
      half.on("end", () => setTimeout(() => res.destroy(), 50));
      half.pipe(res, { end: false });
      return;
    }
    createReadStream(file, { start, end }).pipe(res);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      const base = `http://127.0.0.1:${server.address().port}`;
      resolve({ base, log, close: () => server.close() });
    });
  });
}
