//! Parity of every component with diffusers/transformers on the tiny fixtures
//! (goldens from scripts/make_fixtures.py), on the CPU backend and on wgpu.

mod common;

use burn::tensor::DType;
use common::{Goldens, MODELS, assert_close, devices, model_dir, prompts};
use webdiffusion::files::DirFiles;
use webdiffusion::load;
use webdiffusion::models::unet::{Conditioning, Residuals};
use webdiffusion::models::vae::Vae;
use webdiffusion::weights::{ModuleLoader, SafetensorsReader, TensorReader};

const TOL: f64 = 1e-4;

#[test]
fn tokenizer_matches_transformers() {
    let prompts = prompts();
    for name in MODELS {
        let goldens = Goldens::load(name);
        let tokenizer = load::tokenizer(&DirFiles(model_dir(name)), "tokenizer").unwrap();
        for (i, prompt) in prompts.iter().enumerate() {
            let ids = tokenizer.encode(prompt).unwrap();
            assert_eq!(
                ids,
                goldens.ids(&format!("input_ids.{i}")),
                "{name}: {prompt:?}"
            );
        }
    }
}

#[test]
fn built_in_tokenizers_match_transformers() {
    // The shipped SD 1.5 / SD 2.1 tokenizers (vocab.json + merges.txt with each model's
    // special tokens) encode as transformers does for the same family.
    let prompts = prompts();
    for (builtin, fixture) in [("sd15", "sd1-tiny"), ("sd21", "sd2-tiny")] {
        let goldens = Goldens::load(fixture);
        let files = webdiffusion::builtin::config(builtin).unwrap();
        let tokenizer = load::tokenizer(&files, "tokenizer").unwrap();
        for (i, prompt) in prompts.iter().enumerate() {
            let ids = tokenizer.encode(prompt).unwrap();
            let golden = goldens.ids(&format!("input_ids.{i}"));
            assert_eq!(ids, golden, "{builtin}: {prompt:?}");
        }
    }
}

#[test]
fn text_encoder_matches_transformers() {
    for (dev_name, device) in devices() {
        for name in MODELS {
            let goldens = Goldens::load(name);
            let files = DirFiles(model_dir(name));
            let (_, encoder) = load::text_encoder(&files, &device, DType::F32).unwrap();
            let what = format!("{name} on {dev_name}");
            for i in 0..prompts().len() {
                let ids = goldens
                    .tensor::<2>(&format!("input_ids.{i}"), &device)
                    .int();
                let out = encoder.forward(ids, 0);
                assert_close(&goldens, &format!("prompt_embeds.{i}"), out, TOL, &what);
            }
            for skip in [1, 2] {
                let ids = goldens.tensor::<2>("input_ids.0", &device).int();
                let out = encoder.forward(ids, skip);
                let golden = format!("prompt_embeds.clip_skip{skip}.0");
                assert_close(&goldens, &golden, out, TOL, &what);
            }
        }
    }
}

#[test]
fn unet_matches_diffusers() {
    for (dev_name, device) in devices() {
        for name in MODELS {
            let goldens = Goldens::load(name);
            let files = DirFiles(model_dir(name));
            let (_, unet) = load::unet(&files, &device, DType::F32).unwrap();
            let sample = goldens.tensor::<4>("unet.sample", &device);
            let context = goldens.tensor::<3>("unet.encoder_hidden_states", &device);
            let what = format!("{name} on {dev_name}");
            for k in 0..4 {
                let t = goldens.values(&format!("unet.timestep.{k}"))[0] as f32;
                let out = unet.forward(
                    sample.clone(),
                    t,
                    &Conditioning::text(context.clone()),
                    None,
                );
                assert_close(
                    &goldens,
                    &format!("unet.out.{k}"),
                    out,
                    TOL,
                    &format!("{what} t={t}"),
                );
            }

            let mut down = Vec::new();
            while goldens.has(&format!("unet.down_residual.{}", down.len())) {
                let key = format!("unet.down_residual.{}", down.len());
                down.push(goldens.tensor::<4>(&key, &device));
            }
            assert!(!down.is_empty(), "goldens carry ControlNet residuals");
            let residuals = Residuals {
                down,
                mid: goldens.tensor::<4>("unet.mid_residual", &device),
            };
            let out = unet.forward(sample, 500.0, &Conditioning::text(context), Some(residuals));
            assert_close(
                &goldens,
                "unet.out_residuals",
                out,
                TOL,
                &format!("{what} residuals"),
            );
        }
    }
}

#[test]
fn vae_matches_diffusers() {
    for (dev_name, device) in devices() {
        for name in MODELS {
            let goldens = Goldens::load(name);
            let files = DirFiles(model_dir(name));
            let (config, vae) = load::vae(&files, &device, DType::F32).unwrap();
            let what = format!("{name} on {dev_name}");

            let latents = goldens.tensor::<4>("vae.latents", &device);
            let decoded = vae.decode(config.latent_space().from_latents(latents));
            assert_close(&goldens, "vae.decoded", decoded, TOL, &what);

            let Vae::Kl(kl) = vae else {
                panic!("{name}: an AutoencoderKL")
            };
            let posterior = kl.encode(goldens.tensor::<4>("vae.image", &device));
            assert_close(&goldens, "vae.mean", posterior.mean, TOL, &what);
            assert_close(&goldens, "vae.logvar", posterior.logvar, TOL, &what);
        }
    }
}

#[test]
fn weights_stream_in_small_pieces() {
    // The browser feeds weights chunk by chunk; tensors then span pieces.
    let device = burn::prelude::Device::flex();
    let goldens = Goldens::load("sd1-tiny");
    let dir = model_dir("sd1-tiny");
    let config_text = std::fs::read_to_string(dir.join("vae/config.json")).unwrap();
    let config =
        webdiffusion::models::vae::VaeConfig::parse("vae/config.json", &config_text).unwrap();
    let vae = Vae::new(&config, "vae", &device).unwrap();
    let bytes = std::fs::read(dir.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let mut reader = SafetensorsReader::default();
    let mut loader = ModuleLoader::new(vae, (&device, DType::F32));
    reader.begin("vae").unwrap();
    for piece in bytes.chunks(7777) {
        loader.apply(reader.push(piece).unwrap(), "vae").unwrap();
    }
    loader.apply(reader.end().unwrap(), "vae").unwrap();
    let vae = loader.finish("vae").unwrap();
    let latents = goldens.tensor::<4>("vae.latents", &device);
    let decoded = vae.decode(config.latent_space().from_latents(latents));
    assert_close(&goldens, "vae.decoded", decoded, TOL, "streamed VAE");
}
