#!/usr/bin/env python3
"""SDXL LoRA fixtures and goldens: tests/fixtures/lora/sdxl-* (never edit by hand).

Run from the repository root (same venv as make_fixtures.py / make_sdxl_fixtures.py, plus peft;
about 30 s on one core):
    /root/.cache/webdiffusion/venv/bin/python scripts/make_sdxl_lora_fixtures.py

Reads tests/fixtures/sdxl-tiny (make_sdxl_fixtures.py), its goldens goldens/sdxl-tiny.safetensors
(UNet inputs, txt2img.latents, euler.latents), goldens/prompts.json (prompt 0) and
single/sdxl-tiny.safetensors (to check the SGM module names). Conventions of make_lora_fixtures.py:
float32 maths on the CPU, one thread, fixed seed, LoRA factors rounded to f16 before any golden is
computed, byte-identical files on a re-run.

Semantics (diffusers 0.42 + peft, unmerged at run time; checked here against an explicit merge)
---------------------------------------------------------------------------------------------
Every targeted Linear / Conv2d computes
    y = base(x) + scaling * up(down(x)),   scaling = weight * scale * alpha / rank
with down = lora_down / lora_A ([rank,in], conv [rank,in,kh,kw] with the base conv's stride and
padding) and up = lora_up / lora_B ([out,rank], conv [out,rank,1,1]); merged:
    W' = W + scale * alpha/rank * up.flatten(1) @ down.flatten(1)   (reshaped to W; weight = 1)
Here alpha/rank = 2/4 = 0.5 for every layer of every component. How `scale` reaches the layers in
StableDiffusionXLPipeline (diffusers 0.42.1, PEFT backend):
  * UNet: pipe(..., cross_attention_kwargs={"scale": s}) -> UNet2DConditionModel.forward is wrapped
    by @apply_lora_scale("cross_attention_kwargs"): scale_lora_layers(unet, s) before the forward
    (every peft LoRA layer's scaling multiplied by s), unscale_lora_layers(unet, s) after; s = 1.0
    (or no kwargs) is a no-op. A direct pipe.unet(..., cross_attention_kwargs={"scale": s}) call
    behaves the same (that is how unet.out is computed).
  * text encoders: __call__ passes lora_scale = cross_attention_kwargs["scale"] to encode_prompt,
    which does scale_lora_layers(text_encoder, s) AND scale_lora_layers(text_encoder_2, s) before
    encoding and unscales both after: the SAME factor s for both CLIP encoders and the UNet
    (prompt embeds passed in directly skip it). encode_prompt(..., lora_scale=s) called directly does
    the same (that is how prompt_embeds is computed).
  * set_adapters(names, adapter_weights) sets `weight` per adapter (1.0 by default; not used here).
  * quirk (as for SD): load_lora_weights multiplies a new text-encoder adapter by pipe.lora_scale,
    the lora_scale of the last encode_prompt call (1.0 on a fresh pipeline); every golden here loads
    its LoRA into a freshly loaded pipeline.

The LoRA ("lora1"; tensors drawn here, not trained)
---------------------------------------------------
rank 4, alpha 2 (alpha/rank 0.5), seed 12100. Each targeted layer gets down/up (randn) scaled
equally so that ||alpha/rank * up@down||_F = 0.08 * ||W||_F, then |up| raised to at least 2^-13 and
both rounded to f16 (the stored values; goldens use exactly these). Targets (every module of the
tiny model whose name ends so, Linear or Conv2d):
  unet            attn1/attn2 to_q, to_k, to_v, to_out.0, ff.net.0.proj, ff.net.2 (every transformer
                  block, mid block included), attentions' proj_in / proj_out (Linear in SDXL),
                  resnets conv1, conv2 (3x3), conv_shortcut (1x1, where present), time_emb_proj
                  (Linear; LoCon), downsamplers.0.conv, upsamplers.0.conv (3x3). Not conv_in,
                  conv_out, time_embedding, add_embedding.
  text_encoder    (CLIP-L-like, 3 layers) every layer's self_attn q/k/v/out_proj, mlp fc1, fc2
  text_encoder_2  (bigG-like, 4 layers) the same (not text_projection)
diffusers 0.42.1 loads every one of these layers from all three files, the SGM-named Kohya file
included (checked: the set of injected peft layers and their lora_A/lora_B values equal the drawn
LoRA exactly, every layer's scaling is alpha/rank = 0.5, nothing left unmapped), so no LoCon layer
had to be dropped. The layer counts are in sdxl-lora.json ("module_counts").

Files (tests/fixtures/lora/)
----------------------------
sdxl-lora1.kohya-sgm.safetensors   Kohya/sd-scripts SDXL layout, float16 (alpha 0-d f16 = 2.0):
    <name>.lora_down.weight, <name>.lora_up.weight, <name>.alpha for every layer, <name> =
    lora_unet_<SGM/LDM module path, "." -> "_"> (the original SDXL UNet names sd-scripts trains on):
      transformer   lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q, ..._attn2_to_out_0,
                    ..._ff_net_0_proj, ..._ff_net_2, lora_unet_input_blocks_4_1_proj_in / _proj_out
      resnet        lora_unet_input_blocks_1_0_in_layers_2 (conv1), ..._out_layers_3 (conv2),
                    ..._emb_layers_1 (time_emb_proj), ..._skip_connection (conv_shortcut)
      downsampler   lora_unet_input_blocks_3_0_op, lora_unet_input_blocks_6_0_op
      upsampler     lora_unet_output_blocks_2_2_conv, lora_unet_output_blocks_5_2_conv (slot .1
                    instead of .2 where the up level has no attention; none here)
      mid block     lora_unet_middle_block_0_in_layers_2 (resnet 0), middle_block_1_* (attention),
                    middle_block_2_* (resnet 1)
    numbering, generated from the UNet config (layers_per_block lpb, block types): input_blocks.0
    = conv_in; down level l, layer k < lpb: input_blocks[1 + l*(lpb+1) + k].0 = resnet k, .1 =
    attention k (levels with attention); input_blocks[1 + l*(lpb+1) + lpb].0.op = downsampler (all
    levels but the last); middle_block.0/.1/.2 = resnet 0 / attention / resnet 1; up level l, k in
    0..=lpb: output_blocks[l*(lpb+1) + k].0 = resnet k, .1 = attention k (levels with attention);
    the upsampler of up level l (all but the last) = output_blocks[l*(lpb+1) + lpb].{1|2}.conv (.2
    with attention). Resnet inner names: conv1 = in_layers.2, conv2 = out_layers.3, time_emb_proj =
    emb_layers.1, conv_shortcut = skip_connection; transformer inner names as diffusers. Every SGM
    module name is checked to exist, with the base weight's shape, as model.diffusion_model.<name>
    .weight in single/sdxl-tiny.safetensors.
      text encoders lora_te1_text_model_encoder_layers_<i>_{self_attn_{q,k,v,out}_proj,mlp_fc{1,2}}
                    and lora_te2_text_model_encoder_layers_<i>_<same> (HF CLIP names with the
                    `text_model.` prefix, as sd-scripts writes them)
    metadata: ss_network_module networks.lora, ss_network_dim 4, ss_network_alpha 2.0,
    ss_base_model_version sdxl_base_v1-0, generator (informative only)
sdxl-lora1.kohya.safetensors       the same LoRA, Kohya keys with diffusers module paths, float16:
      lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q,
      lora_unet_down_blocks_0_resnets_0_{conv1,conv2,time_emb_proj}, ..._conv_shortcut,
      lora_unet_down_blocks_0_downsamplers_0_conv, lora_unet_up_blocks_0_upsamplers_0_conv,
      lora_unet_mid_block_resnets_0_conv1, lora_unet_mid_block_attentions_0_proj_in, ...
      lora_te1_* / lora_te2_* exactly as in the SGM file; .alpha 0-d f16; same metadata
sdxl-lora1.peft.safetensors        PEFT layout written by diffusers' own
    StableDiffusionXLPipeline.save_lora_weights(unet_lora_layers=, text_encoder_lora_layers=,
    text_encoder_2_lora_layers=, *_lora_adapter_metadata=), float16:
      unet.<module>.lora_A.weight / .lora_B.weight      (unet.down_blocks.0.resnets.0.conv1.lora_A...)
      text_encoder.<module>.lora_A/B.weight             (text_encoder.encoder.layers.0.self_attn.
                                                         q_proj...: NO `text_model.`, as transformers
                                                         5's CLIPTextModel names its modules)
      text_encoder_2.<module>.lora_A/B.weight           (text_encoder_2.text_model.encoder.layers.0...:
                                                         CLIPTextModelWithProjection keeps it)
    alpha: safetensors metadata "lora_adapter_metadata" = JSON of LoraConfig(r=4, lora_alpha=2,
    target_modules=[...]).to_dict() per component, keys prefixed "unet.", "text_encoder.",
    "text_encoder_2." ({"unet.r": 4, "unet.lora_alpha": 2.0, ...}); "format": "pt"
sdxl-goldens.safetensors           float32, computed by diffusers after load_lora_weights (identical
    for all three files: asserted rel-L2 <= 1e-5, in practice bit-identical) from a fresh pipeline:
      prompt_embeds               [1,77,80] encode_prompt(prompts.json[0], do_classifier_free_guidance=
                                  False, lora_scale=0.75)[0]
      pooled_prompt_embeds        [1,40]    same call, [2]
      prompt_embeds.scale1 / pooled_prompt_embeds.scale1    lora_scale=1.0
      prompt_embeds.base / pooled_prompt_embeds.base        no LoRA (= goldens/sdxl-tiny prompt_embeds.0,
                                  pooled_prompt_embeds.0; asserted)
      unet.out                    [2,4,16,16] unet(goldens/sdxl-tiny unet.sample, t=500,
                                  encoder_hidden_states=unet.encoder_hidden_states, added_cond_kwargs=
                                  {"text_embeds": unet.text_embeds, "time_ids": unet.time_ids},
                                  cross_attention_kwargs={"scale": 0.75}).sample
      unet.out.scale1             same at scale 1.0 (no cross_attention_kwargs)
      unet.out.base               no LoRA, same inputs
      pipeline.latents            [1,4,16,16] StableDiffusionXLPipeline with the LoRA, cross_attention_
                                  kwargs={"scale": 0.75} (both text encoders scaled by the same 0.75),
                                  prompt "a photograph of an astronaut riding a horse", negative
                                  "blurry, low quality", 4 steps, guidance 5, the model's own
                                  EulerDiscreteScheduler (leading), latents= goldens/sdxl-tiny
                                  txt2img.latents (x init_noise_sigma by the pipeline), 64x64,
                                  output_type="latent". Without the LoRA this run is goldens/sdxl-tiny
                                  euler.latents (asserted bit-identical).
      pipeline.image              [64,64,3] in [0,1] = fc.np_image(vae, pipeline.latents) = what
                                  output_type="np" returns (asserted equal)
sdxl-lora.json                     parameters, module counts per component, SGM <-> diffusers block
                                   prefix table and example name pairs, measured rel-L2 effects, versions
"""

