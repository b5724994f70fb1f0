//! `encode-prompt`, `vae-decode` and `vae-encode`: one network at a time, for checking
//! against other implementations.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;

use webdiffusion::component::Component;
use webdiffusion::error::{Error, Result};
use webdiffusion::models::vae::{Tiling, Vae, VaeConfig};
use webdiffusion::pipeline::{Denoiser, Parts, Reading, lora_targets};
use webdiffusion::{image, load, pack};

use super::io::{self, Output};
use super::{Common, lora, open, prompt};

/// What `encode-prompt` encodes.
pub struct TextArgs<'a> {
    pub prompt: &'a str,
    pub clip_skip: usize,
    /// SD3's T5 tokens.
    pub t5_length: usize,
}

/// Tokenizes the prompt and runs the text encoders (with `loras`), writing `input_ids` and
/// `prompt_embeds`, and for SDXL and SD3 `input_ids_2` and `pooled_prompt_embeds` (and SD3's
/// `input_ids_3` for T5), as diffusers' `encode_prompt` returns them.
pub fn encode_prompt(
    common: &Common,
    text_args: &TextArgs,
    loras: &lora::LoraArgs,
    prompt_args: &prompt::PromptArgs,
    out: &Path,
) -> Result<()> {
    let TextArgs {
        prompt,
        clip_skip,
        t5_length,
    } = *text_args;
    io::check_writable(out)?;
    let (files, device, dtype) = open(common)?;
    // Everything is built from its config and checked to fit; only the text encoders'
    // weights are read. A LoRA file also adapts the UNet: its layers are matched against
    // the UNet's so that a wrong file is refused.
    let parts = Parts::build(&*files, &device, dtype)?;
    let text = parts.text.load_weights(&*files, &device, dtype)?;
    let loras = match (&parts.denoiser, loras.is_empty()) {
        (_, true) => Vec::new(),
        (Denoiser::Unet(_, unet), false) => lora::load(loras, &lora_targets(&text, unet), &device)?,
        (Denoiser::Transformer(..), false) => {
            return Err(Error::invalid(
                "--lora",
                format!("is not supported for {} models yet", parts.family),
            ));
        }
    };
    text.check_clip_skip(clip_skip, "--clip-skip")?;
    text.check_t5_length(t5_length, "--max-sequence-length")?;
    let embeddings = prompt::load(prompt_args, &text)?;
    let models = text.prepare(&loras, &embeddings)?;
    let reading = Reading {
        weighting: !prompt_args.no_prompt_weighting,
        clip_skip,
        t5_length,
    };
    let tokens = text.tokenize(&models, prompt, "--prompt", &reading)?;
    let count = tokens.chunk_count();
    let embeds = text.encode_tokens(&models, &tokens, count, &reading, &device);
    let mut outputs = Vec::new();
    for i in 0..text.encoders.len() {
        let (ids, shape) = text.ids(&tokens, i, count);
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let name = match i {
            0 => "input_ids".to_string(),
            _ => format!("input_ids_{}", i + 1),
        };
        outputs.push(Output::i64(&name, shape.to_vec(), &ids));
    }
    if let Some((ids, _)) = &tokens.t5 {
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        outputs.push(Output::i64("input_ids_3", vec![1, ids.len()], &ids));
    }
    outputs.push(Output::f32_finite(
        "prompt_embeds",
        embeds.context,
        "the text encoder",
    )?);
    if let Some(pooled) = embeds.pooled {
        outputs.push(Output::f32_finite(
            "pooled_prompt_embeds",
            pooled,
            "the text encoder",
        )?);
    }
    io::write_safetensors(out, outputs)
}

/// The VAE of `common`'s model, or the one at `other`, in the precision it runs in (f32
/// when its config says `force_upcast`).
fn vae(common: &Common, other: Option<&Path>) -> Result<(VaeConfig, Vae, DType, Device)> {
    let (files, device, dtype) = open(common)?;
    let files = match other {
        Some(path) => pack::open_component(path, Component::Vae)?,
        None => files,
    };
    let (config, vae) = load::build::<Vae>(&*files, Component::Vae, &device)?;
    let dtype = if config.force_upcast() {
        DType::F32
    } else {
        dtype
    };
    let vae = load::weights(&*files, Component::Vae, vae, &device, dtype)?;
    Ok((config, vae, dtype, device))
}

/// The tiles `--vae-tiling [PIXELS]` asks for.
fn tiles(config: &VaeConfig, tiling: Option<Option<usize>>) -> Result<Option<Tiling>> {
    match tiling {
        Some(tile) => config.tiling(tile, "--vae-tiling"),
        None => Ok(None),
    }
}

/// Decodes pipeline-space `latents` to the raw decoder output `image`.
/// `tiling`: `--vae-tiling [PIXELS]`.
pub fn vae_decode(
    common: &Common,
    other: Option<&Path>,
    latents: &Path,
    out: &Path,
    tiling: Option<Option<usize>>,
) -> Result<()> {
    io::check_writable(out)?;
    let (config, vae, dtype, device) = vae(common, other)?;
    let tiling = tiles(&config, tiling)?;
    let latents = io::read_tensor4(latents, "latents", &device)?;
    let [_, c, _, _] = latents.dims();
    if c != config.latent_channels() {
        return Err(Error::invalid(
            "--latents",
            format!(
                "has {c} channels, the VAE expects {}",
                config.latent_channels()
            ),
        ));
    }
    let latents = config.latent_space().from_latents(latents).cast(dtype);
    let image = vae.decode_tiled(latents, tiling);
    io::write_safetensors(
        out,
        vec![Output::f32_finite("image", image, "the VAE decoder")?],
    )
}

/// Encodes a PNG: AutoencoderKL's posterior `mean` (not multiplied by the scaling factor),
/// or AutoencoderTiny's `latents`.
pub fn vae_encode(
    common: &Common,
    other: Option<&Path>,
    image: &Path,
    out: &Path,
    tiling: Option<Option<usize>>,
) -> Result<()> {
    io::check_writable(out)?;
    let (config, vae, dtype, device) = vae(common, other)?;
    let tiling = tiles(&config, tiling)?;
    if !vae.can_encode() {
        return Err(Error::invalid(
            "--model",
            "its VAE has no encoder weights (a decoder-only VAE): it cannot encode",
        ));
    }
    let png = image::read_png(image)?;
    let f = config.scale_factor();
    if png.width % f != 0 || png.height % f != 0 {
        return Err(Error::invalid(
            "--image",
            format!(
                "{} is {}×{}; width and height must be multiples of {f}",
                image.display(),
                png.width,
                png.height
            ),
        ));
    }
    let latents = vae.encode_tiled(image::image_to_tensor(&png, &device).cast(dtype), tiling);
    let name = match vae {
        Vae::Kl(_) => "mean",
        Vae::Tiny(_) => "latents",
    };
    io::write_safetensors(
        out,
        vec![Output::f32_finite(name, latents, "the VAE encoder")?],
    )
}
