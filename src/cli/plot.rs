//! `fastnn plot`: training curves from a metrics file.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use fastnn::plot;

/// Loss and accuracy curves (train and validation per epoch) of a run.
#[derive(Args)]
#[command(after_help = "Examples:
  fastnn train --out run --metrics run/metrics.jsonl
  fastnn plot run/metrics.jsonl -o run/curves.png
  fastnn plot run/metrics.jsonl -o curves.svg --title \"my run\"")]
pub struct PlotArgs {
    /// The metrics file written by `fastnn train --metrics` (one JSON object per line).
    metrics: PathBuf,
    /// The picture to write: .png or .svg.
    #[arg(short, long, default_value = "curves.png")]
    output: PathBuf,
    /// Title [default: the model and dataset from the file's run line].
    #[arg(long)]
    title: Option<String>,
}

pub fn run(args: PlotArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.metrics)
        .with_context(|| format!("{}: cannot read", args.metrics.display()))?;
    let m = plot::parse_metrics(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.metrics.display()))?;
    if m.epochs.is_empty() {
        bail!("{}: holds no epochs", args.metrics.display());
    }
    let title = args.title.unwrap_or_else(|| {
        m.run
            .as_ref()
            .map_or_else(|| "training curves".into(), |r| r.title())
    });
    plot::curves(&args.output, &title, &m.epochs)?;
    writeln!(
        std::io::stdout().lock(),
        "wrote {} ({} epochs)",
        args.output.display(),
        m.epochs.len()
    )?;
    Ok(())
}
