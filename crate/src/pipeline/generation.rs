//! A generation: how it starts (checks, prompt embeddings, the starting latents for
//! text-to-image, img2img or inpainting) and each denoising step, as diffusers' pipelines
//! run them.

use burn::prelude::*;
use burn::tensor::DType;

use super::control::{self, ActiveControl};
use super::denoiser::{Active, Cond, Denoiser};
use super::inpaint::{self, Inpaint, Mask};
use super::{
    DEFAULT_T5_LENGTH, Generated, PromptEmbeds, Reading, Request, Settings, StableDiffusion,
};
use crate::component::Component;
use crate::error::{Error, Result};
use crate::lora;
use crate::models::unet::{Conditioning, TextTime};
use crate::models::vae::Tiling;
use crate::schedulers::{self, Kind, NoiseSource, Scheduler};

/// A generation in progress: the scheduler's state and the current latents.
pub struct Generation<'a> {
    pipe: &'a StableDiffusion,
    /// The pipeline's denoiser (a UNet with the request's LoRAs attached).
    denoiser: Active<'a>,
    settings: Settings,
    scheduler: Box<dyn Scheduler>,
    rng: Box<dyn NoiseSource>,
    latents: Tensor<4>,
    /// What the denoiser is conditioned on: `[negative, positive]` under classifier-free
    /// guidance.
    cond: Cond,
    /// SD3's skip-layer guidance: the layers, the scale and the steps it runs at.
    skip_layers: Option<(Vec<usize>, f64, std::ops::Range<f64>)>,
    /// (scale, rescale) when running classifier-free guidance.
    guidance: Option<(f64, f64)>,
    controls: Vec<ActiveControl>,
    inpaint: Option<Inpaint>,
    /// Pasting the init image back: the image `[1, 3, H, W]` in [-1, 1] and the blurred mask.
    overlay: Option<(Tensor<4>, Tensor<4>)>,
    /// How the VAE decodes the result (whole, or in tiles).
    tiling: Option<Tiling>,
    start: usize,
    index: usize,
}

impl StableDiffusion {
    /// Prepares `request`: checks it, encodes the prompts and draws the starting latents.
    /// The caller then runs [`Generation::step`] until done, free to yield, report progress
    /// or cancel in between (the browser awaits its read-backs there).
    ///
    /// `rng` supplies all noise: the initial latents unless given, img2img's noise unless
    /// given, then the stochastic schedulers' per-step noise, in that order.
    pub fn start(
        &self,
        request: &Request,
        mut rng: Box<dyn NoiseSource>,
    ) -> Result<Generation<'_>> {
        let scheduler_name = match &request.scheduler {
            Some(name) => name.clone(),
            None => self.default_scheduler()?.to_string(),
        };
        let steps = request
            .steps
            .unwrap_or_else(|| self.default_steps(&scheduler_name));
        self.check_scheduler_kind(&scheduler_name, request.scheduler.is_some())?;
        let scheduler =
            schedulers::build(&scheduler_name, &self.scheduler_config, steps, request.eta)?;
        let (height, width) = self.check_size(request)?;
        self.text.check_clip_skip(request.clip_skip, "clip_skip")?;
        let t5_length = request.max_sequence_length.unwrap_or(DEFAULT_T5_LENGTH);
        self.text
            .check_t5_length(t5_length, "max_sequence_length")?;
        if let Denoiser::Transformer(config, _) = &self.denoiser {
            if !request.loras.is_empty() {
                self.unet("lora")?;
            }
            if !request.controlnets.is_empty() {
                self.unet("controlnet")?;
            }
            if request.mask.is_some() {
                return Err(Error::invalid(
                    "mask",
                    format!("inpainting is not supported for {} models yet", self.family),
                ));
            }
            if let Some(slg) = &request.skip_layer_guidance {
                check_skip_layers(slg, config.num_layers)?;
            }
        } else if request.skip_layer_guidance.is_some() {
            return Err(Error::invalid(
                "skip layer guidance",
                "is for transformer models (SD3); a UNet has no layers to skip",
            ));
        }
        if !request.guidance.is_finite() || !request.guidance_rescale.is_finite() {
            return Err(Error::invalid("guidance", "must be a finite number"));
        }
        if request.mask.is_some() && request.init_image.is_none() {
            return Err(Error::invalid("mask", "needs an init image"));
        }
        if (request.init_image.is_some() || self.is_inpainting()) && !self.vae.can_encode() {
            return Err(Error::invalid(
                "init image",
                "this model's VAE has no encoder weights (a decoder-only VAE): it cannot \
                 encode an image for img2img or inpainting",
            ));
        }
        if request.init_image.is_some() && !(request.strength > 0.0 && request.strength <= 1.0) {
            return Err(Error::invalid(
                "strength",
                format!("{} is not in (0, 1]", request.strength),
            ));
        }
        if !(request.mask_blur >= 0.0 && request.mask_blur <= 256.0) {
            return Err(Error::invalid(
                "mask blur",
                format!("{} is not in [0, 256] pixels", request.mask_blur),
            ));
        }
        let f = self.vae_scale_factor();
        let shape = [1, self.vae_config.latent_channels(), height / f, width / f];
        let device = &self.device;

