//! Files the CLI reads and writes: safetensors tensors and PNG images. Outputs are written
//! to temporary files beside their targets and renamed, so a failed run leaves no partial
//! file and a command's outputs appear together.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use safetensors::tensor::Dtype;

use webdiffusion::error::{Error, Result};
use webdiffusion::files::parent_folder;
use webdiffusion::weights::finite_floats;
use webdiffusion::weights::safetensors::{SafetensorsFile, serialize};

/// A tensor to write: name, shape, and its values as little-endian bytes.
pub struct Output {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Output {
    pub fn f32<const D: usize>(name: &str, tensor: Tensor<D>) -> Result<Self> {
        let shape = tensor.dims().to_vec();
        let values: Vec<f32> = tensor
            .cast(DType::F32)
            .into_data()
            .try_to_vec()
            .map_err(|e| Error::Backend(format!("reading `{name}`: {e:?}")))?;
        Ok(Self {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    }

    /// [`f32`](Self::f32), refusing non-finite values: `network` produced them.
    pub fn f32_finite<const D: usize>(
        name: &str,
        tensor: Tensor<D>,
        network: &str,
    ) -> Result<Self> {
        let output = Self::f32(name, tensor)?;
        let finite = output
            .bytes
            .chunks_exact(4)
            .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite());
        if !finite {
            return Err(Error::Backend(format!(
                "{network} produced non-finite values (NaN or infinity); nothing was written"
            )));
        }
        Ok(output)
    }

    pub fn i64(name: &str, shape: Vec<usize>, values: &[i64]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::I64,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Writes `tensors` to `path` as safetensors, atomically.
pub fn write_safetensors(path: &Path, tensors: Vec<Output>) -> Result<()> {
    write_atomic(path, &safetensors_bytes(tensors)?)
}

pub fn safetensors_bytes(tensors: Vec<Output>) -> Result<Vec<u8>> {
    let tensors: Vec<_> = tensors
        .into_iter()
        .map(|t| (t.name, t.dtype, t.shape, t.bytes))
        .collect();
    serialize(&tensors)
}

/// Fails early (before any work) when `path` cannot be an output file: a folder, in a
/// folder that does not exist, or in one this process cannot create files in.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::io(path.display(), "is a folder; give a file path"));
    }
    let parent = parent_folder(path);
    if !parent.is_dir() {
        return Err(Error::io(
            path.display(),
            format!("cannot be written: {} is not a folder", parent.display()),
        ));
    }
    temporary(path)
        .map(drop)
        .map_err(|e| Error::io(path.display(), format!("cannot be written: {e}")))
}

/// Writes `bytes` to `path` atomically: see [`Outputs`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut outputs = Outputs::default();
    outputs.add(path, bytes)?;
    outputs.commit()
}

/// The output files of one command, all written or none. Each is first written in full
/// to a new file with a random name beside its target, created exclusively (`O_EXCL`: a
/// file or symlink planted there is never followed), and renamed into place by
/// [`commit`](Self::commit) once every file is written. Dropped uncommitted, the
/// temporary files are removed.
#[derive(Default)]
pub struct Outputs(Vec<(PathBuf, tempfile::NamedTempFile)>);

impl Outputs {
    pub fn add(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        let mut file = temporary(path).map_err(|e| Error::io(path.display(), e))?;
        file.write_all(bytes)
            .and_then(|_| file.as_file().sync_all())
            .map_err(|e| Error::io(path.display(), e))?;
        self.0.push((path.to_path_buf(), file));
        Ok(())
    }

    pub fn commit(self) -> Result<()> {
        for (path, file) in self.0 {
            file.persist(&path)
                .map_err(|e| Error::io(path.display(), e.error))?;
        }
        Ok(())
    }
}

fn temporary(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let name = path
        .file_name()
        .map_or("out".into(), |n| n.to_string_lossy());
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(parent_folder(path))
}

/// Reads the f32/f16/bf16 tensor `name` of rank 4 from the safetensors file at `path`.
pub fn read_tensor4(path: &Path, name: &str, device: &Device) -> Result<Tensor<4>> {
    let file = path.display().to_string();
    let bytes = webdiffusion::files::read_bounded(path, 1 << 30)?;
    let st = SafetensorsFile::parse(&bytes, &file)?;
    let (info, data) = st.get(name).ok_or_else(|| Error::MissingTensor {
        file: file.clone(),
        key: name.into(),
    })?;
    let shape: [usize; 4] = info.shape.clone().try_into().map_err(|_| {
        Error::io(
            &file,
            format!("`{name}` has shape {:?}, expected 4 dimensions", info.shape),
        )
    })?;
    let values = finite_floats(&file, name, info.dtype, data)?;
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}
