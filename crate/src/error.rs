//! One error type for the whole crate: every variant says what was wrong and where
//! (file, key or parameter), so the CLI and the browser can show it as is.

use std::fmt;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: {message}")]
    Io { file: String, message: String },

    #[error("{file}: invalid JSON: {message}")]
    Json { file: String, message: String },

    #[error("{file}: `{key}`: {message}")]
    Config {
        file: String,
        key: String,
        message: String,
    },

    #[error("{file}: not a valid safetensors file: {message}")]
    Safetensors { file: String, message: String },

    #[error("{file}: missing tensor `{key}`")]
    MissingTensor { file: String, key: String },

    #[error("{file}: unexpected tensor `{key}` (not part of this model)")]
    UnexpectedTensor { file: String, key: String },

    #[error("{file}: tensor `{key}` has shape {found}, the model expects {expected}")]
    ShapeMismatch {
        file: String,
        key: String,
        expected: Shape,
        found: Shape,
    },

    #[error("{file}: tokenizer: {message}")]
    Tokenizer { file: String, message: String },

    #[error("invalid {name}: {message}")]
    InvalidArgument { name: String, message: String },

    #[error("{0}")]
    Backend(String),

    #[error("cancelled")]
    Cancelled,
}

impl Error {
    pub fn io(file: impl fmt::Display, err: impl fmt::Display) -> Self {
        Error::Io {
            file: file.to_string(),
            message: err.to_string(),
        }
    }

    pub fn config(file: &str, key: &str, message: impl Into<String>) -> Self {
        Error::Config {
            file: file.into(),
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn invalid(name: &str, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            message: message.into(),
        }
    }
}

/// A tensor shape as shown in messages: `[320, 4, 3, 3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape(pub Vec<usize>);

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
