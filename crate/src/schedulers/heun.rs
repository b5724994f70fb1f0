//! Heun (Karras et al. 2022, Algorithm 1): an Euler step, then a correction with the
//! derivative at the end point. Each inference step takes two UNet calls, so every
//! timestep but the first appears twice.

use burn::prelude::*;

use super::config::{Prediction, SchedulerConfig};
use super::euler::SigmaGrid;
use super::schedule::predict_x0_sigma;
use super::{NoiseSource, Scheduler};

pub struct Heun {
    timesteps: Vec<f64>,
    /// σ per UNet call, plus the final 0.
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction: Prediction,
    /// After a first-order step: its derivative, step size and starting sample.
    pending: Option<(Tensor<4>, f64, Tensor<4>)>,
}

impl Heun {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let grid = SigmaGrid::new(config, steps, config.use_karras_sigmas == Some(true));
        let twice = |v: &[f64]| -> Vec<f64> {
            let mut out = vec![v[0]];
            out.extend(v[1..].iter().flat_map(|&x| [x, x]));
            out
        };
        let n = grid.sigmas.len();
        let mut sigmas = twice(&grid.sigmas[..n - 1]);
        sigmas.push(grid.sigmas[n - 1]);
        Self {
            timesteps: twice(&grid.timesteps),
            sigmas,
            init_noise_sigma: grid.init_noise_sigma,
            prediction: config.prediction(),
            pending: None,
        }
    }
}

impl Scheduler for Heun {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn order(&self) -> usize {
        2
    }

    fn scale_model_input(&self, sample: Tensor<4>, index: usize) -> Tensor<4> {
        SigmaGrid::scale(sample, self.sigmas[index])
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        index: usize,
        sample: Tensor<4>,
        _noise: &mut dyn NoiseSource,
    ) -> Tensor<4> {
        match self.pending.take() {
            None => {
                let (sigma, sigma_next) = (self.sigmas[index], self.sigmas[index + 1]);
                let x0 = predict_x0_sigma(self.prediction, model_output, sample.clone(), sigma);
                let derivative = (sample.clone() - x0) / sigma;
                let dt = sigma_next - sigma;
                self.pending = Some((derivative.clone(), dt, sample.clone()));
                sample + derivative * dt
            }
            Some((first, dt, start)) => {
                let sigma_next = self.sigmas[index];
                let x0 =
                    predict_x0_sigma(self.prediction, model_output, sample.clone(), sigma_next);
                let derivative = ((sample - x0) / sigma_next + first) / 2.0;
                start + derivative * dt
            }
        }
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Tensor<4> {
        original + noise * self.sigmas[index]
    }
}
