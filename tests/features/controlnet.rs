//! ControlNet against diffusers (goldens from scripts/make_controlnet_fixtures.py): the
//! residuals of one call and the UNet output with them, whole 8-step runs (a guidance
//! window, a control image of another size, two ControlNets together), scale 0, the
//! single-file layout and a q8 pack; and Canny edges against OpenCV's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common::{self, Goldens, assert_close, devices, fixtures, model_dir, rel_l2, to_f64};
use burn::prelude::*;
use webdiffusion::component::Component;
use webdiffusion::files::DirFiles;
use webdiffusion::image::{self, Image};
use webdiffusion::models::unet::Conditioning;
use webdiffusion::pack::open_component;
use webdiffusion::pipeline::{Control, ControlNet, Request, StableDiffusion};

const TOL: f64 = 1e-4;
const MODELS: &[(&str, &str)] = &[
    ("sd1-tiny", "controlnet-sd1-tiny"),
    ("sd2-tiny", "controlnet-sd2-tiny"),
];

fn controlnet(pipe: &StableDiffusion, name: &str) -> Arc<ControlNet> {
    let files = open_component(&fixtures().join(name), Component::ControlNet).unwrap();
    Arc::new(pipe.load_controlnet(&*files, name).unwrap())
}

fn png(name: &str) -> Image {
    image::read_png(&fixtures().join("controlnet").join(name)).unwrap()
}

#[test]
fn residuals_and_the_unet_with_them_match_diffusers() {
    for (dev, device) in devices() {
        for (model, net) in MODELS {
            let pipe = StableDiffusion::load(&DirFiles(model_dir(model)), &device).unwrap();
            let cn = controlnet(&pipe, net);
            let goldens = Goldens::file(&format!("controlnet/goldens-{model}.safetensors"));
            let base = Goldens::load(model);
            let sample = base.tensor::<4>("unet.sample", &device);
            let text = Conditioning::text(base.tensor::<3>("unet.encoder_hidden_states", &device));
            let cond = goldens.tensor::<4>("cond", &device);
            let what = format!("{model} on {dev}");
            for (scale, suffix) in [(1.0, ""), (0.5, ".scale05")] {
                let r = cn
                    .model
                    .forward(sample.clone(), 500.0, &text, cond.clone(), scale);
                for (j, down) in r.down.into_iter().enumerate() {
                    assert_close(&goldens, &format!("down.{j}{suffix}"), down, TOL, &what);
                }
                assert_close(&goldens, &format!("mid{suffix}"), r.mid, TOL, &what);
            }
            let r = cn.model.forward(sample.clone(), 500.0, &text, cond, 1.0);
            let out = pipe
                .unet("test")
                .unwrap()
                .forward(sample, 500.0, &text, Some(r));
            assert_close(&goldens, "unet.out", out, TOL, &what);
        }
    }
}

fn request(model: &str, device: &Device, controls: Vec<Control>) -> Request {
    let latents = Goldens::load(&format!("pipeline-{model}"));
    let mut r = Request::new("a photograph of an astronaut riding a horse");
    r.negative_prompt = Some("blurry, low quality".into());
    r.steps = Some(8);
    r.guidance = 7.5;
    r.latents = Some(latents.tensor::<4>("latents", device));
    r.controlnets = controls;
    r
}

fn check(pipe: &StableDiffusion, r: &Request, goldens: &Goldens, key: &str, what: &str) {
    let out = pipe.generate(r, &mut |_, _, _| true).unwrap();
    let err = rel_l2(
        &to_f64(out.latents),
        goldens.values(&format!("{key}.latents")),
    );
    assert!(err <= 1e-3, "{what} {key}: latents rel-L2 {err:e}");
    let err = rel_l2(&to_f64(out.image), goldens.values(&format!("{key}.image")));
    assert!(err <= 1e-3, "{what} {key}: image rel-L2 {err:e}");
}

#[test]
fn eight_step_runs_match_diffusers() {
    for (dev, device) in devices() {
        for (model, net) in MODELS {
            let pipe = StableDiffusion::load(&DirFiles(model_dir(model)), &device).unwrap();
            let cn = controlnet(&pipe, net);
            let goldens = Goldens::file(&format!("controlnet/goldens-{model}.safetensors"));
            let what = format!("{model} on {dev}");
            let plain = Control::new(cn.clone(), png("control-a.png"));
            check(
                &pipe,
                &request(model, &device, vec![plain.clone()]),
                &goldens,
                "pipeline",
                &what,
            );
            let window = Control {
                scale: 0.8,
                start: 0.25,
                end: 0.75,
                ..plain.clone()
            };
            check(
                &pipe,
                &request(model, &device, vec![window]),
                &goldens,
                "window",
                &what,
            );
            let resized = Control::new(cn.clone(), png("control-c-48x40.png"));
            check(
                &pipe,
                &request(model, &device, vec![resized]),
                &goldens,
                "resized",
                &what,
            );
            if *model == "sd1-tiny" {
                let second = controlnet(&pipe, "controlnet2-sd1-tiny");
                let multi = vec![
                    Control {
                        scale: 0.7,
                        ..plain.clone()
                    },
                    Control {
                        scale: 0.5,
                        ..Control::new(second, png("control-b.png"))
                    },
                ];
                check(
                    &pipe,
                    &request(model, &device, multi),
                    &goldens,
                    "multi",
                    &what,
                );
            }
        }
    }
}

