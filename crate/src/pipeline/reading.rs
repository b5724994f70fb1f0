//! How a prompt becomes the denoiser's text conditioning: tokenized as AUTOMATIC1111 reads
//! it (diffusers' community `lpw_stable_diffusion` `get_weighted_text_embeddings`, its
//! parser A1111's; see `crate::prompt`), or literally as diffusers' `encode_prompt` does.
//!
//! Weighted reading: the prompt's tokens are cut into chunks of 75, each encoded as
//! start + 75 + end (padded as the tokenizer pads) and the hidden states joined on the
//! token axis, `[1, 77·k, D]`; each token's state is multiplied by its weight and the whole
//! embedding rescaled back to its unweighted mean. A prompt without the syntax and within
//! 75 tokens gives exactly the literal reading, which is one chunk, cut at 75 tokens.
//!
//! Where the reference says nothing (tests/fixtures/goldens/prompts-weighting.json,
//! `choices`): `BREAK` closes the chunk; SDXL's two encoders see the same chunks and weights,
//! their states side by side, rescaled together, the pooled embedding from the first chunk;
//! SD3's CLIP part is the first chunk only (its sequence holds 77 CLIP tokens) and T5 reads
//! every fragment (up to its length) with the fragments' weights, rescaled on its own.
//! Textual-inversion words are cut out of each fragment (leftmost, then longest) before
//! the rest is tokenized, and take one position per vector.

use std::sync::Arc;

use burn::module::Param;
use burn::prelude::*;

use super::text::{PromptEmbeds, TextEncoders};
use crate::error::{Error, Result};
use crate::family::Family;
use crate::lora::{self, Lora};
use crate::models::clip::ClipTextModel;
use crate::prompt::{Fragment, parse_prompt_attention};
use crate::textual_inversion::{Slot, TextualInversion};
use crate::tokenizer::ClipTokenizer;

/// The most chunks of 75 tokens a prompt may fill (1200 tokens): more than any UI's prompt
/// box holds, and a bound on the memory a pasted book would take.
pub const MAX_CHUNKS: usize = 16;

/// How a request's prompts are read.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// A1111's syntax and chunks (`false`: brackets are text, cut at 77 tokens).
    pub weighting: bool,
    /// Final CLIP layers skipped (diffusers' `clip_skip`).
    pub clip_skip: usize,
    /// SD3: the T5 tokens the prompt is read as.
    pub t5_length: usize,
}

impl Default for Reading {
    /// A1111's reading, every CLIP layer, T5's 256 tokens (diffusers' default).
    fn default() -> Self {
        Self {
            weighting: true,
            clip_skip: 0,
            t5_length: 256,
        }
    }
}

impl Reading {
    /// diffusers' `encode_prompt`: brackets are text, cut at 77 tokens.
    pub fn literal() -> Self {
        Self {
            weighting: false,
            ..Self::default()
        }
    }
}

/// Words that stand for textual-inversion vectors, with their ids, for one encoder.
type Words = Vec<(String, Vec<u32>)>;

/// The CLIP encoders one request runs: its LoRAs applied, its embeddings' vectors appended
/// to the token embeddings, and the words that name them (per encoder).
pub struct TextModels {
    pub models: Vec<ClipTextModel>,
    words: Vec<Words>,
}

/// One encoder's view of a prompt: chunks of at most 75 tokens, each token with its weight.
#[derive(Debug, Clone, Default)]
pub struct Chunks {
    pub chunks: Vec<Vec<(u32, f32)>>,
}

