//! The normalisation passes of one hidden layer at the workloads' sizes
//! (batch 128, 512 units), on one thread: BatchNorm's training forward
//! (statistics, normalise, scale, shift, ReLU) and backward (the affine
//! reductions, then the input gradient), and LayerNorm's.
//!
//! `cargo bench --bench norm`. Each iteration first restores `z` (or `dy`)
//! from a copy, as a step's product would have written it; the copy is part
//! of the time (about 5 µs at this size).

use criterion::{criterion_group, criterion_main, Criterion};
use fastnn::gemm::Activation;
use fastnn::norm::{
    affine_backward, batch_norm_backward, batch_norm_train, layer_norm, layer_norm_backward,
    BatchStats,
};
use fastnn::rng::Rng;

const BATCH: usize = 128;
const UNITS: usize = 512;

fn values(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

fn passes(c: &mut Criterion) {
    let (b, o) = (BATCH, UNITS);
    let mut rng = Rng::new(1);
    let (z0, dy0) = (values(b * o, &mut rng), values(b * o, &mut rng));
    let (gamma, beta) = (values(o, &mut rng), values(o, &mut rng));
    let (mut z, mut h, mut dy) = (z0.clone(), vec![0.0; b * o], dy0.clone());
    let (mut mean, mut var, mut inv) = (vec![0.0; o], vec![0.0; o], vec![0.0; o.max(b)]);
    let (mut dgamma, mut dbeta) = (vec![0.0; o], vec![0.0; o]);
    let mut group = c.benchmark_group(format!("norm_{b}x{o}"));
    group.bench_function("batch_norm_forward", |bench| {
        bench.iter(|| {
            z.copy_from_slice(&z0);
            let stats = BatchStats {
                mean: &mut mean,
                var: &mut var,
                inv_std: &mut inv[..o],
            };
            batch_norm_train(
                &mut z,
                &mut h,
                stats,
                &gamma,
                &beta,
                Activation::Relu,
                b,
                o,
                None,
            );
        })
    });
    group.bench_function("batch_norm_backward", |bench| {
        bench.iter(|| {
            dy.copy_from_slice(&dy0);
            affine_backward(&mut dgamma, &mut dbeta, &dy, &z, b, o, None);
            batch_norm_backward(&mut dy, &z, &inv, &gamma, &dgamma, &dbeta, b, o, None);
        })
    });
    group.bench_function("layer_norm_forward", |bench| {
        bench.iter(|| {
            z.copy_from_slice(&z0);
            layer_norm(
                &mut z,
                &mut h,
                &mut inv,
                &gamma,
                &beta,
                Activation::Relu,
                b,
                o,
                None,
            );
        })
    });
    group.bench_function("layer_norm_backward", |bench| {
        bench.iter(|| {
            dy.copy_from_slice(&dy0);
            affine_backward(&mut dgamma, &mut dbeta, &dy, &z, b, o, None);
            layer_norm_backward(&mut dy, &z, &inv, &gamma, b, o, None);
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = passes
}
criterion_main!(benches);
