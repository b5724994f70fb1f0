//! The whole pipeline against diffusers' StableDiffusionPipeline on both tiny fixtures:
//! txt2img with every deterministic scheduler (8 steps, CFG 7.5, given latents), guidance 1,
//! Euler-a with diffusers' noise, and img2img at strength 0.6. Final latents and image at
//! rel-L2 ≤ 1e-3. Also seeds, cancellation and bad requests.

mod common;

use std::collections::VecDeque;

use burn::prelude::*;
use common::{Goldens, MODELS, fixtures, model_dir, rel_l2, to_f64};
use webdiffusion::files::DirFiles;
use webdiffusion::image;
use webdiffusion::pipeline::{Request, StableDiffusion};
use webdiffusion::schedulers::NoiseSource;

const TOL: f64 = 1e-3;
const PROMPT: &str = "a photograph of an astronaut riding a horse";
const NEGATIVE: &str = "blurry, low quality";

struct Recorded(VecDeque<Tensor<4>>);

impl NoiseSource for Recorded {
    fn noise(&mut self, _shape: [usize; 4], _device: &Device) -> Tensor<4> {
        self.0
            .pop_front()
            .expect("more noise drawn than diffusers did")
    }
}

fn request(goldens: &Goldens, device: &Device, scheduler: Option<&str>) -> Request {
    let mut r = Request::new(PROMPT);
    r.negative_prompt = Some(NEGATIVE.into());
    r.steps = Some(8);
    r.guidance = 7.5;
    r.scheduler = scheduler.map(String::from);
    r.latents = Some(goldens.tensor::<4>("latents", device));
    r
}

fn check(
    goldens: &Goldens,
    key: &str,
    pipe: &StableDiffusion,
    r: &Request,
    noise: Vec<Tensor<4>>,
    what: &str,
) {
    let rng = Box::new(Recorded(noise.into()));
    let out = pipe
        .generate_with_noise(r, rng, &mut |_, _, _| true)
        .unwrap();
    let err = rel_l2(
        &to_f64(out.latents),
        goldens.values(&format!("{key}.latents")),
    );
    assert!(err <= TOL, "{what}: latents rel-L2 {err:e}");
    let err = rel_l2(&to_f64(out.image), goldens.values(&format!("{key}.image")));
    assert!(err <= TOL, "{what}: image rel-L2 {err:e}");
}

#[test]
fn txt2img_matches_diffusers() {
    let device = Device::flex();
    for name in MODELS {
        let goldens = Goldens::load(&format!("pipeline-{name}"));
        let pipe = StableDiffusion::load(&DirFiles(model_dir(name)), &device).unwrap();
        for scheduler in [
            "ddim",
            "euler",
            "dpmpp-2m",
            "dpmpp-2m-karras",
            "heun",
            "pndm",
            "unipc",
        ] {
            let r = request(&goldens, &device, Some(scheduler));
            check(
                &goldens,
                scheduler,
                &pipe,
                &r,
                vec![],
                &format!("{name} {scheduler}"),
            );
        }
        check(
            &goldens,
            "own",
            &pipe,
            &request(&goldens, &device, None),
            vec![],
            &format!("{name} own"),
        );

        let mut r = request(&goldens, &device, None);
        r.guidance = 1.0;
        r.negative_prompt = None;
        check(
            &goldens,
            "guidance1",
            &pipe,
            &r,
            vec![],
            &format!("{name} guidance 1"),
        );

        let noise = (0..8)
            .map(|k| goldens.tensor::<4>(&format!("euler-a.noise.{k}"), &device))
            .collect();
        let r = request(&goldens, &device, Some("euler-a"));
        check(
            &goldens,
            "euler-a",
            &pipe,
            &r,
            noise,
            &format!("{name} euler-a"),
        );
    }
}

#[test]
fn img2img_matches_diffusers() {
    let device = Device::flex();
    for name in MODELS {
        let goldens = Goldens::load(&format!("pipeline-{name}"));
        let pipe = StableDiffusion::load(&DirFiles(model_dir(name)), &device).unwrap();
        let png =
            image::read_png(&fixtures().join(format!("goldens/{name}-vae-input.png"))).unwrap();
        for (key, scheduler) in [("own", None), ("euler", Some("euler"))] {
            let mut r = request(&goldens, &device, scheduler);
            r.latents = None;
            r.init_image = Some(image::image_to_tensor(&png, &device));
            r.strength = 0.6;
            r.noise = Some(goldens.tensor::<4>("img2img.noise", &device));
            check(
                &goldens,
                &format!("img2img.{key}"),
                &pipe,
                &r,
                vec![],
                &format!("{name} img2img {key}"),
            );
        }
    }
}

#[test]
fn seeds_reproduce_and_differ_and_cancel_stops() {
    let device = Device::flex();
    let pipe = StableDiffusion::load(&DirFiles(model_dir("sd1-tiny")), &device).unwrap();
    let run = |seed: u64| {
        let mut r = Request::new(PROMPT);
        r.steps = Some(3);
        r.seed = seed;
        to_f64(pipe.generate(&r, &mut |_, _, _| true).unwrap().latents)
    };
    let a = run(1);
    assert_eq!(a, run(1), "same seed, same latents");
    assert!(rel_l2(&run(2), &a) > 0.1, "different seeds differ");

    let mut r = Request::new(PROMPT);
    r.steps = Some(5);
    r.scheduler = Some("ddim".into());
    let mut seen = Vec::new();
    let result = pipe.generate(&r, &mut |step, total, _| {
        seen.push((step, total));
        step < 2
    });
    assert!(matches!(result, Err(webdiffusion::Error::Cancelled)));
    assert_eq!(
        seen,
        vec![(1, 5), (2, 5)],
        "progress reported per step, stopped after 2"
    );
}

#[test]
fn bad_requests_are_refused() {
    let device = Device::flex();
    let pipe = StableDiffusion::load(&DirFiles(model_dir("sd1-tiny")), &device).unwrap();
    let fails = |r: Request, needle: &str| {
        let err = pipe
            .generate(&r, &mut |_, _, _| true)
            .err()
            .expect("must fail")
            .to_string();
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    };
    let mut r = Request::new("x");
    r.width = Some(30);
    fails(r, "width");
    let mut r = Request::new("x");
    r.steps = Some(0);
    fails(r, "steps");
    let mut r = Request::new("x");
    r.scheduler = Some("nope".into());
    fails(r, "valid: ddim");
    let mut r = Request::new("x");
    r.init_image = Some(Tensor::zeros([1, 3, 32, 32], &device));
    r.strength = 1.5;
    fails(r, "strength");
    let mut r = Request::new("x");
    r.latents = Some(Tensor::zeros([1, 4, 5, 5], &device));
    fails(r, "latents");
    let mut r = Request::new("x");
    r.latents = Some(Tensor::full([1, 4, 16, 16], f32::NAN, &device));
    r.steps = Some(2);
    fails(r, "step 1");
}
