#!/usr/bin/env python3
"""LoRA fixtures and goldens: tests/fixtures/lora/ (never edit by hand).

Run from the repository root (same venv as make_fixtures.py, plus peft; ~1 min):
    /root/.cache/webdiffusion/venv/bin/python scripts/make_lora_fixtures.py

Semantics (diffusers + peft, unmerged at run time): every targeted Linear / Conv2d computes
    y = base(x) + scaling * up(down(x)),   scaling = weight * scale * alpha / rank
with down = lora_down / lora_A ([rank,in] or conv [rank,in,kh,kw] with the base conv's
stride and padding) and up = lora_up / lora_B ([out,rank] or [out,rank,1,1]), i.e. merged
W' = W + scaling * up.flatten(1) @ down.flatten(1) (reshaped to W). `scale` is the
pipeline's cross_attention_kwargs["scale"] (UNet and text encoder alike), `weight` the
per-adapter weight of set_adapters (1.0 by default). Several adapters add up.

Two random LoRAs per model (tensors drawn here, not trained; each targeted layer gets
down/up with ||alpha/rank * up@down||_F = REL * ||W||_F, both factors equally scaled, then
|up| raised to at least 2^-13 and both rounded to f16):
    lora1  rank 4, alpha 2 (alpha/rank 0.5), REL 0.08. UNet: attn1/attn2 to_q, to_k, to_v, to_out.0,
           ff.net.0.proj, ff.net.2, proj_in, proj_out (1x1 conv in sd1, linear in sd2),
           resnet conv1, conv2, conv_shortcut, time_emb_proj, downsamplers.0.conv,
           upsamplers.0.conv. Text encoder: self_attn q/k/v/out_proj, mlp fc1, fc2.
    lora2  rank 2, alpha 1, REL 0.08. UNet attention + ff layers only; text encoder as lora1.

Files (M = sd1-tiny, sd2-tiny):
  lora/lora1-M.kohya.safetensors      Kohya/A1111 (LoCon names for resnets/samplers), float16:
      lora_unet_<module path, "." -> "_">.lora_down.weight / .lora_up.weight / .alpha (0-d f16)
      lora_te_text_model_encoder_layers_<i>_{self_attn_{q,k,v,out}_proj,mlp_fc{1,2}}.<same>
      safetensors metadata ss_network_module / ss_network_dim / ss_network_alpha (informative)
  lora/lora1-M.diffusers.safetensors  older (non-PEFT) diffusers layout, float32:
      unet.<module>.lora.down.weight / .lora.up.weight
      text_encoder.text_model.<module>.lora_linear_layer.down.weight / .up.weight
      alpha: safetensors metadata "lora_adapter_metadata" (as peft below); the keys carry none
  lora/lora1-M.peft.safetensors       PEFT layout written by diffusers' own
      StableDiffusionPipeline.save_lora_weights, float16:
      unet.<module>.lora_A.weight / .lora_B.weight, text_encoder.<module>.lora_A/B.weight
      (text encoder modules WITHOUT "text_model.", as diffusers 0.42 + transformers 5 save
      them); alpha: metadata "lora_adapter_metadata" = JSON {"unet.r": 4, "unet.lora_alpha":
      2, "unet.target_modules": [...], ..., "text_encoder.r": ...} (LoraConfig.to_dict() per
      component, prefixed; what save_lora_weights writes from the *_lora_adapter_metadata args)
  lora/lora1-M.peft-noalpha.safetensors  PEFT keys, no metadata: diffusers then takes alpha =
      rank (scaling 1), so lora_B is stored pre-multiplied by alpha/rank = 0.5 (exact: every
      |lora_up| >= 2^-13 so the product stays a normal f16 number): the same LoRA; float16
  lora/lora2-M.kohya.safetensors      the second LoRA, Kohya, float32 (alpha 0-d f32)
  lora/goldens-M.safetensors          float32, computed by diffusers after load_lora_weights:
      prompt_embeds           [1,77,D] encode_prompt(PROMPT, lora_scale=0.75), lora1
      prompt_embeds.scale1    same, lora_scale=1.0
      prompt_embeds.base      no LoRA
      unet.out                [2,4,h,w] unet(goldens/M unet.sample, t=500, unet.encoder_hidden_states,
                              cross_attention_kwargs={"scale": 0.75}).sample, lora1
      unet.out.scale1         same at scale 1.0
      unet.out.base           no LoRA (same inputs)
      pipeline.latents        [1,4,h,w] StableDiffusionPipeline, lora1, cross_attention_kwargs
                              {"scale": 0.75} (text encoder scaled by the same 0.75), prompt /
                              negative / 8 steps / guidance 7.5 / own scheduler / `latents` of
                              goldens/pipeline-M.safetensors, output_type="latent"
      pipeline.image          [H,W,3] in [0,1] = output_type="np" of those latents
      stack.prompt_embeds     lora1 and lora2 (Kohya files) with set_adapters(["lora1","lora2"],
                              adapter_weights=[0.6, -0.4]), no cross_attention scale
      stack.unet.out          same, UNet call as unet.out
  lora/lora.json              all parameters, per-LoRA module lists with shapes, format notes

Every format of lora1 is loaded with pipe.load_lora_weights(path) and must give the same
prompt_embeds / unet.out / pipeline latents (asserted, 1e-6); the results are also checked
against an explicit weight merge of the base models (asserted, 2e-5 relative).
"""

