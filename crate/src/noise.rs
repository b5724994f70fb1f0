//! Seeded Gaussian noise in portable Rust, so that a seed gives the same image on every
//! backend, natively and in the browser.
//!
//! SplitMix64 feeds Box–Muller. The generator is written out here rather than taken from a
//! crate on purpose: the mapping seed → noise is part of what users rely on (a seed shown
//! with an image must reproduce it), and must not change with a dependency upgrade.

use burn::prelude::*;

use crate::schedulers::NoiseSource;

#[derive(Debug, Clone)]
pub struct Generator {
    state: u64,
    spare: Option<f64>,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: 53 random bits, never 0 (Box–Muller takes its logarithm).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal sample.
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }

    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal() as f32).collect()
    }
}

impl NoiseSource for Generator {
    fn noise(&mut self, shape: [usize; 4], device: &Device) -> Tensor<4> {
        let values = self.normals(shape.iter().product());
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise_other_seed_other_noise() {
        let a = Generator::new(42).normals(1000);
        assert_eq!(a, Generator::new(42).normals(1000));
        assert_ne!(a, Generator::new(43).normals(1000));
    }

    #[test]
    fn noise_is_standard_normal() {
        let v = Generator::new(7).normals(200_000);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let tail = v.iter().filter(|x| x.abs() > 1.96).count() as f64 / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        assert!((tail - 0.05).abs() < 0.005, "two-sided 5% tail {tail}");
    }
}
