//! Where a model's files come from: a folder on disk, bytes fetched in the browser, or a
//! model pack (see `pack`), all behind [`ModelFiles`]. Paths are those of a diffusers
//! folder (`unet/config.json`, see `component`), so loading code never knows which.

use burn::prelude::Device;

use crate::component::Component;
use crate::error::{Error, Result};
use crate::weights::{SafetensorsReader, TensorReader};

pub trait ModelFiles {
    /// The bytes of `path` (relative to the model root, `/`-separated), `None` if absent.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>>;

    /// How `path` is named in messages (e.g. with the folder or URL in front).
    fn display(&self, path: &str) -> String;

    /// Where `component`'s weights are and how their bytes become tensors. A diffusers
    /// folder holds one safetensors file, full precision preferred; other sources override.
    fn weights(&self, component: Component, _device: &Device) -> Result<WeightFiles> {
        Ok(WeightFiles {
            choices: weight_choices(self, component, false)?,
            reader: Box::new(SafetensorsReader::default()),
        })
    }

    fn read_text(&self, path: &str) -> Result<Option<String>> {
        match self.read(path)? {
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| Error::io(self.display(path), "is not UTF-8 text")),
            None => Ok(None),
        }
    }

    fn require(&self, path: &str) -> Result<Vec<u8>> {
        self.read(path)?
            .ok_or_else(|| Error::io(self.display(path), "not found"))
    }

    fn require_text(&self, path: &str) -> Result<String> {
        self.read_text(path)?
            .ok_or_else(|| Error::io(self.display(path), "not found"))
    }
}

/// The weight files of `component` in a diffusers folder, preferred first (see
/// [`Component::weight_files`]): each file, or its shards when the folder has them
/// instead (the hub splits large encoders, as SD3's T5: `model.safetensors.index.json`
/// names the shards).
pub fn weight_choices<F: ModelFiles + ?Sized>(
    files: &F,
    component: Component,
    prefer_half: bool,
) -> Result<Vec<Vec<String>>> {
    let mut choices = Vec::new();
    for file in component.weight_files(prefer_half) {
        let index = format!("{file}.index.json");
        let sharded = match files.read_text(&index)? {
            Some(text) => Some(shards(&text, &files.display(&index), component)?),
            None => None,
        };
        choices.push(vec![file]);
        choices.extend(sharded);
    }
    Ok(choices)
}

/// The shard files a safetensors index (`….safetensors.index.json`, the text of `file`)
/// names in its `weight_map`, in order, as paths in `component`'s folder.
fn shards(text: &str, file: &str, component: Component) -> Result<Vec<String>> {
    let index: serde_json::Value = crate::config::parse(file, text)?;
    let Some(map) = index.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(Error::config(
            file,
            "weight_map",
            "is missing or not an object",
        ));
    };
    let mut names: Vec<&str> = Vec::new();
    for value in map.values() {
        let name = value.as_str().unwrap_or_default();
        let plain = !name.is_empty()
            && name.ends_with(".safetensors")
            && !name.contains(['/', '\\'])
            && !name.starts_with('.');
        if !plain {
            return Err(Error::config(
                file,
                "weight_map",
                format!("names {value}, not a .safetensors file beside the index"),
            ));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.sort_unstable();
    if names.is_empty() || names.len() > 256 {
        return Err(Error::config(
            file,
            "weight_map",
            format!("names {} files (expected 1 to 256)", names.len()),
        ));
    }
    Ok(names
        .iter()
        .map(|n| format!("{}/{n}", component.name()))
        .collect())
}

/// The sha256 of `bytes` in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A component's weight files and the reader their bytes go through.
pub struct WeightFiles {
    /// Alternatives, preferred first: the first whose first file exists is read, all of
    /// its files in order (a pack's shards), each in pieces.
    pub choices: Vec<Vec<String>>,
    pub reader: Box<dyn TensorReader>,
}

/// A model folder on disk.
#[cfg(not(target_family = "wasm"))]
pub struct DirFiles(pub std::path::PathBuf);

/// The largest model file read (SD 2.x's f32 UNet is 3.5 GB; SDXL's 10 GB).
#[cfg(not(target_family = "wasm"))]
pub const MAX_FILE_BYTES: u64 = 32 << 30;

/// The folder `path` is in: `.` for a bare file name, where `Path::parent` gives "".
#[cfg(not(target_family = "wasm"))]
pub fn parent_folder(path: &std::path::Path) -> &std::path::Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    }
}

/// Reads the regular file at `path` if it holds at most `max` bytes. A device or a pipe
/// (a link to `/dev/zero`) is refused before anything is read.
#[cfg(not(target_family = "wasm"))]
pub fn read_bounded(path: &std::path::Path, max: u64) -> Result<Vec<u8>> {
    let name = path.display();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(&name, e))?;
    if !meta.is_file() {
        return Err(Error::io(&name, "is not a regular file"));
    }
    if meta.len() > max {
        return Err(Error::io(
            &name,
            format!(
                "is {} bytes, more than the {max} this file may hold",
                meta.len()
            ),
        ));
    }
    std::fs::read(path).map_err(|e| Error::io(&name, e))
}

