//! Data parallelism without an MPI library: ranks that are threads of this
//! process ([`ThreadRanks`]) run the training loop as MPI ranks do, so the
//! sharding, the sums, the agreement of the ranks and resuming across rank
//! counts are tested by the default `cargo test`. (`tests/mpi.rs` runs the
//! same runs under `mpirun`, with the `mpi` feature.)

mod common;

use std::path::Path;

use common::ranks::{agreed_model, assert_follows, same_bits, train_observed, train_ranks};
use fastnn::checkpoint;
use fastnn::data::{Dataset, Holdout};
use fastnn::distributed::{Ranks, ThreadRanks};
use fastnn::model::Norm;
use fastnn::optim::{OptimConfig, OptimKind};
use fastnn::train::{
    evaluate, train, train_on, Observer, Silent, StepProgress, TrainConfig, TrainError,
};

fn config() -> TrainConfig {
    TrainConfig {
        hidden: vec![96, 48],
        warmup: 3,
        holdout: Holdout::Count(150),
        ..common::small_run()
    }
}

fn dataset(dir: &Path) -> Dataset {
    // 1,050 images of 1 × 8 × 8: 900 to train after the holdout.
    Dataset::open(common::synthetic_with_shape(
        dir,
        1050,
        200,
        &[1, 8, 8],
        5,
        3,
    ))
    .unwrap()
}

#[test]
fn ranks_hold_the_same_parameters_and_follow_one_process() {
    // Dropout, flips and translations: each rank must use its own
    // samples' factors and augmentations out of the batch's.
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let cfg = TrainConfig {
        flip: true,
        translate: 1,
        ..config()
    };
    let (one, one_summary) = train(&data, &cfg, None, None, &mut Silent).unwrap();
    for size in [2, 3] {
        let (many, summary) = agreed_model(train_ranks(&data, &cfg, size, None, false));
        assert_follows(&one, &many, &format!("{size} ranks"));
        // Validation and test are summed over the ranks' shards.
        let (a, b) = (one_summary.test_accuracy, summary.test_accuracy);
        assert!(
            (a.unwrap() - b.unwrap()).abs() <= 1.0 / 200.0,
            "{a:?} {b:?}"
        );
        assert_eq!(one_summary.best_val_epoch, summary.best_val_epoch);
    }
}

#[test]
fn the_test_score_of_the_ranks_is_the_models_score() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let cfg = config();
    let (mlp, summary) = agreed_model(train_ranks(&data, &cfg, 3, None, false));
    let mut ws = fastnn::net::Workspace::new(&mlp, 64, fastnn::gemm::Parallelism::Single);
    let norm = fastnn::data::Normalizer::new(cfg.normalize, &data.stats(), data.dim());
    let test = data.split("test").unwrap();
    let r = evaluate(&mlp, &mut ws, &norm, &test, &mut Vec::new());
    assert_eq!(summary.test_accuracy, Some(r.accuracy));
    let loss = summary.test_loss.unwrap();
    assert!((loss - r.loss).abs() <= 1e-6 * r.loss, "{loss} {}", r.loss);
}

#[test]
fn a_last_batch_shorter_than_the_ranks_leaves_some_without_samples() {
    // 900 samples in batches of 899: the second holds one sample, so two
    // of three ranks have none to compute.
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let cfg = TrainConfig {
        batch: 899,
        epochs: 3,
        ..config()
    };
    let (one, _) = train(&data, &cfg, None, None, &mut Silent).unwrap();
    let (many, _) = agreed_model(train_ranks(&data, &cfg, 3, None, false));
    assert_follows(&one, &many, "3 ranks, one sample in the last batch");
}

#[test]
fn clipping_layer_norm_and_adam_over_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let cfg = TrainConfig {
        clip_grad_norm: Some(0.5),
        norm: Norm::Layer,
        optim: OptimConfig {
            kind: OptimKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            l2: 0.0,
            weight_decay: 0.01,
        },
        lr: 1e-3,
        ..config()
    };
    let (one, _) = train(&data, &cfg, None, None, &mut Silent).unwrap();
    let (many, _) = agreed_model(train_ranks(&data, &cfg, 2, None, false));
    assert_follows(&one, &many, "clipped, LayerNorm, AdamW");
}

#[test]
fn mixed_precision_over_ranks() {
    // bf16 products: the ranks still agree bit for bit, and they learn.
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let cfg = TrainConfig {
        precision: fastnn::train::Precision::Bf16,
        ..config()
    };
    let (_, summary) = agreed_model(train_ranks(&data, &cfg, 2, None, false));
    let acc = summary.test_accuracy.unwrap();
    assert!(acc > 0.9, "test accuracy {acc}");
}

