//! Property-based fuzzing of everything that reads untrusted bytes: the safetensors reader
//! and key mapping, pack manifests and shards, configs (UNet, VAE, text encoder,
//! scheduler, tokenizer, ControlNet), PNG decoding and LoRA files. Inputs are valid files
//! with one part replaced by an arbitrary value, or arbitrary bytes. The property: no
//! panic, and an error names the file it is about.
//!
//! Each target runs a bounded number of cases (about a minute in all, in release mode);
//! `FUZZ_CASES=20000 cargo test --release --test fuzz` runs longer (see scripts/fuzz.sh).

mod common;

use std::collections::HashMap;
use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use serde_json::{Value, json};

use common::{fixtures, model_dir};
use webdiffusion::component::Component;
use webdiffusion::family::Family;
use webdiffusion::files::{MemoryFiles, ModelFiles};
use webdiffusion::load;
use webdiffusion::models::clip::ClipTextModel;
use webdiffusion::models::controlnet::ControlNetModel;
use webdiffusion::models::unet::UNet2DConditionModel;
use webdiffusion::models::vae::Vae;
use webdiffusion::pipeline::Parts;
use webdiffusion::weights::TensorReader;
use webdiffusion::weights::safetensors::{SafetensorsFile, SafetensorsReader};

/// `cases` runs, or `FUZZ_CASES` when set; failures are not saved into the source tree.
fn config(cases: u32) -> Config {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Every file of `dir` (recursively) under its path relative to `root`.
fn read_tree(root: &Path, dir: &Path, files: &mut HashMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_tree(root, &path, files);
        } else {
            let name = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            files.insert(name, std::fs::read(&path).unwrap());
        }
    }
}

fn memory_model(dir: &Path) -> MemoryFiles {
    let mut files = HashMap::new();
    read_tree(dir, dir, &mut files);
    MemoryFiles {
        base: "model".into(),
        files,
    }
}

/// A JSON value of any kind, weighted towards the numbers configs hold.
fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => any::<i64>().prop_map(|n| json!(n)),
        4 => (0u64..70).prop_map(|n| json!(n)),
        2 => any::<u64>().prop_map(|n| json!(n)),
        2 => any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        1 => Just(json!(null)),
        1 => any::<bool>().prop_map(|b| json!(b)),
        2 => "[a-zA-Z0-9_]{0,24}".prop_map(|s| json!(s)),
        3 => prop::collection::vec(0i64..5000, 0..6).prop_map(|v| json!(v)),
        1 => prop::collection::vec(any::<i64>(), 0..4).prop_map(|v| json!(v)),
        1 => Just(json!({})),
    ]
}

/// Replaces the `index`-th key (modulo their number) of the JSON object `text`.
fn mutate_json(text: &[u8], index: usize, value: Value) -> (String, Vec<u8>) {
    let mut object: serde_json::Map<String, Value> = serde_json::from_slice(text).unwrap();
    let key = object.keys().nth(index % object.len()).unwrap().clone();
    object.insert(key.clone(), value);
    (key, serde_json::to_vec(&object).unwrap())
}

/// The property: `result` is `Ok` or an error naming `file`.
fn named<T>(result: webdiffusion::error::Result<T>, file: &str) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        let message = e.to_string();
        prop_assert!(message.contains(file), "{file} not in: {message}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(400))]

    /// Configs with one value replaced: the whole pipeline builds (lazily: nothing is
    /// allocated), and the scheduler runs every step, or the error names the file.
    #[test]
    fn pipeline_configs(
        component in 0usize..5,
        index in any::<usize>(),
        value in any_value(),
        scheduler in 0usize..10,
        steps in 1usize..60,
    ) {
        let mut files = memory_model(&model_dir("sd1-tiny"));
        let path = [
            "unet/config.json",
            "vae/config.json",
            "text_encoder/config.json",
            "scheduler/scheduler_config.json",
            "tokenizer/tokenizer_config.json",
        ][component];
        let (_, text) = mutate_json(&files.files[path], index, value);
        files.files.insert(path.into(), text);
        let device = Device::flex();
        let parts = Parts::build(&files, &device, DType::F32);
        // A config that no longer fits another component's is named with it: the folder
        // is in the message either way.
        let folder = path.split('/').next().unwrap();
        named(parts.as_ref().map(drop).map_err(clone_error), folder)?;
        if let Ok(parts) = parts {
            let name = webdiffusion::schedulers::SCHEDULERS[scheduler].name;
            let built = webdiffusion::schedulers::build(name, &parts.scheduler_config, steps, 0.0);
            if let Ok(mut scheduler) = built {
                run_scheduler(&mut *scheduler, &device);
            }
            let ids = parts.text.encoders[0].tokenizer.encode("a photo of a cat");
            prop_assert!(ids.is_ok());
            prop_assert_eq!(ids.unwrap().len(), parts.text.encoders[0].tokenizer.max_length());
        }
    }

    /// A ControlNet or TAESD config with one value replaced.
    #[test]
    fn controlnet_and_taesd_configs(
        which in 0usize..2,
        index in any::<usize>(),
        value in any_value(),
    ) {
        let device = Device::flex();
        let (dir, component) = [
            ("controlnet-sd1-tiny", Component::ControlNet),
            ("taesd-tiny", Component::Vae),
        ][which];
        let raw = std::fs::read(fixtures().join(dir).join("config.json")).unwrap();
        let (_, text) = mutate_json(&raw, index, value);
        let path = component.config();
        let files = MemoryFiles {
            base: dir.into(),
            files: HashMap::from([(path.clone(), text)]),
        };
        let file = files.display(&path);
        match component {
            Component::ControlNet => named(load::build::<ControlNetModel>(&files, component, &device).map(drop), &file)?,
            _ => named(load::build::<Vae>(&files, component, &device).map(drop), &file)?,
        }
    }
}

