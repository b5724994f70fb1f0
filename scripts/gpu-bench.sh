#!/usr/bin/env bash
# webdiffusion's wgpu build beside PyTorch on the same NVIDIA GPU (H100/H200-class), in one
# run: the full-size SD 1.5 networks with random weights at 512², PyTorch fp32 (TF32 off) and
# fp16 against `webdiffusion bench --backend wgpu --json` in f32 and f16; one table, each
# figure with its ratio to PyTorch fp16 (scripts/gpu_bench.py). About 3–5 minutes.
#
# The GPU machine has PyTorch and no network. Bring what it lacks into ignored folders of
# the checkout:
#   .gpu/webdiffusion   the release binary, built for x86-64 (cargo build --release)
#   .whl/*.whl          diffusers, transformers (and what they need beyond PyTorch), when
#                       `python3 -c "import diffusers"` fails there
#   .gl/*.deb           libvulkan1 (and the GL/EGL loaders), when `ldconfig -p` lists no
#                       libvulkan there
# Environment: WEBDIFFUSION_BIN (default .gpu/webdiffusion), SIZE (512), ITERS (5),
# OUT (a folder for gpu-bench.json; default the current one).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ldconfig -p | grep -q libvulkan; then
    if ls .gl/*.deb >/dev/null 2>&1; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    else
        echo "no Vulkan loader (libvulkan1): bring its .deb in .gl/" >&2
        exit 2
    fi
fi
# wgpu finds the NVIDIA driver through its ICD file; some images keep it outside the loader's path.
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
if ! python3 -c "import diffusers, transformers" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
bin="${WEBDIFFUSION_BIN:-.gpu/webdiffusion}"
[ -x "$bin" ] || { echo "$bin: no webdiffusion binary (build it and copy it there)" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec python3 scripts/gpu_bench.py --binary "$bin" --size "${SIZE:-512}" --iters "${ITERS:-5}" \
    --out "${OUT:-.}/gpu-bench.json"
