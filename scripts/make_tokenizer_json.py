"""Writes tests/fixtures/tokenizer-json/tokenizer.json: transformers' fast CLIP tokenizer for
the sd1-tiny model (the file a diffusers folder may ship instead of vocab.json/merges.txt).

The hostile-input tests copy it into a model with `padding`/`truncation` settings added and
check that the embeddings do not change: SD's framing is always 77 tokens.

    python scripts/make_tokenizer_json.py
"""

from pathlib import Path

from transformers import CLIPTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"

tokenizer = CLIPTokenizerFast.from_pretrained(FIX / "sd1-tiny" / "tokenizer")
out = FIX / "tokenizer-json"
out.mkdir(exist_ok=True)
# The backend tokenizer as transformers builds it; transformers applies no padding or
# truncation from the file itself, which is what `no_padding`/`no_truncation` record.
tokenizer.backend_tokenizer.no_padding()
tokenizer.backend_tokenizer.no_truncation()
tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
print("wrote", out / "tokenizer.json")
