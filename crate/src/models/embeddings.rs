//! Timestep embeddings: the sinusoidal projection (`get_timestep_embedding`) and the
//! two-layer `TimestepEmbedding` MLP of the UNet.

use burn::prelude::*;
use burn::tensor::activation::silu;

use super::layers::{Linear, linear};

/// diffusers' `get_timestep_embedding(timesteps, dim, flip_sin_to_cos, freq_shift)`:
/// `[sin(t·f_i), cos(t·f_i)]` with `f_i = exp(-ln(10000)·i / (dim/2 - freq_shift))`, halves
/// swapped when `flip_sin_to_cos`. Computed on the host in f32, as PyTorch does.
pub fn timestep_embedding(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
    device: &Device,
) -> Tensor<2> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f32.ln()) * i as f32 / (half as f32 - freq_shift)).exp())
        .collect();
    let mut values = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let sin = freqs.iter().map(|f| (t * f).sin());
        let cos = freqs.iter().map(|f| (t * f).cos());
        if flip_sin_to_cos {
            values.extend(cos.chain(sin));
        } else {
            values.extend(sin.chain(cos));
        }
        if dim % 2 == 1 {
            values.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(values, [timesteps.len(), dim]), device)
}

/// `linear_1 → SiLU → linear_2`, with LCM's optional guidance-scale embedding
/// (`cond_proj`, from `time_cond_proj_dim`) added to the input first.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    pub cond_proj: Option<Linear>,
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(in_dim: usize, dim: usize, cond_dim: Option<usize>, device: &Device) -> Self {
        Self {
            cond_proj: cond_dim.map(|c| linear(c, in_dim, false, device)),
            linear_1: linear(in_dim, dim, true, device),
            linear_2: linear(dim, dim, true, device),
        }
    }

    pub fn forward(&self, t_emb: Tensor<2>, cond: Option<Tensor<2>>) -> Tensor<2> {
        let x = match (&self.cond_proj, cond) {
            (Some(proj), Some(cond)) => t_emb + proj.forward(cond),
            _ => t_emb,
        };
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}
