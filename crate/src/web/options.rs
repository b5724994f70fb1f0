//! The options object of `Pipeline.generate`, read into a [`Request`] (see `GenerateOptions`
//! in the TypeScript declarations), and `ImageData` in and out.

use std::sync::Arc;

use burn::prelude::*;
use js_sys::{Float32Array, Function, Reflect, Uint8ClampedArray};
use wasm_bindgen::prelude::*;

use super::Hooks;
use super::handles::{self, Loaded};
use crate::image::Image;
use crate::pipeline::{Control, Request, SizeConditioning, StableDiffusion, VaeTiling};
use crate::textual_inversion::TextualInversion;

fn error(message: String) -> JsValue {
    js_sys::Error::new(&message).into()
}

fn field(object: &JsValue, key: &str) -> Option<JsValue> {
    Reflect::get(object, &key.into())
        .ok()
        .filter(|v| !v.is_undefined() && !v.is_null())
}

fn number(object: &JsValue, key: &str, name: &str) -> Result<Option<f64>, JsValue> {
    field(object, key)
        .map(|v| {
            v.as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| error(format!("generate: `{name}` must be a finite number")))
        })
        .transpose()
}

/// An `ImageData` (or any `{ width, height, data }` of RGBA bytes) as an RGB image; alpha
/// is ignored. `name` names it in errors.
pub fn image_data(value: &JsValue, name: &str) -> Result<Image, JsValue> {
    let bad = || {
        error(format!(
            "{name} must be an ImageData (width, height, RGBA data)"
        ))
    };
    let size = |key: &str| {
        field(value, key)
            .and_then(|v| v.as_f64())
            .filter(|x| *x >= 1.0 && x.fract() == 0.0)
            .map(|x| x as usize)
    };
    let (Some(width), Some(height)) = (size("width"), size("height")) else {
        return Err(bad());
    };
    let data: Uint8ClampedArray = field(value, "data")
        .ok_or_else(bad)?
        .dyn_into()
        .map_err(|_| bad())?;
    if data.length() as usize != width * height * 4 {
        return Err(error(format!(
            "{name}: {} bytes of data for {width}×{height} RGBA pixels",
            data.length()
        )));
    }
    let rgb = data
        .to_vec()
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    Ok(Image { width, height, rgb })
}

/// A new `ImageData` of `rgba` pixels.
pub fn new_image_data(rgba: &[u8], width: usize, height: usize) -> Result<JsValue, JsValue> {
    let constructor: Function = Reflect::get(&js_sys::global(), &"ImageData".into())?.dyn_into()?;
    let data = Uint8ClampedArray::from(rgba);
    let args = js_sys::Array::of3(&data, &(width as u32).into(), &(height as u32).into());
    Reflect::construct(&constructor, &args)
}

/// `[1, 3, H, W]` in [-1, 1], as diffusers' image processor normalises an init image.
fn image_tensor(image: &Image, device: &Device) -> Tensor<4> {
    crate::image::image_to_tensor(image, device)
}

/// The `Float32Array` `key` as a tensor of `shape`.
fn array(
    options: &JsValue,
    key: &str,
    shape: [usize; 4],
    device: &Device,
) -> Result<Option<Tensor<4>>, JsValue> {
    let Some(value) = field(options, key) else {
        return Ok(None);
    };
    let count = shape.iter().product::<usize>();
    let what = || {
        error(format!(
            "generate: `{key}` must be a Float32Array of {shape:?} = {count} values"
        ))
    };
    let array: Float32Array = value.dyn_into().map_err(|_| what())?;
    let values = array.to_vec();
    if values.len() != count {
        return Err(what());
    }
    Ok(Some(Tensor::from_data(
        TensorData::new(values, shape),
        device,
    )))
}

