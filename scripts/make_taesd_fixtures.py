#!/usr/bin/env python3
"""TAESD (AutoencoderTiny) fixtures and goldens (never edit by hand). Run from the repository root:
    /root/.cache/webdiffusion/venv/bin/python scripts/make_taesd_fixtures.py

tests/fixtures/taesd-tiny/   AutoencoderTiny with diffusers' DEFAULT config (64 channels, encoder
    blocks (1,3,3,3), decoder (3,3,3,1), relu, nearest x2 upsampling, x8 down/up, 4 latent
    channels, scaling_factor 1.0, latent_magnitude 3, latent_shift 0.5; 2,445,063 parameters:
    encoder 1,222,532 + decoder 1,222,531, the counts madebyollin/taesd gives), random weights
    (init_weights: variance-preserving convs so that outputs are O(1)), perturbed, FLOAT16 in diffusion_pytorch_model.safetensors + config.json as
    save_pretrained writes them. madebyollin/taesd's diffusers folder uses the same two file
    names (its "diffusers compatible variant" commit added config.json,
    diffusion_pytorch_model.safetensors/.bin next to the original taesd_encoder/decoder files);
    its config comes from an older diffusers, so keys added later (upsample_fn, shift_factor)
    take their defaults on load.
tests/fixtures/taesd/goldens.safetensors (float32):
    decode.latents   [1,4,8,8] randn (pipeline latent space: scaling_factor is 1.0)
    decode.image     [1,3,64,64] taesd.decode(decode.latents).sample, as diffusers returns it:
                     decoder(x) = layers(tanh(x / 3) * 3) * 2 - 1 (nominally [-1,1]; not
                     clamped: random weights may go beyond)
    pipeline.latents [1,4,16,16] = goldens/pipeline-sd1-tiny.safetensors own.latents (copy)
    pipeline.image   [128,128,3] in [0,1]: what StableDiffusionPipeline(sd1-tiny) with
                     pipe.vae = taesd-tiny returns for output_type="np" from those latents:
                     (taesd.decode(latents / 1.0).sample / 2 + 0.5).clamp(0, 1), HWC. (The
                     x8 TAESD gives 128x128 where sd1-tiny's own VAE gives 32x32.)
    encode.image     [1,3,64,64] uniform in [-1,1]
    encode.latents   [1,4,8,8] taesd.encode(encode.image).latents = encoder((x + 1) / 2), raw
                     (no scaling, no clamp: scale_latents/unscale_latents are not used by encode)
tests/fixtures/taesd/taesd.json   config, scaling facts, parameter counts
"""

import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixtures_common as fc  # noqa: E402
from diffusers import AutoencoderTiny  # noqa: E402

FOLDER = fc.FIX / "taesd-tiny"
OUT = fc.FIX / "taesd"
GEN = "scripts/make_taesd_fixtures.py"
SEED = 9500


def count(m):
    return sum(p.numel() for p in m.parameters())


@torch.no_grad()
def init_weights(taesd, seed):
    """diffusers' default init shrinks the signal through the ~20 convs (decoded images all ~-1,
    latents ~0.01). Redraw every conv weight N(0, 1/fan_in); the decoder's last conv 0.3/sqrt(fan_in)
    with bias 0.5 (centred images in [-1,1]), the encoder's last conv 3/sqrt(fan_in) (latents std ~1.4)."""
    g = fc.gen(seed)
    for part, last_gain, last_bias in ((taesd.encoder, 3.0, 0.0), (taesd.decoder, 0.3, 0.5)):
        convs = [m for m in part.modules() if isinstance(m, torch.nn.Conv2d)]
        for c in convs:
            gain = last_gain if c is convs[-1] else 1.0
            c.weight.copy_(torch.randn(c.weight.shape, generator=g) * gain / c.weight[0].numel() ** 0.5)
        convs[-1].bias.fill_(last_bias)


