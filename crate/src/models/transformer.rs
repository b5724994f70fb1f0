//! diffusers' `Transformer2DModel` (continuous input) and its `BasicTransformerBlock`:
//! self-attention over the pixels, cross-attention to the text, and a GEGLU feed-forward.

use burn::prelude::*;
use burn::tensor::activation::gelu;

use super::attention::Attention;
use super::layers::{Conv2d, GroupNorm, LayerNorm, Linear, conv2d, group_norm, layer_norm, linear};

/// `proj_in`/`proj_out`: a 1×1 convolution in SD 1.x, a linear layer in SD 2.x
/// (`use_linear_projection`). The variant name is not part of the checkpoint key.
#[derive(Module, Debug)]
pub enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// Feed-forward `net.0` (GEGLU: a linear layer to twice the width, half of it gating the
/// other half through GELU) and `net.2` (back to the model width).
#[derive(Module, Debug)]
pub struct FeedForward {
    /// `net.0.proj` in checkpoints: GEGLU's projection.
    pub proj_in: Linear,
    /// `net.2` in checkpoints.
    pub proj_out: Linear,
}

impl FeedForward {
    pub fn new(dim: usize, device: &Device) -> Self {
        let inner = 4 * dim;
        Self {
            proj_in: linear(dim, 2 * inner, true, device),
            proj_out: linear(inner, dim, true, device),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [hidden, gate] = self
            .proj_in
            .forward(x)
            .chunk(2, 2)
            .try_into()
            .expect("chunk(2) returns two tensors");
        self.proj_out.forward(hidden * gelu(gate))
    }
}

#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn forward(&self, x: Tensor<3>, context: Tensor<3>) -> Tensor<3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()), None) + x;
        let x = self
            .attn2
            .forward(self.norm2.forward(x.clone()), Some(context))
            + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// The shape of one `Transformer2DModel`.
#[derive(Debug, Clone, Copy)]
pub struct Transformer2DConfig {
    pub channels: usize,
    pub heads: usize,
    pub layers: usize,
    pub cross_attention_dim: usize,
    pub groups: usize,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
}

#[derive(Module, Debug)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Projection,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Projection,
}

impl Transformer2DConfig {
    pub fn init(&self, device: &Device) -> Transformer2DModel {
        let c = self.channels;
        let projection = || {
            if self.use_linear_projection {
                Projection::Linear(linear(c, c, true, device))
            } else {
                Projection::Conv(conv2d(c, c, 1, 1, 0, device))
            }
        };
        let block = || BasicTransformerBlock {
            norm1: layer_norm(c, 1e-5, device),
            attn1: Attention::new(
                c,
                c,
                self.heads,
                c / self.heads,
                self.upcast_attention,
                device,
            ),
            norm2: layer_norm(c, 1e-5, device),
            attn2: Attention::new(
                c,
                self.cross_attention_dim,
                self.heads,
                c / self.heads,
                self.upcast_attention,
                device,
            ),
            norm3: layer_norm(c, 1e-5, device),
            ff: FeedForward::new(c, device),
        };
        Transformer2DModel {
            norm: group_norm(self.groups, c, 1e-6, device),
            proj_in: projection(),
            transformer_blocks: (0..self.layers).map(|_| block()).collect(),
            proj_out: projection(),
        }
    }
}

impl Transformer2DModel {
    /// `x` `[B, C, H, W]` attends to `context` `[B, tokens, cross_attention_dim]`.
    pub fn forward(&self, x: Tensor<4>, context: Tensor<3>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let residual = x.clone();
        let x = self.norm.forward(x);
        let to_tokens = |x: Tensor<4>| x.reshape([b, c, h * w]).swap_dims(1, 2);
        let to_pixels = |x: Tensor<3>| x.swap_dims(1, 2).reshape([b, c, h, w]);

        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(x)),
            Projection::Linear(lin) => lin.forward(to_tokens(x)),
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context.clone());
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(to_pixels(tokens)),
            Projection::Linear(lin) => to_pixels(lin.forward(tokens)),
        };
        out + residual
    }
}
