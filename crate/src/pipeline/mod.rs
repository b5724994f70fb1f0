//! Text-to-image, img2img and inpainting, with LoRAs and ControlNets: the algorithms of
//! diffusers' Stable Diffusion pipelines, reading like them. The pipeline holds the loaded
//! networks; `generate` runs one request (see `generation` for its steps).

mod control;
mod denoiser;
mod generation;
mod inpaint;
mod reading;
mod request;
mod text;

pub use control::{ControlNet, check_fits};
pub use denoiser::{Cond, Denoiser};
pub use generation::Generation;
pub use reading::{Chunks, MAX_CHUNKS, Reading, TextModels, Tokens};
pub use request::{
    Control, Generated, OnStep, Request, Settings, SizeConditioning, SkipLayerGuidance, VaeTiling,
};
pub use text::{
    DEFAULT_T5_LENGTH, PromptEmbeds, T5Encoder, TextEncoder, TextEncoders, tokenizer_fits,
};

use burn::prelude::*;
use burn::tensor::DType;

use crate::component::Component;
use crate::error::{Error, Result};
use crate::family::Family;
use crate::files::{ModelFiles, sha256_hex};
use crate::load;
use crate::lora::{self, Lora, LoraFile};
use crate::models::controlnet::{ControlNetConfig, ControlNetModel};
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{Tiling, Vae, VaeConfig};
#[cfg(not(target_family = "wasm"))]
use crate::noise::Generator;
#[cfg(not(target_family = "wasm"))]
use crate::schedulers::NoiseSource;
use crate::schedulers::{self, SchedulerConfig};
use crate::textual_inversion::TextualInversion;
use crate::weights::expected_tensors;

pub struct StableDiffusion {
    pub family: Family,
    pub text: TextEncoders,
    pub denoiser: Denoiser,
    pub vae: Vae,
    pub vae_config: VaeConfig,
    pub scheduler_config: SchedulerConfig,
    pub device: Device,
    /// What the networks compute in (f32, or f16 on GPUs with `shader-f16`); the scheduler's
    /// state stays f32 whatever it is.
    pub dtype: DType,
    /// A small decoder (TAESD) for previews of the latents while they are denoised.
    pub preview: Option<(VaeConfig, Vae)>,
    /// The device's largest buffer (WebGPU's `maxStorageBufferBindingSize`), when it has
    /// one that a whole image's VAE activations may exceed: such images are tiled.
    pub max_buffer: Option<u64>,
}

