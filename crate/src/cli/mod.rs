//! Subcommands of the native CLI. They parse arguments, read files, call the library and
//! write files; the maths lives in the library.

mod bench;
mod control;
mod convert;
mod generate;
mod io;
mod lora;
mod networks;

use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::DType;
use clap::{Parser, Subcommand};

use webdiffusion::device::{self, Backend};
use webdiffusion::error::Result;
use webdiffusion::files::ModelFiles;
use webdiffusion::pack;

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
    /// f32 or f16: what the networks compute in (default: f16 on GPUs that offer it, f32
    /// elsewhere). The scheduler always works in f32.
    #[arg(long)]
    dtype: Option<String>,
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
        /// Another VAE to use instead of the model's (a folder or pack: AutoencoderKL or
        /// AutoencoderTiny/TAESD).
        #[arg(long)]
        vae: Option<PathBuf>,
        #[arg(long)]
        latents: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Decode in overlapping tiles of PIXELS (default: the VAE's sample_size), as
        /// diffusers' enable_vae_tiling.
        #[arg(long, value_name = "PIXELS", num_args = 0..=1)]
        vae_tiling: Option<Option<usize>>,
    },
    /// Generate an image from a prompt (txt2img), or from a prompt and an image (img2img).
    Generate(Box<generate::GenerateArgs>),
    /// Convert a diffusers folder into a pack of f16, q8 or q4 weights.
    Convert(convert::ConvertArgs),
    /// Time the full-size SD 1.5 networks (random weights) on a backend.
    Bench(bench::BenchArgs),
    /// Canny edges (OpenCV's) of a PNG, as the ControlNet canny models read them.
    Canny(control::CannyArgs),
    /// Encode a PNG to the posterior `mean` (not multiplied by the scaling factor); with an
    /// AutoencoderTiny, its `latents`.
    VaeEncode {
        #[command(flatten)]
        common: Common,
        /// Another VAE to use instead of the model's (see vae-decode).
        #[arg(long)]
        vae: Option<PathBuf>,
        #[arg(long)]
        image: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Encode in overlapping tiles (see vae-decode).
        #[arg(long, value_name = "PIXELS", num_args = 0..=1)]
        vae_tiling: Option<Option<usize>>,
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
        } => networks::encode_prompt(&common, &prompt, clip_skip, &loras, &out),
        Command::VaeDecode {
            common,
            vae,
            latents,
            out,
            vae_tiling,
        } => networks::vae_decode(&common, vae.as_deref(), &latents, &out, vae_tiling),
        Command::VaeEncode {
            common,
            vae,
            image,
            out,
            vae_tiling,
        } => networks::vae_encode(&common, vae.as_deref(), &image, &out, vae_tiling),
    }
}

/// The model's files, the device and the compute precision `common` asks for.
pub fn open(common: &Common) -> Result<(Box<dyn ModelFiles>, Device, DType)> {
    let requested = common
        .dtype
        .as_deref()
        .map(device::parse_dtype)
        .transpose()?;
    let files = pack::open_dir(&common.model)?;
    let (backend, device) = device::open(common.backend)?;
    let dtype = device::compute_dtype(backend, &device, requested)?;
    Ok((files, device, dtype))
}
