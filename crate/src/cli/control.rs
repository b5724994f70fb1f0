//! `--controlnet DIR_OR_FILE --control-image PNG [--control-scale F] [--control-start F]
//! [--control-end F]`, repeatable: each option belongs to the `--controlnet` before it.
//! And `webdiffusion canny`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::ArgMatches;

use webdiffusion::component::Component;
use webdiffusion::error::{Error, Result};
use webdiffusion::files::ModelFiles;
use webdiffusion::image::{self, Image};
use webdiffusion::pack::{open_component, single_file};
use webdiffusion::pipeline::{Control, StableDiffusion};

use super::io;

#[derive(clap::Args, Default)]
pub struct ControlArgs {
    /// A ControlNet: a diffusers folder, a pack, or a single .safetensors file in the
    /// original layout. Repeat the group for several ControlNets.
    #[arg(long)]
    pub controlnet: Vec<PathBuf>,
    /// The control image (PNG) of the `--controlnet` before it.
    #[arg(long)]
    pub control_image: Vec<PathBuf>,
    /// Its conditioning scale (default 1.0).
    #[arg(long, allow_negative_numbers = true)]
    pub control_scale: Vec<f32>,
    /// The fraction of the steps at which it starts acting (default 0).
    #[arg(long, allow_negative_numbers = true)]
    pub control_start: Vec<f32>,
    /// The fraction of the steps at which it stops (default 1).
    #[arg(long, allow_negative_numbers = true)]
    pub control_end: Vec<f32>,
    /// Run Canny edge detection (OpenCV's, thresholds LOW,HIGH) on the control images first.
    #[arg(long, value_name = "LOW,HIGH")]
    pub canny: Option<String>,
}

/// One `--controlnet` group, as given.
#[derive(Debug, Default, PartialEq)]
pub struct Group {
    pub controlnet: PathBuf,
    pub image: Option<PathBuf>,
    pub scale: Option<f32>,
    pub start: Option<f32>,
    pub end: Option<f32>,
}

/// Assigns each option to the `--controlnet` before it on the command line.
pub fn groups(args: &ControlArgs, matches: &ArgMatches) -> Result<Vec<Group>> {
    let positions = |id: &str| -> Vec<usize> {
        matches
            .indices_of(id)
            .map(|i| i.collect())
            .unwrap_or_default()
    };
    let nets = positions("controlnet");
    let mut groups: Vec<Group> = args
        .controlnet
        .iter()
        .map(|c| Group {
            controlnet: c.clone(),
            ..Group::default()
        })
        .collect();
    let owner = |flag: &str, at: usize| -> Result<usize> {
        nets.iter()
            .rposition(|&n| n < at)
            .ok_or_else(|| Error::invalid(flag, "must follow the --controlnet it belongs to"))
    };
    fn set<T>(slot: &mut Option<T>, value: T, flag: &str) -> Result<()> {
        if slot.replace(value).is_some() {
            return Err(Error::invalid(flag, "is given twice for one --controlnet"));
        }
        Ok(())
    }
    for (value, at) in args.control_image.iter().zip(positions("control_image")) {
        let g = owner("--control-image", at)?;
        set(&mut groups[g].image, value.clone(), "--control-image")?;
    }
    for (flag, id, values, pick) in [
        ("--control-scale", "control_scale", &args.control_scale, 0),
        ("--control-start", "control_start", &args.control_start, 1),
        ("--control-end", "control_end", &args.control_end, 2),
    ] {
        for (value, at) in values.iter().zip(positions(id)) {
            let g = &mut groups[owner(flag, at)?];
            let slot = [&mut g.scale, &mut g.start, &mut g.end]
                .into_iter()
                .nth(pick)
                .expect("three");
            set(slot, *value, flag)?;
        }
    }
    for g in &groups {
        if g.image.is_none() {
            return Err(Error::invalid(
                "--controlnet",
                format!("{} has no --control-image", g.controlnet.display()),
            ));
        }
    }
    Ok(groups)
}

