//! The networks of Stable Diffusion (and the ControlNet that steers it) and the blocks
//! they share.

pub mod attention;
pub mod clip;
pub mod controlnet;
pub mod embeddings;
pub mod layers;
pub mod mmdit;
pub mod resnet;
pub mod split_embedding;
pub mod t5;
pub mod transformer;
pub mod unet;
pub mod vae;
