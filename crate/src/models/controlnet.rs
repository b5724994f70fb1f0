//! diffusers' `ControlNetModel`: a trainable copy of the UNet's down path and mid block
//! that reads a control image (edges, pose, depth, …) and returns residuals for the UNet's
//! skip connections and mid block, through zero-initialised 1×1 convolutions. Built from
//! its own `config.json` with the UNet's block constructors.

use burn::prelude::*;
use burn::tensor::activation::silu;
use serde::{Deserialize, Serialize};

use super::embeddings::TimestepEmbedding;
use super::layers::{Conv2d, conv2d};
use super::unet::{
    Conditioning, DownBlock, MidBlock, Residuals, TimeProjection, UNetConfig, down_path,
    embed_time, time_conditioning,
};
use crate::config::{all_bounded, bounded, expect_one_of};
use crate::error::Result;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ControlNetConfig {
    /// The keys a ControlNet shares with the UNet it copies (`block_out_channels`,
    /// `down_block_types`, `cross_attention_dim`, …).
    #[serde(flatten)]
    pub unet: UNetConfig,
    /// Channels of the control image (3: RGB).
    pub conditioning_channels: usize,
    /// `rgb`, or `bgr` for models trained on BGR images (the channels are flipped).
    pub controlnet_conditioning_channel_order: String,
    /// The conditioning embedding's widths; one stride-2 convolution between each pair, so
    /// that the control image reaches the latent size.
    pub conditioning_embedding_out_channels: Vec<usize>,
    /// Whether the residuals are averaged over the image (shuffle-style models).
    pub global_pool_conditions: bool,
}

impl Default for ControlNetConfig {
    fn default() -> Self {
        Self {
            unet: UNetConfig::default(),
            conditioning_channels: 3,
            controlnet_conditioning_channel_order: "rgb".into(),
            conditioning_embedding_out_channels: vec![16, 32, 96, 256],
            global_pool_conditions: false,
        }
    }
}

/// `ControlNetConditioningEmbedding`: convolutions with SiLU from the control image down to
/// the latent size and the UNet's first width.
#[derive(Module, Debug)]
pub struct ConditioningEmbedding {
    pub conv_in: Conv2d,
    /// Pairs of a 3×3 convolution and a stride-2 one that halves the size.
    pub blocks: Vec<Conv2d>,
    pub conv_out: Conv2d,
}

impl ConditioningEmbedding {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = silu(self.conv_in.forward(x));
        for block in &self.blocks {
            x = silu(block.forward(x));
        }
        self.conv_out.forward(x)
    }
}

#[derive(Module, Debug)]
pub struct ControlNetModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub controlnet_cond_embedding: ConditioningEmbedding,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: Option<MidBlock>,
    /// One zero convolution per down-path state (`conv_in`'s output first).
    pub controlnet_down_blocks: Vec<Conv2d>,
    pub controlnet_mid_block: Conv2d,
    /// SDXL's `text_time` embedding, as the UNet's.
    pub add_embedding: Option<TimestepEmbedding>,
    /// The sinusoidal projections of the timestep and the size ids.
    #[module(skip)]
    pub time: TimeProjection,
    pub bgr: bool,
    pub global_pool: bool,
}

impl ControlNetModel {
    /// Builds the network `config` (read from `file`) describes; parameters are lazy.
    pub fn new(config: &ControlNetConfig, file: &str, device: &Device) -> Result<Self> {
        let unet = &config.unet;
        let plan = unet.encoder_plan(file)?;
        expect_one_of(
            file,
            "controlnet_conditioning_channel_order",
            &config.controlnet_conditioning_channel_order,
            &["rgb", "bgr"],
        )?;
        let hint = &config.conditioning_embedding_out_channels;
        bounded(
            file,
            "conditioning_embedding_out_channels (count)",
            hint.len(),
            1..=8,
        )?;
        all_bounded(file, "conditioning_embedding_out_channels", hint, 1..=4096)?;
        bounded(
            file,
            "conditioning_channels",
            config.conditioning_channels,
            1..=16,
        )?;
        let c0 = plan.channels[0];
        let (add_embedding, time) = time_conditioning(unet, file, c0, plan.temb_dim, device)?;
        let k = unet.conv_in_kernel;
        let zero_conv = |c: usize| conv2d(c, c, 1, 1, 0, device);
        // conv_in's output, then every resnet's and every downsampler's, as the down path
        // produces its skip connections.
        let mut controlnet_down_blocks = vec![zero_conv(c0)];
        for level in 0..plan.levels() {
            let c = plan.channels[level];
            let states = plan.layers[level] + usize::from(level + 1 < plan.levels());
            controlnet_down_blocks.extend((0..states).map(|_| zero_conv(c)));
        }
        let c_mid = plan.channels[plan.levels() - 1];
        Ok(Self {
            conv_in: conv2d(unet.in_channels, c0, k, 1, k / 2, device),
            time_embedding: TimestepEmbedding::new(
                c0,
                plan.temb_dim,
                unet.time_cond_proj_dim,
                device,
            ),
            controlnet_cond_embedding: ConditioningEmbedding {
                conv_in: conv2d(config.conditioning_channels, hint[0], 3, 1, 1, device),
                blocks: hint
                    .windows(2)
                    .flat_map(|w| {
                        [
                            conv2d(w[0], w[0], 3, 1, 1, device),
                            conv2d(w[0], w[1], 3, 2, 1, device),
                        ]
                    })
                    .collect(),
                conv_out: conv2d(hint[hint.len() - 1], c0, 3, 1, 1, device),
            },
            down_blocks: down_path(&plan, device),
            mid_block: MidBlock::new(&plan, device),
            controlnet_down_blocks,
            controlnet_mid_block: zero_conv(c_mid),
            add_embedding,
            time,
            bgr: config.controlnet_conditioning_channel_order == "bgr",
            global_pool: config.global_pool_conditions,
        })
    }

    /// The residuals for the UNet's skip connections and mid block, each multiplied by
    /// `scale`. `sample` and `cond` are the UNet's own inputs at this step; `image` is the
    /// control image `[B, 3, H, W]` in [0, 1] at the output size.
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timestep: f32,
        cond: &Conditioning,
        image: Tensor<4>,
        scale: f32,
    ) -> Residuals {
        let context = &cond.context;
        let embeddings = (&self.time_embedding, self.add_embedding.as_ref());
        let temb = embed_time(embeddings, self.time, &sample, timestep, cond);
        let image = if self.bgr { image.flip([1]) } else { image };
        let mut x = self.conv_in.forward(sample) + self.controlnet_cond_embedding.forward(image);
        let mut states = vec![x.clone()];
        for block in &self.down_blocks {
            let (out, skips) = block.forward(x, &temb, context);
            x = out;
            states.extend(skips);
        }
        if let Some(mid) = &self.mid_block {
            x = mid.forward(x, &temb, context);
        }
        let finish = |t: Tensor<4>| {
            let t = t * scale;
            if self.global_pool {
                t.mean_dim(2).mean_dim(3)
            } else {
                t
            }
        };
        Residuals {
            down: states
                .into_iter()
                .zip(&self.controlnet_down_blocks)
                .map(|(s, conv)| finish(conv.forward(s)))
                .collect(),
            mid: finish(self.controlnet_mid_block.forward(x)),
        }
    }
}
