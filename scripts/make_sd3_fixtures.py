#!/usr/bin/env python3
"""Stable Diffusion 3.5 fixtures and goldens (never edit by hand). Run from the repository root, in
the venv of make_fixtures.py, after make_sdxl_fixtures.py (sd3-tiny links sdxl-tiny's CLIP tokenizers
and its bigG-like text encoder; about 10 s on 2 cores):

    /root/.cache/webdiffusion/venv/bin/python scripts/make_sd3_fixtures.py

Everything is built from configs with random (seeded, perturbed) weights, stored in float16 and
computed in float32 (from the f16 values) on the CPU with one thread; a re-run with the versions of
scripts/requirements.txt gives byte-identical files. Reads goldens/prompts.json and goldens/
pipeline.json (prompt, negative prompt) of make_fixtures.py and the folder sdxl-tiny/ of
make_sdxl_fixtures.py; reuses their helpers through fixtures_common.py.

What is written
---------------
tests/fixtures/sd3-tiny/       SD3.5-like pipeline folder as StableDiffusion3Pipeline.save_pretrained
                               writes it (hub layout), random weights, every network FLOAT16 in the
                               plain file names (model.safetensors / diffusion_pytorch_model.safetensors)
    model_index.json              StableDiffusion3Pipeline (image_encoder / feature_extractor [null, null]
                                  as save_pretrained writes them)
    transformer/                  SD3Transformer2DModel (MMDiT): sample_size 16, patch 2, 16 -> 16
                                  channels, 3 layers, 4 heads x 8 (inner 32), joint_attention_dim 96,
                                  caption_projection_dim 32, pooled_projection_dim 64, pos_embed_max_size
                                  24, dual_attention_layers (0,) (SD3.5 Medium's extra attention), qk_norm
                                  "rms_norm" (its weights x3 after the perturbation: sharper attention, so
                                  the text conditioning matters); the last block is context_pre_only. The file holds the
                                  persistent buffer pos_embed.pos_embed [1, 24*24, 32] (2-D sin-cos, kept float32)
                                  like the hub checkpoints.
    vae/                          AutoencoderKL (16,32,32) -> factor 4, 16 latent channels,
                                  scaling_factor 1.5305, shift_factor 0.0609, no quant_conv /
                                  post_quant_conv (SD3's VAE), force_upcast true
    text_encoder/                 CLIPTextModelWithProjection (CLIP-L-like): hidden 32, 3 layers, 4 heads,
                                  intermediate 64, quick_gelu, projection_dim 24, vocab 49408, keys
                                  text_model.* + text_projection.weight [24,32]. eos_token_id 49407 as
                                  sdxl-tiny's encoders (the hub's SD3 CLIP configs say 2, the legacy value
                                  that makes transformers pool at argmax(ids); with 49407 it pools at the
                                  first id 49407: the same position for every CLIP prompt, since 49407 is
                                  the largest id; checked for every prompt)
    text_encoder_2/*              relative symbolic links to sdxl-tiny/text_encoder_2/ (its bigG-like
                                  CLIPTextModelWithProjection is exactly SD3's: hidden 48, 4 layers, 4 heads,
                                  gelu, intermediate 96, projection_dim 40; FLOAT16). Pooled width 24 + 40 =
                                  64 = pooled_projection_dim; context width 32 + 48 = 80, zero-padded to 96.
    tokenizer/*, tokenizer_2/*    relative symbolic links to sdxl-tiny/tokenizer{,_2}/ (the CLIP BPE as
                                  vocab.json + merges.txt; tokenizer_2 pads with "!" = id 0). Links, not
                                  copies: the same bytes, 3 MB less.
    text_encoder_3/               T5EncoderModel: vocab 365 (= tokenizer_3's size), d_model 96, d_kv 8,
                                  d_ff 64, 2 layers, 4 heads, 32 relative-attention buckets (max distance
                                  128, bias only in layer 0), feed_forward_proj "gated-gelu" (gelu_new =
                                  tanh approximation), RMS layer norms eps 1e-6, dropout 0; FLOAT16,
                                  keys as transformers 5 saves them (shared.weight + encoder.*)
    tokenizer_3/                  T5 tokenizer: tokenizer.json (a SentencePiece Unigram trained here with
                                  the `tokenizers` library, see TOKENIZER_3 below) + tokenizer_config.json
                                  (T5Tokenizer, model_max_length 512, extra_ids 0) + special_tokens_map.json.
                                  <pad> = 0, </s> = 1, <unk> = 2. No normalizer (T5's Precompiled
                                  SentencePiece charsmap cannot be made without sentencepiece, and
                                  transformers 5's T5TokenizerFast rebuilds the tokenizer from the vocab
                                  and ignores any other normalizer of tokenizer.json, so none is the only
                                  choice with which both agree); pre-tokenizer WhitespaceSplit then
                                  Metaspace("▁", prepend_scheme "always", split); post-processor
                                  "$A </s>". Checked: T5TokenizerFast.from_pretrained(folder) gives the
                                  raw tokenizers.Tokenizer's ids for every prompt.
    scheduler/scheduler_config.json   FlowMatchEulerDiscreteScheduler, num_train_timesteps 1000, shift 3.0
                                  (SD3.5's hub values)
tests/fixtures/sd3-tiny-no-t5/  the same pipeline without T5 (as loading with text_encoder_3=None)
    model_index.json              sd3-tiny's with "text_encoder_3" and "tokenizer_3": [null, null]
    {scheduler,text_encoder,text_encoder_2,tokenizer,tokenizer_2,transformer,vae}/*   relative symbolic
                                  links to the files of sd3-tiny/ (real directories, one link per file)
tests/fixtures/goldens/sd3-tiny-img2img-input.png   8-bit RGB 64x64 init image for img2img
tests/fixtures/goldens/sd3-tiny.safetensors   float32 (int64 for token ids) reference tensors, computed
                               from the folders as reloaded from disk (i = index in prompts.json):
    input_ids.{i}, input_ids_2.{i}   int64 [1,77]: tokenizer / tokenizer_2 (padding="max_length",
                                  max_length=77, truncation)
    input_ids_3.{i}               int64 [1,256]: tokenizer_3(prompt_i, padding="max_length", max_length=256,
                                  truncation=True, add_special_tokens=True): pieces (at most 255), </s>,
                                  <pad>... (prompt 4 is 312 pieces long: truncated; prompt 3's emoji are
                                  one fused <unk>)
    input_ids_3.msl32.0           int64 [1,32]: prompt 0 with max_length 32
    t5.hidden.{0,1}               [1,256,96] text_encoder_3(input_ids_3.i).last_hidden_state (no attention
                                  mask: the pads are attended to, as in the pipeline)
    clip_l.hidden.0, clip_l.pooled.0   [1,77,32] text_encoder(ids, output_hidden_states=True)
                                  .hidden_states[-2] (no final LayerNorm), [1,24] .text_embeds
    clip_g.hidden.0, clip_g.pooled.0   [1,77,48], [1,40]: the same for text_encoder_2
    prompt_embeds.{i}             [1,333,96] StableDiffusion3Pipeline.encode_prompt(prompt_i, prompt_2=None,
                                  prompt_3=None, do_classifier_free_guidance=False) = cat on tokens of
                                  (pad(cat(clip_l.hidden, clip_g.hidden), 80 -> 96 with zeros), t5.hidden)
    pooled_prompt_embeds.{i}      [1,64] cat(clip_l.pooled, clip_g.pooled)
    prompt_embeds.msl32.0         [1,109,96] prompt 0 with max_sequence_length=32 (77 + 32 tokens)
    no_t5.prompt_embeds.0         [1,333,96] from sd3-tiny-no-t5: diffusers 0.42 uses zeros of shape
                                  [1, max_sequence_length = 256, joint_attention_dim] for T5 (not 77), so
                                  the shape is the same as with T5, rows 77.. all zero
    no_t5.pooled_prompt_embeds.0  [1,64] (= pooled_prompt_embeds.0)
    negative.empty.prompt_embeds / .pooled_prompt_embeds   [1,333,96] / [1,64] encode_prompt with CFG and
                                  negative_prompt="" (encoded like a prompt; negative_prompt=None is the
                                  same: SD3 has no force_zeros_for_empty_prompt)
    negative.text.*               negative_prompt = goldens/pipeline.json's "blurry, low quality"
    transformer.hidden_states     [2,16,16,16] randn
    transformer.encoder_hidden_states   [2,333,96] randn
    transformer.pooled_projections      [2,64] randn
    transformer.timestep          [2] (999, 250), one timestep per batch row
    transformer.out               [2,16,16,16] transformer(hidden_states, encoder_hidden_states,
                                  pooled_projections, timestep).sample
    transformer.out_skip1         [2,16,16,16] the same with skip_layers=[1] (block 1 left out, as
                                  skip-layer guidance runs it)
    transformer.hidden_states_ns  [1,16,12,16] randn; transformer.out_ns: row 0 of the conditions,
                                  timestep 500 (non-square: 6x8 patches, pos_embed crop top 9, left 8)
    transformer.hidden_states_big [1,16,24,20] randn; transformer.out_big: the same conditions
                                  (12x10 patches, crop top 6, left 7 of the 24x24 table)
    vae.latents                   [1,16,16,16] randn (pipeline latent space)
    vae.decoded                   [1,3,64,64] vae.decode(latents / 1.5305 + 0.0609).sample, not clamped
    vae.posterior_mean            [1,16,16,16] vae.encode(png / 255 * 2 - 1).latent_dist.mean (raw: no
                                  shift, no scaling; the pixels as VaeImageProcessor makes them in float32,
                                  within an ulp of png / 127.5 - 1)
    scheduler.timesteps.{n}, scheduler.sigmas.{n}   n = 1, 4, 8, 28: set_timesteps(n) of the shipped
                                  config ([n] timesteps, [n+1] sigmas ending with 0)
    txt2img.latents               [1,16,16,16] randn, passed as `latents=` (64x64 runs)
    txt2img.latents_ns            [1,16,12,16] randn (height 48, width 64)
    {run}.latents, {run}.image    output_type="latent" (the final latents, before unscaling) and the
                                  decoded image [H,W,3] in [0,1] (= output_type="np": (vae.decode(latents
                                  / 1.5305 + 0.0609).sample / 2 + 0.5).clamp(0, 1)). Runs (prompt of
                                  pipeline.json; FlowMatchEulerDiscreteScheduler):
        euler                         sd3-tiny, 4 steps, guidance 5, negative "blurry, low quality",
                                      txt2img.latents
        euler_no_t5                   the same on sd3-tiny-no-t5
        euler_nocfg                   guidance 1 (no CFG), no negative, 4 steps
        euler_ns                      as euler at height 48, width 64, txt2img.latents_ns
        turbo                         guidance 0 (no CFG), no negative, 4 steps, as SD3.5 Large Turbo is
                                      run (the same computation as euler_nocfg: bit-identical, checked)
        euler_slg                     skip-layer guidance, skip_guidance_layers=[1] with the pipeline's
                                      defaults (scale 2.8, start 0.01, stop 0.2), 8 steps (NOT 4: at 4 steps
                                      the window i > 4*0.01 and i < 4*0.2 holds for no step, and the run
                                      equals euler bit for bit, checked); at 8 steps it fires at step 1 only
        euler_slg_window              skip_guidance_layers=[0, 2] (the dual-attention block and the
                                      context-pre-only last block), scale 1.5, start 0.2, stop 0.8, 4 steps:
                                      fires at steps 1, 2, 3 (0.8 < i < 3.2)
    img2img.noise                 [1,16,16,16] randn: the noise StableDiffusion3Img2ImgPipeline adds
    img2img.init_latents          (vae.posterior_mean - 0.0609) * 1.5305
                                  (retrieve_latents forced to sample_mode="argmax")
    img2img.start_latents         scheduler.scale_noise(init_latents, timesteps[t_start], noise) = sigma *
                                  noise + (1 - sigma) * init_latents, sigma = sigmas[t_start]
    img2img.latents, img2img.image   strength 0.6, 8 steps (t_start 3: 5 run), guidance 5, negative
                                  prompt, init image goldens/sd3-tiny-img2img-input.png
tests/fixtures/goldens/sd3.json   the settings of every golden: configs, tokenizer_3 training, prompts,
                                  the encode_prompt layout and no-T5 shape, each run's timesteps / sigmas
                                  and skip-layer-guidance steps, img2img t_start, versions
"""

