//! 8-bit RGB images: PNG decoding and encoding, conversion to and from tensors in the ranges
//! diffusers uses, Pillow's resampling and grayscale, and OpenCV's Canny edges.

use burn::prelude::*;
use burn::tensor::DType;

use crate::error::{Error, Result};

mod canny;
mod resize;

pub use canny::canny;
pub use resize::{grayscale, resize_lanczos};

/// An 8-bit RGB image, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

/// The largest image read (a control image or init image may be larger than the output,
/// and is resized or refused later): 4096×4096.
pub const MAX_IMAGE_PIXELS: u64 = 4096 * 4096;

/// Refuses images of more than [`MAX_IMAGE_PIXELS`].
fn check_pixels(w: u64, h: u64, file: &str) -> Result<()> {
    if w * h > MAX_IMAGE_PIXELS {
        return Err(Error::io(
            file,
            format!("is {w}×{h} pixels; images larger than 4096×4096 pixels are refused"),
        ));
    }
    Ok(())
}

/// Decodes a PNG (any colour type and bit depth) to 8-bit RGB.
#[cfg(not(target_family = "wasm"))]
pub fn read_png(path: &std::path::Path) -> Result<Image> {
    let file = path.display().to_string();
    let bytes = crate::files::read_bounded(path, 256 << 20)?;
    decode_png(&bytes, &file)
}

/// Decodes PNG `bytes` (named `file` in errors) to 8-bit RGB.
pub fn decode_png(bytes: &[u8], file: &str) -> Result<Image> {
    let bad = |e: &dyn std::fmt::Display| Error::io(file, format!("not a readable PNG: {e}"));
    // The declared size is checked before anything is allocated: a few bytes can declare
    // billions of pixels. The IHDR chunk comes first in every PNG; the decoder checks the
    // rest, and its limits bound what it allocates.
    if let Some(ihdr) = bytes.get(12..24)
        && ihdr.starts_with(b"IHDR")
    {
        let be = |b: &[u8]| u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        check_pixels(be(&ihdr[4..8]), be(&ihdr[8..12]), file)?;
    }
    let limits = png::Limits {
        bytes: (MAX_IMAGE_PIXELS * 8) as usize,
    };
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| bad(&e))?;
    let (w, h) = (reader.info().width as u64, reader.info().height as u64);
    check_pixels(w, h, file)?;
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

/// `[H, W, 3]` in [0, 1] → 8-bit RGB, rounding as diffusers' `numpy_to_pil` does.
pub fn tensor_to_image(image: Tensor<3>) -> Result<Image> {
    let [height, width, _] = image.dims();
    let values: Vec<f32> = image
        .cast(DType::F32)
        .into_data()
        .try_to_vec()
        .map_err(|e| Error::Backend(format!("reading the image: {e:?}")))?;
    let rgb = values
        .iter()
        .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    Ok(Image { width, height, rgb })
}

/// Encodes `image` as PNG, with `text` chunks (key, value) such as generation parameters.
pub fn encode_png(image: &Image, text: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let fail = |e: png::EncodingError| Error::Backend(format!("PNG encoding: {e}"));
    {
        let mut encoder = png::Encoder::new(&mut out, image.width as u32, image.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (key, value) in text {
            encoder
                .add_itxt_chunk(key.to_string(), value.to_string())
                .map_err(fail)?;
        }
        let mut writer = encoder.write_header().map_err(fail)?;
        writer.write_image_data(&image.rgb).map_err(fail)?;
    }
    Ok(out)
}