import copy
import json
import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixtures_common as fc  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402

OUT = fc.FIX / "lora"
GEN = "scripts/make_lora_fixtures.py"

UNET_ALL = (".to_q", ".to_k", ".to_v", ".to_out.0", ".ff.net.0.proj", ".ff.net.2", ".proj_in",
            ".proj_out", ".conv1", ".conv2", ".conv_shortcut", ".time_emb_proj",
            ".downsamplers.0.conv", ".upsamplers.0.conv")
UNET_ATTN_FF = UNET_ALL[:6]
TE_ALL = (".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj", ".self_attn.out_proj",
          ".mlp.fc1", ".mlp.fc2")
LORAS = {
    "lora1": dict(rank=4, alpha=2.0, rel=0.08, seed=7100, unet=UNET_ALL, te=TE_ALL),
    "lora2": dict(rank=2, alpha=1.0, rel=0.08, seed=7200, unet=UNET_ATTN_FF, te=TE_ALL),
}
SCALE = 0.75
STACK = {"adapter_names": ["lora1", "lora2"], "adapter_weights": [0.6, -0.4]}
FORMATS = ["kohya", "diffusers", "peft", "peft-noalpha"]
TE_PREFIX = "text_model."  # real SD text encoders' module prefix (absent in transformers 5)


def targets(model, suffixes):
    return [(n, m) for n, m in model.named_modules()
            if n.endswith(suffixes) and isinstance(m, (nn.Linear, nn.Conv2d))]


def make_lora(unet, text, spec):
    """{(component, module): (down, up, kind)} in float32, values exactly representable in f16."""
    g = fc.gen(spec["seed"])
    r, ratio = spec["rank"], spec["alpha"] / spec["rank"]
    layers = {}
    for comp, model, suffixes in (("unet", unet, spec["unet"]), ("text_encoder", text, spec["te"])):
        for name, m in targets(model, suffixes):
            w = m.weight.detach()
            if isinstance(m, nn.Conv2d):
                down = torch.randn(r, w.shape[1], *w.shape[2:], generator=g)
                up = torch.randn(w.shape[0], r, 1, 1, generator=g)
            else:
                down = torch.randn(r, w.shape[1], generator=g)
                up = torch.randn(w.shape[0], r, generator=g)
            prod = ratio * float((up.flatten(1) @ down.flatten(1)).norm())
            c = math.sqrt(spec["rel"] * float(w.norm()) / prod)
            # |up| >= 2^-13 keeps up * alpha/rank (0.5) a normal f16 number: the peft-noalpha file
            # stores it exactly in f16
            up = c * up
            up = torch.where(up.abs() < 2.0**-13, torch.copysign(torch.full_like(up, 2.0**-13), up), up)
            layers[(comp, name)] = ((c * down).half().float(), up.half().float(), type(m).__name__)
    return layers