#[test]
fn scale_zero_is_no_controlnet_and_a_q8_pack_stays_within_its_limit() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let pipe = StableDiffusion::load(&DirFiles(model_dir("sd1-tiny")), &device).unwrap();
    let cn = controlnet(&pipe, "controlnet-sd1-tiny");
    let zero = Control {
        scale: 0.0,
        ..Control::new(cn, png("control-a.png"))
    };
    let with = pipe
        .generate(&request("sd1-tiny", &device, vec![zero]), &mut |_, _, _| {
            true
        })
        .unwrap();
    let without = pipe
        .generate(&request("sd1-tiny", &device, vec![]), &mut |_, _, _| true)
        .unwrap();
    assert_eq!(to_f64(with.latents), to_f64(without.latents));

    let pack = dir.path().join("cn-q8");
    let source = open_component(
        &fixtures().join("controlnet-sd1-tiny"),
        Component::ControlNet,
    )
    .unwrap();
    webdiffusion::pack::convert::convert_component(
        &*source,
        Component::ControlNet,
        webdiffusion::quant::Precision::Q8,
        &pack,
    )
    .unwrap();
    let files = open_component(&pack, Component::ControlNet).unwrap();
    let q8 = Arc::new(pipe.load_controlnet(&*files, "q8").unwrap());
    let goldens = Goldens::file("controlnet/goldens-sd1-tiny.safetensors");
    let out = pipe
        .generate(
            &request(
                "sd1-tiny",
                &device,
                vec![Control::new(q8, png("control-a.png"))],
            ),
            &mut |_, _, _| true,
        )
        .unwrap();
    let err = rel_l2(&to_f64(out.image), goldens.values("pipeline.image"));
    eprintln!("q8 ControlNet pack: image rel-L2 {err:.2e}");
    assert!(err <= 1e-2, "q8 ControlNet pack: image rel-L2 {err:e}");
}

#[test]
fn the_single_file_layout_loads_the_same_controlnet() {
    let device = Device::flex();
    let pipe = StableDiffusion::load(&DirFiles(model_dir("sd1-tiny")), &device).unwrap();
    let file = fixtures().join("single/controlnet-sd1-tiny.safetensors");
    let single =
        webdiffusion::pack::single_file::controlnet(&file, pipe.unet_config("test").unwrap())
            .unwrap();
    let cn = pipe.load_controlnet(&single, "single").unwrap();
    let goldens = Goldens::file("controlnet/goldens-sd1-tiny.safetensors");
    let base = Goldens::load("sd1-tiny");
    let text = Conditioning::text(base.tensor::<3>("unet.encoder_hidden_states", &device));
    let r = cn.model.forward(
        base.tensor::<4>("unet.sample", &device),
        500.0,
        &text,
        goldens.tensor::<4>("cond", &device),
        1.0,
    );
    assert_close(&goldens, "mid", r.mid, TOL, "single file");
    assert_close(&goldens, "down.0", r.down[0].clone(), TOL, "single file");
}

#[test]
fn a_controlnet_for_another_model_is_refused_naming_both_values() {
    let device = Device::flex();
    let pipe = StableDiffusion::load(&DirFiles(model_dir("sd1-tiny")), &device).unwrap();
    let files = open_component(
        &fixtures().join("controlnet-sd2-tiny"),
        Component::ControlNet,
    )
    .unwrap();
    let err = pipe
        .load_controlnet(&*files, "sd2")
        .unwrap_err()
        .to_string();
    assert!(err.contains("controlnet-sd2-tiny/config.json"), "{err}");
    assert!(
        err.contains("[16, 32, 48]") && err.contains("[16, 32, 32]"),
        "{err}"
    );
}

fn gray(path: &Path) -> Vec<u8> {
    image::read_png(path)
        .unwrap()
        .rgb
        .chunks(3)
        .map(|p| p[0])
        .collect()
}

