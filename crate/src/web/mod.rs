//! The browser edge: the `Pipeline` class exported to JavaScript. Files are fetched (and
//! cached in IndexedDB) by `js/cache.js`; everything else is the same library code that
//! runs natively, on burn's WebGPU backend.

mod options;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use burn::module::Module;
use burn::prelude::*;
use burn::store::ModuleSnapshot;
use burn::tensor::DType;
use js_sys::{Float32Array, Function, Object, Reflect, Uint8Array, Uint8ClampedArray};
use wasm_bindgen::prelude::*;

use crate::component::{self, Component};
use crate::error::Error;
use crate::files::{MemoryFiles, ModelFiles, WeightFiles};
use crate::lora::Lora;
use crate::noise::Generator;
use crate::pack::{MANIFEST, Manifest, PackFiles};
use crate::pipeline::{Parts, StableDiffusion, check_finite};
use crate::weights::{ModuleLoader, SafetensorsReader};

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

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** Download progress of one file, in bytes (`total` is null when the server does not say). */
export interface LoadProgress { loaded: number; total: number | null; file: string }
export interface LoadOptions {
  onProgress?: (progress: LoadProgress) => void;
  /** Keep the files in IndexedDB (default true). */
  cache?: boolean;
}
export type SchedulerName = "ddim" | "euler" | "euler-a" | "dpmpp-2m" | "dpmpp-2m-karras"
  | "heun" | "pndm" | "unipc" | "lcm" | "ddpm";
export interface GenerateOptions {
  prompt: string;
  negativePrompt?: string;
  /** Default: 20 (4 for LCM). */
  steps?: number;
  /** Classifier-free guidance scale (default 7.5); 1 or less runs the UNet once per step. */
  guidance?: number;
  /** Default: the model's own scheduler. */
  scheduler?: SchedulerName;
  /** Default: random (returned in the result). */
  seed?: number;
  width?: number;
  height?: number;
  /** The initial noise, [1, 4, height/8, width/8] for SD. */
  latents?: Float32Array;
  /** LoRAs loaded with this pipeline's `loadLora`, each at its scale (default 1; 0 or
   *  negative allowed). */
  loras?: { lora: Lora; scale?: number }[];
  /** After each step, with the current latents [1, 4, h, w] (for previews). */
  onStep?: (step: number, total: number, latents: Float32Array<ArrayBuffer>) => void;
  signal?: AbortSignal;
}
/** What ran, every default resolved (the model's own scheduler, LCM's 4 steps, …). */
export interface GenerateResult {
  width: number;
  height: number;
  /** RGBA, row-major, ready for `new ImageData(pixels, width, height)`. */
  pixels: Uint8ClampedArray<ArrayBuffer>;
  /** The final latents, before VAE decoding. */
  latents: Float32Array<ArrayBuffer>;
  seed: number;
  steps: number;
  scheduler: SchedulerName;
  guidance: number;
}
export interface LoraOptions {
  onProgress?: (progress: LoadProgress) => void;
  /** Keep a fetched file in IndexedDB (default true). */
  cache?: boolean;
  /** How the LoRA is named in parameters (default: the file name without extension). */
  name?: string;
}
export interface CachedFile { url: string; bytes: number | null; complete: boolean }
/** A cached model: a pack, a diffusers folder or a single file, with its files. */
export interface CachedModel { url: string; bytes: number; complete: boolean; files: CachedFile[] }

/** A LoRA loaded in the worker, named by its id in `generate`'s `loras`. */
export interface WorkerLora { id: number; name: string; hash: string }
/** `generate`'s options as the worker takes them: LoRAs by id. */
export type WorkerGenerateOptions = Omit<GenerateOptions, "onStep" | "signal" | "loras"> & {
  loras?: { lora: number; scale?: number }[];
};
/** Messages to the package's `worker.js`; a request's `id` comes back in its reply. */
export type WorkerRequest =
  | { type: "load"; url: string; cache?: boolean; id?: number }
  | { type: "generate"; options: WorkerGenerateOptions; id?: number }
  | { type: "loadLora"; source: string | Uint8Array; name?: string; id?: number }
  | { type: "freeLora"; lora: number; id?: number }
  | { type: "abort"; id?: number }
  | { type: "cached"; id?: number }
  | { type: "deleteCached"; url: string; id?: number };
