//! Stable Diffusion on burn: one implementation of the tokenizer, text encoder, UNet and VAE
//! that runs on every burn device (CPU, Vulkan, WebGPU).

#[cfg(not(target_family = "wasm"))]
pub mod builtin;
pub mod component;
pub mod config;
pub mod device;
pub mod error;
pub mod family;
pub mod files;
pub mod image;
#[cfg(not(target_family = "wasm"))]
pub mod launches;
pub mod load;
pub mod lora;
pub mod models;
pub mod noise;
pub mod pack;
pub mod pipeline;
pub mod prompt;
pub mod quant;
pub mod schedulers;
pub mod textual_inversion;
pub mod tokenizer;
#[cfg(target_family = "wasm")]
pub mod web;
pub mod weights;

pub use error::{Error, Result};
