//! Reading diffusers/transformers `config.json` files.
//!
//! The config keys are the public contract: each model struct mirrors the keys diffusers
//! reads, with diffusers' defaults for keys a file leaves out. Unknown keys are ignored
//! (checkpoints carry bookkeeping such as `_diffusers_version`); values this crate cannot
//! honour are rejected by the model's `validate`, naming the key.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Parses `text` (the contents of `file`) as a config struct. A value of the wrong type
/// or an unknown enum value names its key (`components.unet.tensors[3].dtype`).
pub fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<T> {
    let mut json = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut json).map_err(|e| error(file, e))?;
    json.end().map_err(|e| Error::Json {
        file: file.into(),
        message: e.to_string(),
    })?;
    Ok(value)
}

/// [`parse`] for JSON already read.
pub fn parse_value<T: DeserializeOwned>(file: &str, value: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| error(file, e))
}

/// A flag that configs may write as `null`, which diffusers reads as false (SDXL's
/// `upcast_attention: null`).
pub fn null_is_false<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

fn error(file: &str, e: serde_path_to_error::Error<serde_json::Error>) -> Error {
    let key = e.path().to_string();
    let data = e.inner().classify() == serde_json::error::Category::Data;
    let message = e.inner().to_string();
    if key == "." || !data {
        Error::Json {
            file: file.into(),
            message,
        }
    } else {
        Error::config(file, &key, message)
    }
}

/// A value diffusers accepts either once for all blocks or once per block
/// (`attention_head_dim: 8` or `[5, 10, 20, 20]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The value for each of `blocks` blocks; `key` and `file` name it in the error when a
    /// list has the wrong length.
    pub fn expand(&self, blocks: usize, file: &str, key: &str) -> Result<Vec<T>> {
        match self {
            PerBlock::One(v) => Ok(vec![v.clone(); blocks]),
            PerBlock::Each(v) if v.len() == blocks => Ok(v.clone()),
            PerBlock::Each(v) => Err(Error::config(
                file,
                key,
                format!("has {} entries but the model has {blocks} blocks", v.len()),
            )),
        }
    }
}

/// Checks that `value` is one of `allowed` for config key `key`.
pub fn expect_one_of(file: &str, key: &str, value: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(Error::config(
            file,
            key,
            format!(
                "unsupported value {value:?} (supported: {})",
                allowed.join(", ")
            ),
        ))
    }
}

/// Checks that the size-like config value `key` lies in `range`. Every value that decides
/// how much is allocated is bounded (by what real SD/SDXL configs use, with room), so that
/// a hostile config is refused by name instead of exhausting memory.
pub fn bounded(
    file: &str,
    key: &str,
    value: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<()> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(Error::config(
            file,
            key,
            format!(
                "is {value}; this build accepts {} to {}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// [`bounded`] for every value of a per-block list.
pub fn all_bounded(
    file: &str,
    key: &str,
    values: &[usize],
    range: std::ops::RangeInclusive<usize>,
) -> Result<()> {
    values
        .iter()
        .try_for_each(|&v| bounded(file, key, v, range.clone()))
}

/// Checks that the float config value `key` is finite and inside `range`.
pub fn finite_in(
    file: &str,
    key: &str,
    value: f64,
    range: std::ops::RangeInclusive<f64>,
) -> Result<()> {
    if value.is_finite() && range.contains(&value) {
        Ok(())
    } else {
        Err(Error::config(
            file,
            key,
            format!(
                "is {value}; expected a number in [{}, {}]",
                range.start(),
                range.end()
            ),
        ))
    }
}
