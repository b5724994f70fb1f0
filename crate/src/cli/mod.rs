//! Subcommands of the native CLI. They parse arguments, read files, call the library and
//! write files; the maths lives in the library.

mod bench;
mod control;
mod convert;
mod generate;
mod io;
mod lora;

use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::DType;
use clap::{Parser, Subcommand};

use webdiffusion::component::Component;
use webdiffusion::device::{self, Backend};
use webdiffusion::error::{Error, Result};
use webdiffusion::files::ModelFiles;
use webdiffusion::models::unet::UNet2DConditionModel;
use webdiffusion::weights::expected_tensors;
use webdiffusion::{image, load, pack};

use io::Output;

#[derive(Parser)]
#[command(name = "webdiffusion", version, about = "Stable Diffusion on burn")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
pub struct Common {
    /// A diffusers model folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/)
    /// or a pack written by `convert`.
    #[arg(long)]
    model: PathBuf,
    /// cpu or wgpu (default: wgpu when an adapter exists, else cpu).
    #[arg(long)]
    backend: Option<Backend>,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenize a prompt and run the text encoder.
    EncodePrompt {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        prompt: String,
        /// Skip this many final layers of the text encoder (diffusers' clip_skip).
        #[arg(long, default_value_t = 0)]
        clip_skip: usize,
        #[command(flatten)]
        loras: lora::LoraArgs,
        /// Writes `input_ids` (i64 [1,77]) and `prompt_embeds` (f32 [1,77,D]).
        #[arg(long)]
        out: PathBuf,
    },
    /// Decode latents (tensor `latents`, pipeline space) to the raw decoder output `image`.
    VaeDecode {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        latents: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Generate an image from a prompt (txt2img), or from a prompt and an image (img2img).
    Generate(Box<generate::GenerateArgs>),
    /// Convert a diffusers folder into a pack of f16, q8 or q4 weights.
    Convert(convert::ConvertArgs),
    /// Time the full-size SD 1.5 networks (random weights) on a backend.
    Bench(bench::BenchArgs),
    /// Canny edges (OpenCV's) of a PNG, as the ControlNet canny models read them.
    Canny(control::CannyArgs),
    /// Encode a PNG to the posterior `mean` (not multiplied by the scaling factor).
    VaeEncode {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        image: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<()> {
    match cli.command {
        Command::Generate(args) => {
            let matches = matches.subcommand_matches("generate").expect("generate");
            generate::run(*args, matches)
        }
        Command::Canny(args) => control::canny(args),
        Command::Bench(args) => bench::run(args),
        Command::Convert(args) => convert::run(args),
        Command::EncodePrompt {
            common,
            prompt,
            clip_skip,
            loras,
            out,
        } => {
            let (files, device) = open(&common)?;
            let tokenizer = load::tokenizer(&*files)?;
            let (_, text_encoder) = load::text_encoder(&*files, &device, DType::F32)?;
            // A LoRA file also adapts the UNet: its layers are matched against the UNet's
            // (built from its config, weights not loaded) so that a wrong file is refused.
            let (_, unet) = load::build::<UNet2DConditionModel>(&*files, Component::Unet, &device)?;
            let targets = webdiffusion::lora::Targets::from([
                (Component::TextEncoder, expected_tensors(&text_encoder)),
                (Component::Unet, expected_tensors(&unet)),
            ]);
            let loras = lora::load(&loras, &targets, &device)?;
            let text_encoder =
                webdiffusion::lora::apply(&text_encoder, Component::TextEncoder, &loras);
            if clip_skip >= text_encoder.num_layers() {
                return Err(Error::invalid(
                    "--clip-skip",
                    format!(
                        "{clip_skip} (the text encoder has {} layers)",
                        text_encoder.num_layers()
                    ),
                ));
            }
            let ids = tokenizer.encode(&prompt)?;
            let embeds = text_encoder.encode(&ids, clip_skip, &device);
            let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
            io::write_safetensors(
                &out,
                vec![
                    Output::i64("input_ids", vec![1, ids.len()], &ids),
                    Output::f32("prompt_embeds", embeds)?,
                ],
            )
        }
        Command::VaeDecode {
            common,
            latents,
            out,
        } => {
            let (files, device) = open(&common)?;
            let latents = io::read_tensor4(&latents, "latents", &device)?;
            let (config, vae) = load::vae(&*files, &device, DType::F32)?;
            let [_, c, _, _] = latents.dims();
            if c != config.latent_channels {
                return Err(Error::invalid(
                    "--latents",
                    format!(
                        "has {c} channels, the VAE expects {}",
                        config.latent_channels
                    ),
                ));
            }
            let image = vae.decode(latents / config.scaling_factor);
            io::write_safetensors(&out, vec![Output::f32("image", image)?])
        }
        Command::VaeEncode { common, image, out } => {
            let (files, device) = open(&common)?;
            let png = image::read_png(&image)?;
            let (config, vae) = load::vae(&*files, &device, DType::F32)?;
            if !vae.can_encode() {
                return Err(Error::invalid(
                    "--model",
                    "its VAE has no encoder weights (a decoder-only VAE): it cannot encode",
                ));
            }
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
            let posterior = vae.encode(image::image_to_tensor(&png, &device));
            io::write_safetensors(&out, vec![Output::f32("mean", posterior.mean)?])
        }
    }
}

pub fn open(common: &Common) -> Result<(Box<dyn ModelFiles>, Device)> {
    let files = pack::open_dir(&common.model)?;
    let (_, device) = device::open(common.backend)?;
    Ok((files, device))
}
