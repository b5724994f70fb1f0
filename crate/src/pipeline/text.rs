//! The text side of a pipeline: a tokenizer and a CLIP text encoder per text component of
//! the family, built, loaded and checked (how they read a prompt: `reading`).

use burn::prelude::*;
use burn::tensor::DType;

use crate::component::Component;
use crate::error::{Error, Result};
use crate::family::{self, Family};
use crate::files::ModelFiles;
use crate::load;
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::t5::{T5Config, T5EncoderModel};
use crate::tokenizer::ClipTokenizer;
use crate::tokenizer::t5::{MAX_SEQUENCE_LENGTH, T5Tokenizer};

/// One text encoder with the tokenizer that feeds it.
pub struct TextEncoder {
    pub component: Component,
    pub tokenizer: ClipTokenizer,
    pub config: ClipTextConfig,
    pub model: ClipTextModel,
}

/// SD3's T5 encoder with the tokenizer that feeds it.
pub struct T5Encoder {
    pub tokenizer: T5Tokenizer,
    pub config: T5Config,
    pub model: T5EncoderModel,
}

/// The T5 tokens SD3 conditions on when a request names no length (diffusers'
/// `max_sequence_length`).
pub const DEFAULT_T5_LENGTH: usize = 256;

/// The text encoders of a pipeline, in the family's order.
pub struct TextEncoders {
    pub family: Family,
    /// The CLIP encoders.
    pub encoders: Vec<TextEncoder>,
    /// SD3's T5 encoder, when the pipeline has one and it is used.
    pub t5: Option<T5Encoder>,
    /// SD3: the transformer's `joint_attention_dim`, the width of the joint text tokens
    /// (set by the pipeline once the transformer's config is read).
    pub joint_width: usize,
    /// SDXL's `force_zeros_for_empty_prompt`: without a negative prompt the negative
    /// embeddings (and pooled embedding) are zeros.
    pub force_zeros_for_empty_prompt: bool,
}

/// What the text encoders make of one prompt.
#[derive(Clone)]
pub struct PromptEmbeds {
    /// `[1, 77·k, width]`: what cross-attention reads (SDXL: both encoders' penultimate
    /// hidden states side by side; SD3: the joint CLIP and T5 tokens).
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
        let mut t5 = None;
        for &component in family.components() {
            let Some(folder) = component.tokenizer() else {
                continue;
            };
            if component == Component::TextEncoder3 {
                t5 = build_t5(files, device)?;
                continue;
            }
            let tokenizer = load::tokenizer(files, folder)?;
            let (config, model) = load::build::<ClipTextModel>(files, component, device)?;
            tokenizer_fits(files, component, &tokenizer, &config)?;
            let pooled_by = match family {
                Family::Sd => false,
                Family::Sdxl => component == Component::TextEncoder2,
                Family::Sd3 => true,
            };
            if pooled_by {
                check_projected(files, family, component, &config, &model)?;
            }
            encoders.push(TextEncoder {
                component,
                tokenizer,
                config,
                model,
            });
        }
        let force_zeros_for_empty_prompt = match family {
            Family::Sd | Family::Sd3 => false,
            Family::Sdxl => family::force_zeros_for_empty_prompt(files)?,
        };
        Ok(Self {
            family,
            encoders,
            t5,
            joint_width: 0,
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
        let encoders = encoders.collect::<Result<_>>()?;
        let t5 = match self.t5 {
            Some(t5) => {
                let model = load::weights(files, Component::TextEncoder3, t5.model, device, dtype)
                    .map_err(suggest_no_t5)?;
                Some(T5Encoder { model, ..t5 })
            }
            None => None,
        };
        Ok(Self {
            encoders,
            t5,
            ..self
        })
    }

    /// The width of the embeddings cross-attention reads (SD3: the CLIP encoders' side by
    /// side, before they are padded to the joint width).
    pub fn context_width(&self) -> usize {
        match self.family {
            Family::Sd => self.encoders[0].config.hidden_size,
            Family::Sdxl | Family::Sd3 => self.encoders.iter().map(|e| e.config.hidden_size).sum(),
        }
    }

    /// The width of the pooled embedding, for families that make one.
    pub fn pooled_width(&self) -> Option<usize> {
        match self.family {
            Family::Sd => None,
            Family::Sdxl => self.encoders.last().map(|e| e.config.projection_dim),
            Family::Sd3 => Some(self.encoders.iter().map(|e| e.config.projection_dim).sum()),
        }
    }

    /// Refuses a T5 length (`max_sequence_length`) SD3 does not take.
    pub fn check_t5_length(&self, length: usize, name: &str) -> Result<()> {
        if (1..=MAX_SEQUENCE_LENGTH).contains(&length) {
            return Ok(());
        }
        Err(Error::invalid(
            name,
            format!("{length} is not in 1..={MAX_SEQUENCE_LENGTH} T5 tokens"),
        ))
    }

    /// Refuses a `clip_skip` (named `name`) that skips every layer of an encoder.
    pub fn check_clip_skip(&self, clip_skip: usize, name: &str) -> Result<()> {
        // SDXL reads the layer before the one clip_skip names.
        let reserved = match self.family {
            Family::Sd => 0,
            Family::Sdxl | Family::Sd3 => 1,
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

/// SD3's T5 encoder and its tokenizer, when `model_index.json` lists it (see
/// `files::WithoutT5` to leave it out); its weights not yet loaded.
fn build_t5(files: &dyn ModelFiles, device: &Device) -> Result<Option<T5Encoder>> {
    if !family::lists(files, Component::TextEncoder3)? {
        return Ok(None);
    }
    let config_path = Component::TextEncoder3.config();
    let tokenizer_path = crate::component::TokenizerPaths::new("tokenizer_3").tokenizer_json;
    for path in [&config_path, &tokenizer_path] {
        if files.read(path)?.is_none() {
            return Err(suggest_no_t5(Error::io(files.display(path), "not found")));
        }
    }
    let tokenizer = load::t5_tokenizer(files, "tokenizer_3").map_err(suggest_no_t5)?;
    let (config, model) = load::build::<T5EncoderModel>(files, Component::TextEncoder3, device)?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(Error::config(
            &files.display(&config_path),
            "vocab_size",
            format!(
                "is {} but the tokenizer ({}) has {} tokens",
                config.vocab_size,
                files.display("tokenizer_3"),
                tokenizer.vocab_size()
            ),
        ));
    }
    Ok(Some(T5Encoder {
        tokenizer,
        config,
        model,
    }))
}

/// A missing T5 file's error, with the way to go on without T5.
fn suggest_no_t5(error: Error) -> Error {
    match error {
        Error::Io { file, message } => Error::Io {
            file,
            message: format!(
                "{message}; model_index.json lists text_encoder_3 (T5): load the model \
                 without it with --no-t5 (in the browser: {{ t5: false }})"
            ),
        },
        other => other,
    }
}

/// SDXL's second encoder and SD3's two must project their end token
/// (CLIPTextModelWithProjection).
fn check_projected(
    files: &dyn ModelFiles,
    family: Family,
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
            "is {:?}, but {family}'s {component} must be a CLIPTextModelWithProjection (its \
             pooled embedding conditions the denoiser)",
            text.architectures
        ),
    ))
}
