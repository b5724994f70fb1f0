#!/usr/bin/env python3
"""SDXL inpainting fixture and goldens (never edit by hand). Run from the repository root, in the
venv of make_fixtures.py (about 15 s, imports included), after make_sdxl_fixtures.py:

    /root/.cache/webdiffusion/venv/bin/python scripts/make_sdxl_inpaint_fixtures.py

The SDXL counterpart of make_inpaint_fixtures.py (same conventions: float32 on the CPU, one
thread, seeded, retrieve_latents forced to the posterior mean, the noise of strength < 1 runs
recorded; a re-run gives byte-identical files).

tests/fixtures/sdxl-tiny-inpaint/   sdxl-tiny with a 9-channel UNet (in_channels 9 = latents 4 +
    mask 1 + masked-image latents 4; otherwise sdxl-tiny's unet/config.json; random, seeded,
    perturbed and boosted as make_inpaint_fixtures.py builds its 9-channel UNet, rounded to and
    stored in FLOAT16 in unet/diffusion_pytorch_model.safetensors like sdxl-tiny's). Every other
    file is a relative symbolic link to sdxl-tiny's (as sdxl-turbo-tiny's), except model_index.json:
    "_class_name" StableDiffusionXLInpaintPipeline (nothing else changed: no
    requires_aesthetics_score key, so diffusers uses its default, false).
tests/fixtures/inpaint/
    mask-64.png        8-bit grayscale 64x64, white = repaint (mask-32.png's design at 64):
                       a 255 rectangle (rows 12..39, cols 16..47), a 128 band (cols 52..59,
                       rows 8..55: 128/255 >= 0.5 -> 1), a 127 band (cols 0..7: < 0.5 -> 0) and
                       single pixels: 129 at (44,20) and 126 at (24,28) lie on the latent grid
                       (rows and cols multiples of 4, the pixels nearest-neighbour sampling picks:
                       an isolated 1 outside the rectangle, a 0 hole inside it), 129 at (49,26)
                       and 126 at (30,33) lie off it (they change only the masked image)
    mask-white-64.png  all 255
    init image: goldens/sdxl-tiny-img2img-input.png (64x64 RGB, make_sdxl_fixtures.py)
    goldens-sdxl-tiny-inpaint.safetensors  (sdxl-tiny-inpaint: 9-channel UNet)
    goldens-sdxl-tiny.safetensors          (sdxl-tiny: 4-channel UNet, blending)
      Every run: StableDiffusionXLInpaintPipeline.from_pretrained(folder) in float32 (no
      watermark), prompt "a photograph of an astronaut riding a horse", negative "blurry, low
      quality", guidance 5, 8 steps, the folder's own EulerDiscreteScheduler (leading,
      steps_offset 1), image = the init PNG, mask_image = mask-64.png unless said, height =
      width = 64, retrieve_latents forced to sample_mode="argmax" (posterior mean):
      latents_in         [1,4,16,16] = goldens/sdxl-tiny.safetensors txt2img.latents (copy)
      s1.latents         strength 1.0, latents=latents_in; output_type="latent"
      s1.image           [64,64,3] in [0,1] = fc.np_image(vae, s1.latents), checked equal to
                         output_type="np"
      s075.noise         [1,4,16,16] randn: what randn_tensor returns in prepare_latents (patched)
      s075.start_latents add_noise(image_latents, s075.noise, timesteps[:1]) = image_latents +
                         s075.noise * sigma(626) (what prepare_latents returns)
      s075.latents/.image   strength 0.75, no latents given (noise = s075.noise)
      white.latents/.image  (9-channel only) mask-white-64.png, strength 1.0, latents_in
      white.masked_image_latents  (9-channel only) [1,4,16,16] sf * vae.encode(zeros).mean
      mask_condition     [1,1,64,64] mask_processor.preprocess(mask-64.png): grayscale, /255,
                         binarized (< 0.5 -> 0, >= 0.5 -> 1)
      mask_latent        [1,1,16,16] F.interpolate(mask_condition, size=(16, 16)) (mode nearest:
                         pixel (4i, 4j))
      masked_image_latents  [1,4,16,16] sf * vae.encode(init_image * (mask_condition < 0.5)).mean,
                         init_image = png/127.5 - 1 (9-channel pipeline and 4-channel alike)
      image_latents      [1,4,16,16] sf * vae.encode(init_image).mean (start of strength < 1;
                         the 4-channel blending), sf = 0.13025
    sdxl-inpaint.json  parameters, timesteps of every run, what diffusers does, checks, versions

What diffusers 0.42.1's StableDiffusionXLInpaintPipeline does (read from its source and checked
below, each run reproduced by a loop written out here that calls the UNet directly):
  - timesteps: scheduler.set_timesteps(8) -> Euler leading + steps_offset 1: 876, 751, 626, 501,
    376, 251, 126, 1; with denoising_start None, get_timesteps as SD 1.x: init = min(int(8 *
    strength), 8), t_start = 8 - init, timesteps[t_start * order:], set_begin_index(t_start).
    Strength 1.0 -> all 8; strength 0.75 -> t_start 2: 626, 501, 376, 251, 126, 1 (6 steps).
  - strength defaults to 0.9999 (SD 1.x inpainting: 1.0): the default is NOT strength max, so
    int(8 * 0.9999) = 7 steps (751..1) and, without latents, the start is add_noise(image_latents,
    noise, 751), not pure noise. The goldens pass strength explicitly.
  - start (prepare_latents, add_noise=True as denoising_start is None): strength == 1.0 ->
    latents = noise * init_noise_sigma (noise = randn, or the given latents); strength < 1 without
    latents -> add_noise(image_latents, noise, timesteps[:1]) (Euler: image_latents + noise *
    sigma, no init_noise_sigma); given latents are always noise * init_noise_sigma, whatever the
    strength (as SD 1.x). image_latents are encoded only for a 4-channel UNet or for strength < 1
    without latents (the 9-channel s1/white runs never encode the unmasked image).
  - mask: mask_processor (do_normalize False, do_binarize, do_convert_grayscale): 'L', resize only
    if the size differs (PIL LANCZOS), /255, < 0.5 -> 0, >= 0.5 -> 1; masked_image = init_image *
    (mask < 0.5); mask_latent = F.interpolate(mask, (H/4, W/4)) default nearest; both duplicated
    for CFG (uncond, cond). masked_image_latents are computed for 4-channel UNets too (unused).
  - VAE encode (_encode_vae_image): force_upcast true -> image.float() and vae.to(float32), then
    back to the image dtype: nothing changes in float32 (SD 1.x has no upcast here). The decode
    upcasts only a float16 VAE.
  - 9-channel UNet input: cat([scheduler.scale_model_input(cat([latents]*2), t), mask_latent,
    masked_image_latents], dim=1) (latents / sqrt(sigma^2 + 1) first), no blending.
  - 4-channel blending after every scheduler step i, the last one included (as SD 1.x):
    proper = image_latents if i is the last step else add_noise(image_latents, noise,
    timesteps[i+1]); latents = (1 - mask_latent) * proper + mask_latent * latents, with noise =
    the start noise (the given latents for s1). Euler's add_noise picks sigma by its step index
    (begin_index + i + 1 after step i), i.e. sigma(timesteps[i+1]). The final kept latents are
    exactly image_latents.
  - time ids: requires_aesthetics_score false -> (orig h, orig w, crop top, crop left, target h,
    target w) = (64, 64, 0, 0, 64, 64) for the negative and the positive row (height/width taken
    from the latents' shape * 4); text: the two encoders as StableDiffusionXLPipeline (CFG batch
    [negative, positive], guidance 5: uncond + 5 * (text - uncond)).
  - output_type "np": (vae.decode(latents / 0.13025).sample / 2 + 0.5).clamp(0, 1) (no
    latents_mean/std in the config), no overlay (only with padding_mask_crop), no watermark.
"""

