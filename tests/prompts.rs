//! Prompts as A1111 reads them, against the reference (scripts/make_prompt_fixtures.py: a
//! restatement of diffusers' community `get_weighted_text_embeddings`, cross-checked there
//! against diffusers' plain `encode_prompt`): weights, escapes, unbalanced brackets,
//! non-numeric weights, long prompts in chunks of 75, BREAK, and a negative prompt padded
//! to the prompt's chunks, for SD 1.x, SDXL and SD3.

mod common;

use burn::prelude::*;
use common::{Goldens, assert_close, model_dir};
use webdiffusion::files::DirFiles;
use webdiffusion::pipeline::StableDiffusion;

const TOL: f64 = 1e-4;
const CASES: [&str; 8] = [
    "plain",
    "weighted",
    "escaped",
    "unbalanced",
    "nonnumber",
    "long",
    "long_weighted",
    "break",
];

fn settings() -> serde_json::Value {
    let path = common::fixtures().join("goldens/prompts-weighting.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn weighted_and_long_prompts_match_the_reference_for_every_family() {
    let goldens = Goldens::file("goldens/prompts-weighting.safetensors");
    let settings = settings();
    let device = Device::flex();
    for model in ["sd1-tiny", "sdxl-tiny", "sd3-tiny"] {
        let pipe = StableDiffusion::load(&DirFiles(model_dir(model)), &device).unwrap();
        let encoders = pipe.text.with_loras(&[]);
        for case in CASES {
            let text = settings["cases"][case].as_str().unwrap();
            let chunks = pipe.text.chunk_count(text).unwrap();
            let embeds = pipe
                .text
                .encode_weighted(&encoders, text, 0, 256, chunks, &device)
                .unwrap();
            let what = format!("{model} {case}");
            let name = format!("{model}.{case}");
            assert_close(
                &goldens,
                &format!("{name}.prompt_embeds"),
                embeds.context,
                TOL,
                &what,
            );
            if let Some(pooled) = embeds.pooled {
                let key = format!("{name}.pooled_prompt_embeds");
                assert_close(&goldens, &key, pooled, TOL, &what);
            }
        }
        // The negative prompt padded to the long prompt's chunks.
        let negative = settings["long_negative"].as_str().unwrap();
        let chunks = pipe
            .text
            .chunk_count(settings["cases"]["long"].as_str().unwrap());
        let embeds = pipe
            .text
            .encode_weighted(&encoders, negative, 0, 256, chunks.unwrap(), &device)
            .unwrap();
        let key = format!("{model}.long.negative_prompt_embeds");
        assert_close(
            &goldens,
            &key,
            embeds.context,
            TOL,
            &format!("{model} negative"),
        );
    }
}

#[test]
fn chunks_follow_the_reference_token_ids_and_weights() {
    let goldens = Goldens::file("goldens/prompts-weighting.safetensors");
    let settings = settings();
    let device = Device::flex();
    for model in ["sd1-tiny", "sdxl-tiny"] {
        let pipe = StableDiffusion::load(&DirFiles(model_dir(model)), &device).unwrap();
        for case in CASES {
            let text = settings["cases"][case].as_str().unwrap();
            let fragments = webdiffusion::prompt::parse_prompt_attention(text);
            for (encoder, key) in pipe.text.encoders.iter().zip(["input_ids", "input_ids_2"]) {
                let chunks =
                    webdiffusion::pipeline::Chunks::new(&encoder.tokenizer, &fragments).unwrap();
                let (mut ids, mut weights) = (Vec::new(), Vec::new());
                for i in 0..chunks.chunks.len() {
                    let (chunk_ids, chunk_weights) = chunks.framed(i, &encoder.tokenizer);
                    ids.extend(chunk_ids);
                    weights.extend(chunk_weights.iter().map(|&w| f64::from(w)));
                }
                let name = format!("{model}.{case}");
                assert_eq!(ids, goldens.ids(&format!("{name}.{key}")), "{name} {key}");
                let expected = goldens.values(&format!("{name}.weights"));
                assert_eq!(weights.len(), expected.len(), "{name}");
                for (a, e) in weights.iter().zip(expected) {
                    assert!((a - e).abs() < 1e-6, "{name}: weight {a} vs {e}");
                }
            }
        }
    }
}
