//! Writing a pack from a diffusers folder or a single-file checkpoint (`webdiffusion
//! convert`).
//!
//! Policy: weight matrices of convolutions and linear layers are block-quantized along
//! their input dimension (q8: blocks of 32; q4: blocks of 64 where rows divide into
//! them, else 32, for ≈ 4.25 bits a weight; residual shortcuts stay at 8 bits in q4
//! packs; CLIP's token embedding at 8 bits in blocks of 32, row block by row block). Kept
//! in f16: norms, biases, CLIP's position embedding, the time embedding, and the first and
//! last convolution of the UNet and VAE (tiny, and every output pixel passes through
//! them). Tensors are written sorted by name,
//! so converting the same model twice gives identical bytes.

use std::collections::BTreeMap;
use std::path::Path;

use half::f16;

use super::Source;
use super::shards::ShardWriter;
use super::single_file::Layout;
use super::{
    ComponentEntry, FORMAT, MANIFEST, Manifest, QuantEntry, ScaleDType, StoredDType, TensorEntry,
    VERSION, matrix,
};
use crate::component::{Component, pipeline_configs, tokenizer_text};
use crate::error::{Error, Result};
use crate::family::Family;
use crate::files::{ModelFiles, parent_folder};
use crate::load;
use crate::models::clip::ClipTextModel;
use crate::models::controlnet::ControlNetModel;
use crate::models::mmdit::SD3Transformer2DModel;
use crate::models::split_embedding::split_table;
use crate::models::t5::T5EncoderModel;
use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::Vae;
use crate::quant::{BlockFormat, Precision, Scales};
use crate::weights::safetensors::SafetensorsFile;
use crate::weights::{check_tensors, expected_tensors, floats, pieces};

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
    /// A tensor with values beyond f16's range (±65504) keeps its f32 values.
    F32,
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

/// A tensor as a pack stores it.
pub struct Encoded {
    pub dtype: StoredDType,
    pub quant: Option<QuantEntry>,
    pub bytes: Vec<u8>,
}

