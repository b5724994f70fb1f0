//! LoRA: low-rank weight deltas that customise the UNet and the text encoder.
//!
//! For every adapted layer with weight `W` (`[out, in]`, a convolution's `in` being
//! `c_in·kh·kw`): `W' = W + Σ scaleᵢ · (alphaᵢ / rankᵢ) · upᵢ · downᵢ`, as diffusers.
//!
//! A file is read once ([`LoraFile`]), matched against a pipeline's layers and uploaded
//! ([`Lora`]); each generation then attaches the LoRAs it asks for to a cheap clone of the
//! networks (tensors are shared, not copied) as burn reparameterizations: a layer's
//! `weight.val()` returns `W + up·down`, composed for the length of its call. So a
//! quantized weight is never re-quantized (the sum dequantizes it, as the layer would
//! anyway), nothing weight-sized stays resident, and changing LoRAs or scales between
//! generations reloads nothing. Several LoRAs on one layer are one product: their `up`s
//! side by side and their scaled `down`s stacked.

pub mod file;

pub use file::{Format, Layer, LoraFile, Stored, Target};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use burn::module::{LoraAdapter, Module, Param, Reparameterizer};
use burn::prelude::*;

use crate::component::Component;
use crate::error::{Error, Result};
use crate::weights::ldm::kohya_sgm_to_diffusers;
use crate::weights::{checkpoint_name, field_path, param_paths};

/// One adapted weight: its checkpoint key, `up` `[out, rank]` and `down` `[rank, in]`
/// already multiplied by alpha / rank.
struct Delta {
    key: String,
    up: Tensor<2>,
    down: Tensor<2>,
}

/// A LoRA matched to a model and on its device, ready to attach at any scale.
pub struct Lora {
    /// How it is named (the file name without extension, as A1111 names LoRAs).
    pub name: String,
    /// The first 12 hex digits of the file's sha256 (A1111's `Lora hashes`).
    pub hash: String,
    deltas: BTreeMap<Component, Vec<Delta>>,
}

impl std::fmt::Debug for Lora {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let layers: usize = self.deltas.values().map(Vec::len).sum();
        write!(f, "Lora({:?}, {layers} layers)", self.name)
    }
}

/// The weight matrices of each network a LoRA may adapt: checkpoint key → shape (see
/// `weights::expected_tensors`).
pub type Targets = BTreeMap<Component, Vec<(String, Vec<usize>)>>;

impl Lora {
    /// Matches `file` to the networks described by `targets` and uploads its factors.
    /// Every layer must exist with a fitting shape: a LoRA for another model is refused
    /// naming the key.
    pub fn new(
        file: &LoraFile,
        name: &str,
        hash: &str,
        targets: &Targets,
        device: &Device,
    ) -> Result<Self> {
        let mut deltas: BTreeMap<Component, Vec<Delta>> = BTreeMap::new();
        let lookups: BTreeMap<Component, Lookup> = targets
            .iter()
            .map(|(c, t)| (*c, Lookup::new(*c, t)))
            .collect();
        for ((component, target), layer) in &file.layers {
            let Some(lookup) = lookups.get(component) else {
                return Err(Error::io(
                    &file.file,
                    format!(
                        "`{}` adapts the {component}, which this model has none of ({})",
                        layer.down.key,
                        families(file, targets)
                    ),
                ));
            };
            let (key, shape) = lookup.find(target).ok_or_else(|| {
                Error::io(
                    &file.file,
                    format!(
                        "`{}` targets no layer of this model's {component} ({})",
                        layer.down.key,
                        families(file, targets)
                    ),
                )
            })?;
            let rank = layer.rank();
            let down_cols: usize = layer.down.shape[1..].iter().product();
            let fits =
                matches!(shape, [out, cols] if layer.up.shape[0] == *out && down_cols == *cols);
            if !fits {
                return Err(Error::io(
                    &file.file,
                    format!(
                        "`{}` {:?} and `{}` {:?} do not fit `{key}` of this model, {shape:?} \
                         ({})",
                        layer.down.key,
                        layer.down.shape,
                        layer.up.key,
                        layer.up.shape,
                        families(file, targets)
                    ),
                ));
            }
            let (out, cols) = (shape[0], shape[1]);
            let scale = layer.scale();
            let down: Vec<f32> = layer.down.values.iter().map(|v| v * scale).collect();
            deltas.entry(*component).or_default().push(Delta {
                key: key.to_string(),
                up: Tensor::from_data(
                    TensorData::new(layer.up.values.clone(), [out, rank]),
                    device,
                ),
                down: Tensor::from_data(TensorData::new(down, [rank, cols]), device),
            });
        }
        Ok(Self {
            name: name.into(),
            hash: hash.into(),
            deltas,
        })
    }

    /// The layers this LoRA adapts in `component`.
    pub fn layers(&self, component: Component) -> usize {
        self.deltas.get(&component).map_or(0, Vec::len)
    }
}

