//! Training throughput: one step and one epoch of the design's workloads
//! (W1: 3072-1024-512-10, W2: 784-512-256-10; batch 128; SGD momentum 0.9),
//! on 1 and 2 threads; the step also in mixed precision (bf16 products).
//! `fastnn bench train` reports the same in images/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fastnn::buf::AlignedBuf;
use fastnn::data::embedded::FILE_NAMES;
use fastnn::data::idx::IdxBytes;
use fastnn::gemm::bf16::Bf16Kernel;
use fastnn::gemm::Parallelism;
use fastnn::model::{Act, Loss, Mlp, MlpConfig};
use fastnn::net::Workspace;
use fastnn::optim::{OptimConfig, OptimKind, Optimizer};
use fastnn::rng::Rng;
use fastnn::train::{train, train_step, Silent};
use fastnn::workload::Workload;

const BATCH: usize = 128;

fn step(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, dims) in [
        ("w1", vec![3072, 1024, 512, 10]),
        ("w2", vec![784, 512, 256, 10]),
    ] {
        for (threads, bf16) in [(1usize, false), (2, false), (1, true), (2, true)] {
            let cfg = MlpConfig {
                dims: dims.clone(),
                act: Act::Relu,
                loss: Loss::Xent,
                dropout: 0.0,
                label_smoothing: 0.0,
                norm: Default::default(),
            };
            let mut mlp = Mlp::init(cfg, 1);
            let mut ws = Workspace::new(&mlp, BATCH, Parallelism::threads(threads));
            let precision = if bf16 {
                // Mixed precision on the fastest bf16 kernel of this CPU.
                ws.use_bf16(&mlp, Bf16Kernel::detect());
                "bf16"
            } else {
                "f32"
            };
            let mut rng = Rng::new(2);
            ws.x.iter_mut().for_each(|x| *x = rng.normal() as f32);
            ws.labels.iter_mut().for_each(|l| *l = rng.below(10) as u8);
            let mut grads = AlignedBuf::<f32>::zeroed(mlp.layout.len);
            let optim = OptimConfig {
                kind: OptimKind::Sgd {
                    momentum: 0.9,
                    nesterov: false,
                },
                l2: 0.0,
                weight_decay: 0.0,
            };
            let mut opt = Optimizer::new(optim, &mlp.layout);
            group.bench_function(format!("{name}/{threads}t/{precision}"), |b| {
                b.iter(|| {
                    train_step(
                        &mut mlp, &mut ws, &mut grads, &mut opt, BATCH, 1e-4, None, None, None,
                    )
                })
            });
        }
    }
    group.finish();
}

fn epoch(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_epoch");
    group.sample_size(10);
    // W2's Fashion-MNIST, read from the files the binary embeds.
    let shipped: Vec<Vec<u8>> = FILE_NAMES
        .iter()
        .map(|name| {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/fashion-mnist");
            std::fs::read(format!("{dir}/{name}")).expect("shipped Fashion-MNIST file")
        })
        .collect();
    let fashion_mnist: Vec<IdxBytes> = FILE_NAMES
        .iter()
        .zip(&shipped)
        .map(|(name, bytes)| IdxBytes { name, bytes })
        .collect();
    for workload in [Workload::W2, Workload::W1] {
        let data = workload.dataset(&fashion_mnist).expect("workload dataset");
        group.throughput(Throughput::Elements(
            data.split("train").unwrap().len() as u64
        ));
        for threads in [1usize, 2] {
            let cfg = workload.config(BATCH, threads, 1);
            group.bench_function(format!("{workload:?}/{threads}t").to_lowercase(), |b| {
                b.iter(|| train(&data, &cfg, None, None, &mut Silent).unwrap())
            });
        }
    }
    group.finish();
}

// No plots: they need a system font, which a bare machine may lack.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = step, epoch
}
criterion_main!(benches);
