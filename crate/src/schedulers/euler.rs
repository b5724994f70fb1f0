//! Euler (Karras et al. 2022, Algorithm 2 without churn): the probability-flow ODE in σ
//! with one Euler step per timestep. Timesteps are fractional under "linspace" spacing.

use burn::prelude::*;

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::schedule::{
    alphas_cumprod, interp, karras, linspace, predict_x0_sigma, sigma_to_t, spaced_timesteps,
    train_sigmas,
};
use super::{NoiseSource, Scheduler};

/// The σ grid of the Euler family: `steps` timesteps and `steps + 1` sigmas ending in 0,
/// plus the initial noise σ.
pub struct SigmaGrid {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f64>,
    pub init_noise_sigma: f64,
}

impl SigmaGrid {
    pub fn new(config: &SchedulerConfig, steps: usize, use_karras: bool) -> Self {
        let mut alphas_cumprod = alphas_cumprod(config);
        if config.rescale_betas_zero_snr == Some(true) {
            // Zero terminal SNR would make σ infinite; diffusers uses 2⁻²⁴.
            *alphas_cumprod.last_mut().expect("timesteps") = 2f64.powi(-24);
        }
        let train = train_sigmas(&alphas_cumprod);
        let spacing = config.spacing(Spacing::Linspace);
        // Timesteps are float32 in diffusers: round through f32 so the UNet sees the same.
        let mut timesteps: Vec<f64> = match spacing {
            Spacing::Linspace => {
                let last = (config.num_train_timesteps() - 1) as f64;
                linspace(0.0, last, steps).into_iter().rev().collect()
            }
            other => spaced_timesteps(config, other, steps),
        };
        timesteps.iter_mut().for_each(|t| *t = *t as f32 as f64);
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t, &train)).collect();
        if use_karras {
            let log_sigmas: Vec<f64> = train.iter().map(|s| s.ln()).collect();
            sigmas = karras(sigmas[0], sigmas[sigmas.len() - 1], steps);
            timesteps = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas) as f32 as f64)
                .collect();
        }
        sigmas.push(0.0);
        let sigma_max = sigmas.iter().cloned().fold(0.0, f64::max);
        let init_noise_sigma = match spacing {
            Spacing::Linspace | Spacing::Trailing => sigma_max,
            Spacing::Leading => (sigma_max * sigma_max + 1.0).sqrt(),
        };
        Self {
            timesteps,
            sigmas,
            init_noise_sigma,
        }
    }

    /// `sample / √(σ² + 1)`, the UNet's input scaling at σ.
    pub fn scale(sample: Tensor<4>, sigma: f64) -> Tensor<4> {
        sample / (sigma * sigma + 1.0).sqrt()
    }
}

pub struct Euler {
    grid: SigmaGrid,
    prediction: Prediction,
}

impl Euler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        Self {
            grid: SigmaGrid::new(config, steps, config.use_karras_sigmas == Some(true)),
            prediction: config.prediction(),
        }
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.grid.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.grid.init_noise_sigma
    }

    fn scale_model_input(&self, sample: Tensor<4>, index: usize) -> Tensor<4> {
        SigmaGrid::scale(sample, self.grid.sigmas[index])
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        index: usize,
        sample: Tensor<4>,
        _noise: &mut dyn NoiseSource,
    ) -> Tensor<4> {
        let (sigma, sigma_next) = (self.grid.sigmas[index], self.grid.sigmas[index + 1]);
        let x0 = predict_x0_sigma(self.prediction, model_output, sample.clone(), sigma);
        let derivative = (sample.clone() - x0) / sigma;
        sample + derivative * (sigma_next - sigma)
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Tensor<4> {
        original + noise * self.grid.sigmas[index]
    }
}