@torch.no_grad()
def main():
    print(fc.versions())
    torch.manual_seed(SEED)
    taesd = AutoencoderTiny().eval()
    init_weights(taesd, SEED + 2)
    fc.perturb(taesd, SEED + 1)
    fc.round_to(taesd, torch.float16)
    counts = {"total": count(taesd), "encoder": count(taesd.encoder), "decoder": count(taesd.decoder)}
    assert counts == {"total": 2445063, "encoder": 1222532, "decoder": 1222531}, counts
    taesd.half().save_pretrained(FOLDER, safe_serialization=True)
    taesd.float()
    assert sorted(p.name for p in FOLDER.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]

    loaded = AutoencoderTiny.from_pretrained(FOLDER, dtype=torch.float32).eval()
    for (k, a), (k2, b) in zip(taesd.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    taesd = loaded
    cfg = taesd.config

    g = fc.gen(SEED + 10)
    out = {"decode.latents": torch.randn(1, 4, 8, 8, generator=g)}
    out["decode.image"] = taesd.decode(out["decode.latents"]).sample
    out["encode.image"] = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    out["encode.latents"] = taesd.encode(out["encode.image"]).latents
    # the decoder as documented above
    x = torch.tanh(out["decode.latents"] / 3) * 3
    assert torch.equal(taesd.decoder.layers(x) * 2 - 1, out["decode.image"])
    assert torch.equal(taesd.encoder.layers((out["encode.image"] + 1) / 2), out["encode.latents"])

    # pipeline: sd1-tiny with the TAESD as its VAE
    _, g_pipe = fc.existing_goldens("sd1-tiny")
    lat = g_pipe["own.latents"]
    out["pipeline.latents"] = lat
    out["pipeline.image"] = fc.np_image(taesd, lat)
    pipe = fc.load_pipeline("sd1-tiny")
    own = copy.deepcopy(pipe.scheduler)
    pipe.vae = taesd
    run = {}
    for ot in ("latent", "np"):
        pipe.scheduler = copy.deepcopy(own)
        run[ot] = pipe(prompt=fc.PROMPT, negative_prompt=fc.NEGATIVE, num_inference_steps=fc.STEPS,
                       guidance_scale=fc.GUIDANCE, latents=g_pipe["latents"].clone(), output_type=ot).images
    assert run["latent"].shape == (1, 4, 16, 16) and run["np"].shape == (1, 128, 128, 3)
    assert np.array_equal(run["np"][0], fc.np_image(taesd, run["latent"]).numpy()), "pipeline np != decode"
    # (the stored latents come from the committed golden; re-running the pipeline here gives them
    # within float noise of another machine's arithmetic)
    drift = float((run["latent"] - lat).abs().max())
    print(f"  pipeline latents here vs committed own.latents: max abs diff {drift:.2e}")
    assert drift < 1e-3
    print("[taesd] goldens:")
    fc.save_goldens(OUT / "goldens.safetensors", out, GEN)
    fc.write_json(OUT / "taesd.json", {
        "generator": GEN,
        "versions": fc.versions(),
        "seed": SEED,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(dict(cfg).items())
                   if not k.startswith("_")},
        "parameter_counts": counts,
        "storage": "float16 diffusion_pytorch_model.safetensors (no variant suffix), loaded as float32",
        "scaling_factor": cfg.scaling_factor,
        "latent_magnitude": cfg.latent_magnitude,
        "latent_shift": cfg.latent_shift,
        "decode": "AutoencoderTiny.decode(x).sample = DecoderTiny: layers(tanh(x / 3) * 3) * 2 - 1; the pipeline "
        "passes latents / scaling_factor (= latents) and postprocesses (image / 2 + 0.5).clamp(0, 1)",
        "encode": "AutoencoderTiny.encode(x).latents = EncoderTiny: layers((x + 1) / 2) for x in [-1,1]; raw latents "
        "(already in pipeline latent space, scaling_factor 1)",
        "scale_latents": "x / (2 * latent_magnitude) + latent_shift, clamp(0, 1): only for storing latents as "
        "images (not used by encode/decode); unscale_latents is its inverse",
        "pipeline": {"model": "sd1-tiny", "vae": "taesd-tiny", "latents": "goldens/pipeline-sd1-tiny own.latents",
                     "output_size": [128, 128]},
    })
    print("files:")
    fc.list_files(fc.files_under(OUT, FOLDER))


if __name__ == "__main__":
    main()