/** Messages from `worker.js`. */
export type WorkerMessage =
  | ({ type: "progress" } & LoadProgress)
  | { type: "loaded"; url: string; id?: number }
  | { type: "step"; step: number; total: number; latents: Float32Array<ArrayBuffer> }
  | { type: "result"; result: GenerateResult; id?: number }
  | { type: "loraLoaded"; lora: WorkerLora; id?: number }
  | { type: "cached"; cached: CachedModel[]; id?: number }
  | { type: "deleted"; url: string; id?: number }
  | { type: "error"; message: string; name: string; id?: number };
"#;

#[wasm_bindgen]
pub struct Pipeline {
    inner: Rc<StableDiffusion>,
    /// Tells pipelines apart, for the LoRAs matched to each.
    id: u32,
}

thread_local! {
    /// Every live `Lora` object, by id, with the id of the pipeline it was matched to.
    static LORAS: RefCell<HashMap<u32, (Arc<Lora>, u32)>> = RefCell::new(HashMap::new());
    static NEXT_ID: std::cell::Cell<u32> = const { std::cell::Cell::new(1) };
}

/// A new id for a pipeline or a LoRA.
fn next_id() -> u32 {
    NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    })
}

/// A LoRA loaded by `Pipeline.loadLora`, usable in that pipeline's `generate` at any scale.
/// `free()` releases its GPU memory.
#[wasm_bindgen(js_name = Lora)]
pub struct JsLora {
    id: u32,
    name: String,
    hash: String,
}

#[wasm_bindgen(js_class = Lora)]
impl JsLora {
    /// The file name without extension, as A1111 names LoRAs (`<lora:NAME:SCALE>`).
    #[wasm_bindgen(getter)]
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// The first 12 hex digits of the file's sha256 (A1111's `Lora hashes`).
    #[wasm_bindgen(getter)]
    pub fn hash(&self) -> String {
        self.hash.clone()
    }

    /// The handle `generate` looks the LoRA up by.
    #[wasm_bindgen(getter)]
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for JsLora {
    fn drop(&mut self) {
        LORAS.with(|l| l.borrow_mut().remove(&self.id));
    }
}

/// The LoRA behind the handle `id`, if it is alive and was loaded by pipeline `pipe`.
fn lora_by_id(id: u32, pipe: u32) -> Result<Arc<Lora>, String> {
    LORAS.with(|l| match l.borrow().get(&id) {
        Some((lora, owner)) if *owner == pipe => Ok(lora.clone()),
        Some(_) => Err("was loaded by another Pipeline; load it with this one".into()),
        None => Err("is not a live Lora (freed, or not from loadLora)".into()),
    })
}

#[wasm_bindgen]
impl Pipeline {
    /// Loads the pack (see `webdiffusion convert`) or diffusers folder at `url`:
    /// `{ onProgress?, cache? }`. Weights stream from the network or IndexedDB into the GPU
    /// chunk by chunk (a pack's shard by shard, each checked against its sha256), so wasm
    /// memory holds about one chunk at a time. Quantized weights stay quantized on the GPU.
    pub async fn load(
        url: String,
        #[wasm_bindgen(unchecked_param_type = "LoadOptions")] options: Option<JsValue>,
    ) -> Result<Pipeline, JsValue> {
        let options = options.unwrap_or(JsValue::UNDEFINED);
        console_error_panic_hook::set_once();
        let device = device().await?;
        let get = |key: &str| Reflect::get(&options, &key.into()).unwrap_or(JsValue::UNDEFINED);
        let source = Source {
            base: url.trim_end_matches('/').to_string(),
            cache: get("cache").as_bool().unwrap_or(true),
            on_progress: get("onProgress"),
        };

        // manifest.json marks a pack, model_index.json a diffusers folder: a wrong URL
        // fails here, plainly.
        let files: Box<dyn ModelFiles> = match source.fetch(MANIFEST).await? {
            Some(bytes) => {
                let url = source.url(MANIFEST);
                let text = String::from_utf8(bytes)
                    .map_err(|_| js_sys::Error::new(&format!("{url}: is not UTF-8 text")))?;
                let manifest = Manifest::parse(&url, &text).map_err(js_error)?;
                let inner = RemoteFolder(MemoryFiles {
                    base: source.base.clone(),
                    files: HashMap::new(),
                });
                Box::new(PackFiles { inner, manifest })
            }
            None => Box::new(source.diffusers_configs().await?),
        };
        let files = &*files;
        let mut parts = Parts::build(files, &device).map_err(js_error)?;
        parts.text_encoder = source
            .stream(files, Component::TextEncoder, parts.text_encoder, &device)
            .await?;
        parts.unet = source
            .stream(files, Component::Unet, parts.unet, &device)
            .await?;
        parts.vae = source
            .stream(files, Component::Vae, parts.vae, &device)
            .await?;
        Ok(Pipeline {
            inner: Rc::new(StableDiffusion::from_parts(parts, &device)),
            id: next_id(),
        })
    }

