//! diffusers' `SD3Transformer2DModel`, the MMDiT of Stable Diffusion 3 and 3.5: the latents
//! are cut into 2×2 patches, each a token with a (cropped) sin-cos position embedding; the
//! text embeddings are projected to the same width; joint transformer blocks (see `block`)
//! update both streams, modulated by the timestep and the pooled text embedding; the
//! image tokens are projected back to patches.

mod block;

use burn::prelude::*;
use serde::Deserialize;

use block::AdaLayerNormContinuous;
pub use block::{BlockShape, JointTransformerBlock};

use super::embeddings::{TimestepEmbedding, timestep_embedding};
use super::layers::{Conv2d, Linear, conv2d, linear};
use crate::config::bounded;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Sd3TransformerConfig {
    pub sample_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    pub num_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub caption_projection_dim: usize,
    pub pooled_projection_dim: usize,
    pub pos_embed_max_size: Option<usize>,
    pub dual_attention_layers: Vec<usize>,
    pub qk_norm: Option<String>,
}

impl Default for Sd3TransformerConfig {
    /// diffusers' defaults (SD3 Medium's shape).
    fn default() -> Self {
        Self {
            sample_size: 128,
            patch_size: 2,
            in_channels: 16,
            out_channels: Some(16),
            num_layers: 18,
            attention_head_dim: 64,
            num_attention_heads: 18,
            joint_attention_dim: 4096,
            caption_projection_dim: 1152,
            pooled_projection_dim: 2048,
            pos_embed_max_size: Some(96),
            dual_attention_layers: Vec::new(),
            qk_norm: None,
        }
    }
}

impl Sd3TransformerConfig {
    /// The width of both token streams.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// The largest latent side, in latents, the position table covers.
    pub fn max_latent_side(&self) -> usize {
        self.pos_embed_max_size.unwrap_or(0) * self.patch_size
    }

    fn validate(&self, file: &str) -> Result<()> {
        bounded(file, "sample_size", self.sample_size, 1..=4096)?;
        bounded(file, "patch_size", self.patch_size, 1..=16)?;
        bounded(file, "in_channels", self.in_channels, 1..=256)?;
        bounded(file, "out_channels", self.out_channels(), 1..=256)?;
        bounded(file, "num_layers", self.num_layers, 1..=128)?;
        bounded(
            file,
            "attention_head_dim",
            self.attention_head_dim,
            1..=1024,
        )?;
        bounded(
            file,
            "num_attention_heads",
            self.num_attention_heads,
            1..=256,
        )?;
        bounded(
            file,
            "joint_attention_dim",
            self.joint_attention_dim,
            1..=16384,
        )?;
        bounded(
            file,
            "pooled_projection_dim",
            self.pooled_projection_dim,
            1..=16384,
        )?;
        if self.inner_dim() > 16384 {
            return Err(Error::config(
                file,
                "num_attention_heads",
                format!(
                    "{} heads of {} is too wide",
                    self.num_attention_heads, self.attention_head_dim
                ),
            ));
        }
        if !self.inner_dim().is_multiple_of(4) {
            return Err(Error::config(
                file,
                "attention_head_dim",
                format!(
                    "gives a width of {}, which the 2-D sin-cos positions cannot split in four",
                    self.inner_dim()
                ),
            ));
        }
        if self.sample_size < self.patch_size {
            return Err(Error::config(
                file,
                "patch_size",
                format!(
                    "{} is larger than sample_size {}",
                    self.patch_size, self.sample_size
                ),
            ));
        }
        if self.caption_projection_dim != self.inner_dim() {
            return Err(Error::config(
                file,
                "caption_projection_dim",
                format!(
                    "is {} but the transformer is {} wide (num_attention_heads × \
                     attention_head_dim): the text tokens join the image tokens at that width",
                    self.caption_projection_dim,
                    self.inner_dim()
                ),
            ));
        }
        match self.pos_embed_max_size {
            Some(size) => bounded(file, "pos_embed_max_size", size, 1..=4096)?,
            None => {
                return Err(Error::config(
                    file,
                    "pos_embed_max_size",
                    "is missing: SD3 transformers crop their position table from it",
                ));
            }
        }
        if let Some(&layer) = self
            .dual_attention_layers
            .iter()
            .find(|&&l| l >= self.num_layers)
        {
            return Err(Error::config(
                file,
                "dual_attention_layers",
                format!("names layer {layer} of {}", self.num_layers),
            ));
        }
        match self.qk_norm.as_deref() {
            None | Some("rms_norm") => Ok(()),
            Some(other) => Err(Error::config(
                file,
                "qk_norm",
                format!("is {other:?}; SD3 transformers use \"rms_norm\" or none"),
            )),
        }
    }
}

