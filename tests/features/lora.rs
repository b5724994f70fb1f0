//! LoRA against diffusers (`load_lora_weights`, scale through `cross_attention_kwargs`,
//! stacking through `set_adapters`; goldens from scripts/make_lora_fixtures.py): the same
//! LoRA in Kohya, diffusers and PEFT layouts (alpha ≠ rank, LoCon convolutions, text-encoder
//! MLPs) gives diffusers' text embeddings and UNet output, on the CPU and on wgpu; a whole
//! 8-step run; two LoRAs stacked; scale 0; and a q8 pack.

use std::sync::Arc;

use crate::common::{self, Goldens, MODELS, assert_close, devices, model_dir, rel_l2, to_f64};
use burn::prelude::*;
use webdiffusion::component::Component;
use webdiffusion::files::DirFiles;
use webdiffusion::lora::{self, Lora};
use webdiffusion::models::unet::Conditioning;
use webdiffusion::pipeline::{Reading, Request, StableDiffusion};
use webdiffusion::quant::Precision;

const TOL: f64 = 1e-4;
const PROMPT: &str = "a photograph of an astronaut riding a horse";
const NEGATIVE: &str = "blurry, low quality";
const FORMATS: &[&str] = &["kohya", "diffusers", "peft", "peft-noalpha"];

fn lora_file(name: &str, model: &str, format: &str) -> (Vec<u8>, String) {
    let path = common::fixtures().join(format!("lora/{name}-{model}.{format}.safetensors"));
    (std::fs::read(&path).unwrap(), path.display().to_string())
}

fn load(pipe: &StableDiffusion, name: &str, model: &str, format: &str) -> Arc<Lora> {
    let (bytes, file) = lora_file(name, model, format);
    Arc::new(pipe.load_lora(&bytes, &file, name).unwrap())
}

/// Text embeddings of the prompt and the UNet output on the shared inputs, with `loras`.
fn outputs(
    pipe: &StableDiffusion,
    loras: &[(Arc<Lora>, f32)],
    base: &Goldens,
    device: &Device,
) -> (Tensor<3>, Tensor<4>) {
    let models = pipe.text.prepare(loras, &[]).unwrap();
    let embeds = pipe
        .text
        .encode(&models, PROMPT, &Reading::literal(), device)
        .unwrap()
        .context;
    let unet = lora::apply(pipe.unet("test").unwrap(), Component::Unet, loras);
    let sample = base.tensor::<4>("unet.sample", device);
    let context = base.tensor::<3>("unet.encoder_hidden_states", device);
    (
        embeds,
        unet.forward(sample, 500.0, &Conditioning::text(context), None),
    )
}

#[test]
fn every_format_matches_diffusers() {
    for (dev, device) in devices() {
        for model in MODELS {
            let pipe = StableDiffusion::load(&DirFiles(model_dir(model)), &device).unwrap();
            let goldens = Goldens::file(&format!("lora/goldens-{model}.safetensors"));
            let base = Goldens::load(model);
            for format in FORMATS {
                let lora = load(&pipe, "lora1", model, format);
                assert!(lora.layers(Component::Unet) > 100, "{format}: UNet layers");
                assert!(
                    lora.layers(Component::TextEncoder) >= 18,
                    "{format}: text layers"
                );
                let what = format!("{model} {format} on {dev}");
                for (scale, suffix) in [(0.75, ""), (1.0, ".scale1")] {
                    let (embeds, out) = outputs(&pipe, &[(lora.clone(), scale)], &base, &device);
                    let key = format!("prompt_embeds{suffix}");
                    assert_close(&goldens, &key, embeds, TOL, &what);
                    assert_close(&goldens, &format!("unet.out{suffix}"), out, TOL, &what);
                }
            }
        }
    }
}

