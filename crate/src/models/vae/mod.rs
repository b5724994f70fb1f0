//! The VAE between pixels and latents: diffusers' `AutoencoderKL` (what SD models ship) or
//! `AutoencoderTiny` (TAESD), told apart by the config's `_class_name`.

mod kl;
mod tiling;
mod tiny;

pub use kl::{AutoencoderKL, KlConfig, Posterior};
pub use tiling::Tiling;
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

    /// The latents the denoiser works in, and how they relate to this VAE's.
    pub fn latent_space(&self) -> LatentSpace {
        let (scaling, shift) = match self {
            VaeConfig::Kl(c) => (c.scaling_factor, c.shift_factor.unwrap_or(0.0)),
            VaeConfig::Tiny(c) => (c.scaling_factor, c.shift_factor),
        };
        LatentSpace {
            channels: self.latent_channels(),
            scaling,
            shift,
        }
    }

    /// For an AutoencoderKL, which can be tiled: diffusers' default tile (`sample_size`
    /// pixels) and the channels of its widest activation at full resolution (the last up
    /// block's input), which sets how large a whole image may be under a buffer limit.
    pub fn tile_facts(&self) -> Option<(usize, usize)> {
        match self {
            VaeConfig::Kl(c) => {
                // The up blocks run the channels in reverse: the last upsampler works at
                // full size on the second level's width (SD's 256 of 128, 256, 512, 512).
                let widths = &c.block_out_channels;
                Some((c.sample_size, *widths.get(1).unwrap_or(&widths[0])))
            }
            VaeConfig::Tiny(_) => None,
        }
    }

    /// Tiles of `tile` pixels (`None`: the config's `sample_size`, diffusers' default) for
    /// an AutoencoderKL; `None` for TAESD, which always runs whole. `name` is the option
    /// named in errors.
    pub fn tiling(&self, tile: Option<usize>, name: &str) -> Result<Option<Tiling>> {
        let Some((sample_size, _)) = self.tile_facts() else {
            return Ok(None);
        };
        let tile = tile.unwrap_or(sample_size);
        // Whole latents per tile, and room for the quarter that overlaps.
        let f = self.scale_factor();
        if tile == 0 || !tile.is_multiple_of(8 * f) {
            return Err(Error::invalid(
                name,
                format!(
                    "a tile of {tile} pixels is not a positive multiple of {}",
                    8 * f
                ),
            ));
        }
        Ok(Some(Tiling::new(tile, f)))
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

/// The latents a denoiser works in: the VAE's, shifted and scaled to about unit variance
/// (diffusers' `shift_factor` and `scaling_factor`). The one place that converts between
/// the two.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatentSpace {
    pub channels: usize,
    pub scaling: f64,
    pub shift: f64,
}

impl LatentSpace {
    /// The VAE's latents (an encoded image) → the denoiser's: `(z − shift) · scaling`.
    pub fn to_latents(&self, z: Tensor<4>) -> Tensor<4> {
        (z - self.shift) * self.scaling
    }

    /// The denoiser's latents → the VAE's, for decoding: `x / scaling + shift`.
    pub fn from_latents(&self, x: Tensor<4>) -> Tensor<4> {
        x / self.scaling + self.shift
    }
}

/// Checks a latent space's `shift_factor` (SD3's and FLUX's VAEs have one: decoding reads
/// `z / scaling + shift`, see [`LatentSpace`]).
fn check_shift(file: &str, shift_factor: f64) -> Result<()> {
    crate::config::finite_in(file, "shift_factor", shift_factor, -1e3..=1e3)
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

    /// [`decode`](Self::decode), in tiles when `tiling` says so (an AutoencoderKL; TAESD's
    /// activations are small and it always decodes whole).
    pub fn decode_tiled(&self, z: Tensor<4>, tiling: Option<Tiling>) -> Tensor<4> {
        match (self, tiling) {
            (Vae::Kl(vae), Some(tiling)) => tiling.decode(z, |tile| vae.decode(tile)),
            _ => self.decode(z),
        }
    }

    /// [`encode`](Self::encode), in tiles when `tiling` says so.
    pub fn encode_tiled(&self, x: Tensor<4>, tiling: Option<Tiling>) -> Tensor<4> {
        match (self, tiling) {
            (Vae::Kl(vae), Some(tiling)) => tiling.encode(x, |tile| vae.encode(tile).mean),
            _ => self.encode(x),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latents_are_scaled_and_shifted_as_diffusers_does() {
        let device = Device::flex();
        let space = LatentSpace {
            channels: 1,
            scaling: 1.5305,
            shift: 0.0609,
        };
        let z = Tensor::<4>::from_data(
            TensorData::new(vec![-1.0f32, 0.0, 2.0], [1, 1, 1, 3]),
            &device,
        );
        let x = space.to_latents(z.clone());
        let expected: Vec<f32> = [-1.0f32, 0.0, 2.0]
            .iter()
            .map(|z| (z - 0.0609) * 1.5305)
            .collect();
        let got = x.clone().into_data().try_to_vec::<f32>().unwrap();
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() < 1e-6, "{got:?} vs {expected:?}");
        }
        let back = space
            .from_latents(x)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (b, z) in back.iter().zip([-1.0f32, 0.0, 2.0]) {
            assert!((b - z).abs() < 1e-6, "{back:?}");
        }
    }

    #[test]
    fn a_shifted_latent_space_is_built_and_an_absurd_shift_refused_by_key() {
        let device = Device::flex();
        let build = |json: &str| {
            let config = VaeConfig::parse("vae/config.json", json).unwrap();
            Vae::new(&config, "vae/config.json", &device).map(|_| ())
        };
        for class in ["AutoencoderKL", "AutoencoderTiny"] {
            let shifted = format!(r#"{{"_class_name": "{class}", "shift_factor": 0.0609}}"#);
            assert!(build(&shifted).is_ok(), "{class}");
            let absurd = format!(r#"{{"_class_name": "{class}", "shift_factor": 1e9}}"#);
            let err = build(&absurd).expect_err("refused").to_string();
            assert!(
                err.contains("vae/config.json") && err.contains("shift_factor"),
                "{err}"
            );
        }
        let null = r#"{"_class_name": "AutoencoderKL", "shift_factor": null}"#;
        assert!(build(null).is_ok());
    }
}
