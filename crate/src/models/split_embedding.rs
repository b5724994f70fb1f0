//! A token embedding stored as several row blocks.
//!
//! CLIP's vocabulary table is 49408 × 768 floats (148 MiB in f32): larger than the 128 MiB
//! a single storage binding may hold under WebGPU's default limits and on lavapipe, so a
//! lookup in one table cannot run there. The checkpoint's `token_embedding.weight` is split
//! into blocks of [`ROWS`] rows while loading (see `weights`), and a lookup sums the
//! (masked) lookups in each block.

use burn::module::Param;
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::module::embedding;

/// Rows per block: 8192 × 1024 floats (SD 2.x's width) is 32 MiB.
pub const ROWS: usize = 8192;

/// The vocabulary tables that are split into blocks: CLIP's `token_embedding` and T5's
/// `shared` (saved as `encoder.embed_tokens` too).
const SPLIT_TABLES: [&str; 3] = ["token_embedding", "shared", "embed_tokens"];

/// The table the checkpoint key `name` holds, if it is one that is split: the key without
/// its `.weight` (`text_model.embeddings.token_embedding`, `shared`).
pub fn split_table(name: &str) -> Option<&str> {
    let table = name.strip_suffix(".weight")?;
    let field = table.rsplit('.').next()?;
    SPLIT_TABLES.contains(&field).then_some(table)
}

#[derive(Module, Debug)]
pub struct SplitEmbedding {
    /// `{table}.parts.{i}` after splitting: rows `i·ROWS ..`.
    pub parts: Vec<Param<Tensor<2>>>,
}

impl SplitEmbedding {
    pub fn new(rows: usize, dim: usize, device: &Device) -> Self {
        let parts = (0..rows.div_ceil(ROWS))
            .map(|i| {
                let n = ROWS.min(rows - i * ROWS);
                Initializer::Normal {
                    mean: 0.0,
                    std: 1.0,
                }
                .init([n, dim], device)
            })
            .collect();
        Self { parts }
    }

    /// The rows of the whole table.
    pub fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.dims()[0]).sum()
    }

    /// Embeddings `[B, N, dim]` of `ids` `[B, N]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let mut out: Option<Tensor<3>> = None;
        let mut offset = 0i64;
        for part in &self.parts {
            let weight = part.val();
            let rows = weight.dims()[0] as i64;
            let local = ids.clone() - offset;
            let inside = local
                .clone()
                .greater_equal_elem(0)
                .bool_and(local.clone().lower_elem(rows));
            let rows_of = embedding(weight, local.clamp(0, rows - 1));
            let inside = inside.float().cast(rows_of.dtype()).unsqueeze_dim::<3>(2);
            let masked = rows_of * inside;
            out = Some(match out {
                Some(sum) => sum + masked,
                None => masked,
            });
            offset += rows;
        }
        out.expect("at least one block")
    }
}
