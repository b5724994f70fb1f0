#!/usr/bin/env python3
"""Inpainting fixtures and goldens (never edit by hand). Run from the repository root:
    /root/.cache/webdiffusion/venv/bin/python scripts/make_inpaint_fixtures.py

tests/fixtures/sd1-tiny-inpaint/   sd1-tiny with a 9-channel UNet (in_channels 9 = latents 4 +
    mask 1 + masked-image latents 4; otherwise sd1-tiny's UNet config; random, seeded,
    perturbed and boosted as make_fixtures.py builds UNets; float32). Every other file is a
    byte copy of sd1-tiny's, except model_index.json: "_class_name" StableDiffusionInpaintPipeline
    (as in the hub's inpainting repos).
tests/fixtures/inpaint/
    mask-32.png        8-bit grayscale 32x32, white = repaint: a 255 rectangle (rows 6..19,
                       cols 8..23), a 128 band (cols 26..29, rows 4..27: 128/255 >= 0.5 -> 1),
                       a 127 band (cols 0..3: < 0.5 -> 0) and single 126/129 pixels
    mask-black-32.png, mask-white-32.png   all 0 / all 255
    init image: goldens/{model}-vae-input.png (32x32 for both models, the img2img init image)
    goldens-sd1-tiny-inpaint.safetensors  (9-channel UNet)
    goldens-sd1-tiny.safetensors, goldens-sd2-tiny.safetensors  (4-channel UNets, blending)
      Every run: StableDiffusionInpaintPipeline, prompt / negative / guidance 7.5 / 8 steps /
      the model's own scheduler as goldens/pipeline.json, image = the init PNG, mask_image =
      mask-32.png unless said, retrieve_latents forced to sample_mode="argmax" (posterior mean):
      latents_in         [1,4,h,w] = goldens/pipeline-{sd1,sd2}-tiny latents (copy)
      s1.latents         strength 1.0, latents=latents_in; output_type="latent"
      s1.image           [H,W,3] in [0,1] = output_type="np" of s1.latents
      s075.noise         [1,4,h,w] randn: what randn_tensor returns in prepare_latents (patched)
      s075.start_latents scheduler.add_noise(image_latents, s075.noise, timesteps[:1])
      s075.latents/.image   strength 0.75, no latents given (noise = s075.noise)
      white.latents/.image  (9-channel only) mask-white-32.png, strength 1.0, latents_in
      mask_condition     [1,1,H,W] mask_processor.preprocess(mask): grayscale, /255,
                         binarized (< 0.5 -> 0, >= 0.5 -> 1)
      mask_latent        [1,1,h,w] F.interpolate(mask_condition, size=(h, w)) (mode nearest)
      masked_image_latents  [1,4,h,w] sf * vae.encode(init_image * (mask_condition < 0.5)).mean,
                         init_image = png/127.5 - 1 (9-channel pipeline and 4-channel alike)
      image_latents      [1,4,h,w] sf * vae.encode(init_image).mean (used by strength < 1 and
                         by the 4-channel blending)
    inpaint.json       parameters, timesteps of every run, what diffusers does (from its source)
"""

import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixtures_common as fc  # noqa: E402
from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel  # noqa: E402

OUT = fc.FIX / "inpaint"
INPAINT = fc.FIX / "sd1-tiny-inpaint"
GEN = "scripts/make_inpaint_fixtures.py"
SEED = 9100
STRENGTH = 0.75
H = 32


def make_masks():
    m = np.zeros((H, H), np.uint8)
    m[6:20, 8:24] = 255
    m[4:28, 26:30] = 128
    m[:, 0:4] = 127
    m[22, 10], m[24, 12], m[2, 16], m[30, 20] = 129, 126, 129, 126
    fc.save_png(OUT / "mask-32.png", m)
    fc.save_png(OUT / "mask-black-32.png", np.zeros((H, H), np.uint8))
    fc.save_png(OUT / "mask-white-32.png", np.full((H, H), 255, np.uint8))


def build_inpaint_folder():
    if INPAINT.exists():
        shutil.rmtree(INPAINT)
    shutil.copytree(fc.FIX / "sd1-tiny", INPAINT)
    shutil.rmtree(INPAINT / "unet")
    cfg = dict(fc.mf.SD1["unet"], in_channels=9)
    torch.manual_seed(SEED + 1)
    unet = UNet2DConditionModel(**cfg).eval()
    fc.perturb(unet, SEED + 2)
    fc.mf.boost_unet(unet)
    unet.save_pretrained(INPAINT / "unet", safe_serialization=True)
    mi = json.load(open(INPAINT / "model_index.json"))
    mi["_class_name"] = "StableDiffusionInpaintPipeline"
    fc.write_json(INPAINT / "model_index.json", mi)
    a = json.load(open(fc.FIX / "sd1-tiny" / "unet" / "config.json"))
    b = json.load(open(INPAINT / "unet" / "config.json"))
    assert {k for k in a if a[k] != b.get(k)} == {"in_channels"}, (a, b)
    return unet


