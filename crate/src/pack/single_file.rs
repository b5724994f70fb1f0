//! Single-file checkpoints in the original latent-diffusion (CompVis / A1111) layout, as
//! most community SD 1.x/2.x models are shared: `model.diffusion_model.*` (UNet),
//! `first_stage_model.*` (VAE), `cond_stage_model.transformer.*` (CLIP, SD 1.x) or
//! `cond_stage_model.model.*` (OpenCLIP, SD 2.x). Each tensor is renamed to its diffusers
//! key, the mapping diffusers' `from_single_file` applies; no bytes are copied: OpenCLIP's
//! fused q/k/v projection splits into row ranges, and the VAE's 1×1-convolution attention
//! weights are seen as matrices. Other keys (EMA weights, schedules) are ignored.

use std::collections::BTreeMap;

use safetensors::SafeTensors;

use super::convert::Source;
use crate::error::{Error, Result};

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const CLIP: &str = "cond_stage_model.transformer.";
const OPEN_CLIP: &str = "cond_stage_model.model.";

/// What the renaming needs to know of the model (from its configs).
pub struct Layout {
    /// The UNet's `layers_per_block`.
    pub layers_per_block: usize,
    /// The VAE's number of up blocks (LDM numbers them in the opposite order).
    pub vae_up_blocks: usize,
    /// The text encoder's `num_hidden_layers` (SD 2.x files hold one more, unused).
    pub text_layers: usize,
}

/// The tensors of `st` (the file `file`) by component, with diffusers names.
pub fn components<'a>(
    st: &'a SafeTensors<'a>,
    file: &str,
    layout: &Layout,
) -> Result<BTreeMap<&'static str, Vec<Source<'a>>>> {
    let mut out: BTreeMap<&'static str, Vec<Source<'a>>> = BTreeMap::new();
    let unexpected = |key: &str| Error::UnexpectedTensor {
        file: file.into(),
        key: key.into(),
    };
    for (key, view) in st.iter() {
        let source = |name: String| Source {
            name,
            shape: view.shape().to_vec(),
            dtype: view.dtype(),
            data: view.data(),
        };
        if let Some(rest) = key.strip_prefix(UNET) {
            let name = unet_name(rest, layout.layers_per_block).ok_or_else(|| unexpected(key))?;
            out.entry("unet").or_default().push(source(name));
        } else if let Some(rest) = key.strip_prefix(VAE) {
            let name = vae_name(rest, layout.vae_up_blocks).ok_or_else(|| unexpected(key))?;
            let mut s = source(name);
            if s.name.contains(".attentions.") && s.shape.len() == 4 {
                s.shape.truncate(2); // [c, c, 1, 1] -> [c, c]
            }
            out.entry("vae").or_default().push(s);
        } else if let Some(rest) = key.strip_prefix(CLIP) {
            out.entry("text_encoder")
                .or_default()
                .push(source(rest.into()));
        } else if let Some(rest) = key.strip_prefix(OPEN_CLIP) {
            for s in open_clip(rest, source(String::new()), layout.text_layers)
                .ok_or_else(|| unexpected(key))?
            {
                out.entry("text_encoder").or_default().push(s);
            }
        }
    }
    for component in ["text_encoder", "unet", "vae"] {
        if !out.contains_key(component) {
            return Err(Error::io(
                file,
                format!(
                    "has no {component} weights: not a Stable Diffusion 1.x/2.x single-file \
                     checkpoint (expected keys under {UNET}, {VAE} and {CLIP} or {OPEN_CLIP})"
                ),
            ));
        }
    }
    Ok(out)
}

/// `a.b.rest` → (a, b, rest) with `b` a number.
fn split_index(s: &str) -> Option<(usize, &str)> {
    let (i, rest) = s.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

fn resnet(rest: &str) -> String {
    [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("emb_layers.1.", "time_emb_proj."),
        ("skip_connection.", "conv_shortcut."),
    ]
    .iter()
    .find_map(|(ldm, diffusers)| rest.strip_prefix(ldm).map(|r| format!("{diffusers}{r}")))
    .unwrap_or_else(|| rest.to_string())
}

fn unet_name(key: &str, layers_per_block: usize) -> Option<String> {
    let per = layers_per_block + 1;
    for (ldm, diffusers) in [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ] {
        if let Some(rest) = key.strip_prefix(ldm) {
            return Some(format!("{diffusers}{rest}"));
        }
    }
    if let Some(rest) = key.strip_prefix("input_blocks.") {
        let (i, rest) = split_index(rest)?;
        let (slot, rest) = split_index(rest)?;
        let (b, j) = ((i.checked_sub(1)?) / per, (i - 1) % per);
        return Some(match (slot, rest.strip_prefix("op.")) {
            (0, Some(op)) => format!("down_blocks.{b}.downsamplers.0.conv.{op}"),
            (0, None) => format!("down_blocks.{b}.resnets.{j}.{}", resnet(rest)),
            (1, None) => format!("down_blocks.{b}.attentions.{j}.{rest}"),
            _ => return None,
        });
    }
    if let Some(rest) = key.strip_prefix("middle_block.") {
        let (slot, rest) = split_index(rest)?;
        return Some(match slot {
            0 => format!("mid_block.resnets.0.{}", resnet(rest)),
            1 => format!("mid_block.attentions.0.{rest}"),
            2 => format!("mid_block.resnets.1.{}", resnet(rest)),
            _ => return None,
        });
    }
    if let Some(rest) = key.strip_prefix("output_blocks.") {
        let (i, rest) = split_index(rest)?;
        let (slot, rest) = split_index(rest)?;
        let (b, j) = (i / per, i % per);
        return Some(match (slot, rest.strip_prefix("conv.")) {
            (0, _) => format!("up_blocks.{b}.resnets.{j}.{}", resnet(rest)),
            (1 | 2, Some(conv)) => format!("up_blocks.{b}.upsamplers.0.conv.{conv}"),
            (1, None) => format!("up_blocks.{b}.attentions.{j}.{rest}"),
            _ => return None,
        });
    }
    None
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
/// name is set here). `None` for a key that is not part of it; an empty list for one the
/// text encoder does not use.
fn open_clip<'a>(key: &str, source: Source<'a>, layers: usize) -> Option<Vec<Source<'a>>> {
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
        if rows % 3 != 0 {
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

/// The built-in config a single file most likely needs, from its header alone: `sd21` for
/// an OpenCLIP text encoder, else `sd15`.
pub fn detect(path: &std::path::Path) -> Result<&'static str> {
    use std::io::Read;
    let file = path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(&file, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| Error::io(&file, "is not a safetensors file (too short)"))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(Error::io(
            &file,
            "is not a safetensors file (bad header length)",
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|_| Error::io(&file, "is not a safetensors file (truncated header)"))?;
    let header = String::from_utf8_lossy(&header);
    Ok(if header.contains(OPEN_CLIP) {
        "sd21"
    } else {
        "sd15"
    })
}
