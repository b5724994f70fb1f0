//! The layers every network here is made of, with the PyTorch defaults diffusers relies
//! on. Parameters are created lazily by burn, so building a full-size model allocates
//! nothing until its weights are loaded.
//!
//! `Linear` and `Conv2d` keep their weights as 2-D `[out, in]` matrices (a convolution's
//! `in` being `c_in × k × k`), PyTorch's layout, so that one tensor can be either a float
//! matrix or a block-quantized one (see `quant`): blocks run along `in`, the dimension
//! every output sums over. A quantized weight stays packed on the device and is
//! dequantized just for its call, so no full-precision copy stays resident. (burn's fused
//! quantized matmul, which dequantizes while loading tiles, measured 2× slower than
//! dequantize + matmul for a UNet step on lavapipe, and its CPU backend re-quantizes a
//! block-quantized tensor when transposing it.)

use burn::module::Param;
use burn::nn::{GroupNorm, GroupNormConfig, Initializer, LayerNorm, LayerNormConfig};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::module::conv2d as conv2d_op;
use burn::tensor::ops::ConvOptions;

/// The weight as a float tensor of `dtype`, dequantized (for this call only) if it is
/// stored quantized.
fn float_weight(weight: Tensor<2>, dtype: DType) -> Tensor<2> {
    match weight.dtype() {
        DType::QFloat(_) => weight.dequantize().cast(dtype),
        _ => weight,
    }
}

/// `nn.Linear(d_in, d_out, bias)`: `y = x Wᵀ + b` with `W` of shape `[d_out, d_in]`.
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let d_in = dims[D - 1];
        let rows = dims[..D - 1].iter().product::<usize>();
        let w = float_weight(self.weight.val(), x.dtype());
        let d_out = w.dims()[0];
        let y = x.reshape([rows, d_in]).matmul(w.transpose());
        let y = match &self.bias {
            Some(b) => y + b.val().unsqueeze::<2>(),
            None => y,
        };
        let mut out = dims;
        out[D - 1] = d_out;
        y.reshape(out)
    }
}

/// `nn.Conv2d(c_in, c_out, kernel, stride, padding)` with bias; the weight flattened to
/// `[c_out, c_in × kernel × kernel]`.
#[derive(Module, Debug)]
pub struct Conv2d {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub c_in: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let w = float_weight(self.weight.val(), x.dtype());
        let c_out = w.dims()[0];
        let w = w.reshape([c_out, self.c_in, self.kernel, self.kernel]);
        let (s, p) = (self.stride, self.padding);
        let options = ConvOptions::new([s, s], [p, p], [1, 1], 1);
        conv2d_op(x, w, self.bias.as_ref().map(|b| b.val()), options)
    }
}

/// PyTorch's default init, uniform in ±1/√fan_in; the checkpoint replaces it.
fn kaiming(fan_in: usize) -> Initializer {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Initializer::Uniform {
        min: -bound,
        max: bound,
    }
}

/// `nn.Conv2d(c_in, c_out, kernel, stride, padding)` with bias.
pub fn conv2d(
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    device: &Device,
) -> Conv2d {
    let fan_in = c_in * kernel * kernel;
    Conv2d {
        weight: kaiming(fan_in).init([c_out, fan_in], device),
        bias: Some(kaiming(fan_in).init([c_out], device)),
        c_in,
        kernel,
        stride,
        padding,
    }
}

/// `nn.Linear(d_in, d_out, bias)`.
pub fn linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear {
    Linear {
        weight: kaiming(d_in).init([d_out, d_in], device),
        bias: bias.then(|| kaiming(d_in).init([d_out], device)),
    }
}

/// `nn.GroupNorm(groups, channels, eps)` with affine parameters.
pub fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(eps)
        .init(device)
}

/// `nn.LayerNorm(dim, eps)` with affine parameters.
pub fn layer_norm(dim: usize, eps: f64, device: &Device) -> LayerNorm {
    LayerNormConfig::new(dim).with_epsilon(eps).init(device)
}
