#!/usr/bin/env python3
"""SDXL fixtures and goldens (never edit by hand). Run from the repository root, in the venv of
make_fixtures.py (about 10 s on 2 cores):

    /root/.cache/webdiffusion/venv/bin/python scripts/make_sdxl_fixtures.py

Everything is built from configs with random (seeded, perturbed) weights, stored in float16 (every
network: the two text encoders' 49408-token embeddings alone are 7.9 MB in f16) and computed in
float32 (from the f16 values) on the CPU with one thread; a re-run with the versions of scripts/requirements.txt gives
byte-identical files. Reads goldens/prompts.json and goldens/pipeline.json (prompt, negative
prompt) of make_fixtures.py; reuses its helpers through fixtures_common.py and the LDM key
mapping of make_single_files.py.

What is written
---------------
tests/fixtures/sdxl-tiny/      SDXL-like pipeline folder as StableDiffusionXLPipeline.save_pretrained
                               writes it (hub layout), random weights
    model_index.json              StableDiffusionXLPipeline, force_zeros_for_empty_prompt true
    unet/                         UNet2DConditionModel, FLOAT16 in the plain file name
                                  (diffusion_pytorch_model.safetensors): 3 levels (16,32,32), 2 layers
                                  per block, down DownBlock2D, CrossAttnDownBlock2D x2 (up:
                                  CrossAttnUpBlock2D x2, UpBlock2D), attention_head_dim [2,4,4]
                                  (= heads; head dim 8), transformer_layers_per_block [1,1,2] (mid
                                  block: 2; up blocks: the reverse, [2,1]), use_linear_projection,
                                  upcast_attention false, cross_attention_dim 80,
                                  addition_embed_type "text_time", addition_time_embed_dim 8,
                                  projection_class_embeddings_input_dim 88 (= 6*8 + 40), flip_sin_to_cos
                                  true, freq_shift 0, sample_size 16 (default 64x64 pixels)
    vae/                          AutoencoderKL (16,32,32) -> factor 4, 4 latent channels,
                                  scaling_factor 0.13025, force_upcast true; FLOAT16
    text_encoder/                 CLIPTextModel (CLIP-L-like): hidden 32, 3 layers, 4 heads,
                                  quick_gelu, vocab 49408; model.safetensors FLOAT16 with the
                                  `text_model.` key prefix of real SDXL checkpoints
    text_encoder_2/               CLIPTextModelWithProjection (bigG-like): hidden 48, 4 layers,
                                  4 heads (head dim 12), gelu, projection_dim 40, vocab 49408;
                                  FLOAT16, keys `text_model.*` + `text_projection.weight` [40,48]
    tokenizer/                    CLIP BPE as vocab.json + merges.txt + tokenizer_config.json +
                                  special_tokens_map.json (the hub form); pads with <|endoftext|>
    tokenizer_2/                  the same files, pad token "!" (id 0; a literal "!" in a prompt
                                  then also encodes as id 0: "rocket!!" -> ..., 8383, 0, 0)
    scheduler/scheduler_config.json   EulerDiscreteScheduler, SDXL base 1.0's values (scaled_linear
                                  0.00085-0.012, epsilon, timestep_spacing "leading", steps_offset 1)
tests/fixtures/sdxl-turbo-tiny/  the same networks with SDXL-Turbo's scheduler config
    model_index.json              sdxl-tiny's with "scheduler": ["diffusers",
                                  "EulerAncestralDiscreteScheduler"] (diffusers picks the scheduler
                                  class from model_index.json, not from scheduler_config.json)
    scheduler/scheduler_config.json   EulerAncestralDiscreteScheduler, timestep_spacing "trailing",
                                  otherwise as SDXL base (sdxl-turbo's hub values)
    {unet,vae,text_encoder,text_encoder_2,tokenizer,tokenizer_2}/*   relative symbolic links to
                                  the files of sdxl-tiny/ (real directories, one link per file)
tests/fixtures/single/sdxl-tiny.safetensors   sdxl-tiny as one checkpoint in the original SGM
                                  layout, FLOAT16: model.diffusion_model.* (input/middle/output_blocks,
                                  label_emb.0.{0,2} = add_embedding.linear_{1,2}), first_stage_model.*,
                                  conditioner.embedders.0.transformer.text_model.* (HF CLIP layout),
                                  conditioner.embedders.1.model.* (OpenCLIP: token_embedding.weight,
                                  positional_embedding [77,48], transformer.resblocks.N.{ln_1,ln_2,
                                  attn.in_proj_weight/bias = cat(q,k,v), attn.out_proj, mlp.c_fc,
                                  mlp.c_proj}, ln_final, text_projection [48,40] = HF weight^T).
                                  Checked here: diffusers' converters and
                                  StableDiffusionXLPipeline.from_single_file(file, config=sdxl-tiny/)
                                  give back exactly the folder's weights (the same f16 values), and
                                  that pipeline reproduces euler.latents bit for bit: every golden
                                  below applies to the single file unchanged.
tests/fixtures/goldens/sdxl-tiny-img2img-input.png   8-bit RGB 64x64 init image for img2img
tests/fixtures/goldens/sdxl-tiny.safetensors   float32 (int64 for token ids) reference tensors,
                               computed from the folders as reloaded from disk:
    input_ids.{i}, input_ids_2.{i}   int64 [1,77]: tokenizer / tokenizer_2 (prompt_i of
                                  prompts.json, padding="max_length", max_length=77, truncation)
    prompt_embeds.{i}             [1,77,80] StableDiffusionXLPipeline.encode_prompt(prompt_i,
                                  do_classifier_free_guidance=False): cat on features of
                                  text_encoder(ids).hidden_states[-2] [..,32] and
                                  text_encoder_2(ids_2).hidden_states[-2] [..,48] (no final LayerNorm)
    pooled_prompt_embeds.{i}      [1,40] text_encoder_2(ids_2).text_embeds = text_projection(
                                  final_layer_norm(last layer)[first position of id 49407]) (prompt 6
                                  has a literal <|endoftext|>: pooled at that position)
    prompt_embeds.clip_skip{1,2}.0   [1,77,80] prompt 0, encode_prompt(clip_skip=s): both encoders'
                                  hidden_states[-(s+2)], concatenated, no final LayerNorm (pooled unchanged)
    negative.none.prompt_embeds / .pooled_prompt_embeds   [1,77,80] / [1,40] zeros: encode_prompt
                                  with CFG and negative_prompt=None (force_zeros_for_empty_prompt)
    negative.empty.*              negative_prompt="" : encoded like a prompt (NOT zeros)
    negative.text.*               negative_prompt = goldens/pipeline.json's "blurry, low quality"
    add_time_ids.square           [1,6] (64, 64, 0, 0, 64, 64): original (h, w), crop (top, left),
                                  target (h, w), the txt2img default at 64x64
    add_time_ids.nonsquare        [1,6] (48, 64, 0, 0, 48, 64): height 48, width 64
    add_time_ids.custom           [1,6] (1024, 768, 16, 32, 48, 64)
    unet.sample                   [2,4,16,16] randn
    unet.encoder_hidden_states    [2,77,80] randn
    unet.text_embeds              [2,40] randn (the pooled embedding input)
    unet.time_ids                 [2,6] rows add_time_ids.square, add_time_ids.custom
    unet.add_embeds               [2,88] cat(text_embeds, add_time_proj(time_ids.flatten())
                                  .reshape(2, 48)): Timesteps(8, flip_sin_to_cos=True, shift 0)
                                  per id, the 6 embeddings of a row side by side
    unet.aug_emb                  [2,64] add_embedding(add_embeds) (linear, SiLU, linear), what the
                                  UNet adds to its time embedding (checked with a forward hook)
    unet.timestep.{k}             float32 [1], k=0,1 -> 999, 261.5
    unet.out.{k}                  unet(sample, timestep_k, encoder_hidden_states, added_cond_kwargs=
                                  {text_embeds, time_ids}).sample [2,4,16,16]
    unet.sample_ns                [1,4,12,16] randn; unet.out_ns: unet at t=500 with row 0 of the
                                  conditions above (non-square latents)
    vae.latents                   [1,4,16,16] randn (pipeline latent space)
    vae.decoded                   [1,3,64,64] vae.decode(latents / 0.13025).sample, not clamped
    txt2img.latents               [1,4,16,16] randn, passed as `latents=` (64x64 runs)
    txt2img.latents_ns            [1,4,12,16] randn (height 48, width 64)
    {run}.latents, {run}.image    output_type="latent" and the decoded image [H,W,3] in [0,1]
                                  (= output_type="np": (vae.decode(latents / sf).sample / 2 + 0.5)
                                  .clamp(0, 1), no watermark). Runs (prompt of pipeline.json):
        euler                         sdxl-tiny's EulerDiscreteScheduler, 4 steps, guidance 5,
                                      negative prompt "blurry, low quality"
        euler_noneg                   the same without a negative prompt (zero negative embeds)
        euler_ns                      as euler at height 48, width 64, latents txt2img.latents_ns
        turbo1                        sdxl-turbo-tiny (EulerAncestral, trailing): 1 step, guidance 0
                                      (no CFG, no negative), txt2img.latents; turbo1.noise.0 = the
                                      noise its step draws (multiplied by sigma_up = 0 at the last step)
        turbo2                        the same with 2 steps; turbo2.noise.{0,1} consumed at step k
                                      (randn_tensor of the scheduler module patched, seeded)
    img2img.noise                 [1,4,16,16] randn: the noise StableDiffusionXLImg2ImgPipeline adds
    img2img.init_latents          0.13025 * vae.encode(png / 127.5 - 1).latent_dist.mean
                                  (retrieve_latents forced to sample_mode="argmax")
    img2img.start_latents         scheduler.add_noise(init_latents, noise, timesteps[:1])
    img2img.latents, img2img.image   strength 0.5, 8 steps (4 run), guidance 5, negative prompt,
                                  sdxl-tiny's Euler, init image goldens/sdxl-tiny-img2img-input.png
tests/fixtures/goldens/sdxl.json  the settings of every golden: configs chosen, prompts, time ids,
                                  each run's scheduler class, effective config, timesteps, sigmas,
                                  init_noise_sigma, img2img timesteps/t_start, single-file layout,
                                  versions
"""