/// Reads `generate`'s options. `pipe_id` identifies the pipeline, whose LoRAs and
/// ControlNets alone may be used.
pub fn parse(
    options: &JsValue,
    pipe: &StableDiffusion,
    pipe_id: u32,
) -> Result<(Request, Hooks), JsValue> {
    let bad = |key: &str, what: &str| error(format!("generate: `{key}` must be {what}"));
    let count = |key: &str| -> Result<Option<usize>, JsValue> {
        match number(options, key, key)? {
            Some(x) if x >= 0.0 && x.fract() == 0.0 => Ok(Some(x as usize)),
            Some(_) => Err(bad(key, "a whole number ≥ 0")),
            None => Ok(None),
        }
    };
    let text = |key: &str| -> Result<Option<String>, JsValue> {
        field(options, key)
            .map(|v| v.as_string().ok_or_else(|| bad(key, "a string")))
            .transpose()
    };

    let mut request = Request::new(text("prompt")?.ok_or_else(|| bad("prompt", "a string"))?);
    request.negative_prompt = text("negativePrompt")?;
    request.steps = count("steps")?;
    if let Some(g) = number(options, "guidance", "guidance")? {
        request.guidance = g;
    }
    if let Some(rescale) = number(options, "guidanceRescale", "guidanceRescale")? {
        request.guidance_rescale = rescale;
    }
    request.scheduler = text("scheduler")?;
    if let Some(eta) = number(options, "eta", "eta")? {
        request.eta = eta;
    }
    request.clip_skip = count("clipSkip")?.unwrap_or(0);
    request.max_sequence_length = count("maxSequenceLength")?;
    if let Some(value) = field(options, "skipLayerGuidance") {
        let what = || bad("skipLayerGuidance", "an array of transformer layer numbers");
        let array: js_sys::Array = value.dyn_into().map_err(|_| what())?;
        let layers = array
            .iter()
            .map(|v| match v.as_f64() {
                Some(x) if x >= 0.0 && x.fract() == 0.0 && x < 1024.0 => Ok(x as usize),
                _ => Err(what()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut slg = crate::pipeline::SkipLayerGuidance::new(layers);
        if let Some(scale) = number(options, "skipLayerScale", "skipLayerScale")? {
            slg.scale = scale;
        }
        request.skip_layer_guidance = Some(slg);
    }
    request.seed = match count("seed")? {
        Some(seed) => seed as u64,
        None => (js_sys::Math::random() * 2f64.powi(53)) as u64,
    };
    request.width = count("width")?;
    request.height = count("height")?;
    // SDXL's size conditioning: pairs of whole numbers.
    let pair = |key: &str| -> Result<Option<(usize, usize)>, JsValue> {
        let Some(value) = field(options, key) else {
            return Ok(None);
        };
        let what = || bad(key, "an array of two whole numbers in [0, 65536]");
        let array: js_sys::Array = value.dyn_into().map_err(|_| what())?;
        let values: Vec<f64> = array
            .iter()
            .map(|v| v.as_f64().unwrap_or(f64::NAN))
            .collect();
        match values[..] {
            [a, b]
                if [a, b]
                    .iter()
                    .all(|x| (0.0..=65536.0).contains(x) && x.fract() == 0.0) =>
            {
                Ok(Some((a as usize, b as usize)))
            }
            _ => Err(what()),
        }
    };
    request.size = SizeConditioning {
        original_size: pair("originalSize")?,
        crop_top_left: pair("cropTopLeft")?.unwrap_or_default(),
        target_size: pair("targetSize")?,
    };
    request.vae_tiling = match field(options, "vaeTiling") {
        None => VaeTiling::Auto,
        Some(v) => match (v.as_bool(), v.as_f64()) {
            (Some(true), _) => VaeTiling::On(None),
            (Some(false), _) => VaeTiling::Auto,
            (_, Some(px)) if px >= 0.0 && px.fract() == 0.0 => VaeTiling::On(Some(px as usize)),
            _ => return Err(bad("vaeTiling", "true, false or a tile size in pixels")),
        },
    };
    let device = &pipe.device;
    if let Some(value) = field(options, "initImage") {
        let image = image_data(&value, "generate: `initImage`")?;
        request.width = Some(image.width);
        request.height = Some(image.height);
        request.init_image = Some(image_tensor(&image, device));
    }
    if let Some(strength) = number(options, "strength", "strength")? {
        request.strength = strength;
    }
    if let Some(value) = field(options, "mask") {
        request.mask = Some(image_data(&value, "generate: `mask`")?);
    }
    if let Some(blur) = number(options, "maskBlur", "maskBlur")? {
        request.mask_blur = blur as f32;
    }
    // Latents and noise are the size of the output in latents.
    let f = pipe.vae_scale_factor();
    let size = pipe.default_size();
    let shape = [
        1,
        pipe.vae_config.latent_channels(),
        request.height.unwrap_or(size) / f,
        request.width.unwrap_or(size) / f,
    ];
    request.latents = array(options, "latents", shape, device)?;
    request.noise = array(options, "noise", shape, device)?;

    for (i, entry) in list(options, "loras")?.iter().enumerate() {
        let key = format!("loras[{i}]");
        let Loaded::Lora(lora) = handle(entry, "lora", &key, pipe_id)? else {
            return Err(bad(&format!("{key}.lora"), "a Lora from loadLora"));
        };
        let scale = number(entry, "scale", &format!("{key}.scale"))?.unwrap_or(1.0);
        request.loras.push((lora, scale as f32));
    }
    (request.embeddings, request.prompt_weighting) = reading(options, pipe_id)?;
    for (i, entry) in list(options, "controlnets")?.iter().enumerate() {
        let key = format!("controlnets[{i}]");
        let Loaded::ControlNet(controlnet) = handle(entry, "controlnet", &key, pipe_id)? else {
            return Err(bad(
                &format!("{key}.controlnet"),
                "a ControlNet from loadControlNet",
            ));
        };
        let image =
            field(entry, "image").ok_or_else(|| bad(&format!("{key}.image"), "an ImageData"))?;
        let image = image_data(&image, &format!("generate: `{key}.image`"))?;
        let value = |name: &str, default: f64| -> Result<f32, JsValue> {
            Ok(number(entry, name, &format!("{key}.{name}"))?.unwrap_or(default) as f32)
        };
        request.controlnets.push(Control {
            scale: value("scale", 1.0)?,
            start: value("start", 0.0)?,
            end: value("end", 1.0)?,
            ..Control::new(controlnet, image)
        });
    }

    let hooks = Hooks {
        on_step: field(options, "onStep").and_then(|f| f.dyn_into::<Function>().ok()),
        signal: field(options, "signal"),
    };
    Ok((request, hooks))
}

/// How the prompts are read: `embeddings` (handles from `loadEmbedding`) and
/// `promptWeighting` (default `true`).
pub fn reading(
    options: &JsValue,
    pipe_id: u32,
) -> Result<(Vec<Arc<TextualInversion>>, bool), JsValue> {
    let mut embeddings = Vec::new();
    for (i, entry) in list(options, "embeddings")?.iter().enumerate() {
        let key = format!("embeddings[{i}]");
        // A freed handle's getter throws: that reads as no id.
        let id = Reflect::get(entry, &"id".into())
            .ok()
            .and_then(|v| v.as_f64())
            .ok_or_else(|| {
                error(format!(
                    "generate: `{key}` must be an Embedding from loadEmbedding, alive"
                ))
            })?;
        match handles::lookup(id as u32, pipe_id) {
            Ok(Loaded::Embedding(ti)) => embeddings.push(ti),
            Ok(_) => {
                return Err(error(format!(
                    "generate: `{key}` must be an Embedding from loadEmbedding"
                )));
            }
            Err(why) => return Err(error(format!("generate: `{key}` {why}"))),
        }
    }
    let weighting = match field(options, "promptWeighting") {
        None => true,
        Some(v) => v.as_bool().ok_or_else(|| {
            error("generate: `promptWeighting` must be true or false".to_string())
        })?,
    };
    Ok((embeddings, weighting))
}

/// The array `key` of `options` (empty when absent).
fn list(options: &JsValue, key: &str) -> Result<Vec<JsValue>, JsValue> {
    match field(options, key) {
        None => Ok(Vec::new()),
        Some(v) => v
            .dyn_into::<js_sys::Array>()
            .map(|a| a.iter().collect())
            .map_err(|_| error(format!("generate: `{key}` must be an array"))),
    }
}

/// What the handle in `entry[member]` (`key` in errors) stands for.
fn handle(entry: &JsValue, member: &str, key: &str, pipe_id: u32) -> Result<Loaded, JsValue> {
    // A freed handle's getter throws: that reads as no id.
    let id = field(entry, member)
        .and_then(|h| Reflect::get(&h, &"id".into()).ok())
        .and_then(|v| v.as_f64())
        .ok_or_else(|| {
            error(format!(
                "generate: `{key}.{member}` must be a handle from this package, alive"
            ))
        })?;
    handles::lookup(id as u32, pipe_id)
        .map_err(|why| error(format!("generate: `{key}.{member}` {why}")))
}
