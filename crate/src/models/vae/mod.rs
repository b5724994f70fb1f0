//! The VAE between pixels and latents: diffusers' `AutoencoderKL` (what SD models ship) or
//! `AutoencoderTiny` (TAESD), told apart by the config's `_class_name`.

mod kl;
mod tiny;

pub use kl::{AutoencoderKL, KlConfig, Posterior};
pub use tiny::{AutoencoderTiny, TinyConfig};

use burn::prelude::*;

use crate::error::{Error, Result};

/// A VAE's config: which class, with its keys.
#[derive(Debug, Clone)]
pub enum VaeConfig {
    Kl(KlConfig),
    Tiny(TinyConfig),
}

impl VaeConfig {
    /// Parses `text` (the contents of `file`) by its `_class_name`: AutoencoderKL (also
    /// when absent) or AutoencoderTiny.
    pub fn parse(file: &str, text: &str) -> Result<Self> {
        let value: serde_json::Value = crate::config::parse(file, text)?;
        match value.get("_class_name").and_then(|c| c.as_str()) {
            None | Some("AutoencoderKL") => {
                Ok(VaeConfig::Kl(crate::config::parse_value(file, value)?))
            }
            Some("AutoencoderTiny") => {
                Ok(VaeConfig::Tiny(crate::config::parse_value(file, value)?))
            }
            Some(other) => Err(Error::config(
                file,
                "_class_name",
                format!("{other:?} is not a VAE this build runs (AutoencoderKL, AutoencoderTiny)"),
            )),
        }
    }

    /// Pixels per latent along each side.
    pub fn scale_factor(&self) -> usize {
        match self {
            VaeConfig::Kl(c) => c.scale_factor(),
            VaeConfig::Tiny(c) => c.scale_factor(),
        }
    }

    pub fn latent_channels(&self) -> usize {
        match self {
            VaeConfig::Kl(c) => c.latent_channels,
            VaeConfig::Tiny(c) => c.latent_channels,
        }
    }

    /// Pipeline latents are the VAE's times this.
    pub fn scaling_factor(&self) -> f64 {
        match self {
            VaeConfig::Kl(c) => c.scaling_factor,
            VaeConfig::Tiny(c) => c.scaling_factor,
        }
    }

    /// Whether it runs in f32 whatever the pipeline's precision (diffusers' flag for VAEs
    /// that overflow in half precision).
    pub fn force_upcast(&self) -> bool {
        match self {
            VaeConfig::Kl(c) => c.force_upcast,
            VaeConfig::Tiny(c) => c.force_upcast,
        }
    }
}

/// (One or two per pipeline: the variants' sizes do not matter.)
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Vae {
    Kl(AutoencoderKL),
    Tiny(AutoencoderTiny),
}

impl Vae {
    pub fn new(config: &VaeConfig, file: &str, device: &Device) -> Result<Self> {
        Ok(match config {
            VaeConfig::Kl(c) => Vae::Kl(AutoencoderKL::new(c, file, device)?),
            VaeConfig::Tiny(c) => Vae::Tiny(AutoencoderTiny::new(c, file, device)?),
        })
    }

    /// Pixels in [-1, 1] `[B, 3, H, W]` → latents, unscaled: AutoencoderKL's posterior
    /// mean (img2img uses it rather than a sample, for reproducible results).
    pub fn encode(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Vae::Kl(vae) => vae.encode(x).mean,
            Vae::Tiny(vae) => vae.encode(x),
        }
    }

    /// Latents (unscaled) → pixels, roughly in [-1, 1].
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        match self {
            Vae::Kl(vae) => vae.decode(z),
            Vae::Tiny(vae) => vae.decode(z),
        }
    }

    /// Whether the encoder's weights were loaded (a decoder-only VAE has none).
    pub fn can_encode(&self) -> bool {
        match self {
            Vae::Kl(vae) => vae.can_encode(),
            Vae::Tiny(vae) => match vae.encoder.layers.first() {
                Some(tiny::Layer::Conv(conv)) => conv.weight.is_initialized(),
                _ => false,
            },
        }
    }
}
