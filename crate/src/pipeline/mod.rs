//! Text-to-image, img2img and inpainting, with LoRAs and ControlNets: the algorithms of
//! diffusers' Stable Diffusion pipelines, reading like them. The pipeline holds the loaded
//! networks; `generate` runs one request (see `generation` for its steps).

mod control;
mod generation;
mod inpaint;
mod request;

pub use control::{ControlNet, check_fits};
pub use generation::Generation;
pub use request::{Control, Generated, OnStep, Request, Settings};

use burn::prelude::*;
use burn::tensor::DType;

use crate::component::Component;
use crate::error::{Error, Result};
use crate::family::Family;
use crate::files::{ModelFiles, sha256_hex};
use crate::load;
use crate::lora::{self, Lora, LoraFile};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::controlnet::{ControlNetConfig, ControlNetModel};
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{Vae, VaeConfig};
#[cfg(not(target_family = "wasm"))]
use crate::noise::Generator;
#[cfg(not(target_family = "wasm"))]
use crate::schedulers::NoiseSource;
use crate::schedulers::{self, SchedulerConfig};
use crate::tokenizer::ClipTokenizer;
use crate::weights::expected_tensors;

pub struct StableDiffusion {
    pub family: Family,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub unet_config: UNetConfig,
    pub vae: Vae,
    pub vae_config: VaeConfig,
    pub scheduler_config: SchedulerConfig,
    pub device: Device,
    /// What the networks compute in (f32, or f16 on GPUs with `shader-f16`); the scheduler's
    /// state stays f32 whatever it is.
    pub dtype: DType,
    /// A small decoder (TAESD) for previews of the latents while they are denoised.
    pub preview: Option<(VaeConfig, Vae)>,
}

/// What a pipeline is made of: the tokenizer, the networks (with or without their weights
/// yet) and their configs. [`Parts::build`] reads and checks everything but the weights,
/// which each edge then loads its own way (whole files natively, streamed in the browser),
/// and [`StableDiffusion::from_parts`] assembles the result.
pub struct Parts {
    pub family: Family,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub unet_config: UNetConfig,
    pub vae: Vae,
    pub vae_config: VaeConfig,
    pub scheduler_config: SchedulerConfig,
    /// The compute precision the weights are to be loaded in (see [`Parts::dtype_of`]).
    pub dtype: DType,
}

impl Parts {
    /// Reads the configs and tokenizer of `files` and builds the networks, their weights
    /// not yet loaded (nothing is allocated); they will compute in `dtype`.
    pub fn build(files: &dyn ModelFiles, device: &Device, dtype: DType) -> Result<Self> {
        let family = Family::detect(files)?;
        let tokenizer = load::tokenizer(files)?;
        let scheduler_config = load::scheduler_config(files)?;
        let (text_config, text_encoder) =
            load::build::<ClipTextModel>(files, Component::TextEncoder, device)?;
        let (unet_config, unet) = load::build(files, Component::Unet, device)?;
        let (vae_config, vae) = load::build::<Vae>(files, Component::Vae, device)?;
        fits_together(files, &text_config, &unet_config, &vae_config)?;
        tokenizer_fits(files, &tokenizer, &text_config)?;
        Ok(Self {
            family,
            tokenizer,
            text_encoder,
            unet,
            unet_config,
            vae,
            vae_config,
            scheduler_config,
            dtype,
        })
    }

    /// Replaces the model's VAE by the one `files` holds (`vae/config.json` and its
    /// weights; see `files::ComponentDir` for a published VAE folder), checking that it
    /// reads the UNet's latents. Its weights are not loaded yet.
    pub fn replace_vae(&mut self, files: &dyn ModelFiles, device: &Device) -> Result<()> {
        let (config, vae) = load::build::<Vae>(files, Component::Vae, device)?;
        check_same_latents(&config, &self.vae_config, files)?;
        self.vae = vae;
        self.vae_config = config;
        Ok(())
    }