    /// Loads a LoRA for this pipeline from a URL (fetched and cached like model files) or
    /// from bytes (a file the user picked): `{ onProgress?, cache?, name? }`. It is matched
    /// against the text encoder and UNet now, so a LoRA for another model is refused here.
    #[wasm_bindgen(js_name = loadLora)]
    pub async fn load_lora(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | Uint8Array")] source: JsValue,
        #[wasm_bindgen(unchecked_param_type = "LoraOptions")] options: Option<JsValue>,
    ) -> Result<JsLora, JsValue> {
        let options = options.unwrap_or(JsValue::UNDEFINED);
        let get = |key: &str| Reflect::get(&options, &key.into()).unwrap_or(JsValue::UNDEFINED);
        let (bytes, file) = match source.as_string() {
            Some(url) => {
                let found = fetch_file(
                    &url,
                    get("cache").as_bool().unwrap_or(true),
                    &get("onProgress"),
                    &JsValue::UNDEFINED,
                )
                .await?;
                if found.is_null() {
                    return Err(js_sys::Error::new(&format!("{url}: not found (HTTP 404)")).into());
                }
                (Uint8Array::new(&found).to_vec(), url)
            }
            None => {
                let array: Uint8Array = source.dyn_into().map_err(|_| {
                    js_sys::Error::new("loadLora: the source must be a URL string or a Uint8Array")
                })?;
                (array.to_vec(), "LoRA bytes".to_string())
            }
        };
        let name = get("name").as_string().unwrap_or_else(|| {
            let last = file.rsplit('/').next().unwrap_or(&file);
            let last = last.split(['?', '#']).next().unwrap_or(last);
            last.strip_suffix(".safetensors")
                .unwrap_or(last)
                .to_string()
        });
        let lora = self
            .inner
            .load_lora(&bytes, &file, &name)
            .map_err(js_error)?;
        let handle = JsLora {
            id: next_id(),
            name: lora.name.clone(),
            hash: lora.hash.clone(),
        };
        LORAS.with(|l| l.borrow_mut().insert(handle.id, (Arc::new(lora), self.id)));
        Ok(handle)
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
        while !generation.is_done() {
            if hooks.aborted() {
                return Err(abort_error());
            }
            let (step, total) = generation.step();
            let max = read_f32(generation.max_abs().reshape([1])).await?[0];
            check_finite(max, step, total).map_err(js_error)?;
            if let Some(on_step) = &hooks.on_step {
                // The current latents go along for previews (a few KB to read back).
                let latents = read_f32(generation.latents().clone().reshape([-1])).await?;
                let latents = Float32Array::from(latents.as_slice());
                on_step.call3(&JsValue::NULL, &step.into(), &total.into(), &latents)?;
            }
        }
        if hooks.aborted() {
            return Err(abort_error());
        }
        let out = generation.finish();
        let settings = &out.settings;
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
        let files: Vec<CachedFile> = serde_wasm_bindgen::from_value(list_cached().await?)?;
        let serializer = serde_wasm_bindgen::Serializer::new().serialize_missing_as_null(true);
        Ok(serde::Serialize::serialize(
            &group_by_model(files),
            &serializer,
        )?)
    }

