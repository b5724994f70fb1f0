//! The browser edge: the `Pipeline` class exported to JavaScript. Files are fetched (and
//! cached in IndexedDB) by `js/cache.js`; everything else is the same library code that
//! runs natively, on burn's WebGPU backend.

mod options;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use burn::module::Module;
use burn::prelude::*;
use burn::store::ModuleSnapshot;
use burn::tensor::DType;
use js_sys::{Float32Array, Function, Object, Reflect, Uint8Array, Uint8ClampedArray};
use wasm_bindgen::prelude::*;

use crate::error::Error;
use crate::model::{self, MODEL_FILES, MemoryFiles, ModelFiles, weight_candidates};
use crate::noise::Generator;
use crate::pack::{MANIFEST, Manifest, PackFiles, PackLoader};
use crate::pipeline::{StableDiffusion, check_finite};
use crate::weights::StreamingLoader;

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
  /** After each step, with the current latents [1, 4, h, w] (for previews). */
  onStep?: (step: number, total: number, latents: Float32Array<ArrayBuffer>) => void;
  signal?: AbortSignal;
}
export interface GenerateResult {
  width: number;
  height: number;
  /** RGBA, row-major, ready for `new ImageData(pixels, width, height)`. */
  pixels: Uint8ClampedArray<ArrayBuffer>;
  /** The final latents, before VAE decoding. */
  latents: Float32Array<ArrayBuffer>;
  seed: number;
}
export interface CachedFile { url: string; bytes: number | null; complete: boolean }
"#;

