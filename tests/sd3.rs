//! SD3's pieces against diffusers (tests/fixtures/sd3-tiny and sd3-tiny-no-t5, goldens
//! from scripts/make_sd3_fixtures.py): the T5 tokenizer and encoder, the joint prompt
//! embeddings with and without T5, the MMDiT (dual attention, qk-norm, skipped layers,
//! non-square and cropped positions), the shifted 16-channel VAE, the flow-matching
//! scheduler, and whole runs (txt2img with and without T5 and CFG, non-square,
//! skip-layer guidance, img2img) on every device.

mod common;

use burn::prelude::*;
use common::{Goldens, assert_close, devices, model_dir};
use webdiffusion::component::Component;
use webdiffusion::family::Family;
use webdiffusion::files::{DirFiles, WithoutT5};
use webdiffusion::image;
use webdiffusion::load;
use webdiffusion::models::mmdit::SD3Transformer2DModel;
use webdiffusion::models::vae::Vae;
use webdiffusion::pipeline::{Reading, Request, SkipLayerGuidance, StableDiffusion};
use webdiffusion::schedulers;

const TOL: f64 = 1e-4;
const PROMPT: &str = common::GOLDEN_PROMPT;
const NEGATIVE: &str = common::GOLDEN_NEGATIVE;

fn files(name: &str) -> DirFiles {
    DirFiles(model_dir(name))
}

#[test]
fn t5_tokenizer_and_encoder_and_the_joint_prompt_embeddings_match_diffusers() {
    let goldens = Goldens::load("sd3-tiny");
    let device = Device::flex();
    let pipe = StableDiffusion::load(&files("sd3-tiny"), &device).unwrap();
    assert_eq!(pipe.family, Family::Sd3);
    let t5 = pipe.text.t5.as_ref().expect("sd3-tiny has T5");
    let models = pipe.text.prepare(&[], &[]).unwrap();
    for (i, prompt) in common::prompts().iter().enumerate() {
        let ids = t5.tokenizer.encode(prompt, 256).unwrap();
        assert_eq!(ids, goldens.ids(&format!("input_ids_3.{i}")), "{prompt:?}");
        let embeds = pipe
            .text
            .encode(&models, prompt, &Reading::literal(), &device)
            .unwrap();
        let what = format!("prompt {i}");
        assert_close(
            &goldens,
            &format!("prompt_embeds.{i}"),
            embeds.context,
            TOL,
            &what,
        );
        let pooled = embeds.pooled.expect("pooled");
        assert_close(
            &goldens,
            &format!("pooled_prompt_embeds.{i}"),
            pooled,
            TOL,
            &what,
        );
    }
    let ids = t5.tokenizer.encode(&common::prompts()[0], 32).unwrap();
    assert_eq!(ids, goldens.ids("input_ids_3.msl32.0"));
    let short = Reading {
        t5_length: 32,
        ..Reading::literal()
    };
    let embeds = pipe.text.encode(&models, PROMPT, &short, &device).unwrap();
    assert_close(
        &goldens,
        "prompt_embeds.msl32.0",
        embeds.context,
        TOL,
        "length 32",
    );
    for i in 0..2 {
        let ids = goldens.ids(&format!("input_ids_3.{i}"));
        let hidden = t5.model.encode(&ids, &device);
        assert_close(&goldens, &format!("t5.hidden.{i}"), hidden, TOL, "T5");
    }
    // With its weights held in f16, T5 still computes in f32 (its feed-forward overflows
    // f16 in real checkpoints): the same result, to f32 rounding.
    let (_, half) = load::network::<webdiffusion::models::t5::T5EncoderModel>(
        &files("sd3-tiny"),
        Component::TextEncoder3,
        &device,
        burn::tensor::DType::F16,
    )
    .unwrap();
    let hidden = half.encode(&goldens.ids("input_ids_3.0"), &device);
    assert_eq!(hidden.dtype(), burn::tensor::DType::F32);
    assert_close(&goldens, "t5.hidden.0", hidden, TOL, "T5 with f16 weights");
    for (run, negative) in [("empty", ""), ("text", NEGATIVE)] {
        let embeds = pipe
            .text
            .encode(&models, negative, &Reading::literal(), &device)
            .unwrap();
        let name = format!("negative.{run}");
        assert_close(
            &goldens,
            &format!("{name}.prompt_embeds"),
            embeds.context,
            TOL,
            &name,
        );
        let pooled = embeds.pooled.unwrap();
        assert_close(
            &goldens,
            &format!("{name}.pooled_prompt_embeds"),
            pooled,
            TOL,
            &name,
        );
    }

    // Without T5 (a folder without it, or one with it opted out): zeros in its place.
    for (what, pipe) in [
        (
            "no T5 in the folder",
            StableDiffusion::load(&files("sd3-tiny-no-t5"), &device),
        ),
        (
            "T5 left out",
            StableDiffusion::load(&WithoutT5(files("sd3-tiny")), &device),
        ),
    ] {
        let pipe = pipe.unwrap();
        assert!(pipe.text.t5.is_none(), "{what}");
        let embeds = pipe
            .text
            .encode(&models, PROMPT, &Reading::literal(), &device)
            .unwrap();
        assert_close(&goldens, "no_t5.prompt_embeds.0", embeds.context, TOL, what);
        let pooled = embeds.pooled.unwrap();
        assert_close(&goldens, "no_t5.pooled_prompt_embeds.0", pooled, TOL, what);
    }
}

