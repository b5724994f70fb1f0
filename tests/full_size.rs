//! The full-size SD 1.5 and SD 2.1 networks, built from their real config.json files, have
//! exactly diffusers' parameter counts. Parameters are lazy, so nothing is allocated.

mod common;

use burn::module::Module;
use burn::prelude::*;
use common::fixtures;
use webdiffusion::config::parse;
use webdiffusion::models::clip::ClipTextModel;
use webdiffusion::models::unet::UNet2DConditionModel;
use webdiffusion::models::vae::AutoencoderKL;

fn config<T: serde::de::DeserializeOwned>(model: &str, component: &str) -> T {
    let path = fixtures().join(format!("configs/{model}/{component}/config.json"));
    parse(
        &path.display().to_string(),
        &std::fs::read_to_string(&path).unwrap(),
    )
    .unwrap()
}

#[test]
fn parameter_counts_match_diffusers() {
    let counts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("configs/param_counts.json")).unwrap(),
    )
    .unwrap();
    let device = Device::flex();
    for model in ["sd15", "sd21"] {
        let expected = |k: &str| counts[model][k].as_u64().unwrap() as usize;

        let unet = UNet2DConditionModel::new(&config(model, "unet"), "unet", &device).unwrap();
        assert_eq!(unet.num_params(), expected("unet"), "{model} unet");

        let vae = AutoencoderKL::new(&config(model, "vae"), "vae", &device).unwrap();
        assert_eq!(vae.num_params(), expected("vae"), "{model} vae");
        let decoder = vae.decoder.num_params() + vae.post_quant_conv.num_params();
        assert_eq!(decoder, expected("vae_decoder"), "{model} vae decoder");

        let clip = ClipTextModel::new(&config(model, "text_encoder"), "clip", &device).unwrap();
        assert_eq!(
            clip.num_params(),
            expected("text_encoder"),
            "{model} text encoder"
        );
    }
}
