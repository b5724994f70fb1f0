//! The JS objects that stand for a LoRA, a ControlNet or a textual-inversion embedding
//! loaded by a `Pipeline`. JS holds
//! a small handle; the loaded weights live in a registry keyed by the handle's id, with
//! the pipeline they were matched to, so that `generate` can find them from the options
//! object and `free()` (the handle's drop) releases them.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use wasm_bindgen::prelude::*;

use crate::lora::Lora;
use crate::pipeline::ControlNet;
use crate::textual_inversion::TextualInversion;

/// What a handle stands for.
#[derive(Clone)]
pub enum Loaded {
    Lora(Arc<Lora>),
    ControlNet(Arc<ControlNet>),
    Embedding(Arc<TextualInversion>),
}

thread_local! {
    /// Every live handle's weights by id, with the id of the pipeline they belong to.
    static LOADED: RefCell<HashMap<u32, (Loaded, u32)>> = RefCell::new(HashMap::new());
    static NEXT_ID: Cell<u32> = const { Cell::new(1) };
}

/// A new id for a pipeline or a handle.
pub fn next_id() -> u32 {
    NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    })
}

/// Registers `loaded` for pipeline `pipe`; returns its id.
pub fn register(loaded: Loaded, pipe: u32) -> u32 {
    let id = next_id();
    LOADED.with(|l| l.borrow_mut().insert(id, (loaded, pipe)));
    id
}

/// What the handle `id` stands for, if it is alive and belongs to pipeline `pipe`.
pub fn lookup(id: u32, pipe: u32) -> Result<Loaded, String> {
    LOADED.with(|l| match l.borrow().get(&id) {
        Some((loaded, owner)) if *owner == pipe => Ok(loaded.clone()),
        Some(_) => Err("was loaded by another Pipeline; load it with this one".into()),
        None => Err("is not alive (freed, or not loaded by this package)".into()),
    })
}

fn release(id: u32) {
    LOADED.with(|l| l.borrow_mut().remove(&id));
}

/// A LoRA loaded by `Pipeline.loadLora`, usable in that pipeline's `generate` at any scale.
/// `free()` releases its GPU memory.
#[wasm_bindgen(js_name = Lora)]
pub struct JsLora {
    pub(super) id: u32,
    pub(super) name: String,
    pub(super) hash: String,
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
        release(self.id);
    }
}

/// A ControlNet loaded by `Pipeline.loadControlNet`. `free()` releases its GPU memory.
#[wasm_bindgen(js_name = ControlNet)]
pub struct JsControlNet {
    pub(super) id: u32,
    pub(super) name: String,
}

#[wasm_bindgen(js_class = ControlNet)]
impl JsControlNet {
    /// Its folder's name, as A1111 records it (`Model: NAME`).
    #[wasm_bindgen(getter)]
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// The handle `generate` looks the ControlNet up by.
    #[wasm_bindgen(getter)]
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for JsControlNet {
    fn drop(&mut self) {
        release(self.id);
    }
}

/// A textual-inversion embedding loaded by `Pipeline.loadEmbedding`: prompts that name its
/// token use its vectors when it is in `generate`'s `embeddings`.
#[wasm_bindgen(js_name = Embedding)]
pub struct JsEmbedding {
    pub(super) id: u32,
    pub(super) token: String,
    pub(super) hash: String,
    pub(super) vectors: usize,
}

#[wasm_bindgen(js_class = Embedding)]
impl JsEmbedding {
    /// The word that stands for it in a prompt.
    #[wasm_bindgen(getter)]
    pub fn token(&self) -> String {
        self.token.clone()
    }

    /// The first 12 hex digits of the file's sha256 (A1111's `TI hashes`).
    #[wasm_bindgen(getter)]
    pub fn hash(&self) -> String {
        self.hash.clone()
    }

    /// The token positions it takes in a prompt (of 75 per chunk).
    #[wasm_bindgen(getter)]
    pub fn vectors(&self) -> usize {
        self.vectors
    }

    /// The handle `generate` looks the embedding up by.
    #[wasm_bindgen(getter)]
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for JsEmbedding {
    fn drop(&mut self) {
        release(self.id);
    }
}
