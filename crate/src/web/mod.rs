//! The browser edge: the `Pipeline` class exported to JavaScript, with the LoRA and
//! ControlNet handles it hands out and `canny`. Files are fetched (and cached in IndexedDB)
//! by `js/cache.js`; everything else is the same library code that runs natively, on
//! burn's WebGPU backend.

mod cached;
mod handles;
mod options;
mod panic;
mod source;
mod types;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::DType;
use js_sys::{Float32Array, Function, Object, Reflect, Uint8Array, Uint8ClampedArray};
use wasm_bindgen::prelude::*;

use crate::component::Component;
use crate::error::Error;
use crate::noise::Generator;
use crate::pipeline::{ControlNet, Denoiser, Parts, StableDiffusion, T5Encoder, TextEncoder};
use handles::{JsControlNet, JsEmbedding, JsLora, Loaded};
use source::Source;

#[wasm_bindgen(module = "/js/cache.js")]
extern "C" {
    /// The bytes at `url`, or `null` on HTTP 404; rejects with a clear Error otherwise.
    /// With `on_chunk`, the bytes are handed over chunk by chunk and it resolves to `true`.
    #[wasm_bindgen(js_name = fetchFile, catch)]
    async fn fetch_file(
        url: &str,
        cache: bool,
        on_progress: &JsValue,
        on_chunk: &JsValue,
    ) -> Result<JsValue, JsValue>;
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
    /// The page's WebGPU device, whether it was requested at WebGPU's default limits, and
    /// its largest buffer.
    static DEVICE: RefCell<Option<(Device, bool, u64)>> = const { RefCell::new(None) };
}

/// The WebGPU device, requested once per page: with the adapter's own limits, or with
/// WebGPU's default limits (128 MiB per storage binding, 256 MiB per buffer), which many
/// real GPUs expose, when `default_limits` (for checking that a model runs within them).
async fn device(default_limits: bool) -> Result<(Device, u64), JsValue> {
    if let Some((device, defaults, largest)) = DEVICE.with(|d| d.borrow().clone()) {
        if defaults != default_limits {
            return Err(js_sys::Error::new(
                "this page's WebGPU device was requested with other limits; `limits` can \
                 only be chosen by the page's first load",
            )
            .into());
        }
        return Ok((device, largest));
    }
    if !has_webgpu() {
        return Err(js_sys::Error::new(
            "WebGPU is not available in this browser (navigator.gpu is missing): use a recent \
             Chrome, Edge or Safari, or enable WebGPU",
        )
        .into());
    }
    let (device, largest) = match default_limits {
        true => crate::device::wgpu_at_default_limits().await,
        false => Device::wgpu_options()
            .init_with_setup_async()
            .await
            .map(|(device, setup)| {
                let largest = crate::device::largest_buffer(&setup.device.limits());
                (device, largest)
            })
            .map_err(|e| e.to_string()),
    }
    .map_err(|e| js_sys::Error::new(&format!("could not open a WebGPU device: {e}")))?;
    DEVICE.with(|d| *d.borrow_mut() = Some((device.clone(), default_limits, largest)));
    Ok((device, largest))
}

/// `{ onProgress?, cache? }` of a load.
fn source(url: &str, options: &Option<JsValue>) -> Source {
    let options = options.clone().unwrap_or(JsValue::UNDEFINED);
    let get = |key: &str| Reflect::get(&options, &key.into()).unwrap_or(JsValue::UNDEFINED);
    Source::new(
        url,
        get("cache").as_bool().unwrap_or(true),
        get("onProgress"),
    )
}

/// The last segment of a URL without its query and `suffix`: how a file is named.
/// The bytes of a file given as a URL (fetched and cached as `options` say) or as a
/// `Uint8Array`, with the name messages give it (`bytes`, when it came as bytes).
async fn file_bytes(
    from: JsValue,
    options: &Option<JsValue>,
    method: &str,
    bytes: &str,
) -> Result<(Vec<u8>, String), JsValue> {
    match from.as_string() {
        Some(url) => {
            let source = source("", options);
            let found =
                fetch_file(&url, source.cache, &source.on_progress, &JsValue::UNDEFINED).await?;
            if found.is_null() {
                return Err(js_sys::Error::new(&format!("{url}: not found (HTTP 404)")).into());
            }
            Ok((Uint8Array::new(&found).to_vec(), url))
        }
        None => {
            let array: Uint8Array = from.dyn_into().map_err(|_| {
                js_sys::Error::new(&format!(
                    "{method}: the source must be a URL string or a Uint8Array"
                ))
            })?;
            Ok((array.to_vec(), bytes.to_string()))
        }
    }
}

