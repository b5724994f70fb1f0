#!/usr/bin/env python3
"""Generate the golden test fixtures under tests/fixtures/ (never edit them by hand).

Regenerate (from the repository root; takes under a minute on 2 cores):

    python3 -m venv /root/.cache/webdiffusion/venv
    /root/.cache/webdiffusion/venv/bin/pip install -r scripts/requirements.txt
    /root/.cache/webdiffusion/venv/bin/python scripts/make_fixtures.py

No network access to the Hugging Face hub is needed: the CLIP BPE vocabulary comes from
the `open_clip_torch` package (bpe_simple_vocab_16e6.txt.gz), every model has random
weights, and the full-size configs are written from the values of the public hub repos.
Everything is computed in float32 on the CPU with fixed seeds and a single thread, so a
re-run with the pinned versions gives byte-identical files.

What is written
---------------
tests/fixtures/sd1-tiny/      SD 1.x-like diffusers pipeline folder (hub layout), random weights
    model_index.json              as StableDiffusionPipeline.save_pretrained writes it
    unet/                         UNet2DConditionModel, 3 levels (16,32,32), 2 layers/block,
                                  4 heads (int attention_head_dim), conv proj_in/out,
                                  cross_attention_dim 32, flip_sin_to_cos true, freq_shift 0,
                                  sample_size 16; float32 diffusion_pytorch_model.safetensors
    vae/                          AutoencoderKL (16,32) -> downsampling factor 2, 4 latent
                                  channels, scaling_factor 0.18215; float32
    text_encoder/                 CLIPTextModel, hidden 32, 3 layers, 4 heads, quick_gelu,
                                  vocab 49408; model.safetensors in FLOAT16 with the
                                  `text_model.` key prefix of real SD checkpoints, plus the
                                  int64 `text_model.embeddings.position_ids` [1,77] buffer
                                  that real SD 1.x text encoders carry
    tokenizer/                    vocab.json, merges.txt, tokenizer_config.json,
                                  special_tokens_map.json like the SD 1.5 hub folder (no
                                  tokenizer.json); pad token <|endoftext|> (49407), max 77
    scheduler/scheduler_config.json  PNDM, SD 1.5's config (no timestep_spacing key)
tests/fixtures/sd2-tiny/      SD 2.x-like pipeline folder, random weights
    unet/                         3 levels (16,32,48), 1 layer/block, all three down blocks
                                  CrossAttnDownBlock2D (up: all CrossAttnUpBlock2D),
                                  attention_head_dim [2,4,6] (= heads per block, head dim 8),
                                  transformer_layers_per_block [1,2,1], linear proj_in/out,
                                  upcast_attention, cross_attention_dim 24,
                                  flip_sin_to_cos false, freq_shift 1, sample_size 8; stored
                                  FLOAT16 only as diffusion_pytorch_model.fp16.safetensors
    vae/                          AutoencoderKL (16,32,32) -> factor 4; float32
    text_encoder/                 CLIPTextModel, hidden 24, 4 layers, 2 heads, gelu, pad id 0;
                                  BFLOAT16, keys without the `text_model.` prefix
                                  (as transformers 5 writes them)
    tokenizer/                    tokenizer.json + tokenizer_config.json (as transformers 5
                                  saves them) + special_tokens_map.json; no vocab.json /
                                  merges.txt. Pad token "!" (id 0), which is a special added
                                  token here: a literal "!" in a prompt encodes as id 0 too
    scheduler/scheduler_config.json  DDIM, SD 2.1's config, v_prediction, "leading"
tests/fixtures/goldens/
    prompts.json                  the prompts used for the text goldens (same for both)
    {sd1,sd2}-tiny.safetensors    reference tensors computed with diffusers/transformers
                                  from the pipeline folder as reloaded from disk (float32
                                  maths; the f16/bf16 weights were rounded before saving, so
                                  the stored values are exactly what was used):
        input_ids.{i}                 int64 [1,77]: tokenizer(prompt_i, padding="max_length",
                                      max_length=77, truncation=True)
        prompt_embeds.{i}             [1,77,D]: text_encoder(input_ids).last_hidden_state
        prompt_embeds.clip_skip{1,2}.0   prompt 0; final_layer_norm(hidden_states[-(s+1)])
        unet.sample                   [2,4,h,w] randn
        unet.encoder_hidden_states    [2,77,cross_dim] randn
        unet.timestep.{k}             float32 [1], k=0..3 -> 999, 500, 1, 261.5
        unet.out.{k}                  unet(sample, timestep_k, encoder_hidden_states).sample
        unet.down_residual.{j}        ControlNet-style additional residuals (0.1*randn), one per
                                      entry of the UNet's down residual list (conv_in first)
        unet.mid_residual             ControlNet-style mid residual (0.1*randn)
        unet.out_residuals            unet(sample, 500, ehs, down_block_additional_residuals,
                                      mid_block_additional_residual).sample
        vae.latents                   [1,4,h,w] randn, pipeline (scaled) latent space
        vae.decoded                   vae.decode(latents / scaling_factor).sample, not clamped
        vae.image                     [1,3,H,W] uniform in [-1,1]
        vae.mean, vae.logvar          vae.encode(image).latent_dist.mean / .logvar
        vae.png_mean                  vae.encode(png / 127.5 - 1).latent_dist.mean
    {sd1,sd2}-tiny-vae-input.png  8-bit RGB H x W test image for vae.png_mean (and img2img)
    schedulers.safetensors        scheduler goldens without a model (float32; `timesteps` and
                                  `img2img_timesteps` keep diffusers' dtype: int64 for DDIM,
                                  DDPM, PNDM, DPM++, UniPC, LCM, float32 for Euler, Euler-a, Heun)
        trajectory.x0, .c             [1,4,8,8] randn (seed 3000, in that order)
        {cfg}.{NAME}.{N}.*            cfg "eps" = sd1-tiny's scheduler_config.json (PNDM, no
                                      timestep_spacing), "v" = sd2-tiny's (DDIM, v_prediction,
                                      leading); NAME in SCHEDULERS built as
                                      Class.from_config(base_config, **overrides); N in 8, 20
                                      (also 1, 4 for euler and lcm). Loop, as a pipeline runs it:
                                      x = x0 * init_noise_sigma; for each t: inp =
                                      scale_model_input(x, t); model_output = 0.5*inp +
                                      coef(t)*c with coef(t) = 0.1*cos(t/300); x = step(...)
            timesteps                     scheduler.timesteps after set_timesteps(N)
            sigmas                        scheduler.sigmas (Euler, Euler-a, Heun, DPM++, UniPC)
            init_noise_sigma              [1]
            coef                          [len(timesteps)] f32 coef(t_i) as used
            scaled.{i}                    scale_model_input output, first and last step only
            out.{i}                       x after step i: every step for N <= 8, else first/last
            final                         x after the last step
            noise.{k}                     stochastic schedulers only (ddim-eta, euler-a, lcm,
                                          ddpm): k-th noise drawn (randn_tensor patched, seed
                                          3100); where each is consumed: NOISE_USE
        {cfg}.{NAME}.add_noise        fresh scheduler, set_timesteps(8):
                                      add_noise(trajectory.x0, trajectory.c, timesteps[2:3])
        {cfg}.{NAME}.img2img_timesteps   StableDiffusionImg2ImgPipeline.get_timesteps(8, 0.6)
        {cfg}.{NAME}.img2img_t_start  int64 [1] (tail = timesteps[t_start * order:])
    schedulers.json               per {cfg}.{NAME}: class, overrides, step kwargs, order, noise
                                  use and the effective dict(scheduler.config) (with defaults)
    pipeline-{sd1,sd2}-tiny.safetensors   StableDiffusionPipeline.from_pretrained(folder,
                                  safety_checker=None), float32; prompt / negative prompt /
                                  8 steps / guidance 7.5 as in pipeline.json
        latents                       [1,4,h,w] randn, passed as `latents=` (the pipeline then
                                      multiplies by init_noise_sigma)
        {NAME}.latents, {NAME}.image  NAME in PIPE_SCHEDULERS (from_config(pipe.scheduler.config,
                                      **overrides)) and "own" (the loaded scheduler); latents =
                                      output_type="latent"; image [H,W,3] = output_type="np":
                                      (vae.decode(latents / sf).sample / 2 + 0.5).clamp(0, 1)
        guidance1.latents/.image      own scheduler, guidance_scale 1.0 (one UNet pass, no
                                      negative prompt)
        euler-a.latents/.image, euler-a.noise.{k}   Euler ancestral, noise k consumed at step k
        img2img.noise                 [1,4,h,w] randn: the noise StableDiffusionImg2ImgPipeline
                                      adds to the init latents (its randn_tensor patched)
        img2img.init_latents          sf * vae.encode(image).latent_dist.mean (retrieve_latents
                                      forced to sample_mode="argmax": no posterior sampling)
        img2img.{own,euler}.start_latents   add_noise(init_latents, noise, first timestep)
        img2img.{own,euler}.latents/.image  strength 0.6, 8 steps, guidance 7.5
    pipeline.json                 the exact parameters, scheduler configs and timesteps used
crate/assets/                 what the crate ships for `convert --config sd15|sd21` and `bench`
    sd15/{unet,vae,text_encoder}/config.json   runwayml/stable-diffusion-v1-5
    sd21/{unet,vae,text_encoder}/config.json   stabilityai/stable-diffusion-2-1
    {sd15,sd21}/model_index.json, scheduler/, tokenizer/{tokenizer_config,special_tokens_map}.json
                                  copies of sd1-tiny's / sd2-tiny's (the hub repos' values)
    clip/vocab.json, merges.txt   the CLIP BPE (as in sd1-tiny/tokenizer)
tests/fixtures/configs/
    param_counts.json             parameter counts of those models, instantiated on the meta
                                  device: unet, vae, vae_encoder (encoder+quant_conv),
                                  vae_decoder (post_quant_conv+decoder), text_encoder
"""

