//! transformers' `CLIPTextModel`: token and position embeddings, a stack of pre-norm
//! transformer layers with causal self-attention, and a final layer norm.

use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu, sigmoid};
use serde::Deserialize;

use super::attention::{merge_heads, scaled_dot_product, split_heads};
use super::layers::{LayerNorm, Linear, layer_norm, linear};
use super::split_embedding::SplitEmbedding;
use crate::config::{bounded, expect_one_of, finite_in};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// `["CLIPTextModelWithProjection"]` for SDXL's second encoder (and SD3's two): the
    /// model then has a `text_projection` to `projection_dim`.
    pub architectures: Vec<String>,
    pub projection_dim: usize,
}

impl Default for ClipTextConfig {
    /// transformers' defaults (the text tower of CLIP ViT-B/32; SD 1.x's is ViT-L/14).
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: Some(49407),
            architectures: Vec::new(),
            projection_dim: 512,
        }
    }
}

#[derive(Module, Debug)]
pub struct ClipEmbeddings {
    pub token_embedding: SplitEmbedding,
    pub position_embedding: Embedding,
}

#[derive(Module, Debug)]
pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub heads: usize,
}

#[derive(Module, Debug)]
pub struct ClipMlp {
    pub fc1: Linear,
    pub fc2: Linear,
    /// `quick_gelu` (x·σ(1.702x), OpenAI CLIP) rather than exact `gelu` (OpenCLIP).
    pub quick_gelu: bool,
}

impl ClipMlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.fc1.forward(x);
        let x = if self.quick_gelu {
            x.clone() * sigmoid(x * 1.702)
        } else {
            gelu(x)
        };
        self.fc2.forward(x)
    }
}

#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    pub self_attn: ClipAttention,
    pub layer_norm1: LayerNorm,
    pub mlp: ClipMlp,
    pub layer_norm2: LayerNorm,
}

#[derive(Module, Debug)]
pub struct ClipEncoder {
    pub layers: Vec<ClipEncoderLayer>,
}

#[derive(Module, Debug)]
pub struct ClipTextModel {
    pub embeddings: ClipEmbeddings,
    pub encoder: ClipEncoder,
    pub final_layer_norm: LayerNorm,
    /// `CLIPTextModelWithProjection`'s projection of the pooled (end-token) state.
    pub text_projection: Option<Linear>,
    /// The end token, whose final state is the pooled one.
    pub eos_token_id: u32,
}

