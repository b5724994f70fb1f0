//! `webdiffusion bench`: times the full-size SD 1.5 text encoder, UNet step and VAE decode
//! with random weights built in memory, on one backend. Not a test: figures go in the README.

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;

use webdiffusion::config::parse;
use webdiffusion::device::{self, Backend};
use webdiffusion::error::Result;
use webdiffusion::models::clip::ClipTextModel;
use webdiffusion::models::unet::UNet2DConditionModel;
use webdiffusion::models::vae::AutoencoderKL;

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
}

pub fn run(args: BenchArgs) -> Result<()> {
    let (backend, device) = device::open(args.backend)?;
    println!("backend: {}", device::describe(backend));
    let latent = args.size / 8;
    let iters = args.iters.max(1);
    let rand =
        |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);

    let text = ClipTextModel::new(
        &parse("sd15 text_encoder", TEXT)?,
        "sd15 text_encoder",
        &device,
    )?;
    let ids =
        Tensor::<2, Int>::from_data(TensorData::new(vec![49406i64; 2 * 77], [2, 77]), &device);
    let ms = time(iters, || text.forward(ids.clone(), 0).into_data());
    println!("text encoder, batch 2 × 77 tokens: {ms:.1} ms");

    let unet = UNet2DConditionModel::new(&parse("sd15 unet", UNET)?, "sd15 unet", &device)?;
    let sample = rand([2, 4, latent, latent]);
    let context = Tensor::<3>::random([2, 77, 768], Distribution::Normal(0.0, 1.0), &device);
    let ms = time(iters, || {
        unet.forward(sample.clone(), 500.0, context.clone(), None, None)
            .into_data()
    });
    println!("UNet step, batch 2 (CFG), {latent}×{latent} latents: {ms:.1} ms");

    if !args.no_vae {
        let vae = AutoencoderKL::new(&parse("sd15 vae", VAE)?, "sd15 vae", &device)?;
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
