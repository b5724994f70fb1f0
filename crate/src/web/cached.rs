//! `Pipeline.cachedModels()`: the cache's files grouped by model (see
//! `pack::model_roots`), so that a pack or a diffusers folder shows as one.

use wasm_bindgen::prelude::*;

#[derive(serde::Serialize, serde::Deserialize)]
struct CachedFile {
    url: String,
    bytes: Option<f64>,
    complete: bool,
}

#[derive(serde::Serialize)]
struct CachedModel {
    url: String,
    bytes: f64,
    complete: bool,
    files: Vec<CachedFile>,
}

/// `listCached()`'s files, grouped.
pub fn models(files: JsValue) -> Result<JsValue, JsValue> {
    let files: Vec<CachedFile> = serde_wasm_bindgen::from_value(files)?;
    let urls: Vec<&str> = files.iter().map(|f| f.url.as_str()).collect();
    let roots = crate::pack::model_roots(&urls);
    let mut models: Vec<CachedModel> = Vec::new();
    for (file, url) in files.into_iter().zip(roots) {
        let i = match models.iter().position(|m| m.url == url) {
            Some(i) => i,
            None => {
                models.push(CachedModel {
                    url,
                    bytes: 0.0,
                    complete: true,
                    files: Vec::new(),
                });
                models.len() - 1
            }
        };
        let model = &mut models[i];
        model.bytes += file.bytes.unwrap_or(0.0);
        model.complete &= file.complete;
        model.files.push(file);
    }
    let serializer = serde_wasm_bindgen::Serializer::new().serialize_missing_as_null(true);
    Ok(serde::Serialize::serialize(&models, &serializer)?)
}
