//! Inpainting against diffusers' StableDiffusionInpaintPipeline (goldens from
//! scripts/make_inpaint_fixtures.py, posterior mean for the VAE): a 9-channel inpainting
//! UNet and 4-channel models (blending), at strength 1 with given latents and at 0.75
//! with given noise; an inpainting model asked for a plain text-to-image; bad masks.

use crate::common::{self, Goldens, devices, fixtures, model_dir, rel_l2, to_f64};
use burn::prelude::*;
use webdiffusion::files::DirFiles;
use webdiffusion::image;
use webdiffusion::pipeline::{Request, StableDiffusion};

const TOL: f64 = 1e-3;

fn request(model: &str, goldens: &Goldens, device: &Device, mask: &str) -> Request {
    let mut r = Request::new("a photograph of an astronaut riding a horse");
    r.negative_prompt = Some("blurry, low quality".into());
    r.steps = Some(8);
    r.guidance = 7.5;
    let base = model.trim_end_matches("-inpaint");
    let png = image::read_png(&fixtures().join(format!("goldens/{base}-vae-input.png"))).unwrap();
    r.init_image = Some(image::image_to_tensor(&png, device));
    r.mask = Some(image::read_png(&fixtures().join("inpaint").join(mask)).unwrap());
    r.latents = Some(goldens.tensor::<4>("latents_in", device));
    r
}

fn check(pipe: &StableDiffusion, r: &Request, goldens: &Goldens, key: &str, what: &str) {
    let out = pipe.generate(r, &mut |_, _, _| true).unwrap();
    let err = rel_l2(
        &to_f64(out.latents),
        goldens.values(&format!("{key}.latents")),
    );
    assert!(err <= TOL, "{what} {key}: latents rel-L2 {err:e}");
    let err = rel_l2(&to_f64(out.image), goldens.values(&format!("{key}.image")));
    assert!(err <= TOL, "{what} {key}: image rel-L2 {err:e}");
}

#[test]
fn both_kinds_of_model_match_diffusers_at_both_strengths() {
    for (dev, device) in devices() {
        for model in ["sd1-tiny-inpaint", "sd1-tiny", "sd2-tiny"] {
            let pipe = StableDiffusion::load(&DirFiles(model_dir(model)), &device).unwrap();
            assert_eq!(pipe.is_inpainting(), model.ends_with("inpaint"));
            let goldens = Goldens::file(&format!("inpaint/goldens-{model}.safetensors"));
            let what = format!("{model} on {dev}");

            let mut r = request(model, &goldens, &device, "mask-32.png");
            r.strength = 1.0;
            check(&pipe, &r, &goldens, "s1", &what);

            r.strength = 0.75;
            r.latents = None;
            r.noise = Some(goldens.tensor::<4>("s075.noise", &device));
            check(&pipe, &r, &goldens, "s075", &what);
        }
    }
}

#[test]
fn an_inpainting_model_paints_a_whole_picture_without_an_init_image() {
    let device = Device::flex();
    let pipe = StableDiffusion::load(&DirFiles(model_dir("sd1-tiny-inpaint")), &device).unwrap();
    let goldens = Goldens::file("inpaint/goldens-sd1-tiny-inpaint.safetensors");
    // diffusers with an all-white mask: the masked image is blank whatever the image.
    let mut r = request("sd1-tiny-inpaint", &goldens, &device, "mask-white-32.png");
    r.strength = 1.0;
    check(&pipe, &r, &goldens, "white", "white mask");
    // The same as a plain text-to-image request.
    r.init_image = None;
    r.mask = None;
    check(&pipe, &r, &goldens, "white", "no init image");
}

