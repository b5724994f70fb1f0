#!/usr/bin/env bash
# Installs what building the npm package needs, where it is missing: Rust's wasm32 target,
# wasm-pack, the wasm-bindgen CLI of the crate's wasm-bindgen version, and binaryen's
# wasm-opt (from npm). Used by .ci/run and scripts/serve-app.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
WASM_BINDGEN_VERSION=0.2.130 # must equal the wasm-bindgen crate version in Cargo.lock

rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown ||
    rustup target add wasm32-unknown-unknown >/dev/null
if ! command -v wasm-pack >/dev/null; then
    echo "Installing wasm-pack (cargo install, a few minutes)…"
    cargo install --locked wasm-pack
fi
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
    echo "Installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (cargo install, a few minutes)…"
    cargo install --force wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi
[ -x tests/web/node_modules/.bin/wasm-opt ] || npm ci --prefix tests/web --no-audit --no-fund >/dev/null
