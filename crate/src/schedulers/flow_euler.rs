//! diffusers' `FlowMatchEulerDiscreteScheduler` (SD3, SD3.5): flow matching moves the
//! latents along a straight line from noise (σ = 1) to the image (σ = 0); the transformer
//! predicts the velocity `v = noise − x₀`, and one Euler step is `x ← x + (σ_next − σ)·v`.
//! The σ grid is warped towards the noisy end by `shift` (3.0 for SD3.5):
//! `σ' = shift·σ / (1 + (shift − 1)·σ)`, and the transformer sees `t = 1000·σ'`.

use burn::prelude::*;

use super::config::SchedulerConfig;
use super::schedule::linspace;
use super::{NoiseSource, Scheduler};

/// The shifted σ grid of a flow-matching scheduler: `steps` timesteps (σ·N) and
/// `steps + 1` sigmas ending in 0.
pub struct FlowGrid {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f64>,
}

impl FlowGrid {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let n = config.num_train_timesteps() as f64;
        let shift = config.shift();
        let shifted = |s: f64| shift * s / (1.0 + (shift - 1.0) * s);
        // The training grid's ends, as diffusers keeps them (float32): σ = 1 and σ = 1/N,
        // shifted. set_timesteps spreads the steps between them and shifts again.
        let sigma_max = shifted(1.0) as f32 as f64;
        let sigma_min = shifted(1.0 / n) as f32 as f64;
        let mut sigmas: Vec<f64> = linspace(sigma_max * n, sigma_min * n, steps)
            .into_iter()
            .map(|t| shifted(t / n) as f32 as f64)
            .collect();
        let timesteps = sigmas.iter().map(|s| (s * n) as f32 as f64).collect();
        sigmas.push(0.0);
        Self { timesteps, sigmas }
    }
}

pub struct FlowEuler {
    grid: FlowGrid,
}

impl FlowEuler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        Self {
            grid: FlowGrid::new(config, steps),
        }
    }
}

impl Scheduler for FlowEuler {
    fn timesteps(&self) -> &[f64] {
        &self.grid.timesteps
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        index: usize,
        sample: Tensor<4>,
        _noise: &mut dyn NoiseSource,
    ) -> Tensor<4> {
        let (sigma, next) = (self.grid.sigmas[index], self.grid.sigmas[index + 1]);
        sample + model_output * (next - sigma)
    }

    /// diffusers' `scale_noise`: the point at σ on the line from `original` to `noise`.
    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Tensor<4> {
        let sigma = self.grid.sigmas[index];
        noise * sigma + original * (1.0 - sigma)
    }
}
