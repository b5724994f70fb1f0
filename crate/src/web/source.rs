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
use crate::family::Family;
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

    /// The file at `path`, or why the server has none.
    pub async fn fetch(&self, path: &str) -> Result<Answer, JsValue> {
        let found = fetch_file(
            &self.url(path),
            self.cache,
            &self.on_progress,
            &JsValue::UNDEFINED,
        )
        .await;
        match found {
            Ok(bytes) if bytes.is_null() => Ok(Answer::Absent(NOT_FOUND.into())),
            Ok(bytes) => Ok(Answer::File(Uint8Array::new(&bytes).to_vec())),
            Err(e) => page_answer(&e).map(Answer::Absent).ok_or(e),
        }
    }

    /// The pack at this URL (its `manifest.json` read and checked), or what was found in
    /// its place. Only a JSON object that says it is a pack is taken for one: a server's
    /// fallback page, or other JSON, is no pack.
    pub async fn pack(&self) -> Result<Result<PackFiles<RemoteFolder>, String>, JsValue> {
        let url = self.url(MANIFEST);
        let text = match self.fetch(MANIFEST).await? {
            Answer::Absent(why) => return Ok(Err(format!("{url}: {why}"))),
            Answer::File(bytes) => bytes,
        };
        let json = match serde_json::from_slice::<serde_json::Value>(&text) {
            Ok(json) => json,
            Err(_) => return Ok(Err(format!("{url}: {}", not_json(&text)))),
        };
        if json.get("format").and_then(|f| f.as_str()) != Some(crate::pack::FORMAT) {
            return Ok(Err(format!(
                "{url}: JSON, but not a pack manifest (no \"format\": \"{}\")",
                crate::pack::FORMAT
            )));
        }
        let text = String::from_utf8(text)
            .map_err(|_| js_sys::Error::new(&format!("{url}: is not UTF-8 text")))?;
        let manifest = Manifest::parse(&url, &text).map_err(js_error)?;
        let inner = RemoteFolder(MemoryFiles {
            base: self.base.clone(),
            files: HashMap::new(),
        });
        Ok(Ok(PackFiles { inner, manifest }))
    }

    /// A pipeline: a pack, or a diffusers folder (`model_index.json` marks it); `t5:
    /// false` leaves SD3's T5 encoder out (see `files::WithoutT5`). When it is neither,
    /// the message says what each file's URL answered.
    pub async fn pipeline(&self, t5: bool) -> Result<Box<dyn ModelFiles>, JsValue> {
        let not_a_pack = match self.pack().await? {
            Ok(pack) if t5 => return Ok(Box::new(pack)),
            Ok(pack) => return Ok(Box::new(crate::files::WithoutT5(pack))),
            Err(why) => why,
        };
        let index_url = self.url(component::MODEL_INDEX);
        let index = match self.fetch(component::MODEL_INDEX).await? {
            Answer::Absent(why) => Err(why),
            Answer::File(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(json) if json.is_object() => Ok(bytes),
                Ok(_) => Err("JSON, but not an object".to_string()),
                Err(_) => Err(not_json(&bytes)),
            },
        };
        let index = match index {
            Ok(bytes) => bytes,
            Err(why) => {
                return Err(js_sys::Error::new(&format!(
                    "{}: neither a pack nor a diffusers model folder: {not_a_pack}; {index_url}: \
                     {why}. The URL must point at a folder holding {MANIFEST} (a pack) or \
                     {} (a diffusers model)",
                    self.base,
                    component::MODEL_INDEX
                ))
                .into());
            }
        };
        // model_index.json is read once, here; the loop fetches the other files. Without
        // T5 (`{ t5: false }`) it lists T5 as absent, and T5's files are not fetched.
        let index = match t5 {
            true => index,
            false => crate::files::index_without_t5(&index, &index_url).map_err(js_error)?,
        };
        let mut files = MemoryFiles {
            base: self.base.clone(),
            files: HashMap::from([(component::MODEL_INDEX.to_string(), index)]),
        };
        let family = Family::detect(&files).map_err(js_error)?;
        let present = family.present(&files).map_err(js_error)?;
        let fetched = |path: &str| {
            !crate::files::is_t5_file(path) || present.contains(&Component::TextEncoder3)
        };
        let mut absent = HashMap::new();
        let configs = component::pipeline_configs(family)
            .into_iter()
            .filter(|(path, _)| path != component::MODEL_INDEX);
        let tokenizer = component::tokenizer_text(family)
            .into_iter()
            .map(|p| (p, false));
        // The hub shards T5 (`model.safetensors.index.json` names the files).
        let shard_indexes = Component::TextEncoder3
            .weight_files(true)
            .map(|f| (format!("{f}.index.json"), false));
        let wanted = configs.chain(tokenizer).chain(shard_indexes);
        for (path, required) in wanted.filter(|(p, _)| fetched(p)) {
            match self.fetch(&path).await? {
                Answer::File(bytes) => {
                    files.files.insert(path, bytes);
                }
                Answer::Absent(why) if required => {
                    let url = self.url(&path);
                    return Err(js_sys::Error::new(&format!(
                        "{url}: {why}; a diffusers model folder needs it"
                    ))
                    .into());
                }
                Answer::Absent(why) => {
                    absent.insert(path, why);
                }
            }
        }
        // Each tokenizer is tokenizer.json, or vocab.json with merges.txt.
        for folder in present.iter().filter_map(|c| c.tokenizer()) {
            let paths = component::TokenizerPaths::new(folder);
            let has = |path: &str| files.files.contains_key(path);
            if has(&paths.tokenizer_json) || (has(&paths.vocab_json) && has(&paths.merges_txt)) {
                continue;
            }
            let answers: Vec<String> = paths
                .text()
                .iter()
                .filter_map(|p| Some(format!("{}: {}", self.url(p), absent.get(*p)?)))
                .collect();
            return Err(js_sys::Error::new(&format!(
                "{folder} needs tokenizer.json, or vocab.json and merges.txt: {}",
                answers.join("; ")
            ))
            .into());
        }
        Ok(Box::new(RemoteFolder(files)))
    }

    /// A component published on its own (`config.json` and weights at the URL), or a pack
    /// holding it.
    pub async fn component(&self, component: Component) -> Result<Box<dyn ModelFiles>, JsValue> {
        let not_a_pack = match self.pack().await? {
            Ok(pack) if !pack.manifest.components.contains_key(&component) => {
                return Err(js_sys::Error::new(&format!(
                    "{}: a pack without a {component}",
                    self.url(MANIFEST)
                ))
                .into());
            }
            Ok(pack) => return Ok(Box::new(pack)),
            Err(why) => why,
        };
        let config = match self.fetch("config.json").await? {
            Answer::File(config) => config,
            Answer::Absent(why) => {
                return Err(js_sys::Error::new(&format!(
                    "{}: neither a pack nor a {component} folder: {not_a_pack}; {}: {why}. \
                     The URL must point at a {component} folder (config.json and weights) or \
                     a pack",
                    self.base,
                    self.url("config.json")
                ))
                .into());
            }
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
        let mut tried = Vec::new();
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
                let absent = match &found {
                    Ok(found) if found.is_null() => Some(NOT_FOUND.to_string()),
                    Ok(_) => None,
                    Err(e) => page_answer(e),
                };
                let ended = match (found, absent) {
                    (_, Some(why)) if i == 0 => {
                        // Try the next choice.
                        tried.push(format!("{url}: {why}"));
                        break;
                    }
                    (_, Some(why)) => Err(js_sys::Error::new(&format!(
                        "{url}: {why}; the model is incomplete"
                    ))
                    .into()),
                    (Ok(_), None) => state.borrow_mut().end(&url),
                    (Err(e), None) => Err(e),
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
        Err(js_sys::Error::new(&format!(
            "{component}'s weights are missing: {}",
            tried.join("; ")
        ))
        .into())
    }
}

/// What a server has at a path.
pub enum Answer {
    File(Vec<u8>),
    /// Why there is no file: "not found (HTTP 404)", or the web page it sent instead.
    Absent(String),
}

const NOT_FOUND: &str = "not found (HTTP 404)";

/// What `js/cache.js` said came back when it rejected with an `HtmlPageError`: a web page
/// (a single-page app's fallback) in place of a file, which means the file is absent.
fn page_answer(e: &JsValue) -> Option<String> {
    let get = |key: &str| js_sys::Reflect::get(e, &key.into()).ok()?.as_string();
    (get("name")? == "HtmlPageError").then(|| get("answer"))?
}

/// What a body that should have been JSON looked like, for messages.
fn not_json(bytes: &[u8]) -> String {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]);
    let head: String = head.chars().filter(|c| !c.is_control()).collect();
    format!("not JSON ({} bytes starting {head:?})", bytes.len())
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
            choices: crate::files::weight_choices(self, component, true)?,
            reader: Box::new(SafetensorsReader::default()),
        })
    }
}
