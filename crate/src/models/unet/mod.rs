//! `UNet2DConditionModel`: predicts the noise in a latent, conditioned on the timestep and,
//! through cross-attention, on the text embeddings. Built entirely from `unet/config.json`.

mod blocks;
mod config;

pub use blocks::{DownBlock, MidBlock, UpBlock, down_path, up_path};
pub use config::{BlockPlan, UNetConfig};

use burn::prelude::*;
use burn::tensor::activation::silu;

use super::embeddings::{TimestepEmbedding, timestep_embedding};
use super::layers::{Conv2d, GroupNorm, conv2d, group_norm};
use crate::error::Result;

#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: Option<MidBlock>,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    /// SDXL's `text_time` embedding of the pooled text embedding and the size ids.
    pub add_embedding: Option<TimestepEmbedding>,
    /// The sinusoidal projections of the timestep and the size ids.
    #[module(skip)]
    pub time: TimeProjection,
}

/// What the UNet (and a ControlNet) is conditioned on besides the latents and the
/// timestep, batched as the latents are (the negative prompt's first under CFG).
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// The text embeddings its cross-attention reads, `[B, tokens, dim]`.
    pub context: Tensor<3>,
    /// LCM's embedding of the guidance scale, `[B, time_cond_proj_dim]`.
    pub timestep_cond: Option<Tensor<2>>,
    /// SDXL's `text_time` inputs.
    pub text_time: Option<TextTime>,
}

/// SDXL's added conditioning: the pooled text embedding and the size ids.
#[derive(Debug, Clone)]
pub struct TextTime {
    /// `[B, P]`: the second text encoder's projected end-token state.
    pub pooled: Tensor<2>,
    /// Six per sample, row after row (original height and width, crop top and left,
    /// target height and width): plain numbers, embedded on the host as timesteps are.
    pub time_ids: Vec<f32>,
}

impl Conditioning {
    /// Conditioning on text embeddings alone (SD 1.x/2.x).
    pub fn text(context: Tensor<3>) -> Self {
        Self {
            context,
            timestep_cond: None,
            text_time: None,
        }
    }
}

/// Extra residuals added to the skip connections and the mid-block output (ControlNet):
/// one per down-path state, in the order the down path produces them.
#[derive(Debug, Clone)]
pub struct Residuals {
    pub down: Vec<Tensor<4>>,
    pub mid: Tensor<4>,
}

impl UNet2DConditionModel {
    /// Builds the network described by `config` (read from `file`, named in errors).
    /// Parameters are lazy: nothing is allocated before weights are loaded.
    pub fn new(config: &UNetConfig, file: &str, device: &Device) -> Result<Self> {
        let plan = config.plan(file)?;
        let c0 = plan.channels[0];
        let (add_embedding, time) = time_conditioning(config, file, c0, plan.temb_dim, device)?;
        let (k_in, k_out) = (config.conv_in_kernel, config.conv_out_kernel);
        Ok(Self {
            conv_in: conv2d(config.in_channels, c0, k_in, 1, k_in / 2, device),
            time_embedding: TimestepEmbedding::new(
                c0,
                plan.temb_dim,
                config.time_cond_proj_dim,
                device,
            ),
            down_blocks: blocks::down_path(&plan, device),
            mid_block: MidBlock::new(&plan, device),
            up_blocks: blocks::up_path(&plan, device),
            conv_norm_out: group_norm(plan.groups, c0, config.norm_eps, device),
            conv_out: conv2d(c0, config.out_channels, k_out, 1, k_out / 2, device),
            add_embedding,
            time,
        })
    }