/// `PatchEmbed`: a strided convolution per patch, plus a 2-D sin-cos position embedding
/// cropped from a `max_size`² grid around its centre. diffusers stores the whole grid in
/// checkpoints (`pos_embed.pos_embed`, a buffer: 453 MB in f16 for SD3.5 Medium); it is a
/// fixed function of the config, so only the positions a call uses are computed.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
    pub max_size: usize,
    /// The grid size the positions are scaled to (`sample_size / patch_size`).
    pub base_size: usize,
}

impl PatchEmbed {
    /// Tokens `[B, h·w, dim]` of latents `[B, C, H, W]` (`h = H / patch`).
    fn forward(&self, latents: Tensor<4>) -> Tensor<3> {
        let x = self.proj.forward(latents);
        let [b, dim, h, w] = x.dims();
        let tokens = x.reshape([b, dim, h * w]).swap_dims(1, 2);
        let table = self.position_table(h, w, dim, &tokens.device());
        let dtype = tokens.dtype();
        tokens + table.cast(dtype)
    }

    /// diffusers' `get_2d_sincos_pos_embed` (in f64, then f32) at the `h` × `w` patches at
    /// the centre of the grid, `[1, h·w, dim]`: the first half of each embedding encodes
    /// the column, the second the row, each as sines then cosines of `dim / 4` frequencies.
    fn position_table(&self, h: usize, w: usize, dim: usize, device: &Device) -> Tensor<3> {
        let (top, left) = ((self.max_size - h) / 2, (self.max_size - w) / 2);
        let quarter = dim / 4;
        // Grid coordinates as diffusers computes them, in f32: i / (grid / base).
        let scale = (self.max_size as f64 / self.base_size as f64) as f32;
        let sincos = |positions: std::ops::Range<usize>| -> Vec<f32> {
            let mut values = Vec::with_capacity(positions.len() * 2 * quarter);
            for i in positions {
                let p = f64::from(i as f32 / scale);
                let angles = (0..quarter).map(|k| p / 10000f64.powf(k as f64 / quarter as f64));
                let angles: Vec<f64> = angles.collect();
                values.extend(angles.iter().map(|a| a.sin() as f32));
                values.extend(angles.iter().map(|a| a.cos() as f32));
            }
            values
        };
        let half = 2 * quarter;
        let columns = Tensor::<3>::from_data(
            TensorData::new(sincos(left..left + w), [1, w, half]),
            device,
        );
        let rows =
            Tensor::<3>::from_data(TensorData::new(sincos(top..top + h), [h, 1, half]), device);
        Tensor::cat(
            vec![columns.expand([h, w, half]), rows.expand([h, w, half])],
            2,
        )
        .reshape([1, h * w, dim])
    }
}

/// `CombinedTimestepTextProjEmbeddings`: the timestep's 256 sinusoids through an MLP, plus
/// the pooled text embedding through another (`PixArtAlphaTextProjection`, the same shape).
#[derive(Module, Debug)]
pub struct TimeTextEmbed {
    pub timestep_embedder: TimestepEmbedding,
    pub text_embedder: TimestepEmbedding,
}

/// The sinusoids the timestep is projected to.
const TIME_PROJ: usize = 256;

