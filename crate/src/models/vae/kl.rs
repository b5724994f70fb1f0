//! `AutoencoderKL`: the encoder maps pixels to a Gaussian posterior over latents, the
//! decoder maps latents back to pixels. Built from `vae/config.json`.

use burn::prelude::*;
use burn::tensor::activation::silu;
use serde::{Deserialize, Serialize};

use crate::config::{all_bounded, bounded, expect_one_of, finite_in};
use crate::error::{Error, Result};
use crate::models::attention::Attention;
use crate::models::layers::{Conv2d, GroupNorm, conv2d, group_norm};
use crate::models::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};

/// The VAE's normalisation epsilon (diffusers hard-codes it).
const EPS: f64 = 1e-6;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct KlConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub sample_size: usize,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub force_upcast: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for KlConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl KlConfig {
    /// How many pixels one latent covers along each side.
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }

    fn validate(&self, file: &str) -> Result<()> {
        let n = self.block_out_channels.len();
        bounded(file, "block_out_channels (levels)", n, 1..=6)?;
        all_bounded(
            file,
            "block_out_channels",
            &self.block_out_channels,
            1..=2048,
        )?;
        bounded(file, "layers_per_block", self.layers_per_block, 1..=8)?;
        bounded(file, "latent_channels", self.latent_channels, 1..=64)?;
        bounded(file, "in_channels", self.in_channels, 1..=16)?;
        bounded(file, "out_channels", self.out_channels, 1..=16)?;
        bounded(file, "norm_num_groups", self.norm_num_groups, 1..=1024)?;
        finite_in(file, "scaling_factor", self.scaling_factor, 1e-6..=1e6)?;
        super::check_shift(file, self.shift_factor.unwrap_or(0.0))?;
        for (key, types, allowed) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != n {
                return Err(Error::config(
                    file,
                    key,
                    format!("has {} entries but block_out_channels has {n}", types.len()),
                ));
            }
            for t in types {
                expect_one_of(file, key, t, &[allowed])?;
            }
        }
        expect_one_of(file, "act_fn", &self.act_fn, &["silu", "swish"])?;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if self.norm_num_groups == 0 || c % self.norm_num_groups != 0 {
                return Err(Error::config(
                    file,
                    "norm_num_groups",
                    format!(
                        "{} does not divide block_out_channels[{i}] = {c}",
                        self.norm_num_groups
                    ),
                ));
            }
        }
        Ok(())
    }

    fn resnet(&self, c_in: usize, c_out: usize) -> ResnetConfig {
        ResnetConfig {
            in_channels: c_in,
            out_channels: c_out,
            temb_channels: None,
            groups: self.norm_num_groups,
            eps: EPS,
            output_scale_factor: 1.0,
        }
    }

    fn mid_block(&self, c: usize, device: &Device) -> VaeMidBlock {
        VaeMidBlock {
            resnets: (0..2).map(|_| self.resnet(c, c).init(device)).collect(),
            attentions: self
                .mid_block_add_attention
                .then(|| Attention::spatial(c, self.norm_num_groups, EPS, device))
                .into_iter()
                .collect(),
        }
    }
}

/// `UNetMidBlock2D` without timestep: resnet, (spatial attention, resnet).
#[derive(Module, Debug)]
pub struct VaeMidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Attention>,
}

impl VaeMidBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, None);
        for (i, resnet) in self.resnets[1..].iter().enumerate() {
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward_spatial(x);
            }
            x = resnet.forward(x, None);
        }
        x
    }
}

/// `DownEncoderBlock2D`.
#[derive(Module, Debug)]
pub struct EncoderBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsamplers: Vec<Downsample2D>,
}

/// `UpDecoderBlock2D`.
#[derive(Module, Debug)]
pub struct DecoderBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsamplers: Vec<Upsample2D>,
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<EncoderBlock>,
    pub mid_block: VaeMidBlock,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

#[derive(Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: VaeMidBlock,
    pub up_blocks: Vec<DecoderBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

#[derive(Module, Debug)]
pub struct AutoencoderKL {
    pub encoder: Encoder,
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
    pub decoder: Decoder,
}