#[test]
fn the_mmdit_and_the_shifted_vae_match_diffusers_on_every_device() {
    let goldens = Goldens::load("sd3-tiny");
    let files = files("sd3-tiny");
    for (name, device) in devices() {
        let (_, model) = load::network::<SD3Transformer2DModel>(
            &files,
            Component::Transformer,
            &device,
            burn::tensor::DType::F32,
        )
        .unwrap();
        let t = goldens.values("transformer.timestep").to_vec();
        let x = goldens.tensor::<4>("transformer.hidden_states", &device);
        let context = goldens.tensor::<3>("transformer.encoder_hidden_states", &device);
        let pooled = goldens.tensor::<2>("transformer.pooled_projections", &device);
        // One timestep per call here: run each row on its own.
        let rows = |x: Tensor<4>, skip: &[usize]| {
            let outs = (0..2)
                .map(|i| {
                    model.forward(
                        x.clone().narrow(0, i, 1),
                        t[i] as f32,
                        context.clone().narrow(0, i, 1),
                        pooled.clone().narrow(0, i, 1),
                        skip,
                    )
                })
                .collect();
            Tensor::cat(outs, 0)
        };
        let what = format!("{name}: transformer");
        assert_close(
            &goldens,
            "transformer.out",
            rows(x.clone(), &[]),
            TOL,
            &what,
        );
        assert_close(&goldens, "transformer.out_skip1", rows(x, &[1]), TOL, &what);
        for (input, out) in [
            ("transformer.hidden_states_ns", "transformer.out_ns"),
            ("transformer.hidden_states_big", "transformer.out_big"),
        ] {
            let x = goldens.tensor::<4>(input, &device);
            let y = model.forward(
                x,
                500.0,
                context.clone().narrow(0, 0, 1),
                pooled.clone().narrow(0, 0, 1),
                &[],
            );
            assert_close(&goldens, out, y, TOL, &what);
        }

        let (config, vae) =
            load::network::<Vae>(&files, Component::Vae, &device, burn::tensor::DType::F32)
                .unwrap();
        let latents = goldens.tensor::<4>("vae.latents", &device);
        let decoded = vae.decode(config.latent_space().from_latents(latents));
        assert_close(
            &goldens,
            "vae.decoded",
            decoded,
            TOL,
            &format!("{name}: VAE"),
        );
        let png = image::read_png(&common::fixtures().join("goldens/sd3-tiny-img2img-input.png"))
            .unwrap();
        let mean = vae.encode(image::image_to_tensor(&png, &device));
        assert_close(
            &goldens,
            "vae.posterior_mean",
            mean,
            TOL,
            &format!("{name}: VAE"),
        );
    }
}

