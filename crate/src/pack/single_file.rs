//! Single-file checkpoints in the original latent-diffusion (CompVis / A1111) layout, as
//! most community SD 1.x/2.x models are shared: `model.diffusion_model.*` (UNet),
//! `first_stage_model.*` (VAE), `cond_stage_model.transformer.*` (CLIP, SD 1.x) or
//! `cond_stage_model.model.*` (OpenCLIP, SD 2.x). Each tensor is renamed to its diffusers
//! key, the mapping diffusers' `from_single_file` applies; no bytes are copied: OpenCLIP's
//! fused q/k/v projection splits into row ranges, and the VAE's 1×1-convolution attention
//! weights are seen as matrices. Other keys (EMA weights, schedules) are ignored.

use std::collections::BTreeMap;

use super::convert::Source;
use crate::component::Component;
use crate::error::{Error, Result};
use crate::family::Family;
use crate::weights::ldm::{split_index, unet_name};
use crate::weights::safetensors::SafetensorsFile;

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const CLIP: &str = "cond_stage_model.transformer.";
const OPEN_CLIP: &str = "cond_stage_model.model.";
/// SDXL's (SGM layout): CLIP-L in transformers' layout, OpenCLIP bigG in its own.
const SDXL_CLIP: &str = "conditioner.embedders.0.transformer.";
const SDXL_OPEN_CLIP: &str = "conditioner.embedders.1.model.";

/// What the renaming needs to know of the model (from its configs).
pub struct Layout {
    /// The UNet's `layers_per_block`.
    pub layers_per_block: usize,
    /// The VAE's number of up blocks (LDM numbers them in the opposite order).
    pub vae_up_blocks: usize,
    /// The text encoder's `num_hidden_layers` (SD 2.x files hold one more, unused).
    pub text_layers: usize,
    /// SDXL's second text encoder's `num_hidden_layers`.
    pub text_2_layers: usize,
    /// The family the configs describe, whose components the file must hold.
    pub family: Family,
}

/// The tensors of `st` (the file `file`) by component, with diffusers names.
pub fn components<'a>(
    st: &SafetensorsFile<'a>,
    file: &str,
    layout: &Layout,
) -> Result<BTreeMap<Component, Vec<Source<'a>>>> {
    let mut out: BTreeMap<Component, Vec<Source<'a>>> = BTreeMap::new();
    let unexpected = |key: &str| Error::UnexpectedTensor {
        file: file.into(),
        key: key.into(),
    };
    let misfit = |key: &str, shape: &[usize]| {
        Error::io(
            file,
            format!(
                "`{key}` {shape:?} is not an OpenCLIP text tower tensor (a fused \
                 in_proj has 3 × width rows, a text_projection is [width, projection])"
            ),
        )
    };
    for (info, data) in st.tensors() {
        let key = info.name.as_str();
        let source = |name: String| Source {
            name,
            ..Source::from((info, data))
        };
        if let Some(rest) = key.strip_prefix(UNET) {
            let name = unet_name(rest, layout.layers_per_block).ok_or_else(|| unexpected(key))?;
            out.entry(Component::Unet).or_default().push(source(name));
        } else if let Some(rest) = key.strip_prefix(VAE) {
            let name = vae_name(rest, layout.vae_up_blocks).ok_or_else(|| unexpected(key))?;
            let mut s = source(name);
            // LDM's VAE attention projections are 1×1 convolutions, diffusers' are
            // linear layers; any other shape is left for the shape check to refuse.
            if s.name.contains(".attentions.") && s.shape.len() == 4 && s.shape[2..] == [1, 1] {
                s.shape.truncate(2); // [c, c, 1, 1] -> [c, c]
            }
            out.entry(Component::Vae).or_default().push(s);
        } else if let Some(rest) = key.strip_prefix(CLIP) {
            out.entry(Component::TextEncoder)
                .or_default()
                .push(source(rest.into()));
        } else if let Some(rest) = key.strip_prefix(SDXL_CLIP) {
            out.entry(Component::TextEncoder)
                .or_default()
                .push(source(rest.into()));
        } else if let Some((rest, component, layers)) = key
            .strip_prefix(OPEN_CLIP)
            .map(|r| (r, Component::TextEncoder, layout.text_layers))
            .or_else(|| {
                let rest = key.strip_prefix(SDXL_OPEN_CLIP)?;
                Some((rest, Component::TextEncoder2, layout.text_2_layers))
            })
        {
            // SDXL's pooled embedding needs OpenCLIP's projection; SD 2.x does not use it.
            let projected = component == Component::TextEncoder2;
            let sources = open_clip(rest, source(String::new()), layers, projected)
                .ok_or_else(|| misfit(key, &info.shape))?;
            out.entry(component).or_default().extend(sources);
        }
    }
    if let Some(extra) = out.keys().find(|c| !layout.family.components().contains(c)) {
        return Err(Error::io(
            file,
            format!(
                "holds {extra} weights, which an {} model has none of: the checkpoint is of \
                 another family than its configs (an SDXL file needs --config sdxl or an SDXL \
                 folder)",
                layout.family
            ),
        ));
    }
    for &component in layout.family.components() {
        if !out.contains_key(&component) {
            let expected = match layout.family {
                Family::Sd => format!("{UNET}, {VAE} and {CLIP} or {OPEN_CLIP}"),
                Family::Sdxl => format!("{UNET}, {VAE}, {SDXL_CLIP} and {SDXL_OPEN_CLIP}"),
                Family::Sd3 => unreachable!("SD3 single files are refused by layout"),
            };
            return Err(Error::io(
                file,
                format!(
                    "has no {component} weights: not a single-file checkpoint of the {} \
                     family its configs describe (expected keys under {expected})",
                    layout.family
                ),
            ));
        }
    }
    Ok(out)
}

