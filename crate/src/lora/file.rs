//! Reading a LoRA file: its format told from its keys (diffusers, PEFT or Kohya/A1111),
//! every layer's `down`/`up` pair and alpha collected and checked, nothing yet matched to
//! a model (Kohya's underscored names need the model's layer list, see `super`).

use std::collections::BTreeMap;

use crate::component::Component;
use crate::error::{Error, Result};
use crate::weights::finite_floats;
use crate::weights::safetensors::SafetensorsFile;

/// Which key layout a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `unet.<module>.lora.down.weight`, `text_encoder.<module>.lora_linear_layer.down.weight`
    /// (older: `unet.<module>.processor.to_q_lora.down.weight`).
    Diffusers,
    /// `unet.<module>.lora_A.weight` / `.lora_B.weight`.
    Peft,
    /// `lora_unet_<module_with_underscores>.lora_down.weight` / `.lora_up.weight` / `.alpha`.
    Kohya,
}

/// Where a layer's factors go: a module path (diffusers naming, dots) or, for Kohya files,
/// the module path with every dot replaced by `_`, to be looked up in the model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Path(String),
    Underscored(String),
}

/// A float tensor of the file.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The key in the file, for messages.
    pub key: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// One adapted layer.
#[derive(Debug, Clone)]
pub struct Layer {
    /// `[rank, in]` (a convolution's `[rank, c_in, kh, kw]`).
    pub down: Stored,
    /// `[out, rank]` (a convolution's `[out, rank, 1, 1]`).
    pub up: Stored,
    /// `None`: alpha = rank.
    pub alpha: Option<f32>,
}

impl Layer {
    pub fn rank(&self) -> usize {
        self.down.shape[0]
    }

    /// `alpha / rank`, what `up · down` is multiplied by.
    pub fn scale(&self) -> f32 {
        self.alpha.map_or(1.0, |a| a / self.rank() as f32)
    }
}

/// A LoRA file, read and checked.
#[derive(Debug, Clone)]
pub struct LoraFile {
    /// The file as named in messages.
    pub file: String,
    pub format: Format,
    pub layers: BTreeMap<(Component, Target), Layer>,
}

/// What a key says: the layer it belongs to and which factor it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Down,
    Up,
    Alpha,
}

impl LoraFile {
    /// Reads the safetensors `bytes` of the LoRA file `file`.
    pub fn parse(bytes: &[u8], file: &str) -> Result<Self> {
        if bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80) {
            return Err(Error::io(
                file,
                "is a PyTorch pickle (.pt/.ckpt), which can run code when loaded: only \
                 .safetensors LoRA files are read",
            ));
        }
        let st = SafetensorsFile::parse(bytes, file)?;
        let keys: Vec<&str> = st.tensors().map(|(t, _)| t.name.as_str()).collect();
        let format = detect(&keys, file)?;
        let metadata_alphas = peft_alphas(&st.header.metadata);
        let mut parts: BTreeMap<(Component, Target), [Option<Stored>; 3]> = BTreeMap::new();
        for (info, data) in st.tensors() {
            let key = info.name.as_str();
            let (component, target, part) =
                classify(key, format).ok_or_else(|| unexpected(file, key, format))?;
            let values = finite_floats(file, key, info.dtype, data)?;
            let stored = Stored {
                key: key.to_string(),
                shape: info.shape.clone(),
                values,
            };
            let slot = &mut parts.entry((component, target)).or_default()[part as usize];
            if slot.is_some() {
                return Err(Error::io(file, format!("`{key}` is given twice")));
            }
            *slot = Some(stored);
        }
        let mut layers = BTreeMap::new();
        for ((component, target), [down, up, alpha]) in parts {
            let name = match &target {
                Target::Path(p) | Target::Underscored(p) => p.clone(),
            };
            let (Some(down), Some(up)) = (down, up) else {
                return Err(Error::io(
                    file,
                    format!("layer `{name}` of the {component} has no down/up pair"),
                ));
            };
            let alpha = match alpha {
                Some(a) if a.values.len() == 1 => Some(a.values[0]),
                Some(a) => {
                    return Err(Error::io(
                        file,
                        format!(
                            "`{}` has {} values; an alpha is one number",
                            a.key,
                            a.values.len()
                        ),
                    ));
                }
                None => metadata_alphas.get(component, &name),
            };
            let layer = Layer { down, up, alpha };
            check_pair(&layer, file)?;
            layers.insert((component, target), layer);
        }
        if layers.is_empty() {
            return Err(Error::io(file, "holds no LoRA layers"));
        }
        Ok(Self {
            file: file.into(),
            format,
            layers,
        })
    }
}

