#!/usr/bin/env python3
"""webdiffusion beside PyTorch/diffusers on the same NVIDIA GPU (run by scripts/gpu-bench.sh).

The full-size SD 1.5 networks with random weights, built from the configs the crate ships
(crate/assets/sd15): ms per text encode (batch 2 x 77 tokens), UNet step (batch 2, as
classifier-free guidance runs it) and VAE decode at SIZE x SIZE, in PyTorch fp32 (TF32 off)
and fp16, and in `webdiffusion bench --backend wgpu --json` for f32 and f16. Prints one
table with each figure's ratio to PyTorch fp16 (below 1: faster than PyTorch fp16), and
writes the raw numbers as JSON to --out.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "crate" / "assets" / "sd15"


def torch_times(size, iters, dtype_name):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype_name]
    dev = torch.device("cuda")
    torch.manual_seed(0)

    def timed(fn):
        with torch.no_grad():
            fn()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000 / iters

    torch.cuda.reset_peak_memory_stats()
    text = CLIPTextModel(CLIPTextConfig.from_json_file(ASSETS / "text_encoder" / "config.json"))
    text = text.to(dev, dtype).eval()
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(ASSETS / "unet"))
    unet = unet.to(dev, dtype).eval()
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(ASSETS / "vae")).to(dev, dtype).eval()
    weights = torch.cuda.memory_allocated()
    ids = torch.full((2, 77), 49406, device=dev)
    latent = size // 8
    sample = torch.randn(2, 4, latent, latent, device=dev, dtype=dtype)
    context = torch.randn(2, 77, 768, device=dev, dtype=dtype)
    z = torch.randn(1, 4, latent, latent, device=dev, dtype=dtype)
    out = {
        "text_encoder_ms": timed(lambda: text(ids)),
        "unet_ms": timed(lambda: unet(sample, 500, context)),
        "vae_decode_ms": timed(lambda: vae.decode(z)),
        "weights_device_bytes": weights,
        "peak_device_bytes": torch.cuda.max_memory_allocated(),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
    }
    del text, unet, vae
    torch.cuda.empty_cache()
    return out


def ours(binary, size, iters, dtype):
    cmd = [binary, "bench", "--backend", "wgpu", "--dtype", dtype, "--size", str(size),
           "--iters", str(iters), "--json"]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sys.stderr.write(run.stdout + run.stderr)
    if run.returncode != 0:
        raise SystemExit(f"webdiffusion bench failed ({run.returncode})")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", default="gpu-bench.json")
    args = ap.parse_args()

    rows = {}
    for name in ("fp32", "fp16"):
        rows[f"PyTorch {name}"] = torch_times(args.size, args.iters, name)
    for dtype in ("f32", "f16"):
        rows[f"webdiffusion {dtype}"] = ours(args.binary, args.size, args.iters, dtype)
    Path(args.out).write_text(json.dumps(rows, indent=2))

    base = rows["PyTorch fp16"]
    print(f"\nGPU: {base['device']}, torch {base['torch']}; {rows['webdiffusion f32']['adapter']}")
    print(f"Full-size SD 1.5, random weights, {args.size}², mean of {args.iters} runs after a warm-up;"
          " (×N) = time relative to PyTorch fp16\n")
    print("| implementation | text encoder (2×77) | UNet step (2×4×64×64) | VAE decode | peak memory |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        cells = []
        for key in ("text_encoder_ms", "unet_ms", "vae_decode_ms"):
            ms = r.get(key)
            cells.append("–" if ms is None else f"{ms:.1f} ms (×{ms / base[key]:.2f})")
        peak = r.get("peak_device_bytes")
        cells.append("–" if peak is None else f"{peak / 1e9:.2f} GB")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
