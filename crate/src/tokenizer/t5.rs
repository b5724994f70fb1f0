//! T5's tokenizer: a SentencePiece Unigram model, read from the `tokenizer.json` that
//! transformers' `T5TokenizerFast` saves (SD3's `tokenizer_3/`). A prompt becomes its
//! pieces, then `</s>`, then `<pad>` up to the requested length (SD3's
//! `max_sequence_length`, 256 by default); longer prompts are cut so that `</s>` stays last.

use serde_json::Value;
use tokenizers::Tokenizer;

use super::{TokenizerFiles, parse_optional, token_name};
use crate::error::{Error, Result};

/// The longest T5 sequence SD3 conditions on (diffusers refuses more).
pub const MAX_SEQUENCE_LENGTH: usize = 512;

pub struct T5Tokenizer {
    tokenizer: Tokenizer,
    eos: u32,
    pad: u32,
}

impl T5Tokenizer {
    /// `dir` names the folder in errors (e.g. `model/tokenizer_3`).
    pub fn new(files: &TokenizerFiles, dir: &str) -> Result<Self> {
        let file = format!("{dir}/tokenizer.json");
        let error = |message: String| Error::Tokenizer {
            file: file.clone(),
            message,
        };
        let Some(json) = &files.tokenizer_json else {
            return Err(Error::Tokenizer {
                file: dir.into(),
                message: "needs tokenizer.json (a SentencePiece spiece.model is not read: \
                          save the tokenizer with transformers' T5TokenizerFast to get one)"
                    .into(),
            });
        };
        let value: Value = serde_json::from_str(json).map_err(|e| Error::Json {
            file: file.clone(),
            message: e.to_string(),
        })?;
        match value.pointer("/model/type").and_then(Value::as_str) {
            Some("Unigram") => {}
            other => {
                return Err(Error::config(
                    &file,
                    "model.type",
                    format!(
                        "is {}, but T5's tokenizer is a SentencePiece \"Unigram\" model",
                        other.map_or("missing".into(), |t| format!("{t:?}"))
                    ),
                ));
            }
        }
        let mut tokenizer = Tokenizer::from_bytes(json).map_err(|e| error(e.to_string()))?;
        // The framing is applied in `encode`, whatever the file asks for.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| error(e.to_string()))?;
        let config = parse_optional(&files.tokenizer_config_json, dir, "tokenizer_config.json")?;
        let special = parse_optional(
            &files.special_tokens_map_json,
            dir,
            "special_tokens_map.json",
        )?;
        let id = |name: &str, default: &str| -> Result<u32> {
            let token = token_name(&config, name)
                .or_else(|| token_name(&special, name))
                .unwrap_or_else(|| default.into());
            tokenizer
                .token_to_id(&token)
                .ok_or_else(|| error(format!("{name} {token:?} is not in the vocabulary")))
        };
        Ok(Self {
            eos: id("eos_token", "</s>")?,
            pad: id("pad_token", "<pad>")?,
            tokenizer,
        })
    }

    /// How many ids the tokenizer can produce (its vocabulary with special tokens).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The pieces of `text` without `</s>` or padding.
    pub fn pieces(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::invalid("prompt", format!("could not be tokenized: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// `pieces` framed to exactly `length` ids: at most `length − 1` of them, `</s>`, padding.
    pub fn frame(&self, pieces: &[u32], length: usize) -> Vec<u32> {
        let mut ids: Vec<u32> = pieces
            .iter()
            .copied()
            .take(length.saturating_sub(1))
            .collect();
        ids.push(self.eos);
        ids.resize(length, self.pad);
        ids
    }

    /// Token ids for `text`, exactly `length` long: the pieces, `</s>`, then padding.
    pub fn encode(&self, text: &str, length: usize) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::invalid("prompt", format!("could not be tokenized: {e}")))?;
        let mut ids: Vec<u32> = encoding
            .get_ids()
            .iter()
            .copied()
            .take(length.saturating_sub(1))
            .collect();
        ids.push(self.eos);
        ids.resize(length, self.pad);
        Ok(ids)
    }
}