import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixtures_common as fc  # noqa: E402  (one thread, deterministic algorithms, quiet logs, peft pin)
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from make_lora_fixtures import module_counts  # noqa: E402

GEN = "scripts/make_sdxl_lora_fixtures.py"
MODEL = fc.FIX / "sdxl-tiny"
OUT = fc.FIX / "lora"
SINGLE = fc.FIX / "single" / "sdxl-tiny.safetensors"
BASE_GOLDENS = fc.GOLDENS / "sdxl-tiny.safetensors"
FILES = {
    "kohya-sgm": OUT / "sdxl-lora1.kohya-sgm.safetensors",
    "kohya": OUT / "sdxl-lora1.kohya.safetensors",
    "peft": OUT / "sdxl-lora1.peft.safetensors",
}
GOLDEN = OUT / "sdxl-goldens.safetensors"
INFO = OUT / "sdxl-lora.json"

PROMPT0 = json.load(open(fc.GOLDENS / "prompts.json", encoding="utf-8"))[0]
PROMPT, NEGATIVE = "a photograph of an astronaut riding a horse", "blurry, low quality"
STEPS, GUIDANCE = 4, 5.0  # = make_sdxl_fixtures.py's euler run
UNET_TIMESTEP = 500.0
SCALE = 0.75

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
KOHYA_PREFIX = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
UNET_ALL = (".to_q", ".to_k", ".to_v", ".to_out.0", ".ff.net.0.proj", ".ff.net.2", ".proj_in",
            ".proj_out", ".conv1", ".conv2", ".conv_shortcut", ".time_emb_proj",
            ".downsamplers.0.conv", ".upsamplers.0.conv")
