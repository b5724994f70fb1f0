//! Text-to-image and image-to-image: the algorithm of diffusers' StableDiffusionPipeline,
//! reading like it. The pipeline holds the loaded networks; `generate` runs one request.

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::DType;

use crate::component::Component;
use crate::error::{Error, Result};
use crate::files::ModelFiles;
use crate::files::sha256_hex;
use crate::load;
use crate::lora::{self, Lora, LoraFile};
use crate::models::clip::ClipTextModel;
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{AutoencoderKL, VaeConfig};
#[cfg(not(target_family = "wasm"))]
use crate::noise::Generator;
use crate::schedulers::{self, NoiseSource, Scheduler, SchedulerConfig};
use crate::tokenizer::ClipTokenizer;
use crate::weights::expected_tensors;

pub struct StableDiffusion {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub unet_config: UNetConfig,
    pub vae: AutoencoderKL,
    pub vae_config: VaeConfig,
    pub scheduler_config: SchedulerConfig,
    pub device: Device,
}

/// What a pipeline is made of: the tokenizer, the networks (with or without their weights
/// yet) and their configs. [`Parts::build`] reads and checks everything but the weights,
/// which each edge then loads its own way (whole files natively, streamed in the browser),
/// and [`StableDiffusion::from_parts`] assembles the result.
pub struct Parts {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub unet_config: UNetConfig,
    pub vae: AutoencoderKL,
    pub vae_config: VaeConfig,
    pub scheduler_config: SchedulerConfig,
}

impl Parts {
    /// Reads the configs and tokenizer of `files` and builds the networks, their weights
    /// not yet loaded (nothing is allocated).
    pub fn build(files: &dyn ModelFiles, device: &Device) -> Result<Self> {
        let tokenizer = load::tokenizer(files)?;
        let scheduler_config = load::scheduler_config(files)?;
        let (_, text_encoder) = load::build(files, Component::TextEncoder, device)?;
        let (unet_config, unet) = load::build(files, Component::Unet, device)?;
        let (vae_config, vae) = load::build(files, Component::Vae, device)?;
        Ok(Self {
            tokenizer,
            text_encoder,
            unet,
            unet_config,
            vae,
            vae_config,
            scheduler_config,
        })
    }
}

/// One generation. `Request::new(prompt)` gives the model's defaults.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    pub negative_prompt: String,
    /// `None`: the default for the scheduler (4 for LCM, 20 otherwise).
    pub steps: Option<usize>,
    pub guidance: f64,
    /// diffusers' `guidance_rescale` (0 = off).
    pub guidance_rescale: f64,
    /// A name from [`schedulers::SCHEDULERS`]; `None`: the model's own.
    pub scheduler: Option<String>,
    pub seed: u64,
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Initial noise `[1, C, h, w]`, as diffusers' `latents` (scaled by init_noise_sigma).
    pub latents: Option<Tensor<4>>,
    /// img2img: the init image `[1, 3, H, W]` in [-1, 1], and how much to change it.
    pub init_image: Option<Tensor<4>>,
    pub strength: f64,
    /// img2img: the noise added to the init latents (drawn from the seed if `None`).
    pub noise: Option<Tensor<4>>,
    /// DDIM's η.
    pub eta: f64,
    pub clip_skip: usize,
    /// LoRAs (see [`StableDiffusion::load_lora`]) with their scales, applied to the text
    /// encoder and the UNet.
    pub loras: Vec<(Arc<Lora>, f32)>,
}

impl Request {
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: String::new(),
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
            eta: 0.0,
            clip_skip: 0,
            loras: Vec::new(),
        }
    }
}

/// What `generate` returns.
pub struct Generated {
    pub settings: Settings,
    /// The final latents, before VAE decoding.
    pub latents: Tensor<4>,
    /// `[H, W, 3]` in [0, 1], as diffusers' `output_type="np"`.
    pub image: Tensor<3>,
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
    /// img2img's strength; `None` for text-to-image.
    pub strength: Option<f64>,
}

/// Called after each step with (step, total, current latents); returning `false` cancels.
pub type OnStep<'a> = dyn FnMut(usize, usize, &Tensor<4>) -> bool + 'a;

impl StableDiffusion {
    /// Loads the pipeline `files` holds, its weights read whole.
    pub fn load(files: &dyn ModelFiles, device: &Device) -> Result<Self> {
        let dtype = DType::F32;
        let mut parts = Parts::build(files, device)?;
        parts.text_encoder = load::weights(
            files,
            Component::TextEncoder,
            parts.text_encoder,
            device,
            dtype,
        )?;
        parts.unet = load::weights(files, Component::Unet, parts.unet, device, dtype)?;
        parts.vae = load::weights(files, Component::Vae, parts.vae, device, dtype)?;
        Ok(Self::from_parts(parts, device))
    }

