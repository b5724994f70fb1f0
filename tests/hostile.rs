//! Hostile input: configs, weights, packs, images and output paths crafted to crash the
//! engine, exhaust memory or pass a wrong result off as success. Each must end in exit 2
//! with at most three lines on stderr and no output file, under an 8 GB address-space
//! limit (as a user's machine would refuse a multi-terabyte allocation).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Goldens, copy_dir, model_dir, ok, read_tensor, rewrite_tensors};
use safetensors::Dtype;
use serde_json::{Value, json};

/// Runs the CLI (on the CPU backend, for the commands that run networks) with an 8 GB
/// address-space limit.
fn run(args: &[&str]) -> Output {
    let networks = ["generate", "encode-prompt", "vae-decode", "vae-encode"];
    let backend: &[&str] = match networks.contains(&args[0]) {
        true => &["--backend", "cpu"],
        false => &[],
    };
    Command::new("prlimit")
        .arg(format!("--as={}", 8u64 << 30))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_webdiffusion"))
        .args(args)
        .args(backend)
        .output()
        .expect("run prlimit webdiffusion")
}

/// Exit 2, every one of `needles` in a message of at most three lines, and no `out`.
fn refused(out: &Output, needles: &[&str], file: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.lines().count() <= 3, "more than 3 lines: {stderr}");
    // Handled, not caught by the CLI's last-resort panic report.
    assert!(!stderr.contains("internal failure"), "a panic: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
    assert!(!file.exists(), "output left at {}", file.display());
}

/// No temporary file or folder left in `dir`.
fn no_leftovers(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

struct Case {
    dir: tempfile::TempDir,
    model: PathBuf,
    out: PathBuf,
}

impl Case {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        copy_dir(&model_dir("sd1-tiny"), &model);
        let out = dir.path().join("out.png");
        Self { dir, model, out }
    }

    /// Sets `key` of the JSON file `file` (relative to the model) to `value`.
    fn set(&self, file: &str, key: &str, value: Value) -> &Self {
        let path = self.model.join(file);
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config[key] = value;
        std::fs::write(&path, config.to_string()).unwrap();
        self
    }

    fn generate(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "generate",
            "--model",
            self.model.to_str().unwrap(),
            "--prompt",
            "a cat",
            "--out",
            self.out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        if !extra.contains(&"--steps") {
            args.extend(["--steps", "2"]);
        }
        run(&args)
    }

    fn encode_prompt(&self) -> Output {
        run(&[
            "encode-prompt",
            "--model",
            self.model.to_str().unwrap(),
            "--prompt",
            "a cat sitting",
            "--out",
            self.out.with_extension("safetensors").to_str().unwrap(),
        ])
    }
}

const UNET: &str = "unet/config.json";
const SCHEDULER: &str = "scheduler/scheduler_config.json";

#[test]
fn size_like_config_values_are_bounded() {
    for (file, key, value, needle) in [
        (
            UNET,
            "layers_per_block",
            json!(1_000_000_000u64),
            "layers_per_block",
        ),
        (UNET, "sample_size", json!(1_000_000), "sample_size"),
        (
            UNET,
            "block_out_channels",
            json!([16, 32, 1u64 << 40]),
            "block_out_channels",
        ),
        (UNET, "norm_num_groups", json!(0), "norm_num_groups"),
        (
            "vae/config.json",
            "latent_channels",
            json!(1 << 30),
            "latent_channels",
        ),
        (
            "text_encoder/config.json",
            "num_hidden_layers",
            json!(1u64 << 33),
            "num_hidden_layers",
        ),
        (
            SCHEDULER,
            "num_train_timesteps",
            json!(100_000_000_000u64),
            "num_train_timesteps",
        ),
    ] {
        let case = Case::new();
        case.set(file, key, value);
        refused(&case.generate(&[]), &[file, needle], &case.out);
    }
}

#[test]
fn output_size_is_capped() {
    let case = Case::new();
    for (width, height) in [("1048576", "1048576"), ("8192", "8192"), ("4104", "2048")] {
        refused(
            &case.generate(&["--width", width, "--height", height]),
            &["4096"],
            &case.out,
        );
    }
}

