//! Model packs: the block quantizer against burn's own, packs of both fixtures generating
//! the 8-step DDIM image of diffusers within the error limits of each precision, damaged
//! shards refused, and conversion that is deterministic.

mod common;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::quantization::{QuantScheme, QuantValue, ScaleDtype};
use burn::tensor::{DType, TensorData};
use common::{Goldens, MODELS, devices, model_dir, rel_l2, to_f64};
use webdiffusion::component::Component;
use webdiffusion::files::DirFiles;
use webdiffusion::pack::convert::{convert, convert_single_file};
use webdiffusion::pack::open_dir;
use webdiffusion::pipeline::{Request, StableDiffusion};
use webdiffusion::quant::{BlockFormat, Precision, Scales};

/// Image rel-L2 against diffusers' f32 pipeline: f16 weights barely move it; q8 and q4
/// must match or beat plain block-32 absmax quantization of every weight (≈ 5e-3, 8e-2).
const LIMITS: &[(Precision, f64)] = &[
    (Precision::F16, 1e-3),
    (Precision::Q8, 5e-3),
    (Precision::Q4, 8e-2),
];

/// Gaussian-like weights (σ ≈ 0.02, a sum of uniforms) with a few outliers, as trained
/// weights have, from a fixed seed.
fn random(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    (0..rows * cols)
        .map(|i| {
            let g: f32 = (0..4).map(|_| uniform()).sum::<f32>() * 0.035;
            if i % 97 == 0 { g * 4.0 } else { g }
        })
        .collect()
}

fn weight_rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let a: Vec<f64> = a.iter().map(|v| *v as f64).collect();
    let b: Vec<f64> = b.iter().map(|v| *v as f64).collect();
    rel_l2(&a, &b)
}

#[test]
fn quantizer_matches_burn_and_devices_read_its_bytes() {
    let (rows, cols) = (48, 256);
    let w = random(rows, cols, 1);
    for (bits, block, value) in [
        (8, 32, QuantValue::Q8S),
        (4, 32, QuantValue::Q4S),
        (4, 64, QuantValue::Q4S),
    ] {
        let format = BlockFormat::new(bits, block);
        // Plain absmax is what burn's own quantizer computes: same values back.
        let absmax = format.quantize(&w, rows, cols, Scales::AbsMax);
        let ours = format.dequantize(&absmax, rows, cols).unwrap();
        let scheme = QuantScheme::default()
            .with_value(value)
            .per_block([block as u8], ScaleDtype::F16);
        let theirs =
            Tensor::<2>::from_data(TensorData::new(w.clone(), [rows, cols]), &Device::flex())
                .quantize_dynamic(&scheme)
                .dequantize()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
        let diff = weight_rel_l2(&ours, &theirs);
        assert!(
            diff < 1e-6,
            "q{bits}/{block} absmax differs from burn's: {diff:e}"
        );

        // The searched scales never do worse than absmax, and do better at 4 bits.
        let searched = format.quantize(&w, rows, cols, Scales::Search);
        let back = format.dequantize(&searched, rows, cols).unwrap();
        let (e_search, e_absmax) = (weight_rel_l2(&back, &w), weight_rel_l2(&ours, &w));
        assert!(
            e_search <= e_absmax,
            "q{bits}/{block}: {e_search:e} > {e_absmax:e}"
        );
        eprintln!("q{bits}/{block}: weight rel-L2 {e_search:.2e} (absmax {e_absmax:.2e})");
        let bound = if bits == 8 { 1e-2 } else { 0.15 };
        assert!(
            e_search < bound,
            "q{bits}/{block}: weight error {e_search:e}"
        );
        if bits == 4 {
            assert!(
                e_search < 0.95 * e_absmax,
                "search gains nothing: {e_search:e}"
            );
        }

        // Every device reads the bytes as the reference dequantizer does, and the matmul
        // on the packed weight gives x·Wᵀ.
        let x: Vec<f32> = random(3, cols, 2);
        let expected: Vec<f32> = (0..3)
            .flat_map(|i| {
                let (x, back) = (&x, &back);
                (0..rows).map(move |r| {
                    (0..cols)
                        .map(|c| x[i * cols + c] * back[r * cols + c])
                        .sum()
                })
            })
            .collect();
        for (name, device) in devices() {
            let data = TensorData::from_bytes_vec(
                searched.clone(),
                [rows, cols],
                DType::QFloat(format.scheme(ScaleDtype::F16)),
            );
            let wq = Tensor::<2>::from_data(
                data,
                (&device, DType::QFloat(format.scheme(ScaleDtype::F16))),
            );
            let on_device = wq
                .clone()
                .dequantize()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap();
            let diff = weight_rel_l2(&on_device, &back);
            assert!(
                diff < 1e-6,
                "{name}: q{bits}/{block} dequantized differently: {diff:e}"
            );
            let linear = webdiffusion::models::layers::Linear {
                weight: burn::module::Param::from_tensor(wq),
                bias: None,
            };
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [3, cols]), &device);
            let y = linear
                .forward(xt)
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap();
            let diff = weight_rel_l2(&y, &expected);
            assert!(diff < 1e-4, "{name}: q{bits}/{block} matmul: {diff:e}");
        }
    }
}

fn convert_to(model: &str, precision: Precision, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{model}-{}", precision.name()));
    convert(&DirFiles(model_dir(model)), precision, &out).unwrap();
    out
}

/// The final image of diffusers' 8-step DDIM txt2img (CFG 7.5, given latents).
fn ddim_image(pipe: &StableDiffusion, goldens: &Goldens, device: &Device) -> Vec<f64> {
    let mut r = Request::new("a photograph of an astronaut riding a horse");
    r.negative_prompt = Some("blurry, low quality".into());
    r.steps = Some(8);
    r.guidance = 7.5;
    r.scheduler = Some("ddim".into());
    r.latents = Some(goldens.tensor::<4>("latents", device));
    let out = pipe.generate(&r, &mut |_, _, _| true).unwrap();
    to_f64(out.image)
}

