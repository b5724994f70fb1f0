#!/usr/bin/env bash
# Builds the npm package `webdiffusion` into pkg/: the crate compiled to WebAssembly for
# WebGPU (wasm-pack, --target web, size-optimised), its JS glue and TypeScript declarations, and
# the Web Worker script.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/webdiffusion/target}"

# WASM_PROFILE=release gives a faster build for quick iterations; the package ships the
# `wasm` profile (opt-level z, whole-program LTO) shrunk by binaryen's wasm-opt (from npm:
# Debian's is too old and produces modules Chromium rejects).
# FEATURES=testing adds the test hooks (scripts/test.sh); a package to publish has none.
profile="${WASM_PROFILE:-wasm}"
features=(--no-default-features)
[ -n "${FEATURES:-}" ] && features+=(--features "$FEATURES")
if [ "$profile" = release ]; then
    wasm-pack build crate --target web --release --mode no-install \
        --out-dir ../pkg --out-name webdiffusion -- "${features[@]}"
else
    wasm-pack build crate --target web --profile "$profile" --mode no-install \
        --out-dir ../pkg --out-name webdiffusion -- "${features[@]}"
fi
cp crate/js/worker.js pkg/worker.js
# Ship the worker with the package.
node -e '
const fs = require("fs");
const p = JSON.parse(fs.readFileSync("pkg/package.json"));
p.files = [...new Set([...(p.files ?? []), "worker.js", "snippets"])];
fs.writeFileSync("pkg/package.json", JSON.stringify(p, null, 2) + "\n");
'
if [ "$profile" != release ]; then
    [ -x tests/web/node_modules/.bin/wasm-opt ] || npm ci --prefix tests/web --no-audit --no-fund >/dev/null
    tests/web/node_modules/.bin/wasm-opt -Oz --strip-debug --strip-producers \
        --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
        --enable-mutable-globals --enable-reference-types --enable-multivalue \
        pkg/webdiffusion_bg.wasm -o pkg/webdiffusion_bg.wasm
fi
ls -l pkg/webdiffusion_bg.wasm | awk '{printf "webdiffusion_bg.wasm: %.1f MB\n", $5 / 1e6}'
gzip -9c pkg/webdiffusion_bg.wasm | wc -c | awk '{printf "gzipped: %.1f MB\n", $1 / 1e6}'
