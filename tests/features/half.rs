//! Half precision on the GPU (wgpu; lavapipe offers `shader-f16`, so CI runs it): one UNet
//! call and the whole pipeline in f16 against diffusers' float32 goldens, for every
//! scheduler, on the SD 1.x-like and SD 2.x-like (v-prediction) fixtures and a second seed
//! of random weights of each. The limit of each case is diffusers' own float16 error on it
//! (scripts/make_half_fixtures.py: torch fp16, same weights and inputs) times 1.5, plus a
//! small floor: as close as PyTorch's half precision gets, not a figure tuned to our output.

use std::collections::VecDeque;

use crate::common::{Goldens, MODELS, model_dir, rel_l2, to_f64};
use burn::prelude::*;
use burn::tensor::DType;
use webdiffusion::device::{self, Backend};
use webdiffusion::files::DirFiles;
use webdiffusion::load;
use webdiffusion::models::unet::Conditioning;
use webdiffusion::pipeline::{Request, StableDiffusion};
use webdiffusion::quant::Precision;
use webdiffusion::schedulers::NoiseSource;

/// The wgpu device when it has f16 arithmetic; `None` (skipped) otherwise, unless CI asks
/// for wgpu (WEBDIFFUSION_TEST_WGPU=1), where a missing adapter or f16 is a failure.
fn f16_device() -> Option<Device> {
    let required = std::env::var("WEBDIFFUSION_TEST_WGPU").as_deref() == Ok("1");
    let device = match device::open(Some(Backend::Wgpu)) {
        Ok((_, device)) => device,
        Err(e) if required => panic!("WEBDIFFUSION_TEST_WGPU=1 but {e}"),
        Err(_) => return None,
    };
    match device::compute_dtype(Backend::Wgpu, &device, None) {
        Ok(DType::F16) => Some(device),
        _ if required => panic!("the wgpu adapter has no f16"),
        _ => None,
    }
}

/// The fixtures with diffusers' float16 errors beside their goldens.
const HALF_MODELS: &[&str] = &["sd1-tiny", "sd2-tiny", "sd1-tiny-b", "sd2-tiny-b"];

/// Our f16 error may be this much larger than diffusers' own float16 error on the case…
const OF_DIFFUSERS: f64 = 1.5;
/// …plus this (golden bits differ between CPUs by ~1e-6; f16 itself rounds at 5e-4).
const FLOOR: f64 = 1e-4;

/// diffusers' float16 errors on one model's cases (goldens/half-{model}.safetensors).
struct HalfErrors(Goldens);

impl HalfErrors {
    fn load(model: &str) -> Self {
        HalfErrors(Goldens::load(&format!("half-{model}")))
    }

    /// The limit for the case whose diffusers error is stored under `key`
    /// (`ddim.fp16_rel_l2`, `unet.fp16_rel_l2.{k}`): 1.5 × that error, plus the floor.
    fn limit(&self, key: &str) -> f64 {
        OF_DIFFUSERS * self.0.values(key)[0] + FLOOR
    }

    /// Fails `what` if `err` is past the limit of the case stored under `key`.
    fn check(&self, what: &str, key: &str, err: f64) {
        let limit = self.limit(key);
        eprintln!("{what} f16: rel-L2 {err:.2e} (limit {limit:.2e})");
        assert!(
            err <= limit,
            "{what} f16: rel-L2 {err:e}, limit {limit:e} \
             (1.5 × diffusers' float16 error + {FLOOR:e})"
        );
    }
}

struct Recorded(VecDeque<Tensor<4>>);

impl NoiseSource for Recorded {
    fn noise(&mut self, _shape: [usize; 4], _device: &Device) -> Tensor<4> {
        self.0
            .pop_front()
            .expect("more noise drawn than diffusers did")
    }
}

