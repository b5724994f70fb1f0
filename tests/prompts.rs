//! Prompts as A1111 reads them, against the reference (scripts/make_prompt_fixtures.py: a
//! restatement of diffusers' community `get_weighted_text_embeddings`, cross-checked there
//! against diffusers' plain `encode_prompt`): weights, escapes, unbalanced brackets,
//! non-numeric weights, long prompts in chunks of 75, BREAK, a negative prompt padded to
//! the prompt's chunks, textual-inversion embeddings, and whole image runs with all of
//! them, for SD 1.x, SDXL and SD3.

mod common;

use std::sync::Arc;

use burn::prelude::*;
use common::{Goldens, assert_close, model_dir};
use webdiffusion::files::DirFiles;
use webdiffusion::pipeline::{Reading, Request, StableDiffusion};
use webdiffusion::textual_inversion::TextualInversion;

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

fn load(model: &str, device: &Device) -> StableDiffusion {
    StableDiffusion::load(&DirFiles(model_dir(model)), device).unwrap()
}

/// The embedding file `name` (tests/fixtures/prompts), loaded for `pipe`.
fn embedding(
    pipe: &StableDiffusion,
    name: &str,
    token: Option<&str>,
) -> webdiffusion::error::Result<TextualInversion> {
    let path = common::fixtures().join(format!("prompts/{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    pipe.load_embedding(&bytes, &path.display().to_string(), name, token)
}

/// The embeddings the reference loaded for `model`, in its order.
fn embeddings(pipe: &StableDiffusion, model: &str) -> Vec<Arc<TextualInversion>> {
    let files: &[&str] = match model {
        "sd1-tiny" => &["cat-toy", "easynegative-tiny"],
        _ => &["sdxl-emb"],
    };
    files
        .iter()
        .map(|f| Arc::new(embedding(pipe, f, None).unwrap()))
        .collect()
}

#[test]
fn weighted_and_long_prompts_match_the_reference_for_every_family() {
    let goldens = Goldens::file("goldens/prompts-weighting.safetensors");
    let settings = settings();
    let device = Device::flex();
    let reading = Reading::default();
    for model in ["sd1-tiny", "sdxl-tiny", "sd3-tiny"] {
        let pipe = load(model, &device);
        let models = pipe.text.prepare(&[], &[]).unwrap();
        for case in CASES {
            let text = settings["cases"][case].as_str().unwrap();
            let embeds = pipe.text.encode(&models, text, &reading, &device).unwrap();
            let what = format!("{model} {case}");
            let name = format!("{model}.{case}");
            let key = format!("{name}.prompt_embeds");
            assert_close(&goldens, &key, embeds.context, TOL, &what);
            if let Some(pooled) = embeds.pooled {
                let key = format!("{name}.pooled_prompt_embeds");
                assert_close(&goldens, &key, pooled, TOL, &what);
            }
        }
        // The negative prompt padded to the long prompt's chunks.
        let long = settings["cases"]["long"].as_str().unwrap();
        let negative = settings["long_negative"].as_str().unwrap();
        let (_, embeds) = pipe
            .text
            .encode_pair(&models, long, Some(negative), &reading, &device)
            .unwrap();
        let key = format!("{model}.long.negative_prompt_embeds");
        let what = format!("{model} negative");
        assert_close(&goldens, &key, embeds.context, TOL, &what);
    }
}

#[test]
fn chunks_follow_the_reference_token_ids_and_weights() {
    let goldens = Goldens::file("goldens/prompts-weighting.safetensors");
    let settings = settings();
    let device = Device::flex();
    for model in ["sd1-tiny", "sdxl-tiny"] {
        let pipe = load(model, &device);
        let tis = embeddings(&pipe, model);
        let models = pipe.text.prepare(&[], &tis).unwrap();
        for case in CASES.iter().chain(&["ti"]) {
            let text = match *case {
                "ti" => &settings["cases"]["ti"][model],
                _ => &settings["cases"][case],
            };
            let tokens = pipe
                .text
                .tokenize(
                    &models,
                    text.as_str().unwrap(),
                    "prompt",
                    &Reading::default(),
                )
                .unwrap();
            let name = format!("{model}.{case}");
            let count = tokens.chunk_count();
            for (i, key) in ["input_ids", "input_ids_2"]
                .iter()
                .enumerate()
                .take(pipe.text.encoders.len())
            {
                let (ids, shape) = pipe.text.ids(&tokens, i, count);
                assert_eq!(shape, [count, 77], "{name}");
                assert_eq!(ids, goldens.ids(&format!("{name}.{key}")), "{name} {key}");
            }
            let weights: Vec<f64> = (0..count)
                .flat_map(|c| tokens.clip[0].framed(c, &pipe.text.encoders[0].tokenizer).1)
                .map(f64::from)
                .collect();
            let expected = goldens.values(&format!("{name}.weights"));
            assert_eq!(weights.len(), expected.len(), "{name}");
            for (a, e) in weights.iter().zip(expected) {
                assert!((a - e).abs() < 1e-6, "{name}: weight {a} vs {e}");
            }
        }
    }
}

#[test]
fn read_literally_brackets_are_text_and_the_prompt_is_cut_at_77_tokens() {
    let goldens = Goldens::file("goldens/prompts-weighting.safetensors");
    let settings = settings();
    let device = Device::flex();
    for model in ["sd1-tiny", "sdxl-tiny"] {
        let pipe = load(model, &device);
        let models = pipe.text.prepare(&[], &[]).unwrap();
        // diffusers' encode_prompt of `a (literal) photo of a [cat]` is the escaped case.
        let literal = "a (literal) photo of a [cat]";
        let embeds = pipe
            .text
            .encode(&models, literal, &Reading::literal(), &device)
            .unwrap();
        let key = format!("{model}.escaped.prompt_embeds");
        assert_close(
            &goldens,
            &key,
            embeds.context,
            TOL,
            &format!("{model} literal"),
        );
        // A long prompt read literally fills one chunk: its first 75 tokens.
        let long = settings["cases"]["long"].as_str().unwrap();
        let tokens = pipe
            .text
            .tokenize(&models, long, "prompt", &Reading::literal())
            .unwrap();
        assert_eq!(tokens.chunk_count(), 1, "{model}");
        let (ids, _) = pipe.text.ids(&tokens, 0, 1);
        let expected = goldens.ids(&format!("{model}.long.input_ids"));
        assert_eq!(ids[..76], expected[..76], "{model}: the first 75 tokens");
        assert_eq!(ids[76], expected[76], "{model}: ends with <end>");
    }
}

#[test]
fn textual_inversion_matches_the_reference() {
    let goldens = Goldens::file("goldens/prompts-weighting.safetensors");
    let settings = settings();
    let device = Device::flex();
    for model in ["sd1-tiny", "sdxl-tiny"] {
        let pipe = load(model, &device);
        let tis = embeddings(&pipe, model);
        let expected = &settings["textual_inversion"]["tokens"][model];
        let models = pipe.text.prepare(&[], &tis).unwrap();
        // Ids from the vocabulary's end, in load order, one per vector.
        let checks = &settings["textual_inversion"]["checks"][model];
        let tokens = pipe
            .text
            .tokenize(
                &models,
                checks["check_prompt"].as_str().unwrap(),
                "prompt",
                &Reading::default(),
            )
            .unwrap();
        let (ids, _) = pipe.text.ids(&tokens, 0, 1);
        let check: Vec<u32> = serde_json::from_value(checks["check_ids"].clone()).unwrap();
        assert_eq!(ids[..check.len()], check[..], "{model}");
        for ti in &tis {
            let ids: Vec<u32> = serde_json::from_value(expected[&ti.token].clone()).unwrap();
            assert_eq!(ti.count, ids.len(), "{model} {}", ti.token);
        }
        let text = settings["cases"]["ti"][model].as_str().unwrap();
        let embeds = pipe
            .text
            .encode(&models, text, &Reading::default(), &device)
            .unwrap();
        let what = format!("{model} ti");
        assert_close(
            &goldens,
            &format!("{model}.ti.prompt_embeds"),
            embeds.context,
            TOL,
            &what,
        );
        if let Some(pooled) = embeds.pooled {
            let key = format!("{model}.ti.pooled_prompt_embeds");
            assert_close(&goldens, &key, pooled, TOL, &what);
        }
        // The loaded model is untouched: without embeddings, the name is plain text again.
        let plain = pipe.text.prepare(&[], &[]).unwrap();
        let tokens = pipe
            .text
            .tokenize(&plain, text, "prompt", &Reading::default())
            .unwrap();
        let (ids, _) = pipe.text.ids(&tokens, 0, 1);
        assert!(ids.iter().all(|&id| id < 49408), "{model}: {ids:?}");
    }
}

#[test]
fn image_runs_with_weights_long_prompts_and_embeddings_match_the_reference() {
    let goldens = Goldens::file("goldens/prompts-weighting.safetensors");
    let settings = settings();
    let device = Device::flex();
    for (model, scheduler) in [("sd1-tiny", "pndm"), ("sdxl-tiny", "euler")] {
        let pipe = load(model, &device);
        assert_eq!(pipe.default_scheduler().unwrap(), scheduler, "{model}");
        let run = &settings["image_runs"][model];
        let mut r = Request::new(run["prompt"].as_str().unwrap());
        r.negative_prompt = Some(run["negative_prompt"].as_str().unwrap().into());
        r.embeddings = embeddings(&pipe, model);
        r.steps = Some(run["num_inference_steps"].as_u64().unwrap() as usize);
        r.guidance = run["guidance_scale"].as_f64().unwrap();
        r.width = Some(run["width"].as_u64().unwrap() as usize);
        r.height = Some(run["height"].as_u64().unwrap() as usize);
        let key = format!("{model}.image_run.init_latents");
        r.latents = Some(goldens.tensor::<4>(&key, &device));
        let out = pipe.generate(&r, &mut |_, _, _| true).unwrap();
        for (key, actual) in [
            ("latents", common::to_f64(out.latents)),
            ("image", common::to_f64(out.image)),
        ] {
            let err = common::rel_l2(&actual, goldens.values(&format!("{model}.image_run.{key}")));
            assert!(err <= 1e-3, "{model}: {key} rel-L2 {err:e}");
        }
        // The negative prompt's embeddings on their own.
        let models = pipe.text.prepare(&[], &r.embeddings).unwrap();
        let (_, negative) = pipe
            .text
            .encode_pair(
                &models,
                &r.prompt,
                r.negative_prompt.as_deref(),
                &Reading::default(),
                &device,
            )
            .unwrap();
        let key = format!("{model}.image_run.negative_prompt_embeds");
        assert_close(&goldens, &key, negative.context, TOL, model);
    }
}

fn message<T>(result: webdiffusion::error::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_embeddings_and_prompts_are_refused_by_name() {
    let device = Device::flex();
    let sd1 = load("sd1-tiny", &device);
    let sdxl = load("sdxl-tiny", &device);

    let msg = message(embedding(&sd1, "nan-emb", None));
    assert!(
        msg.contains("nan-emb.safetensors") && msg.contains("non-finite"),
        "{msg}"
    );
    let msg = message(embedding(&sd1, "wide-emb", None));
    for part in ["wide-emb.safetensors", "wide-emb", "40", "32"] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
    // SDXL needs a vector per encoder; an SDXL embedding is not for SD 1.x.
    let msg = message(embedding(&sdxl, "cat-toy", None));
    assert!(
        msg.contains("cat-toy.safetensors") && msg.contains("clip_g"),
        "{msg}"
    );
    let msg = message(embedding(&sd1, "sdxl-emb", None));
    assert!(
        msg.contains("sdxl-emb.safetensors") && msg.contains("one text encoder"),
        "{msg}"
    );
    let sd3 = load("sd3-tiny", &device);
    let msg = message(embedding(&sd3, "cat-toy", None));
    assert!(msg.contains("SD3"), "{msg}");
    // Pickles are never read; neither is a file that is not an embedding.
    let msg = message(sd1.load_embedding(b"PK\x03\x04rest", "bad.pt", "bad", None));
    assert!(msg.contains("bad.pt") && msg.contains("pickle"), "{msg}");
    let msg = message(sd1.load_embedding(b"\x80\x02}q", "bad.bin", "bad", None));
    assert!(msg.contains("bad.bin") && msg.contains("pickle"), "{msg}");
    let msg = message(sd1.load_embedding(b"\x10\0\0\0\0\0\0\0{}", "x.safetensors", "x", None));
    assert!(msg.contains("x.safetensors"), "{msg}");
    let msg = message(embedding(&sd1, "cat-toy", Some("  ")));
    assert!(msg.contains("names no token"), "{msg}");

    // Two embeddings for one word.
    let a = Arc::new(embedding(&sd1, "cat-toy", Some("same")).unwrap());
    let b = Arc::new(embedding(&sd1, "easynegative-tiny", Some("same")).unwrap());
    let msg = message(sd1.text.prepare(&[], &[a, b]));
    assert!(
        msg.contains("cat-toy.safetensors")
            && msg.contains("easynegative-tiny.safetensors")
            && msg.contains("`same`"),
        "{msg}"
    );

    // A pasted book: refused before anything runs, naming the prompt.
    let book = "word ".repeat(10_000);
    for (prompt, negative, what) in [
        (book.as_str(), "", "prompt"),
        ("a cat", book.as_str(), "negative prompt"),
    ] {
        let mut r = Request::new(prompt);
        r.negative_prompt = Some(negative.into());
        r.steps = Some(1);
        let msg = message(sd1.generate(&r, &mut |_, _, _| true));
        assert!(msg.contains(what) && msg.contains("1200 tokens"), "{msg}");
    }
    // 16 chunks are fine.
    let models = sd1.text.prepare(&[], &[]).unwrap();
    let tokens = sd1
        .text
        .tokenize(
            &models,
            &"word ".repeat(1200),
            "prompt",
            &Reading::default(),
        )
        .unwrap();
    assert_eq!(tokens.chunk_count(), 16);
    let msg = message(sd1.text.tokenize(
        &models,
        &"word ".repeat(1201),
        "prompt",
        &Reading::default(),
    ));
    assert!(msg.contains("1200 tokens"), "{msg}");
}
