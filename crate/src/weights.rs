//! Loading diffusers/transformers safetensors into the networks.
//!
//! Weights come as bytes (the browser has no file system). burn-store walks the module and
//! takes each tensor by its path, so the Rust field names mirror the checkpoint keys; the
//! few places where diffusers' module lists hold a single layer (`to_out.0`, `ff.net.0`)
//! are renamed by [`KEY_REMAPPING`]. Each tensor is converted to the compute dtype as it is
//! applied: the file's bytes plus one tensor in flight are all that is held at once.

use burn::module::Module;
use burn::store::{
    ApplyError, FloatCastAdapter, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter,
    SafetensorsStore,
};
use burn::tensor::DType;

use crate::error::{Error, Result, Shape};

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

fn checkpoint_name(path: &str) -> String {
    KEY_NAMES
        .iter()
        .fold(path.to_string(), |name, (from, to)| name.replace(from, to))
}

/// Checks that `bytes` is a well-formed safetensors file, naming `file` if not.
pub fn check_safetensors(bytes: &[u8], file: &str) -> Result<()> {
    safetensors::SafeTensors::deserialize(bytes)
        .map(|_| ())
        .map_err(|e| Error::Safetensors {
            file: file.into(),
            message: e.to_string(),
        })
}

/// Loads `bytes` (the safetensors file `file`) into `module`, every float tensor
/// converted to `dtype`. Every parameter must be present with its exact shape, and every
/// tensor in the file must belong to the model.
pub fn load<M: Module + ModuleSnapshot>(
    mut module: M,
    bytes: Vec<u8>,
    file: &str,
    dtype: DType,
) -> Result<M> {
    check_safetensors(&bytes, file)?;
    let adapter = PyTorchToBurnAdapter.chain(FloatCastAdapter::to(dtype));
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .with_from_adapter(adapter)
        .skip_enum_variants(true)
        .allow_partial(true)
        .validate(false);
    for (pattern, replacement) in KEY_REMAPPING {
        store = store.with_key_remapping(*pattern, *replacement);
    }
    let result = module
        .load_from(&mut store)
        .map_err(|e| Error::Safetensors {
            file: file.into(),
            message: e.to_string(),
        })?;

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
    if let Some((path, _)) = result.missing.first() {
        return Err(Error::MissingTensor {
            file: file.into(),
            key: checkpoint_name(path),
        });
    }
    if let Some(path) = result.unused.iter().find(|k| !is_buffer(k)) {
        return Err(Error::UnexpectedTensor {
            file: file.into(),
            key: checkpoint_name(path),
        });
    }
    Ok(module)
}