#[test]
fn canny_edges_are_opencvs() {
    let dir = fixtures().join("canny");
    let list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("canny.json")).unwrap()).unwrap();
    let pairs = list["pairs"].as_array().unwrap();
    assert!(pairs.len() >= 8);
    for pair in pairs {
        let input = image::read_png(&dir.join(pair["input"].as_str().unwrap())).unwrap();
        let (low, high) = (
            pair["low"].as_f64().unwrap(),
            pair["high"].as_f64().unwrap(),
        );
        let ours = image::canny(&input, low, high);
        let opencv = gray(&dir.join(pair["output"].as_str().unwrap()));
        let differ = ours.iter().zip(&opencv).filter(|(a, b)| a != b).count();
        let edges = opencv.iter().filter(|&&v| v == 255).count();
        assert!(edges > 50, "{pair}: a golden with edges");
        assert_eq!(
            differ,
            0,
            "{pair}: {differ} of {} pixels differ from OpenCV",
            ours.len()
        );
    }
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The golden starting latents of sd1-tiny's pipeline runs, written under `dir` for `--latents`.
fn golden_latents(dir: &Path) -> PathBuf {
    let latents = dir.join("latents.safetensors");
    let goldens = Goldens::load("pipeline-sd1-tiny");
    common::write_golden(&goldens, "latents", "latents", &latents);
    latents
}

/// `generate` on sd1-tiny as the goldens' "window" run: the golden latents, 8 steps, one
/// ControlNet at scale 0.8 on control-a.png from 25% to 75% of the steps; `extra` appended.
fn generate_window(
    latents: &Path,
    controlnet: &Path,
    out: &Path,
    extra: &[&str],
) -> std::process::Output {
    let model = model_dir("sd1-tiny");
    let control = fixtures().join("controlnet/control-a.png");
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
        "--latents",
        arg(latents),
        "--controlnet",
        arg(controlnet),
        "--control-image",
        arg(&control),
        "--control-scale",
        "0.8",
        "--control-start",
        "0.25",
        "--control-end",
        "0.75",
        "--out-tensor",
        arg(out),
    ];
    args.extend_from_slice(extra);
    common::webdiffusion(&args)
}

#[test]
fn the_cli_runs_controlnets_and_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let latents = golden_latents(dir.path());
    let out = dir.path().join("out.safetensors");
    let png = dir.path().join("out.png");
    let cn = fixtures().join("controlnet-sd1-tiny");
    let control = fixtures().join("controlnet/control-a.png");
    let model = model_dir("sd1-tiny");
    common::ok(&generate_window(&latents, &cn, &out, &["--out", arg(&png)]));
    let goldens = Goldens::file("controlnet/goldens-sd1-tiny.safetensors");
    let err = rel_l2(
        &common::read_tensor(&out, "latents"),
        goldens.values("window.latents"),
    );
    assert!(err <= 1e-3, "CLI ControlNet window: latents rel-L2 {err:e}");
    let text = String::from_utf8_lossy(&std::fs::read(&png).unwrap()).into_owned();
    assert!(
        text.contains(
            "ControlNet 0: \"Module: none, Model: controlnet-sd1-tiny, Weight: 0.8, Guidance Start: 0.25, Guidance End: 0.75\""
        ),
        "A1111's ControlNet field"
    );

    // The built-in canny: edges as OpenCV draws them, and on a control image before use.
    let edges = dir.path().join("edges.png");
    let canny = fixtures().join("canny");
    let input = canny.join("shapes-96x96.png");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
        .args([
            "canny",
            "--image",
            arg(&input),
            "--low",
            "100",
            "--high",
            "200",
        ])
        .args(["--out", arg(&edges)])
        .output()
        .unwrap();
    common::ok(&run);
    assert_eq!(
        gray(&edges),
        gray(&canny.join("shapes-96x96.canny-100-200.png"))
    );
    common::ok(&common::webdiffusion(&[
        "generate",
        "--model",
        arg(&model),
        "--prompt",
        "x",
        "--steps",
        "1",
        "--controlnet",
        arg(&cn),
        "--control-image",
        arg(&control),
        "--canny",
        "100,200",
        "--out",
        arg(&png),
    ]));
    let text = String::from_utf8_lossy(&std::fs::read(&png).unwrap()).into_owned();
    assert!(text.contains("Module: canny"), "canny recorded");
}

