//! Reading one component of a pack from its shards, as they arrive.

use burn::tensor::{DType, TensorData};
use sha2::{Digest, Sha256};

use super::{ComponentEntry, StoredDType, TensorEntry, matrix};
use crate::error::{Error, Result};
use crate::weights::{Piece, TensorReader, Tensors, float_piece, float_piece_bytes, pieces};

/// Takes a component's shards in order, each in pieces, and returns each tensor as soon as
/// its bytes have arrived, holding only the bytes of tensors not yet complete. Each shard's
/// size and sha256 are checked at its end: a mismatch fails the load, and a failed load
/// drops the module, so a damaged shard never becomes part of a model.
pub struct ShardReader {
    component: ComponentEntry,
    /// Each shard as named in errors.
    names: Vec<String>,
    /// Every tensor's pieces by stream offset: start in the stream, tensor index, piece.
    order: Vec<(u64, usize, Piece)>,
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
        let mut order = Vec::new();
        for (i, t) in component.tensors.iter().enumerate() {
            let mut at = component.start(&starts, t).unwrap_or(u64::MAX);
            for piece in pieces(&t.name, &t.shape) {
                let n = piece_bytes(t, &piece) as u64;
                order.push((at, i, piece));
                at = at.saturating_add(n);
            }
        }
        order.sort_by_key(|(start, i, _)| (*start, *i));
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
    /// Every tensor (or piece of one) whose bytes have all arrived.
    fn ready(&mut self) -> Result<Tensors> {
        let end = self.offset + self.buffer.len() as u64;
        let mut batch = Vec::new();
        let mut consumed = self.offset;
        while let Some((start, i, piece)) = self.order.get(self.next) {
            let entry = &self.component.tensors[*i];
            let length = piece_bytes(entry, piece) as u64;
            if start + length > end {
                break;
            }
            let a = (start - self.offset) as usize;
            let bytes = &self.buffer[a..a + length as usize];
            batch.push(decode_piece(entry, piece, bytes, self.f16_scales)?);
            consumed = start + length;
            self.next += 1;
        }
        self.buffer.drain(..(consumed - self.offset) as usize);
        self.offset = consumed;
        Ok(batch)
    }
}

/// The bytes `piece` of a stored tensor takes. A quantized token embedding is stored as its
/// row blocks one after another, each in the layout of a whole quantized matrix (pack
/// version 2), so that each decodes on its own.
fn piece_bytes(entry: &TensorEntry, piece: &Piece) -> usize {
    match (&piece.rows, entry.dtype) {
        (None, _) => entry.length as usize,
        (Some(_), StoredDType::F32) => float_piece_bytes(piece, &entry.shape, DType::F32),
        (Some(_), StoredDType::F16) => float_piece_bytes(piece, &entry.shape, DType::F16),
        (Some(rows), StoredDType::Q8 | StoredDType::Q4) => {
            let quant = entry.quant.as_ref().expect("checked by Manifest::parse");
            quant.format().bytes(rows.len(), matrix(&entry.shape)[1])
        }
    }
}

/// A piece of a stored tensor (`bytes`: the piece's own) as burn tensor data;
/// `f16_scales`: whether quantization scales may stay f16 on the device. Quantized weights
/// stay quantized; a quantized token embedding is widened to f32 here, as lookups need
/// floats.
fn decode_piece(
    entry: &TensorEntry,
    piece: &Piece,
    bytes: &[u8],
    f16_scales: bool,
) -> Result<(String, TensorData)> {
    let dtype = match entry.dtype {
        StoredDType::F32 => DType::F32,
        StoredDType::F16 => DType::F16,
        StoredDType::Q8 | StoredDType::Q4 => {
            let format = entry
                .quant
                .as_ref()
                .expect("checked by Manifest::parse")
                .format();
            let [rows, cols] = matrix(&entry.shape);
            let data = match &piece.rows {
                None => format.tensor_data(bytes, rows, cols, f16_scales),
                Some(rows) => {
                    let values = format.dequantize(bytes, rows.len(), cols)?;
                    TensorData::new(values, [rows.len(), cols])
                }
            };
            return Ok((piece.name.clone(), data));
        }
    };
    Ok(float_piece(piece, &entry.shape, dtype, bytes))
}

