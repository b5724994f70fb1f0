#!/usr/bin/env python3
"""Prompt-weighting, long-prompt, BREAK and textual-inversion fixtures and goldens (never edit by hand).
Run from the repository root, in the venv of make_fixtures.py, after make_fixtures.py,
make_sdxl_fixtures.py and make_sd3_fixtures.py (it reads their tiny pipelines; about 15 s on 2 cores):

    /root/.cache/webdiffusion/venv/bin/python scripts/make_prompt_fixtures.py

Reference: diffusers' community pipeline `lpw_stable_diffusion.py` (get_prompts_with_weights,
pad_tokens_and_weights, get_unweighted_text_embeddings, get_weighted_text_embeddings) whose parser is
AUTOMATIC1111's `parse_prompt_attention` (modules/prompt_parser.py). Neither ships in the diffusers wheel,
so both are RESTATED below (`parse_prompt_attention` with A1111's current regex and its BREAK split;
`lpw_*`: the community functions, used here only as a cross-check), and the generalisation to BREAK,
SDXL, SD3 and textual inversion is `encode_*` (the goldens). Every choice where the reference says
nothing is recorded in goldens/prompts-weighting.json ("choices"). Float32 on the CPU with one thread
(fixtures_common), fixed seeds; a re-run gives byte-identical files.

Semantics (what the goldens are)
--------------------------------
parse_prompt_attention(text) -> [[fragment, weight], ...] (A1111): `(x)` x1.1, `[x]` x(1/1.1), `(x:1.5)`
sets the factor (regex `:\\s*([+-]?[.\\d]+)\\s*\\)`: a number is required, `(word:abc)` is the text
"word:abc" at x1.1), nesting multiplies, `\\(` `\\)` `\\[` `\\]` `\\\\` literal, unbalanced brackets apply
to the end of the prompt; `BREAK` (upper case, word boundaries) becomes the entry ["BREAK", -1]; runs of
equal weight are merged (before tokenisation: "(a)(b)" is the single fragment "ab").
Tokens: each fragment is tokenised on its own (tokenizer(fragment).input_ids[1:-1], as lpw), with
textual-inversion names cut out first (an n-vector embedding gives n ids); every token gets its
fragment's weight (float64 products, stored float32).
Chunks (CLIP): the tokens are cut into chunks of 75; a chunk is closed when a 76th token arrives (lazily,
as A1111) or at BREAK (a BREAK on an empty chunk gives an empty chunk; a trailing empty chunk is dropped,
but a prompt always has one chunk). Each chunk is framed as <start> + tokens + <end> + the tokenizer's pad
token up to 77 (= tokenizer(..., padding="max_length") for a prompt of <= 75 tokens: pad <|endoftext|>
for CLIP-L, "!" (id 0) for the bigG-like tokenizer_2). Start, end and pad weigh 1. Prompt and negative
are padded to the same number of chunks with empty chunks (<start> <end> pad...).
Embedding: each chunk encoded on its own ([1,77]), the chunks concatenated on tokens, then (lpw)
    previous_mean = emb.mean([-2,-1]); emb = emb * weights[..., None]; current_mean = emb.mean([-2,-1])
    emb = emb * (previous_mean / current_mean)
over the whole embedding [1, 77k, D] (not per chunk; unweighted prompts are left bit-identical).
    sd1-tiny   text_encoder(ids)[0] (last hidden state after the final LayerNorm), D 32
    sdxl-tiny  per chunk cat(text_encoder.hidden_states[-2], text_encoder_2.hidden_states[-2]) on features
               (D 80), chunks on tokens, weighting over the concatenation; pooled = text_encoder_2's
               text_embeds of the FIRST chunk (unweighted)
    sd3-tiny   CLIP: the first chunk only (SD3 has 77 CLIP tokens), as SDXL (D 80, weighted and rescaled over
               these [77, 80]), then zero-padded to 96; T5: the fragments' pieces (tokenizer_3(fragment,
               add_special_tokens=False), BREAK entries skipped) concatenated, cut to 255, </s>, <pad> to
               256; each piece weighs its fragment's weight, </s> and <pad> 1; text_encoder_3(ids_3)
               .last_hidden_state weighted and rescaled over [256, 96] on its own; prompt_embeds =
               cat(clip, t5) on tokens [1, 333, 96]; pooled = cat(CLIP-L, bigG text_embeds) of the first
               chunk [1, 64]

What is written
---------------
tests/fixtures/prompts/        textual-inversion files (random vectors, std of the encoder's token embedding)
    cat-toy.safetensors           diffusers format: one key "<cat-toy>" float32 [32] (sd1-tiny; 1 vector;
                                  the token is the key)
    easynegative-tiny.safetensors A1111 format: "emb_params" float16 [2,32] (sd1-tiny; 2 vectors; the token
                                  is the file name without extension)
    sdxl-emb.safetensors          A1111 SDXL format: "clip_l" float16 [2,32], "clip_g" float16 [2,48]
                                  (sdxl-tiny; token "sdxl-emb")
    nan-emb.safetensors           A1111 format "emb_params" float32 [2,32] with a NaN at [1,5] (bad input)
    wide-emb.safetensors          A1111 format "emb_params" float32 [1,40] (no tiny encoder is 40 wide)
tests/fixtures/goldens/prompts-weighting.safetensors   float32 (int64 for ids); M = sd1-tiny | sdxl-tiny |
                               sd3-tiny, C = plain | weighted | escaped | unbalanced | nonnumber | long |
                               long_weighted | break | ti (ti: sd1-tiny and sdxl-tiny only); k = chunk count
    M.C.prompt_embeds             sd1 [1,77k,32]; sdxl [1,77k,80]; sd3 [1,333,96]
    M.C.pooled_prompt_embeds      sdxl [1,40]; sd3 [1,64]
    M.C.input_ids                 int64 [k,77] (tokenizer; sd3: [1,77], the first chunk, the only one encoded)
    M.C.input_ids_2               int64, as input_ids with tokenizer_2's pad "!" = 0 (sdxl, sd3)
    M.C.input_ids_3               int64 [1,256] T5 ids (sd3)
    M.C.weights                   float32 [k,77] (sd3 [1,77]), one per CLIP position
    M.C.weights_3                 float32 [1,256] (sd3)
    M.long.negative_prompt_embeds   negative "blurry" padded to the prompt's chunk count (sd1 [1,231,32],
                                  sdxl [1,231,80], sd3 [1,333,96]); with M.long.negative_pooled_prompt_embeds
                                  (sdxl, sd3), M.long.negative_input_ids / _2 / _3, M.long.negative_weights / _3
    M.image_run.init_latents      (sd1, sdxl) [1,4,16,16] randn, passed as `latents=`
    M.image_run.negative_prompt_embeds (+ .negative_pooled_prompt_embeds for sdxl, .negative_input_ids,
                                  .negative_input_ids_2 for sdxl, .negative_weights): the image run's negative
                                  prompt (with a TI token), padded to 3 chunks
    M.image_run.latents, M.image_run.image   the model's own pipeline with prompt_embeds = M.long_weighted
                                  .prompt_embeds (+ pooled), negative_prompt_embeds = the above; 4 steps,
                                  guidance 5, output_type "latent" and the decoded image [H,W,3] in [0,1]
                                  (= output_type "np"); sd1: PNDM (its own scheduler) at 32x32; sdxl: its
                                  EulerDiscreteScheduler at 64x64 (time ids (64,64,0,0,64,64))
tests/fixtures/goldens/prompts-weighting.json   every case's text and parse, chunk counts, TI token ids,
                               the rescale factors, parser test cases (A1111's documented examples and more),
                               every choice, the cross-checks made, the image runs' settings, versions

Cross-checks (asserted)
-----------------------
- parse_prompt_attention gives A1111's documented examples exactly;
- sd1: encode_sd1 equals the literal lpw restatement (lpw_get_weighted_text_embeddings, no_boseos_middle
  False) bit for bit for every case without BREAK / TI, negative pairing included;
- unweighted prompts <= 75 tokens equal diffusers' encode_prompt bit for bit (StableDiffusionPipeline,
  StableDiffusionXLPipeline, StableDiffusion3Pipeline), the escaped prompt equals the unescaped text's
  encoding, the long prompt's first chunk equals diffusers' truncated encoding (sd3: the whole result),
  BREAK chunks equal the two halves encoded alone, the padded negative's extra chunks equal encode("");
- textual inversion: for an unweighted prompt with the tokens, ids and embeddings equal diffusers'
  load_textual_inversion (sd1: both files; sdxl: clip_l into text_encoder/tokenizer, clip_g into
  text_encoder_2/tokenizer_2, as diffusers' docs show) + encode_prompt; the reader here refuses the NaN
  and the wrong-width file; diffusers refuses the wide one and loads the NaN one silently (recorded);
- the image runs with the unweighted embeddings of a plain prompt equal the pipeline called with the text.
"""