#[test]
fn bad_controlnet_input_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let model = model_dir("sd1-tiny");
    let cn = fixtures().join("controlnet-sd1-tiny");
    let control = fixtures().join("controlnet/control-a.png");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            arg(&model),
            "--prompt",
            "x",
            "--steps",
            "1",
            "--out",
            arg(&out),
        ];
        args.extend_from_slice(extra);
        common::webdiffusion(&args)
    };
    let not_png = dir.path().join("control.png");
    std::fs::write(&not_png, b"not a png").unwrap();
    common::fails_with(
        &run(&["--controlnet", arg(&cn), "--control-image", arg(&not_png)]),
        &["control.png", "PNG"],
        &out,
    );
    let sd2 = fixtures().join("controlnet-sd2-tiny");
    common::fails_with(
        &run(&["--controlnet", arg(&sd2), "--control-image", arg(&control)]),
        &[
            "controlnet-sd2-tiny",
            "block_out_channels",
            "another model family",
        ],
        &out,
    );
    common::fails_with(
        &run(&["--control-image", arg(&control)]),
        &["--control-image", "--controlnet"],
        &out,
    );
    common::fails_with(
        &run(&["--controlnet", arg(&cn)]),
        &["--control-image"],
        &out,
    );
    for (flag, value) in [
        ("--control-start", "-0.5"),
        ("--control-end", "1.5"),
        ("--control-start", "0.9"),
    ] {
        let mut args = vec![
            "--controlnet",
            arg(&cn),
            "--control-image",
            arg(&control),
            flag,
            value,
        ];
        if value == "0.9" {
            args.extend(["--control-end", "0.2"]);
        }
        common::fails_with(&run(&args), &["control"], &out);
    }
    common::fails_with(
        &run(&[
            "--controlnet",
            arg(&cn),
            "--control-image",
            arg(&control),
            "--canny",
            "100",
        ]),
        &["--canny", "LOW,HIGH"],
        &out,
    );
    // A truncated weight file.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::copy(cn.join("config.json"), broken.join("config.json")).unwrap();
    let weights = std::fs::read(cn.join("diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(
        broken.join("diffusion_pytorch_model.safetensors"),
        &weights[..weights.len() / 3],
    )
    .unwrap();
    common::fails_with(
        &run(&[
            "--controlnet",
            arg(&broken),
            "--control-image",
            arg(&control),
        ]),
        &["broken", "diffusion_pytorch_model.safetensors"],
        &out,
    );
}

#[test]
fn the_cli_converts_controlnet_folders_and_single_files_to_packs() {
    let dir = tempfile::tempdir().unwrap();
    let latents = golden_latents(dir.path());
    let model = model_dir("sd1-tiny");
    let folder = fixtures().join("controlnet-sd1-tiny");
    let single = fixtures().join("single/controlnet-sd1-tiny.safetensors");
    let from_folder = dir.path().join("from-folder");
    let from_single = dir.path().join("from-single");
    common::ok(&cli(&[
        "convert",
        "--model",
        arg(&folder),
        "--quant",
        "f16",
        "--out",
        arg(&from_folder),
    ]));
    // The original layout has no config: the UNet's comes from --config.
    common::ok(&cli(&[
        "convert",
        "--model",
        arg(&single),
        "--config",
        arg(&model),
        "--quant",
        "f16",
        "--out",
        arg(&from_single),
    ]));
    let goldens = Goldens::file("controlnet/goldens-sd1-tiny.safetensors");
    let mut runs = Vec::new();
    for pack in [&from_folder, &from_single] {
        let out = dir.path().join("out.safetensors");
        common::ok(&generate_window(&latents, pack, &out, &[]));
        let latents = common::read_tensor(&out, "latents");
        let err = rel_l2(&latents, goldens.values("window.latents"));
        assert!(err <= 1e-2, "{}: latents rel-L2 {err:e}", pack.display());
        std::fs::remove_file(&out).unwrap();
        runs.push(latents);
    }
    assert_eq!(
        runs[0], runs[1],
        "the folder and the single file give one pack"
    );

    // A component folder that is not a ControlNet, and a UNet config that does not fit.
    let unet = model.join("unet");
    let out = dir.path().join("bad");
    common::fails_with(
        &cli(&[
            "convert",
            "--model",
            arg(&unet),
            "--quant",
            "q8",
            "--out",
            arg(&out),
        ]),
        &[
            "unet/config.json",
            "UNet2DConditionModel",
            "ControlNetModel",
        ],
        &out,
    );
    common::fails_with(
        &cli(&[
            "convert",
            "--model",
            arg(&single),
            "--config",
            arg(&model_dir("sd2-tiny")),
            "--quant",
            "q8",
            "--out",
            arg(&out),
        ]),
        &["controlnet-sd1-tiny.safetensors"],
        &out,
    );
}

/// Runs the CLI with exactly `args` (`convert` takes no --backend).
fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
        .args(args)
        .output()
        .expect("run webdiffusion")
}
