//! transformers' `T5EncoderModel` (T5 v1.1, SD3's third text encoder): a token embedding
//! without positions, pre-norm layers of self-attention and a gated-GELU feed-forward,
//! RMS norms without bias or mean, and no attention scaling. Positions enter only as a
//! learned bias on the attention logits, indexed by the bucketed relative distance; the
//! first layer owns the table and every layer adds the same bias.
//!
//! The activations are kept in f32 whatever precision the weights are stored in: T5's
//! feed-forward outputs exceed f16's range (transformers clamps them in fp16; SD3's
//! pipelines run T5 in bf16 or f32), and its attention logits are unscaled. Each weight is
//! cast to f32 for its own call only (see `layers::Linear`), so the resident weights keep
//! their size.

use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::gelu_approximate;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use serde::Deserialize;

use super::attention::{merge_heads, split_heads};
use super::layers::{Linear, RmsNorm, linear, rms_norm};
use super::split_embedding::SplitEmbedding;
use crate::config::{bounded, expect_one_of, finite_in};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub feed_forward_proj: String,
}

impl Default for T5Config {
    /// transformers' defaults (t5-small); SD3's T5-XXL sets every size.
    fn default() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
        }
    }
}

/// `SelfAttention`: projections without bias; the first layer's holds the relative
/// position bias table `[buckets, heads]`.
#[derive(Module, Debug)]
pub struct T5Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub relative_attention_bias: Option<Embedding>,
    pub heads: usize,
}

/// `DenseReluDense` of a gated-GELU T5 (v1.1): `wo(gelu_tanh(wi_0 x) · wi_1 x)`.
#[derive(Module, Debug)]
pub struct T5DenseGatedActDense {
    pub wi_0: Linear,
    pub wi_1: Linear,
    pub wo: Linear,
}

/// One `T5Block` of the encoder: `layer.0` (self-attention) and `layer.1` (feed-forward),
/// each with its own norm (the field names are mapped from those in `weights::keys`).
#[derive(Module, Debug)]
pub struct T5Block {
    pub self_attention_norm: RmsNorm,
    pub self_attention: T5Attention,
    pub ff_norm: RmsNorm,
    pub dense_relu_dense: T5DenseGatedActDense,
}

#[derive(Module, Debug)]
pub struct T5Stack {
    pub block: Vec<T5Block>,
    pub final_layer_norm: RmsNorm,
}

#[derive(Module, Debug)]
pub struct T5EncoderModel {
    /// `shared` (also saved as `encoder.embed_tokens`, the same tied table).
    pub shared: SplitEmbedding,
    pub encoder: T5Stack,
    pub num_buckets: usize,
    pub max_distance: usize,
}

impl T5EncoderModel {
    pub fn new(config: &T5Config, file: &str, device: &Device) -> Result<Self> {
        bounded(file, "vocab_size", config.vocab_size, 1..=1 << 20)?;
        bounded(file, "d_model", config.d_model, 1..=16384)?;
        bounded(file, "d_kv", config.d_kv, 1..=1024)?;
        bounded(file, "d_ff", config.d_ff, 1..=65536)?;
        bounded(file, "num_layers", config.num_layers, 1..=128)?;
        bounded(file, "num_heads", config.num_heads, 1..=256)?;
        let buckets = config.relative_attention_num_buckets;
        bounded(file, "relative_attention_num_buckets", buckets, 4..=1024)?;
        bounded(
            file,
            "relative_attention_max_distance",
            config.relative_attention_max_distance,
            buckets / 4 + 1..=1 << 16,
        )?;
        finite_in(
            file,
            "layer_norm_epsilon",
            config.layer_norm_epsilon,
            0.0..=1.0,
        )?;
        // T5 v1.1 (SD3's) is gated GELU; the original T5's ReLU is not used by any
        // diffusion model.
        expect_one_of(
            file,
            "feed_forward_proj",
            &config.feed_forward_proj,
            &["gated-gelu"],
        )?;
        let (d, inner, eps) = (
            config.d_model,
            config.num_heads * config.d_kv,
            config.layer_norm_epsilon,
        );
        if inner > 65536 {
            return Err(Error::config(
                file,
                "num_heads",
                format!(
                    "{} heads of d_kv {} is too wide",
                    config.num_heads, config.d_kv
                ),
            ));
        }
        let block = |first: bool| T5Block {
            self_attention_norm: rms_norm(d, eps, device),
            self_attention: T5Attention {
                q: linear(d, inner, false, device),
                k: linear(d, inner, false, device),
                v: linear(d, inner, false, device),
                o: linear(inner, d, false, device),
                relative_attention_bias: first
                    .then(|| EmbeddingConfig::new(buckets, config.num_heads).init(device)),
                heads: config.num_heads,
            },
            ff_norm: rms_norm(d, eps, device),
            dense_relu_dense: T5DenseGatedActDense {
                wi_0: linear(d, config.d_ff, false, device),
                wi_1: linear(d, config.d_ff, false, device),
                wo: linear(config.d_ff, d, false, device),
            },
        };
        Ok(Self {
            shared: SplitEmbedding::new(config.vocab_size, d, device),
            encoder: T5Stack {
                block: (0..config.num_layers).map(|i| block(i == 0)).collect(),
                final_layer_norm: rms_norm(d, eps, device),
            },
            num_buckets: buckets,
            max_distance: config.relative_attention_max_distance,
        })
    }

