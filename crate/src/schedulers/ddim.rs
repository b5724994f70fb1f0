//! DDIM (Song et al. 2021): deterministic for η = 0, adds fresh noise scaled by η otherwise.

use burn::prelude::*;

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::schedule::{Alphas, clip_x0, predict_x0_eps, spaced_timesteps};
use super::{NoiseSource, Scheduler};

pub struct Ddim {
    timesteps: Vec<f64>,
    alphas: Alphas,
    /// Distance between consecutive timesteps (`num_train_timesteps // steps`).
    stride: i64,
    prediction: Prediction,
    clip: Option<f64>,
    eta: f64,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, steps: usize, eta: f64) -> Self {
        Self {
            timesteps: spaced_timesteps(config, config.spacing(Spacing::Leading), steps),
            alphas: Alphas::new(config, true),
            stride: (config.num_train_timesteps() / steps) as i64,
            prediction: config.prediction(),
            clip: config.clip_range(true),
            eta,
        }
    }

    fn alpha(&self, t: i64) -> f64 {
        self.alphas.at(t as f64)
    }
}

impl Scheduler for Ddim {
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
        let t = self.timesteps[index] as i64;
        let (alpha, alpha_prev) = (self.alpha(t), self.alpha(t - self.stride));
        let (x0, eps) = predict_x0_eps(self.prediction, model_output, sample.clone(), alpha);
        let x0 = clip_x0(x0, self.clip);
        let variance = (1.0 - alpha_prev) / (1.0 - alpha) * (1.0 - alpha / alpha_prev);
        let std = self.eta * variance.sqrt();
        let prev = x0 * alpha_prev.sqrt() + eps * (1.0 - alpha_prev - std * std).sqrt();
        if self.eta > 0.0 {
            prev + noise.noise(sample.dims(), &sample.device()) * std
        } else {
            prev
        }
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Tensor<4> {
        add_noise_alpha(original, noise, self.alpha(self.timesteps[index] as i64))
    }
}

/// `√ᾱ·x₀ + √(1−ᾱ)·ε`: the forward process of the ᾱ-parameterised samplers.
pub fn add_noise_alpha(original: Tensor<4>, noise: Tensor<4>, alpha: f64) -> Tensor<4> {
    original * alpha.sqrt() + noise * (1.0 - alpha).sqrt()
}