import copy
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixtures_common as fc  # noqa: E402  (one thread, deterministic algorithms, quiet logs)

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from safetensors.torch import load_file  # noqa: E402

mf = fc.mf
GEN = "scripts/make_prompt_fixtures.py"
TI_DIR = fc.FIX / "prompts"
GOLDEN = fc.GOLDENS / "prompts-weighting.safetensors"
SETTINGS = fc.GOLDENS / "prompts-weighting.json"
SEED = 10700
MODELS = ("sd1-tiny", "sdxl-tiny", "sd3-tiny")

PROMPTS = json.load(open(fc.GOLDENS / "prompts.json", encoding="utf-8"))
CHUNK = 75  # tokens per chunk, without start / end
CLIP_LENGTH = CHUNK + 2
T5_LENGTH = 256
BOS, EOS = 49406, 49407
STEPS, GUIDANCE = 4, 5.0

LONG_WEIGHTED = (
    "a (sweeping panoramic:1.2) landscape of a green valley in late spring, a winding river reflecting the clear "
    "blue sky, [wildflowers of every colour] covering the gentle slopes, a small stone farmhouse with a ((red roof)) "
    "and smoke rising from its chimney, sheep grazing near a wooden fence, two horses drinking from a trough, tall "
    "poplar trees swaying in a light breeze, (distant snow capped mountains under soft white clouds:1.3), a narrow "
    "dirt road leading to a quiet village with a church tower, children playing beside the water, a fisherman "
    "sitting on a rock with his line in the river, [[butterflies and bees]] among the flowers, (warm afternoon "
    "sunlight:0.8) casting long shadows, crisp details, vivid natural colours, calm and peaceful atmosphere, wide "
    "angle photograph, (high dynamic range), award winning nature photography, golden hour, soft focus background, "
    "sharp foreground, trending on a photography forum"
)
LONG = re.sub(r"[()\[\]]|:[\d.]+", "", LONG_WEIGHTED)  # the same text without any weighting
CASES = {
    "plain": PROMPTS[0],
    "weighted": "a (red:1.3) fox in [the] ((snow))",
    "escaped": r"a \(literal\) photo of a \[cat\]",
    "unbalanced": "a (photo of a fox",
    "nonnumber": "a (word:abc) here",
    "long": LONG,
    "long_weighted": LONG_WEIGHTED,
    "break": "a red fox BREAK a blue sky",
    "ti": None,  # per model, below
}
TI_PROMPT = {
    "sd1-tiny": "a (<cat-toy>:1.3) backpack on a [wooden] table, easynegative-tiny",
    "sdxl-tiny": "a (sdxl-emb:1.2) photo of a [red] fox in the snow",
}
TI_CHECK_PROMPT = {  # unweighted, compared with diffusers' load_textual_inversion
    "sd1-tiny": "a <cat-toy> backpack next to easynegative-tiny on a table",
    "sdxl-tiny": "a photo of sdxl-emb in the snow",
}
LONG_NEGATIVE = "blurry"
IMAGE_NEGATIVE = {
    "sd1-tiny": "easynegative-tiny, (blurry:1.2), [lowres]",
    "sdxl-tiny": "(sdxl-emb:1.1), blurry, [lowres]",
}

# A1111's documented examples (modules/prompt_parser.py docstring) + more, checked here and stored
PARSER_DOCUMENTED = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
      [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
]
PARSER_MORE = [
    "a (word:abc) here", "(red: 1.3 )", "(red:-0.5)", "(red:+2)", "(red:.5)", "[[x]]", "[unbalanced", "((a)",
    "a)b]c", "\\\\ and \\)", "a\\b", "", "a red fox BREAK a blue sky", "BREAK a", "a BREAK", "aBREAK b",
    "a break b", "a BREAK BREAK b", "x:y", "(a:1.5:2)", "a (<cat-toy>:1.3) b",
]
PARSER_QUIRKS = {  # A1111 behaviour that a re-implementation may choose to keep or not
    "(a BREAK b)": "BREAK inside brackets: its -1 weight is multiplied (-1.1) so it is no longer a BREAK; A1111 "
                   "then tokenises the word BREAK with weight -1.1",
    "(x:1.2.3)": "the weight regex [+-]?[.\\d]+ matches '1.2.3', float() raises ValueError in A1111",
    "(x:.)": "matches '.', float('.') raises ValueError in A1111",
}


# ----------------------------------------------------------------------------------------
# A1111's parser (modules/prompt_parser.py), restated
# ----------------------------------------------------------------------------------------

re_attention = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)

re_break = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text):
    res = []
    round_brackets = []
    square_brackets = []

    round_bracket_multiplier = 1.1
    square_bracket_multiplier = 1 / 1.1

    def multiply_range(start_position, multiplier):
        for p in range(start_position, len(res)):
            res[p][1] *= multiplier

    for m in re_attention.finditer(text):
        text = m.group(0)
        weight = m.group(1)

        if text.startswith("\\"):
            res.append([text[1:], 1.0])
        elif text == "(":
            round_brackets.append(len(res))
        elif text == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif text == ")" and round_brackets:
            multiply_range(round_brackets.pop(), round_bracket_multiplier)
        elif text == "]" and square_brackets:
            multiply_range(square_brackets.pop(), square_bracket_multiplier)
        else:
            parts = re.split(re_break, text)
            for i, part in enumerate(parts):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])

    for pos in round_brackets:
        multiply_range(pos, round_bracket_multiplier)

    for pos in square_brackets:
        multiply_range(pos, square_bracket_multiplier)

    if len(res) == 0:
        res = [["", 1.0]]

    # merge runs of identical weights
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1

    return res


def is_break(fragment):
    return fragment[0] == "BREAK" and fragment[1] == -1


# ----------------------------------------------------------------------------------------
# diffusers' community lpw_stable_diffusion.py, restated (SD 1.x; cross-check only)
# ----------------------------------------------------------------------------------------


