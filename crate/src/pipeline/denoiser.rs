//! The network that denoises the latents at each step: a UNet (SD 1.x/2.x/XL: it predicts
//! the noise, or v) or a diffusion transformer (SD3's MMDiT: it predicts the flow's
//! velocity). The pipeline's steps call it through [`Denoiser::forward`]; what only one
//! kind has (ControlNets, LoRAs, inpainting channels, LCM's guidance embedding) is asked
//! for with [`Denoiser::unet`].

use burn::prelude::*;
use burn::tensor::DType;

use super::text::PromptEmbeds;
use crate::component::Component;
use crate::error::{Error, Result};
use crate::family::Family;
use crate::files::ModelFiles;
use crate::load;
use crate::models::mmdit::{SD3Transformer2DModel, Sd3TransformerConfig};
use crate::models::unet::{Conditioning, Residuals, UNet2DConditionModel, UNetConfig};

// One or the other per pipeline: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Denoiser {
    Unet(UNetConfig, UNet2DConditionModel),
    Transformer(Sd3TransformerConfig, SD3Transformer2DModel),
}

impl Denoiser {
    /// The denoiser of a `family` pipeline in `files`, its weights not yet loaded.
    pub fn build(files: &dyn ModelFiles, family: Family, device: &Device) -> Result<Self> {
        Ok(if family.is_flow() {
            let (config, model) = load::build(files, Component::Transformer, device)?;
            Denoiser::Transformer(config, model)
        } else {
            let (config, model) = load::build(files, Component::Unet, device)?;
            Denoiser::Unet(config, model)
        })
    }

    /// How messages name it.
    pub fn name(&self) -> &'static str {
        match self {
            Denoiser::Unet(..) => "UNet",
            Denoiser::Transformer(..) => "transformer",
        }
    }

    /// Its folder in a pipeline.
    pub fn component(&self) -> Component {
        match self {
            Denoiser::Unet(..) => Component::Unet,
            Denoiser::Transformer(..) => Component::Transformer,
        }
    }

    /// Loads its weights from `files`, whole, in `dtype`.
    pub fn load_weights(
        self,
        files: &dyn ModelFiles,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let component = self.component();
        Ok(match self {
            Denoiser::Unet(c, m) => {
                Denoiser::Unet(c, load::weights(files, component, m, device, dtype)?)
            }
            Denoiser::Transformer(c, m) => {
                Denoiser::Transformer(c, load::weights(files, component, m, device, dtype)?)
            }
        })
    }

    pub fn unet(&self) -> Option<&UNet2DConditionModel> {
        match self {
            Denoiser::Unet(_, unet) => Some(unet),
            Denoiser::Transformer(..) => None,
        }
    }

    pub fn unet_config(&self) -> Option<&UNetConfig> {
        match self {
            Denoiser::Unet(config, _) => Some(config),
            Denoiser::Transformer(..) => None,
        }
    }

    /// The latent side it was trained at (`sample_size`).
    pub fn sample_size(&self) -> usize {
        match self {
            Denoiser::Unet(c, _) => c.sample_size,
            Denoiser::Transformer(c, _) => c.sample_size,
        }
    }

    /// What every latent side must be a multiple of: the UNet halves it once per down
    /// block, the transformer cuts it into patches.
    pub fn latent_multiple(&self) -> usize {
        match self {
            Denoiser::Unet(c, _) => 1 << (c.block_out_channels.len() - 1),
            Denoiser::Transformer(c, _) => c.patch_size,
        }
    }

    /// The largest latent side it reads (the transformer's position table), if bounded.
    pub fn max_latent_side(&self) -> Option<usize> {
        match self {
            Denoiser::Unet(..) => None,
            Denoiser::Transformer(c, _) => Some(c.max_latent_side()),
        }
    }

    /// (in, out) latent channels.
    pub fn channels(&self) -> (usize, usize) {
        match self {
            Denoiser::Unet(c, _) => (c.in_channels, c.out_channels),
            Denoiser::Transformer(c, _) => (c.in_channels, c.out_channels()),
        }
    }

    /// The config file's path in a pipeline, for messages.
    pub fn config_path(&self) -> String {
        self.component().config()
    }
}

/// One denoiser call's conditioning, as each kind reads it.
#[allow(clippy::large_enum_variant)]
pub enum Cond {
    Unet(Conditioning),
    /// The joint text tokens `[B, N, joint_attention_dim]` and pooled embedding `[B, P]`.
    Transformer {
        context: Tensor<3>,
        pooled: Tensor<2>,
    },
}

impl Cond {
    /// The text embeddings, to check for non-finite values.
    pub fn context(&self) -> &Tensor<3> {
        match self {
            Cond::Unet(c) => &c.context,
            Cond::Transformer { context, .. } => context,
        }
    }

    /// The transformer's conditioning from the prompt embeddings.
    pub fn transformer(embeds: PromptEmbeds) -> Result<Self> {
        let pooled = embeds.pooled.ok_or_else(|| {
            Error::Backend("an SD3 prompt embedding has no pooled embedding".into())
        })?;
        Ok(Cond::Transformer {
            context: embeds.context,
            pooled,
        })
    }

    /// Row `index` of the batch (the positive prompt's, for skip-layer guidance).
    pub fn row(&self, index: usize) -> Self {
        match self {
            Cond::Unet(_) => unreachable!("skip-layer guidance is the transformer's"),
            Cond::Transformer { context, pooled } => Cond::Transformer {
                context: context.clone().narrow(0, index, 1),
                pooled: pooled.clone().narrow(0, index, 1),
            },
        }
    }
}

/// The denoiser `unet` stands for in a step: the pipeline's UNet with the request's LoRAs
/// attached, or the transformer.
#[allow(clippy::large_enum_variant)]
pub enum Active<'a> {
    Unet(UNet2DConditionModel),
    Transformer(&'a SD3Transformer2DModel),
}

impl Active<'_> {
    /// Its prediction for `x` at timestep `t`; `skip` leaves transformer blocks out.
    pub fn forward(
        &self,
        x: Tensor<4>,
        t: f32,
        cond: &Cond,
        residuals: Option<Residuals>,
        skip: &[usize],
    ) -> Tensor<4> {
        match (self, cond) {
            (Active::Unet(unet), Cond::Unet(cond)) => unet.forward(x, t, cond, residuals),
            (Active::Transformer(model), Cond::Transformer { context, pooled }) => {
                model.forward(x, t, context.clone(), pooled.clone(), skip)
            }
            _ => unreachable!("the conditioning is made for the denoiser"),
        }
    }
}
