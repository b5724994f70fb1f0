//! Block quantization of weight matrices (`webdiffusion convert --quant q8|q4`).
//!
//! A weight is seen as the matrix `[rows, cols]` the layers keep (`[out, in]`, a
//! convolution's `in` being `c_in × k × k`, see `layers`). Each row is cut into blocks of
//! `block` consecutive values along `in`; a block stores one f16 scale `s` and signed
//! `bits`-bit integers `q` in the full two's-complement range (−128…127, −8…7), and reads
//! back as `q × s`.
//!
//! Bytes, in the order burn's packed-u32 quantized tensors use, so a pack's tensor goes to
//! the device without repacking: the `q` of each row packed into little-endian u32 words,
//! the first value in the lowest bits (4 per word for q8, 8 for q4); then every block's
//! scale as little-endian f16, row by row.
//!
//! The scale of a block is the one of a few candidates around `max|w| / qmax` that gives
//! the smallest squared error once rounded to f16: clipping the largest value a little
//! buys a finer step for all the others, which matters most at 4 bits.

use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue, ScaleDtype};
use burn::tensor::{DType, TensorData};
use half::f16;

use crate::error::{Error, Result};

/// What `convert --quant` produces: f16 everywhere, or block-quantized weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F16,
    Q8,
    Q4,
}

impl Precision {
    pub const NAMES: &[&str] = &["f16", "q8", "q4"];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F16 => "f16",
            Precision::Q8 => "q8",
            Precision::Q4 => "q4",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f16" => Ok(Precision::F16),
            "q8" => Ok(Precision::Q8),
            "q4" => Ok(Precision::Q4),
            other => Err(Error::invalid(
                "--quant",
                format!(
                    "unknown value {other:?} (expected one of {})",
                    Self::NAMES.join(", ")
                ),
            )),
        }
    }
}

/// The layout of one quantized matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockFormat {
    /// 8 or 4.
    pub bits: u32,
    /// Values per scale, along a row.
    pub block: usize,
}

/// How the scale is chosen: the error-minimising search, or plain `max|w| / qmax`
/// (kept for comparison and for checking the byte layout against burn's quantizer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scales {
    Search,
    AbsMax,
}

impl BlockFormat {
    /// The block sizes packs use (`convert` writes 32 and 64).
    pub const BLOCKS: [usize; 2] = [32, 64];

    pub fn new(bits: u32, block: usize) -> Self {
        Self { bits, block }
    }

    fn qmin(self) -> i32 {
        -(1 << (self.bits - 1))
    }

    fn qmax(self) -> i32 {
        (1 << (self.bits - 1)) - 1
    }

    /// Bytes the packed values of `[rows, cols]` take.
    pub fn value_bytes(self, rows: usize, cols: usize) -> usize {
        rows * (cols * self.bits as usize).div_ceil(32) * 4
    }

    /// Bytes of a `[rows, cols]` matrix: values then scales.
    pub fn bytes(self, rows: usize, cols: usize) -> usize {
        self.value_bytes(rows, cols) + rows * (cols / self.block) * 2
    }

    /// burn's description of the same bytes, with the scales as `scale` (F16 as stored, or
    /// F32 after [`widen_scales`](Self::widen_scales)). Full range (`Q8F`/`Q4F`): the
    /// search may use −2^(bits−1).
    pub fn scheme(self, scale: ScaleDtype) -> QuantScheme {
        let value = if self.bits == 8 {
            QuantValue::Q8F
        } else {
            QuantValue::Q4F
        };
        QuantScheme::default()
            .with_value(value)
            .with_store(QuantStore::PackedU32(0))
            .per_block([1u8, self.block as u8], scale)
    }

    /// The same matrix with its scales as f32: for GPUs whose shaders cannot read f16
    /// (WebGPU without `shader-f16`), at 4 more bits per block.
    pub fn widen_scales(self, bytes: &[u8], rows: usize, cols: usize) -> Vec<u8> {
        let (values, scales) = bytes.split_at(self.value_bytes(rows, cols));
        let mut out = Vec::with_capacity(values.len() + scales.len() * 2);
        out.extend_from_slice(values);
        for s in scales.chunks_exact(2) {
            out.extend_from_slice(&f16::from_le_bytes([s[0], s[1]]).to_f32().to_le_bytes());
        }
        out
    }

    /// The bytes `quantize` wrote as burn tensor data of shape `[rows, cols]`, ready for the
    /// device: scales as stored where shaders read f16 (`f16_scales`), widened to f32
    /// elsewhere.
    pub fn tensor_data(
        self,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        f16_scales: bool,
    ) -> TensorData {
        let (bytes, scale) = if f16_scales {
            (bytes.to_vec(), ScaleDtype::F16)
        } else {
            (self.widen_scales(bytes, rows, cols), ScaleDtype::F32)
        };
        let dtype = DType::QFloat(self.scheme(scale));
        TensorData::from_bytes_vec(bytes, [rows, cols], dtype)
    }

    /// Whether rows of `cols` values can be cut into whole blocks.
    pub fn fits(self, cols: usize) -> bool {
        cols > 0 && cols.is_multiple_of(self.block)
    }