impl ClipTextModel {
    pub fn new(config: &ClipTextConfig, file: &str, device: &Device) -> Result<Self> {
        bounded(file, "vocab_size", config.vocab_size, 1..=1 << 20)?;
        bounded(file, "hidden_size", config.hidden_size, 1..=8192)?;
        bounded(
            file,
            "intermediate_size",
            config.intermediate_size,
            1..=32768,
        )?;
        bounded(file, "num_hidden_layers", config.num_hidden_layers, 1..=64)?;
        bounded(
            file,
            "num_attention_heads",
            config.num_attention_heads,
            1..=128,
        )?;
        bounded(
            file,
            "max_position_embeddings",
            config.max_position_embeddings,
            2..=1024,
        )?;
        finite_in(file, "layer_norm_eps", config.layer_norm_eps, 0.0..=1.0)?;
        expect_one_of(
            file,
            "hidden_act",
            &config.hidden_act,
            &["quick_gelu", "gelu"],
        )?;
        let d = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(Error::config(
                file,
                "num_attention_heads",
                format!("{heads} does not divide hidden_size {d}"),
            ));
        }
        let eps = config.layer_norm_eps;
        let projected = config
            .architectures
            .iter()
            .any(|a| a == "CLIPTextModelWithProjection");
        if projected {
            bounded(file, "projection_dim", config.projection_dim, 1..=8192)?;
        }
        let layer = || ClipEncoderLayer {
            self_attn: ClipAttention {
                q_proj: linear(d, d, true, device),
                k_proj: linear(d, d, true, device),
                v_proj: linear(d, d, true, device),
                out_proj: linear(d, d, true, device),
                heads,
            },
            layer_norm1: layer_norm(d, eps, device),
            mlp: ClipMlp {
                fc1: linear(d, config.intermediate_size, true, device),
                fc2: linear(config.intermediate_size, d, true, device),
                quick_gelu: config.hidden_act == "quick_gelu",
            },
            layer_norm2: layer_norm(d, eps, device),
        };
        Ok(Self {
            embeddings: ClipEmbeddings {
                token_embedding: SplitEmbedding::new(config.vocab_size, d, device),
                position_embedding: EmbeddingConfig::new(config.max_position_embeddings, d)
                    .init(device),
            },
            encoder: ClipEncoder {
                layers: (0..config.num_hidden_layers).map(|_| layer()).collect(),
            },
            final_layer_norm: layer_norm(d, eps, device),
            text_projection: projected.then(|| linear(d, config.projection_dim, false, device)),
            eos_token_id: config.eos_token_id.unwrap_or(49407),
        })
    }

    pub fn num_layers(&self) -> usize {
        self.encoder.layers.len()
    }

    /// Text embeddings `[1, tokens, hidden]` of one tokenized prompt.
    pub fn encode(&self, ids: &[u32], clip_skip: usize, device: &Device) -> Tensor<3> {
        self.forward(input_ids(ids, device), clip_skip)
    }

    /// Text embeddings `[B, tokens, hidden]` for `input_ids` `[B, tokens]`.
    ///
    /// `clip_skip` as in diffusers: 0 is the last layer's output; `k` takes the output of
    /// the layer `k` before the last, passed through the final layer norm.
    pub fn forward(&self, input_ids: Tensor<2, Int>, clip_skip: usize) -> Tensor<3> {
        let mut x = self.embed(input_ids);
        let layers = self.num_layers().saturating_sub(clip_skip);
        for layer in &self.encoder.layers[..layers] {
            x = layer.forward(x);
        }
        self.final_layer_norm.forward(x)
    }

    /// Token plus position embeddings of `input_ids` `[B, tokens]`: the first layer's input.
    fn embed(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let [_, n] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<1, Int>::arange(0..n as i64, &device).unsqueeze::<2>();
        self.embeddings.token_embedding.forward(input_ids)
            + self.embeddings.position_embedding.forward(positions)
    }

    /// SDXL's (and SD3's) reading of one tokenized prompt: the hidden states `1 + clip_skip`
    /// layers before the last, without the final layer norm (diffusers'
    /// `hidden_states[-(clip_skip + 2)]`), `[1, tokens, hidden]`; and, for a model with a
    /// projection, the pooled embedding `[1, projection_dim]`: the end token's final state
    /// (after the final layer norm) projected. The pooled embedding ignores `clip_skip`.
    pub fn encode_penultimate(
        &self,
        ids: &[u32],
        clip_skip: usize,
        device: &Device,
    ) -> (Tensor<3>, Option<Tensor<2>>) {
        let mut x = self.embed(input_ids(ids, device));
        let keep = self.num_layers().saturating_sub(1 + clip_skip);
        // The pooled embedding needs every layer; the hidden states only the first `keep`.
        let depth = match self.text_projection {
            Some(_) => self.num_layers(),
            None => keep,
        };
        let mut hidden = (keep == 0).then(|| x.clone());
        for (i, layer) in self.encoder.layers[..depth].iter().enumerate() {
            x = layer.forward(x);
            if i + 1 == keep {
                hidden = Some(x.clone());
            }
        }
        let hidden = hidden.expect("keep ≤ depth");
        let pooled = self.text_projection.as_ref().map(|projection| {
            // transformers: the first position holding the end token; configs from before
            // it was known (`eos_token_id` 2, SDXL's) take the largest id, which is the
            // end token in CLIP's vocabulary.
            let eos = match self.eos_token_id {
                2 => (0..ids.len()).rev().max_by_key(|&i| ids[i]).unwrap_or(0),
                eos => ids.iter().position(|&i| i == eos).unwrap_or(ids.len() - 1),
            };
            let last = self.final_layer_norm.forward(x).narrow(1, eos, 1);
            let [_, _, d] = last.dims();
            projection.forward(last.reshape([1, d]))
        });
        (hidden, pooled)
    }
}

/// One tokenized prompt as the `[1, tokens]` id tensor the embedding reads.
fn input_ids(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let values: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    Tensor::from_data(TensorData::new(values, [1, ids.len()]), device)
}

impl ClipEncoderLayer {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.self_attn.forward(self.layer_norm1.forward(x.clone())) + x;
        self.mlp.forward(self.layer_norm2.forward(x.clone())) + x
    }
}

impl ClipAttention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let q = split_heads(self.q_proj.forward(x.clone()), self.heads);
        let k = split_heads(self.k_proj.forward(x.clone()), self.heads);
        let v = split_heads(self.v_proj.forward(x), self.heads);
        self.out_proj
            .forward(merge_heads(scaled_dot_product(q, k, v, true, false)))
    }
}
