//! Criterion benchmark of the training-step products (DESIGN.md) and a
//! square: fastnn on 1 and 2 threads, matrixmultiply on 1 thread.
//!
//! `cargo bench --bench gemm`; `fastnn bench gemm` gives the same numbers as
//! GFLOP/s next to the measured peak.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fastnn::gemm::bench::{Operands, Shape, Trans, TRAINING_SHAPES};
use fastnn::gemm::{GemmCtx, Parallelism};

fn gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("sgemm");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let shapes = TRAINING_SHAPES
        .iter()
        .copied()
        .chain([Shape::new(1024, 1024, 1024, Trans::NN)]);
    let mut one = GemmCtx::new(Parallelism::Single);
    let mut two = GemmCtx::new(Parallelism::Threads(2));
    for shape in shapes {
        let id = shape.to_string();
        let mut ops = Operands::new(shape);
        // Throughput in "elements" = FLOPs, so criterion prints Gelem/s = GFLOP/s.
        group.throughput(Throughput::Elements(shape.flops() as u64));
        group.bench_function(BenchmarkId::new("fastnn_1t", &id), |bch| {
            bch.iter(|| ops.run_fastnn(&mut one))
        });
        group.bench_function(BenchmarkId::new("fastnn_2t", &id), |bch| {
            bch.iter(|| ops.run_fastnn(&mut two))
        });
        group.bench_function(BenchmarkId::new("matrixmultiply_1t", &id), |bch| {
            bch.iter(|| ops.run_matrixmultiply(None))
        });
    }
    group.finish();
}

// No plots: they need a system font, which a bare machine may lack.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = gemm
}
criterion_main!(benches);