#[test]
fn scheduler_configs_are_validated_as_a_whole() {
    for (key, value, scheduler, steps) in [
        ("steps_offset", json!(1000), "ddim", "2"),
        ("steps_offset", json!(1000), "euler", "2"),
        ("trained_betas", json!([0.1, 0.2]), "ddim", "2"),
        ("original_inference_steps", json!(2000), "lcm", "2"),
        ("num_train_timesteps", json!(1), "dpmpp-2m-karras", "2"),
        ("clip_sample_range", json!(-1), "ddim", "2"),
        ("beta_end", json!(2.0), "euler", "2"),
        ("timestep_spacing", json!("sideways"), "ddim", "2"),
    ] {
        let case = Case::new();
        case.set(SCHEDULER, key, value);
        if key == "clip_sample_range" {
            case.set(SCHEDULER, "clip_sample", json!(true));
        }
        refused(
            &case.generate(&["--scheduler", scheduler, "--steps", steps]),
            &[key],
            &case.out,
        );
    }
    let case = Case::new();
    case.set(SCHEDULER, "num_train_timesteps", json!(10));
    refused(
        &case.generate(&["--steps", "50"]),
        &["steps", "50"],
        &case.out,
    );
}

#[test]
fn families_and_schedulers_this_build_does_not_run_are_refused_by_name() {
    // A flow-matching scheduler: refused unless another scheduler is asked for.
    let case = Case::new();
    case.set(
        SCHEDULER,
        "_class_name",
        json!("FlowMatchEulerDiscreteScheduler"),
    );
    refused(
        &case.generate(&[]),
        &[
            "invalid scheduler",
            "FlowMatchEulerDiscreteScheduler",
            "ddim, euler",
        ],
        &case.out,
    );
    ok(&case.generate(&["--scheduler", "ddim"]));

    // Another family's pipeline, before anything is built or read.
    let case = Case::new();
    case.set("model_index.json", "_class_name", json!("FluxPipeline"));
    refused(
        &case.generate(&[]),
        &["model_index.json", "FluxPipeline", "FLUX"],
        &case.out,
    );
    // An SD folder that calls itself SD3 is read as SD3 and refused for what it lacks.
    let case = Case::new();
    case.set(
        "model_index.json",
        "_class_name",
        json!("StableDiffusion3Pipeline"),
    );
    refused(
        &case.generate(&[]),
        &["text_encoder/config.json", "CLIPTextModelWithProjection"],
        &case.out,
    );
    // An SD folder that calls itself SDXL, or lists a second text encoder, is read as SDXL
    // and refused for what it lacks.
    for (key, value) in [
        ("_class_name", json!("StableDiffusionXLPipeline")),
        (
            "text_encoder_2",
            json!(["transformers", "CLIPTextModelWithProjection"]),
        ),
    ] {
        let case = Case::new();
        case.set("model_index.json", key, value);
        refused(
            &case.generate(&[]),
            &["tokenizer_2", "needs tokenizer.json"],
            &case.out,
        );
    }
}

#[test]
fn components_that_do_not_fit_are_named() {
    let case = Case::new();
    case.set(UNET, "cross_attention_dim", json!(48));
    refused(
        &case.generate(&[]),
        &[
            "cross_attention_dim",
            "hidden_size",
            "text_encoder/config.json",
        ],
        &case.out,
    );

    let case = Case::new();
    case.set(
        "tokenizer/tokenizer_config.json",
        "model_max_length",
        json!(1000),
    );
    refused(
        &case.encode_prompt(),
        &["max_position_embeddings", "model_max_length"],
        &case.out.with_extension("safetensors"),
    );

    let case = Case::new();
    case.set("vae/config.json", "latent_channels", json!(8));
    refused(&case.generate(&[]), &["latent_channels"], &case.out);
}

/// Replaces every value of tensor `key` in `file` (relative to `model`) by NaN.
fn poison(model: &Path, file: &str, key: &str) {
    rewrite_tensors(&model.join(file), |tensors| {
        let (_, dtype, _, bytes) = tensors.iter_mut().find(|(n, ..)| n == key).unwrap();
        match dtype {
            Dtype::F32 => bytes
                .chunks_exact_mut(4)
                .for_each(|c| c.copy_from_slice(&f32::NAN.to_le_bytes())),
            Dtype::F16 => bytes
                .chunks_exact_mut(2)
                .for_each(|c| c.copy_from_slice(&half::f16::NAN.to_le_bytes())),
            other => panic!("{key}: {other:?}"),
        }
    });
}

#[test]
fn non_finite_outputs_are_errors_naming_the_network() {
    let case = Case::new();
    poison(
        &case.model,
        "vae/diffusion_pytorch_model.safetensors",
        "decoder.conv_out.bias",
    );
    refused(
        &case.generate(&[]),
        &["VAE decoder", "non-finite"],
        &case.out,
    );

    let case = Case::new();
    poison(
        &case.model,
        "text_encoder/model.safetensors",
        "text_model.final_layer_norm.bias",
    );
    refused(
        &case.encode_prompt(),
        &["text encoder", "non-finite"],
        &case.out.with_extension("safetensors"),
    );
    refused(
        &case.generate(&[]),
        &["text encoder", "non-finite"],
        &case.out,
    );

    let case = Case::new();
    poison(
        &case.model,
        "unet/diffusion_pytorch_model.safetensors",
        "conv_out.bias",
    );
    refused(
        &case.generate(&[]),
        &["UNet", "step 1", "non-finite"],
        &case.out,
    );
}

