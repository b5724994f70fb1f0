//! The configs and tokenizers of SD 1.5 and SD 2.1 (values of their hub repositories),
//! built in for `convert --config sd15|sd21`: single-file checkpoints carry weights only.

use std::collections::HashMap;

use crate::model::MemoryFiles;

macro_rules! files {
    ($($path:literal => $file:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!("../../../tests/fixtures/", $file)))),*]
    };
}

const SD15: &[(&str, &[u8])] = files! {
    "model_index.json" => "configs/sd15/model_index.json",
    "scheduler/scheduler_config.json" => "configs/sd15/scheduler/scheduler_config.json",
    "text_encoder/config.json" => "configs/sd15/text_encoder/config.json",
    "unet/config.json" => "configs/sd15/unet/config.json",
    "vae/config.json" => "configs/sd15/vae/config.json",
    // The CLIP ViT-L/14 tokenizer, as in the SD 1.5 repository.
    "tokenizer/vocab.json" => "sd1-tiny/tokenizer/vocab.json",
    "tokenizer/merges.txt" => "sd1-tiny/tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json" => "sd1-tiny/tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json" => "sd1-tiny/tokenizer/special_tokens_map.json",
};

const SD21: &[(&str, &[u8])] = files! {
    "model_index.json" => "configs/sd21/model_index.json",
    "scheduler/scheduler_config.json" => "configs/sd21/scheduler/scheduler_config.json",
    "text_encoder/config.json" => "configs/sd21/text_encoder/config.json",
    "unet/config.json" => "configs/sd21/unet/config.json",
    "vae/config.json" => "configs/sd21/vae/config.json",
    // The same BPE with SD 2.x's pad token `!`.
    "tokenizer/tokenizer.json" => "sd2-tiny/tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json" => "sd2-tiny/tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json" => "sd2-tiny/tokenizer/special_tokens_map.json",
};

pub const NAMES: &[&str] = &["sd15", "sd21"];

/// The built-in configs called `name`.
pub fn config(name: &str) -> Option<MemoryFiles> {
    let files = match name {
        "sd15" => SD15,
        "sd21" => SD21,
        _ => return None,
    };
    Some(MemoryFiles {
        base: format!("built-in {name}"),
        files: files
            .iter()
            .map(|(path, bytes)| (path.to_string(), bytes.to_vec()))
            .collect::<HashMap<_, _>>(),
    })
}