    /// The pipeline made of `parts`, whose weights are loaded, running on `device`.
    pub fn from_parts(parts: Parts, device: &Device) -> Self {
        let Parts {
            tokenizer,
            text_encoder,
            unet,
            unet_config,
            vae,
            vae_config,
            scheduler_config,
        } = parts;
        Self {
            tokenizer,
            text_encoder,
            unet,
            unet_config,
            vae,
            vae_config,
            scheduler_config,
            device: device.clone(),
        }
    }

    /// The scheduler the model ships with, or DDIM if its class is not one of ours.
    pub fn default_scheduler(&self) -> &'static str {
        schedulers::name_of_class(&self.scheduler_config).unwrap_or("ddim")
    }

    /// Pixels per latent along each side.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_config.scale_factor()
    }

    /// The image size the UNet was trained for.
    pub fn default_size(&self) -> usize {
        self.unet_config.sample_size * self.vae_scale_factor()
    }

    /// The weight matrices a LoRA may adapt, in the text encoder and the UNet.
    pub fn lora_targets(&self) -> lora::Targets {
        lora::Targets::from([
            (Component::TextEncoder, expected_tensors(&self.text_encoder)),
            (Component::Unet, expected_tensors(&self.unet)),
        ])
    }

    /// Reads the LoRA file `bytes` (named `file` in messages) and matches it to this
    /// pipeline's networks, on its device. `name` is how it is shown (A1111 uses the file
    /// name without extension).
    pub fn load_lora(&self, bytes: &[u8], file: &str, name: &str) -> Result<Lora> {
        let parsed = LoraFile::parse(bytes, file)?;
        let hash = sha256_hex(bytes)[..12].to_string();
        Lora::new(&parsed, name, &hash, &self.lora_targets(), &self.device)
    }

    /// The text embeddings of `text` through `text_encoder` (the pipeline's, with the
    /// request's LoRAs attached).
    fn encode_prompt(
        &self,
        text_encoder: &ClipTextModel,
        text: &str,
        clip_skip: usize,
    ) -> Result<Tensor<3>> {
        let ids = self.tokenizer.encode(text)?;
        Ok(text_encoder.encode(&ids, clip_skip, &self.device))
    }

    /// Runs `request` to the end, drawing all noise from its seed (native: it reads the
    /// latents back after each step to stop on non-finite values).
    #[cfg(not(target_family = "wasm"))]
    pub fn generate(&self, request: &Request, on_step: &mut OnStep) -> Result<Generated> {
        self.generate_with_noise(request, Box::new(Generator::new(request.seed)), on_step)
    }

    /// Like [`generate`](Self::generate), with the noise drawn from `rng`.
    #[cfg(not(target_family = "wasm"))]
    pub fn generate_with_noise(
        &self,
        request: &Request,
        rng: Box<dyn NoiseSource>,
        on_step: &mut OnStep,
    ) -> Result<Generated> {
        let mut generation = self.start(request, rng)?;
        while !generation.is_done() {
            let (step, total) = generation.step();
            let max = generation.max_abs().into_scalar::<f32>();
            check_finite(max, step, total)?;
            if !on_step(step, total, generation.latents()) {
                return Err(Error::Cancelled);
            }
        }
        Ok(generation.finish())
    }

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
        let scheduler_name = request
            .scheduler
            .clone()
            .unwrap_or_else(|| self.default_scheduler().to_string());
        let steps = request
            .steps
            .unwrap_or(if scheduler_name == "lcm" { 4 } else { 20 });
        let scheduler =
            schedulers::build(&scheduler_name, &self.scheduler_config, steps, request.eta)?;
        let (height, width) = self.check_size(request)?;
        if request.clip_skip >= self.text_encoder.num_layers() {
            return Err(Error::invalid(
                "clip_skip",
                format!(
                    "{} (the text encoder has {} layers)",
                    request.clip_skip,
                    self.text_encoder.num_layers()
                ),
            ));
        }
        if !request.guidance.is_finite() || !request.guidance_rescale.is_finite() {
            return Err(Error::invalid("guidance", "must be a finite number"));
        }
        let f = self.vae_scale_factor();
        let shape = [1, self.unet_config.in_channels, height / f, width / f];

        // LCM-distilled UNets take the guidance scale as an embedding instead of running
        // classifier-free guidance.
        let timestep_cond = self
            .unet_config
            .time_cond_proj_dim
            .map(|dim| guidance_scale_embedding(request.guidance - 1.0, dim, &self.device));
        let guided = request.guidance > 1.0 && timestep_cond.is_none();
        let text_encoder = lora::apply(&self.text_encoder, Component::TextEncoder, &request.loras);
        let positive = self.encode_prompt(&text_encoder, &request.prompt, request.clip_skip)?;
        let context = if guided {
            let negative =
                self.encode_prompt(&text_encoder, &request.negative_prompt, request.clip_skip)?;
            Tensor::cat(vec![negative, positive], 0)
        } else {
            positive
        };

        // Where sampling starts: pure noise, or the init image noised to the start step.
        let (latents, start) = match &request.init_image {
            None => {
                let noise = match &request.latents {
                    Some(l) => check_shape(l.clone(), shape, "latents")?,
                    None => rng.noise(shape, &self.device),
                };
                (noise * scheduler.init_noise_sigma(), 0)
            }
            Some(image) => {
                if !(request.strength > 0.0 && request.strength <= 1.0) {
                    return Err(Error::invalid(
                        "strength",
                        format!("{} is not in (0, 1]", request.strength),
                    ));
                }
                let init = self.vae.encode(image.clone()).mean * self.vae_config.scaling_factor;
                let init = check_shape(init, shape, "init image")?;
                // diffusers' get_timesteps: skip the first (1 − strength) of the steps.
                let kept = ((steps as f64 * request.strength) as usize).min(steps);
                let start = (steps - kept) * scheduler.order();
                if start >= scheduler.timesteps().len() {
                    return Err(Error::invalid(
                        "strength",
                        format!("{} leaves no step to run", request.strength),
                    ));
                }
                let noise = match &request.noise {
                    Some(n) => check_shape(n.clone(), shape, "noise")?,
                    None => rng.noise(shape, &self.device),
                };
                (scheduler.add_noise(init, noise, start), start)
            }
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
        Ok(Generation {
            pipe: self,
            unet: lora::apply(&self.unet, Component::Unet, &request.loras),
            settings,
            scheduler,
            rng,
            latents,
            context,
            timestep_cond,
            guidance: guided.then_some((request.guidance, request.guidance_rescale)),
            start,
            index: start,
        })
    }

    fn check_size(&self, request: &Request) -> Result<(usize, usize)> {
        let f = self.vae_scale_factor();
        let default = self.default_size();
        let size = |name: &str, v: Option<usize>| -> Result<usize> {
            let v = v.unwrap_or(default);
            // The UNet halves the latent once per down block; it must divide evenly.
            let multiple = f * (1 << (self.unet_config.block_out_channels.len() - 1));
            if v == 0 || !v.is_multiple_of(multiple) {
                return Err(Error::invalid(
                    name,
                    format!("{v} is not a positive multiple of {multiple}"),
                ));
            }
            Ok(v)
        };
        match &request.init_image {
            Some(image) => {
                let [_, _, h, w] = image.dims();
                Ok((size("height", Some(h))?, size("width", Some(w))?))
            }
            None => Ok((
                size("height", request.height)?,
                size("width", request.width)?,
            )),
        }
    }
}