#[test]
fn tokenizer_json_padding_and_truncation_are_ignored() {
    let goldens = Goldens::load("sd1-tiny");
    let case = Case::new();
    let json = common::fixtures().join("tokenizer-json/tokenizer.json");
    let mut tokenizer: Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    tokenizer["truncation"] = json!({
        "direction": "Right", "max_length": 1, "strategy": "LongestFirst", "stride": 0
    });
    tokenizer["padding"] = json!({
        "strategy": { "Fixed": 2_000_000_000u64 }, "direction": "Right",
        "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "!"
    });
    std::fs::write(
        case.model.join("tokenizer/tokenizer.json"),
        tokenizer.to_string(),
    )
    .unwrap();
    let out = case.out.with_extension("safetensors");
    let prompt = &common::prompts()[0];
    ok(&run(&[
        "encode-prompt",
        "--model",
        case.model.to_str().unwrap(),
        "--prompt",
        prompt,
        "--out",
        out.to_str().unwrap(),
    ]));
    assert_eq!(
        read_ids(&out),
        goldens.values("input_ids.0"),
        "tokenizer.json changed the ids"
    );
    let embeds = read_tensor(&out, "prompt_embeds");
    let err = common::rel_l2(&embeds, goldens.values("prompt_embeds.0"));
    assert!(err <= 1e-4, "prompt_embeds rel-L2 {err:e}");
}

fn read_ids(path: &Path) -> Vec<f64> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor("input_ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
        .collect()
}

/// A PNG of only a signature and an IHDR chunk declaring `width`×`height` grey pixels.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    png.extend(0u32.to_be_bytes());
    png.extend(b"IEND");
    png.extend(crc32(b"IEND").to_be_bytes());
    png
}

/// CRC-32 (ISO-HDLC), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn oversized_images_are_refused_before_decoding() {
    let case = Case::new();
    let huge = case.dir.path().join("huge.png");
    std::fs::write(&huge, png_header_only(20_000_000, 2_000_000_000)).unwrap();
    refused(
        &case.generate(&["--init-image", huge.to_str().unwrap()]),
        &["huge.png", "pixels"],
        &case.out,
    );

    // A real 8192² image compresses to a few hundred KB.
    let big = case.dir.path().join("big.png");
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, 8192, 8192);
        encoder.set_color(png::ColorType::Grayscale);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&vec![0u8; 8192 * 8192]).unwrap();
    }
    std::fs::write(&big, bytes).unwrap();
    refused(
        &case.generate(&["--init-image", big.to_str().unwrap()]),
        &["big.png", "pixels"],
        &case.out,
    );
    let out = case.dir.path().join("edges.png");
    refused(
        &run(&[
            "canny",
            "--image",
            big.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]),
        &["big.png"],
        &out,
    );
}

/// A q4 pack of sd1-tiny in `dir`.
fn pack(dir: &Path) -> PathBuf {
    let pack = dir.join("pack");
    ok(&run(&[
        "convert",
        "--model",
        model_dir("sd1-tiny").to_str().unwrap(),
        "--quant",
        "q4",
        "--out",
        pack.to_str().unwrap(),
    ]));
    pack
}

