//! `webdiffusion bench`: times the full-size SD 1.5 text encoder, UNet step and VAE decode
//! with random weights built in memory, on one backend. Not a test: figures go in the README.

use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use burn::store::{ModuleSnapshot, bridge};
use burn::tensor::{DType, Distribution};

use webdiffusion::config::parse;
use webdiffusion::device::{self, Backend};
use webdiffusion::error::{Error, Result};
use webdiffusion::models::clip::ClipTextModel;
use webdiffusion::models::unet::UNet2DConditionModel;
use webdiffusion::models::vae::AutoencoderKL;
use webdiffusion::pack::convert::{Policy, Storage, storage};
use webdiffusion::pack::matrix;
use webdiffusion::quant::{Precision, Scales};
use webdiffusion::weights::ModuleLoader;

const UNET: &str = include_str!("../../../tests/fixtures/configs/sd15/unet/config.json");
const VAE: &str = include_str!("../../../tests/fixtures/configs/sd15/vae/config.json");
const TEXT: &str = include_str!("../../../tests/fixtures/configs/sd15/text_encoder/config.json");

#[derive(clap::Args)]
pub struct BenchArgs {
    /// cpu or wgpu (default: wgpu when an adapter exists, else cpu).
    #[arg(long)]
    backend: Option<Backend>,
    /// Image size in pixels (latents are size/8).
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Timed runs of each network, after one warm-up run.
    #[arg(long, default_value_t = 2)]
    iters: usize,
    /// Skip the VAE decode (slow on CPUs).
    #[arg(long)]
    no_vae: bool,
    /// Store the weights as a pack of this precision would (f16, q8, q4; default f32):
    /// quantized weights stay quantized on the device.
    #[arg(long)]
    quant: Option<String>,
}

/// `module` with its weights replaced by what a pack of `precision` holds: f16 weights as
/// f16 values (computed in f32), quantized ones as quantized tensors on the device.
fn as_pack<M: Module + ModuleSnapshot>(
    module: M,
    precision: Option<Precision>,
    device: &Device,
) -> Result<M> {
    let Some(precision) = precision else {
        return Ok(module);
    };
    let f16_scales = device.supports_dtype(DType::F16);
    let mut tensors = Vec::new();
    for tensor in module.collect(None, None, true) {
        let data = bridge::to_data(&tensor)
            .map_err(|e| Error::Backend(format!("reading {}: {e}", tensor.name)))?;
        let values = data
            .convert_dtype(DType::F32)
            .try_into_vec::<f32>()
            .map_err(|e| Error::Backend(format!("reading {}: {e:?}", tensor.name)))?;
        let shape: Vec<usize> = tensor.shape.iter().copied().collect();
        let data = match storage(&tensor.name, &shape, precision, Policy::Pack) {
            Storage::F16 => {
                let rounded: Vec<f32> = values
                    .iter()
                    .map(|v| half::f16::from_f32(*v).to_f32())
                    .collect();
                TensorData::new(rounded, shape)
            }
            Storage::Quant(format) => {
                let [rows, cols] = matrix(&shape);
                let bytes = format.quantize(&values, rows, cols, Scales::Search);
                format.tensor_data(&bytes, rows, cols, f16_scales)
            }
        };
        tensors.push((tensor.name.clone(), data));
    }
    let mut loader = ModuleLoader::new(module, "bench weights", DType::F32);
    loader.apply_data(tensors)?;
    loader.finish()
}

pub fn run(args: BenchArgs) -> Result<()> {
    let precision: Option<Precision> = args.quant.as_deref().map(str::parse).transpose()?;
    let (backend, device) = device::open(args.backend)?;
    println!("backend: {}", device::describe(backend));
    println!("weights: {}", precision.map_or("f32", |p| p.name()));

    let latent = args.size / 8;
    let iters = args.iters.max(1);
    let rand =
        |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);

    let text = ClipTextModel::new(
        &parse("sd15 text_encoder", TEXT)?,
        "sd15 text_encoder",
        &device,
    )?;
    let text = as_pack(text, precision, &device)?;
    let ids =
        Tensor::<2, Int>::from_data(TensorData::new(vec![49406i64; 2 * 77], [2, 77]), &device);
    let ms = time(iters, || text.forward(ids.clone(), 0).into_data());
    println!("text encoder, batch 2 × 77 tokens: {ms:.1} ms");

    let unet = UNet2DConditionModel::new(&parse("sd15 unet", UNET)?, "sd15 unet", &device)?;
    let unet = as_pack(unet, precision, &device)?;
    let sample = rand([2, 4, latent, latent]);
    let context = Tensor::<3>::random([2, 77, 768], Distribution::Normal(0.0, 1.0), &device);
    let ms = time(iters, || {
        unet.forward(sample.clone(), 500.0, context.clone(), None, None)
            .into_data()
    });
    println!("UNet step, batch 2 (CFG), {latent}×{latent} latents: {ms:.1} ms");

    if !args.no_vae {
        let vae = AutoencoderKL::new(&parse("sd15 vae", VAE)?, "sd15 vae", &device)?;
        let vae = as_pack(vae, precision, &device)?;
        let z = rand([1, 4, latent, latent]);
        let ms = time(iters, || vae.decode(z.clone()).into_data());
        println!("VAE decode, {0}×{0}: {ms:.1} ms", args.size);
    }
    Ok(())
}

/// Mean wall time in ms of `iters` runs of `f`, after one warm-up (weights are initialised
/// and kernels compiled on first use). `f` must read its result back so the work finishes.
fn time<T>(iters: usize, mut f: impl FnMut() -> T) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_secs_f64() * 1000.0 / iters as f64
}
