//! Size and quality of model packs (`cargo bench --bench packs`): for both tiny fixtures,
//! the diffusers folder (f32) and its f16/q8/q4 packs, plus plain block-32 absmax
//! quantization of every conv/linear weight for comparison: bytes, UNet bytes per
//! parameter, and the error of diffusers' 8-step DDIM image against the f32 golden. Then
//! the full-size SD 1.5 UNet, built with random weights, quantized as `convert` would.
//! Prints Markdown tables; asserts nothing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::store::{ModuleSnapshot, bridge};
use burn::tensor::DType;
use safetensors::{Dtype, SafeTensors};
use webdiffusion::files::{DirFiles, ModelFiles};
use webdiffusion::models::unet::UNet2DConditionModel;
use webdiffusion::pack::convert::{Policy, Storage, convert_with, storage};
use webdiffusion::pack::matrix;
use webdiffusion::pack::open_dir;
use webdiffusion::pipeline::{Request, StableDiffusion};
use webdiffusion::quant::{Precision, Scales};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// A float32 tensor of a goldens file.
fn golden(model: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    let path = fixtures().join(format!("goldens/pipeline-{model}.safetensors"));
    let bytes = std::fs::read(&path).expect("goldens");
    let st = SafeTensors::deserialize(&bytes).expect("goldens parse");
    let view = st.tensor(name).expect("golden tensor");
    assert_eq!(view.dtype(), Dtype::F32);
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let n: f64 = b.iter().map(|b| (*b as f64).powi(2)).sum();
    (d / n).sqrt()
}

/// PSNR in dB of images in [0, 1].
fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (1.0 / mse).log10()
}

fn ddim_image(files: &dyn ModelFiles, model: &str, device: &Device) -> Vec<f32> {
    let pipe = StableDiffusion::load(files, device).expect("load");
    let (shape, latents) = golden(model, "latents");
    let shape: [usize; 4] = shape.try_into().expect("4-d latents");
    let mut r = Request::new("a photograph of an astronaut riding a horse");
    r.negative_prompt = Some("blurry, low quality".into());
    r.steps = Some(8);
    r.guidance = 7.5;
    r.scheduler = Some("ddim".into());
    r.latents = Some(Tensor::from_data(TensorData::new(latents, shape), device));
    let out = pipe.generate(&r, &mut |_, _, _| true).expect("generate");
    out.image
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32")
}

fn folder_bytes(dir: &Path, filter: &dyn Fn(&Path) -> bool) -> u64 {
    std::fs::read_dir(dir)
        .expect("folder")
        .map(|e| e.expect("entry").path())
        .map(|p| {
            if p.is_dir() {
                folder_bytes(&p, filter)
            } else if filter(&p) {
                std::fs::metadata(&p).expect("file").len()
            } else {
                0
            }
        })
        .sum()
}

fn unet_params(model: &Path) -> u64 {
    let path = model.join("unet/diffusion_pytorch_model.safetensors");
    let path = if path.exists() {
        path
    } else {
        model.join("unet/diffusion_pytorch_model.fp16.safetensors")
    };
    let bytes = std::fs::read(path).expect("unet weights");
    let st = SafeTensors::deserialize(&bytes).expect("unet parse");
    st.tensors()
        .iter()
        .map(|(_, v)| v.shape().iter().product::<usize>() as u64)
        .sum()
}

