//! The CLI contract: outputs match the diffusers goldens, and bad input gets one clear
//! message, exit status 2 and no output file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{
    Goldens, copy_dir, fails_with, fixtures, model_dir, ok, rel_l2, rewrite_tensors, webdiffusion,
};
use safetensors::tensor::{Dtype, TensorView};

fn read_f64(path: &Path, name: &str) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(name).unwrap();
    let values = match view.dtype() {
        Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        Dtype::I64 => view
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("{name}: {other:?}"),
    };
    (view.shape().to_vec(), values)
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A writable copy of a fixture model, for corrupting.
fn copy_model(name: &str, dir: &Path) -> PathBuf {
    let dst = dir.join(name);
    copy_dir(&model_dir(name), &dst);
    dst
}

#[test]
fn encode_prompt_matches_transformers() {
    let dir = tmp();
    let prompts = common::prompts();
    for name in common::MODELS {
        let goldens = Goldens::load(name);
        let out = dir.path().join(format!("{name}.safetensors"));
        let model = model_dir(name);
        ok(&webdiffusion(&[
            "encode-prompt",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            &prompts[0],
            "--out",
            out.to_str().unwrap(),
        ]));
        let (shape, ids) = read_f64(&out, "input_ids");
        assert_eq!(shape, vec![1, 77]);
        assert_eq!(ids, goldens.values("input_ids.0"));
        let (shape, embeds) = read_f64(&out, "prompt_embeds");
        assert_eq!(shape, goldens.shape("prompt_embeds.0"));
        assert!(rel_l2(&embeds, goldens.values("prompt_embeds.0")) <= 1e-4);

        ok(&webdiffusion(&[
            "encode-prompt",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            &prompts[0],
            "--clip-skip",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]));
        let (_, embeds) = read_f64(&out, "prompt_embeds");
        assert!(rel_l2(&embeds, goldens.values("prompt_embeds.clip_skip1.0")) <= 1e-4);
    }
}

fn write_latents(path: &Path, goldens: &Goldens) {
    let values: Vec<u8> = goldens
        .values("vae.latents")
        .iter()
        .flat_map(|&v| (v as f32).to_le_bytes())
        .collect();
    let view = TensorView::new(Dtype::F32, goldens.shape("vae.latents").to_vec(), &values).unwrap();
    std::fs::write(
        path,
        safetensors::serialize([("latents", view)], None).unwrap(),
    )
    .unwrap();
}

#[test]
fn vae_decode_and_encode_match_diffusers() {
    let dir = tmp();
    for name in common::MODELS {
        let goldens = Goldens::load(name);
        let model = model_dir(name);
        let latents = dir.path().join("latents.safetensors");
        write_latents(&latents, &goldens);
        let out = dir.path().join(format!("{name}-image.safetensors"));
        ok(&webdiffusion(&[
            "vae-decode",
            "--model",
            model.to_str().unwrap(),
            "--latents",
            latents.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]));
        let (shape, image) = read_f64(&out, "image");
        assert_eq!(shape, goldens.shape("vae.decoded"));
        assert!(rel_l2(&image, goldens.values("vae.decoded")) <= 1e-4);

        let png = fixtures().join(format!("goldens/{name}-vae-input.png"));
        let out = dir.path().join(format!("{name}-mean.safetensors"));
        ok(&webdiffusion(&[
            "vae-encode",
            "--model",
            model.to_str().unwrap(),
            "--image",
            png.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]));
        let (shape, mean) = read_f64(&out, "mean");
        assert_eq!(shape, goldens.shape("vae.png_mean"));
        assert!(rel_l2(&mean, goldens.values("vae.png_mean")) <= 1e-4);
    }
}

fn encode_prompt(model: &Path, out: &Path) -> Output {
    webdiffusion(&[
        "encode-prompt",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--out",
        out.to_str().unwrap(),
    ])
}

