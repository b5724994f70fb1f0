//! DDPM (Ho et al. 2020) ancestral sampling with the "fixed_small" variance.

use burn::prelude::*;

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::ddim::add_noise_alpha;
use super::schedule::{alphas_cumprod, clip_x0, predict_x0_eps, spaced_timesteps};
use super::{NoiseSource, Scheduler};

pub struct Ddpm {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    prediction: Prediction,
    clip: Option<f64>,
}

impl Ddpm {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        Self {
            timesteps: spaced_timesteps(config, config.spacing(Spacing::Leading), steps),
            alphas_cumprod: alphas_cumprod(config),
            prediction: config.prediction(),
            clip: config.clip_range(true),
        }
    }
}

impl Scheduler for Ddpm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        index: usize,
        sample: Tensor<4>,
        noise: &mut dyn NoiseSource,
    ) -> Tensor<4> {
        let t = self.timesteps[index] as usize;
        let alpha = self.alphas_cumprod[t];
        let alpha_prev = match self.timesteps.get(index + 1) {
            Some(&prev) => self.alphas_cumprod[prev as usize],
            None => 1.0,
        };
        let current_alpha = alpha / alpha_prev;
        let current_beta = 1.0 - current_alpha;
        let (x0, _) = predict_x0_eps(self.prediction, model_output, sample.clone(), alpha);
        let x0 = clip_x0(x0, self.clip);
        let x0_coeff = alpha_prev.sqrt() * current_beta / (1.0 - alpha);
        let sample_coeff = current_alpha.sqrt() * (1.0 - alpha_prev) / (1.0 - alpha);
        let mean = x0 * x0_coeff + sample.clone() * sample_coeff;
        if t > 0 {
            let variance = ((1.0 - alpha_prev) / (1.0 - alpha) * current_beta).max(1e-20);
            mean + noise.noise(sample.dims(), &sample.device()) * variance.sqrt()
        } else {
            mean
        }
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Tensor<4> {
        add_noise_alpha(
            original,
            noise,
            self.alphas_cumprod[self.timesteps[index] as usize],
        )
    }
}
