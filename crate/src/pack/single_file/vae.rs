//! The VAE's keys: LDM's `first_stage_model` names as diffusers' (its up blocks numbered in
//! the opposite order).

use crate::weights::ldm::split_index;

pub(super) fn vae_name(key: &str, up_blocks: usize) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
