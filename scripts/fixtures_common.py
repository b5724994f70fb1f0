"""Shared helpers for the feature fixture generators (make_{lora,controlnet,inpaint,taesd,canny}_fixtures.py).

Reuses make_fixtures.py's conventions and helpers (importing it has no side effects besides
its global torch settings: one thread, deterministic algorithms, quiet logging): float32 on
the CPU, fixed seeds, `perturb` so no weight is trivially zero, weights rounded to their
storage dtype before any golden is computed, and byte-identical output on a re-run.

Not a generator itself; nothing here writes files except through the callers.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (sets torch threads/determinism and logging on import)

# transformers 5.24 refuses PEFT < 0.22.0 in its adapter integration (MIN_PEFT_VERSION), but
# PyPI serves nothing newer than peft 0.21.2. The API transformers uses exists in 0.21.2; the
# LoRA generator checks every diffusers result against an explicit weight merge, so a wrong
# adapter injection could not go unnoticed.
import transformers.integrations.peft as _tf_peft  # noqa: E402

_tf_peft.MIN_PEFT_VERSION = "0.21.2"

from diffusers import StableDiffusionPipeline  # noqa: E402

ROOT = mf.ROOT
FIX = mf.FIX
GOLDENS = FIX / "goldens"

gen = mf.gen
stats = mf.stats
perturb = mf.perturb
round_to = mf.round_to
write_json = mf.write_json
NoiseFeed = mf.NoiseFeed
effective_config = mf.effective_config

MODELS = ("sd1-tiny", "sd2-tiny")
# the UNet of sd2-tiny is stored only as the fp16 variant
VARIANT = {"sd1-tiny": None, "sd2-tiny": "fp16", "sd1-tiny-inpaint": None}

PIPE = json.load(open(GOLDENS / "pipeline.json"))
PROMPT = PIPE["prompt"]
NEGATIVE = PIPE["negative_prompt"]
STEPS = PIPE["num_inference_steps"]
GUIDANCE = PIPE["guidance_scale"]
UNET_TIMESTEP = 500.0  # = goldens/{model}.safetensors unet.timestep.1


def versions():
    import diffusers
    import peft
    import transformers

    v = {"torch": torch.__version__, "diffusers": diffusers.__version__,
         "transformers": transformers.__version__, "peft": peft.__version__, "numpy": np.__version__}
    try:
        import cv2

        v["opencv"] = cv2.__version__
    except ImportError:
        pass
    return v


def load_pipeline(name, cls=StableDiffusionPipeline, **kwargs):
    """A pipeline folder under tests/fixtures loaded in float32 (no safety checker)."""
    kw = dict(dtype=torch.float32, safety_checker=None)
    if VARIANT.get(name):
        kw["variant"] = VARIANT[name]
    kw.update(kwargs)
    pipe = cls.from_pretrained(FIX / name, **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def existing_goldens(name):
    """The committed goldens of make_fixtures.py: (model goldens, pipeline goldens)."""
    return load_file(GOLDENS / f"{name}.safetensors"), load_file(GOLDENS / f"pipeline-{name}.safetensors")


def np_image(vae, latents):
    """What output_type="np" returns, as a float32 [H,W,3] tensor in [0,1] (batch 1):
    (vae.decode(latents / scaling_factor).sample / 2 + 0.5).clamp(0, 1)."""
    image = vae.decode(latents / vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).contiguous()


def rel_l2(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def assert_close(a, b, what, atol=1e-6, rtol=0.0):
    d = float((a.double() - b.double()).abs().max())
    lim = atol + rtol * float(b.double().abs().max())
    assert d <= lim, f"{what}: max abs diff {d:.3g} > {lim:.3g}"
    return d


def save_goldens(path, tensors, generator, show=True):
    """float32 (int64 where integers) contiguous tensors, checked finite, with stats printed."""
    out = {}
    for k, v in tensors.items():
        v = v.detach().contiguous()
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
        assert torch.isfinite(v.double()).all(), k
        out[k] = v
        if show and v.dtype == torch.float32:
            stats(k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(sorted(out.items())), path, metadata={"generator": generator})


def save_tensors(path, tensors, metadata=None):
    """Any dtypes, sorted keys, deterministic bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, path, metadata=metadata)
    canonicalize_safetensors(path)


def canonicalize_safetensors(path):
    """safetensors writes `__metadata__` from a hash map, so with more than one entry its order
    changes from run to run. Rewrite the header with the metadata keys sorted (tensor entries and
    data untouched; header padded with spaces to a multiple of 8 as safetensors does)."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=dict)
    if len(header.get("__metadata__") or {}) < 2:
        return
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def save_png(path, array):
    from PIL import Image

    array = np.asarray(array)
    mode = "L" if array.ndim == 2 else "RGB"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, compress_level=9)


def list_files(paths):
    total = 0
    for p in sorted(paths):
        if p.is_file():
            n = p.stat().st_size
            total += n
            print(f"  {n:>10d}  {hashlib.sha256(p.read_bytes()).hexdigest()[:12]}  {p.relative_to(ROOT)}")
    print(f"  total {total} bytes")


def files_under(*dirs):
    return [p for d in dirs for p in Path(d).rglob("*") if p.is_file()]
