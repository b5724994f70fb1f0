//! Where a model's files come from in the browser: a base URL whose files `js/cache.js`
//! fetches (and keeps in IndexedDB), configs up front and weights streamed chunk by chunk
//! through the same readers as natively.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use burn::module::Module;
use burn::prelude::*;
use burn::store::ModuleSnapshot;
use burn::tensor::DType;
use js_sys::Uint8Array;
use wasm_bindgen::prelude::*;

use super::{delete_cached, fetch_file, js_error};
use crate::component::{self, Component};
use crate::files::{ComponentDir, MemoryFiles, ModelFiles, WeightFiles};
use crate::pack::{MANIFEST, Manifest, PackFiles};
use crate::weights::{ModuleLoader, SafetensorsReader, TensorReader};

/// A folder on a server.
pub struct Source {
    pub base: String,
    pub cache: bool,
    pub on_progress: JsValue,
}

impl Source {
    pub fn new(url: &str, cache: bool, on_progress: JsValue) -> Self {
        Self {
            base: url.trim_end_matches('/').to_string(),
            cache,
            on_progress,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// The file at `path`, `None` on HTTP 404.
    pub async fn fetch(&self, path: &str) -> Result<Option<Vec<u8>>, JsValue> {
        let bytes = fetch_file(
            &self.url(path),
            self.cache,
            &self.on_progress,
            &JsValue::UNDEFINED,
        )
        .await?;
        Ok((!bytes.is_null()).then(|| Uint8Array::new(&bytes).to_vec()))
    }

    /// The pack at this URL (its `manifest.json` read and checked), `None` if there is none.
    pub async fn pack(&self) -> Result<Option<PackFiles<RemoteFolder>>, JsValue> {
        let Some(bytes) = self.fetch(MANIFEST).await? else {
            return Ok(None);
        };
        let url = self.url(MANIFEST);
        let text = String::from_utf8(bytes)
            .map_err(|_| js_sys::Error::new(&format!("{url}: is not UTF-8 text")))?;
        let manifest = Manifest::parse(&url, &text).map_err(js_error)?;
        let inner = RemoteFolder(MemoryFiles {
            base: self.base.clone(),
            files: HashMap::new(),
        });
        Ok(Some(PackFiles { inner, manifest }))
    }

    /// A pipeline: a pack, or a diffusers folder (`model_index.json` marks it; a wrong URL
    /// fails here, plainly).
    pub async fn pipeline(&self) -> Result<Box<dyn ModelFiles>, JsValue> {
        if let Some(pack) = self.pack().await? {
            return Ok(Box::new(pack));
        }
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
        Ok(Box::new(RemoteFolder(MemoryFiles {
            base: self.base.clone(),
            files,
        })))
    }

    /// A component published on its own (`config.json` and weights at the URL), or a pack
    /// holding it.
    pub async fn component(&self, component: Component) -> Result<Box<dyn ModelFiles>, JsValue> {
        if let Some(pack) = self.pack().await? {
            if !pack.manifest.components.contains_key(&component) {
                return Err(js_sys::Error::new(&format!(
                    "{}: a pack without a {component}",
                    self.url(MANIFEST)
                ))
                .into());
            }
            return Ok(Box::new(pack));
        }
        let Some(config) = self.fetch("config.json").await? else {
            return Err(js_sys::Error::new(&format!(
                "{}: not found (HTTP 404), nor {MANIFEST}; the URL must point at a {component} \
                 folder (config.json and weights) or a pack",
                self.url("config.json")
            ))
            .into());
        };
        let inner = RemoteFolder(MemoryFiles {
            base: self.base.clone(),
            files: HashMap::from([("config.json".to_string(), config)]),
        });
        Ok(Box::new(ComponentDir { inner, component }))
    }

    /// Streams `component`'s weights into `module`, file by file and chunk by chunk (a
    /// pack's shards, or a diffusers folder's safetensors). A file whose bytes fail to read
    /// or check is dropped from the cache, so that the next load fetches it again; one
    /// whose download broke off stays, to resume.
    pub async fn stream<M>(
        &self,
        files: &dyn ModelFiles,
        component: Component,
        module: M,
        (device, dtype): (&Device, DType),
    ) -> Result<M, JsValue>
    where
        M: Module + ModuleSnapshot + 'static,
    {
        let WeightFiles { choices, reader } = files.weights(component, device).map_err(js_error)?;
        let state = Rc::new(RefCell::new(Streaming {
            loader: ModuleLoader::for_component(module, component, (device, dtype)),
            reader,
            bad_bytes: false,
        }));
        for choice in &choices {
            for (i, path) in choice.iter().enumerate() {
                // How the source names the file is its URL.
                let url = files.display(path);
                state.borrow_mut().reader.begin(&url).map_err(js_error)?;
                let sink = state.clone();
                let file = url.clone();
                let on_chunk = Closure::<dyn FnMut(Uint8Array) -> Result<(), JsValue>>::new(
                    move |chunk: Uint8Array| sink.borrow_mut().push(&chunk, &file),
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
                    return loader.finish(&files.display(&choice[0])).map_err(js_error);
                }
            }
        }
        let tried: Vec<String> = choices.iter().map(|c| files.display(&c[0])).collect();
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
    reader: Box<dyn TensorReader>,
    bad_bytes: bool,
}

/// How much of a cached chunk is copied into wasm memory at once: the module's memory only
/// grows, so the less held at a time, the smaller a page stays.
const PIECE: u32 = 8 << 20;

impl<M: Module + ModuleSnapshot> Streaming<M> {
    /// Takes a chunk (up to 64 MiB, in JS memory), a piece at a time.
    fn push(&mut self, chunk: &Uint8Array, file: &str) -> Result<(), JsValue> {
        let mut at = 0;
        while at < chunk.length() {
            let end = (at + PIECE).min(chunk.length());
            let piece = chunk.subarray(at, end).to_vec();
            let result = self
                .reader
                .push(&piece)
                .and_then(|tensors| self.loader.apply(tensors, file));
            self.bad_bytes |= result.is_err();
            result.map_err(js_error)?;
            at = end;
        }
        Ok(())
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

/// A folder (or a pack) on a server: configs fetched up front, weights streamed. Of a
/// folder's weight files the fp16 variant is preferred: half the download, and converted
/// while loading anyway.
pub struct RemoteFolder(MemoryFiles);

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
