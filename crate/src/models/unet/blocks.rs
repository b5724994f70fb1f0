//! The UNet's down, mid and up blocks, each built from the [`BlockPlan`]. One struct covers
//! `CrossAttnDownBlock2D` and `DownBlock2D` (the latter simply has no attentions), likewise
//! for the up blocks. A ControlNet builds the same down path and mid block.

use burn::prelude::*;

use super::config::BlockPlan;
use crate::models::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::models::transformer::Transformer2DModel;

/// The down blocks of every level, from the output of `conv_in`.
pub fn down_path(plan: &BlockPlan, device: &Device) -> Vec<DownBlock> {
    (0..plan.levels())
        .map(|level| {
            let c_in = plan.channels[level.saturating_sub(1)];
            DownBlock::new(plan, level, c_in, device)
        })
        .collect()
}

/// The up blocks, deepest level first (the order they run in).
pub fn up_path(plan: &BlockPlan, device: &Device) -> Vec<UpBlock> {
    let n = plan.levels();
    (0..n)
        .rev()
        .map(|level| UpBlock::new(plan, level, device))
        .collect()
}

#[derive(Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsamplers: Vec<Downsample2D>,
}

impl DownBlock {
    /// The down block of `level`, taking `c_in` channels: resnets (each followed by a
    /// transformer where the level has cross-attention), then a downsampler except at the
    /// deepest level.
    pub fn new(plan: &BlockPlan, level: usize, c_in: usize, device: &Device) -> Self {
        let c = plan.channels[level];
        let layers = plan.layers[level];
        Self {
            resnets: (0..layers)
                .map(|j| plan.resnet(if j == 0 { c_in } else { c }, c).init(device))
                .collect(),
            attentions: match plan.down_attention[level] {
                true => (0..layers)
                    .map(|_| plan.transformer(level).init(device))
                    .collect(),
                false => Vec::new(),
            },
            downsamplers: (level + 1 < plan.levels())
                .then(|| Downsample2D::new(c, plan.downsample_padding, device))
                .into_iter()
                .collect(),
        }
    }

    /// Returns the block's output and every intermediate state the up path will
    /// concatenate back (one per resnet, plus the downsampled output).
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
    ) -> (Tensor<4>, Vec<Tensor<4>>) {
        let mut skips = Vec::new();
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(temb.clone()));
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, context.clone());
            }
            skips.push(x.clone());
        }
        for down in &self.downsamplers {
            x = down.forward(x);
            skips.push(x.clone());
        }
        (x, skips)
    }
}

#[derive(Module, Debug)]
pub struct MidBlock {
    /// One more resnet than attentions: resnet, (attention, resnet)*.
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    /// `UNetMidBlock2DCrossAttn` at the deepest level; `None` when the plan has none.
    pub fn new(plan: &BlockPlan, device: &Device) -> Option<Self> {
        let scale = plan.mid_block_scale_factor?;
        let level = plan.levels() - 1;
        let c = plan.channels[level];
        let mut resnet = plan.resnet(c, c);
        resnet.output_scale_factor = scale;
        Some(Self {
            resnets: (0..2).map(|_| resnet.init(device)).collect(),
            attentions: vec![plan.transformer(level).init(device)],
        })
    }

    pub fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, context: &Tensor<3>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, Some(temb.clone()));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = attn.forward(x, context.clone());
            x = resnet.forward(x, Some(temb.clone()));
        }
        x
    }
}

#[derive(Module, Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsamplers: Vec<Upsample2D>,
}

impl UpBlock {
    /// The up block of `level`: one resnet more than its down block, each concatenating a
    /// skip connection (the last one from the level above), then an upsampler except at
    /// level 0.
    pub fn new(plan: &BlockPlan, level: usize, device: &Device) -> Self {
        let n = plan.levels();
        let c = plan.channels[level];
        // The input comes from the level below (the mid block at the deepest level).
        let c_prev = plan.channels[(level + 1).min(n - 1)];
        let c_skip_in = plan.channels[level.saturating_sub(1)];
        let layers = plan.layers[level] + 1;
        Self {
            resnets: (0..layers)
                .map(|j| {
                    let c_res = if j == 0 { c_prev } else { c };
                    let c_skip = if j == layers - 1 { c_skip_in } else { c };
                    plan.resnet(c_res + c_skip, c).init(device)
                })
                .collect(),
            attentions: match plan.up_attention[level] {
                true => (0..layers)
                    .map(|_| plan.transformer(level).init(device))
                    .collect(),
                false => Vec::new(),
            },
            upsamplers: (level > 0)
                .then(|| Upsample2D::new(c, device))
                .into_iter()
                .collect(),
        }
    }

    /// `skips` holds this block's skip connections, last one first used; `upsample_to` is
    /// the spatial size of the next block's first skip.
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        mut skips: Vec<Tensor<4>>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        upsample_to: Option<[usize; 2]>,
    ) -> Tensor<4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("one skip connection per resnet");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(temb.clone()));
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, context.clone());
            }
        }
        for up in &self.upsamplers {
            x = up.forward(x, upsample_to);
        }
        x
    }
}
