//! Model packs: what `webdiffusion convert` writes and every loader reads, natively and in
//! the browser.
//!
//! A pack is a folder holding `manifest.json` and, per component, shard files
//! (`unet/shard-00000.bin`, …) of at most [`SHARD_BYTES`]. The manifest holds the format
//! version, the model's configs (as JSON), the tokenizer files (as text), and for each
//! component its shards (file, bytes, sha256) and its tensors: checkpoint name, shape,
//! storage dtype (`f32`, `f16`, `q8`, `q4`), for quantized ones the block size and scale
//! dtype, and where the bytes are: the shard they start in, the offset there, the length.
//! A component's shards read one after another form one stream; a tensor larger than a
//! shard continues into the next. Quantized bytes are laid out as `quant` describes.
//!
//! A pack is one more source of model files ([`PackFiles`]): configs come from the
//! manifest, weights from the shards, each checked against its sha256 before any tensor in
//! it is used.

#[cfg(not(target_family = "wasm"))]
pub mod convert;
mod manifest;
mod reader;
#[cfg(not(target_family = "wasm"))]
mod shards;
#[cfg(not(target_family = "wasm"))]
pub mod single_file;
#[cfg(not(target_family = "wasm"))]
mod source;

pub use manifest::{
    ComponentEntry, FORMAT, MANIFEST, Manifest, QuantEntry, ScaleDType, Shard, StoredDType,
    TensorEntry, VERSION, matrix,
};
pub use reader::{ShardReader, decode};
#[cfg(not(target_family = "wasm"))]
pub use source::Source;

use burn::prelude::Device;
use burn::tensor::DType;

use crate::component::Component;
use crate::error::{Error, Result};
use crate::files::{ModelFiles, WeightFiles};

/// The largest shard: what a browser fetches, hashes and caches as one piece.
pub const SHARD_BYTES: usize = 64 << 20;

/// A pack seen as a model folder: configs and tokenizer files come from the manifest,
/// shards from `inner`.
pub struct PackFiles<F> {
    pub inner: F,
    pub manifest: Manifest,
}

impl<F: ModelFiles> PackFiles<F> {
    /// Reads `manifest.json` through `inner`; `None` when it has none (a diffusers folder).
    pub fn open(inner: F) -> Result<Option<Self>> {
        let Some(text) = inner.read_text(MANIFEST)? else {
            return Ok(None);
        };
        let manifest = Manifest::parse(&inner.display(MANIFEST), &text)?;
        Ok(Some(Self { inner, manifest }))
    }
}

impl<F: ModelFiles> ModelFiles for PackFiles<F> {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        if let Some(config) = self.manifest.configs.get(path) {
            return Ok(Some(config.to_string().into_bytes()));
        }
        if let Some(text) = self.manifest.tokenizer.get(path) {
            return Ok(Some(text.clone().into_bytes()));
        }
        if crate::component::is_tokenizer_file(path) || path.ends_with(".json") {
            // A pack carries every config and tokenizer file it has in its manifest.
            return Ok(None);
        }
        self.inner.read(path)
    }

    fn display(&self, path: &str) -> String {
        self.inner.display(path)
    }

    fn weights(&self, component: Component, device: &Device) -> Result<WeightFiles> {
        let entry = self.manifest.components.get(&component).ok_or_else(|| {
            Error::io(
                self.display(MANIFEST),
                format!("has no component {component:?}"),
            )
        })?;
        let files = entry.shards.iter().map(|s| s.file.clone()).collect();
        let names = entry.shards.iter().map(|s| self.display(&s.file)).collect();
        let f16_scales = device.supports_dtype(DType::F16);
        Ok(WeightFiles {
            choices: vec![files],
            reader: Box::new(ShardReader::new(entry.clone(), names, f16_scales)),
        })
    }
}

/// The component (a ControlNet, a VAE) at `path`: a pack holding it, or the folder it is
/// published as (`config.json` and weights at its root).
#[cfg(not(target_family = "wasm"))]
pub fn open_component(path: &std::path::Path, component: Component) -> Result<Box<dyn ModelFiles>> {
    use crate::files::{ComponentDir, DirFiles};
    if !path.is_dir() {
        return Err(Error::io(
            path.display(),
            format!("is not a {component} folder (config.json and weights) or pack"),
        ));
    }
    if let Some(pack) = PackFiles::open(DirFiles(path.to_path_buf()))? {
        if !pack.manifest.components.contains_key(&component) {
            return Err(Error::io(
                path.join(MANIFEST).display(),
                format!("is a pack without a {component}"),
            ));
        }
        return Ok(Box::new(pack));
    }
    Ok(Box::new(ComponentDir {
        inner: DirFiles(path.to_path_buf()),
        component,
    }))
}

/// The model each of `urls` belongs to, for listing a cache by model: the folder of a
/// `manifest.json` (a pack), `model_index.json` (a diffusers pipeline) or `config.json` (a
/// component published on its own) among `urls`. A file belongs to the outermost such
/// folder above it; a file under none (a LoRA) is a model by itself.
pub fn model_roots(urls: &[&str]) -> Vec<String> {
    let markers = [MANIFEST, crate::component::MODEL_INDEX, "config.json"];
    let roots: Vec<&str> = urls
        .iter()
        .filter_map(|url| {
            let (dir, name) = url.rsplit_once('/')?;
            markers.contains(&name).then_some(dir)
        })
        .collect();
    urls.iter()
        .map(|url| {
            roots
                .iter()
                .filter(|r| {
                    url.strip_prefix(**r)
                        .is_some_and(|rest| rest.starts_with('/'))
                })
                .min_by_key(|r| r.len())
                .map_or(url.to_string(), |r| r.to_string())
        })
        .collect()
}

/// The model at `path`: a pack (a folder with `manifest.json`) or a diffusers folder.
#[cfg(not(target_family = "wasm"))]
pub fn open_dir(path: &std::path::Path) -> Result<Box<dyn ModelFiles>> {
    use crate::files::DirFiles;
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
    Ok(match PackFiles::open(dir)? {
        Some(pack) => Box::new(pack),
        None => Box::new(DirFiles(path.to_path_buf())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_files_group_by_model() {
        let urls = [
            "https://h/m/sd-turbo/manifest.json",
            "https://h/m/sd-turbo/unet/shard-00000.bin",
            "https://h/m/sd/model_index.json",
            "https://h/m/sd/unet/config.json",
            "https://h/m/sd/unet/diffusion_pytorch_model.fp16.safetensors",
            "https://h/cn/config.json",
            "https://h/cn/diffusion_pytorch_model.safetensors",
            "https://h/loras/style.safetensors",
        ];
        let roots = model_roots(&urls);
        assert_eq!(
            roots,
            [
                "https://h/m/sd-turbo",
                "https://h/m/sd-turbo",
                "https://h/m/sd",
                "https://h/m/sd",
                "https://h/m/sd",
                "https://h/cn",
                "https://h/cn",
                "https://h/loras/style.safetensors",
            ]
        );
    }
}
