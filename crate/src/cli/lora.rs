//! `--lora FILE[:SCALE]`, shared by `generate` and `encode-prompt`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::Device;

use webdiffusion::error::{Error, Result};
use webdiffusion::files::sha256_hex;
use webdiffusion::lora::{Lora, LoraFile, Targets};

#[derive(clap::Args, Default)]
pub struct LoraArgs {
    /// A LoRA (.safetensors: diffusers, PEFT or Kohya/A1111 names) applied to the text
    /// encoder and the UNet, at SCALE (default 1.0; may be 0 or negative). Repeatable.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    pub lora: Vec<String>,
}

impl LoraArgs {
    pub fn is_empty(&self) -> bool {
        self.lora.is_empty()
    }
}

/// `FILE[:SCALE]`: the last `:` followed by a number separates the scale.
pub fn parse_spec(spec: &str) -> Result<(PathBuf, f32)> {
    let (path, scale) = match spec.rsplit_once(':') {
        Some((path, scale)) if !path.is_empty() && scale.parse::<f32>().is_ok() => {
            (path, scale.parse::<f32>().expect("checked"))
        }
        _ => (spec, 1.0),
    };
    if !scale.is_finite() {
        return Err(Error::invalid(
            "--lora",
            format!("{spec}: the scale must be a finite number"),
        ));
    }
    Ok((PathBuf::from(path), scale))
}

/// Reads every `--lora` and matches it to the networks `targets` describes.
pub fn load(args: &LoraArgs, targets: &Targets, device: &Device) -> Result<Vec<(Arc<Lora>, f32)>> {
    args.lora
        .iter()
        .map(|spec| {
            let (path, scale) = parse_spec(spec)?;
            let lora = read(&path, targets, device)?;
            Ok((Arc::new(lora), scale))
        })
        .collect()
}

fn read(path: &Path, targets: &Targets, device: &Device) -> Result<Lora> {
    let file = path.display().to_string();
    if let Some(ext) = path.extension().and_then(|e| e.to_str())
        && ["pt", "ckpt", "bin", "pth"].contains(&ext)
    {
        return Err(Error::invalid(
            "--lora",
            format!(
                "{file}: .{ext} files are PyTorch pickles, which can run code when loaded; \
                 only .safetensors LoRA files are read"
            ),
        ));
    }
    // LoRAs are 10–150 MB; 4 GB is generous.
    let bytes = webdiffusion::files::read_bounded(path, 4 << 30)?;
    let parsed = LoraFile::parse(&bytes, &file)?;
    let name = path
        .file_stem()
        .map_or_else(|| file.clone(), |s| s.to_string_lossy().into_owned());
    let hash = sha256_hex(&bytes)[..12].to_string();
    Lora::new(&parsed, &name, &hash, targets, device)
}

/// The LoRAs as AUTOMATIC1111 records them: `<lora:NAME:SCALE>` after the prompt, and the
/// `Lora hashes` field.
pub fn a1111(loras: &[(Arc<Lora>, f32)]) -> (String, Option<String>) {
    if loras.is_empty() {
        return (String::new(), None);
    }
    let tags: Vec<String> = loras
        .iter()
        .map(|(l, s)| format!("<lora:{}:{s}>", l.name))
        .collect();
    let hashes: Vec<String> = loras
        .iter()
        .map(|(l, _)| format!("{}: {}", l.name, l.hash))
        .collect();
    (
        format!(" {}", tags.join(" ")),
        Some(format!("Lora hashes: \"{}\"", hashes.join(", "))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_colon_followed_by_a_number_is_the_scale() {
        for (spec, path, scale) in [
            ("style.safetensors", "style.safetensors", 1.0),
            ("style.safetensors:0.6", "style.safetensors", 0.6),
            ("style.safetensors:-1", "style.safetensors", -1.0),
            ("a:b.safetensors", "a:b.safetensors", 1.0),
            ("a:b.safetensors:0", "a:b.safetensors", 0.0),
        ] {
            assert_eq!(
                parse_spec(spec).unwrap(),
                (PathBuf::from(path), scale),
                "{spec}"
            );
        }
        assert!(parse_spec("x.safetensors:inf").is_err());
    }
}