#[test]
fn the_flow_matching_scheduler_gives_diffusers_sigmas_and_timesteps() {
    let goldens = Goldens::load("sd3-tiny");
    let config = load::scheduler_config(&files("sd3-tiny")).unwrap();
    for steps in [1, 4, 8, 28] {
        let s = schedulers::build("flow-euler", &config, steps, 0.0).unwrap();
        let expected = goldens.values(&format!("scheduler.timesteps.{steps}"));
        assert_eq!(s.timesteps().len(), steps);
        for (a, e) in s.timesteps().iter().zip(expected) {
            assert!(
                (a - e).abs() <= 1e-6 * e.abs().max(1.0),
                "{steps} steps: {a} vs {e}"
            );
        }
    }
}

/// Runs `r` and compares the final latents and image with the goldens of `run`
/// (rel-L2 ≤ 1e-3, as every pipeline).
fn check_run(goldens: &Goldens, run: &str, pipe: &StableDiffusion, r: &Request) {
    let out = pipe.generate(r, &mut |_, _, _| true).unwrap();
    for (key, actual) in [
        ("latents", common::to_f64(out.latents)),
        ("image", common::to_f64(out.image)),
    ] {
        let err = common::rel_l2(&actual, goldens.values(&format!("{run}.{key}")));
        assert!(err <= 1e-3, "{run}: {key} rel-L2 {err:e}");
    }
}

#[test]
fn sd3_txt2img_with_and_without_t5_and_cfg_and_img2img_match_diffusers() {
    let goldens = Goldens::load("sd3-tiny");
    for (name, device) in devices() {
        let pipe = StableDiffusion::load(&files("sd3-tiny"), &device).unwrap();
        assert_eq!(pipe.default_scheduler().unwrap(), "flow-euler");
        let request = |guidance: f64, negative: Option<&str>, latents: &str| {
            let mut r = Request::new(PROMPT);
            r.negative_prompt = negative.map(String::from);
            r.steps = Some(4);
            r.guidance = guidance;
            r.latents = Some(goldens.tensor::<4>(latents, &device));
            r
        };
        let euler = request(5.0, Some(NEGATIVE), "txt2img.latents");
        check_run(&goldens, "euler", &pipe, &euler);
        if name == "wgpu" {
            continue; // one whole run per device is enough for the wgpu kernels
        }
        let no_t5 = StableDiffusion::load(&files("sd3-tiny-no-t5"), &device).unwrap();
        check_run(&goldens, "euler_no_t5", &no_t5, &euler);
        check_run(
            &goldens,
            "euler_nocfg",
            &pipe,
            &request(1.0, None, "txt2img.latents"),
        );
        check_run(
            &goldens,
            "turbo",
            &pipe,
            &request(0.0, None, "txt2img.latents"),
        );
        let mut ns = request(5.0, Some(NEGATIVE), "txt2img.latents_ns");
        (ns.height, ns.width) = (Some(48), Some(64));
        check_run(&goldens, "euler_ns", &pipe, &ns);

        let png = image::read_png(&common::fixtures().join("goldens/sd3-tiny-img2img-input.png"))
            .unwrap();
        let mut r = Request::new(PROMPT);
        r.negative_prompt = Some(NEGATIVE.into());
        r.steps = Some(8);
        r.guidance = 5.0;
        r.init_image = Some(image::image_to_tensor(&png, &device));
        r.strength = 0.6;
        r.noise = Some(goldens.tensor::<4>("img2img.noise", &device));
        check_run(&goldens, "img2img", &pipe, &r);
    }
}

