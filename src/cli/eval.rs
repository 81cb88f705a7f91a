//! `fastnn eval` and `fastnn predict`: a trained model on a dataset split.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use fastnn::checkpoint::{load_model, ModelFile};
use fastnn::data::Dataset;
use fastnn::gemm::Parallelism;
use fastnn::net::Workspace;
use fastnn::tensorfile;
use fastnn::train::{evaluate, Precision};

use super::open_data;

/// Loss, accuracy, per-class accuracy and confusion matrix of a model.
/// The model, the dataset and the split a command works on.
#[derive(Args)]
struct Source {
    /// The model file (model.safetensors of a training run).
    #[arg(long)]
    model: PathBuf,
    /// Dataset file (default: the embedded Fashion-MNIST).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The split the samples come from.
    #[arg(long, default_value = "test")]
    split: String,
    /// Arithmetic of the products: f32, or bf16 (bf16 operands, f32 sums;
    /// the model's f32 weights rounded once when loaded).
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

impl Source {
    /// A workspace for batches of up to `batch` samples of the model, in
    /// the precision asked for.
    fn workspace(&self, m: &ModelFile, batch: usize) -> Result<Workspace> {
        let mut ws = Workspace::try_new(&m.mlp, batch, Parallelism::Single)?;
        if self.precision == Precision::Bf16 {
            ws.use_bf16(&m.mlp, fastnn::cpu::try_selected_bf16()?);
            ws.evaluate_in_bf16();
        }
        Ok(ws)
    }
}

#[derive(Args)]
#[command(after_help = "Examples:
  fastnn eval --model run/model.safetensors --data cifar10.safetensors --split test
  fastnn eval --model run/model.safetensors --plot confusion.png
  fastnn eval --model run/model.safetensors --json --logits logits.safetensors")]
pub struct EvalArgs {
    #[command(flatten)]
    source: Source,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Also draw the confusion matrix into this picture (.png or .svg).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Also write every sample's logits (F32 [n, classes]) and labels
    /// (U8 [n]) to this safetensors file.
    #[arg(long)]
    logits: Option<PathBuf>,
}

/// The most likely classes of chosen samples.
#[derive(Args)]
#[command(
    after_help = "Example:\n  fastnn predict --model run/model.safetensors --indices 0,1,2 --top 3"
)]
pub struct PredictArgs {
    #[command(flatten)]
    source: Source,
    /// Sample indices, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    indices: Vec<usize>,
    /// Classes to show per sample.
    #[arg(long, default_value_t = 3)]
    top: usize,
}

fn load(model: &std::path::Path, data: Option<&std::path::Path>) -> Result<(ModelFile, Dataset)> {
    let mut m = load_model(model)?;
    // Inference folds each BatchNorm into the Linear before it.
    if let Some(folded) = m.mlp.fold_batch_norm() {
        m.mlp = folded;
    }
    let ds = open_data(data)?;
    if ds.dim() != m.mlp.cfg.inputs() || ds.classes().len() != m.mlp.cfg.classes() {
        bail!(
            "{}: the model takes {} features into {} classes, the dataset {} has {} features and {} classes",
            model.display(),
            m.mlp.cfg.inputs(),
            m.mlp.cfg.classes(),
            ds.path().display(),
            ds.dim(),
            ds.classes().len()
        );
    }
    Ok((m, ds))
}

