//! What a generation is asked for and what it returns.

use std::sync::Arc;

use burn::prelude::*;

use super::control::ControlNet;
use crate::image::Image;
use crate::lora::Lora;
use crate::textual_inversion::TextualInversion;

/// One generation. `Request::new(prompt)` gives the model's defaults.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    /// `None` and `""` differ for SDXL: without a negative prompt its negative embeddings
    /// are zeros (`force_zeros_for_empty_prompt`), an empty one is encoded.
    pub negative_prompt: Option<String>,
    /// Read the prompts as AUTOMATIC1111 does: `(word:1.3)` weights, chunks of 75 tokens
    /// past 77, `BREAK` (see `reading`); `false`: literally, cut at 77 tokens, as
    /// diffusers.
    pub prompt_weighting: bool,
    /// Textual-inversion embeddings the prompts may name (see
    /// [`super::StableDiffusion::load_embedding`]).
    pub embeddings: Vec<Arc<TextualInversion>>,
    /// `None`: the default for the scheduler (4 for LCM, 20 otherwise).
    pub steps: Option<usize>,
    pub guidance: f64,
    /// diffusers' `guidance_rescale` (0 = off).
    pub guidance_rescale: f64,
    /// A name from [`crate::schedulers::SCHEDULERS`]; `None`: the model's own.
    pub scheduler: Option<String>,
    pub seed: u64,
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Initial noise `[1, C, h, w]`, as diffusers' `latents` (scaled by init_noise_sigma).
    pub latents: Option<Tensor<4>>,
    /// img2img and inpainting: the init image `[1, 3, H, W]` in [-1, 1], and how much to
    /// change it, in (0, 1].
    pub init_image: Option<Tensor<4>>,
    pub strength: f64,
    /// The noise added to the init latents and used for inpainting's blending (drawn from
    /// the seed if `None`).
    pub noise: Option<Tensor<4>>,
    /// Inpainting: the mask, white (≥ 0.5 as grayscale) where to repaint, the size of the
    /// init image. An inpainting model with no init image repaints everything.
    pub mask: Option<Image>,
    /// Inpainting: after decoding, paste the init image back outside the mask blurred by
    /// this many pixels (A1111's "mask blur"); 0 = off, as diffusers.
    pub mask_blur: f32,
    /// DDIM's η.
    pub eta: f64,
    pub clip_skip: usize,
    /// LoRAs (see [`super::StableDiffusion::load_lora`]) with their scales, applied to the
    /// text encoder and the UNet.
    pub loras: Vec<(Arc<Lora>, f32)>,
    /// ControlNets with their control images; their residuals add up.
    pub controlnets: Vec<Control>,
    /// SDXL's size conditioning (ignored by models without it).
    pub size: SizeConditioning,
    /// Tiled VAE decoding and encoding.
    pub vae_tiling: VaeTiling,
    /// SD3: the T5 tokens the prompt is read as (diffusers' `max_sequence_length`);
    /// `None`: 256.
    pub max_sequence_length: Option<usize>,
    /// SD3: skip-layer guidance (SD3.5 Medium's recommended `skip_guidance_layers`).
    pub skip_layer_guidance: Option<SkipLayerGuidance>,
}

/// diffusers' skip-layer guidance for SD3: between `start` and `stop` (fractions of the
/// steps) the transformer also runs on the prompt with `layers` left out, and the
/// prediction is pushed away from that by `scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct SkipLayerGuidance {
    pub layers: Vec<usize>,
    pub scale: f64,
    pub start: f64,
    pub stop: f64,
}

impl SkipLayerGuidance {
    /// diffusers' defaults for `layers` (SD3.5 Medium recommends 7, 8, 9).
    pub fn new(layers: Vec<usize>) -> Self {
        Self {
            layers,
            scale: 2.8,
            start: 0.01,
            stop: 0.2,
        }
    }
}

/// Tiled VAE decoding and encoding (diffusers' `enable_vae_tiling`; see
/// `models::vae::Tiling`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VaeTiling {
    /// Only when a whole image's activations would not fit the device's largest buffer
    /// (`StableDiffusion::max_buffer`).
    #[default]
    Auto,
    /// For every image larger than one tile, with tiles of this many pixels; `None`: the
    /// VAE's `sample_size`, as diffusers.
    On(Option<usize>),
}

/// SDXL's micro-conditioning: the sizes and crop it was trained to tell apart, as diffusers'
/// `original_size`, `crops_coords_top_left` and `target_size` (each `(height, width)` or
/// `(top, left)`, in pixels). `None` sizes are the output size.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SizeConditioning {
    pub original_size: Option<(usize, usize)>,
    pub crop_top_left: (usize, usize),
    pub target_size: Option<(usize, usize)>,
}

impl SizeConditioning {
    /// The six `add_time_ids` for an output of `height` × `width`.
    pub fn time_ids(&self, height: usize, width: usize) -> [f32; 6] {
        let (oh, ow) = self.original_size.unwrap_or((height, width));
        let (top, left) = self.crop_top_left;
        let (th, tw) = self.target_size.unwrap_or((height, width));
        [oh, ow, top, left, th, tw].map(|v| v as f32)
    }
}

impl Request {
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: None,
            prompt_weighting: true,
            embeddings: Vec::new(),
            steps: None,
            guidance: 7.5,
            guidance_rescale: 0.0,
            scheduler: None,
            seed: 0,
            width: None,
            height: None,
            latents: None,
            init_image: None,
            strength: 0.8,
            noise: None,
            mask: None,
            mask_blur: 0.0,
            eta: 0.0,
            clip_skip: 0,
            loras: Vec::new(),
            controlnets: Vec::new(),
            size: SizeConditioning::default(),
            vae_tiling: VaeTiling::Auto,
            max_sequence_length: None,
            skip_layer_guidance: None,
        }
    }
}

/// One ControlNet in a request.
#[derive(Debug, Clone)]
pub struct Control {
    pub controlnet: Arc<ControlNet>,
    /// The control image, any size: it is resized to the output size (Lanczos, as
    /// diffusers does).
    pub image: Image,
    /// `controlnet_conditioning_scale`.
    pub scale: f32,
    /// The fraction of the steps during which it is active (diffusers'
    /// `control_guidance_start` / `_end`).
    pub start: f32,
    pub end: f32,
}

impl Control {
    pub fn new(controlnet: Arc<ControlNet>, image: Image) -> Self {
        Self {
            controlnet,
            image,
            scale: 1.0,
            start: 0.0,
            end: 1.0,
        }
    }
}

/// What a generation runs with, every default resolved: what the result and the PNG's
/// parameters report.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Inference steps asked for (img2img runs the last `strength` of them).
    pub steps: usize,
    /// The scheduler's name (see `schedulers::SCHEDULERS`).
    pub scheduler: String,
    pub guidance: f64,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    /// img2img's and inpainting's strength; `None` for text-to-image.
    pub strength: Option<f64>,
}

/// What `generate` returns.
pub struct Generated {
    pub settings: Settings,
    /// The final latents, before VAE decoding.
    pub latents: Tensor<4>,
    /// `[H, W, 3]` in [0, 1], as diffusers' `output_type="np"`.
    pub image: Tensor<3>,
}

/// Called after each step with (step, total, current latents); returning `false` cancels.
pub type OnStep<'a> = dyn FnMut(usize, usize, &Tensor<4>) -> bool + 'a;