#[test]
fn bad_masks_are_refused_by_name() {
    let device = Device::flex();
    let pipe = StableDiffusion::load(&DirFiles(model_dir("sd1-tiny")), &device).unwrap();
    let goldens = Goldens::file("inpaint/goldens-sd1-tiny.safetensors");
    let error = |r: &Request| match pipe.start(r, Box::new(webdiffusion::noise::Generator::new(0)))
    {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted"),
    };

    let r = request("sd1-tiny", &goldens, &device, "mask-black-32.png");
    assert!(error(&r).contains("all black"), "{}", error(&r));

    let mut r = request("sd1-tiny", &goldens, &device, "mask-32.png");
    r.mask = Some(image::Image {
        width: 16,
        height: 32,
        rgb: vec![255; 16 * 32 * 3],
    });
    assert!(error(&r).contains("16×32"), "{}", error(&r));

    let mut r = request("sd1-tiny", &goldens, &device, "mask-32.png");
    r.init_image = None;
    assert!(error(&r).contains("needs an init image"), "{}", error(&r));

    for strength in [0.0, 1.5, f64::NAN] {
        let mut r = request("sd1-tiny", &goldens, &device, "mask-32.png");
        r.strength = strength;
        assert!(error(&r).contains("strength"), "{strength}: {}", error(&r));
    }
}

fn arg(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_cli_inpaints_and_refuses_bad_masks() {
    let dir = tempfile::tempdir().unwrap();
    let goldens = Goldens::file("inpaint/goldens-sd1-tiny.safetensors");
    let noise = dir.path().join("noise.safetensors");
    common::write_golden(&goldens, "s075.noise", "noise", &noise);
    let model = model_dir("sd1-tiny");
    let init = fixtures().join("goldens/sd1-tiny-vae-input.png");
    let mask = fixtures().join("inpaint/mask-32.png");
    let out = dir.path().join("out.safetensors");
    let png = dir.path().join("out.png");
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            arg(&model),
            "--prompt",
            "a photograph of an astronaut riding a horse",
            "--negative-prompt",
            "blurry, low quality",
            "--steps",
            "8",
            "--init-image",
            arg(&init),
        ];
        args.extend_from_slice(extra);
        common::webdiffusion(&args)
    };
    common::ok(&generate(&[
        "--mask",
        arg(&mask),
        "--strength",
        "0.75",
        "--noise",
        arg(&noise),
        "--out-tensor",
        arg(&out),
    ]));
    let err = rel_l2(
        &common::read_tensor(&out, "latents"),
        goldens.values("s075.latents"),
    );
    assert!(err <= TOL, "CLI inpainting: latents rel-L2 {err:e}");

    let not_png = dir.path().join("mask.png");
    std::fs::write(&not_png, b"GIF89a").unwrap();
    common::fails_with(
        &generate(&["--mask", arg(&not_png), "--out", arg(&png)]),
        &["mask.png", "PNG"],
        &png,
    );
    let black = fixtures().join("inpaint/mask-black-32.png");
    common::fails_with(
        &generate(&["--mask", arg(&black), "--out", arg(&png)]),
        &["mask", "all black"],
        &png,
    );
    common::fails_with(
        &generate(&[
            "--mask",
            arg(&mask),
            "--strength",
            "1.5",
            "--out",
            arg(&png),
        ]),
        &["strength", "1.5"],
        &png,
    );

    // A VAE published without its encoder cannot encode the init image.
    let copy = dir.path().join("decoder-only");
    common::copy_dir(&model, &copy);
    let vae = copy.join("vae/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&vae).unwrap();
    let st = webdiffusion::weights::safetensors::SafetensorsFile::parse(&bytes, "vae").unwrap();
    let kept: Vec<_> = st
        .tensors()
        .filter(|(t, _)| !t.name.starts_with("encoder.") && !t.name.starts_with("quant_conv."))
        .map(|(t, data)| (t.name.clone(), t.dtype, t.shape.clone(), data.to_vec()))
        .collect();
    std::fs::write(
        &vae,
        webdiffusion::weights::safetensors::serialize(&kept).unwrap(),
    )
    .unwrap();
    let args = [
        "generate",
        "--model",
        arg(&copy),
        "--prompt",
        "x",
        "--steps",
        "2",
        "--out",
        arg(&png),
    ];
    common::ok(&common::webdiffusion(&args));
    std::fs::remove_file(&png).unwrap();
    let mut args = args.to_vec();
    args.extend(["--init-image", arg(&init)]);
    common::fails_with(&common::webdiffusion(&args), &["no encoder"], &png);
}
