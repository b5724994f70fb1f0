//! Loading diffusers/transformers safetensors into the networks.
//!
//! Weights come as bytes (the browser has no file system). burn-store walks the module and
//! takes each tensor by its path, so the Rust field names mirror the checkpoint keys; the
//! few places where diffusers' module lists hold a single layer (`to_out.0`, `ff.net.0`)
//! are renamed by [`KEY_REMAPPING`]. Each tensor is converted to the compute dtype as it is
//! applied: the file's bytes plus one tensor in flight are all that is held at once.

use burn::module::{Module, ModuleVisitor, Param};
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{
    ApplyError, ApplyResult, FloatCastAdapter, ModuleAdapter, ModuleContext, ModuleSnapshot,
    SafetensorsStore, bridge,
};
use std::collections::HashSet;

use burn::tensor::{DType, TensorData};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde::Deserialize;

use crate::error::{Error, Result, Shape};
use crate::models::split_embedding::{ROWS, SPLIT_KEY};

/// Checkpoint key patterns → field paths, applied in order.
const KEY_REMAPPING: &[(&str, &str)] = &[
    // transformers ≤ 4 and real SD checkpoints prefix the CLIP text model.
    (r"^text_model\.", ""),
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.ff\.net\.0\.proj\.", ".ff.geglu."),
    (r"\.ff\.net\.2\.", ".ff.proj_out."),
    // Older VAE checkpoints name the mid-block attention projections differently.
    (r"\.query\.", ".to_q."),
    (r"\.key\.", ".to_k."),
    (r"\.value\.", ".to_v."),
    (r"\.proj_attn\.", ".to_out."),
];

/// Field paths → the checkpoint's names, to name keys in errors as the file does.
const KEY_NAMES: &[(&str, &str)] = &[
    (
        ".token_embedding.parts.",
        ".token_embedding.weight#rows-block-",
    ),
    (".to_out.", ".to_out.0."),
    (".ff.geglu.", ".ff.net.0.proj."),
    (".ff.proj_out.", ".ff.net.2."),
    (".gamma", ".weight"),
    (".beta", ".bias"),
];

/// Buffers some checkpoints carry that are not parameters (CLIP's `position_ids`).
fn is_buffer(key: &str) -> bool {
    key.ends_with("position_ids")
}

/// PyTorch names a norm's affine parameters `weight`/`bias`, burn `gamma`/`beta`. Linear and
/// convolution weights keep PyTorch's `[out, in]` layout here (see `layers`), so nothing is
/// transposed.
#[derive(Clone)]
struct NormNames;

impl ModuleAdapter for NormNames {
    fn adapt(&self, tensor: PackTensor, _ctx: ModuleContext<'_>) -> PackTensor {
        tensor
    }

