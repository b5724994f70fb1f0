//! `encode-prompt`, `vae-decode` and `vae-encode`: one network at a time, for checking
//! against other implementations.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;

use webdiffusion::component::Component;
use webdiffusion::error::{Error, Result};
use webdiffusion::models::clip::ClipTextModel;
use webdiffusion::models::unet::UNet2DConditionModel;
use webdiffusion::models::vae::{Vae, VaeConfig};
use webdiffusion::weights::expected_tensors;
use webdiffusion::{image, load, pack};

use super::io::{self, Output};
use super::{Common, lora, open};

/// Tokenizes `prompt` and runs the text encoder (with `loras`), writing `input_ids` and
/// `prompt_embeds`.
pub fn encode_prompt(
    common: &Common,
    prompt: &str,
    clip_skip: usize,
    loras: &lora::LoraArgs,
    out: &Path,
) -> Result<()> {
    io::check_writable(out)?;
    let (files, device, dtype) = open(common)?;
    let tokenizer = load::tokenizer(&*files)?;
    let (text_config, text_encoder) =
        load::network::<ClipTextModel>(&*files, Component::TextEncoder, &device, dtype)?;
    webdiffusion::pipeline::tokenizer_fits(&*files, &tokenizer, &text_config)?;
    // A LoRA file also adapts the UNet: its layers are matched against the UNet's (built
    // from its config, weights not loaded) so that a wrong file is refused.
    let (_, unet) = load::build::<UNet2DConditionModel>(&*files, Component::Unet, &device)?;
    let targets = webdiffusion::lora::Targets::from([
        (Component::TextEncoder, expected_tensors(&text_encoder)),
        (Component::Unet, expected_tensors(&unet)),
    ]);
    let loras = lora::load(loras, &targets, &device)?;
    let text_encoder = webdiffusion::lora::apply(&text_encoder, Component::TextEncoder, &loras);
    if clip_skip >= text_encoder.num_layers() {
        return Err(Error::invalid(
            "--clip-skip",
            format!(
                "{clip_skip} (the text encoder has {} layers)",
                text_encoder.num_layers()
            ),
        ));
    }
    let ids = tokenizer.encode(prompt)?;
    let embeds = text_encoder.encode(&ids, clip_skip, &device);
    let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    io::write_safetensors(
        out,
        vec![
            Output::i64("input_ids", vec![1, ids.len()], &ids),
            Output::f32_finite("prompt_embeds", embeds, "the text encoder")?,
        ],
    )
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

/// Decodes pipeline-space `latents` to the raw decoder output `image`.
pub fn vae_decode(common: &Common, other: Option<&Path>, latents: &Path, out: &Path) -> Result<()> {
    io::check_writable(out)?;
    let (config, vae, dtype, device) = vae(common, other)?;
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
    let image = vae.decode(config.latent_space().from_latents(latents).cast(dtype));
    io::write_safetensors(
        out,
        vec![Output::f32_finite("image", image, "the VAE decoder")?],
    )
}

/// Encodes a PNG: AutoencoderKL's posterior `mean` (not multiplied by the scaling factor),
/// or AutoencoderTiny's `latents`.
pub fn vae_encode(common: &Common, other: Option<&Path>, image: &Path, out: &Path) -> Result<()> {
    io::check_writable(out)?;
    let (config, vae, dtype, device) = vae(common, other)?;
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
    let latents = vae.encode(image::image_to_tensor(&png, &device).cast(dtype));
    let name = match vae {
        Vae::Kl(_) => "mean",
        Vae::Tiny(_) => "latents",
    };
    io::write_safetensors(
        out,
        vec![Output::f32_finite(name, latents, "the VAE encoder")?],
    )
}
