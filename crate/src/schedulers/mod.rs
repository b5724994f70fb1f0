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
mod flow_euler;
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

/// How a scheduler moves between noise levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The DDPM family: discrete training timesteps over a schedule of ᾱ (SD 1.x/2.x/XL).
    Discrete,
    /// Flow matching: σ from 1 to 0 along a straight path (SD3, FLUX).
    Flow,
}

/// A scheduler the engine runs: the one list from which the CLI's help, the error messages
/// and the model's own choice are derived (the TypeScript union `SchedulerName` in
/// `web/types.rs` is checked against it by a test).
pub struct Entry {
    /// Its name in the CLI, the JS API and PNG parameters.
    pub name: &'static str,
    /// The diffusers class, and the option that selects it where one class has two.
    pub class: &'static str,
    pub kind: Kind,
    /// diffusers' `set_timesteps`: the scheduler for `steps` steps, η for DDIM.
    build: fn(&SchedulerConfig, usize, f64) -> Box<dyn Scheduler>,
}

pub const SCHEDULERS: &[Entry] = &[
    discrete("ddim", "DDIMScheduler", |c, steps, eta| {
        Box::new(ddim::Ddim::new(c, steps, eta))
    }),
    discrete("euler", "EulerDiscreteScheduler", |c, steps, _| {
        Box::new(euler::Euler::new(c, steps))
    }),
    discrete(
        "euler-a",
        "EulerAncestralDiscreteScheduler",
        |c, steps, _| Box::new(euler_ancestral::EulerAncestral::new(c, steps)),
    ),
    discrete("dpmpp-2m", "DPMSolverMultistepScheduler", |c, steps, _| {
        Box::new(dpm_solver::DpmSolver::new(c, steps, false))
    }),
    discrete(
        "dpmpp-2m-karras",
        "DPMSolverMultistepScheduler + use_karras_sigmas",
        |c, steps, _| Box::new(dpm_solver::DpmSolver::new(c, steps, true)),
    ),
    discrete("heun", "HeunDiscreteScheduler", |c, steps, _| {
        Box::new(heun::Heun::new(c, steps))
    }),
    discrete("pndm", "PNDMScheduler", |c, steps, _| {
        Box::new(pndm::Pndm::new(c, steps))
    }),
    discrete("unipc", "UniPCMultistepScheduler", |c, steps, _| {
        Box::new(unipc::UniPc::new(c, steps))
    }),
    discrete("lcm", "LCMScheduler", |c, steps, _| {
        Box::new(lcm::Lcm::new(c, steps))
    }),
    discrete("ddpm", "DDPMScheduler", |c, steps, _| {
        Box::new(ddpm::Ddpm::new(c, steps))
    }),
    Entry {
        name: "flow-euler",
        class: "FlowMatchEulerDiscreteScheduler",
        kind: Kind::Flow,
        build: |c, steps, _| Box::new(flow_euler::FlowEuler::new(c, steps)),
    },
];

const fn discrete(
    name: &'static str,
    class: &'static str,
    build: fn(&SchedulerConfig, usize, f64) -> Box<dyn Scheduler>,
) -> Entry {
    Entry {
        name,
        class,
        kind: Kind::Discrete,
        build,
    }
}

/// The scheduler called `name`.
pub fn find(name: &str) -> Option<&'static Entry> {
    SCHEDULERS.iter().find(|e| e.name == name)
}

/// The names, comma-separated, for help texts and messages.
pub fn names() -> String {
    let names: Vec<&str> = SCHEDULERS.iter().map(|e| e.name).collect();
    names.join(", ")
}

/// The names of the schedulers of `kind`, comma-separated.
pub fn names_of(kind: Kind) -> String {
    let names: Vec<&str> = SCHEDULERS
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.name)
        .collect();
    names.join(", ")
}

/// The scheduler a model ships with (its config's `_class_name`): `Ok(None)` when the
/// config names no class, an error naming the class when it is not one the engine runs
/// (a flow-matching model must not silently run DDIM).
pub fn of_config(config: &SchedulerConfig) -> Result<Option<&'static Entry>> {
    let Some(class) = config.class_name.as_deref() else {
        return Ok(None);
    };
    let karras = config.use_karras_sigmas == Some(true);
    let name = match class {
        "DPMSolverMultistepScheduler" if karras => "dpmpp-2m-karras",
        _ => match SCHEDULERS.iter().find(|e| e.class == class) {
            Some(entry) => entry.name,
            None => {
                return Err(Error::invalid(
                    "scheduler",
                    format!(
                        "the model's scheduler_config.json names {class:?}, a scheduler \
                         webdiffusion does not run; choose one of {}",
                        names()
                    ),
                ));
            }
        },
    };
    Ok(find(name))
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
    let Some(entry) = find(name) else {
        return Err(Error::invalid(
            "scheduler",
            format!("unknown scheduler {name:?} (valid: {})", names()),
        ));
    };
    let scheduler = (entry.build)(config, steps, eta);
    // Every timestep the UNet will see must be a training timestep (ᾱ is looked up by it);
    // flow matching's run from σ = 1 (t = N) down.
    let n = config.num_train_timesteps() as f64;
    let inside = |t: f64| match entry.kind {
        Kind::Discrete => t >= 0.0 && t < n,
        Kind::Flow => t >= 0.0 && t <= n,
    };
    if let Some(t) = scheduler
        .timesteps()
        .iter()
        .find(|t| !(t.is_finite() && inside(**t)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_typescript_union_lists_the_registry() {
        // web/types.rs is compiled for wasm only: read its TypeScript as text.
        let types = include_str!("../web/types.rs");
        let union = types
            .split("export type SchedulerName =")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .expect("web/types.rs declares SchedulerName");
        let names: Vec<&str> = union
            .split('|')
            .map(|n| n.trim().trim_matches('"'))
            .collect();
        let registry: Vec<&str> = SCHEDULERS.iter().map(|e| e.name).collect();
        assert_eq!(names, registry);
    }

    #[test]
    fn a_model_scheduler_is_found_by_class_and_an_unknown_class_is_refused_by_name() {
        let config = |json: &str| SchedulerConfig::parse("scheduler_config.json", json).unwrap();
        let of = |json: &str| of_config(&config(json)).unwrap().map(|e| e.name);
        assert_eq!(of(r#"{"_class_name": "PNDMScheduler"}"#), Some("pndm"));
        assert_eq!(
            of(r#"{"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": true}"#),
            Some("dpmpp-2m-karras")
        );
        assert_eq!(
            of(r#"{"_class_name": "DPMSolverMultistepScheduler"}"#),
            Some("dpmpp-2m")
        );
        assert_eq!(of("{}"), None);
        assert_eq!(
            of(r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}"#),
            Some("flow-euler")
        );
        let err = of_config(&config(r#"{"_class_name": "FlowMatchLCMScheduler"}"#))
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("FlowMatchLCMScheduler") && err.contains("ddim, euler"),
            "{err}"
        );
        let err = SchedulerConfig::parse(
            "s/scheduler_config.json",
            r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": true}"#,
        )
        .expect_err("refused")
        .to_string();
        assert!(err.contains("s/scheduler_config.json") && err.contains("use_dynamic_shifting"));
    }
}