/// Errors are not `Clone`; the message is what is checked.
fn clone_error(e: &webdiffusion::error::Error) -> webdiffusion::error::Error {
    webdiffusion::error::Error::Backend(e.to_string())
}

/// Runs every step of `scheduler` on a tiny latent (the UNet's output stands in as
/// zeros), checking that no index is out of range and the result stays finite.
fn run_scheduler(scheduler: &mut dyn webdiffusion::schedulers::Scheduler, device: &Device) {
    struct Zeros;
    impl webdiffusion::schedulers::NoiseSource for Zeros {
        fn noise(&mut self, shape: [usize; 4], device: &Device) -> Tensor<4> {
            Tensor::zeros(shape, device)
        }
    }
    let mut sample = Tensor::<4>::ones([1, 1, 1, 2], device);
    let n = scheduler.timesteps().len();
    let _ = scheduler.add_noise(sample.clone(), sample.clone(), 0);
    for index in 0..n {
        let input = scheduler.scale_model_input(sample.clone(), index);
        sample = scheduler.step(input.zeros_like(), index, sample, &mut Zeros);
    }
}

/// A small valid safetensors file: three tensors of mixed dtypes.
fn small_safetensors() -> Vec<u8> {
    use safetensors::Dtype;
    let tensors = vec![
        (
            "a.weight".to_string(),
            Dtype::F32,
            vec![2, 3],
            vec![1u8; 24],
        ),
        ("b.bias".to_string(), Dtype::F16, vec![4], vec![2u8; 8]),
        (
            "position_ids".to_string(),
            Dtype::I64,
            vec![1, 2],
            vec![0u8; 16],
        ),
    ];
    webdiffusion::weights::safetensors::serialize(&tensors).unwrap()
}

/// What a reader made of a file: the tensors' names and shapes, or that it failed.
fn streamed(bytes: &[u8], cuts: &[usize]) -> Option<Vec<(String, Vec<usize>)>> {
    let mut reader = SafetensorsReader::default();
    reader.begin("x.safetensors").ok()?;
    let mut out = Vec::new();
    let mut at = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort();
    for cut in cuts.into_iter().chain([bytes.len()]) {
        for (name, data) in reader.push(&bytes[at..cut]).ok()? {
            out.push((name, data.shape().to_vec()));
        }
        at = cut;
    }
    for (name, data) in reader.end().ok()? {
        out.push((name, data.shape().to_vec()));
    }
    Some(out)
}

proptest! {
    #![proptest_config(config(2000))]

    /// Arbitrary bytes, and a valid file with bytes overwritten: parsing whole never
    /// panics, and reading in arbitrary pieces accepts exactly what parsing whole does.
    #[test]
    fn safetensors_reader(
        garbage in prop::collection::vec(any::<u8>(), 0..256),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cuts in prop::collection::vec(any::<usize>(), 0..5),
    ) {
        let _ = SafetensorsFile::parse(&garbage, "x.safetensors");
        let _ = streamed(&garbage, &cuts);
        let mut bytes = small_safetensors();
        let n = bytes.len();
        for (at, value) in edits {
            bytes[at % n] = value;
        }
        let whole = SafetensorsFile::parse(&bytes, "x.safetensors");
        if let Err(e) = &whole {
            prop_assert!(e.to_string().contains("x.safetensors"), "{e}");
        }
        let pieces = streamed(&bytes, &cuts);
        // Whatever parses whole streams (the reader skips integer buffers), and what
        // fails whole fails streamed.
        if whole.is_err() {
            prop_assert!(pieces.is_none());
        }
    }

    /// Arbitrary bytes and mutated real PNGs decode or are refused naming the file.
    #[test]
    fn png_decoding(
        garbage in prop::collection::vec(any::<u8>(), 0..200),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        named(webdiffusion::image::decode_png(&garbage, "x.png").map(drop), "x.png")?;
        let mut png = std::fs::read(fixtures().join("goldens/sd1-tiny-vae-input.png")).unwrap();
        let n = png.len();
        for (at, value) in edits {
            png[at % n] = value;
        }
        named(webdiffusion::image::decode_png(&png, "x.png").map(drop), "x.png")?;
    }
}

