//! Files the CLI reads and writes: safetensors tensors and PNG images. Outputs are written
//! to a temporary file beside the target and renamed, so a failed run leaves no partial file.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use safetensors::tensor::{Dtype, TensorView};

use webdiffusion::error::{Error, Result};

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
pub fn write_safetensors(path: &Path, tensors: &[Output]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| Error::io(path.display(), e))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::io(path.display(), e))?;
    write_atomic(path, &bytes)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::io(path.display(), "is not a file path"))?;
    let tmp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(path.display(), e)
        })
}

/// Reads the f32/f16/bf16 tensor `name` of rank 4 from the safetensors file at `path`.
pub fn read_tensor4(path: &Path, name: &str, device: &Device) -> Result<Tensor<4>> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(&file, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
        file: file.clone(),
        message: e.to_string(),
    })?;
    let view = st.tensor(name).map_err(|_| Error::MissingTensor {
        file: file.clone(),
        key: name.into(),
    })?;
    let shape: [usize; 4] = view.shape().try_into().map_err(|_| {
        Error::io(
            &file,
            format!(
                "`{name}` has shape {:?}, expected 4 dimensions",
                view.shape()
            ),
        )
    })?;
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
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
        other => {
            return Err(Error::io(
                &file,
                format!("`{name}` has dtype {other:?}, expected a float type"),
            ));
        }
    };
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::io(
            &file,
            format!("`{name}` has a non-finite value at index {bad}"),
        ));
    }
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

/// An 8-bit RGB image, row-major.
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

/// Decodes a PNG (any colour type and bit depth) to 8-bit RGB.
pub fn read_png(path: &Path) -> Result<Image> {
    let file = path.display().to_string();
    let bad = |e: &dyn std::fmt::Display| Error::io(&file, format!("not a readable PNG: {e}"));
    let bytes = std::fs::read(path).map_err(|e| Error::io(&file, e))?;
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| bad(&e))?;
    let mut buf = vec![
        0;
        reader
            .output_buffer_size()
            .ok_or_else(|| bad(&"too large"))?
    ];
    let info = reader.next_frame(&mut buf).map_err(|e| bad(&e))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let pixels = &buf[..info.buffer_size()];
    let rgb = match info.color_type {
        png::ColorType::Rgb => pixels.to_vec(),
        png::ColorType::Rgba => pixels
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        png::ColorType::Grayscale => pixels.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => pixels
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        png::ColorType::Indexed => return Err(bad(&"palette was not expanded")),
    };
    Ok(Image {
        width: w,
        height: h,
        rgb,
    })
}

/// `[1, 3, H, W]` in [-1, 1], as diffusers' image processor normalises.
pub fn image_to_tensor(image: &Image, device: &Device) -> Tensor<4> {
    let (w, h) = (image.width, image.height);
    let mut values = vec![0f32; 3 * w * h];
    for (i, px) in image.rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            values[c * w * h + i] = px[c] as f32 / 255.0 * 2.0 - 1.0;
        }
    }
    Tensor::from_data(TensorData::new(values, [1, 3, h, w]), device)
}