import copy
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixtures_common as fc  # noqa: E402  (one thread, deterministic algorithms, quiet logs)
import make_single_files as msf  # noqa: E402  (LDM key mapping of the UNet, VAE, OpenCLIP)

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

mf = fc.mf
GEN = "scripts/make_sdxl_fixtures.py"
NAME, TURBO = "sdxl-tiny", "sdxl-turbo-tiny"
OUT, OUT_TURBO = fc.FIX / NAME, fc.FIX / TURBO
GOLDEN = fc.GOLDENS / "sdxl-tiny.safetensors"
SETTINGS = fc.GOLDENS / "sdxl.json"
SINGLE = fc.FIX / "single" / "sdxl-tiny.safetensors"
INIT_PNG = fc.GOLDENS / "sdxl-tiny-img2img-input.png"
SEED = 10100
SHARED = ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae"]

PROMPTS = json.load(open(fc.GOLDENS / "prompts.json", encoding="utf-8"))
PROMPT, NEGATIVE = fc.PROMPT, fc.NEGATIVE
STEPS, GUIDANCE = 4, 5.0
TURBO_GUIDANCE = 0.0
I2I_STEPS, I2I_STRENGTH = 8, 0.5
UNET_TIMESTEPS = [999.0, 261.5]
SIZE, SIZE_NS = (64, 64), (48, 64)  # (height, width) in pixels
CUSTOM_TIME_IDS = dict(original_size=(1024, 768), crops_coords_top_left=(16, 32), target_size=(48, 64))

