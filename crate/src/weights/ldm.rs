//! The original latent-diffusion (CompVis / SGM) UNet layout, which single-file
//! checkpoints and Kohya's SDXL LoRA files use: `input_blocks.N.slot`, `middle_block.slot`,
//! `output_blocks.N.slot`, resnets as `in_layers`/`out_layers`/`emb_layers`. Only the
//! layers per block are needed to number the blocks: a level's attention (when it has one)
//! is slot 1 of its layers, and a level's down/upsampler a slot of its own.

/// `a.b.rest` → (a, b, rest) with `b` a number.
pub fn split_index(s: &str) -> Option<(usize, &str)> {
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

/// The diffusers name of the LDM UNet key `key` (after `model.diffusion_model.`), for a
/// UNet with `layers_per_block`; `None` for a key that is not the UNet's.
pub fn unet_name(key: &str, layers_per_block: usize) -> Option<String> {
    let per = layers_per_block + 1;
    for (ldm, diffusers) in [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
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

/// Kohya's underscored SGM name of a UNet layer (`input_blocks_4_1_transformer_blocks_0_
/// attn1_to_q`, `output_blocks_2_2_conv`, `middle_block_0_in_layers_2`) as Kohya's
/// underscored diffusers name (`down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`),
/// for a UNet with `layers_per_block`. `None` when the name is not in the SGM layout.
pub fn kohya_sgm_to_diffusers(name: &str, layers_per_block: usize) -> Option<String> {
    let whole = [
        ("time_embed_0", "time_embed.0"),
        ("time_embed_2", "time_embed.2"),
        ("label_emb_0_0", "label_emb.0.0"),
        ("label_emb_0_2", "label_emb.0.2"),
        ("input_blocks_0_0", "input_blocks.0.0"),
        ("out_0", "out.0"),
        ("out_2", "out.2"),
    ];
    let dotted = match whole.iter().find(|(k, _)| *k == name) {
        Some((_, ldm)) => ldm.to_string(),
        None => {
            // `<blocks>_<N>_<slot>_<layer>` (`middle_block_<slot>_<layer>`): the numbers
            // become path segments, the layer keeps its underscores unless it is one of a
            // resnet's or sampler's, whose LDM names hold numbered segments too.
            let (blocks, rest) = ["input_blocks_", "output_blocks_", "middle_block_"]
                .iter()
                .find_map(|p| Some((p.trim_end_matches('_'), name.strip_prefix(p)?)))?;
            let (numbers, layer) = match blocks {
                "middle_block" => {
                    let (slot, layer) = rest.split_once('_')?;
                    (slot.to_string(), layer)
                }
                _ => {
                    let (n, rest) = rest.split_once('_')?;
                    let (slot, layer) = rest.split_once('_')?;
                    (format!("{n}.{slot}"), layer)
                }
            };
            let layer = [
                ("in_layers_0", "in_layers.0"),
                ("in_layers_2", "in_layers.2"),
                ("out_layers_0", "out_layers.0"),
                ("out_layers_3", "out_layers.3"),
                ("emb_layers_1", "emb_layers.1"),
            ]
            .iter()
            .find(|(k, _)| *k == layer)
            .map_or(layer, |(_, v)| v);
            format!("{blocks}.{numbers}.{layer}")
        }
    };
    let path = unet_name(&format!("{dotted}.weight"), layers_per_block)?;
    Some(path.strip_suffix(".weight")?.replace('.', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kohya_sgm_names_map_to_diffusers_modules() {
        // SDXL: 2 layers per block, no attention in the first level.
        for (kohya, diffusers) in [
            (
                "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            ),
            (
                "input_blocks_1_0_in_layers_2",
                "down_blocks.0.resnets.0.conv1",
            ),
            (
                "input_blocks_5_0_emb_layers_1",
                "down_blocks.1.resnets.1.time_emb_proj",
            ),
            (
                "input_blocks_4_0_skip_connection",
                "down_blocks.1.resnets.0.conv_shortcut",
            ),
            ("input_blocks_3_0_op", "down_blocks.0.downsamplers.0.conv"),
            ("middle_block_1_proj_in", "mid_block.attentions.0.proj_in"),
            ("middle_block_2_out_layers_3", "mid_block.resnets.1.conv2"),
            (
                "output_blocks_0_1_transformer_blocks_1_ff_net_0_proj",
                "up_blocks.0.attentions.0.transformer_blocks.1.ff_net_0_proj",
            ),
            ("output_blocks_2_2_conv", "up_blocks.0.upsamplers.0.conv"),
            (
                "output_blocks_8_0_out_layers_3",
                "up_blocks.2.resnets.2.conv2",
            ),
            ("label_emb_0_2", "add_embedding.linear_2"),
            ("time_embed_0", "time_embedding.linear_1"),
        ] {
            let expected = diffusers.replace('.', "_");
            assert_eq!(kohya_sgm_to_diffusers(kohya, 2), Some(expected), "{kohya}");
        }
        for other in [
            "down_blocks_0_resnets_0_conv1",
            "input_blocks_x_0_op",
            "middle_block",
        ] {
            assert_eq!(kohya_sgm_to_diffusers(other, 2), None, "{other}");
        }
    }
}
