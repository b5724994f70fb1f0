//! Subcommands of the native CLI. They parse arguments, read files, call the library and
//! write files; the maths lives in the library.

mod bench;
mod control;
mod convert;
mod generate;
mod io;
mod lora;
mod networks;
mod prompt;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use clap::{Parser, Subcommand};

use webdiffusion::component::Component;
use webdiffusion::device::{self, Backend};
use webdiffusion::error::{Error, Result};
use webdiffusion::files::{ModelFiles, WeightFiles};
use webdiffusion::pack;

#[derive(Parser)]
#[command(name = "webdiffusion", version, about = "Stable Diffusion on burn")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
pub struct Common {
    /// A diffusers model folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/),
    /// a pack written by `convert`, or a single-file checkpoint (.safetensors, converted to
    /// a temporary f16 pack first).
    #[arg(long)]
    model: PathBuf,
    /// For a single-file --model: a diffusers folder with its configs and tokenizers, or
    /// sd15, sd21, sdxl, sdxl-turbo (built in). Default: guessed from the file.
    #[arg(long)]
    config: Option<String>,
    /// cpu or wgpu (default: wgpu when an adapter exists, else cpu).
    #[arg(long)]
    backend: Option<Backend>,
    /// f32 or f16: what the networks compute in (default: f16 on GPUs that offer it, f32
    /// elsewhere). The scheduler always works in f32.
    #[arg(long)]
    dtype: Option<String>,
    /// SD3: leave the T5 text encoder out even when the model has one (2–5 GB less to
    /// load; its part of the text embeddings is zeros, as diffusers does without it).
    #[arg(long)]
    no_t5: bool,
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
        /// SD3: the T5 tokens the prompt is read as (diffusers' max_sequence_length).
        #[arg(long, default_value_t = webdiffusion::pipeline::DEFAULT_T5_LENGTH)]
        max_sequence_length: usize,
        #[command(flatten)]
        loras: lora::LoraArgs,
        #[command(flatten)]
        reading: prompt::PromptArgs,
        /// Writes `input_ids` (i64 [k,77]: k chunks of 75 tokens) and `prompt_embeds` (f32
        /// [1,77·k,D]).
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
            max_sequence_length,
            loras,
            reading,
            out,
        } => {
            let text = networks::TextArgs {
                prompt: &prompt,
                clip_skip,
                t5_length: max_sequence_length,
            };
            networks::encode_prompt(&common, &text, &loras, &reading, &out)
        }
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
    let files = match common.model.is_file() {
        true => single_file(&common.model, common.config.as_deref())?,
        false if common.config.is_some() => {
            return Err(Error::invalid(
                "--config",
                "is for single-file checkpoints; a folder or pack has its own configs",
            ));
        }
        false => pack::open_dir(&common.model)?,
    };
    let files: Box<dyn ModelFiles> = match common.no_t5 {
        true => Box::new(webdiffusion::files::WithoutT5(files)),
        false => files,
    };
    let (backend, device) = device::open(common.backend)?;
    let dtype = device::compute_dtype(backend, &device, requested)?;
    Ok((files, device, dtype))
}

/// The single-file checkpoint at `path` as a pack converted into a temporary folder (f16:
/// what single files usually hold), with the configs `config` names (see `convert`).
fn single_file(path: &Path, config: Option<&str>) -> Result<Box<dyn ModelFiles>> {
    let detected = webdiffusion::pack::single_file::detect(path)?;
    if detected.controlnet {
        return Err(Error::invalid(
            "--model",
            format!(
                "{} is a ControlNet: give it with --controlnet",
                path.display()
            ),
        ));
    }
    let configs = convert::configs(config.unwrap_or(detected.config), "--config")?;
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir().display(), e))?;
    let out = dir.path().join("pack");
    eprintln!("converting {} to a temporary f16 pack…", path.display());
    let precision = webdiffusion::quant::Precision::F16;
    webdiffusion::pack::convert::convert_single_file(path, &*configs, precision, &out)?;
    Ok(Box::new(TemporaryPack {
        files: pack::open_dir(&out)?,
        _dir: dir,
    }))
}

/// A pack that lives as long as its temporary folder.
struct TemporaryPack {
    files: Box<dyn ModelFiles>,
    _dir: tempfile::TempDir,
}

impl ModelFiles for TemporaryPack {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.files.read(path)
    }

    fn display(&self, path: &str) -> String {
        self.files.display(path)
    }

    fn weights(&self, component: Component, device: &Device) -> Result<WeightFiles> {
        self.files.weights(component, device)
    }
}
