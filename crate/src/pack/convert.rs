//! Writing a pack from a diffusers folder or a single-file checkpoint (`webdiffusion
//! convert`).
//!
//! Policy: weight matrices of convolutions and linear layers are block-quantized along
//! their input dimension (q8: blocks of 32; q4: blocks of 64 where rows divide into
//! them, else 32, for ≈ 4.25 bits a weight; residual shortcuts stay at 8 bits in q4
//! packs). Kept in f16: norms, biases, the CLIP token and position embeddings, the time
//! embedding, and the first and last convolution of the UNet and VAE (tiny, and every
//! output pixel passes through them). Tensors are written sorted by name,
//! so converting the same model twice gives identical bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::f16;
use safetensors::{Dtype, SafeTensors};

use super::shards::ShardWriter;
use super::single_file::Layout;
use super::{
    COMPONENTS, Component, FORMAT, MANIFEST, Manifest, QuantEntry, TensorEntry, VERSION, matrix,
};
use crate::error::{Error, Result};
use crate::model::{self, ModelFiles};
use crate::quant::{BlockFormat, Precision, Scales};
use crate::weights::{check_tensors, expected_tensors, floats};

/// Config files a pack carries, when the source has them.
const CONFIGS: &[&str] = &[
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
];
const REQUIRED: &[&str] = &[
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
];
const TOKENIZER: &[&str] = &[
    "tokenizer/tokenizer.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
];

/// One tensor to write, borrowed from the source file and named as in diffusers.
#[derive(Clone)]
pub struct Source<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub data: &'a [u8],
}

/// What one component became.
#[derive(Debug, Clone, Default)]
pub struct ComponentReport {
    pub component: String,
    pub tensors: usize,
    pub quantized: usize,
    pub params: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// How a tensor is stored.
pub enum Storage {
    F16,
    Quant(BlockFormat),
}

/// Which weights are quantized, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// What `convert` does (see the module's comment).
    Pack,
    /// Every conv and linear weight in blocks of 32 with `max|w| / qmax` scales: the plain
    /// scheme the benchmark compares against.
    PlainAbsMax32,
}

impl Policy {
    pub fn scales(self) -> Scales {
        match self {
            Policy::Pack => Scales::Search,
            Policy::PlainAbsMax32 => Scales::AbsMax,
        }
    }
}

/// The storage `convert --quant precision` gives tensor `name` of `shape`.
pub fn storage(name: &str, shape: &[usize], precision: Precision, policy: Policy) -> Storage {
    let bits = match precision {
        Precision::F16 => return Storage::F16,
        Precision::Q8 => 8,
        Precision::Q4 => 4,
    };
    let matrix_weight =
        name.ends_with(".weight") && matches!(shape.len(), 2 | 4) && !name.contains("embedding");
    let ends = name.ends_with("conv_in.weight") || name.ends_with("conv_out.weight");
    if !matrix_weight || (ends && policy == Policy::Pack) {
        return Storage::F16;
    }
    let cols = matrix(shape)[1];
    // Residual shortcuts (1×1 convolutions where the channel count changes) measurably
    // lose the most at 4 bits for their size: they stay at 8.
    let bits = match policy {
        Policy::Pack if name.ends_with("conv_shortcut.weight") => 8,
        _ => bits,
    };
    let blocks: &[usize] = match (bits, policy) {
        (4, Policy::Pack) => &[64, 32],
        _ => &[32],
    };
    blocks
        .iter()
        .map(|&b| BlockFormat::new(bits, b))
        .find(|f| f.fits(cols))
        .map_or(Storage::F16, Storage::Quant)
}

/// Converts the diffusers folder `src` into a pack at `out`, which must not exist. The
/// pack is written beside it under a temporary name and renamed when complete.
pub fn convert(
    src: &dyn ModelFiles,
    precision: Precision,
    out: &Path,
) -> Result<Vec<ComponentReport>> {
    convert_with(src, precision, Policy::Pack, out)
}