        // LCM-distilled UNets take the guidance scale as an embedding instead of running
        // classifier-free guidance.
        let dtype = self.dtype;
        let timestep_cond = self
            .denoiser
            .unet_config()
            .and_then(|c| c.time_cond_proj_dim)
            .map(|dim| guidance_scale_embedding(request.guidance - 1.0, dim, device).cast(dtype));
        let guided = request.guidance > 1.0 && timestep_cond.is_none();
        let batch = if guided { 2 } else { 1 };
        let models = self.text.prepare(&request.loras, &request.embeddings)?;
        let reading = Reading {
            weighting: request.prompt_weighting,
            clip_skip: request.clip_skip,
            t5_length,
        };
        let (prompt, negative) = (&request.prompt, request.negative_prompt.as_deref());
        let embeds = if guided {
            let (positive, negative) = self
                .text
                .encode_pair(&models, prompt, negative, &reading, device)?;
            PromptEmbeds::cat(vec![negative, positive])
        } else {
            self.text.encode(&models, prompt, &reading, device)?
        };
        let cond = match &self.denoiser {
            Denoiser::Unet(..) => {
                let text_time = embeds.pooled.map(|pooled| {
                    let ids = request.size.time_ids(height, width);
                    TextTime {
                        pooled,
                        time_ids: ids.repeat(batch),
                    }
                });
                Cond::Unet(Conditioning {
                    context: embeds.context,
                    timestep_cond,
                    text_time,
                })
            }
            Denoiser::Transformer(..) => Cond::transformer(embeds)?,
        };
        let controls = request
            .controlnets
            .iter()
            .map(|c| ActiveControl::new(c, width, height, batch, dtype, device))
            .collect::<Result<Vec<_>>>()?;

        // What the mask repaints: the request's, or everything when an inpainting model
        // is asked for a plain text-to-image.
        let inpainting_model = self.is_inpainting();
        let mask = match (
            &request.mask,
            inpainting_model && request.init_image.is_none(),
        ) {
            (Some(mask), _) => Some(Mask::new(mask, width, height, f, device)?),
            (None, true) => Some(Mask::full(width, height, f, device)),
            (None, false) => None,
        };
        let tiling = self.vae_tiling(request.vae_tiling, height, width)?;
        let encode = |image: Tensor<4>| -> Result<Tensor<4>> {
            let latents = self.vae.encode_tiled(image.cast(self.vae_dtype()), tiling);
            let latents = self
                .vae_config
                .latent_space()
                .to_latents(latents.cast(DType::F32));
            check_shape(latents, shape, "init image")
        };
        let image_latents = match &request.init_image {
            Some(image) => Some(encode(image.clone())?),
            None => None,
        };