import copy
import gzip
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import accelerate
import diffusers
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
diffusers.utils.logging.set_verbosity_error()
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
diffusers.utils.logging.disable_progress_bar()

PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "",
    "café naïve — 東京タワー, Zürich",
    "🐱🚀 a cat in a rocket!!",
    (
        "an extremely detailed oil painting of a quiet harbour town at dawn, with fishing boats "
        "resting on calm silver water, gulls circling above weathered wooden piers, narrow cobbled "
        "streets climbing the hillside between whitewashed houses with blue shutters, a lighthouse "
        "on the far rocks, soft pink and orange clouds reflected in the sea, an old man mending nets "
        "beside stacked lobster pots, a small dog sleeping in a patch of early sunlight, laundry "
        "hanging between windows, flowers in terracotta pots on every step, distant mountains fading "
        "into mist, warm golden light, gentle brush strokes, rich textures, masterpiece, trending "
        "on an art gallery wall, painted by a patient artist who loved the sea and the people living "
        "beside it for many long years"
    ),
    "  Hello,   WORLD's\tTABS\nand newlines... 3.14 1234567 ",
    "a red cube<|endoftext|>a blue sphere on a table",
]

TIMESTEPS = [999.0, 500.0, 1.0, 261.5]


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def gen(seed):
    g = torch.Generator().manual_seed(seed)
    return g


def stats(name, t):
    t = t.detach().double()
    finite = bool(torch.isfinite(t).all())
    std = float(t.std()) if t.numel() > 1 else 0.0
    print(
        f"  {name:32s} {str(list(t.shape)):18s} mean {t.mean():+.4f} std {std:.4f} "
        f"min {t.min():+.4f} max {t.max():+.4f}{'' if finite else '  NON-FINITE!'}"
    )
    assert finite, name
    return std