proptest! {
    #![proptest_config(config(150))]

    /// The text encoder's weights with a tensor renamed (to an arbitrary name, or another
    /// layout's spelling) or reshaped: the mapping from stored names onto the module
    /// never panics, and the error names the file.
    #[test]
    fn weight_names_and_shapes(
        at in any::<usize>(),
        name in prop_oneof![
            "[a-z0-9_.]{0,60}",
            "text_model\\.(embeddings|encoder\\.layers\\.[0-9]{1,3})\\.[a-z_]{1,12}\\.(weight|bias)",
        ],
        shape in prop::option::of(prop::collection::vec(0usize..70, 0..5)),
    ) {
        let mut files = memory_model(&model_dir("sd1-tiny"));
        let path = "text_encoder/model.safetensors";
        let st = safetensors::SafeTensors::deserialize(&files.files[path]).unwrap();
        let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let n = tensors.len();
        let t = &mut tensors[at % n];
        match shape {
            Some(shape) => {
                t.3 = vec![0; shape.iter().product::<usize>() * t.1.bitsize() / 8];
                t.2 = shape;
            }
            None => t.0 = name,
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        tensors.dedup_by(|a, b| a.0 == b.0);
        let bytes = webdiffusion::weights::safetensors::serialize(&tensors).unwrap();
        files.files.insert(path.into(), bytes);
        let device = Device::flex();
        let loaded = load::network::<ClipTextModel>(&files, Component::TextEncoder, &device, DType::F32);
        named(loaded.map(drop), path)?;
    }
}

/// A q4 pack of sd1-tiny, in memory.
fn pack() -> &'static MemoryFiles {
    static PACK: std::sync::OnceLock<MemoryFiles> = std::sync::OnceLock::new();
    PACK.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pack");
        webdiffusion::pack::convert::convert(
            &webdiffusion::files::DirFiles(model_dir("sd1-tiny")),
            webdiffusion::quant::Precision::Q4,
            &out,
        )
        .unwrap();
        memory_model(&out)
    })
}

/// Sets field `field` (modulo their number) of tensor `tensor` of component `component`
/// in the manifest to `value`.
fn mutate_manifest(
    manifest: &mut Value,
    component: usize,
    tensor: usize,
    field: usize,
    value: Value,
) {
    let name = ["text_encoder", "unet", "vae"][component];
    let tensors = manifest["components"][name]["tensors"]
        .as_array_mut()
        .unwrap();
    let n = tensors.len();
    let entry = tensors[tensor % n].as_object_mut().unwrap();
    let key = entry.keys().nth(field % entry.len()).unwrap().clone();
    entry.insert(key, value);
}