        // diffusers' get_timesteps: skip the first (1 − strength) of the steps (SD3's
        // pipelines round the skipped steps down, the others the kept ones).
        let strength = request
            .init_image
            .as_ref()
            .map_or(1.0, |_| request.strength);
        let skipped = if self.family.is_flow() {
            (steps as f64 - steps as f64 * strength).max(0.0) as usize
        } else {
            steps - ((steps as f64 * strength) as usize).min(steps)
        };
        let start = skipped * scheduler.order();
        if start >= scheduler.timesteps().len() {
            return Err(Error::invalid(
                "strength",
                format!("{strength} leaves no step to run"),
            ));
        }
        let given = |t: &Option<Tensor<4>>, name: &str| -> Result<Option<Tensor<4>>> {
            t.as_ref()
                .map(|t| check_shape(t.clone(), shape, name))
                .transpose()
        };
        let (latents, noise) = match (&image_latents, &mask) {
            // Text-to-image: pure noise.
            (None, _) => {
                let noise = match given(&request.latents, "latents")? {
                    Some(latents) => latents,
                    None => rng.noise(shape, device),
                };
                (noise.clone() * scheduler.init_noise_sigma(), noise)
            }
            // Inpainting: pure noise at full strength, else the init image noised to the
            // start; the same noise blends the kept part back in. Given latents are that
            // noise, as in diffusers.
            (Some(image_latents), Some(_)) => {
                let latents = given(&request.latents, "latents")?;
                let noise = match (given(&request.noise, "noise")?, &latents) {
                    (Some(noise), _) => noise,
                    (None, Some(latents)) => latents.clone(),
                    (None, None) => rng.noise(shape, device),
                };
                let start_latents = if strength >= 1.0 {
                    latents.unwrap_or_else(|| noise.clone()) * scheduler.init_noise_sigma()
                } else {
                    scheduler.add_noise(image_latents.clone(), noise.clone(), start)
                };
                (start_latents, noise)
            }
            // img2img: the init image noised to the start step.
            (Some(image_latents), None) => {
                let noise = match given(&request.noise, "noise")? {
                    Some(noise) => noise,
                    None => rng.noise(shape, device),
                };
                let latents = scheduler.add_noise(image_latents.clone(), noise.clone(), start);
                (latents, noise)
            }
        };

        let image = request.init_image.clone();
        let overlay = match (&mask, &image) {
            (Some(mask), Some(image)) if request.mask_blur > 0.0 => Some((
                image.clone(),
                inpaint::blur(mask.pixels.clone(), request.mask_blur),
            )),
            _ => None,
        };
        let inpaint = match mask {
            None => None,
            Some(mask) if inpainting_model => {
                let image = image.unwrap_or_else(|| Tensor::zeros([1, 3, height, width], device));
                let masked = encode(mask.masked_image(image))?;
                Some(Inpaint::Channels {
                    mask: Tensor::cat(vec![mask.latents; batch], 0).cast(dtype),
                    masked_image_latents: Tensor::cat(vec![masked; batch], 0).cast(dtype),
                })
            }
            Some(mask) => Some(Inpaint::Blend {
                mask: mask.latents,
                image_latents: image_latents.expect("a mask needs an init image"),
                noise,
            }),
        };

        let settings = Settings {
            steps,
            scheduler: scheduler_name,
            guidance: request.guidance,
            seed: request.seed,
            width,
            height,
            strength: request.init_image.as_ref().map(|_| request.strength),
        };
        let denoiser = match &self.denoiser {
            Denoiser::Unet(_, unet) => {
                Active::Unet(lora::apply(unet, Component::Unet, &request.loras))
            }
            Denoiser::Transformer(_, model) => Active::Transformer(model),
        };
        let skip_layers = match (&request.skip_layer_guidance, guided) {
            (Some(slg), true) => {
                let steps = steps as f64;
                let window = steps * slg.start..steps * slg.stop;
                Some((slg.layers.clone(), slg.scale, window))
            }
            _ => None,
        };
        Ok(Generation {
            pipe: self,
            denoiser,
            skip_layers,
            settings,
            scheduler,
            rng,
            latents,
            cond,
            guidance: guided.then_some((request.guidance, request.guidance_rescale)),
            controls,
            inpaint,
            overlay,
            tiling,
            start,
            index: start,
        })
    }
}

