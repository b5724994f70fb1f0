//! Euler ancestral: an Euler step down to σ_down, then fresh noise of σ_up, so that the
//! marginal at the next σ is right but each step forgets part of the trajectory.

use burn::prelude::*;

use super::config::{Prediction, SchedulerConfig};
use super::euler::SigmaGrid;
use super::schedule::predict_x0_sigma;
use super::{NoiseSource, Scheduler};

pub struct EulerAncestral {
    grid: SigmaGrid,
    prediction: Prediction,
}

impl EulerAncestral {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        Self {
            grid: SigmaGrid::new(config, steps, false),
            prediction: config.prediction(),
        }
    }
}

impl Scheduler for EulerAncestral {
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
        noise: &mut dyn NoiseSource,
    ) -> Tensor<4> {
        let (from, to) = (self.grid.sigmas[index], self.grid.sigmas[index + 1]);
        let sigma_up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let sigma_down = (to * to - sigma_up * sigma_up).sqrt();
        let x0 = predict_x0_sigma(self.prediction, model_output, sample.clone(), from);
        let derivative = (sample.clone() - x0) / from;
        let prev = sample.clone() + derivative * (sigma_down - from);
        prev + noise.noise(sample.dims(), &sample.device()) * sigma_up
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Tensor<4> {
        original + noise * self.grid.sigmas[index]
    }
}