/// Rewrites the first UNet tensor of the pack's manifest that `pick` selects.
fn edit_manifest(pack: &Path, pick: impl Fn(&Value) -> bool, edit: impl Fn(&mut Value)) {
    let path = pack.join("manifest.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let tensors = manifest["components"]["unet"]["tensors"]
        .as_array_mut()
        .unwrap();
    edit(tensors.iter_mut().find(|t| pick(t)).unwrap());
    std::fs::write(&path, manifest.to_string()).unwrap();
}

#[test]
fn hostile_packs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let generate = |pack: &Path| {
        run(&[
            "generate",
            "--model",
            pack.to_str().unwrap(),
            "--prompt",
            "x",
            "--steps",
            "1",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let original = pack(dir.path());
    let fresh = |name: &str| {
        let copy = dir.path().join(name);
        copy_dir(&original, &copy);
        copy
    };

    let block = fresh("block");
    edit_manifest(
        &block,
        |t| t["dtype"] == "q4",
        |t| t["quant"]["block"] = json!(288),
    );
    refused(&generate(&block), &["manifest.json", "block", "288"], &out);

    let shape = fresh("shape");
    edit_manifest(
        &shape,
        |t| t["name"] == "conv_in.bias",
        |t| {
            t["shape"] = json!([1u64 << 62, 1]);
            t["length"] = json!(0);
        },
    );
    refused(&generate(&shape), &["manifest.json", "conv_in.bias"], &out);

    let zero = fresh("zero");
    let shard = zero.join("unet/shard-00000.bin");
    std::fs::remove_file(&shard).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &shard).unwrap();
    refused(&generate(&zero), &["shard-00000.bin"], &out);
}

#[test]
fn weight_files_that_never_end_are_refused() {
    let case = Case::new();
    let weights = case.model.join("unet/diffusion_pytorch_model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &weights).unwrap();
    refused(
        &case.generate(&[]),
        &["unet/diffusion_pytorch_model.safetensors"],
        &case.out,
    );
}

#[test]
fn convert_refuses_misshapen_single_files_and_keeps_large_values() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("model.safetensors");
    std::fs::copy(
        common::fixtures().join("single/sd1-tiny.safetensors"),
        &checkpoint,
    )
    .unwrap();
    let key = "first_stage_model.decoder.mid.attn_1.q.weight";
    rewrite_tensors(&checkpoint, |tensors| {
        let (_, _, shape, bytes) = tensors.iter_mut().find(|(n, ..)| n == key).unwrap();
        shape[2] = 3;
        shape[3] = 3;
        *bytes = bytes.repeat(9);
    });
    let out = dir.path().join("pack");
    let sd1 = model_dir("sd1-tiny");
    let convert = |model: &Path, quant: &str| {
        run(&[
            "convert",
            "--model",
            model.to_str().unwrap(),
            "--config",
            sd1.to_str().unwrap(),
            "--quant",
            quant,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    refused(
        &convert(&checkpoint, "q8"),
        &["model.safetensors", "mid_block.attentions.0", "shape"],
        &out,
    );
    no_leftovers(dir.path());

    // A weight beyond f16's range stays f32 in an f16 pack, rather than becoming +inf.
    let folder = dir.path().join("large");
    copy_dir(&sd1, &folder);
    let key = "conv_in.bias";
    rewrite_tensors(
        &folder.join("unet/diffusion_pytorch_model.safetensors"),
        |tensors| {
            let (_, _, _, bytes) = tensors.iter_mut().find(|(n, ..)| n == key).unwrap();
            bytes[..4].copy_from_slice(&1e6f32.to_le_bytes());
        },
    );
    ok(&run(&[
        "convert",
        "--model",
        folder.to_str().unwrap(),
        "--quant",
        "f16",
        "--out",
        out.to_str().unwrap(),
    ]));
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let entry = manifest["components"]["unet"]["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == key)
        .unwrap();
    assert_eq!(entry["dtype"], "f32", "{entry}");

    // Non-finite weights are refused, naming the tensor.
    let out2 = dir.path().join("pack2");
    rewrite_tensors(
        &folder.join("unet/diffusion_pytorch_model.safetensors"),
        |tensors| {
            let (_, _, _, bytes) = tensors.iter_mut().find(|(n, ..)| n == key).unwrap();
            bytes[..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
        },
    );
    refused(
        &run(&[
            "convert",
            "--model",
            folder.to_str().unwrap(),
            "--quant",
            "q8",
            "--out",
            out2.to_str().unwrap(),
        ]),
        &["conv_in.bias", "non-finite"],
        &out2,
    );
    no_leftovers(dir.path());
}

#[test]
fn outputs_are_created_exclusively_and_together() {
    let case = Case::new();
    // A symlink planted where the old fixed temporary name was is never followed.
    let victim = case.dir.path().join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    for name in [".out.png.partial", ".out.safetensors.partial"] {
        std::os::unix::fs::symlink(&victim, case.dir.path().join(name)).unwrap();
    }
    let tensors = case.out.with_extension("safetensors");
    ok(&case.generate(&["--out-tensor", tensors.to_str().unwrap()]));
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert!(case.out.is_file() && !case.out.is_symlink());
    assert!(tensors.is_file());
    for name in [".out.png.partial", ".out.safetensors.partial"] {
        std::fs::remove_file(case.dir.path().join(name)).unwrap();
    }

    // One output that cannot be written: neither is.
    std::fs::remove_file(&tensors).unwrap();
    let nowhere = case.dir.path().join("missing/out.png");
    refused(
        &run(&[
            "generate",
            "--model",
            case.model.to_str().unwrap(),
            "--prompt",
            "x",
            "--out",
            nowhere.to_str().unwrap(),
            "--out-tensor",
            tensors.to_str().unwrap(),
        ]),
        &["missing"],
        &tensors,
    );
    // The same file for both outputs.
    std::fs::remove_file(&case.out).unwrap();
    refused(
        &case.generate(&["--out-tensor", case.out.to_str().unwrap()]),
        &["--out-tensor", "--out"],
        &case.out,
    );
    no_leftovers(case.dir.path());
}