import copy
import inspect
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixtures_common as fc  # noqa: E402  (one thread, deterministic algorithms, quiet logs)
import make_fixtures as mf  # noqa: E402
from diffusers import (  # noqa: E402
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file  # noqa: E402
from make_inpaint_fixtures import Capture  # noqa: E402

GEN = "scripts/make_sdxl_inpaint_fixtures.py"
BASE_NAME, INPAINT_NAME = "sdxl-tiny", "sdxl-tiny-inpaint"
BASE, INPAINT = fc.FIX / BASE_NAME, fc.FIX / INPAINT_NAME
OUT = fc.FIX / "inpaint"
INIT_PNG = fc.GOLDENS / "sdxl-tiny-img2img-input.png"
SETTINGS = OUT / "sdxl-inpaint.json"
SEED = 11300
PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"
STEPS, GUIDANCE, STRENGTH = 8, 5.0, 0.75
H, F = 64, 4  # pixels, VAE factor
h = H // F
WEIGHT_DTYPE = torch.float16
ALL_TS = [876.0, 751.0, 626.0, 501.0, 376.0, 251.0, 126.0, 1.0]
written = []


def track(path):
    written.append(Path(path))
    return path


def make_masks():
    m = np.zeros((H, H), np.uint8)
    m[12:40, 16:48] = 255
    m[8:56, 52:60] = 128
    m[:, 0:8] = 127
    m[44, 20], m[24, 28] = 129, 126  # on the latent grid (sampled by nearest interpolation)
    m[49, 26], m[30, 33] = 129, 126  # off it (masked image only)
    fc.save_png(track(OUT / "mask-64.png"), m)
    fc.save_png(track(OUT / "mask-white-64.png"), np.full((H, H), 255, np.uint8))
    return m


def build_inpaint_folder():
    if INPAINT.exists() or INPAINT.is_symlink():
        shutil.rmtree(INPAINT)
    for src in sorted(p for p in BASE.rglob("*")):
        assert not src.is_symlink(), src
        if src.is_dir():
            continue
        rel = src.relative_to(BASE)
        if str(rel) in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"):
            continue
        dst = INPAINT / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(Path(*[".."] * len(rel.parts)) / BASE.name / rel, dst)
    base_cfg = json.load(open(BASE / "unet" / "config.json"))
    cfg = {k: v for k, v in base_cfg.items() if not k.startswith("_")}
    cfg["in_channels"] = 9
    torch.manual_seed(SEED + 1)
    unet = UNet2DConditionModel.from_config(cfg).eval()
    fc.perturb(unet, SEED + 2)
    mf.boost_unet(unet)
    fc.round_to(unet, WEIGHT_DTYPE)
    unet.to(WEIGHT_DTYPE).save_pretrained(INPAINT / "unet", safe_serialization=True)
    unet.to(torch.float32)
    track(INPAINT / "unet" / "config.json")
    track(INPAINT / "unet" / "diffusion_pytorch_model.safetensors")
    assert sorted(p.name for p in (INPAINT / "unet").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    sd = load_file(INPAINT / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == WEIGHT_DTYPE for v in sd.values())
    assert sd["conv_in.weight"].shape == (16, 9, 3, 3), sd["conv_in.weight"].shape
    new_cfg = json.load(open(INPAINT / "unet" / "config.json"))
    assert {k for k in set(base_cfg) | set(new_cfg) if base_cfg.get(k) != new_cfg.get(k)} == {"in_channels"}, new_cfg
    mi = json.load(open(BASE / "model_index.json"))
    mi["_class_name"] = "StableDiffusionXLInpaintPipeline"
    fc.write_json(track(INPAINT / "model_index.json"), mi)
    return unet


def load(folder):
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(folder, dtype=torch.float32, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.watermark is None
    assert pipe.config.requires_aesthetics_score is False and pipe.config.force_zeros_for_empty_prompt is True
    assert type(pipe.scheduler) is EulerDiscreteScheduler
    assert pipe.vae_scale_factor == F and pipe.vae.config.force_upcast is True
    return pipe


@torch.no_grad()
def reference_loop(pipe, own, nine, strength, noise, given, mask_lat, masked_lat, image_latents):
    """The run written out: Euler by hand from the scheduler's sigmas, the UNet called directly."""
    s = copy.deepcopy(own)
    s.set_timesteps(STEPS)
    init = min(int(STEPS * strength), STEPS)
    t_start = STEPS - init
    ts = s.timesteps[t_start:]
    sig = s.sigmas.double()
    pe, ne, pp, npp = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                         do_classifier_free_guidance=True, negative_prompt=NEGATIVE)
    emb, pooled = torch.cat([ne, pe]), torch.cat([npp, pp])
    tid = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2)
    if given or strength == 1.0:
        lat = noise.double() * float((sig.max() ** 2 + 1) ** 0.5)
        assert abs(float(s.init_noise_sigma) - float((sig.max() ** 2 + 1) ** 0.5)) < 1e-5
    else:
        lat = image_latents.double() + noise.double() * sig[t_start]
    m2, mi2 = torch.cat([mask_lat] * 2), torch.cat([masked_lat] * 2)
    for i, t in enumerate(ts):
        k = t_start + i
        x = (torch.cat([lat] * 2) / (sig[k] ** 2 + 1) ** 0.5).float()
        if nine:
            x = torch.cat([x, m2, mi2], dim=1)
        e = pipe.unet(x, t, encoder_hidden_states=emb, added_cond_kwargs={"text_embeds": pooled, "time_ids": tid}).sample
        u, c = e.double().chunk(2)
        e = u + GUIDANCE * (c - u)
        lat = lat + e * (sig[k + 1] - sig[k])  # Euler (epsilon): x0 = x - sigma * eps, d = eps
        if not nine:
            proper = image_latents.double() if i == len(ts) - 1 else image_latents.double() + noise.double() * sig[k + 1]
            lat = (1 - mask_lat.double()) * proper + mask_lat.double() * lat
    return lat.float(), [float(t) for t in ts]


@torch.no_grad()
def make_goldens(folder_name, nine, masks, init):
    print(f"[{folder_name}]")
    pipe = load(fc.FIX / folder_name)
    assert pipe.unet.config.in_channels == (9 if nine else 4)
    module = sys.modules[StableDiffusionXLInpaintPipeline.__module__]
    sched_module = sys.modules[EulerDiscreteScheduler.__module__]
    own = copy.deepcopy(pipe.scheduler)
    base = load_file(fc.GOLDENS / "sdxl-tiny.safetensors")
    noise = torch.randn(1, 4, h, h, generator=fc.gen(SEED + 10 + (0 if nine else 1)))
    out = {"latents_in": base["txt2img.latents"].clone(), "s075.noise": noise}
    assert out["latents_in"].shape == (1, 4, h, h)
    info = {"folder": f"tests/fixtures/{folder_name}", "unet_in_channels": pipe.unet.config.in_channels, "runs": {}}
    unet_calls = []

    def pre_hook(mod, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        unet_calls.append({"sample": sample.clone(), "time_ids": kwargs["added_cond_kwargs"]["time_ids"].clone()})

    hook = pipe.unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
    orig_retrieve = module.retrieve_latents
    means = []

    def retrieve_mean(enc, generator=None, sample_mode="sample"):
        means.append(orig_retrieve(enc, generator, "argmax"))
        return means[-1]

    module.retrieve_latents = retrieve_mean
    refs = {}
    try:
        def run(key, mask, strength, latents, output_type="latent"):
            pipe.scheduler = copy.deepcopy(own)
            ts = []
            unet_calls.clear()

            def cb(p, i, t, kw):
                ts.append(float(t))
                return {}

            with Capture(pipe, ["prepare_latents", "prepare_mask_latents"]) as cap, \
                    fc.NoiseFeed([module], fixed=noise) as feed, \
                    fc.NoiseFeed([sched_module], seed=mf.NOISE_SEED) as sfeed:
                res = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=init, mask_image=masks[mask],
                           height=H, width=H, strength=strength, num_inference_steps=STEPS,
                           guidance_scale=GUIDANCE, latents=None if latents is None else latents.clone(),
                           output_type=output_type, callback_on_step_end=cb).images
            assert len(feed.drawn) == (1 if latents is None else 0), (key, len(feed.drawn))
            assert not sfeed.drawn, "Euler drew noise (s_churn)"
            assert len(unet_calls) == len(ts)
            for c in unet_calls:
                assert c["sample"].shape == (2, 9 if nine else 4, h, h)
                assert torch.equal(c["time_ids"], torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2)), c["time_ids"]
            if output_type == "latent":
                info["runs"][key] = {"mask": f"mask{mask}-64.png", "strength": strength,
                                     "latents": "latents_in" if latents is not None else None,
                                     "noise": "s075.noise" if latents is None else "latents_in",
                                     "timesteps": ts}
            return res, cap.got, ts, [dict(c) for c in unet_calls]

        plan = [("s1", "", 1.0, out["latents_in"]), ("s075", "", STRENGTH, None)]
        if nine:
            plan.append(("white", "-white", 1.0, out["latents_in"]))
        for key, mask, strength, lat in plan:
            n_means = len(means)
            res, got, ts, calls = run(key, mask, strength, lat)
            encodes = len(means) - n_means
            # masked image always; the unmasked image for a 4-channel UNet or strength < 1 w/o latents
            assert encodes == (1 if (nine and lat is not None) else 2), (key, encodes)
            out[f"{key}.latents"] = res
            out[f"{key}.image"] = fc.np_image(pipe.vae, res)
            np_res, _, _, _ = run(key, mask, strength, lat, output_type="np")
            assert np.array_equal(np_res[0], out[f"{key}.image"].numpy()), key
            assert pipe.vae.dtype == torch.float32  # force_upcast: nothing changes in float32
            assert ts == (ALL_TS if strength == 1.0 else ALL_TS[2:]), (key, ts)
            pl = got["prepare_latents"][0]
            mask_lat, masked_lat = got["prepare_mask_latents"][0]
            assert len(pl) == (2 if nine else 3)
            assert torch.equal(mask_lat[:1], mask_lat[1:]) and torch.equal(masked_lat[:1], masked_lat[1:])
            mask_lat, masked_lat = mask_lat[:1], masked_lat[:1]
            sched = copy.deepcopy(own)
            sched.set_timesteps(STEPS)
            if lat is not None:
                assert torch.equal(pl[1], lat)  # given latents double as the noise
                assert torch.equal(pl[0], lat * sched.init_noise_sigma)
            else:
                assert torch.equal(pl[1], noise)
                out[f"{key}.start_latents"] = pl[0]
            # the 9-channel UNet input: [scale_model_input(latents), mask, masked_image_latents]
            first = calls[0]["sample"]
            if nine:
                assert torch.equal(first[:, 4:5], torch.cat([mask_lat] * 2))
                assert torch.equal(first[:, 5:], torch.cat([masked_lat] * 2))
            sigma0 = float(sched.sigmas[STEPS - len(ts)])
            fc.assert_close(first[:1, :4], pl[0] / (sigma0 ** 2 + 1) ** 0.5, f"{key} scale_model_input", atol=1e-6)
            if key == "s1":
                out["mask_latent"], out["masked_image_latents"] = mask_lat, masked_lat
                if not nine:
                    out["image_latents"] = pl[2]
            if key == "white":
                assert bool((mask_lat == 1).all())
                out["white.masked_image_latents"] = masked_lat
            refs[key] = (strength, lat, mask_lat, masked_lat)
    finally:
        module.retrieve_latents = orig_retrieve
        hook.remove()

    # intermediates recomputed from the processors (checks the captured ones)
    cond = pipe.mask_processor.preprocess(masks[""], height=H, width=H)
    png = torch.from_numpy(np.asarray(masks[""]).astype(np.float32) / 255.0)[None, None]
    assert torch.equal(cond, (png >= 0.5).float()), "binarize at 0.5"
    out["mask_condition"] = cond
    assert torch.equal(torch.nn.functional.interpolate(cond, size=(h, h)), out["mask_latent"])
    assert torch.equal(out["mask_latent"][0, 0], cond[0, 0, ::F, ::F]), "nearest = pixel (4i, 4j)"
    img = pipe.image_processor.preprocess(init, height=H, width=H)
    png_img = torch.from_numpy(np.asarray(init).astype(np.float32)).permute(2, 0, 1)[None]
    fc.assert_close(img, png_img / 127.5 - 1, "init image = png / 127.5 - 1", atol=1e-6)
    sf = pipe.vae.config.scaling_factor
    assert sf == 0.13025
    mil = sf * pipe.vae.encode(img * (cond < 0.5)).latent_dist.mean
    assert torch.equal(mil, out["masked_image_latents"])
    if nine:
        assert torch.equal(sf * pipe.vae.encode(torch.zeros_like(img)).latent_dist.mean, out["white.masked_image_latents"])
    il = sf * pipe.vae.encode(img).latent_dist.mean
    if "image_latents" in out:
        assert torch.equal(il, out["image_latents"])
    else:
        out["image_latents"] = il
    sched = copy.deepcopy(own)
    sched.set_timesteps(STEPS)
    sched.set_begin_index(2)
    assert torch.equal(out["s075.start_latents"], sched.add_noise(il, noise, sched.timesteps[2:3]))
    fc.assert_close(out["s075.start_latents"], il + noise * sched.sigmas[2], "start = image + noise * sigma(626)")
    ones = int(out["mask_latent"].sum())
    print(f"  mask_latent ones: {ones} of {h * h}")
    info["mask_latent_ones"] = ones

    # every run reproduced by the written-out loop
    info["reference_loop_max_abs_diff"] = {}
    for key, (strength, lat, mask_lat, masked_lat) in refs.items():
        ref, ts = reference_loop(pipe, own, nine, strength, noise if lat is None else lat, lat is not None,
                                 mask_lat, masked_lat, out["image_latents"])
        assert ts == info["runs"][key]["timesteps"]
        d = fc.assert_close(out[f"{key}.latents"], ref, f"{key} vs written-out loop", atol=2e-4, rtol=1e-5)
        info["reference_loop_max_abs_diff"][key] = d
        print(f"  {key}: written-out loop max abs diff {d:.3g}")

    if not nine:  # after the last step the kept part is exactly the clean image latents
        keep = (out["mask_latent"] == 0).expand(1, 4, h, h)
        for key in ("s1", "s075"):
            assert torch.equal(out[f"{key}.latents"][keep], out["image_latents"][keep]), key
    fc.save_goldens(track(OUT / f"goldens-{folder_name}.safetensors"), out, GEN)
    info["scheduler"] = {"class": type(own).__name__, "config": fc.effective_config(own)}
    s = copy.deepcopy(own)
    s.set_timesteps(STEPS)
    info["scheduler"]["sigmas"] = [float(x) for x in s.sigmas]
    info["scheduler"]["init_noise_sigma"] = float(s.init_noise_sigma)
    return pipe, out, info