/// The model's family and what the file looks like, for a LoRA that does not fit: SDXL
/// models and LoRAs have a second text encoder.
fn families(file: &LoraFile, targets: &Targets) -> String {
    let two_encoders = |yes: bool| if yes { "SDXL" } else { "SD 1.x/2.x" };
    let model = two_encoders(targets.contains_key(&Component::TextEncoder2));
    let adapts_te2 = file
        .layers
        .keys()
        .any(|(c, _)| *c == Component::TextEncoder2);
    let adapts_te = file
        .layers
        .keys()
        .any(|(c, _)| *c == Component::TextEncoder);
    match (adapts_te2, adapts_te) {
        (true, _) => format!("an SDXL LoRA, which adapts text_encoder_2; the model is {model}"),
        // Without text encoder layers a file does not say its family.
        (false, false) => format!("a LoRA for another model? the model is {model}"),
        (false, true) => format!("a LoRA for another model family? the model is {model}"),
    }
}

/// Finds a file's targets among a network's weight matrices: module paths as they are,
/// Kohya's underscored names through a table of every weight's underscored path (exact,
/// so names that contain underscores themselves, `to_out_0`, `down_blocks`, map back).
struct Lookup<'a> {
    shapes: HashMap<&'a str, &'a [usize]>,
    underscored: HashMap<String, &'a str>,
    /// The UNet's layers per block, to read SGM names (`None` for other networks).
    layers_per_block: Option<usize>,
}

impl<'a> Lookup<'a> {
    fn new(component: Component, targets: &'a [(String, Vec<usize>)]) -> Self {
        let mut underscored = HashMap::new();
        for (key, _) in targets {
            let Some(module) = key.strip_suffix(".weight") else {
                continue;
            };
            let name = module.replace('.', "_");
            if component.is_text_encoder() {
                // transformers' `text_model.` prefix, which Kohya names keep.
                underscored.insert(format!("text_model_{name}"), key.as_str());
            }
            underscored.insert(name, key.as_str());
        }
        // Kohya's SDXL files name UNet layers in the original SGM layout, numbered by the
        // layers per block (the resnets of the first down block).
        let layers_per_block = (component == Component::Unet).then(|| {
            let resnets = targets.iter().filter_map(|(k, _)| {
                let rest = k.strip_prefix("down_blocks.0.resnets.")?;
                rest.split_once('.').map(|(i, _)| i)
            });
            resnets.collect::<std::collections::BTreeSet<_>>().len()
        });
        Self {
            shapes: targets
                .iter()
                .map(|(k, s)| (k.as_str(), s.as_slice()))
                .collect(),
            underscored,
            layers_per_block,
        }
    }

    fn find(&self, target: &Target) -> Option<(&'a str, &'a [usize])> {
        let key = match target {
            Target::Path(module) => checkpoint_name(&field_path(&format!("{module}.weight"))),
            Target::Underscored(name) => match self.underscored.get(name.as_str()) {
                Some(key) => key.to_string(),
                None => {
                    let name = kohya_sgm_to_diffusers(name, self.layers_per_block?)?;
                    self.underscored.get(name.as_str())?.to_string()
                }
            },
        };
        self.shapes
            .get_key_value(key.as_str())
            .map(|(k, s)| (*k, *s))
    }
}

/// `module` (the network `component`) with `loras` attached at their scales; LoRAs at
/// scale 0 are left out. A cheap clone: the weights are shared.
pub fn apply<M: Module>(module: &M, component: Component, loras: &[(Arc<Lora>, f32)]) -> M {
    let mut factors: HashMap<&str, (Vec<Tensor<2>>, Vec<Tensor<2>>)> = HashMap::new();
    for (lora, scale) in loras.iter().filter(|(_, s)| *s != 0.0) {
        for delta in lora.deltas.get(&component).into_iter().flatten() {
            let (ups, downs) = factors.entry(delta.key.as_str()).or_default();
            ups.push(delta.up.clone());
            downs.push(delta.down.clone() * *scale);
        }
    }
    if factors.is_empty() {
        return module.clone();
    }
    let keys: HashMap<String, String> = param_paths(module)
        .into_iter()
        .map(|(raw, key, _)| (raw, key))
        .collect();
    let adapters = factors
        .into_iter()
        .map(|(key, (ups, downs))| {
            let adapter = LoraAdapter {
                a: Param::from_tensor(Tensor::cat(ups, 1)),
                b: Param::from_tensor(Tensor::cat(downs, 0)),
                scale: 1.0,
            };
            (key.to_string(), adapter)
        })
        .collect();
    module
        .clone()
        .apply_reparameterization(Attach { keys, adapters })
}

/// Attaches each adapter to the weight whose module path (`keys`: burn's path → checkpoint
/// key) it belongs to.
struct Attach {
    keys: HashMap<String, String>,
    adapters: HashMap<String, LoraAdapter>,
}

impl Reparameterizer for Attach {
    type Reparam = LoraAdapter;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<LoraAdapter>) {
        let adapter = self
            .keys
            .get(path)
            .and_then(|key| self.adapters.remove(key));
        (param, adapter)
    }
}