/// The encoder's diagonal Gaussian posterior.
#[derive(Debug, Clone)]
pub struct Posterior {
    pub mean: Tensor<4>,
    /// Clamped to [-30, 20], as diffusers does.
    pub logvar: Tensor<4>,
}

impl AutoencoderKL {
    pub fn new(config: &KlConfig, file: &str, device: &Device) -> Result<Self> {
        config.validate(file)?;
        let ch = &config.block_out_channels;
        let n = ch.len();
        let groups = config.norm_num_groups;
        let latent = config.latent_channels;
        let layers = config.layers_per_block;

        let mut c_out = ch[0];
        let down_blocks = (0..n)
            .map(|i| {
                let c_in = c_out;
                c_out = ch[i];
                EncoderBlock {
                    resnets: (0..layers)
                        .map(|j| config.resnet(if j == 0 { c_in } else { c_out }, c_out))
                        .map(|r| r.init(device))
                        .collect(),
                    downsamplers: (i + 1 < n)
                        .then(|| Downsample2D::new(c_out, 0, device))
                        .into_iter()
                        .collect(),
                }
            })
            .collect();
        let encoder = Encoder {
            conv_in: conv2d(config.in_channels, ch[0], 3, 1, 1, device),
            down_blocks,
            mid_block: config.mid_block(ch[n - 1], device),
            conv_norm_out: group_norm(groups, ch[n - 1], EPS, device),
            conv_out: conv2d(ch[n - 1], 2 * latent, 3, 1, 1, device),
        };

        let mut c_out = ch[n - 1];
        let up_blocks = (0..n)
            .map(|i| {
                let c_prev = c_out;
                c_out = ch[n - 1 - i];
                DecoderBlock {
                    resnets: (0..layers + 1)
                        .map(|j| config.resnet(if j == 0 { c_prev } else { c_out }, c_out))
                        .map(|r| r.init(device))
                        .collect(),
                    upsamplers: (i + 1 < n)
                        .then(|| Upsample2D::new(c_out, device))
                        .into_iter()
                        .collect(),
                }
            })
            .collect();
        let decoder = Decoder {
            conv_in: conv2d(latent, ch[n - 1], 3, 1, 1, device),
            mid_block: config.mid_block(ch[n - 1], device),
            up_blocks,
            conv_norm_out: group_norm(groups, ch[0], EPS, device),
            conv_out: conv2d(ch[0], config.out_channels, 3, 1, 1, device),
        };

        Ok(Self {
            encoder,
            quant_conv: config
                .use_quant_conv
                .then(|| conv2d(2 * latent, 2 * latent, 1, 1, 0, device)),
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| conv2d(latent, latent, 1, 1, 0, device)),
            decoder,
        })
    }

    /// Whether the encoder's weights were loaded (a decoder-only VAE has none).
    pub fn can_encode(&self) -> bool {
        self.encoder.conv_in.weight.is_initialized()
    }

    /// Pixels in [-1, 1] `[B, 3, H, W]` → posterior over latents `[B, C, H/f, W/f]`
    /// (unscaled: multiply by `scaling_factor` for the diffusion space).
    pub fn encode(&self, x: Tensor<4>) -> Posterior {
        let e = &self.encoder;
        let mut x = e.conv_in.forward(x);
        for block in &e.down_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x, None);
            }
            for down in &block.downsamplers {
                x = down.forward(x);
            }
        }
        let x = e.mid_block.forward(x);
        let x = e.conv_out.forward(silu(e.conv_norm_out.forward(x)));
        let x = match &self.quant_conv {
            Some(conv) => conv.forward(x),
            None => x,
        };
        let [mean, logvar] = x.chunk(2, 1).try_into().expect("chunk(2) returns two");
        Posterior {
            mean,
            logvar: logvar.clamp(-30.0, 20.0),
        }
    }

    /// Latents `[B, C, h, w]` (unscaled) → pixels `[B, 3, h·f, w·f]`, roughly in [-1, 1].
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z),
            None => z,
        };
        let d = &self.decoder;
        let mut x = d.mid_block.forward(d.conv_in.forward(z));
        for block in &d.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x, None);
            }
            for up in &block.upsamplers {
                x = up.forward(x, None);
            }
        }
        d.conv_out.forward(silu(d.conv_norm_out.forward(x)))
    }
}