TE_ALL = (".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj", ".self_attn.out_proj",
          ".mlp.fc1", ".mlp.fc2")
SPEC = dict(name="lora1", rank=4, alpha=2.0, rel=0.08, seed=12100,
            targets={"unet": UNET_ALL, "text_encoder": TE_ALL, "text_encoder_2": TE_ALL})
TE_PREFIX = "text_model."  # HF CLIP's module prefix in real checkpoints / Kohya names
# diffusers ResnetBlock2D -> SGM ResBlock inner module names
RESNET_SGM = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
              "conv_shortcut": "skip_connection"}


# ----------------------------------------------------------------------------------------
# SGM (original SDXL UNet) names, from the UNet config
# ----------------------------------------------------------------------------------------


def sgm_block_prefixes(config):
    """{diffusers block prefix: SGM block prefix}, e.g. "down_blocks.1.attentions.0" ->
    "input_blocks.4.1", "down_blocks.0.downsamplers.0.conv" -> "input_blocks.3.0.op"."""
    lpb = config["layers_per_block"]
    assert isinstance(lpb, int), "per-level layers_per_block not supported"
    per = lpb + 1
    down, up = config["down_block_types"], config["up_block_types"]
    m = {}
    for lvl, kind in enumerate(down):
        attn = "CrossAttn" in kind
        for k in range(lpb):
            m[f"down_blocks.{lvl}.resnets.{k}"] = f"input_blocks.{1 + lvl * per + k}.0"
            if attn:
                m[f"down_blocks.{lvl}.attentions.{k}"] = f"input_blocks.{1 + lvl * per + k}.1"
        if lvl < len(down) - 1:
            m[f"down_blocks.{lvl}.downsamplers.0.conv"] = f"input_blocks.{1 + lvl * per + lpb}.0.op"
    assert config["mid_block_type"] == "UNetMidBlock2DCrossAttn", config["mid_block_type"]
    m.update({"mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
              "mid_block.resnets.1": "middle_block.2"})
    for lvl, kind in enumerate(up):
        attn = "CrossAttn" in kind
        for k in range(per):
            m[f"up_blocks.{lvl}.resnets.{k}"] = f"output_blocks.{lvl * per + k}.0"
            if attn:
                m[f"up_blocks.{lvl}.attentions.{k}"] = f"output_blocks.{lvl * per + k}.1"
        if lvl < len(up) - 1:
            m[f"up_blocks.{lvl}.upsamplers.0.conv"] = f"output_blocks.{lvl * per + lpb}.{2 if attn else 1}.conv"
    return m