fn vae_name(key: &str, up_blocks: usize) -> Option<String> {
    if key.starts_with("quant_conv.") || key.starts_with("post_quant_conv.") {
        return Some(key.into());
    }
    let (coder, rest) = key.split_once('.')?;
    if coder != "encoder" && coder != "decoder" {
        return None;
    }
    let shortcut = |r: &str| r.replace("nin_shortcut.", "conv_shortcut.");
    let name = if let Some(rest) = rest.strip_prefix("down.") {
        let (i, rest) = split_index(rest)?;
        match rest.strip_prefix("downsample.") {
            Some(conv) => format!("down_blocks.{i}.downsamplers.0.{conv}"),
            None => {
                let (j, rest) = split_index(rest.strip_prefix("block.")?)?;
                format!("down_blocks.{i}.resnets.{j}.{}", shortcut(rest))
            }
        }
    } else if let Some(rest) = rest.strip_prefix("up.") {
        let (i, rest) = split_index(rest)?;
        let b = up_blocks.checked_sub(i + 1)?;
        match rest.strip_prefix("upsample.") {
            Some(conv) => format!("up_blocks.{b}.upsamplers.0.{conv}"),
            None => {
                let (j, rest) = split_index(rest.strip_prefix("block.")?)?;
                format!("up_blocks.{b}.resnets.{j}.{}", shortcut(rest))
            }
        }
    } else if let Some(rest) = rest.strip_prefix("mid.block_") {
        let (k, rest) = split_index(rest)?;
        format!("mid_block.resnets.{}.{}", k.checked_sub(1)?, shortcut(rest))
    } else if let Some(rest) = rest.strip_prefix("mid.attn_1.") {
        let (layer, param) = rest.split_once('.')?;
        let layer = match layer {
            "norm" => "group_norm",
            "q" => "to_q",
            "k" => "to_k",
            "v" => "to_v",
            "proj_out" => "to_out.0",
            _ => return None,
        };
        format!("mid_block.attentions.0.{layer}.{param}")
    } else if let Some(rest) = rest.strip_prefix("norm_out.") {
        format!("conv_norm_out.{rest}")
    } else if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        rest.to_string()
    } else {
        return None;
    };
    Some(format!("{coder}.{name}"))
}