#[test]
fn skip_layer_guidance_matches_diffusers() {
    let goldens = Goldens::load("sd3-tiny");
    let settings: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("goldens/sd3.json")).unwrap(),
    )
    .unwrap();
    let device = Device::flex();
    let pipe = StableDiffusion::load(&files("sd3-tiny"), &device).unwrap();
    let slg = &settings["skip_layer_guidance"];
    for run in ["euler_slg", "euler_slg_window"] {
        let spec = &slg["runs"][run];
        let mut r = Request::new(PROMPT);
        r.negative_prompt = Some(NEGATIVE.into());
        r.steps = Some(spec["num_inference_steps"].as_u64().unwrap() as usize);
        r.guidance = 5.0;
        r.latents = Some(goldens.tensor::<4>("txt2img.latents", &device));
        let layers = spec["skip_guidance_layers"].as_array().unwrap();
        let mut guidance = SkipLayerGuidance::new(
            layers
                .iter()
                .map(|l| l.as_u64().unwrap() as usize)
                .collect(),
        );
        guidance.scale = spec["skip_layer_guidance_scale"].as_f64().unwrap();
        guidance.start = spec["skip_layer_guidance_start"].as_f64().unwrap();
        guidance.stop = spec["skip_layer_guidance_stop"].as_f64().unwrap();
        r.skip_layer_guidance = Some(guidance);
        check_run(&goldens, run, &pipe, &r);
    }
}

#[test]
fn the_cli_detects_sd3_encodes_prompts_and_generates_with_and_without_t5() {
    let goldens = Goldens::load("sd3-tiny");
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir("sd3-tiny");
    let model = model.to_str().unwrap();
    let embeds = dir.path().join("embeds.safetensors");
    let e = embeds.to_str().unwrap();
    for (extra, prefix) in [(None, ""), (Some("--no-t5"), "no_t5.")] {
        let mut args = vec![
            "encode-prompt",
            "--model",
            model,
            "--prompt",
            PROMPT,
            "--out",
            e,
        ];
        args.extend(extra);
        common::ok(&common::webdiffusion(&args));
        for (name, golden) in [
            ("prompt_embeds", format!("{prefix}prompt_embeds.0")),
            (
                "pooled_prompt_embeds",
                format!("{prefix}pooled_prompt_embeds.0"),
            ),
        ] {
            let err = common::rel_l2(&common::read_tensor(&embeds, name), goldens.values(&golden));
            assert!(err <= TOL, "encode-prompt {extra:?} {name}: rel-L2 {err:e}");
        }
        std::fs::remove_file(&embeds).unwrap();
    }

    let latents = dir.path().join("latents.safetensors");
    common::write_golden(&goldens, "txt2img.latents", "latents", &latents);
    let l = latents.to_str().unwrap();
    for (extra, run) in [(None, "euler"), (Some("--no-t5"), "euler_no_t5")] {
        let out = dir.path().join(format!("{run}.safetensors"));
        let mut args = common::euler_args(model, l, out.to_str().unwrap());
        args.extend(["--seed", "1"]);
        args.extend(extra);
        common::ok(&common::webdiffusion(&args));
        let err = common::rel_l2(
            &common::read_tensor(&out, "latents"),
            goldens.values(&format!("{run}.latents")),
        );
        assert!(err <= 1e-3, "generate {run}: rel-L2 {err:e}");
    }

    // A DDPM-family scheduler, a T5 length past 512, a UNet-only feature: refused by name.
    let never = dir.path().join("never.safetensors");
    let n = never.to_str().unwrap();
    for (extra, needles) in [
        (
            vec!["--scheduler", "euler"],
            vec!["scheduler", "flow-euler"],
        ),
        (
            vec!["--max-sequence-length", "600"],
            vec!["max_sequence_length", "512"],
        ),
        (
            vec!["--skip-layer-guidance", "3"],
            vec!["skip layer guidance", "layer 3"],
        ),
        (vec!["--width", "60"], vec!["width", "multiple of 8"]),
    ] {
        let mut args = common::euler_args(model, l, n);
        args.extend(extra);
        common::fails_with(&common::webdiffusion(&args), &needles, &never);
    }
}