def sgm_module(name, prefixes):
    """diffusers UNet module path -> SGM module path (dots)."""
    head = max((p for p in prefixes if name == p or name.startswith(p + ".")), key=len, default=None)
    assert head is not None, f"no SGM block for {name}"
    rest = name[len(head) + 1:]
    if ".resnets." in head:
        rest = RESNET_SGM[rest]
    return prefixes[head] + ("." + rest if rest else "")


# ----------------------------------------------------------------------------------------
# the LoRA
# ----------------------------------------------------------------------------------------


def targets(model, suffixes):
    return [(n, m) for n, m in model.named_modules()
            if n.endswith(suffixes) and isinstance(m, (nn.Linear, nn.Conv2d))]


def make_lora(pipe, spec):
    """{(component, module): (down, up, kind)} in float32, values exactly representable in f16
    (drawn as make_lora_fixtures.py's make_lora)."""
    g = fc.gen(spec["seed"])
    r, ratio = spec["rank"], spec["alpha"] / spec["rank"]
    layers = {}
    for comp in COMPONENTS:
        for name, m in targets(getattr(pipe, comp), spec["targets"][comp]):
            w = m.weight.detach()
            if isinstance(m, nn.Conv2d):
                down = torch.randn(r, w.shape[1], *w.shape[2:], generator=g)
                up = torch.randn(w.shape[0], r, 1, 1, generator=g)
            else:
                down = torch.randn(r, w.shape[1], generator=g)
                up = torch.randn(w.shape[0], r, generator=g)
            prod = ratio * float((up.flatten(1) @ down.flatten(1)).norm())
            c = math.sqrt(spec["rel"] * float(w.norm()) / prod)
            up = c * up
            up = torch.where(up.abs() < 2.0**-13, torch.copysign(torch.full_like(up, 2.0**-13), up), up)
            layers[(comp, name)] = ((c * down).half().float(), up.half().float(), type(m).__name__)
    return layers


def kohya_name(comp, name, prefixes=None):
    if comp == "unet":
        base = sgm_module(name, prefixes) if prefixes is not None else name
        return ("lora_unet_" + base).replace(".", "_")
    te = name if name.startswith(TE_PREFIX) else TE_PREFIX + name
    return (KOHYA_PREFIX[comp] + te).replace(".", "_")


def kohya_sd(layers, spec, prefixes=None):
    sd = {}
    for (comp, name), (down, up, _) in layers.items():
        base = kohya_name(comp, name, prefixes)
        assert base + ".lora_down.weight" not in sd, base
        sd[base + ".lora_down.weight"] = down.half()
        sd[base + ".lora_up.weight"] = up.half()
        sd[base + ".alpha"] = torch.tensor(spec["alpha"], dtype=torch.float16)
    return sd