def module_counts(layers):
    """{component: {"Linear": n, "Conv2d 3x3": n, ...}} (the files list every module)."""
    counts = {}
    for (comp, _), (down, _, kind) in layers.items():
        key = kind if kind == "Linear" else f"{kind} {down.shape[2]}x{down.shape[3]}"
        counts.setdefault(comp, {}).setdefault(key, 0)
        counts[comp][key] += 1
    return counts


def kohya_sd(layers, spec, dtype):
    sd = {}
    for (comp, name), (down, up, _) in layers.items():
        base = "lora_unet_" + name if comp == "unet" else "lora_te_" + TE_PREFIX + name
        base = base.replace(".", "_")
        sd[base + ".lora_down.weight"] = down.to(dtype)
        sd[base + ".lora_up.weight"] = up.to(dtype)
        sd[base + ".alpha"] = torch.tensor(spec["alpha"], dtype=dtype)
    return sd


def short_targets(suffixes):
    """Module-name suffixes as trainers list them: ".self_attn.q_proj" -> "q_proj", ".to_out.0" -> "to_out.0"."""
    return sorted(s.lstrip(".").removeprefix("self_attn.").removeprefix("mlp.") for s in suffixes)


def adapter_metadata(spec, suffixes):
    """LoraConfig(...).to_dict() as diffusers' training scripts pass it to save_lora_weights
    (_collate_lora_metadata), made deterministic: sets -> sorted lists, no base model path."""
    cfg = LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], target_modules=short_targets(suffixes))
    d = cfg.to_dict()
    d = {k: (sorted(v) if isinstance(v, set) else v) for k, v in d.items()}
    d["base_model_name_or_path"] = None
    return d


def write_formats(model_name, layers, spec):
    files = {}
    n = f"{spec['name']}-{model_name}"
    # Kohya: float16 (lora1) / float32 (lora2)
    dtype = torch.float16 if spec["name"] == "lora1" else torch.float32
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(spec["rank"]),
            "ss_network_alpha": str(spec["alpha"]), "generator": GEN}
    files["kohya"] = OUT / f"{n}.kohya.safetensors"
    fc.save_tensors(files["kohya"], kohya_sd(layers, spec, dtype), metadata=meta)
    if spec["name"] != "lora1":
        return files
    umeta, tmeta = adapter_metadata(spec, spec["unet"]), adapter_metadata(spec, spec["te"])
    lora_meta = {"unet": umeta, "text_encoder": tmeta}
    packed = {f"{c}.{k}": v for c, m in lora_meta.items() for k, v in m.items()}
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(packed, indent=2, sort_keys=True)}
    # older diffusers layout, float32, alpha in the metadata
    sd = {}
    for (comp, name), (down, up, _) in layers.items():
        if comp == "unet":
            sd[f"unet.{name}.lora.down.weight"], sd[f"unet.{name}.lora.up.weight"] = down, up
        else:
            p = f"text_encoder.{TE_PREFIX}{name}.lora_linear_layer"
            sd[p + ".down.weight"], sd[p + ".up.weight"] = down, up
    files["diffusers"] = OUT / f"{n}.diffusers.safetensors"
    fc.save_tensors(files["diffusers"], sd, metadata=metadata)
    # PEFT layout through diffusers' own writer, float16
    peft = {c: {} for c in lora_meta}
    for (comp, name), (down, up, _) in layers.items():
        peft[comp][f"{name}.lora_A.weight"] = down.half()
        peft[comp][f"{name}.lora_B.weight"] = up.half()
    files["peft"] = OUT / f"{n}.peft.safetensors"
    StableDiffusionPipeline.save_lora_weights(
        OUT, unet_lora_layers=peft["unet"], text_encoder_lora_layers=peft["text_encoder"],
        unet_lora_adapter_metadata=umeta, text_encoder_lora_adapter_metadata=tmeta,
        weight_name=files["peft"].name)
    fc.canonicalize_safetensors(files["peft"])
    # PEFT keys without metadata (alpha = rank), alpha/rank folded into lora_B
    ratio = spec["alpha"] / spec["rank"]
    sd = {}
    for (comp, name), (down, up, _) in layers.items():
        assert torch.equal((up * ratio).half().float(), up * ratio), name
        sd[f"{comp}.{name}.lora_A.weight"] = down.half()
        sd[f"{comp}.{name}.lora_B.weight"] = (up * ratio).half()
    files["peft-noalpha"] = OUT / f"{n}.peft-noalpha.safetensors"
    fc.save_tensors(files["peft-noalpha"], sd, metadata={"format": "pt"})
    return files