impl Chunks {
    /// The fragments' tokens by `tokenizer` (`words` cut out first), a new chunk at each
    /// 76th token and at `BREAK` (one at the start leaves an empty first chunk, one at the
    /// end adds none). More than [`MAX_CHUNKS`] chunks are refused, naming `what`.
    pub fn new(
        tokenizer: &ClipTokenizer,
        fragments: &[Fragment],
        words: &Words,
        what: &str,
    ) -> Result<Self> {
        let size = tokenizer.max_length() - 2;
        let mut chunks = Vec::new();
        let mut current: Vec<(u32, f32)> = Vec::new();
        for fragment in fragments {
            let Fragment::Text { text, weight } = fragment else {
                chunks.push(std::mem::take(&mut current));
                continue;
            };
            for token in fragment_tokens(tokenizer, text, words)? {
                if current.len() == size {
                    chunks.push(std::mem::take(&mut current));
                }
                if chunks.len() == MAX_CHUNKS {
                    return Err(too_long(what, size));
                }
                current.push((token, *weight as f32));
            }
        }
        if !current.is_empty() || chunks.is_empty() {
            chunks.push(current);
        }
        if chunks.len() > MAX_CHUNKS {
            return Err(too_long(what, size));
        }
        Ok(Self { chunks })
    }

    /// Whether every token of the first `count` chunks weighs 1.
    fn unweighted(&self, count: usize) -> bool {
        self.chunks
            .iter()
            .take(count)
            .flatten()
            .all(|&(_, w)| w == 1.0)
    }

    /// Chunk `i` framed by `tokenizer` (77 ids) and its weights (1 for start, end, padding);
    /// past the last chunk, an empty one.
    pub fn framed(&self, i: usize, tokenizer: &ClipTokenizer) -> (Vec<u32>, Vec<f32>) {
        let chunk = self.chunks.get(i).map_or(&[][..], |c| &c[..]);
        let tokens: Vec<u32> = chunk.iter().map(|&(t, _)| t).collect();
        let ids = tokenizer.frame(&tokens);
        let mut weights = vec![1.0; ids.len()];
        for (k, &(_, w)) in chunk.iter().enumerate() {
            weights[k + 1] = w;
        }
        (ids, weights)
    }
}

fn too_long(what: &str, size: usize) -> Error {
    Error::invalid(
        what,
        format!(
            "is longer than {} tokens ({MAX_CHUNKS} chunks of {size}); shorten it",
            MAX_CHUNKS * size
        ),
    )
}

/// `prompt` as A1111 parses it, or (`weighting` off) as one fragment of weight 1.
fn fragments(prompt: &str, weighting: bool) -> Vec<Fragment> {
    match weighting {
        true => parse_prompt_attention(prompt),
        false => vec![Fragment::Text {
            text: prompt.to_string(),
            weight: 1.0,
        }],
    }
}

/// The ids of `text` with the textual-inversion `words` in it replaced by their ids.
fn fragment_tokens(tokenizer: &ClipTokenizer, text: &str, words: &Words) -> Result<Vec<u32>> {
    let mut tokens = Vec::new();
    let mut rest = text;
    loop {
        // The leftmost word, the longest where several start there.
        let found = words
            .iter()
            .filter_map(|(word, ids)| rest.find(word.as_str()).map(|at| (at, word, ids)))
            .min_by_key(|&(at, word, _)| (at, std::cmp::Reverse(word.len())));
        let Some((at, word, ids)) = found else {
            break;
        };
        tokens.extend(tokenizer.tokens(&rest[..at])?);
        tokens.extend(ids);
        rest = &rest[at + word.len()..];
    }
    tokens.extend(tokenizer.tokens(rest)?);
    Ok(tokens)
}

/// A prompt as tokens: each CLIP encoder's chunks, and SD3's T5 ids with their weights.
pub struct Tokens {
    pub clip: Vec<Chunks>,
    pub t5: Option<(Vec<u32>, Vec<f32>)>,
}

impl Tokens {
    /// The chunks the prompt fills.
    pub fn chunk_count(&self) -> usize {
        self.clip[0].chunks.len()
    }
}