def lpw_get_prompts_with_weights(pipe, prompt, max_length):
    tokens, weights = [], []
    for text in prompt:
        texts_and_weights = parse_prompt_attention(text)
        text_token, text_weight = [], []
        for word, weight in texts_and_weights:
            # tokenize and discard the starting and the ending token
            token = pipe.tokenizer(word).input_ids[1:-1]
            text_token += token
            # copy the weight by length of token
            text_weight += [weight] * len(token)
            # stop if the text is too long (longer than truncation limit)
            if len(text_token) > max_length:
                break
        if len(text_token) > max_length:
            text_token = text_token[:max_length]
            text_weight = text_weight[:max_length]
        tokens.append(text_token)
        weights.append(text_weight)
    return tokens, weights


def lpw_pad_tokens_and_weights(tokens, weights, max_length, bos, eos, pad, no_boseos_middle=True, chunk_length=77):
    max_embeddings_multiples = (max_length - 2) // (chunk_length - 2)
    weights_length = max_length if no_boseos_middle else max_embeddings_multiples * chunk_length
    for i in range(len(tokens)):
        tokens[i] = [bos] + tokens[i] + [pad] * (max_length - 1 - len(tokens[i]) - 1) + [eos]
        if no_boseos_middle:
            weights[i] = [1.0] + weights[i] + [1.0] * (max_length - 1 - len(weights[i]))
        else:
            w = []
            if len(weights[i]) == 0:
                w = [1.0] * weights_length
            else:
                for j in range(max_embeddings_multiples):
                    w.append(1.0)  # weight for starting token in this chunk
                    w += weights[i][j * (chunk_length - 2): min(len(weights[i]), (j + 1) * (chunk_length - 2))]
                    w.append(1.0)  # weight for ending token in this chunk
                w += [1.0] * (weights_length - len(w))
            weights[i] = w[:]
    return tokens, weights


def lpw_get_unweighted_text_embeddings(pipe, text_input, chunk_length, no_boseos_middle=True):
    max_embeddings_multiples = (text_input.shape[1] - 2) // (chunk_length - 2)
    if max_embeddings_multiples > 1:
        text_embeddings = []
        for i in range(max_embeddings_multiples):
            # extract the i-th chunk
            text_input_chunk = text_input[:, i * (chunk_length - 2): (i + 1) * (chunk_length - 2) + 2].clone()
            # cover the head and the tail by the starting and the ending tokens
            text_input_chunk[:, 0] = text_input[0, 0]
            text_input_chunk[:, -1] = text_input[0, -1]
            text_embedding = pipe.text_encoder(text_input_chunk)[0]
            if no_boseos_middle:
                if i == 0:
                    text_embedding = text_embedding[:, :-1]  # discard the ending token
                elif i == max_embeddings_multiples - 1:
                    text_embedding = text_embedding[:, 1:]  # discard the starting token
                else:
                    text_embedding = text_embedding[:, 1:-1]  # discard both starting and ending tokens
            text_embeddings.append(text_embedding)
        text_embeddings = torch.concat(text_embeddings, axis=1)
    else:
        text_embeddings = pipe.text_encoder(text_input)[0]
    return text_embeddings


