//! `fastnn bench train`: epoch throughput of the design's workloads.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use fastnn::cpu;
use fastnn::gemm::bench::{bf16_peak, measure_peak};
use fastnn::model::Norm;
use fastnn::train::Precision;
use fastnn::workload::{measure, Throughput, Workload};

/// Training throughput (images/s, median of the epochs after a warm-up) of
/// W1 (CIFAR-shaped, 3072-1024-512-10) or W2 (Fashion-MNIST, 784-512-256-10).
#[derive(Args)]
#[command(after_help = "Examples:
  fastnn bench train --workload w2
  fastnn bench train --workload w1 --batch 128 --threads 2 --json")]
pub struct TrainBenchArgs {
    /// w1 or w2.
    #[arg(long, default_value = "w2")]
    workload: Workload,
    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Epochs to run, the first being a warm-up.
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Normalisation after each hidden layer: none, batch or layer.
    #[arg(long, default_value = "none")]
    norm: Norm,
    /// Arithmetic of the step's products: f32, or bf16 (mixed precision;
    /// its limit is the measured bf16 dot-product peak).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Also show where a step's time goes: gather, forward, loss, input
    /// gradients, weight gradients, update, and the time the first thread
    /// waited for the others (always in the JSON). The next batch's gather
    /// runs inside the first layer's weight gradient and counts there.
    #[arg(long)]
    phases: bool,
}

/// One phase of a step for the report: its name, its mean time per step
/// and, for the matrix-product phases, the floating-point operations per
/// step.
struct PhaseRow {
    name: &'static str,
    seconds_per_step: f64,
    flops_per_step: Option<f64>,
}

impl PhaseRow {
    /// GFLOP/s of a product phase.
    fn gflops(&self) -> Option<f64> {
        self.flops_per_step.map(|f| f / self.seconds_per_step / 1e9)
    }
}

/// The phases of `t`'s timed steps, with the flops of the product phases:
/// forward and weight gradients cost 2·B·in·out per layer each, input
/// gradients the same for every layer but the first.
fn phase_rows(t: &Throughput, batch: usize) -> Vec<PhaseRow> {
    let p = &t.phases;
    let steps = p.steps.max(1) as f64;
    let products: Vec<f64> = (t.dims.windows(2))
        .map(|io| 2.0 * batch as f64 * io[0] as f64 * io[1] as f64)
        .collect();
    let all: f64 = products.iter().sum();
    let first = products.first().copied().unwrap_or(0.0);
    let row = |name, seconds: f64, flops| PhaseRow {
        name,
        seconds_per_step: seconds / steps,
        flops_per_step: flops,
    };
    vec![
        row("gather", p.gather, None),
        row("forward", p.forward, Some(all)),
        row("loss", p.loss, None),
        row("backward data", p.backward_data, Some(all - first)),
        row("weight gradient", p.weight_gradient, Some(all)),
        row("update", p.update, None),
        row("other", (t.train_seconds - p.total()).max(0.0), None),
    ]
}