/// Multiplies each token's state of `embeds` `[1, N, D]` by `weights` (N), then rescales
/// the whole so that its mean is the unweighted one (lpw's rescaling).
fn apply_weights(embeds: Tensor<3>, weights: Vec<f32>, device: &Device) -> Tensor<3> {
    let n = weights.len();
    let dtype = embeds.dtype();
    let embeds = embeds.cast(burn::tensor::DType::F32);
    let weights = Tensor::<1>::from_data(TensorData::new(weights, [n]), device);
    let before = embeds.clone().mean();
    let weighted = embeds * weights.reshape([1, n, 1]);
    let after = weighted.clone().mean();
    (weighted * (before / after).reshape([1, 1, 1])).cast(dtype)
}

impl TextEncoders {
    /// Which textual-inversion vectors the CLIP encoder `i` reads.
    fn slot(&self, i: usize) -> Slot {
        match i {
            0 => Slot::ClipL,
            _ => Slot::ClipG,
        }
    }

    /// Refuses an embedding that does not fit these encoders, naming its file, its token
    /// and both widths.
    pub fn check_embedding(&self, ti: &TextualInversion) -> Result<()> {
        let what = format!("{} (token `{}`)", ti.file, ti.token);
        if self.family == Family::Sd3 {
            return Err(Error::invalid(
                "embedding",
                format!("{what}: textual inversion is for SD 1.x/2.x and SDXL, not SD3"),
            ));
        }
        let slots: Vec<Slot> = (0..self.encoders.len()).map(|i| self.slot(i)).collect();
        let theirs: Vec<&str> = ti.vectors.iter().map(|v| v.key.as_str()).collect();
        if ti.vectors.len() != slots.len() {
            let needs = match self.family {
                Family::Sdxl => "SDXL's two text encoders need `clip_l` and `clip_g` vectors",
                _ => "this model has one text encoder and needs one set of vectors",
            };
            return Err(Error::invalid(
                "embedding",
                format!("{what} holds {theirs:?}; {needs}"),
            ));
        }
        for (encoder, slot) in self.encoders.iter().zip(slots) {
            let vectors = ti.vectors(slot).expect("one set per encoder");
            let width = encoder.config.hidden_size;
            if vectors.width != width {
                return Err(Error::invalid(
                    "embedding",
                    format!(
                        "{what}: `{}` is {} wide but the {}'s token embedding is {width} wide \
                         (an embedding for another model)",
                        vectors.key, vectors.width, encoder.component
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Refuses embeddings that do not fit, or two that name the same word.
    fn check_embeddings(&self, embeddings: &[Arc<TextualInversion>]) -> Result<()> {
        for (i, ti) in embeddings.iter().enumerate() {
            self.check_embedding(ti)?;
            if let Some(other) = embeddings[..i].iter().find(|o| o.token == ti.token) {
                return Err(Error::invalid(
                    "embedding",
                    format!(
                        "{} and {} both stand for `{}`: give one another token",
                        other.file, ti.file, ti.token
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The words of `embeddings` with the ids their vectors take in encoder `i`: rows
    /// after its vocabulary, in order.
    fn words(&self, i: usize, embeddings: &[Arc<TextualInversion>]) -> Words {
        let mut next = self.encoders[i].model.embeddings.token_embedding.rows() as u32;
        let mut words = Words::new();
        for ti in embeddings {
            words.push((ti.token.clone(), (next..next + ti.count as u32).collect()));
            next += ti.count as u32;
        }
        words
    }

    /// The encoders one request runs: `loras` applied, `embeddings` appended (each
    /// refused if it does not fit, or if two name the same word).
    pub fn prepare(
        &self,
        loras: &[(Arc<Lora>, f32)],
        embeddings: &[Arc<TextualInversion>],
    ) -> Result<TextModels> {
        self.check_embeddings(embeddings)?;
        let mut models = Vec::new();
        for (i, encoder) in self.encoders.iter().enumerate() {
            let mut model = lora::apply(&encoder.model, encoder.component, loras);
            let table = &mut model.embeddings.token_embedding;
            for ti in embeddings {
                let vectors = ti.vectors(self.slot(i)).expect("checked");
                let part = table.parts[0].val();
                let rows = Tensor::<2>::from_data(
                    TensorData::new(vectors.values.clone(), [ti.count, vectors.width]),
                    &part.device(),
                )
                .cast(part.dtype());
                table.parts.push(Param::from_tensor(rows));
            }
            models.push(model);
        }
        let words = (0..self.encoders.len())
            .map(|i| self.words(i, embeddings))
            .collect();
        Ok(TextModels { models, words })
    }

    /// The tokens each chunk of `prompt` holds, as the first encoder reads it, for a
    /// prompt box's counter. Read literally, the count goes on past the 75 that are kept.
    pub fn count_tokens(
        &self,
        prompt: &str,
        embeddings: &[Arc<TextualInversion>],
        weighting: bool,
    ) -> Result<Vec<usize>> {
        self.check_embeddings(embeddings)?;
        let fragments = fragments(prompt, weighting);
        let words = self.words(0, embeddings);
        let chunks = Chunks::new(&self.encoders[0].tokenizer, &fragments, &words, "prompt")?;
        Ok(chunks.chunks.iter().map(Vec::len).collect())
    }

    /// `prompt` as tokens (`what` names it in errors).
    pub fn tokenize(
        &self,
        models: &TextModels,
        prompt: &str,
        what: &str,
        reading: &Reading,
    ) -> Result<Tokens> {
        let fragments = fragments(prompt, reading.weighting);
        let mut clip = Vec::new();
        for (encoder, words) in self.encoders.iter().zip(&models.words) {
            let mut chunks = Chunks::new(&encoder.tokenizer, &fragments, words, what)?;
            // Read literally, a prompt is cut at 77 tokens, as diffusers does.
            if !reading.weighting {
                chunks.chunks.truncate(1);
            }
            clip.push(chunks);
        }
        let t5 = match &self.t5 {
            Some(t5) => {
                let mut pieces = Vec::new();
                let mut weights = Vec::new();
                for fragment in &fragments {
                    if let Fragment::Text { text, weight } = fragment {
                        let ids = t5.tokenizer.pieces(text)?;
                        weights.extend(std::iter::repeat_n(*weight as f32, ids.len()));
                        pieces.extend(ids);
                    }
                }
                let length = reading.t5_length;
                let ids = t5.tokenizer.frame(&pieces, length);
                weights.truncate(length.saturating_sub(1));
                weights.resize(length, 1.0);
                Some((ids, weights))
            }
            None => None,
        };
        Ok(Tokens { clip, t5 })
    }

    /// The chunks the encoders read of a prompt filling `count` (SD3 reads the first).
    fn chunks_read(&self, count: usize) -> usize {
        match self.family {
            Family::Sd3 => 1,
            _ => count,
        }
    }

    /// The ids the CLIP encoder `i` reads of `tokens` padded to `count` chunks, `[k, 77]`.
    pub fn ids(&self, tokens: &Tokens, i: usize, count: usize) -> (Vec<u32>, [usize; 2]) {
        let tokenizer = &self.encoders[i].tokenizer;
        let k = self.chunks_read(count);
        let ids: Vec<u32> = (0..k)
            .flat_map(|c| tokens.clip[i].framed(c, tokenizer).0)
            .collect();
        let len = ids.len() / k;
        (ids, [k, len])
    }

    /// The embeddings of `tokens` padded to `count` chunks through `models`.
    pub fn encode_tokens(
        &self,
        models: &TextModels,
        tokens: &Tokens,
        count: usize,
        reading: &Reading,
        device: &Device,
    ) -> PromptEmbeds {
        let count = self.chunks_read(count);
        let mut states = Vec::new();
        let mut weights = Vec::new();
        let mut pooled = Vec::new();
        for i in 0..count {
            let mut hidden = Vec::new();
            let encoders = self.encoders.iter().zip(&models.models).zip(&tokens.clip);
            for ((encoder, model), chunks) in encoders {
                let (ids, w) = chunks.framed(i, &encoder.tokenizer);
                if hidden.is_empty() {
                    weights.extend(w);
                }
                match self.family {
                    // The chosen layer's output through the final layer norm.
                    Family::Sd => hidden.push(model.encode(&ids, reading.clip_skip, device)),
                    // The layer before the chosen one, without the final layer norm.
                    Family::Sdxl | Family::Sd3 => {
                        let (h, p) = model.encode_penultimate(&ids, reading.clip_skip, device);
                        hidden.push(h);
                        if i == 0 {
                            pooled.extend(p);
                        }
                    }
                }
            }
            states.push(Tensor::cat(hidden, 2));
        }
        let mut context = Tensor::cat(states, 1);
        if !tokens.clip[0].unweighted(count) {
            context = apply_weights(context, weights, device);
        }
        let pooled = match self.family {
            Family::Sd => None,
            // SDXL's pooled embedding is the second encoder's; SD3's both side by side.
            Family::Sdxl => pooled.pop(),
            Family::Sd3 => Some(Tensor::cat(pooled, 1)),
        };
        if self.family == Family::Sd3 {
            context = self.joint_sd3(context, tokens, reading.t5_length, device);
        }
        PromptEmbeds { context, pooled }
    }

    /// SD3's joint text tokens: the CLIP chunk zero-padded to the joint width, then T5's
    /// states (weighted and rescaled on their own), or zeros without T5, as diffusers.
    fn joint_sd3(
        &self,
        clip: Tensor<3>,
        tokens: &Tokens,
        t5_length: usize,
        device: &Device,
    ) -> Tensor<3> {
        let [_, n, width] = clip.dims();
        let dtype = clip.dtype();
        let pad = self.joint_width.saturating_sub(width);
        let clip = match pad {
            0 => clip,
            _ => Tensor::cat(vec![clip, Tensor::zeros([1, n, pad], (device, dtype))], 2),
        };
        let t5 = match (&self.t5, &tokens.t5) {
            (Some(t5), Some((ids, weights))) => {
                let states = t5.model.encode(ids, device).cast(dtype);
                match weights.iter().all(|&w| w == 1.0) {
                    true => states,
                    false => apply_weights(states, weights.clone(), device),
                }
            }
            _ => Tensor::zeros([1, t5_length, self.joint_width], (device, dtype)),
        };
        Tensor::cat(vec![clip, t5], 1)
    }

    /// `prompt` read as `reading` says, in the chunks it fills.
    pub fn encode(
        &self,
        models: &TextModels,
        prompt: &str,
        reading: &Reading,
        device: &Device,
    ) -> Result<PromptEmbeds> {
        let tokens = self.tokenize(models, prompt, "prompt", reading)?;
        let count = tokens.chunk_count();
        Ok(self.encode_tokens(models, &tokens, count, reading, device))
    }

    /// A prompt and its negative, padded to the same chunks so that they stack for
    /// classifier-free guidance. Without a negative prompt, a model that asks for it
    /// (`force_zeros_for_empty_prompt`) gets zeros.
    pub fn encode_pair(
        &self,
        models: &TextModels,
        prompt: &str,
        negative: Option<&str>,
        reading: &Reading,
        device: &Device,
    ) -> Result<(PromptEmbeds, PromptEmbeds)> {
        let positive = self.tokenize(models, prompt, "prompt", reading)?;
        if negative.is_none() && self.force_zeros_for_empty_prompt {
            let count = positive.chunk_count();
            let positive = self.encode_tokens(models, &positive, count, reading, device);
            let negative = positive.zeros_like();
            return Ok((positive, negative));
        }
        let negative = negative.unwrap_or("");
        let negative = self.tokenize(models, negative, "negative prompt", reading)?;
        let count = positive.chunk_count().max(negative.chunk_count());
        Ok((
            self.encode_tokens(models, &positive, count, reading, device),
            self.encode_tokens(models, &negative, count, reading, device),
        ))
    }
}