@torch.no_grad()
def merged_models(base, loras):
    """Explicit merge of [(layers, spec, weight)] into copies of the base UNet/text encoder."""
    unet, text = copy.deepcopy(base.unet), copy.deepcopy(base.text_encoder)
    for layers, spec, weight in loras:
        s = weight * spec["alpha"] / spec["rank"]
        for (comp, name), (down, up, _) in layers.items():
            m = (unet if comp == "unet" else text).get_submodule(name)
            m.weight += (s * (up.flatten(1) @ down.flatten(1))).reshape(m.weight.shape)
    return unet, text


def check_injected(pipe, layers, adapter):
    want = {(c, n) for c, n in layers}
    got = set()
    for comp in ("unet", "text_encoder"):
        for n, m in getattr(pipe, comp).named_modules():
            if isinstance(m, LoraLayer) and adapter in m.lora_A:
                got.add((comp, n))
                down, up, _ = layers[(comp, n)]
                assert torch.equal(m.lora_A[adapter].weight, down), (comp, n)
                assert m.lora_A[adapter].weight.dtype == torch.float32
    assert got == want, (sorted(want - got)[:5], sorted(got - want)[:5])


@torch.no_grad()
def run_all(pipe, own, inputs, scale):
    """prompt_embeds, unet out and 8-step pipeline latents with the given LoRA scale."""
    ck = {"scale": scale}
    pe = pipe.encode_prompt(fc.PROMPT, "cpu", 1, False, lora_scale=scale)[0]
    uo = pipe.unet(inputs["sample"], inputs["t"], encoder_hidden_states=inputs["ehs"],
                   cross_attention_kwargs=ck).sample
    pipe.scheduler = copy.deepcopy(own)
    lat = pipe(prompt=fc.PROMPT, negative_prompt=fc.NEGATIVE, num_inference_steps=fc.STEPS,
               guidance_scale=fc.GUIDANCE, latents=inputs["latents"].clone(), output_type="latent",
               cross_attention_kwargs=ck).images
    return pe, uo, lat