import os

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # before tokenizers is imported (via fixtures_common)

import copy  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixtures_common as fc  # noqa: E402  (one thread, deterministic algorithms, quiet logs)
import make_sdxl_fixtures as sdxl  # noqa: E402  (sdxl-tiny's text encoder shapes)

import diffusers  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
)
from diffusers.models.embeddings import get_2d_sincos_pos_embed  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import decoders, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

mf = fc.mf
GEN = "scripts/make_sd3_fixtures.py"
NAME, NO_T5, SDXL = "sd3-tiny", "sd3-tiny-no-t5", "sdxl-tiny"
OUT, OUT_NO_T5, SDXL_DIR = fc.FIX / NAME, fc.FIX / NO_T5, fc.FIX / SDXL
GOLDEN = fc.GOLDENS / "sd3-tiny.safetensors"
SETTINGS = fc.GOLDENS / "sd3.json"
INIT_PNG = fc.GOLDENS / "sd3-tiny-img2img-input.png"
SEED = 10300
# folders of sd3-tiny that are links to sdxl-tiny's files (the same networks / tokenizers)
FROM_SDXL = ["text_encoder_2", "tokenizer", "tokenizer_2"]
SHARED = ["scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae"]

PROMPTS = json.load(open(fc.GOLDENS / "prompts.json", encoding="utf-8"))
PROMPT, NEGATIVE = fc.PROMPT, fc.NEGATIVE
STEPS, GUIDANCE = 4, 5.0
TURBO_GUIDANCE = 0.0
I2I_STEPS, I2I_STRENGTH = 8, 0.6
SCHED_STEPS = (1, 4, 8, 28)
TRANSFORMER_TIMESTEPS = [999.0, 250.0]
SIZE, SIZE_NS = (64, 64), (48, 64)  # (height, width) in pixels
BIG_LATENTS = (24, 20)  # transformer.hidden_states_big (latent height, width)
T5_LENGTH, T5_SHORT = 256, 32
CLIP_LENGTH = 77
# skip-layer guidance runs: (key, steps, settings); the pipeline's defaults are scale 2.8, start 0.01, stop 0.2
SLG_DEFAULTS = dict(skip_layer_guidance_scale=2.8, skip_layer_guidance_start=0.01, skip_layer_guidance_stop=0.2)
SLG_RUNS = [
    ("euler_slg", 8, dict(skip_guidance_layers=[1])),
    ("euler_slg_window", 4, dict(skip_guidance_layers=[0, 2], skip_layer_guidance_scale=1.5,
                                 skip_layer_guidance_start=0.2, skip_layer_guidance_stop=0.8)),
]

