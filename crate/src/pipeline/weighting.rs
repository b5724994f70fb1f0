//! Prompts as AUTOMATIC1111 reads them (diffusers' community `lpw_stable_diffusion`
//! `get_weighted_text_embeddings`, its parser A1111's; see `prompt`): the prompt's tokens
//! are cut into chunks of 75, each encoded as start + 75 + end (padded as the tokenizer
//! pads) and the hidden states joined on the token axis, `[1, 77·k, D]`; each token's
//! state is multiplied by its weight and the whole embedding rescaled back to its
//! unweighted mean. A prompt without the syntax and within 75 tokens is the plain encoding.
//!
//! Where the reference says nothing (tests/fixtures/goldens/prompts-weighting.json,
//! `choices`): `BREAK` closes the chunk; SDXL's two encoders see the same chunks and weights,
//! their states side by side, rescaled together, the pooled embedding from the first chunk;
//! SD3's CLIP part is the first chunk only (its sequence holds 77 CLIP tokens) and T5 reads
//! every fragment (up to its length) with the fragments' weights, rescaled on its own.

use burn::prelude::*;

use super::text::{PromptEmbeds, TextEncoders};
use crate::error::Result;
use crate::family::Family;
use crate::models::clip::ClipTextModel;
use crate::prompt::{Fragment, parse_prompt_attention};
use crate::tokenizer::ClipTokenizer;

/// Tokens per chunk between its start and end tokens.
const CHUNK: usize = 75;

/// A prompt's tokens in chunks of at most [`CHUNK`], each token with its weight.
#[derive(Debug, Clone, Default)]
pub struct Chunks {
    pub chunks: Vec<Vec<(u32, f32)>>,
}

impl Chunks {
    /// The fragments' tokens by `tokenizer`, a new chunk at each 76th token and at `BREAK`
    /// (one at the start leaves an empty first chunk, one at the end adds none).
    pub fn new(tokenizer: &ClipTokenizer, fragments: &[Fragment]) -> Result<Self> {
        let mut chunks = Vec::new();
        let mut current: Vec<(u32, f32)> = Vec::new();
        for fragment in fragments {
            match fragment {
                Fragment::Break => chunks.push(std::mem::take(&mut current)),
                Fragment::Text { text, weight } => {
                    for token in tokenizer.tokens(text)? {
                        if current.len() == CHUNK {
                            chunks.push(std::mem::take(&mut current));
                        }
                        current.push((token, *weight as f32));
                    }
                }
            }
        }
        if !current.is_empty() || chunks.is_empty() {
            chunks.push(current);
        }
        Ok(Self { chunks })
    }

    /// Pads with empty chunks (start, end, padding) to `count`.
    pub fn pad_to(&mut self, count: usize) {
        self.chunks.resize(count.max(self.chunks.len()), Vec::new());
    }

    /// Whether every token weighs 1: the embedding is then left as encoded.
    fn unweighted(&self) -> bool {
        self.chunks.iter().flatten().all(|&(_, w)| w == 1.0)
    }

