//! Loading one component of a pack from its shards, as they arrive.

use burn::module::Module;
use burn::prelude::Device;
use burn::store::ModuleSnapshot;
use burn::tensor::{DType, TensorData};
use sha2::{Digest, Sha256};

use super::{Component, Manifest, TensorEntry, matrix};
use crate::error::{Error, Result};
use crate::model::ModelFiles;
use crate::weights::{ModuleLoader, split_rows};

/// Takes a component's shards in order, each in pieces, and applies a tensor once every
/// shard holding it has arrived and matched its sha256. Holds at most one shard plus a
/// tensor that continues into the next.
pub struct PackLoader<M> {
    loader: ModuleLoader<M>,
    component: Component,
    /// Each shard as named in errors.
    names: Vec<String>,
    /// Tensor indices by stream offset, with their start in the stream.
    order: Vec<(u64, usize)>,
    next: usize,
    /// The shard being received, its bytes so far and their hash.
    shard: usize,
    pending: Vec<u8>,
    hasher: Sha256,
    /// Checked bytes not yet applied; `checked[0]` is at stream offset `offset`.
    checked: Vec<u8>,
    offset: u64,
    /// Whether the device's shaders read f16 quantization scales.
    f16_scales: bool,
}

impl<M: Module + ModuleSnapshot> PackLoader<M> {
    pub fn new(
        module: M,
        files: &dyn ModelFiles,
        manifest: &Manifest,
        component: &str,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let component = manifest.components.get(component).cloned().ok_or_else(|| {
            Error::io(
                files.display(super::MANIFEST),
                format!("has no component {component:?}"),
            )
        })?;
        let names = component
            .shards
            .iter()
            .map(|s| files.display(&s.file))
            .collect();
        let starts = component.shard_starts();
        let mut order: Vec<(u64, usize)> = component
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (component.start(&starts, t).unwrap_or(u64::MAX), i))
            .collect();
        order.sort();
        Ok(Self {
            loader: ModuleLoader::new(module, &files.display(super::MANIFEST), dtype),
            component,
            names,
            order,
            next: 0,
            shard: 0,
            pending: Vec::new(),
            hasher: Sha256::new(),
            checked: Vec::new(),
            offset: 0,
            f16_scales: device.supports_dtype(DType::F16),
        })
    }

    /// The shards to fetch, in order: paths relative to the pack root.
    pub fn shard_files(&self) -> Vec<String> {
        self.component
            .shards
            .iter()
            .map(|s| s.file.clone())
            .collect()
    }

    /// Takes the next piece of the current shard.
    pub fn push(&mut self, piece: &[u8]) -> Result<()> {
        let Some(shard) = self.component.shards.get(self.shard) else {
            return Err(Error::io(
                self.loader.file(),
                "more shard data than the manifest lists",
            ));
        };
        let received = (self.pending.len() + piece.len()) as u64;
        if received > shard.bytes {
            return Err(Error::io(
                &self.names[self.shard],
                format!("has more than the {} bytes the manifest lists", shard.bytes),
            ));
        }
        self.hasher.update(piece);
        self.pending.extend_from_slice(piece);
        Ok(())
    }

    /// Ends the current shard: checks its size and sha256, then applies every tensor now
    /// complete.
    pub fn end_shard(&mut self) -> Result<()> {
        let shard = &self.component.shards[self.shard];
        let name = &self.names[self.shard];
        if self.pending.len() as u64 != shard.bytes {
            return Err(Error::io(
                name,
                format!(
                    "has {} bytes, the manifest lists {}",
                    self.pending.len(),
                    shard.bytes
                ),
            ));
        }
        let hash = hex(&std::mem::take(&mut self.hasher).finalize());
        if hash != shard.sha256 {
            return Err(Error::io(
                name,
                format!(
                    "sha256 is {hash}, the manifest lists {}: the shard is damaged or from \
                     another pack",
                    shard.sha256
                ),
            ));
        }
        self.checked.append(&mut self.pending);
        self.shard += 1;
        self.apply_ready()
    }

    fn apply_ready(&mut self) -> Result<()> {
        let end = self.offset + self.checked.len() as u64;
        let mut batch = Vec::new();
        let mut consumed = self.offset;
        while let Some(&(start, i)) = self.order.get(self.next) {
            let entry = &self.component.tensors[i];
            if start + entry.length > end {
                break;
            }
            let a = (start - self.offset) as usize;
            let bytes = &self.checked[a..a + entry.length as usize];
            batch.extend(decode(entry, bytes, self.f16_scales)?);
            consumed = start + entry.length;
            self.next += 1;
        }
        self.checked.drain(..(consumed - self.offset) as usize);
        self.offset = consumed;
        if batch.is_empty() {
            return Ok(());
        }
        self.loader.apply_data(batch)
    }

    /// Checks that every shard and tensor arrived and every parameter was loaded.
    pub fn finish(self) -> Result<M> {
        if self.shard < self.component.shards.len() || self.next < self.order.len() {
            return Err(Error::io(
                self.loader.file(),
                format!(
                    "loading stopped after {} of {} shards",
                    self.shard,
                    self.component.shards.len()
                ),
            ));
        }
        self.loader.finish()
    }
}

/// A tensor's bytes as burn tensor data (the CLIP token embedding as blocks of rows).
fn decode(
    entry: &TensorEntry,
    bytes: &[u8],
    f16_scales: bool,
) -> Result<Vec<(String, TensorData)>> {
    if let Some(quant) = &entry.quant {
        let [rows, cols] = matrix(&entry.shape);
        let data = quant.format().tensor_data(bytes, rows, cols, f16_scales);
        return Ok(vec![(entry.name.clone(), data)]);
    }
    let dtype = if entry.dtype == "f32" {
        DType::F32
    } else {
        DType::F16
    };
    let shape = crate::weights::matrix_shape(&entry.shape);
    Ok(split_rows(&entry.name, &shape, 0, bytes.len())
        .into_iter()
        .map(|(name, shape, (a, b))| {
            let data = TensorData::from_bytes_vec(bytes[a..b].to_vec(), shape, dtype);
            (name, data)
        })
        .collect())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads `component` of a pack whose shards `files` can read whole.
pub fn load_component<M: Module + ModuleSnapshot>(
    files: &dyn ModelFiles,
    manifest: &Manifest,
    component: &str,
    module: M,
    device: &Device,
    dtype: DType,
) -> Result<M> {
    let mut loader = PackLoader::new(module, files, manifest, component, device, dtype)?;
    for file in loader.shard_files() {
        let bytes = files.require(&file)?;
        loader.push(&bytes)?;
        loader.end_shard()?;
    }
    loader.finish()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}