JOINT, POOLED = 96, 24 + 40
TRANSFORMER = dict(
    sample_size=16,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=3,
    attention_head_dim=8,
    num_attention_heads=4,
    joint_attention_dim=JOINT,
    caption_projection_dim=32,
    pooled_projection_dim=POOLED,
    pos_embed_max_size=24,
    dual_attention_layers=(0,),
    qk_norm="rms_norm",
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    latent_channels=16,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=64,
    scaling_factor=1.5305,
    shift_factor=0.0609,
    use_quant_conv=False,
    use_post_quant_conv=False,
    force_upcast=True,
)
# sdxl-tiny's CLIP-L shape with a projection; its text_encoder_2 as is (checked against its
# config.json)
TEXT = dict(sdxl.TEXT, projection_dim=24)
TEXT_2 = sdxl.TEXT_2
T5 = dict(  # vocab_size: the trained tokenizer's size
    d_model=JOINT,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    dropout_rate=0.0,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
WEIGHT_DTYPE = torch.float16
QK_NORM_BOOST = 3.0

# scheduler_config.json of stabilityai/stable-diffusion-3.5-medium / -large / -large-turbo
SCHED = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": diffusers.__version__,
    "num_train_timesteps": 1000,
    "shift": 3.0,
}

# ----------------------------------------------------------------------------------------
# tokenizer_3: a SentencePiece-style Unigram trained here
# ----------------------------------------------------------------------------------------

TOKENIZER_3 = dict(vocab_size=400, max_piece_length=16, special_tokens=["<pad>", "</s>", "<unk>"],
                   unk_token="<unk>", score_decimals=6)
# written for this corpus; with the prompts (characters outside the Basic Multilingual Plane, i.e.
# the emoji of prompt 3, removed so that they are unknown to the vocabulary as to real T5's)
CORPUS = [
    "a small red boat floats on a quiet lake under a pale morning sky",
    "the old lighthouse keeper walks along the rocky shore at sunset",
    "a bowl of ripe oranges and green apples on a wooden kitchen table",
    "portrait of a young woman with curly hair, soft window light, film photograph",
    "a snowy mountain village at night, warm lights glowing in the windows",
    "an astronaut floating above the earth, stars shining in the dark",
    "a cat sleeping on a stack of books next to a steaming cup of tea",
    "watercolor painting of a forest path in autumn, golden leaves falling",
    "a futuristic city skyline with flying cars and neon signs in the rain",
    "close-up photograph of a dragonfly resting on a blade of grass, morning dew",
    "an ancient stone bridge crossing a river in a misty green valley",
    "a bustling market street full of colorful fruit stalls and happy people",
    "a golden retriever puppy playing with a ball in a sunny garden",
    "the interior of a cozy library with tall shelves, a fireplace and leather chairs",
    "a sailing ship on stormy waves, dramatic clouds, oil on canvas",
    "minimalist poster of a mountain range, flat colors, clean lines",
    "a robot reading a newspaper in a quiet cafe, cinematic lighting",
    "children flying kites on a windy hill beside the ocean",
    "a plate of fresh pasta with tomatoes, basil and grated cheese",
    "a detailed pencil sketch of an owl perched on a branch",
    "a desert highway stretching toward the horizon under a blue sky",
    "a field of sunflowers in summer, bees buzzing between the flowers",
    "a medieval castle on a cliff above the sea, banners waving",
    "a glass jar filled with glowing fireflies on a dark porch",
    "a train crossing a snowy bridge between tall pine trees",
    "an elderly couple dancing in the kitchen, warm evening light",
    "a bright red vintage car parked in front of a small diner",
    "the surface of the moon with the earth rising in the distance",
    "a koi pond in a japanese garden with a wooden bridge and maple trees",
    "a chef slicing vegetables in a busy restaurant kitchen",
    "high quality, sharp focus, highly detailed, beautiful composition",
    "three white horses running through shallow water at dawn",
]


def t5_pipeline_parts():
    """transformers 5's T5Tokenizer pipeline (rebuilt by it whatever tokenizer.json says)."""
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                   pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    dec = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    post = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return pre, dec, post


def canonical_pieces(pieces):
    """The trainer gives the characters of the corpus that no trained piece kept the scores min_score,
    min_score + 1e-4, min_score + 2e-4, ... in hash-set order (random from run to run): give them those
    scores in code point order instead, then sort all pieces by score (descending), ties by piece."""
    m = min(s for _, s in pieces)
    chain, k = [], 0
    while True:
        at = [i for i, (p, s) in enumerate(pieces) if len(p) == 1 and abs(s - (m + k * 1e-4)) < 5e-7]
        if not at:
            break
        assert len(at) == 1, ("ambiguous missing-character chain", [pieces[i] for i in at])
        chain.append(at[0])
        k += 1
    chars = sorted(pieces[i][0] for i in chain)
    scores = sorted((pieces[i][1] for i in chain), reverse=True)
    out = [ps for i, ps in enumerate(pieces) if i not in chain] + list(zip(chars, scores))
    return sorted(out, key=lambda ps: (-ps[1], ps[0]))


def train_tokenizer_3():
    """Unigram on CORPUS + the prompts. The trainer's scores vary in their last bits from run to run
    (hash-map order of float sums), and it scores the characters it had to add back in hash-set order,
    so the scores are rounded and made canonical (canonical_pieces) before the tokenizer is rebuilt
    from that list."""
    corpus = CORPUS + ["".join(c for c in p if ord(c) < 0x10000) for p in PROMPTS]
    pre, dec, post = t5_pipeline_parts()
    raw = tokenizers.Tokenizer(tokenizers.models.Unigram())
    raw.pre_tokenizer = pre
    trainer = trainers.UnigramTrainer(
        vocab_size=TOKENIZER_3["vocab_size"], special_tokens=TOKENIZER_3["special_tokens"],
        unk_token=TOKENIZER_3["unk_token"], max_piece_length=TOKENIZER_3["max_piece_length"], show_progress=False)
    raw.train_from_iterator(corpus, trainer)
    vocab = json.loads(raw.to_str())["model"]["vocab"]
    specials = TOKENIZER_3["special_tokens"]
    assert [p for p, _ in vocab[:3]] == specials, vocab[:3]
    pieces = canonical_pieces([(p, round(float(s), TOKENIZER_3["score_decimals"])) for p, s in vocab[3:]])
    vocab = [(p, 0.0) for p in specials] + pieces
    tok = tokenizers.Tokenizer(tokenizers.models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.add_special_tokens([tokenizers.AddedToken(p, special=True, normalized=False) for p in specials])
    tok.pre_tokenizer, tok.decoder, tok.post_processor = pre, dec, post
    assert [tok.token_to_id(p) for p in specials] == [0, 1, 2]
    return tok, len(corpus)


def special_token(content):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def write_tokenizer_3(folder, tok):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    specials = TOKENIZER_3["special_tokens"]
    # the form of SD3's tokenizer_3/tokenizer_config.json, without the 100 <extra_id_N> sentinels
    fc.write_json(folder / "tokenizer_config.json", {
        "add_prefix_space": True,
        "added_tokens_decoder": {str(i): special_token(p) for i, p in enumerate(specials)},
        "additional_special_tokens": [],
        "clean_up_tokenization_spaces": True,
        "eos_token": "</s>",
        "extra_ids": 0,
        "legacy": True,
        "model_max_length": 512,
        "pad_token": "<pad>",
        "sp_model_kwargs": {},
        "tokenizer_class": "T5Tokenizer",
        "unk_token": "<unk>",
    })
    fc.write_json(folder / "special_tokens_map.json", {
        "eos_token": {k: v for k, v in special_token("</s>").items() if k != "special"},
        "pad_token": {k: v for k, v in special_token("<pad>").items() if k != "special"},
        "unk_token": {k: v for k, v in special_token("<unk>").items() if k != "special"},
    })


# ----------------------------------------------------------------------------------------
# models and folders
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def boost_attention(transformer, factor=QK_NORM_BOOST):
    """With random weights the joint attention is nearly uniform over the 64 + 333 tokens, so the text
    barely moves the output (0.9 % when swapping the batch rows of encoder_hidden_states). Scaling the
    RMS q/k norm weights sharpens it (about 8 %), and a missing or misplaced q/k norm shows up clearly."""
    for name, p in transformer.named_parameters():
        if name.endswith(("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight")):
            p.mul_(factor)


def build_models(t5_vocab):
    torch.manual_seed(SEED + 1)
    transformer = SD3Transformer2DModel(**TRANSFORMER).eval()
    fc.perturb(transformer, SEED + 2)
    boost_attention(transformer)
    fc.round_to(transformer, WEIGHT_DTYPE)

    torch.manual_seed(SEED + 3)
    vae = AutoencoderKL(**VAE).eval()
    fc.perturb(vae, SEED + 4)
    fc.round_to(vae, WEIGHT_DTYPE)

    torch.manual_seed(SEED + 5)
    text = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT)).eval()
    fc.perturb(text, SEED + 6)
    fc.round_to(text, WEIGHT_DTYPE)

    text_2 = CLIPTextModelWithProjection.from_pretrained(SDXL_DIR / "text_encoder_2", dtype=torch.float32).eval()
    for k, v in TEXT_2.items():
        assert getattr(text_2.config, k) == v, (k, getattr(text_2.config, k), v)

    torch.manual_seed(SEED + 7)
    text_3 = T5EncoderModel(T5Config(vocab_size=t5_vocab, **T5)).eval()
    fc.perturb(text_3, SEED + 8)
    fc.round_to(text_3, WEIGHT_DTYPE)
    return transformer, vae, text, text_2, text_3


