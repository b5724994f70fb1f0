//! Building each network from its config and filling its weights from a model's files,
//! whatever their source (see `files`). Natively the bytes are read whole; the browser
//! streams the same files through the same readers (`web`).

use burn::module::Module;
use burn::prelude::*;
use burn::store::ModuleSnapshot;
use burn::tensor::DType;

use crate::component::{self, Component, TokenizerPaths};
use crate::config::parse;
use crate::error::{Error, Result};
use crate::files::{ModelFiles, WeightFiles};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::controlnet::{ControlNetConfig, ControlNetModel};
use crate::models::mmdit::{SD3Transformer2DModel, Sd3TransformerConfig};
use crate::models::t5::{T5Config, T5EncoderModel};
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{Vae, VaeConfig};
use crate::schedulers::SchedulerConfig;
use crate::tokenizer::t5::T5Tokenizer;
use crate::tokenizer::{ClipTokenizer, TokenizerFiles};
use crate::weights::ModuleLoader;

/// A network built from a `config.json`.
pub trait Network: Module + ModuleSnapshot + Sized {
    type Config;

    /// Reads the config `text` (the contents of `file`).
    fn parse_config(file: &str, text: &str) -> Result<Self::Config>;

    /// Builds the network `config` (read from `file`, named in errors) describes, with lazy
    /// parameters: nothing is allocated before weights are loaded.
    fn build(config: &Self::Config, file: &str, device: &Device) -> Result<Self>;
}

impl Network for ClipTextModel {
    type Config = ClipTextConfig;
    fn parse_config(file: &str, text: &str) -> Result<ClipTextConfig> {
        parse(file, text)
    }
    fn build(config: &ClipTextConfig, file: &str, device: &Device) -> Result<Self> {
        ClipTextModel::new(config, file, device)
    }
}

impl Network for UNet2DConditionModel {
    type Config = UNetConfig;
    fn parse_config(file: &str, text: &str) -> Result<UNetConfig> {
        parse(file, text)
    }
    fn build(config: &UNetConfig, file: &str, device: &Device) -> Result<Self> {
        UNet2DConditionModel::new(config, file, device)
    }
}

impl Network for SD3Transformer2DModel {
    type Config = Sd3TransformerConfig;
    fn parse_config(file: &str, text: &str) -> Result<Sd3TransformerConfig> {
        parse(file, text)
    }
    fn build(config: &Sd3TransformerConfig, file: &str, device: &Device) -> Result<Self> {
        SD3Transformer2DModel::new(config, file, device)
    }
}

impl Network for T5EncoderModel {
    type Config = T5Config;
    fn parse_config(file: &str, text: &str) -> Result<T5Config> {
        parse(file, text)
    }
    fn build(config: &T5Config, file: &str, device: &Device) -> Result<Self> {
        T5EncoderModel::new(config, file, device)
    }
}

impl Network for ControlNetModel {
    type Config = ControlNetConfig;
    fn parse_config(file: &str, text: &str) -> Result<ControlNetConfig> {
        parse(file, text)
    }
    fn build(config: &ControlNetConfig, file: &str, device: &Device) -> Result<Self> {
        ControlNetModel::new(config, file, device)
    }
}

impl Network for Vae {
    type Config = VaeConfig;
    fn parse_config(file: &str, text: &str) -> Result<VaeConfig> {
        VaeConfig::parse(file, text)
    }
    fn build(config: &VaeConfig, file: &str, device: &Device) -> Result<Self> {
        Vae::new(config, file, device)
    }
}

/// `component` as its config describes it, its weights not yet loaded.
pub fn build<N: Network>(
    files: &dyn ModelFiles,
    component: Component,
    device: &Device,
) -> Result<(N::Config, N)> {
    let path = component.config();
    let file = files.display(&path);
    let config = N::parse_config(&file, &files.require_text(&path)?)?;
    let network = N::build(&config, &file, device)?;
    Ok((config, network))
}

