//! Noise schedules and timestep grids shared by the schedulers, computed on the host in
//! f64 with numpy's rounding rules so that integer timesteps match diffusers exactly.

use burn::prelude::*;

use super::config::{BetaSchedule, Prediction, SchedulerConfig, Spacing};

/// ᾱ_t for t = 0..num_train_timesteps, from the config's beta schedule.
pub fn alphas_cumprod(config: &SchedulerConfig) -> Vec<f64> {
    let n = config.num_train_timesteps();
    let (start, end) = (
        config.beta_start.unwrap_or(0.0001),
        config.beta_end.unwrap_or(0.02),
    );
    let mut betas: Vec<f64> = match (&config.trained_betas, config.beta_schedule) {
        (Some(betas), _) => betas.clone(),
        (None, Some(BetaSchedule::ScaledLinear)) => linspace(start.sqrt(), end.sqrt(), n)
            .into_iter()
            .map(|b| b * b)
            .collect(),
        (None, Some(BetaSchedule::SquaredcosCapV2)) => {
            let alpha_bar = |t: f64| {
                ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            (0..n)
                .map(|i| {
                    let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
                })
                .collect()
        }
        _ => linspace(start, end, n),
    };
    if config.rescale_betas_zero_snr == Some(true) {
        betas = rescale_zero_terminal_snr(&betas);
    }
    let mut product = 1.0;
    betas
        .iter()
        .map(|b| {
            product *= 1.0 - b;
            product
        })
        .collect()
}

/// ᾱ by timestep for the ᾱ-parameterised samplers (DDIM, DDPM, PNDM, LCM), with the value
/// "before" the first training step that their last step lands on.
pub struct Alphas {
    pub cumprod: Vec<f64>,
    final_alpha: f64,
}

impl Alphas {
    /// `set_alpha_to_one` (the scheduler's own default when the config lacks it) makes the
    /// final ᾱ 1, else it is ᾱ₀.
    pub fn new(config: &SchedulerConfig, set_alpha_to_one_default: bool) -> Self {
        let cumprod = alphas_cumprod(config);
        let final_alpha = if config.set_alpha_to_one.unwrap_or(set_alpha_to_one_default) {
            1.0
        } else {
            cumprod[0]
        };
        Self {
            cumprod,
            final_alpha,
        }
    }

    /// ᾱ_t, or the final ᾱ for t < 0. (`schedulers::build` has checked every timestep
    /// against the table; the index is clamped all the same, so nothing can panic here.)
    pub fn at(&self, t: f64) -> f64 {
        if t >= 0.0 {
            self.cumprod[(t as usize).min(self.cumprod.len() - 1)]
        } else {
            self.final_alpha
        }
    }
}

/// Clamps a predicted x₀ to `±range` (`clip_sample`).
pub fn clip_x0(x0: Tensor<4>, range: Option<f64>) -> Tensor<4> {
    match range {
        Some(r) => x0.clamp(-r, r),
        None => x0,
    }
}

/// Rescales betas so the last timestep has zero signal (Lin et al. 2023, Algorithm 1).
fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut product = 1.0;
    let mut sqrt_bar: Vec<f64> = betas
        .iter()
        .map(|b| {
            product *= 1.0 - b;
            product.sqrt()
        })
        .collect();
    let (first, last) = (sqrt_bar[0], sqrt_bar[sqrt_bar.len() - 1]);
    for a in &mut sqrt_bar {
        *a = (*a - last) * first / (first - last);
    }
    let bar: Vec<f64> = sqrt_bar.iter().map(|a| a * a).collect();
    let mut alphas = vec![bar[0]];
    alphas.extend(bar.windows(2).map(|w| w[1] / w[0]));
    alphas.iter().map(|a| 1.0 - a).collect()
}

/// numpy's `linspace(start, stop, num)` (endpoint included).
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// numpy's `round` (half to even).
pub fn round(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// numpy's `arange(start, stop, -step)` for a descending grid.
fn arange_down(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let n = ((start - stop) / step).ceil().max(0.0) as usize;
    (0..n).map(|i| start - i as f64 * step).collect()
}

/// The integer timestep grid of DDIM, DDPM, PNDM and Euler-family leading/trailing
/// spacings: `steps` timesteps, descending.
pub fn spaced_timesteps(config: &SchedulerConfig, spacing: Spacing, steps: usize) -> Vec<f64> {
    let n = config.num_train_timesteps();
    match spacing {
        Spacing::Leading => {
            let ratio = (n / steps) as f64;
            (0..steps)
                .rev()
                .map(|i| round(i as f64 * ratio) + config.steps_offset() as f64)
                .collect()
        }
        Spacing::Trailing => arange_down(n as f64, 0.0, n as f64 / steps as f64)
            .into_iter()
            .map(|t| round(t) - 1.0)
            .collect(),
        Spacing::Linspace => linspace(0.0, (n - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(round)
            .collect(),
    }
}

/// σ_t = √((1 − ᾱ_t)/ᾱ_t) for every training timestep.
pub fn train_sigmas(alphas_cumprod: &[f64]) -> Vec<f64> {
    alphas_cumprod
        .iter()
        .map(|a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// numpy's `interp(x, arange(len(fp)), fp)`.
pub fn interp(x: f64, fp: &[f64]) -> f64 {
    if x <= 0.0 {
        return fp[0];
    }
    let last = fp.len() - 1;
    if x >= last as f64 {
        return fp[last];
    }
    let i = x.floor() as usize;
    let w = x - i as f64;
    fp[i] + w * (fp[i + 1] - fp[i])
}

/// Karras et al. (2022) σ grid between the largest and smallest of `sigmas`, ρ = 7.
pub fn karras(sigma_max: f64, sigma_min: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let (max_inv, min_inv) = (sigma_max.powf(1.0 / rho), sigma_min.powf(1.0 / rho));
    linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// The (fractional) training timestep whose σ is `sigma`, interpolating in log σ.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let count = log_sigmas.iter().filter(|&&l| log_sigma - l >= 0.0).count();
    let low = count.saturating_sub(1).min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// The x₀ and ε a UNet output implies at ᾱ = `alpha_prod`.
pub fn predict_x0_eps(
    prediction: Prediction,
    model_output: Tensor<4>,
    sample: Tensor<4>,
    alpha_prod: f64,
) -> (Tensor<4>, Tensor<4>) {
    let (a, b) = (alpha_prod.sqrt(), (1.0 - alpha_prod).sqrt());
    match prediction {
        Prediction::Epsilon => {
            let x0 = (sample - model_output.clone() * b) / a;
            (x0, model_output)
        }
        Prediction::Sample => {
            let eps = (sample - model_output.clone() * a) / b;
            (model_output, eps)
        }
        Prediction::VPrediction => {
            let x0 = sample.clone() * a - model_output.clone() * b;
            let eps = model_output * a + sample * b;
            (x0, eps)
        }
    }
}

/// x₀ from a UNet output in σ (Karras) parameterisation, as the Euler family computes it.
pub fn predict_x0_sigma(
    prediction: Prediction,
    model_output: Tensor<4>,
    sample: Tensor<4>,
    sigma: f64,
) -> Tensor<4> {
    match prediction {
        Prediction::Epsilon => sample - model_output * sigma,
        Prediction::VPrediction => {
            model_output * (-sigma / (sigma * sigma + 1.0).sqrt()) + sample / (sigma * sigma + 1.0)
        }
        Prediction::Sample => model_output,
    }
}
