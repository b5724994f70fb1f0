//! `webdiffusion generate`: a prompt (and optionally an init image) in, a PNG out.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{DType, Tensor};

use webdiffusion::component::Component;
use webdiffusion::error::{Error, Result};
use webdiffusion::image;
use webdiffusion::pipeline::{
    Request, Settings, SizeConditioning, SkipLayerGuidance, StableDiffusion, VaeTiling,
};

use super::io::{self, Output};
use super::{Common, open};

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    prompt: String,
    /// What to steer away from. SDXL without one uses zero negative embeddings (as
    /// diffusers, `force_zeros_for_empty_prompt`); `--negative-prompt ""` encodes "".
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Denoising steps (default: 20, or 4 for LCM).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale; 1 or less runs the UNet once per step.
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    /// diffusers' guidance_rescale (0 = off).
    #[arg(long, default_value_t = 0.0)]
    guidance_rescale: f64,
    // The names come from the one registry, `schedulers::SCHEDULERS`.
    #[arg(long, help = format!("{} (default: the model's own)", webdiffusion::schedulers::names()))]
    scheduler: Option<String>,
    /// DDIM's η (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Random if not given; printed either way.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    width: Option<usize>,
    #[arg(long)]
    height: Option<usize>,
    #[arg(long, default_value_t = 0)]
    clip_skip: usize,
    /// SDXL's size conditioning: the original image size `H,W` it is told the picture had
    /// (default: the output size).
    #[arg(long, value_parser = parse_pair, value_name = "H,W")]
    original_size: Option<(usize, usize)>,
    /// SDXL's size conditioning: the crop's top-left corner `T,L` (default 0,0).
    #[arg(long, value_parser = parse_pair, value_name = "T,L")]
    crop_top_left: Option<(usize, usize)>,
    /// SDXL's size conditioning: the target size `H,W` (default: the output size).
    #[arg(long, value_parser = parse_pair, value_name = "H,W")]
    target_size: Option<(usize, usize)>,
    /// SD3: the T5 tokens the prompt is read as (diffusers' max_sequence_length, ≤ 512).
    #[arg(long, default_value_t = webdiffusion::pipeline::DEFAULT_T5_LENGTH)]
    max_sequence_length: usize,
    /// SD3: skip-layer guidance over these transformer layers (SD3.5 Medium: 7,8,9), as
    /// diffusers' skip_guidance_layers (steps 1%–20%, scale --skip-layer-scale).
    #[arg(long, value_delimiter = ',', value_name = "LAYERS")]
    skip_layer_guidance: Vec<usize>,
    /// SD3: skip-layer guidance's scale.
    #[arg(long, default_value_t = 2.8, requires = "skip_layer_guidance")]
    skip_layer_scale: f64,
    #[command(flatten)]
    loras: super::lora::LoraArgs,
    #[command(flatten)]
    reading: super::prompt::PromptArgs,
    /// safetensors with tensor `latents` [1,C,h,w]: the initial noise.
    #[arg(long)]
    latents: Option<PathBuf>,
    /// img2img and inpainting: the image to start from.
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// img2img and inpainting: how much to change the init image, in (0, 1].
    #[arg(long)]
    strength: Option<f64>,
    /// img2img and inpainting: safetensors with tensor `noise` [1,C,h,w] added to the init
    /// latents (and blending the kept part back in when inpainting).
    #[arg(long)]
    noise: Option<PathBuf>,
    /// Inpainting: a PNG of the init image's size, white where to repaint.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Inpainting: paste the init image back outside the mask blurred by this many pixels
    /// (A1111's mask blur; default 0 = off, as diffusers).
    #[arg(long, default_value_t = 0.0)]
    mask_blur: f32,
    #[command(flatten)]
    control: super::control::ControlArgs,
    /// Another VAE to decode (and encode) with: a folder or pack of an AutoencoderKL or of
    /// an AutoencoderTiny (TAESD, much faster); the output size follows its scale factor.
    #[arg(long)]
    vae: Option<PathBuf>,
    /// A small decoder for --preview: a folder or pack of an AutoencoderTiny (TAESD).
    #[arg(long, requires = "preview")]
    preview_vae: Option<PathBuf>,
    /// A PNG replaced after every step by the current latents as --preview-vae decodes them
    /// (a live preview to watch; the last step's stays).
    #[arg(long, requires = "preview_vae")]
    preview: Option<PathBuf>,
    /// Decode (and encode init images) in overlapping tiles of PIXELS (default: the VAE's
    /// sample_size), as diffusers' enable_vae_tiling: less memory for large images.
    #[arg(long, value_name = "PIXELS", num_args = 0..=1)]
    vae_tiling: Option<Option<usize>>,
    /// The PNG to write (default: webdiffusion-SEED.png unless --out-tensor is given).
    #[arg(long)]
    out: Option<PathBuf>,
    /// safetensors with `image` (f32 [H,W,3] in [0,1]) and `latents` (final latents).
    #[arg(long)]
    out_tensor: Option<PathBuf>,
}