impl Generation<'_> {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// UNet calls in this generation.
    pub fn total(&self) -> usize {
        self.scheduler.timesteps().len() - self.start
    }

    pub fn is_done(&self) -> bool {
        self.index >= self.scheduler.timesteps().len()
    }

    pub fn latents(&self) -> &Tensor<4> {
        &self.latents
    }

    /// The current latents decoded by the preview decoder (see [`StableDiffusion::preview`]).
    pub fn preview(&self) -> Option<Tensor<3>> {
        self.pipe.preview(&self.latents)
    }

    /// The largest |value| of the text embeddings, to read back and check.
    pub fn context_max_abs(&self) -> Tensor<1> {
        self.cond.context().clone().abs().max()
    }

    /// The largest |latent|, to read back and check for divergence (NaN or ∞).
    pub fn max_abs(&self) -> Tensor<1> {
        self.latents.clone().abs().max()
    }

    /// Fails when the text embeddings are not finite: `max_abs` is
    /// [`context_max_abs`](Self::context_max_abs) read back (natively at once, in the
    /// browser awaited), so that every driver checks and words it alike.
    pub fn check_context(&self, max_abs: f32) -> Result<()> {
        super::check_finite("the text encoder", max_abs, self.pipe.dtype)
    }

    /// Fails when the latents the last step left are not finite: `max_abs` is
    /// [`max_abs`](Self::max_abs) read back. The message names the step.
    pub fn check_latents(&self, max_abs: f32) -> Result<()> {
        let (step, total) = (self.index - self.start, self.total());
        let what = format!(
            "the {} at step {step} of {total}",
            self.pipe.denoiser.name()
        );
        super::check_finite(&what, max_abs, self.pipe.dtype)
    }

    /// One UNet call (with the ControlNets' residuals) and scheduler step; returns (steps
    /// done, total).
    pub fn step(&mut self) -> (usize, usize) {
        let i = self.index;
        let t = self.scheduler.timesteps()[i] as f32;
        let latents = self.latents.clone();
        let input = match self.guidance {
            Some(_) => Tensor::cat(vec![latents.clone(), latents.clone()], 0),
            None => latents.clone(),
        };
        // The scheduler works in f32; the networks in the pipeline's precision.
        let input = self
            .scheduler
            .scale_model_input(input, i)
            .cast(self.pipe.dtype);
        let residuals = match &self.cond {
            Cond::Unet(cond) => control::residuals(
                &self.controls,
                &input,
                t,
                cond,
                (i - self.start, self.total()),
            ),
            Cond::Transformer { .. } => None,
        };
        let output = self
            .denoiser
            .forward(
                Inpaint::unet_input(&self.inpaint, input.clone()),
                t,
                &self.cond,
                residuals,
                &[],
            )
            .cast(DType::F32);
        let output = match self.guidance {
            Some((scale, rescale)) => {
                let [uncond, cond] = output.chunk(2, 0).try_into().expect("batch of two");
                let guided = uncond.clone() + (cond.clone() - uncond) * scale;
                let guided = self.skip_layer_guidance(guided, cond.clone(), &input, t, i);
                rescale_guidance(guided, cond, rescale)
            }
            None => output,
        };
        let mut latents = self.scheduler.step(output, i, latents, self.rng.as_mut());
        if let Some(Inpaint::Blend {
            mask,
            image_latents,
            noise,
        }) = &self.inpaint
        {
            // The kept part follows the init image: noised to the next step, clean after
            // the last one.
            let next = i + 1;
            let kept = if next < self.scheduler.timesteps().len() {
                self.scheduler
                    .add_noise(image_latents.clone(), noise.clone(), next)
            } else {
                image_latents.clone()
            };
            let keep = mask.clone().neg() + 1.0;
            latents = kept * keep + latents * mask.clone();
        }
        self.latents = latents;
        self.index += 1;
        (self.index - self.start, self.total())
    }

    /// diffusers' skip-layer guidance at step `i` (SD3): the positive prompt's prediction
    /// `cond` is compared with one made without the skipped layers, and `guided` pushed
    /// away from the latter.
    fn skip_layer_guidance(
        &self,
        guided: Tensor<4>,
        cond: Tensor<4>,
        input: &Tensor<4>,
        t: f32,
        i: usize,
    ) -> Tensor<4> {
        let Some((layers, scale, window)) = &self.skip_layers else {
            return guided;
        };
        let step = (i - self.start) as f64;
        // diffusers compares the loop index with the fractions, both ends excluded.
        if !(step > window.start && step < window.end) {
            return guided;
        }
        let positive = self.cond.row(1);
        let latents = input.clone().narrow(0, 1, 1);
        let skipped = self
            .denoiser
            .forward(latents, t, &positive, None, layers)
            .cast(DType::F32);
        guided + (cond - skipped) * *scale
    }

    /// Decodes the final latents (and pastes the init image back outside the blurred mask,
    /// when asked).
    pub fn finish(self) -> Generated {
        let vae = &self.pipe.vae;
        let latents = self
            .pipe
            .vae_config
            .latent_space()
            .from_latents(self.latents.clone());
        let mut image = vae
            .decode_tiled(latents.cast(self.pipe.vae_dtype()), self.tiling)
            .cast(DType::F32);
        if let Some((init, weight)) = self.overlay {
            image = init * (weight.clone().neg() + 1.0) + image * weight;
        }
        let image = to_image(image);
        Generated {
            settings: self.settings,
            latents: self.latents,
            image,
        }
    }
}

