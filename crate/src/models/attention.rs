//! diffusers' `Attention` (`to_q`, `to_k`, `to_v`, `to_out.0`) and the scaled dot-product
//! attention every network here uses.
//!
//! At 512×512, SD 1.5's first UNet level has 4096 tokens: a plain softmax(QKᵀ)V needs a
//! [batch·heads, 4096, 4096] score buffer (1 GiB in f32 for batch 2), more than WebGPU lets
//! one buffer or binding hold. burn's fused `attention` is used everywhere, and the queries
//! are split into blocks so that even where burn falls back to materialising the scores
//! (as it does on wgpu without autotune) no block's scores exceed [`MAX_SCORE_BYTES`].

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::layers::{GroupNorm, Linear, group_norm, linear};

/// The largest score matrix one attention call may need (f32), well inside WebGPU's
/// default 128 MiB binding limit.
pub const MAX_SCORE_BYTES: usize = 32 << 20;

/// softmax(q·kᵀ / √d)·v over `[batch, heads, tokens, head_dim]`.
///
/// `upcast` computes in f32 when the model runs in a lower precision (diffusers'
/// `upcast_attention`, needed by SD 2.x whose attention logits overflow f16).
pub fn scaled_dot_product(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    causal: bool,
    upcast: bool,
) -> Tensor<4> {
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: causal,
    };
    let [b, h, n, _] = q.dims();
    let m = k.dims()[2];
    let rows = (MAX_SCORE_BYTES / (4 * b * h * m).max(1)).max(1);
    // Causal masking is relative to the query's position: keep such calls whole (CLIP's
    // 77 tokens are far below the limit).
    if n > rows && !causal {
        let blocks = (0..n)
            .step_by(rows)
            .map(|start| {
                let end = (start + rows).min(n);
                let q = q.clone().slice([0..b, 0..h, start..end]);
                scaled_dot_product(q, k.clone(), v.clone(), causal, upcast)
            })
            .collect();
        return Tensor::cat(blocks, 2);
    }
    let dtype = q.dtype();
    if upcast && dtype != DType::F32 {
        let out = attention(
            q.cast(DType::F32),
            k.cast(DType::F32),
            v.cast(DType::F32),
            None,
            None,
            options,
        );
        out.cast(dtype)
    } else {
        attention(q, k, v, None, None, options)
    }
}

/// `[batch, tokens, heads·dim]` → `[batch, heads, tokens, dim]`.
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, n, c] = x.dims();
    x.reshape([b, n, heads, c / heads]).swap_dims(1, 2)
}

/// `[batch, heads, tokens, dim]` → `[batch, tokens, heads·dim]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, n, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, n, h * d])
}

/// diffusers' `Attention` as used by the UNet's transformer blocks (projections without
/// bias) and the VAE's mid block (with bias, one head, its own group norm and residual).
#[derive(Module, Debug)]
pub struct Attention {
    /// Only in the VAE mid block: normalises the `[B, C, H, W]` input first.
    pub group_norm: Option<GroupNorm>,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// `to_out.0` in checkpoints (`to_out.1` is a dropout).
    pub to_out: Linear,
    pub heads: usize,
    pub upcast: bool,
}

impl Attention {
    /// Transformer-block attention: `query_dim` tokens attend to `context_dim` tokens.
    pub fn new(
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        upcast: bool,
        device: &Device,
    ) -> Self {
        let inner = heads * head_dim;
        Self {
            group_norm: None,
            to_q: linear(query_dim, inner, false, device),
            to_k: linear(context_dim, inner, false, device),
            to_v: linear(context_dim, inner, false, device),
            to_out: linear(inner, query_dim, true, device),
            heads,
            upcast,
        }
    }

    /// The VAE mid-block attention over all pixels: one head of `channels`, biased
    /// projections, a group norm before and the residual after.
    pub fn spatial(channels: usize, groups: usize, eps: f64, device: &Device) -> Self {
        Self {
            group_norm: Some(group_norm(groups, channels, eps, device)),
            to_q: linear(channels, channels, true, device),
            to_k: linear(channels, channels, true, device),
            to_v: linear(channels, channels, true, device),
            to_out: linear(channels, channels, true, device),
            heads: 1,
            upcast: true,
        }
    }

    /// Attention of `x` `[B, N, query_dim]` over `context` (`x` itself when `None`).
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Tensor<3> {
        let context = context.unwrap_or_else(|| x.clone());
        let q = split_heads(self.to_q.forward(x), self.heads);
        let k = split_heads(self.to_k.forward(context.clone()), self.heads);
        let v = split_heads(self.to_v.forward(context), self.heads);
        let out = scaled_dot_product(q, k, v, false, self.upcast);
        self.to_out.forward(merge_heads(out))
    }

    /// Self-attention over the pixels of `x` `[B, C, H, W]`, with the residual (VAE).
    pub fn forward_spatial(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let residual = x.clone();
        let x = match &self.group_norm {
            Some(norm) => norm.forward(x),
            None => x,
        };
        let tokens = x.reshape([b, c, h * w]).swap_dims(1, 2);
        let out = self.forward(tokens, None);
        out.swap_dims(1, 2).reshape([b, c, h, w]) + residual
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn::tensor::activation::softmax;

    /// softmax(q·kᵀ/√d)·v written out, materialising the score matrix.
    fn plain(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
        let d = q.dims()[3] as f64;
        let scores = q.matmul(k.swap_dims(2, 3)) / d.sqrt();
        let scores = if causal {
            let [b, h, n, m] = scores.dims();
            let mask = Tensor::<2, Bool>::tril_mask([n, m], 0, &scores.device())
                .unsqueeze::<4>()
                .expand([b, h, n, m]);
            scores.mask_fill(mask, f32::NEG_INFINITY)
        } else {
            scores
        };
        softmax(scores, 3).matmul(v)
    }

    #[test]
    fn fused_attention_matches_plain_attention() {
        let device = Device::flex();
        let rand =
            |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        // 8192 query tokens × 512 keys × 2·3 heads is 96 MiB of scores: split into blocks.
        for (n, m, causal) in [
            (64, 64, false),
            (77, 77, true),
            (256, 77, false),
            (8192, 512, false),
        ] {
            let (q, k, v) = (rand([2, 3, n, 8]), rand([2, 3, m, 8]), rand([2, 3, m, 8]));
            let fused = scaled_dot_product(q.clone(), k.clone(), v.clone(), causal, false);
            let plain = plain(q, k, v, causal);
            let err = (fused - plain.clone())
                .powi_scalar(2)
                .sum()
                .into_scalar::<f32>()
                .sqrt()
                / plain.powi_scalar(2).sum().into_scalar::<f32>().sqrt();
            assert!(err < 1e-5, "n={n} m={m} causal={causal}: rel-L2 {err}");
        }
    }
}