TIME_DIM, POOLED = 8, 40
UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(16, 32, 32),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4, 4),
    transformer_layers_per_block=(1, 1, 2),
    cross_attention_dim=32 + 48,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_DIM,
    projection_class_embeddings_input_dim=6 * TIME_DIM + POOLED,
    norm_num_groups=8,
    flip_sin_to_cos=True,
    freq_shift=0,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=64,
    scaling_factor=0.13025,
    force_upcast=True,
)
TEXT = dict(
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
)
TEXT_2 = dict(
    vocab_size=49408,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=POOLED,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=1,
)
TEXT_DTYPE = torch.float16
WEIGHT_DTYPE = torch.float16  # every network is stored in f16 (size); goldens use the rounded weights

# scheduler_config.json of stabilityai/stable-diffusion-xl-base-1.0 and of stabilityai/sdxl-turbo
# (the hub files' keys and values; "_diffusers_version" as the other tiny fixtures write it)
SCHED_BASE = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": diffusers.__version__,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
SCHED_TURBO = dict(SCHED_BASE, _class_name="EulerAncestralDiscreteScheduler", timestep_spacing="trailing")
del SCHED_TURBO["use_karras_sigmas"]


# ----------------------------------------------------------------------------------------
# models and folders
# ----------------------------------------------------------------------------------------


def build_models():
    torch.manual_seed(SEED + 1)
    unet = UNet2DConditionModel(**UNET).eval()
    fc.perturb(unet, SEED + 2)
    mf.boost_unet(unet)
    fc.round_to(unet, WEIGHT_DTYPE)

    torch.manual_seed(SEED + 3)
    vae = AutoencoderKL(**VAE).eval()
    fc.perturb(vae, SEED + 4)
    fc.round_to(vae, WEIGHT_DTYPE)

    torch.manual_seed(SEED + 5)
    text = CLIPTextModel(CLIPTextConfig(**TEXT)).eval()
    fc.perturb(text, SEED + 6)
    fc.round_to(text, TEXT_DTYPE)

    torch.manual_seed(SEED + 7)
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_2)).eval()
    fc.perturb(text_2, SEED + 8)
    fc.round_to(text_2, TEXT_DTYPE)
    return unet, vae, text, text_2


def hub_tokenizer_folder(folder, vocab, merges, pad, name_or_path):
    """Replace what save_pretrained wrote with the hub form of SDXL's tokenizer folders."""
    for p in folder.iterdir():
        p.unlink()
    mf.write_vocab_merges(folder, vocab, merges)
    cfg = mf.hub_tokenizer_config(pad)
    cfg["name_or_path"] = name_or_path
    fc.write_json(folder / "tokenizer_config.json", cfg)
    fc.write_json(folder / "special_tokens_map.json", mf.special_tokens_map(pad))


