//! ControlNets in lllyasviel's original layout (`control_model.*`).

use super::CONTROL;
use crate::error::{Error, Result};
use crate::weights::ldm::{split_index, unet_name};

/// A ControlNet in lllyasviel's original layout (`control_model.*`, as ControlNet-v1-1's
/// files): the UNet-like keys named as the UNet's (see [`unet_name`]), `zero_convs.N.0`
/// → `controlnet_down_blocks.N`, `middle_block_out.0` → `controlnet_mid_block`, and the
/// hint block's convolutions (a Sequential with SiLUs between) → the conditioning
/// embedding's `conv_in`, `blocks.*` and `conv_out` in order. Such files carry no config:
/// it is the UNet's own, with the conditioning widths read from the hint block's shapes.
#[cfg(not(target_family = "wasm"))]
#[derive(Clone)]
pub struct SingleFileControlNet {
    path: std::path::PathBuf,
    config: Vec<u8>,
    layers_per_block: usize,
    /// The hint block's convolution indices, in order.
    hint: Vec<usize>,
}

#[cfg(not(target_family = "wasm"))]
pub fn controlnet(
    path: &std::path::Path,
    unet: &crate::models::unet::UNetConfig,
) -> Result<SingleFileControlNet> {
    use crate::models::controlnet::ControlNetConfig;
    let file = path.display().to_string();
    let header = crate::weights::safetensors::read_header(path)?;
    let mut hint: Vec<(usize, Vec<usize>)> = header
        .tensors
        .iter()
        .filter_map(|t| {
            let rest = t
                .name
                .strip_prefix(CONTROL)?
                .strip_prefix("input_hint_block.")?;
            let (i, param) = split_index(rest)?;
            (param == "weight").then(|| (i, t.shape.clone()))
        })
        .collect();
    hint.sort();
    let out_channels = |i: usize| hint.get(i).and_then(|(_, s)| s.first().copied());
    // conv_in, then pairs (a convolution keeping the width, a strided one changing it),
    // then conv_out.
    let pairs = hint.len().saturating_sub(2);
    if hint.len() < 2 || !pairs.is_multiple_of(2) || hint.iter().any(|(_, s)| s.len() != 4) {
        return Err(Error::io(
            &file,
            format!(
                "is not a ControlNet in the original layout (expected {CONTROL}input_hint_block \
                 convolutions, found {} of them)",
                hint.len()
            ),
        ));
    }
    let mut widths = vec![out_channels(0).expect("checked")];
    widths.extend((0..pairs / 2).filter_map(|k| out_channels(2 + 2 * k)));
    let n = unet.block_out_channels.len();
    let config = ControlNetConfig {
        unet: unet.clone(),
        conditioning_channels: hint[0].1[1],
        conditioning_embedding_out_channels: widths,
        ..ControlNetConfig::default()
    };
    let layers = unet.layers_per_block.expand(n, &file, "layers_per_block")?;
    Ok(SingleFileControlNet {
        path: path.to_path_buf(),
        config: serde_json::to_vec(&config).expect("config serializes"),
        layers_per_block: layers.first().copied().unwrap_or(2),
        hint: hint.into_iter().map(|(i, _)| i).collect(),
    })
}

#[cfg(not(target_family = "wasm"))]
impl SingleFileControlNet {
    /// The diffusers key of a key of the file.
    pub fn rename(&self, key: &str) -> Option<String> {
        let rest = key.strip_prefix(CONTROL)?;
        if let Some(r) = rest.strip_prefix("input_hint_block.") {
            let (i, param) = split_index(r)?;
            let position = self.hint.iter().position(|&h| h == i)?;
            let name = match position {
                0 => "conv_in".to_string(),
                p if p + 1 == self.hint.len() => "conv_out".to_string(),
                p => format!("blocks.{}", p - 1),
            };
            return Some(format!("controlnet_cond_embedding.{name}.{param}"));
        }
        if let Some(r) = rest.strip_prefix("zero_convs.") {
            let (i, r) = split_index(r)?;
            return Some(format!(
                "controlnet_down_blocks.{i}.{}",
                r.strip_prefix("0.")?
            ));
        }
        if let Some(r) = rest.strip_prefix("middle_block_out.0.") {
            return Some(format!("controlnet_mid_block.{r}"));
        }
        unet_name(rest, self.layers_per_block)
    }
}

#[cfg(not(target_family = "wasm"))]
impl crate::files::ModelFiles for SingleFileControlNet {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        use crate::component::Component;
        if path == Component::ControlNet.config() {
            return Ok(Some(self.config.clone()));
        }
        if path == Component::ControlNet.weight_files(false)[0] {
            return crate::files::read_bounded(&self.path, crate::files::MAX_FILE_BYTES).map(Some);
        }
        Ok(None)
    }

    fn display(&self, path: &str) -> String {
        match path.ends_with(".safetensors") {
            true => self.path.display().to_string(),
            false => format!(
                "{} ({path} derived from the model's UNet)",
                self.path.display()
            ),
        }
    }

    fn weights(
        &self,
        component: crate::component::Component,
        _device: &burn::prelude::Device,
    ) -> Result<crate::files::WeightFiles> {
        Ok(crate::files::WeightFiles {
            choices: vec![vec![component.weight_files(false)[0].clone()]],
            reader: Box::new(Renamed {
                inner: crate::weights::SafetensorsReader::default(),
                file: self.path.display().to_string(),
                controlnet: self.clone(),
            }),
        })
    }
}

/// Reads the file and renames its tensors as diffusers names them.
#[cfg(not(target_family = "wasm"))]
struct Renamed {
    inner: crate::weights::SafetensorsReader,
    file: String,
    controlnet: SingleFileControlNet,
}

#[cfg(not(target_family = "wasm"))]
impl Renamed {
    fn rename(&self, tensors: crate::weights::Tensors) -> Result<crate::weights::Tensors> {
        tensors
            .into_iter()
            .map(|(key, data)| match self.controlnet.rename(&key) {
                Some(name) => Ok((name, data)),
                None => Err(Error::UnexpectedTensor {
                    file: self.file.clone(),
                    key,
                }),
            })
            .collect()
    }
}

#[cfg(not(target_family = "wasm"))]
impl crate::weights::TensorReader for Renamed {
    fn begin(&mut self, file: &str) -> Result<()> {
        self.inner.begin(file)
    }

    fn push(&mut self, piece: &[u8]) -> Result<crate::weights::Tensors> {
        let tensors = self.inner.push(piece)?;
        self.rename(tensors)
    }

    fn end(&mut self) -> Result<crate::weights::Tensors> {
        let tensors = self.inner.end()?;
        self.rename(tensors)
    }
}
