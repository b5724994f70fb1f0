#!/usr/bin/env bash
# Every check: formatting, lints (native and wasm), all Rust tests (unit, parity with
# diffusers, CLI) in release mode, then the npm package built and tested in headless
# Chromium, and the web app. Needs what .ci/run installs (wasm-pack, wasm-bindgen-cli, Chromium, npm deps).
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/webdiffusion/target}"
# The same checks as CI: a missing Vulkan adapter fails the wgpu tests instead of skipping
# them (WEBDIFFUSION_TEST_WGPU=0 skips them on a machine without one).
export WEBDIFFUSION_TEST_WGPU="${WEBDIFFUSION_TEST_WGPU:-1}"

cargo fmt --all --check
cargo clippy --release --all-targets -- -D warnings
cargo clippy --release --target wasm32-unknown-unknown --no-default-features --features testing --lib -- -D warnings
cargo test --release

# The package with its test hooks (a panic on request, for the recovery tests).
FEATURES=testing scripts/build-pkg.sh
npm test --prefix tests/web

# The web app: strict type-check, production build, unit tests, then the end-to-end test.
npm ci --prefix www --no-audit --no-fund >/dev/null
(cd www && npm run build && npm test)