@torch.no_grad()
def perturb(model, seed):
    """Make every parameter non-trivial: biases are zero and norm weights one at init.

    Tensors that vary get noise relative to their own spread (0.3*std); constant tensors
    (zero biases, unit norm weights, ...) get 0.05*randn (0.1*randn for unit scales)."""
    g = gen(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
        sd = float(p.float().std()) if p.numel() > 1 else 0.0
        if sd > 1e-8:
            s = 0.3 * sd
        elif float(p.float().abs().mean()) > 0.5:  # unit scale (norm weight)
            s = 0.1
        else:  # zero bias
            s = 0.05
        p.add_(noise * s)


@torch.no_grad()
def boost_unet(unet, factor=3.0):
    """Random init leaves the timestep embedding and cross-attention with little influence
    on the UNet output; scale their output projections so that the goldens are sensitive to
    them (a wrong sinusoid layout or head split must show up clearly)."""
    for name, p in unet.named_parameters():
        if name.endswith(("time_emb_proj.weight", "time_emb_proj.bias", "attn2.to_out.0.weight")):
            p.mul_(factor)


@torch.no_grad()
def round_to(model, dtype):
    for p in model.parameters():
        p.copy_(p.to(dtype).to(torch.float32))


def write_json(path, obj, indent=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


# ----------------------------------------------------------------------------------------
# tokenizer files from open_clip's BPE
# ----------------------------------------------------------------------------------------


def clip_vocab_and_merges():
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    assert len(merges) == 48894
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split(" ")) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    return {t: i for i, t in enumerate(vocab)}, merges


def write_vocab_merges(folder, vocab, merges):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(folder / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")


def added_token(content, with_type):
    d = {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **d} if with_type else d


def hub_tokenizer_config(pad):
    """tokenizer_config.json in the (transformers 4) form of the SD 1.5 hub repo."""
    return {
        "add_prefix_space": False,
        "bos_token": added_token("<|startoftext|>", True),
        "do_lower_case": True,
        "eos_token": added_token("<|endoftext|>", True),
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": "openai/clip-vit-large-patch14",
        "pad_token": pad,
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": added_token("<|endoftext|>", True),
    }


def special_tokens_map(pad):
    return {
        "bos_token": added_token("<|startoftext|>", False),
        "eos_token": added_token("<|endoftext|>", False),
        "pad_token": pad,
        "unk_token": added_token("<|endoftext|>", False),
    }


# ----------------------------------------------------------------------------------------
# tiny model specs
# ----------------------------------------------------------------------------------------

SD1 = dict(
    name="sd1-tiny",
    seed=1000,
    unet=dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
        use_linear_projection=False,
        flip_sin_to_cos=True,
        freq_shift=0,
    ),
    unet_dtype=None,  # stored float32
    vae=dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.18215,
    ),
    text=dict(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    ),
    text_dtype=torch.float16,
    text_prefix=True,
    pad_token="<|endoftext|>",
    tokenizer_files="vocab+merges",  # vocab.json + merges.txt, as the SD 1.5 hub folder
    scheduler_cls=PNDMScheduler,
    scheduler={
        "_class_name": "PNDMScheduler",
        "_diffusers_version": diffusers.__version__,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
)

SD2 = dict(
    name="sd2-tiny",
    seed=2000,
    unet=dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 48),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=24,
        attention_head_dim=[2, 4, 6],
        transformer_layers_per_block=[1, 2, 1],
        norm_num_groups=8,
        use_linear_projection=True,
        upcast_attention=True,
        flip_sin_to_cos=False,
        freq_shift=1,
    ),
    unet_dtype=torch.float16,  # stored only as the fp16 variant
    vae=dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.18215,
    ),
    text=dict(
        vocab_size=49408,
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    ),
    text_dtype=torch.bfloat16,
    text_prefix=False,
    pad_token="!",
    tokenizer_files="tokenizer.json",  # as transformers 5 saves it
    scheduler_cls=DDIMScheduler,
    scheduler={
        "_class_name": "DDIMScheduler",
        "_diffusers_version": diffusers.__version__,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
    },
)


def build_models(spec):
    seed = spec["seed"]
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**spec["unet"]).eval()
    perturb(unet, seed + 2)
    boost_unet(unet)
    if spec["unet_dtype"] is not None:
        round_to(unet, spec["unet_dtype"])

    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(**spec["vae"]).eval()
    perturb(vae, seed + 4)

    torch.manual_seed(seed + 5)
    text = CLIPTextModel(CLIPTextConfig(**spec["text"])).eval()
    perturb(text, seed + 6)
    round_to(text, spec["text_dtype"])
    return unet, vae, text