    /// The precision `component`'s weights are loaded and run in: the compute dtype, except
    /// for a VAE whose config asks to run in f32 (`force_upcast`, as diffusers does).
    pub fn dtype_of(&self, component: Component) -> DType {
        match component {
            Component::Vae if self.vae_config.force_upcast() => DType::F32,
            _ => self.dtype,
        }
    }
}

/// Checks that the networks of `files` fit each other: the text embeddings are as wide as
/// the UNet's cross-attention, and the UNet reads and writes the VAE's latents.
fn fits_together(
    files: &dyn ModelFiles,
    text: &ClipTextConfig,
    unet: &UNetConfig,
    vae: &VaeConfig,
) -> Result<()> {
    let unet_file = files.display(&Component::Unet.config());
    let n = unet.block_out_channels.len();
    let cross = unet
        .cross_attention_dim
        .expand(n, &unet_file, "cross_attention_dim")?;
    if let Some(dim) = cross.iter().find(|&&d| d != text.hidden_size) {
        return Err(Error::config(
            &unet_file,
            "cross_attention_dim",
            format!(
                "is {dim} but the text encoder ({}) has hidden_size {}",
                files.display(&Component::TextEncoder.config()),
                text.hidden_size
            ),
        ));
    }
    check_vae_fits(
        vae,
        &files.display(&Component::Vae.config()),
        unet,
        &unet_file,
    )
}

/// Checks that every id the tokenizer produces has a row in the text encoder's token
/// embedding, and every position a position embedding.
pub fn tokenizer_fits(
    files: &dyn ModelFiles,
    tokenizer: &ClipTokenizer,
    text: &ClipTextConfig,
) -> Result<()> {
    let text_file = files.display(&Component::TextEncoder.config());
    let tokenizer_dir = files.display("tokenizer");
    if tokenizer.vocab_size() > text.vocab_size {
        return Err(Error::config(
            &text_file,
            "vocab_size",
            format!(
                "is {} but the tokenizer ({tokenizer_dir}) has {} tokens",
                text.vocab_size,
                tokenizer.vocab_size()
            ),
        ));
    }
    if tokenizer.max_length() > text.max_position_embeddings {
        return Err(Error::config(
            &text_file,
            "max_position_embeddings",
            format!(
                "is {} but the tokenizer ({tokenizer_dir}) makes {} tokens (model_max_length)",
                text.max_position_embeddings,
                tokenizer.max_length()
            ),
        ));
    }
    Ok(())
}

/// Checks that another VAE (`config`, from `files`) reads the latents of the model's own.
fn check_same_latents(config: &VaeConfig, own: &VaeConfig, files: &dyn ModelFiles) -> Result<()> {
    if config.latent_channels() == own.latent_channels() {
        return Ok(());
    }
    Err(Error::config(
        &files.display(&Component::Vae.config()),
        "latent_channels",
        format!(
            "is {} but the model's latents have {}",
            config.latent_channels(),
            own.latent_channels()
        ),
    ))
}

/// Checks that the UNet (whose config is `unet_file`) reads and writes the latents of the
/// VAE `vae` (read from `vae_file`).
fn check_vae_fits(
    vae: &VaeConfig,
    vae_file: &str,
    unet: &UNetConfig,
    unet_file: &str,
) -> Result<()> {
    let latent = vae.latent_channels();
    for (key, value, allowed) in [
        ("in_channels", unet.in_channels, [latent, 2 * latent + 1]),
        ("out_channels", unet.out_channels, [latent, latent]),
    ] {
        if !allowed.contains(&value) {
            return Err(Error::config(
                unet_file,
                key,
                format!(
                    "is {value} but the VAE ({vae_file}) has latent_channels {latent} (an \
                     inpainting UNet reads {})",
                    2 * latent + 1
                ),
            ));
        }
    }
    Ok(())
}

