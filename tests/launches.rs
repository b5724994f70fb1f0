//! Kernel launches per UNet call on wgpu: a figure that, unlike time, does not depend on the
//! machine. burn's fusion merges elementwise work (norms, activations, residual sums, casts)
//! into the kernels around it; before it was on, one call of sd1-tiny's UNet (batch 2)
//! launched `UNFUSED` kernels, as this test counted them, and with it 0.60× in f32. In f16
//! the casts around the f32 convolutions (models/layers.rs) break most fusions: 0.91×.
//! The bounds keep a change from quietly undoing what fusion gains. Its own test binary:
//! the count is process-wide, and no other test may launch kernels meanwhile.

mod common;

use burn::tensor::DType;

use common::{Goldens, model_dir};
use webdiffusion::device::{self, Backend};
use webdiffusion::files::DirFiles;
use webdiffusion::launches;
use webdiffusion::load;
use webdiffusion::models::unet::Conditioning;

/// Launches of one sd1-tiny UNet call without fusion (counted 2026-12-05), and the
/// fraction (in percent) of them that fusion may launch.
const UNFUSED: [(DType, usize, usize); 2] = [(DType::F32, 2275, 66), (DType::F16, 2698, 95)];

#[test]
fn fusion_keeps_the_unet_kernel_launches_under_their_bounds() {
    let device = match device::open(Some(Backend::Wgpu)) {
        Ok((_, device)) => device,
        Err(e) if std::env::var("WEBDIFFUSION_TEST_WGPU").as_deref() == Ok("1") => {
            panic!("WEBDIFFUSION_TEST_WGPU=1 but {e}")
        }
        Err(_) => return eprintln!("skipping: no wgpu adapter"),
    };
    let goldens = Goldens::load("sd1-tiny");
    let files = DirFiles(model_dir("sd1-tiny"));
    let mut counted = Vec::new();
    for (dtype, unfused, percent) in UNFUSED {
        if !device.supports_dtype(dtype) {
            continue;
        }
        let (_, unet) = load::unet(&files, &device, dtype).unwrap();
        let sample = goldens.tensor::<4>("unet.sample", &device).cast(dtype);
        let context = goldens
            .tensor::<3>("unet.encoder_hidden_states", &device)
            .cast(dtype);
        let context = Conditioning::text(context);
        let step = || {
            unet.forward(sample.clone(), 500.0, &context, None)
                .into_data()
        };
        step(); // compiles the kernels
        let (_, launches) = launches::count(step);
        eprintln!(
            "{dtype:?}: {} launches {:?}",
            launches.total, launches.by_name
        );
        counted.push((dtype, launches.total, unfused, percent));
    }
    for (dtype, total, unfused, percent) in counted {
        assert!(total > 0, "{dtype:?}: no launch counted");
        assert!(
            total * 100 <= unfused * percent,
            "{dtype:?}: {total} kernel launches per UNet call, more than {percent}% of the \
             {unfused} before fusion"
        );
    }
}