/// OpenCLIP's text tower as transformers' `CLIPTextModel` (`source` carries the tensor; its
/// name is set here), with its `text_projection` when `projected` (SDXL's
/// `CLIPTextModelWithProjection`). `None` for a key that is not part of it or a tensor of
/// the wrong rank; an empty list for one the text encoder does not use.
fn open_clip<'a>(
    key: &str,
    source: Source<'a>,
    layers: usize,
    projected: bool,
) -> Option<Vec<Source<'a>>> {
    let named = |name: &str| {
        vec![Source {
            name: format!("text_model.{name}"),
            ..source.clone()
        }]
    };
    match key {
        "token_embedding.weight" => return Some(named("embeddings.token_embedding.weight")),
        "positional_embedding" => return Some(named("embeddings.position_embedding.weight")),
        "ln_final.weight" => return Some(named("final_layer_norm.weight")),
        "ln_final.bias" => return Some(named("final_layer_norm.bias")),
        "text_projection" if projected => {
            // Stored [width, projection] and applied as x @ P: transformers' weight is Pᵀ.
            let [width, projection] = source.shape[..] else {
                return None;
            };
            return Some(vec![Source {
                name: "text_projection.weight".into(),
                shape: vec![projection, width],
                transposed: true,
                ..source
            }]);
        }
        "text_projection" | "logit_scale" => return Some(Vec::new()),
        _ => {}
    }
    let (i, rest) = split_index(key.strip_prefix("transformer.resblocks.")?)?;
    if i >= layers {
        // SD 2.x uses the penultimate layer: the last block is never run.
        return Some(Vec::new());
    }
    let layer = format!("encoder.layers.{i}");
    if let Some(param) = rest.strip_prefix("attn.in_proj_") {
        // q, k and v stacked along the rows.
        let rows = *source.shape.first()?;
        if rows % 3 != 0 || source.shape.len() > 2 {
            return None;
        }
        let third = source.data.len() / 3;
        let mut shape = source.shape.clone();
        shape[0] = rows / 3;
        return Some(
            ["q", "k", "v"]
                .iter()
                .enumerate()
                .map(|(n, proj)| Source {
                    name: format!("text_model.{layer}.self_attn.{proj}_proj.{param}"),
                    shape: shape.clone(),
                    dtype: source.dtype,
                    data: &source.data[n * third..(n + 1) * third],
                    transposed: false,
                })
                .collect(),
        );
    }
    let name = [
        ("attn.out_proj.", "self_attn.out_proj."),
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ]
    .iter()
    .find_map(|(ldm, diffusers)| rest.strip_prefix(ldm).map(|p| format!("{diffusers}{p}")))?;
    Some(named(&format!("{layer}.{name}")))
}

/// What a single file's header says it is.
#[cfg(not(target_family = "wasm"))]
pub struct Detected {
    /// The built-in config it most likely needs: `sdxl` for SDXL's two text encoders,
    /// `sd21` for an OpenCLIP text encoder (or a ControlNet for 1024-wide text embeddings),
    /// else `sd15`.
    pub config: &'static str,
    /// Whether it is a ControlNet in the original layout.
    pub controlnet: bool,
}

