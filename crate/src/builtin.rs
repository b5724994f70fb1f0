//! The configs and tokenizers of SD 1.5, SD 2.1, SDXL, SDXL-Turbo, SD3.5 Medium and SD3.5
//! Large Turbo (the values of their hub repositories), shipped in `crate/assets/`: `convert --config NAME` pairs them with
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

/// SD3.5 Medium: CLIP-L and OpenCLIP bigG (both projected), T5-XXL, the MMDiT with dual
/// attention layers, the 16-channel VAE; flow matching with shift 3. T5's SentencePiece
/// vocabulary is not shipped: see [`stand_in_t5_tokenizer`].
const SD35M: &[(&str, &[u8])] = files! {
    "model_index.json" => "sd35m/model_index.json",
    "scheduler/scheduler_config.json" => "sd35m/scheduler/scheduler_config.json",
    "text_encoder/config.json" => "sd35m/text_encoder/config.json",
    "text_encoder_2/config.json" => "sd35m/text_encoder_2/config.json",
    "text_encoder_3/config.json" => "sd35m/text_encoder_3/config.json",
    "transformer/config.json" => "sd35m/transformer/config.json",
    "vae/config.json" => "sd35m/vae/config.json",
    "tokenizer/vocab.json" => "clip/vocab.json",
    "tokenizer/merges.txt" => "clip/merges.txt",
    "tokenizer/tokenizer_config.json" => "sd15/tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json" => "sd15/tokenizer/special_tokens_map.json",
    "tokenizer_2/vocab.json" => "clip/vocab.json",
    "tokenizer_2/merges.txt" => "clip/merges.txt",
    "tokenizer_2/tokenizer_config.json" => "sd21/tokenizer/tokenizer_config.json",
    "tokenizer_2/special_tokens_map.json" => "sd21/tokenizer/special_tokens_map.json",
    "tokenizer_3/tokenizer_config.json" => "sd35m/tokenizer_3/tokenizer_config.json",
};

/// SD3.5 Large Turbo: the large MMDiT (no dual attention), otherwise SD3.5 Medium's parts.
const SD35L_TURBO: &[(&str, &[u8])] = files! {
    "model_index.json" => "sd35l-turbo/model_index.json",
    "scheduler/scheduler_config.json" => "sd35l-turbo/scheduler/scheduler_config.json",
    "text_encoder/config.json" => "sd35l-turbo/text_encoder/config.json",
    "text_encoder_2/config.json" => "sd35l-turbo/text_encoder_2/config.json",
    "text_encoder_3/config.json" => "sd35l-turbo/text_encoder_3/config.json",
    "transformer/config.json" => "sd35l-turbo/transformer/config.json",
    "vae/config.json" => "sd35l-turbo/vae/config.json",
    "tokenizer_3/tokenizer_config.json" => "sd35l-turbo/tokenizer_3/tokenizer_config.json",
};

pub const NAMES: &[&str] = &["sd15", "sd21", "sdxl", "sdxl-turbo", "sd35m", "sd35l-turbo"];

/// A stand-in for T5's tokenizer in the built-in SD3.5 configs, whose real vocabulary
/// (SentencePiece, 32,100 pieces) cannot be shipped here: a Unigram model over single
/// characters. It is enough for random-weight builds (`convert --random`, `bench`), whose
/// T5 reads a fixed number of tokens whatever they are; a real checkpoint brings its own
/// `tokenizer_3/tokenizer.json`.
fn stand_in_t5_tokenizer() -> Vec<u8> {
    let mut pieces = vec![
        serde_json::json!(["<pad>", 0.0]),
        serde_json::json!(["</s>", 0.0]),
        serde_json::json!(["<unk>", 0.0]),
        serde_json::json!(["\u{2581}", -2.0]),
    ];
    for c in (b' '..=b'~').map(char::from).filter(|c| *c != ' ') {
        pieces.push(serde_json::json!([c.to_string(), -3.0]));
        pieces.push(serde_json::json!([format!("\u{2581}{c}"), -3.5]));
    }
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 0, "content": "<pad>", "special": true, "single_word": false,
             "lstrip": false, "rstrip": false, "normalized": false},
            {"id": 1, "content": "</s>", "special": true, "single_word": false,
             "lstrip": false, "rstrip": false, "normalized": false},
            {"id": 2, "content": "<unk>", "special": true, "single_word": false,
             "lstrip": false, "rstrip": false, "normalized": false},
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}",
                          "prepend_scheme": "always", "split": true},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "Unigram", "unk_id": 2, "vocab": pieces, "byte_fallback": false},
    });
    tokenizer.to_string().into_bytes()
}

/// The built-in configs called `name`.
pub fn config(name: &str) -> Option<MemoryFiles> {
    // A later list replaces the files of an earlier one.
    let lists: &[&[(&str, &[u8])]] = match name {
        "sd15" => &[SD15],
        "sd21" => &[SD21],
        "sdxl" => &[SDXL],
        "sdxl-turbo" => &[SDXL, SDXL_TURBO],
        "sd35m" => &[SD35M],
        "sd35l-turbo" => &[SD35M, SD35L_TURBO],
        _ => return None,
    };
    let mut files = lists
        .iter()
        .flat_map(|files| files.iter())
        .map(|(path, bytes)| (path.to_string(), bytes.to_vec()))
        .collect::<HashMap<_, _>>();
    if name.starts_with("sd35") {
        files.insert("tokenizer_3/tokenizer.json".into(), stand_in_t5_tokenizer());
    }
    Some(MemoryFiles {
        base: format!("built-in {name}"),
        files,
    })
}
