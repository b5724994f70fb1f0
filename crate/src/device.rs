//! Choosing the burn device: the CPU backend (`flex`) or wgpu (Vulkan natively, WebGPU in
//! the browser).

#[cfg(not(target_family = "wasm"))]
use burn::prelude::*;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Wgpu,
}

impl std::str::FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Backend::Cpu),
            "wgpu" => Ok(Backend::Wgpu),
            other => Err(Error::invalid(
                "backend",
                format!("{other:?} (expected cpu or wgpu)"),
            )),
        }
    }
}

/// Reads a compute precision: `f32` or `f16`.
pub fn parse_dtype(s: &str) -> Result<burn::tensor::DType> {
    match s {
        "f32" => Ok(burn::tensor::DType::F32),
        "f16" => Ok(burn::tensor::DType::F16),
        other => Err(Error::invalid(
            "dtype",
            format!("{other:?} (expected f32 or f16)"),
        )),
    }
}

/// The precision the networks compute in: `requested`, or by default f16 on a GPU that
/// offers it (`shader-f16` in WebGPU terms) and f32 elsewhere. f16 where the device has
/// no f16 arithmetic is an error, not a silent fallback.
pub fn compute_dtype(
    backend: Backend,
    device: &burn::prelude::Device,
    requested: Option<burn::tensor::DType>,
) -> Result<burn::tensor::DType> {
    use burn::tensor::DType;
    let has_f16 = device.supports_dtype(DType::F16);
    match requested {
        Some(DType::F16) if !has_f16 => Err(Error::invalid(
            "dtype",
            "f16: this device has no half-precision arithmetic (WebGPU's shader-f16); use f32",
        )),
        Some(dtype) => Ok(dtype),
        None if has_f16 && backend == Backend::Wgpu => Ok(DType::F16),
        None => Ok(DType::F32),
    }
}

/// Opens `backend`, or with `None` wgpu when an adapter exists and the CPU otherwise.
#[cfg(not(target_family = "wasm"))]
pub fn open(backend: Option<Backend>) -> Result<(Backend, Device)> {
    match backend {
        Some(Backend::Cpu) => Ok((Backend::Cpu, Device::flex())),
        Some(Backend::Wgpu) => wgpu()
            .map(|(d, _)| (Backend::Wgpu, d))
            .map_err(|e| Error::Backend(format!("no wgpu adapter: {e}"))),
        None => Ok(match wgpu() {
            Ok((device, _)) => (Backend::Wgpu, device),
            Err(_) => (Backend::Cpu, Device::flex()),
        }),
    }
}

/// What runs the maths on `backend`: the wgpu adapter's name and API, or the CPU.
#[cfg(not(target_family = "wasm"))]
pub fn describe(backend: Backend) -> String {
    match backend {
        Backend::Wgpu => wgpu().map(|(_, name)| name).unwrap_or_else(|e| e),
        Backend::Cpu => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let cpu = std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("model name"))
                        .and_then(|l| l.split(':').nth(1))
                        .map(|m| m.trim().to_string())
                })
                .unwrap_or_else(|| "unknown CPU".into());
            format!("burn flex on {cpu}, {threads} threads")
        }
    }
}

/// The wgpu device and its adapter's description, initialised once per process (burn's
/// runtime cannot be set up twice).
#[cfg(not(target_family = "wasm"))]
fn wgpu() -> std::result::Result<(Device, String), String> {
    static WGPU: std::sync::OnceLock<std::result::Result<(Device, String), String>> =
        std::sync::OnceLock::new();
    WGPU.get_or_init(|| {
        // One named API: automatic selection also probes OpenGL, whose EGL probe prints
        // to stderr on machines without a display.
        #[cfg(target_os = "macos")]
        let api = burn::tensor::wgpu::WgpuBackend::Metal;
        #[cfg(not(target_os = "macos"))]
        let api = burn::tensor::wgpu::WgpuBackend::Vulkan;
        let (device, setup) = Device::wgpu_options()
            .graphics_api(api)
            .init_with_setup()
            .map_err(|e| e.to_string())?;
        let info = setup.adapter.get_info();
        Ok((
            device,
            format!(
                "wgpu {:?} on {} ({:?})",
                info.backend, info.name, info.device_type
            ),
        ))
    })
    .clone()
}

/// A wgpu device requested at WebGPU's default limits (128 MiB per storage binding, 256 MiB
/// per buffer, 16 KiB of workgroup memory, …) rather than the adapter's own, with the
/// adapter's features: what many GPUs give a web page. Also returns its largest buffer
/// (see [`largest_buffer`]).
pub async fn wgpu_at_default_limits() -> std::result::Result<(burn::prelude::Device, u64), String> {
    use burn::tensor::wgpu::{WgpuSetup, wgpu};
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: None,
            required_features: adapter.features() - wgpu::Features::MAPPABLE_PRIMARY_BUFFERS,
            required_limits: wgpu::Limits::default(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let backend = adapter.get_info().backend;
    let largest = largest_buffer(&device.limits());
    let setup = WgpuSetup {
        instance,
        adapter,
        device,
        queue,
        backend,
    };
    let device = burn::prelude::Device::wgpu_options()
        .setup(setup)
        .init()
        .map_err(|e| e.to_string())?;
    Ok((device, largest))
}

/// The largest buffer a shader may read or write as one binding on a device with `limits`.
pub fn largest_buffer(limits: &burn::tensor::wgpu::wgpu::Limits) -> u64 {
    limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
}
