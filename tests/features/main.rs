//! The customisation tools and precisions, each against diffusers' goldens: LoRA,
//! ControlNet (and Canny), inpainting, half precision on the GPU, and TAESD. One test
//! binary, so that CI links it once.

#[path = "../common/mod.rs"]
mod common;

mod controlnet;
mod half;
mod inpaint;
mod lora;
mod taesd;
