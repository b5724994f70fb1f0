"""Single-file (CompVis / A1111 layout) checkpoints of the tiny fixtures, for `convert`.

Community models are shared as one .safetensors in the original latent-diffusion layout
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`). This script
writes tests/fixtures/single/{sd1,sd2}-tiny.safetensors from the tiny diffusers folders
(weights in f16, as such files usually are), and checks each against diffusers' own
single-file converters (`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
`convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`): they must give back the
folder's tensors exactly. SD 2.x files carry OpenCLIP text-encoder keys (fused q/k/v).

Run: python scripts/make_single_files.py   (same environment as make_fixtures.py)
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors.torch import save_file
from transformers import CLIPTextModel

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
          ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
          ("conv_shortcut", "skip_connection")]


def unet_to_ldm(sd, config):
    per = config["layers_per_block"] + 1
    out = {}
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for key, value in sd.items():
        parts = key.split(".")
        head = next((h for h in fixed if key.startswith(h + ".")), None)
        if head:
            new = fixed[head] + key[len(head):]
        elif parts[0] == "down_blocks":
            b, kind = int(parts[1]), parts[2]
            if kind == "downsamplers":
                new = f"input_blocks.{(b + 1) * per}.0.op." + ".".join(parts[5:])
            else:
                j = int(parts[3])
                slot = 0 if kind == "resnets" else 1
                new = f"input_blocks.{1 + b * per + j}.{slot}." + ".".join(parts[4:])
        elif parts[0] == "mid_block":
            kind, j = parts[1], int(parts[2])
            slot = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(kind, j)]
            new = f"middle_block.{slot}." + ".".join(parts[3:])
        elif parts[0] == "up_blocks":
            b, kind = int(parts[1]), parts[2]
            if kind == "upsamplers":
                has_attn = any(k.startswith(f"up_blocks.{b}.attentions.") for k in sd)
                new = f"output_blocks.{b * per + per - 1}.{2 if has_attn else 1}.conv." + parts[-1]
            else:
                j = int(parts[3])
                slot = 0 if kind == "resnets" else 1
                new = f"output_blocks.{b * per + j}.{slot}." + ".".join(parts[4:])
        else:
            raise KeyError(key)
        if "resnets" in key:
            for d, l in RESNET:
                new = new.replace(f".{d}.", f".{l}.")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(sd, config):
    n = len(config["up_block_types"])
    out = {}
    for key, value in sd.items():
        new = key.replace("conv_norm_out", "norm_out")
        parts = new.split(".")
        if parts[1] == "down_blocks":
            i = parts[2]
            if parts[3] == "downsamplers":
                new = f"{parts[0]}.down.{i}.downsample.conv.{parts[-1]}"
            else:
                new = f"{parts[0]}.down.{i}.block.{parts[4]}." + ".".join(parts[5:])
        elif parts[1] == "up_blocks":
            i = n - 1 - int(parts[2])
            if parts[3] == "upsamplers":
                new = f"{parts[0]}.up.{i}.upsample.conv.{parts[-1]}"
            else:
                new = f"{parts[0]}.up.{i}.block.{parts[4]}." + ".".join(parts[5:])
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                new = f"{parts[0]}.mid.block_{int(parts[3]) + 1}." + ".".join(parts[4:])
            else:
                rest = ".".join(parts[4:])
                for d, l in [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                             ("to_out.0", "proj_out")]:
                    rest = rest.replace(d + ".", l + ".")
                new = f"{parts[0]}.mid.attn_1.{rest}"
                if value.ndim == 2:
                    value = value[:, :, None, None]  # 1×1 convolutions in LDM
        new = new.replace("conv_shortcut", "nin_shortcut")
        out["first_stage_model." + new] = value
    return out


def clip_to_ldm(sd):
    return {"cond_stage_model.transformer." + k: v for k, v in sd.items()}


def open_clip_to_ldm(sd, layers):
    p = "cond_stage_model.model."
    out = {
        p + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        p + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        p + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        p + "ln_final.bias": sd["text_model.final_layer_norm.bias"],
    }
    hidden = out[p + "ln_final.weight"].shape[0]
    out[p + "text_projection"] = torch.eye(hidden, dtype=out[p + "ln_final.weight"].dtype)
    for i in range(layers):
        s, r = f"text_model.encoder.layers.{i}.", f"{p}transformer.resblocks.{i}."
        for t in ["weight", "bias"]:
            out[r + f"attn.in_proj_{t}"] = torch.cat(
                [sd[s + f"self_attn.{n}_proj.{t}"] for n in "qkv"], dim=0)
            out[r + f"attn.out_proj.{t}"] = sd[s + f"self_attn.out_proj.{t}"]
            out[r + f"ln_1.{t}"] = sd[s + f"layer_norm1.{t}"]
            out[r + f"ln_2.{t}"] = sd[s + f"layer_norm2.{t}"]
            out[r + f"mlp.c_fc.{t}"] = sd[s + f"mlp.fc1.{t}"]
            out[r + f"mlp.c_proj.{t}"] = sd[s + f"mlp.fc2.{t}"]
    return out


def same(ours, theirs, what):
    assert set(ours) == set(theirs), f"{what}: keys differ: {set(ours) ^ set(theirs)}"
    for k in ours:
        assert torch.equal(ours[k].float(), theirs[k].float()), f"{what}: {k} differs"


def main():
    (FIX / "single").mkdir(exist_ok=True)
    for name, open_clip in [("sd1-tiny", False), ("sd2-tiny", True)]:
        folder = FIX / name
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", variant="fp16" if open_clip else None)
        vae = AutoencoderKL.from_pretrained(folder / "vae")
        text = CLIPTextModel.from_pretrained(folder / "text_encoder")
        unet_sd, vae_sd = unet.state_dict(), vae.state_dict()
        text_sd = {k if k.startswith("text_model.") else "text_model." + k: v
                   for k, v in text.state_dict().items()}
        ldm = {}
        ldm.update(unet_to_ldm(unet_sd, unet.config))
        ldm.update(vae_to_ldm(vae_sd, vae.config))
        if open_clip:
            ldm.update(open_clip_to_ldm(text_sd, text.config.num_hidden_layers))
        else:
            ldm.update(clip_to_ldm(text_sd))
        # What real files carry besides the networks.
        ldm["alphas_cumprod"] = torch.linspace(1.0, 0.01, 1000)
        ldm["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)

        same(convert_ldm_unet_checkpoint(ldm, dict(unet.config)), unet_sd, f"{name} unet")
        same(convert_ldm_vae_checkpoint(ldm, dict(vae.config)), vae_sd, f"{name} vae")
        if open_clip:
            theirs = convert_open_clip_checkpoint(text, ldm)
        else:
            theirs = convert_ldm_clip_checkpoint(ldm)
        theirs = {k: v for k, v in theirs.items() if "position_ids" not in k and "text_projection" not in k}
        ours = {k: v for k, v in text_sd.items() if "position_ids" not in k}
        same(theirs, ours, f"{name} text encoder")

        ldm = {k: (v.half() if v.is_floating_point() and k != "alphas_cumprod" else v).contiguous()
               for k, v in ldm.items()}
        save_file(ldm, FIX / "single" / f"{name}.safetensors")
        print(f"{name}: {len(ldm)} tensors, checked against diffusers' converters")


if __name__ == "__main__":
    main()