/// A generation in progress: the scheduler's state and the current latents.
pub struct Generation<'a> {
    pipe: &'a StableDiffusion,
    /// The pipeline's UNet with the request's LoRAs attached.
    unet: UNet2DConditionModel,
    settings: Settings,
    scheduler: Box<dyn Scheduler>,
    rng: Box<dyn NoiseSource>,
    latents: Tensor<4>,
    /// Text embeddings: `[negative, positive]` under classifier-free guidance.
    context: Tensor<3>,
    timestep_cond: Option<Tensor<2>>,
    /// (scale, rescale) when running classifier-free guidance.
    guidance: Option<(f64, f64)>,
    start: usize,
    index: usize,
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

    /// The largest |latent|, to read back and check for divergence (NaN or ∞).
    pub fn max_abs(&self) -> Tensor<1> {
        self.latents.clone().abs().max()
    }

    /// One UNet call and scheduler step; returns (steps done, total).
    pub fn step(&mut self) -> (usize, usize) {
        let i = self.index;
        let t = self.scheduler.timesteps()[i];
        let latents = self.latents.clone();
        let input = match self.guidance {
            Some(_) => Tensor::cat(vec![latents.clone(), latents.clone()], 0),
            None => latents.clone(),
        };
        let input = self.scheduler.scale_model_input(input, i);
        let output = self.unet.forward(
            input,
            t as f32,
            self.context.clone(),
            self.timestep_cond.clone(),
            None,
        );
        let output = match self.guidance {
            Some((scale, rescale)) => {
                let [uncond, cond] = output.chunk(2, 0).try_into().expect("batch of two");
                let guided = uncond.clone() + (cond.clone() - uncond) * scale;
                rescale_guidance(guided, cond, rescale)
            }
            None => output,
        };
        self.latents = self.scheduler.step(output, i, latents, self.rng.as_mut());
        self.index += 1;
        (self.index - self.start, self.total())
    }

    /// Decodes the final latents.
    pub fn finish(self) -> Generated {
        let vae = &self.pipe.vae;
        let image = vae.decode(self.latents.clone() / self.pipe.vae_config.scaling_factor);
        let image = (image / 2.0 + 0.5).clamp(0.0, 1.0);
        let [_, c, h, w] = image.dims();
        let image = image.reshape([c, h, w]).permute([1, 2, 0]);
        Generated {
            settings: self.settings,
            latents: self.latents,
            image,
        }
    }
}

/// Fails when sampling diverged: `max_abs` is the largest |latent| after `step`.
pub fn check_finite(max_abs: f32, step: usize, total: usize) -> Result<()> {
    if max_abs.is_finite() {
        Ok(())
    } else {
        Err(Error::Backend(format!(
            "sampling diverged: non-finite latents after step {step} of {total}"
        )))
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
