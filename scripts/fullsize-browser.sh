#!/usr/bin/env bash
# The full-size check in a real browser (opt-in; not part of CI: about half an hour on 2
# cores for SD-Turbo, as headless Chromium's WebGPU is SwiftShader on the CPU). Writes the
# SD-Turbo architecture (the built-in sd21 configs; MODEL=sdxl-turbo for SDXL-Turbo's,
# MODEL=sd35m for SD3.5 Medium's without T5; any built-in name works) with random weights as a
# q4 pack, tensor by tensor (no full-precision copy on disk), then runs it through the npm
# package: load with progress into IndexedDB, one step at 64×64 with TAESD as the decoder
# (SD3.5: 256×256 with its own 16-channel VAE), a reload with the network off; once with the
# adapter's limits and once at WebGPU's default limits. Prints a table of bytes, times and
# wasm memory, and the largest pixel difference from the native CLI.
#   [MODEL=sdxl-turbo|sd35m] [SIZE=PX] scripts/fullsize-browser.sh [WORK_DIR]
#   (default ~/.cache/webdiffusion/fullsize)
# Needs what .ci/run installs (Chromium, wasm-pack, tests/web's npm packages).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/webdiffusion/target}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
work="${1:-$HOME/.cache/webdiffusion/fullsize}"
mkdir -p "$work"

cargo build --release --quiet
cli="$CARGO_TARGET_DIR/release/webdiffusion"
[ -f pkg/webdiffusion_bg.wasm ] || scripts/build-pkg.sh
[ -d tests/web/node_modules ] || npm ci --prefix tests/web --no-audit --no-fund >/dev/null

model="${MODEL:-sd21}"
taesd=tests/fixtures/taesd-tiny # TAESD's own architecture (random weights), for 4 latent channels
convert_args=()
size="${SIZE:-64}"
case "$model" in
    # SD3.5: without T5 (its 4.7 B parameters), decoded by its own 16-channel VAE.
    sd35*) convert_args=(--no-t5) taesd=none size="${SIZE:-256}" ;;
esac
vae_args=()
[ "$taesd" = none ] || vae_args=(--vae "$taesd")
pack="$work/$model-random-q4"
if [ ! -f "$pack/manifest.json" ]; then
    /usr/bin/time -f "convert: %e s, %M KB peak memory" \
        "$cli" convert --random "$model" "${convert_args[@]}" --quant q4 --seed 1 --out "$pack"
fi

# The same request natively (wgpu when a Vulkan adapter exists, else the CPU), for comparison.
native="$work/native.safetensors"
rm -f "$native"
"$cli" generate --model "$pack" "${vae_args[@]}" --dtype f32 --prompt "a red fox in the snow" \
    --steps 1 --guidance 0 --width "$size" --height "$size" --seed 42 --out-tensor "$native"

FULLSIZE_SIZE="$size" node tests/web/fullsize.mjs "$pack" "$taesd" "$native"