def write_pipeline(spec, unet, vae, text, vocab, merges):
    out = FIX / spec["name"]
    if out.exists():
        shutil.rmtree(out)
    tmp = Path(tempfile.mkdtemp(prefix="fixtures-"))
    try:
        # tokenizer: built from vocab.json + merges.txt, as transformers 5 would
        tokdir = tmp / "tok-src"
        write_vocab_merges(tokdir, vocab, merges)
        tokenizer = CLIPTokenizer(
            vocab=str(tokdir / "vocab.json"),
            merges=str(tokdir / "merges.txt"),
            pad_token=spec["pad_token"],
            model_max_length=77,
        )
        scheduler = spec["scheduler_cls"].from_config(spec["scheduler"])

        text.to(spec["text_dtype"])
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(tmp / "pipe", safe_serialization=True)
        text.to(torch.float32)
        shutil.move(str(tmp / "pipe"), str(out))
    finally:
        shutil.rmtree(tmp)

    # --- text encoder: key prefix (real SD 1.x checkpoints) and dtype check
    te_file = out / "text_encoder" / "model.safetensors"
    sd = load_file(te_file)
    assert all(v.dtype == spec["text_dtype"] for v in sd.values())
    if spec["text_prefix"]:
        sd = {"text_model." + k: v.contiguous() for k, v in sd.items()}
        # real SD 1.x text encoders also carry the (then persistent) position_ids buffer
        sd["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    save_file(dict(sorted(sd.items())), te_file, metadata={"format": "pt"})
    te_cfg = json.load(open(out / "text_encoder" / "config.json"))
    want = {torch.float16: "float16", torch.bfloat16: "bfloat16"}[spec["text_dtype"]]
    assert te_cfg.get("dtype", te_cfg.get("torch_dtype")) == want, te_cfg

    # --- unet: fp16 variant only
    if spec["unet_dtype"] is not None:
        udir = out / "unet"
        (udir / "diffusion_pytorch_model.safetensors").unlink()
        usd = {k: v.to(spec["unet_dtype"]).contiguous() for k, v in unet.state_dict().items()}
        save_file(usd, udir / "diffusion_pytorch_model.fp16.safetensors", metadata={"format": "pt"})

    # --- tokenizer folder
    # sd1: vocab.json + merges.txt only (like the SD 1.5 hub folder); sd2: tokenizer.json only,
    # so that each tokenizer-loading path is exercised by exactly one fixture (and by its
    # second-seed copy of make_half_fixtures.py). The spec's `tokenizer_files` picks the layout.
    tdir = out / "tokenizer"
    write_json(tdir / "special_tokens_map.json", special_tokens_map(spec["pad_token"]))
    if spec["tokenizer_files"] == "vocab+merges":
        (tdir / "tokenizer.json").unlink()
        write_vocab_merges(tdir, vocab, merges)
        write_json(tdir / "tokenizer_config.json", hub_tokenizer_config(spec["pad_token"]))
    else:
        assert spec["tokenizer_files"] == "tokenizer.json", spec["tokenizer_files"]
        assert (tdir / "tokenizer.json").exists()
        tc = json.load(open(tdir / "tokenizer_config.json"))
        assert tc["pad_token"] == spec["pad_token"] and tc["model_max_length"] == 77, tc

    # --- scheduler config exactly as the hub repo's (no defaults filled in)
    write_json(out / "scheduler" / "scheduler_config.json", spec["scheduler"])
    return tokenizer


def check_params_equal(a, b, what):
    sa, sb = a.state_dict(), b.state_dict()
    sa = {k: v for k, v in sa.items() if "position_ids" not in k}
    sb = {k: v for k, v in sb.items() if "position_ids" not in k}
    assert sa.keys() == sb.keys(), (what, set(sa) ^ set(sb))
    for k in sa:
        assert sa[k].dtype == torch.float32 and sb[k].dtype == torch.float32, (what, k)
        assert torch.equal(sa[k], sb[k]), (what, k)


def png_image(size, seed):
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)
    r = 0.5 + 0.5 * np.sin(2 * np.pi * (1.3 * x + 0.4 * y) + 0.3)
    g = 0.5 + 0.5 * np.cos(2 * np.pi * (0.7 * x - 1.1 * y) + 1.1)
    b = 0.5 + 0.45 * np.sin(2 * np.pi * np.hypot(x - 0.4, y - 0.6) * 1.7)
    img = np.stack([r, g, b], -1) * 255.0 + rng.normal(0, 6.0, (size, size, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def down_residual_shapes(cfg, h):
    boc = cfg["block_out_channels"]
    shapes = [(boc[0], h, h)]
    for i, c in enumerate(boc):
        for _ in range(cfg["layers_per_block"]):
            shapes.append((c, h, h))
        if i < len(boc) - 1:
            h //= 2
            shapes.append((c, h, h))
    return shapes, (boc[-1], h, h)


@torch.no_grad()
def make_goldens(spec, mem_unet, mem_vae, mem_text, mem_tok):
    name = spec["name"]
    folder = FIX / name
    kwargs = dict(dtype=torch.float32)
    if spec["unet_dtype"] is not None:
        kwargs["variant"] = "fp16"
    pipe = StableDiffusionPipeline.from_pretrained(folder, **kwargs)
    unet, vae, text, tok = pipe.unet.eval(), pipe.vae.eval(), pipe.text_encoder.eval(), pipe.tokenizer
    assert type(pipe.scheduler) is spec["scheduler_cls"], type(pipe.scheduler)
    check_params_equal(unet, mem_unet, "unet")
    check_params_equal(vae, mem_vae, "vae")
    check_params_equal(text, mem_text, "text_encoder")
    assert tok.pad_token == spec["pad_token"] and tok.model_max_length == 77
    assert len(tok) == 49408
    print(f"[{name}] reloaded pipeline matches the in-memory weights; tokenizer {type(tok).__name__}, "
          f"pad {tok.pad_token!r}={tok.pad_token_id}")

    out = {}
    # ---- text
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        ids_mem = mem_tok(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        assert torch.equal(ids, ids_mem), (name, i)
        assert ids.shape == (1, 77) and ids.dtype == torch.int64
        emb = text(ids).last_hidden_state
        ref, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
        assert torch.equal(emb, ref), (name, i)
        out[f"input_ids.{i}"] = ids
        out[f"prompt_embeds.{i}"] = emb
        n_real = int((ids[0] != tok.pad_token_id).sum()) if tok.pad_token_id != 49407 else None
        print(f"  prompt {i}: {ids[0, :12].tolist()}... ({n_real if n_real is not None else '-'} non-pad)")
    ids = out["input_ids.0"]
    o = text(ids, output_hidden_states=True)
    hs = o.hidden_states
    assert len(hs) == spec["text"]["num_hidden_layers"] + 1
    assert torch.allclose(text.final_layer_norm(hs[-1]), o.last_hidden_state, atol=1e-6)
    for skip in (1, 2):
        out[f"prompt_embeds.clip_skip{skip}.0"] = text.final_layer_norm(hs[-(skip + 1)])

    # ---- unet
    g = gen(spec["seed"] + 10)
    h = spec["unet"]["sample_size"]
    cross = spec["unet"]["cross_attention_dim"]
    sample = torch.randn(2, 4, h, h, generator=g)
    ehs = torch.randn(2, 77, cross, generator=g)
    out["unet.sample"] = sample
    out["unet.encoder_hidden_states"] = ehs
    for k, t in enumerate(TIMESTEPS):
        ts = torch.tensor([t], dtype=torch.float32)
        out[f"unet.timestep.{k}"] = ts
        out[f"unet.out.{k}"] = unet(sample, ts, encoder_hidden_states=ehs).sample
    down_shapes, mid_shape = down_residual_shapes(spec["unet"], h)
    down = [0.1 * torch.randn(2, *s, generator=g) for s in down_shapes]
    mid = 0.1 * torch.randn(2, *mid_shape, generator=g)
    for j, d in enumerate(down):
        out[f"unet.down_residual.{j}"] = d
    out["unet.mid_residual"] = mid
    out["unet.out_residuals"] = unet(
        sample,
        torch.tensor([500.0]),
        encoder_hidden_states=ehs,
        down_block_additional_residuals=tuple(down),
        mid_block_additional_residual=mid,
    ).sample

    # ---- vae
    factor = 2 ** (len(spec["vae"]["block_out_channels"]) - 1)
    H = h * factor
    sf = vae.config.scaling_factor
    latents = torch.randn(1, 4, h, h, generator=g)
    out["vae.latents"] = latents
    out["vae.decoded"] = vae.decode(latents / sf).sample
    assert out["vae.decoded"].shape == (1, 3, H, H)
    image = torch.rand(1, 3, H, H, generator=g) * 2 - 1
    out["vae.image"] = image
    dist = vae.encode(image).latent_dist
    out["vae.mean"], out["vae.logvar"] = dist.mean, dist.logvar
    png_path = FIX / "goldens" / f"{name}-vae-input.png"
    Image.fromarray(png_image(H, spec["seed"] + 20), "RGB").save(png_path, compress_level=9)
    px = np.asarray(Image.open(png_path).convert("RGB"), dtype=np.float32)
    assert px.shape == (H, H, 3)
    pim = torch.from_numpy(px / 127.5 - 1.0).permute(2, 0, 1)[None].contiguous()
    out["vae.png_mean"] = vae.encode(pim).latent_dist.mean

    out = {k: v.contiguous() for k, v in out.items()}
    for k, v in out.items():
        assert v.dtype == (torch.int64 if k.startswith("input_ids") else torch.float32), k
    print(f"[{name}] output statistics:")
    for k in out:
        if not k.startswith(("input_ids", "unet.down_residual")):
            stats(k, out[k])
    # magnitude sanity: O(1) outputs, nothing exploding or vanishing
    for k in ["unet.out.0", "unet.out.1", "unet.out.2", "unet.out.3", "unet.out_residuals",
              "vae.decoded", "vae.mean", "prompt_embeds.0"]:
        s = float(out[k].std())
        assert 0.05 < s < 20, (k, s)
    save_file(out, FIX / "goldens" / f"{name}.safetensors", metadata={"generator": "scripts/make_fixtures.py"})


# ----------------------------------------------------------------------------------------
# full-size configs (values of the hub repos' config.json files)
# ----------------------------------------------------------------------------------------

SD_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
SD_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]

FULL_CONFIGS = {
    "sd15": {
        "unet": {
            "_class_name": "UNet2DConditionModel",
            "_diffusers_version": "0.6.0",
            "act_fn": "silu",
            "attention_head_dim": 8,
            "block_out_channels": [320, 640, 1280, 1280],
            "center_input_sample": False,
            "cross_attention_dim": 768,
            "down_block_types": SD_DOWN,
            "downsample_padding": 1,
            "flip_sin_to_cos": True,
            "freq_shift": 0,
            "in_channels": 4,
            "layers_per_block": 2,
            "mid_block_scale_factor": 1,
            "norm_eps": 1e-05,
            "norm_num_groups": 32,
            "out_channels": 4,
            "sample_size": 64,
            "up_block_types": SD_UP,
        },
        "vae": {
            "_class_name": "AutoencoderKL",
            "_diffusers_version": "0.6.0",
            "act_fn": "silu",
            "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "in_channels": 3,
            "latent_channels": 4,
            "layers_per_block": 2,
            "norm_num_groups": 32,
            "out_channels": 3,
            "sample_size": 512,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
        },
        "text_encoder": {
            "_name_or_path": "openai/clip-vit-large-patch14",
            "architectures": ["CLIPTextModel"],
            "attention_dropout": 0.0,
            "bos_token_id": 0,
            "dropout": 0.0,
            "eos_token_id": 2,
            "hidden_act": "quick_gelu",
            "hidden_size": 768,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": 3072,
            "layer_norm_eps": 1e-05,
            "max_position_embeddings": 77,
            "model_type": "clip_text_model",
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "pad_token_id": 1,
            "projection_dim": 768,
            "torch_dtype": "float32",
            "transformers_version": "4.22.0.dev0",
            "vocab_size": 49408,
        },
    },
    "sd21": {
        "unet": {
            "_class_name": "UNet2DConditionModel",
            "_diffusers_version": "0.10.0.dev0",
            "act_fn": "silu",
            "attention_head_dim": [5, 10, 20, 20],
            "block_out_channels": [320, 640, 1280, 1280],
            "center_input_sample": False,
            "cross_attention_dim": 1024,
            "down_block_types": SD_DOWN,
            "downsample_padding": 1,
            "dual_cross_attention": False,
            "flip_sin_to_cos": True,
            "freq_shift": 0,
            "in_channels": 4,
            "layers_per_block": 2,
            "mid_block_scale_factor": 1,
            "norm_eps": 1e-05,
            "norm_num_groups": 32,
            "num_class_embeds": None,
            "only_cross_attention": False,
            "out_channels": 4,
            "sample_size": 96,
            "up_block_types": SD_UP,
            "upcast_attention": True,
            "use_linear_projection": True,
        },
        "vae": {
            "_class_name": "AutoencoderKL",
            "_diffusers_version": "0.8.0",
            "_name_or_path": "hf-models/stable-diffusion-v2-768x768/vae",
            "act_fn": "silu",
            "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "in_channels": 3,
            "latent_channels": 4,
            "layers_per_block": 2,
            "norm_num_groups": 32,
            "out_channels": 3,
            "sample_size": 768,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
        },
        "text_encoder": {
            "_name_or_path": "hf-models/stable-diffusion-v2-768x768/text_encoder",
            "architectures": ["CLIPTextModel"],
            "attention_dropout": 0.0,
            "bos_token_id": 0,
            "dropout": 0.0,
            "eos_token_id": 2,
            "hidden_act": "gelu",
            "hidden_size": 1024,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": 4096,
            "layer_norm_eps": 1e-05,
            "max_position_embeddings": 77,
            "model_type": "clip_text_model",
            "num_attention_heads": 16,
            "num_hidden_layers": 23,
            "pad_token_id": 1,
            "projection_dim": 512,
            "torch_dtype": "float32",
            "transformers_version": "4.25.0.dev0",
            "vocab_size": 49408,
        },
    },
}


def count(module):
    return sum(p.numel() for p in module.parameters())


# The SD 1.5 / SD 2.1 configs ship with the crate (`convert --config sd15|sd21`, `bench`):
# the networks' configs from FULL_CONFIGS, model_index.json and the scheduler config of the
# tiny pipeline of the same family (the hub repos' values), and the tokenizer files.
TINY_OF = {"sd15": "sd1-tiny", "sd21": "sd2-tiny"}


def write_full_configs():
    cdir = ROOT / "crate" / "assets"
    for model in FULL_CONFIGS:
        if (cdir / model).exists():
            shutil.rmtree(cdir / model)
    counts = {}
    for model, comps in FULL_CONFIGS.items():
        for comp, cfg in comps.items():
            write_json(cdir / model / comp / "config.json", cfg)
        tiny = FIX / TINY_OF[model]
        for path in ["model_index.json", "scheduler/scheduler_config.json",
                     "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json"]:
            (cdir / model / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tiny / path, cdir / model / path)
        with accelerate.init_empty_weights():
            unet = UNet2DConditionModel.from_config(
                UNet2DConditionModel.load_config(cdir / model / "unet")
            )
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cdir / model / "vae"))
            text = CLIPTextModel(CLIPTextConfig.from_json_file(cdir / model / "text_encoder" / "config.json"))
        assert all(p.device.type == "meta" for p in unet.parameters())
        counts[model] = {
            "unet": count(unet),
            "vae": count(vae),
            "vae_encoder": count(vae.encoder) + count(vae.quant_conv),
            "vae_decoder": count(vae.post_quant_conv) + count(vae.decoder),
            "text_encoder": count(text),
        }
        assert counts[model]["vae_encoder"] + counts[model]["vae_decoder"] == counts[model]["vae"]
    (cdir / "clip").mkdir(parents=True, exist_ok=True)
    for name in ["vocab.json", "merges.txt"]:
        shutil.copyfile(FIX / "sd1-tiny" / "tokenizer" / name, cdir / "clip" / name)
    (FIX / "configs").mkdir(exist_ok=True)
    write_json(FIX / "configs" / "param_counts.json", counts)
    print("param counts:", json.dumps(counts))


