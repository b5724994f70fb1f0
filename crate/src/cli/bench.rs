//! `webdiffusion bench`: times the full-size SD 1.5 text encoder, UNet step and VAE decode
//! with random weights, on one backend, in one precision, and reads the device allocator's
//! own statistics for the memory the weights and the whole run took. Not a test: figures go
//! in the README.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::{DType, Distribution};

use webdiffusion::builtin;
use webdiffusion::component::Component;
use webdiffusion::device::{self, Backend};
use webdiffusion::error::Result;
use webdiffusion::files::ModelFiles;
use webdiffusion::load::{self, Network};
use webdiffusion::lora::{self, Format, Layer, Lora, LoraFile, Stored, Target, Targets};
use webdiffusion::models::clip::ClipTextModel;
use webdiffusion::models::unet::{Conditioning, UNet2DConditionModel};
use webdiffusion::models::vae::Vae;
use webdiffusion::noise::Generator;
use webdiffusion::pack::convert::{Policy, encode};
use webdiffusion::pack::{TensorEntry, decode};
use webdiffusion::quant::Precision;
use webdiffusion::weights::{ModuleLoader, expected_tensors, tensor_data};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// cpu or wgpu (default: wgpu when an adapter exists, else cpu).
    #[arg(long)]
    backend: Option<Backend>,
    /// f32 or f16: what the networks compute in (default: f16 on GPUs that offer it).
    #[arg(long)]
    dtype: Option<String>,
    /// Image size in pixels (latents are size/8).
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Timed runs of each network, after one warm-up run.
    #[arg(long, default_value_t = 2)]
    iters: usize,
    /// Skip the VAE (slow on CPUs): neither loaded nor timed.
    #[arg(long)]
    no_vae: bool,
    /// Store the weights as a pack of this precision would (f16, q8, q4; default: the
    /// compute precision): quantized weights stay quantized on the device.
    #[arg(long)]
    quant: Option<String>,
    /// Also time the UNet step with a random LoRA of this rank on every attention and
    /// feed-forward layer.
    #[arg(long)]
    lora_rank: Option<usize>,
    /// Print the results as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// The device allocator's readings: what it holds in use, and the most it has reserved.
/// The allocator keeps no high-water mark and returns pages as they empty, so a thread
/// reads it every few milliseconds while the benchmark runs: pages reserved and returned
/// within one step count too.
struct Memory {
    device: Device,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<()>>,
}

