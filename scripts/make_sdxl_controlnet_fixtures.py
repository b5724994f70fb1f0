#!/usr/bin/env python3
"""SDXL ControlNet fixture and goldens (never edit by hand). Run from the repository root, in the
venv of make_fixtures.py (a few seconds):

    /root/.cache/webdiffusion/venv/bin/python scripts/make_sdxl_controlnet_fixtures.py

tests/fixtures/controlnet-sdxl-tiny/   ControlNetModel.from_unet(sdxl-tiny unet,
    conditioning_embedding_out_channels=(8, 16, 16)): the UNet's down path and mid block with
    their per-block transformer depths, and its `text_time` add_embedding (diffusers' SDXL
    ControlNets condition on the pooled text and size ids too); two stride-2 convolutions take a
    64x64 control image to the 16x16 latents (VAE factor 4). Conditioning-embedding weights
    redrawn larger and every parameter perturbed as make_controlnet_fixtures.py does; FLOAT16 in
    diffusion_pytorch_model.safetensors.

Goldens tests/fixtures/controlnet/goldens-sdxl-tiny.safetensors (float32), inputs from
goldens/sdxl-tiny.safetensors (unet.sample [2,4,16,16], unet.encoder_hidden_states [2,77,80],
unet.text_embeds [2,40], unet.time_ids [2,6]):
  cond               [2,3,64,64] control-a then control-b (tests/fixtures/controlnet/, resized
                     to 64x64 with PIL LANCZOS as diffusers' image processor does) / 255
  down.{j}, mid      controlnet(sample, t=500, ehs, controlnet_cond=cond, conditioning_scale=1,
                     added_cond_kwargs={text_embeds, time_ids}) residuals
  mid.no_text_time   the mid residual with zero text_embeds (the add_embedding matters)
  unet.out           the UNet at t=500 with those residuals and the same added_cond_kwargs
  pipeline.latents / pipeline.image   StableDiffusionXLControlNetPipeline (sdxl-tiny + this
                     ControlNet), control-a, prompt "a photograph of an astronaut riding a horse",
                     negative "blurry, low quality", 4 steps, guidance 5, the model's Euler,
                     latents = goldens/sdxl-tiny txt2img.latents, controlnet_conditioning_scale 0.8
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixtures_common as fc  # noqa: E402
import make_fixtures as mf  # noqa: E402
from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

FIX = fc.FIX
NAME = "controlnet-sdxl-tiny"
PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"


def control(name, size):
    image = Image.open(FIX / "controlnet" / name).convert("RGB").resize((size, size), Image.LANCZOS)
    return image, torch.from_numpy(np.asarray(image).astype(np.float32) / 255.0).permute(2, 0, 1)[None]


@torch.no_grad()
def build():
    pipe = StableDiffusionXLPipeline.from_pretrained(FIX / "sdxl-tiny", torch_dtype=torch.float32)
    torch.manual_seed(2026)
    net = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(8, 16, 16)).eval()
    g = mf.gen(2027)
    ce = net.controlnet_cond_embedding
    for conv in (ce.conv_in, *ce.blocks, ce.conv_out):
        gain = 0.5 if conv is ce.conv_out else 2.0
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * gain / conv.weight[0].numel() ** 0.5)
    mf.perturb(net, 2028)
    assert net.add_embedding is not None
    mf.round_to(net, torch.float16)
    net.to(torch.float16).save_pretrained(FIX / NAME, safe_serialization=True)
    net = ControlNetModel.from_pretrained(FIX / NAME, torch_dtype=torch.float32).eval()
    return pipe, net


@torch.no_grad()
def main():
    pipe, net = build()
    base = load_file(FIX / "goldens/sdxl-tiny.safetensors")
    sample, ehs = base["unet.sample"], base["unet.encoder_hidden_states"]
    added = {"text_embeds": base["unet.text_embeds"], "time_ids": base["unet.time_ids"]}
    (image_a, cond_a), (_, cond_b) = control("control-a.png", 64), control("control-b.png", 64)
    cond = torch.cat([cond_a, cond_b])
    out = {"cond": cond}
    down, mid = net(sample, 500, ehs, controlnet_cond=cond, conditioning_scale=1.0,
                    added_cond_kwargs=added, return_dict=False)
    for j, d in enumerate(down):
        out[f"down.{j}"] = d
    out["mid"] = mid
    zero = {"text_embeds": torch.zeros_like(added["text_embeds"]), "time_ids": added["time_ids"]}
    _, mid_zero = net(sample, 500, ehs, controlnet_cond=cond, added_cond_kwargs=zero, return_dict=False)
    out["mid.no_text_time"] = mid_zero
    assert fc.rel_l2(mid_zero, mid) > 1e-3
    out["unet.out"] = pipe.unet(sample, 500, ehs, added_cond_kwargs=added, down_block_additional_residuals=down,
                                mid_block_additional_residual=mid).sample
    cpipe = StableDiffusionXLControlNetPipeline(**pipe.components, controlnet=net)
    latents = cpipe(PROMPT, negative_prompt=NEGATIVE, image=image_a, num_inference_steps=4, guidance_scale=5.0,
                    latents=base["txt2img.latents"].clone(), controlnet_conditioning_scale=0.8,
                    output_type="latent").images
    out["pipeline.latents"] = latents
    out["pipeline.image"] = fc.np_image(pipe.vae, latents)
    assert fc.rel_l2(latents, base["euler.latents"]) > 1e-3, "the ControlNet must change the result"
    fc.save_goldens(FIX / "controlnet/goldens-sdxl-tiny.safetensors", out, "scripts/make_sdxl_controlnet_fixtures.py")


if __name__ == "__main__":
    main()
