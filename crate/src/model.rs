//! A diffusers model folder (`model_index.json`, `tokenizer/`, `text_encoder/`, `unet/`,
//! `vae/`, `scheduler/`) read through [`ModelFiles`], so the same code loads from a
//! directory natively and from fetched bytes in the browser.

use burn::prelude::*;
use burn::tensor::DType;

use crate::config::parse;
use crate::error::{Error, Result};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{AutoencoderKL, VaeConfig};
use crate::schedulers::SchedulerConfig;
use crate::tokenizer::{ClipTokenizer, TokenizerFiles};
use crate::weights;

/// Where a model's files come from.
pub trait ModelFiles {
    /// The bytes of `path` (relative to the model root, `/`-separated), `None` if absent.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>>;

    /// How `path` is named in messages (e.g. with the folder or URL in front).
    fn display(&self, path: &str) -> String;

    fn read_text(&self, path: &str) -> Result<Option<String>> {
        match self.read(path)? {
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| Error::io(self.display(path), "is not UTF-8 text")),
            None => Ok(None),
        }
    }

    fn require(&self, path: &str) -> Result<Vec<u8>> {
        self.read(path)?
            .ok_or_else(|| Error::io(self.display(path), "not found"))
    }

    fn require_text(&self, path: &str) -> Result<String> {
        self.read_text(path)?
            .ok_or_else(|| Error::io(self.display(path), "not found"))
    }

    /// The manifest when these files are a model pack (see `pack`).
    fn pack(&self) -> Option<&crate::pack::Manifest> {
        None
    }

    /// The first of `candidates` that exists, with its path.
    fn first_of(&self, candidates: &[&str]) -> Result<(String, Vec<u8>)> {
        for path in candidates {
            if let Some(bytes) = self.read(path)? {
                return Ok((path.to_string(), bytes));
            }
        }
        Err(Error::io(
            self.display(candidates[0]),
            format!("not found (also tried {})", candidates[1..].join(", ")),
        ))
    }
}

/// A model folder on disk.
#[cfg(not(target_family = "wasm"))]
pub struct DirFiles(pub std::path::PathBuf);

#[cfg(not(target_family = "wasm"))]
impl ModelFiles for DirFiles {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match std::fs::read(self.0.join(path)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(self.display(path), e)),
        }
    }

    fn display(&self, path: &str) -> String {
        self.0.join(path).display().to_string()
    }
}

/// The model at `path`: a pack (a folder with `manifest.json`) or a diffusers folder.
#[cfg(not(target_family = "wasm"))]
pub fn open_dir(path: &std::path::Path) -> Result<Box<dyn ModelFiles>> {
    if path.is_file() {
        return Err(Error::io(
            path.display(),
            "is a file; give a diffusers folder or a pack (single-file checkpoints are \
             converted with `webdiffusion convert`)",
        ));
    }
    if !path.is_dir() {
        return Err(Error::io(path.display(), "is not a model folder"));
    }
    let dir = DirFiles(path.to_path_buf());
    Ok(match crate::pack::PackFiles::open(dir)? {
        Some(pack) => Box::new(pack),
        None => Box::new(DirFiles(path.to_path_buf())),
    })
}

/// A model whose files are already in memory (fetched in the browser), keyed by path.
pub struct MemoryFiles {
    /// Where the files came from, for messages (a URL or folder).
    pub base: String,
    pub files: std::collections::HashMap<String, Vec<u8>>,
}

impl ModelFiles for MemoryFiles {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.files.get(path).cloned())
    }

    fn display(&self, path: &str) -> String {
        format!("{}/{path}", self.base.trim_end_matches('/'))
    }
}

/// Every file a diffusers folder may hold that loading reads, weights last. The browser
/// fetches these (absent ones are skipped) before loading.
pub const MODEL_FILES: &[&str] = &[
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
];

/// Weight files of a component, preferred first: full precision, then the hub's fp16
/// variant.
pub fn weight_candidates(component: &str, stem: &str) -> [String; 2] {
    [
        format!("{component}/{stem}.safetensors"),
        format!("{component}/{stem}.fp16.safetensors"),
    ]
}

