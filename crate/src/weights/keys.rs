//! Checkpoint keys ↔ module field paths.
//!
//! burn-store finds each parameter by its path, and the Rust field names mirror the
//! checkpoint keys; only the places where diffusers' module lists hold a single layer
//! (`to_out.0`, `ff.net.0`), older VAE attention names and transformers' `text_model.`
//! prefix are renamed (the norms name their parameters `weight`/`bias` as PyTorch does).
//! [`checkpoint_name`] undoes [`field_path`] so that errors name keys as the file does.

/// Checkpoint key patterns → field paths, applied in order.
const KEY_REMAPPING: &[(&str, &str)] = &[
    // transformers ≤ 4 and real SD checkpoints prefix the CLIP text model.
    (r"^text_model\.", ""),
    (r"\.to_out\.0\.", ".to_out."),
    // Feed-forwards (the UNet's and the MMDiT's image and context streams).
    (r"\.(ff|ff_context)\.net\.0\.proj\.", ".$1.proj_in."),
    (r"\.(ff|ff_context)\.net\.2\.", ".$1.proj_out."),
    // T5's blocks hold two different layers in one list.
    (r"\.layer\.0\.SelfAttention\.", ".self_attention."),
    (r"\.layer\.0\.layer_norm\.", ".self_attention_norm."),
    (r"\.layer\.1\.DenseReluDense\.", ".dense_relu_dense."),
    (r"\.layer\.1\.layer_norm\.", ".ff_norm."),
    (r"^encoder\.embed_tokens\.", "shared."),
    // Older VAE checkpoints name the mid-block attention projections differently.
    (r"\.query\.", ".to_q."),
    (r"\.key\.", ".to_k."),
    (r"\.value\.", ".to_v."),
    (r"\.proj_attn\.", ".to_out."),
];

/// Field paths → the (current diffusers) checkpoint names.
const KEY_NAMES: &[(&str, &str)] = &[
    (
        ".token_embedding.parts.",
        ".token_embedding.weight#rows-block-",
    ),
    // T5's vocabulary table, at the root of the encoder.
    ("shared.parts.", "shared.weight#rows-block-"),
    (".to_out.", ".to_out.0."),
    (".ff.proj_in.", ".ff.net.0.proj."),
    (".ff.proj_out.", ".ff.net.2."),
    (".ff_context.proj_in.", ".ff_context.net.0.proj."),
    (".ff_context.proj_out.", ".ff_context.net.2."),
    (".self_attention.", ".layer.0.SelfAttention."),
    (".self_attention_norm.", ".layer.0.layer_norm."),
    (".dense_relu_dense.", ".layer.1.DenseReluDense."),
    (".ff_norm.", ".layer.1.layer_norm."),
];

/// Buffers some checkpoints carry that are not parameters: CLIP's `position_ids`, and
/// SD3's sin-cos position table (`pos_embed.pos_embed`, 226 M values in SD3.5 Medium), which
/// the transformer computes for the positions it uses instead of holding it.
pub fn is_buffer(key: &str) -> bool {
    key.ends_with("position_ids") || key == "pos_embed.pos_embed"
}

/// The module path a checkpoint key is loaded into.
pub fn field_path(key: &str) -> String {
    static RULES: std::sync::OnceLock<Vec<(regex::Regex, &str)>> = std::sync::OnceLock::new();
    let rules = RULES.get_or_init(|| {
        KEY_REMAPPING
            .iter()
            .map(|(p, r)| (regex::Regex::new(p).expect("valid pattern"), *r))
            .collect()
    });
    rules
        .iter()
        .fold(key.to_string(), |key, (pattern, replacement)| {
            pattern.replace_all(&key, *replacement).into_owned()
        })
}

/// The checkpoint key (diffusers naming) of a module path.
pub fn checkpoint_name(path: &str) -> String {
    KEY_NAMES
        .iter()
        .fold(path.to_string(), |name, (from, to)| name.replace(from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_undo_field_paths() {
        for key in [
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight",
            "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.bias",
            "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2.weight",
            "encoder.layers.0.self_attn.q_proj.weight",
            "decoder.mid_block.attentions.0.to_q.weight",
            "down_blocks.0.resnets.0.conv1.weight",
            "transformer_blocks.2.ff_context.net.0.proj.weight",
            "transformer_blocks.0.ff.net.2.bias",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "encoder.block.3.layer.0.layer_norm.weight",
            "encoder.block.3.layer.1.DenseReluDense.wi_0.weight",
            "encoder.block.3.layer.1.layer_norm.weight",
        ] {
            assert_eq!(checkpoint_name(&field_path(key)), key);
        }
    }

    #[test]
    fn old_and_prefixed_names_load_into_the_same_fields() {
        assert_eq!(
            field_path("text_model.encoder.layers.0.mlp.fc1.weight"),
            "encoder.layers.0.mlp.fc1.weight"
        );
        for (old, new) in [
            ("encoder.mid_block.attentions.0.query.weight", "to_q"),
            ("encoder.mid_block.attentions.0.key.weight", "to_k"),
            ("encoder.mid_block.attentions.0.value.weight", "to_v"),
            ("encoder.mid_block.attentions.0.proj_attn.weight", "to_out"),
        ] {
            assert_eq!(
                field_path(old),
                format!("encoder.mid_block.attentions.0.{new}.weight")
            );
        }
        // Names that merely contain the patterns' words are left alone.
        assert_eq!(field_path("a.keyframe.weight"), "a.keyframe.weight");
    }

    #[test]
    fn embedding_blocks_are_named_as_checkpoints() {
        assert_eq!(
            checkpoint_name("embeddings.token_embedding.parts.2"),
            "embeddings.token_embedding.weight#rows-block-2"
        );
        assert_eq!(
            checkpoint_name("shared.parts.0"),
            "shared.weight#rows-block-0"
        );
    }
}
