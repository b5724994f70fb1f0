//! From stored bytes to the networks' parameters, by one path: a [`TensorReader`] turns a
//! component's files (safetensors, or a pack's shards) into named tensors as their bytes
//! arrive, and a [`ModuleLoader`] applies them to the module. Each tensor is converted to
//! the compute dtype as it is applied: the bytes not yet used plus one batch of tensors
//! are all that is held at once.

mod keys;
pub mod ldm;
pub mod safetensors;

pub use keys::{checkpoint_name, field_path, is_buffer};
pub use safetensors::{SafetensorsReader, finite_floats, floats};

use std::collections::{HashMap, HashSet};

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::Device;
use burn::store::{ApplyError, ApplyResult, FloatCastAdapter, ModuleSnapshot, bridge};
use burn::tensor::{DType, TensorData};

use crate::error::{Error, Result, Shape};
use crate::models::split_embedding::{ROWS, split_table};

/// Named tensors (checkpoint keys) ready to apply.
pub type Tensors = Vec<(String, TensorData)>;

/// Turns the bytes of a component's weight files, fed in order and in pieces, into named
/// tensors.
pub trait TensorReader {
    /// A new file begins; `file` names it in errors.
    fn begin(&mut self, file: &str) -> Result<()>;
    /// The next piece of the current file; returns the tensors it completes.
    fn push(&mut self, piece: &[u8]) -> Result<Tensors>;
    /// The current file ended (checks its size, and a pack shard's sha256); returns the
    /// tensors only now complete.
    fn end(&mut self) -> Result<Tensors>;
    /// After the last file: checks that nothing is missing.
    fn finish(&self) -> Result<()> {
        Ok(())
    }
}

/// A convolution weight `[c_out, c_in, k, k]` as the `[c_out, c_in·k·k]` matrix the
/// layers keep; other shapes unchanged.
pub fn matrix_shape(shape: &[usize]) -> Vec<usize> {
    match shape {
        [c_out, rest @ ..] if rest.len() == 3 => vec![*c_out, rest.iter().product()],
        _ => shape.to_vec(),
    }
}

/// A part of a stored tensor that is decoded on its own. CLIP's token embedding (49408
/// rows, up to 101 MB in f16) is read one block of [`ROWS`] rows at a time, each becoming
/// one part of `SplitEmbedding`, so that a loader never holds the whole table; any other
/// tensor is one piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The checkpoint key it is applied under (`…token_embedding.parts.{i}` for a block).
    pub name: String,
    /// Its rows of the stored `[rows, cols]` matrix; `None`: the whole tensor.
    pub rows: Option<std::ops::Range<usize>>,
}

/// More rows than any tokenizer's vocabulary: a table claiming more is read whole (and then
/// refused for its shape), so that a hostile header cannot ask for millions of pieces.
const MAX_SPLIT_ROWS: usize = 1 << 20;

/// The pieces of the stored tensor `name` of `shape`, in stream order.
pub fn pieces(name: &str, shape: &[usize]) -> Vec<Piece> {
    let whole = || {
        vec![Piece {
            name: name.to_string(),
            rows: None,
        }]
    };
    let Some(table) = split_table(name) else {
        return whole();
    };
    let rows = match shape[..] {
        [rows, cols] if rows > 0 && cols > 0 && rows <= MAX_SPLIT_ROWS => rows,
        _ => return whole(),
    };
    (0..rows.div_ceil(ROWS))
        .map(|i| Piece {
            name: format!("{table}.parts.{i}"),
            rows: Some(i * ROWS..rows.min((i + 1) * ROWS)),
        })
        .collect()
}

/// A piece of a stored float tensor (little-endian `bytes` of `dtype`, the piece's own) as
/// the tensor data the module takes: convolution weights as matrices.
pub fn float_piece(
    piece: &Piece,
    shape: &[usize],
    dtype: DType,
    bytes: &[u8],
) -> (String, TensorData) {
    let shape = match &piece.rows {
        Some(rows) => vec![rows.len(), shape[1]],
        None => matrix_shape(shape),
    };
    let data = TensorData::from_bytes_vec(bytes.to_vec(), shape, dtype);
    (piece.name.clone(), data)
}

/// The bytes a piece of a stored float tensor takes.
pub fn float_piece_bytes(piece: &Piece, shape: &[usize], dtype: DType) -> usize {
    let values = match &piece.rows {
        Some(rows) => rows.len() * shape[1],
        None => shape.iter().product(),
    };
    values * dtype.size()
}