#[test]
fn sd3_models_that_do_not_fit_are_refused_by_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let never = dir.path().join("never.safetensors");
    let edit = |model: &std::path::Path, file: &str, change: &dyn Fn(&mut serde_json::Value)| {
        let path = model.join(file);
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        change(&mut json);
        std::fs::write(&path, json.to_string()).unwrap();
    };
    let encode = |model: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "encode-prompt",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a cat",
            "--out",
            never.to_str().unwrap(),
        ];
        args.extend(extra);
        common::webdiffusion(&args)
    };
    let copy = |name: &str| {
        let model = dir.path().join(name);
        common::copy_dir(&model_dir("sd3-tiny"), &model);
        model
    };
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, &str, Edit, Vec<&str>)> = vec![
        (
            "patch",
            "transformer/config.json",
            Box::new(|j| j["patch_size"] = 3.into()),
            vec![
                "transformer/config.json",
                "patch_size",
                "3 does not divide sample_size 16",
            ],
        ),
        (
            "narrow",
            "transformer/config.json",
            Box::new(|j| j["joint_attention_dim"] = 64.into()),
            vec![
                "transformer/config.json",
                "joint_attention_dim",
                "is 64",
                "(80)",
            ],
        ),
        (
            "wide",
            "transformer/config.json",
            Box::new(|j| j["joint_attention_dim"] = 128.into()),
            vec![
                "joint_attention_dim",
                "is 128",
                "text_encoder_3/config.json",
                "d_model 96",
            ],
        ),
        (
            "pooled",
            "transformer/config.json",
            Box::new(|j| j["pooled_projection_dim"] = 40.into()),
            vec!["pooled_projection_dim", "is 40", "64 wide"],
        ),
        (
            "caption",
            "transformer/config.json",
            Box::new(|j| j["caption_projection_dim"] = 48.into()),
            vec!["caption_projection_dim", "is 48", "32 wide"],
        ),
        (
            "bpe",
            "tokenizer_3/tokenizer.json",
            Box::new(|j| j["model"]["type"] = "BPE".into()),
            vec!["tokenizer_3/tokenizer.json", "model.type", "Unigram"],
        ),
    ];
    for (name, file, change, needles) in cases {
        let model = copy(name);
        edit(&model, file, &*change);
        common::fails_with(&encode(&model, &[]), &needles, &never);
    }

    // A folder naming T5 whose files are missing: say which, and how to go on.
    for (name, missing) in [
        ("no-t5-weights", "text_encoder_3/model.safetensors"),
        ("no-t5-config", "text_encoder_3/config.json"),
        ("no-t5-tokenizer", "tokenizer_3/tokenizer.json"),
    ] {
        let model = copy(name);
        std::fs::remove_file(model.join(missing)).unwrap();
        common::fails_with(&encode(&model, &[]), &[missing, "--no-t5"], &never);
        // --no-t5 loads it without them.
        common::ok(&encode(&model, &["--no-t5"]));
        std::fs::remove_file(&never).unwrap();
    }
}

/// SD3 as f16, q8 and q4 packs (all five components; T5 quantized as any other encoder,
/// its activations in f32), within SD 1.x's limits of diffusers' float32 image; a pack of
/// the folder without T5 has four components, and a pack's T5 can be left out.
#[test]
fn sd3_packs_generate_within_limits_with_and_without_t5() {
    use webdiffusion::pack::{convert::convert, open_dir};
    use webdiffusion::quant::Precision;
    let goldens = Goldens::load("sd3-tiny");
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let request = || {
        let mut r = Request::new(PROMPT);
        r.negative_prompt = Some(NEGATIVE.into());
        (r.steps, r.guidance) = (Some(4), 5.0);
        r.latents = Some(goldens.tensor::<4>("txt2img.latents", &device));
        r
    };
    let check = |pipe: &StableDiffusion, run: &str, limit: f64, what: &str| {
        let image = pipe
            .generate(&request(), &mut |_, _, _| true)
            .unwrap()
            .image;
        let err = common::rel_l2(
            &common::to_f64(image),
            goldens.values(&format!("{run}.image")),
        );
        eprintln!("sd3-tiny {what}: image rel-L2 {err:.2e}");
        assert!(err <= limit, "{what}: image rel-L2 {err:e}");
    };
    for (precision, limit) in [
        (Precision::F16, 1e-3),
        (Precision::Q8, 1e-2),
        (Precision::Q4, 8e-2),
    ] {
        let out = dir.path().join(precision.name());
        let reports = convert(&files("sd3-tiny"), precision, &out).unwrap();
        let names: Vec<&str> = reports.iter().map(|r| r.component.as_str()).collect();
        assert_eq!(
            names,
            [
                "text_encoder",
                "text_encoder_2",
                "text_encoder_3",
                "transformer",
                "vae"
            ]
        );
        let pipe = StableDiffusion::load(&*open_dir(&out).unwrap(), &device).unwrap();
        assert_eq!(pipe.family, Family::Sd3);
        check(&pipe, "euler", limit, precision.name());
        if precision == Precision::Q8 {
            let without = WithoutT5(open_dir(&out).unwrap());
            let pipe = StableDiffusion::load(&without, &device).unwrap();
            check(&pipe, "euler_no_t5", limit, "q8 pack, T5 left out");
        }
    }
    let out = dir.path().join("no-t5");
    let reports = convert(&files("sd3-tiny-no-t5"), Precision::Q8, &out).unwrap();
    let names: Vec<&str> = reports.iter().map(|r| r.component.as_str()).collect();
    assert_eq!(
        names,
        ["text_encoder", "text_encoder_2", "transformer", "vae"]
    );
    let pipe = StableDiffusion::load(&*open_dir(&out).unwrap(), &device).unwrap();
    check(&pipe, "euler_no_t5", 1e-2, "q8 pack without T5");
}