def write_folder(unet, vae, text, text_2, vocab, merges):
    if OUT.exists():
        shutil.rmtree(OUT)
    tmp = Path(tempfile.mkdtemp(prefix="sdxl-fixtures-"))
    try:
        mf.write_vocab_merges(tmp / "tok-src", vocab, merges)
        toks = [CLIPTokenizer(vocab=str(tmp / "tok-src" / "vocab.json"), merges=str(tmp / "tok-src" / "merges.txt"),
                              pad_token=pad, model_max_length=77) for pad in ("<|endoftext|>", "!")]
        for m in (unet, vae, text, text_2):
            m.to(WEIGHT_DTYPE)
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=toks[0], tokenizer_2=toks[1],
            unet=unet, scheduler=EulerDiscreteScheduler.from_config(SCHED_BASE),
            force_zeros_for_empty_prompt=True, add_watermarker=False,
        )
        pipe.save_pretrained(tmp / "pipe", safe_serialization=True)
        for m in (unet, vae, text, text_2):
            m.to(torch.float32)
        shutil.move(str(tmp / "pipe"), str(OUT))
    finally:
        shutil.rmtree(tmp)

    for sub in ("unet", "vae"):
        sd = load_file(OUT / sub / "diffusion_pytorch_model.safetensors")
        assert all(v.dtype == WEIGHT_DTYPE for v in sd.values()), sub
    index = json.load(open(OUT / "model_index.json"))
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"] is True, index
    # text encoders: f16, `text_model.` prefix on every key (transformers 5 drops it for CLIPTextModel)
    for sub, prefixed in (("text_encoder", False), ("text_encoder_2", True)):
        f = OUT / sub / "model.safetensors"
        sd = load_file(f)
        assert all(v.dtype == TEXT_DTYPE for v in sd.values()), sub
        assert all(k.startswith(("text_model.", "text_projection.")) for k in sd) == prefixed, (sub, list(sd)[:3])
        if not prefixed:
            sd = {"text_model." + k: v for k, v in sd.items()}
        save_file({k: v.contiguous() for k, v in sorted(sd.items())}, f, metadata={"format": "pt"})
        cfg = json.load(open(OUT / sub / "config.json"))
        assert cfg.get("dtype", cfg.get("torch_dtype")) == "float16", cfg
    hub_tokenizer_folder(OUT / "tokenizer", vocab, merges, "<|endoftext|>", "openai/clip-vit-large-patch14")
    hub_tokenizer_folder(OUT / "tokenizer_2", vocab, merges, "!", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k")
    fc.write_json(OUT / "scheduler" / "scheduler_config.json", SCHED_BASE)


def write_turbo_folder():
    if OUT_TURBO.exists() or OUT_TURBO.is_symlink():
        shutil.rmtree(OUT_TURBO)
    OUT_TURBO.mkdir()
    index = json.load(open(OUT / "model_index.json"))
    index["scheduler"] = ["diffusers", "EulerAncestralDiscreteScheduler"]  # as sdxl-turbo's model_index.json
    fc.write_json(OUT_TURBO / "model_index.json", index)
    fc.write_json(OUT_TURBO / "scheduler" / "scheduler_config.json", SCHED_TURBO)
    for sub in SHARED:
        (OUT_TURBO / sub).mkdir()
        for f in sorted((OUT / sub).iterdir()):
            os.symlink(Path("..") / ".." / NAME / sub / f.name, OUT_TURBO / sub / f.name)


def load(folder, cls=StableDiffusionXLPipeline):
    pipe = cls.from_pretrained(folder, dtype=torch.float32, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.watermark is None
    return pipe


def check_reloaded(pipe, unet, vae, text, text_2):
    mf.check_params_equal(pipe.unet, unet, "unet")
    mf.check_params_equal(pipe.vae, vae, "vae")
    mf.check_params_equal(pipe.text_encoder, text, "text_encoder")
    mf.check_params_equal(pipe.text_encoder_2, text_2, "text_encoder_2")
    assert type(pipe.scheduler) is EulerDiscreteScheduler
    assert pipe.tokenizer.pad_token == "<|endoftext|>" and pipe.tokenizer.pad_token_id == 49407
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer_2.pad_token_id == 0
    assert len(pipe.tokenizer) == len(pipe.tokenizer_2) == 49408
    assert pipe.tokenizer.model_max_length == pipe.tokenizer_2.model_max_length == 77


# ----------------------------------------------------------------------------------------
# goldens
# ----------------------------------------------------------------------------------------


def tokenize(tok, prompt):
    return tok(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def by_hand(pipe, prompt, skip_index=-2):
    """prompt_embeds and pooled as encode_prompt computes them, written out."""
    ids, ids_2 = tokenize(pipe.tokenizer, prompt), tokenize(pipe.tokenizer_2, prompt)
    o1 = pipe.text_encoder(ids, output_hidden_states=True)
    o2 = pipe.text_encoder_2(ids_2, output_hidden_states=True)
    assert len(o1.hidden_states) == TEXT["num_hidden_layers"] + 1
    assert len(o2.hidden_states) == TEXT_2["num_hidden_layers"] + 1
    emb = torch.cat([o1.hidden_states[skip_index], o2.hidden_states[skip_index]], dim=-1)
    # pooled: text_projection(final_layer_norm(last layer) at the first end-of-text token)
    te2 = pipe.text_encoder_2
    last = te2.text_model.final_layer_norm(o2.hidden_states[-1])
    eos = int((ids_2[0] == 49407).int().argmax())
    manual = te2.text_projection(last[:, eos])
    assert torch.allclose(manual, o2.text_embeds, atol=1e-6, rtol=0), "pooled by hand"
    return ids, ids_2, emb, o2.text_embeds


@torch.no_grad()
def text_goldens(pipe, out, notes):
    for i, prompt in enumerate(PROMPTS):
        ids, ids_2, emb, pooled = by_hand(pipe, prompt)
        pe, ne, pp, npp = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                             do_classifier_free_guidance=False)
        assert ne is None and npp is None
        assert torch.equal(pe, emb) and torch.equal(pp, pooled), f"encode_prompt != by hand, prompt {i}"
        assert pe.shape == (1, 77, 80) and pp.shape == (1, POOLED)
        out[f"input_ids.{i}"], out[f"input_ids_2.{i}"] = ids, ids_2
        out[f"prompt_embeds.{i}"], out[f"pooled_prompt_embeds.{i}"] = pe, pp
        print(f"  prompt {i}: ids {ids[0, :10].tolist()}... ids_2 {ids_2[0, :10].tolist()}...")

    # clip skip: diffusers' SDXL convention, hidden_states[-(clip_skip + 2)] of both encoders
    notes["clip_skip"] = {}
    for skip in (1, 2):
        _, _, emb, pooled = by_hand(pipe, PROMPTS[0], skip_index=-(skip + 2))
        try:
            pe, _, pp, _ = pipe.encode_prompt(PROMPTS[0], device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False, clip_skip=skip)
            assert torch.equal(pe, emb) and torch.equal(pp, pooled), f"clip_skip {skip}"
            notes["clip_skip"][str(skip)] = "encode_prompt(clip_skip) == by hand"
        except Exception as e:  # noqa: BLE001  (recorded; the golden is the hand-computed value)
            notes["clip_skip"][str(skip)] = f"encode_prompt(clip_skip) raised {type(e).__name__}: {e}"
        assert not torch.equal(emb, out["prompt_embeds.0"])
        out[f"prompt_embeds.clip_skip{skip}.0"] = emb
    print(f"  clip skip: {notes['clip_skip']}")

    # negative prompts (prompt 0, with classifier-free guidance)
    for key, neg in (("none", None), ("empty", ""), ("text", NEGATIVE)):
        pe, ne, pp, npp = pipe.encode_prompt(PROMPTS[0], device="cpu", num_images_per_prompt=1,
                                             do_classifier_free_guidance=True, negative_prompt=neg)
        assert torch.equal(pe, out["prompt_embeds.0"]) and torch.equal(pp, out["pooled_prompt_embeds.0"])
        if neg is None:
            assert not ne.any() and not npp.any(), "force_zeros_for_empty_prompt: zeros"
        else:
            _, _, emb, pooled = by_hand(pipe, neg)
            assert torch.equal(ne, emb) and torch.equal(npp, pooled), key
            assert ne.abs().sum() > 0
        out[f"negative.{key}.prompt_embeds"], out[f"negative.{key}.pooled_prompt_embeds"] = ne, npp


def time_ids(pipe, original_size, crops_coords_top_left, target_size):
    return pipe._get_add_time_ids(original_size, crops_coords_top_left, target_size, dtype=torch.float32,
                                  text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)


@torch.no_grad()
def unet_vae_goldens(pipe, out):
    unet, vae = pipe.unet, pipe.vae
    out["add_time_ids.square"] = time_ids(pipe, SIZE, (0, 0), SIZE)
    out["add_time_ids.nonsquare"] = time_ids(pipe, SIZE_NS, (0, 0), SIZE_NS)
    out["add_time_ids.custom"] = time_ids(pipe, **CUSTOM_TIME_IDS)
    assert out["add_time_ids.custom"].tolist() == [[1024.0, 768.0, 16.0, 32.0, 48.0, 64.0]]

    g = fc.gen(SEED + 10)
    h = UNET["sample_size"]
    sample = torch.randn(2, 4, h, h, generator=g)
    ehs = torch.randn(2, 77, UNET["cross_attention_dim"], generator=g)
    text_embeds = torch.randn(2, POOLED, generator=g)
    ids = torch.cat([out["add_time_ids.square"], out["add_time_ids.custom"]])
    out.update({"unet.sample": sample, "unet.encoder_hidden_states": ehs, "unet.text_embeds": text_embeds,
                "unet.time_ids": ids})
    time_embeds = unet.add_time_proj(ids.flatten()).reshape(2, -1)
    assert time_embeds.shape == (2, 6 * TIME_DIM)
    out["unet.add_embeds"] = torch.cat([text_embeds, time_embeds], dim=-1)
    out["unet.aug_emb"] = unet.add_embedding(out["unet.add_embeds"])
    seen = []
    hook = unet.add_embedding.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    cond = {"text_embeds": text_embeds, "time_ids": ids}
    try:
        for k, t in enumerate(UNET_TIMESTEPS):
            ts = torch.tensor([t], dtype=torch.float32)
            out[f"unet.timestep.{k}"] = ts
            out[f"unet.out.{k}"] = unet(sample, ts, encoder_hidden_states=ehs, added_cond_kwargs=cond).sample
    finally:
        hook.remove()
    assert len(seen) == len(UNET_TIMESTEPS) and all(torch.equal(s, out["unet.aug_emb"]) for s in seen)
    hn, wn = SIZE_NS[0] // 4, SIZE_NS[1] // 4
    out["unet.sample_ns"] = torch.randn(1, 4, hn, wn, generator=g)
    out["unet.out_ns"] = unet(out["unet.sample_ns"], torch.tensor([500.0]), encoder_hidden_states=ehs[:1],
                              added_cond_kwargs={"text_embeds": text_embeds[:1], "time_ids": ids[:1]}).sample

    # the conditioning must matter: a wrong time-id layout or pooled width must show up clearly
    ts = out["unet.timestep.1"]
    sens = {}
    for what, kw in {
        "time_ids": dict(added_cond_kwargs={"text_embeds": text_embeds, "time_ids": ids.flip(0)}),
        "text_embeds": dict(added_cond_kwargs={"text_embeds": text_embeds.flip(0), "time_ids": ids}),
        "encoder_hidden_states": dict(added_cond_kwargs=cond, encoder_hidden_states=ehs.flip(0)),
    }.items():
        kw.setdefault("encoder_hidden_states", ehs)
        sens[what] = fc.rel_l2(unet(sample, ts, **kw).sample, out["unet.out.1"])
    print("  UNet output rel. change when swapping the batch rows of: "
          + ", ".join(f"{k} {v:.3f}" for k, v in sens.items()))
    assert all(v > 0.02 for v in sens.values()), sens

    sf = vae.config.scaling_factor
    out["vae.latents"] = torch.randn(1, 4, h, h, generator=g)
    out["vae.decoded"] = vae.decode(out["vae.latents"] / sf).sample
    assert out["vae.decoded"].shape == (1, 3, 4 * h, 4 * h)
    for k in ["unet.out.0", "unet.out.1", "unet.out_ns", "vae.decoded", "prompt_embeds.0", "unet.aug_emb"]:
        s = float(out[k].std())
        assert 0.05 < s < 20, (k, s)


def sched_info(scheduler):
    info = {"class": type(scheduler).__name__, "config": fc.effective_config(scheduler),
            "timesteps": scheduler.timesteps.tolist(), "init_noise_sigma": float(scheduler.init_noise_sigma)}
    if getattr(scheduler, "sigmas", None) is not None:
        info["sigmas"] = scheduler.sigmas.tolist()
    return info


@torch.no_grad()
def pipeline_goldens(pipe, out, notes):
    g = fc.gen(SEED + 30)
    h = UNET["sample_size"]
    latents = torch.randn(1, 4, h, h, generator=g)
    latents_ns = torch.randn(1, 4, SIZE_NS[0] // 4, SIZE_NS[1] // 4, generator=g)
    out["txt2img.latents"], out["txt2img.latents_ns"] = latents, latents_ns
    own = pipe.scheduler
    runs = {}

    def run(p, key, lat, size, guidance, negative, steps, output_type="latent"):
        res = p(prompt=PROMPT, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                height=size[0], width=size[1], latents=lat.clone(), output_type=output_type).images
        if output_type == "latent":
            out[f"{key}.latents"] = res
            out[f"{key}.image"] = fc.np_image(p.vae, res)
            runs[key] = dict(sched_info(p.scheduler), height=size[0], width=size[1], guidance_scale=guidance,
                             negative_prompt=negative, num_inference_steps=steps,
                             latents="txt2img.latents_ns" if size == SIZE_NS else "txt2img.latents")
        return res

    pipe.scheduler = copy.deepcopy(own)
    run(pipe, "euler", latents, SIZE, GUIDANCE, NEGATIVE, STEPS)
    pipe.scheduler = copy.deepcopy(own)
    np_img = run(pipe, "euler", latents, SIZE, GUIDANCE, NEGATIVE, STEPS, output_type="np")
    assert np.array_equal(np_img[0], out["euler.image"].numpy()), "output_type np != manual decode"
    pipe.scheduler = copy.deepcopy(own)
    run(pipe, "euler_noneg", latents, SIZE, GUIDANCE, None, STEPS)
    pipe.scheduler = copy.deepcopy(own)
    run(pipe, "euler_ns", latents_ns, SIZE_NS, GUIDANCE, NEGATIVE, STEPS)
    assert out["euler_ns.image"].shape == (SIZE_NS[0], SIZE_NS[1], 3)
    pipe.scheduler = own

    # ---- SDXL-Turbo folder: Euler ancestral, trailing, no CFG; the per-step noise is stored
    turbo = load(OUT_TURBO)
    assert type(turbo.scheduler) is EulerAncestralDiscreteScheduler
    assert turbo.scheduler.config.timestep_spacing == "trailing"
    mf.check_params_equal(turbo.unet, pipe.unet, "turbo unet")
    mf.check_params_equal(turbo.text_encoder_2, pipe.text_encoder_2, "turbo text_encoder_2")
    modules = [sys.modules[EulerAncestralDiscreteScheduler.__module__]]
    t_own = turbo.scheduler
    for n in (1, 2):
        turbo.scheduler = copy.deepcopy(t_own)
        with fc.NoiseFeed(modules, seed=mf.NOISE_SEED) as feed:
            run(turbo, f"turbo{n}", latents, SIZE, TURBO_GUIDANCE, None, n)
        assert len(feed.drawn) == n
        for k, noise in enumerate(feed.drawn):
            out[f"turbo{n}.noise.{k}"] = noise
        runs[f"turbo{n}"]["noise"] = f"turbo{n}.noise.{{k}} drawn at step k (seed {mf.NOISE_SEED})"
    assert runs["turbo1"]["timesteps"] == [999.0], runs["turbo1"]["timesteps"]

    # ---- img2img: posterior mean, stored noise
    i2i = StableDiffusionXLImg2ImgPipeline(**pipe.components, requires_aesthetics_score=False,
                                           force_zeros_for_empty_prompt=True, add_watermarker=False)
    i2i.set_progress_bar_config(disable=True)
    i2i.scheduler = copy.deepcopy(own)
    module = sys.modules[StableDiffusionXLImg2ImgPipeline.__module__]
    fc.save_png(INIT_PNG, mf.png_image(SIZE[0], SEED + 20))
    init_image = Image.open(INIT_PNG).convert("RGB")
    noise = torch.randn(1, 4, h, h, generator=fc.gen(SEED + 31))
    orig_retrieve, orig_prepare = module.retrieve_latents, i2i.prepare_latents
    means, starts = [], []

    def retrieve_mean(encoder_output, generator=None, sample_mode="sample"):
        means.append(orig_retrieve(encoder_output, generator, sample_mode="argmax"))
        return means[-1]

    def prepare_and_keep(*args, **kwargs):
        starts.append(orig_prepare(*args, **kwargs))
        return starts[-1]

    module.retrieve_latents, i2i.prepare_latents = retrieve_mean, prepare_and_keep
    try:
        with fc.NoiseFeed([module], fixed=noise) as feed, \
                fc.NoiseFeed([sys.modules[EulerDiscreteScheduler.__module__]], seed=mf.NOISE_SEED) as sfeed:
            lat = i2i(prompt=PROMPT, negative_prompt=NEGATIVE, image=init_image, strength=I2I_STRENGTH,
                      num_inference_steps=I2I_STEPS, guidance_scale=GUIDANCE, output_type="latent").images
    finally:
        module.retrieve_latents = orig_retrieve
        del i2i.prepare_latents
    assert len(feed.drawn) == 1 and not sfeed.drawn and len(means) == 1 and len(starts) == 1
    sched = i2i.scheduler
    ts_all = copy.deepcopy(own)
    ts_all.set_timesteps(I2I_STEPS)
    t_start = I2I_STEPS - int(I2I_STEPS * I2I_STRENGTH)
    assert torch.equal(ts_all.timesteps[t_start:], sched.timesteps[t_start:])
    sf = pipe.vae.config.scaling_factor
    out["img2img.noise"] = noise
    out["img2img.init_latents"] = sf * means[0]
    out["img2img.start_latents"] = starts[0]
    ref = copy.deepcopy(ts_all)
    ref.set_begin_index(t_start)
    assert torch.allclose(starts[0], ref.add_noise(sf * means[0], noise, ts_all.timesteps[t_start:t_start + 1]),
                          atol=1e-6, rtol=0)
    out["img2img.latents"] = lat
    out["img2img.image"] = fc.np_image(pipe.vae, lat)
    notes["img2img"] = {
        "strength": I2I_STRENGTH, "num_inference_steps": I2I_STEPS, "guidance_scale": GUIDANCE,
        "prompt": PROMPT, "negative_prompt": NEGATIVE,
        "init_image": "goldens/sdxl-tiny-img2img-input.png", "t_start": t_start,
        "timesteps_run": sched.timesteps[t_start:].tolist(),
        "add_time_ids": "(64, 64, 0, 0, 64, 64) for prompt and negative (requires_aesthetics_score false)",
        "init_latents": "scaling_factor * vae.encode(png / 127.5 - 1).latent_dist.mean (retrieve_latents "
        "forced to sample_mode='argmax')",
        "start_latents": "scheduler.add_noise(init_latents, img2img.noise, timesteps[t_start:t_start+1]) "
        "(Euler: init_latents + noise * sigma); no init_noise_sigma scaling",
        "scheduler": sched_info(sched),
    }
    return runs


# ----------------------------------------------------------------------------------------
# single file (SGM layout)
# ----------------------------------------------------------------------------------------

OC_PREFIX = "conditioner.embedders.1.model."


def to_sgm(unet, vae, text, text_2):
    unet_sd = unet.state_dict()
    add = {k: v for k, v in unet_sd.items() if k.startswith("add_embedding.")}
    sgm = msf.unet_to_ldm({k: v for k, v in unet_sd.items() if k not in add}, unet.config)
    for k, v in add.items():
        lin, t = k.split(".")[1:]
        sgm[f"model.diffusion_model.label_emb.0.{ {'linear_1': 0, 'linear_2': 2}[lin] }.{t}"] = v
    sgm.update(msf.vae_to_ldm(vae.state_dict(), vae.config))
    te_sd = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in text.state_dict().items()}
    sgm.update({"conditioner.embedders.0.transformer." + k: v for k, v in te_sd.items() if "position_ids" not in k})
    te2_sd = text_2.state_dict()
    oc = msf.open_clip_to_ldm(te2_sd, text_2.config.num_hidden_layers)
    oc = {OC_PREFIX + k[len("cond_stage_model.model."):]: v for k, v in oc.items()}
    oc[OC_PREFIX + "text_projection"] = te2_sd["text_projection.weight"].T.contiguous()
    sgm.update(oc)
    return {k: v.half().contiguous() for k, v in sgm.items()}


def same(ours, theirs, what):
    assert set(ours) == set(theirs), f"{what}: keys differ: {sorted(set(ours) ^ set(theirs))[:10]}"
    for k in ours:
        assert torch.equal(ours[k].float(), theirs[k].float()), f"{what}: {k} differs"


def state(module):
    return {k: v for k, v in module.state_dict().items() if "position_ids" not in k}


@torch.no_grad()
def make_single(pipe, out):
    sgm = to_sgm(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
    fc.save_tensors(SINGLE, sgm)
    loaded = load_file(SINGLE)
    assert all(v.dtype == torch.float16 for v in loaded.values())
    # diffusers' converters, one by one (the folder's weights are f16 values: exact equality)
    same(convert_ldm_unet_checkpoint(loaded, dict(pipe.unet.config)), state(pipe.unet), "unet converter")
    same(convert_ldm_vae_checkpoint(loaded, dict(pipe.vae.config)), state(pipe.vae), "vae converter")
    te = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(loaded).items()}
    same(te, state(pipe.text_encoder), "text_encoder converter")
    same(convert_open_clip_checkpoint(pipe.text_encoder_2, loaded, prefix=OC_PREFIX),
         state(pipe.text_encoder_2), "text_encoder_2 converter")
    # the whole pipeline, as a user loads it
    sp = StableDiffusionXLPipeline.from_single_file(str(SINGLE), config=str(OUT), torch_dtype=torch.float32,
                                                    local_files_only=True, add_watermarker=False)
    sp.set_progress_bar_config(disable=True)
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(sp, comp), getattr(pipe, comp)
        assert a.dtype == torch.float32, comp
        same(state(a), state(b), f"from_single_file {comp}")
        if comp in ("unet", "vae"):
            public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
            assert public(a.config) == public(b.config), comp
        else:
            for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "hidden_act", "projection_dim"):
                assert getattr(a.config, key) == getattr(b.config, key), (comp, key)
    assert type(sp.scheduler) is EulerDiscreteScheduler
    assert fc.effective_config(sp.scheduler) == fc.effective_config(pipe.scheduler)
    assert sp.tokenizer.pad_token == "<|endoftext|>" and sp.tokenizer_2.pad_token == "!"
    assert sp.config.force_zeros_for_empty_prompt is True
    # and it reproduces the folder's golden run exactly
    lat = sp(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
             latents=out["txt2img.latents"].clone(), output_type="latent").images
    assert torch.equal(lat, out["euler.latents"]), "single-file pipeline != golden euler run"
    print(f"  {SINGLE.name}: {len(sgm)} tensors; diffusers' converters and from_single_file give the folder's "
          "weights exactly and reproduce euler.latents")
    return {
        "file": "single/sdxl-tiny.safetensors",
        "dtype": "float16 (the same values as the folder's f16 weights: the goldens apply unchanged)",
        "tensors": len(sgm),
        "prefixes": {
            "model.diffusion_model.": "UNet, LDM/SGM names (label_emb.0.0/0.2 = add_embedding.linear_1/2)",
            "first_stage_model.": "VAE, LDM names",
            "conditioner.embedders.0.transformer.text_model.": "text_encoder, HF CLIP names",
            OC_PREFIX: "text_encoder_2, OpenCLIP names (in_proj = cat(q,k,v); text_projection = HF weight^T)",
        },
        "check": "diffusers StableDiffusionXLPipeline.from_single_file(file, config='sdxl-tiny') gives the "
        "folder's weights exactly and reproduces euler.latents bit for bit",
    }


# ----------------------------------------------------------------------------------------


def main():
    t0 = time.time()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")
    vocab, merges = mf.clip_vocab_and_merges()
    unet, vae, text, text_2 = build_models()
    write_folder(unet, vae, text, text_2, vocab, merges)
    write_turbo_folder()
    pipe = load(OUT)
    check_reloaded(pipe, unet, vae, text, text_2)
    print(f"[{NAME}] reloaded pipeline matches the in-memory weights")

    out, notes = {}, {}
    text_goldens(pipe, out, notes)
    unet_vae_goldens(pipe, out)
    runs = pipeline_goldens(pipe, out, notes)
    single = make_single(pipe, out)
    print(f"[{NAME}] goldens:")
    fc.save_goldens(GOLDEN, out, GEN)

    fc.write_json(SETTINGS, {
        "generator": GEN,
        "versions": fc.versions(),
        "prompts": "goldens/prompts.json (index i of input_ids.{i}, prompt_embeds.{i}, ...)",
        "models": {
            "sdxl-tiny": "tests/fixtures/sdxl-tiny (EulerDiscreteScheduler, leading)",
            "sdxl-turbo-tiny": "tests/fixtures/sdxl-turbo-tiny (same networks, symlinked; "
            "EulerAncestralDiscreteScheduler, trailing)",
        },
        "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in UNET.items()},
        "vae": {k: list(v) if isinstance(v, tuple) else v for k, v in VAE.items()},
        "text_encoder": TEXT, "text_encoder_2": TEXT_2,
        "weights_dtype": "float16 for every network (goldens computed in float32 from those values)",
        "tokenizers": {"tokenizer": {"pad_token": "<|endoftext|>", "pad_token_id": 49407},
                       "tokenizer_2": {"pad_token": "!", "pad_token_id": 0}},
        "encode_prompt": {
            "prompt_embeds": "cat(text_encoder(ids).hidden_states[-2], text_encoder_2(ids_2).hidden_states[-2]), "
            "feature axis, no final LayerNorm",
            "pooled_prompt_embeds": "text_encoder_2(ids_2).text_embeds = text_projection(final_layer_norm("
            "last hidden state)[first position of id 49407])",
            "clip_skip": "hidden_states[-(clip_skip + 2)] of both encoders; pooled unchanged",
            "clip_skip_check": notes["clip_skip"],
            "negative": {"none": "zeros (force_zeros_for_empty_prompt)", "empty": "'' encoded like a prompt",
                         "text": NEGATIVE},
        },
        "add_time_ids": {
            "layout": "(original h, original w, crop top, crop left, target h, target w) as float32",
            "square": [list(SIZE), [0, 0], list(SIZE)], "nonsquare": [list(SIZE_NS), [0, 0], list(SIZE_NS)],
            "custom": [list(CUSTOM_TIME_IDS["original_size"]), list(CUSTOM_TIME_IDS["crops_coords_top_left"]),
                       list(CUSTOM_TIME_IDS["target_size"])],
            "embedding": f"Timesteps({TIME_DIM}, flip_sin_to_cos=True, downscale_freq_shift=0) of each id, "
            "flattened per row, cat after the pooled embedding -> add_embedding (linear, SiLU, linear), "
            "added to the timestep embedding",
        },
        "unet_call": {"timesteps": UNET_TIMESTEPS, "out_ns_timestep": 500.0,
                      "time_ids_rows": ["add_time_ids.square", "add_time_ids.custom"]},
        "txt2img": {"prompt": PROMPT, "negative_prompt": NEGATIVE, "num_inference_steps": STEPS,
                    "guidance_scale": GUIDANCE, "latents": "passed as `latents=` (multiplied by init_noise_sigma)",
                    "image": "output_type='np' as float32 [H,W,3]",
                    "cfg": "only when guidance_scale > 1: UNet batch [negative, positive] for prompt embeds, "
                    "pooled (text_embeds) and time ids (the negative time ids are the positive ones); "
                    "noise_pred = uncond + guidance_scale * (text - uncond)",
                    "time_ids": "(height, width, 0, 0, height, width) of the run",
                    "runs": runs},
        "img2img": notes["img2img"],
        "single_file": single,
    })

    print("files:")
    files = fc.files_under(OUT, OUT_TURBO) + [GOLDEN, SETTINGS, SINGLE, INIT_PNG]
    fc.list_files([p for p in files if not p.is_symlink()])
    links = [p for p in files if p.is_symlink()]
    print(f"  + {len(links)} symbolic links in {OUT_TURBO.relative_to(fc.ROOT)}/ "
          f"(to the files of {OUT.relative_to(fc.ROOT)}/)")
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
