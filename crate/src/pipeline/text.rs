//! The text side of a pipeline: a tokenizer and a CLIP text encoder per text component of
//! the family, and how their outputs become the UNet's conditioning (diffusers'
//! `encode_prompt` of each family's pipeline).

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::DType;

use crate::component::Component;
use crate::error::{Error, Result};
use crate::family::{self, Family};
use crate::files::ModelFiles;
use crate::load;
use crate::lora::{self, Lora};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::tokenizer::ClipTokenizer;

/// One text encoder with the tokenizer that feeds it.
pub struct TextEncoder {
    pub component: Component,
    pub tokenizer: ClipTokenizer,
    pub config: ClipTextConfig,
    pub model: ClipTextModel,
}

/// The text encoders of a pipeline, in the family's order.
pub struct TextEncoders {
    pub family: Family,
    pub encoders: Vec<TextEncoder>,
    /// SDXL's `force_zeros_for_empty_prompt`: without a negative prompt the negative
    /// embeddings (and pooled embedding) are zeros.
    pub force_zeros_for_empty_prompt: bool,
}

/// What the text encoders make of one prompt.
#[derive(Clone)]
pub struct PromptEmbeds {
    /// `[1, 77, width]`: what cross-attention reads (SDXL: both encoders' penultimate
    /// hidden states side by side).
    pub context: Tensor<3>,
    /// `[1, P]`: SDXL's pooled embedding (the second encoder's projected end token).
    pub pooled: Option<Tensor<2>>,
}

impl PromptEmbeds {
    /// Zeros shaped like `self` (SDXL's negative embeddings without a negative prompt).
    pub fn zeros_like(&self) -> Self {
        Self {
            context: self.context.zeros_like(),
            pooled: self.pooled.as_ref().map(|p| p.zeros_like()),
        }
    }

    /// `parts` stacked along the batch.
    pub fn cat(parts: Vec<PromptEmbeds>) -> Self {
        let pooled = parts
            .iter()
            .map(|p| p.pooled.clone())
            .collect::<Option<Vec<_>>>();
        Self {
            context: Tensor::cat(parts.into_iter().map(|p| p.context).collect(), 0),
            pooled: pooled.map(|p| Tensor::cat(p, 0)),
        }
    }
}

impl TextEncoders {
    /// Reads the tokenizers and configs of `family`'s text encoders in `files` and builds
    /// the encoders, their weights not yet loaded.
    pub fn build(files: &dyn ModelFiles, family: Family, device: &Device) -> Result<Self> {
        let mut encoders = Vec::new();
        for &component in family.components() {
            let Some(folder) = component.tokenizer() else {
                continue;
            };
            let tokenizer = load::tokenizer(files, folder)?;
            let (config, model) = load::build::<ClipTextModel>(files, component, device)?;
            tokenizer_fits(files, component, &tokenizer, &config)?;
            if family == Family::Sdxl && component == Component::TextEncoder2 {
                check_projected(files, component, &config, &model)?;
            }
            encoders.push(TextEncoder {
                component,
                tokenizer,
                config,
                model,
            });
        }
        let force_zeros_for_empty_prompt = match family {
            Family::Sd => false,
            Family::Sdxl => family::force_zeros_for_empty_prompt(files)?,
        };
        Ok(Self {
            family,
            encoders,
            force_zeros_for_empty_prompt,
        })
    }

    /// Loads the encoders' weights from `files`, whole, in `dtype`.
    pub fn load_weights(
        self,
        files: &dyn ModelFiles,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let encoders = self.encoders.into_iter().map(|e| {
            let model = load::weights(files, e.component, e.model, device, dtype)?;
            Ok(TextEncoder { model, ..e })
        });
        Ok(Self {
            encoders: encoders.collect::<Result<_>>()?,
            ..self
        })
    }

    /// The width of the embeddings cross-attention reads.
    pub fn context_width(&self) -> usize {
        match self.family {
            Family::Sd => self.encoders[0].config.hidden_size,
            Family::Sdxl => self.encoders.iter().map(|e| e.config.hidden_size).sum(),
        }
    }

    /// The width of the pooled embedding, for families that make one.
    pub fn pooled_width(&self) -> Option<usize> {
        match self.family {
            Family::Sd => None,
            Family::Sdxl => self.encoders.last().map(|e| e.config.projection_dim),
        }
    }