class Capture:
    """Wraps pipeline methods to keep their return values (intermediates of the run)."""

    def __init__(self, pipe, names):
        self.pipe, self.names, self.got = pipe, names, {n: [] for n in names}

    def __enter__(self):
        for n in self.names:
            orig = getattr(self.pipe, n)

            def wrap(*a, _orig=orig, _n=n, **k):
                r = _orig(*a, **k)
                self.got[_n].append(r)
                return r

            setattr(self.pipe, n, wrap)
        return self

    def __exit__(self, *exc):
        for n in self.names:
            delattr(self.pipe, n)


@torch.no_grad()
def make_goldens(folder_name, image_png):
    print(f"[{folder_name}]")
    pipe = fc.load_pipeline(folder_name, cls=StableDiffusionInpaintPipeline)
    module = sys.modules[StableDiffusionInpaintPipeline.__module__]
    own = copy.deepcopy(pipe.scheduler)
    nine = pipe.unet.config.in_channels == 9
    base_model = "sd1-tiny" if folder_name.startswith("sd1") else "sd2-tiny"
    _, g_pipe = fc.existing_goldens(base_model)
    h = pipe.unet.config.sample_size
    init = Image.open(image_png).convert("RGB")
    masks = {k: Image.open(OUT / f"mask{k}-32.png") for k in ("", "-white")}
    noise = torch.randn(1, 4, h, h, generator=fc.gen(SEED + 10 + (0 if nine else 1 if base_model == "sd1-tiny" else 2)))
    out = {"latents_in": g_pipe["latents"], "s075.noise": noise}
    info = {"runs": {}}
    orig_retrieve = module.retrieve_latents
    module.retrieve_latents = lambda enc, generator=None, sample_mode="sample": orig_retrieve(enc, generator, "argmax")
    try:
        def run(key, mask, strength, latents, output_type="latent"):
            pipe.scheduler = copy.deepcopy(own)
            ts = []

            def cb(p, i, t, kw):
                ts.append(float(t))
                return {}

            with Capture(pipe, ["prepare_latents", "prepare_mask_latents"]) as cap, \
                    fc.NoiseFeed([module], fixed=noise) as feed:
                res = pipe(prompt=fc.PROMPT, negative_prompt=fc.NEGATIVE, image=init, mask_image=masks[mask],
                           strength=strength, num_inference_steps=fc.STEPS, guidance_scale=fc.GUIDANCE,
                           latents=None if latents is None else latents.clone(), output_type=output_type,
                           callback_on_step_end=cb).images
            assert len(feed.drawn) == (1 if latents is None else 0), (key, len(feed.drawn))
            if output_type == "latent":
                info["runs"][key] = {"mask": f"mask{mask}-32.png", "strength": strength,
                                     "latents": "latents_in" if latents is not None else None,
                                     "noise": "s075.noise" if latents is None else "latents_in",
                                     "timesteps": ts}
            return res, cap.got

        for key, mask, strength, lat in (("s1", "", 1.0, out["latents_in"]), ("s075", "", STRENGTH, None),
                                         ("white", "-white", 1.0, out["latents_in"])):
            if key == "white" and not nine:
                continue
            res, got = run(key, mask, strength, lat)
            out[f"{key}.latents"] = res
            out[f"{key}.image"] = fc.np_image(pipe.vae, res)
            np_res, _ = run(key, mask, strength, lat, output_type="np")
            assert np.array_equal(np_res[0], out[f"{key}.image"].numpy()), key
            pl = got["prepare_latents"][0]
            mask_lat, masked_lat = got["prepare_mask_latents"][0]
            if key == "s075":
                out["s075.start_latents"] = pl[0]
                if not nine:
                    assert torch.equal(pl[1], noise)
            if key == "s1":
                assert torch.equal(pl[1], out["latents_in"])  # given latents double as the noise
                out["mask_latent"] = mask_lat[:1]  # CFG duplicates it
                out["masked_image_latents"] = masked_lat[:1]
                assert torch.equal(mask_lat[:1], mask_lat[1:]) and torch.equal(masked_lat[:1], masked_lat[1:])
                if not nine:
                    out["image_latents"] = pl[2]
    finally:
        module.retrieve_latents = orig_retrieve

    # intermediates recomputed from the processors (checks the captured ones)
    cond = pipe.mask_processor.preprocess(masks[""], height=H, width=H)
    out["mask_condition"] = cond
    assert torch.equal(torch.nn.functional.interpolate(cond, size=(h, h)), out["mask_latent"])
    img = pipe.image_processor.preprocess(init, height=H, width=H)
    sf = pipe.vae.config.scaling_factor
    mil = sf * pipe.vae.encode(img * (cond < 0.5)).latent_dist.mean
    assert torch.equal(mil, out["masked_image_latents"])
    il = sf * pipe.vae.encode(img).latent_dist.mean
    if "image_latents" in out:
        assert torch.equal(il, out["image_latents"])
    else:
        out["image_latents"] = il
    print(f"  mask_latent ones: {int(out['mask_latent'].sum())} of {h * h}")
    if not nine:  # after the last step the unmasked part is exactly the clean image latents
        keep = out["mask_latent"] == 0
        for key in ("s1", "s075"):
            assert torch.allclose(out[f"{key}.latents"][keep.expand_as(out[f'{key}.latents'])],
                                  out["image_latents"][keep.expand_as(out["image_latents"])], atol=1e-6), key
    fc.save_goldens(OUT / f"goldens-{folder_name}.safetensors", out, GEN)
    info["unet_in_channels"] = pipe.unet.config.in_channels
    info["init_image"] = str(Path(image_png).relative_to(fc.FIX))
    info["scheduler"] = {"class": type(own).__name__, "config": fc.effective_config(own)}
    return info


