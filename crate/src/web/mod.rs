//! The browser edge: the `Pipeline` class exported to JavaScript. Files are fetched (and
//! cached in IndexedDB) by `js/cache.js`; everything else is the same library code that
//! runs natively, on burn's WebGPU backend.

mod options;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use burn::prelude::*;
use burn::tensor::DType;
use js_sys::{Float32Array, Function, Object, Reflect, Uint8Array, Uint8ClampedArray};
use wasm_bindgen::prelude::*;

use crate::error::Error;
use crate::model::{MODEL_FILES, MemoryFiles, WEIGHT_FILES, weight_candidates};
use crate::noise::Generator;
use crate::pipeline::{StableDiffusion, check_finite};

#[wasm_bindgen(module = "/js/cache.js")]
extern "C" {
    /// The bytes at `url`, or `null` on HTTP 404; rejects with a clear Error otherwise.
    #[wasm_bindgen(js_name = fetchFile, catch)]
    async fn fetch_file(url: &str, cache: bool, on_progress: &JsValue) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(js_name = listCached, catch)]
    async fn list_cached() -> Result<JsValue, JsValue>;
    #[wasm_bindgen(js_name = deleteCached, catch)]
    async fn delete_cached(prefix: &str) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(js_name = hasWebGpu)]
    fn has_webgpu() -> bool;
}

fn js_error(e: Error) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

thread_local! {
    static DEVICE: RefCell<Option<Device>> = const { RefCell::new(None) };
}

/// The WebGPU device, requested once per page with the adapter's own limits.
async fn device() -> Result<Device, JsValue> {
    if let Some(device) = DEVICE.with(|d| d.borrow().clone()) {
        return Ok(device);
    }
    if !has_webgpu() {
        return Err(js_sys::Error::new(
            "WebGPU is not available in this browser (navigator.gpu is missing): use a recent \
             Chrome, Edge or Safari, or enable WebGPU",
        )
        .into());
    }
    let device = Device::wgpu_options()
        .init_async()
        .await
        .map_err(|e| js_sys::Error::new(&format!("could not open a WebGPU device: {e}")))?;
    DEVICE.with(|d| *d.borrow_mut() = Some(device.clone()));
    Ok(device)
}

#[wasm_bindgen]
pub struct Pipeline {
    inner: Rc<StableDiffusion>,
}

#[wasm_bindgen]
impl Pipeline {
    /// Loads the diffusers folder at `url`: `{ onProgress?, cache? }`.
    pub async fn load(url: String, options: JsValue) -> Result<Pipeline, JsValue> {
        console_error_panic_hook::set_once();
        let device = device().await?;
        let get = |key: &str| Reflect::get(&options, &key.into()).unwrap_or(JsValue::UNDEFINED);
        let on_progress = get("onProgress");
        let cache = get("cache").as_bool().unwrap_or(true);
        let base = url.trim_end_matches('/').to_string();

        let mut files = HashMap::new();
        let mut fetch = async |path: &str| -> Result<bool, JsValue> {
            let bytes = fetch_file(&format!("{base}/{path}"), cache, &on_progress).await?;
            if bytes.is_null() {
                return Ok(false);
            }
            files.insert(path.to_string(), Uint8Array::new(&bytes).to_vec());
            Ok(true)
        };
        for path in MODEL_FILES {
            fetch(path).await?;
        }
        for (component, stem) in WEIGHT_FILES {
            // The fp16 variant first: half the download, converted while loading anyway.
            let [full, half] = weight_candidates(component, stem);
            if !fetch(&half).await? && !fetch(&full).await? {
                return Err(js_sys::Error::new(&format!(
                    "{base}/{full}: not found (HTTP 404), nor {half}"
                ))
                .into());
            }
        }
        let model = MemoryFiles { base, files };
        let inner = StableDiffusion::load(&model, &device).map_err(js_error)?;
        Ok(Pipeline {
            inner: Rc::new(inner),
        })
    }

    /// Generates one image: see `options::GenerateOptions` for the fields. Resolves to
    /// `{ width, height, pixels: Uint8ClampedArray (RGBA), latents: Float32Array, seed }`.
    pub async fn generate(&self, options: JsValue) -> Result<JsValue, JsValue> {
        let pipe = self.inner.clone();
        let (request, hooks) = options::parse(&options, &pipe)?;
        let mut generation = pipe
            .start(&request, Box::new(Generator::new(request.seed)))
            .map_err(js_error)?;
        while !generation.is_done() {
            if hooks.aborted() {
                return Err(abort_error());
            }
            let (step, total) = generation.step();
            let max = read_f32(generation.max_abs().reshape([1])).await?[0];
            check_finite(max, step, total).map_err(js_error)?;
            if let Some(on_step) = &hooks.on_step {
                on_step.call2(&JsValue::NULL, &step.into(), &total.into())?;
            }
        }
        if hooks.aborted() {
            return Err(abort_error());
        }
        let out = generation.finish();
        let [height, width, _] = out.image.dims();
        let rgb = read_f32(out.image.reshape([height * width * 3])).await?;
        let mut rgba = Vec::with_capacity(width * height * 4);
        for px in rgb.chunks_exact(3) {
            rgba.extend(
                px.iter()
                    .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8),
            );
            rgba.push(255);
        }
        let latents = read_f32(out.latents.reshape([-1])).await?;

        let result = Object::new();
        let set = |k: &str, v: JsValue| Reflect::set(&result, &k.into(), &v);
        set("width", width.into())?;
        set("height", height.into())?;
        set("pixels", Uint8ClampedArray::from(rgba.as_slice()).into())?;
        set("latents", Float32Array::from(latents.as_slice()).into())?;
        set("seed", JsValue::from(request.seed as f64))?;
        Ok(result.into())
    }

    /// Cached models: `[{ url, bytes, complete }]`.
    pub async fn cached() -> Result<JsValue, JsValue> {
        list_cached().await
    }

    /// Deletes every cached file under `url`.
    #[wasm_bindgen(js_name = deleteCached)]
    pub async fn delete_cached_model(url: String) -> Result<(), JsValue> {
        delete_cached(&url).await.map(|_| ())
    }
}

async fn read_f32(t: Tensor<1>) -> Result<Vec<f32>, JsValue> {
    let data = t
        .cast(DType::F32)
        .into_data_async()
        .await
        .map_err(|e| js_sys::Error::new(&format!("reading back from the GPU: {e:?}")))?;
    data.try_into_vec::<f32>()
        .map_err(|e| js_sys::Error::new(&format!("reading back from the GPU: {e:?}")).into())
}

fn abort_error() -> JsValue {
    let e = js_sys::Error::new("generation aborted");
    e.set_name("AbortError");
    e.into()
}

/// JS callbacks of a generation.
pub struct Hooks {
    on_step: Option<Function>,
    signal: Option<JsValue>,
}

impl Hooks {
    fn aborted(&self) -> bool {
        self.signal
            .as_ref()
            .and_then(|s| Reflect::get(s, &"aborted".into()).ok())
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    }
}
