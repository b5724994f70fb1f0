//! PNDM with `skip_prk_steps` (PLMS, Liu et al. 2022): a linear multistep method over the
//! last four noise predictions. The first timestep is taken twice to warm up.

use burn::prelude::*;

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::ddim::add_noise_alpha;
use super::schedule::{Alphas, spaced_timesteps};
use super::{NoiseSource, Scheduler};

pub struct Pndm {
    timesteps: Vec<f64>,
    alphas: Alphas,
    stride: i64,
    prediction: Prediction,
    /// Past noise predictions, newest last (at most four).
    ets: Vec<Tensor<4>>,
    /// The sample the warm-up step started from.
    first_sample: Option<Tensor<4>>,
    counter: usize,
}

impl Pndm {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let spacing = config.spacing(Spacing::Leading);
        // Ascending grid; PLMS repeats the second-to-last entry, then runs it backwards.
        let mut ascending = spaced_timesteps(config, spacing, steps);
        ascending.reverse();
        let n = ascending.len();
        let mut timesteps = ascending[..n - 1].to_vec();
        if n >= 2 {
            timesteps.push(ascending[n - 2]);
        }
        timesteps.push(ascending[n - 1]);
        timesteps.reverse();
        Self {
            timesteps,
            alphas: Alphas::new(config, false),
            stride: (config.num_train_timesteps() / steps) as i64,
            prediction: config.prediction(),
            ets: Vec::new(),
            first_sample: None,
            counter: 0,
        }
    }

    fn alpha(&self, t: i64) -> f64 {
        self.alphas.at(t as f64)
    }

    fn prev_sample(&self, sample: Tensor<4>, t: i64, t_prev: i64, eps: Tensor<4>) -> Tensor<4> {
        let (alpha, alpha_prev) = (self.alpha(t), self.alpha(t_prev));
        let (beta, beta_prev) = (1.0 - alpha, 1.0 - alpha_prev);
        let eps = match self.prediction {
            Prediction::VPrediction => eps * alpha.sqrt() + sample.clone() * beta.sqrt(),
            _ => eps,
        };
        let sample_coeff = (alpha_prev / alpha).sqrt();
        let denom = alpha * beta_prev.sqrt() + (alpha * beta * alpha_prev).sqrt();
        sample * sample_coeff - eps * ((alpha_prev - alpha) / denom)
    }
}

impl Scheduler for Pndm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        index: usize,
        sample: Tensor<4>,
        _noise: &mut dyn NoiseSource,
    ) -> Tensor<4> {
        let mut t = self.timesteps[index] as i64;
        let mut t_prev = t - self.stride;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(model_output.clone());
        } else {
            t_prev = t;
            t += self.stride;
        }
        let e = &self.ets;
        let n = e.len();
        let (eps, sample) = match (n, self.counter) {
            (1, 0) => {
                self.first_sample = Some(sample.clone());
                (model_output, sample)
            }
            (1, 1) => {
                let start = self.first_sample.take().unwrap_or(sample);
                ((model_output + e[0].clone()) / 2.0, start)
            }
            (2, _) => ((e[1].clone() * 3.0 - e[0].clone()) / 2.0, sample),
            (3, _) => (
                (e[2].clone() * 23.0 - e[1].clone() * 16.0 + e[0].clone() * 5.0) / 12.0,
                sample,
            ),
            _ => (
                (e[n - 1].clone() * 55.0 - e[n - 2].clone() * 59.0 + e[n - 3].clone() * 37.0
                    - e[n - 4].clone() * 9.0)
                    / 24.0,
                sample,
            ),
        };
        self.counter += 1;
        self.prev_sample(sample, t, t_prev, eps)
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Tensor<4> {
        add_noise_alpha(original, noise, self.alpha(self.timesteps[index] as i64))
    }
}
