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
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::module::conv2d as conv2d_op;
use burn::tensor::ops::ConvOptions;

/// The weight as a float tensor of `dtype`, dequantized (for this call only) if it is
/// stored quantized. (A weight with a LoRA attached arrives already composed, in the
/// LoRA's precision.)
fn float_weight(weight: Tensor<2>, dtype: DType) -> Tensor<2> {
    match weight.dtype() {
        DType::QFloat(_) => weight.dequantize().cast(dtype),
        d if d != dtype => weight.cast(dtype),
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
        let bias = self.bias.as_ref().map(|b| b.val());
        let dtype = x.dtype();
        if dtype == DType::F32 {
            return conv2d_op(x, w, bias, options);
        }
        // burn's wgpu convolution sums its products in the tensors' own precision, and a
        // 3×3 convolution over 1280 channels sums 11,520 of them: in f16 that alone made a
        // UNet call 3× less accurate than PyTorch's half precision, which accumulates in
        // f32 (measured on the fixtures: rel-L2 4.7e-3 against 1.5e-3). So the convolution
        // itself runs in f32 and hands back f16; weights and activations stay f16 between
        // layers.
        let bias = bias.map(|b| b.cast(DType::F32));
        conv2d_op(x.cast(DType::F32), w.cast(DType::F32), bias, options).cast(dtype)
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

/// `nn.GroupNorm(groups, channels, eps)` with affine parameters. Statistics are taken in
/// f32 whatever the compute precision (as PyTorch's half-precision kernels accumulate in
/// f32): half-precision sums of 4096 pixels lose the mean.
#[derive(Module, Debug)]
pub struct GroupNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub groups: usize,
    pub eps: f64,
}

impl GroupNorm {
    /// Normalises `x` `[B, C, …]` over each group of channels (and every position).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let (batch, channels) = (dims[0], dims[1]);
        let dtype = x.dtype();
        let per_group = dims[1..].iter().product::<usize>() / self.groups;
        let grouped = x.cast(DType::F32).reshape([batch, self.groups, per_group]);
        let normalized = normalize(grouped, self.eps).reshape(dims);
        let mut affine = [1; D];
        affine[1] = channels;
        let weight = self.weight.val().cast(DType::F32).reshape(affine);
        let bias = self.bias.val().cast(DType::F32).reshape(affine);
        (normalized * weight + bias).cast(dtype)
    }
}

/// `nn.LayerNorm(dim, eps)` with affine parameters, over the last dimension; statistics in
/// f32, as [`GroupNorm`].
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let normalized = normalize(x.cast(DType::F32), self.eps);
        let weight = self.weight.val().cast(DType::F32).unsqueeze::<D>();
        let bias = self.bias.val().cast(DType::F32).unsqueeze::<D>();
        (normalized * weight + bias).cast(dtype)
    }
}

/// `(x − mean) / √(var + eps)` over the last dimension (population variance).
fn normalize<const D: usize>(x: Tensor<D>, eps: f64) -> Tensor<D> {
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    (x - mean) / (var + eps).sqrt()
}

/// `nn.GroupNorm(groups, channels, eps)` with affine parameters.
pub fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNorm {
        weight: Initializer::Ones.init([channels], device),
        bias: Initializer::Zeros.init([channels], device),
        groups,
        eps,
    }
}

/// `nn.LayerNorm(dim, eps)` with affine parameters.
pub fn layer_norm(dim: usize, eps: f64, device: &Device) -> LayerNorm {
    LayerNorm {
        weight: Initializer::Ones.init([dim], device),
        bias: Initializer::Zeros.init([dim], device),
        eps,
    }
}

/// RMS norm (T5's `T5LayerNorm`, diffusers' `RMSNorm`) over the last dimension:
/// `x / √(mean(x²) + eps) · weight`, no mean subtracted and no bias; statistics in f32.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let mean_square = x.clone().powi_scalar(2).mean_dim(D - 1);
        let normalized = x / (mean_square + self.eps).sqrt();
        let weight = self.weight.val().cast(DType::F32).unsqueeze::<D>();
        (normalized * weight).cast(dtype)
    }
}

/// An RMS norm over `dim` features.
pub fn rms_norm(dim: usize, eps: f64, device: &Device) -> RmsNorm {
    RmsNorm {
        weight: Initializer::Ones.init([dim], device),
        eps,
    }
}
