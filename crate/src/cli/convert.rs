//! `webdiffusion convert`: a diffusers folder to a pack of f16, q8 or q4 weights, with a
//! table of what each component became.

use std::path::PathBuf;

use webdiffusion::error::{Error, Result};
use webdiffusion::model::DirFiles;
use webdiffusion::pack::convert::{ComponentReport, convert};
use webdiffusion::quant::Precision;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// A diffusers model folder.
    #[arg(long)]
    model: PathBuf,
    /// f16, q8 or q4.
    #[arg(long)]
    quant: String,
    /// The pack folder to create (must not exist).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let precision: Precision = args.quant.parse()?;
    if !args.model.is_dir() {
        return Err(Error::invalid(
            "--model",
            format!(
                "{} is not a diffusers folder (model_index.json, unet/, vae/, text_encoder/, \
                 tokenizer/); single-file checkpoints are not supported",
                args.model.display()
            ),
        ));
    }
    let reports = convert(&DirFiles(args.model.clone()), precision, &args.out)?;
    print!("{}", table(&reports));
    println!("wrote {}", args.out.display());
    Ok(())
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