fn tiny_models(device: &Device) {
    println!("| model | weights | bytes | UNet bytes/param | image rel-L2 | PSNR (dB) |");
    println!("|---|---|---:|---:|---:|---:|");
    let tmp = std::env::temp_dir().join(format!("webdiffusion-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temporary folder");
    for model in ["sd1-tiny", "sd2-tiny"] {
        let src = fixtures().join(model);
        let (_, expected) = golden(model, "ddim.image");
        let params = unet_params(&src);
        let is_weights = |p: &Path| p.extension().is_some_and(|e| e == "safetensors");
        let unet_bytes = folder_bytes(&src.join("unet"), &is_weights);
        let image = ddim_image(&DirFiles(src.clone()), model, device);
        println!(
            "| {model} | diffusers folder | {} | {:.3} | {:.1e} | {:.1} |",
            folder_bytes(&src, &is_weights),
            unet_bytes as f64 / params as f64,
            rel_l2(&image, &expected),
            psnr(&image, &expected)
        );
        for (label, precision, policy) in [
            ("f16 pack", Precision::F16, Policy::Pack),
            ("q8 pack", Precision::Q8, Policy::Pack),
            ("q8, plain absmax-32", Precision::Q8, Policy::PlainAbsMax32),
            ("q4 pack", Precision::Q4, Policy::Pack),
            ("q4, plain absmax-32", Precision::Q4, Policy::PlainAbsMax32),
        ] {
            let out = tmp.join(format!("{model}-{label}"));
            convert_with(&DirFiles(src.clone()), precision, policy, &out).expect("convert");
            let files = open_dir(&out).expect("pack");
            let image = ddim_image(&*files, model, device);
            let unet = folder_bytes(&out.join("unet"), &|_| true);
            println!(
                "| {model} | {label} | {} | {:.3} | {:.1e} | {:.1} |",
                folder_bytes(&out, &|_| true),
                unet as f64 / params as f64,
                rel_l2(&image, &expected),
                psnr(&image, &expected)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The full-size SD 1.5 UNet with random weights, every tensor stored as a pack would.
fn full_size_unet() {
    let device = Device::flex();
    let sd15 = webdiffusion::builtin::config("sd15").expect("built-in sd15");
    let (_, unet) = webdiffusion::load::build::<UNet2DConditionModel>(
        &sd15,
        webdiffusion::component::Component::Unet,
        &device,
    )
    .expect("unet");
    println!();
    println!(
        "| SD 1.5 UNet, random weights | bytes | MB | bytes/param | weight rel-L2 | seconds |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let tensors = unet.collect(None, None, true);
    for precision in [Precision::F16, Precision::Q8, Precision::Q4] {
        let start = Instant::now();
        let (mut params, mut bytes) = (0u64, 0u64);
        let (mut err, mut norm) = (0f64, 0f64);
        for tensor in &tensors {
            let data = bridge::to_data(tensor).expect("tensor data");
            let values = data
                .convert_dtype(DType::F32)
                .try_into_vec::<f32>()
                .expect("f32");
            let shape: Vec<usize> = tensor.shape.iter().copied().collect();
            params += values.len() as u64;
            let back = match storage(&tensor.name, &shape, precision, Policy::Pack) {
                Storage::F32 => {
                    bytes += 4 * values.len() as u64;
                    values.clone()
                }
                Storage::F16 => {
                    bytes += 2 * values.len() as u64;
                    values
                        .iter()
                        .map(|v| half::f16::from_f32(*v).to_f32())
                        .collect()
                }
                Storage::Quant(format) => {
                    let [rows, cols] = matrix(&shape);
                    let q = format.quantize(&values, rows, cols, Scales::Search);
                    bytes += q.len() as u64;
                    format.dequantize(&q, rows, cols).expect("dequantize")
                }
            };
            err += values
                .iter()
                .zip(&back)
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum::<f64>();
            norm += values.iter().map(|a| (*a as f64).powi(2)).sum::<f64>();
        }
        println!(
            "| {} | {bytes} | {:.0} | {:.3} | {:.1e} | {:.0} |",
            precision.name(),
            bytes as f64 / 1e6,
            bytes as f64 / params as f64,
            (err / norm).sqrt(),
            start.elapsed().as_secs_f64()
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter selects one part.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let wanted = |part: &str| filter.as_deref().is_none_or(|f| part.contains(f));
    if wanted("tiny") {
        tiny_models(&Device::flex());
    }
    if wanted("full-size") {
        full_size_unet();
    }
}
