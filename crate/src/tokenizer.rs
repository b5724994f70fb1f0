//! The CLIP tokenizer: byte-level BPE with an end-of-word suffix, 77 tokens framed by
//! `<|startoftext|>` and `<|endoftext|>`, padded with the model's own pad token.
//!
//! A diffusers folder ships either `tokenizer.json` (the fast tokenizer, used as is) or
//! `vocab.json` + `merges.txt` (SD 1.x/2.x on the hub), from which the same pipeline
//! transformers' `CLIPTokenizerFast` builds is assembled here.

pub mod t5;

use std::collections::HashMap;

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// The words CLIP's BPE sees: contractions, letter runs, single digits, symbol runs.
const PRE_TOKENIZE: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The text files of a diffusers `tokenizer/` folder; what a folder lacks is `None`.
#[derive(Debug, Default, Clone)]
pub struct TokenizerFiles {
    pub tokenizer_json: Option<String>,
    pub vocab_json: Option<String>,
    pub merges_txt: Option<String>,
    pub tokenizer_config_json: Option<String>,
    pub special_tokens_map_json: Option<String>,
}

pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    max_length: usize,
}

impl ClipTokenizer {
    /// `dir` names the folder in errors (e.g. `model/tokenizer`).
    pub fn new(files: &TokenizerFiles, dir: &str) -> Result<Self> {
        let config = parse_optional(&files.tokenizer_config_json, dir, "tokenizer_config.json")?;
        let special = parse_optional(
            &files.special_tokens_map_json,
            dir,
            "special_tokens_map.json",
        )?;
        let token = |name: &str, default: &str| {
            token_name(&config, name)
                .or_else(|| token_name(&special, name))
                .unwrap_or_else(|| default.into())
        };
        let mut tokenizer = match (&files.tokenizer_json, &files.vocab_json, &files.merges_txt) {
            (Some(json), _, _) => Tokenizer::from_bytes(json).map_err(|e| Error::Tokenizer {
                file: format!("{dir}/tokenizer.json"),
                message: e.to_string(),
            })?,
            (None, Some(vocab), Some(merges)) => from_vocab_and_merges(vocab, merges, dir)?,
            _ => {
                return Err(Error::Tokenizer {
                    file: dir.into(),
                    message: "needs tokenizer.json, or vocab.json and merges.txt".into(),
                });
            }
        };
        let (bos, eos, pad) = (
            token("bos_token", BOS),
            token("eos_token", EOS),
            token("pad_token", EOS),
        );
        // transformers registers the config's special tokens as added tokens, so a pad
        // token such as SD 2.x's "!" is matched whole and never split by BPE.
        if files.tokenizer_json.is_none() {
            tokenizer
                .add_special_tokens([
                    AddedToken::from(bos.clone(), true),
                    AddedToken::from(eos.clone(), true),
                    AddedToken::from(pad.clone(), true),
                ])
                .map_err(|e| Error::Tokenizer {
                    file: dir.into(),
                    message: e.to_string(),
                })?;
        }
        // SD's tokenization is always the same framing (see `encode`): whatever padding or
        // truncation a tokenizer.json asks for is not applied.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer {
                file: dir.into(),
                message: e.to_string(),
            })?;
        let id = |name: &str, token: &str| -> Result<u32> {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| Error::Tokenizer {
                    file: dir.into(),
                    message: format!("{name} {token:?} is not in the vocabulary"),
                })
        };
        let max_length = config
            .get("model_max_length")
            .and_then(Value::as_u64)
            .filter(|&n| (2..=4096).contains(&n))
            .unwrap_or(77) as usize;
        Ok(Self {
            bos: id("bos_token", &bos)?,
            eos: id("eos_token", &eos)?,
            pad: id("pad_token", &pad)?,
            max_length,
            tokenizer,
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// How many ids the tokenizer can produce (its vocabulary with special tokens).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The ids of `text` without the framing (no start, end or padding, not truncated):
    /// what a prompt fragment contributes to a chunk (see `pipeline::weighting`).
    pub fn tokens(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::invalid("prompt", format!("could not be tokenized: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// `tokens` framed as one chunk: `[bos, tokens…, eos, pad…]`, `max_length` long
    /// (`tokens` must leave room for the start and end).
    pub fn frame(&self, tokens: &[u32]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend(tokens.iter().take(self.max_length - 2));
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        ids
    }

    /// Token ids for `text`: `[bos, …, eos, pad…]`, exactly `max_length` long; over-long
    /// text is truncated with `eos` kept last, as diffusers' `encode_prompt` does.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::invalid("prompt", format!("could not be tokenized: {e}")))?;
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend(encoding.get_ids().iter().take(self.max_length - 2));
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        Ok(ids)
    }
}

fn from_vocab_and_merges(vocab: &str, merges: &str, dir: &str) -> Result<Tokenizer> {
    let tokenizer_error = |file: &str, message: String| Error::Tokenizer {
        file: format!("{dir}/{file}"),
        message,
    };
    let vocab: HashMap<String, u32> = serde_json::from_str(vocab)
        .map_err(|e| tokenizer_error("vocab.json", format!("invalid JSON: {e}")))?;
    let vocab: tokenizers::models::bpe::Vocab = vocab.into_iter().collect();
    let merges = merges
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.starts_with("#version") && !line.trim().is_empty())
        .map(|(i, line)| {
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
                _ => Err(tokenizer_error(
                    "merges.txt",
                    format!("line {} is not two tokens: {line:?}", i + 1),
                )),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(EOS.into())
        .end_of_word_suffix("</w>".into())
        .build()
        .map_err(|e| tokenizer_error("merges.txt", e.to_string()))?;

    let build_error = |e: tokenizers::Error| tokenizer_error("vocab.json", e.to_string());
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(vec![
            NFC.into(),
            Replace::new(
                tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
                " ",
            )
            .map_err(build_error)?
            .into(),
            Lowercase.into(),
        ])))
        .map_err(build_error)?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        Split::new(
            SplitPattern::Regex(PRE_TOKENIZE.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(build_error)?
        .into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    let bos_id = tokenizer.token_to_id(BOS).unwrap_or(49406);
    let eos_id = tokenizer.token_to_id(EOS).unwrap_or(49407);
    tokenizer.with_post_processor(Some(
        RobertaProcessing::new((EOS.into(), eos_id), (BOS.into(), bos_id))
            .trim_offsets(false)
            .add_prefix_space(false),
    ));
    Ok(tokenizer)
}

pub(crate) fn parse_optional(text: &Option<String>, dir: &str, file: &str) -> Result<Value> {
    match text {
        Some(text) => serde_json::from_str(text).map_err(|e| Error::Json {
            file: format!("{dir}/{file}"),
            message: e.to_string(),
        }),
        None => Ok(Value::Null),
    }
}

/// A special token named in a tokenizer config, either `"<tok>"` or `{"content": "<tok>"}`.
pub(crate) fn token_name(config: &Value, name: &str) -> Option<String> {
    match config.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}