def lpw_get_weighted_text_embeddings(pipe, prompt, uncond_prompt=None, max_embeddings_multiples=3,
                                     no_boseos_middle=False):
    max_length = (pipe.tokenizer.model_max_length - 2) * max_embeddings_multiples + 2
    prompt = [prompt] if isinstance(prompt, str) else prompt
    prompt_tokens, prompt_weights = lpw_get_prompts_with_weights(pipe, prompt, max_length - 2)
    if uncond_prompt is not None:
        uncond_prompt = [uncond_prompt] if isinstance(uncond_prompt, str) else uncond_prompt
        uncond_tokens, uncond_weights = lpw_get_prompts_with_weights(pipe, uncond_prompt, max_length - 2)

    # round up the longest length of tokens to a multiple of (model_max_length - 2)
    max_length = max([len(token) for token in prompt_tokens])
    if uncond_prompt is not None:
        max_length = max(max_length, max([len(token) for token in uncond_tokens]))
    max_embeddings_multiples = min(max_embeddings_multiples,
                                   (max_length - 1) // (pipe.tokenizer.model_max_length - 2) + 1)
    max_embeddings_multiples = max(1, max_embeddings_multiples)
    max_length = (pipe.tokenizer.model_max_length - 2) * max_embeddings_multiples + 2

    # pad the length of tokens and weights
    bos = pipe.tokenizer.bos_token_id
    eos = pipe.tokenizer.eos_token_id
    pad = getattr(pipe.tokenizer, "pad_token_id", eos)
    prompt_tokens, prompt_weights = lpw_pad_tokens_and_weights(
        prompt_tokens, prompt_weights, max_length, bos, eos, pad, no_boseos_middle=no_boseos_middle,
        chunk_length=pipe.tokenizer.model_max_length)
    prompt_tokens = torch.tensor(prompt_tokens, dtype=torch.long)
    if uncond_prompt is not None:
        uncond_tokens, uncond_weights = lpw_pad_tokens_and_weights(
            uncond_tokens, uncond_weights, max_length, bos, eos, pad, no_boseos_middle=no_boseos_middle,
            chunk_length=pipe.tokenizer.model_max_length)
        uncond_tokens = torch.tensor(uncond_tokens, dtype=torch.long)

    # get the embeddings
    text_embeddings = lpw_get_unweighted_text_embeddings(pipe, prompt_tokens, pipe.tokenizer.model_max_length,
                                                         no_boseos_middle=no_boseos_middle)
    prompt_weights = torch.tensor(prompt_weights, dtype=text_embeddings.dtype)
    if uncond_prompt is not None:
        uncond_embeddings = lpw_get_unweighted_text_embeddings(pipe, uncond_tokens, pipe.tokenizer.model_max_length,
                                                               no_boseos_middle=no_boseos_middle)
        uncond_weights = torch.tensor(uncond_weights, dtype=uncond_embeddings.dtype)

    # assign weights to the prompts and normalize in the sense of mean
    previous_mean = text_embeddings.float().mean(axis=[-2, -1]).to(text_embeddings.dtype)
    text_embeddings *= prompt_weights.unsqueeze(-1)
    current_mean = text_embeddings.float().mean(axis=[-2, -1]).to(text_embeddings.dtype)
    text_embeddings *= (previous_mean / current_mean).unsqueeze(-1).unsqueeze(-1)
    if uncond_prompt is not None:
        previous_mean = uncond_embeddings.float().mean(axis=[-2, -1]).to(uncond_embeddings.dtype)
        uncond_embeddings *= uncond_weights.unsqueeze(-1)
        current_mean = uncond_embeddings.float().mean(axis=[-2, -1]).to(uncond_embeddings.dtype)
        uncond_embeddings *= (previous_mean / current_mean).unsqueeze(-1).unsqueeze(-1)
        return text_embeddings, uncond_embeddings, prompt_tokens, prompt_weights
    return text_embeddings, None, prompt_tokens, prompt_weights


# ----------------------------------------------------------------------------------------
# textual inversion: the files and a reader
# ----------------------------------------------------------------------------------------


def write_ti_files(te_sd1, te_l, te_g):
    """Random vectors with the spread of each encoder's token embedding, rounded to the stored dtype."""
    g = fc.gen(SEED + 1)

    def rnd(shape, encoder):
        return torch.randn(*shape, generator=g) * float(encoder.get_input_embeddings().weight.detach().std())

    files = {
        "cat-toy.safetensors": {"<cat-toy>": rnd((32,), te_sd1)},
        "easynegative-tiny.safetensors": {"emb_params": rnd((2, 32), te_sd1).half()},
        "sdxl-emb.safetensors": {"clip_l": rnd((2, 32), te_l).half(), "clip_g": rnd((2, 48), te_g).half()},
    }
    nan = rnd((2, 32), te_sd1)
    nan[1, 5] = float("nan")
    files["nan-emb.safetensors"] = {"emb_params": nan}
    files["wide-emb.safetensors"] = {"emb_params": rnd((1, 40), te_sd1)}
    for name, tensors in files.items():
        fc.save_tensors(TI_DIR / name, tensors)
    return {name: {k: [str(v.dtype).removeprefix("torch."), list(v.shape)] for k, v in t.items()}
            for name, t in files.items()}


def read_ti(path, widths):
    """An embedding file -> (token, {encoder: float32 [n, width]}). widths: {"clip_l": 32} (SD 1.x) or
    {"clip_l": 32, "clip_g": 48} (SDXL). Formats: one key (diffusers: key = token, [D] or [n, D]),
    "emb_params" [n, D] (A1111 .safetensors: token = file name without extension), "clip_l" + "clip_g"
    (A1111 SDXL). Refuses non-finite values and a width that does not match."""
    path = Path(path)
    sd = load_file(path)
    if set(sd) == {"clip_l", "clip_g"}:
        token, vecs = path.stem, {"clip_l": sd["clip_l"], "clip_g": sd["clip_g"]}
    elif "emb_params" in sd:
        token, vecs = path.stem, {"clip_l": sd["emb_params"]}
    elif len(sd) == 1:
        token, v = next(iter(sd.items()))
        vecs = {"clip_l": v}
    else:
        raise ValueError(f"{path.name}: unknown embedding layout {sorted(sd)}")
    if set(vecs) != set(widths):
        raise ValueError(f"{path.name}: has {sorted(vecs)}, the model needs {sorted(widths)}")
    out = {}
    for enc, v in vecs.items():
        v = v.float()
        v = v[None] if v.ndim == 1 else v
        if v.ndim != 2 or v.shape[1] != widths[enc]:
            raise ValueError(f"{path.name}: {enc} is {list(v.shape)}, expected [n, {widths[enc]}]")
        if not torch.isfinite(v).all():
            raise ValueError(f"{path.name}: non-finite values")
        out[enc] = v
    n = {v.shape[0] for v in out.values()}
    if len(n) != 1:
        raise ValueError(f"{path.name}: vector counts differ {n}")
    return token, out


class TI:
    """Loaded embeddings: names -> ids (49408 upwards in load order, n ids for n vectors, as diffusers'
    load_textual_inversion assigns them) and per-encoder extra rows of the token embedding."""

    def __init__(self, widths):
        self.widths, self.names, self.rows = widths, {}, {enc: [] for enc in widths}
        self.next_id = 49408

    def load(self, path):
        token, vecs = read_ti(path, self.widths)
        n = next(iter(vecs.values())).shape[0]
        self.names[token] = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        for enc, v in vecs.items():
            self.rows[enc].append(v)
        return token

    def encoder(self, encoder, enc):
        """A copy of the text encoder whose token embedding has the extra rows appended."""
        if not self.rows[enc]:
            return encoder
        e = copy.deepcopy(encoder)
        old = e.get_input_embeddings().weight.data
        new = torch.nn.Embedding(old.shape[0] + sum(r.shape[0] for r in self.rows[enc]), old.shape[1])
        new.weight.data = torch.cat([old] + self.rows[enc])
        e.set_input_embeddings(new)
        return e


def fragment_ids(tok, text, ti_names):
    """CLIP ids of one fragment (no start / end): TI names are cut out (leftmost, then longest match, case
    sensitive) and give their ids; the text between is tokenised on its own."""
    out, pos = [], 0
    while True:
        best = None
        for name, ids in ti_names.items():
            i = text.find(name, pos)
            if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(name) > len(best[1]))):
                best = (i, name, ids)
        if best is None:
            break
        out += tok(text[pos:best[0]]).input_ids[1:-1]
        out += best[2]
        pos = best[0] + len(best[1])
    out += tok(text[pos:]).input_ids[1:-1]
    return out


# ----------------------------------------------------------------------------------------
# chunks and weighting (the goldens)
# ----------------------------------------------------------------------------------------


def clip_chunks(tok, prompt, ti_names=None):
    """[[(id, weight), ...], ...]: chunks of at most 75 tokens (A1111's next_chunk without comma
    backtracking)."""
    chunks, cur = [], []
    for frag in parse_prompt_attention(prompt):
        if is_break(frag):
            chunks.append(cur)
            cur = []
            continue
        text, weight = frag
        for i in fragment_ids(tok, text, ti_names or {}):
            if len(cur) == CHUNK:
                chunks.append(cur)
                cur = []
            cur.append((i, weight))
    if cur or not chunks:
        chunks.append(cur)
    return chunks


def frame(chunks, n, pad):
    """ids int64 [n, 77], weights float32 [n, 77]: <start> tokens <end> pad...; empty chunks up to n."""
    assert len(chunks) <= n
    ids, weights = [], []
    for c in list(chunks) + [[]] * (n - len(chunks)):
        fill = CLIP_LENGTH - 2 - len(c)
        ids.append([BOS] + [i for i, _ in c] + [EOS] + [pad] * fill)
        weights.append([1.0] + [w for _, w in c] + [1.0] + [1.0] * fill)
    return torch.tensor(ids, dtype=torch.int64), torch.tensor(weights, dtype=torch.float32)


def apply_weights(emb, weights):
    """lpw: multiply each token's state by its weight, then restore the mean of the whole embedding.
    emb [1, T, D], weights [T] float32. Returns (weighted, info: the factor previous_mean / current_mean,
    previous_mean, and how far the float32 result is from the same formula in float64 (max abs diff / max
    abs value): the division by a mean makes it sensitive to summation order when the mean is small)."""
    previous_mean = emb.float().mean(dim=[-2, -1])
    weighted = emb * weights.reshape(1, -1, 1)
    current_mean = weighted.float().mean(dim=[-2, -1])
    ratio = previous_mean / current_mean
    out = weighted * ratio.reshape(-1, 1, 1)
    w64 = emb.double() * weights.double().reshape(1, -1, 1)
    ref = w64 * (emb.double().mean() / w64.mean())
    return out, {"factor": float(ratio), "previous_mean": float(previous_mean),
                 "f32_vs_f64": float((out.double() - ref).abs().max() / ref.abs().max())}


def t5_items(tok3, prompt):
    items = []
    for frag in parse_prompt_attention(prompt):
        if is_break(frag):
            continue
        text, weight = frag
        items += [(i, weight) for i in tok3(text, add_special_tokens=False).input_ids]
    return items