/// Reads the header of the single file at `path` (only the header) and says what it is.
#[cfg(not(target_family = "wasm"))]
pub fn detect(path: &std::path::Path) -> Result<Detected> {
    let header = crate::weights::safetensors::read_header(path)?;
    let open_clip = header.tensors.iter().any(|t| t.name.starts_with(OPEN_CLIP));
    // A ControlNet has no text encoder: SD 2.x's cross-attention reads 1024-wide embeddings.
    let wide_context = header.tensors.iter().any(|t| {
        t.name.starts_with(CONTROL)
            && t.name.ends_with("attn2.to_k.weight")
            && t.shape.get(1) == Some(&1024)
    });
    let sdxl = header
        .tensors
        .iter()
        .any(|t| t.name.starts_with(SDXL_OPEN_CLIP));
    Ok(Detected {
        config: if sdxl {
            "sdxl"
        } else if open_clip || wide_context {
            "sd21"
        } else {
            "sd15"
        },
        controlnet: header.tensors.iter().any(|t| t.name.starts_with(CONTROL)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unet_keys_map_as_diffusers_maps_sd15() {
        for (ldm, diffusers) in [
            ("time_embed.0.weight", "time_embedding.linear_1.weight"),
            ("input_blocks.0.0.bias", "conv_in.bias"),
            (
                "input_blocks.1.0.in_layers.0.weight",
                "down_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "input_blocks.1.0.emb_layers.1.weight",
                "down_blocks.0.resnets.0.time_emb_proj.weight",
            ),
            (
                "input_blocks.2.1.proj_in.weight",
                "down_blocks.0.attentions.1.proj_in.weight",
            ),
            (
                "input_blocks.3.0.op.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "input_blocks.4.0.skip_connection.bias",
                "down_blocks.1.resnets.0.conv_shortcut.bias",
            ),
            (
                "middle_block.1.transformer_blocks.0.attn1.to_q.weight",
                "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight",
            ),
            (
                "middle_block.2.out_layers.3.weight",
                "mid_block.resnets.1.conv2.weight",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.3.1.norm.weight",
                "up_blocks.1.attentions.0.norm.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.11.0.out_layers.0.bias",
                "up_blocks.3.resnets.2.norm2.bias",
            ),
            ("out.2.weight", "conv_out.weight"),
        ] {
            assert_eq!(unet_name(ldm, 2).as_deref(), Some(diffusers), "{ldm}");
        }
        for unknown in [
            "input_blocks.x.0.weight",
            "middle_block.3.weight",
            "label_emb.0.weight",
        ] {
            assert_eq!(unet_name(unknown, 2), None, "{unknown}");
        }
    }

    #[test]
    fn vae_keys_map_with_the_up_blocks_reversed() {
        for (ldm, diffusers) in [
            (
                "encoder.down.0.block.1.conv1.weight",
                "encoder.down_blocks.0.resnets.1.conv1.weight",
            ),
            (
                "encoder.down.0.downsample.conv.weight",
                "encoder.down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "decoder.up.3.upsample.conv.weight",
                "decoder.up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "decoder.up.1.block.0.nin_shortcut.bias",
                "decoder.up_blocks.2.resnets.0.conv_shortcut.bias",
            ),
            (
                "encoder.mid.attn_1.q.weight",
                "encoder.mid_block.attentions.0.to_q.weight",
            ),
            (
                "decoder.mid.attn_1.proj_out.bias",
                "decoder.mid_block.attentions.0.to_out.0.bias",
            ),
            (
                "encoder.mid.block_2.norm1.bias",
                "encoder.mid_block.resnets.1.norm1.bias",
            ),
            ("decoder.norm_out.weight", "decoder.conv_norm_out.weight"),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ] {
            assert_eq!(vae_name(ldm, 4).as_deref(), Some(diffusers), "{ldm}");
        }
        assert_eq!(vae_name("decoder.up.4.block.0.conv1.weight", 4), None);
        assert_eq!(vae_name("model_ema.decay", 4), None);
    }

    #[test]
    fn open_clip_splits_the_fused_projection_into_row_ranges() {
        let data: Vec<u8> = (0..6 * 2 * 2).map(|i| i as u8).collect();
        let source = Source {
            name: String::new(),
            shape: vec![6, 2],
            dtype: safetensors::Dtype::F16,
            data: &data,
            transposed: false,
        };
        let split = open_clip(
            "transformer.resblocks.0.attn.in_proj_weight",
            source.clone(),
            23,
            false,
        )
        .unwrap();
        let names: Vec<&str> = split.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "text_model.encoder.layers.0.self_attn.q_proj.weight",
                "text_model.encoder.layers.0.self_attn.k_proj.weight",
                "text_model.encoder.layers.0.self_attn.v_proj.weight",
            ]
        );
        assert_eq!(split[1].shape, [2, 2]);
        assert_eq!(split[1].data, &data[8..16]);
        // SD 2.x's last block is never run: dropped, not an error.
        assert!(
            open_clip(
                "transformer.resblocks.23.ln_1.weight",
                source.clone(),
                23,
                false
            )
            .unwrap()
            .is_empty()
        );
        assert!(open_clip("transformer.resblocks.0.bogus", source, 23, false).is_none());
    }
}

/// A ControlNet in lllyasviel's original layout (`control_model.*`, as ControlNet-v1-1's
/// files): the UNet-like keys named as the UNet's (see [`unet_name`]), `zero_convs.N.0`
/// → `controlnet_down_blocks.N`, `middle_block_out.0` → `controlnet_mid_block`, and the
/// hint block's convolutions (a Sequential with SiLUs between) → the conditioning
/// embedding's `conv_in`, `blocks.*` and `conv_out` in order. Such files carry no config:
/// it is the UNet's own, with the conditioning widths read from the hint block's shapes.
#[cfg(not(target_family = "wasm"))]
#[derive(Clone)]
pub struct SingleFileControlNet {
    path: std::path::PathBuf,
    config: Vec<u8>,
    layers_per_block: usize,
    /// The hint block's convolution indices, in order.
    hint: Vec<usize>,
}

const CONTROL: &str = "control_model.";

#[cfg(not(target_family = "wasm"))]
pub fn controlnet(
    path: &std::path::Path,
    unet: &crate::models::unet::UNetConfig,
) -> Result<SingleFileControlNet> {
    use crate::models::controlnet::ControlNetConfig;
    let file = path.display().to_string();
    let header = crate::weights::safetensors::read_header(path)?;
    let mut hint: Vec<(usize, Vec<usize>)> = header
        .tensors
        .iter()
        .filter_map(|t| {
            let rest = t
                .name
                .strip_prefix(CONTROL)?
                .strip_prefix("input_hint_block.")?;
            let (i, param) = split_index(rest)?;
            (param == "weight").then(|| (i, t.shape.clone()))
        })
        .collect();
    hint.sort();
    let out_channels = |i: usize| hint.get(i).and_then(|(_, s)| s.first().copied());
    // conv_in, then pairs (a convolution keeping the width, a strided one changing it),
    // then conv_out.
    let pairs = hint.len().saturating_sub(2);
    if hint.len() < 2 || !pairs.is_multiple_of(2) || hint.iter().any(|(_, s)| s.len() != 4) {
        return Err(Error::io(
            &file,
            format!(
                "is not a ControlNet in the original layout (expected {CONTROL}input_hint_block \
                 convolutions, found {} of them)",
                hint.len()
            ),
        ));
    }
    let mut widths = vec![out_channels(0).expect("checked")];
    widths.extend((0..pairs / 2).filter_map(|k| out_channels(2 + 2 * k)));
    let n = unet.block_out_channels.len();
    let config = ControlNetConfig {
        unet: unet.clone(),
        conditioning_channels: hint[0].1[1],
        conditioning_embedding_out_channels: widths,
        ..ControlNetConfig::default()
    };
    let layers = unet.layers_per_block.expand(n, &file, "layers_per_block")?;
    Ok(SingleFileControlNet {
        path: path.to_path_buf(),
        config: serde_json::to_vec(&config).expect("config serializes"),
        layers_per_block: layers.first().copied().unwrap_or(2),
        hint: hint.into_iter().map(|(i, _)| i).collect(),
    })
}

#[cfg(not(target_family = "wasm"))]
impl SingleFileControlNet {
    /// The diffusers key of a key of the file.
    pub fn rename(&self, key: &str) -> Option<String> {
        let rest = key.strip_prefix(CONTROL)?;
        if let Some(r) = rest.strip_prefix("input_hint_block.") {
            let (i, param) = split_index(r)?;
            let position = self.hint.iter().position(|&h| h == i)?;
            let name = match position {
                0 => "conv_in".to_string(),
                p if p + 1 == self.hint.len() => "conv_out".to_string(),
                p => format!("blocks.{}", p - 1),
            };
            return Some(format!("controlnet_cond_embedding.{name}.{param}"));
        }
        if let Some(r) = rest.strip_prefix("zero_convs.") {
            let (i, r) = split_index(r)?;
            return Some(format!(
                "controlnet_down_blocks.{i}.{}",
                r.strip_prefix("0.")?
            ));
        }
        if let Some(r) = rest.strip_prefix("middle_block_out.0.") {
            return Some(format!("controlnet_mid_block.{r}"));
        }
        unet_name(rest, self.layers_per_block)
    }
}

#[cfg(not(target_family = "wasm"))]
impl crate::files::ModelFiles for SingleFileControlNet {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        use crate::component::Component;
        if path == Component::ControlNet.config() {
            return Ok(Some(self.config.clone()));
        }
        if path == Component::ControlNet.weight_files(false)[0] {
            return crate::files::read_bounded(&self.path, crate::files::MAX_FILE_BYTES).map(Some);
        }
        Ok(None)
    }

    fn display(&self, path: &str) -> String {
        match path.ends_with(".safetensors") {
            true => self.path.display().to_string(),
            false => format!(
                "{} ({path} derived from the model's UNet)",
                self.path.display()
            ),
        }
    }

    fn weights(
        &self,
        component: crate::component::Component,
        _device: &burn::prelude::Device,
    ) -> Result<crate::files::WeightFiles> {
        Ok(crate::files::WeightFiles {
            choices: vec![vec![component.weight_files(false)[0].clone()]],
            reader: Box::new(Renamed {
                inner: crate::weights::SafetensorsReader::default(),
                file: self.path.display().to_string(),
                controlnet: self.clone(),
            }),
        })
    }
}

/// Reads the file and renames its tensors as diffusers names them.
#[cfg(not(target_family = "wasm"))]
struct Renamed {
    inner: crate::weights::SafetensorsReader,
    file: String,
    controlnet: SingleFileControlNet,
}

#[cfg(not(target_family = "wasm"))]
impl Renamed {
    fn rename(&self, tensors: crate::weights::Tensors) -> Result<crate::weights::Tensors> {
        tensors
            .into_iter()
            .map(|(key, data)| match self.controlnet.rename(&key) {
                Some(name) => Ok((name, data)),
                None => Err(Error::UnexpectedTensor {
                    file: self.file.clone(),
                    key,
                }),
            })
            .collect()
    }
}

#[cfg(not(target_family = "wasm"))]
impl crate::weights::TensorReader for Renamed {
    fn begin(&mut self, file: &str) -> Result<()> {
        self.inner.begin(file)
    }

    fn push(&mut self, piece: &[u8]) -> Result<crate::weights::Tensors> {
        let tensors = self.inner.push(piece)?;
        self.rename(tensors)
    }

    fn end(&mut self) -> Result<crate::weights::Tensors> {
        let tensors = self.inner.end()?;
        self.rename(tensors)
    }
}
