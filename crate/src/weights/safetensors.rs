//! The one safetensors reader: the header parsed and checked once, then tensors taken
//! from the bytes as they arrive (a whole file natively, cached chunks in the browser).

use std::collections::BTreeMap;

use burn::tensor::DType;
use safetensors::Dtype;
use serde::Deserialize;

use super::{Piece, TensorReader, Tensors, float_piece, float_piece_bytes, pieces};
use crate::error::{Error, Result};

/// The largest header accepted (as the safetensors crate).
const MAX_HEADER: usize = 100_000_000;

/// One tensor as the header describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct TensorInfo {
    #[serde(skip)]
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range in the data section.
    pub data_offsets: (usize, usize),
}

/// A parsed and checked header.
#[derive(Debug, Clone)]
pub struct Header {
    /// Where the data section starts in the file.
    pub data_start: usize,
    /// Every tensor, by data offset; together they cover the data section exactly.
    pub tensors: Vec<TensorInfo>,
    /// `__metadata__`, when present.
    pub metadata: BTreeMap<String, String>,
}

fn invalid(file: &str, message: impl Into<String>) -> Error {
    Error::Safetensors {
        file: file.into(),
        message: message.into(),
    }
}

impl Header {
    /// The header at the start of `bytes` (the file `file`), `None` while more bytes are
    /// needed to read it.
    pub fn parse(bytes: &[u8], file: &str) -> Result<Option<Header>> {
        let Some(len) = bytes.get(..8) else {
            return Ok(None);
        };
        let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        if n > MAX_HEADER as u64 {
            return Err(invalid(
                file,
                format!("header length {n} is larger than {MAX_HEADER} bytes"),
            ));
        }
        let Some(json) = bytes.get(8..8 + n as usize) else {
            return Ok(None);
        };
        let mut entries: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json)
            .map_err(|e| invalid(file, format!("header is not valid JSON: {e}")))?;
        let metadata = match entries.remove("__metadata__") {
            Some(value) => serde_json::from_value(value)
                .map_err(|e| invalid(file, format!("`__metadata__`: {e}")))?,
            None => BTreeMap::new(),
        };
        let mut tensors = entries
            .into_iter()
            .map(|(name, value)| {
                let mut info: TensorInfo = serde_json::from_value(value)
                    .map_err(|e| invalid(file, format!("tensor `{name}`: {e}")))?;
                let (a, b) = info.data_offsets;
                let size = info
                    .shape
                    .iter()
                    .try_fold(info.dtype.bitsize() / 8, |n, &d| n.checked_mul(d));
                if a > b || Some(b - a) != size {
                    return Err(invalid(
                        file,
                        format!(
                            "tensor `{name}`: data offsets [{a}, {b}) do not hold {:?} {:?}",
                            info.dtype, info.shape
                        ),
                    ));
                }
                info.name = name;
                Ok(info)
            })
            .collect::<Result<Vec<_>>>()?;
        tensors.sort_by_key(|t| t.data_offsets);
        let mut end = 0;
        for t in &tensors {
            if t.data_offsets.0 != end {
                return Err(invalid(
                    file,
                    format!("tensor `{}` does not start where the previous ends", t.name),
                ));
            }
            end = t.data_offsets.1;
        }
        Ok(Some(Header {
            data_start: 8 + n as usize,
            tensors,
            metadata,
        }))
    }

    /// The whole file's length, as the header describes it.
    pub fn file_len(&self) -> usize {
        self.data_start + self.tensors.last().map_or(0, |t| t.data_offsets.1)
    }
}

/// A whole safetensors file in memory: its header and each tensor's bytes.
pub struct SafetensorsFile<'a> {
    pub header: Header,
    bytes: &'a [u8],
}

impl<'a> SafetensorsFile<'a> {
    /// Parses `bytes` (the file `file`), which must be the whole file.
    pub fn parse(bytes: &'a [u8], file: &str) -> Result<Self> {
        let header = Header::parse(bytes, file)?
            .ok_or_else(|| invalid(file, "file ended before its header"))?;
        if bytes.len() != header.file_len() {
            return Err(invalid(
                file,
                format!(
                    "file has {} bytes, its header describes {}",
                    bytes.len(),
                    header.file_len()
                ),
            ));
        }
        Ok(Self { header, bytes })
    }

