//! Choosing the burn device: the CPU backend (`flex`) or wgpu (Vulkan natively, WebGPU in
//! the browser).

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

/// Opens `backend`, or with `None` wgpu when an adapter exists and the CPU otherwise.
#[cfg(not(target_family = "wasm"))]
pub fn open(backend: Option<Backend>) -> Result<(Backend, Device)> {
    match backend {
        Some(Backend::Cpu) => Ok((Backend::Cpu, Device::flex())),
        Some(Backend::Wgpu) => wgpu()
            .map(|d| (Backend::Wgpu, d))
            .map_err(|e| Error::Backend(format!("no wgpu adapter: {e}"))),
        None => Ok(match wgpu() {
            Ok(device) => (Backend::Wgpu, device),
            Err(_) => (Backend::Cpu, Device::flex()),
        }),
    }
}

/// The wgpu device, initialised once per process (burn's runtime cannot be set up twice).
#[cfg(not(target_family = "wasm"))]
fn wgpu() -> std::result::Result<Device, String> {
    static WGPU: std::sync::OnceLock<std::result::Result<Device, String>> =
        std::sync::OnceLock::new();
    WGPU.get_or_init(|| Device::wgpu_options().init().map_err(|e| e.to_string()))
        .clone()
}
