#!/usr/bin/env python3
"""Goldens for tiled VAE decoding and encoding (never edit by hand). Run from the repository root,
in the venv of make_fixtures.py (a few seconds):

    /root/.cache/webdiffusion/venv/bin/python scripts/make_vae_tiling_fixtures.py

diffusers' AutoencoderKL.enable_tiling() on tests/fixtures/sdxl-tiny/vae (float32 from its f16
weights, CPU, one thread): tiles of `tile_sample_min_size` pixels (config.sample_size = 64 unless
set) and `tile_latent_min_size` = that / 4 latents, overlapping by tile_overlap_factor = 0.25,
blended linearly (blend_v then blend_h, each tile blended with its already-blended neighbours),
cropped to the row limit and concatenated. Inputs larger than one tile are tiled; the last
tiles of a row or column are smaller.

tests/fixtures/goldens/vae-tiling.safetensors (float32):
    latents               [1,4,24,40] randn: unscaled latents (vae.decode's input), 96x160 pixels
    decoded.tile{32,64}   [1,3,96,160] vae.tiled_decode(latents) with tile_sample_min_size
                          32 / 64 (64 = the config's sample_size, diffusers' default)
    decoded.whole         [1,3,96,160] vae.decode(latents) without tiling (tiles differ from it)
    image                 [1,3,96,160] uniform in [-1,1]
    encoded.tile{32,64}   [1,4,24,40] vae.tiled_encode(image).latent_dist.mean
    encoded.whole         [1,4,24,40] vae.encode(image).latent_dist.mean without tiling
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixtures_common as fc  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/goldens/vae-tiling.safetensors"


def main():
    vae = AutoencoderKL.from_pretrained(ROOT / "tests/fixtures/sdxl-tiny/vae", torch_dtype=torch.float32).eval()
    assert vae.config.sample_size == 64
    g = torch.Generator().manual_seed(20261204)
    latents = torch.randn(1, 4, 24, 40, generator=g)
    image = torch.rand(1, 3, 96, 160, generator=g) * 2 - 1
    out = {"latents": latents, "image": image}
    with torch.no_grad():
        out["decoded.whole"] = vae.decode(latents).sample
        out["encoded.whole"] = vae.encode(image).latent_dist.mean
        vae.enable_tiling()
        for tile in (32, 64):
            vae.tile_sample_min_size = tile
            vae.tile_latent_min_size = tile // 4
            out[f"decoded.tile{tile}"] = vae.decode(latents).sample
            out[f"encoded.tile{tile}"] = vae.encode(image).latent_dist.mean
            assert fc.rel_l2(out[f"decoded.tile{tile}"], out["decoded.whole"]) > 1e-3, "tiles must show"
    for k, v in out.items():
        assert v.shape[-2:] in ((96, 160), (24, 40)), (k, v.shape)
    fc.save_goldens(OUT, out, "scripts/make_vae_tiling_fixtures.py")


if __name__ == "__main__":
    main()