    fn get_alternative_param_name(&self, param_name: &str, container_type: &str) -> Option<String> {
        let norm = matches!(container_type, "Struct:GroupNorm" | "Struct:LayerNorm");
        match param_name {
            "gamma" if norm => Some("weight".into()),
            "beta" if norm => Some("bias".into()),
            _ => None,
        }
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
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

/// The module path a checkpoint key is loaded into.
pub fn field_path(key: &str) -> String {
    static RULES: std::sync::OnceLock<Vec<(regex::Regex, &str)>> = std::sync::OnceLock::new();
    let rules = RULES.get_or_init(|| {
        KEY_REMAPPING
            .iter()
            .map(|(p, r)| (regex::Regex::new(p).expect("valid pattern"), *r))
            .collect()
    });
    rules
        .iter()
        .fold(key.to_string(), |key, (pattern, replacement)| {
            pattern.replace_all(&key, *replacement).into_owned()
        })
}

fn checkpoint_name(path: &str) -> String {
    KEY_NAMES
        .iter()
        .fold(path.to_string(), |name, (from, to)| name.replace(from, to))
}

/// Loads the safetensors file `file` into `module` from `bytes`, every float tensor
/// converted to `dtype`. Every parameter must be present with its exact shape, and every
/// tensor in the file must belong to the model.
pub fn load<M: Module + ModuleSnapshot>(
    module: M,
    bytes: Vec<u8>,
    file: &str,
    dtype: DType,
) -> Result<M> {
    let mut loader = StreamingLoader::new(module, file, dtype);
    // In pieces, so that no more than one piece's tensors are copied at a time.
    for piece in bytes.chunks(PIECE) {
        loader.push(piece)?;
    }
    loader.finish()
}

/// The CLIP token embedding becomes blocks of rows (see `SplitEmbedding`); every other
/// tensor passes through as (name, shape, byte range).
pub fn split_rows(
    name: &str,
    shape: &[usize],
    start: usize,
    end: usize,
) -> Vec<(String, Vec<usize>, (usize, usize))> {
    let Some(prefix) = name.strip_suffix(SPLIT_KEY) else {
        return vec![(name.to_string(), shape.to_vec(), (start, end))];
    };
    let (rows, row_bytes) = match shape {
        [rows, _] if *rows > 0 => (*rows, (end - start) / rows),
        _ => return vec![(name.to_string(), shape.to_vec(), (start, end))],
    };
    (0..rows.div_ceil(ROWS))
        .map(|i| {
            let n = ROWS.min(rows - i * ROWS);
            let a = start + i * ROWS * row_bytes;
            let key = format!("{prefix}token_embedding.parts.{i}");
            (key, vec![n, shape[1]], (a, a + n * row_bytes))
        })
        .collect()
}

/// How much of a file is applied at once when it is all in memory.
const PIECE: usize = 64 << 20;

/// The largest safetensors header accepted (as the safetensors crate).
const MAX_HEADER: usize = 100_000_000;

#[derive(Deserialize)]
struct TensorInfo {
    dtype: Dtype,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// A module whose parameters are filled in batches of tensors, checking that each
/// tensor belongs to it and, at the end, that none is missing.
pub struct ModuleLoader<M> {
    module: M,
    file: String,
    dtype: DType,
    applied: HashSet<String>,
    params: HashSet<String>,
}

impl<M: Module + ModuleSnapshot> ModuleLoader<M> {
    /// `file` names the source in errors; float tensors are converted to `dtype`.
    pub fn new(module: M, file: &str, dtype: DType) -> Self {
        Self {
            module,
            file: file.into(),
            dtype,
            applied: HashSet::new(),
            params: HashSet::new(),
        }
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Safetensors {
            file: self.file.clone(),
            message: message.into(),
        }
    }

    /// The module back, as loaded so far.
    pub fn into_module(self) -> M {
        self.module
    }

    /// Applies one batch of complete tensors (a small safetensors file) to the module.
    fn apply_safetensors(&mut self, bytes: Vec<u8>) -> Result<()> {
        let adapter = NormNames.chain(FloatCastAdapter::to(self.dtype));
        let mut store = SafetensorsStore::from_bytes(Some(bytes))
            .with_from_adapter(adapter)
            .skip_enum_variants(true)
            .allow_partial(true)
            .validate(false);
        for (pattern, replacement) in KEY_REMAPPING {
            store = store.with_key_remapping(*pattern, *replacement);
        }
        let result = self
            .module
            .load_from(&mut store)
            .map_err(|e| self.error(e.to_string()))?;
        self.record(result)
    }

    /// Applies tensors already decoded (a model pack's), named by checkpoint key. Float
    /// tensors are converted to the compute dtype; quantized ones stay as they are.
    pub fn apply_data(&mut self, tensors: Vec<(String, TensorData)>) -> Result<()> {
        let tensors = tensors
            .into_iter()
            .map(|(key, data)| bridge::from_data(data, field_path(&key), None))
            .collect();
        let adapter = NormNames.chain(FloatCastAdapter::to(self.dtype));
        let result = self
            .module
            .apply(tensors, None, Some(Box::new(adapter)), true);
        self.record(result)
    }

    /// Turns burn's report into errors naming the file and key, and records what was loaded.
    fn record(&mut self, result: ApplyResult) -> Result<()> {
        if let Some(error) = result.errors.first() {
            return Err(match error {
                ApplyError::ShapeMismatch {
                    path,
                    expected,
                    found,
                } => Error::ShapeMismatch {
                    file: self.file.clone(),
                    key: checkpoint_name(path),
                    expected: Shape(expected.to_vec()),
                    found: Shape(found.to_vec()),
                },
                other => self.error(other.to_string()),
            });
        }
        if let Some(path) = result.unused.iter().find(|k| !is_buffer(k)) {
            return Err(Error::UnexpectedTensor {
                file: self.file.clone(),
                key: checkpoint_name(path),
            });
        }
        self.params
            .extend(result.missing.into_iter().map(|(path, _)| path));
        self.params.extend(result.applied.iter().cloned());
        self.applied.extend(result.applied);
        Ok(())
    }

    /// Checks that every parameter was loaded.
    pub fn finish(mut self) -> Result<M> {
        if self.params.is_empty() {
            // No tensor at all: apply an empty file to learn what the model expected.
            self.apply_data(Vec::new())?;
        }
        let mut missing: Vec<&String> = self.params.difference(&self.applied).collect();
        missing.sort();
        if let Some(path) = missing.first() {
            return Err(Error::MissingTensor {
                file: self.file.clone(),
                key: checkpoint_name(path),
            });
        }
        Ok(self.module)
    }
}

/// Loads a safetensors file that arrives in pieces (the browser's cached chunks), holding
/// only the bytes not yet applied: at most one piece plus a tensor that spans pieces.
pub struct StreamingLoader<M> {
    loader: ModuleLoader<M>,
    /// Bytes received and not yet applied; `buffer[0]` is at file offset `offset`.
    buffer: Vec<u8>,
    offset: usize,
    /// Once the header is read: where the data starts, and the tensors by data offset.
    header: Option<(usize, Vec<(String, TensorInfo)>)>,
    next: usize,
}

impl<M: Module + ModuleSnapshot> StreamingLoader<M> {
    pub fn new(module: M, file: &str, dtype: DType) -> Self {
        Self {
            loader: ModuleLoader::new(module, file, dtype),
            buffer: Vec::new(),
            offset: 0,
            header: None,
            next: 0,
        }
    }

    fn error(&self, message: impl Into<String>) -> Error {
        self.loader.error(message)
    }

    /// The module back, untouched if nothing was pushed.
    pub fn into_module(self) -> M {
        self.loader.into_module()
    }

    /// Takes the next piece of the file, applying every tensor it completes.
    pub fn push(&mut self, piece: &[u8]) -> Result<()> {
        self.buffer.extend_from_slice(piece);
        if self.header.is_none() && !self.read_header()? {
            return Ok(());
        }
        let (data_start, tensors) = self.header.as_ref().expect("header read");
        let available = (self.offset + self.buffer.len()).saturating_sub(*data_start);
        let ready = tensors[self.next..]
            .iter()
            .take_while(|(_, info)| info.data_offsets.1 <= available)
            .count();
        if ready == 0 {
            return Ok(());
        }
        let batch = &tensors[self.next..self.next + ready];
        let base = data_start - self.offset;
        let mut views = Vec::with_capacity(batch.len());
        for (name, info) in batch {
            let (a, b) = info.data_offsets;
            let shape = matrix_shape(&info.shape);
            for (name, shape, (a, b)) in split_rows(name, &shape, base + a, base + b) {
                let view = TensorView::new(info.dtype, shape, &self.buffer[a..b])
                    .map_err(|e| self.error(format!("tensor `{name}`: {e}")))?;
                views.push((name, view));
            }
        }
        let bytes = safetensors::serialize(views, None).map_err(|e| self.error(e.to_string()))?;
        let end = data_start + batch[ready - 1].1.data_offsets.1;
        self.next += ready;
        self.loader.apply_safetensors(bytes)?;
        self.buffer.drain(..end - self.offset);
        self.offset = end;
        Ok(())
    }

    /// Parses the header once its bytes are in; `false` while more are needed.
    fn read_header(&mut self) -> Result<bool> {
        let Some(len) = self.buffer.get(..8) else {
            return Ok(false);
        };
        let n = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
        if n > MAX_HEADER {
            return Err(self.error(format!(
                "header length {n} is larger than {MAX_HEADER} bytes"
            )));
        }
        let Some(json) = self.buffer.get(8..8 + n) else {
            return Ok(false);
        };
        let mut header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(json)
                .map_err(|e| self.error(format!("header is not valid JSON: {e}")))?;
        header.remove("__metadata__");
        let mut tensors = header
            .into_iter()
            .map(|(name, value)| {
                let info: TensorInfo = serde_json::from_value(value)
                    .map_err(|e| self.error(format!("tensor `{name}`: {e}")))?;
                let (a, b) = info.data_offsets;
                let size = info.shape.iter().product::<usize>() * info.dtype.bitsize() / 8;
                if a > b || b - a != size {
                    return Err(self.error(format!(
                        "tensor `{name}`: data offsets [{a}, {b}) do not hold {:?} {:?}",
                        info.dtype, info.shape
                    )));
                }
                Ok((name, info))
            })
            .collect::<Result<Vec<_>>>()?;
        tensors.sort_by_key(|(_, info)| info.data_offsets);
        let mut end = 0;
        for (name, info) in &tensors {
            if info.data_offsets.0 != end {
                return Err(self.error(format!(
                    "tensor `{name}` does not start where the previous ends"
                )));
            }
            end = info.data_offsets.1;
        }
        self.header = Some((8 + n, tensors));
        Ok(true)
    }

    /// Checks that the whole file arrived and every parameter was loaded.
    pub fn finish(self) -> Result<M> {
        let Some((data_start, tensors)) = &self.header else {
            return Err(self.error("file ended before its header"));
        };
        let size = data_start + tensors.last().map_or(0, |(_, info)| info.data_offsets.1);
        let received = self.offset + self.buffer.len();
        if self.next < tensors.len() || received != size {
            return Err(self.error(format!(
                "file has {received} bytes, its header describes {size}"
            )));
        }
        self.loader.finish()
    }
}

/// Every parameter of `module` by checkpoint key (as a diffusers file names it), with the
/// shape it expects (convolution weights as matrices, the token embedding whole). Nothing
/// is allocated: lazy parameters report their shape.
pub fn expected_tensors<M: Module>(module: &M) -> Vec<(String, Vec<usize>)> {
    #[derive(Default)]
    struct Shapes {
        path: Vec<Option<String>>,
        out: Vec<(String, Vec<usize>)>,
    }
    impl ModuleVisitor for Shapes {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            // Enum variants are not part of checkpoint keys.
            let skip = container_type.starts_with("Enum:");
            self.path.push((!skip).then(|| name.to_string()));
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<burn::tensor::Tensor<D>>) {
            let path: Vec<&str> = self.path.iter().flatten().map(String::as_str).collect();
            let shape = param.lazy_shape().iter().copied().collect();
            self.out.push((path.join("."), shape));
        }
    }
    let mut shapes = Shapes::default();
    module.visit(&mut shapes);
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    for (path, shape) in shapes.out {
        let name = checkpoint_name(&path);
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
    let expected: std::collections::HashMap<&str, &[usize]> = expected
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
