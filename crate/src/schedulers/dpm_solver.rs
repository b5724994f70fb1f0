//! DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep solver in log-SNR time on
//! the data prediction x₀, first order at the first and last steps.

use burn::prelude::*;

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::schedule::{
    alphas_cumprod, interp, karras, linspace, round, sigma_to_t, spaced_timesteps, train_sigmas,
};
use super::{NoiseSource, Scheduler};

/// The timesteps and σ grid (ending in σ = 0) of the multistep solvers, DPM++ and UniPC.
pub struct MultistepGrid {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f64>,
}

impl MultistepGrid {
    pub fn new(config: &SchedulerConfig, steps: usize, use_karras: bool) -> Self {
        let n = config.num_train_timesteps();
        let train = train_sigmas(&alphas_cumprod(config));
        let (timesteps, mut sigmas) = if use_karras {
            let log_sigmas: Vec<f64> = train.iter().map(|s| s.ln()).collect();
            let sigmas = karras(train[n - 1], train[0], steps);
            let timesteps = sigmas
                .iter()
                .map(|&s| round(sigma_to_t(s, &log_sigmas)))
                .collect();
            (timesteps, sigmas)
        } else {
            // One more grid point than steps, the last (t = 0) dropped.
            let timesteps: Vec<f64> = match config.spacing(Spacing::Linspace) {
                Spacing::Linspace => linspace(0.0, (n - 1) as f64, steps + 1)
                    .into_iter()
                    .rev()
                    .take(steps)
                    .map(round)
                    .collect(),
                Spacing::Leading => {
                    let ratio = (n / (steps + 1)) as f64;
                    (1..=steps)
                        .rev()
                        .map(|i| round(i as f64 * ratio) + config.steps_offset() as f64)
                        .collect()
                }
                Spacing::Trailing => spaced_timesteps(config, Spacing::Trailing, steps),
            };
            let sigmas = timesteps.iter().map(|&t| interp(t, &train)).collect();
            (timesteps, sigmas)
        };
        sigmas.push(0.0);
        Self { timesteps, sigmas }
    }

    /// (α_t, σ_t, λ_t = log α_t − log σ_t) of the VP process at Karras σ.
    pub fn alpha_sigma_lambda(&self, index: usize) -> (f64, f64, f64) {
        let s = self.sigmas[index];
        let alpha = 1.0 / (s * s + 1.0).sqrt();
        let sigma = s * alpha;
        (alpha, sigma, alpha.ln() - sigma.ln())
    }

    /// The data prediction x₀ from a UNet output at step `index`.
    pub fn x0(
        &self,
        prediction: Prediction,
        output: Tensor<4>,
        sample: Tensor<4>,
        index: usize,
    ) -> Tensor<4> {
        let (alpha, sigma, _) = self.alpha_sigma_lambda(index);
        match prediction {
            Prediction::Epsilon => (sample - output * sigma) / alpha,
            Prediction::VPrediction => sample * alpha - output * sigma,
            Prediction::Sample => output,
        }
    }

    /// `α_t·x₀ + σ_t·ε` at step `index`.
    pub fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Tensor<4> {
        let (alpha, sigma, _) = self.alpha_sigma_lambda(index);
        original * alpha + noise * sigma
    }
}

pub struct DpmSolver {
    grid: MultistepGrid,
    prediction: Prediction,
    /// The previous step's x₀ prediction, once there is one.
    previous: Option<Tensor<4>>,
}

impl DpmSolver {
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Self {
        Self {
            grid: MultistepGrid::new(config, steps, karras),
            prediction: config.prediction(),
            previous: None,
        }
    }
}

impl Scheduler for DpmSolver {
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
        let x0 = self
            .grid
            .x0(self.prediction, model_output, sample.clone(), index);
        let steps = self.grid.timesteps.len();
        // Lower order at the end: the final σ is 0, where the second-order term is unstable.
        let last = index + 1 == steps;
        let (alpha_t, sigma_t, lambda_t) = self.grid.alpha_sigma_lambda(index + 1);
        let (_, sigma_s, lambda_s) = self.grid.alpha_sigma_lambda(index);
        let h = lambda_t - lambda_s;
        let phi = alpha_t * ((-h).exp() - 1.0);
        let first_order = sample * (sigma_t / sigma_s) - x0.clone() * phi;
        let out = match (&self.previous, last) {
            (Some(prev), false) => {
                let (_, _, lambda_prev) = self.grid.alpha_sigma_lambda(index - 1);
                let r = (lambda_s - lambda_prev) / h;
                let d1 = (x0.clone() - prev.clone()) / r;
                first_order - d1 * (0.5 * phi)
            }
            _ => first_order,
        };
        self.previous = Some(x0);
        out
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Tensor<4> {
        self.grid.add_noise(original, noise, index)
    }
}
