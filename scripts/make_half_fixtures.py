#!/usr/bin/env python3
"""How close diffusers' own half precision gets to its float32 goldens, on the tiny models.

Our f16 tests compare an f16 run against diffusers' float32 goldens. A fixed limit tuned on
one random model can pass by luck, so this script records, per model and case, the error
that diffusers itself makes when it runs the same case in torch.float16 on the CPU (and, as
an extra, torch.bfloat16). A test can then require "our f16 error <= 1.5 x diffusers'
fp16 error" for each case. It also writes a second random-weights seed of both tiny SD
models, so that every limit is checked on two models of each family.

Regenerate (from the repository root, after scripts/make_fixtures.py; single thread, about
two minutes on 2 cores):

    /root/.cache/webdiffusion/venv/bin/python scripts/make_half_fixtures.py

    --half-only   keep sd1-tiny-b / sd2-tiny-b and their float32 goldens as they are and
                  only recompute the half-precision goldens (half-*.safetensors, half.json)

Reuses make_fixtures.py (imported, nothing copied): the SD1 / SD2 specs, `build_models`
(random init + `perturb` + `boost_unet` + rounding to the storage dtypes), `write_pipeline`,
`make_goldens`, `make_pipeline_goldens`, `load_pipeline`, the scheduler switch
(`make_scheduler`, from_config of the model's own scheduler config with the overrides of
schedulers.json), `NoiseFeed` / `scheduler_modules` (diffusers' `randn_tensor` patched), and
the committed goldens: goldens/schedulers.json (scheduler configs, checked against),
goldens/pipeline.json (prompt, negative prompt, 8 steps, guidance 7.5; the b models' run
settings are checked to be the same as their base model's), goldens/{model}.safetensors and
goldens/pipeline-{model}.safetensors (inputs and float32 references of the half runs).
Nothing of sd1-tiny / sd2-tiny or their goldens is written.

What is written
---------------
tests/fixtures/sd1-tiny-b/, sd2-tiny-b/
    The same specs as sd1-tiny / sd2-tiny (configs, storage dtypes, key layouts, tokenizer
    files, scheduler config) with seed 5000 / 6000 instead of 1000 / 2000, built by the
    same functions, so the weights have the same statistics but other values.
tests/fixtures/goldens/sd1-tiny-b.safetensors, sd2-tiny-b.safetensors
    make_goldens' keys (see make_fixtures.py): input_ids.*, prompt_embeds.*, unet.sample,
    unet.encoder_hidden_states, unet.timestep.{k}, unet.out.{k}, unet residuals, vae.*
tests/fixtures/goldens/sd1-tiny-b-vae-input.png, sd2-tiny-b-vae-input.png
    the img2img / vae.png_mean input of those goldens
tests/fixtures/goldens/pipeline-sd1-tiny-b.safetensors, pipeline-sd2-tiny-b.safetensors
    make_pipeline_goldens' keys (float32): latents, {NAME}.latents / {NAME}.image for ddim,
    euler, dpmpp-2m, dpmpp-2m-karras, heun, pndm, unipc, own, guidance1, euler-a (with
    euler-a.noise.{k}), img2img.*
tests/fixtures/goldens/half-{model}.safetensors   model in sd1-tiny, sd2-tiny, sd1-tiny-b,
                                  sd2-tiny-b; every tensor float32 [1]
    unet.fp16_rel_l2.{k}          k = 0..3: UNet2DConditionModel.from_pretrained(folder,
                                  subfolder="unet", dtype=torch.float16) called on
                                  unet.sample, unet.timestep.{k} (float32 as stored),
                                  unet.encoder_hidden_states (sample and states cast to fp16);
                                  ||out.float() - unet.out.{k}|| / ||unet.out.{k}||
    unet.bf16_rel_l2.{k}          the same in torch.bfloat16
    {NAME}.fp16_rel_l2            NAME in HALF_SCHEDULERS: the float32 pipeline as
                                  load_pipeline gives it, then pipe.to(torch.float16) (text
                                  encoder, UNet, VAE), the scheduler switched as for the
                                  goldens, pipe(prompt, negative_prompt, 8 steps, guidance
                                  7.5, latents=latents.to(fp16), output_type="np"); for
                                  euler-a the recorded euler-a.noise.{k} are returned by the
                                  patched randn_tensor in order (cast to the dtype diffusers
                                  asks for: the model output's, fp16). Everything else (CFG,
                                  scheduler arithmetic, decode, postprocess) is diffusers'
                                  own fp16 code path. Image rel-L2 against {NAME}.image.
    {NAME}.bf16_rel_l2            the same with a fresh float32 load .to(torch.bfloat16)
tests/fixtures/goldens/half.json  the same numbers per model, readable, with the versions

Before the half runs, each model's float32 pipeline (reloaded from disk) is run through the
same harness for ddim and euler-a and must reproduce the stored images, and the float32 UNet
the stored unet.out.{k}, so the half errors measure precision only: bit for bit for the b
models built in the same run, within rel-L2 FP32_RERUN_TOL otherwise (the committed sd1-tiny /
sd2-tiny goldens come from another CPU: their float32 reruns differ by about 5e-7 here).
half.json records these float32 rerun errors too ("fp32_rerun"; 0.0 = bit-identical).

Observed (torch 2.15 CPU, diffusers 0.42.1): no fp16 or bf16 op fails or gives non-finite
values, so nothing is upcast beyond what diffusers does itself (its Euler-type schedulers
step in float32 and cast back; its default AttnProcessor2_0 calls SDPA in the model dtype,
so sd2's `upcast_attention` has no effect in diffusers either). Image errors: fp16 6e-4 to
1.2e-3 (SD 1.x-like) and 8e-4 to 1.8e-3 (SD 2.x-like); bf16 5e-3 to 1.3e-2.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (one thread, deterministic algorithms, quiet logging)
import fixtures_common as fc  # noqa: E402

from diffusers import UNet2DConditionModel  # noqa: E402

GOLDENS = fc.GOLDENS
GENERATOR = "scripts/make_half_fixtures.py"

# second random-weights seed of each tiny SD model: same spec, other seed
SD1B = dict(mf.SD1, name="sd1-tiny-b", seed=5000)
SD2B = dict(mf.SD2, name="sd2-tiny-b", seed=6000)
BASE_OF = {"sd1-tiny-b": "sd1-tiny", "sd2-tiny-b": "sd2-tiny"}
SPECS = {s["name"]: s for s in (mf.SD1, mf.SD2, SD1B, SD2B)}

HALF_SCHEDULERS = ["ddim", "euler", "euler-a", "dpmpp-2m", "dpmpp-2m-karras", "heun", "pndm", "unipc"]
HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
CHECK_F32 = ["ddim", "euler-a"]  # rerun in float32: must reproduce the goldens
FP32_RERUN_TOL = 1e-5  # float32 rerun vs goldens made on another CPU (last bits differ)


class RecordedNoise(mf.NoiseFeed):
    """randn_tensor patched to return the given tensors in order (cast to the dtype asked)."""

    def __init__(self, modules, noises):
        super().__init__(modules)
        self.queue = list(noises)

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        assert generator is None, "the goldens never pass a generator"
        assert self.queue, "more noise drawn than the float32 run did"
        n = self.queue.pop(0)
        assert tuple(shape) == tuple(n.shape), (shape, n.shape)
        self.drawn.append(n)
        return n.to(dtype or torch.float32)


def check_rerun(res, golden, exact, what):
    """A float32 rerun against its golden: rel-L2 (0.0 when bit-identical)."""
    if torch.equal(res, golden):
        print(f"  {what}: float32 rerun bit-identical")
        return 0.0
    err = fc.rel_l2(res, golden)
    print(f"  {what}: float32 rerun rel-L2 {err:.2e} (goldens made on another CPU)")
    assert not exact, f"{what}: float32 rerun differs from the golden made in this run ({err:.2e})"
    assert err <= FP32_RERUN_TOL, f"{what}: float32 rerun rel-L2 {err:.2e}"
    return err


def rel(a, b):
    """||a - b|| / ||b|| in float64, as a float32 [1] tensor (a may be half)."""
    return torch.tensor([fc.rel_l2(a.float(), b)], dtype=torch.float32)


def jsonable(v):
    return json.loads(json.dumps(v))


# ----------------------------------------------------------------------------------------
# the second-seed models and their float32 goldens
# ----------------------------------------------------------------------------------------


def make_b_models():
    sched_entries = json.load(open(GOLDENS / "schedulers.json"))["schedulers"]
    pipe_json = json.load(open(GOLDENS / "pipeline.json"))
    vocab, merges = mf.clip_vocab_and_merges()
    infos = {}
    for spec in (SD1B, SD2B):
        unet, vae, text = mf.build_models(spec)
        tok = mf.write_pipeline(spec, unet, vae, text, vocab, merges)
        mf.make_goldens(spec, unet, vae, text, tok)
        info = jsonable(mf.make_pipeline_goldens(spec, sched_entries))
        # same latent size, scheduler configs and timesteps, image size, img2img settings
        base = BASE_OF[spec["name"]]
        assert info == pipe_json["models"][base], f"{spec['name']} runs differently from {base}"
        infos[spec["name"]] = {"settings": f"as pipeline.json's {base}", "seed": spec["seed"]}
        # same layout: the same file names, configs and tokenizer files as the base model
        a, b = mf.FIX / base, mf.FIX / spec["name"]
        files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        assert files_a == files_b, (base, set(files_a) ^ set(files_b))
        for rel_path in files_a:
            if rel_path.suffix != ".safetensors":
                assert (a / rel_path).read_bytes() == (b / rel_path).read_bytes(), rel_path
            else:
                ta, tb = load_file(a / rel_path), load_file(b / rel_path)
                assert ta.keys() == tb.keys() and all(
                    ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape for k in ta), rel_path
                changed = [k for k in ta if "position_ids" not in k and not torch.equal(ta[k], tb[k])]
                assert changed, rel_path
        print(f"[{spec['name']}] same layout and configs as {base}, other weights")
    return infos


# ----------------------------------------------------------------------------------------
# diffusers' own half precision
# ----------------------------------------------------------------------------------------


def load_unet(spec, dtype):
    kw = dict(subfolder="unet", dtype=dtype)
    if spec["unet_dtype"] is not None:
        kw["variant"] = "fp16"
    return UNet2DConditionModel.from_pretrained(mf.FIX / spec["name"], **kw).eval()


def loaded_pipeline(spec, dtype):
    """The float32 pipeline as the goldens used it, then .to(dtype) as a user would."""
    pipe = mf.load_pipeline(spec)
    own_config = pipe.scheduler.config
    if dtype != torch.float32:
        pipe.to(dtype)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        assert all(p.dtype == dtype for p in m.parameters()), (type(m).__name__, dtype)
    return pipe, own_config


def run_pipeline(pipe, own_config, pipe_g, sname, dtype):
    """One text-to-image run as the float32 golden was made, in `dtype`; [H,W,3] float32."""
    pipe.scheduler = mf.make_scheduler(sname, own_config)
    noises = []
    while f"{sname}.noise.{len(noises)}" in pipe_g:
        noises.append(pipe_g[f"{sname}.noise.{len(noises)}"])
    with RecordedNoise(mf.scheduler_modules(), noises) as feed:
        images = pipe(prompt=mf.PIPE_PROMPT, negative_prompt=mf.PIPE_NEGATIVE,
                      num_inference_steps=mf.PIPE_STEPS, guidance_scale=mf.PIPE_GUIDANCE,
                      latents=pipe_g["latents"].to(dtype), output_type="np").images
    assert not feed.queue, f"{sname}: {len(feed.queue)} recorded noises not drawn"
    image = torch.from_numpy(np.ascontiguousarray(images[0]))
    assert image.dtype == torch.float32 and image.shape == pipe_g[f"{sname}.image"].shape
    assert torch.isfinite(image).all(), f"{sname} {dtype}: non-finite image"
    return image


@torch.no_grad()
def half_goldens(spec, exact):
    """exact: the float32 goldens were made on this machine (this run), so a float32 rerun
    must reproduce them bit for bit; otherwise within FP32_RERUN_TOL (another CPU)."""
    name = spec["name"]
    fp32 = []
    g = load_file(GOLDENS / f"{name}.safetensors")
    pipe_g = load_file(GOLDENS / f"pipeline-{name}.safetensors")
    out = {}
    summary = {"unet": {}, "pipeline": {}}

    # ---- one UNet call
    sample, ehs = g["unet.sample"], g["unet.encoder_hidden_states"]
    for dtype_name, dtype in [("fp32", torch.float32)] + list(HALF_DTYPES.items()):
        unet = load_unet(spec, dtype)
        errs = []
        for k in range(len(mf.TIMESTEPS)):
            res = unet(sample.to(dtype), g[f"unet.timestep.{k}"], encoder_hidden_states=ehs.to(dtype)).sample
            assert res.dtype == dtype and torch.isfinite(res).all(), (name, dtype_name, k)
            if dtype == torch.float32:
                fp32.append(check_rerun(res, g[f"unet.out.{k}"], exact, f"{name} float32 UNet unet.out.{k}"))
                continue
            out[f"unet.{dtype_name}_rel_l2.{k}"] = rel(res, g[f"unet.out.{k}"])
            errs.append(float(out[f"unet.{dtype_name}_rel_l2.{k}"]))
        if errs:
            summary["unet"][f"{dtype_name}_rel_l2"] = errs
    summary["fp32_rerun"] = {"unet": max(fp32)}

    # ---- the whole pipeline
    pipe, own_config = loaded_pipeline(spec, torch.float32)
    for sname in CHECK_F32:
        image = run_pipeline(pipe, own_config, pipe_g, sname, torch.float32)
        fp32.append(check_rerun(image, pipe_g[f"{sname}.image"], exact, f"{name} float32 {sname}.image"))
        summary["fp32_rerun"][sname] = fp32[-1]
    summary["fp32_rerun"]["bit_exact"] = not any(fp32)
    for dtype_name, dtype in HALF_DTYPES.items():
        pipe, own_config = loaded_pipeline(spec, dtype)
        errs = {}
        for sname in HALF_SCHEDULERS:
            image = run_pipeline(pipe, own_config, pipe_g, sname, dtype)
            out[f"{sname}.{dtype_name}_rel_l2"] = rel(image, pipe_g[f"{sname}.image"])
            errs[sname] = float(out[f"{sname}.{dtype_name}_rel_l2"])
        summary["pipeline"][f"{dtype_name}_rel_l2"] = errs

    fc.save_goldens(GOLDENS / f"half-{name}.safetensors", out, GENERATOR, show=False)
    return summary


def print_table(models):
    for dtype_name in HALF_DTYPES:
        print(f"\ndiffusers {dtype_name} vs its float32 goldens (rel-L2; image for schedulers)")
        names = list(models)
        print(f"  {'':16s}" + "".join(f"{n:>12s}" for n in names))
        for k in range(len(mf.TIMESTEPS)):
            row = [models[n]["unet"][f"{dtype_name}_rel_l2"][k] for n in names]
            print(f"  {f'unet t={mf.TIMESTEPS[k]:g}':16s}" + "".join(f"{v:12.2e}" for v in row))
        for sname in HALF_SCHEDULERS:
            row = [models[n]["pipeline"][f"{dtype_name}_rel_l2"][sname] for n in names]
            print(f"  {sname:16s}" + "".join(f"{v:12.2e}" for v in row))


def rounded(obj):
    if isinstance(obj, float):
        return float(f"{obj:.4g}")
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v) for v in obj]
    return obj


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--half-only", action="store_true", help="do not rebuild sd1-tiny-b / sd2-tiny-b")
    args = ap.parse_args()
    print(" ".join(f"{k} {v}" for k, v in fc.versions().items()))
    fresh = set() if args.half_only else set(make_b_models())
    models = {name: half_goldens(spec, exact=name in fresh) for name, spec in SPECS.items()}
    print_table(models)
    fc.write_json(GOLDENS / "half.json", {
        "about": {
            "what": "diffusers' own half-precision error against its float32 goldens, same inputs",
            "unet": "unet.{dtype}_rel_l2[k]: one UNet call on goldens/{model}.safetensors unet.sample, "
            "unet.timestep.{k} (999, 500, 1, 261.5), unet.encoder_hidden_states; against unet.out.{k}",
            "pipeline": "{dtype}_rel_l2[scheduler]: pipe.to(dtype), 8 steps, guidance 7.5, prompt and "
            "negative of pipeline.json, latents of goldens/pipeline-{model}.safetensors (cast to dtype), "
            "recorded euler-a noise; image ([H,W,3] in [0,1]) rel-L2 against {scheduler}.image",
            "device": "CPU, one thread",
            "second_seed_models": {n: {"of": BASE_OF[n], "seed": SPECS[n]["seed"]} for n in BASE_OF},
        },
        "versions": fc.versions(),
        "models": rounded(models),
    })
    print("files:")
    fc.list_files([mf.FIX / f"goldens/half-{n}.safetensors" for n in SPECS] + [GOLDENS / "half.json"]
                  + ([] if args.half_only else
                     fc.files_under(*(mf.FIX / n for n in BASE_OF))
                     + [GOLDENS / f"{p}{n}{s}" for n in BASE_OF
                        for p, s in (("", ".safetensors"), ("pipeline-", ".safetensors"), ("", "-vae-input.png"))]))


if __name__ == "__main__":
    main()
