//! Samplers that turn the UNet's predictions into a denoising trajectory, one file per
//! scheduler, each configured from the model's `scheduler_config.json` exactly as diffusers'
//! `Class.from_config(config)` would be.
//!
//! diffusers' four verbs map to: `set_timesteps` → [`build`], `scale_model_input`, `step`
//! and `add_noise`. Steps are addressed by index into [`Scheduler::timesteps`] (one entry per
//! UNet call), which also makes img2img's late start a plain offset.

mod config;
mod ddim;
mod ddpm;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod heun;
mod lcm;
mod pndm;
pub mod schedule;
mod unipc;

pub use config::{Prediction, SchedulerConfig, Spacing};

use burn::prelude::*;

use crate::error::{Error, Result};

/// Fresh Gaussian noise for stochastic samplers (Euler-a, DDPM, LCM, DDIM with η > 0).
pub trait NoiseSource {
    fn noise(&mut self, shape: [usize; 4], device: &Device) -> Tensor<4>;
}

pub trait Scheduler {
    /// The timestep given to the UNet at each step, in order.
    fn timesteps(&self) -> &[f64];

    /// The standard deviation of the initial noise.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// How many entries of `timesteps` one inference step takes (Heun: 2).
    fn order(&self) -> usize {
        1
    }

    /// Scales the UNet input at step `index` (σ-parameterised samplers divide by √(σ²+1)).
    fn scale_model_input(&self, sample: Tensor<4>, _index: usize) -> Tensor<4> {
        sample
    }

    /// Advances `sample` from step `index` to the next, given the UNet's `model_output`.
    /// Steps must be taken in order.
    fn step(
        &mut self,
        model_output: Tensor<4>,
        index: usize,
        sample: Tensor<4>,
        noise: &mut dyn NoiseSource,
    ) -> Tensor<4>;

    /// Noises a clean `original` to the level of step `index` (img2img's starting point).
    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, index: usize) -> Tensor<4>;
}

/// The scheduler names accepted everywhere (CLI, JS API), with their diffusers classes.
pub const SCHEDULERS: &[(&str, &str)] = &[
    ("ddim", "DDIMScheduler"),
    ("euler", "EulerDiscreteScheduler"),
    ("euler-a", "EulerAncestralDiscreteScheduler"),
    ("dpmpp-2m", "DPMSolverMultistepScheduler"),
    (
        "dpmpp-2m-karras",
        "DPMSolverMultistepScheduler + use_karras_sigmas",
    ),
    ("heun", "HeunDiscreteScheduler"),
    ("pndm", "PNDMScheduler"),
    ("unipc", "UniPCMultistepScheduler"),
    ("lcm", "LCMScheduler"),
    ("ddpm", "DDPMScheduler"),
];

/// The name of the scheduler a model ships with (its config's `_class_name`).
pub fn name_of_class(config: &SchedulerConfig) -> Option<&'static str> {
    let class = config.class_name.as_deref()?;
    let karras = config.use_karras_sigmas == Some(true);
    match class {
        "DPMSolverMultistepScheduler" if karras => Some("dpmpp-2m-karras"),
        "DPMSolverMultistepScheduler" => Some("dpmpp-2m"),
        _ => SCHEDULERS
            .iter()
            .find(|(_, c)| *c == class)
            .map(|(name, _)| *name),
    }
}

/// Builds scheduler `name` from `config` for `steps` inference steps. `eta` is DDIM's η.
pub fn build(
    name: &str,
    config: &SchedulerConfig,
    steps: usize,
    eta: f64,
) -> Result<Box<dyn Scheduler>> {
    if steps == 0 {
        return Err(Error::invalid("steps", "must be at least 1"));
    }
    if steps > config.num_train_timesteps() {
        return Err(Error::invalid(
            "steps",
            format!(
                "{steps} exceeds the {} training timesteps",
                config.num_train_timesteps()
            ),
        ));
    }
    if !eta.is_finite() || !(0.0..=1.0).contains(&eta) {
        return Err(Error::invalid("eta", format!("{eta} is not in [0, 1]")));
    }
    let scheduler: Box<dyn Scheduler> = match name {
        "ddim" => Box::new(ddim::Ddim::new(config, steps, eta)),
        "euler" => Box::new(euler::Euler::new(config, steps)),
        "euler-a" => Box::new(euler_ancestral::EulerAncestral::new(config, steps)),
        "dpmpp-2m" => Box::new(dpm_solver::DpmSolver::new(config, steps, false)),
        "dpmpp-2m-karras" => Box::new(dpm_solver::DpmSolver::new(config, steps, true)),
        "heun" => Box::new(heun::Heun::new(config, steps)),
        "pndm" => Box::new(pndm::Pndm::new(config, steps)),
        "unipc" => Box::new(unipc::UniPc::new(config, steps)),
        "lcm" => Box::new(lcm::Lcm::new(config, steps)),
        "ddpm" => Box::new(ddpm::Ddpm::new(config, steps)),
        other => {
            let names: Vec<&str> = SCHEDULERS.iter().map(|(n, _)| *n).collect();
            return Err(Error::invalid(
                "scheduler",
                format!("unknown scheduler {other:?} (valid: {})", names.join(", ")),
            ));
        }
    };
    // Every timestep the UNet will see must be a training timestep (ᾱ is looked up by it).
    let n = config.num_train_timesteps() as f64;
    if let Some(t) = scheduler
        .timesteps()
        .iter()
        .find(|t| !(t.is_finite() && **t >= 0.0 && **t < n))
    {
        return Err(Error::invalid(
            "scheduler",
            format!(
                "{name} with this config's timestep_spacing/steps_offset puts a step at \
                 timestep {t}, outside the {n} training timesteps"
            ),
        ));
    }
    Ok(scheduler)
}