/// A whole stored float tensor as the tensor data the module takes (see [`pieces`]).
pub fn tensor_data(name: &str, shape: &[usize], dtype: DType, bytes: &[u8]) -> Tensors {
    let mut at = 0;
    pieces(name, shape)
        .iter()
        .map(|piece| {
            let n = float_piece_bytes(piece, shape, dtype);
            at += n;
            float_piece(piece, shape, dtype, &bytes[at - n..at])
        })
        .collect()
}

/// A module whose parameters are filled in batches of tensors, checking that each
/// tensor belongs to it and, at the end, that none is missing.
pub struct ModuleLoader<M> {
    module: M,
    device: Device,
    dtype: DType,
    applied: HashSet<String>,
    params: HashSet<String>,
    /// Checkpoint-key prefixes a file may leave out entirely (a decoder-only VAE).
    optional: &'static [&'static str],
}

impl<M: Module + ModuleSnapshot> ModuleLoader<M> {
    /// Float tensors are converted to `dtype`; quantized ones stay as they are. `device`:
    /// the module's.
    pub fn new(module: M, (device, dtype): (&Device, DType)) -> Self {
        Self {
            module,
            device: device.clone(),
            dtype,
            applied: HashSet::new(),
            params: HashSet::new(),
            optional: &[],
        }
    }

    /// The loader for `component`'s weights: what the component may lack is allowed to
    /// be missing (see `Component::optional_parts`).
    pub fn for_component(
        module: M,
        component: crate::component::Component,
        device: (&Device, DType),
    ) -> Self {
        Self {
            optional: component.optional_parts(),
            ..Self::new(module, device)
        }
    }

    /// Applies `tensors` (named by checkpoint key) read from `file` (named in errors).
    pub fn apply(&mut self, tensors: Tensors, file: &str) -> Result<()> {
        let tensors = tensors
            .into_iter()
            .map(|(key, data)| bridge::from_data(data, field_path(&key), None))
            .collect();
        let adapter = FloatCastAdapter::to(self.dtype);
        let result = self
            .module
            .apply(tensors, None, Some(Box::new(adapter)), true);
        // The device queues uploads (cubecl: up to 32 tasks) with their bytes; sent now,
        // a batch's bytes are freed before the next arrives, instead of a dozen batches
        // (the token embedding's blocks: 32 MiB each in f32) piling up in memory.
        self.device
            .flush()
            .map_err(|e| Error::Backend(format!("uploading weights from {file}: {e:?}")))?;
        self.record(result, file)
    }

    /// Turns burn's report into errors naming the file and key, and records what was loaded.
    fn record(&mut self, result: ApplyResult, file: &str) -> Result<()> {
        if let Some(error) = result.errors.first() {
            return Err(match error {
                ApplyError::ShapeMismatch {
                    path,
                    expected,
                    found,
                } => Error::ShapeMismatch {
                    file: file.into(),
                    key: checkpoint_name(path),
                    expected: Shape(expected.to_vec()),
                    found: Shape(found.to_vec()),
                },
                other => Error::Safetensors {
                    file: file.into(),
                    message: other.to_string(),
                },
            });
        }
        if let Some(path) = result.unused.iter().find(|k| !is_buffer(k)) {
            return Err(Error::UnexpectedTensor {
                file: file.into(),
                key: checkpoint_name(path),
            });
        }
        self.params
            .extend(result.missing.into_iter().map(|(path, _)| path));
        self.params.extend(result.applied.iter().cloned());
        self.applied.extend(result.applied);
        Ok(())
    }

    /// The module, once every parameter was loaded; `source` names the weights in errors.
    pub fn finish(mut self, source: &str) -> Result<M> {
        if self.params.is_empty() {
            // No tensor at all: apply none to learn what the model expected.
            self.apply(Vec::new(), source)?;
        }
        let mut missing: Vec<String> = self
            .params
            .difference(&self.applied)
            .map(|path| checkpoint_name(path))
            .collect();
        missing.sort();
        // A part left out entirely is allowed; one left out in part is a damaged file.
        let whole = |prefix: &&str| {
            let applied = self
                .applied
                .iter()
                .any(|p| checkpoint_name(p).starts_with(*prefix));
            !applied
        };
        missing.retain(|key| {
            !self
                .optional
                .iter()
                .any(|prefix| key.starts_with(*prefix) && whole(prefix))
        });
        if let Some(key) = missing.first() {
            return Err(Error::MissingTensor {
                file: source.into(),
                key: key.clone(),
            });
        }
        Ok(self.module)
    }
}

