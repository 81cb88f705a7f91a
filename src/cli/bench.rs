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
    /// Time of the ranks' gradient sum for W1's and W2's slabs, under mpirun (a fastnn built with --features mpi).
    #[command(after_help = "Example:
  mpirun -np 2 fastnn bench allreduce")]
    Allreduce(AllreduceArgs),
}

#[derive(Args)]
pub struct AllreduceArgs {
    /// Timed sums per slab (the median is reported).
    #[arg(long, default_value_t = 31)]
    samples: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
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
    /// The weights in fastnn's panels, as the training step keeps them: B = Wᵀ read in place (NT), B = W (NN) or C = dWᵀ (TN).
    #[arg(long)]
    panels: bool,
    /// Threads for fastnn (and for the split matrixmultiply baseline).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Kernel family: avx512, avx2, scalar, matrixmultiply (default: FASTNN_ISA or the best available).
    #[arg(long)]
    isa: Option<String>,
    /// Algorithm: auto, packed (Goto/BLIS loop nest) or small (no-pack path).
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
        BenchCommand::Allreduce(args) => allreduce(args),
    }
}

#[cfg(not(feature = "mpi"))]
fn allreduce(_: AllreduceArgs) -> anyhow::Result<()> {
    bail!("{}", super::NEEDS_MPI)
}

/// Times [`fastnn::distributed::Ranks::sum_f32`] over the slabs of W1's and
/// W2's parameters, as a training step sums its gradients: each sample
/// starts together (a barrier of one tiny sum) and lasts until the
/// slowest rank has the result (the longest time over the ranks).
#[cfg(feature = "mpi")]
fn allreduce(args: AllreduceArgs) -> anyhow::Result<()> {
    use fastnn::distributed::{MpiRanks, Ranks};
    use fastnn::workload::Workload;
    use std::time::Instant;
    let mut ranks = MpiRanks::init().map_err(|e| anyhow::anyhow!("cannot start MPI: {e}"))?;
    let size = ranks.size();
    let mut rows = Vec::new();
    for w in [Workload::W1, Workload::W2] {
        let dims: Vec<usize> = match w {
            Workload::W1 => [3072].into_iter().chain(w.hidden()).chain([10]).collect(),
            Workload::W2 => [784].into_iter().chain(w.hidden()).chain([10]).collect(),
        };
        let len: usize = dims.windows(2).map(|d| d[0] * d[1] + d[1]).sum();
        let mut slab = vec![1.0f32; len];
        let mut times = Vec::with_capacity(args.samples);
        for _ in 0..args.samples.max(1) + 1 {
            ranks.sum_f64(&mut [0.0]);
            let t = Instant::now();
            ranks.sum_f32(&mut slab);
            let mut slowest = [0.0; 1];
            slowest[0] = t.elapsed().as_secs_f64();
            // The longest time over the ranks: a sum with one slot a rank.
            let mut each = vec![0.0; size];
            each[ranks.rank()] = slowest[0];
            ranks.sum_f64(&mut each);
            times.push(each.iter().copied().fold(0.0, f64::max));
        }
        times.remove(0); // warm-up
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let bytes = 4 * len;
        // What each rank sends (and receives) in the reduce-scatter and the
        // all-gather together: the ring all-reduce's volume.
        let moved = 2.0 * (size - 1) as f64 / size as f64 * bytes as f64;
        rows.push(serde_json::json!({
            "slab": format!("{} gradients", &w.name()[..2]),
            "bytes": bytes,
            "ranks": size,
            "median_ms": median * 1e3,
            "bus_gb_per_s": if size > 1 { moved / median / 1e9 } else { 0.0 },
        }));
    }
    if ranks.rank() != 0 {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "gradient sum over {size} rank(s), median of {} (the slowest rank's time)",
        args.samples
    )?;
    writeln!(
        out,
        "| slab | MB | ms | bus GB/s (2(R−1)/R · bytes / time) |"
    )?;
    writeln!(out, "| --- | ---: | ---: | ---: |")?;
    for r in &rows {
        writeln!(
            out,
            "| {} | {:.2} | {:.3} | {:.2} |",
            r["slab"].as_str().unwrap_or(""),
            r["bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
            r["median_ms"].as_f64().unwrap_or(0.0),
            r["bus_gb_per_s"].as_f64().unwrap_or(0.0)
        )?;
    }
    Ok(())
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
        other => bail!("--strategy {other:?}: expected auto, packed or small"),
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
