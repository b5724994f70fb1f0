//! Textual-inversion embeddings: learned token vectors that a prompt names by a word
//! (`EasyNegative`). Read from `.safetensors` in the layouts that circulate:
//! - diffusers: one tensor, its key the token (`{"<cat-toy>": [D]}` or `[n, D]`);
//! - AUTOMATIC1111: `emb_params` `[n, D]`, the token the file name without extension;
//! - AUTOMATIC1111 for SDXL: `clip_l` `[n, 768]` and `clip_g` `[n, 1280]`, one per encoder.
//!
//! An n-vector embedding takes n token positions (diffusers' `maybe_convert_prompt`). The
//! vectors become extra rows of the text encoders' token embeddings for one request (see
//! `pipeline::TextEncoders::prepare`); nothing in the loaded model changes.

use crate::error::{Error, Result};
use crate::files::sha256_hex;
use crate::weights::finite_floats;
use crate::weights::safetensors::SafetensorsFile;

/// Which CLIP encoder a set of vectors is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// SD 1.x/2.x's one text encoder, SDXL's first (CLIP ViT-L).
    ClipL,
    /// SDXL's second text encoder (OpenCLIP bigG).
    ClipG,
}

impl Slot {
    pub fn key(self) -> &'static str {
        match self {
            Slot::ClipL => "clip_l",
            Slot::ClipG => "clip_g",
        }
    }
}

/// Vectors for one encoder: `count × width` floats, row-major.
#[derive(Debug, Clone)]
pub struct Vectors {
    pub slot: Slot,
    /// The tensor's key in the file, for messages.
    pub key: String,
    pub width: usize,
    pub values: Vec<f32>,
}

/// One embedding file, read and checked (not yet against a model: see
/// `pipeline::TextEncoders::check_embedding`).
#[derive(Debug, Clone)]
pub struct TextualInversion {
    /// The file as named in messages.
    pub file: String,
    /// The word that stands for the vectors in a prompt.
    pub token: String,
    /// The first 12 hex digits of the file's sha256 (A1111's `TI hashes`).
    pub hash: String,
    /// Token positions it takes.
    pub count: usize,
    pub vectors: Vec<Vectors>,
}

/// The largest number of vectors accepted: real embeddings have 1–75 (a prompt chunk).
const MAX_VECTORS: usize = 75;

impl TextualInversion {
    /// Reads the embedding file `bytes`, named `file` in messages. `token`: the word to use
    /// instead of the file's own (its key, or `stem`, the file name without extension, for
    /// AUTOMATIC1111's layouts).
    pub fn parse(bytes: &[u8], file: &str, stem: &str, token: Option<&str>) -> Result<Self> {
        if bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80) {
            return Err(Error::io(
                file,
                "is a PyTorch pickle (.pt/.bin), which can run code when loaded: only \
                 .safetensors embeddings are read (convert it to .safetensors first)",
            ));
        }
        let st = SafetensorsFile::parse(bytes, file)?;
        let keys: Vec<&str> = st.tensors().map(|(t, _)| t.name.as_str()).collect();
        let layout: Vec<(Slot, &str)> = if keys.contains(&"clip_l") && keys.contains(&"clip_g") {
            vec![(Slot::ClipL, "clip_l"), (Slot::ClipG, "clip_g")]
        } else if keys.contains(&"emb_params") {
            vec![(Slot::ClipL, "emb_params")]
        } else if keys.len() == 1 {
            vec![(Slot::ClipL, keys[0])]
        } else {
            return Err(Error::io(
                file,
                format!(
                    "is not a textual-inversion embedding: expected one tensor (diffusers), \
                     `emb_params` (AUTOMATIC1111) or `clip_l` and `clip_g` (SDXL), found {keys:?}"
                ),
            ));
        };
        let own = match layout[0].1 {
            "clip_l" | "emb_params" => stem,
            key => key,
        };
        let token = token.unwrap_or(own).trim().to_string();
        if token.is_empty() {
            return Err(Error::io(
                file,
                "names no token (AUTOMATIC1111's files are named by their file name): give one",
            ));
        }
        let mut vectors = Vec::new();
        for (slot, key) in layout {
            vectors.push(read_vectors(&st, file, slot, key)?);
        }
        let counts: Vec<usize> = vectors.iter().map(|v| v.values.len() / v.width).collect();
        if counts.iter().any(|&n| n != counts[0]) {
            return Err(Error::io(
                file,
                format!("`clip_l` and `clip_g` hold different numbers of vectors: {counts:?}"),
            ));
        }
        let count = counts[0];
        if !(1..=MAX_VECTORS).contains(&count) {
            return Err(Error::io(
                file,
                format!("holds {count} vectors; an embedding has 1 to {MAX_VECTORS}"),
            ));
        }
        Ok(Self {
            file: file.to_string(),
            token,
            hash: sha256_hex(bytes)[..12].to_string(),
            count,
            vectors,
        })
    }

    /// The vectors for the encoder `slot`.
    pub fn vectors(&self, slot: Slot) -> Option<&Vectors> {
        self.vectors.iter().find(|v| v.slot == slot)
    }
}

/// The tensor `key` as `[n, D]` floats (a `[D]` vector is one row), finite.
fn read_vectors(st: &SafetensorsFile, file: &str, slot: Slot, key: &str) -> Result<Vectors> {
    let (info, data) = st.get(key).expect("listed key");
    let values = finite_floats(file, key, info.dtype, data)?;
    let width = match info.shape[..] {
        [d] | [_, d] if d > 0 => d,
        _ => {
            return Err(Error::io(
                file,
                format!(
                    "tensor `{key}` is {:?}; an embedding is [n, width] or [width]",
                    info.shape
                ),
            ));
        }
    };
    Ok(Vectors {
        slot,
        key: key.to_string(),
        width,
        values,
    })
}