fn vae_decode(model: &Path, latents: &Path, out: &Path) -> Output {
    webdiffusion(&[
        "vae-decode",
        "--model",
        model.to_str().unwrap(),
        "--latents",
        latents.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn missing_model_folder_and_files() {
    let dir = tmp();
    let out = dir.path().join("out.safetensors");
    fails_with(
        &encode_prompt(&dir.path().join("nope"), &out),
        &["nope", "not a model folder"],
        &out,
    );

    let model = copy_model("sd1-tiny", dir.path());
    std::fs::remove_file(model.join("text_encoder/model.safetensors")).unwrap();
    fails_with(
        &encode_prompt(&model, &out),
        &["text_encoder/model.safetensors", "not found"],
        &out,
    );
}

#[test]
fn corrupt_safetensors_are_refused() {
    let dir = tmp();
    let out = dir.path().join("out.safetensors");
    let model = copy_model("sd1-tiny", dir.path());
    let weights = model.join("text_encoder/model.safetensors");
    let original = std::fs::read(&weights).unwrap();

    // Truncated in the middle of the data.
    std::fs::write(&weights, &original[..original.len() / 2]).unwrap();
    fails_with(
        &encode_prompt(&model, &out),
        &["text_encoder/model.safetensors", "safetensors"],
        &out,
    );

    // A header length larger than the file.
    let mut bad = original.clone();
    bad[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&weights, &bad).unwrap();
    fails_with(
        &encode_prompt(&model, &out),
        &["text_encoder/model.safetensors"],
        &out,
    );

    // A header that is not JSON.
    let mut bad = original.clone();
    bad[8..16].copy_from_slice(b"not json");
    std::fs::write(&weights, &bad).unwrap();
    fails_with(
        &encode_prompt(&model, &out),
        &["text_encoder/model.safetensors"],
        &out,
    );

    // Too short for a header at all.
    std::fs::write(&weights, b"abc").unwrap();
    fails_with(
        &encode_prompt(&model, &out),
        &["text_encoder/model.safetensors"],
        &out,
    );
}

#[test]
fn missing_unexpected_and_misshapen_tensors_are_named() {
    let dir = tmp();
    let out = dir.path().join("out.safetensors");
    let model = copy_model("sd1-tiny", dir.path());
    let weights = model.join("text_encoder/model.safetensors");
    let original = std::fs::read(&weights).unwrap();
    let key = "text_model.final_layer_norm.weight";

    rewrite_tensors(&weights, |t| t.retain(|(n, ..)| n != key));
    fails_with(
        &encode_prompt(&model, &out),
        &["missing", "final_layer_norm.weight"],
        &out,
    );

    std::fs::write(&weights, &original).unwrap();
    rewrite_tensors(&weights, |t| {
        // A copy of a float tensor: the file's order varies, and its int tensor
        // (`position_ids`) would be refused for its dtype before the name is checked.
        let mut extra = t.iter().find(|(n, ..)| n == key).unwrap().clone();
        extra.0 = "text_model.extra_layer.weight".into();
        t.push(extra);
    });
    fails_with(
        &encode_prompt(&model, &out),
        &["unexpected", "extra_layer.weight"],
        &out,
    );

    std::fs::write(&weights, &original).unwrap();
    rewrite_tensors(&weights, |t| {
        let entry = t.iter_mut().find(|(n, ..)| n == key).unwrap();
        let half = entry.2[0] / 2;
        entry.2 = vec![half];
        entry.3.truncate(entry.3.len() / 2);
    });
    fails_with(
        &encode_prompt(&model, &out),
        &["final_layer_norm.weight", "shape"],
        &out,
    );
}

#[test]
fn bad_configs_and_tokenizers_are_named() {
    let dir = tmp();
    let out = dir.path().join("out.safetensors");
    let model = copy_model("sd1-tiny", dir.path());
    let goldens = Goldens::load("sd1-tiny");
    let latents = dir.path().join("latents.safetensors");
    write_latents(&latents, &goldens);

    let vae_config = model.join("vae/config.json");
    let original = std::fs::read_to_string(&vae_config).unwrap();
    std::fs::write(
        &vae_config,
        original.replace("UpDecoderBlock2D", "AttnUpDecoderBlock2D"),
    )
    .unwrap();
    fails_with(
        &vae_decode(&model, &latents, &out),
        &["vae/config.json", "up_block_types", "AttnUpDecoderBlock2D"],
        &out,
    );
    std::fs::write(&vae_config, "{ not json").unwrap();
    fails_with(
        &vae_decode(&model, &latents, &out),
        &["vae/config.json", "JSON"],
        &out,
    );
    std::fs::write(&vae_config, &original).unwrap();

    let vocab = model.join("tokenizer/vocab.json");
    std::fs::write(&vocab, "[1, 2").unwrap();
    fails_with(
        &encode_prompt(&model, &out),
        &["tokenizer/vocab.json"],
        &out,
    );
}

#[test]
fn bad_arguments_exit_2() {
    let dir = tmp();
    let out = dir.path().join("out.safetensors");
    let model = model_dir("sd1-tiny");

    // Latents file without a `latents` tensor, and with the wrong channel count.
    let latents = dir.path().join("latents.safetensors");
    std::fs::write(&latents, b"garbage").unwrap();
    fails_with(
        &vae_decode(&model, &latents, &out),
        &["latents.safetensors"],
        &out,
    );
    let values: Vec<u8> = vec![0; 4 * 3 * 8 * 8];
    let view = TensorView::new(Dtype::F32, vec![1, 3, 8, 8], &values).unwrap();
    std::fs::write(
        &latents,
        safetensors::serialize([("latents", view)], None).unwrap(),
    )
    .unwrap();
    fails_with(
        &vae_decode(&model, &latents, &out),
        &["--latents", "channels"],
        &out,
    );
    let view = TensorView::new(Dtype::F32, vec![1, 3, 8, 8], &values).unwrap();
    std::fs::write(
        &latents,
        safetensors::serialize([("other", view)], None).unwrap(),
    )
    .unwrap();
    fails_with(&vae_decode(&model, &latents, &out), &["latents"], &out);

    // An image that does not decode.
    let png = dir.path().join("bad.png");
    std::fs::write(&png, b"not a png").unwrap();
    let result = webdiffusion(&[
        "vae-encode",
        "--model",
        model.to_str().unwrap(),
        "--image",
        png.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    fails_with(&result, &["bad.png", "PNG"], &out);

    // Clip skip beyond the text encoder's depth, and an unknown backend.
    let result = webdiffusion(&[
        "encode-prompt",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "x",
        "--clip-skip",
        "99",
        "--out",
        out.to_str().unwrap(),
    ]);
    fails_with(&result, &["--clip-skip"], &out);
    let result = Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
        .args([
            "encode-prompt",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "x",
        ])
        .args(["--out", out.to_str().unwrap(), "--backend", "tpu"])
        .output()
        .unwrap();
    fails_with(&result, &["tpu"], &out);
}

fn write_tensor(path: &Path, name: &str, goldens: &Goldens, key: &str) {
    let values: Vec<u8> = goldens
        .values(key)
        .iter()
        .flat_map(|&v| (v as f32).to_le_bytes())
        .collect();
    let view = TensorView::new(Dtype::F32, goldens.shape(key).to_vec(), &values).unwrap();
    std::fs::write(path, safetensors::serialize([(name, view)], None).unwrap()).unwrap();
}

#[test]
fn generate_matches_diffusers() {
    let dir = tmp();
    for name in common::MODELS {
        let goldens = Goldens::load(&format!("pipeline-{name}"));
        let model = model_dir(name);
        let latents = dir.path().join("latents.safetensors");
        write_tensor(&latents, "latents", &goldens, "latents");
        let out = dir.path().join("out.safetensors");
        let png = dir.path().join("out.png");
        ok(&webdiffusion(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a photograph of an astronaut riding a horse",
            "--negative-prompt",
            "blurry, low quality",
            "--steps",
            "8",
            "--guidance",
            "7.5",
            "--scheduler",
            "dpmpp-2m",
            "--latents",
            latents.to_str().unwrap(),
            "--out-tensor",
            out.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ]));
        let (_, l) = read_f64(&out, "latents");
        assert!(
            rel_l2(&l, goldens.values("dpmpp-2m.latents")) <= 1e-3,
            "{name} latents"
        );
        let (shape, image) = read_f64(&out, "image");
        assert_eq!(shape, goldens.shape("dpmpp-2m.image"));
        assert!(
            rel_l2(&image, goldens.values("dpmpp-2m.image")) <= 1e-3,
            "{name} image"
        );
        let bytes = std::fs::read(&png).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("parameters") && text.contains("Sampler: dpmpp-2m"),
            "PNG parameters"
        );

        let noise = dir.path().join("noise.safetensors");
        write_tensor(&noise, "noise", &goldens, "img2img.noise");
        let init = fixtures().join(format!("goldens/{name}-vae-input.png"));
        ok(&webdiffusion(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a photograph of an astronaut riding a horse",
            "--negative-prompt",
            "blurry, low quality",
            "--steps",
            "8",
            "--init-image",
            init.to_str().unwrap(),
            "--strength",
            "0.6",
            "--noise",
            noise.to_str().unwrap(),
            "--out-tensor",
            out.to_str().unwrap(),
        ]));
        let (_, l) = read_f64(&out, "latents");
        assert!(
            rel_l2(&l, goldens.values("img2img.own.latents")) <= 1e-3,
            "{name} img2img"
        );
    }
}

#[test]
fn generate_refuses_bad_requests() {
    let dir = tmp();
    let out = dir.path().join("out.png");
    let model = model_dir("sd1-tiny");
    let m = model.to_str().unwrap();
    let o = out.to_str().unwrap();
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate", "--model", m, "--prompt", "x", "--out", o, "--steps", "2",
        ];
        args.extend_from_slice(extra);
        webdiffusion(&args)
    };
    fails_with(&generate(&["--width", "30"]), &["width", "30"], &out);
    fails_with(&generate(&["--steps", "0"]), &["steps"], &out);
    fails_with(
        &generate(&["--scheduler", "fast"]),
        &["fast", "valid:", "euler-a", "dpmpp-2m-karras"],
        &out,
    );
    fails_with(
        &generate(&["--strength", "0.5"]),
        &["--strength", "--init-image"],
        &out,
    );
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"GIF89a").unwrap();
    fails_with(
        &generate(&["--init-image", bad.to_str().unwrap()]),
        &["bad.png"],
        &out,
    );
    let init = fixtures().join("goldens/sd1-tiny-vae-input.png");
    fails_with(
        &generate(&["--init-image", init.to_str().unwrap(), "--strength", "1.5"]),
        &["strength", "1.5"],
        &out,
    );
    fails_with(&generate(&["--dtype", "f64"]), &["dtype", "f64"], &out);
    // Outputs that cannot be written are refused before any work.
    fails_with(
        &webdiffusion(&[
            "generate",
            "--model",
            m,
            "--prompt",
            "x",
            "--out",
            dir.path().to_str().unwrap(),
        ]),
        &["is a folder"],
        &out,
    );
    let nowhere = dir.path().join("missing/out.png");
    fails_with(
        &webdiffusion(&[
            "generate",
            "--model",
            m,
            "--prompt",
            "x",
            "--out",
            nowhere.to_str().unwrap(),
        ]),
        &["missing", "not a folder"],
        &nowhere,
    );
}

