//! Shared helpers for the integration tests: fixtures, goldens, devices and comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::prelude::*;
use safetensors::tensor::Dtype;

pub const MODELS: &[&str] = &["sd1-tiny", "sd2-tiny"];

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

pub fn model_dir(model: &str) -> PathBuf {
    fixtures().join(model)
}

/// Golden tensors computed by diffusers/transformers (scripts/make_fixtures.py).
pub struct Goldens {
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Goldens {
    /// `tests/fixtures/goldens/{name}.safetensors`.
    pub fn load(name: &str) -> Self {
        Self::file(&format!("goldens/{name}.safetensors"))
    }

    /// The golden file at `path` under `tests/fixtures`.
    pub fn file(path: &str) -> Self {
        let path = fixtures().join(path);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("goldens parse");
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let data = view.data();
                let values: Vec<f64> = match view.dtype() {
                    Dtype::F32 => data
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                        .collect(),
                    Dtype::I64 => data
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                        .collect(),
                    other => panic!("golden {name}: unexpected dtype {other:?}"),
                };
                (name, (view.shape().to_vec(), values))
            })
            .collect();
        Self { tensors }
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn values(&self, name: &str) -> &[f64] {
        &self.get(name).1
    }

    pub fn shape(&self, name: &str) -> &[usize] {
        &self.get(name).0
    }

    fn get(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("no golden tensor {name}"))
    }

    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.values(name).iter().map(|&v| v as u32).collect()
    }

    pub fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let (shape, values) = self.get(name);
        let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        let shape: [usize; D] = shape.clone().try_into().expect("golden rank");
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

pub fn prompts() -> Vec<String> {
    let path = fixtures().join("goldens/prompts.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("prompts.json")).expect("JSON")
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_l2(actual: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let diff: f64 = actual
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).powi(2))
        .sum();
    let norm: f64 = expected.iter().map(|b| b * b).sum();
    (diff / norm.max(1e-30)).sqrt()
}

pub fn to_f64<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.cast(burn::tensor::DType::F32)
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 data")
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Asserts that `actual` matches golden `name` in shape and to `tol` relative L2.
pub fn assert_close<const D: usize>(
    goldens: &Goldens,
    name: &str,
    actual: Tensor<D>,
    tol: f64,
    what: &str,
) {
    assert_eq!(
        actual.dims().to_vec(),
        goldens.shape(name),
        "{what}: shape of {name}"
    );
    let actual = to_f64(actual);
    assert!(
        actual.iter().all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    let err = rel_l2(&actual, goldens.values(name));
    assert!(err <= tol, "{what}: {name} rel-L2 {err:e} > {tol:e}");
}

/// The devices to test on: the CPU backend always, and wgpu when an adapter exists.
/// WEBDIFFUSION_TEST_WGPU=1 makes a missing adapter a failure (CI), =0 skips wgpu.
pub fn devices() -> Vec<(&'static str, Device)> {
    let mut devices = vec![("cpu", Device::flex())];
    let wanted = std::env::var("WEBDIFFUSION_TEST_WGPU").unwrap_or_default();
    if wanted != "0" {
        match webdiffusion::device::open(Some(webdiffusion::device::Backend::Wgpu)) {
            Ok((_, device)) => devices.push(("wgpu", device)),
            Err(e) if wanted == "1" => panic!("WEBDIFFUSION_TEST_WGPU=1 but {e}"),
            Err(e) => eprintln!("skipping wgpu: {e}"),
        }
    }
    devices
}

/// Runs the CLI on the CPU backend.
pub fn webdiffusion(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_webdiffusion"))
        .args(args)
        .args(["--backend", "cpu"])
        .output()
        .expect("run webdiffusion")
}

pub fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts exit status 2, one message mentioning every one of `needles`, and no output.
pub fn fails_with(out: &Output, needles: &[&str], out_file: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal failure"),
        "panic: {stderr}"
    );
    assert!(
        !out_file.exists(),
        "partial output left at {}",
        out_file.display()
    );
}

/// Writes golden `name` of `goldens` as the f32 tensor `as_name` of a safetensors file.
pub fn write_golden(goldens: &Goldens, name: &str, as_name: &str, path: &Path) {
    let bytes: Vec<u8> = goldens
        .values(name)
        .iter()
        .flat_map(|v| (*v as f32).to_le_bytes())
        .collect();
    let tensors = [(
        as_name.to_string(),
        safetensors::Dtype::F32,
        goldens.shape(name).to_vec(),
        bytes,
    )];
    std::fs::write(
        path,
        webdiffusion::weights::safetensors::serialize(&tensors).unwrap(),
    )
    .unwrap();
}

/// The f32 tensor `name` of the safetensors file at `path`.
pub fn read_tensor(path: &Path, name: &str) -> Vec<f64> {
    let bytes = std::fs::read(path).unwrap();
    let file = path.display().to_string();
    let st = webdiffusion::weights::safetensors::SafetensorsFile::parse(&bytes, &file).unwrap();
    let (info, data) = st.get(name).unwrap();
    webdiffusion::weights::floats(info.dtype, data)
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Copies the folder `src` to `dst`, recursively.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Rewrites the safetensors file at `path` through `edit` on its (name, dtype, shape, bytes).
pub fn rewrite_tensors(path: &Path, edit: impl Fn(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// The prompt and negative prompt of the SDXL and SD3 golden runs (goldens/pipeline.json).
pub const GOLDEN_PROMPT: &str = "a photograph of an astronaut riding a horse";
pub const GOLDEN_NEGATIVE: &str = "blurry, low quality";

/// `generate` arguments for the `euler` golden run of the SDXL and SD3 fixtures (4 steps,
/// guidance 5, the golden prompts) of `model` from `latents` into `out`.
pub fn euler_args<'a>(model: &'a str, latents: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "generate",
        "--model",
        model,
        "--prompt",
        GOLDEN_PROMPT,
        "--negative-prompt",
        GOLDEN_NEGATIVE,
        "--steps",
        "4",
        "--guidance",
        "5",
        "--latents",
        latents,
        "--out-tensor",
        out,
    ]
}
