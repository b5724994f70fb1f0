//! TAESD (`AutoencoderTiny`) against diffusers (goldens from scripts/make_taesd_fixtures.py):
//! decode and encode, on the CPU and on wgpu; `--vae` on `vae-decode` and `generate`; the
//! preview decoder; a VAE that does not fit.

use std::path::Path;

use crate::common::{self, Goldens, assert_close, devices, fixtures, model_dir, rel_l2, to_f64};
use burn::prelude::*;
use burn::tensor::DType;
use webdiffusion::component::Component;
use webdiffusion::files::DirFiles;
use webdiffusion::load;
use webdiffusion::models::vae::Vae;
use webdiffusion::pack::open_component;
use webdiffusion::pipeline::{Request, StableDiffusion};

const TOL: f64 = 1e-4;

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn decode_and_encode_match_diffusers() {
    let goldens = Goldens::file("taesd/goldens.safetensors");
    for (dev, device) in devices() {
        let files = open_component(&fixtures().join("taesd-tiny"), Component::Vae).unwrap();
        let (config, vae) =
            load::network::<Vae>(&*files, Component::Vae, &device, DType::F32).unwrap();
        assert_eq!(config.scale_factor(), 8);
        assert!(matches!(vae, Vae::Tiny(_)));
        let what = format!("TAESD on {dev}");
        let image = vae.decode(goldens.tensor::<4>("decode.latents", &device));
        assert_close(&goldens, "decode.image", image, TOL, &what);
        let latents = vae.encode(goldens.tensor::<4>("encode.image", &device));
        assert_close(&goldens, "encode.latents", latents, TOL, &what);
    }
}

#[test]
fn the_cli_decodes_and_generates_with_another_vae() {
    let dir = tempfile::tempdir().unwrap();
    let goldens = Goldens::file("taesd/goldens.safetensors");
    let latents = dir.path().join("latents.safetensors");
    common::write_golden(&goldens, "decode.latents", "latents", &latents);
    let out = dir.path().join("image.safetensors");
    let model = model_dir("sd1-tiny");
    let taesd = fixtures().join("taesd-tiny");
    common::ok(&common::webdiffusion(&[
        "vae-decode",
        "--model",
        arg(&model),
        "--vae",
        arg(&taesd),
        "--latents",
        arg(&latents),
        "--out",
        arg(&out),
    ]));
    let err = rel_l2(
        &common::read_tensor(&out, "image"),
        goldens.values("decode.image"),
    );
    assert!(err <= TOL, "vae-decode --vae: rel-L2 {err:e}");

    // generate: the same latents as without --vae, decoded by TAESD at its ×8; TAESD as
    // the preview decoder too, whose PNG after the last step shows those final latents.
    let preview = dir.path().join("preview.png");
    let start = dir.path().join("start.safetensors");
    common::write_golden(
        &Goldens::load("pipeline-sd1-tiny"),
        "latents",
        "latents",
        &start,
    );
    common::ok(&common::webdiffusion(&[
        "generate",
        "--model",
        arg(&model),
        "--vae",
        arg(&taesd),
        "--preview-vae",
        arg(&taesd),
        "--preview",
        arg(&preview),
        "--prompt",
        "a photograph of an astronaut riding a horse",
        "--negative-prompt",
        "blurry, low quality",
        "--steps",
        "8",
        "--latents",
        arg(&start),
        "--out-tensor",
        arg(&out),
    ]));
    let own = Goldens::load("pipeline-sd1-tiny");
    let err = rel_l2(
        &common::read_tensor(&out, "latents"),
        own.values("own.latents"),
    );
    assert!(err <= 1e-3, "generate --vae: latents rel-L2 {err:e}");
    let err = rel_l2(
        &common::read_tensor(&out, "image"),
        goldens.values("pipeline.image"),
    );
    assert!(err <= 1e-3, "generate --vae: image rel-L2 {err:e}");
    let png = webdiffusion::image::read_png(&preview).unwrap();
    assert_eq!((png.width, png.height), (128, 128));
    let pixels: Vec<f64> = png.rgb.iter().map(|&v| v as f64 / 255.0).collect();
    let expected = goldens.values("pipeline.image");
    let worst = (pixels.iter().zip(expected))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    // 8-bit rounding (half a level) and the decoders' own parity.
    assert!(worst <= 0.5 / 255.0 + 2e-3, "--preview: off by {worst:e}");
}