pub fn run(args: GenerateArgs, matches: &clap::ArgMatches) -> Result<()> {
    let groups = super::control::groups(&args.control, matches)?;
    let canny = args
        .control
        .canny
        .as_deref()
        .map(super::control::parse_canny)
        .transpose()?;
    if canny.is_some() && groups.is_empty() {
        return Err(Error::invalid(
            "--canny",
            "needs a --controlnet and its --control-image",
        ));
    }
    if args.out.is_some() && args.out == args.out_tensor {
        return Err(Error::invalid(
            "--out-tensor",
            "is the same file as --out; give two paths",
        ));
    }
    // Without --out or --out-tensor the image goes to the current folder.
    let default_out = PathBuf::from("webdiffusion.png");
    let outs = [&args.out, &args.out_tensor].into_iter().flatten();
    let default = (args.out.is_none() && args.out_tensor.is_none()).then_some(&default_out);
    for out in outs.chain(default).chain(&args.preview) {
        io::check_writable(out)?;
    }
    if args.init_image.is_none() {
        for (flag, given) in [
            ("--strength", args.strength.is_some()),
            ("--noise", args.noise.is_some()),
            ("--mask", args.mask.is_some()),
        ] {
            if given {
                return Err(Error::invalid(flag, "needs --init-image"));
            }
        }
    }
    let (files, device, dtype) = open(&args.common)?;
    let seed = args.seed.unwrap_or_else(random_seed);
    let mut request = Request::new(args.prompt.clone());
    request.negative_prompt = args.negative_prompt.clone();
    request.steps = args.steps;
    request.guidance = args.guidance;
    request.guidance_rescale = args.guidance_rescale;
    request.scheduler = args.scheduler.clone();
    request.eta = args.eta;
    request.seed = seed;
    request.width = args.width;
    request.height = args.height;
    request.clip_skip = args.clip_skip;
    request.max_sequence_length = Some(args.max_sequence_length);
    if !args.skip_layer_guidance.is_empty() {
        let mut slg = SkipLayerGuidance::new(args.skip_layer_guidance.clone());
        slg.scale = args.skip_layer_scale;
        request.skip_layer_guidance = Some(slg);
    }
    if let Some(tile) = args.vae_tiling {
        request.vae_tiling = VaeTiling::On(tile);
    }
    request.size = SizeConditioning {
        original_size: args.original_size,
        crop_top_left: args.crop_top_left.unwrap_or_default(),
        target_size: args.target_size,
    };
    if let Some(path) = &args.latents {
        request.latents = Some(io::read_tensor4(path, "latents", &device)?);
    }
    if let Some(path) = &args.init_image {
        let png = image::read_png(path)?;
        request.init_image = Some(image::image_to_tensor(&png, &device));
        request.strength = args.strength.unwrap_or(0.8);
    }
    if let Some(path) = &args.noise {
        request.noise = Some(io::read_tensor4(path, "noise", &device)?);
    }
    if let Some(path) = &args.mask {
        request.mask = Some(image::read_png(path)?);
    }
    request.mask_blur = args.mask_blur;

    let vae = args
        .vae
        .as_deref()
        .map(|path| webdiffusion::pack::open_component(path, Component::Vae))
        .transpose()?;
    let mut pipe = StableDiffusion::load_from(&*files, vae.as_deref(), &device, dtype)?;
    if let Some(path) = &args.preview_vae {
        pipe.load_preview(&*webdiffusion::pack::open_component(path, Component::Vae)?)?;
    }
    if !args.loras.is_empty() {
        request.loras = super::lora::load(&args.loras, &pipe.lora_targets()?, &device)?;
    }
    request.embeddings = super::prompt::load(&args.reading, &pipe.text)?;
    request.prompt_weighting = !args.reading.no_prompt_weighting;
    request.controlnets = super::control::load(&pipe, &groups, canny)?;
    let mut progress = Progress::new();
    // A preview that cannot be written stops the run with its error, not as a cancel.
    let mut preview_error = None;
    let generated = pipe.generate(&request, &mut |step, total, latents| {
        progress.update(step, total);
        let written = match (&args.preview, pipe.preview(latents)) {
            // Written atomically: a viewer watching the file never reads half of one.
            (Some(path), Some(image)) => png(image, &[]).and_then(|b| io::write_atomic(path, &b)),
            _ => Ok(()),
        };
        written.map_err(|e| preview_error = Some(e)).is_ok()
    });
    progress.finish();
    let generated = match preview_error {
        Some(e) => return Err(e),
        None => generated?,
    };

    // Both outputs are written, or neither.
    let mut outputs = io::Outputs::default();
    if let Some(path) = &args.out_tensor {
        let tensors = vec![
            Output::f32("image", generated.image.clone())?,
            Output::f32("latents", generated.latents.clone().cast(DType::F32))?,
        ];
        outputs.add(path, &io::safetensors_bytes(tensors)?)?;
    }
    let out = match (&args.out, &args.out_tensor) {
        (Some(out), _) => Some(out.clone()),
        (None, None) => Some(PathBuf::from(format!("webdiffusion-{seed}.png"))),
        (None, Some(_)) => None,
    };
    if let Some(out) = &out {
        let model = args.common.model.file_name().map_or_else(
            || args.common.model.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut parameters = a1111_parameters(&request, &generated.settings, &model);
        for field in super::control::a1111(&request.controlnets, canny) {
            parameters += &format!(", {field}");
        }
        let png = png(generated.image, &[("parameters", &parameters)])?;
        outputs.add(out, &png)?;
    }
    outputs.commit()?;
    if let Some(out) = out {
        eprintln!("seed {seed}: wrote {}", out.display());
    }
    Ok(())
}

/// `image` (`[H, W, 3]` in [0, 1]) as a PNG with the text chunks `text`.
fn png(image: Tensor<3>, text: &[(&str, &str)]) -> Result<Vec<u8>> {
    image::encode_png(&image::tensor_to_image(image)?, text)
}

/// The generation's parameters as AUTOMATIC1111 writes them into a PNG's `parameters`.
fn a1111_parameters(request: &Request, settings: &Settings, model: &str) -> String {
    let (lora_tags, lora_hashes) = super::lora::a1111(&request.loras);
    let mut fields = vec![
        format!("Steps: {}", settings.steps),
        format!("Sampler: {}", settings.scheduler),
        format!("CFG scale: {}", settings.guidance),
        format!("Seed: {}", settings.seed),
        format!("Size: {}x{}", settings.width, settings.height),
        format!("Model: {model}"),
    ];
    if let Some(strength) = settings.strength {
        fields.push(format!("Denoising strength: {strength}"));
    }
    fields.extend(lora_hashes);
    let negative = request.negative_prompt.as_deref().unwrap_or_default();
    fields.extend(super::prompt::a1111(
        &request.embeddings,
        &[&request.prompt, negative],
    ));
    format!(
        "{}{lora_tags}\nNegative prompt: {}\n{}",
        request.prompt,
        request.negative_prompt.as_deref().unwrap_or_default(),
        fields.join(", ")
    )
}

/// Two numbers `A,B` (a size or a corner), each at most 65536.
fn parse_pair(text: &str) -> std::result::Result<(usize, usize), String> {
    let parse = |v: &str| match v.trim().parse::<usize>() {
        Ok(n) if n <= 65536 => Ok(n),
        _ => Err(format!("{text:?} is not two numbers A,B (each 0 to 65536)")),
    };
    match text.split_once(',') {
        Some((a, b)) => Ok((parse(a)?, parse(b)?)),
        None => Err(format!("{text:?} is not two numbers A,B")),
    }
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (std::process::id() as u64) << 32
}

/// A one-line progress bar on a terminal; silent when stderr is not a TTY.
struct Progress {
    start: Instant,
    tty: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, step: usize, total: usize) {
        if !self.tty {
            return;
        }
        let width = 30;
        let done = width * step / total.max(1);
        let rate = step as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\r[{}{}] {step}/{total} {rate:.2} it/s",
            "#".repeat(done),
            ".".repeat(width - done)
        );
        let _ = std::io::stderr().flush();
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