#[test]
fn stacked_loras_and_scale_zero_match_diffusers() {
    for (dev, device) in devices() {
        for model in MODELS {
            let pipe = StableDiffusion::load(&DirFiles(model_dir(model)), &device).unwrap();
            let goldens = Goldens::file(&format!("lora/goldens-{model}.safetensors"));
            let base = Goldens::load(model);
            let lora1 = load(&pipe, "lora1", model, "kohya");
            let lora2 = load(&pipe, "lora2", model, "kohya");
            let what = format!("{model} on {dev}");

            let stack = [(lora1.clone(), 0.6), (lora2.clone(), -0.4)];
            let (embeds, out) = outputs(&pipe, &stack, &base, &device);
            assert_close(&goldens, "stack.prompt_embeds", embeds, TOL, &what);
            assert_close(&goldens, "stack.unet.out", out, TOL, &what);

            // Scale 0 is no LoRA at all: the very same numbers.
            let (embeds, out) = outputs(&pipe, &[(lora1.clone(), 0.0)], &base, &device);
            let (plain_embeds, plain_out) = outputs(&pipe, &[], &base, &device);
            assert_eq!(to_f64(embeds), to_f64(plain_embeds.clone()), "{what}");
            assert_eq!(to_f64(out), to_f64(plain_out.clone()), "{what}");
            assert_close(&goldens, "prompt_embeds.base", plain_embeds, TOL, &what);
            assert_close(&goldens, "unet.out.base", plain_out, TOL, &what);
        }
    }
}

fn request(latents: &Goldens, device: &Device, loras: Vec<(Arc<Lora>, f32)>) -> Request {
    let mut r = Request::new(PROMPT);
    r.negative_prompt = Some(NEGATIVE.into());
    r.steps = Some(8);
    r.guidance = 7.5;
    r.latents = Some(latents.tensor::<4>("latents", device));
    r.loras = loras;
    r
}

#[test]
fn an_eight_step_run_matches_diffusers() {
    for (dev, device) in devices() {
        for model in MODELS {
            let pipe = StableDiffusion::load(&DirFiles(model_dir(model)), &device).unwrap();
            let goldens = Goldens::file(&format!("lora/goldens-{model}.safetensors"));
            let latents = Goldens::load(&format!("pipeline-{model}"));
            let lora = load(&pipe, "lora1", model, "kohya");
            let r = request(&latents, &device, vec![(lora, 0.75)]);
            let out = pipe.generate(&r, &mut |_, _, _| true).unwrap();
            let what = format!("{model} on {dev}");
            let err = rel_l2(&to_f64(out.latents), goldens.values("pipeline.latents"));
            assert!(err <= 1e-3, "{what}: latents rel-L2 {err:e}");
            let err = rel_l2(&to_f64(out.image), goldens.values("pipeline.image"));
            assert!(err <= 1e-3, "{what}: image rel-L2 {err:e}");
        }
    }
}

#[test]
fn a_lora_on_a_q8_pack_stays_within_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    for model in MODELS {
        let out = dir.path().join(format!("{model}-q8"));
        webdiffusion::pack::convert::convert(&DirFiles(model_dir(model)), Precision::Q8, &out)
            .unwrap();
        let files = webdiffusion::pack::open_dir(&out).unwrap();
        let pipe = StableDiffusion::load(&*files, &device).unwrap();
        let goldens = Goldens::file(&format!("lora/goldens-{model}.safetensors"));
        let latents = Goldens::load(&format!("pipeline-{model}"));
        let lora = load(&pipe, "lora1", model, "peft");
        let r = request(&latents, &device, vec![(lora, 0.75)]);
        let image = to_f64(pipe.generate(&r, &mut |_, _, _| true).unwrap().image);
        let err = rel_l2(&image, goldens.values("pipeline.image"));
        eprintln!("{model} q8 pack with a LoRA: image rel-L2 {err:.2e}");
        assert!(err <= 1e-2, "{model} q8 + LoRA: image rel-L2 {err:e}");
    }
}

/// A tensor to write: name, shape, values.
type Stored = (String, Vec<usize>, Vec<f32>);