#[test]
fn the_preview_decoder_shows_the_current_latents() {
    let device = Device::flex();
    let mut pipe = StableDiffusion::load(&DirFiles(model_dir("sd1-tiny")), &device).unwrap();
    let files = open_component(&fixtures().join("taesd-tiny"), Component::Vae).unwrap();
    pipe.load_preview(&*files).unwrap();
    let mut r = Request::new("x");
    r.steps = Some(2);
    let mut generation = pipe
        .start(&r, Box::new(webdiffusion::noise::Generator::new(1)))
        .unwrap();
    generation.step();
    let preview = generation.preview().expect("a preview");
    assert_eq!(preview.dims(), [128, 128, 3]);
    // TAESD's decode of those very latents, as an image.
    let (_, vae) = pipe.preview.as_ref().unwrap();
    let decoded = vae.decode(generation.latents().clone());
    let expected = (decoded / 2.0 + 0.5)
        .clamp(0.0, 1.0)
        .reshape([3, 128, 128])
        .permute([1, 2, 0]);
    assert_eq!(to_f64(preview), to_f64(expected));
}

/// `generate` on the tiny SD 1.x model, one step, writing `out`, with `extra` flags.
fn generate_tiny(out: &Path, extra: &[&str]) -> std::process::Output {
    let model = model_dir("sd1-tiny");
    let base = [
        "generate",
        "--model",
        arg(&model),
        "--prompt",
        "x",
        "--steps",
        "1",
    ];
    common::webdiffusion(&[&base[..], extra, &["--out", arg(out)]].concat())
}

#[test]
fn a_vae_that_does_not_fit_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let preview = dir.path().join("preview.png");
    let other = dir.path().join("vae");
    common::copy_dir(&fixtures().join("taesd-tiny"), &other);
    let config = other.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let as_vae = ["--vae", arg(&other)];
    std::fs::write(
        &config,
        text.replace("\"latent_channels\": 4", "\"latent_channels\": 8"),
    )
    .unwrap();
    let needles = ["config.json", "latent_channels", "8", "4"];
    common::fails_with(&generate_tiny(&out, &as_vae), &needles, &out);
    // As the preview decoder too, before any step runs (no preview is written).
    let as_preview = ["--preview-vae", arg(&other), "--preview", arg(&preview)];
    common::fails_with(&generate_tiny(&out, &as_preview), &needles, &out);
    assert!(!preview.exists(), "a preview was written");
    std::fs::write(&config, text.replace("AutoencoderTiny", "VQModel")).unwrap();
    common::fails_with(
        &generate_tiny(&out, &as_vae),
        &["config.json", "_class_name", "VQModel"],
        &out,
    );
}

#[test]
fn a_preview_needs_its_decoder_and_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let preview = dir.path().join("preview.png");
    let taesd = fixtures().join("taesd-tiny");
    let alone = generate_tiny(&out, &["--preview", arg(&preview)]);
    common::fails_with(&alone, &["--preview-vae"], &out);
    let alone = generate_tiny(&out, &["--preview-vae", arg(&taesd)]);
    common::fails_with(&alone, &["--preview"], &out);
    // A folder where the preview PNG should go, refused before any work.
    let folder = ["--preview-vae", arg(&taesd), "--preview", arg(dir.path())];
    common::fails_with(&generate_tiny(&out, &folder), &["is a folder"], &out);
}
