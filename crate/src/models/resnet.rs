//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D`, shared by the UNet and the VAE.

use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions, PadMode};

use super::layers::{Conv2d, GroupNorm, Linear, conv2d, group_norm, linear};

/// Two 3×3 convolutions with group norm and SiLU, the timestep embedding added in between
/// (UNet only), and a 1×1 `conv_shortcut` when the channel count changes.
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
    pub output_scale_factor: f64,
}

/// The shape of one `ResnetBlock2D`.
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the timestep embedding; `None` in the VAE.
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub output_scale_factor: f64,
}

impl ResnetConfig {
    pub fn init(&self, device: &Device) -> ResnetBlock2D {
        let (c_in, c_out) = (self.in_channels, self.out_channels);
        ResnetBlock2D {
            norm1: group_norm(self.groups, c_in, self.eps, device),
            conv1: conv2d(c_in, c_out, 3, 1, 1, device),
            time_emb_proj: self.temb_channels.map(|t| linear(t, c_out, true, device)),
            norm2: group_norm(self.groups, c_out, self.eps, device),
            conv2: conv2d(c_out, c_out, 3, 1, 1, device),
            conv_shortcut: (c_in != c_out).then(|| conv2d(c_in, c_out, 1, 1, 0, device)),
            output_scale_factor: self.output_scale_factor,
        }
    }
}

impl ResnetBlock2D {
    pub fn forward(&self, x: Tensor<4>, temb: Option<Tensor<2>>) -> Tensor<4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let [b, c] = [h.dims()[0], h.dims()[1]];
                h + proj.forward(silu(temb)).reshape([b, c, 1, 1])
            }
            _ => h,
        };
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        let out = shortcut + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}

/// A strided 3×3 convolution that halves the resolution.
///
/// The UNet pads by 1 on every side; the VAE encoder (`downsample_padding = 0`) pads only
/// the right and bottom edges by one pixel, as diffusers does.
#[derive(Module, Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
    pub pad_right_bottom: bool,
}

impl Downsample2D {
    pub fn new(channels: usize, padding: usize, device: &Device) -> Self {
        Self {
            conv: conv2d(channels, channels, 3, 2, padding, device),
            pad_right_bottom: padding == 0,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = if self.pad_right_bottom {
            x.pad((0, 1, 0, 1), PadMode::Constant(0.0))
        } else {
            x
        };
        self.conv.forward(x)
    }
}

/// Nearest-neighbour upsampling to `size` followed by a 3×3 convolution.
#[derive(Module, Debug)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub fn new(channels: usize, device: &Device) -> Self {
        Self {
            conv: conv2d(channels, channels, 3, 1, 1, device),
        }
    }

    /// Upsamples to `size` (`[H, W]`), twice the input unless a skip connection of odd size
    /// asks for one pixel less.
    pub fn forward(&self, x: Tensor<4>, size: Option<[usize; 2]>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let size = size.unwrap_or([2 * h, 2 * w]);
        let x = interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size),
        );
        self.conv.forward(x)
    }
}