def link_files(src_dir, dst_dir):
    """dst_dir as a real directory with one relative symbolic link per file of src_dir."""
    dst_dir.mkdir(parents=True)
    for f in sorted(src_dir.iterdir()):
        assert f.is_file(), f
        os.symlink(os.path.relpath(src_dir / f.name, dst_dir), dst_dir / f.name)


def clip_tokenizers():
    return [CLIPTokenizer.from_pretrained(SDXL_DIR / sub) for sub in ("tokenizer", "tokenizer_2")]


def write_folder(transformer, vae, text, text_2, text_3, tok3):
    if OUT.exists():
        shutil.rmtree(OUT)
    tmp = Path(tempfile.mkdtemp(prefix="sd3-fixtures-"))
    try:
        write_tokenizer_3(tmp / "tok3", tok3)
        t3 = T5TokenizerFast.from_pretrained(tmp / "tok3")
        tok, tok_2 = clip_tokenizers()
        for m in (transformer, vae, text, text_2, text_3):
            m.to(WEIGHT_DTYPE)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler.from_config(SCHED), vae=vae,
            text_encoder=text, tokenizer=tok, text_encoder_2=text_2, tokenizer_2=tok_2,
            text_encoder_3=text_3, tokenizer_3=t3,
        )
        pipe.save_pretrained(tmp / "pipe", safe_serialization=True)
        for m in (transformer, vae, text, text_2, text_3):
            m.to(torch.float32)
        shutil.move(str(tmp / "pipe"), str(OUT))
    finally:
        shutil.rmtree(tmp)
    # pos_embed.pos_embed is a persistent buffer, a fixed function of the config (the 2-D sin-cos
    # table): stored in float32 as diffusers computes it, so that no golden carries its f16 rounding.
    path = OUT / "transformer" / "diffusion_pytorch_model.safetensors"
    sd = load_file(path)
    table = get_2d_sincos_pos_embed(
        TRANSFORMER["num_attention_heads"] * TRANSFORMER["attention_head_dim"], TRANSFORMER["pos_embed_max_size"],
        base_size=TRANSFORMER["sample_size"] // TRANSFORMER["patch_size"], interpolation_scale=1, output_type="pt",
    ).float().unsqueeze(0)
    assert sd["pos_embed.pos_embed"].shape == table.shape
    sd["pos_embed.pos_embed"] = table.contiguous()
    save_file(sd, path, metadata={"format": "pt"})
    with torch.no_grad():
        transformer.pos_embed.pos_embed.copy_(table)  # the in-memory model as the file now holds it

    for sub in ("transformer", "vae"):
        sd = load_file(OUT / sub / "diffusion_pytorch_model.safetensors")
        assert all(v.dtype == WEIGHT_DTYPE for k, v in sd.items() if k != "pos_embed.pos_embed"), sub
    assert "pos_embed.pos_embed" in load_file(OUT / "transformer" / "diffusion_pytorch_model.safetensors")
    index = json.load(open(OUT / "model_index.json"))
    assert index["_class_name"] == "StableDiffusion3Pipeline", index
    # transformers 5's T5TokenizerFast is an alias of T5Tokenizer, whose name save_pretrained writes; the
    # hub repos (saved with transformers 4) say T5TokenizerFast, which diffusers loads the same way
    assert index["tokenizer_3"] == ["transformers", "T5Tokenizer"], index
    index["tokenizer_3"] = ["transformers", "T5TokenizerFast"]
    fc.write_json(OUT / "model_index.json", index)
    for sub in ("text_encoder", "text_encoder_3"):
        sd = load_file(OUT / sub / "model.safetensors")
        assert all(v.dtype == WEIGHT_DTYPE for v in sd.values()), sub
        cfg = json.load(open(OUT / sub / "config.json"))
        assert cfg.get("dtype", cfg.get("torch_dtype")) == "float16", cfg
    sd = load_file(OUT / "text_encoder" / "model.safetensors")
    assert all(k.startswith(("text_model.", "text_projection.")) for k in sd) and "text_projection.weight" in sd
    # the same networks / tokenizers as sdxl-tiny: links instead of copies
    for sub in FROM_SDXL:
        shutil.rmtree(OUT / sub)
        link_files(SDXL_DIR / sub, OUT / sub)
    shutil.rmtree(OUT / "tokenizer_3")
    write_tokenizer_3(OUT / "tokenizer_3", tok3)
    fc.write_json(OUT / "scheduler" / "scheduler_config.json", SCHED)


def write_no_t5_folder():
    if OUT_NO_T5.exists() or OUT_NO_T5.is_symlink():
        shutil.rmtree(OUT_NO_T5)
    OUT_NO_T5.mkdir()
    index = json.load(open(OUT / "model_index.json"))
    index["text_encoder_3"] = [None, None]
    index["tokenizer_3"] = [None, None]
    fc.write_json(OUT_NO_T5 / "model_index.json", index)
    for sub in SHARED:
        link_files(OUT / sub, OUT_NO_T5 / sub)