@torch.no_grad()
def comparisons(pipe4, out4, out9):
    """How much the mask and the 9-channel UNet matter (recorded, not stored)."""
    base = load_file(fc.GOLDENS / "sdxl-tiny.safetensors")
    t2i = StableDiffusionXLPipeline(**{k: v for k, v in pipe4.components.items()
                                       if k in inspect.signature(StableDiffusionXLPipeline.__init__).parameters},
                                    add_watermarker=False)
    t2i.set_progress_bar_config(disable=True)
    t2i.scheduler = EulerDiscreteScheduler.from_config(pipe4.scheduler.config)
    res = {}
    lat8 = t2i(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
               height=H, width=H, latents=out4["latents_in"].clone(), output_type="latent").images
    t2i.scheduler = EulerDiscreteScheduler.from_config(pipe4.scheduler.config)
    lat4 = t2i(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=GUIDANCE,
               height=H, width=H, latents=out4["latents_in"].clone(), output_type="latent").images
    assert torch.equal(lat4, base["euler.latents"]), "txt2img 4 steps != goldens/sdxl-tiny euler.latents"
    m = out4["mask_latent"].expand(1, 4, h, h) == 1
    s1 = out4["s1.latents"]
    res["4ch_s1_vs_txt2img_8steps_same_latents"] = fc.rel_l2(s1, lat8)
    res["4ch_s1_vs_txt2img_8steps_repaint_region"] = fc.rel_l2(s1[m], lat8[m])
    res["4ch_s1_vs_txt2img_8steps_kept_region"] = fc.rel_l2(s1[~m], lat8[~m])
    res["4ch_s1_vs_goldens_sdxl_tiny_euler_latents_4steps"] = fc.rel_l2(s1, base["euler.latents"])
    res["4ch_s1_kept_region_vs_image_latents"] = fc.rel_l2(s1[~m], out4["image_latents"][~m])
    res["4ch_s075_vs_s1"] = fc.rel_l2(out4["s075.latents"], s1)
    res["9ch_s1_vs_4ch_s1"] = fc.rel_l2(out9["s1.latents"], s1)
    res["9ch_white_vs_9ch_s1"] = fc.rel_l2(out9["white.latents"], out9["s1.latents"])
    res["9ch_s075_vs_9ch_s1"] = fc.rel_l2(out9["s075.latents"], out9["s1.latents"])
    for k, v in res.items():
        print(f"  rel-L2 {k}: {v:.4f}")
    for k in ("4ch_s1_vs_txt2img_8steps_same_latents", "4ch_s075_vs_s1", "9ch_white_vs_9ch_s1", "9ch_s1_vs_4ch_s1"):
        assert res[k] > 1e-2, k
    return res


