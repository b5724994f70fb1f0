//! DDIM (Song et al. 2021): deterministic for η = 0, adds fresh noise scaled by η otherwise.

use burn::prelude::*;

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::schedule::{alphas_cumprod, predict_x0_eps, spaced_timesteps};
use super::{NoiseSource, Scheduler};

pub struct Ddim {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    /// ᾱ before the first training step: 1 with `set_alpha_to_one`, else ᾱ₀.
    final_alpha: f64,
    /// Distance between consecutive timesteps (`num_train_timesteps // steps`).
    stride: i64,
    prediction: Prediction,
    clip: Option<f64>,
    eta: f64,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, steps: usize, eta: f64) -> Self {
        let alphas_cumprod = alphas_cumprod(config);
        let final_alpha = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Self {
            timesteps: spaced_timesteps(config, config.spacing(Spacing::Leading), steps),
            final_alpha,
            stride: (config.num_train_timesteps() / steps) as i64,
            prediction: config.prediction(),
            clip: config.clip_range(true),
            alphas_cumprod,
            eta,
        }
    }

    fn alpha(&self, t: i64) -> f64 {
        if t >= 0 {
            self.alphas_cumprod[t as usize]
        } else {
            self.final_alpha
        }
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
        let x0 = match self.clip {
            Some(r) => x0.clamp(-r, r),
            None => x0,
        };
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