impl StableDiffusion {
    /// Loads the pipeline `files` holds, its weights read whole, computing in f32.
    pub fn load(files: &dyn ModelFiles, device: &Device) -> Result<Self> {
        Self::load_with(files, device, DType::F32)
    }

    /// Loads the pipeline `files` holds, computing in `dtype` (see `device::compute_dtype`).
    pub fn load_with(files: &dyn ModelFiles, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_from(files, None, device, dtype)
    }

    /// [`load_with`](Self::load_with), with the VAE `vae` holds instead of the model's own
    /// (an `AutoencoderKL` such as a fine-tuned one, or TAESD).
    pub fn load_from(
        files: &dyn ModelFiles,
        vae: Option<&dyn ModelFiles>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let mut parts = Parts::build(files, device, dtype)?;
        if let Some(vae) = vae {
            parts.replace_vae(vae, device)?;
        }
        let dtype_of = |c| parts.dtype_of(c);
        let (text, unet, vae_dtype) = (
            dtype_of(Component::TextEncoder),
            dtype_of(Component::Unet),
            dtype_of(Component::Vae),
        );
        parts.text_encoder = load::weights(
            files,
            Component::TextEncoder,
            parts.text_encoder,
            device,
            text,
        )?;
        parts.unet = load::weights(files, Component::Unet, parts.unet, device, unet)?;
        let vae_files = vae.unwrap_or(files);
        parts.vae = load::weights(vae_files, Component::Vae, parts.vae, device, vae_dtype)?;
        Ok(Self::from_parts(parts, device))
    }

    /// The pipeline made of `parts`, whose weights are loaded, running on `device`.
    pub fn from_parts(parts: Parts, device: &Device) -> Self {
        let Parts {
            family,
            tokenizer,
            text_encoder,
            unet,
            unet_config,
            vae,
            vae_config,
            scheduler_config,
            dtype,
        } = parts;
        Self {
            family,
            tokenizer,
            text_encoder,
            unet,
            unet_config,
            vae,
            vae_config,
            scheduler_config,
            device: device.clone(),
            dtype,
            preview: None,
        }
    }

    /// Loads the VAE `files` holds as the preview decoder (see [`preview`](Self::preview)).
    pub fn load_preview(&mut self, files: &dyn ModelFiles) -> Result<()> {
        let (config, vae) = self.build_preview(files)?;
        let vae = load::weights(files, Component::Vae, vae, &self.device, self.dtype)?;
        self.preview = Some((config, vae));
        Ok(())
    }

    /// `latents` (the scheduler's, as each step leaves them) decoded by the preview decoder
    /// (TAESD), `[H, W, 3]` in [0, 1]; `None` without one.
    pub fn preview(&self, latents: &Tensor<4>) -> Option<Tensor<3>> {
        let (config, vae) = self.preview.as_ref()?;
        let latents = config.latent_space().from_latents(latents.clone());
        Some(generation::to_image(vae.decode(latents.cast(self.dtype))))
    }

    /// The preview decoder `files` describes, checked to read this model's latents, its
    /// weights not yet loaded (the browser streams them).
    pub fn build_preview(&self, files: &dyn ModelFiles) -> Result<(VaeConfig, Vae)> {
        let (config, vae) = load::build::<Vae>(files, Component::Vae, &self.device)?;
        check_same_latents(&config, &self.vae_config, files)?;
        Ok((config, vae))
    }

    /// The precision the VAE runs in (f32 when its config says `force_upcast`).
    pub fn vae_dtype(&self) -> DType {
        if self.vae_config.force_upcast() {
            DType::F32
        } else {
            self.dtype
        }
    }

    /// Whether the UNet is an inpainting model's (its input: latents, mask, masked image).
    pub fn is_inpainting(&self) -> bool {
        self.unet_config.in_channels == 2 * self.vae_config.latent_channels() + 1
    }

