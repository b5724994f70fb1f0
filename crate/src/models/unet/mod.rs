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
    pub time_proj_dim: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
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
            time_proj_dim: c0,
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
        })
    }

    /// Predicts the noise (or v, or x₀, per the scheduler's `prediction_type`) in `sample`
    /// `[B, C, h, w]` at `timestep`, attending to `context` `[B, tokens, dim]`.
    ///
    /// `timestep_cond` is LCM's guidance embedding; `residuals` are ControlNet's.
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timestep: f32,
        context: Tensor<3>,
        timestep_cond: Option<Tensor<2>>,
        residuals: Option<Residuals>,
    ) -> Tensor<4> {
        let device = sample.device();
        let dtype = sample.dtype();
        let batch = sample.dims()[0];
        let t_emb = timestep_embedding(
            &vec![timestep; batch],
            self.time_proj_dim,
            self.flip_sin_to_cos,
            self.freq_shift,
            &device,
        )
        .cast(dtype);
        let temb = self.time_embedding.forward(t_emb, timestep_cond);

        let mut x = self.conv_in.forward(sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            let (out, block_skips) = block.forward(x, &temb, &context);
            x = out;
            skips.extend(block_skips);
        }
        let mid_residual = residuals.map(|r| {
            skips = skips.drain(..).zip(r.down).map(|(s, r)| s + r).collect();
            r.mid
        });
        if let Some(mid) = &self.mid_block {
            x = mid.forward(x, &temb, &context);
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
            x = block.forward(x, block_skips, &temb, &context, upsample_to);
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}