fn file_name(url: &str, suffix: &str) -> String {
    let last = url.trim_end_matches('/').rsplit('/').next().unwrap_or(url);
    let last = last.split(['?', '#']).next().unwrap_or(last);
    last.strip_suffix(suffix).unwrap_or(last).to_string()
}

#[wasm_bindgen]
pub struct Pipeline {
    inner: Rc<StableDiffusion>,
    /// Tells pipelines apart, for the LoRAs and ControlNets matched to each.
    id: u32,
}

#[wasm_bindgen]
impl Pipeline {
    /// Loads the pack (see `webdiffusion convert`) or diffusers folder at `url`:
    /// `{ onProgress?, cache? }`. Weights stream from the network or IndexedDB into the GPU
    /// chunk by chunk (a pack's shard by shard, each checked against its sha256), so wasm
    /// memory holds about one chunk at a time. Quantized weights stay quantized on the GPU.
    pub async fn load(
        url: String,
        #[wasm_bindgen(unchecked_optional_param_type = "LoadOptions")] options: Option<JsValue>,
    ) -> Result<Pipeline, JsValue> {
        let limits = options
            .as_ref()
            .and_then(|o| Reflect::get(o, &"limits".into()).ok())
            .and_then(|l| l.as_string());
        let default_limits = match limits.as_deref() {
            None | Some("adapter") => false,
            Some("default") => true,
            Some(other) => {
                let message =
                    format!("load: `limits` is {other:?} (expected \"adapter\" or \"default\")");
                return Err(js_sys::Error::new(&message).into());
            }
        };
        let (device, largest_buffer) = device(default_limits).await?;
        let requested = match options
            .as_ref()
            .and_then(|o| Reflect::get(o, &"dtype".into()).ok())
            .and_then(|d| d.as_string())
        {
            Some(name) => Some(crate::device::parse_dtype(&name).map_err(js_error)?),
            None => None,
        };
        let dtype = crate::device::compute_dtype(crate::device::Backend::Wgpu, &device, requested)
            .map_err(js_error)?;
        let option = |key: &str| {
            options
                .as_ref()
                .and_then(|o| Reflect::get(o, &key.into()).ok())
                .and_then(|v| v.as_string())
        };
        let t5 = options
            .as_ref()
            .and_then(|o| Reflect::get(o, &"t5".into()).ok())
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        let source = source(&url, &options);
        let files = source.pipeline(t5).await?;
        let files = &*files;
        let mut parts = Parts::build(files, &device, dtype).map_err(js_error)?;
        // Another VAE replaces the model's own before anything is downloaded.
        let other_vae = match option("vae") {
            Some(vae_url) => {
                let vae_source = Source::new(&vae_url, source.cache, source.on_progress.clone());
                let vae_files = vae_source.component(Component::Vae).await?;
                parts.replace_vae(&*vae_files, &device).map_err(js_error)?;
                Some((vae_source, vae_files))
            }
            None => None,
        };
        let on = |component| (&device, parts.dtype_of(component));
        let (text, denoiser, vae) = (
            on(Component::TextEncoder),
            on(parts.denoiser.component()),
            on(Component::Vae),
        );
        let mut encoders = Vec::new();
        for encoder in std::mem::take(&mut parts.text.encoders) {
            let model = source
                .stream(files, encoder.component, encoder.model, text)
                .await?;
            encoders.push(TextEncoder { model, ..encoder });
        }
        parts.text.encoders = encoders;
        if let Some(t5) = parts.text.t5.take() {
            let model = source
                .stream(files, Component::TextEncoder3, t5.model, text)
                .await?;
            parts.text.t5 = Some(T5Encoder { model, ..t5 });
        }
        parts.denoiser = match parts.denoiser {
            Denoiser::Unet(config, unet) => {
                let unet = source
                    .stream(files, Component::Unet, unet, denoiser)
                    .await?;
                Denoiser::Unet(config, unet)
            }
            Denoiser::Transformer(config, model) => {
                let component = Component::Transformer;
                let model = source.stream(files, component, model, denoiser).await?;
                Denoiser::Transformer(config, model)
            }
        };
        parts.vae = match &other_vae {
            Some((vae_source, vae_files)) => {
                vae_source
                    .stream(&**vae_files, Component::Vae, parts.vae, vae)
                    .await?
            }
            None => source.stream(files, Component::Vae, parts.vae, vae).await?,
        };
        let mut pipe = StableDiffusion::from_parts(parts, &device);
        pipe.max_buffer = Some(largest_buffer);
        if let Some(preview_url) = option("previewVae") {
            let preview = Source::new(&preview_url, source.cache, source.on_progress.clone());
            let preview_files = preview.component(Component::Vae).await?;
            let (config, vae) = pipe.build_preview(&*preview_files).map_err(js_error)?;
            let on = (&device, pipe.dtype);
            let vae = preview
                .stream(&*preview_files, Component::Vae, vae, on)
                .await?;
            pipe.preview = Some((config, vae));
        }
        Ok(Pipeline {
            inner: Rc::new(pipe),
            id: handles::next_id(),
        })
    }