/// What a pipeline is made of: the tokenizer, the networks (with or without their weights
/// yet) and their configs. [`Parts::build`] reads and checks everything but the weights,
/// which each edge then loads its own way (whole files natively, streamed in the browser),
/// and [`StableDiffusion::from_parts`] assembles the result.
pub struct Parts {
    pub family: Family,
    pub text: TextEncoders,
    pub denoiser: Denoiser,
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
        let mut text = TextEncoders::build(files, family, device)?;
        let scheduler_config = load::scheduler_config(files)?;
        let denoiser = Denoiser::build(files, family, device)?;
        let (vae_config, vae) = load::build::<Vae>(files, Component::Vae, device)?;
        match &denoiser {
            Denoiser::Unet(config, _) => fits_together(files, &text, config, &vae_config)?,
            Denoiser::Transformer(config, _) => {
                text.joint_width = config.joint_attention_dim;
                transformer_fits(files, &text, config, &vae_config)?;
            }
        }
        Ok(Self {
            family,
            text,
            denoiser,
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
/// the UNet's cross-attention, a pooled embedding exists exactly when the UNet reads one
/// (`text_time`) and is as wide, and the UNet reads and writes the VAE's latents.
fn fits_together(
    files: &dyn ModelFiles,
    text: &TextEncoders,
    unet: &UNetConfig,
    vae: &VaeConfig,
) -> Result<()> {
    let unet_file = files.display(&Component::Unet.config());
    match (unet.text_time(&unet_file)?, text.pooled_width()) {
        (None, None) => {}
        (Some((_, unet_pooled)), Some(pooled)) if unet_pooled == pooled => {}
        (Some(_), None) => {
            return Err(Error::config(
                &unet_file,
                "addition_embed_type",
                format!(
                    "is \"text_time\" (SDXL's pooled text and size conditioning), but this \
                     {} pipeline has no text_encoder_2 to make a pooled embedding",
                    text.family
                ),
            ));
        }
        (None, Some(_)) => {
            return Err(Error::config(
                &unet_file,
                "addition_embed_type",
                "is not \"text_time\", but an SDXL UNet reads the pooled text embedding \
                 and the image sizes through it",
            ));
        }
        (Some((time, unet_pooled)), Some(pooled)) => {
            return Err(Error::config(
                &unet_file,
                "projection_class_embeddings_input_dim",
                format!(
                    "leaves {unet_pooled} for the pooled embedding (after 6 × {time} for \
                     the time ids), but {} has projection_dim {pooled}",
                    files.display(&Component::TextEncoder2.config())
                ),
            ));
        }
    }
    let n = unet.block_out_channels.len();
    let cross = unet
        .cross_attention_dim
        .expand(n, &unet_file, "cross_attention_dim")?;
    let encoders: Vec<String> = text
        .encoders
        .iter()
        .map(|e| {
            let file = files.display(&e.component.config());
            format!("{file} has hidden_size {}", e.config.hidden_size)
        })
        .collect();
    let width = text.context_width();
    if let Some(dim) = cross.iter().find(|&&d| d != width) {
        return Err(Error::config(
            &unet_file,
            "cross_attention_dim",
            format!(
                "is {dim} but the text embeddings are {width} wide ({})",
                encoders.join(", ")
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

/// Checks that SD3's networks fit: the CLIP encoders' joint width and T5's fit the
/// transformer's `joint_attention_dim`, their pooled embeddings its
/// `pooled_projection_dim`, and it reads and writes the VAE's latents.
fn transformer_fits(
    files: &dyn ModelFiles,
    text: &TextEncoders,
    config: &crate::models::mmdit::Sd3TransformerConfig,
    vae: &VaeConfig,
) -> Result<()> {
    let file = files.display(&Component::Transformer.config());
    let clip = text.context_width();
    let joint = config.joint_attention_dim;
    if clip > joint {
        return Err(Error::config(
            &file,
            "joint_attention_dim",
            format!(
                "is {joint}, narrower than the CLIP encoders' embeddings side by side ({clip})"
            ),
        ));
    }
    if let Some(t5) = &text.t5
        && t5.config.d_model != joint
    {
        return Err(Error::config(
            &file,
            "joint_attention_dim",
            format!(
                "is {joint} but the T5 encoder ({}) has d_model {}",
                files.display(&Component::TextEncoder3.config()),
                t5.config.d_model
            ),
        ));
    }
    let pooled = text.pooled_width().unwrap_or(0);
    if config.pooled_projection_dim != pooled {
        return Err(Error::config(
            &file,
            "pooled_projection_dim",
            format!(
                "is {} but the CLIP encoders' pooled embeddings are {pooled} wide together",
                config.pooled_projection_dim
            ),
        ));
    }
    if !config.sample_size.is_multiple_of(config.patch_size) {
        return Err(Error::config(
            &file,
            "patch_size",
            format!(
                "{} does not divide sample_size {}",
                config.patch_size, config.sample_size
            ),
        ));
    }
    let latent = vae.latent_channels();
    for (key, value) in [
        ("in_channels", config.in_channels),
        ("out_channels", config.out_channels()),
    ] {
        if value != latent {
            return Err(Error::config(
                &file,
                key,
                format!(
                    "is {value} but the VAE ({}) has latent_channels {latent}",
                    files.display(&Component::Vae.config())
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
        let vae_dtype = parts.dtype_of(Component::Vae);
        parts.text = parts.text.load_weights(files, device, dtype)?;
        parts.denoiser = parts.denoiser.load_weights(files, device, dtype)?;
        let vae_files = vae.unwrap_or(files);
        parts.vae = load::weights(vae_files, Component::Vae, parts.vae, device, vae_dtype)?;
        Ok(Self::from_parts(parts, device))
    }

    /// The pipeline made of `parts`, whose weights are loaded, running on `device`.
    pub fn from_parts(parts: Parts, device: &Device) -> Self {
        let Parts {
            family,
            text,
            denoiser,
            vae,
            vae_config,
            scheduler_config,
            dtype,
        } = parts;
        Self {
            family,
            text,
            denoiser,
            vae,
            vae_config,
            scheduler_config,
            device: device.clone(),
            dtype,
            preview: None,
            max_buffer: None,
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

    /// The tiles a `height` × `width` image is decoded and encoded in under `setting`, if
    /// any (see [`VaeTiling`]).
    pub fn vae_tiling(
        &self,
        setting: VaeTiling,
        height: usize,
        width: usize,
    ) -> Result<Option<Tiling>> {
        let (Some((sample_size, channels)), VaeTiling::Auto) =
            (self.vae_config.tile_facts(), setting)
        else {
            return match setting {
                VaeTiling::On(tile) => self.vae_config.tiling(tile, "vae tiling"),
                VaeTiling::Auto => Ok(None),
            };
        };
        // The widest activation at full size, one buffer.
        let bytes = |h: usize, w: usize| (channels * h * w * self.vae_dtype().size()) as u64;
        match self.max_buffer {
            Some(limit) if bytes(height, width) > limit => {
                // The largest tile that fits, in steps of 8 latents, at most the VAE's own.
                let step = 8 * self.vae_scale_factor();
                let fitting = (1..)
                    .map(|k| k * step)
                    .take_while(|&side| side <= sample_size.max(step) && bytes(side, side) <= limit)
                    .last();
                self.vae_config
                    .tiling(Some(fitting.unwrap_or(step)), "vae tiling")
            }
            _ => Ok(None),
        }
    }

    /// Whether the UNet is an inpainting model's (its input: latents, mask, masked image).
    pub fn is_inpainting(&self) -> bool {
        self.denoiser.channels().0 == 2 * self.vae_config.latent_channels() + 1
    }

    /// The UNet, for a UNet family (`what` names the feature that needs it in the error).
    pub fn unet(&self, what: &str) -> Result<&UNet2DConditionModel> {
        self.denoiser
            .unet()
            .ok_or_else(|| self.not_for_transformers(what))
    }

    /// The UNet's config, for a UNet family (see [`unet`](Self::unet)).
    pub fn unet_config(&self, what: &str) -> Result<&UNetConfig> {
        self.denoiser
            .unet_config()
            .ok_or_else(|| self.not_for_transformers(what))
    }

    fn not_for_transformers(&self, what: &str) -> Error {
        Error::invalid(
            what,
            format!(
                "is not supported for {} models yet (their denoiser is a transformer)",
                self.family
            ),
        )
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
        let unet_config = self.unet_config("controlnet")?;
        let (config, model) =
            load::build::<ControlNetModel>(files, Component::ControlNet, &self.device)?;
        let file = files.display(&Component::ControlNet.config());
        check_fits(
            &config,
            &file,
            unet_config,
            self.vae_config.latent_channels(),
        )?;
        Ok((config, model))
    }

    /// The scheduler the model ships with (DDIM, or flow-matching Euler for a transformer,
    /// when its config names no class); an error when it names a class the engine does
    /// not run.
    pub fn default_scheduler(&self) -> Result<&'static str> {
        let fallback = if self.family.is_flow() {
            "flow-euler"
        } else {
            "ddim"
        };
        Ok(schedulers::of_config(&self.scheduler_config)?.map_or(fallback, |e| e.name))
    }

    /// The steps a request without `steps` runs with `scheduler`: 20 (28 for SD3, as its
    /// pipeline), or 4 for LCM.
    pub fn default_steps(&self, scheduler: &str) -> usize {
        match scheduler {
            "lcm" => 4,
            _ if self.family.is_flow() => 28,
            _ => 20,
        }
    }

    /// Pixels per latent along each side.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_config.scale_factor()
    }

    /// The image size the denoiser was trained for.
    pub fn default_size(&self) -> usize {
        self.denoiser.sample_size() * self.vae_scale_factor()
    }

    /// The weight matrices a LoRA may adapt, in the text encoders and the UNet.
    pub fn lora_targets(&self) -> Result<lora::Targets> {
        Ok(lora_targets(&self.text, self.unet("lora")?))
    }

    /// Reads the LoRA file `bytes` (named `file` in messages) and matches it to this
    /// pipeline's networks, on its device. `name` is how it is shown (A1111 uses the file
    /// name without extension).
    pub fn load_lora(&self, bytes: &[u8], file: &str, name: &str) -> Result<Lora> {
        let targets = self.lora_targets()?;
        let parsed = LoraFile::parse(bytes, file)?;
        let hash = sha256_hex(bytes)[..12].to_string();
        Lora::new(&parsed, name, &hash, &targets, &self.device)
    }

    /// Reads the textual-inversion embedding `bytes` (named `file` in messages; `stem`, the
    /// file name without extension, is AUTOMATIC1111's token) and checks that it fits this
    /// pipeline's text encoders. `token`: the word to use instead of the file's own.
    pub fn load_embedding(
        &self,
        bytes: &[u8],
        file: &str,
        stem: &str,
        token: Option<&str>,
    ) -> Result<TextualInversion> {
        let ti = TextualInversion::parse(bytes, file, stem, token)?;
        self.text.check_embedding(&ti)?;
        Ok(ti)
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
            // The UNet halves the latent once per down block, the transformer cuts it into
            // patches: it must divide evenly.
            let multiple = f * self.denoiser.latent_multiple();
            if v == 0 || !v.is_multiple_of(multiple) {
                return Err(Error::invalid(
                    name,
                    format!("{v} is not a positive multiple of {multiple}"),
                ));
            }
            let largest = match self.denoiser.max_latent_side() {
                Some(side) => (side * f).min(MAX_SIDE),
                None => MAX_SIDE,
            };
            if v > largest {
                return Err(Error::invalid(
                    name,
                    format!("{v} is larger than {largest} pixels"),
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

/// The weight matrices a LoRA may adapt, in the text encoders `text` and `unet` (whose
/// weights need not be loaded).
pub fn lora_targets(text: &TextEncoders, unet: &UNet2DConditionModel) -> lora::Targets {
    let mut targets: lora::Targets = text
        .encoders
        .iter()
        .map(|e| (e.component, expected_tensors(&e.model)))
        .collect();
    targets.insert(Component::Unet, expected_tensors(unet));
    targets
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