pub fn run_eval(args: EvalArgs) -> Result<()> {
    let (m, ds) = load(&args.source.model, args.source.data.as_deref())?;
    let view = ds.split(&args.source.split)?;
    let mut ws = args.source.workspace(&m, 256)?;
    let r = evaluate(&m.mlp, &mut ws, &m.normalizer, &view, &mut Vec::new());
    let c = m.classes.len();
    let per_class: Vec<f64> = (0..c)
        .map(|k| {
            let row = &r.confusion[k * c..(k + 1) * c];
            row[k] as f64 / row.iter().sum::<usize>().max(1) as f64
        })
        .collect();
    if let Some(path) = &args.plot {
        let name = args
            .source
            .model
            .file_name()
            .unwrap_or(args.source.model.as_os_str());
        let title = format!(
            "{} on {}: accuracy {:.2}%",
            name.to_string_lossy(),
            args.source.split,
            100.0 * r.accuracy
        );
        fastnn::plot::confusion(path, &title, &m.classes, &r.confusion)?;
    }
    if let Some(path) = &args.logits {
        write_logits(path, &m, &view, &mut ws)?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "split": args.source.split, "precision": args.source.precision.to_string(),
            "samples": r.samples, "loss": r.loss, "accuracy": r.accuracy,
            "classes": m.classes, "per_class_accuracy": per_class, "confusion": r.confusion,
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    writeln!(
        out,
        "{} on {} ({} samples): loss {:.4}, accuracy {:.2}%",
        args.source.model.display(),
        args.source.split,
        r.samples,
        r.loss,
        100.0 * r.accuracy
    )?;
    let width = m.classes.iter().map(|s| s.len()).max().unwrap_or(5).max(5);
    writeln!(out, "\nper class:")?;
    for (k, acc) in per_class.iter().enumerate() {
        writeln!(out, "  {:>width$}  {:6.2}%", m.classes[k], 100.0 * acc)?;
    }
    writeln!(
        out,
        "\nconfusion matrix (rows: true class, columns: predicted):"
    )?;
    for k in 0..c {
        let row: Vec<String> = r.confusion[k * c..(k + 1) * c]
            .iter()
            .map(|n| format!("{n:>5}"))
            .collect();
        writeln!(out, "  {:>width$} {}", m.classes[k], row.join(""))?;
    }
    Ok(())
}

/// Writes the logits and labels of every sample of `view`.
fn write_logits(
    path: &std::path::Path,
    m: &ModelFile,
    view: &fastnn::data::SplitView<'_>,
    ws: &mut Workspace,
) -> Result<()> {
    let c = m.classes.len();
    let mut logits = Vec::with_capacity(view.len() * c);
    let mut labels = Vec::with_capacity(view.len());
    let mut indices = Vec::new();
    let mut start = 0;
    while start < view.len() {
        let n = ws.max_batch().min(view.len() - start);
        indices.clear();
        indices.extend(start..start + n);
        m.normalizer
            .gather(view, &indices, &mut ws.x, &mut ws.labels, None);
        m.mlp.forward(ws, n);
        logits.extend_from_slice(&ws.logits()[..n * c]);
        labels.extend_from_slice(&ws.labels[..n]);
        start += n;
    }
    let tensors = tensorfile::with_padding(vec![
        tensorfile::TensorOut::f32("logits", vec![view.len(), c], &logits),
        tensorfile::TensorOut::u8("labels", vec![view.len()], &labels),
    ]);
    tensorfile::write_atomic(path, &tensors, &Default::default(), true)?;
    Ok(())
}

pub fn run_predict(args: PredictArgs) -> Result<()> {
    let (m, ds) = load(&args.source.model, args.source.data.as_deref())?;
    let view = ds.split(&args.source.split)?;
    if let Some(&bad) = args.indices.iter().find(|&&i| i >= view.len()) {
        bail!(
            "index {bad} is out of range: split {} has {} samples",
            args.source.split,
            view.len()
        );
    }
    let batch = args.indices.len();
    let mut ws = args.source.workspace(&m, batch)?;
    m.normalizer
        .gather(&view, &args.indices, &mut ws.x, &mut ws.labels, None);
    m.mlp.forward(&mut ws, batch);
    let c = m.classes.len();
    let mut out = std::io::stdout().lock();
    for (r, &i) in args.indices.iter().enumerate() {
        let z = &ws.logits()[r * c..(r + 1) * c];
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = z.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let mut order: Vec<usize> = (0..c).collect();
        order.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
        let top: Vec<String> = order
            .iter()
            .take(args.top.max(1))
            .map(|&k| {
                format!(
                    "{} {:.1}%",
                    m.classes[k],
                    100.0 * ((z[k] - max) as f64).exp() / sum
                )
            })
            .collect();
        writeln!(
            out,
            "{i}: true {}; predicted {}",
            m.classes[ws.labels[r] as usize],
            top.join(", ")
        )?;
    }
    Ok(())
}