class Model:
    """One tiny model's encoders (with TI rows where loaded) and tokenizers."""

    def __init__(self, name, pipe, ti=None):
        self.name, self.pipe, self.ti = name, pipe, ti
        names = ti.names if ti else {}
        self.ti_names = names
        self.tok = pipe.tokenizer
        self.te = ti.encoder(pipe.text_encoder, "clip_l") if ti else pipe.text_encoder
        if name != "sd1-tiny":
            self.tok_2 = pipe.tokenizer_2
            self.te_2 = ti.encoder(pipe.text_encoder_2, "clip_g") if ti else pipe.text_encoder_2
            self.pad_2 = pipe.tokenizer_2.pad_token_id
        self.pad = pipe.tokenizer.pad_token_id

    def chunks(self, prompt):
        c = clip_chunks(self.tok, prompt, self.ti_names)
        if self.name != "sd1-tiny":
            assert c == clip_chunks(self.tok_2, prompt, self.ti_names), "tokenizer_2 gives other tokens"
        return c

    @torch.no_grad()
    def encode(self, prompt, n_chunks=None):
        """Goldens of one prompt: dict of tensors (and the parse / rescale factors in 'info')."""
        chunks = self.chunks(prompt)
        out, info = {}, {"fragments": parse_prompt_attention(prompt), "chunks": len(chunks),
                         "tokens_per_chunk": [len(c) for c in chunks]}
        if self.name == "sd3-tiny":
            chunks, n = chunks[:1], 1  # SD3 encodes 77 CLIP tokens: the first chunk
        else:
            n = max(len(chunks), n_chunks or 0)
        ids, weights = frame(chunks, n, self.pad)
        out["input_ids"], out["weights"] = ids, weights
        if self.name == "sd1-tiny":
            emb = torch.cat([self.te(ids[i:i + 1])[0] for i in range(n)], dim=1)
            out["prompt_embeds"], info["rescale"] = apply_weights(emb, weights.flatten())
            return out, info
        ids_2, weights_2 = frame(chunks, n, self.pad_2)
        assert torch.equal(weights_2, weights)
        out["input_ids_2"] = ids_2
        parts, pooled = [], []
        for i in range(n):
            o1 = self.te(ids[i:i + 1], output_hidden_states=True)
            o2 = self.te_2(ids_2[i:i + 1], output_hidden_states=True)
            parts.append(torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1))
            pooled.append((o1, o2))
        emb, info["rescale"] = apply_weights(torch.cat(parts, dim=1), weights.flatten())
        if self.name == "sdxl-tiny":
            out["prompt_embeds"], out["pooled_prompt_embeds"] = emb, pooled[0][1].text_embeds
            return out, info
        # sd3: CLIP (first chunk) zero-padded to the joint width, then T5
        joint = self.pipe.text_encoder_3.config.d_model
        clip = torch.nn.functional.pad(emb, (0, joint - emb.shape[-1]))
        items = t5_items(self.pipe.tokenizer_3, prompt)
        info["t5_pieces"] = len(items)
        info["t5_truncated"] = len(items) > T5_LENGTH - 1
        items = items[:T5_LENGTH - 1] + [(1, 1.0)]
        items += [(0, 1.0)] * (T5_LENGTH - len(items))
        ids_3 = torch.tensor([[i for i, _ in items]], dtype=torch.int64)
        weights_3 = torch.tensor([[w for _, w in items]], dtype=torch.float32)
        t5 = self.pipe.text_encoder_3(ids_3).last_hidden_state
        t5, info["rescale_t5"] = apply_weights(t5, weights_3.flatten())
        out.update(input_ids_3=ids_3, weights_3=weights_3, prompt_embeds=torch.cat([clip, t5], dim=-2),
                   pooled_prompt_embeds=torch.cat([pooled[0][0].text_embeds, pooled[0][1].text_embeds], dim=-1))
        return out, info

    def encode_pair(self, prompt, negative):
        n = max(len(self.chunks(prompt)), len(self.chunks(negative)))
        return self.encode(prompt, n), self.encode(negative, n)


# ----------------------------------------------------------------------------------------
# cross-checks against diffusers
# ----------------------------------------------------------------------------------------


def diffusers_encode(pipe, prompt):
    """diffusers' encode_prompt without CFG: (prompt_embeds, pooled or None)."""
    if isinstance(pipe, StableDiffusion3Pipeline):
        pe, _, pp, _ = pipe.encode_prompt(prompt, prompt_2=None, prompt_3=None, device="cpu",
                                          num_images_per_prompt=1, do_classifier_free_guidance=False)
        return pe, pp
    if isinstance(pipe, StableDiffusionXLPipeline):
        pe, _, pp, _ = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                          do_classifier_free_guidance=False)
        return pe, pp
    pe, _ = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    return pe, None


def equal(a, b, what):
    assert a.shape == b.shape, f"{what}: shapes {list(a.shape)} != {list(b.shape)}"
    assert torch.equal(a, b), f"{what}: max abs diff {float((a - b).abs().max()):.3g}"


@torch.no_grad()
def check_against_diffusers(model, goldens, checks):
    name, pipe = model.name, model.pipe
    key = lambda case, k: goldens[f"{name}.{case}.{k}"]  # noqa: E731
    w = 77

    def same(case, text, sl=slice(None), what=None):
        pe, pp = diffusers_encode(pipe, text)
        equal(key(case, "prompt_embeds")[:, sl], pe, what or f"{name} {case} vs diffusers")
        if pp is not None:
            equal(key(case, "pooled_prompt_embeds"), pp, f"{name} {case} pooled vs diffusers")
        ids = pipe.tokenizer(text, padding="max_length", max_length=w, truncation=True,
                             return_tensors="pt").input_ids
        equal(key(case, "input_ids")[:1], ids, f"{name} {case} ids vs tokenizer")
        if name != "sd1-tiny":
            ids_2 = pipe.tokenizer_2(text, padding="max_length", max_length=w, truncation=True,
                                     return_tensors="pt").input_ids
            equal(key(case, "input_ids_2")[:1], ids_2, f"{name} {case} ids_2 vs tokenizer_2")

    same("plain", CASES["plain"])
    checks.append(f"{name}: plain == diffusers encode_prompt (embeds, pooled, ids) bit for bit")
    same("escaped", "a (literal) photo of a [cat]")
    checks.append(f"{name}: escaped == diffusers encode_prompt('a (literal) photo of a [cat]')")
    if name == "sd3-tiny":
        same("long", LONG)
        checks.append(f"{name}: long == diffusers encode_prompt(long) (CLIP truncated to the first chunk, T5 whole)")
        pe, _ = diffusers_encode(pipe, "a red fox a blue sky")
        equal(key("break", "prompt_embeds")[:, w:], pe[:, w:], "sd3 break T5 part")
        pe, pp = diffusers_encode(pipe, "a red fox")
        equal(key("break", "prompt_embeds")[:, :w], pe[:, :w], "sd3 break CLIP part")
        equal(key("break", "pooled_prompt_embeds"), pp, "sd3 break pooled")
        checks.append(f"{name}: break: CLIP part == encode('a red fox'), T5 part == encode('a red fox a blue sky')")
        pe, pp = diffusers_encode(pipe, LONG_NEGATIVE)
        equal(key("long", "negative_prompt_embeds"), pe, "sd3 negative")
        equal(key("long", "negative_pooled_prompt_embeds"), pp, "sd3 negative pooled")
        checks.append(f"{name}: long negative 'blurry' == diffusers encode_prompt('blurry') (one CLIP chunk)")
        return
    same("long", LONG, slice(0, w), f"{name} long first chunk vs diffusers (truncated)")
    checks.append(f"{name}: long: first chunk == diffusers' truncated encode_prompt(long)")
    for i, half in enumerate(("a red fox", "a blue sky")):
        pe, pp = diffusers_encode(pipe, half)
        equal(key("break", "prompt_embeds")[:, i * w:(i + 1) * w], pe, f"{name} break chunk {i}")
        if i == 0 and pp is not None:
            equal(key("break", "pooled_prompt_embeds"), pp, f"{name} break pooled")
    checks.append(f"{name}: break: chunk 0 == encode('a red fox'), chunk 1 == encode('a blue sky') (pooled of chunk 0)")
    neg = goldens[f"{name}.long.negative_prompt_embeds"]
    pe, _ = diffusers_encode(pipe, LONG_NEGATIVE)
    equal(neg[:, :w], pe, f"{name} negative chunk 0")
    pe, _ = diffusers_encode(pipe, "")
    for i in (1, 2):
        equal(neg[:, i * w:(i + 1) * w], pe, f"{name} negative chunk {i}")
    checks.append(f"{name}: long negative: chunk 0 == encode('blurry'), chunks 1, 2 == encode('')")


