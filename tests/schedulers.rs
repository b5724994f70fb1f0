//! Every scheduler against diffusers: timesteps, initial noise σ, a whole trajectory with a
//! stand-in model, `add_noise`, and img2img's timestep tail, on both base configs
//! (SD 1.5's ε-prediction PNDM config and SD 2.1's v-prediction DDIM config). Stochastic
//! schedulers are fed the noise diffusers drew.

mod common;

use std::collections::VecDeque;

use burn::prelude::*;
use common::{Goldens, fixtures, rel_l2, to_f64};
use webdiffusion::schedulers::{self, NoiseSource, SchedulerConfig};

const NAMES: &[&str] = &[
    "ddim",
    "ddim-eta",
    "euler",
    "euler-a",
    "dpmpp-2m",
    "dpmpp-2m-karras",
    "heun",
    "pndm",
    "unipc",
    "lcm",
    "ddpm",
];

struct Recorded(VecDeque<Tensor<4>>);

impl NoiseSource for Recorded {
    fn noise(&mut self, _shape: [usize; 4], _device: &Device) -> Tensor<4> {
        self.0
            .pop_front()
            .expect("the scheduler drew more noise than diffusers")
    }
}

fn config(cfg: &str) -> SchedulerConfig {
    let model = if cfg == "eps" { "sd1-tiny" } else { "sd2-tiny" };
    let path = fixtures().join(format!("{model}/scheduler/scheduler_config.json"));
    SchedulerConfig::parse(
        "scheduler_config.json",
        &std::fs::read_to_string(path).unwrap(),
    )
    .unwrap()
}

fn build(name: &str, config: &SchedulerConfig, steps: usize) -> Box<dyn schedulers::Scheduler> {
    let (name, eta) = if name == "ddim-eta" {
        ("ddim", 0.5)
    } else {
        (name, 0.0)
    };
    schedulers::build(name, config, steps, eta).unwrap()
}

#[test]
fn schedulers_match_diffusers() {
    let goldens = Goldens::load("schedulers");
    let device = Device::flex();
    let x0 = goldens.tensor::<4>("trajectory.x0", &device);
    let c = goldens.tensor::<4>("trajectory.c", &device);
    let mut checked = 0;
    for cfg in ["eps", "v"] {
        let config = config(cfg);
        for name in NAMES {
            for steps in [1, 4, 8, 20] {
                let p = format!("{cfg}.{name}.{steps}.");
                if !goldens.has(&format!("{p}timesteps")) {
                    continue;
                }
                let what = format!("{cfg} {name} {steps} steps");
                let mut s = build(name, &config, steps);
                let expected = goldens.values(&format!("{p}timesteps"));
                assert_eq!(
                    s.timesteps().len(),
                    expected.len(),
                    "{what}: timesteps {:?}",
                    s.timesteps()
                );
                for (a, b) in s.timesteps().iter().zip(expected) {
                    assert!(
                        (a - b).abs() <= 1e-3 * b.abs().max(1.0),
                        "{what}: timesteps {:?} vs {expected:?}",
                        s.timesteps()
                    );
                }
                let sigma = goldens.values(&format!("{p}init_noise_sigma"))[0];
                assert!(
                    (s.init_noise_sigma() - sigma).abs() <= 1e-5 * sigma.max(1.0),
                    "{what}: init σ {} vs {sigma}",
                    s.init_noise_sigma()
                );

                let mut noise = Recorded(
                    (0..)
                        .map_while(|k| {
                            let key = format!("{p}noise.{k}");
                            goldens
                                .has(&key)
                                .then(|| goldens.tensor::<4>(&key, &device))
                        })
                        .collect(),
                );
                let coef = goldens.values(&format!("{p}coef")).to_vec();
                let mut x = x0.clone() * s.init_noise_sigma();
                let n = s.timesteps().len();
                assert_eq!(coef.len(), n, "{what}: one model coefficient per step");
                for (i, &coef_i) in coef.iter().enumerate() {
                    let input = s.scale_model_input(x.clone(), i);
                    if i == 0 || i == n - 1 {
                        let err = rel_l2(
                            &to_f64(input.clone()),
                            goldens.values(&format!("{p}scaled.{i}")),
                        );
                        assert!(err < 1e-4, "{what}: scaled input {i}: {err:e}");
                    }
                    let output = input * 0.5 + c.clone() * coef_i;
                    x = s.step(output, i, x, &mut noise);
                    let key = format!("{p}out.{i}");
                    if goldens.has(&key) {
                        let err = rel_l2(&to_f64(x.clone()), goldens.values(&key));
                        assert!(err < 1e-4, "{what}: after step {i}: rel-L2 {err:e}");
                    }
                }
                assert!(
                    noise.0.is_empty(),
                    "{what}: {} recorded noises unused",
                    noise.0.len()
                );
                let err = rel_l2(&to_f64(x), goldens.values(&format!("{p}final")));
                assert!(err < 1e-4, "{what}: final rel-L2 {err:e}");
                checked += 1;
            }

            let s = build(name, &config, 8);
            let noised = s.add_noise(x0.clone(), c.clone(), 2);
            let err = rel_l2(
                &to_f64(noised),
                goldens.values(&format!("{cfg}.{name}.add_noise")),
            );
            assert!(err < 1e-5, "{cfg} {name}: add_noise rel-L2 {err:e}");
            let start = goldens.values(&format!("{cfg}.{name}.img2img_t_start"))[0] as usize;
            assert_eq!(start, 4, "8 steps at strength 0.6 skip 4");
            let tail = &s.timesteps()[start * s.order()..];
            let expected = goldens.values(&format!("{cfg}.{name}.img2img_timesteps"));
            assert_eq!(tail.len(), expected.len(), "{cfg} {name}: img2img tail");
            for (a, b) in tail.iter().zip(expected) {
                assert!(
                    (a - b).abs() <= 1e-3 * b.abs().max(1.0),
                    "{cfg} {name}: img2img {tail:?} vs {expected:?}"
                );
            }
        }
    }
    assert!(
        checked >= 2 * NAMES.len() * 2,
        "only {checked} runs checked"
    );
}

#[test]
fn bad_scheduler_requests_are_refused() {
    let config = config("eps");
    let err = schedulers::build("karras-magic", &config, 8, 0.0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("karras-magic") && err.contains("dpmpp-2m") && err.contains("unipc"),
        "{err}"
    );
    let err = schedulers::build("ddim", &config, 0, 0.0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("steps"), "{err}");
    let err = SchedulerConfig::parse("s.json", r#"{"prediction_type": "flow"}"#)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("s.json") && err.contains("prediction_type"),
        "{err}"
    );
}
