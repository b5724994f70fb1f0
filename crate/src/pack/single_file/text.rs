//! The text encoders' keys: SD 2.x's and SDXL's OpenCLIP towers as transformers names them
//! (SD 1.x's and SDXL's CLIP-L are in transformers' layout already).

use crate::pack::Source;
use crate::weights::ldm::split_index;

/// OpenCLIP's text tower as transformers' `CLIPTextModel` (`source` carries the tensor; its
/// name is set here), with its `text_projection` when `projected` (SDXL's
/// `CLIPTextModelWithProjection`). `None` for a key that is not part of it or a tensor of
/// the wrong rank; an empty list for one the text encoder does not use.
pub(super) fn open_clip<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;

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