fn run(pipe: &StableDiffusion, goldens: &Goldens, scheduler: &str, device: &Device) -> Vec<f64> {
    let mut r = Request::new("a photograph of an astronaut riding a horse");
    r.negative_prompt = Some("blurry, low quality".into());
    r.steps = Some(8);
    r.guidance = 7.5;
    r.scheduler = Some(scheduler.into());
    r.latents = Some(goldens.tensor::<4>("latents", device));
    let mut noise = VecDeque::new();
    while goldens.has(&format!("{scheduler}.noise.{}", noise.len())) {
        let key = format!("{scheduler}.noise.{}", noise.len());
        noise.push_back(goldens.tensor::<4>(&key, device));
    }
    let out = pipe
        .generate_with_noise(&r, Box::new(Recorded(noise)), &mut |_, _, _| true)
        .unwrap();
    to_f64(out.image)
}

#[test]
fn every_scheduler_in_f16_stays_near_diffusers_float32() {
    let Some(device) = f16_device() else {
        eprintln!("skipping: no wgpu adapter with f16");
        return;
    };
    for model in HALF_MODELS {
        let goldens = Goldens::load(&format!("pipeline-{model}"));
        let half = HalfErrors::load(model);
        let pipe =
            StableDiffusion::load_with(&DirFiles(model_dir(model)), &device, DType::F16).unwrap();
        assert_eq!(
            pipe.unet("test").unwrap().conv_in.weight.val().dtype(),
            DType::F16,
            "weights in f16"
        );
        for scheduler in [
            "ddim",
            "euler",
            "euler-a",
            "dpmpp-2m",
            "dpmpp-2m-karras",
            "heun",
            "pndm",
            "unipc",
        ] {
            let image = run(&pipe, &goldens, scheduler, &device);
            let err = rel_l2(&image, goldens.values(&format!("{scheduler}.image")));
            half.check(
                &format!("{model} {scheduler} image"),
                &format!("{scheduler}.fp16_rel_l2"),
                err,
            );
        }
    }
}

#[test]
fn one_unet_call_in_f16_stays_near_diffusers_float32() {
    let Some(device) = f16_device() else {
        eprintln!("skipping: no wgpu adapter with f16");
        return;
    };
    for model in HALF_MODELS {
        let goldens = Goldens::load(model);
        let half = HalfErrors::load(model);
        let (_, unet) = load::unet(&DirFiles(model_dir(model)), &device, DType::F16).unwrap();
        let sample = goldens.tensor::<4>("unet.sample", &device).cast(DType::F16);
        let context = goldens
            .tensor::<3>("unet.encoder_hidden_states", &device)
            .cast(DType::F16);
        for k in 0..4 {
            let t = goldens.values(&format!("unet.timestep.{k}"))[0] as f32;
            let out = unet.forward(
                sample.clone(),
                t,
                &Conditioning::text(context.clone()),
                None,
            );
            let err = rel_l2(&to_f64(out), goldens.values(&format!("unet.out.{k}")));
            half.check(
                &format!("{model} UNet t={t}"),
                &format!("unet.fp16_rel_l2.{k}"),
                err,
            );
        }
    }
}

#[test]
fn packs_in_f16_stay_near_diffusers_float32() {
    let Some(device) = f16_device() else {
        eprintln!("skipping: no wgpu adapter with f16");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for model in MODELS {
        let goldens = Goldens::load(&format!("pipeline-{model}"));
        // f16 weights computed in f16 hold the f16 limits; q8 weights their own.
        for (precision, limit) in [
            (
                Precision::F16,
                HalfErrors::load(model).limit("ddim.fp16_rel_l2"),
            ),
            (Precision::Q8, 5e-3),
        ] {
            let out = dir.path().join(format!("{model}-{}", precision.name()));
            webdiffusion::pack::convert::convert(&DirFiles(model_dir(model)), precision, &out)
                .unwrap();
            let files = webdiffusion::pack::open_dir(&out).unwrap();
            let pipe = StableDiffusion::load_with(&*files, &device, DType::F16).unwrap();
            let image = run(&pipe, &goldens, "ddim", &device);
            let err = rel_l2(&image, goldens.values("ddim.image"));
            eprintln!(
                "{model} {} pack in f16: image rel-L2 {err:.2e}",
                precision.name()
            );
            assert!(
                err <= limit,
                "{model} {} pack in f16: image rel-L2 {err:e}",
                precision.name()
            );
        }
    }
}