    /// Deletes every cached file under `url`.
    #[wasm_bindgen(js_name = deleteCached)]
    pub async fn delete_cached_model(url: String) -> Result<(), JsValue> {
        delete_cached(&url).await.map(|_| ())
    }
}

/// Where a model's files are fetched from.
struct Source {
    base: String,
    cache: bool,
    on_progress: JsValue,
}

impl Source {
    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// The file at `path`, `None` on HTTP 404.
    async fn fetch(&self, path: &str) -> Result<Option<Vec<u8>>, JsValue> {
        let bytes = fetch_file(
            &self.url(path),
            self.cache,
            &self.on_progress,
            &JsValue::UNDEFINED,
        )
        .await?;
        Ok((!bytes.is_null()).then(|| Uint8Array::new(&bytes).to_vec()))
    }

    /// The configs and tokenizer files of a diffusers folder.
    async fn diffusers_configs(&self) -> Result<RemoteFolder, JsValue> {
        if self.fetch(component::MODEL_INDEX).await?.is_none() {
            return Err(js_sys::Error::new(&format!(
                "{}: not found (HTTP 404), nor {MANIFEST}; the URL must point at a diffusers \
                 model folder or a pack",
                self.url(component::MODEL_INDEX)
            ))
            .into());
        }
        let configs = component::pipeline_configs()
            .into_iter()
            .map(|(path, _)| path);
        let tokenizer = component::TOKENIZER_TEXT.iter().map(|p| p.to_string());
        let mut files = HashMap::new();
        for path in configs.chain(tokenizer) {
            if let Some(bytes) = self.fetch(&path).await? {
                files.insert(path, bytes);
            }
        }
        Ok(RemoteFolder(MemoryFiles {
            base: self.base.clone(),
            files,
        }))
    }

