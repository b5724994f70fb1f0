//! Single-file checkpoints in the original latent-diffusion (CompVis / A1111) layout, as
//! most community SD 1.x/2.x models are shared: `model.diffusion_model.*` (UNet),
//! `first_stage_model.*` (VAE), `cond_stage_model.transformer.*` (CLIP, SD 1.x) or
//! `cond_stage_model.model.*` (OpenCLIP, SD 2.x). Each tensor is renamed to its diffusers
//! key, the mapping diffusers' `from_single_file` applies; no bytes are copied: OpenCLIP's
//! fused q/k/v projection splits into row ranges, and the VAE's 1×1-convolution attention
//! weights are seen as matrices. Other keys (EMA weights, schedules) are ignored.

mod controlnet;
mod text;
mod vae;

use std::collections::BTreeMap;

use super::Source;
use crate::component::Component;
use crate::error::{Error, Result};
use crate::family::Family;
use crate::weights::ldm::unet_name;
use crate::weights::safetensors::SafetensorsFile;
pub use controlnet::{SingleFileControlNet, controlnet};
use text::open_clip;
use vae::vae_name;

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const CLIP: &str = "cond_stage_model.transformer.";
const OPEN_CLIP: &str = "cond_stage_model.model.";
/// SDXL's (SGM layout): CLIP-L in transformers' layout, OpenCLIP bigG in its own.
const SDXL_CLIP: &str = "conditioner.embedders.0.transformer.";
const SDXL_OPEN_CLIP: &str = "conditioner.embedders.1.model.";
/// ControlNets in lllyasviel's layout.
const CONTROL: &str = "control_model.";

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
}