/// Writes a safetensors file of f32 tensors.
fn write_file(path: &std::path::Path, tensors: &[Stored]) {
    let tensors: Vec<_> = tensors
        .iter()
        .map(|(name, shape, values)| {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), safetensors::Dtype::F32, shape.clone(), bytes)
        })
        .collect();
    let bytes = webdiffusion::weights::safetensors::serialize(&tensors).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn the_cli_applies_loras_and_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir("sd1-tiny");
    let (_, lora) = lora_file("lora1", "sd1-tiny", "kohya");
    let goldens = Goldens::file("lora/goldens-sd1-tiny.safetensors");

    let embeds = dir.path().join("embeds.safetensors");
    common::ok(&common::webdiffusion(&[
        "encode-prompt",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        PROMPT,
        "--lora",
        &format!("{lora}:0.75"),
        "--out",
        embeds.to_str().unwrap(),
    ]));
    let bytes = std::fs::read(&embeds).unwrap();
    let st = webdiffusion::weights::safetensors::SafetensorsFile::parse(&bytes, "embeds").unwrap();
    let (info, data) = st.get("prompt_embeds").unwrap();
    let values: Vec<f64> = webdiffusion::weights::floats(info.dtype, data)
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    let err = rel_l2(&values, goldens.values("prompt_embeds"));
    assert!(err <= TOL, "encode-prompt --lora: rel-L2 {err:e}");

    let png = dir.path().join("out.png");
    common::ok(&common::webdiffusion(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        PROMPT,
        "--steps",
        "2",
        "--seed",
        "3",
        "--lora",
        &format!("{lora}:0.75"),
        "--lora",
        &lora,
        "--out",
        png.to_str().unwrap(),
    ]));
    let text = String::from_utf8_lossy(&std::fs::read(&png).unwrap()).into_owned();
    let name = "lora1-sd1-tiny.kohya";
    assert!(
        text.contains(&format!("{PROMPT} <lora:{name}:0.75> <lora:{name}:1>")),
        "the prompt records the LoRAs as A1111 does"
    );
    assert!(
        text.contains(&format!("Lora hashes: \"{name}: ")),
        "Lora hashes field"
    );
}

#[test]
fn bad_lora_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir("sd1-tiny");
    let out = dir.path().join("out.png");
    let generate = |lora: &str| {
        common::webdiffusion(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "x",
            "--steps",
            "1",
            "--lora",
            lora,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let path = |name: &str| dir.path().join(name).display().to_string();
    let q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";

    // An SD 2.x LoRA on SD 1.x: the first key that does not fit, with both shapes.
    let (_, sd2) = lora_file("lora1", "sd2-tiny", "kohya");
    common::fails_with(
        &generate(&sd2),
        &["lora1-sd2-tiny", "do not fit", "another model"],
        &out,
    );

    // Truncated.
    let (bytes, _) = lora_file("lora1", "sd1-tiny", "kohya");
    std::fs::write(path("truncated.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    common::fails_with(
        &generate(&path("truncated.safetensors")),
        &["truncated.safetensors"],
        &out,
    );

    let pair = |name: &str, rank_up: usize, down: Vec<f32>| {
        vec![
            (format!("{name}.lora_down.weight"), vec![4, 16], down),
            (
                format!("{name}.lora_up.weight"),
                vec![16, rank_up],
                vec![0.1; 16 * rank_up],
            ),
        ]
    };
    let mut nan = vec![0.1; 64];
    nan[5] = f32::NAN;
    let te2 = "lora_te2_text_model_encoder_layers_0_mlp_fc1";
    let unknown = "lora_unet_down_blocks_7_attn_to_q";
    let cases: Vec<(&str, Vec<Stored>, Vec<&str>)> = vec![
        (
            "rank.safetensors",
            pair(q, 2, vec![0.1; 64]),
            vec!["rank.safetensors", "not a rank-4 pair"],
        ),
        (
            "nan.safetensors",
            pair(q, 4, nan),
            vec!["nan.safetensors", "non-finite", "lora_down"],
        ),
        (
            "unknown.safetensors",
            pair(unknown, 4, vec![0.1; 64]),
            vec![
                "lora_unet_down_blocks_7_attn_to_q.lora_down.weight",
                "targets no layer",
            ],
        ),
        (
            "sdxl.safetensors",
            pair(te2, 4, vec![0.1; 64]),
            vec![
                "sdxl.safetensors",
                "SDXL LoRA",
                "text_encoder_2",
                "the model is SD 1.x/2.x",
            ],
        ),
        (
            "loha.safetensors",
            vec![(format!("{q}.hada_w1_a"), vec![16, 4], vec![0.1; 64])],
            vec!["loha.safetensors", "LoHa"],
        ),
    ];
    for (name, tensors, needles) in cases {
        write_file(&dir.path().join(name), &tensors);
        common::fails_with(&generate(&path(name)), &needles, &out);
    }

    // A pickle, by extension and by content.
    std::fs::write(path("style.pt"), b"\x80\x02}q\x00.").unwrap();
    common::fails_with(&generate(&path("style.pt")), &["style.pt", "pickle"], &out);
    std::fs::write(path("pickle.safetensors"), b"\x80\x02}q\x00.").unwrap();
    common::fails_with(
        &generate(&path("pickle.safetensors")),
        &["pickle.safetensors", "pickle"],
        &out,
    );
    common::fails_with(
        &generate(&path("missing.safetensors")),
        &["missing.safetensors"],
        &out,
    );
}
