//! diffusers' `AutoencoderTiny` (TAESD): plain convolutions, ReLUs and nearest upsampling
//! that decode SD latents in a few percent of AutoencoderKL's work. For live previews and
//! one-step models. The checkpoint's `nn.Sequential` indices are kept: layers without
//! parameters (activations, upsampling) hold their place in `layers`.

use burn::prelude::*;
use burn::tensor::activation::{relu, silu};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use serde::{Deserialize, Serialize};

use crate::config::{all_bounded, bounded, expect_one_of, finite_in};
use crate::error::{Error, Result};
use crate::models::layers::{Conv2d, conv2d};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct TinyConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub encoder_block_out_channels: Vec<usize>,
    pub decoder_block_out_channels: Vec<usize>,
    pub act_fn: String,
    pub upsample_fn: String,
    pub latent_channels: usize,
    pub upsampling_scaling_factor: usize,
    pub num_encoder_blocks: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    pub latent_magnitude: f64,
    pub latent_shift: f64,
    pub force_upcast: bool,
    pub scaling_factor: f64,
    pub shift_factor: f64,
}

impl Default for TinyConfig {
    /// diffusers' defaults: TAESD for SD 1.x/2.x.
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            encoder_block_out_channels: vec![64; 4],
            decoder_block_out_channels: vec![64; 4],
            act_fn: "relu".into(),
            upsample_fn: "nearest".into(),
            latent_channels: 4,
            upsampling_scaling_factor: 2,
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
            latent_magnitude: 3.0,
            latent_shift: 0.5,
            force_upcast: false,
            scaling_factor: 1.0,
            shift_factor: 0.0,
        }
    }
}

impl TinyConfig {
    /// Pixels per latent along each side: one upsampling between decoder blocks.
    pub fn scale_factor(&self) -> usize {
        let ups = self.num_decoder_blocks.len().saturating_sub(1) as u32;
        self.upsampling_scaling_factor.saturating_pow(ups)
    }

