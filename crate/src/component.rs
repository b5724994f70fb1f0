//! The one description of a model's parts and where their files live in a diffusers
//! folder: every loader, `convert`, the pack format and the browser take names from here.

use serde::{Deserialize, Serialize};

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
    Unet,
    Vae,
    #[serde(rename = "controlnet")]
    ControlNet,
}

impl Component {
    /// The networks of a Stable Diffusion pipeline, in loading order.
    pub const PIPELINE: [Component; 3] = [Component::TextEncoder, Component::Unet, Component::Vae];

    /// Its folder in a diffusers pipeline, also its key in a pack manifest.
    pub fn name(self) -> &'static str {
        match self {
            Component::TextEncoder => "text_encoder",
            Component::Unet => "unet",
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
            Component::TextEncoder => "model",
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
        [Self::PIPELINE.as_slice(), &[Component::ControlNet]]
            .concat()
            .into_iter()
            .find(|c| c.name() == name)
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
pub const TOKENIZER_JSON: &str = "tokenizer/tokenizer.json";
pub const VOCAB_JSON: &str = "tokenizer/vocab.json";
pub const MERGES_TXT: &str = "tokenizer/merges.txt";
pub const TOKENIZER_CONFIG: &str = "tokenizer/tokenizer_config.json";
pub const SPECIAL_TOKENS_MAP: &str = "tokenizer/special_tokens_map.json";

/// The tokenizer's vocabulary files (one of `tokenizer.json`, or `vocab.json` with
/// `merges.txt`): large text, kept as text in a pack.
pub const TOKENIZER_TEXT: [&str; 3] = [TOKENIZER_JSON, VOCAB_JSON, MERGES_TXT];

/// The small JSON files of a pipeline that loading reads besides the tokenizer's text:
/// those marked `true` must exist.
pub fn pipeline_configs() -> Vec<(String, bool)> {
    let mut files = vec![
        (MODEL_INDEX.to_string(), true),
        (SCHEDULER_CONFIG.to_string(), true),
        (TOKENIZER_CONFIG.to_string(), false),
        (SPECIAL_TOKENS_MAP.to_string(), false),
    ];
    files.extend(Component::PIPELINE.map(|c| (c.config(), true)));
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_the_manifest_keys() {
        for c in [Component::PIPELINE.as_slice(), &[Component::ControlNet]].concat() {
            assert_eq!(Component::from_name(c.name()), Some(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.name()));
            assert_eq!(serde_json::from_str::<Component>(&json).unwrap(), c);
        }
        assert!(serde_json::from_str::<Component>("\"unet2\"").is_err());
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
