//! Model families: which networks a pipeline is made of. Read from `model_index.json`, the
//! pipeline's own description (its `_class_name` and the components it lists), so that a
//! model of a family this build does not run is refused by name before anything is built,
//! instead of failing later on a missing file or a misfit shape.

use crate::component::{self, Component};
use crate::error::{Error, Result};
use crate::files::ModelFiles;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Stable Diffusion 1.x and 2.x (with Turbo, LCM and inpainting models): one CLIP text
    /// encoder, a UNet, a 4-channel VAE.
    Sd,
    /// Stable Diffusion XL (base 1.0, Turbo, fine-tunes, inpainting models): CLIP-L and
    /// OpenCLIP bigG text encoders (the second's pooled embedding and the image sizes
    /// condition the UNet through `text_time`), a UNet, a 4-channel VAE.
    Sdxl,
    /// Stable Diffusion 3 and 3.5 (Medium, Large, Large Turbo): CLIP-L and OpenCLIP bigG
    /// (both pooled) and an optional T5 v1.1 encoder condition an MMDiT transformer trained
    /// with flow matching; a 16-channel VAE with a shifted latent space.
    Sd3,
}

/// Families that diffusers has and this build does not run yet: a pipeline class, or a
/// component that only they list, and how to name them.
const NOT_YET: &[(&str, &str)] = &[
    ("Flux", "FLUX"),
    ("Kandinsky", "Kandinsky"),
    ("PixArt", "PixArt"),
    ("Sana", "Sana"),
];

impl Family {
    /// Every family this build runs.
    pub const ALL: [Family; 3] = [Family::Sd, Family::Sdxl, Family::Sd3];

    /// Its name in messages and in the browser's model info.
    pub fn name(self) -> &'static str {
        match self {
            Family::Sd => "sd",
            Family::Sdxl => "sdxl",
            Family::Sd3 => "sd3",
        }
    }

    /// A linear map from its latents (as the denoiser sees them) to RGB in [-1, 1], per
    /// channel, and its bias: a preview of the image while it is denoised, without running
    /// a decoder. Published least-squares fits of each family's VAE (ComfyUI's
    /// `latent_rgb_factors`; SD 1.x's is an earlier fit of the same kind).
    pub fn preview_rgb(self) -> (&'static [[f64; 3]], [f64; 3]) {
        match self {
            Family::Sd => (
                &[
                    [0.298, 0.207, 0.208],
                    [0.187, 0.286, 0.173],
                    [-0.158, 0.189, 0.264],
                    [-0.184, -0.271, -0.473],
                ],
                [0.0; 3],
            ),
            Family::Sdxl => (
                &[
                    [0.3651, 0.4232, 0.4341],
                    [-0.2533, -0.0042, 0.1068],
                    [0.1076, 0.1111, -0.0362],
                    [-0.3165, -0.2492, -0.2188],
                ],
                [0.1084, -0.0175, -0.0011],
            ),
            Family::Sd3 => (
                &[
                    [-0.0922, -0.0175, 0.0749],
                    [0.0311, 0.0633, 0.0954],
                    [0.1994, 0.0927, 0.0458],
                    [0.0856, 0.0339, 0.0902],
                    [0.0587, 0.0272, -0.0496],
                    [-0.0006, 0.1104, 0.0309],
                    [0.0978, 0.0306, 0.0427],
                    [-0.0042, 0.1038, 0.1358],
                    [-0.0194, 0.0020, 0.0669],
                    [-0.0488, 0.0130, -0.0268],
                    [0.0922, 0.0988, 0.0951],
                    [-0.0278, 0.0524, -0.0542],
                    [0.0332, 0.0456, 0.0895],
                    [-0.0069, -0.0030, -0.0810],
                    [-0.0596, -0.0465, -0.0293],
                    [-0.1448, -0.1463, -0.1189],
                ],
                [0.2394, 0.2135, 0.1925],
            ),
        }
    }

    /// The networks of its pipelines, in loading order.
    pub fn components(self) -> &'static [Component] {
        match self {
            Family::Sd => &[Component::TextEncoder, Component::Unet, Component::Vae],
            Family::Sdxl => &[
                Component::TextEncoder,
                Component::TextEncoder2,
                Component::Unet,
                Component::Vae,
            ],
            Family::Sd3 => &[
                Component::TextEncoder,
                Component::TextEncoder2,
                Component::TextEncoder3,
                Component::Transformer,
                Component::Vae,
            ],
        }
    }

    /// Components its pipelines may leave out (`model_index.json` lists them as null):
    /// SD3's T5 encoder.
    pub fn optional(self) -> &'static [Component] {
        match self {
            Family::Sd3 => &[Component::TextEncoder3],
            _ => &[],
        }
    }

    /// The components a pipeline of this family in `files` has: its optional ones only
    /// when `model_index.json` lists them.
    pub fn present(self, files: &dyn ModelFiles) -> Result<Vec<Component>> {
        let mut present = Vec::new();
        for &c in self.components() {
            if !self.optional().contains(&c) || lists(files, c)? {
                present.push(c);
            }
        }
        Ok(present)
    }

    /// Whether its denoiser is a diffusion transformer trained with flow matching.
    pub fn is_flow(self) -> bool {
        self == Family::Sd3
    }

    /// The family of the pipeline `files` holds. A model without `model_index.json` (a
    /// single-file checkpoint's parts) is taken for SD; one whose class or components name
    /// another family is refused, naming it.
    pub fn detect(files: &dyn ModelFiles) -> Result<Family> {
        let Some(text) = files.read_text(component::MODEL_INDEX)? else {
            return Ok(Family::Sd);
        };
        let file = files.display(component::MODEL_INDEX);
        let index: serde_json::Value = crate::config::parse(&file, &text)?;
        let class = index.get("_class_name").and_then(|c| c.as_str());
        // Second text encoders and transformers belong to SDXL, SD3 and the DiTs.
        // diffusers lists an absent one as [null, null].
        let listed = |name: &str| {
            index.get(name).is_some_and(|v| match v.as_array() {
                Some(pair) => pair.iter().any(|x| !x.is_null()),
                None => !v.is_null(),
            })
        };
        let xl = class.is_some_and(|c| c.starts_with("StableDiffusionXL"));
        let sd3 = class.is_some_and(|c| c.starts_with("StableDiffusion3"));
        let other = match class.and_then(|c| NOT_YET.iter().find(|(p, _)| c.starts_with(p))) {
            Some((_, family)) => Some(*family),
            None if sd3 => return Ok(Family::Sd3),
            None if listed("transformer") => Some("a diffusion transformer"),
            // The SDXL refiner: only the second encoder, and time ids made of an aesthetic
            // score instead of the target size.
            None if (xl || listed("text_encoder_2")) && !listed("text_encoder") => {
                Some("the SDXL refiner (only text_encoder_2, aesthetic-score time ids)")
            }
            None if xl || listed("text_encoder_2") => return Ok(Family::Sdxl),
            None => None,
        };
        match other {
            Some(family) => Err(Error::config(
                &file,
                "_class_name",
                format!(
                    "{} is {family}, which this build does not run yet (it runs Stable \
                     Diffusion 1.x, 2.x, XL and 3.5: SD 1.5, SD 2.1, SDXL, SD3.5, their \
                     Turbo, LCM and inpainting models)",
                    class.unwrap_or("this pipeline")
                ),
            )),
            None => Ok(Family::Sd),
        }
    }
}

