//! Training gives bit-identical weights on 1, 2 and 3 threads at the sizes
//! users train at (W2's 784-512-256-10 and W1's 3072-1024-512-10, batch
//! 128), for every optimiser. The products split C's rows or columns between
//! threads, never the summation, so every element is summed in one order.
//! The test first checks that the products really are split at these
//! sizes, so that it cannot pass vacuously.

mod common;

use fastnn::data::Dataset;
use fastnn::gemm::{GemmCtx, Parallelism, Plan};
use fastnn::model::Norm;
use fastnn::net::{step_products, Product};
use fastnn::optim::{OptimConfig, OptimKind};
use fastnn::train::{train, Silent, TrainConfig, Trainer};

const BATCH: usize = 128;
/// Three full steps and a short one of 40 samples.
const TRAIN: usize = 3 * BATCH + 40;
const CLASSES: usize = 10;

fn optimisers() -> [(&'static str, OptimConfig); 5] {
    let sgd = |momentum, nesterov, l2| OptimConfig {
        kind: OptimKind::Sgd { momentum, nesterov },
        l2,
        weight_decay: 0.0,
    };
    let adam = |weight_decay| OptimConfig {
        kind: OptimKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        l2: 0.0,
        weight_decay,
    };
    [
        ("sgd", sgd(0.0, false, 0.0)),
        ("sgd momentum", sgd(0.9, false, 1e-4)),
        ("sgd nesterov", sgd(0.9, true, 0.0)),
        ("adam", adam(0.0)),
        ("adamw", adam(0.01)),
    ]
}

fn config(hidden: &[usize], optim: OptimConfig, threads: usize) -> TrainConfig {
    TrainConfig {
        hidden: hidden.to_vec(),
        optim,
        lr: 0.01,
        warmup: 1,
        epochs: 1,
        batch: BATCH,
        seed: 5,
        threads,
        ..common::small_run()
    }
}

/// Every product of the hidden layers (forward, weight gradient, input
/// gradient) is shared by `threads` threads, at a full and at the short
/// batch; so are the output layer's 10-wide forward product and weight
/// gradient (the strip kernel's rows) at the full batch.
fn assert_products_split(dims: &[usize], threads: usize) {
    let ctx = GemmCtx::new(Parallelism::threads(threads));
    let hidden_layers = dims.len() - 2;
    for batch in [BATCH, TRAIN % BATCH] {
        for p in step_products(&ctx, dims, batch) {
            let want = if p.layer < hidden_layers {
                Plan::Packed { threads }
            } else if p.product != Product::InputGradient && batch == BATCH {
                Plan::Narrow { threads }
            } else {
                continue;
            };
            assert_eq!(
                p.plan, want,
                "{dims:?} at batch {batch}: {p:?} is not split {threads} ways"
            );
        }
    }
}

fn check(input: usize, hidden: &[usize], seed: u64) {
    check_with(input, hidden, seed, Norm::None, &optimisers());
}

fn check_with(
    input: usize,
    hidden: &[usize],
    seed: u64,
    norm: Norm,
    optims: &[(&str, OptimConfig)],
) {
    let dir = tempfile::tempdir().unwrap();
    let path = common::synthetic_dataset(dir.path(), TRAIN, 10, input, CLASSES, seed);
    let data = Dataset::open(path).unwrap();
    let mut dims = vec![input];
    dims.extend(hidden);
    dims.push(CLASSES);
    for threads in [2, 3] {
        assert_products_split(&dims, threads);
    }
    for &(name, optim) in optims {
        let run = |threads| {
            let cfg = TrainConfig {
                norm,
                ..config(hidden, optim, threads)
            };
            let (mlp, _) = train(&data, &cfg, None, None, &mut Silent).unwrap();
            mlp.params.to_vec()
        };
        let one = run(1);
        for threads in [2, 3] {
            let other = run(threads);
            let differ = one
                .iter()
                .zip(&other)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                differ,
                0,
                "{dims:?} {name} norm {norm}: {differ} of {} values differ between 1 and {threads} threads",
                one.len()
            );
        }
    }
}

#[test]
fn w2_sizes_give_the_same_bits_on_one_two_and_three_threads() {
    check(784, &[512, 256], 1);
}

#[test]
fn w1_sizes_give_the_same_bits_on_one_two_and_three_threads() {
    check(3072, &[1024, 512], 2);
}

/// Each step gathers the next batch while its first layer's weight
/// gradient is computed: W2's first weight gradient deals its column panels
/// out at batch 128, and each thread takes up the gather as its panels run
/// out. Two epochs with flips and translations (drawn per step) and a
/// short last batch give the weights of a run that gathers each batch at
/// the start of its own step.
#[test]
fn gathering_the_next_batch_ahead_gives_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::synthetic_with_shape(dir.path(), TRAIN, 10, &[1, 28, 28], CLASSES, 4);
    let data = Dataset::open(path).unwrap();
    let cfg = TrainConfig {
        flip: true,
        translate: 2,
        epochs: 2,
        ..config(&[512, 256], optimisers()[1].1, 2)
    };
    assert_products_split(&[784, 512, 256, CLASSES], 2);
    let run = |ahead: bool| {
        let mut trainer = Trainer::new(&data, &cfg, None, None).unwrap();
        trainer.set_gather_ahead(ahead);
        let interrupted = trainer.run(&mut Silent).unwrap();
        trainer.finish(interrupted, None).0.params.to_vec()
    };
    let (ahead, at_start) = (run(true), run(false));
    let differ = ahead
        .iter()
        .zip(&at_start)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(differ, 0, "{differ} of {} values differ", ahead.len());
}

/// The normalisations split their passes too (BatchNorm by units, LayerNorm
/// by samples; `fastnn::norm`'s tests check that these sizes split), and
/// their state (γ, β, the running statistics) is part of the slab compared.
#[test]
fn normalised_w2_sizes_give_the_same_bits_on_one_two_and_three_threads() {
    let optims = optimisers();
    for norm in [Norm::Batch, Norm::Layer] {
        check_with(784, &[512, 256], 3, norm, &[optims[1], optims[4]]);
    }
}
