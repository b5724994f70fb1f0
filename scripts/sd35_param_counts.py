#!/usr/bin/env python3
"""The parameter counts diffusers/transformers give for Stable Diffusion 3.5's full-size networks, built
on the meta device from the configs shipped in crate/assets/sd35m and crate/assets/sd35l-turbo (the values
of stabilityai/stable-diffusion-3.5-medium and stabilityai/stable-diffusion-3.5-large-turbo):
tests/fixtures/configs/param_counts_sd35.json (never edit by hand). Run from the repository root:

    /root/.cache/webdiffusion/venv/bin/python scripts/sd35_param_counts.py

Per model: the transformer, the VAE (and its encoder / decoder halves: SD3's VAE has no quant convs),
the three text encoders (CLIP-L and bigG with their projections, the T5-XXL encoder), and the element
count of the transformer's persistent buffer pos_embed.pos_embed (the sin-cos position table the
checkpoints carry next to the parameters: pos_embed_max_size^2 x inner dim).
"""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"sd35m": ROOT / "crate/assets/sd35m", "sd35l-turbo": ROOT / "crate/assets/sd35l-turbo"}


def config(folder, name):
    return json.loads((folder / name / "config.json").read_text())


def count(module):
    return sum(p.numel() for p in module.parameters())


def counts(folder):
    with torch.device("meta"):
        transformer = SD3Transformer2DModel.from_config(config(folder, "transformer"))
        vae = AutoencoderKL.from_config(config(folder, "vae"))
        text = CLIPTextModelWithProjection(CLIPTextConfig(**config(folder, "text_encoder")))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config(folder, "text_encoder_2")))
        text_3 = T5EncoderModel(T5Config(**config(folder, "text_encoder_3")))
    assert vae.quant_conv is None and vae.post_quant_conv is None
    return {
        "transformer": count(transformer),
        "transformer_pos_embed_buffer": transformer.pos_embed.pos_embed.numel(),
        "vae": count(vae),
        "vae_encoder": count(vae.encoder),
        "vae_decoder": count(vae.decoder),
        "text_encoder": count(text),
        "text_encoder_2": count(text_2),
        "text_encoder_3": count(text_3),
    }


def main():
    out = ROOT / "tests/fixtures/configs/param_counts_sd35.json"
    out.write_text(json.dumps({name: counts(folder) for name, folder in MODELS.items()}, indent=2) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