# ----------------------------------------------------------------------------------------
# scheduler goldens (no model: a smooth stand-in for the UNet)
# ----------------------------------------------------------------------------------------

# NAME -> (class, from_config overrides, step() kwargs). Built exactly as a user switching
# schedulers does: Class.from_config(base_config, **overrides).
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}, {}),
    "ddim-eta": (DDIMScheduler, {}, {"eta": 0.5}),
    "euler": (EulerDiscreteScheduler, {}, {}),
    "euler-a": (EulerAncestralDiscreteScheduler, {}, {}),
    "dpmpp-2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}, {}),
    "dpmpp-2m-karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        {},
    ),
    "heun": (HeunDiscreteScheduler, {}, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}, {}),
    "unipc": (UniPCMultistepScheduler, {}, {}),
    "lcm": (LCMScheduler, {}, {}),
    "ddpm": (DDPMScheduler, {}, {}),
}
# where each stochastic scheduler draws its noise (one randn_tensor call = one `noise.{k}`)
NOISE_USE = {
    "ddim-eta": "one noise per step, every step including the last: prev_sample = "
    "sqrt(alpha_prev)*x0_pred + sqrt(1-alpha_prev-std^2)*eps_pred + std*noise, std = eta*sqrt(variance)",
    "euler-a": "one noise per step, every step including the last, drawn after prev_sample = "
    "sample + derivative*(sigma_down - sigma); then prev_sample += noise*sigma_up",
    "lcm": "one noise per step except the last (none for a single step): prev_sample = "
    "sqrt(alpha_prev)*denoised + sqrt(1-alpha_prev)*noise",
    "ddpm": "one noise per step with t > 0 (after computing the posterior mean): "
    "prev_sample = mean + sqrt(variance)*noise",
}
SCHED_STEPS = {name: ((1, 4, 8, 20) if name in ("lcm", "euler") else (8, 20)) for name in SCHEDULERS}
SCHED_SEED = 3000  # trajectory.x0 then trajectory.c
NOISE_SEED = 3100  # noise.{k} = k-th torch.randn of this generator, for every run
IMG2IMG_STEPS, IMG2IMG_STRENGTH = 8, 0.6


