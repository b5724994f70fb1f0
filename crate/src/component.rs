//! The one description of a model's parts and where their files live in a diffusers
//! folder: every loader, `convert`, the pack format and the browser take names from here.

use serde::{Deserialize, Serialize};

use crate::family::Family;

/// A network with its own config and weights.
///
/// The three of a pipeline (`text_encoder/`, `unet/`, `vae/`) live in their folders of a
/// diffusers pipeline. A ControlNet, or a VAE used in place of the model's own, is usually
/// published as a folder of its own with `config.json` and the weights at its root (see
/// `files::ComponentDir`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    TextEncoder,
    /// SDXL's second text encoder (OpenCLIP bigG, with a projection for the pooled embedding).
    #[serde(rename = "text_encoder_2")]
    TextEncoder2,
    /// SD3's T5 v1.1 encoder (optional: a pipeline may leave it out).
    #[serde(rename = "text_encoder_3")]
    TextEncoder3,
    Unet,
    /// A diffusion transformer (SD3's MMDiT), the UNet's counterpart.
    Transformer,
    Vae,
    #[serde(rename = "controlnet")]
    ControlNet,
}

impl Component {
    /// Every component, for lookups by name.
    pub const ALL: [Component; 7] = [
        Component::TextEncoder,
        Component::TextEncoder2,
        Component::TextEncoder3,
        Component::Unet,
        Component::Transformer,
        Component::Vae,
        Component::ControlNet,
    ];

    /// Its folder in a diffusers pipeline, also its key in a pack manifest.
    pub fn name(self) -> &'static str {
        match self {
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
            Component::TextEncoder3 => "text_encoder_3",
            Component::Unet => "unet",
            Component::Transformer => "transformer",
            Component::Vae => "vae",
            Component::ControlNet => "controlnet",
        }
    }

    pub fn config(self) -> String {
        format!("{}/config.json", self.name())
    }

    /// Its weight files, preferred first: full precision, then the hub's fp16 variant (or
    /// the other way round with `prefer_half`, to halve a download).
    pub fn weight_files(self, prefer_half: bool) -> [String; 2] {
        let stem = match self {
            Component::TextEncoder | Component::TextEncoder2 | Component::TextEncoder3 => "model",
            _ => "diffusion_pytorch_model",
        };
        let full = format!("{}/{stem}.safetensors", self.name());
        let half = format!("{}/{stem}.fp16.safetensors", self.name());
        if prefer_half {
            [half, full]
        } else {
            [full, half]
        }
    }

    /// Parts a component's weights may leave out entirely: a VAE published for decoding
    /// only has no encoder (it then cannot encode init images).
    pub fn optional_parts(self) -> &'static [&'static str] {
        match self {
            Component::Vae => &["encoder.", "quant_conv."],
            _ => &[],
        }
    }

    pub fn from_name(name: &str) -> Option<Component> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The folder of the tokenizer that feeds it, for a text encoder.
    pub fn tokenizer(self) -> Option<&'static str> {
        match self {
            Component::TextEncoder => Some("tokenizer"),
            Component::TextEncoder2 => Some("tokenizer_2"),
            Component::TextEncoder3 => Some("tokenizer_3"),
            _ => None,
        }
    }

    pub fn is_text_encoder(self) -> bool {
        self.tokenizer().is_some()
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The pipeline's own description of its parts.
pub const MODEL_INDEX: &str = "model_index.json";
pub const SCHEDULER_CONFIG: &str = "scheduler/scheduler_config.json";

/// The files of a tokenizer folder (`tokenizer/`, `tokenizer_2/`): its vocabulary (one of
/// `tokenizer.json`, or `vocab.json` with `merges.txt`: large text, kept as text in a pack)
/// and its small optional configs.
pub struct TokenizerPaths {
    pub tokenizer_json: String,
    pub vocab_json: String,
    pub merges_txt: String,
    pub tokenizer_config: String,
    pub special_tokens_map: String,
}

impl TokenizerPaths {
    pub fn new(folder: &str) -> Self {
        let path = |name: &str| format!("{folder}/{name}");
        Self {
            tokenizer_json: path("tokenizer.json"),
            vocab_json: path("vocab.json"),
            merges_txt: path("merges.txt"),
            tokenizer_config: path("tokenizer_config.json"),
            special_tokens_map: path("special_tokens_map.json"),
        }
    }

    /// The vocabulary files, any of which may be absent (see [`TokenizerPaths`]).
    pub fn text(&self) -> [&str; 3] {
        [&self.tokenizer_json, &self.vocab_json, &self.merges_txt]
    }

    pub fn configs(&self) -> [&str; 2] {
        [&self.tokenizer_config, &self.special_tokens_map]
    }
}

/// Whether `path` is a file of a tokenizer folder of any family.
pub fn is_tokenizer_file(path: &str) -> bool {
    Component::ALL
        .iter()
        .filter_map(|c| c.tokenizer())
        .any(|folder| {
            path.strip_prefix(folder)
                .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// The small JSON files of a `family` pipeline that loading reads besides the tokenizers'
/// text: those marked `true` must exist (an optional component's are checked by its
/// loader, when `model_index.json` lists it).
pub fn pipeline_configs(family: Family) -> Vec<(String, bool)> {
    let mut files = vec![
        (MODEL_INDEX.to_string(), true),
        (SCHEDULER_CONFIG.to_string(), true),
    ];
    for component in family.components() {
        files.push((component.config(), !family.optional().contains(component)));
        if let Some(folder) = component.tokenizer() {
            let paths = TokenizerPaths::new(folder);
            files.extend(paths.configs().map(|p| (p.to_string(), false)));
        }
    }
    files
}

/// The tokenizers' vocabulary files of a `family` pipeline (see [`TokenizerPaths::text`]).
pub fn tokenizer_text(family: Family) -> Vec<String> {
    let folders = family.components().iter().filter_map(|c| c.tokenizer());
    folders
        .flat_map(|f| TokenizerPaths::new(f).text().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_the_manifest_keys() {
        for c in Component::ALL {
            assert_eq!(Component::from_name(c.name()), Some(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.name()));
            assert_eq!(serde_json::from_str::<Component>(&json).unwrap(), c);
        }
        assert!(serde_json::from_str::<Component>("\"unet2\"").is_err());
        assert!(is_tokenizer_file("tokenizer_2/vocab.json") && is_tokenizer_file("tokenizer/m"));
        assert!(!is_tokenizer_file("tokenizer_3x/vocab.json") && !is_tokenizer_file("unet/x"));
    }

    #[test]
    fn weight_files_follow_the_hub_layout() {
        assert_eq!(
            Component::TextEncoder.weight_files(false),
            [
                "text_encoder/model.safetensors",
                "text_encoder/model.fp16.safetensors"
            ]
        );
        assert_eq!(
            Component::Unet.weight_files(true)[0],
            "unet/diffusion_pytorch_model.fp16.safetensors"
        );
    }
}