fn load_weights<M>(
    files: &dyn ModelFiles,
    module: M,
    component: &str,
    stem: &str,
    device: &Device,
    dtype: DType,
) -> Result<M>
where
    M: burn::module::Module + burn::store::ModuleSnapshot,
{
    if let Some(manifest) = files.pack() {
        return crate::pack::load_component(files, manifest, component, module, device, dtype);
    }
    let candidates = weight_candidates(component, stem);
    let (path, bytes) = files.first_of(&[&candidates[0], &candidates[1]])?;
    weights::load(module, bytes, &files.display(&path), dtype)
}

pub fn load_tokenizer(files: &dyn ModelFiles) -> Result<ClipTokenizer> {
    let tokenizer_files = TokenizerFiles {
        tokenizer_json: files.read_text("tokenizer/tokenizer.json")?,
        vocab_json: files.read_text("tokenizer/vocab.json")?,
        merges_txt: files.read_text("tokenizer/merges.txt")?,
        tokenizer_config_json: files.read_text("tokenizer/tokenizer_config.json")?,
        special_tokens_map_json: files.read_text("tokenizer/special_tokens_map.json")?,
    };
    ClipTokenizer::new(&tokenizer_files, &files.display("tokenizer"))
}

/// The text encoder described by `text_encoder/config.json`, its weights not yet loaded.
pub fn build_text_encoder(
    files: &dyn ModelFiles,
    device: &Device,
) -> Result<(ClipTextConfig, ClipTextModel)> {
    let path = "text_encoder/config.json";
    let config: ClipTextConfig = parse(&files.display(path), &files.require_text(path)?)?;
    let model = ClipTextModel::new(&config, &files.display(path), device)?;
    Ok((config, model))
}

/// The UNet described by `unet/config.json`, its weights not yet loaded.
pub fn build_unet(
    files: &dyn ModelFiles,
    device: &Device,
) -> Result<(UNetConfig, UNet2DConditionModel)> {
    let path = "unet/config.json";
    let config: UNetConfig = parse(&files.display(path), &files.require_text(path)?)?;
    let model = UNet2DConditionModel::new(&config, &files.display(path), device)?;
    Ok((config, model))
}

/// The VAE described by `vae/config.json`, its weights not yet loaded.
pub fn build_vae(files: &dyn ModelFiles, device: &Device) -> Result<(VaeConfig, AutoencoderKL)> {
    let path = "vae/config.json";
    let config: VaeConfig = parse(&files.display(path), &files.require_text(path)?)?;
    let model = AutoencoderKL::new(&config, &files.display(path), device)?;
    Ok((config, model))
}

pub fn load_text_encoder(
    files: &dyn ModelFiles,
    device: &Device,
    dtype: DType,
) -> Result<(ClipTextConfig, ClipTextModel)> {
    let (config, model) = build_text_encoder(files, device)?;
    let model = load_weights(files, model, "text_encoder", "model", device, dtype)?;
    Ok((config, model))
}

pub fn load_unet(
    files: &dyn ModelFiles,
    device: &Device,
    dtype: DType,
) -> Result<(UNetConfig, UNet2DConditionModel)> {
    let (config, model) = build_unet(files, device)?;
    let model = load_weights(
        files,
        model,
        "unet",
        "diffusion_pytorch_model",
        device,
        dtype,
    )?;
    Ok((config, model))
}

pub fn load_vae(
    files: &dyn ModelFiles,
    device: &Device,
    dtype: DType,
) -> Result<(VaeConfig, AutoencoderKL)> {
    let (config, model) = build_vae(files, device)?;
    let model = load_weights(
        files,
        model,
        "vae",
        "diffusion_pytorch_model",
        device,
        dtype,
    )?;
    Ok((config, model))
}

/// The scheduler config of a model folder.
pub fn load_scheduler_config(files: &dyn ModelFiles) -> Result<SchedulerConfig> {
    let path = "scheduler/scheduler_config.json";
    SchedulerConfig::parse(&files.display(path), &files.require_text(path)?)
}