    /// What the loaded model is and what a generation without options does (see
    /// `ModelInfo`), so that a page need not assume SD 1.x's latents or defaults.
    #[wasm_bindgen(getter, unchecked_return_type = "ModelInfo")]
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let pipe = &self.inner;
        let scheduler = pipe.default_scheduler().ok();
        let object = Object::new();
        let set = |k: &str, v: JsValue| Reflect::set(&object, &k.into(), &v);
        set("family", pipe.family.name().into())?;
        set(
            "latentChannels",
            pipe.vae_config.latent_space().channels.into(),
        )?;
        set("vaeScaleFactor", pipe.vae_scale_factor().into())?;
        set("defaultSize", pipe.default_size().into())?;
        let steps = pipe.default_steps(scheduler.unwrap_or("ddim"));
        set("defaultSteps", steps.into())?;
        let guidance = crate::pipeline::Request::new("").guidance;
        set("defaultGuidance", guidance.into())?;
        set("scheduler", scheduler.map_or(JsValue::NULL, JsValue::from))?;
        let names = crate::schedulers::SCHEDULERS
            .iter()
            .map(|e| JsValue::from(e.name));
        set("schedulers", names.collect::<js_sys::Array>().into())?;
        set("inpainting", pipe.is_inpainting().into())?;
        // Latents → RGB for a preview without a decoder: { factors: [C][3], bias: [3] }.
        let (factors, bias) = pipe.family.preview_rgb();
        let rows = |row: &[f64]| {
            row.iter()
                .map(|&v| JsValue::from(v))
                .collect::<js_sys::Array>()
        };
        let preview = Object::new();
        let factors: js_sys::Array = factors.iter().map(|r| JsValue::from(rows(r))).collect();
        Reflect::set(&preview, &"factors".into(), &factors)?;
        Reflect::set(&preview, &"bias".into(), &rows(&bias))?;
        set("previewRgb", preview.into())?;
        Ok(object.into())
    }

    /// Loads a LoRA for this pipeline from a URL (fetched and cached like model files) or
    /// from bytes (a file the user picked): `{ onProgress?, cache?, name? }`. It is matched
    /// against the text encoder and UNet now, so a LoRA for another model is refused here.
    #[wasm_bindgen(js_name = loadLora)]
    pub async fn load_lora(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | Uint8Array")] from: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "LoraOptions")] options: Option<JsValue>,
    ) -> Result<JsLora, JsValue> {
        let (bytes, file) = file_bytes(from, &options, "loadLora", "LoRA bytes").await?;
        let options = options.unwrap_or(JsValue::UNDEFINED);
        let name = Reflect::get(&options, &"name".into())
            .ok()
            .and_then(|n| n.as_string())
            .unwrap_or_else(|| file_name(&file, ".safetensors"));
        let lora = self
            .inner
            .load_lora(&bytes, &file, &name)
            .map_err(js_error)?;
        let (name, hash) = (lora.name.clone(), lora.hash.clone());
        let id = handles::register(Loaded::Lora(Arc::new(lora)), self.id);
        Ok(JsLora { id, name, hash })
    }

    /// Loads a textual-inversion embedding (`.safetensors`: diffusers', AUTOMATIC1111's, or
    /// SDXL's `clip_l`/`clip_g`) from a URL (fetched and cached like model files) or from
    /// bytes: `{ onProgress?, cache?, token? }`. Prompts name it by `token` (default: the
    /// file's own key, or for AUTOMATIC1111's files the file name without extension). One
    /// for another model (its width) is refused here.
    #[wasm_bindgen(js_name = loadEmbedding)]
    pub async fn load_embedding(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | Uint8Array")] from: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "EmbeddingOptions")] options: Option<
            JsValue,
        >,
    ) -> Result<JsEmbedding, JsValue> {
        let (bytes, file) = file_bytes(from, &options, "loadEmbedding", "embedding bytes").await?;
        let options = options.unwrap_or(JsValue::UNDEFINED);
        let token = Reflect::get(&options, &"token".into())
            .ok()
            .and_then(|n| n.as_string());
        // Bytes have no file name: their token comes from `token` or the file's key.
        let stem = match file.contains('/') || file.ends_with(".safetensors") {
            true => file_name(&file, ".safetensors"),
            false => String::new(),
        };
        let ti = self
            .inner
            .load_embedding(&bytes, &file, &stem, token.as_deref())
            .map_err(js_error)?;
        let (token, hash, vectors) = (ti.token.clone(), ti.hash.clone(), ti.count);
        let id = handles::register(Loaded::Embedding(Arc::new(ti)), self.id);
        Ok(JsEmbedding {
            id,
            token,
            hash,
            vectors,
        })
    }

    /// The tokens each 75-token chunk of `prompt` holds, for a prompt box's counter:
    /// `{ embeddings?, promptWeighting? }` as `generate` reads them. Read literally
    /// (`promptWeighting: false`) only the first 75 are kept.
    #[wasm_bindgen(js_name = countTokens, unchecked_return_type = "TokenCount")]
    pub fn count_tokens(
        &self,
        prompt: String,
        #[wasm_bindgen(unchecked_optional_param_type = "CountOptions")] options: Option<JsValue>,
    ) -> Result<JsValue, JsValue> {
        let options = options.unwrap_or(JsValue::UNDEFINED);
        let (embeddings, weighting) = options::reading(&options, self.id)?;
        let chunks = self
            .inner
            .text
            .count_tokens(&prompt, &embeddings, weighting)
            .map_err(js_error)?;
        let object = Object::new();
        let counts: js_sys::Array = chunks.iter().map(|&n| JsValue::from(n as u32)).collect();
        Reflect::set(&object, &"chunks".into(), &counts)?;
        let limit = crate::pipeline::MAX_CHUNKS as u32;
        Reflect::set(&object, &"maxChunks".into(), &limit.into())?;
        Ok(object.into())
    }

    /// Loads a ControlNet for this pipeline: a diffusers ControlNet folder (`config.json`
    /// and weights) or a pack of one, fetched and cached like model files:
    /// `{ onProgress?, cache? }`. One for another model family is refused before its
    /// weights are downloaded.
    #[wasm_bindgen(js_name = loadControlNet)]
    pub async fn load_controlnet(
        &self,
        url: String,
        #[wasm_bindgen(unchecked_optional_param_type = "LoadOptions")] options: Option<JsValue>,
    ) -> Result<JsControlNet, JsValue> {
        let source = source(&url, &options);
        let files = source.component(Component::ControlNet).await?;
        let (config, model) = self.inner.build_controlnet(&*files).map_err(js_error)?;
        let on = (&self.inner.device, self.inner.dtype);
        let model = source
            .stream(&*files, Component::ControlNet, model, on)
            .await?;
        let name = file_name(&url, "");
        let controlnet = ControlNet {
            name: name.clone(),
            config,
            model,
        };
        let id = handles::register(Loaded::ControlNet(Arc::new(controlnet)), self.id);
        Ok(JsControlNet { id, name })
    }

    /// Generates one image (see `GenerateOptions`); rejects with an `AbortError` when the
    /// signal fires.
    #[wasm_bindgen(unchecked_return_type = "GenerateResult")]
    pub async fn generate(
        &self,
        #[wasm_bindgen(unchecked_param_type = "GenerateOptions")] options: JsValue,
    ) -> Result<JsValue, JsValue> {
        let pipe = self.inner.clone();
        let (request, hooks) = options::parse(&options, &pipe, self.id)?;
        let mut generation = pipe
            .start(&request, Box::new(Generator::new(request.seed)))
            .map_err(js_error)?;
        let max = read_f32(generation.context_max_abs().reshape([1])).await?[0];
        generation.check_context(max).map_err(js_error)?;
        while !generation.is_done() {
            if hooks.aborted() {
                return Err(abort_error());
            }
            let (step, total) = generation.step();
            let max = read_f32(generation.max_abs().reshape([1])).await?[0];
            generation.check_latents(max).map_err(js_error)?;
            if let Some(on_step) = &hooks.on_step {
                // The current latents go along for previews (a few KB to read back), and the
                // preview decoder's image when there is one.
                let latents = read_f32(generation.latents().clone().reshape([-1])).await?;
                let latents = Float32Array::from(latents.as_slice());
                let preview = match generation.preview() {
                    Some(image) => rgba_object(image).await?,
                    None => JsValue::UNDEFINED,
                };
                let shape: js_sys::Array = generation
                    .latents()
                    .dims()
                    .iter()
                    .map(|&d| JsValue::from(d))
                    .collect();
                let args =
                    js_sys::Array::of5(&step.into(), &total.into(), &latents, &preview, &shape);
                on_step.apply(&JsValue::NULL, &args)?;
            }
        }
        if hooks.aborted() {
            return Err(abort_error());
        }
        let out = generation.finish();
        let settings = &out.settings;
        let [height, width, _] = out.image.dims();
        let rgb = read_f32(out.image.reshape([height * width * 3])).await?;
        let max = rgb.iter().fold(0f32, |m, v| m.max(v.abs()));
        pipe.check_image(max).map_err(js_error)?;
        let latents = read_f32(out.latents.reshape([-1])).await?;

        let result = Object::new();
        let set = |k: &str, v: JsValue| Reflect::set(&result, &k.into(), &v);
        set("width", width.into())?;
        set("height", height.into())?;
        set(
            "pixels",
            Uint8ClampedArray::from(rgba(&rgb).as_slice()).into(),
        )?;
        set("latents", Float32Array::from(latents.as_slice()).into())?;
        set("seed", JsValue::from(settings.seed as f64))?;
        set("steps", settings.steps.into())?;
        set("scheduler", settings.scheduler.as_str().into())?;
        set("guidance", settings.guidance.into())?;
        Ok(result.into())
    }

    /// Cached files: `[{ url, bytes, complete }]`.
    #[wasm_bindgen(unchecked_return_type = "CachedFile[]")]
    pub async fn cached() -> Result<JsValue, JsValue> {
        list_cached().await
    }

    /// Cached models: the files of each pack, diffusers folder or single file together.
    #[wasm_bindgen(js_name = cachedModels, unchecked_return_type = "CachedModel[]")]
    pub async fn cached_models() -> Result<JsValue, JsValue> {
        cached::models(list_cached().await?)
    }

    /// Deletes every cached file under `url`.
    #[wasm_bindgen(js_name = deleteCached)]
    pub async fn delete_cached_model(url: String) -> Result<(), JsValue> {
        delete_cached(&url).await.map(|_| ())
    }
}