def short_targets(suffixes):
    return sorted(s.lstrip(".").removeprefix("self_attn.").removeprefix("mlp.") for s in suffixes)


def adapter_metadata(spec, suffixes):
    """LoraConfig(...).to_dict() as diffusers' training scripts pass it to save_lora_weights, made
    deterministic (sets -> sorted lists, no base model path)."""
    cfg = LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], target_modules=short_targets(suffixes))
    d = cfg.to_dict()
    d = {k: (sorted(v) if isinstance(v, set) else v) for k, v in d.items()}
    d["base_model_name_or_path"] = None
    return d


@torch.no_grad()
def check_sgm_names(layers, prefixes):
    """Every SGM module name exists in the SGM single file with the base weight's shape."""
    with safe_open(SINGLE, "pt") as f:
        keys = set(f.keys())
        n = 0
        for (comp, name), (down, up, _) in layers.items():
            if comp != "unet":
                continue
            key = "model.diffusion_model." + sgm_module(name, prefixes) + ".weight"
            assert key in keys, f"{name}: {key} not in {SINGLE.name}"
            shape = tuple(f.get_slice(key).get_shape())
            want = (up.shape[0], down.shape[1], *down.shape[2:])
            assert shape == want, (key, shape, want)
            n += 1
    return n


def write_files(layers, spec, prefixes):
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(spec["rank"]),
            "ss_network_alpha": str(spec["alpha"]), "ss_base_model_version": "sdxl_base_v1-0",
            "generator": GEN}
    fc.save_tensors(FILES["kohya-sgm"], kohya_sd(layers, spec, prefixes), metadata=meta)
    fc.save_tensors(FILES["kohya"], kohya_sd(layers, spec), metadata=meta)
    lora_meta = {c: adapter_metadata(spec, spec["targets"][c]) for c in COMPONENTS}
    peft = {c: {} for c in COMPONENTS}
    for (comp, name), (down, up, _) in layers.items():
        peft[comp][f"{name}.lora_A.weight"] = down.half()
        peft[comp][f"{name}.lora_B.weight"] = up.half()
    StableDiffusionXLPipeline.save_lora_weights(
        OUT, unet_lora_layers=peft["unet"], text_encoder_lora_layers=peft["text_encoder"],
        text_encoder_2_lora_layers=peft["text_encoder_2"],
        unet_lora_adapter_metadata=lora_meta["unet"],
        text_encoder_lora_adapter_metadata=lora_meta["text_encoder"],
        text_encoder_2_lora_adapter_metadata=lora_meta["text_encoder_2"],
        weight_name=FILES["peft"].name)
    fc.canonicalize_safetensors(FILES["peft"])
    # what was written
    sd = load_file(FILES["peft"])
    assert all(v.dtype == torch.float16 for v in sd.values())
    assert len(sd) == 2 * len(layers), (len(sd), len(layers))
    with safe_open(FILES["peft"], "pt") as f:
        packed = json.loads(f.metadata()["lora_adapter_metadata"])
    for c in COMPONENTS:
        assert packed[f"{c}.r"] == spec["rank"] and packed[f"{c}.lora_alpha"] == spec["alpha"], c
    return lora_meta


# ----------------------------------------------------------------------------------------
# checks and goldens
# ----------------------------------------------------------------------------------------


def load_pipe():
    pipe = StableDiffusionXLPipeline.from_pretrained(MODEL, dtype=torch.float32, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler) is EulerDiscreteScheduler
    return pipe


def check_injected(pipe, layers, adapter, spec):
    """The peft layers diffusers injected are exactly ours, with our values and alpha/rank."""
    want, got = set(layers), set()
    ratio = spec["alpha"] / spec["rank"]
    for comp in COMPONENTS:
        for n, m in getattr(pipe, comp).named_modules():
            if isinstance(m, LoraLayer) and adapter in m.lora_A:
                got.add((comp, n))
                if (comp, n) not in layers:
                    continue
                down, up, _ = layers[(comp, n)]
                assert m.lora_A[adapter].weight.dtype == torch.float32, (comp, n)
                assert torch.equal(m.lora_A[adapter].weight, down), (comp, n, "lora_A")
                assert torch.equal(m.lora_B[adapter].weight, up), (comp, n, "lora_B")
                assert m.r[adapter] == spec["rank"], (comp, n, m.r[adapter])
                assert abs(m.scaling[adapter] - ratio) < 1e-12, (comp, n, m.scaling[adapter])
    assert got == want, f"missing {sorted(want - got)[:5]}, extra {sorted(got - want)[:5]}"
    return len(got)