#[derive(Module, Debug)]
pub struct SD3Transformer2DModel {
    pub pos_embed: PatchEmbed,
    pub time_text_embed: TimeTextEmbed,
    pub context_embedder: Linear,
    pub transformer_blocks: Vec<JointTransformerBlock>,
    pub norm_out: AdaLayerNormContinuous,
    pub proj_out: Linear,
    pub patch_size: usize,
    pub out_channels: usize,
}

impl SD3Transformer2DModel {
    pub fn new(config: &Sd3TransformerConfig, file: &str, device: &Device) -> Result<Self> {
        config.validate(file)?;
        let dim = config.inner_dim();
        let (p, max) = (config.patch_size, config.pos_embed_max_size.unwrap_or(1));
        let c_in = config.in_channels;
        let blocks = (0..config.num_layers)
            .map(|i| {
                let shape = BlockShape {
                    dim,
                    heads: config.num_attention_heads,
                    head_dim: config.attention_head_dim,
                    qk_norm: config.qk_norm.is_some(),
                    context_pre_only: i + 1 == config.num_layers,
                    dual_attention: config.dual_attention_layers.contains(&i),
                };
                JointTransformerBlock::new(shape, device)
            })
            .collect();
        Ok(Self {
            pos_embed: PatchEmbed {
                proj: conv2d(c_in, dim, p, p, 0, device),
                max_size: max,
                base_size: config.sample_size / p,
            },
            time_text_embed: TimeTextEmbed {
                timestep_embedder: TimestepEmbedding::new(TIME_PROJ, dim, None, device),
                text_embedder: TimestepEmbedding::new(
                    config.pooled_projection_dim,
                    dim,
                    None,
                    device,
                ),
            },
            context_embedder: linear(config.joint_attention_dim, dim, true, device),
            transformer_blocks: blocks,
            norm_out: AdaLayerNormContinuous::new(dim, device),
            proj_out: linear(dim, p * p * config.out_channels(), true, device),
            patch_size: p,
            out_channels: config.out_channels(),
        })
    }

    /// The velocity `[B, C, H, W]` for latents `x` at `timestep` (σ·1000), conditioned on
    /// the text embeddings `context` `[B, N, joint_attention_dim]` and the pooled embedding
    /// `pooled` `[B, pooled_projection_dim]`. The blocks listed in `skip` are left out
    /// (skip-layer guidance).
    pub fn forward(
        &self,
        x: Tensor<4>,
        timestep: f32,
        context: Tensor<3>,
        pooled: Tensor<2>,
        skip: &[usize],
    ) -> Tensor<4> {
        let [b, _, height, width] = x.dims();
        let dtype = x.dtype();
        let device = x.device();
        let mut hidden = self.pos_embed.forward(x);
        let t = timestep_embedding(&vec![timestep; b], TIME_PROJ, true, 0.0, &device);
        let emb = self
            .time_text_embed
            .timestep_embedder
            .forward(t.cast(dtype), None)
            + self.time_text_embed.text_embedder.forward(pooled, None);
        let mut context = Some(self.context_embedder.forward(context));
        for (i, block) in self.transformer_blocks.iter().enumerate() {
            if skip.contains(&i) {
                continue;
            }
            let Some(c) = context.take() else { break };
            let (h, c) = block.forward(hidden, c, &emb);
            hidden = h;
            context = c;
        }
        let hidden = self.proj_out.forward(self.norm_out.forward(hidden, &emb));
        self.unpatchify(hidden, height, width)
    }

    /// Tokens `[B, h·w, p·p·C]` back to latents `[B, C, h·p, w·p]`.
    fn unpatchify(&self, x: Tensor<3>, height: usize, width: usize) -> Tensor<4> {
        let (p, c) = (self.patch_size, self.out_channels);
        let (h, w) = (height / p, width / p);
        let b = x.dims()[0];
        // [b·h, w, p, p·c] → [b·h, p, w, p·c]: each row of patches becomes p pixel rows.
        x.reshape([b * h, w, p, p * c])
            .swap_dims(1, 2)
            .reshape([b, h * p, w * p, c])
            .permute([0, 3, 1, 2])
    }
}