    /// Streams `component`'s weights into `module`, file by file and chunk by chunk (a
    /// pack's shards, or a diffusers folder's safetensors). A file whose bytes fail to read
    /// or check is dropped from the cache, so that the next load fetches it again; one
    /// whose download broke off stays, to resume.
    async fn stream<M>(
        &self,
        files: &dyn ModelFiles,
        component: Component,
        module: M,
        device: &Device,
    ) -> Result<M, JsValue>
    where
        M: Module + ModuleSnapshot + 'static,
    {
        let WeightFiles { choices, reader } = files.weights(component, device).map_err(js_error)?;
        let state = Rc::new(RefCell::new(Streaming {
            loader: ModuleLoader::new(module, DType::F32),
            reader,
            bad_bytes: false,
        }));
        for choice in &choices {
            for (i, path) in choice.iter().enumerate() {
                let url = self.url(path);
                state.borrow_mut().reader.begin(&url).map_err(js_error)?;
                let sink = state.clone();
                let file = url.clone();
                let on_chunk = Closure::<dyn FnMut(Uint8Array) -> Result<(), JsValue>>::new(
                    move |chunk: Uint8Array| sink.borrow_mut().push(&chunk.to_vec(), &file),
                );
                let found =
                    fetch_file(&url, self.cache, &self.on_progress, on_chunk.as_ref()).await;
                let ended = match found {
                    Ok(found) if found.is_null() && i == 0 => break, // try the next choice
                    Ok(found) if found.is_null() => Err(js_sys::Error::new(&format!(
                        "{url}: not found (HTTP 404); the model is incomplete"
                    ))
                    .into()),
                    Ok(_) => state.borrow_mut().end(&url),
                    Err(e) => Err(e),
                };
                if let Err(e) = ended {
                    if state.borrow().bad_bytes {
                        let _ = delete_cached(&url).await;
                    }
                    return Err(e);
                }
                if i + 1 == choice.len() {
                    drop(on_chunk);
                    let Streaming { loader, reader, .. } = Rc::try_unwrap(state)
                        .map_err(|_| js_sys::Error::new("a download is still running"))?
                        .into_inner();
                    reader.finish().map_err(js_error)?;
                    return loader.finish(&self.url(&choice[0])).map_err(js_error);
                }
            }
        }
        let tried: Vec<String> = choices.iter().map(|c| self.url(&c[0])).collect();
        let also = match tried.len() {
            0 | 1 => String::new(),
            _ => format!("; also tried {}", tried[1..].join(", ")),
        };
        Err(js_sys::Error::new(&format!(
            "{}: not found (HTTP 404){also}",
            tried.first().map_or("", String::as_str)
        ))
        .into())
    }
}

/// A component's weights on their way in: the reader turning bytes into tensors, the
/// loader applying them, and whether the bytes themselves were at fault.
struct Streaming<M> {
    loader: ModuleLoader<M>,
    reader: Box<dyn crate::weights::TensorReader>,
    bad_bytes: bool,
}

impl<M: Module + ModuleSnapshot> Streaming<M> {
    fn push(&mut self, chunk: &[u8], file: &str) -> Result<(), JsValue> {
        let result = self
            .reader
            .push(chunk)
            .and_then(|tensors| self.loader.apply(tensors, file));
        self.bad_bytes |= result.is_err();
        result.map_err(js_error)
    }

    fn end(&mut self, file: &str) -> Result<(), JsValue> {
        let result = self
            .reader
            .end()
            .and_then(|tensors| self.loader.apply(tensors, file));
        self.bad_bytes |= result.is_err();
        result.map_err(js_error)
    }
}

/// A diffusers folder (or a pack) on a server: configs fetched up front, weights streamed.
/// Of a folder's weight files the fp16 variant is preferred: half the download, and
/// converted while loading anyway.
struct RemoteFolder(MemoryFiles);

impl ModelFiles for RemoteFolder {
    fn read(&self, path: &str) -> crate::Result<Option<Vec<u8>>> {
        self.0.read(path)
    }

    fn display(&self, path: &str) -> String {
        self.0.display(path)
    }

    fn weights(&self, component: Component, _device: &Device) -> crate::Result<WeightFiles> {
        Ok(WeightFiles {
            choices: component.weight_files(true).map(|f| vec![f]).to_vec(),
            reader: Box::new(SafetensorsReader::default()),
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CachedFile {
    url: String,
    bytes: Option<f64>,
    complete: bool,
}

#[derive(serde::Serialize)]
struct CachedModel {
    url: String,
    bytes: f64,
    complete: bool,
    files: Vec<CachedFile>,
}

/// Groups cached files by model (see `pack::model_roots`).
fn group_by_model(files: Vec<CachedFile>) -> Vec<CachedModel> {
    let urls: Vec<&str> = files.iter().map(|f| f.url.as_str()).collect();
    let roots = crate::pack::model_roots(&urls);
    let mut models: Vec<CachedModel> = Vec::new();
    for (file, url) in files.into_iter().zip(roots) {
        let i = match models.iter().position(|m| m.url == url) {
            Some(i) => i,
            None => {
                models.push(CachedModel {
                    url,
                    bytes: 0.0,
                    complete: true,
                    files: Vec::new(),
                });
                models.len() - 1
            }
        };
        let model = &mut models[i];
        model.bytes += file.bytes.unwrap_or(0.0);
        model.complete &= file.complete;
        model.files.push(file);
    }
    models
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
