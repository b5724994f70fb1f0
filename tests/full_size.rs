//! The full-size SD 1.5, SD 2.1, SDXL and SD3.5 networks, built from the config.json files shipped in
//! crate/assets (the hub repositories' values), have exactly diffusers' parameter counts.
//! Parameters are lazy, so nothing is allocated.

mod common;

use burn::module::Module;
use burn::prelude::*;
use common::fixtures;
use webdiffusion::builtin;
use webdiffusion::component::Component;
use webdiffusion::load::build;
use webdiffusion::models::clip::ClipTextModel;
use webdiffusion::models::mmdit::SD3Transformer2DModel;
use webdiffusion::models::t5::T5EncoderModel;
use webdiffusion::models::unet::UNet2DConditionModel;
use webdiffusion::models::vae::Vae;

#[test]
fn parameter_counts_match_diffusers() {
    let counts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("configs/param_counts.json")).unwrap(),
    )
    .unwrap();
    let sdxl: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("configs/param_counts_sdxl.json")).unwrap(),
    )
    .unwrap();
    let device = Device::flex();
    for model in ["sd15", "sd21", "sdxl", "sdxl-turbo"] {
        // SDXL-Turbo is SDXL's networks; SDXL's first text encoder is SD 1.5's.
        let expected = |k: &str| {
            let counts = match (model, k) {
                ("sdxl" | "sdxl-turbo", "text_encoder") => &counts["sd15"],
                ("sdxl" | "sdxl-turbo", _) => &sdxl["sdxl"],
                _ => &counts[model],
            };
            counts[k].as_u64().unwrap() as usize
        };
        let files = builtin::config(model).unwrap();

        let (_, unet) = build::<UNet2DConditionModel>(&files, Component::Unet, &device).unwrap();
        assert_eq!(unet.num_params(), expected("unet"), "{model} unet");

        let (_, vae) = build::<Vae>(&files, Component::Vae, &device).unwrap();
        let Vae::Kl(vae) = vae else {
            panic!("{model}: an AutoencoderKL")
        };
        assert_eq!(vae.num_params(), expected("vae"), "{model} vae");
        let decoder = vae.decoder.num_params() + vae.post_quant_conv.num_params();
        assert_eq!(decoder, expected("vae_decoder"), "{model} vae decoder");

        let (_, clip) = build::<ClipTextModel>(&files, Component::TextEncoder, &device).unwrap();
        assert_eq!(
            clip.num_params(),
            expected("text_encoder"),
            "{model} text encoder"
        );
        if model.starts_with("sdxl") {
            let (_, clip) =
                build::<ClipTextModel>(&files, Component::TextEncoder2, &device).unwrap();
            assert_eq!(
                clip.num_params(),
                expected("text_encoder_2"),
                "{model} text_encoder_2"
            );
        }
    }
}

#[test]
fn sd35_parameter_counts_match_diffusers() {
    let counts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("configs/param_counts_sd35.json")).unwrap(),
    )
    .unwrap();
    let device = Device::flex();
    for model in ["sd35m", "sd35l-turbo"] {
        let expected = |k: &str| counts[model][k].as_u64().unwrap() as usize;
        let files = builtin::config(model).unwrap();
        let (_, transformer) =
            build::<SD3Transformer2DModel>(&files, Component::Transformer, &device).unwrap();
        // diffusers' position table is a buffer, which is computed here (not a parameter).
        assert_eq!(
            transformer.num_params(),
            expected("transformer"),
            "{model} transformer"
        );
        let (_, vae) = build::<Vae>(&files, Component::Vae, &device).unwrap();
        assert_eq!(vae.num_params(), expected("vae"), "{model} vae");
        for (component, key) in [
            (Component::TextEncoder, "text_encoder"),
            (Component::TextEncoder2, "text_encoder_2"),
        ] {
            let (_, clip) = build::<ClipTextModel>(&files, component, &device).unwrap();
            assert_eq!(clip.num_params(), expected(key), "{model} {key}");
        }
        let (_, t5) = build::<T5EncoderModel>(&files, Component::TextEncoder3, &device).unwrap();
        assert_eq!(t5.num_params(), expected("text_encoder_3"), "{model} T5");
        // The whole pipeline builds from the built-in configs (the stand-in T5 tokenizer).
        webdiffusion::pipeline::Parts::build(&files, &device, burn::tensor::DType::F32).unwrap();
    }
}
