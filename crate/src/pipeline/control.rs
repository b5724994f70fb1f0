//! ControlNets in a generation, as diffusers' `StableDiffusionControlNetPipeline` runs
//! them: each reads the UNet's own input and the control image, its residuals (times its
//! conditioning scale) are summed with the others' and added to the UNet's skip
//! connections, during the fraction of the steps between its start and end.

use std::sync::Arc;

use burn::prelude::*;

use super::Control;
use crate::error::{Error, Result};
use crate::image::{self, Image};
use crate::models::controlnet::{ControlNetConfig, ControlNetModel};
use crate::models::unet::{Conditioning, Residuals, UNetConfig};

/// A loaded ControlNet, checked to fit the pipeline it was loaded for.
pub struct ControlNet {
    /// How it is named (its folder or file name).
    pub name: String,
    pub config: ControlNetConfig,
    pub model: ControlNetModel,
}

impl std::fmt::Debug for ControlNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ControlNet({:?})", self.name)
    }
}

/// Checks that the ControlNet `config` (read from `file`) copies the encoder of the UNet
/// `unet` (whose latents have `latent_channels`), naming both values when it does not.
pub fn check_fits(
    config: &ControlNetConfig,
    file: &str,
    unet: &UNetConfig,
    latent_channels: usize,
) -> Result<()> {
    let cn = &config.unet;
    // Per-block values expanded, so that `8` and `[8, 8, 8]` compare equal.
    let per_block = |c: &UNetConfig, file: &str| -> Result<[Vec<usize>; 3]> {
        let n = c.block_out_channels.len();
        Ok([
            c.layers_per_block.expand(n, file, "layers_per_block")?,
            c.cross_attention_dim
                .expand(n, file, "cross_attention_dim")?,
            c.transformer_layers_per_block
                .expand(n, file, "transformer_layers_per_block")?,
        ])
    };
    let [cn_layers, cn_cross, cn_transformers] = per_block(cn, file)?;
    let [layers, cross, transformers] = per_block(unet, "unet/config.json")?;
    let text_time = |c: &UNetConfig, file: &str| -> Result<String> {
        Ok(match c.text_time(file)? {
            Some((time, pooled)) => format!("text_time ({time}-wide ids, {pooled}-wide pooled)"),
            None => "none".into(),
        })
    };
    let checks: [(&str, String, String); 7] = [
        (
            "addition_embed_type",
            text_time(cn, file)?,
            text_time(unet, "unet/config.json")?,
        ),
        (
            "block_out_channels",
            format!("{:?}", cn.block_out_channels),
            format!("{:?}", unet.block_out_channels),
        ),
        (
            "down_block_types",
            format!("{:?}", cn.down_block_types),
            format!("{:?}", unet.down_block_types),
        ),
        (
            "layers_per_block",
            format!("{cn_layers:?}"),
            format!("{layers:?}"),
        ),
        (
            "cross_attention_dim",
            format!("{cn_cross:?}"),
            format!("{cross:?}"),
        ),
        (
            "transformer_layers_per_block",
            format!("{cn_transformers:?}"),
            format!("{transformers:?}"),
        ),
        (
            "in_channels",
            cn.in_channels.to_string(),
            latent_channels.to_string(),
        ),
    ];
    for (key, theirs, ours) in checks {
        if theirs != ours {
            return Err(Error::config(
                file,
                key,
                format!(
                    "is {theirs} but the model's UNet has {ours}: this ControlNet is for \
                     another model family"
                ),
            ));
        }
    }
    Ok(())
}

/// A request's ControlNet with its control image as a tensor, ready for every step.
pub(super) struct ActiveControl {
    controlnet: Arc<ControlNet>,
    /// `[B, 3, H, W]` in [0, 1], the batch of the UNet's input.
    image: Tensor<4>,
    scale: f32,
    start: f64,
    end: f64,
}

impl ActiveControl {
    /// `control` for an output of `width` × `height` and a UNet batch of `batch`.
    pub(super) fn new(
        control: &Control,
        width: usize,
        height: usize,
        batch: usize,
        dtype: burn::tensor::DType,
        device: &Device,
    ) -> Result<Self> {
        for (name, value) in [("start", control.start), ("end", control.end)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(Error::invalid(
                    &format!("control {name}"),
                    format!("{value} is not in [0, 1]"),
                ));
            }
        }
        if control.start >= control.end {
            return Err(Error::invalid(
                "control start",
                format!("{} is not before the end, {}", control.start, control.end),
            ));
        }
        if !control.scale.is_finite() {
            return Err(Error::invalid("control scale", "must be a finite number"));
        }
        let image = to_tensor(
            &image::resize_lanczos(&control.image, width, height),
            device,
        );
        Ok(Self {
            controlnet: control.controlnet.clone(),
            image: Tensor::cat(vec![image; batch], 0).cast(dtype),
            scale: control.scale,
            start: control.start as f64,
            end: control.end as f64,
        })
    }
}

/// `image` as `[1, 3, H, W]` in [0, 1] (diffusers' control image processor does not
/// normalise to [-1, 1]).
fn to_tensor(image: &Image, device: &Device) -> Tensor<4> {
    let (w, h) = (image.width, image.height);
    let mut values = vec![0f32; 3 * w * h];
    for (i, px) in image.rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            values[c * w * h + i] = px[c] as f32 / 255.0;
        }
    }
    Tensor::from_data(TensorData::new(values, [1, 3, h, w]), device)
}

/// The summed residuals of the ControlNets active at step `k` of `total` (none active:
/// `None`). `sample` and `cond` are the UNet's inputs at this step.
pub(super) fn residuals(
    controls: &[ActiveControl],
    sample: &Tensor<4>,
    timestep: f32,
    cond: &Conditioning,
    (k, total): (usize, usize),
) -> Option<Residuals> {
    let (k, total) = (k as f64, total as f64);
    controls
        .iter()
        // diffusers' `controlnet_keep`: off before `start` and after `end`.
        .filter(|c| !(k / total < c.start || (k + 1.0) / total > c.end))
        .map(|c| {
            c.controlnet
                .model
                .forward(sample.clone(), timestep, cond, c.image.clone(), c.scale)
        })
        .reduce(|a, b| Residuals {
            down: a.down.into_iter().zip(b.down).map(|(x, y)| x + y).collect(),
            mid: a.mid + b.mid,
        })
}
