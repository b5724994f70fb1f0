//! `manifest.json`: typed, and checked as a whole when parsed, so that loaders only ever
//! see tensors that lie inside their shards with the bytes their dtype needs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::component::Component;
use crate::error::{Error, Result};
use crate::family::Family;
use crate::quant::{BlockFormat, Precision};

pub const FORMAT: &str = "webdiffusion-pack";
/// Version 2 stores CLIP's token embedding at 8 bits in q8 and q4 packs, as row blocks
/// (version 1 kept it in f16); both are read.
pub const VERSION: u32 = 2;
pub const MANIFEST: &str = "manifest.json";

/// No stored tensor has anywhere near this many values; larger shapes are refused before
/// any size is computed from them.
const MAX_VALUES: u64 = 1 << 40;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// What `convert --quant` was given.
    pub quant: Precision,
    /// The model family (`sd`, `sdxl`, `sd3`), so that a reader knows what a pack holds
    /// without reading its configs; absent in a ControlNet pack and in packs written before
    /// it was recorded (their `model_index.json` says it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// `model_index.json`, `unet/config.json`, … as JSON.
    pub configs: BTreeMap<String, serde_json::Value>,
    /// `tokenizer/vocab.json`, `tokenizer/merges.txt` or `tokenizer/tokenizer.json`, as text.
    #[serde(default)]
    pub tokenizer: BTreeMap<String, String>,
    pub components: BTreeMap<Component, ComponentEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentEntry {
    pub shards: Vec<Shard>,
    pub tensors: Vec<TensorEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shard {
    /// Path relative to the pack root.
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

/// How a tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredDType {
    F32,
    F16,
    Q8,
    Q4,
}

/// The dtype of quantization scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleDType {
    F16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorEntry {
    /// The checkpoint key (diffusers naming).
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: StoredDType,
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
    pub scale: ScaleDType,
}

impl QuantEntry {
    pub fn format(&self) -> BlockFormat {
        BlockFormat::new(self.bits, self.block)
    }
}

impl ComponentEntry {
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

    /// Checks shard paths, that every tensor lies inside the shards without overlapping
    /// another, and that its length is what its dtype and shape need.
    fn validate(&self) -> std::result::Result<(), String> {
        for shard in &self.shards {
            let inside = !shard.file.starts_with('/')
                && !shard.file.contains('\\')
                && shard
                    .file
                    .split('/')
                    .all(|p| !p.is_empty() && p != "." && p != "..");
            if !inside {
                return Err(format!("{:?} is not a path inside the pack", shard.file));
            }
        }
        let total = self
            .shards
            .iter()
            .try_fold(0u64, |n, s| n.checked_add(s.bytes))
            .ok_or("shard sizes overflow")?;
        let starts = self.shard_starts();
        let mut ranges = Vec::new();
        for t in &self.tensors {
            let start = self.start(&starts, t).unwrap_or(u64::MAX);
            let end = start.saturating_add(t.length);
            if end > total {
                return Err(format!("`{}` lies outside the component's shards", t.name));
            }
            ranges.push((start, end, &t.name));
            let expected = t.stored_bytes()?;
            if t.length != expected {
                return Err(format!(
                    "`{}`: {} bytes do not hold {:?} {:?}",
                    t.name, t.length, t.dtype, t.shape
                ));
            }
        }
        ranges.sort();
        if let Some(pair) = ranges.windows(2).find(|p| p[1].0 < p[0].1) {
            return Err(format!("`{}` and `{}` overlap", pair[0].2, pair[1].2));
        }
        Ok(())
    }
}

impl TensorEntry {
    /// The bytes this tensor's dtype and shape take.
    fn stored_bytes(&self) -> std::result::Result<u64, String> {
        let values = self
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .filter(|&n| n <= MAX_VALUES)
            .ok_or_else(|| format!("`{}`: shape {:?} is too large", self.name, self.shape))?;
        let bits = match (self.dtype, &self.quant) {
            (StoredDType::F32, None) => return Ok(values * 4),
            (StoredDType::F16, None) => return Ok(values * 2),
            (StoredDType::Q8, Some(q)) => (8, q),
            (StoredDType::Q4, Some(q)) => (4, q),
            (dtype, _) => {
                return Err(format!(
                    "`{}`: dtype {dtype:?} does not match its quant entry",
                    self.name
                ));
            }
        };
        let (bits, q) = bits;
        if q.bits != bits || !BlockFormat::BLOCKS.contains(&q.block) {
            return Err(format!(
                "`{}`: quant bits {} block {} (expected bits {bits}, block one of {:?})",
                self.name,
                q.bits,
                q.block,
                BlockFormat::BLOCKS
            ));
        }
        let [rows, cols] = matrix(&self.shape);
        let format = q.format();
        if !format.fits(cols) {
            return Err(format!(
                "`{}`: rows of {cols} are not whole blocks",
                self.name
            ));
        }
        Ok(format.bytes(rows, cols) as u64)
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
        if !(1..=VERSION).contains(&manifest.version) {
            return bad(
                "version",
                format!(
                    "is {}; this build reads versions 1 to {VERSION} (convert the model again)",
                    manifest.version
                ),
            );
        }
        if let Some(family) = &manifest.family
            && !Family::ALL.iter().any(|f| f.name() == family)
        {
            return bad(
                "family",
                format!("is {family:?}, a model family this build does not run"),
            );
        }
        if manifest.components.is_empty() {
            return bad("components", "is empty".into());
        }
        for (component, entry) in &manifest.components {
            let key = format!("components.{component}");
            if !manifest.configs.contains_key(&component.config()) {
                return bad(
                    "configs",
                    format!("has no {:?} for {key}", component.config()),
                );
            }
            if let Err(message) = entry.validate() {
                return bad(&key, message);
            }
        }
        Ok(manifest)
    }
}

/// A tensor as the `[rows, cols]` matrix the layers keep.
pub fn matrix(shape: &[usize]) -> [usize; 2] {
    match shape {
        [] => [1, 1],
        [n] => [1, *n],
        [rows, rest @ ..] => [*rows, rest.iter().product()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A valid one-component manifest with a q8 matrix and an f16 bias in one shard.
    fn manifest() -> serde_json::Value {
        json!({
            "format": FORMAT, "version": VERSION, "quant": "q8",
            "configs": {"vae/config.json": {}},
            "tokenizer": {},
            "components": {"vae": {
                "shards": [{"file": "vae/shard-00000.bin", "bytes": 1096, "sha256": "00"}],
                "tensors": [
                    {"name": "w", "shape": [8, 128], "dtype": "q8",
                     "quant": {"bits": 8, "block": 32, "scale": "f16"},
                     "shard": 0, "offset": 0, "length": 1088},
                    {"name": "b", "shape": [4], "dtype": "f16", "shard": 0, "offset": 1088, "length": 8}
                ]
            }}
        })
    }

    fn parse(value: &serde_json::Value) -> Result<Manifest> {
        Manifest::parse("m.json", &value.to_string())
    }

    /// A change to a valid manifest, and what the error must name.
    type Case = (Box<dyn Fn(&mut serde_json::Value)>, &'static str);

    fn error(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut value = manifest();
        edit(&mut value);
        parse(&value).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_manifest_parses_to_typed_values() {
        let m = parse(&manifest()).unwrap();
        assert_eq!(m.quant, Precision::Q8);
        let vae = &m.components[&Component::Vae];
        assert_eq!(vae.tensors[0].dtype, StoredDType::Q8);
        assert_eq!(
            vae.tensors[0].quant.as_ref().unwrap().scale,
            ScaleDType::F16
        );
    }

    #[test]
    fn packs_of_version_1_are_still_read() {
        let mut v1 = manifest();
        v1["version"] = json!(1);
        assert_eq!(parse(&v1).unwrap().version, 1);
    }

    #[test]
    fn the_family_is_recorded_and_an_unknown_one_refused_by_name() {
        assert_eq!(parse(&manifest()).unwrap().family, None, "older packs");
        let mut sdxl = manifest();
        sdxl["family"] = json!("sdxl");
        assert_eq!(parse(&sdxl).unwrap().family.as_deref(), Some("sdxl"));
        let message = error(|v| v["family"] = json!("flux"));
        assert!(
            message.contains("m.json") && message.contains("\"flux\""),
            "{message}"
        );
    }

    #[test]
    fn unknown_names_and_values_are_refused_when_parsing() {
        let cases: Vec<Case> = vec![
            (Box::new(|v| v["quant"] = json!("q3")), "quant"),
            (
                Box::new(|v| v["components"]["vae"]["tensors"][1]["dtype"] = json!("f8")),
                "tensors[1].dtype",
            ),
            (
                Box::new(|v| v["components"]["vae"]["tensors"][0]["quant"]["scale"] = json!("f32")),
                "scale",
            ),
            (
                Box::new(|v| {
                    let entry = v["components"]["vae"].take();
                    v["components"]["unet2"] = entry;
                }),
                "unet2",
            ),
        ];
        for (edit, expected) in cases {
            let message = error(edit);
            assert!(
                message.contains(expected),
                "expected {expected:?} in {message}"
            );
        }
    }

    #[test]
    fn sizes_that_do_not_add_up_are_refused() {
        let cases: Vec<Case> = vec![
            // A block size that would wrap as a byte (288 = 32 + 256).
            (
                Box::new(|v| v["components"]["vae"]["tensors"][0]["quant"]["block"] = json!(288)),
                "block",
            ),
            // A shape whose size overflows, with a length of 0.
            (
                Box::new(|v| {
                    v["components"]["vae"]["tensors"][1]["shape"] = json!([1u64 << 62, 1]);
                    v["components"]["vae"]["tensors"][1]["length"] = json!(0);
                }),
                "too large",
            ),
            (
                Box::new(|v| v["components"]["vae"]["tensors"][1]["length"] = json!(6)),
                "bytes do not hold",
            ),
            (
                Box::new(|v| v["components"]["vae"]["tensors"][1]["offset"] = json!(1080)),
                "overlap",
            ),
            (
                Box::new(|v| v["components"]["vae"]["tensors"][1]["shard"] = json!(3)),
                "outside",
            ),
            (
                Box::new(|v| v["components"]["vae"]["shards"][0]["file"] = json!("../x.bin")),
                "inside the pack",
            ),
            (
                Box::new(|v| v["components"]["vae"]["tensors"][0]["dtype"] = json!("q4")),
                "bits",
            ),
            (Box::new(|v| v["configs"] = json!({})), "vae/config.json"),
            (Box::new(|v| v["version"] = json!(7)), "version"),
        ];
        for (edit, expected) in cases {
            let message = error(edit);
            assert!(
                message.contains(expected),
                "expected {expected:?} in {message}"
            );
            assert!(message.contains("m.json"), "{message}");
        }
    }
}