class NoiseFeed:
    """Context manager replacing `randn_tensor` in the given modules (diffusers modules import
    it by name) with seeded N(0,1) draws in call order, all kept in `self.drawn`. `fixed` makes
    every call return that one tensor instead (the shape must match)."""

    def __init__(self, modules, seed=None, fixed=None):
        self.modules, self.fixed = modules, fixed
        self.g = gen(seed) if seed is not None else None
        self.drawn = []

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        assert generator is None, "the goldens never pass a generator"
        if self.fixed is not None:
            assert tuple(shape) == tuple(self.fixed.shape), (shape, self.fixed.shape)
            n = self.fixed.clone()
        else:
            n = torch.randn(tuple(shape), generator=self.g, dtype=torch.float32)
        self.drawn.append(n.clone())
        return n.to(dtype or torch.float32)

    def __enter__(self):
        self.saved = [(m, m.randn_tensor) for m in self.modules]
        for m in self.modules:
            m.randn_tensor = self
        return self

    def __exit__(self, *exc):
        for m, f in self.saved:
            m.randn_tensor = f


def scheduler_modules():
    """The scheduler modules that import randn_tensor (Heun, PNDM, UniPC do not)."""
    mods = {sys.modules[cls.__module__] for cls, _, _ in SCHEDULERS.values()}
    return sorted((m for m in mods if hasattr(m, "randn_tensor")), key=lambda m: m.__name__)


def base_scheduler_configs():
    return {
        "eps": json.load(open(FIX / "sd1-tiny" / "scheduler" / "scheduler_config.json")),
        "v": json.load(open(FIX / "sd2-tiny" / "scheduler" / "scheduler_config.json")),
    }


def make_scheduler(name, base_config):
    cls, overrides, _ = SCHEDULERS[name]
    return cls.from_config(base_config, **overrides)


def effective_config(scheduler):
    """dict(scheduler.config) made JSON-stable (`_use_default_values` is built from a set)."""
    cfg = dict(scheduler.config)
    if "_use_default_values" in cfg:
        cfg["_use_default_values"] = sorted(cfg["_use_default_values"])
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(cfg.items())}


def stand_in_coef(t):
    """Coefficient of `c` in the stand-in model output at timestep t: 0.1*cos(t/300) in f64
    (PyTorch then rounds it to f32 when multiplying the f32 tensor)."""
    return 0.1 * math.cos(float(t) / 300.0)


def trajectory(scheduler, step_kwargs, x0, c, n):
    """Run the sampling loop of a pipeline with model_output = 0.5*inp + coef(t)*c."""
    scheduler.set_timesteps(n)
    rec = {
        "timesteps": scheduler.timesteps.clone(),
        "init_noise_sigma": torch.tensor([float(scheduler.init_noise_sigma)], dtype=torch.float32),
    }
    if getattr(scheduler, "sigmas", None) is not None:
        rec["sigmas"] = scheduler.sigmas.clone()
    ts = list(scheduler.timesteps)
    rec["coef"] = torch.tensor([stand_in_coef(t) for t in ts], dtype=torch.float32)
    keep_all = n <= 8
    x = x0 * scheduler.init_noise_sigma
    for i, t in enumerate(ts):
        inp = scheduler.scale_model_input(x, t)
        model_output = 0.5 * inp + stand_in_coef(t) * c
        x = scheduler.step(model_output, t, x, **step_kwargs).prev_sample
        if i in (0, len(ts) - 1):
            rec[f"scaled.{i}"] = inp.clone()
        if keep_all or i in (0, len(ts) - 1):
            rec[f"out.{i}"] = x.clone()
    rec["final"] = x.clone()
    return rec


def expected_noises(name, timesteps):
    """Number of randn_tensor calls of a trajectory, per NOISE_USE."""
    return {
        "ddim-eta": len(timesteps),
        "euler-a": len(timesteps),
        "lcm": len(timesteps) - 1,
        "ddpm": int((timesteps > 0).sum()),
    }.get(name, 0)


