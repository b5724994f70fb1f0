//! `webdiffusion bench`: times a built-in model's full-size text encoder (and SD3.5's T5),
//! denoiser step (UNet or transformer) and VAE decode with random weights, on one backend, in one precision, and reads the device allocator's
//! own statistics for the memory the weights and the whole run took. Not a test: figures go
//! in the README.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::quantization::ScaleDtype;
use burn::tensor::{DType, Distribution};

use webdiffusion::builtin;
use webdiffusion::component::Component;
use webdiffusion::device::{self, Backend};
use webdiffusion::error::{Error, Result};
use webdiffusion::family::Family;
use webdiffusion::files::ModelFiles;
use webdiffusion::launches::{self, Launches};
use webdiffusion::load::{self, Network};
use webdiffusion::lora::{self, Format, Layer, Lora, LoraFile, Stored, Target, Targets};
use webdiffusion::models::clip::ClipTextModel;
use webdiffusion::models::mmdit::SD3Transformer2DModel;
use webdiffusion::models::t5::T5EncoderModel;
use webdiffusion::models::unet::{Conditioning, TextTime, UNet2DConditionModel};
use webdiffusion::models::vae::Vae;
use webdiffusion::noise::Generator;
use webdiffusion::pack::convert::{Policy, encode};
use webdiffusion::pack::{TensorEntry, decode};
use webdiffusion::pipeline::DEFAULT_T5_LENGTH;
use webdiffusion::quant::Precision;
use webdiffusion::weights::{ModuleLoader, expected_tensors, tensor_data};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The built-in model whose full-size networks are timed: sd15, sd21, sdxl, sd35m or
    /// sd35l-turbo (random weights).
    #[arg(long, default_value = "sd15")]
    model: String,
    /// SD3.5: also load and time the T5 encoder (4.7 B parameters); without it the
    /// pipeline conditions on zeros in its place.
    #[arg(long)]
    t5: bool,
    /// cpu or wgpu (default: wgpu when an adapter exists, else cpu).
    #[arg(long)]
    backend: Option<Backend>,
    /// f32 or f16: what the networks compute in (default: f16 on GPUs that offer it).
    #[arg(long)]
    dtype: Option<String>,
    /// Image size in pixels (latents are size/8; default: 512).
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
    let Some(files) = builtin::config(&args.model) else {
        return Err(Error::invalid(
            "--model",
            format!(
                "{:?} is not a built-in model ({})",
                args.model,
                builtin::NAMES.join(", ")
            ),
        ));
    };
    let family = Family::detect(&files)?;
    if args.t5 && family != Family::Sd3 {
        return Err(Error::invalid("--t5", "is for the SD3.5 models"));
    }
    let on = |dtype| (&device, dtype);
    let text: ClipTextModel = random_network(&files, Component::TextEncoder, precision, on(dtype))?;
    let t5: Option<T5EncoderModel> = match args.t5 {
        true => Some(random_network(
            &files,
            Component::TextEncoder3,
            precision,
            on(dtype),
        )?),
        false => None,
    };
    let denoiser = match family {
        Family::Sd3 => Bench::Transformer(random_network(
            &files,
            Component::Transformer,
            precision,
            on(dtype),
        )?),
        _ => Bench::Unet(random_network(
            &files,
            Component::Unet,
            precision,
            on(dtype),
        )?),
    };
    let (vae_config, _) = load::build::<Vae>(&files, Component::Vae, &device)?;
    let vae: Option<Vae> = match args.no_vae {
        true => None,
        false => Some(random_network(
            &files,
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
    let t5_ms = t5.map(|t5| {
        let ids = vec![1u32; DEFAULT_T5_LENGTH];
        let ms = time(iters, || t5.encode(&ids, &device).into_data());
        println!("T5 encoder, {DEFAULT_T5_LENGTH} tokens: {ms:.1} ms");
        ms
    });

    let channels = vae_config.latent_channels();
    let sample = rand([2, channels, latent, latent]);
    let normal = |shape: [usize; 3]| {
        Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &device).cast(dtype)
    };
    let (unet_ms, name, unet_cond, step_launches) = match &denoiser {
        Bench::Unet(unet) => {
            let config = load::build::<UNet2DConditionModel>(&files, Component::Unet, &device)?.0;
            let width = config
                .cross_attention_dim
                .expand(1, "unet", "cross_attention_dim")?[0];
            let mut cond = Conditioning::text(normal([2, 77, width]));
            if let Some((_, pooled)) = config.text_time("unet/config.json")? {
                let size = args.size as f32;
                cond.text_time = Some(TextTime {
                    pooled: normal([2, 1, pooled]).reshape([2, pooled]),
                    time_ids: [size, size, 0.0, 0.0, size, size].repeat(2),
                });
            }
            let step = || unet.forward(sample.clone(), 500.0, &cond, None).into_data();
            let (ms, launches) = (time(iters, step), launches::count(step).1);
            (ms, "UNet", Some(cond), launches)
        }
        Bench::Transformer(model) => {
            let config =
                load::build::<SD3Transformer2DModel>(&files, Component::Transformer, &device)?.0;
            let tokens = 77 + DEFAULT_T5_LENGTH;
            let context = normal([2, tokens, config.joint_attention_dim]);
            let pooled = normal([2, 1, config.pooled_projection_dim])
                .reshape([2, config.pooled_projection_dim]);
            let step = || {
                model
                    .forward(sample.clone(), 500.0, context.clone(), pooled.clone(), &[])
                    .into_data()
            };
            let ms = time(iters, step);
            (ms, "transformer", None, launches::count(step).1)
        }
    };
    println!("{name} step, batch 2 (CFG), {latent}×{latent} latents: {unet_ms:.1} ms");
    report_launches(name, backend, &step_launches);
    let weights_read = match &denoiser {
        Bench::Unet(unet) => WeightBytes::of(unet, dtype),
        Bench::Transformer(model) => WeightBytes::of(model, dtype),
    };
    println!(
        "{name} weights read per step: {:.1} MB ({:.1} MB stored, {})",
        weights_read.per_step() as f64 / 1e6,
        weights_read.stored as f64 / 1e6,
        weights_read.path(),
    );
    let mut lora_ms = None;
    if let (Some(rank), Bench::Unet(unet), Some(cond)) = (args.lora_rank, &denoiser, &unet_cond) {
        let targets = Targets::from([(Component::Unet, expected_tensors(unet))]);
        let file = random_lora(&targets[&Component::Unet], rank);
        let lora = Arc::new(Lora::new(&file, "bench", "", &targets, &device)?);
        let layers = lora.layers(Component::Unet);
        let adapted = lora::apply(unet, Component::Unet, &[(lora, 1.0)]);
        let with = time(iters, || {
            adapted
                .forward(sample.clone(), 500.0, cond, None)
                .into_data()
        });
        println!(
            "UNet step with a rank-{rank} LoRA on {layers} attention and feed-forward layers: \
             {with:.1} ms ({:+.1}%)",
            (with / unet_ms - 1.0) * 100.0
        );
        lora_ms = Some(with);
    }

    let vae_run = vae.map(|vae| {
        let z = Tensor::<4>::random(
            [1, channels, latent, latent],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let decode = || vae.decode(z.clone()).into_data();
        let ms = time(iters, decode);
        println!("VAE decode, {0}×{0}: {ms:.1} ms", args.size);
        let launches = launches::count(decode).1;
        report_launches("VAE decode", backend, &launches);
        (ms, launches)
    });
    let vae_ms = vae_run.as_ref().map(|(ms, _)| *ms);
    let counted = backend == Backend::Wgpu;
    let peak = memory.peak();
    if let Some(peak) = peak {
        println!("peak device memory: {:.1} MB", peak as f64 / 1e6);
    }
    if args.json {
        let json = serde_json::json!({
            "model": args.model,
            "t5_ms": t5_ms,
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
            "launches_per_step": counted.then_some(step_launches.total),
            "launches_per_vae_decode": vae_run.as_ref().filter(|_| counted).map(|(_, l)| l.total),
            "weight_bytes_per_step": weights_read.per_step(),
            "weight_bytes_stored": weights_read.stored,
            "weight_path": weights_read.path(),
            "features": {
                "fusion": cfg!(feature = "fusion"),
                "autotune": cfg!(feature = "autotune"),
            },
        });
        println!("{json}");
    }
    Ok(())
}

/// Prints the launch count and the most launched kernels (wgpu only: the CPU backend
/// launches none).
fn report_launches(what: &str, backend: Backend, launches: &Launches) {
    if backend != Backend::Wgpu {
        return;
    }
    let top: Vec<String> = launches
        .by_name
        .iter()
        .take(6)
        .map(|(name, n)| format!("{n} {name}"))
        .collect();
    println!(
        "{what}: {} kernel launches ({})",
        launches.total,
        top.join(", ")
    );
}

/// The bytes of weights one step moves. A float weight is read once by its matmul or
/// convolution. A quantized one is dequantized for each call (`models::layers`): its
/// packed bytes are read and a float copy of the compute precision is written and read
/// again.
#[derive(Default)]
struct WeightBytes {
    /// Bytes of the weights as they sit on the device.
    stored: u64,
    /// Elements of the quantized weights, and the compute precision's bytes per element.
    quantized: u64,
    float_size: u64,
}

impl WeightBytes {
    fn of<M: Module>(module: &M, dtype: DType) -> Self {
        let mut bytes = WeightBytes {
            float_size: dtype.size() as u64,
            ..Default::default()
        };
        module.visit(&mut bytes);
        bytes
    }

    fn per_step(&self) -> u64 {
        self.stored + 2 * self.quantized * self.float_size
    }

    fn path(&self) -> &'static str {
        match self.quantized {
            0 => "float weights",
            _ => "quantized weights dequantized per call",
        }
    }
}

impl ModuleVisitor for WeightBytes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let n = tensor.shape().num_elements() as u64;
        self.stored += match tensor.dtype() {
            DType::QFloat(scheme) => {
                self.quantized += n;
                let block = scheme
                    .block_size()
                    .map_or(n, |b| b.to_dim_vec(D).iter().map(|&d| d as u64).product());
                let scale = match scheme.scale_dtype() {
                    ScaleDtype::F32 => 4,
                    ScaleDtype::F16 | ScaleDtype::BF16 => 2,
                    _ => 1,
                };
                n * scheme.size_bits_value() as u64 / 8 + n.div_ceil(block.max(1)) * scale
            }
            dtype => n * dtype.size() as u64,
        };
    }
}

/// The denoiser being timed.
#[allow(clippy::large_enum_variant)]
enum Bench {
    Unet(UNet2DConditionModel),
    Transformer(SD3Transformer2DModel),
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