#[wasm_bindgen]
pub struct Pipeline {
    inner: Rc<StableDiffusion>,
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
                let inner = MemoryFiles {
                    base: source.base.clone(),
                    files: HashMap::new(),
                };
                Box::new(PackFiles { inner, manifest })
            }
            None => Box::new(source.diffusers_configs().await?),
        };
        let files = &*files;
        let tokenizer = model::load_tokenizer(files).map_err(js_error)?;
        let scheduler_config = model::load_scheduler_config(files).map_err(js_error)?;
        let (_, text_encoder) = model::build_text_encoder(files, &device).map_err(js_error)?;
        let text_encoder = source
            .stream(text_encoder, files, "text_encoder", "model", &device)
            .await?;
        let (unet_config, unet) = model::build_unet(files, &device).map_err(js_error)?;
        let unet = source
            .stream(unet, files, "unet", "diffusion_pytorch_model", &device)
            .await?;
        let (vae_config, vae) = model::build_vae(files, &device).map_err(js_error)?;
        let vae = source
            .stream(vae, files, "vae", "diffusion_pytorch_model", &device)
            .await?;
        Ok(Pipeline {
            inner: Rc::new(StableDiffusion {
                tokenizer,
                text_encoder,
                unet,
                unet_config,
                vae,
                vae_config,
                scheduler_config,
                device,
            }),
        })
    }

    /// Generates one image (see `GenerateOptions`); rejects with an `AbortError` when the
    /// signal fires.
    #[wasm_bindgen(unchecked_return_type = "GenerateResult")]
    pub async fn generate(
        &self,
        #[wasm_bindgen(unchecked_param_type = "GenerateOptions")] options: JsValue,
    ) -> Result<JsValue, JsValue> {
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

    /// Cached files: `[{ url, bytes, complete }]`.
    #[wasm_bindgen(unchecked_return_type = "CachedFile[]")]
    pub async fn cached() -> Result<JsValue, JsValue> {
        list_cached().await
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
    async fn diffusers_configs(&self) -> Result<MemoryFiles, JsValue> {
        if self.fetch("model_index.json").await?.is_none() {
            return Err(js_sys::Error::new(&format!(
                "{}: not found (HTTP 404), nor {MANIFEST}; the URL must point at a diffusers \
                 model folder or a pack",
                self.url("model_index.json")
            ))
            .into());
        }
        let mut files = HashMap::new();
        for path in MODEL_FILES {
            if let Some(bytes) = self.fetch(path).await? {
                files.insert(path.to_string(), bytes);
            }
        }
        Ok(MemoryFiles {
            base: self.base.clone(),
            files,
        })
    }

    /// Streams a component's weights into `module`, from a pack's shards or a diffusers
    /// folder's safetensors.
    async fn stream<M>(
        &self,
        module: M,
        files: &dyn ModelFiles,
        component: &str,
        stem: &str,
        device: &Device,
    ) -> Result<M, JsValue>
    where
        M: Module + ModuleSnapshot + 'static,
    {
        match files.pack() {
            Some(manifest) => {
                self.stream_pack(module, files, manifest, component, device)
                    .await
            }
            None => self.stream_safetensors(module, component, stem).await,
        }
    }

    /// Streams a pack component's shards into `module`. A shard that does not match the
    /// manifest is dropped from the cache, so that the next load fetches it again.
    async fn stream_pack<M>(
        &self,
        module: M,
        files: &dyn ModelFiles,
        manifest: &Manifest,
        component: &str,
        device: &Device,
    ) -> Result<M, JsValue>
    where
        M: Module + ModuleSnapshot + 'static,
    {
        let loader = PackLoader::new(module, files, manifest, component, device, DType::F32)
            .map_err(js_error)?;
        let shards = loader.shard_files();
        let loader = Rc::new(RefCell::new(loader));
        for shard in shards {
            let url = self.url(&shard);
            let sink = loader.clone();
            let on_chunk = Closure::<dyn FnMut(Uint8Array) -> Result<(), JsValue>>::new(
                move |chunk: Uint8Array| sink.borrow_mut().push(&chunk.to_vec()).map_err(js_error),
            );
            let found = fetch_file(&url, self.cache, &self.on_progress, on_chunk.as_ref()).await;
            let checked = match found {
                Ok(found) if found.is_null() => Err(js_sys::Error::new(&format!(
                    "{url}: not found (HTTP 404); the pack is incomplete"
                ))
                .into()),
                Ok(_) => loader.borrow_mut().end_shard().map_err(js_error),
                Err(e) => Err(e),
            };
            if let Err(e) = checked {
                let _ = delete_cached(&url).await;
                return Err(e);
            }
        }
        let loader = Rc::try_unwrap(loader)
            .map_err(|_| js_sys::Error::new("a shard download is still running"))?
            .into_inner();
        loader.finish().map_err(js_error)
    }

    /// Streams a component's safetensors into `module`: the fp16 variant if the server has
    /// it (half the download; converted while loading anyway), else the full file.
    async fn stream_safetensors<M>(
        &self,
        module: M,
        component: &str,
        stem: &str,
    ) -> Result<M, JsValue>
    where
        M: Module + ModuleSnapshot + 'static,
    {
        let [full, half] = weight_candidates(component, stem);
        let loader = Rc::new(RefCell::new(None::<StreamingLoader<M>>));
        let mut module = Some(module);
        for path in [&half, &full] {
            let url = self.url(path);
            *loader.borrow_mut() = module
                .take()
                .map(|m| StreamingLoader::new(m, &url, DType::F32));
            let sink = loader.clone();
            let on_chunk = Closure::<dyn FnMut(Uint8Array) -> Result<(), JsValue>>::new(
                move |chunk: Uint8Array| {
                    let mut sink = sink.borrow_mut();
                    let loader = sink.as_mut().expect("a loader per download");
                    loader.push(&chunk.to_vec()).map_err(js_error)
                },
            );
            let found = fetch_file(&url, self.cache, &self.on_progress, on_chunk.as_ref()).await?;
            let current = loader.borrow_mut().take().expect("loader");
            if found.is_null() {
                // Nothing was pushed: take the module back and try the next file.
                module = Some(current.into_module());
                continue;
            }
            return current.finish().map_err(js_error);
        }
        Err(js_sys::Error::new(&format!(
            "{}: not found (HTTP 404), nor {half}",
            self.url(&full)
        ))
        .into())
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