def load(folder, cls=StableDiffusion3Pipeline, **kwargs):
    pipe = cls.from_pretrained(folder, dtype=torch.float32, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_reloaded(pipe, transformer, vae, text, text_2, text_3):
    mf.check_params_equal(pipe.transformer, transformer, "transformer")
    mf.check_params_equal(pipe.vae, vae, "vae")
    mf.check_params_equal(pipe.text_encoder, text, "text_encoder")
    mf.check_params_equal(pipe.text_encoder_2, text_2, "text_encoder_2")
    mf.check_params_equal(pipe.text_encoder_3, text_3, "text_encoder_3")
    assert type(pipe.scheduler) is FlowMatchEulerDiscreteScheduler
    assert pipe.tokenizer.pad_token == "<|endoftext|>" and pipe.tokenizer_2.pad_token == "!"
    assert pipe.tokenizer_max_length == CLIP_LENGTH and pipe.vae_scale_factor == 4 and pipe.patch_size == 2
    t3 = pipe.tokenizer_3
    assert isinstance(t3, T5TokenizerFast) and t3.model_max_length == 512
    assert (t3.pad_token, t3.eos_token, t3.unk_token) == ("<pad>", "</s>", "<unk>")
    assert (t3.pad_token_id, t3.eos_token_id, t3.unk_token_id) == (0, 1, 2)
    assert len(t3) == pipe.text_encoder_3.config.vocab_size, (len(t3), pipe.text_encoder_3.config.vocab_size)
    assert not any("extra_id" in str(t) for t in t3.all_special_tokens), t3.all_special_tokens


# ----------------------------------------------------------------------------------------
# goldens
# ----------------------------------------------------------------------------------------


def clip_ids(tok, prompt):
    return tok(prompt, padding="max_length", max_length=CLIP_LENGTH, truncation=True, return_tensors="pt").input_ids


def t5_ids(tok, prompt, length=T5_LENGTH):
    return tok(prompt, padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
               return_tensors="pt").input_ids


def raw_t5_ids(raw, prompt, length):
    """What the crate does with tokenizer.json: the pieces, cut to length - 1, </s>, <pad>..."""
    ids = raw.encode(prompt, add_special_tokens=False).ids[:length - 1] + [1]
    return torch.tensor([ids + [0] * (length - len(ids))], dtype=torch.int64)


def np_image(vae, latents):
    """What output_type="np" returns for SD3, as a float32 [H,W,3] tensor in [0,1] (batch 1)."""
    image = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample
    return (image / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).contiguous()


def clip_by_hand(encoder, ids):
    o = encoder(ids, output_hidden_states=True)
    assert len(o.hidden_states) == encoder.config.num_hidden_layers + 1
    last = encoder.text_model.final_layer_norm(o.hidden_states[-1])
    first_eos = int((ids[0] == 49407).int().argmax())
    assert first_eos == int(ids[0].argmax()), "first 49407 == argmax(ids) (legacy eos_token_id 2 pooling)"
    manual = encoder.text_projection(last[:, first_eos])
    assert torch.allclose(manual, o.text_embeds, atol=1e-6, rtol=0), "pooled by hand"
    return o.hidden_states[-2], o.text_embeds


def by_hand(pipe, prompt, length=T5_LENGTH):
    ids, ids_2 = clip_ids(pipe.tokenizer, prompt), clip_ids(pipe.tokenizer_2, prompt)
    h1, p1 = clip_by_hand(pipe.text_encoder, ids)
    h2, p2 = clip_by_hand(pipe.text_encoder_2, ids_2)
    clip = torch.nn.functional.pad(torch.cat([h1, h2], dim=-1), (0, JOINT - h1.shape[-1] - h2.shape[-1]))
    if pipe.text_encoder_3 is not None:
        ids_3 = t5_ids(pipe.tokenizer_3, prompt, length)
        t5 = pipe.text_encoder_3(ids_3).last_hidden_state
    else:
        ids_3, t5 = None, torch.zeros(1, length, JOINT)
    return dict(ids=ids, ids_2=ids_2, ids_3=ids_3, h1=h1, p1=p1, h2=h2, p2=p2, t5=t5,
                embeds=torch.cat([clip, t5], dim=-2), pooled=torch.cat([p1, p2], dim=-1))


def encode(pipe, prompt, **kw):
    return pipe.encode_prompt(prompt, prompt_2=None, prompt_3=None, device="cpu", num_images_per_prompt=1, **kw)


@torch.no_grad()
def text_goldens(pipe, no_t5, raw_t5, out, notes):
    tok3 = pipe.tokenizer_3
    notes["t5_ids"] = {}
    for i, prompt in enumerate(PROMPTS):
        h = by_hand(pipe, prompt)
        # T5TokenizerFast (what the pipeline uses) == the raw tokenizers.Tokenizer of tokenizer.json
        assert tok3(prompt).input_ids == raw_t5.encode(prompt).ids, f"T5TokenizerFast != tokenizers, prompt {i}"
        assert torch.equal(h["ids_3"], raw_t5_ids(raw_t5, prompt, T5_LENGTH)), f"t5 framing, prompt {i}"
        n = len(raw_t5.encode(prompt, add_special_tokens=False).ids)
        notes["t5_ids"][str(i)] = {"pieces": n, "truncated": n > T5_LENGTH - 1,
                                   "unk": int((h["ids_3"] == 2).sum()),
                                   "tokens": raw_t5.encode(prompt).tokens[:40]}
        pe, ne, pp, npp = encode(pipe, prompt, do_classifier_free_guidance=False)
        assert ne is None and npp is None
        assert torch.equal(pe, h["embeds"]) and torch.equal(pp, h["pooled"]), f"encode_prompt != by hand, prompt {i}"
        assert pe.shape == (1, CLIP_LENGTH + T5_LENGTH, JOINT) and pp.shape == (1, POOLED)
        out[f"input_ids.{i}"], out[f"input_ids_2.{i}"], out[f"input_ids_3.{i}"] = h["ids"], h["ids_2"], h["ids_3"]
        out[f"prompt_embeds.{i}"], out[f"pooled_prompt_embeds.{i}"] = pe, pp
        if i < 2:
            out[f"t5.hidden.{i}"] = h["t5"]
        if i == 0:
            out["clip_l.hidden.0"], out["clip_l.pooled.0"] = h["h1"], h["p1"]
            out["clip_g.hidden.0"], out["clip_g.pooled.0"] = h["h2"], h["p2"]
        print(f"  prompt {i}: ids_3 {h['ids_3'][0, :12].tolist()}... ({n} pieces)")
    assert notes["t5_ids"]["4"]["truncated"] and notes["t5_ids"]["3"]["unk"] == 1, notes["t5_ids"]

    # a shorter T5 sequence
    h = by_hand(pipe, PROMPTS[0], T5_SHORT)
    pe, _, pp, _ = encode(pipe, PROMPTS[0], do_classifier_free_guidance=False, max_sequence_length=T5_SHORT)
    assert torch.equal(pe, h["embeds"]) and torch.equal(pp, out["pooled_prompt_embeds.0"])
    assert pe.shape == (1, CLIP_LENGTH + T5_SHORT, JOINT)
    assert torch.equal(h["ids_3"], raw_t5_ids(raw_t5, PROMPTS[0], T5_SHORT))
    out["input_ids_3.msl32.0"], out["prompt_embeds.msl32.0"] = h["ids_3"], pe

    # without T5: zeros [1, max_sequence_length, joint_attention_dim] in place of T5's states
    pe, _, pp, _ = encode(no_t5, PROMPTS[0], do_classifier_free_guidance=False)
    assert pe.shape == (1, CLIP_LENGTH + T5_LENGTH, JOINT), pe.shape
    assert not pe[:, CLIP_LENGTH:].any() and torch.equal(pe[:, :CLIP_LENGTH], out["prompt_embeds.0"][:, :CLIP_LENGTH])
    assert torch.equal(pp, out["pooled_prompt_embeds.0"])
    out["no_t5.prompt_embeds.0"], out["no_t5.pooled_prompt_embeds.0"] = pe, pp
    pe32, _, _, _ = encode(no_t5, PROMPTS[0], do_classifier_free_guidance=False, max_sequence_length=T5_SHORT)
    notes["no_t5"] = {
        "prompt_embeds_shape": list(pe.shape),
        "prompt_embeds_shape_max_sequence_length_32": list(pe32.shape),
        "t5_part": "zeros of shape [batch, max_sequence_length (default 256), joint_attention_dim] "
                   "(diffusers 0.42 _get_t5_prompt_embeds; not tokenizer_max_length 77)",
    }

    # negative prompts (prompt 0, with classifier-free guidance)
    for key, neg in (("empty", ""), ("text", NEGATIVE)):
        pe, ne, pp, npp = encode(pipe, PROMPTS[0], do_classifier_free_guidance=True, negative_prompt=neg)
        assert torch.equal(pe, out["prompt_embeds.0"]) and torch.equal(pp, out["pooled_prompt_embeds.0"])
        h = by_hand(pipe, neg)
        assert torch.equal(ne, h["embeds"]) and torch.equal(npp, h["pooled"]), key
        out[f"negative.{key}.prompt_embeds"], out[f"negative.{key}.pooled_prompt_embeds"] = ne, npp
    _, ne, _, npp = encode(pipe, PROMPTS[0], do_classifier_free_guidance=True, negative_prompt=None)
    assert torch.equal(ne, out["negative.empty.prompt_embeds"]) and torch.equal(
        npp, out["negative.empty.pooled_prompt_embeds"]), "negative None == ''"
    assert torch.equal(out["negative.empty.prompt_embeds"], out["prompt_embeds.1"])


@torch.no_grad()
def transformer_vae_goldens(pipe, out, notes):
    tr, vae = pipe.transformer, pipe.vae
    g = fc.gen(SEED + 10)
    h = TRANSFORMER["sample_size"]
    hs = torch.randn(2, 16, h, h, generator=g)
    ehs = torch.randn(2, CLIP_LENGTH + T5_LENGTH, JOINT, generator=g)
    pooled = torch.randn(2, POOLED, generator=g)
    ts = torch.tensor(TRANSFORMER_TIMESTEPS, dtype=torch.float32)
    out.update({"transformer.hidden_states": hs, "transformer.encoder_hidden_states": ehs,
                "transformer.pooled_projections": pooled, "transformer.timestep": ts})
    call = dict(encoder_hidden_states=ehs, pooled_projections=pooled, timestep=ts)
    out["transformer.out"] = tr(hs, **call).sample
    out["transformer.out_skip1"] = tr(hs, **call, skip_layers=[1]).sample
    hn, wn = SIZE_NS[0] // 4, SIZE_NS[1] // 4
    row0 = dict(encoder_hidden_states=ehs[:1], pooled_projections=pooled[:1], timestep=torch.tensor([500.0]))
    out["transformer.hidden_states_ns"] = torch.randn(1, 16, hn, wn, generator=g)
    out["transformer.out_ns"] = tr(out["transformer.hidden_states_ns"], **row0).sample
    out["transformer.hidden_states_big"] = torch.randn(1, 16, *BIG_LATENTS, generator=g)
    out["transformer.out_big"] = tr(out["transformer.hidden_states_big"], **row0).sample
    assert out["transformer.out_big"].shape == (1, 16, *BIG_LATENTS)
    m = TRANSFORMER["pos_embed_max_size"]
    notes["pos_embed_crop"] = {
        name: {"patches": [a // 2, b // 2], "top": (m - a // 2) // 2, "left": (m - b // 2) // 2}
        for name, (a, b) in {"out": (h, h), "out_ns": (hn, wn), "out_big": BIG_LATENTS}.items()}

    # the conditioning must matter: a wrong layout of any input must show up clearly
    sens = {}
    for what, kw in {
        "timestep": dict(call, timestep=ts.flip(0)),
        "pooled_projections": dict(call, pooled_projections=pooled.flip(0)),
        "encoder_hidden_states": dict(call, encoder_hidden_states=ehs.flip(0)),
        "t5_tokens_only": dict(call, encoder_hidden_states=torch.cat([ehs[:, :CLIP_LENGTH],
                                                                      ehs.flip(0)[:, CLIP_LENGTH:]], 1)),
        "skip_layers_1": dict(call, skip_layers=[1]),
    }.items():
        sens[what] = fc.rel_l2(tr(hs, **kw).sample, out["transformer.out"])
    print("  transformer output rel. change when swapping the batch rows of: "
          + ", ".join(f"{k} {v:.3f}" for k, v in sens.items()))
    assert all(v > 0.02 for v in sens.values()), sens
    notes["sensitivity"] = {k: round(v, 4) for k, v in sens.items()}

    out["vae.latents"] = torch.randn(1, 16, h, h, generator=g)
    out["vae.decoded"] = vae.decode(out["vae.latents"] / VAE["scaling_factor"] + VAE["shift_factor"]).sample
    assert out["vae.decoded"].shape == (1, 3, 4 * h, 4 * h)
    fc.save_png(INIT_PNG, mf.png_image(SIZE[0], SEED + 20))
    png = torch.from_numpy(np.array(Image.open(INIT_PNG).convert("RGB"))).permute(2, 0, 1)[None].float()
    # the pipelines' VaeImageProcessor: float32 / 255, then 2x - 1 (within an ulp of png / 127.5 - 1), as
    # a channels-last view of the HWC array (the convolutions then round a little differently: the
    # same tensor as the img2img pipeline's, so that img2img.init_latents follows from it exactly)
    pixels = pipe.image_processor.preprocess(Image.open(INIT_PNG).convert("RGB"), height=SIZE[0], width=SIZE[1])
    assert torch.equal(pixels, 2.0 * (png / 255.0) - 1.0)
    assert fc.assert_close(pixels, png / 127.5 - 1, "pixels", atol=2.4e-7) >= 0
    out["vae.posterior_mean"] = vae.encode(pixels).latent_dist.mean
    assert fc.assert_close(vae.encode(png / 127.5 - 1).latent_dist.mean, out["vae.posterior_mean"],
                           "posterior mean of png / 127.5 - 1", atol=2e-5) >= 0
    assert out["vae.posterior_mean"].shape == (1, 16, h, h)
    for k in ["transformer.out", "transformer.out_ns", "transformer.out_big", "vae.decoded",
              "vae.posterior_mean", "prompt_embeds.0", "t5.hidden.0"]:
        s = float(out[k].std())
        assert 0.05 < s < 20, (k, s)


def sched_info(scheduler):
    return {"class": type(scheduler).__name__, "config": fc.effective_config(scheduler),
            "timesteps": scheduler.timesteps.tolist(), "sigmas": scheduler.sigmas.tolist()}


def scheduler_goldens(pipe, out, notes):
    notes["scheduler"] = {}
    for n in SCHED_STEPS:
        s = copy.deepcopy(pipe.scheduler)
        s.set_timesteps(n)
        assert s.timesteps.dtype == s.sigmas.dtype == torch.float32
        assert s.sigmas.shape == (n + 1,) and float(s.sigmas[-1]) == 0.0
        out[f"scheduler.timesteps.{n}"], out[f"scheduler.sigmas.{n}"] = s.timesteps.clone(), s.sigmas.clone()
    s = pipe.scheduler
    notes["scheduler"] = {
        "class": type(s).__name__, "config": fc.effective_config(s),
        "sigma_max": s.sigma_max, "sigma_min": s.sigma_min,
        "set_timesteps": "t = linspace(sigma_max * 1000, sigma_min * 1000, n) (numpy float64; sigma_min = the "
        "training sigma of timestep 1 AFTER the shift: 3 * 0.001 / (1 + 2 * 0.001)), sigma = t / 1000, "
        "sigma = shift * sigma / (1 + (shift - 1) * sigma) (shifted a second time, float64), cast to float32; "
        "timesteps = sigma_f32 * 1000 (float32); sigmas = cat(sigma_f32, [0])",
        "step": "x_next = x + (sigma_next - sigma) * model_output (float32); no noise, no input scaling",
        "steps": list(SCHED_STEPS),
    }


@torch.no_grad()
def pipeline_goldens(pipe, no_t5, out, notes):
    g = fc.gen(SEED + 30)
    h = TRANSFORMER["sample_size"]
    latents = torch.randn(1, 16, h, h, generator=g)
    latents_ns = torch.randn(1, 16, SIZE_NS[0] // 4, SIZE_NS[1] // 4, generator=g)
    out["txt2img.latents"], out["txt2img.latents_ns"] = latents, latents_ns
    own = pipe.scheduler
    runs = {}
    sched_module = sys.modules[FlowMatchEulerDiscreteScheduler.__module__]

    def run(p, key, lat, size, guidance, negative, steps, output_type="latent", store=True, **kw):
        p.scheduler = copy.deepcopy(own)
        calls = []
        hook = p.transformer.register_forward_pre_hook(
            lambda m, a, k: calls.append((k["hidden_states"].shape[0], k.get("skip_layers"))), with_kwargs=True)
        try:
            with fc.NoiseFeed([sched_module], seed=mf.NOISE_SEED) as feed:
                res = p(prompt=PROMPT, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                        height=size[0], width=size[1], latents=lat.clone(), output_type=output_type, **kw).images
        finally:
            hook.remove()
        assert not feed.drawn, "FlowMatchEuler draws no noise"
        if output_type == "latent" and store:
            out[f"{key}.latents"] = res
            out[f"{key}.image"] = np_image(p.vae, res)
            slg_steps = []
            i = 0
            for batch, skip in calls:
                if skip is not None:
                    slg_steps.append(i - 1)
                else:
                    i += 1
            runs[key] = dict(sched_info(p.scheduler), height=size[0], width=size[1], guidance_scale=guidance,
                             negative_prompt=negative, num_inference_steps=steps,
                             cfg=guidance > 1, transformer_batch=calls[0][0],
                             latents="txt2img.latents_ns" if size == SIZE_NS else "txt2img.latents",
                             **({"skip_layer_guidance": dict(SLG_DEFAULTS, **kw), "slg_steps": slg_steps}
                                if kw else {}))
        return res, calls

    run(pipe, "euler", latents, SIZE, GUIDANCE, NEGATIVE, STEPS)
    np_img, _ = run(pipe, "euler", latents, SIZE, GUIDANCE, NEGATIVE, STEPS, output_type="np", store=False)
    assert np.array_equal(np_img[0], out["euler.image"].numpy()), "output_type np != manual decode"
    run(no_t5, "euler_no_t5", latents, SIZE, GUIDANCE, NEGATIVE, STEPS)
    run(pipe, "euler_nocfg", latents, SIZE, 1.0, None, STEPS)
    run(pipe, "euler_ns", latents_ns, SIZE_NS, GUIDANCE, NEGATIVE, STEPS)
    assert out["euler_ns.image"].shape == (SIZE_NS[0], SIZE_NS[1], 3)
    run(pipe, "turbo", latents, SIZE, TURBO_GUIDANCE, None, STEPS)
    assert torch.equal(out["turbo.latents"], out["euler_nocfg.latents"]), "guidance 0 and 1: both without CFG"
    assert not torch.equal(out["euler_no_t5.latents"], out["euler.latents"])

    # skip-layer guidance: inert at 4 steps with the defaults (no integer i in (0.04, 0.8))
    inert, calls = run(pipe, "euler_slg4", latents, SIZE, GUIDANCE, NEGATIVE, STEPS, store=False,
                       skip_guidance_layers=[1])
    assert torch.equal(inert, out["euler.latents"]) and all(s is None for _, s in calls)
    for key, steps, kw in SLG_RUNS:
        run(pipe, key, latents, SIZE, GUIDANCE, NEGATIVE, steps, **kw)
        k = dict(SLG_DEFAULTS, **kw)
        expect = [i for i in range(steps) if steps * k["skip_layer_guidance_start"] < i
                  < steps * k["skip_layer_guidance_stop"]]
        assert runs[key]["slg_steps"] == expect and expect, (key, runs[key]["slg_steps"], expect)
    notes["skip_layer_guidance"] = {
        "pipeline_defaults": SLG_DEFAULTS,
        "rule": "under CFG only, at loop index i (0-based) with num_inference_steps * start < i < num_inference_steps"
                " * stop (both strict): noise_pred = uncond + g * (text - uncond) + (text - skipped) * scale, "
                "skipped = transformer(latents, t, positive prompt embeds and pooled only, skip_layers=layers) "
                "(batch 1, the skipped blocks are left out entirely: both streams pass through unchanged)",
        "inert_at_4_steps_with_defaults": "euler with skip_guidance_layers=[1] at 4 steps == euler bit for bit",
        "runs": {key: dict(SLG_DEFAULTS, **kw, num_inference_steps=steps, guidance_scale=GUIDANCE, prompt=PROMPT,
                           negative_prompt=NEGATIVE, latents="txt2img.latents", slg_steps=runs[key]["slg_steps"])
                 for key, steps, kw in SLG_RUNS},
    }

    # ---- img2img: posterior mean, stored noise
    i2i = StableDiffusion3Img2ImgPipeline(**pipe.components)
    i2i.set_progress_bar_config(disable=True)
    i2i.scheduler = copy.deepcopy(own)
    module = sys.modules[StableDiffusion3Img2ImgPipeline.__module__]
    init_image = Image.open(INIT_PNG).convert("RGB")
    noise = torch.randn(1, 16, h, h, generator=fc.gen(SEED + 31))
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
        with fc.NoiseFeed([module], fixed=noise) as feed, fc.NoiseFeed([sched_module], seed=mf.NOISE_SEED) as sfeed:
            lat = i2i(prompt=PROMPT, negative_prompt=NEGATIVE, image=init_image, strength=I2I_STRENGTH,
                      num_inference_steps=I2I_STEPS, guidance_scale=GUIDANCE, output_type="latent").images
    finally:
        module.retrieve_latents = orig_retrieve
        del i2i.prepare_latents
    assert len(feed.drawn) == 1 and not sfeed.drawn and len(means) == 1 and len(starts) == 1
    sched = i2i.scheduler
    ts_all = copy.deepcopy(own)
    ts_all.set_timesteps(I2I_STEPS)
    t_start = int(max(I2I_STEPS - min(I2I_STEPS * I2I_STRENGTH, I2I_STEPS), 0))
    assert torch.equal(ts_all.timesteps, sched.timesteps) and sched.begin_index == t_start
    assert torch.equal(means[0], out["vae.posterior_mean"]), "img2img encodes the png as vae.posterior_mean"
    init_latents = (means[0] - VAE["shift_factor"]) * VAE["scaling_factor"]
    sigma = float(ts_all.sigmas[t_start])
    assert fc.assert_close(starts[0], sigma * noise + (1.0 - sigma) * init_latents, "start latents", atol=1e-6) >= 0
    out["img2img.noise"] = noise
    out["img2img.init_latents"] = init_latents
    out["img2img.start_latents"] = starts[0]
    out["img2img.latents"] = lat
    out["img2img.image"] = np_image(pipe.vae, lat)
    notes["img2img"] = {
        "pipeline": "StableDiffusion3Img2ImgPipeline(**sd3-tiny components)",
        "strength": I2I_STRENGTH, "num_inference_steps": I2I_STEPS, "guidance_scale": GUIDANCE,
        "prompt": PROMPT, "negative_prompt": NEGATIVE,
        "init_image": "goldens/sd3-tiny-img2img-input.png (VaeImageProcessor: float32 / 255 * 2 - 1, no resize at 64x64)",
        "t_start": t_start, "steps_run": I2I_STEPS - t_start,
        "get_timesteps": "init_timestep = min(steps * strength, steps); t_start = int(max(steps - init_timestep, 0));"
                         " scheduler.set_begin_index(t_start)",
        "timesteps_all": ts_all.timesteps.tolist(), "sigmas_all": ts_all.sigmas.tolist(),
        "timesteps_run": sched.timesteps[t_start:].tolist(), "sigmas_run": sched.sigmas[t_start:].tolist(),
        "start_sigma": sigma,
        "init_latents": "(vae.encode(image).latent_dist.mean - shift_factor) * scaling_factor (retrieve_latents "
        "forced to sample_mode='argmax')",
        "start_latents": "scheduler.scale_noise(init_latents, timesteps[t_start], img2img.noise) = sigma * noise + "
        "(1 - sigma) * init_latents with sigma = sigmas[t_start] (begin_index)",
        "noise": "the one randn_tensor call of prepare_latents, replaced by img2img.noise",
    }
    return runs


# ----------------------------------------------------------------------------------------


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main():
    t0 = time.time()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
          f"tokenizers {tokenizers.__version__}")
    assert (SDXL_DIR / "text_encoder_2" / "model.safetensors").is_file(), "run make_sdxl_fixtures.py first"
    tok3, corpus_lines = train_tokenizer_3()
    t5_vocab = tok3.get_vocab_size(with_added_tokens=True)
    print(f"[{NAME}] tokenizer_3: Unigram with {t5_vocab} pieces")
    transformer, vae, text, text_2, text_3 = build_models(t5_vocab)
    write_folder(transformer, vae, text, text_2, text_3, tok3)
    write_no_t5_folder()
    pipe = load(OUT)
    check_reloaded(pipe, transformer, vae, text, text_2, text_3)
    # diffusers refuses model_index.json's null text_encoder_3 / tokenizer_3 (not optional components of
    # the pipeline) unless they are passed as None, as its docs load SD3 without T5
    try:
        load(OUT_NO_T5)
        raise AssertionError("diffusers loaded the no-T5 folder without text_encoder_3=None")
    except ValueError as e:
        assert "text_encoder_3" in str(e), e
    no_t5 = load(OUT_NO_T5, text_encoder_3=None, tokenizer_3=None)
    assert no_t5.text_encoder_3 is None and no_t5.tokenizer_3 is None
    mf.check_params_equal(no_t5.transformer, pipe.transformer, "no-T5 transformer")
    print(f"[{NAME}] reloaded pipelines match the in-memory weights")
    raw_t5 = tokenizers.Tokenizer.from_file(str(OUT / "tokenizer_3" / "tokenizer.json"))

    out, notes = {}, {}
    text_goldens(pipe, no_t5, raw_t5, out, notes)
    transformer_vae_goldens(pipe, out, notes)
    scheduler_goldens(pipe, out, notes)
    runs = pipeline_goldens(pipe, no_t5, out, notes)
    print(f"[{NAME}] goldens:")
    fc.save_goldens(GOLDEN, out, GEN)

    t5_keys = sorted(load_file(OUT / "text_encoder_3" / "model.safetensors"))
    fc.write_json(SETTINGS, {
        "generator": GEN,
        "versions": dict(fc.versions(), tokenizers=tokenizers.__version__),
        "prompts": "goldens/prompts.json (index i of input_ids.{i}, prompt_embeds.{i}, ...)",
        "models": {
            NAME: "tests/fixtures/sd3-tiny (StableDiffusion3Pipeline, FlowMatchEulerDiscreteScheduler shift 3)",
            NO_T5: "tests/fixtures/sd3-tiny-no-t5 (the same files, symlinked; text_encoder_3 / tokenizer_3 null)",
        },
        "linked_from_sdxl_tiny": {sub: {f.name: sha256(f) for f in sorted((SDXL_DIR / sub).iterdir())}
                                  for sub in FROM_SDXL},
        "transformer": dict({k: list(v) if isinstance(v, tuple) else v for k, v in TRANSFORMER.items()},
                            qk_norm_weights_boost=QK_NORM_BOOST),
        "vae": {k: list(v) if isinstance(v, tuple) else v for k, v in VAE.items()},
        "text_encoder": TEXT, "text_encoder_2": TEXT_2,
        "text_encoder_3": dict(T5, vocab_size=t5_vocab, dense_act_fn="gelu_new", keys_in_file=len(t5_keys),
                               embedding_keys=[k for k in t5_keys if "embed" in k or k == "shared.weight"],
                               saved_config=json.load(open(OUT / "text_encoder_3" / "config.json"))),
        "weights_dtype": "float16 for every network (goldens computed in float32 from those values); the "
        "transformer file also holds pos_embed.pos_embed, kept float32 (diffusers' exact sin-cos table)",
        "tokenizer_3": {
            "model": "Unigram (tokenizers.trainers.UnigramTrainer)", "pieces": t5_vocab,
            "training": dict(TOKENIZER_3, corpus_lines=corpus_lines,
                             corpus="CORPUS of the script + prompts.json with characters above U+FFFF removed"),
            "canonical": "scores rounded to 6 decimals; the characters the trainer adds back (scores min, "
                         "min + 1e-4, ... in hash-set order) given those scores in code point order; pieces sorted "
                         "(specials first, then score descending, then piece); tokenizer rebuilt from that list",
            "normalizer": None,
            "pre_tokenizer": "Sequence[WhitespaceSplit, Metaspace(replacement '▁', prepend_scheme 'always', split)]",
            "post_processor": "TemplateProcessing '$A </s>'",
            "why_no_normalizer": "transformers 5's T5Tokenizer(Fast) keeps only the vocab (and a Precompiled "
                                 "charsmap, which needs sentencepiece to make) of tokenizer.json and rebuilds "
                                 "this pre-tokenizer itself: any other normalizer would make it disagree with "
                                 "tokenizer.json",
            "special_ids": {"<pad>": 0, "</s>": 1, "<unk>": 2},
            "pipeline_call": "tokenizer_3(prompt, padding='max_length', max_length=max_sequence_length (256), "
                             "truncation=True, add_special_tokens=True): at most max_length - 1 pieces, </s>, "
                             "then <pad>; no attention mask is given to the encoder",
            "prompts": notes["t5_ids"],
        },
        "encode_prompt": {
            "prompt_embeds": "cat on the token axis of [pad(cat(text_encoder(ids).hidden_states[-2], "
            "text_encoder_2(ids_2).hidden_states[-2]), 80 -> 96 zero features), text_encoder_3(ids_3)"
            ".last_hidden_state]: 77 + max_sequence_length tokens",
            "pooled_prompt_embeds": "cat(text_encoder(ids).text_embeds, text_encoder_2(ids_2).text_embeds): "
            "text_projection(final_layer_norm(last hidden state)[first position of id 49407])",
            "clip_pooling": "eos_token_id 49407 in both CLIP configs: transformers pools at the first id 49407; "
            "argmax(ids) (the eos_token_id == 2 path of hub configs) is the same position for every prompt here",
            "negative": {"empty": "'' encoded like a prompt (negative_prompt=None is the same)", "text": NEGATIVE},
            "no_t5": notes["no_t5"],
            "max_sequence_length_32": list(out["prompt_embeds.msl32.0"].shape),
        },
        "transformer_call": {"timesteps": TRANSFORMER_TIMESTEPS, "out_ns_timestep": 500.0,
                             "out_skip1": "skip_layers=[1]", "pos_embed_crop": notes["pos_embed_crop"],
                             "sensitivity_rel_l2": notes["sensitivity"]},
        "vae_call": {"decode": "vae.decode(latents / scaling_factor + shift_factor)",
                     "encode": "vae.encode(2 * (png / 255) - 1).latent_dist.mean (raw; float32 as VaeImageProcessor)",
                     "pipeline_latents": "(mean - shift_factor) * scaling_factor"},
        "scheduler": notes["scheduler"],
        "txt2img": {"prompt": PROMPT, "negative_prompt": NEGATIVE, "num_inference_steps": STEPS,
                    "guidance_scale": GUIDANCE, "latents": "passed as `latents=` (used as they are: no scaling)",
                    "image": "output_type='np' as float32 [H,W,3]: vae.decode(latents / 1.5305 + 0.0609) / 2 + 0.5, "
                             "clamped",
                    "cfg": "only when guidance_scale > 1: transformer batch [negative, positive] for prompt embeds "
                    "and pooled; noise_pred = uncond + guidance_scale * (text - uncond); the timestep is "
                    "scheduler.timesteps[i] (float, 0..1000) for every row",
                    "runs": runs},
        "skip_layer_guidance": notes["skip_layer_guidance"],
        "img2img": notes["img2img"],
    })

    for p in fc.files_under(OUT, OUT_NO_T5) + [GOLDEN, SETTINGS, INIT_PNG]:
        if not p.is_symlink():
            os.chmod(p, 0o644)  # save_pretrained writes some files 0600
    print("files:")
    files = fc.files_under(OUT, OUT_NO_T5) + [GOLDEN, SETTINGS, INIT_PNG]
    fc.list_files([p for p in files if not p.is_symlink()])
    links = [p for p in files if p.is_symlink()]
    print(f"  + {len(links)} symbolic links ({OUT.name}/ -> {SDXL}/, {OUT_NO_T5.name}/ -> {OUT.name}/)")
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