@torch.no_grad()
def make_model(model_name):
    print(f"[{model_name}]")
    g_model, g_pipe = fc.existing_goldens(model_name)
    inputs = {"sample": g_model["unet.sample"], "ehs": g_model["unet.encoder_hidden_states"],
              "t": torch.tensor([fc.UNET_TIMESTEP]), "latents": g_pipe["latents"]}
    assert torch.equal(g_model["unet.timestep.1"], inputs["t"])
    base = fc.load_pipeline(model_name)
    own = copy.deepcopy(base.scheduler)
    out = {"prompt_embeds.base": base.encode_prompt(fc.PROMPT, "cpu", 1, False)[0],
           "unet.out.base": base.unet(inputs["sample"], inputs["t"], encoder_hidden_states=inputs["ehs"]).sample}
    info = {"loras": {}, "files": {}}
    layers = {}
    for lname, spec in LORAS.items():
        spec = dict(spec, name=lname)
        layers[lname] = make_lora(base.unet, base.text_encoder, spec)
        files = write_formats(model_name, layers[lname], spec)
        info["files"][lname] = {k: str(v.relative_to(fc.FIX)) for k, v in files.items()}
        info["loras"][lname] = {
            "rank": spec["rank"], "alpha": spec["alpha"], "seed": spec["seed"], "rel_norm": spec["rel"],
            "target_suffixes": {"unet": list(spec["unet"]), "text_encoder": list(spec["te"])},
            "module_counts": module_counts(layers[lname]),
        }
        if lname == "lora1":
            lora1_files = files

    # ---- lora1 through every format: identical results
    results = {}
    for fmt in FORMATS:
        pipe = fc.load_pipeline(model_name)
        pipe.load_lora_weights(str(lora1_files[fmt]), adapter_name="lora1")
        check_injected(pipe, layers["lora1"], "lora1")
        r075 = run_all(pipe, own, inputs, SCALE)
        pe1 = pipe.encode_prompt(fc.PROMPT, "cpu", 1, False, lora_scale=1.0)[0]
        uo1 = pipe.unet(inputs["sample"], inputs["t"], encoder_hidden_states=inputs["ehs"]).sample
        results[fmt] = (*r075, pe1, uo1)
        if fmt == "kohya":
            out["pipeline.image"] = fc.np_image(pipe.vae, r075[2])
    names = ["prompt_embeds", "unet.out", "pipeline.latents", "prompt_embeds.scale1", "unet.out.scale1"]
    for fmt in FORMATS[1:]:
        for k, a, b in zip(names, results[fmt], results["kohya"]):
            fc.assert_close(a, b, f"{model_name} {fmt} {k}", atol=1e-6 if "pipeline" not in k else 1e-5)
    out.update(dict(zip(names, results["kohya"])))

    # ---- explicit merge check (also guards the peft 0.21 / transformers 5.24 pairing)
    for k_pe, k_uo, w in (("prompt_embeds", "unet.out", SCALE), ("prompt_embeds.scale1", "unet.out.scale1", 1.0)):
        unet, text = merged_models(base, [(layers["lora1"], LORAS["lora1"], w)])
        pe = text(base.tokenizer(fc.PROMPT, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids).last_hidden_state
        uo = unet(inputs["sample"], inputs["t"], encoder_hidden_states=inputs["ehs"]).sample
        fc.assert_close(pe, out[k_pe], f"merge {k_pe}", atol=0, rtol=2e-5)
        fc.assert_close(uo, out[k_uo], f"merge {k_uo}", atol=0, rtol=2e-5)

    # ---- stacking: both Kohya files, set_adapters weights
    pipe = fc.load_pipeline(model_name)
    for lname in ("lora1", "lora2"):
        pipe.load_lora_weights(str(OUT / f"{lname}-{model_name}.kohya.safetensors"), adapter_name=lname)
        check_injected(pipe, layers[lname], lname)
    pipe.set_adapters(STACK["adapter_names"], adapter_weights=STACK["adapter_weights"])
    out["stack.prompt_embeds"] = pipe.encode_prompt(fc.PROMPT, "cpu", 1, False)[0]
    out["stack.unet.out"] = pipe.unet(inputs["sample"], inputs["t"], encoder_hidden_states=inputs["ehs"]).sample
    unet, text = merged_models(base, [(layers[n], LORAS[n], w) for n, w in zip(*STACK.values())])
    ids = base.tokenizer(fc.PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    fc.assert_close(text(ids).last_hidden_state, out["stack.prompt_embeds"], "merge stack pe", atol=0, rtol=2e-5)
    fc.assert_close(unet(inputs["sample"], inputs["t"], encoder_hidden_states=inputs["ehs"]).sample,
                    out["stack.unet.out"], "merge stack unet", atol=0, rtol=2e-5)

    effect = {k: fc.rel_l2(out[k], out[b]) for k, b in
              (("prompt_embeds", "prompt_embeds.base"), ("prompt_embeds.scale1", "prompt_embeds.base"),
               ("unet.out", "unet.out.base"), ("unet.out.scale1", "unet.out.base"),
               ("pipeline.latents", None), ("stack.prompt_embeds", "prompt_embeds.base"),
               ("stack.unet.out", "unet.out.base")) if b}
    effect["pipeline.latents"] = fc.rel_l2(out["pipeline.latents"], g_pipe["own.latents"])
    for k, v in effect.items():
        print(f"  rel-L2 change {k:24s} {v:.3f}")
        assert 0.02 < v < 0.5, (k, v)
    info["rel_l2_change_vs_base"] = effect
    fc.save_goldens(OUT / f"goldens-{model_name}.safetensors", out, GEN)
    info["goldens"] = f"lora/goldens-{model_name}.safetensors"
    return info


def main():
    print(fc.versions())
    OUT.mkdir(parents=True, exist_ok=True)
    models = {m: make_model(m) for m in fc.MODELS}
    fc.write_json(OUT / "lora.json", {
        "generator": GEN,
        "versions": fc.versions(),
        "prompt": fc.PROMPT, "negative_prompt": fc.NEGATIVE, "num_inference_steps": fc.STEPS,
        "guidance_scale": fc.GUIDANCE, "unet_timestep": fc.UNET_TIMESTEP,
        "unet_inputs": "goldens/{model}.safetensors unet.sample, unet.encoder_hidden_states",
        "pipeline_latents": "goldens/pipeline-{model}.safetensors latents (multiplied by init_noise_sigma "
        "by the pipeline); scheduler = the model's own (scheduler_config.json)",
        "lora_scale": SCALE,
        "stack": STACK,
        "semantics": "y = base(x) + weight * scale * (alpha / rank) * up(down(x)); merged: W' = W + "
        "weight*scale*(alpha/rank) * up.flatten(1) @ down.flatten(1) reshaped to W. Conv down keeps the base "
        "conv's kernel/stride/padding, conv up is 1x1.",
        "scaling": {
            "unet": "cross_attention_kwargs['scale'] -> UNet2DConditionModel.forward (@apply_lora_scale): "
            "scale_lora_layers(unet, scale) before, unscale_lora_layers after; scale 1.0 is a no-op",
            "text_encoder": "the pipeline passes the same cross_attention_kwargs['scale'] as lora_scale to "
            "encode_prompt: scale_lora_layers(text_encoder, lora_scale) before, unscale after. Same factor as "
            "the UNet. prompt_embeds passed in directly skip it.",
            "set_adapters": "set_adapters(names, adapter_weights) sets each adapter's scaling to weight * "
            "alpha / rank in the UNet and the text encoder alike; a scale multiplies all active adapters",
            "quirk": "load_lora_weights multiplies the new text-encoder adapter by pipe.lora_scale, i.e. the "
            "lora_scale of the last encode_prompt call (1.0 on a fresh pipeline); every golden here loads its "
            "LoRAs into a fresh pipeline",
        },
        "formats": {
            "kohya": "keys lora_unet_* / lora_te_* with .lora_down.weight, .lora_up.weight, .alpha (0-d). "
            "diffusers: _convert_non_diffusers_lora_to_diffusers -> network_alphas; a missing .alpha means "
            "alpha = rank. Supported UNet names: attention/ff/proj_in/proj_out, resnet conv1/conv2/"
            "conv_shortcut/time_emb_proj (LyCORIS names), downsamplers_0_conv, upsamplers_0_conv",
            "diffusers": "keys unet.<m>.lora.down/up.weight, text_encoder.<m>.lora_linear_layer.down/up.weight; "
            "the keys cannot carry alpha (every key must contain 'lora'); diffusers 0.42 reads the safetensors "
            "metadata 'lora_adapter_metadata' from any LoRA file (LoraConfig kwargs, 'unet.'/'text_encoder.' "
            "prefixed); without it alpha = rank",
            "peft": "keys <component>.<m>.lora_A/lora_B.weight; alpha only via the 'lora_adapter_metadata' "
            "metadata (what save_lora_weights writes when given *_lora_adapter_metadata); without it alpha = "
            "rank (peft-noalpha file, lora_B pre-multiplied by alpha/rank)",
            "text_model_prefix": "diffusers strips a leading 'text_model.' from text-encoder LoRA keys when the "
            "CLIPTextModel has no text_model attribute (transformers 5); diffusers/peft 0.42 save them without it",
        },
        "models": models,
    })
    print("files:")
    fc.list_files(fc.files_under(OUT))


if __name__ == "__main__":
    main()
