//! How `generate` and `encode-prompt` read prompts: `--no-prompt-weighting` and
//! `--embedding FILE[:TOKEN]`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use webdiffusion::error::{Error, Result};
use webdiffusion::pipeline::TextEncoders;
use webdiffusion::textual_inversion::TextualInversion;

#[derive(clap::Args, Default)]
pub struct PromptArgs {
    /// Read the prompts literally, cut at 77 tokens, as diffusers does (default: as
    /// AUTOMATIC1111: `(word:1.3)`, `[word]`, `BREAK`, and chunks of 75 tokens past 77).
    #[arg(long)]
    pub no_prompt_weighting: bool,
    /// A textual-inversion embedding (.safetensors: diffusers, AUTOMATIC1111 or SDXL's
    /// clip_l/clip_g), named in prompts by TOKEN (default: its key, or for AUTOMATIC1111's
    /// files the file name without extension). Repeatable.
    #[arg(long = "embedding", value_name = "FILE[:TOKEN]")]
    pub embeddings: Vec<String>,
}

/// `FILE[:TOKEN]`: what follows the last `:` is a token unless it looks like a path.
pub fn parse_spec(spec: &str) -> (PathBuf, Option<&str>) {
    match spec.rsplit_once(':') {
        Some((path, token))
            if !path.is_empty()
                && !token.is_empty()
                && !token.contains(['/', '\\'])
                && !token.ends_with(".safetensors") =>
        {
            (PathBuf::from(path), Some(token))
        }
        _ => (PathBuf::from(spec), None),
    }
}

/// Reads every `--embedding` and checks that it fits `text`.
pub fn load(args: &PromptArgs, text: &TextEncoders) -> Result<Vec<Arc<TextualInversion>>> {
    args.embeddings
        .iter()
        .map(|spec| {
            let (path, token) = parse_spec(spec);
            let ti = read(&path, token)?;
            text.check_embedding(&ti)?;
            Ok(Arc::new(ti))
        })
        .collect()
}

fn read(path: &Path, token: Option<&str>) -> Result<TextualInversion> {
    let file = path.display().to_string();
    if let Some(ext) = path.extension().and_then(|e| e.to_str())
        && ["pt", "ckpt", "bin", "pth"].contains(&ext)
    {
        return Err(Error::invalid(
            "--embedding",
            format!(
                "{file}: .{ext} files are PyTorch pickles, which can run code when loaded; \
                 only .safetensors embeddings are read"
            ),
        ));
    }
    // Embeddings are a few KB; 64 MB is generous.
    let bytes = webdiffusion::files::read_bounded(path, 64 << 20)?;
    let stem = path
        .file_stem()
        .map_or_else(|| file.clone(), |s| s.to_string_lossy().into_owned());
    TextualInversion::parse(&bytes, &file, &stem, token)
}

/// AUTOMATIC1111's `TI hashes` field: the embeddings the prompts name.
pub fn a1111(embeddings: &[Arc<TextualInversion>], prompts: &[&str]) -> Option<String> {
    let used: Vec<String> = embeddings
        .iter()
        .filter(|ti| prompts.iter().any(|p| p.contains(&ti.token)))
        .map(|ti| format!("{}: {}", ti.token, ti.hash))
        .collect();
    (!used.is_empty()).then(|| format!("TI hashes: \"{}\"", used.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_follows_the_last_colon_unless_it_looks_like_a_path() {
        for (spec, path, token) in [
            ("neg.safetensors", "neg.safetensors", None),
            (
                "neg.safetensors:EasyNegative",
                "neg.safetensors",
                Some("EasyNegative"),
            ),
            ("a:b.safetensors", "a:b.safetensors", None),
            ("C:\\emb\\neg.safetensors", "C:\\emb\\neg.safetensors", None),
            ("dir:x/neg.safetensors", "dir:x/neg.safetensors", None),
            ("neg.safetensors:<tok>", "neg.safetensors", Some("<tok>")),
        ] {
            assert_eq!(parse_spec(spec), (PathBuf::from(path), token), "{spec}");
        }
    }
}
