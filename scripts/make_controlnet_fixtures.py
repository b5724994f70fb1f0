#!/usr/bin/env python3
"""ControlNet fixtures and goldens (never edit by hand). Run from the repository root:
    /root/.cache/webdiffusion/venv/bin/python scripts/make_controlnet_fixtures.py

Models (random, diffusers folders: config.json + weights):
  tests/fixtures/controlnet-sd1-tiny/    ControlNetModel.from_unet(sd1-tiny unet,
      conditioning_embedding_out_channels=(8, 16)): one stride-2 conv, control image 32x32 ->
      16x16 = latent size (VAE factor 2). float32 diffusion_pytorch_model.safetensors
  tests/fixtures/controlnet2-sd1-tiny/   the same architecture, other seed (multi-ControlNet);
      float16 tensors in the plain diffusion_pytorch_model.safetensors (no variant name)
  tests/fixtures/controlnet-sd2-tiny/    from_unet(sd2-tiny unet, (8, 16, 16)): two stride-2
      convs (VAE factor 4); FLOAT16 only, as diffusion_pytorch_model.fp16.safetensors
  All: after from_unet (which copies conv_in, time embedding, down and mid blocks from the
  UNet) the conditioning-embedding conv weights are redrawn larger (boost_cond_embedding: with
  diffusers' init the control image changes the residuals by only ~1%), every parameter is perturbed (fixtures_common.perturb: zero convolutions get 0.05*randn,
  the copied UNet weights 0.3*std noise), then rounded to the storage dtype.
  tests/fixtures/single/controlnet-sd1-tiny.safetensors   controlnet-sd1-tiny in the original
      ControlNet (lllyasviel ControlNet-v1-1 / cldm) layout, float32, keys "control_model.":
      time_embed.{0,2}, input_blocks.* / middle_block.* (LDM UNet names, as
      make_single_files.py writes them), zero_convs.{i}.0 (= controlnet_down_blocks.{i}),
      middle_block_out.0 (= controlnet_mid_block), input_hint_block.0 (conv_in),
      input_hint_block.{2,4} (blocks.{0,1}), input_hint_block.14 (conv_out). The original
      hint block is a fixed 15-entry Sequential (convs at even indices, conv_out at 14) and
      diffusers' converter hard-codes conv_out = input_hint_block.14, so the tiny file keeps
      conv_out at 14 and leaves 6..12 empty. Checked: ControlNetModel.from_single_file(file,
      config=controlnet-sd1-tiny/) gives the folder's tensors exactly.

Control images (tests/fixtures/controlnet/, 8-bit RGB PNG): control-a.png, control-b.png
  32x32 (sd1-tiny and sd2-tiny both output 32x32: sample_size 16 x 2, 8 x 4): white shapes on
  black (edge-map-like) and different shapes; control-c-48x40.png: 48 wide, 40 high.

Goldens tests/fixtures/controlnet/goldens-{sd1,sd2}-tiny.safetensors (float32):
  cond                 [2,3,32,32] in [0,1]: control-a (batch 0), control-b (batch 1), = png/255
  down.{j}             ControlNet down residuals (j = 0..len-1, conv_in first, one per UNet down
                       residual) for controlnet(goldens/M unet.sample, t=500,
                       unet.encoder_hidden_states, controlnet_cond=cond, conditioning_scale=1.0)
  mid                  mid residual of that call
  down.{j}.scale05, mid.scale05   the same with conditioning_scale 0.5 (= 0.5 x the above)
  unet.out             unet(sample, 500, ehs, down_block_additional_residuals=down.*,
                       mid_block_additional_residual=mid).sample
  unet.out.base        the same UNet call without residuals
  pipeline.latents     StableDiffusionControlNetPipeline, control-a.png, prompt / negative /
                       8 steps / guidance 7.5 / own scheduler / goldens/pipeline-M latents,
                       output_type="latent"
  pipeline.image       [32,32,3] in [0,1] = output_type="np" of those latents
  window.latents/.image    control_guidance_start 0.25, control_guidance_end 0.75,
                       controlnet_conditioning_scale 0.8
  resized.cond         [1,3,32,32] control_image_processor.preprocess(control-c-48x40.png,
                       height=32, width=32): PIL resize (LANCZOS) to 32x32, /255
  resized.latents/.image   pipeline with control-c-48x40.png and height=width=32
  sd1 only: multi.latents/.image  MultiControlNet [controlnet-sd1-tiny, controlnet2-sd1-tiny],
                       images [control-a, control-b], controlnet_conditioning_scale [0.7, 0.5]
controlnet.json: parameters, per-step conditioning scales seen by each ControlNet call
(recorded from the pipeline), preprocessing facts.
"""