impl Memory {
    /// Starts reading `device`'s allocator (nothing to read on backends that keep no
    /// statistics, as the CPU's).
    fn start(device: &Device) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = device.memory_pool_usage().map(|_| {
            let (device, peak, stop) = (device.clone(), peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(usage) = device.memory_pool_usage() {
                        peak.fetch_max(usage.bytes_reserved, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        });
        Memory {
            device: device.clone(),
            peak,
            stop,
            sampler,
        }
    }

    /// Bytes in use now (`None` where the backend keeps no statistics).
    fn in_use(&self) -> Option<u64> {
        self.device.memory_pool_usage().map(|u| u.bytes_in_use)
    }

    /// Stops the readings; the most the allocator reserved while they ran.
    fn peak(mut self) -> Option<u64> {
        let sampler = self.sampler.take()?;
        self.stop.store(true, Ordering::Relaxed);
        sampler.join().ok();
        if let Some(usage) = self.device.memory_pool_usage() {
            self.peak.fetch_max(usage.bytes_reserved, Ordering::Relaxed);
        }
        Some(self.peak.load(Ordering::Relaxed))
    }
}

/// `N` as its config in `files` describes it, with random weights made on the host and
/// loaded as a file of them would be: stored as a pack of `precision` holds them (or
/// plain f32), converted to `dtype` as they are applied. No weight-sized buffer other than
/// the final ones touches the device.
fn random_network<N: Network>(
    files: &dyn ModelFiles,
    component: Component,
    precision: Option<Precision>,
    (device, dtype): (&Device, DType),
) -> Result<N> {
    let (_, network) = load::build::<N>(files, component, device)?;
    let expected = expected_tensors(&network);
    let f16_scales = device.supports_dtype(DType::F16);
    let mut loader = ModuleLoader::new(network, (device, dtype));
    let mut noise = Generator::new(component as u64);
    for (name, shape) in expected {
        let values: Vec<f32> = noise
            .normals(shape.iter().product())
            .iter()
            .map(|v| v * 0.02)
            .collect();
        let tensors = match precision {
            None => {
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                tensor_data(&name, &shape, DType::F32, &bytes)
            }
            Some(precision) => {
                let encoded = encode(&name, &shape, &values, precision, Policy::Pack);
                let entry = TensorEntry {
                    name: name.clone(),
                    shape: shape.clone(),
                    dtype: encoded.dtype,
                    quant: encoded.quant,
                    shard: 0,
                    offset: 0,
                    length: encoded.bytes.len() as u64,
                };
                decode(&entry, &encoded.bytes, f16_scales)?
            }
        };
        loader.apply(tensors, "bench weights")?;
    }
    loader.finish("bench weights")
}

/// A LoRA of `rank` with random factors on every attention projection and feed-forward
/// layer of the network whose weight matrices are `targets`.
fn random_lora(targets: &[(String, Vec<usize>)], rank: usize) -> LoraFile {
    let mut noise = Generator::new(rank as u64);
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

pub fn run(args: BenchArgs) -> Result<()> {
    let precision: Option<Precision> = args.quant.as_deref().map(str::parse).transpose()?;
    let requested = args.dtype.as_deref().map(device::parse_dtype).transpose()?;
    let (backend, device) = device::open(args.backend)?;
    let dtype = device::compute_dtype(backend, &device, requested)?;
    let adapter = device::describe(backend);
    let dtype_name = if dtype == DType::F16 { "f16" } else { "f32" };
    let quant_name = precision.map_or("none", |p| p.name());
    println!("backend: {adapter}");
    println!("compute: {dtype_name}, weights stored as: {quant_name}");

    let latent = args.size / 8;
    let iters = args.iters.max(1);
    let rand = |shape: [usize; 4]| {
        Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device).cast(dtype)
    };
    let memory = Memory::start(&device);

    // Every network loaded first, as the pipeline holds them; the VAE in f32 as its config
    // asks (`force_upcast`).
    let sd15 = builtin::config("sd15").expect("built-in sd15");
    let on = |dtype| (&device, dtype);
    let text: ClipTextModel = random_network(&sd15, Component::TextEncoder, precision, on(dtype))?;
    let unet: UNet2DConditionModel = random_network(&sd15, Component::Unet, precision, on(dtype))?;
    let vae: Option<Vae> = match args.no_vae {
        true => None,
        false => Some(random_network(
            &sd15,
            Component::Vae,
            precision,
            on(DType::F32),
        )?),
    };
    let weights = memory.in_use();
    if let Some(bytes) = weights {
        println!("weights on the device: {:.1} MB", bytes as f64 / 1e6);
    }

    let ids =
        Tensor::<2, Int>::from_data(TensorData::new(vec![49406i64; 2 * 77], [2, 77]), &device);
    let text_ms = time(iters, || text.forward(ids.clone(), 0).into_data());
    println!("text encoder, batch 2 × 77 tokens: {text_ms:.1} ms");

    let sample = rand([2, 4, latent, latent]);
    let context =
        Tensor::<3>::random([2, 77, 768], Distribution::Normal(0.0, 1.0), &device).cast(dtype);
    let cond = Conditioning::text(context);
    let unet_ms = time(iters, || {
        unet.forward(sample.clone(), 500.0, &cond, None).into_data()
    });
    println!("UNet step, batch 2 (CFG), {latent}×{latent} latents: {unet_ms:.1} ms");
    let mut lora_ms = None;
    if let Some(rank) = args.lora_rank {
        let targets = Targets::from([(Component::Unet, expected_tensors(&unet))]);
        let file = random_lora(&targets[&Component::Unet], rank);
        let lora = Arc::new(Lora::new(&file, "bench", "", &targets, &device)?);
        let layers = lora.layers(Component::Unet);
        let adapted = lora::apply(&unet, Component::Unet, &[(lora, 1.0)]);
        let with = time(iters, || {
            adapted
                .forward(sample.clone(), 500.0, &cond, None)
                .into_data()
        });
        println!(
            "UNet step with a rank-{rank} LoRA on {layers} attention and feed-forward layers: \
             {with:.1} ms ({:+.1}%)",
            (with / unet_ms - 1.0) * 100.0
        );
        lora_ms = Some(with);
    }

    let vae_ms = vae.map(|vae| {
        let z = Tensor::<4>::random(
            [1, 4, latent, latent],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let ms = time(iters, || vae.decode(z.clone()).into_data());
        println!("VAE decode, {0}×{0}: {ms:.1} ms", args.size);
        ms
    });
    let peak = memory.peak();
    if let Some(peak) = peak {
        println!("peak device memory: {:.1} MB", peak as f64 / 1e6);
    }
    if args.json {
        let json = serde_json::json!({
            "backend": if backend == Backend::Wgpu { "wgpu" } else { "cpu" },
            "adapter": adapter,
            "dtype": dtype_name,
            "quant": quant_name,
            "size": args.size,
            "iters": iters,
            "text_encoder_ms": text_ms,
            "unet_ms": unet_ms,
            "unet_lora_ms": lora_ms,
            "lora_rank": args.lora_rank,
            "vae_decode_ms": vae_ms,
            "weights_device_bytes": weights,
            "peak_device_bytes": peak,
        });
        println!("{json}");
    }
    Ok(())
}

/// Mean wall time in ms of `iters` runs of `f`, after one warm-up (kernels are compiled
/// on first use). `f` must read its result back so the work finishes.
fn time<T>(iters: usize, mut f: impl FnMut() -> T) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_secs_f64() * 1000.0 / iters as f64
}
