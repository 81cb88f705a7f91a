//! After the first step, a training step allocates nothing: counted by a
//! global allocator that wraps the system one. (Its own test binary, since
//! the allocator is process-wide.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use fastnn::buf::AlignedBuf;
use fastnn::data::{Normalize, Normalizer};
use fastnn::gemm::Parallelism;
use fastnn::model::{Act, Loss, Mlp, MlpConfig};
use fastnn::net::Workspace;
use fastnn::optim::{OptimConfig, OptimKind, Optimizer};
use fastnn::rng::Rng;
use fastnn::train::train_step;

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

#[test]
fn a_training_step_allocates_nothing_after_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let data =
        fastnn::data::Dataset::open(common::synthetic_dataset(dir.path(), 600, 10, 200, 10, 1))
            .unwrap();
    let train = data.split("train").unwrap();
    let norm = Normalizer::new(Normalize::Feature, &data.stats(), data.dim());
    for (threads, act, dropout, kind) in [
        (
            1,
            Act::Relu,
            0.0,
            OptimKind::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
        ),
        (
            2,
            Act::Tanh,
            0.2,
            OptimKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
        ),
    ] {
        let cfg = MlpConfig {
            dims: vec![200, 256, 128, 10],
            act,
            loss: Loss::Xent,
            dropout,
        };
        let mut mlp = Mlp::init(cfg, 3);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        // A worker allocates once when it starts and once more at its first
        // steal (its deque's epoch handle). On a loaded machine either may
        // come only during the measured steps, so both happen here first.
        pool.broadcast(|_| ());
        if threads == 2 {
            pool.install(make_both_workers_steal);
        }
        let mut ws = Workspace::new(&mlp, 128, Parallelism::threads(threads));
        let mut grads = AlignedBuf::<f32>::zeroed(mlp.layout.len);
        let mut opt = Optimizer::new(
            OptimConfig {
                kind,
                l2: 1e-4,
                weight_decay: 0.0,
            },
            &mlp.layout,
        );
        let indices: Vec<usize> = (0..train.len()).collect();
        pool.install(|| {
            let mut step = |s: usize| {
                let batch = &indices[(s * 128) % 512..(s * 128) % 512 + 128];
                norm.gather(&train, batch, &mut ws.x, &mut ws.labels);
                let mut rng = Rng::derive(7, &[s as u64]);
                train_step(
                    &mut mlp,
                    &mut ws,
                    &mut grads,
                    &mut opt,
                    128,
                    0.01,
                    (dropout > 0.0).then_some(&mut rng),
                );
            };
            step(0); // the first step may grow the GEMM workspace
            let before = ALLOCATIONS.load(Ordering::SeqCst);
            for s in 1..6 {
                step(s);
            }
            let after = ALLOCATIONS.load(Ordering::SeqCst);
            assert_eq!(
                after - before,
                0,
                "{threads} threads: {} allocations in 5 steps",
                after - before
            );
        });
    }
}

/// On a pool of two threads: the calling worker X pushes a job that it then
/// waits for, so the other worker Y must steal it; that job pushes another
/// one and waits in turn, so X must steal from Y. Both have stolen once when
/// this returns.
fn make_both_workers_steal() {
    use std::sync::atomic::AtomicBool;
    let (first, second) = (AtomicBool::new(false), AtomicBool::new(false));
    let wait = |flag: &AtomicBool| {
        while !flag.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
    };
    rayon::join(
        || wait(&first),
        || {
            first.store(true, Ordering::Release);
            rayon::join(|| wait(&second), || second.store(true, Ordering::Release));
        },
    );
}