import copy
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixtures_common as fc  # noqa: E402
from make_single_files import unet_to_ldm  # noqa: E402
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline  # noqa: E402

OUT = fc.FIX / "controlnet"
GEN = "scripts/make_controlnet_fixtures.py"
NETS = {
    "controlnet-sd1-tiny": dict(model="sd1-tiny", cond_channels=(8, 16), seed=8100, dtype=torch.float32),
    "controlnet2-sd1-tiny": dict(model="sd1-tiny", cond_channels=(8, 16), seed=8200, dtype=torch.float16,
                                 variant=None),
    "controlnet-sd2-tiny": dict(model="sd2-tiny", cond_channels=(8, 16, 16), seed=8300, dtype=torch.float16),
}
WINDOW = dict(control_guidance_start=0.25, control_guidance_end=0.75, controlnet_conditioning_scale=0.8)
MULTI_SCALES = [0.7, 0.5]
SIZE = 32


# ---------------------------------------------------------------------------------------- images

def control_image(kind, w, h):
    """Supersampled (4x, then box-downsampled) white shapes on black: clear edges, some AA."""
    s = 4
    im = Image.new("L", (w * s, h * s), 0)
    d = ImageDraw.Draw(im)
    W, H = w * s, h * s
    if kind == "a":
        d.ellipse([0.12 * W, 0.15 * H, 0.55 * W, 0.6 * H], outline=255, width=2 * s)
        d.rectangle([0.5 * W, 0.55 * H, 0.9 * W, 0.88 * H], fill=255)
        d.line([0.05 * W, 0.95 * H, 0.95 * W, 0.05 * H], fill=255, width=s)
    elif kind == "b":
        d.polygon([(0.5 * W, 0.08 * H), (0.92 * W, 0.85 * H), (0.08 * W, 0.85 * H)], outline=255, width=2 * s)
        for i in range(3):
            y = (0.25 + 0.2 * i) * H
            d.line([0.1 * W, y, 0.9 * W, y + 0.1 * H], fill=200, width=s)
    else:
        d.rectangle([0.1 * W, 0.1 * H, 0.45 * W, 0.9 * H], outline=255, width=2 * s)
        d.ellipse([0.5 * W, 0.2 * H, 0.92 * W, 0.7 * H], fill=255)
    im = im.resize((w, h), Image.Resampling.BOX)
    rgb = np.asarray(im)[..., None].repeat(3, -1).copy()
    if kind == "b":  # some colour, so that channel order matters
        rgb[..., 0] = np.asarray(im) // 2
    return rgb


def as_tensor(rgb):
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


# ---------------------------------------------------------------------------------------- models

@torch.no_grad()
def boost_cond_embedding(net, seed):
    """With diffusers' init the control image moves the residuals by ~1% (each small conv shrinks
    the signal; conv_out is zero). Redraw the conditioning-embedding conv weights as
    N(0, (2/sqrt(fan_in))^2), conv_out N(0, (0.5/sqrt(fan_in))^2), so that the image counts."""
    g = fc.gen(seed)
    ce = net.controlnet_cond_embedding
    for conv in (ce.conv_in, *ce.blocks, ce.conv_out):
        gain = 0.5 if conv is ce.conv_out else 2.0
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * gain / conv.weight[0].numel() ** 0.5)