/// A whole stored tensor's bytes as burn tensor data (see [`decode_piece`]).
pub fn decode(entry: &TensorEntry, bytes: &[u8], f16_scales: bool) -> Result<Tensors> {
    let mut at = 0;
    pieces(&entry.name, &entry.shape)
        .iter()
        .map(|piece| {
            let n = piece_bytes(entry, piece);
            at += n;
            decode_piece(entry, piece, &bytes[at - n..at], f16_scales)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::split_embedding::ROWS;
    use crate::pack::Shard;
    use crate::pack::convert::{Policy, encode};
    use crate::quant::{BlockFormat, Precision};

    /// A q8 token embedding of 20000 rows arriving in 1 MiB pieces comes out as its three
    /// row blocks, each as soon as its bytes are there, with the values it was given (to
    /// 8-bit precision), and the reader never holds much more than one block.
    #[test]
    fn a_quantized_token_embedding_streams_in_row_blocks() {
        let (rows, cols) = (20000, 64);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let name = "text_model.embeddings.token_embedding.weight";
        let encoded = encode(name, &[rows, cols], &values, Precision::Q4, Policy::Pack);
        assert_eq!(
            encoded.dtype,
            StoredDType::Q8,
            "token embedding in q4 packs"
        );
        let bytes = encoded.bytes;
        let component = ComponentEntry {
            shards: vec![Shard {
                file: "text_encoder/shard-00000.bin".into(),
                bytes: bytes.len() as u64,
                sha256: hex(&Sha256::digest(&bytes)),
            }],
            tensors: vec![TensorEntry {
                name: name.into(),
                shape: vec![rows, cols],
                dtype: encoded.dtype,
                quant: encoded.quant,
                shard: 0,
                offset: 0,
                length: bytes.len() as u64,
            }],
        };
        assert_eq!(bytes.len(), BlockFormat::new(8, 32).bytes(rows, cols));
        let mut reader = ShardReader::new(component, vec!["shard".into()], true);
        reader.begin("shard").unwrap();
        let mut parts = Vec::new();
        let mut held = 0;
        for piece in bytes.chunks(1 << 20) {
            for (name, data) in reader.push(piece).unwrap() {
                parts.push((name, data, reader.offset));
            }
            held = held.max(reader.buffer.capacity());
        }
        assert!(reader.end().unwrap().is_empty());
        reader.finish().unwrap();
        let block_bytes = BlockFormat::new(8, 32).bytes(ROWS, cols);
        assert!(held <= block_bytes + (2 << 20), "held {held} bytes");

        let names: Vec<&str> = parts.iter().map(|(n, ..)| n.as_str()).collect();
        assert_eq!(
            names,
            (0..3)
                .map(|i| format!("text_model.embeddings.token_embedding.parts.{i}"))
                .collect::<Vec<_>>()
        );
        // Each block was returned before the stream's end.
        assert!(parts[0].2 < bytes.len() as u64 / 2, "first block came late");
        let mut row = 0;
        for (_, data, _) in &parts {
            let n = data.shape()[0];
            assert_eq!(data.shape().to_vec(), vec![n, cols]);
            let got = data.try_to_vec::<f32>().unwrap();
            let want = &values[row * cols..(row + n) * cols];
            let worst = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // Blocks of values in [-0.5, 0.5]: a step of about 0.5 / 127, and the scale
            // search may clip the largest value by up to one step.
            assert!(worst <= 0.5 / 127.0 * 1.02, "rows {row}..: error {worst}");
            row += n;
        }
        assert_eq!(row, rows);
    }
}