/// `down` is `[rank, in…]`, `up` is `[out, rank]` or `[out, rank, 1, 1]`.
fn check_pair(layer: &Layer, file: &str) -> Result<()> {
    let (down, up) = (&layer.down.shape, &layer.up.shape);
    let up_ok = matches!(up.as_slice(), [_, _] | [_, _, 1, 1]);
    let down_ok = matches!(down.len(), 2 | 4) && down.iter().all(|&d| d > 0);
    if !up_ok || !down_ok || up[1] != down[0] {
        return Err(Error::io(
            file,
            format!(
                "`{}` {down:?} and `{}` {up:?} are not a rank-{} pair (down [rank, in], up [out, rank])",
                layer.down.key,
                layer.up.key,
                down.first().copied().unwrap_or(0)
            ),
        ));
    }
    Ok(())
}

fn unexpected(file: &str, key: &str, format: Format) -> Error {
    Error::io(
        file,
        format!("`{key}` is not a LoRA key of the {format:?} layout the file's other keys use"),
    )
}

/// The format of a file from its keys; LyCORIS variants and SDXL files are refused by name.
fn detect(keys: &[&str], file: &str) -> Result<Format> {
    let any = |f: &dyn Fn(&str) -> bool| keys.iter().any(|k| f(k));
    for (marker, name) in [
        (".hada_w1_a", "LyCORIS LoHa"),
        (".lokr_w1", "LyCORIS LoKr"),
        (".lokr_w1_a", "LyCORIS LoKr"),
        (".dora_scale", "DoRA"),
        (
            ".lora_mid.weight",
            "LyCORIS LoCon with a Tucker (CP) mid factor",
        ),
        (".magnitude", "DoRA"),
    ] {
        if any(&|k| k.contains(marker)) {
            return Err(Error::io(
                file,
                format!(
                    "is a {name} file; only plain LoRA (down/up pairs, LoCon included) is supported"
                ),
            ));
        }
    }
    if any(&|k| {
        ["lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"]
            .iter()
            .any(|p| k.starts_with(p))
    }) {
        return Ok(Format::Kohya);
    }
    if any(&|k| k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight")) {
        return Ok(Format::Peft);
    }
    if any(&|k| {
        k.contains(".lora.down.") || k.contains(".lora_linear_layer.") || k.contains("_lora.down.")
    }) {
        return Ok(Format::Diffusers);
    }
    Err(Error::io(
        file,
        "has no LoRA keys (expected diffusers `….lora.down.weight`, PEFT `….lora_A.weight` or \
         Kohya `lora_unet_….lora_down.weight` names)",
    ))
}