@torch.no_grad()
def check_lpw(model, goldens, checks):
    """sd1: the generalised implementation equals the literal lpw restatement."""
    pipe = model.pipe
    for case, text in CASES.items():
        if case in ("break", "ti"):
            continue
        neg = LONG_NEGATIVE if case == "long" else None
        te, ue, toks, ws = lpw_get_weighted_text_embeddings(pipe, text, neg)
        k = goldens[f"sd1-tiny.{case}.input_ids"].shape[0]
        # lpw keeps one flat row of 75k + 2 ids; chunk j = [start] + row[75j + 1 : 75j + 76] + [end]
        chunks = torch.stack([torch.cat([toks[0, :1], toks[0, 75 * j + 1:75 * j + 76], toks[0, -1:]])
                              for j in range(k)])
        assert toks.shape == (1, 75 * k + 2)
        equal(chunks, goldens[f"sd1-tiny.{case}.input_ids"], f"lpw {case} ids")
        equal(ws.reshape(k, 77), goldens[f"sd1-tiny.{case}.weights"], f"lpw {case} weights")
        equal(te, goldens[f"sd1-tiny.{case}.prompt_embeds"], f"lpw {case}")
        if neg is not None:
            equal(ue, goldens["sd1-tiny.long.negative_prompt_embeds"], "lpw long negative")
    checks.append("sd1-tiny: every case without BREAK / TI (negative pairing included) == the literal lpw "
                  "restatement (get_weighted_text_embeddings, max_embeddings_multiples 3, no_boseos_middle False) "
                  "bit for bit: ids, weights, embeddings")


# ----------------------------------------------------------------------------------------


def load_sd1():
    return fc.load_pipeline("sd1-tiny", cls=StableDiffusionPipeline)


def load_sdxl():
    p = StableDiffusionXLPipeline.from_pretrained(fc.FIX / "sdxl-tiny", dtype=torch.float32, add_watermarker=False)
    p.set_progress_bar_config(disable=True)
    return p


def load_sd3():
    p = StableDiffusion3Pipeline.from_pretrained(fc.FIX / "sd3-tiny", dtype=torch.float32)
    p.set_progress_bar_config(disable=True)
    return p