#[test]
fn packs_generate_within_limits() {
    let dir = tempfile::tempdir().unwrap();
    for model in MODELS {
        let goldens = Goldens::load(&format!("pipeline-{model}"));
        for &(precision, limit) in LIMITS {
            let pack = convert_to(model, precision, dir.path());
            let manifest = std::fs::read_to_string(pack.join("manifest.json")).unwrap();
            assert!(
                manifest.contains("\"family\": \"sd\""),
                "the family is recorded"
            );
            let files = open_dir(&pack).unwrap();
            let unet = files.weights(Component::Unet, &Device::flex()).unwrap();
            assert_eq!(
                unet.choices,
                [vec!["unet/shard-00000.bin".to_string()]],
                "{} not read as a pack",
                pack.display()
            );
            // Every precision on the CPU; q4 on the GPU too (weights packed on the device).
            for (name, device) in devices() {
                if name != "cpu" && precision != Precision::Q4 {
                    continue;
                }
                let pipe = StableDiffusion::load(&*files, &device).unwrap();
                let image = ddim_image(&pipe, &goldens, &device);
                let err = rel_l2(&image, goldens.values("ddim.image"));
                let what = format!("{model} {} on {name}", precision.name());
                eprintln!("{what}: image rel-L2 {err:.2e}");
                assert!(err <= limit, "{what}: image rel-L2 {err:e} > {limit:e}");
            }
        }
    }
}

#[test]
fn quantized_weights_stay_quantized_on_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let pack = convert_to("sd1-tiny", Precision::Q4, dir.path());
    let files = open_dir(&pack).unwrap();
    for (name, device) in devices() {
        let (_, unet) = webdiffusion::load::unet(&*files, &device, DType::F32).unwrap();
        let mid = unet.mid_block.as_ref().unwrap();
        let block = &mid.attentions[0].transformer_blocks[0];
        for (layer, weight) in [
            ("ff.net.0.proj", block.ff.proj_in.weight.val()),
            ("resnets.0.conv1", mid.resnets[0].conv1.weight.val()),
        ] {
            assert!(
                matches!(weight.dtype(), DType::QFloat(_)),
                "{name}: {layer} is {:?}",
                weight.dtype()
            );
        }
    }
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn converting_twice_gives_identical_packs() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (pa, pb) = (
        convert_to("sd2-tiny", Precision::Q4, a.path()),
        convert_to("sd2-tiny", Precision::Q4, b.path()),
    );
    let (fa, fb) = (files(&pa), files(&pb));
    assert!(fa.len() >= 4, "pack has {} files", fa.len());
    assert_eq!(fa.len(), fb.len());
    for ((path_a, bytes_a), (path_b, bytes_b)) in fa.iter().zip(&fb) {
        assert_eq!(
            path_a.strip_prefix(&pa).unwrap(),
            path_b.strip_prefix(&pb).unwrap()
        );
        assert!(bytes_a == bytes_b, "{} differs", path_a.display());
    }
}

#[test]
fn damaged_or_missing_shards_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let pack = convert_to("sd1-tiny", Precision::Q8, dir.path());
    let shard = pack.join("unet/shard-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(&shard, &bytes).unwrap();
    let files = open_dir(&pack).unwrap();
    let err = StableDiffusion::load(&*files, &Device::flex())
        .err()
        .expect("damaged shard loaded");
    let message = err.to_string();
    assert!(
        message.contains("unet/shard-00000.bin") && message.contains("sha256"),
        "{message}"
    );

    std::fs::remove_file(&shard).unwrap();
    let err = StableDiffusion::load(&*files, &Device::flex())
        .err()
        .expect("missing shard loaded");
    assert!(err.to_string().contains("unet/shard-00000.bin"), "{err}");

    // Shards are read from inside the pack only.
    let manifest = pack.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let outside = text.replacen("unet/shard-00000.bin", "../../etc/passwd", 1);
    std::fs::write(&manifest, outside).unwrap();
    let err = open_dir(&pack)
        .err()
        .expect("a shard outside the pack accepted");
    assert!(
        err.to_string().contains("not a path inside the pack"),
        "{err}"
    );
    std::fs::write(&manifest, &text).unwrap();

    // A manifest this build cannot read is named too.
    std::fs::write(
        &manifest,
        text.replacen(
            &format!("\"version\": {}", webdiffusion::pack::VERSION),
            "\"version\": 99",
            1,
        ),
    )
    .unwrap();
    let err = open_dir(&pack).err().expect("version 99 accepted");
    assert!(err.to_string().contains("version"), "{err}");
}

#[test]
fn single_file_checkpoints_convert_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    for model in MODELS {
        let goldens = Goldens::load(&format!("pipeline-{model}"));
        let checkpoint = common::fixtures().join(format!("single/{model}.safetensors"));
        for &(precision, limit) in LIMITS {
            let out = dir
                .path()
                .join(format!("{model}-single-{}", precision.name()));
            let config = DirFiles(model_dir(model));
            convert_single_file(&checkpoint, &config, precision, &out).unwrap();
            let files = open_dir(&out).unwrap();
            let pipe = StableDiffusion::load(&*files, &device).unwrap();
            let image = ddim_image(&pipe, &goldens, &device);
            let err = rel_l2(&image, goldens.values("ddim.image"));
            let what = format!("{model} single file, {}", precision.name());
            eprintln!("{what}: image rel-L2 {err:.2e}");
            assert!(err <= limit, "{what}: image rel-L2 {err:e} > {limit:e}");
        }
    }
}
