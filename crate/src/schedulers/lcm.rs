//! LCM (Luo et al. 2023): each step jumps to a consistency-model estimate of x₀, then
//! re-noises it to the next timestep (except after the last).

use burn::prelude::*;

use super::config::{Prediction, SchedulerConfig};
use super::ddim::add_noise_alpha;
use super::schedule::{Alphas, clip_x0, predict_x0_eps};
use super::{NoiseSource, Scheduler};

pub struct Lcm {
    timesteps: Vec<f64>,
    alphas: Alphas,
    prediction: Prediction,
    clip: Option<f64>,
    timestep_scaling: f64,
}

impl Lcm {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let n = config.num_train_timesteps();
        let original = config.original_inference_steps.unwrap_or(50).clamp(1, n);
        let k = n / original;
        // The distillation grid (k−1, 2k−1, …), newest first, sampled evenly.
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        let timesteps = (0..steps)
            .map(|i| origin[(i * origin.len()) / steps] as f64)
            .collect();
        Self {
            timesteps,
            alphas: Alphas::new(config, true),
            prediction: config.prediction(),
            clip: config.clip_range(false),
            timestep_scaling: config.timestep_scaling.unwrap_or(10.0),
        }
    }
}

impl Scheduler for Lcm {
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
        let t = self.timesteps[index];
        let t_prev = *self.timesteps.get(index + 1).unwrap_or(&t);
        let (alpha, alpha_prev) = (self.alphas.at(t), self.alphas.at(t_prev));
        // Boundary condition: c_skip → 1, c_out → 0 as t → 0.
        let sigma_data = 0.5;
        let scaled = t * self.timestep_scaling;
        let c_skip = sigma_data * sigma_data / (scaled * scaled + sigma_data * sigma_data);
        let c_out = scaled / (scaled * scaled + sigma_data * sigma_data).sqrt();
        let (x0, _) = predict_x0_eps(self.prediction, model_output, sample.clone(), alpha);
        let x0 = clip_x0(x0, self.clip);
        let denoised = x0 * c_out + sample.clone() * c_skip;
        if index + 1 < self.timesteps.len() {
            let noise = noise.noise(sample.dims(), &sample.device());
            add_noise_alpha(denoised, noise, alpha_prev)
        } else {
            denoised
        }
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Tensor<4> {
        add_noise_alpha(original, noise, self.alphas.at(self.timesteps[index]))
    }
}