    /// The ControlNet whose config `files` holds (see `files::ComponentDir` for a
    /// published folder), checked to fit this pipeline's UNet before any weight is read,
    /// then loaded. `name` is how it is shown.
    pub fn load_controlnet(&self, files: &dyn ModelFiles, name: &str) -> Result<ControlNet> {
        let (config, model) = self.build_controlnet(files)?;
        let model = load::weights(
            files,
            Component::ControlNet,
            model,
            &self.device,
            DType::F32,
        )?;
        Ok(ControlNet {
            name: name.into(),
            config,
            model,
        })
    }

    /// The ControlNet `files` describes, checked to fit, its weights not yet loaded (the
    /// browser streams them).
    pub fn build_controlnet(
        &self,
        files: &dyn ModelFiles,
    ) -> Result<(ControlNetConfig, ControlNetModel)> {
        let (config, model) =
            load::build::<ControlNetModel>(files, Component::ControlNet, &self.device)?;
        let file = files.display(&Component::ControlNet.config());
        check_fits(
            &config,
            &file,
            &self.unet_config,
            self.vae_config.latent_channels(),
        )?;
        Ok((config, model))
    }

    /// The scheduler the model ships with (DDIM when its config names no class); an error
    /// when it names a class the engine does not run.
    pub fn default_scheduler(&self) -> Result<&'static str> {
        Ok(schedulers::of_config(&self.scheduler_config)?.map_or("ddim", |e| e.name))
    }

    /// The steps a request without `steps` runs with `scheduler`: 20, or 4 for LCM.
    pub fn default_steps(&self, scheduler: &str) -> usize {
        if scheduler == "lcm" { 4 } else { 20 }
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
        let read = |t: Tensor<1>| t.into_scalar::<f32>();
        let mut generation = self.start(request, rng)?;
        generation.check_context(read(generation.context_max_abs()))?;
        while !generation.is_done() {
            let (step, total) = generation.step();
            generation.check_latents(read(generation.max_abs()))?;
            if !on_step(step, total, generation.latents()) {
                return Err(Error::Cancelled);
            }
        }
        let generated = generation.finish();
        self.check_image(read(generated.image.clone().abs().max()))?;
        Ok(generated)
    }

    /// Fails when a decoded image, read back as its largest |value| `max_abs`, is not
    /// finite (the last of the checks a driver of [`Generation`] makes).
    pub fn check_image(&self, max_abs: f32) -> Result<()> {
        check_finite("the VAE decoder", max_abs, self.vae_dtype())
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
            if v > MAX_SIDE {
                return Err(Error::invalid(
                    name,
                    format!("{v} is larger than {MAX_SIDE} pixels"),
                ));
            }
            Ok(v)
        };
        let (height, width) = match &request.init_image {
            Some(image) => {
                let [_, _, h, w] = image.dims();
                (size("height", Some(h))?, size("width", Some(w))?)
            }
            None => (
                size("height", request.height)?,
                size("width", request.width)?,
            ),
        };
        if width * height > MAX_PIXELS {
            return Err(Error::invalid(
                "size",
                format!(
                    "{width}×{height} is more than {} megapixels (2048×2048)",
                    MAX_PIXELS / 1_000_000
                ),
            ));
        }
        Ok((height, width))
    }
}

/// The largest side of an output image, in pixels.
pub const MAX_SIDE: usize = 4096;
/// The most pixels an output image may have: 2048×2048 (SDXL's 1024² and its wide formats
/// fit; more would take tens of GB of activations).
pub const MAX_PIXELS: usize = 2048 * 2048;

/// Fails when a network's output is not finite: `max_abs` is its largest |value|, read
/// back; `what` names the network (and step), `dtype` what it computed in. A NaN is never
/// passed on as a black image.
pub fn check_finite(what: &str, max_abs: f32, dtype: DType) -> Result<()> {
    if max_abs.is_finite() {
        return Ok(());
    }
    let hint = match dtype {
        DType::F32 => "",
        _ => "; in half precision a model can overflow: try f32",
    };
    Err(Error::Backend(format!(
        "{what} produced non-finite values (NaN or infinity){hint}"
    )))
}