    /// Chunk `i` framed by `tokenizer` (77 ids) and its weights (1 for start, end, padding).
    pub fn framed(&self, i: usize, tokenizer: &ClipTokenizer) -> (Vec<u32>, Vec<f32>) {
        let chunk = &self.chunks[i];
        let tokens: Vec<u32> = chunk.iter().map(|&(t, _)| t).collect();
        let ids = tokenizer.frame(&tokens);
        let mut weights = vec![1.0; ids.len()];
        for (k, &(_, w)) in chunk.iter().enumerate() {
            weights[k + 1] = w;
        }
        (ids, weights)
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
    /// The chunks `prompt` makes (by the first CLIP tokenizer), to pad a prompt and its
    /// negative to the same count.
    pub fn chunk_count(&self, prompt: &str) -> Result<usize> {
        let fragments = parse_prompt_attention(prompt);
        Ok(Chunks::new(&self.encoders[0].tokenizer, &fragments)?
            .chunks
            .len())
    }

    /// `prompt` read with A1111's weights, in at least `chunks` chunks, through `models`
    /// (see [`with_loras`](Self::with_loras)).
    pub fn encode_weighted(
        &self,
        models: &[ClipTextModel],
        prompt: &str,
        clip_skip: usize,
        t5_length: usize,
        chunks: usize,
        device: &Device,
    ) -> Result<PromptEmbeds> {
        let fragments = parse_prompt_attention(prompt);
        let mut per_encoder = Vec::new();
        for encoder in &self.encoders {
            let mut c = Chunks::new(&encoder.tokenizer, &fragments)?;
            c.pad_to(chunks);
            per_encoder.push(c);
        }
        // SD3 reads one chunk of CLIP tokens; the rest reaches it through T5.
        let count = match self.family {
            Family::Sd3 => 1,
            _ => per_encoder[0].chunks.len(),
        };
        let mut states = Vec::new();
        let mut weights = Vec::new();
        let mut pooled = Vec::new();
        for i in 0..count {
            let mut hidden = Vec::new();
            for ((encoder, model), c) in self.encoders.iter().zip(models).zip(&per_encoder) {
                let (ids, w) = c.framed(i, &encoder.tokenizer);
                if hidden.is_empty() {
                    weights.extend(w);
                }
                match self.family {
                    Family::Sd => hidden.push(model.encode(&ids, clip_skip, device)),
                    Family::Sdxl | Family::Sd3 => {
                        let (h, p) = model.encode_penultimate(&ids, clip_skip, device);
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
        if !per_encoder[0].unweighted() {
            context = apply_weights(context, weights, device);
        }
        let pooled = match self.family {
            Family::Sd => None,
            // SDXL's pooled embedding is the second encoder's; SD3's both side by side.
            Family::Sdxl => pooled.pop(),
            Family::Sd3 => Some(Tensor::cat(pooled, 1)),
        };
        if self.family == Family::Sd3 {
            let context = self.joint_sd3(context, &fragments, t5_length, device)?;
            return Ok(PromptEmbeds { context, pooled });
        }
        Ok(PromptEmbeds { context, pooled })
    }

    /// SD3's joint text tokens: the weighted CLIP chunk zero-padded to the joint width,
    /// then T5's states of the fragments (weighted, rescaled on their own), or zeros.
    fn joint_sd3(
        &self,
        clip: Tensor<3>,
        fragments: &[Fragment],
        t5_length: usize,
        device: &Device,
    ) -> Result<Tensor<3>> {
        let [_, tokens, width] = clip.dims();
        let dtype = clip.dtype();
        let pad = self.joint_width.saturating_sub(width);
        let clip = match pad {
            0 => clip,
            _ => Tensor::cat(
                vec![clip, Tensor::zeros([1, tokens, pad], (device, dtype))],
                2,
            ),
        };
        let t5 = match &self.t5 {
            Some(t5) => {
                let mut pieces = Vec::new();
                let mut weights = Vec::new();
                for fragment in fragments {
                    if let Fragment::Text { text, weight } = fragment {
                        let ids = t5.tokenizer.pieces(text)?;
                        weights.extend(std::iter::repeat_n(*weight as f32, ids.len()));
                        pieces.extend(ids);
                    }
                }
                let ids = t5.tokenizer.frame(&pieces, t5_length);
                weights.truncate(t5_length.saturating_sub(1));
                let weighted = weights.iter().any(|&w| w != 1.0);
                weights.resize(t5_length, 1.0);
                let states = t5.model.encode(&ids, device).cast(dtype);
                match weighted {
                    true => apply_weights(states, weights, device),
                    false => states,
                }
            }
            None => Tensor::zeros([1, t5_length, self.joint_width], (device, dtype)),
        };
        Ok(Tensor::cat(vec![clip, t5], 1))
    }
}