def unet_call(pipe, inputs, scale=None):
    kw = {"cross_attention_kwargs": {"scale": scale}} if scale is not None else {}
    return pipe.unet(inputs["sample"], inputs["t"], encoder_hidden_states=inputs["ehs"],
                     added_cond_kwargs={"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]},
                     **kw).sample


def encode(pipe, lora_scale=None):
    pe, ne, pp, npp = pipe.encode_prompt(PROMPT0, device="cpu", num_images_per_prompt=1,
                                         do_classifier_free_guidance=False, lora_scale=lora_scale)
    assert ne is None and npp is None
    return pe, pp


def run_pipeline(pipe, own, inputs, scale, output_type="latent"):
    pipe.scheduler = copy.deepcopy(own)
    ck = {"scale": scale} if scale is not None else None
    return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                height=64, width=64, latents=inputs["latents"].clone(), output_type=output_type,
                cross_attention_kwargs=ck).images


@torch.no_grad()
def with_lora(path, layers, inputs, own, adapter):
    pipe = load_pipe()
    pipe.load_lora_weights(str(path), adapter_name=adapter)
    n = check_injected(pipe, layers, adapter, SPEC)
    r = {}
    r["prompt_embeds"], r["pooled_prompt_embeds"] = encode(pipe, SCALE)
    r["prompt_embeds.scale1"], r["pooled_prompt_embeds.scale1"] = encode(pipe, 1.0)
    r["unet.out"] = unet_call(pipe, inputs, SCALE)
    r["unet.out.scale1"] = unet_call(pipe, inputs)
    # the scales are undone after every call: scaling is back at alpha/rank
    check_injected(pipe, layers, adapter, SPEC)
    r["pipeline.latents"] = run_pipeline(pipe, own, inputs, SCALE)
    return pipe, r, n