proptest! {
    #![proptest_config(config(200))]

    /// Manifests with one tensor entry field replaced, and shards with bytes overwritten
    /// (their sha256 updated, so the decoder sees them): loading never panics.
    #[test]
    fn pack_manifest_and_shards(
        component in 0usize..3,
        tensor in any::<usize>(),
        field in any::<usize>(),
        value in any_value(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
    ) {
        let mut files = MemoryFiles { base: "pack".into(), files: pack().files.clone() };
        let mut manifest: Value = serde_json::from_slice(&files.files["manifest.json"]).unwrap();
        mutate_manifest(&mut manifest, component, tensor, field, value);
        let name = ["text_encoder", "unet", "vae"][component];
        if !edits.is_empty() {
            let shard = format!("{name}/shard-00000.bin");
            let bytes = files.files.get_mut(&shard).unwrap();
            let n = bytes.len();
            for (at, value) in edits {
                bytes[at % n] = value;
            }
            manifest["components"][name]["shards"][0]["sha256"] =
                json!(webdiffusion::files::sha256_hex(bytes));
        }
        files.files.insert("manifest.json".into(), serde_json::to_vec(&manifest).unwrap());
        let device = Device::flex();
        let opened = webdiffusion::pack::PackFiles::open(files);
        named(opened.as_ref().map(drop).map_err(clone_error), "manifest.json")?;
        let Ok(Some(pack)) = opened else { return Ok(()) };
        let component = Family::Sd.components()[component];
        let _ = match component {
            Component::TextEncoder => load::network::<ClipTextModel>(&pack, component, &device, DType::F32).map(drop),
            Component::Unet => load::network::<UNet2DConditionModel>(&pack, component, &device, DType::F32).map(drop),
            _ => load::network::<Vae>(&pack, component, &device, DType::F32).map(drop),
        };
    }
}

/// The layers a LoRA for sd1-tiny may adapt.
fn lora_targets() -> &'static webdiffusion::lora::Targets {
    static TARGETS: std::sync::OnceLock<webdiffusion::lora::Targets> = std::sync::OnceLock::new();
    TARGETS.get_or_init(|| {
        let files = webdiffusion::files::DirFiles(model_dir("sd1-tiny"));
        let device = Device::flex();
        let text = load::build::<ClipTextModel>(&files, Component::TextEncoder, &device)
            .unwrap()
            .1;
        let unet = load::build::<UNet2DConditionModel>(&files, Component::Unet, &device)
            .unwrap()
            .1;
        webdiffusion::lora::Targets::from([
            (
                Component::TextEncoder,
                webdiffusion::weights::expected_tensors(&text),
            ),
            (
                Component::Unet,
                webdiffusion::weights::expected_tensors(&unet),
            ),
        ])
    })
}

/// A LoRA tensor name in one of the layouts people publish, with arbitrary parts.
fn lora_key() -> impl Strategy<Value = String> {
    let layer = prop_oneof![
        Just("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q".to_string()),
        Just("mid_block_attentions_0_proj_in".to_string()),
        Just("text_model_encoder_layers_0_self_attn_k_proj".to_string()),
        "[a-z0-9_]{1,40}",
    ];
    let prefix = prop_oneof![
        Just("lora_unet_"),
        Just("lora_te_"),
        Just("unet."),
        Just("text_encoder."),
        Just("base_model.model."),
        Just(""),
    ];
    let suffix = prop_oneof![
        Just(".lora_down.weight"),
        Just(".lora_up.weight"),
        Just(".alpha"),
        Just(".lora_A.weight"),
        Just(".lora_B.weight"),
        Just(".lora.down.weight"),
        Just(".weight"),
    ];
    (prefix, layer, suffix).prop_map(|(p, l, s)| format!("{p}{l}{s}"))
}

proptest! {
    #![proptest_config(config(300))]

    /// Real LoRA files with tensors renamed or reshaped, and files of arbitrary keys: the
    /// parser and the mapping onto the model's layers never panic, and errors name the file.
    #[test]
    fn lora_files(
        which in 0usize..3,
        renames in prop::collection::vec((any::<usize>(), lora_key()), 0..3),
        reshape in prop::option::of((any::<usize>(), prop::collection::vec(0usize..40, 0..4))),
        keys in prop::collection::vec((lora_key(), prop::collection::vec(1usize..9, 0..3)), 0..6),
    ) {
        let device = Device::flex();
        let file = [
            "lora1-sd1-tiny.kohya.safetensors",
            "lora1-sd1-tiny.diffusers.safetensors",
            "lora1-sd1-tiny.peft.safetensors",
        ][which];
        let bytes = std::fs::read(fixtures().join("lora").join(file)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let n = tensors.len();
        for (at, name) in renames {
            tensors[at % n].0 = name;
        }
        if let Some((at, shape)) = reshape {
            let t = &mut tensors[at % n];
            let len: usize = shape.iter().product::<usize>() * 4;
            t.1 = safetensors::Dtype::F32;
            t.2 = shape;
            t.3 = vec![0; len];
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        tensors.dedup_by(|a, b| a.0 == b.0);
        let mut random: Vec<_> = keys
            .into_iter()
            .map(|(name, shape)| {
                let len = shape.iter().product::<usize>() * 4;
                (name, safetensors::Dtype::F32, shape, vec![0u8; len])
            })
            .collect();
        random.sort_by(|a, b| a.0.cmp(&b.0));
        random.dedup_by(|a, b| a.0 == b.0);
        for tensors in [tensors, random] {
            let bytes = webdiffusion::weights::safetensors::serialize(&tensors).unwrap();
            let parsed = webdiffusion::lora::file::LoraFile::parse(&bytes, "x.safetensors");
            named(parsed.as_ref().map(drop).map_err(clone_error), "x.safetensors")?;
            if let Ok(parsed) = parsed {
                let lora = webdiffusion::lora::Lora::new(&parsed, "x", "0", lora_targets(), &device);
                named(lora.map(drop), "x")?;
            }
        }
    }
}
