//! `fastnn bench`: GEMM (and, later, training) throughput of this machine.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use fastnn::cpu::Isa;
use fastnn::gemm::bench::{self, BenchConfig, Shape, Trans};
use fastnn::gemm::Strategy;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// GFLOP/s of fastnn's GEMM next to matrixmultiply, and % of the measured peak.
    #[command(after_help = "Examples:
  fastnn bench gemm                         # the training shapes and squares
  fastnn bench gemm --m 1024 --k 784 --n 512 --trans NT --threads 2
  fastnn bench gemm --json > gemm.json")]
    Gemm(GemmArgs),
    /// Training throughput (images/s) of the W1 and W2 workloads.
    Train(super::bench_train::TrainBenchArgs),
    /// Data parallelism's cost terms measured here (compute per shard, update, the ranks' gradient sum under mpirun) and projected over 10 and 100 Gb/s networks.
    #[command(after_help = "Examples:
  fastnn bench scaling                      # compute terms only
  mpirun -np 2 fastnn bench scaling         # and the gradient sum (a build with --features mpi)")]
    Scaling(super::bench_scaling::ScalingArgs),
}

#[derive(Args)]
pub struct GemmArgs {
    /// Rows of op(A) and C (with --k and --n: one shape; default: the training shapes and squares).
    #[arg(long)]
    m: Option<usize>,
    /// Inner dimension.
    #[arg(long)]
    k: Option<usize>,
    /// Columns of op(B) and C.
    #[arg(long)]
    n: Option<usize>,
    /// Transposes: NN, NT (B transposed: X·Wᵀ), TN (A transposed: dZᵀ·X), TT.
    #[arg(long, default_value = "NN")]
    trans: String,
    /// The weights in fastnn's panels, as the training step keeps them: B = Wᵀ read in place (NT), B = W read in place from its copy (NN) or C = dWᵀ (TN).
    #[arg(long)]
    panels: bool,
    /// Threads for fastnn (and for the split matrixmultiply baseline).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Kernel family: avx512, avx2, scalar, matrixmultiply (default: FASTNN_ISA or the best available).
    #[arg(long)]
    isa: Option<String>,
    /// Algorithm: auto, packed (Goto/BLIS loop nest), small (no-pack path) or narrow (strip kernel, A in place).
    #[arg(long, default_value = "auto")]
    strategy: String,
    /// Timed samples per measurement (the median is reported).
    #[arg(long, default_value_t = 11)]
    samples: usize,
    /// Report the best sample instead of the median (for a shared, busy machine).
    #[arg(long)]
    best: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// f32, or bf16: the bf16 products (inputs rounded to bf16, f32 sums) beside f32 on the same threads, with the measured bf16 peak.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    precision: String,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Gemm(args) => gemm(args),
        BenchCommand::Train(args) => super::bench_train::run(args),
        BenchCommand::Scaling(args) => super::bench_scaling::run(args),
    }
}

fn gemm(args: GemmArgs) -> anyhow::Result<()> {
    let trans = Trans::parse(&args.trans)
        .with_context(|| format!("--trans {:?}: expected NN, NT, TN or TT", args.trans))?;
    let shapes = match (args.m, args.k, args.n) {
        (Some(m), Some(k), Some(n)) => {
            let shape = Shape::new(m, k, n, trans);
            if args.panels && trans == Trans::TT {
                anyhow::bail!("--panels: the step's products are NT, NN and TN, not TT");
            }
            vec![if args.panels {
                shape.in_panels()
            } else {
                shape
            }]
        }
        (None, None, None) => BenchConfig::default_shapes(),
        _ => bail!("give all of --m, --k and --n, or none of them"),
    };
    let isa = args.isa.as_deref().map(Isa::parse).transpose()?;
    let strategy = match args.strategy.to_ascii_lowercase().as_str() {
        "auto" => Strategy::Auto,
        "packed" => Strategy::Packed,
        "small" => Strategy::Small,
        "narrow" => Strategy::Narrow,
        other => bail!("--strategy {other:?}: expected auto, packed, small or narrow"),
    };
    if args.precision == "bf16" {
        let report = bench::run_bf16(&shapes, args.threads, args.samples, args.best)?;
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        } else {
            write!(out, "{report}")?;
        }
        return Ok(());
    }
    let cfg = BenchConfig {
        strategy,
        best: args.best,
        shapes,
        threads: args.threads,
        isa,
        samples: args.samples,
        min_sample: Duration::from_millis(20),
    };
    let report = bench::run(&cfg)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{report}")?;
    }
    Ok(())
}
