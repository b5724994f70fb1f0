//! Cutting a component's tensors into shard files as `convert` writes them.

use std::path::Path;

use super::{SHARD_BYTES, Shard};
use crate::error::{Error, Result};
use crate::files::sha256_hex;

/// Cuts a component's tensors into shard files of at most `SHARD_BYTES`. A tensor starts
/// a new shard when it does not fit in the current one; one larger than a shard spans
/// several.
pub struct ShardWriter<'a> {
    dir: &'a Path,
    component: &'a str,
    shards: Vec<Shard>,
    current: Vec<u8>,
}

impl<'a> ShardWriter<'a> {
    pub fn new(dir: &'a Path, component: &'a str) -> Self {
        Self {
            dir,
            component,
            shards: Vec::new(),
            current: Vec::new(),
        }
    }

    /// Appends `bytes` 4-byte aligned; returns the shard and offset it starts at.
    pub fn add(&mut self, bytes: &[u8]) -> Result<(usize, usize)> {
        self.current
            .resize(self.current.len().next_multiple_of(4), 0);
        if !self.current.is_empty() && self.current.len() + bytes.len() > SHARD_BYTES {
            self.flush()?;
        }
        let start = (self.shards.len(), self.current.len());
        let mut rest = bytes;
        loop {
            let take = rest.len().min(SHARD_BYTES - self.current.len());
            self.current.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if rest.is_empty() {
                return Ok(start);
            }
            self.flush()?;
        }
    }

    fn flush(&mut self) -> Result<()> {
        let file = format!("{}/shard-{:05}.bin", self.component, self.shards.len());
        let path = self.dir.join(&file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent.display(), e))?;
        }
        std::fs::write(&path, &self.current).map_err(|e| Error::io(path.display(), e))?;
        self.shards.push(Shard {
            file,
            bytes: self.current.len() as u64,
            sha256: sha256_hex(&self.current),
        });
        self.current.clear();
        Ok(())
    }

    pub fn finish(mut self) -> Result<Vec<Shard>> {
        if !self.current.is_empty() {
            self.flush()?;
        }
        Ok(self.shards)
    }
}