def build_net(name, spec):
    unet = fc.load_pipeline(spec["model"]).unet
    torch.manual_seed(spec["seed"])
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=spec["cond_channels"]).eval()
    boost_cond_embedding(net, spec["seed"] + 2)
    fc.perturb(net, spec["seed"] + 1)
    assert all(float(p.abs().max()) > 0 for p in net.parameters())
    fc.round_to(net, spec["dtype"])
    folder = fc.FIX / name
    variant = variant_of(name)
    net.to(spec["dtype"]).save_pretrained(folder, safe_serialization=True, variant=variant)
    net.to(torch.float32)
    files = sorted(p.name for p in folder.iterdir())
    want = ["config.json", f"diffusion_pytorch_model.{variant + '.' if variant else ''}safetensors"]
    assert files == want, files
    return net


def variant_of(name):
    spec = NETS[name]
    return spec.get("variant", "fp16" if spec["dtype"] == torch.float16 else None)


def load_net(name):
    return ControlNetModel.from_pretrained(fc.FIX / name, variant=variant_of(name), dtype=torch.float32).eval()


def controlnet_to_ldm(sd, config):
    unet_part = {k: v for k, v in sd.items() if k.startswith(("conv_in.", "time_embedding.", "down_blocks.", "mid_block."))}
    out = {"control_model." + k.removeprefix("model.diffusion_model."): v
           for k, v in unet_to_ldm(unet_part, config).items()}
    p = "control_model."
    n_blocks = len({k.split(".")[2] for k in sd if k.startswith("controlnet_cond_embedding.blocks.")})
    assert 2 * n_blocks < 14
    for t in ("weight", "bias"):
        out[f"{p}input_hint_block.0.{t}"] = sd[f"controlnet_cond_embedding.conv_in.{t}"]
        for i in range(n_blocks):
            out[f"{p}input_hint_block.{2 * (i + 1)}.{t}"] = sd[f"controlnet_cond_embedding.blocks.{i}.{t}"]
        out[f"{p}input_hint_block.14.{t}"] = sd[f"controlnet_cond_embedding.conv_out.{t}"]
        for i in range(len([k for k in sd if k.startswith("controlnet_down_blocks.") and k.endswith(".weight")])):
            out[f"{p}zero_convs.{i}.0.{t}"] = sd[f"controlnet_down_blocks.{i}.{t}"]
        out[f"{p}middle_block_out.0.{t}"] = sd[f"controlnet_mid_block.{t}"]
    assert len(out) == len(sd), (len(out), len(sd))
    return out


def write_single_file():
    folder = fc.FIX / "controlnet-sd1-tiny"
    net = load_net("controlnet-sd1-tiny")
    sd = net.state_dict()
    path = fc.FIX / "single" / "controlnet-sd1-tiny.safetensors"
    fc.save_tensors(path, controlnet_to_ldm(sd, net.config))
    theirs = ControlNetModel.from_single_file(str(path), config=str(folder), local_files_only=True,
                                              dtype=torch.float32).state_dict()
    assert theirs.keys() == sd.keys(), set(theirs) ^ set(sd)
    for k in sd:
        assert torch.equal(theirs[k], sd[k]), k
    print(f"single/controlnet-sd1-tiny.safetensors: {len(sd)} tensors, from_single_file gives them back")


# ---------------------------------------------------------------------------------------- goldens

class ScaleRecorder:
    """Wraps ControlNetModel.forward to record the conditioning_scale of every call."""

    def __init__(self, nets):
        self.nets, self.calls = nets, [[] for _ in nets]

    def __enter__(self):
        for i, net in enumerate(self.nets):
            orig = net.forward

            def fwd(*a, _orig=orig, _i=i, **k):
                self.calls[_i].append(float(k["conditioning_scale"]))
                return _orig(*a, **k)

            net.forward = fwd
        return self

    def __exit__(self, *exc):
        for net in self.nets:
            del net.forward


