//! `webdiffusion convert`: a diffusers folder or a single-file checkpoint to a pack of
//! f16, q8 or q4 weights, with a table of what each component became.

use std::path::PathBuf;

use webdiffusion::builtin;
use webdiffusion::error::{Error, Result};
use webdiffusion::files::{DirFiles, ModelFiles};
use webdiffusion::pack::convert::{ComponentReport, convert, convert_single_file};
use webdiffusion::pack::single_file;
use webdiffusion::quant::Precision;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// A diffusers folder, or a single-file checkpoint (.safetensors, CompVis/A1111 layout).
    #[arg(long)]
    model: PathBuf,
    /// f16, q8 or q4.
    #[arg(long)]
    quant: String,
    /// The pack folder to create (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// For a single file: a diffusers folder with the model's configs and tokenizer (no
    /// weights needed), or sd15 / sd21 (built in). Default: guessed from the file.
    #[arg(long)]
    config: Option<String>,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let precision: Precision = args.quant.parse()?;
    let reports = if args.model.is_dir() {
        if args.config.is_some() {
            return Err(Error::invalid(
                "--config",
                "is for single-file checkpoints; a diffusers folder has its own configs",
            ));
        }
        convert(&DirFiles(args.model.clone()), precision, &args.out)?
    } else if args.model.is_file() {
        if args.model.extension().is_none_or(|e| e != "safetensors") {
            return Err(Error::invalid(
                "--model",
                format!(
                    "{}: only .safetensors single files are read (.ckpt files are Python \
                     pickles, which can run code; convert them to safetensors first)",
                    args.model.display()
                ),
            ));
        }
        let name = match &args.config {
            Some(name) => name.clone(),
            None => single_file::detect(&args.model)?.to_string(),
        };
        let config = configs(&name)?;
        convert_single_file(&args.model, &*config, precision, &args.out)?
    } else {
        return Err(Error::invalid(
            "--model",
            format!(
                "{} is neither a diffusers folder nor a single-file checkpoint",
                args.model.display()
            ),
        ));
    };
    print!("{}", table(&reports));
    println!("wrote {}", args.out.display());
    Ok(())
}

/// `--config`: a built-in name or a folder.
fn configs(name: &str) -> Result<Box<dyn ModelFiles>> {
    if let Some(files) = builtin::config(name) {
        return Ok(Box::new(files) as Box<dyn ModelFiles>);
    }
    let dir = PathBuf::from(name);
    if !dir.is_dir() {
        return Err(Error::invalid(
            "--config",
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
