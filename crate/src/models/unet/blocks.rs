//! The UNet's down, mid and up blocks. One struct covers `CrossAttnDownBlock2D` and
//! `DownBlock2D` (the latter simply has no attentions), likewise for the up blocks.

use burn::prelude::*;

use crate::models::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::models::transformer::Transformer2DModel;

#[derive(Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsamplers: Vec<Downsample2D>,
}

impl DownBlock {
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