@torch.no_grad()
def make_goldens(model, images, nets):
    print(f"[{model}]")
    g_model, g_pipe = fc.existing_goldens(model)
    sample, ehs = g_model["unet.sample"], g_model["unet.encoder_hidden_states"]
    t = torch.tensor([fc.UNET_TIMESTEP])
    assert torch.equal(g_model["unet.timestep.1"], t)
    net = nets[0]
    pipe = fc.load_pipeline(model, cls=StableDiffusionControlNetPipeline, controlnet=net)
    own = copy.deepcopy(pipe.scheduler)
    out = {"cond": torch.cat([as_tensor(images["a"]), as_tensor(images["b"])])}
    info = {}
    for suffix, scale in (("", 1.0), (".scale05", 0.5)):
        down, mid = net(sample, t, encoder_hidden_states=ehs, controlnet_cond=out["cond"],
                        conditioning_scale=scale, return_dict=False)
        for j, d in enumerate(down):
            out[f"down.{j}{suffix}"] = d
        out[f"mid{suffix}"] = mid
        if scale == 1.0:
            down1, mid1 = down, mid
    n_res = len([k for k in g_model if k.startswith("unet.down_residual.")])
    assert len(down1) == n_res, (len(down1), n_res)
    for j, d in enumerate(down1):
        assert d.shape == g_model[f"unet.down_residual.{j}"].shape, j
    out["unet.out"] = pipe.unet(sample, t, encoder_hidden_states=ehs, down_block_additional_residuals=down1,
                                mid_block_additional_residual=mid1).sample
    out["unet.out.base"] = pipe.unet(sample, t, encoder_hidden_states=ehs).sample
    info["unet_out_rel_change"] = fc.rel_l2(out["unet.out"], out["unet.out.base"])
    print(f"  residual effect on unet.out: rel-L2 {info['unet_out_rel_change']:.3f}")
    assert 0.05 < info["unet_out_rel_change"] < 1.0

    def run(key, pipe, nets_used, image, **kw):
        pipe.scheduler = copy.deepcopy(own)
        with ScaleRecorder(nets_used) as rec:
            lat = pipe(prompt=fc.PROMPT, negative_prompt=fc.NEGATIVE, image=image, num_inference_steps=fc.STEPS,
                       guidance_scale=fc.GUIDANCE, latents=g_pipe["latents"].clone(), output_type="latent", **kw).images
        out[f"{key}.latents"] = lat
        out[f"{key}.image"] = fc.np_image(pipe.vae, lat)
        info[key] = {k: v for k, v in kw.items()}
        info[key]["conditioning_scale_per_step"] = rec.calls if len(nets_used) > 1 else rec.calls[0]
        info[key]["rel_l2_vs_plain_pipeline"] = fc.rel_l2(lat, g_pipe["own.latents"])
        print(f"  {key}: latents rel-L2 vs plain text-to-image {info[key]['rel_l2_vs_plain_pipeline']:.3f}")

    pil = {k: Image.open(OUT / f"control-{k}.png") for k in ("a", "b")}
    pil["c"] = Image.open(OUT / "control-c-48x40.png")
    run("pipeline", pipe, [net], pil["a"])
    run("window", pipe, [net], pil["a"], **WINDOW)
    out["resized.cond"] = pipe.control_image_processor.preprocess(pil["c"], height=SIZE, width=SIZE)
    run("resized", pipe, [net], pil["c"], height=SIZE, width=SIZE)
    info["resized"]["control_image"] = "control-c-48x40.png"
    if len(nets) > 1:
        mpipe = fc.load_pipeline(model, cls=StableDiffusionControlNetPipeline, controlnet=list(nets))
        run("multi", mpipe, list(nets), [pil["a"], pil["b"]], controlnet_conditioning_scale=MULTI_SCALES)
    pipe.scheduler = copy.deepcopy(own)  # output_type="np" is exactly the stored decode
    ref = pipe(prompt=fc.PROMPT, negative_prompt=fc.NEGATIVE, image=pil["a"], num_inference_steps=fc.STEPS,
               guidance_scale=fc.GUIDANCE, latents=g_pipe["latents"].clone(), output_type="np").images
    assert np.array_equal(ref[0], out["pipeline.image"].numpy())
    fc.save_goldens(OUT / f"goldens-{model}.safetensors", out, GEN)
    return info


