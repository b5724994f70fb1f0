//! Counting the kernels a piece of work launches on a cubecl device (wgpu natively).
//!
//! Launches, unlike times, do not depend on how busy the machine is: `bench` reports them
//! per UNet step and per VAE decode so that builds can be compared on any machine, and a
//! test bounds them for the tiny UNet. The CPU backend runs no kernels and counts none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cubecl_runtime::logging::{LaunchObservation, LaunchObserver};

/// The kernels launched, by name.
#[derive(Default)]
struct Counter(Mutex<HashMap<&'static str, usize>>);

impl LaunchObserver for Counter {
    fn launched(&self, kernel: &'static str) {
        if let Ok(mut by_name) = self.0.lock() {
            *by_name.entry(kernel).or_default() += 1;
        }
    }
}

/// What [`count`] saw.
#[derive(Debug, Clone, Default)]
pub struct Launches {
    /// Kernel launches in all.
    pub total: usize,
    /// Launches per kernel name, the most launched first.
    pub by_name: Vec<(String, usize)>,
}

/// Runs `work` and counts the kernels launched meanwhile. `work` must read its result back
/// (`into_data`): burn queues operations, and kernels launch when it flushes, from burn's
/// own threads with fusion on. So the count is process-wide: nothing else may launch
/// kernels while it runs (a test that counts has its own test binary).
pub fn count<T>(work: impl FnOnce() -> T) -> (T, Launches) {
    let counter = Arc::new(Counter::default());
    let watching = LaunchObservation::new(counter.clone());
    let out = work();
    drop(watching);
    let counted = counter.0.lock().map(|m| m.clone()).unwrap_or_default();
    let mut merged: HashMap<String, usize> = HashMap::new();
    for (name, n) in counted {
        *merged.entry(short_name(name)).or_default() += n;
    }
    let mut by_name: Vec<(String, usize)> = merged.into_iter().collect();
    by_name.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let total = by_name.iter().map(|(_, n)| n).sum();
    (out, Launches { total, by_name })
}

/// A kernel's type name without its module paths and generic arguments.
fn short_name(name: &str) -> String {
    let base = name.split('<').next().unwrap_or(name);
    base.rsplit("::").next().unwrap_or(base).to_string()
}
