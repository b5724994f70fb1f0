//! Inpainting as diffusers' `StableDiffusionInpaintPipeline`: the mask (white = repaint)
//! read as grayscale, binarized at 0.5 and taken to the latent size by nearest neighbour.
//! A 9-channel inpainting UNet sees `[latents, mask, masked image latents]`; any other
//! model keeps the unmasked part on the init image's trajectory, blending it back in after
//! every step (after the last one, the clean init latents).

use burn::prelude::*;

use crate::error::{Error, Result};
use crate::image::{self, Image};

/// How the mask takes part in the denoising. (One per generation: the variants' sizes do
/// not matter.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Inpaint {
    /// A 9-channel inpainting UNet: these join its input (batch of the UNet's).
    Channels {
        mask: Tensor<4>,
        masked_image_latents: Tensor<4>,
    },
    /// Any other UNet: `latents = (1 − mask)·add_noise(image_latents, noise, next) +
    /// mask·latents` after each step.
    Blend {
        mask: Tensor<4>,
        image_latents: Tensor<4>,
        noise: Tensor<4>,
    },
}

/// The mask as diffusers prepares it: `[1, 1, H, W]`, 1 where to repaint, and the same at
/// the latent size (`factor` pixels per latent).
pub(super) struct Mask {
    pub pixels: Tensor<4>,
    pub latents: Tensor<4>,
}

impl Mask {
    /// Reads `mask` (the size of the output, `width × height`).
    pub(super) fn new(
        mask: &Image,
        width: usize,
        height: usize,
        factor: usize,
        device: &Device,
    ) -> Result<Self> {
        if (mask.width, mask.height) != (width, height) {
            return Err(Error::invalid(
                "mask",
                format!(
                    "is {}×{}, the init image {width}×{height}: give a mask of the same size",
                    mask.width, mask.height
                ),
            ));
        }
        // Binarized at 0.5 of 255, as VaeImageProcessor(do_binarize=True) does.
        let binary: Vec<f32> = image::grayscale(mask)
            .into_iter()
            .map(|g| if g >= 128 { 1.0 } else { 0.0 })
            .collect();
        if !binary.contains(&1.0) {
            return Err(Error::invalid(
                "mask",
                "is all black: nothing to repaint (paint the area to change in white)",
            ));
        }
        let (w, h) = (width / factor, height / factor);
        // torch's default `nearest`: the pixel at (y·factor, x·factor).
        let small: Vec<f32> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (y, x)))
            .map(|(y, x)| binary[y * factor * width + x * factor])
            .collect();
        Ok(Self {
            pixels: Tensor::from_data(TensorData::new(binary, [1, 1, height, width]), device),
            latents: Tensor::from_data(TensorData::new(small, [1, 1, h, w]), device),
        })
    }

    /// Repaint everything: an inpainting model asked for a plain text-to-image.
    pub(super) fn full(width: usize, height: usize, factor: usize, device: &Device) -> Self {
        Self {
            pixels: Tensor::ones([1, 1, height, width], device),
            latents: Tensor::ones([1, 1, height / factor, width / factor], device),
        }
    }

    /// `image` (`[1, 3, H, W]` in [-1, 1]) where it is kept, 0 where it is repainted.
    pub(super) fn masked_image(&self, image: Tensor<4>) -> Tensor<4> {
        image * (self.pixels.clone().neg() + 1.0)
    }
}

impl Inpaint {
    /// The UNet input for this step: `sample` with the mask channels appended for an
    /// inpainting UNet.
    pub(super) fn unet_input(this: &Option<Self>, sample: Tensor<4>) -> Tensor<4> {
        match this {
            Some(Inpaint::Channels {
                mask,
                masked_image_latents,
            }) => Tensor::cat(vec![sample, mask.clone(), masked_image_latents.clone()], 1),
            _ => sample,
        }
    }
}

/// A Gaussian blur of radius `sigma` pixels of `mask` `[1, 1, H, W]`, for pasting the init
/// image back outside the repainted area (A1111's "mask blur"): separable, 3σ wide.
pub(super) fn blur(mask: Tensor<4>, sigma: f32) -> Tensor<4> {
    let radius = (3.0 * sigma).ceil() as usize;
    let weights: Vec<f32> = (0..=2 * radius)
        .map(|i| (-((i as f32 - radius as f32).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = weights.iter().sum();
    let device = mask.device();
    let kernel = |shape: [usize; 4]| {
        let values: Vec<f32> = weights.iter().map(|w| w / total).collect();
        Tensor::<4>::from_data(TensorData::new(values, shape), &device)
    };
    let n = 2 * radius + 1;
    let options = |pad: [usize; 2]| burn::tensor::ops::ConvOptions::new([1, 1], pad, [1, 1], 1);
    // Replicate-free zero padding would darken the borders: pad by edge values first.
    let x = mask.pad(
        (radius, radius, radius, radius),
        burn::tensor::ops::PadMode::Edge,
    );
    let x = burn::tensor::module::conv2d(x, kernel([1, 1, 1, n]), None, options([0, 0]));
    burn::tensor::module::conv2d(x, kernel([1, 1, n, 1]), None, options([0, 0]))
}
