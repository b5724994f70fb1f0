#!/usr/bin/env python3
"""The parameter counts diffusers/transformers give for SDXL's full-size networks, built on the meta
device from the configs shipped in crate/assets/sdxl (the values of stabilityai/stable-diffusion-xl-
base-1.0): tests/fixtures/configs/param_counts_sdxl.json (never edit by hand). SDXL's first text
encoder is SD 1.5's CLIP-L (its count is in param_counts.json). Run from the repository root:

    /root/.cache/webdiffusion/venv/bin/python scripts/sdxl_param_counts.py
"""

import json
from pathlib import Path

import accelerate
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "crate/assets/sdxl"


def config(name):
    return json.loads((ASSETS / name / "config.json").read_text())


def count(module):
    return sum(p.numel() for p in module.parameters())


def main():
    with accelerate.init_empty_weights():
        unet = UNet2DConditionModel.from_config(config("unet"))
        vae = AutoencoderKL.from_config(config("vae"))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config("text_encoder_2")))
    counts = {
        "sdxl": {
            "unet": count(unet),
            "vae": count(vae),
            "vae_encoder": count(vae.encoder) + count(vae.quant_conv),
            "vae_decoder": count(vae.decoder) + count(vae.post_quant_conv),
            "text_encoder_2": count(text_2),
        }
    }
    out = ROOT / "tests/fixtures/configs/param_counts_sdxl.json"
    out.write_text(json.dumps(counts, indent=2) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
