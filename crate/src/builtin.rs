//! The configs and tokenizers of SD 1.5, SD 2.1, SDXL and SDXL-Turbo (the values of their
//! hub repositories), shipped in `crate/assets/`: `convert --config NAME` pairs them with
//! single-file checkpoints (which carry weights only), and `convert --random NAME` and
//! `bench` build the full-size networks from them.

use std::collections::HashMap;

use crate::files::MemoryFiles;

macro_rules! files {
    ($($path:literal => $file:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!("../assets/", $file)))),*]
    };
}

const SD15: &[(&str, &[u8])] = files! {
    "model_index.json" => "sd15/model_index.json",
    "scheduler/scheduler_config.json" => "sd15/scheduler/scheduler_config.json",
    "text_encoder/config.json" => "sd15/text_encoder/config.json",
    "unet/config.json" => "sd15/unet/config.json",
    "vae/config.json" => "sd15/vae/config.json",
    // The CLIP ViT-L/14 tokenizer, as in the SD 1.5 repository.
    "tokenizer/vocab.json" => "clip/vocab.json",
    "tokenizer/merges.txt" => "clip/merges.txt",
    "tokenizer/tokenizer_config.json" => "sd15/tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json" => "sd15/tokenizer/special_tokens_map.json",
};

const SD21: &[(&str, &[u8])] = files! {
    "model_index.json" => "sd21/model_index.json",
    "scheduler/scheduler_config.json" => "sd21/scheduler/scheduler_config.json",
    "text_encoder/config.json" => "sd21/text_encoder/config.json",
    "unet/config.json" => "sd21/unet/config.json",
    "vae/config.json" => "sd21/vae/config.json",
    // The same BPE with SD 2.x's pad token `!`, as in the SD 2.1 repository.
    "tokenizer/vocab.json" => "clip/vocab.json",
    "tokenizer/merges.txt" => "clip/merges.txt",
    "tokenizer/tokenizer_config.json" => "sd21/tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json" => "sd21/tokenizer/special_tokens_map.json",
};

/// SDXL base 1.0: CLIP-L (SD 1.5's) and OpenCLIP bigG with SD 2.x's tokenizer (pads with
/// `!`), as in its repository.
const SDXL: &[(&str, &[u8])] = files! {
    "model_index.json" => "sdxl/model_index.json",
    "scheduler/scheduler_config.json" => "sdxl/scheduler/scheduler_config.json",
    "text_encoder/config.json" => "sd15/text_encoder/config.json",
    "text_encoder_2/config.json" => "sdxl/text_encoder_2/config.json",
    "unet/config.json" => "sdxl/unet/config.json",
    "vae/config.json" => "sdxl/vae/config.json",
    "tokenizer/vocab.json" => "clip/vocab.json",
    "tokenizer/merges.txt" => "clip/merges.txt",
    "tokenizer/tokenizer_config.json" => "sd15/tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json" => "sd15/tokenizer/special_tokens_map.json",
    "tokenizer_2/vocab.json" => "clip/vocab.json",
    "tokenizer_2/merges.txt" => "clip/merges.txt",
    "tokenizer_2/tokenizer_config.json" => "sd21/tokenizer/tokenizer_config.json",
    "tokenizer_2/special_tokens_map.json" => "sd21/tokenizer/special_tokens_map.json",
};

/// SDXL-Turbo: SDXL's networks with Euler ancestral on trailing timesteps.
const SDXL_TURBO: &[(&str, &[u8])] = files! {
    "model_index.json" => "sdxl-turbo/model_index.json",
    "scheduler/scheduler_config.json" => "sdxl-turbo/scheduler/scheduler_config.json",
};

pub const NAMES: &[&str] = &["sd15", "sd21", "sdxl", "sdxl-turbo"];

/// The built-in configs called `name`.
pub fn config(name: &str) -> Option<MemoryFiles> {
    // A later list replaces the files of an earlier one.
    let lists: &[&[(&str, &[u8])]] = match name {
        "sd15" => &[SD15],
        "sd21" => &[SD21],
        "sdxl" => &[SDXL],
        "sdxl-turbo" => &[SDXL, SDXL_TURBO],
        _ => return None,
    };
    Some(MemoryFiles {
        base: format!("built-in {name}"),
        files: lists
            .iter()
            .flat_map(|files| files.iter())
            .map(|(path, bytes)| (path.to_string(), bytes.to_vec()))
            .collect::<HashMap<_, _>>(),
    })
}
