//! `UNet2DConditionModel`: predicts the noise in a latent, conditioned on the timestep and,
//! through cross-attention, on the text embeddings. Built entirely from `unet/config.json`.

mod blocks;
mod config;

pub use blocks::{DownBlock, MidBlock, UpBlock};
pub use config::UNetConfig;

use burn::nn::GroupNorm;
use burn::prelude::*;
use burn::tensor::activation::silu;

use super::embeddings::{TimestepEmbedding, timestep_embedding};
use super::layers::{Conv2d, conv2d, group_norm};
use super::resnet::{Downsample2D, ResnetConfig, Upsample2D};
use super::transformer::Transformer2DConfig;
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
        let channels = &config.block_out_channels;
        let n = channels.len();
        let groups = config.norm_num_groups;
        let temb_dim = channels[0] * 4;
        let resnet = |c_in, c_out| ResnetConfig {
            in_channels: c_in,
            out_channels: c_out,
            temb_channels: Some(temb_dim),
            groups,
            eps: config.norm_eps,
            output_scale_factor: 1.0,
        };
        let transformer = |c, i: usize| Transformer2DConfig {
            channels: c,
            heads: plan.heads[i],
            layers: plan.transformer_layers[i],
            cross_attention_dim: plan.cross_attention_dim[i],
            groups,
            use_linear_projection: config.use_linear_projection,
            upcast_attention: config.upcast_attention,
        };

        let mut down_blocks = Vec::with_capacity(n);
        let mut c_out = channels[0];
        for (i, &channels_i) in channels.iter().enumerate() {
            let c_in = c_out;
            c_out = channels_i;
            let layers = plan.layers[i];
            down_blocks.push(DownBlock {
                resnets: (0..layers)
                    .map(|j| resnet(if j == 0 { c_in } else { c_out }, c_out).init(device))
                    .collect(),
                attentions: if plan.cross_attention[i] {
                    (0..layers)
                        .map(|_| transformer(c_out, i).init(device))
                        .collect()
                } else {
                    Vec::new()
                },
                downsamplers: (i + 1 < n)
                    .then(|| Downsample2D::new(c_out, config.downsample_padding, device))
                    .into_iter()
                    .collect(),
            });
        }

        let c_mid = channels[n - 1];
        let mid_block = config.mid_block_type.as_ref().map(|_| {
            let mut mid_resnet = resnet(c_mid, c_mid);
            mid_resnet.output_scale_factor = config.mid_block_scale_factor;
            MidBlock {
                resnets: (0..2).map(|_| mid_resnet.init(device)).collect(),
                attentions: vec![transformer(c_mid, n - 1).init(device)],
            }
        });

        // The up path mirrors the down path; its per-block values are the reversed lists.
        let mut up_blocks = Vec::with_capacity(n);
        let mut c_out = channels[n - 1];
        for (i, block_type) in config.up_block_types.iter().enumerate() {
            let level = n - 1 - i;
            let c_prev = c_out;
            c_out = channels[level];
            let c_skip_in = channels[level.saturating_sub(1)];
            let layers = plan.layers[level] + 1;
            up_blocks.push(UpBlock {
                resnets: (0..layers)
                    .map(|j| {
                        let c_res = if j == 0 { c_prev } else { c_out };
                        let c_skip = if j == layers - 1 { c_skip_in } else { c_out };
                        resnet(c_res + c_skip, c_out).init(device)
                    })
                    .collect(),
                attentions: if block_type.starts_with("CrossAttn") {
                    (0..layers)
                        .map(|_| transformer(c_out, level).init(device))
                        .collect()
                } else {
                    Vec::new()
                },
                upsamplers: (i + 1 < n)
                    .then(|| Upsample2D::new(c_out, device))
                    .into_iter()
                    .collect(),
            });
        }

        let (k_in, k_out) = (config.conv_in_kernel, config.conv_out_kernel);
        Ok(Self {
            conv_in: conv2d(config.in_channels, channels[0], k_in, 1, k_in / 2, device),
            time_embedding: TimestepEmbedding::new(
                channels[0],
                temb_dim,
                config.time_cond_proj_dim,
                device,
            ),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(groups, channels[0], config.norm_eps, device),
            conv_out: conv2d(
                channels[0],
                config.out_channels,
                k_out,
                1,
                k_out / 2,
                device,
            ),
            time_proj_dim: channels[0],
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