pub fn run(args: TrainBenchArgs) -> Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let t = measure(
        args.workload,
        &super::fashion::FASHION_MNIST,
        args.batch,
        threads,
        args.epochs,
        args.norm,
        args.precision,
    )?;
    let gflops = t.median * t.flops_per_sample as f64 / 1e9;
    let (peak, peak_name) = match args.precision {
        Precision::F32 => (
            measure_peak(cpu::try_selected()?, threads).map(|p| p.gflops),
            "FMA",
        ),
        Precision::Bf16 => (bf16_peak().map(|p| p * threads as f64), "bf16 dot-product"),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "workload": format!("{:?}", args.workload).to_lowercase(),
            "batch": args.batch,
            "threads": threads,
            "norm": args.norm.to_string(),
            "precision": args.precision.to_string(),
            "isa": t.isa,
            "images_per_sec": t.median,
            "epochs_images_per_sec": t.epochs,
            "flops_per_sample": t.flops_per_sample,
            "gflops": gflops,
            "peak_gflops": peak,
            "fma_limit_images_per_sec": peak.map(|p| p * 1e9 / t.flops_per_sample as f64),
            "samples": t.samples,
            "loss_first": t.loss_first,
            "loss_last": t.loss_last,
            "dataset": t.dataset,
            "rss_peak_bytes": t.memory.map(|m| m.peak),
            "rss_anon_bytes": t.memory.map(|m| m.anon),
            "rss_file_bytes": t.memory.map(|m| m.file),
            "rss_anon_huge_bytes": t.memory.and_then(|m| m.anon_huge),
            "phases": phase_rows(&t, args.batch).iter().map(|r| serde_json::json!({
                "phase": r.name,
                "ms_per_step": r.seconds_per_step * 1e3,
                "gflops": r.gflops(),
            })).collect::<Vec<_>>(),
            "team_wait_ms_per_step": t.phases.wait / t.phases.steps.max(1) as f64 * 1e3,
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    let epochs: Vec<String> = t.epochs.iter().map(|x| format!("{x:.0}")).collect();
    writeln!(
        out,
        "{}, batch {}, {} thread(s), gemm {}, norm {}, precision {}",
        args.workload.name(),
        args.batch,
        threads,
        t.isa,
        args.norm,
        args.precision
    )?;
    writeln!(
        out,
        "  images/s: {:.0} (median of epochs 2..{}; all epochs: {})",
        t.median,
        t.epochs.len(),
        epochs.join(", ")
    )?;
    match peak {
        Some(p) => writeln!(
            out,
            "  {:.1} GFLOP/s of training math ({:.2} MFLOP per image) = {:.0}% of the measured {} peak {:.0} GFLOP/s (limit {:.0} images/s)",
            gflops,
            t.flops_per_sample as f64 / 1e6,
            100.0 * gflops / p,
            peak_name,
            p,
            p * 1e9 / t.flops_per_sample as f64
        )?,
        None => writeln!(out, "  {:.1} GFLOP/s of training math ({:.2} MFLOP per image)", gflops, t.flops_per_sample as f64 / 1e6)?,
    }
    writeln!(
        out,
        "  train loss {:.4} in the first epoch, {:.4} in the last",
        t.loss_first, t.loss_last
    )?;
    if let Some(m) = t.memory {
        const MB: f64 = 1e6;
        let huge = match m.anon_huge {
            Some(h) => format!(" ({:.0} MB of it in 2 MiB pages)", h as f64 / MB),
            None => String::new(),
        };
        writeln!(
            out,
            "  resident memory: {:.0} MB anonymous{huge} + {:.0} MB file-backed (the mapped dataset and the binary); peak {:.0} MB",
            m.anon as f64 / MB,
            m.file as f64 / MB,
            m.peak as f64 / MB
        )?;
    }
    if args.phases {
        let rows = phase_rows(&t, args.batch);
        let step: f64 = rows.iter().map(|r| r.seconds_per_step).sum();
        writeln!(
            out,
            "  where a step's time goes (mean of {} steps after the warm-up):",
            t.phases.steps
        )?;
        for r in &rows {
            write!(
                out,
                "    {:<16} {:>8.3} ms {:>5.1} %",
                r.name,
                r.seconds_per_step * 1e3,
                100.0 * r.seconds_per_step / step
            )?;
            if let Some(g) = r.gflops() {
                write!(out, "  {g:>6.1} GFLOP/s")?;
                if let Some(p) = peak {
                    write!(out, " = {:.0} % of the peak", 100.0 * g / p)?;
                }
            }
            writeln!(out)?;
        }
        let wait = t.phases.wait / t.phases.steps.max(1) as f64;
        writeln!(
            out,
            "    of which the first thread waited for the others {:.3} ms ({:.1} %): load imbalance and hand-off",
            wait * 1e3,
            100.0 * wait / step
        )?;
    }
    Ok(())
}