def default_strength_timesteps(pipe):
    sig = inspect.signature(StableDiffusionXLInpaintPipeline.__call__).parameters
    sd1 = inspect.signature(StableDiffusionInpaintPipeline.__call__).parameters
    d = sig["strength"].default
    s = copy.deepcopy(pipe.scheduler)
    s.set_timesteps(STEPS)
    init = min(int(STEPS * d), STEPS)
    return {"sdxl_default_strength": d, "sd1_default_strength": sd1["strength"].default,
            "sdxl_default_is_strength_max": d == 1.0,
            "timesteps_with_default_strength_8_steps": [float(t) for t in s.timesteps[STEPS - init:]]}


def main():
    t0 = time.time()
    print(fc.versions())
    OUT.mkdir(parents=True, exist_ok=True)
    make_masks()
    mem_unet = build_inpaint_folder()
    init = Image.open(INIT_PNG).convert("RGB")
    assert init.size == (H, H)
    masks = {k: Image.open(OUT / f"mask{k}-64.png") for k in ("", "-white")}
    assert masks[""].mode == "L" and masks[""].size == (H, H)

    pipe9, out9, info9 = make_goldens(INPAINT_NAME, True, masks, init)
    mf.check_params_equal(pipe9.unet, mem_unet, "sdxl-tiny-inpaint unet (reloaded)")
    pipe4, out4, info4 = make_goldens(BASE_NAME, False, masks, init)
    for k in ("mask_condition", "mask_latent", "masked_image_latents", "image_latents", "latents_in"):
        assert torch.equal(out4[k], out9[k]), k  # the same VAE and inputs
    print("[comparisons]")
    comp = comparisons(pipe4, out4, out9)
    defaults = default_strength_timesteps(pipe4)
    assert defaults["sdxl_default_strength"] == 0.9999 and defaults["sd1_default_strength"] == 1.0, defaults

    fc.write_json(track(SETTINGS), {
        "generator": GEN,
        "versions": fc.versions(),
        "pipeline": "StableDiffusionXLInpaintPipeline.from_pretrained(folder, dtype=float32, add_watermarker=False)",
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "num_inference_steps": STEPS,
        "guidance_scale": GUIDANCE, "strengths": [1.0, STRENGTH], "height": H, "width": H,
        "init_image": "goldens/sdxl-tiny-img2img-input.png", "mask": "inpaint/mask-64.png",
        "mask_white": "inpaint/mask-white-64.png",
        "latents_in": "goldens/sdxl-tiny.safetensors txt2img.latents",
        "retrieve_latents": "forced to sample_mode='argmax' (posterior mean)",
        "mask_design": {
            "255": "rows 12..39, cols 16..47", "128": "rows 8..55, cols 52..59 (>= 0.5 -> repaint)",
            "127": "cols 0..7, all rows (< 0.5 -> keep)",
            "singles": {"(44,20)": "129, on the latent grid (-> isolated 1 in mask_latent at (11,5))",
                        "(24,28)": "126, on the latent grid, inside the rectangle (-> 0 hole at (6,7))",
                        "(49,26)": "129, off the grid (masked image only)",
                        "(30,33)": "126, off the grid, inside the rectangle (masked image only)"},
        },
        "what_diffusers_does": {
            "size": "height = width = 64 (given; the default would be unet.sample_size * vae_scale_factor = 64)",
            "init_image": "image_processor.preprocess: RGB, PIL LANCZOS resize only if the size differs, /255, *2-1",
            "mask_condition": "mask_processor.preprocess: convert('L'), PIL LANCZOS resize only if the size differs, "
            "/255, binarize: < 0.5 -> 0, >= 0.5 -> 1 (so 127 -> 0, 128 -> 1)",
            "masked_image": "init_image * (mask_condition < 0.5): repainted pixels become 0 (mid-gray)",
            "mask_latent": "torch.nn.functional.interpolate(mask_condition, size=(H/4, W/4)), default mode "
            "'nearest': pixel (4i, 4j)",
            "vae_encode": "_encode_vae_image: scaling_factor (0.13025) * retrieve_latents(vae.encode(x)); "
            "force_upcast true -> image.float() and vae.to(float32) around the encode, then back to the image "
            "dtype: a no-op in float32 (SD 1.x's has no upcast)",
            "masked_image_latents": "_encode_vae_image(masked_image), computed for 9- and 4-channel UNets alike "
            "(only the 9-channel one uses it)",
            "image_latents": "_encode_vae_image(init_image), only for a 4-channel UNet or for strength < 1 "
            "without latents",
            "timesteps": "set_timesteps(8) (Euler leading, steps_offset 1: 876..1 by 125); denoising_start None -> "
            "get_timesteps: init = min(int(steps*strength), steps), t_start = steps - init, timesteps = "
            "timesteps[t_start*order:], scheduler.set_begin_index(t_start*order) (as SD 1.x)",
            "strength_default": "0.9999 (SD 1.x inpainting: 1.0): the default is not strength max: with 8 steps "
            "int(7.9992) = 7 steps (751..1) and, without latents, the start is add_noise(image_latents, noise, 751)",
            "start": "strength == 1.0: latents = noise * init_noise_sigma (noise = the given latents, or randn); "
            "strength < 1 without latents: latents = add_noise(image_latents, noise, timesteps[:1]) = image_latents "
            "+ noise * sigma(t0) for Euler (no init_noise_sigma); given latents are always used as noise * "
            "init_noise_sigma whatever the strength (as SD 1.x). add_noise=False (only with denoising_start) "
            "would start from image_latents",
            "unet_9ch": "UNet input = cat([scale_model_input(cat([latents]*2), t), mask_latent, "
            "masked_image_latents], dim=1) (latents / sqrt(sigma^2 + 1)), mask and masked_image_latents "
            "duplicated for CFG; no blending",
            "unet_4ch_blend": "after every scheduler step i, the last included (as SD 1.x): proper = image_latents "
            "if i is the last step else add_noise(image_latents, noise, timesteps[i+1]); latents = (1 - mask_latent) "
            "* proper + mask_latent * latents (noise = the start noise: the given latents for s1). Euler's "
            "add_noise takes sigma from its step index (begin_index + i + 1) = sigma(timesteps[i+1]). The final "
            "kept latents are exactly image_latents",
            "time_ids": "requires_aesthetics_score false (model_index.json has no such key; default false): "
            "(orig h, orig w, crop top, crop left, target h, target w) = (64, 64, 0, 0, 64, 64) for both CFG rows, "
            "h/w from the latents' shape * vae_scale_factor; the negative row uses the positive "
            "crops_coords_top_left (negative_crops_coords_top_left only matters with aesthetics scores)",
            "cfg": "UNet batch [negative, positive] (prompt embeds, pooled text_embeds, time ids); noise_pred = "
            "uncond + 5 * (text - uncond); guidance_rescale 0",
            "scheduler_noise": "EulerDiscreteScheduler draws no noise (s_churn 0): checked",
            "output": "output_type 'np': (vae.decode(latents / 0.13025).sample / 2 + 0.5).clamp(0, 1); the VAE is "
            "upcast only when it is float16; no overlay (only with padding_mask_crop), no watermark here",
        },
        "default_strength": defaults,
        "models": {INPAINT_NAME: info9, BASE_NAME: info4},
        "rel_l2": comp,
    })
    for p in written:
        os.chmod(p, 0o644)
    for d in sorted({p.parent for p in written if INPAINT in p.parents or p.parent == INPAINT}):
        os.chmod(d, 0o755)
    os.chmod(INPAINT, 0o755)
    print("files:")
    fc.list_files(written)
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