def img2img_timesteps(scheduler):
    """StableDiffusionImg2ImgPipeline.get_timesteps, called on the scheduler as the pipeline
    does (after set_timesteps); returns (timesteps tail, t_start)."""
    scheduler.set_timesteps(IMG2IMG_STEPS)
    ts, n = StableDiffusionImg2ImgPipeline.get_timesteps(
        SimpleNamespace(scheduler=scheduler), IMG2IMG_STEPS, IMG2IMG_STRENGTH, "cpu"
    )
    return ts.clone(), IMG2IMG_STEPS - n


@torch.no_grad()
def make_scheduler_goldens():
    g = gen(SCHED_SEED)
    x0 = torch.randn(1, 4, 8, 8, generator=g)
    c = torch.randn(1, 4, 8, 8, generator=g)
    out = {"trajectory.x0": x0, "trajectory.c": c}
    entries = {}
    modules = scheduler_modules()
    for cfg_name, base in base_scheduler_configs().items():
        for name, (cls, overrides, step_kwargs) in SCHEDULERS.items():
            key = f"{cfg_name}.{name}"
            sched = make_scheduler(name, base)
            assert type(sched) is cls
            for n in SCHED_STEPS[name]:
                sched = make_scheduler(name, base)
                with NoiseFeed(modules, seed=NOISE_SEED) as feed:
                    rec = trajectory(sched, step_kwargs, x0, c, n)
                assert len(feed.drawn) == expected_noises(name, rec["timesteps"]), (key, n, len(feed.drawn))
                for k, noise in enumerate(feed.drawn):
                    rec[f"noise.{k}"] = noise
                for k, v in rec.items():
                    out[f"{key}.{n}.{k}"] = v
                print(f"  {key}.{n}: {len(rec['timesteps'])} timesteps {str(rec['timesteps'].dtype)[6:]}, "
                      f"{len(feed.drawn)} noises, final std {float(rec['final'].std()):.4f}")
            sched = make_scheduler(name, base)
            sched.set_timesteps(IMG2IMG_STEPS)
            out[f"{key}.add_noise"] = sched.add_noise(x0, c, sched.timesteps[2:3])
            ts, t_start = img2img_timesteps(make_scheduler(name, base))
            out[f"{key}.img2img_timesteps"] = ts
            out[f"{key}.img2img_t_start"] = torch.tensor([t_start], dtype=torch.int64)
            entries[key] = {
                "class": cls.__name__,
                "from_config_overrides": overrides,
                "step_kwargs": step_kwargs,
                "steps": list(SCHED_STEPS[name]),
                "order": sched.order,
                "noise": NOISE_USE.get(name),
                "config": effective_config(sched),
            }
    out = {k: v.contiguous() for k, v in out.items()}
    for k, v in out.items():
        assert torch.isfinite(v.double()).all(), k
        int_ok = k.endswith(("timesteps", "img2img_t_start"))
        assert v.dtype == torch.float32 or (int_ok and v.dtype == torch.int64), (k, v.dtype)
    save_file(out, FIX / "goldens" / "schedulers.safetensors", metadata={"generator": "scripts/make_fixtures.py"})
    write_json(
        FIX / "goldens" / "schedulers.json",
        {
            "about": {
                "base_configs": {"eps": "sd1-tiny/scheduler/scheduler_config.json",
                                 "v": "sd2-tiny/scheduler/scheduler_config.json"},
                "construction": "Class.from_config(base_config, **from_config_overrides)",
                "model_output": "0.5 * scale_model_input(x, t) + coef[i] * trajectory.c, "
                "coef[i] = f32(0.1 * cos(f64(t_i) / 300))",
                "start": "x = trajectory.x0 * init_noise_sigma",
                "add_noise": "fresh scheduler, set_timesteps(8), add_noise(trajectory.x0, "
                "trajectory.c, timesteps[2:3])",
                "img2img": f"StableDiffusionImg2ImgPipeline.get_timesteps({IMG2IMG_STEPS}, "
                f"strength={IMG2IMG_STRENGTH}) after set_timesteps({IMG2IMG_STEPS}): "
                "timesteps[t_start*order:], begin_index t_start*order",
                "noise_seed": NOISE_SEED,
            },
            "schedulers": entries,
        },
    )
    return entries


# ----------------------------------------------------------------------------------------
# pipeline goldens (text-to-image and img2img through the diffusers pipelines)
# ----------------------------------------------------------------------------------------

PIPE_PROMPT = "a photograph of an astronaut riding a horse"
PIPE_NEGATIVE = "blurry, low quality"
PIPE_STEPS, PIPE_GUIDANCE = 8, 7.5
PIPE_SCHEDULERS = ["ddim", "euler", "dpmpp-2m", "dpmpp-2m-karras", "heun", "pndm", "unipc"]