    fn validate(&self, file: &str) -> Result<()> {
        expect_one_of(file, "act_fn", &self.act_fn, &["relu", "silu", "swish"])?;
        super::check_shift(file, self.shift_factor)?;
        for (key, list) in [
            ("num_encoder_blocks", &self.num_encoder_blocks),
            ("num_decoder_blocks", &self.num_decoder_blocks),
        ] {
            bounded(file, key, list.len(), 1..=8)?;
            all_bounded(file, key, list, 0..=16)?;
        }
        for (key, list) in [
            (
                "encoder_block_out_channels",
                &self.encoder_block_out_channels,
            ),
            (
                "decoder_block_out_channels",
                &self.decoder_block_out_channels,
            ),
        ] {
            all_bounded(file, key, list, 1..=1024)?;
        }
        bounded(file, "latent_channels", self.latent_channels, 1..=64)?;
        bounded(file, "in_channels", self.in_channels, 1..=16)?;
        bounded(file, "out_channels", self.out_channels, 1..=16)?;
        bounded(
            file,
            "upsampling_scaling_factor",
            self.upsampling_scaling_factor,
            1..=8,
        )?;
        finite_in(file, "scaling_factor", self.scaling_factor, 1e-6..=1e6)?;
        expect_one_of(file, "upsample_fn", &self.upsample_fn, &["nearest"])?;
        for (key, blocks, channels) in [
            (
                "num_encoder_blocks",
                &self.num_encoder_blocks,
                &self.encoder_block_out_channels,
            ),
            (
                "num_decoder_blocks",
                &self.num_decoder_blocks,
                &self.decoder_block_out_channels,
            ),
        ] {
            if blocks.is_empty() || blocks.len() != channels.len() {
                return Err(Error::config(
                    file,
                    key,
                    format!(
                        "has {} entries for {} block widths",
                        blocks.len(),
                        channels.len()
                    ),
                ));
            }
        }
        let widths = &self.encoder_block_out_channels;
        if widths.windows(2).any(|w| w[0] != w[1]) {
            // diffusers' EncoderTiny strides from each block's own width.
            return Err(Error::config(
                file,
                "encoder_block_out_channels",
                "must all be equal (as diffusers' EncoderTiny builds them)",
            ));
        }
        if self.upsampling_scaling_factor == 0 {
            return Err(Error::config(
                file,
                "upsampling_scaling_factor",
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// An activation, named by the config's `act_fn`.
#[derive(Module, Debug)]
pub struct Activation {
    #[module(skip)]
    pub silu: bool,
}

impl Activation {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if self.silu { silu(x) } else { relu(x) }
    }
}

/// Nearest-neighbour upsampling by a whole factor.
#[derive(Module, Debug)]
pub struct Upsample {
    #[module(skip)]
    pub factor: usize,
}

/// One entry of a `nn.Sequential`.
#[derive(Module, Debug)]
pub enum Layer {
    Conv(Conv2d),
    Block(TinyBlock),
    Activation(Activation),
    Upsample(Upsample),
}

impl Layer {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Layer::Conv(conv) => conv.forward(x),
            Layer::Block(block) => block.forward(x),
            Layer::Activation(act) => act.forward(x),
            Layer::Upsample(up) => {
                let [_, _, h, w] = x.dims();
                let size = [h * up.factor, w * up.factor];
                interpolate(
                    x,
                    InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size),
                )
            }
        }
    }
}

/// `AutoencoderTinyBlock`: three 3×3 convolutions with activations between, plus the
/// input (through a 1×1 convolution when the width changes), then a ReLU.
#[derive(Module, Debug)]
pub struct TinyBlock {
    pub conv: Vec<Layer>,
    pub skip: Option<Conv2d>,
}

impl TinyBlock {
    fn new(c_in: usize, c_out: usize, act: &Activation, device: &Device) -> Self {
        Self {
            conv: vec![
                Layer::Conv(conv2d(c_in, c_out, 3, 1, 1, device)),
                Layer::Activation(act.clone()),
                Layer::Conv(conv2d(c_out, c_out, 3, 1, 1, device)),
                Layer::Activation(act.clone()),
                Layer::Conv(conv2d(c_out, c_out, 3, 1, 1, device)),
            ],
            skip: (c_in != c_out).then(|| without_bias(conv2d(c_in, c_out, 1, 1, 0, device))),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let skip = match &self.skip {
            Some(conv) => conv.forward(x.clone()),
            None => x.clone(),
        };
        let h = self.conv.iter().fold(x, |x, layer| layer.forward(x));
        relu(h + skip)
    }
}

fn without_bias(mut conv: Conv2d) -> Conv2d {
    conv.bias = None;
    conv
}

#[derive(Module, Debug)]
pub struct Coder {
    pub layers: Vec<Layer>,
}

#[derive(Module, Debug)]
pub struct AutoencoderTiny {
    pub encoder: Coder,
    pub decoder: Coder,
}

impl AutoencoderTiny {
    pub fn new(config: &TinyConfig, file: &str, device: &Device) -> Result<Self> {
        config.validate(file)?;
        let act = Activation {
            silu: config.act_fn != "relu",
        };
        // EncoderTiny: a convolution (strided after the first block), then the blocks.
        let mut encoder = Vec::new();
        for (i, (&c, &n)) in config
            .encoder_block_out_channels
            .iter()
            .zip(&config.num_encoder_blocks)
            .enumerate()
        {
            encoder.push(Layer::Conv(match i {
                0 => conv2d(config.in_channels, c, 3, 1, 1, device),
                _ => without_bias(conv2d(c, c, 3, 2, 1, device)),
            }));
            encoder.extend((0..n).map(|_| Layer::Block(TinyBlock::new(c, c, &act, device))));
        }
        let last = *config.encoder_block_out_channels.last().expect("validated");
        encoder.push(Layer::Conv(conv2d(
            last,
            config.latent_channels,
            3,
            1,
            1,
            device,
        )));

        // DecoderTiny: a convolution and activation, then per level the blocks, an upsampling
        // (not after the last) and a convolution (with bias only for the last).
        let widths = &config.decoder_block_out_channels;
        let mut decoder = vec![
            Layer::Conv(conv2d(config.latent_channels, widths[0], 3, 1, 1, device)),
            Layer::Activation(act.clone()),
        ];
        let levels = widths.len();
        for (i, (&c, &n)) in widths.iter().zip(&config.num_decoder_blocks).enumerate() {
            let last = i + 1 == levels;
            decoder.extend((0..n).map(|_| Layer::Block(TinyBlock::new(c, c, &act, device))));
            if !last {
                decoder.push(Layer::Upsample(Upsample {
                    factor: config.upsampling_scaling_factor,
                }));
            }
            let c_out = if last { config.out_channels } else { c };
            let conv = conv2d(c, c_out, 3, 1, 1, device);
            decoder.push(Layer::Conv(if last { conv } else { without_bias(conv) }));
        }
        Ok(Self {
            encoder: Coder { layers: encoder },
            decoder: Coder { layers: decoder },
        })
    }

    /// Pixels in [-1, 1] → latents (already in the pipeline's latent space).
    pub fn encode(&self, x: Tensor<4>) -> Tensor<4> {
        let x = (x + 1.0) / 2.0;
        self.encoder
            .layers
            .iter()
            .fold(x, |x, layer| layer.forward(x))
    }

    /// Latents → pixels, nominally in [-1, 1].
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let z = (z / 3.0).tanh() * 3.0;
        let x = self
            .decoder
            .layers
            .iter()
            .fold(z, |x, layer| layer.forward(x));
        x * 2.0 - 1.0
    }
}
