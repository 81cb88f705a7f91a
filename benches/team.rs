//! The cost of handing one product's two parts to two threads, as a
//! training step does between its phases: after a gap of serial work on the
//! calling thread (the loss, the bias gradients, the gather), long enough
//! for an idle pool thread to have gone to sleep.
//!
//! `cargo bench --bench team`: fastnn's persistent [`Team`] against
//! `rayon::join` inside a 2-thread pool (what each product used before the
//! team). Each iteration spins for the gap (not timed), then times one
//! hand-off of two parts of 20 µs each; the figure is the hand-off time
//! minus those 20 µs.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use fastnn::team::Team;

/// Work of one part, and the serial gap before each hand-off.
const PART: Duration = Duration::from_micros(20);
const GAPS: [Duration; 3] = [
    Duration::from_micros(5),
    Duration::from_micros(50),
    Duration::from_micros(300),
];

fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Times `iters` hand-offs, each after a gap; returns their total time
/// beyond the parts' own.
fn timed(iters: u64, gap: Duration, mut hand_off: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        spin(gap);
        let start = Instant::now();
        hand_off();
        total += start.elapsed().saturating_sub(PART);
    }
    total
}

fn hand_off(c: &mut Criterion) {
    let mut group = c.benchmark_group("hand_off_2_parts");
    let mut team = Team::new(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for gap in GAPS {
        let us = gap.as_micros();
        group.bench_function(format!("team/gap_{us}us"), |b| {
            b.iter_custom(|iters| timed(iters, gap, || team.run(2, &|_| spin(PART))))
        });
        group.bench_function(format!("rayon_join/gap_{us}us"), |b| {
            b.iter_custom(|iters| {
                pool.install(|| {
                    timed(iters, gap, || {
                        rayon::join(|| spin(PART), || spin(PART));
                    })
                })
            })
        });
    }
    group.finish();
}

// No plots: they need a system font, which a bare machine may lack.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = hand_off
}
criterion_main!(benches);
