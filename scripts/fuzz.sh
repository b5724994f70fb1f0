#!/usr/bin/env bash
# Longer fuzzing than CI's: the property-based targets of tests/fuzz.rs (safetensors
# reader, weight names, pack manifests and shards, configs, tokenizer, PNG, LoRA files,
# ControlNet and TAESD configs) with FUZZ_CASES cases each (CI runs a few hundred).
#   scripts/fuzz.sh            # 20000 cases per target
#   scripts/fuzz.sh 100000     # more
# A failure prints the minimal failing input proptest shrank it to.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/webdiffusion/target}"
FUZZ_CASES="${1:-20000}" cargo test --release --test fuzz -- --nocapture
