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
//! Loading checks every shard's sha256 before any tensor in it is used.

#[cfg(not(target_family = "wasm"))]
pub mod builtin;
#[cfg(not(target_family = "wasm"))]
pub mod convert;
mod loader;
#[cfg(not(target_family = "wasm"))]
mod shards;
#[cfg(not(target_family = "wasm"))]
pub mod single_file;

pub use loader::{PackLoader, load_component, sha256_hex};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::model::ModelFiles;
use crate::quant::BlockFormat;

pub const FORMAT: &str = "webdiffusion-pack";
pub const VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
/// The largest shard: what a browser fetches, hashes and caches as one piece.
pub const SHARD_BYTES: usize = 64 << 20;
/// The components a pack holds, in loading order.
pub const COMPONENTS: &[&str] = &["text_encoder", "unet", "vae"];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// `f16`, `q8` or `q4`: what `convert --quant` was given.
    pub quant: String,
    /// `model_index.json`, `unet/config.json`, … as JSON.
    pub configs: BTreeMap<String, serde_json::Value>,
    /// `tokenizer/vocab.json`, `tokenizer/merges.txt` or `tokenizer/tokenizer.json`, as text.
    pub tokenizer: BTreeMap<String, String>,
    pub components: BTreeMap<String, Component>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Component {
    pub shards: Vec<Shard>,
    pub tensors: Vec<TensorEntry>,
}

impl Component {
    /// Where each shard starts in the component's stream.
    pub fn shard_starts(&self) -> Vec<u64> {
        self.shards
            .iter()
            .scan(0u64, |at, s| {
                let start = *at;
                *at = at.saturating_add(s.bytes);
                Some(start)
            })
            .collect()
    }

    /// Where `tensor` starts in the stream, `None` if its shard does not exist.
    pub fn start(&self, starts: &[u64], tensor: &TensorEntry) -> Option<u64> {
        Some(starts.get(tensor.shard)?.saturating_add(tensor.offset))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shard {
    /// Path relative to the pack root.
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorEntry {
    /// The checkpoint key (diffusers naming).
    pub name: String,
    pub shape: Vec<usize>,
    /// `f32`, `f16`, `q8` or `q4`.
    pub dtype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<QuantEntry>,
    pub shard: usize,
    pub offset: u64,
    pub length: u64,
}

/// How a quantized tensor's bytes are laid out (see `quant`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuantEntry {
    pub bits: u32,
    pub block: usize,
    /// Always `f16`.
    pub scale: String,
}

impl QuantEntry {
    pub fn format(&self) -> BlockFormat {
        BlockFormat::new(self.bits, self.block)
    }
}

impl Manifest {
    /// Parses and checks `manifest.json` (named `file` in errors).
    pub fn parse(file: &str, text: &str) -> Result<Self> {
        let manifest: Manifest = crate::config::parse(file, text)?;
        let bad = |key: &str, message: String| Err(Error::config(file, key, message));
        if manifest.format != FORMAT {
            return bad(
                "format",
                format!("is {:?}, expected {FORMAT:?}", manifest.format),
            );
        }
        if manifest.version != VERSION {
            return bad(
                "version",
                format!(
                    "is {}; this build reads version {VERSION} (convert the model again)",
                    manifest.version
                ),
            );
        }
        for name in COMPONENTS {
            let Some(component) = manifest.components.get(*name) else {
                return bad("components", format!("has no {name:?}"));
            };
            for shard in &component.shards {
                let inside = !shard.file.starts_with('/')
                    && !shard.file.contains('\\')
                    && shard
                        .file
                        .split('/')
                        .all(|p| !p.is_empty() && p != "." && p != "..");
                if !inside {
                    return bad(
                        &format!("components.{name}.shards"),
                        format!("{:?} is not a path inside the pack", shard.file),
                    );
                }
            }
            let total: u64 = component.shards.iter().map(|s| s.bytes).sum();
            let starts = component.shard_starts();
            let mut ranges = Vec::new();
            for t in &component.tensors {
                let start = component.start(&starts, t).unwrap_or(u64::MAX);
                let end = start.saturating_add(t.length);
                if end > total {
                    return bad(
                        &format!("components.{name}.tensors"),
                        format!("`{}` lies outside the component's shards", t.name),
                    );
                }
                ranges.push((start, end, &t.name));
                let (dtype, quant) = (t.dtype.as_str(), &t.quant);
                let expected = match (dtype, quant) {
                    ("f32", None) => t.shape.iter().product::<usize>() * 4,
                    ("f16", None) => t.shape.iter().product::<usize>() * 2,
                    ("q8" | "q4", Some(q)) if q.scale == "f16" && q.bits == bits(dtype) => {
                        let [rows, cols] = matrix(&t.shape);
                        let f = q.format();
                        if !f.fits(cols) {
                            return bad(
                                &format!("components.{name}.tensors"),
                                format!("`{}`: rows of {cols} are not whole blocks", t.name),
                            );
                        }
                        f.bytes(rows, cols)
                    }
                    _ => {
                        return bad(
                            &format!("components.{name}.tensors"),
                            format!("`{}`: unsupported dtype {dtype:?}", t.name),
                        );
                    }
                };
                if t.length != expected as u64 {
                    return bad(
                        &format!("components.{name}.tensors"),
                        format!(
                            "`{}`: {} bytes do not hold {dtype} {:?}",
                            t.name, t.length, t.shape
                        ),
                    );
                }
            }
            ranges.sort();
            if let Some(pair) = ranges.windows(2).find(|p| p[1].0 < p[0].1) {
                return bad(
                    &format!("components.{name}.tensors"),
                    format!("`{}` and `{}` overlap", pair[0].2, pair[1].2),
                );
            }
        }
        Ok(manifest)
    }
}

fn bits(dtype: &str) -> u32 {
    if dtype == "q8" { 8 } else { 4 }
}

/// A tensor as the `[rows, cols]` matrix the layers keep.
pub fn matrix(shape: &[usize]) -> [usize; 2] {
    match shape {
        [] => [1, 1],
        [n] => [1, *n],
        [rows, rest @ ..] => [*rows, rest.iter().product()],
    }
}

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
        if path.starts_with("tokenizer/") || path.ends_with(".json") {
            // A pack carries every config and tokenizer file it has in its manifest.
            return Ok(None);
        }
        self.inner.read(path)
    }

    fn display(&self, path: &str) -> String {
        self.inner.display(path)
    }

    fn pack(&self) -> Option<&Manifest> {
        Some(&self.manifest)
    }
}