def main():
    print(fc.versions())
    OUT.mkdir(parents=True, exist_ok=True)
    make_masks()
    build_inpaint_folder()
    infos = {}
    for folder, png in (("sd1-tiny-inpaint", "sd1-tiny"), ("sd1-tiny", "sd1-tiny"), ("sd2-tiny", "sd2-tiny")):
        infos[folder] = make_goldens(folder, fc.GOLDENS / f"{png}-vae-input.png")
    fc.write_json(OUT / "inpaint.json", {
        "generator": GEN,
        "versions": fc.versions(),
        "prompt": fc.PROMPT, "negative_prompt": fc.NEGATIVE, "num_inference_steps": fc.STEPS,
        "guidance_scale": fc.GUIDANCE, "strengths": [1.0, STRENGTH],
        "what_diffusers_does": {
            "size": "height = width = unet.sample_size * vae_scale_factor (32) unless given",
            "init_image": "image_processor.preprocess: RGB, PIL LANCZOS resize if the size differs, /255, *2-1",
            "mask_condition": "mask_processor.preprocess: convert('L'), PIL LANCZOS resize if the size differs, "
            "/255, binarize: < 0.5 -> 0, >= 0.5 -> 1 (so 127 -> 0, 128 -> 1)",
            "masked_image": "init_image * (mask_condition < 0.5): repainted pixels become 0 (mid-gray)",
            "mask_latent": "torch.nn.functional.interpolate(mask_condition, size=(H/f, W/f)), default mode "
            "'nearest' (source index floor(i * in/out), i.e. pixel (f*i, f*j))",
            "masked_image_latents": "vae_scaling_factor * retrieve_latents(vae.encode(masked_image)) (argmax here)",
            "timesteps": "set_timesteps(steps); get_timesteps(steps, strength): init = min(int(steps*strength), "
            "steps), t_start = steps - init, timesteps = timesteps[t_start*order:]",
            "start": "strength 1.0: latents = noise * init_noise_sigma (noise = the given latents, or randn); "
            "strength < 1 without latents: latents = add_noise(image_latents, noise, timesteps[:1]); given "
            "latents are always used as noise * init_noise_sigma whatever the strength",
            "unet_9ch": "UNet input = cat([scale_model_input(latents), mask_latent, masked_image_latents], dim=1), "
            "mask and masked_image_latents duplicated for CFG; no blending",
            "unet_4ch_blend": "after every scheduler step i: proper = image_latents if i is the last step else "
            "add_noise(image_latents, noise, timesteps[i+1]); latents = (1 - mask_latent) * proper + mask_latent * "
            "latents (so the final unmasked latents are exactly image_latents)",
            "output": "output_type 'np': (vae.decode(latents / sf).sample / 2 + 0.5).clamp(0, 1), no overlay "
            "(only with padding_mask_crop)",
        },
        "models": infos,
    })
    print("files:")
    fc.list_files(fc.files_under(OUT, INPAINT))


if __name__ == "__main__":
    main()