    /// Every tensor with its bytes, in file order.
    pub fn tensors(&self) -> impl Iterator<Item = (&TensorInfo, &'a [u8])> {
        let data = &self.bytes[self.header.data_start..];
        self.header
            .tensors
            .iter()
            .map(move |t| (t, &data[t.data_offsets.0..t.data_offsets.1]))
    }

    pub fn get(&self, name: &str) -> Option<(&TensorInfo, &'a [u8])> {
        self.tensors().find(|(t, _)| t.name == name)
    }
}

/// Reads just the header of the file at `path`.
#[cfg(not(target_family = "wasm"))]
pub fn read_header(path: &std::path::Path) -> Result<Header> {
    use std::io::Read;
    let file = path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(&file, e))?;
    let mut bytes = vec![0u8; 8];
    f.read_exact(&mut bytes)
        .map_err(|_| invalid(&file, "too short for a safetensors header"))?;
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n <= MAX_HEADER as u64 {
        bytes.resize(8 + n as usize, 0);
        f.read_exact(&mut bytes[8..])
            .map_err(|_| invalid(&file, "file ended before its header"))?;
    }
    Header::parse(&bytes, &file)?.ok_or_else(|| invalid(&file, "file ended before its header"))
}

/// The burn dtype of a stored float tensor.
pub fn float_dtype(dtype: Dtype) -> Option<DType> {
    match dtype {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Little-endian F32, F16 or BF16 bytes as f32 values; `None` for other dtypes.
pub fn floats(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// The float tensor `key` of `file` as f32 values, refusing other dtypes and non-finite
/// values by name (small user files: LoRAs, embeddings, latents).
pub fn finite_floats(file: &str, key: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    let values = floats(dtype, data).ok_or_else(|| {
        Error::io(
            file,
            format!("tensor `{key}` is {dtype:?}; expected F32, F16 or BF16"),
        )
    })?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::io(
            file,
            format!("tensor `{key}` has a non-finite value at index {i}"),
        ));
    }
    Ok(values)
}

/// Reads a safetensors file that arrives in pieces, holding only the bytes not yet turned
/// into tensors: at most one piece plus a tensor (or a block of the token embedding's
/// rows, see [`pieces`]) that spans pieces.
#[derive(Default)]
pub struct SafetensorsReader {
    file: String,
    /// Bytes received and not yet used; `buffer[0]` is at file offset `offset`.
    buffer: Vec<u8>,
    offset: usize,
    header: Option<Header>,
    /// Every tensor's pieces in file order: file range, tensor index, piece.
    order: Vec<(std::ops::Range<usize>, usize, Piece)>,
    /// Pieces already returned.
    next: usize,
}

impl TensorReader for SafetensorsReader {
    fn begin(&mut self, file: &str) -> Result<()> {
        *self = Self {
            file: file.into(),
            ..Self::default()
        };
        Ok(())
    }

    fn push(&mut self, piece: &[u8]) -> Result<Tensors> {
        self.buffer.extend_from_slice(piece);
        if self.header.is_none() {
            match Header::parse(&self.buffer, &self.file)? {
                Some(header) => {
                    self.order = piece_order(&header);
                    self.header = Some(header);
                }
                None => return Ok(Vec::new()),
            }
        }
        let header = self.header.as_ref().expect("header read");
        let end = self.offset + self.buffer.len();
        let mut out = Vec::new();
        let mut used = self.offset;
        for (range, i, piece) in self.order[self.next..]
            .iter()
            .take_while(|(range, ..)| range.end <= end)
        {
            let t = &header.tensors[*i];
            let bytes = &self.buffer[range.start - self.offset..range.end - self.offset];
            out.extend(stored_piece(t, piece, bytes, &self.file)?);
            used = range.end;
            self.next += 1;
        }
        self.buffer.drain(..used - self.offset);
        self.offset = used;
        Ok(out)
    }

    fn end(&mut self) -> Result<Tensors> {
        let received = self.offset + self.buffer.len();
        match &self.header {
            Some(header) if self.next == self.order.len() && received == header.file_len() => {
                Ok(Vec::new())
            }
            Some(header) => Err(invalid(
                &self.file,
                format!(
                    "file has {received} bytes, its header describes {}",
                    header.file_len()
                ),
            )),
            None => Err(invalid(&self.file, "file ended before its header")),
        }
    }
}

/// Each tensor's pieces with the file range of their bytes, in file order.
fn piece_order(header: &Header) -> Vec<(std::ops::Range<usize>, usize, Piece)> {
    let mut order = Vec::new();
    for (i, t) in header.tensors.iter().enumerate() {
        let mut at = header.data_start + t.data_offsets.0;
        let end = header.data_start + t.data_offsets.1;
        match float_dtype(t.dtype) {
            Some(dtype) => {
                for piece in pieces(&t.name, &t.shape) {
                    let n = float_piece_bytes(&piece, &t.shape, dtype);
                    order.push((at..at + n, i, piece));
                    at += n;
                }
            }
            None => {
                let piece = Piece {
                    name: t.name.clone(),
                    rows: None,
                };
                order.push((at..end, i, piece));
            }
        }
    }
    order
}

/// A piece of a stored tensor as burn tensor data; buffers (CLIP's `position_ids`, SD3's
/// position table), not parameters, are skipped.
fn stored_piece(t: &TensorInfo, piece: &Piece, bytes: &[u8], file: &str) -> Result<Tensors> {
    if super::keys::is_buffer(&t.name) {
        return Ok(Vec::new());
    }
    match float_dtype(t.dtype) {
        Some(dtype) => Ok(vec![float_piece(piece, &t.shape, dtype, bytes)]),
        None => Err(invalid(
            file,
            format!(
                "tensor `{}` is {:?}; expected F32, F16 or BF16",
                t.name, t.dtype
            ),
        )),
    }
}

/// Writes `tensors` (name, dtype, shape, little-endian bytes) as a safetensors file.
pub fn serialize(tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::invalid(name, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::invalid("safetensors", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
        let tensors: Vec<_> = tensors
            .iter()
            .map(|(name, shape, values)| {
                let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (name.to_string(), Dtype::F32, shape.clone(), bytes)
            })
            .collect();
        serialize(&tensors).unwrap()
    }

    #[test]
    fn pieces_of_any_size_give_every_tensor_once() {
        let bytes = file(&[
            ("a.weight", vec![2, 3], (0..6).map(|i| i as f32).collect()),
            ("b.bias", vec![4], vec![1.0, 2.0, 3.0, 4.0]),
        ]);
        for piece in [1, 7, 64, bytes.len()] {
            let mut reader = SafetensorsReader::default();
            reader.begin("test").unwrap();
            let mut names = Vec::new();
            for chunk in bytes.chunks(piece) {
                names.extend(reader.push(chunk).unwrap().into_iter().map(|(n, _)| n));
            }
            reader.end().unwrap();
            names.sort();
            assert_eq!(names, ["a.weight", "b.bias"], "pieces of {piece}");
        }
    }

    #[test]
    fn a_truncated_file_is_refused_at_its_end() {
        let bytes = file(&[("a", vec![8], vec![0.5; 8])]);
        let mut reader = SafetensorsReader::default();
        reader.begin("x.safetensors").unwrap();
        reader.push(&bytes[..bytes.len() - 3]).unwrap();
        let err = reader.end().unwrap_err().to_string();
        assert!(
            err.contains("x.safetensors") && err.contains("header describes"),
            "{err}"
        );
    }

    #[test]
    fn inconsistent_headers_are_refused() {
        let header = |json: &str| {
            let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(json.as_bytes());
            Header::parse(&bytes, "h").map(|_| ())
        };
        // Shape and offsets disagree; a huge shape must not overflow.
        assert!(header(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#).is_err());
        assert!(
            header(r#"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}}"#)
                .is_err()
        );
        // A gap between tensors.
        assert!(
            header(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                    "b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#
            )
            .is_err()
        );
        let mut huge = (u64::MAX).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(Header::parse(&huge, "h").is_err());
    }
}