/// The hub shards large encoders (SD3.5's T5: `model-0000N-of-0000M.safetensors` named by
/// `model.safetensors.index.json`): a folder so split loads as the single file does, and
/// an index naming a file outside the folder is refused by key.
#[test]
fn a_sharded_t5_loads_as_one_file_and_a_hostile_index_is_refused() {
    let goldens = Goldens::load("sd3-tiny");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("sharded");
    common::copy_dir(&model_dir("sd3-tiny"), &model);
    let t5 = model.join("text_encoder_3");
    let whole = t5.join("model.safetensors");
    let mut map = serde_json::Map::new();
    for (shard, keep) in [
        ("model-00001-of-00002.safetensors", 0),
        ("model-00002-of-00002.safetensors", 1),
    ] {
        let path = t5.join(shard);
        std::fs::copy(&whole, &path).unwrap();
        common::rewrite_tensors(&path, |tensors| {
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            let mut i = 0;
            tensors.retain(|_| {
                i += 1;
                i % 2 == keep
            });
        });
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for name in st.names() {
            map.insert(name.to_string(), shard.into());
        }
    }
    std::fs::remove_file(&whole).unwrap();
    let index = t5.join("model.safetensors.index.json");
    let json = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(&index, json.to_string()).unwrap();
    let device = Device::flex();
    let pipe = StableDiffusion::load(&DirFiles(model.clone()), &device).unwrap();
    let t5_model = &pipe.text.t5.as_ref().unwrap().model;
    let hidden = t5_model.encode(&goldens.ids("input_ids_3.0"), &device);
    assert_close(&goldens, "t5.hidden.0", hidden, TOL, "sharded T5");

    let hostile = serde_json::json!({"weight_map": {"shared.weight": "../../vae/x.safetensors"}});
    std::fs::write(&index, hostile.to_string()).unwrap();
    let err = StableDiffusion::load(&DirFiles(model), &device)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("model.safetensors.index.json") && err.contains("weight_map"),
        "{err}"
    );
}

#[test]
fn every_family_has_a_preview_map_for_its_latent_channels() {
    let device = Device::flex();
    for (name, family) in [
        ("sd1-tiny", Family::Sd),
        ("sdxl-tiny", Family::Sdxl),
        ("sd3-tiny", Family::Sd3),
    ] {
        let pipe = StableDiffusion::load(&files(name), &device).unwrap();
        assert_eq!(pipe.family, family);
        let (factors, bias) = family.preview_rgb();
        assert_eq!(factors.len(), pipe.vae_config.latent_channels(), "{name}");
        assert!(
            bias.iter()
                .chain(factors.iter().flatten())
                .all(|v| v.abs() < 1.0)
        );
    }
}