/// A decoder's output `[1, 3, H, W]`, roughly in [-1, 1], as the image `[H, W, 3]` in
/// [0, 1].
pub(super) fn to_image(image: Tensor<4>) -> Tensor<3> {
    let image = (image.cast(DType::F32) / 2.0 + 0.5).clamp(0.0, 1.0);
    let [_, c, h, w] = image.dims();
    image.reshape([c, h, w]).permute([1, 2, 0])
}

/// Refuses skip-layer guidance that names a layer the transformer (of `layers` blocks)
/// does not have, or a window outside the steps.
fn check_skip_layers(slg: &super::SkipLayerGuidance, layers: usize) -> Result<()> {
    let name = "skip layer guidance";
    if let Some(layer) = slg.layers.iter().find(|&&l| l >= layers) {
        return Err(Error::invalid(
            name,
            format!("layer {layer} does not exist (the transformer has {layers} layers)"),
        ));
    }
    if !slg.scale.is_finite() {
        return Err(Error::invalid(name, "the scale must be a finite number"));
    }
    if !(0.0..=1.0).contains(&slg.start) || !(0.0..=1.0).contains(&slg.stop) {
        return Err(Error::invalid(
            name,
            format!(
                "start {} and stop {} must be in [0, 1]",
                slg.start, slg.stop
            ),
        ));
    }
    Ok(())
}

impl StableDiffusion {
    /// Refuses a scheduler of the other kind than the model's denoiser: a DDPM-family one
    /// for a flow-matching transformer, or the other way round.
    /// `asked`: whether the request named it (else it is the model's own).
    fn check_scheduler_kind(&self, name: &str, asked: bool) -> Result<()> {
        let Some(entry) = schedulers::find(name) else {
            return Ok(()); // `schedulers::build` names the valid ones
        };
        let kind = if self.family.is_flow() {
            Kind::Flow
        } else {
            Kind::Discrete
        };
        if entry.kind == kind {
            return Ok(());
        }
        let (what, them) = match kind {
            Kind::Flow => ("a DDPM-family scheduler", "flow-matching"),
            Kind::Discrete => ("a flow-matching scheduler", "DDPM-family"),
        };
        let which = match asked {
            true => name.to_string(),
            false => format!(
                "the model's scheduler_config.json names {} ({name}), which",
                entry.class
            ),
        };
        Err(Error::invalid(
            "scheduler",
            format!(
                "{which} is {what}; {} models run {them} schedulers: {}",
                self.family,
                schedulers::names_of(kind)
            ),
        ))
    }
}

fn check_shape(t: Tensor<4>, expected: [usize; 4], name: &str) -> Result<Tensor<4>> {
    if t.dims() == expected {
        Ok(t)
    } else {
        Err(Error::invalid(
            name,
            format!("has shape {:?}, expected {expected:?}", t.dims()),
        ))
    }
}

/// diffusers' `rescale_noise_cfg` (Lin et al. 2023, §3.4): pulls the guided prediction's
/// standard deviation back towards the conditional one's.
fn rescale_guidance(guided: Tensor<4>, cond: Tensor<4>, rescale: f64) -> Tensor<4> {
    if rescale <= 0.0 {
        return guided;
    }
    let std = |t: &Tensor<4>| {
        let [b, c, h, w] = t.dims();
        t.clone()
            .reshape([b, c * h * w])
            .var(1)
            .sqrt()
            .reshape([b, 1, 1, 1])
    };
    let rescaled = guided.clone() * (std(&cond) / std(&guided));
    rescaled * rescale + guided * (1.0 - rescale)
}

/// LCM's embedding of the guidance scale `w` (sinusoidal, as for timesteps).
fn guidance_scale_embedding(w: f64, dim: usize, device: &Device) -> Tensor<2> {
    let w = w * 1000.0;
    let half = dim / 2;
    let scale = 10000f64.ln() / (half as f64 - 1.0);
    let freqs: Vec<f64> = (0..half).map(|i| (i as f64 * -scale).exp() * w).collect();
    let mut values: Vec<f32> = freqs.iter().map(|x| x.sin() as f32).collect();
    values.extend(freqs.iter().map(|x| x.cos() as f32));
    values.resize(dim, 0.0);
    Tensor::from_data(TensorData::new(values, [1, dim]), device)
}