fn convert(model: &Path, quant: &str, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
        .args([
            "convert",
            "--model",
            model.to_str().unwrap(),
            "--quant",
            quant,
        ])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .expect("run webdiffusion")
}

#[test]
fn convert_random_writes_a_pack_of_the_configs_architecture() {
    let dir = tmp();
    let pack = dir.path().join("random");
    let sd1 = model_dir("sd1-tiny");
    let sd1 = sd1.to_str().unwrap();
    let random = |args: &[&str], out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
            .args(["convert", "--random"])
            .args(args)
            .args(["--out", out.to_str().unwrap()])
            .output()
            .expect("run webdiffusion")
    };
    let run = random(&[sd1, "--quant", "q8", "--seed", "7"], &pack);
    ok(&run);
    let table = String::from_utf8_lossy(&run.stdout);
    assert!(table.contains("unet") && table.contains("total"), "{table}");
    // The same architecture as the fixture: it loads and generates a finite image.
    let out = dir.path().join("out.safetensors");
    let (model, out_arg) = (pack.to_str().unwrap(), out.to_str().unwrap());
    ok(&webdiffusion(&[
        "generate",
        "--model",
        model,
        "--prompt",
        "a fox",
        "--steps",
        "2",
        "--seed",
        "1",
        "--out-tensor",
        out_arg,
    ]));
    let image = common::read_tensor(&out, "image");
    assert!(!image.is_empty() && image.iter().all(|v| v.is_finite()));
    // Same seed, same bytes; --random takes no --config, and only known names or folders.
    let again = dir.path().join("again");
    ok(&random(&[sd1, "--quant", "q8", "--seed", "7"], &again));
    let shard = "unet/shard-00000.bin";
    assert_eq!(
        std::fs::read(pack.join(shard)).unwrap(),
        std::fs::read(again.join(shard)).unwrap()
    );
    let never = dir.path().join("never");
    let with_config = random(&["sd15", "--config", "sd21", "--quant", "q4"], &never);
    fails_with(&with_config, &["--config", "--random"], &never);
    let unknown = random(&["sd3", "--quant", "q4"], &never);
    fails_with(&unknown, &["--random", "sd3", "sd15"], &never);
}