/// [`convert`] with another quantization policy.
pub fn convert_with(
    src: &dyn ModelFiles,
    precision: Precision,
    policy: Policy,
    out: &Path,
) -> Result<Vec<ComponentReport>> {
    let (manifest, expected) = read_configs(src, precision)?;
    write_new_folder(out, |dir| {
        write(src, &expected, (precision, policy), manifest, dir)
    })
}

/// Runs `write` on a temporary folder beside `out` (which must not exist) and renames it
/// to `out` once complete; on error nothing is left behind.
fn write_new_folder<T>(out: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    if out.exists() {
        return Err(Error::invalid(
            "out",
            format!("{} already exists; give a new folder", out.display()),
        ));
    }
    let tmp = temporary(out);
    let result = std::fs::create_dir_all(&tmp)
        .map_err(|e| Error::io(tmp.display(), e))
        .and_then(|_| write(&tmp));
    let result = result.and_then(|value| {
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out.display(), e))?;
        Ok(value)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn temporary(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or("pack".into(), |n| n.to_string_lossy());
    out.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Each component's tensors (checkpoint key, shape) as its config describes them.
type Expected = BTreeMap<&'static str, Vec<(String, Vec<usize>)>>;

/// The manifest without components, after checking that the configs and tokenizer load,
/// and the tensors the configs describe.
fn read_configs(src: &dyn ModelFiles, precision: Precision) -> Result<(Manifest, Expected)> {
    let mut configs = BTreeMap::new();
    for path in CONFIGS {
        let Some(text) = src.read_text(path)? else {
            if REQUIRED.contains(path) {
                return Err(Error::io(src.display(path), "not found"));
            }
            continue;
        };
        let value: serde_json::Value = crate::config::parse(&src.display(path), &text)?;
        configs.insert(path.to_string(), value);
    }
    let mut tokenizer = BTreeMap::new();
    for path in TOKENIZER {
        if let Some(text) = src.read_text(path)? {
            tokenizer.insert(path.to_string(), text);
        }
    }
    // Everything a loader will check, checked now: the tokenizer builds, the configs
    // describe networks this crate runs.
    model::load_tokenizer(src)?;
    model::load_scheduler_config(src)?;
    // The networks are built lazily: nothing is allocated to learn their shapes.
    let device = burn::prelude::Device::flex();
    let expected = BTreeMap::from([
        (
            "text_encoder",
            expected_tensors(&model::build_text_encoder(src, &device)?.1),
        ),
        (
            "unet",
            expected_tensors(&model::build_unet(src, &device)?.1),
        ),
        ("vae", expected_tensors(&model::build_vae(src, &device)?.1)),
    ]);
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        quant: precision.name().into(),
        configs,
        tokenizer,
        components: BTreeMap::new(),
    };
    Ok((manifest, expected))
}

fn write(
    src: &dyn ModelFiles,
    expected: &Expected,
    (precision, policy): (Precision, Policy),
    mut manifest: Manifest,
    dir: &Path,
) -> Result<Vec<ComponentReport>> {
    let mut reports = Vec::new();
    for component in COMPONENTS {
        let stem = if *component == "text_encoder" {
            "model"
        } else {
            "diffusion_pytorch_model"
        };
        let candidates = model::weight_candidates(component, stem);
        let (path, bytes) = src.first_of(&[&candidates[0], &candidates[1]])?;
        let file = src.display(&path);
        let st = parse(&bytes, &file)?;
        let sources = st
            .iter()
            .map(|(name, view)| Source {
                name: name.to_string(),
                shape: view.shape().to_vec(),
                dtype: view.dtype(),
                data: view.data(),
            })
            .collect();
        let (entry, report) = write_component(
            expected,
            sources,
            &file,
            component,
            (precision, policy),
            dir,
        )?;
        manifest.components.insert(component.to_string(), entry);
        reports.push(report);
    }
    finish_manifest(&manifest, dir)?;
    Ok(reports)
}

fn parse<'a>(bytes: &'a [u8], file: &str) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        file: file.into(),
        message: e.to_string(),
    })
}

fn finish_manifest(manifest: &Manifest, dir: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(manifest).expect("manifest serializes");
    let path = dir.join(MANIFEST);
    std::fs::write(&path, json).map_err(|e| Error::io(path.display(), e))
}