def load_pipeline(spec):
    kwargs = dict(dtype=torch.float32, safety_checker=None)
    if spec["unet_dtype"] is not None:
        kwargs["variant"] = "fp16"
    pipe = StableDiffusionPipeline.from_pretrained(FIX / spec["name"], **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def make_pipeline_goldens(spec, sched_entries):
    name = spec["name"]
    pipe = load_pipeline(spec)
    vae, sf = pipe.vae, pipe.vae.config.scaling_factor
    own = pipe.scheduler  # as loaded; every run below uses a deep copy or a from_config switch
    own_config = own.config
    h = pipe.unet.config.sample_size
    latents = torch.randn(1, 4, h, h, generator=gen(spec["seed"] + 30))
    out = {"latents": latents}
    info = {"latent_size": [1, 4, h, h], "schedulers": {}}

    def txt2img(scheduler, guidance=PIPE_GUIDANCE, negative=PIPE_NEGATIVE, output_type="latent"):
        pipe.scheduler = scheduler
        return pipe(prompt=PIPE_PROMPT, negative_prompt=negative, num_inference_steps=PIPE_STEPS,
                    guidance_scale=guidance, latents=latents.clone(), output_type=output_type).images

    def decode(lat):  # = output_type="np" (VaeImageProcessor.postprocess), as a [H,W,3] tensor
        image = vae.decode(lat / sf).sample
        return (image / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0)

    def record(key, lat, scheduler):
        out[f"{key}.latents"] = lat
        out[f"{key}.image"] = decode(lat)
        info["schedulers"][key] = {"class": type(scheduler).__name__, "config": effective_config(scheduler),
                                   "timesteps": scheduler.timesteps.tolist()}

    # ---- text-to-image with each deterministic scheduler, switched from the model's config
    modules = scheduler_modules()
    cfg_name = "eps" if own_config.prediction_type == "epsilon" else "v"
    for sname in PIPE_SCHEDULERS:
        sched = make_scheduler(sname, own_config)
        cfg = effective_config(sched)
        assert cfg == sched_entries[f"{cfg_name}.{sname}"]["config"], sname  # same as the scheduler goldens
        with NoiseFeed(modules, seed=NOISE_SEED) as feed:
            record(sname, txt2img(sched), sched)
        assert not feed.drawn, sname

    # ---- the model's own scheduler; output_type="np" gives exactly the manual decode
    sched = copy.deepcopy(own)
    record("own", txt2img(sched), sched)
    np_image = txt2img(copy.deepcopy(own), output_type="np")
    assert np.array_equal(np_image[0], out["own.image"].numpy()), "output_type np != manual decode"
    sched = copy.deepcopy(own)
    record("guidance1", txt2img(sched, guidance=1.0, negative=None), sched)

    # ---- Euler ancestral with seeded per-step noise
    sched = make_scheduler("euler-a", own_config)
    with NoiseFeed(modules, seed=NOISE_SEED) as feed:
        record("euler-a", txt2img(sched), sched)
    assert len(feed.drawn) == PIPE_STEPS
    for k, noise in enumerate(feed.drawn):
        out[f"euler-a.noise.{k}"] = noise

    # ---- img2img: init latents = scaling_factor * VAE posterior mean; fixed noise
    i2i = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    i2i.set_progress_bar_config(disable=True)
    i2i_module = sys.modules[StableDiffusionImg2ImgPipeline.__module__]
    init_image = Image.open(FIX / "goldens" / f"{name}-vae-input.png").convert("RGB")
    noise = torch.randn(1, 4, h, h, generator=gen(spec["seed"] + 31))
    out["img2img.noise"] = noise
    orig_retrieve = i2i_module.retrieve_latents
    means = []

    def retrieve_mean(encoder_output, generator=None, sample_mode="sample"):
        means.append(orig_retrieve(encoder_output, generator, sample_mode="argmax"))
        return means[-1]

    i2i_info = {}
    for key, sched in (("own", copy.deepcopy(own)), ("euler", make_scheduler("euler", own_config))):
        i2i.scheduler = sched
        starts = []  # the noised init latents the denoising loop starts from
        orig_prepare = i2i.prepare_latents

        def prepare_and_keep(*args, **kwargs):
            starts.append(orig_prepare(*args, **kwargs))
            return starts[-1]

        i2i.prepare_latents = prepare_and_keep
        i2i_module.retrieve_latents = retrieve_mean
        try:
            with NoiseFeed([i2i_module], fixed=noise) as feed, NoiseFeed(modules, seed=NOISE_SEED) as sfeed:
                lat = i2i(prompt=PIPE_PROMPT, negative_prompt=PIPE_NEGATIVE, image=init_image,
                          strength=IMG2IMG_STRENGTH, num_inference_steps=IMG2IMG_STEPS,
                          guidance_scale=PIPE_GUIDANCE, output_type="latent").images
        finally:
            i2i_module.retrieve_latents = orig_retrieve
            del i2i.prepare_latents
        assert len(feed.drawn) == 1 and not sfeed.drawn and len(starts) == 1
        ts, t_start = img2img_timesteps(copy.deepcopy(sched))
        out[f"img2img.{key}.start_latents"] = starts[0]
        out[f"img2img.{key}.latents"] = lat
        out[f"img2img.{key}.image"] = decode(lat)
        i2i_info[key] = {"class": type(sched).__name__, "config": effective_config(sched),
                         "timesteps": ts.tolist(), "t_start": t_start}
    assert len(means) == 2 and torch.equal(means[0], means[1])
    out["img2img.init_latents"] = sf * means[0]

    out = {k: v.contiguous() for k, v in out.items()}
    print(f"[{name}] pipeline goldens:")
    for k, v in out.items():
        assert v.dtype == torch.float32, k
        if not k.startswith("euler-a.noise"):
            stats(k, v)
    save_file(out, FIX / "goldens" / f"pipeline-{name}.safetensors", metadata={"generator": "scripts/make_fixtures.py"})
    info["image_size"] = list(out["own.image"].shape)
    info["vae_scaling_factor"] = sf
    info["own_scheduler"] = {"class": type(own).__name__, "config": effective_config(own)}
    info["img2img"] = i2i_info
    return info


def write_pipeline_json(infos):
    write_json(
        FIX / "goldens" / "pipeline.json",
        {
            "prompt": PIPE_PROMPT,
            "negative_prompt": PIPE_NEGATIVE,
            "num_inference_steps": PIPE_STEPS,
            "guidance_scale": PIPE_GUIDANCE,
            "guidance1": {"guidance_scale": 1.0, "negative_prompt": None},
            "scheduler_switch": "Class.from_config(pipe.scheduler.config, **overrides) with the "
            "overrides of schedulers.json; 'own' = pipe.scheduler as loaded",
            "euler-a_noise": "euler-a.noise.{k} consumed at step k (see schedulers.json)",
            "img2img": {
                "strength": IMG2IMG_STRENGTH,
                "num_inference_steps": IMG2IMG_STEPS,
                "guidance_scale": PIPE_GUIDANCE,
                "init_image": "goldens/{model}-vae-input.png",
                "init_latents": "vae_scaling_factor * vae.encode(preprocessed image).latent_dist.mean "
                "(retrieve_latents forced to sample_mode='argmax')",
                "start_latents": "scheduler.add_noise(init_latents, img2img.noise, timesteps[:1]) "
                "after get_timesteps (begin_index set)",
            },
            "models": infos,
        },
    )


# ----------------------------------------------------------------------------------------


def main():
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")
    (FIX / "goldens").mkdir(parents=True, exist_ok=True)
    write_json(FIX / "goldens" / "prompts.json", PROMPTS)
    vocab, merges = clip_vocab_and_merges()
    for spec in (SD1, SD2):
        unet, vae, text = build_models(spec)
        tok = write_pipeline(spec, unet, vae, text, vocab, merges)
        make_goldens(spec, unet, vae, text, tok)
    write_full_configs()
    print("scheduler goldens:")
    sched_entries = make_scheduler_goldens()
    write_pipeline_json({spec["name"]: make_pipeline_goldens(spec, sched_entries) for spec in (SD1, SD2)})

    print("files:")
    total = 0
    for p in sorted(FIX.rglob("*")):
        if p.is_file():
            n = p.stat().st_size
            total += n
            print(f"  {n:>10d}  {hashlib.sha256(p.read_bytes()).hexdigest()[:12]}  {p.relative_to(ROOT)}")
    print(f"  total {total} bytes")


if __name__ == "__main__":
    main()