#[test]
fn convert_prints_its_table_and_refuses_bad_input() {
    let dir = tmp();
    let out = dir.path().join("pack");
    let sd1 = model_dir("sd1-tiny");

    fails_with(
        &convert(&sd1, "q3", &out),
        &["--quant", "q3", "f16, q8, q4"],
        &out,
    );
    let single = sd1.join("unet/diffusion_pytorch_model.safetensors");
    fails_with(
        &convert(&single, "q8", &out),
        &[
            "diffusion_pytorch_model.safetensors",
            "single-file checkpoint",
        ],
        &out,
    );
    let pickle = dir.path().join("model.ckpt");
    std::fs::write(&pickle, b"not read").unwrap();
    fails_with(
        &convert(&pickle, "q8", &out),
        &["model.ckpt", "pickle"],
        &out,
    );
    // An SD 2.x-like file guessed as full-size SD 2.1: the first tensor of another shape
    // is named before anything is written.
    let sd2 = common::fixtures().join("single/sd2-tiny.safetensors");
    fails_with(
        &convert(&sd2, "q4", &out),
        &["sd2-tiny.safetensors", "has shape", "expects"],
        &out,
    );
    fails_with(
        &convert(&dir.path().join("nope"), "q8", &out),
        &[
            "nope",
            "neither a diffusers folder nor a single-file checkpoint",
        ],
        &out,
    );
    let broken = copy_model("sd1-tiny", dir.path());
    std::fs::write(broken.join("unet/config.json"), "{").unwrap();
    fails_with(&convert(&broken, "q4", &out), &["unet/config.json"], &out);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "partial packs left: {leftovers:?}");

    let done = convert(&sd1, "q4", &out);
    ok(&done);
    let table = String::from_utf8_lossy(&done.stdout);
    for needle in [
        "component",
        "bytes/param",
        "text_encoder",
        "unet",
        "vae",
        "total",
    ] {
        assert!(table.contains(needle), "{needle:?} not in: {table}");
    }
    assert!(out.join("manifest.json").is_file());

    // An existing folder is never overwritten.
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    let again = convert(&sd1, "q8", &out);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), manifest);

    // The pack generates through the same CLI.
    let png = dir.path().join("fox.png");
    ok(&webdiffusion(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--prompt",
        "a red fox",
        "--steps",
        "2",
        "--out",
        png.to_str().unwrap(),
    ]));
    assert!(png.is_file());
}

