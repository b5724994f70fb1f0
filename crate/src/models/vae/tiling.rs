//! Tiled VAE decoding and encoding, as diffusers' `AutoencoderKL.enable_tiling()`: the input
//! is cut into overlapping square tiles, each run through the network on its own (so the
//! largest activation is a tile's, not the image's), and the outputs blended linearly where
//! they overlap. SDXL's decoder at 1024² would otherwise hold [1, 256, 1024, 1024] tensors,
//! over WebGPU's buffer limits.

use burn::prelude::*;

/// diffusers' `tile_overlap_factor`.
pub const OVERLAP: f64 = 0.25;

/// Tiles of `sample` pixels (diffusers' `tile_sample_min_size`), that is `sample / f`
/// latents for a VAE that scales by `f`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    pub sample: usize,
    pub latent: usize,
}

impl Tiling {
    pub fn new(sample: usize, scale_factor: usize) -> Self {
        Self {
            sample,
            latent: sample / scale_factor,
        }
    }

    /// `z` `[B, C, h, w]` decoded tile by tile with `decode` (latents → pixels); as `decode`
    /// of the whole when it fits in one tile.
    pub fn decode(&self, z: Tensor<4>, decode: impl Fn(Tensor<4>) -> Tensor<4>) -> Tensor<4> {
        run(z, self.latent, self.sample, decode)
    }

    /// `x` `[B, 3, H, W]` encoded tile by tile with `encode` (pixels → latents).
    pub fn encode(&self, x: Tensor<4>, encode: impl Fn(Tensor<4>) -> Tensor<4>) -> Tensor<4> {
        run(x, self.sample, self.latent, encode)
    }
}

/// Runs `f` over tiles of `tile_in` (stepping by 3/4 of it) whose outputs are `tile_out`
/// wide, blending the outputs' overlaps and keeping `tile_out − blend` of each.
fn run(
    input: Tensor<4>,
    tile_in: usize,
    tile_out: usize,
    f: impl Fn(Tensor<4>) -> Tensor<4>,
) -> Tensor<4> {
    let [_, _, h, w] = input.dims();
    if h <= tile_in && w <= tile_in {
        return f(input);
    }
    let stride = ((tile_in as f64 * (1.0 - OVERLAP)) as usize).max(1);
    let blend = (tile_out as f64 * OVERLAP) as usize;
    let keep = tile_out - blend;
    let mut rows: Vec<Vec<Tensor<4>>> = Vec::new();
    for i in (0..h).step_by(stride) {
        let mut row: Vec<Tensor<4>> = Vec::new();
        for j in (0..w).step_by(stride) {
            let tile =
                input
                    .clone()
                    .narrow(2, i, tile_in.min(h - i))
                    .narrow(3, j, tile_in.min(w - j));
            let mut tile = f(tile);
            // Each tile is blended with its neighbours above and to the left as they were
            // after their own blending (diffusers blends in place).
            if let Some(above) = rows.last() {
                tile = blend_from(&above[row.len()], tile, blend, 2);
            }
            if let Some(left) = row.last() {
                tile = blend_from(left, tile, blend, 3);
            }
            row.push(tile);
        }
        rows.push(row);
    }
    let crop = |t: &Tensor<4>| {
        let [_, _, th, tw] = t.dims();
        t.clone()
            .narrow(2, 0, keep.min(th))
            .narrow(3, 0, keep.min(tw))
    };
    let rows = rows
        .iter()
        .map(|row| Tensor::cat(row.iter().map(crop).collect(), 3))
        .collect();
    Tensor::cat(rows, 2)
}

/// `b` with its first `extent` rows (`dim` 2) or columns (`dim` 3) faded in from the last
/// ones of `a`: weight `k / extent` for `b` at offset `k`.
fn blend_from(a: &Tensor<4>, b: Tensor<4>, extent: usize, dim: usize) -> Tensor<4> {
    let extent = extent.min(a.dims()[dim]).min(b.dims()[dim]);
    if extent == 0 {
        return b;
    }
    let len_a = a.dims()[dim];
    let len_b = b.dims()[dim];
    let tail = a.clone().narrow(dim, len_a - extent, extent);
    let head = b.clone().narrow(dim, 0, extent);
    let weights: Vec<f32> = (0..extent).map(|k| k as f32 / extent as f32).collect();
    let mut shape = [1, 1, 1, 1];
    shape[dim] = extent;
    let weight = Tensor::<1>::from_data(TensorData::new(weights, [extent]), &b.device())
        .reshape(shape)
        .cast(b.dtype());
    let faded = tail * (weight.clone().neg() + 1.0) + head * weight;
    if extent == len_b {
        return faded;
    }
    Tensor::cat(vec![faded, b.narrow(dim, extent, len_b - extent)], dim)
}
