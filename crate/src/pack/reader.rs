//! Reading one component of a pack from its shards, as they arrive.

use burn::tensor::DType;
use sha2::{Digest, Sha256};

use super::{ComponentEntry, StoredDType, TensorEntry, matrix};
use crate::error::{Error, Result};
use crate::weights::{TensorReader, Tensors, tensor_data};

/// Takes a component's shards in order, each in pieces, and returns each tensor as soon as
/// its bytes have arrived, holding only the bytes of tensors not yet complete. Each shard's
/// size and sha256 are checked at its end: a mismatch fails the load, and a failed load
/// drops the module, so a damaged shard never becomes part of a model.
pub struct ShardReader {
    component: ComponentEntry,
    /// Each shard as named in errors.
    names: Vec<String>,
    /// Tensor indices by stream offset, with their start in the stream.
    order: Vec<(u64, usize)>,
    next: usize,
    /// The shard being received (`None` before the first), its size so far and its hash.
    shard: Option<usize>,
    received: u64,
    hasher: Sha256,
    /// Bytes received and not yet used; `buffer[0]` is at stream offset `offset`.
    buffer: Vec<u8>,
    offset: u64,
    /// Whether the device's shaders read f16 quantization scales.
    f16_scales: bool,
}

impl ShardReader {
    /// `names`: each shard as named in errors.
    pub fn new(component: ComponentEntry, names: Vec<String>, f16_scales: bool) -> Self {
        let starts = component.shard_starts();
        let mut order: Vec<(u64, usize)> = component
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (component.start(&starts, t).unwrap_or(u64::MAX), i))
            .collect();
        order.sort();
        Self {
            component,
            names,
            order,
            next: 0,
            shard: None,
            received: 0,
            hasher: Sha256::new(),
            buffer: Vec::new(),
            offset: 0,
            f16_scales,
        }
    }

    fn current(&self) -> usize {
        self.shard.unwrap_or(0)
    }
}

impl TensorReader for ShardReader {
    fn begin(&mut self, _file: &str) -> Result<()> {
        let next = self.shard.map_or(0, |s| s + 1);
        if next >= self.component.shards.len() {
            return Err(Error::io(
                &self.names[self.names.len() - 1],
                "more shards than the manifest lists",
            ));
        }
        self.shard = Some(next);
        self.received = 0;
        self.hasher = Sha256::new();
        Ok(())
    }

    fn push(&mut self, piece: &[u8]) -> Result<Tensors> {
        let i = self.current();
        let shard = &self.component.shards[i];
        self.received += piece.len() as u64;
        if self.received > shard.bytes {
            return Err(Error::io(
                &self.names[i],
                format!("has more than the {} bytes the manifest lists", shard.bytes),
            ));
        }
        self.hasher.update(piece);
        self.buffer.extend_from_slice(piece);
        self.ready()
    }

    fn end(&mut self) -> Result<Tensors> {
        let i = self.current();
        let shard = &self.component.shards[i];
        let name = &self.names[i];
        if self.received != shard.bytes {
            return Err(Error::io(
                name,
                format!(
                    "has {} bytes, the manifest lists {}",
                    self.received, shard.bytes
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
        Ok(Vec::new())
    }

    fn finish(&self) -> Result<()> {
        let arrived = self.shard.map_or(0, |s| s + 1);
        if arrived < self.component.shards.len() || self.next < self.order.len() {
            return Err(Error::io(
                &self.names[arrived.min(self.names.len().saturating_sub(1))],
                format!(
                    "loading stopped after {arrived} of {} shards",
                    self.component.shards.len()
                ),
            ));
        }
        Ok(())
    }
}

impl ShardReader {
    /// Every tensor whose bytes have all arrived.
    fn ready(&mut self) -> Result<Tensors> {
        let end = self.offset + self.buffer.len() as u64;
        let mut batch = Vec::new();
        let mut consumed = self.offset;
        while let Some(&(start, i)) = self.order.get(self.next) {
            let entry = &self.component.tensors[i];
            if start + entry.length > end {
                break;
            }
            let a = (start - self.offset) as usize;
            let bytes = &self.buffer[a..a + entry.length as usize];
            batch.extend(decode(entry, bytes, self.f16_scales));
            consumed = start + entry.length;
            self.next += 1;
        }
        self.buffer.drain(..(consumed - self.offset) as usize);
        self.offset = consumed;
        Ok(batch)
    }
}

/// A stored tensor's bytes as burn tensor data (the CLIP token embedding as blocks of
/// rows); `f16_scales`: whether quantization scales may stay f16 on the device.
pub fn decode(entry: &TensorEntry, bytes: &[u8], f16_scales: bool) -> Tensors {
    let dtype = match entry.dtype {
        StoredDType::F32 => DType::F32,
        StoredDType::F16 => DType::F16,
        StoredDType::Q8 | StoredDType::Q4 => {
            let quant = entry.quant.as_ref().expect("checked by Manifest::parse");
            let [rows, cols] = matrix(&entry.shape);
            let data = quant.format().tensor_data(bytes, rows, cols, f16_scales);
            return vec![(entry.name.clone(), data)];
        }
    };
    tensor_data(&entry.name, &entry.shape, dtype, bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
