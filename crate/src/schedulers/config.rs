//! `scheduler/scheduler_config.json`, read as diffusers' `SchedulerClass.from_config` does:
//! every key the file has is taken, and every key it lacks gets the *target* scheduler's own
//! default (so SD 1.5's config, which has no `timestep_spacing`, gives DDIM "leading" and
//! Euler "linspace"). Keys listed in `_use_default_values` count as absent.

use serde::Deserialize;
use serde_json::Value;

use crate::config::{bounded, finite_in};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<BetaSchedule>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<Prediction>,
    pub steps_offset: Option<usize>,
    pub timestep_spacing: Option<Spacing>,
    pub rescale_betas_zero_snr: Option<bool>,
    pub set_alpha_to_one: Option<bool>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    pub thresholding: Option<bool>,
    pub use_karras_sigmas: Option<bool>,
    pub original_inference_steps: Option<usize>,
    pub timestep_scaling: Option<f64>,
    /// Flow matching (`FlowMatchEulerDiscreteScheduler`): the σ shift, and the options
    /// other models ship that this build refuses (see `validate`).
    pub shift: Option<f64>,
    pub use_dynamic_shifting: Option<bool>,
    pub shift_terminal: Option<f64>,
    pub invert_sigmas: Option<bool>,
    pub stochastic_sampling: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
}

/// What the UNet predicts (`prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    Epsilon,
    VPrediction,
    Sample,
}

/// How inference timesteps are spread over the training ones (`timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spacing {
    Leading,
    Linspace,
    Trailing,
}

/// `beta_schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
}

impl SchedulerConfig {
    pub fn parse(file: &str, text: &str) -> Result<Self> {
        let mut value: Value = crate::config::parse(file, text)?;
        if let Some(object) = value.as_object_mut() {
            let defaults: Vec<String> = object
                .get("_use_default_values")
                .and_then(Value::as_array)
                .map(|keys| {
                    keys.iter()
                        .filter_map(|k| k.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            for key in defaults {
                object.remove(&key);
            }
        }
        let config: Self = crate::config::parse_value(file, value)?;
        config.validate(file)?;
        Ok(config)
    }

    /// Checks the config as a whole: every value a scheduler indexes or divides by.
    fn validate(&self, file: &str) -> Result<()> {
        if self.thresholding == Some(true) {
            return Err(Error::config(file, "thresholding", "is not supported"));
        }
        // Real schedules have 1000 training timesteps; Karras and σ interpolation need two.
        let n = self.num_train_timesteps();
        bounded(file, "num_train_timesteps", n, 2..=10_000)?;
        if let Some(offset) = self.steps_offset {
            bounded(file, "steps_offset", offset, 0..=n - 1)?;
        }
        if let Some(original) = self.original_inference_steps {
            bounded(file, "original_inference_steps", original, 1..=n)?;
        }
        for (key, value) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
            if let Some(v) = value {
                finite_in(file, key, v, 0.0..=1.0)?;
            }
        }
        if let Some(betas) = &self.trained_betas {
            if betas.len() != n {
                return Err(Error::config(
                    file,
                    "trained_betas",
                    format!("has {} values for {n} training timesteps", betas.len()),
                ));
            }
            if let Some(b) = betas
                .iter()
                .find(|b| !(b.is_finite() && **b > 0.0 && **b < 1.0))
            {
                return Err(Error::config(
                    file,
                    "trained_betas",
                    format!("holds {b}, not in (0, 1)"),
                ));
            }
        }
        if let Some(range) = self.clip_sample_range {
            finite_in(file, "clip_sample_range", range, f64::MIN_POSITIVE..=1e6)?;
        }
        if let Some(shift) = self.shift {
            finite_in(file, "shift", shift, 1e-3..=1e3)?;
        }
        for (key, on, what) in [
            (
                "use_dynamic_shifting",
                self.use_dynamic_shifting,
                "FLUX's resolution-dependent shift",
            ),
            ("invert_sigmas", self.invert_sigmas, "inverted sigmas"),
            (
                "stochastic_sampling",
                self.stochastic_sampling,
                "stochastic flow sampling",
            ),
            (
                "use_exponential_sigmas",
                self.use_exponential_sigmas,
                "exponential sigmas",
            ),
            ("use_beta_sigmas", self.use_beta_sigmas, "beta sigmas"),
        ] {
            if on == Some(true) {
                return Err(Error::config(
                    file,
                    key,
                    format!("is true ({what}), which this build does not run yet"),
                ));
            }
        }
        if let Some(terminal) = self.shift_terminal {
            return Err(Error::config(
                file,
                "shift_terminal",
                format!("is {terminal} (a stretched σ grid), which this build does not run yet"),
            ));
        }
        if let Some(scaling) = self.timestep_scaling {
            finite_in(file, "timestep_scaling", scaling, f64::MIN_POSITIVE..=1e6)?;
        }
        Ok(())
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.num_train_timesteps.unwrap_or(1000)
    }

    /// Flow matching's σ shift (1: none).
    pub fn shift(&self) -> f64 {
        self.shift.unwrap_or(1.0)
    }

    pub fn prediction(&self) -> Prediction {
        self.prediction_type.unwrap_or(Prediction::Epsilon)
    }

    /// `timestep_spacing`, or `default` (the scheduler class's own) when absent.
    pub fn spacing(&self, default: Spacing) -> Spacing {
        self.timestep_spacing.unwrap_or(default)
    }

    pub fn steps_offset(&self) -> usize {
        self.steps_offset.unwrap_or(0)
    }

    /// `clip_sample_range` when `clip_sample` is on (`default` when the key is absent).
    pub fn clip_range(&self, default: bool) -> Option<f64> {
        self.clip_sample
            .unwrap_or(default)
            .then(|| self.clip_sample_range.unwrap_or(1.0))
    }
}