    /// Refuses a `clip_skip` (named `name`) that skips every layer of an encoder.
    pub fn check_clip_skip(&self, clip_skip: usize, name: &str) -> Result<()> {
        // SDXL reads the layer before the one clip_skip names.
        let reserved = match self.family {
            Family::Sd => 0,
            Family::Sdxl => 1,
        };
        for encoder in &self.encoders {
            let layers = encoder.model.num_layers();
            if clip_skip + reserved >= layers {
                return Err(Error::invalid(
                    name,
                    format!(
                        "{clip_skip} (the {} has {layers} layers)",
                        encoder.component
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The text encoders with `loras` attached, to encode several prompts with.
    pub fn with_loras(&self, loras: &[(Arc<Lora>, f32)]) -> Vec<ClipTextModel> {
        let attach = |e: &TextEncoder| lora::apply(&e.model, e.component, loras);
        self.encoders.iter().map(attach).collect()
    }

    /// `prompt` through `models` (see [`with_loras`](Self::with_loras)), skipping the last
    /// `clip_skip` layers as diffusers does.
    pub fn encode(
        &self,
        models: &[ClipTextModel],
        prompt: &str,
        clip_skip: usize,
        device: &Device,
    ) -> Result<PromptEmbeds> {
        match self.family {
            // The chosen layer's output through the final layer norm.
            Family::Sd => {
                let ids = self.encoders[0].tokenizer.encode(prompt)?;
                Ok(PromptEmbeds {
                    context: models[0].encode(&ids, clip_skip, device),
                    pooled: None,
                })
            }
            // Each encoder's layer before the chosen one, without the final layer norm,
            // side by side; the pooled embedding is the last encoder's.
            Family::Sdxl => {
                let mut hidden = Vec::new();
                let mut pooled = None;
                for (encoder, model) in self.encoders.iter().zip(models) {
                    let ids = encoder.tokenizer.encode(prompt)?;
                    let (h, p) = model.encode_penultimate(&ids, clip_skip, device);
                    hidden.push(h);
                    pooled = p.or(pooled);
                }
                Ok(PromptEmbeds {
                    context: Tensor::cat(hidden, 2),
                    pooled,
                })
            }
        }
    }

    /// The negative embeddings of a request: the encoded `negative` prompt, or zeros when
    /// there is none and the model asks for that (`force_zeros_for_empty_prompt`).
    pub fn encode_negative(
        &self,
        models: &[ClipTextModel],
        negative: Option<&str>,
        positive: &PromptEmbeds,
        clip_skip: usize,
        device: &Device,
    ) -> Result<PromptEmbeds> {
        match negative {
            None if self.force_zeros_for_empty_prompt => Ok(positive.zeros_like()),
            _ => self.encode(models, negative.unwrap_or(""), clip_skip, device),
        }
    }
}

/// Checks that every id `tokenizer` produces has a row in the token embedding of the
/// text encoder `component` (configured by `text`), and every position a position
/// embedding.
pub fn tokenizer_fits(
    files: &dyn ModelFiles,
    component: Component,
    tokenizer: &ClipTokenizer,
    text: &ClipTextConfig,
) -> Result<()> {
    let text_file = files.display(&component.config());
    let tokenizer_dir = files.display(component.tokenizer().unwrap_or("tokenizer"));
    if tokenizer.vocab_size() > text.vocab_size {
        return Err(Error::config(
            &text_file,
            "vocab_size",
            format!(
                "is {} but the tokenizer ({tokenizer_dir}) has {} tokens",
                text.vocab_size,
                tokenizer.vocab_size()
            ),
        ));
    }
    if tokenizer.max_length() > text.max_position_embeddings {
        return Err(Error::config(
            &text_file,
            "max_position_embeddings",
            format!(
                "is {} but the tokenizer ({tokenizer_dir}) makes {} tokens (model_max_length)",
                text.max_position_embeddings,
                tokenizer.max_length()
            ),
        ));
    }
    Ok(())
}

/// SDXL's second encoder must project its end token (CLIPTextModelWithProjection).
fn check_projected(
    files: &dyn ModelFiles,
    component: Component,
    text: &ClipTextConfig,
    model: &ClipTextModel,
) -> Result<()> {
    if model.text_projection.is_some() {
        return Ok(());
    }
    Err(Error::config(
        &files.display(&component.config()),
        "architectures",
        format!(
            "is {:?}, but SDXL's {component} must be a CLIPTextModelWithProjection (its \
             pooled embedding conditions the UNet)",
            text.architectures
        ),
    ))
}
