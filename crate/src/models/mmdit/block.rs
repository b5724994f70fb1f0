//! diffusers' `JointTransformerBlock`: the image and text tokens keep separate weights
//! (norms, projections, feed-forwards) but attend jointly, as one sequence. Both streams
//! are modulated by the timestep-and-pooled-text embedding through adaptive layer norms
//! (AdaLN-Zero: shift, scale and a gate per sub-layer). SD3.5 Medium's first layers add a
//! second self-attention over the image tokens alone (`use_dual_attention`); the last
//! block updates only the image stream (`context_pre_only`).

use burn::prelude::*;
use burn::tensor::activation::{gelu_approximate, silu};

use crate::models::attention::{merge_heads, scaled_dot_product, split_heads};
use crate::models::layers::{Linear, RmsNorm, linear, rms_norm};

/// diffusers' epsilon for every norm of the MMDiT.
pub const EPS: f64 = 1e-6;

/// LayerNorm without affine parameters over the last dimension, statistics in f32.
fn layer_norm<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    let x = x.cast(burn::tensor::DType::F32);
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    ((x - mean) / (var + EPS).sqrt()).cast(dtype)
}

/// `x · (1 + scale) + shift`, with `scale` and `shift` `[B, dim]` broadcast over tokens.
fn modulate(x: Tensor<3>, shift: &Tensor<2>, scale: &Tensor<2>) -> Tensor<3> {
    x * (scale.clone().unsqueeze_dim::<3>(1) + 1.0) + shift.clone().unsqueeze_dim::<3>(1)
}

/// `gate · x`, `gate` `[B, dim]` broadcast over tokens.
fn gated(gate: &Tensor<2>, x: Tensor<3>) -> Tensor<3> {
    gate.clone().unsqueeze_dim::<3>(1) * x
}

/// `linear(silu(emb))` split into `n` modulation vectors `[B, dim]`, in diffusers' order.
fn modulation(linear: &Linear, emb: &Tensor<2>, n: usize) -> Vec<Tensor<2>> {
    linear.forward(silu(emb.clone())).chunk(n, 1)
}

/// `AdaLayerNormContinuous` without affine parameters: `norm(x)·(1 + scale) + shift` from
/// `linear(silu(emb))` = (scale, shift). The last block's context stream and `norm_out`.
#[derive(Module, Debug)]
pub struct AdaLayerNormContinuous {
    pub linear: Linear,
}

impl AdaLayerNormContinuous {
    pub fn new(dim: usize, device: &Device) -> Self {
        Self {
            linear: linear(dim, 2 * dim, true, device),
        }
    }

    pub fn forward(&self, x: Tensor<3>, emb: &Tensor<2>) -> Tensor<3> {
        let m = modulation(&self.linear, emb, 2);
        modulate(layer_norm(x), &m[1], &m[0])
    }
}

/// `GELU(approximate="tanh")` feed-forward: `net.0.proj` to 4× the width, `net.2` back.
#[derive(Module, Debug)]
pub struct GeluFeedForward {
    pub proj_in: Linear,
    pub proj_out: Linear,
}

impl GeluFeedForward {
    fn new(dim: usize, device: &Device) -> Self {
        Self {
            proj_in: linear(dim, 4 * dim, true, device),
            proj_out: linear(4 * dim, dim, true, device),
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.proj_out
            .forward(gelu_approximate(self.proj_in.forward(x)))
    }
}

/// diffusers' `Attention` with `JointAttnProcessor2_0` (`add_*_proj` for the context
/// stream) or, without them, plain self-attention (`attn2`). Biased projections.
#[derive(Module, Debug)]
pub struct JointAttention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub norm_q: Option<RmsNorm>,
    pub norm_k: Option<RmsNorm>,
    pub add_q_proj: Option<Linear>,
    pub add_k_proj: Option<Linear>,
    pub add_v_proj: Option<Linear>,
    /// The context stream's output projection; none in a `context_pre_only` block.
    pub to_add_out: Option<Linear>,
    pub norm_added_q: Option<RmsNorm>,
    pub norm_added_k: Option<RmsNorm>,
    pub heads: usize,
}