/// `component` built and its weights loaded, float weights in `dtype`.
pub fn network<N: Network>(
    files: &dyn ModelFiles,
    component: Component,
    device: &Device,
    dtype: DType,
) -> Result<(N::Config, N)> {
    let (config, network) = build::<N>(files, component, device)?;
    Ok((config, weights(files, component, network, device, dtype)?))
}

/// How much of a file is given to the reader at once.
const PIECE: usize = 64 << 20;

/// Fills `module` with `component`'s weights, read whole from `files`. Every parameter must
/// be present with its exact shape, and every stored tensor must belong to the module.
pub fn weights<M: Module + ModuleSnapshot>(
    files: &dyn ModelFiles,
    component: Component,
    module: M,
    device: &Device,
    dtype: DType,
) -> Result<M> {
    let WeightFiles {
        choices,
        mut reader,
    } = files.weights(component, device)?;
    let mut loader = ModuleLoader::for_component(module, component, (device, dtype));
    for choice in &choices {
        let Some(first) = files.read(&choice[0])? else {
            continue;
        };
        let mut first = Some(first);
        for path in choice {
            let bytes = match first.take() {
                Some(bytes) => bytes,
                None => files.require(path)?,
            };
            let file = files.display(path);
            reader.begin(&file)?;
            for piece in bytes.chunks(PIECE) {
                loader.apply(reader.push(piece)?, &file)?;
            }
            loader.apply(reader.end()?, &file)?;
        }
        reader.finish()?;
        return loader.finish(&files.display(&choice[0]));
    }
    let tried: Vec<&str> = choices.iter().map(|c| c[0].as_str()).collect();
    Err(Error::io(
        files.display(tried.first().copied().unwrap_or_default()),
        format!("not found (also tried {})", tried[1..].join(", ")),
    ))
}

/// The tokenizer in `folder` (`tokenizer`, `tokenizer_2`; see [`Component::tokenizer`]).
pub fn tokenizer(files: &dyn ModelFiles, folder: &str) -> Result<ClipTokenizer> {
    ClipTokenizer::new(&tokenizer_files(files, folder)?, &files.display(folder))
}

/// T5's tokenizer in `folder` (`tokenizer_3`).
pub fn t5_tokenizer(files: &dyn ModelFiles, folder: &str) -> Result<T5Tokenizer> {
    T5Tokenizer::new(&tokenizer_files(files, folder)?, &files.display(folder))
}

fn tokenizer_files(files: &dyn ModelFiles, folder: &str) -> Result<TokenizerFiles> {
    let paths = TokenizerPaths::new(folder);
    Ok(TokenizerFiles {
        tokenizer_json: files.read_text(&paths.tokenizer_json)?,
        vocab_json: files.read_text(&paths.vocab_json)?,
        merges_txt: files.read_text(&paths.merges_txt)?,
        tokenizer_config_json: files.read_text(&paths.tokenizer_config)?,
        special_tokens_map_json: files.read_text(&paths.special_tokens_map)?,
    })
}

pub fn scheduler_config(files: &dyn ModelFiles) -> Result<SchedulerConfig> {
    let path = component::SCHEDULER_CONFIG;
    SchedulerConfig::parse(&files.display(path), &files.require_text(path)?)
}

/// The text encoder of `files` with its weights, in `dtype`.
pub fn text_encoder(
    files: &dyn ModelFiles,
    device: &Device,
    dtype: DType,
) -> Result<(ClipTextConfig, ClipTextModel)> {
    network(files, Component::TextEncoder, device, dtype)
}

/// The UNet of `files` with its weights, in `dtype`.
pub fn unet(
    files: &dyn ModelFiles,
    device: &Device,
    dtype: DType,
) -> Result<(UNetConfig, UNet2DConditionModel)> {
    network(files, Component::Unet, device, dtype)
}

/// The VAE of `files` with its weights, in `dtype`.
pub fn vae(files: &dyn ModelFiles, device: &Device, dtype: DType) -> Result<(VaeConfig, Vae)> {
    network(files, Component::Vae, device, dtype)
}