#[test]
fn refused_over_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let batch_norm = TrainConfig {
        norm: Norm::Batch,
        ..config()
    };
    let tiny_batch = TrainConfig {
        batch: 2,
        ..config()
    };
    for (cfg, says) in [
        (batch_norm, "--norm batch"),
        (tiny_batch, "3 ranks need a batch"),
    ] {
        for run in train_ranks(&data, &cfg, 3, None, false) {
            match run {
                Err(TrainError::Config(m)) => assert!(m.contains(says), "{m}"),
                other => panic!(
                    "expected a refusal naming {says}, got {:?}",
                    other.map(|r| r.1)
                ),
            }
        }
    }
}

#[test]
fn resumes_on_the_same_or_another_number_of_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let cfg = config();
    let (whole, _) = agreed_model(train_ranks(&data, &cfg, 2, None, false));
    for (before, after) in [(2, 2), (2, 1), (1, 2), (3, 2)] {
        let out = dir.path().join(format!("run-{before}-{after}"));
        // Stopped after the first epoch (15 steps of 64 samples), as by Ctrl-C.
        let stop_after_epoch =
            |_| -> Box<dyn Observer + Send> { Box::new(StopAfter { after: 15, seen: 0 }) };
        let (_, first) = agreed_model(train_observed(
            &data,
            &cfg,
            before,
            Some(&out),
            false,
            stop_after_epoch,
        ));
        assert_eq!(first.epochs, 1);
        let (resumed, summary) = agreed_model(train_ranks(&data, &cfg, after, Some(&out), true));
        assert_eq!(summary.epochs, 2);
        if before == 2 && after == 2 {
            assert!(
                same_bits(&resumed.params, &whole.params),
                "2 ranks resumed on 2 differ from the uninterrupted run"
            );
        } else {
            assert_follows(
                &whole,
                &resumed,
                &format!("{before} ranks resumed on {after}"),
            );
        }
        // The checkpoint rank 0 wrote holds the final model.
        let ck = checkpoint::load(&out).unwrap();
        assert!(same_bits(&ck.mlp.params, &resumed.params));
    }
}

/// Asks to stop after `after` steps (on one rank only).
struct StopAfter {
    after: usize,
    seen: usize,
}

impl Observer for StopAfter {
    fn step(&mut self, _: &StepProgress) {
        self.seen += 1;
    }
    fn stop_requested(&mut self) -> bool {
        self.seen >= self.after
    }
}

#[test]
fn a_stop_asked_on_one_rank_stops_every_rank_after_the_same_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let cfg = config();
    let out = dir.path().join("run");
    let runs = train_observed(&data, &cfg, 2, Some(&out), false, |rank| {
        let after = if rank == 1 { 5 } else { usize::MAX };
        Box::new(StopAfter { after, seen: 0 })
    });
    let (mlp, summary) = agreed_model(runs);
    assert!(summary.interrupted);
    // Rank 1's wish after step 5 travels with step 6's sums.
    let ck = checkpoint::load(&out).unwrap();
    assert_eq!((ck.epochs_done, ck.steps_in_epoch), (0, 6));
    assert!(same_bits(&ck.mlp.params, &mlp.params));
}

/// Thread ranks whose rank 1 adds a little to every gradient sum it gets,
/// as a rank with a broken reduction would.
struct Skewed(ThreadRanks);

impl Ranks for Skewed {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn size(&self) -> usize {
        self.0.size()
    }
    fn sum_f32(&mut self, values: &mut [f32]) {
        self.0.sum_f32(values);
        if self.0.rank() == 1 {
            values[0] += 1e-3;
        }
    }
    fn sum_f64(&mut self, values: &mut [f64]) {
        self.0.sum_f64(values)
    }
}

#[test]
fn ranks_whose_parameters_drift_apart_are_stopped_at_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let cfg = config();
    let runs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = ThreadRanks::group(2)
            .into_iter()
            .map(|ranks| {
                let (data, cfg) = (&data, &cfg);
                s.spawn(move || {
                    train_on(data, cfg, None, None, &mut Silent, Box::new(Skewed(ranks)))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for run in runs {
        match run {
            Err(TrainError::Ranks(m)) => {
                assert!(
                    m.contains("the parameters of rank 1 differ from rank 0's"),
                    "{m}"
                )
            }
            other => panic!(
                "expected the ranks' disagreement, got {:?}",
                other.map(|r| r.1)
            ),
        }
    }
}
