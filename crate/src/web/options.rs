//! The options object of `Pipeline.generate`, read into a [`Request`].

use burn::prelude::*;
use js_sys::{Float32Array, Function, Reflect};
use wasm_bindgen::prelude::*;

use super::Hooks;
use crate::pipeline::{Request, StableDiffusion};

/// `{ prompt, negativePrompt?, steps?, guidance?, scheduler?, seed?, width?, height?,
///    latents?: Float32Array, loras?: [{ lora, scale? }], onStep?: (step, total) => void,
///    signal?: AbortSignal }`
/// `pipe_id` identifies the pipeline, whose LoRAs alone may be used.
pub fn parse(
    options: &JsValue,
    pipe: &StableDiffusion,
    pipe_id: u32,
) -> Result<(Request, Hooks), JsValue> {
    let get = |key: &str| Reflect::get(options, &key.into()).unwrap_or(JsValue::UNDEFINED);
    let bad = |key: &str, what: &str| -> JsValue {
        js_sys::Error::new(&format!("generate: `{key}` must be {what}")).into()
    };
    let number = |key: &str| -> Result<Option<f64>, JsValue> {
        let v = get(key);
        if v.is_undefined() || v.is_null() {
            return Ok(None);
        }
        v.as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| bad(key, "a finite number"))
    };
    let count = |key: &str| -> Result<Option<usize>, JsValue> {
        match number(key)? {
            Some(x) if x >= 0.0 && x.fract() == 0.0 => Ok(Some(x as usize)),
            Some(_) => Err(bad(key, "a whole number ≥ 0")),
            None => Ok(None),
        }
    };
    let text = |key: &str| -> Result<Option<String>, JsValue> {
        let v = get(key);
        if v.is_undefined() || v.is_null() {
            return Ok(None);
        }
        v.as_string().map(Some).ok_or_else(|| bad(key, "a string"))
    };

    let mut request = Request::new(text("prompt")?.ok_or_else(|| bad("prompt", "a string"))?);
    request.negative_prompt = text("negativePrompt")?.unwrap_or_default();
    request.steps = count("steps")?;
    if let Some(g) = number("guidance")? {
        request.guidance = g;
    }
    request.scheduler = text("scheduler")?;
    request.seed = match count("seed")? {
        Some(seed) => seed as u64,
        None => (js_sys::Math::random() * 2f64.powi(53)) as u64,
    };
    request.width = count("width")?;
    request.height = count("height")?;
    let latents = get("latents");
    if !latents.is_undefined() && !latents.is_null() {
        let array: Float32Array = latents
            .dyn_into()
            .map_err(|_| bad("latents", "a Float32Array"))?;
        let f = pipe.vae_scale_factor();
        let size = pipe.default_size();
        let shape = [
            1,
            pipe.unet_config.in_channels,
            request.height.unwrap_or(size) / f,
            request.width.unwrap_or(size) / f,
        ];
        let values = array.to_vec();
        if values.len() != shape.iter().product::<usize>() {
            let what = format!(
                "a Float32Array of {shape:?} = {} values",
                shape.iter().product::<usize>()
            );
            return Err(bad("latents", &what));
        }
        request.latents = Some(Tensor::from_data(
            TensorData::new(values, shape),
            &pipe.device,
        ));
    }
    let loras = get("loras");
    if !loras.is_undefined() && !loras.is_null() {
        let list: js_sys::Array = loras
            .dyn_into()
            .map_err(|_| bad("loras", "an array of { lora, scale? }"))?;
        for (i, entry) in list.iter().enumerate() {
            let key = format!("loras[{i}]");
            let field =
                |name: &str| Reflect::get(&entry, &name.into()).unwrap_or(JsValue::UNDEFINED);
            let id = field("lora")
                .is_object()
                .then(|| Reflect::get(&field("lora"), &"id".into()).ok())
                .flatten()
                .and_then(|v| v.as_f64())
                .ok_or_else(|| bad(&format!("{key}.lora"), "a Lora from loadLora"))?;
            let lora = super::lora_by_id(id as u32, pipe_id)
                .map_err(|why| js_sys::Error::new(&format!("generate: `{key}.lora` {why}")))?;
            let scale = match field("scale") {
                v if v.is_undefined() || v.is_null() => 1.0,
                v => v
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| bad(&format!("{key}.scale"), "a finite number"))?,
            };
            request.loras.push((lora, scale as f32));
        }
    }
    let on_step = get("onStep");
    let hooks = Hooks {
        on_step: on_step.dyn_into::<Function>().ok(),
        signal: Some(get("signal")).filter(|s| !s.is_undefined() && !s.is_null()),
    };
    Ok((request, hooks))
}