impl JointAttention {
    /// `joint`: with the context stream's projections; `context_out`: with its output.
    fn new(
        dim: usize,
        heads: usize,
        head_dim: usize,
        qk_norm: bool,
        joint: bool,
        context_out: bool,
        device: &Device,
    ) -> Self {
        let inner = heads * head_dim;
        let proj = || linear(dim, inner, true, device);
        let norm = || qk_norm.then(|| rms_norm(head_dim, EPS, device));
        Self {
            to_q: proj(),
            to_k: proj(),
            to_v: proj(),
            to_out: linear(inner, dim, true, device),
            norm_q: norm(),
            norm_k: norm(),
            add_q_proj: joint.then(proj),
            add_k_proj: joint.then(proj),
            add_v_proj: joint.then(proj),
            to_add_out: (joint && context_out).then(|| linear(inner, dim, true, device)),
            norm_added_q: if joint { norm() } else { None },
            norm_added_k: if joint { norm() } else { None },
            heads,
        }
    }

    /// Queries, keys and values `[B, heads, N, head_dim]` of `x` through `q`, `k`, `v`,
    /// the queries and keys normalised per head.
    #[allow(clippy::too_many_arguments)]
    fn qkv(
        &self,
        x: Tensor<3>,
        (q, k, v): (&Linear, &Linear, &Linear),
        (norm_q, norm_k): (&Option<RmsNorm>, &Option<RmsNorm>),
    ) -> [Tensor<4>; 3] {
        let heads = self.heads;
        let mut query = split_heads(q.forward(x.clone()), heads);
        let mut key = split_heads(k.forward(x.clone()), heads);
        if let Some(norm) = norm_q {
            query = norm.forward(query);
        }
        if let Some(norm) = norm_k {
            key = norm.forward(key);
        }
        [query, key, split_heads(v.forward(x), heads)]
    }

    /// Self-attention over `x` (`attn2`).
    fn forward_self(&self, x: Tensor<3>) -> Tensor<3> {
        let [q, k, v] = self.qkv(
            x,
            (&self.to_q, &self.to_k, &self.to_v),
            (&self.norm_q, &self.norm_k),
        );
        let out = scaled_dot_product(q, k, v, false, false);
        self.to_out.forward(merge_heads(out))
    }

    /// Joint attention over the image tokens `x` followed by the context tokens: the two
    /// streams' outputs (the context's `None` in a `context_pre_only` block).
    fn forward_joint(&self, x: Tensor<3>, context: Tensor<3>) -> (Tensor<3>, Option<Tensor<3>>) {
        let image_tokens = x.dims()[1];
        let image = self.qkv(
            x,
            (&self.to_q, &self.to_k, &self.to_v),
            (&self.norm_q, &self.norm_k),
        );
        let added = (
            self.add_q_proj.as_ref().expect("joint attention"),
            self.add_k_proj.as_ref().expect("joint attention"),
            self.add_v_proj.as_ref().expect("joint attention"),
        );
        let text = self.qkv(context, added, (&self.norm_added_q, &self.norm_added_k));
        let [q, k, v] = [0, 1, 2].map(|i| Tensor::cat(vec![image[i].clone(), text[i].clone()], 2));
        let out = merge_heads(scaled_dot_product(q, k, v, false, false));
        let [b, n, c] = out.dims();
        let image_out = out.clone().slice([0..b, 0..image_tokens, 0..c]);
        let context_out = self
            .to_add_out
            .as_ref()
            .map(|proj| proj.forward(out.slice([0..b, image_tokens..n, 0..c])));
        (self.to_out.forward(image_out), context_out)
    }
}

/// How one block is made (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct BlockShape {
    pub dim: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub qk_norm: bool,
    pub context_pre_only: bool,
    pub dual_attention: bool,
}

