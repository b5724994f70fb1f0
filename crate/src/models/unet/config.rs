//! `unet/config.json`, as diffusers' `UNet2DConditionModel` reads it.

use serde::{Deserialize, Serialize};

use crate::config::{PerBlock, all_bounded, bounded, expect_one_of, finite_in};
use crate::error::{Error, Result};
use crate::models::resnet::ResnetConfig;
use crate::models::transformer::Transformer2DConfig;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct UNetConfig {
    pub sample_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerBlock<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub act_fn: String,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<usize>,
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Despite its name, the number of heads in SD 1.x/2.x configs (a diffusers legacy).
    pub attention_head_dim: PerBlock<usize>,
    /// When present, the number of heads (and `attention_head_dim` is ignored).
    pub num_attention_heads: Option<PerBlock<usize>>,
    #[serde(deserialize_with = "crate::config::null_is_false")]
    pub dual_cross_attention: bool,
    #[serde(deserialize_with = "crate::config::null_is_false")]
    pub use_linear_projection: bool,
    #[serde(deserialize_with = "crate::config::null_is_false")]
    pub upcast_attention: bool,
    pub resnet_time_scale_shift: String,
    pub time_embedding_type: String,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    /// LCM's guidance-scale embedding width.
    pub time_cond_proj_dim: Option<usize>,
    pub class_embed_type: Option<String>,
    /// `"text_time"` (SDXL): a pooled text embedding and six size ids, embedded and added to
    /// the time embedding.
    pub addition_embed_type: Option<String>,
    /// The sinusoidal width each of the six size ids is embedded at (SDXL: 256).
    pub addition_time_embed_dim: Option<usize>,
    /// The width of the pooled text embedding and the six embedded ids together.
    pub projection_class_embeddings_input_dim: Option<usize>,
    pub encoder_hid_dim: Option<usize>,
    pub num_class_embeds: Option<usize>,
    pub attention_type: String,
    #[serde(deserialize_with = "crate::config::null_is_false")]
    pub center_input_sample: bool,
    pub time_embedding_dim: Option<usize>,
    pub time_embedding_act_fn: Option<String>,
    pub timestep_post_act: Option<String>,
    pub cross_attention_norm: Option<String>,
    #[serde(deserialize_with = "crate::config::null_is_false")]
    pub resnet_skip_time_act: bool,
    pub resnet_out_scale_factor: f64,
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
}

impl Default for UNetConfig {
    /// diffusers' defaults: SD 1.x's UNet.
    fn default() -> Self {
        Self {
            sample_size: 64,
            in_channels: 4,
            out_channels: 4,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: vec![
                "CrossAttnDownBlock2D".into(),
                "CrossAttnDownBlock2D".into(),
                "CrossAttnDownBlock2D".into(),
                "DownBlock2D".into(),
            ],
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: vec![
                "UpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
            ],
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: PerBlock::One(1),
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            upcast_attention: false,
            resnet_time_scale_shift: "default".into(),
            time_embedding_type: "positional".into(),
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            time_cond_proj_dim: None,
            class_embed_type: None,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            projection_class_embeddings_input_dim: None,
            encoder_hid_dim: None,
            num_class_embeds: None,
            attention_type: "default".into(),
            center_input_sample: false,
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            cross_attention_norm: None,
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
            reverse_transformer_layers_per_block: None,
        }
    }
}

/// Everything the blocks are built from: the config's per-block values expanded to one
/// per level (level 0 is the highest resolution), and the values every block shares.
#[derive(Debug, Clone)]
pub struct BlockPlan {
    /// `block_out_channels`.
    pub channels: Vec<usize>,
    /// Resnets per down block (the up block of the same level has one more).
    pub layers: Vec<usize>,
    /// Whether the down block of each level has cross-attention transformers.
    pub down_attention: Vec<bool>,
    /// The same for the up blocks, per level (they are listed deepest first in configs).
    pub up_attention: Vec<bool>,
    pub heads: Vec<usize>,
    pub transformer_layers: Vec<usize>,
    pub cross_attention_dim: Vec<usize>,
    pub groups: usize,
    pub eps: f64,
    /// The width of the timestep embedding every resnet receives.
    pub temb_dim: usize,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
    pub downsample_padding: usize,
    /// The mid block's resnet output scale, `None` when the model has no mid block.
    pub mid_block_scale_factor: Option<f64>,
}

impl BlockPlan {
    pub fn levels(&self) -> usize {
        self.channels.len()
    }

    /// A resnet of the UNet from `c_in` to `c_out` channels.
    pub fn resnet(&self, c_in: usize, c_out: usize) -> ResnetConfig {
        ResnetConfig {
            in_channels: c_in,
            out_channels: c_out,
            temb_channels: Some(self.temb_dim),
            groups: self.groups,
            eps: self.eps,
            output_scale_factor: 1.0,
        }
    }