@torch.no_grad()
def check_ti(name, model, load, notes, checks):
    """The unweighted TI prompt: ids and embeddings equal diffusers' load_textual_inversion + encode_prompt."""
    ref = load()
    if name == "sd1-tiny":
        ref.load_textual_inversion(str(TI_DIR / "cat-toy.safetensors"))
        ref.load_textual_inversion(str(TI_DIR / "easynegative-tiny.safetensors"), token="easynegative-tiny")
        toks = [ref.tokenizer]
    else:
        sd = load_file(TI_DIR / "sdxl-emb.safetensors")
        ref.load_textual_inversion(sd["clip_g"], token="sdxl-emb", text_encoder=ref.text_encoder_2,
                                   tokenizer=ref.tokenizer_2)
        ref.load_textual_inversion(sd["clip_l"], token="sdxl-emb", text_encoder=ref.text_encoder,
                                   tokenizer=ref.tokenizer)
        toks = [ref.tokenizer, ref.tokenizer_2]
    text = TI_CHECK_PROMPT[name]
    g, info = model.encode(text)
    for t, k in zip(toks, ("input_ids", "input_ids_2")):
        converted = ref.maybe_convert_prompt(text, t)
        ids = t(converted, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        equal(g[k], ids, f"{name} TI {k} vs diffusers")
        notes.setdefault("diffusers_maybe_convert_prompt", converted)
        added = {tok: t.convert_tokens_to_ids(tok) for tok in sorted(t.added_tokens_encoder)}
        added = {tok: i for tok, i in added.items() if i >= 49408}
        ours = {(n if j == 0 else f"{n}_{j}"): i for n, ids_ in model.ti_names.items() for j, i in enumerate(ids_)}
        assert added == ours, (added, ours)
    pe, pp = diffusers_encode(ref, text)
    equal(g["prompt_embeds"], pe, f"{name} TI embeds vs diffusers")
    if pp is not None:
        equal(g["pooled_prompt_embeds"], pp, f"{name} TI pooled vs diffusers")
    notes["check_prompt"] = text
    notes["check_ids"] = g["input_ids"][0, :16].tolist()
    checks.append(f"{name}: TI prompt {text!r}: ids and embeddings (and pooled) == diffusers load_textual_inversion "
                  "+ encode_prompt bit for bit")
    if name != "sd1-tiny":
        return
    # bad files (SD 1.x layout)
    widths = {"clip_l": 32}
    bad = {}
    for f in ("nan-emb.safetensors", "wide-emb.safetensors"):
        try:
            read_ti(TI_DIR / f, widths)
            raise AssertionError(f"reader accepted {f}")
        except ValueError as e:
            ours = str(e)
        try:
            fresh = load()
            fresh.load_textual_inversion(str(TI_DIR / f), token=Path(f).stem)
            theirs = "loaded without error"
            if f.startswith("nan"):
                row = fresh.text_encoder.get_input_embeddings().weight[
                    fresh.tokenizer.convert_tokens_to_ids("nan-emb_1")]
                theirs += f" (the NaN is in the embedding row: {bool(torch.isnan(row).any())})"
        except ValueError as e:
            theirs = f"ValueError: {str(e).strip()[:120]}"
        bad[f] = {"this_reader": ours, "diffusers_load_textual_inversion": theirs}
    notes["bad_files"] = bad


@torch.no_grad()
def image_run(name, model, goldens, notes, checks):
    pipe = model.pipe
    own = pipe.scheduler
    g = fc.gen(SEED + (10 if name == "sd1-tiny" else 20))
    h = pipe.unet.config.sample_size
    init = torch.randn(1, 4, h, h, generator=g)
    size = h * pipe.vae_scale_factor
    (pos, _), (neg, ninfo) = model.encode_pair(LONG_WEIGHTED, IMAGE_NEGATIVE[name])
    equal(pos["prompt_embeds"], goldens[f"{name}.long_weighted.prompt_embeds"], "image run prompt embeds")
    kw = dict(prompt_embeds=pos["prompt_embeds"], negative_prompt_embeds=neg["prompt_embeds"])
    if name == "sdxl-tiny":
        kw.update(pooled_prompt_embeds=pos["pooled_prompt_embeds"],
                  negative_pooled_prompt_embeds=neg["pooled_prompt_embeds"])
    pipe.scheduler = copy.deepcopy(own)
    lat = pipe(**kw, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size,
               latents=init.clone(), output_type="latent").images
    sched = pipe.scheduler
    assert type(sched) is {"sd1-tiny": PNDMScheduler, "sdxl-tiny": EulerDiscreteScheduler}[name], type(sched)
    pipe.scheduler = own
    p = f"{name}.image_run"
    goldens[f"{p}.init_latents"] = init
    for k in ("prompt_embeds", "pooled_prompt_embeds", "input_ids", "input_ids_2", "weights"):
        if k in neg:
            goldens[f"{p}.negative_{k}"] = neg[k]
    goldens[f"{p}.latents"] = lat
    goldens[f"{p}.image"] = fc.np_image(pipe.vae, lat)
    # the same call with a plain prompt's embeddings == the pipeline called with the texts
    (pp_, _), (pn_, _) = model.encode_pair(CASES["plain"], "blurry, low quality")
    kw2 = dict(prompt_embeds=pp_["prompt_embeds"], negative_prompt_embeds=pn_["prompt_embeds"])
    if name == "sdxl-tiny":
        kw2.update(pooled_prompt_embeds=pp_["pooled_prompt_embeds"],
                   negative_pooled_prompt_embeds=pn_["pooled_prompt_embeds"])
    outs = []
    for kwargs in (kw2, dict(prompt=CASES["plain"], negative_prompt="blurry, low quality")):
        pipe.scheduler = copy.deepcopy(own)
        outs.append(pipe(**kwargs, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size,
                         latents=init.clone(), output_type="latent").images)
    pipe.scheduler = own
    equal(outs[0], outs[1], f"{name} pipeline with our plain embeddings vs with the text")
    checks.append(f"{name}: image run: the pipeline given this script's embeddings of an unweighted prompt/negative "
                  "== the pipeline given the texts (bit for bit)")
    notes.update({
        "prompt": LONG_WEIGHTED, "prompt_embeds": f"{name}.long_weighted.prompt_embeds (3 chunks)",
        "negative_prompt": IMAGE_NEGATIVE[name], "negative_fragments": ninfo["fragments"],
        "negative_chunks": f"{ninfo['chunks']} chunk(s) padded to 3 with empty chunks",
        "negative_rescale": ninfo["rescale"],
        "num_inference_steps": STEPS, "guidance_scale": GUIDANCE, "height": size, "width": size,
        "init_latents": f"{p}.init_latents passed as latents= (multiplied by init_noise_sigma)",
        "scheduler": {"class": type(sched).__name__, "config": fc.effective_config(sched),
                      "timesteps": sched.timesteps.tolist(), "init_noise_sigma": float(sched.init_noise_sigma)},
        "image": "output_type 'latent', decoded as output_type 'np': (vae.decode(latents / scaling_factor).sample "
                 "/ 2 + 0.5).clamp(0, 1), [H,W,3]",
        "cfg": "UNet batch [negative, positive]; noise_pred = uncond + 5 * (text - uncond)"
               + ("; time ids (64, 64, 0, 0, 64, 64) for both rows" if name == "sdxl-tiny" else ""),
    })


def main():
    t0 = time.time()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")
    # parser
    for text, expected in PARSER_DOCUMENTED:
        assert parse_prompt_attention(text) == expected, (text, parse_prompt_attention(text))
    assert parse_prompt_attention("a (word:abc) here") == [["a ", 1.0], ["word:abc", 1.1], [" here", 1.0]]
    parser_cases = [{"text": t, "parsed": e, "source": "A1111 docstring"} for t, e in PARSER_DOCUMENTED]
    parser_cases += [{"text": t, "parsed": parse_prompt_attention(t)} for t in PARSER_MORE]
    quirks = {}
    for t, why in PARSER_QUIRKS.items():
        try:
            r = parse_prompt_attention(t)
        except ValueError as e:
            r = f"ValueError: {e}"
        quirks[t] = {"a1111": r, "note": why}

    pipes = {"sd1-tiny": load_sd1(), "sdxl-tiny": load_sdxl(), "sd3-tiny": load_sd3()}
    loaders = {"sd1-tiny": load_sd1, "sdxl-tiny": load_sdxl, "sd3-tiny": load_sd3}
    files = write_ti_files(pipes["sd1-tiny"].text_encoder, pipes["sdxl-tiny"].text_encoder,
                           pipes["sdxl-tiny"].text_encoder_2)
    ti = {"sd1-tiny": TI({"clip_l": 32}), "sdxl-tiny": TI({"clip_l": 32, "clip_g": 48})}
    ti["sd1-tiny"].load(TI_DIR / "cat-toy.safetensors")
    ti["sd1-tiny"].load(TI_DIR / "easynegative-tiny.safetensors")
    ti["sdxl-tiny"].load(TI_DIR / "sdxl-emb.safetensors")

    goldens, cases_info, checks, ti_notes, runs = {}, {}, [], {}, {}
    for name in MODELS:
        model = Model(name, pipes[name], ti.get(name))
        cases_info[name] = {}
        for case, text in CASES.items():
            if case == "ti":
                if name not in TI_PROMPT:
                    continue
                text = TI_PROMPT[name]
            if case == "long":
                (out, info), (nout, ninfo) = model.encode_pair(text, LONG_NEGATIVE)
                for k, v in nout.items():
                    goldens[f"{name}.long.negative_{k}"] = v
                info["negative"] = {"text": LONG_NEGATIVE, "rescale": ninfo["rescale"],
                                    "chunks": f"{ninfo['chunks']} padded to {out['input_ids'].shape[0]}"}
            else:
                out, info = model.encode(text)
            for k, v in out.items():
                goldens[f"{name}.{case}.{k}"] = v
            info = {"text": text, **info, "prompt_embeds": list(out["prompt_embeds"].shape)}
            cases_info[name][case] = info
            r = info["rescale"]
            print(f"  {name:9s} {case:13s} chunks {info['chunks']} tokens {info['tokens_per_chunk']} factor "
                  f"{r['factor']:.6f} (mean {r['previous_mean']:+.2e}, f32 vs f64 {r['f32_vs_f64']:.1e})"
                  + (f" t5 factor {info['rescale_t5']['factor']:.6f}" if "rescale_t5" in info else ""))
        check_against_diffusers(model, goldens, checks)
        if name == "sd1-tiny":
            check_lpw(model, goldens, checks)
        if name in ti:
            ti_notes[name] = {"tokens": model.ti_names}
            check_ti(name, model, loaders[name], ti_notes[name], checks)
            runs[name] = {}
            image_run(name, model, goldens, runs[name], checks)

    # structural checks of the weighted cases
    w = goldens["sd1-tiny.long_weighted.weights"]
    assert w.shape == (3, 77) and float(w[0, 75]) == float(w[1, 1]) == float(torch.tensor(1.3)), \
        "the (…:1.3) span must cross the chunk boundary"
    assert float(w[0, 76]) == 1.0 and float(w[1, 0]) == 1.0
    for name in ("sd1-tiny", "sdxl-tiny"):
        assert goldens[f"{name}.long.input_ids"].shape == (3, 77)
        assert goldens[f"{name}.break.input_ids"].shape == (2, 77)
    assert goldens["sdxl-tiny.long.input_ids_2"][2].tolist().count(0) > 0
    w = goldens["sd1-tiny.weighted.weights"][0]
    assert w[:8].tolist() == [1.0, 1.0, float(torch.tensor(1.3)), 1.0, 1.0, float(torch.tensor(1 / 1.1)),
                              float(torch.tensor(1.1 * 1.1)), 1.0], w[:8].tolist()
    assert goldens["sd3-tiny.weighted.weights_3"].max() > 1.2
    print(f"  {len(checks)} cross-checks passed")

    print("goldens:")
    fc.save_goldens(GOLDEN, goldens, GEN, show=False)
    for k in sorted(goldens):
        print(f"  {k:48s} {str(goldens[k].dtype).removeprefix('torch.'):8s} {list(goldens[k].shape)}")
    fc.write_json(SETTINGS, {
        "generator": GEN,
        "versions": fc.versions(),
        "reference": "diffusers community pipeline lpw_stable_diffusion.py (get_weighted_text_embeddings) with "
                     "AUTOMATIC1111's parse_prompt_attention (modules/prompt_parser.py), both restated in the script",
        "models": {m: f"tests/fixtures/{m}" for m in MODELS},
        "cases": {k: (v if k != "ti" else TI_PROMPT) for k, v in CASES.items()},
        "long_negative": LONG_NEGATIVE,
        "per_model": cases_info,
        "textual_inversion": {
            "files": files,
            "tokens": {n: v["tokens"] for n, v in ti_notes.items()},
            "checks": {n: {k: v for k, v in t.items() if k != "tokens"} for n, t in ti_notes.items()},
            "diffusers_loading": {
                "cat-toy.safetensors": "pipe.load_textual_inversion(path) (token = the key)",
                "easynegative-tiny.safetensors": "pipe.load_textual_inversion(path, token='easynegative-tiny') (an "
                "'emb_params' file has one key, so diffusers would name the token 'emb_params' without token=)",
                "sdxl-emb.safetensors": "sd = load_file(path); pipe.load_textual_inversion(sd['clip_g'], token="
                "'sdxl-emb', text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2); the same with "
                "sd['clip_l'], text_encoder, tokenizer",
                "multi_vector": "n vectors take n positions: the name becomes 'name name_1 ... name_{n-1}' "
                "(maybe_convert_prompt), ids allocated from 49408 in load order (sd1: cat-toy first)",
            },
        },
        "parser": {"documented_examples_checked": len(PARSER_DOCUMENTED), "cases": parser_cases,
                   "quirks": quirks},
        "choices": {
            "parser": "A1111's current regex (':\\s*([+-]?[.\\d]+)\\s*\\)', spaces allowed around the number) and "
                      "its BREAK split (re '\\s*\\bBREAK\\b\\s*' on text fragments -> ['BREAK', -1]); lpw's copy is "
                      "the older regex without \\s* and has no BREAK. '[x]' multiplies by the float64 1/1.1. A lone "
                      "backslash is dropped ('a\\b' -> 'ab'). Weights are float64 products in bracket-closing order, "
                      "stored and applied as float32",
            "tokenisation": "each fragment on its own: tokenizer(fragment).input_ids[1:-1] (lpw); no truncation and "
                            "no limit on the chunk count (lpw's max_embeddings_multiples 3 does not bind here: the "
                            "long prompts have 165 tokens, 3 chunks)",
            "chunking": "75 tokens per chunk, no comma backtracking (A1111's comma_padding_backtrack is not "
                        "applied, as in lpw); a chunk is closed lazily when the 76th token arrives or at BREAK",
            "chunk_framing": "<start> + tokens + <end> + the tokenizer's own pad token up to 77, for every chunk "
                             "(tail, BREAK-ended, empty padding chunks) = tokenizer(padding='max_length') for <= 75 "
                             "tokens, so that short unweighted prompts give diffusers' plain encoding. For CLIP-L "
                             "(pad = <|endoftext|>) this is exactly lpw's layout; for tokenizer_2 (pad '!' = 0) lpw "
                             "would put '!' between the tokens and a final <end> at position 76, A1111 pads with "
                             "<end> and then turns everything after the first <end> into the pad id (OpenCLIP) = "
                             "this choice",
            "break": "ends the current chunk, which is padded like any other (<end> then pad; BREAK is A1111 only, "
                     "lpw has none); 'BREAK' at the start gives an empty first chunk; at the end, no extra chunk",
            "weights": "start / end / pad positions weigh 1.0; every token of a fragment its fragment's weight",
            "rescale": "lpw: over the whole [1, 77k, D] embedding at once (A1111's 'Original' emphasis does it per "
                       "77-token chunk); prompt and negative each on their own; an all-1 prompt is unchanged bit "
                       "for bit (factor exactly 1). The means are float32 torch means; per_model.*.rescale gives the "
                       "factor, the unweighted mean and the max deviation from a float64 evaluation (the factor divides "
                       "by a mean, which is small for some tiny-model cases: sdxl-tiny 'weighted' has mean 4e-4, "
                       "factor 0.59)",
            "negative_pairing": "both padded to max(chunk counts) with empty chunks (<start><end>pad...) before "
                                "encoding and rescaling (lpw pads both to the longer one too)",
            "sd1": "text_encoder(ids)[0]: last hidden state after the final LayerNorm (clip_skip 0)",
            "sdxl": "per chunk cat(text_encoder.hidden_states[-2], text_encoder_2.hidden_states[-2]) on features "
                    "(diffusers' encode_prompt), chunks on tokens; both encoders see the same tokens and weights "
                    "(tokenizer_2's ids differ only in the pad id); rescale over the concatenated [77k, 80]; pooled = "
                    "text_encoder_2 text_embeds of the FIRST chunk, unweighted (pooling at the first id 49407: both "
                    "configs have eos_token_id 49407; with the legacy eos_token_id 2 transformers pools at "
                    "argmax(ids), which would be a TI id >= 49408 if one is in the first chunk)",
            "sd3": "CLIP: the first chunk only (SD3's sequence holds 77 CLIP tokens; the rest of a long / BREAK "
                   "prompt reaches the model through T5 only), weighted and rescaled over its [77, 80] before the "
                   "zero-padding to 96; T5: fragments tokenised on their own (tokenizer_3(fragment, "
                   "add_special_tokens=False)), brackets removed, BREAK entries skipped, cut to 255 pieces, </s> and "
                   "<pad> weigh 1, rescaled over the T5 part [256, 96] alone; pooled = cat(CLIP-L, bigG text_embeds) "
                   "of the first chunk, unweighted; input_ids / weights store only the encoded first chunk [1, 77]",
            "textual_inversion": "names are cut out of each fragment before BPE (leftmost, then longest name; case "
                                 "sensitive; the goldens use lower-case names only); an n-vector embedding gives n "
                                 "consecutive ids with the fragment's weight each; rows appended to the token "
                                 "embedding from id 49408 in load order (as diffusers); the reader refuses non-finite "
                                 "values and a wrong width",
            "ti_dtypes": "cat-toy float32, easynegative-tiny and sdxl-emb float16 (both kinds occur in the wild), "
                         "used as float32",
        },
        "cross_checks": checks,
        "image_runs": runs,
    })

    print("files:")
    fc.list_files(sorted(TI_DIR.iterdir()) + [GOLDEN, SETTINGS])
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