    /// Quantizes the row-major matrix `w` of `rows × cols` (`cols` a multiple of `block`),
    /// rows shared out among the CPU's threads.
    pub fn quantize(self, w: &[f32], rows: usize, cols: usize, scales: Scales) -> Vec<u8> {
        assert!(self.fits(cols) && w.len() == rows * cols);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let rows_per_part = rows.div_ceil(threads).max(1);
        if rows_per_part >= rows {
            let (mut values, scale_bytes) = self.quantize_rows(w, cols, scales);
            values.extend_from_slice(&scale_bytes);
            return values;
        }
        let parts: Vec<(Vec<u8>, Vec<u8>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = w
                .chunks(rows_per_part * cols)
                .map(|part| scope.spawn(move || self.quantize_rows(part, cols, scales)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("quantizer thread"))
                .collect()
        });
        let mut bytes = Vec::with_capacity(self.bytes(rows, cols));
        for (values, _) in &parts {
            bytes.extend_from_slice(values);
        }
        for (_, scale_bytes) in &parts {
            bytes.extend_from_slice(scale_bytes);
        }
        bytes
    }

    /// Packed values and f16 scales of whole rows.
    fn quantize_rows(self, w: &[f32], cols: usize, scales: Scales) -> (Vec<u8>, Vec<u8>) {
        let rows = w.len() / cols;
        let per_word = 32 / self.bits as usize;
        let mask = (1u32 << self.bits) - 1;
        let mut values = Vec::with_capacity(self.value_bytes(rows, cols));
        let mut scale_bytes = Vec::with_capacity(rows * cols / self.block * 2);
        let mut q = vec![0i32; self.block];
        let mut row_q = Vec::with_capacity(cols);
        for row in w.chunks_exact(cols) {
            row_q.clear();
            for block in row.chunks_exact(self.block) {
                let s = self.choose_scale(block, scales);
                self.round(block, s, &mut q);
                row_q.extend_from_slice(&q);
                scale_bytes.extend_from_slice(&f16::from_f32(s).to_le_bytes());
            }
            for word in row_q.chunks(per_word) {
                let packed = word.iter().enumerate().fold(0u32, |acc, (i, v)| {
                    acc | ((*v as u32) & mask) << (i * self.bits as usize)
                });
                values.extend_from_slice(&packed.to_le_bytes());
            }
        }
        (values, scale_bytes)
    }

    /// The matrix back as f32, from the bytes `quantize` writes.
    pub fn dequantize(self, bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<f32>> {
        if bytes.len() != self.bytes(rows, cols) || !self.fits(cols) {
            return Err(Error::invalid(
                "quantized tensor",
                format!(
                    "{} bytes do not hold a {rows}×{cols} q{} matrix in blocks of {}",
                    bytes.len(),
                    self.bits,
                    self.block
                ),
            ));
        }
        let (values, scales) = bytes.split_at(self.value_bytes(rows, cols));
        let per_word = 32 / self.bits as usize;
        let words_per_row = cols.div_ceil(per_word);
        let shift = 32 - self.bits;
        let mut out = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for c in 0..cols {
                let at = (r * words_per_row + c / per_word) * 4;
                let word = u32::from_le_bytes(values[at..at + 4].try_into().expect("4 bytes"));
                let raw = word >> ((c % per_word) as u32 * self.bits);
                // Sign-extend the low `bits` bits.
                let q = ((raw << shift) as i32) >> shift;
                let b = (r * cols + c) / self.block * 2;
                let s = f16::from_le_bytes([scales[b], scales[b + 1]]).to_f32();
                out.push(q as f32 * s);
            }
        }
        Ok(out)
    }

    fn round(self, block: &[f32], s: f32, q: &mut [i32]) {
        let (lo, hi) = (self.qmin() as f32, self.qmax() as f32);
        for (q, w) in q.iter_mut().zip(block) {
            *q = if s > 0.0 {
                (w / s).round().clamp(lo, hi) as i32
            } else {
                0
            };
        }
    }

    /// The f16 scale for `block`, as stored (so the search measures what will be read).
    fn choose_scale(self, block: &[f32], scales: Scales) -> f32 {
        let amax = block.iter().fold(0f32, |m, w| m.max(w.abs()));
        if amax == 0.0 || !amax.is_finite() {
            return 0.0;
        }
        let qmax = self.qmax() as f32;
        // Rounded up, like burn: the largest value must not clip under plain absmax.
        let absmax = f16_up(amax / qmax);
        if scales == Scales::AbsMax {
            return absmax;
        }
        let divisors: &[f32] = if self.bits == 8 {
            &[127.0, 127.5, 128.0]
        } else {
            &[7.0, 7.25, 7.5, 7.75, 8.0, 8.5, 9.0, 10.0]
        };
        let mut q = vec![0i32; block.len()];
        let mut best = (f32::INFINITY, absmax);
        let candidates = divisors.iter().map(|d| f16_nearest(amax / d));
        for s in std::iter::once(absmax).chain(candidates) {
            self.round(block, s, &mut q);
            let err: f32 = block
                .iter()
                .zip(&q)
                .map(|(w, q)| (w - *q as f32 * s).powi(2))
                .sum();
            if err < best.0 {
                best = (err, s);
            }
        }
        best.1
    }
}

fn f16_nearest(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// The smallest f16 not below `x`.
fn f16_up(x: f32) -> f32 {
    let h = f16::from_f32(x);
    if h.to_f32() >= x {
        h.to_f32()
    } else {
        f16::from_bits(h.to_bits() + 1).to_f32()
    }
}