    /// Predicts the noise (or v, or x₀, per the scheduler's `prediction_type`) in `sample`
    /// `[B, C, h, w]` at `timestep`, given `cond` (the text embeddings its cross-attention
    /// reads, and the embeddings added to the time embedding). `residuals` are ControlNet's.
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timestep: f32,
        cond: &Conditioning,
        residuals: Option<Residuals>,
    ) -> Tensor<4> {
        let context = &cond.context;
        let temb = self.embed_time(&sample, timestep, cond);
        let mut x = self.conv_in.forward(sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            let (out, block_skips) = block.forward(x, &temb, context);
            x = out;
            skips.extend(block_skips);
        }
        let mid_residual = residuals.map(|r| {
            skips = skips.drain(..).zip(r.down).map(|(s, r)| s + r).collect();
            r.mid
        });
        if let Some(mid) = &self.mid_block {
            x = mid.forward(x, &temb, context);
        }
        if let Some(r) = mid_residual {
            x = x + r;
        }
        for block in &self.up_blocks {
            let block_skips = skips.split_off(skips.len() - block.resnets.len());
            let upsample_to = skips.last().map(|s| {
                let [_, _, h, w] = s.dims();
                [h, w]
            });
            x = block.forward(x, block_skips, &temb, context, upsample_to);
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }

    /// The embedding every resnet receives (see [`embed_time`]).
    fn embed_time(&self, sample: &Tensor<4>, timestep: f32, cond: &Conditioning) -> Tensor<2> {
        let embeddings = (&self.time_embedding, self.add_embedding.as_ref());
        embed_time(embeddings, self.time, sample, timestep, cond)
    }
}

/// What a UNet and its ControlNets build alike from `config` (read from `file`) besides
/// `time_embedding`: SDXL's `text_time` add_embedding and the sinusoidal projections, for
/// a first level `c0` wide and time embeddings `temb_dim` wide.
pub fn time_conditioning(
    config: &UNetConfig,
    file: &str,
    c0: usize,
    temb_dim: usize,
    device: &Device,
) -> Result<(Option<TimestepEmbedding>, TimeProjection)> {
    let text_time = config.text_time(file)?;
    let add_embedding = text_time
        .map(|(time, pooled)| TimestepEmbedding::new(6 * time + pooled, temb_dim, None, device));
    let time = TimeProjection {
        dim: c0,
        add_dim: text_time.map_or(0, |(time, _)| time),
        flip_sin_to_cos: config.flip_sin_to_cos,
        freq_shift: config.freq_shift,
    };
    Ok((add_embedding, time))
}

/// The sinusoidal projections of the timestep and of SDXL's size ids.
#[derive(Debug, Clone, Copy)]
pub struct TimeProjection {
    pub dim: usize,
    /// Per size id (`addition_time_embed_dim`; 0 without `text_time`).
    pub add_dim: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
}

/// The embedding every resnet receives: the timestep's through `time_embedding`, plus
/// LCM's guidance embedding and SDXL's `text_time` embedding (through `add_embedding`)
/// when the model has them. The UNet and its ControlNets compute it alike.
pub fn embed_time(
    (time_embedding, add_embedding): (&TimestepEmbedding, Option<&TimestepEmbedding>),
    time: TimeProjection,
    sample: &Tensor<4>,
    timestep: f32,
    cond: &Conditioning,
) -> Tensor<2> {
    let device = sample.device();
    let dtype = sample.dtype();
    let batch = sample.dims()[0];
    let sinusoids = |values: &[f32], dim: usize| {
        timestep_embedding(values, dim, time.flip_sin_to_cos, time.freq_shift, &device)
    };
    let t_emb = sinusoids(&vec![timestep; batch], time.dim).cast(dtype);
    let temb = time_embedding.forward(t_emb, cond.timestep_cond.clone());
    let (Some(add_embedding), Some(text_time)) = (add_embedding, &cond.text_time) else {
        return temb;
    };
    // Each size id through the sinusoidal projection, flattened per sample: diffusers'
    // `add_time_proj(time_ids.flatten())` reshaped to [B, 6·d].
    let time_embeds = sinusoids(&text_time.time_ids, time.add_dim)
        .reshape([batch, 6 * time.add_dim])
        .cast(dtype);
    let add = Tensor::cat(vec![text_time.pooled.clone().cast(dtype), time_embeds], 1);
    temb + add_embedding.forward(add, None)
}
