//! `webdiffusion bench`: times the full-size SD 1.5 text encoder, UNet step and VAE decode
//! with random weights built in memory, on one backend. Not a test: figures go in the README.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use burn::store::{ModuleSnapshot, bridge};
use burn::tensor::{DType, Distribution};

use webdiffusion::builtin;
use webdiffusion::component::Component;
use webdiffusion::device::{self, Backend};
use webdiffusion::error::{Error, Result};
use webdiffusion::load;
use webdiffusion::lora::{self, Format, Layer, Lora, LoraFile, Stored, Target, Targets};
use webdiffusion::models::clip::ClipTextModel;
use webdiffusion::models::unet::UNet2DConditionModel;
use webdiffusion::models::vae::AutoencoderKL;
use webdiffusion::pack::convert::{Policy, encode};
use webdiffusion::pack::{TensorEntry, decode};
use webdiffusion::quant::Precision;
use webdiffusion::weights::{ModuleLoader, expected_tensors};

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
    /// Also time the UNet step with a random LoRA of this rank on every attention and
    /// feed-forward layer.
    #[arg(long)]
    lora_rank: Option<usize>,
}

/// A LoRA of `rank` with random factors on every attention projection and feed-forward
/// layer of the network whose weight matrices are `targets`.
fn random_lora(targets: &[(String, Vec<usize>)], rank: usize) -> LoraFile {
    let mut noise = webdiffusion::noise::Generator::new(rank as u64);
    let adapted = [
        ".to_q.weight",
        ".to_k.weight",
        ".to_v.weight",
        ".to_out.0.weight",
        ".ff.net.0.proj.weight",
        ".ff.net.2.weight",
    ];
    let mut layers = BTreeMap::new();
    for (key, shape) in targets {
        if !adapted.iter().any(|s| key.ends_with(s)) {
            continue;
        }
        let (out, cols) = (shape[0], shape[1]);
        let mut stored = |name: &str, shape: Vec<usize>| {
            let values = noise
                .normals(shape.iter().product())
                .iter()
                .map(|v| v * 0.01)
                .collect();
            Stored {
                key: format!("{key}.{name}"),
                shape,
                values,
            }
        };
        let layer = Layer {
            down: stored("down", vec![rank, cols]),
            up: stored("up", vec![out, rank]),
            alpha: None,
        };
        let module = key.strip_suffix(".weight").expect("a weight").to_string();
        layers.insert((Component::Unet, Target::Path(module)), layer);
    }
    LoraFile {
        file: "bench LoRA".into(),
        format: Format::Diffusers,
        layers,
    }
}

/// `module` with its weights replaced by what a pack of `precision` holds, encoded as
/// `convert` writes them and decoded as the pack reader does: f16 weights as f16 values
/// (computed in f32), quantized ones as quantized tensors on the device.
fn as_pack<M: Module + ModuleSnapshot>(
    module: M,
    precision: Option<Precision>,
    device: &Device,
) -> Result<M> {
    let Some(precision) = precision else {
        return Ok(module);
    };
    let f16_scales = device.supports_dtype(DType::F16);
    let snapshots = module.collect(None, None, true);
    let mut loader = ModuleLoader::new(module, DType::F32);
    for tensor in snapshots {
        let data = bridge::to_data(&tensor)
            .map_err(|e| Error::Backend(format!("reading {}: {e}", tensor.name)))?;
        let values = data
            .convert_dtype(DType::F32)
            .try_into_vec::<f32>()
            .map_err(|e| Error::Backend(format!("reading {}: {e:?}", tensor.name)))?;
        let shape: Vec<usize> = tensor.shape.iter().copied().collect();
        let encoded = encode(&tensor.name, &shape, &values, precision, Policy::Pack);
        let entry = TensorEntry {
            name: tensor.name.clone(),
            shape,
            dtype: encoded.dtype,
            quant: encoded.quant,
            shard: 0,
            offset: 0,
            length: encoded.bytes.len() as u64,
        };
        loader.apply(decode(&entry, &encoded.bytes, f16_scales), "bench weights")?;
    }
    loader.finish("bench weights")
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

    let sd15 = builtin::config("sd15").expect("built-in sd15");
    let (_, text) = load::build::<ClipTextModel>(&sd15, Component::TextEncoder, &device)?;
    let text = as_pack(text, precision, &device)?;
    let ids =
        Tensor::<2, Int>::from_data(TensorData::new(vec![49406i64; 2 * 77], [2, 77]), &device);
    let ms = time(iters, || text.forward(ids.clone(), 0).into_data());
    println!("text encoder, batch 2 × 77 tokens: {ms:.1} ms");

    let (_, unet) = load::build::<UNet2DConditionModel>(&sd15, Component::Unet, &device)?;
    let unet = as_pack(unet, precision, &device)?;
    let sample = rand([2, 4, latent, latent]);
    let context = Tensor::<3>::random([2, 77, 768], Distribution::Normal(0.0, 1.0), &device);
    let ms = time(iters, || {
        unet.forward(sample.clone(), 500.0, context.clone(), None, None)
            .into_data()
    });
    println!("UNet step, batch 2 (CFG), {latent}×{latent} latents: {ms:.1} ms");
    if let Some(rank) = args.lora_rank {
        let targets = Targets::from([(Component::Unet, expected_tensors(&unet))]);
        let file = random_lora(&targets[&Component::Unet], rank);
        let lora = Arc::new(Lora::new(&file, "bench", "", &targets, &device)?);
        let layers = lora.layers(Component::Unet);
        let adapted = lora::apply(&unet, Component::Unet, &[(lora, 1.0)]);
        let with = time(iters, || {
            adapted
                .forward(sample.clone(), 500.0, context.clone(), None, None)
                .into_data()
        });
        println!(
            "UNet step with a rank-{rank} LoRA on {layers} attention and feed-forward layers: \
             {with:.1} ms ({:+.1}%)",
            (with / ms - 1.0) * 100.0
        );
    }

    if !args.no_vae {
        let (_, vae) = load::build::<AutoencoderKL>(&sd15, Component::Vae, &device)?;
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
