#!/usr/bin/env bash
# Serves the web app (www/) with the tiny test model preselected (it works offline):
#   scripts/serve-app.sh            then open the URL it prints (http://127.0.0.1:5173/)
#   PORT=8080 scripts/serve-app.sh  another port
# Builds the npm package first when crate/ changed since the last build (the first build
# compiles the whole engine to WebAssembly: about 15 minutes on 2 cores), installs the
# app's dependencies when they changed, then starts Vite's dev server and says when the
# app answers. Extra arguments go to Vite.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${PORT:-5173}"
url="http://127.0.0.1:$port/"

# The package is up to date when no source of it is newer than its wasm.
wasm=pkg/webdiffusion_bg.wasm
if [ -f "$wasm" ] && [ -f pkg/worker.js ] &&
    [ -z "$(find crate/src crate/js crate/Cargo.toml Cargo.toml Cargo.lock -newer "$wasm" -print -quit)" ]; then
    echo "[1/3] The npm package (pkg/) is up to date."
else
    echo "[1/3] Building the npm package (pkg/): the engine compiled to WebAssembly."
    echo "      The first build takes about 15 minutes on 2 cores; Cargo shows its progress below."
    scripts/wasm-tools.sh
    scripts/build-pkg.sh
fi

if [ -f www/node_modules/.package-lock.json ] &&
    [ www/node_modules/.package-lock.json -nt www/package-lock.json ] &&
    [ -e www/node_modules/webdiffusion ]; then
    echo "[2/3] The app's dependencies are installed."
else
    echo "[2/3] Installing the app's dependencies (npm ci)."
    npm ci --prefix www --no-audit --no-fund
fi

echo "[3/3] Starting the app at $url"
cd www
./node_modules/.bin/vite --host 127.0.0.1 --port "$port" --strictPort "$@" &
vite=$!
trap 'kill "$vite" 2>/dev/null; wait "$vite" 2>/dev/null' EXIT INT TERM
# Ready when the page answers (Vite prints its banner before it has served anything).
until node -e 'fetch(process.argv[1]).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))' "$url"; do
    kill -0 "$vite" 2>/dev/null || { wait "$vite"; exit $?; }
    sleep 0.5
done
echo
echo "webdiffusion is ready: open $url"
echo "The tiny test model is preselected: press Generate (it makes coloured noise, in seconds). Ctrl+C stops the server."
wait "$vite"