/// `(component, target, part)` of a key in `format`; `None` if it is not a LoRA key.
fn classify(key: &str, format: Format) -> Option<(Component, Target, Part)> {
    match format {
        Format::Kohya => {
            let (name, part) = [
                (".lora_down.weight", Part::Down),
                (".lora_up.weight", Part::Up),
                (".alpha", Part::Alpha),
            ]
            .into_iter()
            .find_map(|(suffix, part)| Some((key.strip_suffix(suffix)?, part)))?;
            let (component, rest) = if let Some(rest) = name.strip_prefix("lora_unet_") {
                (Component::Unet, rest)
            } else if let Some(rest) = name.strip_prefix("lora_te2_") {
                (Component::TextEncoder2, rest)
            } else {
                let rest = name
                    .strip_prefix("lora_te_")
                    .or_else(|| name.strip_prefix("lora_te1_"))?;
                (Component::TextEncoder, rest)
            };
            Some((component, Target::Underscored(rest.to_string()), part))
        }
        Format::Diffusers | Format::Peft => {
            let (component, rest) = if let Some(rest) = key.strip_prefix("unet.") {
                (Component::Unet, rest)
            } else if let Some(rest) = key.strip_prefix("text_encoder_2.") {
                (Component::TextEncoder2, rest)
            } else {
                (Component::TextEncoder, key.strip_prefix("text_encoder.")?)
            };
            let (module, part) = diffusers_module(rest)?;
            Some((component, Target::Path(module), part))
        }
    }
}

/// The module path and part of a diffusers or PEFT key (after its component prefix).
fn diffusers_module(rest: &str) -> Option<(String, Part)> {
    for (suffix, part) in [
        (".lora.down.weight", Part::Down),
        (".lora.up.weight", Part::Up),
        (".lora_linear_layer.down.weight", Part::Down),
        (".lora_linear_layer.up.weight", Part::Up),
        (".lora_A.weight", Part::Down),
        (".lora_B.weight", Part::Up),
        (".alpha", Part::Alpha),
    ] {
        if let Some(module) = rest.strip_suffix(suffix) {
            return Some((module.to_string(), part));
        }
    }
    // Older diffusers attention processors: `<attn>.processor.to_q_lora.down.weight`.
    let (attn, tail) = rest.split_once(".processor.")?;
    let (proj, part) = tail.split_once("_lora.")?;
    let part = match part {
        "down.weight" => Part::Down,
        "up.weight" => Part::Up,
        _ => return None,
    };
    let proj = match proj {
        "to_q" | "to_k" | "to_v" => proj,
        "to_out" => "to_out.0",
        _ => return None,
    };
    Some((format!("{attn}.{proj}"), part))
}

/// A component's alphas from metadata: the default, and per-module overrides (suffix
/// patterns).
type ComponentAlphas = (Option<f32>, Vec<(String, f32)>);

/// Alphas a diffusers or PEFT file keeps in its safetensors metadata: diffusers'
/// `save_lora_weights` writes the LoRA configs as `lora_adapter_metadata`, a JSON object
/// whose keys are prefixed by component (`unet.lora_alpha`, `unet.alpha_pattern`, …).
#[derive(Default)]
struct PeftAlphas {
    by_component: BTreeMap<Component, ComponentAlphas>,
}

fn peft_alphas(metadata: &BTreeMap<String, String>) -> PeftAlphas {
    let mut out = PeftAlphas::default();
    let Some(config) = metadata
        .get("lora_adapter_metadata")
        .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
    else {
        return out;
    };
    for component in [
        Component::Unet,
        Component::TextEncoder,
        Component::TextEncoder2,
    ] {
        let get = |key: &str| config.get(format!("{}.{key}", component.name()));
        let default = get("lora_alpha").and_then(|a| a.as_f64()).map(|a| a as f32);
        let patterns: Vec<(String, f32)> = get("alpha_pattern")
            .and_then(|p| p.as_object())
            .map(|p| {
                p.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_f64()? as f32)))
                    .collect()
            })
            .unwrap_or_default();
        if default.is_some() || !patterns.is_empty() {
            out.by_component.insert(component, (default, patterns));
        }
    }
    out
}

impl PeftAlphas {
    fn get(&self, component: Component, module: &str) -> Option<f32> {
        let (default, patterns) = self.by_component.get(&component)?;
        patterns
            .iter()
            .find(|(p, _)| module == p || module.ends_with(&format!(".{p}")))
            .map(|(_, alpha)| *alpha)
            .or(*default)
    }
}
