//! A training step allocates nothing, from the first one on: the trainer
//! allocates every buffer, GEMM pack buffers included, before it. Counted by
//! a global allocator that wraps the system one, over whole epochs of the
//! training loop's own step code (`Trainer::step`), for every activation and
//! loss, with augmented gathers, dropout, both normalisations, label
//! smoothing, gradient clipping and the short last batch. (Its own test
//! binary, since the allocator is process-wide.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use fastnn::data::{Dataset, Holdout, Normalize};
use fastnn::model::{Act, Loss, Norm};
use fastnn::optim::{OptimConfig, OptimKind, Schedule};
use fastnn::train::{Precision, TrainConfig, Trainer};

mod common;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// 3×16×16 images, 300 training samples: at batch 128 an epoch is two
/// full steps and a short one of 44. The 768-256-128-10 products are large
/// enough to take the packed path, and the first layer's to split between
/// two threads.
const TRAIN: usize = 300;
const BATCH: usize = 128;

fn config(act: Act, loss: Loss, variant: usize) -> TrainConfig {
    let optimizers = [
        OptimKind::Sgd {
            momentum: 0.9,
            nesterov: true,
        },
        OptimKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        OptimKind::Sgd {
            momentum: 0.0,
            nesterov: false,
        },
    ];
    TrainConfig {
        hidden: vec![256, 128],
        act,
        loss,
        dropout: if variant.is_multiple_of(2) { 0.2 } else { 0.0 },
        clip_grad_norm: (variant % 5 == 1).then_some(0.5),
        early_stop: None,
        norm: [Norm::None, Norm::Batch, Norm::Layer][variant % 3],
        precision: if variant % 4 >= 2 {
            Precision::Bf16
        } else {
            Precision::F32
        },
        label_smoothing: if loss == Loss::Xent && variant % 4 < 2 {
            0.1
        } else {
            0.0
        },
        optim: OptimConfig {
            kind: optimizers[variant % 3],
            l2: 1e-4,
            weight_decay: if variant % 3 == 1 { 0.01 } else { 0.0 },
        },
        lr: 0.01,
        schedule: Schedule::Cosine,
        warmup: 2,
        epochs: 2,
        batch: BATCH,
        seed: variant as u64,
        threads: 1 + variant % 2,
        normalize: Normalize::Channel,
        holdout: Holdout::Count(0),
        checkpoint_every: 1,
        test_every_epoch: false,
        flip: variant % 4 < 2,
        translate: if variant % 4 == 1 { 0 } else { 2 },
    }
}

#[test]
fn training_steps_allocate_nothing_from_the_first_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::synthetic_with_shape(dir.path(), TRAIN, 50, &[3, 16, 16], 10, 1);
    let data = Dataset::open(path).unwrap();
    let mut variant = 0;
    for act in [Act::Relu, Act::LeakyRelu, Act::Tanh, Act::Sigmoid] {
        for loss in [Loss::Xent, Loss::Mse, Loss::Hinge] {
            let cfg = config(act, loss, variant);
            variant += 1;
            let what = format!(
                "{act} {loss}, {} threads, {}, dropout {}, norm {}, flip {}, translate {}, {:?}",
                cfg.threads,
                cfg.precision,
                cfg.dropout,
                cfg.norm,
                cfg.flip,
                cfg.translate,
                cfg.optim.kind
            );
            let mut trainer = Trainer::new(&data, &cfg, None, None).unwrap();
            assert_eq!(trainer.steps_per_epoch(), TRAIN.div_ceil(BATCH));
            for epoch in 0..cfg.epochs {
                let before = ALLOCATIONS.load(Ordering::SeqCst);
                trainer.shuffle(epoch);
                for s in 0..trainer.steps_per_epoch() {
                    trainer.step(epoch, s).unwrap();
                }
                let allocated = ALLOCATIONS.load(Ordering::SeqCst) - before;
                assert_eq!(
                    allocated, 0,
                    "{what}: {allocated} allocations in epoch {epoch}"
                );
            }
        }
    }
}