#[cfg(not(target_family = "wasm"))]
impl ModelFiles for DirFiles {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let full = self.0.join(path);
        match std::fs::metadata(&full) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => read_bounded(&full, MAX_FILE_BYTES).map(Some),
        }
    }

    fn display(&self, path: &str) -> String {
        self.0.join(path).display().to_string()
    }
}

/// A model whose files are already in memory (fetched in the browser, or built in), keyed
/// by path.
pub struct MemoryFiles {
    /// Where the files came from, for messages (a URL or folder).
    pub base: String,
    pub files: std::collections::HashMap<String, Vec<u8>>,
}

impl ModelFiles for MemoryFiles {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.files.get(path).cloned())
    }

    fn display(&self, path: &str) -> String {
        format!("{}/{path}", self.base.trim_end_matches('/'))
    }
}

/// A component published as a folder of its own (a ControlNet, a VAE: `config.json` and
/// the weights at its root) seen as that component's folder of a pipeline, so that it
/// loads like one: `controlnet/config.json` reads the folder's `config.json`.
pub struct ComponentDir<F> {
    pub inner: F,
    pub component: Component,
}

impl<F: ModelFiles> ComponentDir<F> {
    fn inner_path<'a>(&self, path: &'a str) -> Option<&'a str> {
        path.strip_prefix(self.component.name())?.strip_prefix('/')
    }
}

impl<F: ModelFiles> ModelFiles for ComponentDir<F> {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.inner_path(path) {
            Some(inner) => self.inner.read(inner),
            None => Ok(None),
        }
    }

    fn display(&self, path: &str) -> String {
        self.inner.display(self.inner_path(path).unwrap_or(path))
    }

    fn weights(&self, component: Component, device: &Device) -> Result<WeightFiles> {
        // The inner source decides (a server prefers the fp16 file); its paths are the
        // component's, which `read` maps to the folder's root.
        self.inner.weights(component, device)
    }
}

impl<T: ModelFiles + ?Sized> ModelFiles for Box<T> {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        (**self).read(path)
    }

    fn display(&self, path: &str) -> String {
        (**self).display(path)
    }

    fn weights(&self, component: Component, device: &Device) -> Result<WeightFiles> {
        (**self).weights(component, device)
    }
}

/// A model seen without its T5 encoder (SD3's `text_encoder_3`, 2–5 GB that a user may
/// rather not download or hold): its files are hidden and `model_index.json` lists it as
/// absent, so the pipeline conditions on zeros in its place, as diffusers does for a
/// pipeline without one.
pub struct WithoutT5<F>(pub F);

/// The folders of SD3's T5 encoder and its tokenizer.
pub const T5_FOLDERS: [&str; 2] = ["text_encoder_3", "tokenizer_3"];

/// Whether `path` is in one of T5's folders.
pub fn is_t5_file(path: &str) -> bool {
    T5_FOLDERS.iter().any(|folder| {
        path.strip_prefix(folder)
            .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// `model_index.json` (the bytes of `file`) with T5 listed as absent, as diffusers writes
/// a pipeline saved without it.
pub fn index_without_t5(bytes: &[u8], file: &str) -> Result<Vec<u8>> {
    let mut index: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| Error::Json {
        file: file.into(),
        message: e.to_string(),
    })?;
    if let Some(object) = index.as_object_mut() {
        for key in T5_FOLDERS {
            if object.contains_key(key) {
                object.insert(key.into(), serde_json::json!([null, null]));
            }
        }
    }
    Ok(index.to_string().into_bytes())
}

impl<F: ModelFiles> ModelFiles for WithoutT5<F> {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        if is_t5_file(path) {
            return Ok(None);
        }
        match self.0.read(path)? {
            Some(bytes) if path == crate::component::MODEL_INDEX => {
                index_without_t5(&bytes, &self.display(path)).map(Some)
            }
            other => Ok(other),
        }
    }

    fn display(&self, path: &str) -> String {
        self.0.display(path)
    }

    fn weights(&self, component: Component, device: &Device) -> Result<WeightFiles> {
        self.0.weights(component, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_component_folder_reads_as_the_component_of_a_pipeline() {
        let inner = MemoryFiles {
            base: "https://example.com/cn".into(),
            files: HashMap::from([("config.json".to_string(), b"{}".to_vec())]),
        };
        let dir = ComponentDir {
            inner,
            component: Component::ControlNet,
        };
        assert_eq!(
            dir.read("controlnet/config.json").unwrap(),
            Some(b"{}".to_vec())
        );
        assert_eq!(dir.read("config.json").unwrap(), None);
        assert_eq!(dir.read("unet/config.json").unwrap(), None);
        assert_eq!(
            dir.display("controlnet/config.json"),
            "https://example.com/cn/config.json"
        );
    }
}
