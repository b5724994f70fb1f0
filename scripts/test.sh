#!/usr/bin/env bash
# Every check: formatting, lints, then all tests (unit, parity with diffusers, CLI) in
# release mode, since the numeric kernels are too slow unoptimised.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

cargo fmt --all --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release