/// `LOW,HIGH`.
pub fn parse_canny(spec: &str) -> Result<(f64, f64)> {
    let bad = || {
        Error::invalid(
            "--canny",
            format!("{spec:?} is not LOW,HIGH (e.g. 100,200)"),
        )
    };
    let (low, high) = spec.split_once(',').ok_or_else(bad)?;
    let low: f64 = low.trim().parse().map_err(|_| bad())?;
    let high: f64 = high.trim().parse().map_err(|_| bad())?;
    check_thresholds(low, high)?;
    Ok((low, high))
}

pub fn check_thresholds(low: f64, high: f64) -> Result<()> {
    if !(low.is_finite() && high.is_finite() && low >= 0.0 && high >= 0.0) {
        return Err(Error::invalid(
            "canny thresholds",
            "must be finite numbers ≥ 0",
        ));
    }
    Ok(())
}

/// An edge map as the RGB image ControlNet canny models read (white edges on black).
pub fn edges_image(image: &Image, low: f64, high: f64) -> Image {
    let edges = image::canny(image, low, high);
    Image {
        width: image.width,
        height: image.height,
        rgb: edges.iter().flat_map(|&e| [e, e, e]).collect(),
    }
}

/// Loads every group's ControlNet (checked against `pipe`) and control image.
pub fn load(
    pipe: &StableDiffusion,
    groups: &[Group],
    canny: Option<(f64, f64)>,
) -> Result<Vec<Control>> {
    groups
        .iter()
        .map(|g| {
            let files = open(&g.controlnet, pipe)?;
            let name = g.controlnet.file_stem().map_or_else(
                || g.controlnet.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let controlnet = Arc::new(pipe.load_controlnet(&*files, &name)?);
            let mut image = image::read_png(g.image.as_ref().expect("checked"))?;
            if let Some((low, high)) = canny {
                image = edges_image(&image, low, high);
            }
            Ok(Control {
                scale: g.scale.unwrap_or(1.0),
                start: g.start.unwrap_or(0.0),
                end: g.end.unwrap_or(1.0),
                ..Control::new(controlnet, image)
            })
        })
        .collect()
}

fn open(path: &Path, pipe: &StableDiffusion) -> Result<Box<dyn ModelFiles>> {
    if path.is_file() {
        if path.extension().is_none_or(|e| e != "safetensors") {
            return Err(Error::invalid(
                "--controlnet",
                format!(
                    "{}: only .safetensors single files are read (.pth/.ckpt are Python \
                     pickles, which can run code)",
                    path.display()
                ),
            ));
        }
        return Ok(Box::new(single_file::controlnet(
            path,
            pipe.unet_config("--controlnet")?,
        )?));
    }
    open_component(path, Component::ControlNet)
}

/// The ControlNets as AUTOMATIC1111 records them in `parameters`.
pub fn a1111(controls: &[Control], canny: Option<(f64, f64)>) -> Vec<String> {
    let module = if canny.is_some() { "canny" } else { "none" };
    controls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "ControlNet {i}: \"Module: {module}, Model: {}, Weight: {}, Guidance Start: {}, \
                 Guidance End: {}\"",
                c.controlnet.name, c.scale, c.start, c.end
            )
        })
        .collect()
}

#[derive(clap::Args)]
pub struct CannyArgs {
    /// The image (PNG).
    #[arg(long)]
    image: PathBuf,
    #[arg(long, default_value_t = 100.0)]
    low: f64,
    #[arg(long, default_value_t = 200.0)]
    high: f64,
    /// The edge map (PNG): white edges on black.
    #[arg(long)]
    out: PathBuf,
}

/// `webdiffusion canny`.
pub fn canny(args: CannyArgs) -> Result<()> {
    check_thresholds(args.low, args.high)?;
    io::check_writable(&args.out)?;
    let image = image::read_png(&args.image)?;
    let edges = edges_image(&image, args.low, args.high);
    io::write_atomic(&args.out, &image::encode_png(&edges, &[])?)
}