#[derive(Module, Debug)]
pub struct JointTransformerBlock {
    /// AdaLayerNormZero of the image stream: 6 modulations (9 with dual attention:
    /// `SD35AdaLayerNormZeroX`).
    pub norm1: AdaLinear,
    /// AdaLayerNormZero of the context stream (6), or AdaLayerNormContinuous (2) in the
    /// last block.
    pub norm1_context: AdaLinear,
    pub attn: JointAttention,
    pub attn2: Option<JointAttention>,
    pub ff: GeluFeedForward,
    pub ff_context: Option<GeluFeedForward>,
    pub context_pre_only: bool,
}

/// The `linear` of an adaptive norm (`norm1.linear`), read as `silu(emb)` → modulations.
#[derive(Module, Debug)]
pub struct AdaLinear {
    pub linear: Linear,
}

impl JointTransformerBlock {
    pub fn new(shape: BlockShape, device: &Device) -> Self {
        let BlockShape {
            dim,
            heads,
            head_dim,
            qk_norm,
            context_pre_only,
            dual_attention,
        } = shape;
        let ada = |n: usize| AdaLinear {
            linear: linear(dim, n * dim, true, device),
        };
        Self {
            norm1: ada(if dual_attention { 9 } else { 6 }),
            norm1_context: ada(if context_pre_only { 2 } else { 6 }),
            attn: JointAttention::new(
                dim,
                heads,
                head_dim,
                qk_norm,
                true,
                !context_pre_only,
                device,
            ),
            attn2: dual_attention
                .then(|| JointAttention::new(dim, heads, head_dim, qk_norm, false, false, device)),
            ff: GeluFeedForward::new(dim, device),
            ff_context: (!context_pre_only).then(|| GeluFeedForward::new(dim, device)),
            context_pre_only,
        }
    }

    /// Updates the image tokens `x` and the context tokens, conditioned on `emb` `[B, dim]`;
    /// returns both (the context `None` after a `context_pre_only` block).
    pub fn forward(
        &self,
        x: Tensor<3>,
        context: Tensor<3>,
        emb: &Tensor<2>,
    ) -> (Tensor<3>, Option<Tensor<3>>) {
        // shift, scale, gate (attention), shift, scale, gate (MLP)[, shift, scale, gate
        // (second attention)].
        let m = modulation(&self.norm1.linear, emb, self.norm1_modulations());
        let normed = layer_norm(x.clone());
        let norm_x = modulate(normed.clone(), &m[0], &m[1]);
        let (norm_context, c) = if self.context_pre_only {
            // AdaLayerNormContinuous: (scale, shift).
            let c = modulation(&self.norm1_context.linear, emb, 2);
            (modulate(layer_norm(context.clone()), &c[1], &c[0]), None)
        } else {
            let c = modulation(&self.norm1_context.linear, emb, 6);
            (modulate(layer_norm(context.clone()), &c[0], &c[1]), Some(c))
        };
        let (attn_x, attn_context) = self.attn.forward_joint(norm_x, norm_context);
        let mut x = x + gated(&m[2], attn_x);
        if let Some(attn2) = &self.attn2 {
            let norm_x2 = modulate(normed, &m[6], &m[7]);
            x = x + gated(&m[8], attn2.forward_self(norm_x2));
        }
        let ff = self
            .ff
            .forward(modulate(layer_norm(x.clone()), &m[3], &m[4]));
        let x = x + gated(&m[5], ff);
        let context = match (c, attn_context, &self.ff_context) {
            (Some(c), Some(attn_context), Some(ff_context)) => {
                let context = context + gated(&c[2], attn_context);
                let normed = modulate(layer_norm(context.clone()), &c[3], &c[4]);
                Some(context.clone() + gated(&c[5], ff_context.forward(normed)))
            }
            _ => None,
        };
        (x, context)
    }

    fn norm1_modulations(&self) -> usize {
        if self.attn2.is_some() { 9 } else { 6 }
    }
}