/// Every float parameter of `module`: burn's module path (enum variants included, as
/// module mappers see it), its checkpoint key and its shape. Nothing is allocated: lazy
/// parameters report their shape.
pub fn param_paths<M: Module>(module: &M) -> Vec<(String, String, Vec<usize>)> {
    #[derive(Default)]
    struct Paths {
        /// Each name entered, and whether it is part of checkpoint keys.
        path: Vec<(String, bool)>,
        out: Vec<(String, String, Vec<usize>)>,
    }
    impl ModuleVisitor for Paths {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            // Enum variants (`Projection::Conv`) are not part of checkpoint keys.
            let in_keys = !container_type.starts_with("Enum:");
            self.path.push((name.to_string(), in_keys));
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<burn::tensor::Tensor<D>>) {
            let join = |all: bool| {
                let names: Vec<&str> = self
                    .path
                    .iter()
                    .filter(|(_, in_keys)| all || *in_keys)
                    .map(|(n, _)| n.as_str())
                    .collect();
                names.join(".")
            };
            let shape = param.lazy_shape().iter().copied().collect();
            self.out
                .push((join(true), checkpoint_name(&join(false)), shape));
        }
    }
    let mut paths = Paths::default();
    module.visit(&mut paths);
    paths.out
}

/// Every parameter of `module` by checkpoint key (as a diffusers file names it), with the
/// shape it expects (convolution weights as matrices, the token embedding whole).
pub fn expected_tensors<M: Module>(module: &M) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    for (_, name, shape) in param_paths(module) {
        match name.split_once("#rows-block-") {
            // The token embedding's row blocks, back to one table.
            Some((whole, _)) => match out.iter_mut().find(|(n, _)| n == whole) {
                Some((_, rows)) => rows[0] += shape[0],
                None => out.push((whole.to_string(), shape)),
            },
            None => out.push((name, shape)),
        }
    }
    out
}

/// Checks that `tensors` (checkpoint key, shape) are exactly the `expected` ones (see
/// [`expected_tensors`]), naming `file` and the key of the first difference.
pub fn check_tensors(
    expected: &[(String, Vec<usize>)],
    tensors: &[(String, Vec<usize>)],
    file: &str,
) -> Result<()> {
    let expected: HashMap<&str, &[usize]> = expected
        .iter()
        .map(|(k, s)| (k.as_str(), s.as_slice()))
        .collect();
    let mut seen = HashSet::new();
    for (key, shape) in tensors {
        if is_buffer(key) {
            continue;
        }
        let name = checkpoint_name(&field_path(key));
        let Some(want) = expected.get(name.as_str()) else {
            return Err(Error::UnexpectedTensor {
                file: file.into(),
                key: key.clone(),
            });
        };
        if matrix_shape(shape) != *want {
            return Err(Error::ShapeMismatch {
                file: file.into(),
                key: key.clone(),
                expected: Shape(want.to_vec()),
                found: Shape(shape.clone()),
            });
        }
        seen.insert(name);
    }
    let mut missing: Vec<&str> = expected
        .keys()
        .copied()
        .filter(|k| !seen.contains(*k))
        .collect();
    missing.sort();
    match missing.first() {
        Some(key) => Err(Error::MissingTensor {
            file: file.into(),
            key: key.to_string(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plausible_token_embedding_is_read_in_row_blocks() {
        let key = "text_model.embeddings.token_embedding.weight";
        let rows: Vec<_> = pieces(key, &[49408, 768])
            .into_iter()
            .map(|p| p.rows)
            .collect();
        assert_eq!(rows.len(), 7);
        assert_eq!(rows[0], Some(0..ROWS));
        assert_eq!(rows[6], Some(6 * ROWS..49408));
        // Hostile or empty shapes are one piece, whatever they claim.
        for shape in [[usize::MAX, 0], [1 << 40, 1], [0, 768]] {
            assert_eq!(pieces(key, &shape).len(), 1, "{shape:?}");
        }
        assert_eq!(
            pieces("text_model.encoder.fc1.weight", &[49408, 768]).len(),
            1
        );
    }
}