def main():
    print(fc.versions())
    OUT.mkdir(parents=True, exist_ok=True)
    images = {"a": control_image("a", SIZE, SIZE), "b": control_image("b", SIZE, SIZE),
              "c": control_image("c", 48, 40)}
    for k, v in images.items():
        fc.save_png(OUT / (f"control-{k}.png" if k != "c" else "control-c-48x40.png"), v)
    # the stored PNGs are what the goldens use
    for k in ("a", "b"):
        assert np.array_equal(np.asarray(Image.open(OUT / f"control-{k}.png").convert("RGB")), images[k])
    for name, spec in NETS.items():
        build_net(name, spec)
    write_single_file()
    infos = {
        "sd1-tiny": make_goldens("sd1-tiny", images, [load_net("controlnet-sd1-tiny"), load_net("controlnet2-sd1-tiny")]),
        "sd2-tiny": make_goldens("sd2-tiny", images, [load_net("controlnet-sd2-tiny")]),
    }
    fc.write_json(OUT / "controlnet.json", {
        "generator": GEN,
        "versions": fc.versions(),
        "prompt": fc.PROMPT, "negative_prompt": fc.NEGATIVE, "num_inference_steps": fc.STEPS,
        "guidance_scale": fc.GUIDANCE, "unet_timestep": fc.UNET_TIMESTEP,
        "controlnets": {k: {"model": v["model"], "conditioning_embedding_out_channels": list(v["cond_channels"]),
                            "seed": v["seed"], "dtype": str(v["dtype"]).removeprefix("torch."),
                            "weights": f"diffusion_pytorch_model.{variant_of(k) + '.' if variant_of(k) else ''}safetensors"}
                        for k, v in NETS.items()},
        "multi": {"controlnets": ["controlnet-sd1-tiny", "controlnet2-sd1-tiny"],
                  "images": ["control-a.png", "control-b.png"], "controlnet_conditioning_scale": MULTI_SCALES},
        "preprocessing": {
            "processor": "VaeImageProcessor(vae_scale_factor, do_convert_rgb=True, do_normalize=False)",
            "pixels": "PIL RGB -> float32 / 255 -> [1,3,H,W] in [0,1] (no [-1,1] normalisation)",
            "resize": "PIL Image.resize((width, height), resample=LANCZOS, reducing_gap=None) to the requested "
            "height/width, aspect ratio not kept (resize_mode 'default'); a same-size image is not changed",
            "default_size": "height/width not given: the control image's own size rounded down to a multiple of "
            "vae_scale_factor; the output size follows it (so pass height/width for another-size control image)",
            "cfg": "the control image is repeated for the batch and concatenated twice (uncond, cond) under "
            "classifier-free guidance; guess_mode False",
            "window": "per step i of N = len(timesteps) (PNDM: 9 for 8 steps): keep = 1 - float(i/N < start or (i+1)/N > end); conditioning_scale = "
            "controlnet_conditioning_scale * keep; the ControlNet still runs when keep is 0",
            "residuals": "down residuals (conv_in output first, then every resnet/attention and downsampler "
            "output) each pass through a zero conv and are multiplied by conditioning_scale; the UNet adds them to "
            "its skip connections, the mid residual to the mid-block output. MultiControlNet sums the residuals.",
        },
        "models": infos,
    })
    print("files:")
    fc.list_files(fc.files_under(OUT, *(fc.FIX / n for n in NETS)) + [fc.FIX / "single" / "controlnet-sd1-tiny.safetensors"])


if __name__ == "__main__":
    main()