/// Whether `model_index.json` lists `component` as present (diffusers writes an absent
/// one as `[null, null]`); a model without the file lists what its family always has.
pub fn lists(files: &dyn ModelFiles, component: Component) -> Result<bool> {
    let Some(text) = files.read_text(component::MODEL_INDEX)? else {
        return Ok(true);
    };
    let file = files.display(component::MODEL_INDEX);
    let index: serde_json::Value = crate::config::parse(&file, &text)?;
    Ok(index
        .get(component.name())
        .is_some_and(|v| match v.as_array() {
            Some(pair) => pair.iter().any(|x| !x.is_null()),
            None => !v.is_null(),
        }))
}

/// diffusers' `force_zeros_for_empty_prompt` of `model_index.json` (SDXL's pipelines; true
/// when absent, as their default): with no negative prompt, the negative embeddings are
/// zeros instead of the encoded empty prompt.
pub fn force_zeros_for_empty_prompt(files: &dyn ModelFiles) -> Result<bool> {
    let Some(text) = files.read_text(component::MODEL_INDEX)? else {
        return Ok(true);
    };
    let file = files.display(component::MODEL_INDEX);
    let index: serde_json::Value = crate::config::parse(&file, &text)?;
    match index.get("force_zeros_for_empty_prompt") {
        None | Some(serde_json::Value::Null) => Ok(true),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(other) => Err(Error::config(
            &file,
            "force_zeros_for_empty_prompt",
            format!("is {other}, expected true or false"),
        )),
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::MemoryFiles;
    use std::collections::HashMap;

    fn with_index(json: Option<&str>) -> MemoryFiles {
        let files = json.map(|j| (component::MODEL_INDEX.to_string(), j.as_bytes().to_vec()));
        MemoryFiles {
            base: "https://h/model".into(),
            files: HashMap::from_iter(files),
        }
    }

    #[test]
    fn sd_pipelines_are_sd_and_other_families_are_refused_by_name() {
        for class in [
            "StableDiffusionPipeline",
            "StableDiffusionInpaintPipeline",
            "LatentConsistencyModelPipeline",
        ] {
            let json = format!(r#"{{"_class_name": "{class}", "unet": ["diffusers", "U"]}}"#);
            let files = with_index(Some(&json));
            assert_eq!(Family::detect(&files).unwrap(), Family::Sd, "{class}");
        }
        assert_eq!(Family::detect(&with_index(None)).unwrap(), Family::Sd);
        for (json, named) in [
            (r#"{"_class_name": "FluxPipeline"}"#, "FLUX"),
            (
                r#"{"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [null, null],
                    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}"#,
                "SDXL refiner",
            ),
            (
                r#"{"_class_name": "MyPipeline", "transformer": ["d", "T"]}"#,
                "diffusion transformer",
            ),
        ] {
            let err = Family::detect(&with_index(Some(json)))
                .expect_err("refused")
                .to_string();
            assert!(
                err.contains("https://h/model/model_index.json") && err.contains(named),
                "{err}"
            );
        }
        for class in [
            "StableDiffusionXLPipeline",
            "StableDiffusionXLInpaintPipeline",
        ] {
            let json = format!(
                r#"{{"_class_name": "{class}", "text_encoder": ["t", "C"],
                    "text_encoder_2": ["t", "C"]}}"#
            );
            assert_eq!(
                Family::detect(&with_index(Some(&json))).unwrap(),
                Family::Sdxl
            );
        }
        let json = r#"{"_class_name": "StableDiffusion3Pipeline", "text_encoder_3": [null, null]}"#;
        assert_eq!(
            Family::detect(&with_index(Some(json))).unwrap(),
            Family::Sd3
        );
        // A second encoder listed as absent (diffusers writes [null, null]) is none.
        for absent in ["null", "[null, null]"] {
            let json = format!(
                r#"{{"_class_name": "StableDiffusionPipeline", "text_encoder_2": {absent}}}"#
            );
            assert_eq!(
                Family::detect(&with_index(Some(&json))).unwrap(),
                Family::Sd
            );
        }
    }
}
