//! `fastnn bench scaling`: the terms of data parallelism's cost, measured
//! on this machine, and where they lead over a network.
//!
//! ```text
//! step(B, R) = compute(B / R) + update + sum(P, R)
//! sum(P, R)  = 2·(R−1)/R · 4P / bandwidth + 2·(R−1) · latency      (a ring all-reduce)
//! ```
//!
//! `compute(b)` is a rank's forward and backward pass over `b` samples and
//! `update` the optimiser's pass over the `P` parameters, both timed here on
//! the step's own code; `sum` is timed here over MPI between the ranks
//! `mpirun` started (shared memory on one machine) and projected with the
//! ring's cost for a network.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use fastnn::distributed::Ranks;
use fastnn::gemm::Parallelism;
use fastnn::model::Mlp;
use fastnn::net::Workspace;
use fastnn::optim::Optimizer;
use fastnn::rng::Rng;
use fastnn::workload::Workload;

#[derive(Args)]
pub struct ScalingArgs {
    /// Global batch sizes to project.
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    batches: Vec<usize>,
    /// Node counts to project (one rank a node).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    nodes: Vec<usize>,
    /// Threads of each rank.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timed samples per figure (the median is reported).
    #[arg(long, default_value_t = 7)]
    samples: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// A network to project over: its bandwidth (bytes/s) and latency (s).
struct Network {
    name: &'static str,
    bandwidth: f64,
    latency: f64,
}

const NETWORKS: [Network; 2] = [
    Network {
        name: "10 Gb/s",
        bandwidth: 1.25e9,
        latency: 20e-6,
    },
    Network {
        name: "100 Gb/s",
        bandwidth: 12.5e9,
        latency: 2e-6,
    },
];

/// The bandwidth-optimal ring all-reduce of `bytes` over `ranks`.
fn ring_sum_seconds(bytes: f64, ranks: usize, net: &Network) -> f64 {
    let r = ranks as f64;
    2.0 * (r - 1.0) / r * bytes / net.bandwidth + 2.0 * (r - 1.0) * net.latency
}

/// The median of `samples` timings of `f`, each repeated until it lasts
/// 20 ms, in seconds per call.
fn median_seconds(samples: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..samples.max(1))
        .map(|_| {
            let start = Instant::now();
            let mut calls = 0;
            while calls == 0 || start.elapsed().as_secs_f64() < 0.02 {
                f();
                calls += 1;
            }
            start.elapsed().as_secs_f64() / calls as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// What was measured for one workload.
#[derive(serde::Serialize)]
struct Terms {
    workload: &'static str,
    parameters: usize,
    /// `(b, seconds)`: forward + loss + backward over `b` samples.
    compute: Vec<(usize, f64)>,
    update: f64,
    /// The gradient sum between this run's ranks, if more than one.
    sum: Option<f64>,
    ranks: usize,
}

/// The ranks `mpirun` started (one, without it).
#[cfg(feature = "mpi")]
fn ranks() -> Result<fastnn::distributed::MpiRanks> {
    fastnn::distributed::MpiRanks::init().map_err(|e| anyhow::anyhow!("cannot start MPI: {e}"))
}

/// One process: a build without MPI measures the compute terms only.
#[cfg(not(feature = "mpi"))]
fn ranks() -> Result<fastnn::distributed::OneProcess> {
    Ok(fastnn::distributed::OneProcess)
}

pub fn run(args: ScalingArgs) -> Result<()> {
    let mut ranks = ranks()?;
    if ranks.rank() != 0 {
        fastnn::cpu::quiet();
    }
    let mut shards: Vec<usize> = args
        .batches
        .iter()
        .flat_map(|&b| args.nodes.iter().map(move |&r| b.div_ceil(r.max(1))))
        .collect();
    shards.sort_unstable();
    shards.dedup();
    let mut all = Vec::new();
    for w in [Workload::W1, Workload::W2] {
        all.push(measure(w, &shards, &args, &mut ranks));
    }
    if ranks.rank() != 0 {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
        return Ok(());
    }
    for t in &all {
        report(&mut out, t, &args)?;
    }
    Ok(())
}

/// Times `w`'s step terms at every shard size (all ranks at once, as in a
/// run), and the gradient sum between the ranks.
fn measure(w: Workload, shards: &[usize], args: &ScalingArgs, ranks: &mut dyn Ranks) -> Terms {
    let inputs = match w {
        Workload::W1 => 3072,
        Workload::W2 => 784,
    };
    let largest = shards.iter().copied().max().unwrap_or(1);
    let cfg = w.config(largest, args.threads, 1);
    let mut mlp = Mlp::init(cfg.network(inputs, 10), 1);
    let mut opt = Optimizer::new(cfg.optim, &mlp.layout);
    let mut ws = Workspace::new(&mlp, largest, Parallelism::threads(args.threads));
    let mut grads = vec![0.0f32; mlp.layout.len];
    let mut rng = Rng::new(2);
    let (x, labels, _) = ws.batch_mut();
    x.iter_mut().for_each(|v| *v = rng.normal() as f32);
    labels.iter_mut().for_each(|y| *y = rng.below(10) as u8);
    let compute = shards
        .iter()
        .map(|&b| {
            let t = median_seconds(args.samples, || {
                mlp.forward_train(&mut ws, b, None);
                mlp.loss_and_dlogits(&mut ws, b);
                mlp.backward(&mut ws, &mut grads, b);
            });
            (b, t)
        })
        .collect();
    // A tiny learning rate: the timing loop must not blow the weights up.
    let update = median_seconds(args.samples, || {
        mlp.update(&mut ws, &grads, &mut opt, 1e-9);
    });
    let sum = (ranks.size() > 1).then(|| {
        median_seconds(args.samples, || {
            ranks.sum_f32(&mut grads);
            grads.iter_mut().for_each(|g| *g = 0.0);
        })
    });
    Terms {
        workload: &w.name()[..2],
        parameters: mlp.layout.len,
        compute,
        update,
        sum,
        ranks: ranks.size(),
    }
}

fn report(out: &mut impl Write, t: &Terms, args: &ScalingArgs) -> Result<()> {
    let bytes = 4.0 * t.parameters as f64;
    let ms = |s: f64| format!("{:.2}", s * 1e3);
    writeln!(
        out,
        "\n{}: a gradient slab of {} floats ({:.1} MB, the weights' panels padded), {} thread(s) a rank",
        t.workload,
        t.parameters,
        bytes / 1e6,
        args.threads
    )?;
    write!(out, "measured: update {} ms", ms(t.update))?;
    match t.sum {
        Some(s) => writeln!(
            out,
            "; gradient sum between {} ranks here {} ms ({:.2} GB/s of ring traffic)",
            t.ranks,
            ms(s),
            2.0 * (t.ranks - 1) as f64 / t.ranks as f64 * bytes / s / 1e9
        )?,
        None => writeln!(
            out,
            "; gradient sum not measured (one rank: run under mpirun -np 2)"
        )?,
    }
    let compute = |b: usize| {
        t.compute
            .iter()
            .find(|c| c.0 == b)
            .map_or(f64::NAN, |c| c.1)
    };
    write!(
        out,
        "| global batch | nodes | samples a node | compute ms |"
    )?;
    for n in &NETWORKS {
        write!(
            out,
            " sum ms, {0} | images/s, {0} | speed-up, {0} |",
            n.name
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "| ---: | ---: | ---: | ---: |{}",
        " ---: | ---: | ---: |".repeat(NETWORKS.len())
    )?;
    for &batch in &args.batches {
        let one = compute(batch) + t.update;
        for &nodes in &args.nodes {
            let b = batch.div_ceil(nodes.max(1));
            write!(out, "| {batch} | {nodes} | {b} | {} |", ms(compute(b)))?;
            for n in &NETWORKS {
                let sum = ring_sum_seconds(bytes, nodes.max(1), n);
                let step = compute(b) + t.update + sum;
                write!(
                    out,
                    " {} | {:.0} | {:.2}× |",
                    ms(sum),
                    batch as f64 / step,
                    one / step
                )?;
            }
            writeln!(out)?;
        }
    }
    Ok(())
}