    /// The last hidden state `[1, tokens, d_model]` of one tokenized prompt, in f32.
    /// Every token attends to every other, padding included, as SD3's pipelines call it
    /// (no attention mask).
    pub fn encode(&self, ids: &[u32], device: &Device) -> Tensor<3> {
        let values: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(values, [1, ids.len()]), device);
        let mut x = self.shared.forward(ids).cast(DType::F32);
        let bias = self.position_bias(x.dims()[1], device);
        for block in &self.encoder.block {
            x = block.forward(x, bias.clone());
        }
        self.encoder.final_layer_norm.forward(x)
    }

    /// The attention bias `[1, heads, n, n]` for `n` tokens, from the first layer's table.
    fn position_bias(&self, n: usize, device: &Device) -> Tensor<4> {
        let table = self.encoder.block[0]
            .self_attention
            .relative_attention_bias
            .as_ref()
            .expect("the first block has the relative attention bias");
        let buckets: Vec<i64> = (0..n)
            .flat_map(|q| (0..n).map(move |k| (q, k)))
            .map(|(q, k)| {
                let relative = k as i64 - q as i64;
                relative_position_bucket(relative, self.num_buckets, self.max_distance) as i64
            })
            .collect();
        let buckets = Tensor::<2, Int>::from_data(TensorData::new(buckets, [1, n * n]), device);
        let values = table.forward(buckets).cast(DType::F32); // [1, n·n, heads]
        let heads = values.dims()[2];
        values
            .reshape([n, n, heads])
            .permute([2, 0, 1])
            .unsqueeze::<4>()
    }
}

/// transformers' `_relative_position_bucket` for a bidirectional encoder: half the
/// buckets for each direction; exact distances below a quarter of the buckets, then
/// logarithmically wider buckets up to `max_distance`. Computed in f32 as PyTorch does,
/// so that the truncation agrees at bucket edges.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let offset = if relative > 0 { half } else { 0 };
    let distance = relative.unsigned_abs() as usize;
    let max_exact = half / 2;
    if distance < max_exact {
        return offset + distance;
    }
    let log_ratio = (distance as f32 / max_exact as f32).ln()
        / (max_distance as f32 / max_exact as f32).ln()
        * (half - max_exact) as f32;
    let large = max_exact + log_ratio as usize;
    offset + large.min(half - 1)
}

impl T5Block {
    fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let attended = self
            .self_attention
            .forward(self.self_attention_norm.forward(x.clone()), bias);
        let x = x + attended;
        let ff = self
            .dense_relu_dense
            .forward(self.ff_norm.forward(x.clone()));
        x + ff
    }
}

impl T5Attention {
    fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let q = split_heads(self.q.forward(x.clone()), self.heads);
        let k = split_heads(self.k.forward(x.clone()), self.heads);
        let v = split_heads(self.v.forward(x), self.heads);
        let [b, h, n, _] = q.dims();
        // T5 folds the 1/√d scaling into its initialisation: the logits are unscaled.
        let options = AttentionModuleOptions {
            scale: Some(1.0),
            softcap: None,
            is_causal: false,
        };
        let bias = bias.expand([b, h, n, n]);
        let out = attention(q, k, v, None, Some(bias), options);
        self.o.forward(merge_heads(out))
    }
}

impl T5DenseGatedActDense {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = gelu_approximate(self.wi_0.forward(x.clone()));
        self.wo.forward(gate * self.wi_1.forward(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_positions_fall_in_transformers_buckets() {
        // transformers' _relative_position_bucket(bidirectional=True, 32 buckets, 128).
        let expected = [
            (-200, 15),
            (-128, 15),
            (-100, 15),
            (-64, 14),
            (-20, 10),
            (-9, 8),
            (-8, 8),
            (-7, 7),
            (-1, 1),
            (0, 0),
            (1, 17),
            (7, 23),
            (8, 24),
            (20, 26),
            (64, 30),
            (127, 31),
            (500, 31),
        ];
        for (relative, bucket) in expected {
            assert_eq!(
                relative_position_bucket(relative, 32, 128),
                bucket,
                "relative position {relative}"
            );
        }
    }
}