/// Canny edges of `image` as OpenCV's `Canny(image, low, high)` finds them (white on
/// black, the input ControlNet canny models expect), as a new `ImageData`.
#[wasm_bindgen(unchecked_return_type = "ImageData")]
pub fn canny(
    #[wasm_bindgen(unchecked_param_type = "ImageData")] image: JsValue,
    low: f64,
    high: f64,
) -> Result<JsValue, JsValue> {
    if !(low.is_finite() && high.is_finite() && low >= 0.0 && high >= 0.0) {
        return Err(js_sys::Error::new("canny: the thresholds must be finite numbers ≥ 0").into());
    }
    let image = options::image_data(&image, "canny: image")?;
    let edges = crate::image::canny(&image, low, high);
    let rgba: Vec<u8> = edges.iter().flat_map(|&e| [e, e, e, 255]).collect();
    options::new_image_data(&rgba, image.width, image.height)
}

/// RGB values in [0, 1] as 8-bit RGBA, opaque, rounding as diffusers' `numpy_to_pil`.
fn rgba(rgb: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rgb.len() / 3 * 4);
    for px in rgb.chunks_exact(3) {
        out.extend(
            px.iter()
                .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8),
        );
        out.push(255);
    }
    out
}

/// An image `[H, W, 3]` in [0, 1] as `{ width, height, pixels }` (RGBA).
async fn rgba_object(image: Tensor<3>) -> Result<JsValue, JsValue> {
    let [height, width, _] = image.dims();
    let rgb = read_f32(image.reshape([height * width * 3])).await?;
    let object = Object::new();
    Reflect::set(&object, &"width".into(), &width.into())?;
    Reflect::set(&object, &"height".into(), &height.into())?;
    let pixels = Uint8ClampedArray::from(rgba(&rgb).as_slice());
    Reflect::set(&object, &"pixels".into(), &pixels)?;
    Ok(object.into())
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
