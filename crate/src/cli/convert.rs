//! `webdiffusion convert`: a diffusers folder or a single-file checkpoint to a pack of
//! f16, q8 or q4 weights, with a table of what each component became.

use std::path::PathBuf;

use webdiffusion::builtin;
use webdiffusion::component::{Component, MODEL_INDEX};
use webdiffusion::error::{Error, Result};
use webdiffusion::files::{DirFiles, ModelFiles};
use webdiffusion::load;
use webdiffusion::models::unet::UNet2DConditionModel;
use webdiffusion::pack::convert::{
    ComponentReport, convert, convert_component, convert_controlnet_file, convert_random,
    convert_single_file,
};
use webdiffusion::pack::open_component;
use webdiffusion::pack::single_file;
use webdiffusion::quant::Precision;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// A diffusers folder (a pipeline, or a ControlNet), or a single-file checkpoint or
    /// ControlNet (.safetensors, original CompVis/A1111/lllyasviel layout).
    #[arg(long, required_unless_present = "random", conflicts_with = "random")]
    model: Option<PathBuf>,
    /// Instead of --model: the full-size architecture of sd15, sd21, sdxl, sdxl-turbo,
    /// sd35m or sd35l-turbo (built in) or of a diffusers folder's configs, with random
    /// weights (for speed and memory measurements).
    #[arg(long, value_name = "sd15|sd21|sdxl|sdxl-turbo|sd35m|sd35l-turbo|DIR")]
    random: Option<String>,
    /// SD3: leave the T5 encoder out of the pack (a pack without it; 2–5 GB less).
    #[arg(long)]
    no_t5: bool,
    /// The seed of --random's weights.
    #[arg(long, default_value_t = 0, requires = "random")]
    seed: u64,
    /// f16, q8 or q4.
    #[arg(long)]
    quant: String,
    /// The pack folder to create (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// For a single file: a diffusers folder with the model's configs and tokenizer (no
    /// weights needed), or sd15, sd21, sdxl, sdxl-turbo (built in). Default: guessed from
    /// the file.
    #[arg(long)]
    config: Option<String>,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let precision: Precision = args.quant.parse()?;
    if let Some(name) = &args.random {
        if args.config.is_some() {
            return Err(Error::invalid(
                "--config",
                "is for single-file checkpoints; --random names its configs itself",
            ));
        }
        let config = without_t5(configs(name, "--random")?, args.no_t5);
        let reports = convert_random(&*config, precision, args.seed, &args.out)?;
        print!("{}", table(&reports));
        println!("wrote {}", args.out.display());
        return Ok(());
    }
    let Some(model) = &args.model else {
        return Err(Error::invalid(
            "--model",
            "give a model to convert, or --random",
        ));
    };
    // A folder with a config.json and no model_index.json is one component on its own.
    let controlnet_dir =
        model.is_dir() && !model.join(MODEL_INDEX).exists() && model.join("config.json").exists();
    let reports = if controlnet_dir {
        if args.config.is_some() {
            return Err(Error::invalid(
                "--config",
                "is for single-file checkpoints; a ControlNet folder has its own config",
            ));
        }
        let files = open_component(model, Component::ControlNet)?;
        convert_component(&*files, Component::ControlNet, precision, &args.out)?
    } else if model.is_dir() {
        if args.config.is_some() {
            return Err(Error::invalid(
                "--config",
                "is for single-file checkpoints; a diffusers folder has its own configs",
            ));
        }
        let files = without_t5(Box::new(DirFiles(model.clone())), args.no_t5);
        convert(&*files, precision, &args.out)?
    } else if model.is_file() {
        if model.extension().is_none_or(|e| e != "safetensors") {
            return Err(Error::invalid(
                "--model",
                format!(
                    "{}: only .safetensors single files are read (.ckpt files are Python \
                     pickles, which can run code; convert them to safetensors first)",
                    model.display()
                ),
            ));
        }
        let detected = single_file::detect(model)?;
        let name = args.config.clone().unwrap_or(detected.config.to_string());
        let config = configs(&name, "--config")?;
        if detected.controlnet {
            // The original layout has no config: it is the UNet's, with the file's hint block.
            let device = burn::prelude::Device::flex();
            let (unet, _) =
                load::build::<UNet2DConditionModel>(&*config, Component::Unet, &device)?;
            let file = single_file::controlnet(model, &unet)?;
            convert_controlnet_file(&file, precision, &args.out)?
        } else {
            convert_single_file(model, &*config, precision, &args.out)?
        }
    } else {
        return Err(Error::invalid(
            "--model",
            format!(
                "{} is neither a diffusers folder nor a single-file checkpoint",
                model.display()
            ),
        ));
    };
    print!("{}", table(&reports));
    println!("wrote {}", args.out.display());
    Ok(())
}

/// `files`, seen without T5 when `no_t5` (`--no-t5`).
fn without_t5(files: Box<dyn ModelFiles>, no_t5: bool) -> Box<dyn ModelFiles> {
    match no_t5 {
        true => Box::new(webdiffusion::files::WithoutT5(files)),
        false => files,
    }
}

/// `--config` or `--random` (`flag`): a built-in name or a folder.
pub fn configs(name: &str, flag: &str) -> Result<Box<dyn ModelFiles>> {
    if let Some(files) = builtin::config(name) {
        return Ok(Box::new(files) as Box<dyn ModelFiles>);
    }
    let dir = PathBuf::from(name);
    if !dir.is_dir() {
        return Err(Error::invalid(
            flag,
            format!(
                "{name:?} is neither a folder nor one of {}",
                builtin::NAMES.join(", ")
            ),
        ));
    }
    Ok(Box::new(DirFiles(dir)))
}

fn table(reports: &[ComponentReport]) -> String {
    let mut out = format!(
        "{:<13} {:>8} {:>10} {:>12} {:>13} {:>13} {:>12}\n",
        "component",
        "tensors",
        "quantized",
        "parameters",
        "bytes before",
        "bytes after",
        "bytes/param"
    );
    let total = reports.iter().fold(
        ComponentReport {
            component: "total".into(),
            ..Default::default()
        },
        |mut t, r| {
            t.tensors += r.tensors;
            t.quantized += r.quantized;
            t.params += r.params;
            t.bytes_before += r.bytes_before;
            t.bytes_after += r.bytes_after;
            t
        },
    );
    for r in reports.iter().chain([&total]) {
        out += &format!(
            "{:<13} {:>8} {:>10} {:>12} {:>13} {:>13} {:>12.3}\n",
            r.component,
            r.tensors,
            r.quantized,
            r.params,
            r.bytes_before,
            r.bytes_after,
            r.bytes_after as f64 / r.params.max(1) as f64
        );
    }
    out
}