/// `--embedding` and `--no-prompt-weighting` against the prompt goldens
/// (scripts/make_prompt_fixtures.py); a bad embedding is refused naming its file.
#[test]
fn prompts_are_read_with_weights_and_embeddings() {
    let dir = tmp();
    let goldens = Goldens::file("goldens/prompts-weighting.safetensors");
    let model = model_dir("sd1-tiny");
    let emb = |name: &str| fixtures().join(format!("prompts/{name}.safetensors"));
    let out = dir.path().join("embeds.safetensors");
    let encode = |prompt: &str, extra: &[&str]| {
        let mut args = vec![
            "encode-prompt",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            prompt,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        webdiffusion(&args)
    };
    let (cat, easy) = (emb("cat-toy"), emb("easynegative-tiny"));
    let embeddings = [
        "--embedding",
        cat.to_str().unwrap(),
        "--embedding",
        easy.to_str().unwrap(),
    ];
    let ti = "a (<cat-toy>:1.3) backpack on a [wooden] table, easynegative-tiny";
    ok(&encode(ti, &embeddings));
    let (_, ids) = read_f64(&out, "input_ids");
    assert_eq!(ids, goldens.values("sd1-tiny.ti.input_ids"));
    let (_, embeds) = read_f64(&out, "prompt_embeds");
    assert!(rel_l2(&embeds, goldens.values("sd1-tiny.ti.prompt_embeds")) <= 1e-4);

    // A long prompt fills chunks; read literally it is cut at 77 tokens.
    let settings: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("goldens/prompts-weighting.json")).unwrap(),
    )
    .unwrap();
    let long = settings["cases"]["long_weighted"].as_str().unwrap();
    ok(&encode(long, &[]));
    let (shape, ids) = read_f64(&out, "input_ids");
    assert_eq!(shape, vec![3, 77]);
    assert_eq!(ids, goldens.values("sd1-tiny.long_weighted.input_ids"));
    let (_, embeds) = read_f64(&out, "prompt_embeds");
    let expected = goldens.values("sd1-tiny.long_weighted.prompt_embeds");
    assert!(rel_l2(&embeds, expected) <= 1e-4);
    ok(&encode(
        "a (literal) photo of a [cat]",
        &["--no-prompt-weighting"],
    ));
    let (_, embeds) = read_f64(&out, "prompt_embeds");
    assert!(rel_l2(&embeds, goldens.values("sd1-tiny.escaped.prompt_embeds")) <= 1e-4);

    // generate records the embeddings the prompts use, as AUTOMATIC1111 does.
    let png = dir.path().join("out.png");
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a (<cat-toy>:1.2) backpack",
        "--negative-prompt",
        "easynegative-tiny",
        "--steps",
        "1",
        "--out",
        png.to_str().unwrap(),
    ];
    args.extend_from_slice(&embeddings);
    ok(&webdiffusion(&args));
    let text = String::from_utf8_lossy(&std::fs::read(&png).unwrap()).into_owned();
    assert!(
        text.contains("TI hashes: \"<cat-toy>: ") && text.contains("easynegative-tiny: "),
        "PNG parameters"
    );

    // Bad embeddings: exit 2, the file named, nothing written.
    std::fs::remove_file(&out).unwrap();
    let nan = emb("nan-emb");
    let result = encode("x", &["--embedding", nan.to_str().unwrap()]);
    fails_with(&result, &["nan-emb.safetensors", "non-finite"], &out);
    let wide = emb("wide-emb");
    let result = encode("x", &["--embedding", wide.to_str().unwrap()]);
    fails_with(&result, &["wide-emb.safetensors", "40", "32"], &out);
    let pickle = dir.path().join("neg.pt");
    std::fs::write(&pickle, b"PK\x03\x04").unwrap();
    let result = encode("x", &["--embedding", pickle.to_str().unwrap()]);
    fails_with(&result, &["neg.pt", "pickle"], &out);
    let missing = dir.path().join("missing.safetensors");
    let result = encode("x", &["--embedding", missing.to_str().unwrap()]);
    fails_with(&result, &["missing.safetensors"], &out);
    let book = "word ".repeat(2000);
    fails_with(&encode(&book, &[]), &["--prompt", "1200 tokens"], &out);
}
