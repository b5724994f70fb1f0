//! UniPC (Zhao et al. 2023), B(h) = e^h − 1 ("bh2"), order 2, predicting x₀: each step
//! first corrects the previous step's result with the new model output (UniC), then
//! predicts the next sample (UniP). Lower order at the first and last steps.

use burn::prelude::*;

use super::config::{Prediction, SchedulerConfig};
use super::dpm_solver::MultistepGrid;
use super::{NoiseSource, Scheduler};

const ORDER: usize = 2;

pub struct UniPc {
    grid: MultistepGrid,
    prediction: Prediction,
    /// x₀ predictions of the last `ORDER` steps, newest last.
    outputs: Vec<Tensor<4>>,
    /// The sample the previous predictor started from, and the order it used.
    last: Option<(Tensor<4>, usize)>,
}

impl UniPc {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        Self {
            grid: MultistepGrid::new(config, steps, false),
            prediction: config.prediction(),
            outputs: Vec::new(),
            last: None,
        }
    }

    /// The coefficients shared by predictor and corrector at step size h:
    /// (h_φ₁ = e^{−h} − 1, B(h), b₁, b₂).
    fn coefficients(h: f64) -> (f64, f64, [f64; 2]) {
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let b_h = h_phi_1;
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0;
        let mut b = [0.0; 2];
        for (i, bi) in b.iter_mut().enumerate() {
            *bi = h_phi_k * factorial / b_h;
            factorial *= (i + 2) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        (h_phi_1, b_h, b)
    }

    /// UniC: redoes the previous step from `last_sample`, now also using the newest x₀
    /// prediction `model_t` (at step `index`).
    fn correct(
        &self,
        model_t: &Tensor<4>,
        last_sample: Tensor<4>,
        order: usize,
        index: usize,
    ) -> Tensor<4> {
        let m0 = self.outputs[self.outputs.len() - 1].clone();
        let (alpha_t, sigma_t, lambda_t) = self.grid.alpha_sigma_lambda(index);
        let (_, sigma_s0, lambda_s0) = self.grid.alpha_sigma_lambda(index - 1);
        let h = lambda_t - lambda_s0;
        let (h_phi_1, b_h, b) = Self::coefficients(h);
        let x_t = last_sample * (sigma_t / sigma_s0) - m0.clone() * (alpha_t * h_phi_1);
        let d1_t = model_t.clone() - m0.clone();
        let correction = if order == 1 {
            d1_t * 0.5
        } else {
            let (_, _, lambda_s1) = self.grid.alpha_sigma_lambda(index - 2);
            let rk = (lambda_s1 - lambda_s0) / h;
            let d1 = (self.outputs[self.outputs.len() - 2].clone() - m0) / rk;
            // Solve [[1, 1], [rk, 1]]·ρ = b for the two corrector weights.
            let det = 1.0 - rk;
            let rho_0 = (b[0] - b[1]) / det;
            let rho_1 = (b[1] - rk * b[0]) / det;
            d1 * rho_0 + d1_t * rho_1
        };
        x_t - correction * (alpha_t * b_h)
    }

    /// UniP: predicts the sample at step `index + 1` from `sample` at step `index`.
    fn predict(&self, sample: Tensor<4>, order: usize, index: usize) -> Tensor<4> {
        let m0 = self.outputs[self.outputs.len() - 1].clone();
        let (alpha_t, sigma_t, lambda_t) = self.grid.alpha_sigma_lambda(index + 1);
        let (_, sigma_s0, lambda_s0) = self.grid.alpha_sigma_lambda(index);
        let h = lambda_t - lambda_s0;
        let (h_phi_1, b_h, _) = Self::coefficients(h);
        let x_t = sample * (sigma_t / sigma_s0) - m0.clone() * (alpha_t * h_phi_1);
        if order == 1 {
            return x_t;
        }
        let (_, _, lambda_s1) = self.grid.alpha_sigma_lambda(index - 1);
        let rk = (lambda_s1 - lambda_s0) / h;
        let d1 = (self.outputs[self.outputs.len() - 2].clone() - m0) / rk;
        x_t - d1 * (0.5 * alpha_t * b_h)
    }
}

impl Scheduler for UniPc {
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
        let sample = match self.last.take() {
            Some((last_sample, order)) => self.correct(&x0, last_sample, order, index),
            None => sample,
        };
        if self.outputs.len() == ORDER {
            self.outputs.remove(0);
        }
        self.outputs.push(x0);
        let remaining = self.grid.timesteps.len() - index;
        let order = ORDER.min(remaining).min(self.outputs.len());
        self.last = Some((sample.clone(), order));
        self.predict(sample, order, index)
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Tensor<4> {
        self.grid.add_noise(original, noise, index)
    }
}