    /// The cross-attention transformer of `level`.
    pub fn transformer(&self, level: usize) -> Transformer2DConfig {
        Transformer2DConfig {
            channels: self.channels[level],
            heads: self.heads[level],
            layers: self.transformer_layers[level],
            cross_attention_dim: self.cross_attention_dim[level],
            groups: self.groups,
            use_linear_projection: self.use_linear_projection,
            upcast_attention: self.upcast_attention,
        }
    }
}

pub const DOWN_BLOCKS: &[&str] = &["CrossAttnDownBlock2D", "DownBlock2D"];
pub const UP_BLOCKS: &[&str] = &["CrossAttnUpBlock2D", "UpBlock2D"];
pub const MID_BLOCKS: &[&str] = &["UNetMidBlock2DCrossAttn"];

impl UNetConfig {
    /// Rejects what this implementation cannot run, naming the key.
    pub fn validate(&self, file: &str) -> Result<()> {
        self.validate_encoder(file)?;
        let n = self.block_out_channels.len();
        if self.up_block_types.len() != n {
            return Err(Error::config(
                file,
                "up_block_types",
                format!(
                    "has {} entries but block_out_channels has {n}",
                    self.up_block_types.len()
                ),
            ));
        }
        for t in &self.up_block_types {
            expect_one_of(file, "up_block_types", t, UP_BLOCKS)?;
        }
        for (key, k) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if k % 2 == 0 {
                return Err(Error::config(file, key, format!("{k} is not an odd size")));
            }
        }
        Ok(())
    }

    /// The checks of everything but the up path: what a ControlNet, which copies the
    /// UNet's down path and mid block, shares.
    pub fn validate_encoder(&self, file: &str) -> Result<()> {
        let n = self.block_out_channels.len();
        // Size-like values bounded by what SD/SDXL configs use, with room.
        bounded(file, "block_out_channels (levels)", n, 1..=8)?;
        all_bounded(
            file,
            "block_out_channels",
            &self.block_out_channels,
            1..=4096,
        )?;
        bounded(file, "sample_size", self.sample_size, 1..=1024)?;
        bounded(file, "in_channels", self.in_channels, 1..=64)?;
        bounded(file, "out_channels", self.out_channels, 1..=64)?;
        bounded(file, "conv_in_kernel", self.conv_in_kernel, 1..=7)?;
        bounded(file, "conv_out_kernel", self.conv_out_kernel, 1..=7)?;
        bounded(file, "downsample_padding", self.downsample_padding, 0..=3)?;
        bounded(file, "norm_num_groups", self.norm_num_groups, 1..=1024)?;
        finite_in(file, "norm_eps", self.norm_eps, 0.0..=1.0)?;
        finite_in(
            file,
            "mid_block_scale_factor",
            self.mid_block_scale_factor,
            1e-6..=1e6,
        )?;
        if let Some(dim) = self.time_cond_proj_dim {
            bounded(file, "time_cond_proj_dim", dim, 1..=4096)?;
        }
        all_bounded(
            file,
            "layers_per_block",
            &self.layers_per_block.expand(n, file, "layers_per_block")?,
            1..=16,
        )?;
        all_bounded(
            file,
            "transformer_layers_per_block",
            &self
                .transformer_layers_per_block
                .expand(n, file, "transformer_layers_per_block")?,
            1..=16,
        )?;
        all_bounded(
            file,
            "cross_attention_dim",
            &self
                .cross_attention_dim
                .expand(n, file, "cross_attention_dim")?,
            1..=8192,
        )?;
        all_bounded(file, "attention_head_dim", &self.heads(file)?, 1..=256)?;
        if self.down_block_types.len() != n {
            return Err(Error::config(
                file,
                "down_block_types",
                format!(
                    "has {} entries but block_out_channels has {n}",
                    self.down_block_types.len()
                ),
            ));
        }
        for t in &self.down_block_types {
            expect_one_of(file, "down_block_types", t, DOWN_BLOCKS)?;
        }
        if let Some(mid) = &self.mid_block_type {
            expect_one_of(file, "mid_block_type", mid, MID_BLOCKS)?;
        }
        expect_one_of(file, "act_fn", &self.act_fn, &["silu", "swish"])?;
        expect_one_of(
            file,
            "resnet_time_scale_shift",
            &self.resnet_time_scale_shift,
            &["default"],
        )?;
        expect_one_of(
            file,
            "time_embedding_type",
            &self.time_embedding_type,
            &["positional"],
        )?;
        if let Some(v) = &self.class_embed_type {
            return Err(Error::config(
                file,
                "class_embed_type",
                format!("{v:?} is not supported"),
            ));
        }
        self.text_time(file)?;
        expect_one_of(file, "attention_type", &self.attention_type, &["default"])?;
        let unsupported = [
            ("center_input_sample", self.center_input_sample),
            ("time_embedding_dim", self.time_embedding_dim.is_some()),
            (
                "time_embedding_act_fn",
                self.time_embedding_act_fn.is_some(),
            ),
            ("timestep_post_act", self.timestep_post_act.is_some()),
            ("cross_attention_norm", self.cross_attention_norm.is_some()),
            ("resnet_skip_time_act", self.resnet_skip_time_act),
            (
                "resnet_out_scale_factor",
                self.resnet_out_scale_factor != 1.0,
            ),
            (
                "reverse_transformer_layers_per_block",
                self.reverse_transformer_layers_per_block.is_some(),
            ),
            ("dual_cross_attention", self.dual_cross_attention),
        ];
        if let Some((key, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(Error::config(
                file,
                key,
                "only the default value is supported",
            ));
        }
        if self.encoder_hid_dim.is_some() || self.num_class_embeds.is_some() {
            return Err(Error::config(
                file,
                "encoder_hid_dim/num_class_embeds",
                "class and extra encoder embeddings are not supported",
            ));
        }
        if self
            .only_cross_attention
            .expand(n, file, "only_cross_attention")?
            != vec![false; n]
        {
            return Err(Error::config(
                file,
                "only_cross_attention",
                "is not supported",
            ));
        }
        let groups = self.norm_num_groups;
        for (i, (&c, &h)) in self
            .block_out_channels
            .iter()
            .zip(&self.heads(file)?)
            .enumerate()
        {
            if groups == 0 || c % groups != 0 {
                return Err(Error::config(
                    file,
                    "norm_num_groups",
                    format!("{groups} does not divide block_out_channels[{i}] = {c}"),
                ));
            }
            if h == 0 || c % h != 0 {
                return Err(Error::config(
                    file,
                    "attention_head_dim",
                    format!("{h} heads do not divide block_out_channels[{i}] = {c}"),
                ));
            }
        }
        Ok(())
    }

    /// Heads per level: `num_attention_heads`, or (diffusers' legacy naming)
    /// `attention_head_dim`.
    fn heads(&self, file: &str) -> Result<Vec<usize>> {
        let n = self.block_out_channels.len();
        match &self.num_attention_heads {
            Some(h) => h.expand(n, file, "num_attention_heads"),
            None => self
                .attention_head_dim
                .expand(n, file, "attention_head_dim"),
        }
    }

    /// SDXL's `text_time` embedding: (`addition_time_embed_dim`, the pooled embedding's
    /// width), `None` without one.
    pub fn text_time(&self, file: &str) -> Result<Option<(usize, usize)>> {
        match self.addition_embed_type.as_deref() {
            None => Ok(None),
            Some("text_time") => {
                let need = |key: &str, v: Option<usize>| {
                    v.ok_or_else(|| Error::config(file, key, "is required with text_time"))
                };
                let time = need("addition_time_embed_dim", self.addition_time_embed_dim)?;
                let total = need(
                    "projection_class_embeddings_input_dim",
                    self.projection_class_embeddings_input_dim,
                )?;
                bounded(file, "addition_time_embed_dim", time, 2..=4096)?;
                bounded(
                    file,
                    "projection_class_embeddings_input_dim",
                    total,
                    1..=65536,
                )?;
                if total <= 6 * time {
                    return Err(Error::config(
                        file,
                        "projection_class_embeddings_input_dim",
                        format!(
                            "is {total}, which leaves no room for a pooled text embedding \
                             beside 6 × addition_time_embed_dim = {}",
                            6 * time
                        ),
                    ));
                }
                Ok(Some((time, total - 6 * time)))
            }
            Some(v) => Err(Error::config(
                file,
                "addition_embed_type",
                format!("{v:?} is not supported (only \"text_time\", SDXL's)"),
            )),
        }
    }

    /// Checks the config, then expands it into the plan the blocks are built from.
    pub fn plan(&self, file: &str) -> Result<BlockPlan> {
        self.validate(file)?;
        let mut plan = self.expand(file)?;
        let cross = |t: &String| t.starts_with("CrossAttn");
        plan.up_attention = self.up_block_types.iter().rev().map(cross).collect();
        Ok(plan)
    }

    /// The plan of the down path and mid block alone (a ControlNet's).
    pub fn encoder_plan(&self, file: &str) -> Result<BlockPlan> {
        self.validate_encoder(file)?;
        self.expand(file)
    }

    /// The per-block values expanded; `up_attention` left empty.
    fn expand(&self, file: &str) -> Result<BlockPlan> {
        let n = self.block_out_channels.len();
        let cross = |t: &String| t.starts_with("CrossAttn");
        Ok(BlockPlan {
            channels: self.block_out_channels.clone(),
            layers: self.layers_per_block.expand(n, file, "layers_per_block")?,
            down_attention: self.down_block_types.iter().map(cross).collect(),
            up_attention: Vec::new(),
            heads: self.heads(file)?,
            transformer_layers: self.transformer_layers_per_block.expand(
                n,
                file,
                "transformer_layers_per_block",
            )?,
            cross_attention_dim: self
                .cross_attention_dim
                .expand(n, file, "cross_attention_dim")?,
            groups: self.norm_num_groups,
            eps: self.norm_eps,
            temb_dim: self.block_out_channels[0] * 4,
            use_linear_projection: self.use_linear_projection,
            upcast_attention: self.upcast_attention,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self
                .mid_block_type
                .as_ref()
                .map(|_| self.mid_block_scale_factor),
        })
    }
}