@torch.no_grad()
def merged_pipe(base, layers, spec, weight):
    """Explicit merge W' = W + weight * alpha/rank * up@down into copies of the base networks."""
    nets = {c: copy.deepcopy(getattr(base, c)) for c in COMPONENTS}
    s = weight * spec["alpha"] / spec["rank"]
    for (comp, name), (down, up, _) in layers.items():
        m = nets[comp].get_submodule(name)
        m.weight += (s * (up.flatten(1) @ down.flatten(1))).reshape(m.weight.shape)
    pipe = StableDiffusionXLPipeline(**{**base.components, **nets}, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def main():
    t0 = time.time()
    print(fc.versions())
    OUT.mkdir(parents=True, exist_ok=True)
    g = load_file(BASE_GOLDENS)
    inputs = {"sample": g["unet.sample"], "ehs": g["unet.encoder_hidden_states"],
              "text_embeds": g["unet.text_embeds"], "time_ids": g["unet.time_ids"],
              "t": torch.tensor([UNET_TIMESTEP]), "latents": g["txt2img.latents"]}
    assert PROMPT0 == PROMPT
    base = load_pipe()
    own = copy.deepcopy(base.scheduler)
    prefixes = sgm_block_prefixes(base.unet.config)
    out = {}
    out["prompt_embeds.base"], out["pooled_prompt_embeds.base"] = encode(base)
    assert torch.equal(out["prompt_embeds.base"], g["prompt_embeds.0"])
    assert torch.equal(out["pooled_prompt_embeds.base"], g["pooled_prompt_embeds.0"])
    out["unet.out.base"] = unet_call(base, inputs)
    base_lat = run_pipeline(base, own, inputs, None)
    assert torch.equal(base_lat, g["euler.latents"]), "base run != goldens/sdxl-tiny euler.latents"

    layers = make_lora(base, SPEC)
    n_sgm = check_sgm_names(layers, prefixes)
    lora_meta = write_files(layers, SPEC, prefixes)
    counts = module_counts(layers)
    for c in counts.values():
        c["total"] = sum(c.values())
    print(f"  {len(layers)} LoRA layers: {counts}; {n_sgm} SGM UNet names checked against {SINGLE.name}")

    # ---- every file through diffusers' load_lora_weights: the same LoRA, the same results
    results, injected = {}, {}
    for fmt, path in FILES.items():
        pipe, results[fmt], injected[fmt] = with_lora(path, layers, inputs, own, f"lora1_{fmt.replace('-', '_')}")
        if fmt == "peft":
            out.update(results[fmt])
            out["pipeline.image"] = fc.np_image(pipe.vae, results[fmt]["pipeline.latents"])
            np_img = run_pipeline(pipe, own, inputs, SCALE, output_type="np")
            assert np.array_equal(np_img[0], out["pipeline.image"].numpy()), "output_type np != np_image"
        print(f"  {path.name}: {injected[fmt]} peft layers injected = the drawn LoRA (values, alpha/rank)")
    agreement = {}
    for fmt in ("kohya-sgm", "kohya"):
        worst = 0.0
        for k, v in results[fmt].items():
            d = fc.rel_l2(v, results["peft"][k])
            assert d <= 1e-5, f"{fmt} vs peft {k}: rel-L2 {d:.3g}"
            worst = max(worst, d)
        agreement[f"{fmt} vs peft"] = worst
        print(f"  {fmt} vs peft: max rel-L2 over all outputs {worst:.3g}")

    # ---- explicit merge (checks diffusers' semantics and the peft 0.21 / transformers 5 pairing)
    for sfx, w in (("", SCALE), (".scale1", 1.0)):
        mp = merged_pipe(base, layers, SPEC, w)
        pe, pp = encode(mp)
        fc.assert_close(pe, out["prompt_embeds" + sfx], f"merge prompt_embeds{sfx}", atol=0, rtol=2e-5)
        fc.assert_close(pp, out["pooled_prompt_embeds" + sfx], f"merge pooled{sfx}", atol=0, rtol=2e-5)
        fc.assert_close(unet_call(mp, inputs), out["unet.out" + sfx], f"merge unet.out{sfx}", atol=0, rtol=2e-5)
        if w == SCALE:
            lat = run_pipeline(mp, own, inputs, None)
            d = fc.rel_l2(lat, out["pipeline.latents"])
            assert d < 1e-4, f"merge pipeline.latents rel-L2 {d:.3g}"
    print("  explicit merge W + scale*alpha/rank*up@down reproduces every LoRA output")

    effect = {
        "prompt_embeds": fc.rel_l2(out["prompt_embeds"], out["prompt_embeds.base"]),
        "prompt_embeds.scale1": fc.rel_l2(out["prompt_embeds.scale1"], out["prompt_embeds.base"]),
        "pooled_prompt_embeds": fc.rel_l2(out["pooled_prompt_embeds"], out["pooled_prompt_embeds.base"]),
        "pooled_prompt_embeds.scale1": fc.rel_l2(out["pooled_prompt_embeds.scale1"], out["pooled_prompt_embeds.base"]),
        "unet.out": fc.rel_l2(out["unet.out"], out["unet.out.base"]),
        "unet.out.scale1": fc.rel_l2(out["unet.out.scale1"], out["unet.out.base"]),
        "pipeline.latents": fc.rel_l2(out["pipeline.latents"], g["euler.latents"]),
        "pipeline.image": fc.rel_l2(out["pipeline.image"], g["euler.image"]),
    }
    for k, v in effect.items():
        print(f"  rel-L2 change vs base {k:30s} {v:.4f}")
        assert 0.02 < v < 0.6, (k, v)
    # the UNet with the SGM file differs from the base and equals the PEFT file's
    assert fc.rel_l2(results["kohya-sgm"]["unet.out"], out["unet.out.base"]) > 0.02

    print("goldens:")
    fc.save_goldens(GOLDEN, out, GEN)

    ex_names = ["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
                "down_blocks.2.attentions.1.transformer_blocks.1.attn2.to_out.0",
                "down_blocks.1.attentions.0.proj_in", "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj",
                "down_blocks.0.resnets.0.conv1", "down_blocks.0.resnets.0.conv2",
                "down_blocks.0.resnets.0.time_emb_proj", "down_blocks.1.resnets.0.conv_shortcut",
                "down_blocks.0.downsamplers.0.conv", "down_blocks.1.downsamplers.0.conv",
                "up_blocks.0.upsamplers.0.conv", "up_blocks.1.upsamplers.0.conv",
                "up_blocks.2.resnets.2.conv_shortcut", "up_blocks.0.attentions.2.proj_out",
                "mid_block.resnets.0.conv1", "mid_block.attentions.0.transformer_blocks.1.attn1.to_k",
                "mid_block.resnets.1.time_emb_proj"]
    assert all(("unet", n) in layers for n in ex_names)
    examples = {n: {"sgm_module": sgm_module(n, prefixes),
                    "kohya-sgm": kohya_name("unet", n, prefixes), "kohya": kohya_name("unet", n),
                    "peft": f"unet.{n}.lora_A.weight"} for n in ex_names}
    te_examples = {}
    for comp in ("text_encoder", "text_encoder_2"):
        n = next(name for c, name in layers if c == comp and name.endswith("layers.0.self_attn.q_proj"))
        te_examples[f"{comp}.{n}"] = {"kohya": kohya_name(comp, n), "peft": f"{comp}.{n}.lora_A.weight"}
    fc.write_json(INFO, {
        "generator": GEN,
        "versions": fc.versions(),
        "model": "sdxl-tiny",
        "lora": {"name": SPEC["name"], "rank": SPEC["rank"], "alpha": SPEC["alpha"], "seed": SPEC["seed"],
                 "rel_norm": SPEC["rel"], "factor_dtype": "float16 (|up| >= 2^-13)",
                 "target_suffixes": {c: list(v) for c, v in SPEC["targets"].items()},
                 "module_counts": counts,
                 "adapter_metadata": lora_meta},
        "files": {k: str(v.relative_to(fc.FIX)) for k, v in FILES.items()},
        "goldens": str(GOLDEN.relative_to(fc.FIX)),
        "prompt_embeds_prompt": "goldens/prompts.json[0]",
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "num_inference_steps": STEPS, "guidance_scale": GUIDANCE,
        "size": [64, 64], "lora_scale": SCALE, "unet_timestep": UNET_TIMESTEP,
        "unet_inputs": "goldens/sdxl-tiny.safetensors unet.sample, unet.encoder_hidden_states, "
        "unet.text_embeds, unet.time_ids",
        "pipeline_latents": "goldens/sdxl-tiny.safetensors txt2img.latents; scheduler = sdxl-tiny's own "
        "EulerDiscreteScheduler; without the LoRA the run gives goldens/sdxl-tiny euler.latents",
        "semantics": "y = base(x) + scale * (alpha / rank) * up(down(x)); merged W' = W + scale*(alpha/rank) * "
        "up.flatten(1) @ down.flatten(1) reshaped to W. Conv down keeps the base conv's kernel/stride/padding, "
        "conv up is 1x1. alpha/rank = 0.5 for every layer.",
        "scaling": {
            "unet": "cross_attention_kwargs['scale'] -> UNet2DConditionModel.forward (@apply_lora_scale): "
            "scale_lora_layers(unet, s) before, unscale_lora_layers after; 1.0 is a no-op",
            "text_encoders": "the pipeline passes the same cross_attention_kwargs['scale'] as lora_scale to "
            "encode_prompt, which scales text_encoder AND text_encoder_2 by it (then unscales). One factor for "
            "all three networks.",
            "quirk": "load_lora_weights multiplies new text-encoder adapters by pipe.lora_scale (the last "
            "encode_prompt lora_scale, 1.0 on a fresh pipeline); every golden loads into a fresh pipeline",
        },
        "diffusers_loading": {
            "all_keys_loaded": True,
            "injected_layers": injected,
            "path": "all keys start with lora_unet_/lora_te1_/lora_te2_ -> _maybe_map_sgm_blocks_to_diffusers("
            "state_dict, unet.config) (input_blocks/middle_block/output_blocks -> down_blocks/mid_block/"
            "up_blocks) -> _convert_non_diffusers_lora_to_diffusers (in_layers_2 -> conv1, out_layers_3 -> "
            "conv2, emb_layers_1 -> time_emb_proj, skip_connection -> conv_shortcut, op -> conv; .alpha -> "
            "network_alphas)",
            "max_rel_l2_between_files": agreement,
        },
        "sgm_numbering": "input_blocks.0 = conv_in; down level l, k < lpb: input_blocks[1+l*(lpb+1)+k].0 = "
        "resnet k, .1 = attention k; input_blocks[1+l*(lpb+1)+lpb].0.op = downsampler (not the last level); "
        "middle_block.0/.1/.2 = resnet 0 / attention / resnet 1; up level l, k in 0..=lpb: output_blocks["
        "l*(lpb+1)+k].0 = resnet k, .1 = attention k; upsampler of up level l (not the last) = output_blocks["
        "l*(lpb+1)+lpb].{2 with attention, 1 without}.conv. Resnet: conv1 = in_layers.2, conv2 = out_layers.3, "
        "time_emb_proj = emb_layers.1, conv_shortcut = skip_connection.",
        "sgm_block_prefixes": prefixes,
        "name_examples": {"unet": examples, "text_encoders": te_examples},
        "rel_l2_change_vs_base": effect,
    })
    print("files:")
    fc.list_files(list(FILES.values()) + [GOLDEN, INFO])
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