/// Tensor `name` of `shape` with `values` as `convert --quant precision` stores it.
pub fn encode(
    name: &str,
    shape: &[usize],
    values: &[f32],
    precision: Precision,
    policy: Policy,
) -> Encoded {
    // f16 (and f16 quantization scales) would turn such values into infinities.
    let beyond_half = values.iter().any(|v| v.abs() > f16::MAX.to_f32());
    let storage = match beyond_half {
        true => Storage::F32,
        false => storage(name, shape, precision, policy),
    };
    match storage {
        Storage::F32 => Encoded {
            dtype: StoredDType::F32,
            quant: None,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        },
        Storage::F16 => Encoded {
            dtype: StoredDType::F16,
            quant: None,
            bytes: values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
        },
        Storage::Quant(format) => {
            let [rows, cols] = matrix(shape);
            // The token embedding goes in its row blocks, each decodable on its own.
            let bytes = pieces(name, shape)
                .iter()
                .flat_map(|piece| {
                    let r = piece.rows.clone().unwrap_or(0..rows);
                    let block = &values[r.start * cols..r.end * cols];
                    format.quantize(block, r.len(), cols, policy.scales())
                })
                .collect();
            Encoded {
                dtype: if format.bits == 8 {
                    StoredDType::Q8
                } else {
                    StoredDType::Q4
                },
                quant: Some(QuantEntry {
                    bits: format.bits,
                    block: format.block,
                    scale: ScaleDType::F16,
                }),
                bytes,
            }
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
    // CLIP's token embedding (and T5's) is most of a text encoder's bytes once its layers
    // are quantized; it is looked up, not multiplied, so it is widened to floats as it loads
    // and 8 bits lose little (q4 packs too).
    let q8 = BlockFormat::new(8, 32);
    if split_table(name).is_some()
        && shape.len() == 2
        && policy == Policy::Pack
        && q8.fits(shape[1])
    {
        return Storage::Quant(q8);
    }
    // Lookup tables (embeddings, T5's position bias) are not multiplied: kept in f16.
    let lookup = name.contains("embedding") || name.contains("relative_attention_bias");
    let matrix_weight = name.ends_with(".weight") && matches!(shape.len(), 2 | 4) && !lookup;
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

/// Runs `write` on a new folder beside `out` (which must not exist) with a random name,
/// and renames it to `out` once complete; on error (or a panic) it is removed.
fn write_new_folder<T>(out: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    if out.exists() || out.is_symlink() {
        return Err(Error::invalid(
            "out",
            format!("{} already exists; give a new folder", out.display()),
        ));
    }
    let name = out
        .file_name()
        .map_or("pack".into(), |n| n.to_string_lossy());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempdir_in(parent_folder(out))
        .map_err(|e| Error::io(out.display(), e))?;
    let value = write(tmp.path())?;
    std::fs::rename(tmp.path(), out).map_err(|e| Error::io(out.display(), e))?;
    // Renamed: nothing is left at the temporary path to remove.
    let _ = tmp.keep();
    Ok(value)
}

/// Each component's tensors (checkpoint key, shape) as its config describes them.
type Expected = BTreeMap<Component, Vec<(String, Vec<usize>)>>;

/// The manifest without components, after checking that the configs and tokenizer load,
/// and the tensors the configs describe.
fn read_configs(src: &dyn ModelFiles, precision: Precision) -> Result<(Manifest, Expected)> {
    let family = Family::detect(src)?;
    let mut configs = BTreeMap::new();
    for (path, required) in pipeline_configs(family) {
        let Some(text) = src.read_text(&path)? else {
            if required {
                return Err(Error::io(src.display(&path), "not found"));
            }
            continue;
        };
        let value: serde_json::Value = crate::config::parse(&src.display(&path), &text)?;
        configs.insert(path, value);
    }
    let mut tokenizer = BTreeMap::new();
    for path in tokenizer_text(family) {
        if let Some(text) = src.read_text(&path)? {
            tokenizer.insert(path, text);
        }
    }
    // Everything a loader will check, checked now: the tokenizers build, the configs
    // describe networks this crate runs.
    let present = family.present(src)?;
    for &component in &present {
        match (component, component.tokenizer()) {
            (Component::TextEncoder3, Some(folder)) => drop(load::t5_tokenizer(src, folder)?),
            (_, Some(folder)) => drop(load::tokenizer(src, folder)?),
            (_, None) => {}
        }
    }
    load::scheduler_config(src)?;
    let expected = present
        .iter()
        .map(|&c| Ok((c, expected_of(src, c)?)))
        .collect::<Result<Expected>>()?;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        quant: precision,
        family: Some(family.name().into()),
        configs,
        tokenizer,
        components: BTreeMap::new(),
    };
    Ok((manifest, expected))
}

/// The tensors (checkpoint key, shape) `component` of `src` has, as its config describes
/// it. The network is built lazily: nothing is allocated to learn the shapes.
fn expected_of(src: &dyn ModelFiles, component: Component) -> Result<Vec<(String, Vec<usize>)>> {
    let device = burn::prelude::Device::flex();
    Ok(match component {
        Component::TextEncoder | Component::TextEncoder2 => {
            expected_tensors(&load::build::<ClipTextModel>(src, component, &device)?.1)
        }
        Component::TextEncoder3 => {
            expected_tensors(&load::build::<T5EncoderModel>(src, component, &device)?.1)
        }
        Component::Unet => {
            expected_tensors(&load::build::<UNet2DConditionModel>(src, component, &device)?.1)
        }
        Component::Transformer => {
            expected_tensors(&load::build::<SD3Transformer2DModel>(src, component, &device)?.1)
        }
        Component::Vae => expected_tensors(&load::build::<Vae>(src, component, &device)?.1),
        Component::ControlNet => {
            expected_tensors(&load::build::<ControlNetModel>(src, component, &device)?.1)
        }
    })
}

/// Converts one `component` published on its own (a ControlNet; `src` seen through
/// `files::ComponentDir`) into a pack at `out`, which must not exist.
pub fn convert_component(
    src: &dyn ModelFiles,
    component: Component,
    precision: Precision,
    out: &Path,
) -> Result<Vec<ComponentReport>> {
    convert_renamed(src, component, precision, out, &|key| Some(key.to_string()))
}

/// Converts a single-file ControlNet in the original layout into a pack at `out`.
#[cfg(not(target_family = "wasm"))]
pub fn convert_controlnet_file(
    file: &super::single_file::SingleFileControlNet,
    precision: Precision,
    out: &Path,
) -> Result<Vec<ComponentReport>> {
    let rename = |key: &str| file.rename(key);
    convert_renamed(file, Component::ControlNet, precision, out, &rename)
}

/// [`convert_component`] with the weight file's keys renamed by `rename` (`None`: a key
/// the component does not have).
fn convert_renamed(
    src: &dyn ModelFiles,
    component: Component,
    precision: Precision,
    out: &Path,
    rename: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<ComponentReport>> {
    let path = component.config();
    let config: serde_json::Value =
        crate::config::parse(&src.display(&path), &src.require_text(&path)?)?;
    // Another class's config may still describe a network of this shape (a UNet's does).
    let class = config.get("_class_name").and_then(|c| c.as_str());
    if let Some(name) =
        class.filter(|&n| component == Component::ControlNet && n != "ControlNetModel")
    {
        return Err(Error::config(
            &src.display(&path),
            "_class_name",
            format!("is {name}; a {component} pack needs a ControlNetModel"),
        ));
    }
    let expected = Expected::from([(component, expected_of(src, component)?)]);
    let mut manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        quant: precision,
        family: None,
        configs: BTreeMap::from([(path, config)]),
        tokenizer: BTreeMap::new(),
        components: BTreeMap::new(),
    };
    write_new_folder(out, |dir| {
        let (path, bytes) = weight_file(src, component)?;
        let file = src.display(&path);
        let st = SafetensorsFile::parse(&bytes, &file)?;
        let sources = st
            .tensors()
            .map(|t| {
                let mut source = Source::from(t);
                source.name = rename(&source.name).ok_or_else(|| Error::UnexpectedTensor {
                    file: file.clone(),
                    key: source.name.clone(),
                })?;
                Ok(source)
            })
            .collect::<Result<_>>()?;
        let policy = (precision, Policy::Pack);
        let (entry, report) = write_component(&expected, sources, &file, component, policy, dir)?;
        manifest.components.insert(component, entry);
        finish_manifest(&manifest, dir)?;
        Ok(vec![report])
    })
}

fn write(
    src: &dyn ModelFiles,
    expected: &Expected,
    (precision, policy): (Precision, Policy),
    mut manifest: Manifest,
    dir: &Path,
) -> Result<Vec<ComponentReport>> {
    let mut reports = Vec::new();
    for &component in expected.keys() {
        let (path, bytes) = weight_file(src, component)?;
        let file = src.display(&path);
        let st = SafetensorsFile::parse(&bytes, &file)?;
        let sources = st.tensors().map(Source::from).collect();
        let (entry, report) = write_component(
            expected,
            sources,
            &file,
            component,
            (precision, policy),
            dir,
        )?;
        manifest.components.insert(component, entry);
        reports.push(report);
    }
    finish_manifest(&manifest, dir)?;
    Ok(reports)
}

/// The first of `component`'s weight files that exists, with its path.
fn weight_file(src: &dyn ModelFiles, component: Component) -> Result<(String, Vec<u8>)> {
    let candidates = component.weight_files(false);
    for path in &candidates {
        if let Some(bytes) = src.read(path)? {
            return Ok((path.clone(), bytes));
        }
    }
    Err(Error::io(
        src.display(&candidates[0]),
        format!("not found (also tried {})", candidates[1]),
    ))
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
    let family = Family::detect(config)?;
    if family.is_flow() {
        return Err(Error::io(
            &file,
            format!(
                "single-file {family} checkpoints are not read yet: use the model's diffusers \
                 folder"
            ),
        ));
    }
    let bytes = crate::files::read_bounded(checkpoint, crate::files::MAX_FILE_BYTES)?;
    let st = SafetensorsFile::parse(&bytes, &file)?;
    let count = |path: &str, key: &str, default: usize| {
        let Some(value) = manifest.configs.get(path).map(|c| &c[key]) else {
            return default;
        };
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
        text_2_layers: count("text_encoder_2/config.json", "num_hidden_layers", 32),
        family,
    };
    let mut components = super::single_file::components(&st, &file, &layout)?;
    write_new_folder(out, |dir| {
        let mut reports = Vec::new();
        for &component in expected.keys() {
            let sources = components.remove(&component).unwrap_or_default();
            let policy = (precision, Policy::Pack);
            let (entry, report) =
                write_component(&expected, sources, &file, component, policy, dir)?;
            manifest.components.insert(component, entry);
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
    component: Component,
    (precision, policy): (Precision, Policy),
    dir: &Path,
) -> Result<(ComponentEntry, ComponentReport)> {
    let shapes: Vec<(String, Vec<usize>)> = sources
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone()))
        .collect();
    check_tensors(&expected[&component], &shapes, file)?;
    sources.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = sources.windows(2).find(|p| p[0].name == p[1].name) {
        return Err(Error::Safetensors {
            file: file.into(),
            message: format!("two tensors are named `{}`", pair[0].name),
        });
    }
    let mut writer = ComponentWriter::new(dir, component);
    for Source {
        name,
        shape,
        dtype,
        data,
        transposed,
    } in sources
    {
        if name.ends_with("position_ids") {
            continue; // a buffer, not a parameter
        }
        let mut values = floats(dtype, data).ok_or_else(|| Error::Safetensors {
            file: file.into(),
            message: format!("tensor `{name}` is {dtype:?}; expected F32, F16 or BF16"),
        })?;
        if let (true, [rows, cols]) = (transposed, shape.as_slice()) {
            // Stored [cols, rows].
            values = (0..rows * cols)
                .map(|i| values[(i % cols) * rows + i / cols])
                .collect();
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::Safetensors {
                file: file.into(),
                message: format!("tensor `{name}` has a non-finite value at index {i}"),
            });
        }
        let before = data.len() as u64;
        writer.add(name, shape, &values, before, (precision, policy))?;
    }
    writer.finish()
}

/// A component's shards, tensor entries and report, as its tensors are encoded.
struct ComponentWriter<'d> {
    shards: ShardWriter<'d>,
    tensors: Vec<TensorEntry>,
    report: ComponentReport,
}

impl<'d> ComponentWriter<'d> {
    fn new(dir: &'d Path, component: Component) -> Self {
        Self {
            shards: ShardWriter::new(dir, component.name()),
            tensors: Vec::new(),
            report: ComponentReport {
                component: component.name().into(),
                ..Default::default()
            },
        }
    }

    /// Encodes tensor `name` (`values`, `before` bytes in its source) into the shards.
    fn add(
        &mut self,
        name: String,
        shape: Vec<usize>,
        values: &[f32],
        before: u64,
        (precision, policy): (Precision, Policy),
    ) -> Result<()> {
        let Encoded {
            dtype: stored,
            quant,
            bytes,
        } = encode(&name, &shape, values, precision, policy);
        if quant.is_some() {
            self.report.quantized += 1;
        }
        let (shard, offset) = self.shards.add(&bytes)?;
        self.report.tensors += 1;
        self.report.params += values.len() as u64;
        self.report.bytes_before += before;
        self.report.bytes_after += bytes.len() as u64;
        self.tensors.push(TensorEntry {
            name,
            shape,
            dtype: stored,
            quant,
            shard,
            offset: offset as u64,
            length: bytes.len() as u64,
        });
        Ok(())
    }

    fn finish(self) -> Result<(ComponentEntry, ComponentReport)> {
        let shards = self.shards.finish()?;
        Ok((
            ComponentEntry {
                shards,
                tensors: self.tensors,
            },
            self.report,
        ))
    }
}

/// A pack at `out` of the pipeline `config` describes (a diffusers folder's configs and
/// tokenizer, e.g. `builtin::config("sd21")`) with random weights drawn from `seed`: the
/// full-size architectures for speed and memory measurements, written tensor by tensor
/// (no full-precision copy of the model is ever held). Norm scales are 1, biases 0, other
/// weights N(0, 0.02²), so activations stay finite through every layer.
pub fn convert_random(
    config: &dyn ModelFiles,
    precision: Precision,
    seed: u64,
    out: &Path,
) -> Result<Vec<ComponentReport>> {
    let (mut manifest, mut expected) = read_configs(config, precision)?;
    write_new_folder(out, |dir| {
        let mut reports = Vec::new();
        let components: Vec<Component> = expected.keys().copied().collect();
        for component in components {
            let mut writer = ComponentWriter::new(dir, component);
            let mut noise = crate::noise::Generator::new(seed ^ component as u64);
            let mut wanted = expected.remove(&component).unwrap_or_default();
            wanted.sort();
            for (name, shape) in wanted {
                let n = shape.iter().product::<usize>();
                let values = match random_kind(&name) {
                    Random::One => vec![1.0; n],
                    Random::Zero => vec![0.0; n],
                    Random::Normal => noise.normals(n).iter().map(|v| v * 0.02).collect(),
                };
                writer.add(
                    name,
                    shape,
                    &values,
                    4 * n as u64,
                    (precision, Policy::Pack),
                )?;
            }
            let (entry, report) = writer.finish()?;
            manifest.components.insert(component, entry);
            reports.push(report);
        }
        finish_manifest(&manifest, dir)?;
        Ok(reports)
    })
}

enum Random {
    One,
    Zero,
    Normal,
}

/// What a random model holds in tensor `name`: norms scale by 1, biases add 0.
fn random_kind(name: &str) -> Random {
    let layer = name.rsplit('.').nth(1).unwrap_or("");
    let norm = layer.contains("norm") || layer.starts_with("ln_") || layer.contains("layer_norm");
    match name.rsplit('.').next() {
        Some("bias") => Random::Zero,
        Some("weight") if norm => Random::One,
        _ => Random::Normal,
    }
}