/// Converts the single-file checkpoint at `checkpoint` (see `single_file`) into a pack at
/// `out`; `config` supplies the configs and tokenizer (a diffusers folder without weights
/// will do, or `builtin`).
pub fn convert_single_file(
    checkpoint: &Path,
    config: &dyn ModelFiles,
    precision: Precision,
    out: &Path,
) -> Result<Vec<ComponentReport>> {
    let (mut manifest, expected) = read_configs(config, precision)?;
    let file = checkpoint.display().to_string();
    let bytes = std::fs::read(checkpoint).map_err(|e| Error::io(&file, e))?;
    let st = parse(&bytes, &file)?;
    let count = |path: &str, key: &str, default: usize| {
        let value = &manifest.configs[path][key];
        value
            .as_array()
            .map(|a| a.len())
            .or(value.as_u64().map(|n| n as usize))
            .unwrap_or(default)
    };
    let layout = Layout {
        layers_per_block: count("unet/config.json", "layers_per_block", 2),
        vae_up_blocks: count("vae/config.json", "up_block_types", 1),
        text_layers: count("text_encoder/config.json", "num_hidden_layers", 12),
    };
    let mut components = super::single_file::components(&st, &file, &layout)?;
    write_new_folder(out, |dir| {
        let mut reports = Vec::new();
        for component in COMPONENTS {
            let sources = components.remove(component).unwrap_or_default();
            let policy = (precision, Policy::Pack);
            let (entry, report) =
                write_component(&expected, sources, &file, component, policy, dir)?;
            manifest.components.insert(component.to_string(), entry);
            reports.push(report);
        }
        finish_manifest(&manifest, dir)?;
        Ok(reports)
    })
}

fn write_component(
    expected: &Expected,
    mut sources: Vec<Source>,
    file: &str,
    component: &str,
    (precision, policy): (Precision, Policy),
    dir: &Path,
) -> Result<(Component, ComponentReport)> {
    let shapes: Vec<(String, Vec<usize>)> = sources
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone()))
        .collect();
    check_tensors(&expected[component], &shapes, file)?;
    sources.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = sources.windows(2).find(|p| p[0].name == p[1].name) {
        return Err(Error::Safetensors {
            file: file.into(),
            message: format!("two tensors are named `{}`", pair[0].name),
        });
    }
    let mut shards = ShardWriter::new(dir, component);
    let mut tensors = Vec::new();
    let mut report = ComponentReport {
        component: component.into(),
        ..Default::default()
    };
    for Source {
        name,
        shape,
        dtype,
        data,
    } in sources
    {
        if name.ends_with("position_ids") {
            continue; // a buffer, not a parameter
        }
        let values = floats(dtype, data).ok_or_else(|| Error::Safetensors {
            file: file.into(),
            message: format!("tensor `{name}` is {dtype:?}; expected F32, F16 or BF16"),
        })?;
        let (dtype, quant, bytes) = match storage(&name, &shape, precision, policy) {
            Storage::F16 => {
                let bytes: Vec<u8> = values
                    .iter()
                    .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                    .collect();
                ("f16".to_string(), None, bytes)
            }
            Storage::Quant(format) => {
                let [rows, cols] = matrix(&shape);
                let bytes = format.quantize(&values, rows, cols, policy.scales());
                report.quantized += 1;
                let quant = QuantEntry {
                    bits: format.bits,
                    block: format.block,
                    scale: "f16".into(),
                };
                (format!("q{}", format.bits), Some(quant), bytes)
            }
        };
        let (shard, offset) = shards.add(&bytes)?;
        report.tensors += 1;
        report.params += values.len() as u64;
        report.bytes_before += data.len() as u64;
        report.bytes_after += bytes.len() as u64;
        tensors.push(TensorEntry {
            name,
            shape,
            dtype,
            quant,
            shard,
            offset: offset as u64,
            length: bytes.len() as u64,
        });
    }
    let shards = shards.finish()?;
    Ok((Component { shards, tensors }, report))
}
