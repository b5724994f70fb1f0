//! A tensor on its way into a pack: what a diffusers folder and a single-file checkpoint
//! both hand to the pack writer.

use safetensors::Dtype;

/// One tensor to write, borrowed from the source file and named as in diffusers.
#[derive(Clone)]
pub struct Source<'a> {
    pub name: String,
    /// The shape it is written with (its name's).
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub data: &'a [u8],
    /// Stored as the transpose of `shape` (OpenCLIP's `text_projection`, applied as
    /// `x @ P` where transformers' linear layer computes `x @ Wᵀ`).
    pub transposed: bool,
}

impl<'a> From<(&crate::weights::safetensors::TensorInfo, &'a [u8])> for Source<'a> {
    fn from((info, data): (&crate::weights::safetensors::TensorInfo, &'a [u8])) -> Self {
        Source {
            name: info.name.clone(),
            shape: info.shape.clone(),
            dtype: info.dtype,
            data,
            transposed: false,
        }
    }
}
