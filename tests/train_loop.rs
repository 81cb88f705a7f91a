//! The training loop: it learns, it is deterministic across runs and
//! thread counts, it resumes bit for bit, it stops on divergence.

mod common;

use common::ranks::same_bits;

use std::path::PathBuf;

use fastnn::checkpoint::{self, load_model};
use fastnn::data::{Dataset, Holdout};
use fastnn::gemm::Parallelism;
use fastnn::model::Norm;
use fastnn::net::Workspace;
use fastnn::optim::Schedule;
use fastnn::train::{evaluate, train, Precision, Silent, TrainConfig, TrainError, Trainer};

fn config(threads: usize) -> TrainConfig {
    TrainConfig {
        hidden: vec![192, 64],
        warmup: 5,
        epochs: 4,
        seed: 42,
        threads,
        holdout: Holdout::Count(200),
        ..common::small_run()
    }
}

fn dataset(dir: &tempfile::TempDir) -> Dataset {
    Dataset::open(common::synthetic_dataset(dir.path(), 1400, 300, 96, 4, 9)).unwrap()
}

#[test]
fn it_learns_and_the_model_file_reproduces_the_test_score() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir);
    let out = dir.path().join("run");
    let (mlp, summary) = train(&data, &config(2), Some(&out), None, &mut Silent).unwrap();
    let test_acc = summary.test_accuracy.unwrap();
    assert!(test_acc > 0.9, "test accuracy {test_acc}");
    assert!(summary.best_val_accuracy.unwrap() > 0.9);

    let model = load_model(&out.join(checkpoint::MODEL_FILE)).unwrap();
    assert_eq!(&model.mlp.params[..], &mlp.params[..]);
    assert_eq!(model.classes, data.classes());
    let mut ws = Workspace::new(&model.mlp, 50, Parallelism::Single);
    let r = evaluate(
        &model.mlp,
        &mut ws,
        &model.normalizer,
        &data.split("test").unwrap(),
        &mut Vec::new(),
    );
    assert_eq!(r.accuracy, test_acc);
    assert_eq!(r.confusion.iter().sum::<usize>(), 300);
}

#[test]
fn same_seed_gives_bitwise_equal_weights_for_one_and_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir);
    let (a, _) = train(&data, &config(2), None, None, &mut Silent).unwrap();
    let (b, _) = train(&data, &config(2), None, None, &mut Silent).unwrap();
    let (c, _) = train(&data, &config(1), None, None, &mut Silent).unwrap();
    assert!(same_bits(&a.params, &b.params));
    assert!(same_bits(&a.params, &c.params), "1 vs 2 threads differ");
    let other_seed = TrainConfig {
        seed: 43,
        ..config(2)
    };
    let (d, _) = train(&data, &other_seed, None, None, &mut Silent).unwrap();
    assert!(a.params.iter().zip(d.params.iter()).any(|(x, y)| x != y));
}

#[test]
fn resuming_from_a_checkpoint_continues_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir);
    let (full, _) = train(&data, &config(2), None, None, &mut Silent).unwrap();

    // The same 4-epoch run, stopped after its second epoch's checkpoint.
    let out: PathBuf = dir.path().join("run");
    let (_, partial) = train(&data, &config(2), Some(&out), None, &mut StopAfter(2)).unwrap();
    assert_eq!(partial.epochs, 2);
    let ck = checkpoint::load(&out).unwrap();
    assert_eq!(ck.epochs_done, 2);
    assert_eq!(ck.config, config(2));
    let (resumed, summary) =
        train(&data, &ck.config.clone(), Some(&out), Some(ck), &mut Silent).unwrap();
    assert_eq!(summary.epochs, 4);
    assert!(same_bits(&full.params, &resumed.params));
}

/// Asks the run to stop after `0` epochs, as a user's Ctrl-C would.
struct StopAfter(usize);
impl fastnn::train::Observer for StopAfter {
    fn epoch(&mut self, m: &fastnn::train::EpochMetrics) {
        self.0 = self.0.saturating_sub(usize::from(m.epoch > 0));
    }
    fn stop_requested(&mut self) -> bool {
        self.0 == 0
    }
}

#[test]
fn a_diverging_run_stops_with_the_epoch_and_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir);
    let cfg = TrainConfig {
        lr: 1e9,
        schedule: Schedule::Constant,
        warmup: 0,
        ..config(1)
    };
    match train(&data, &cfg, None, None, &mut Silent) {
        Err(e @ TrainError::Diverged { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("epoch 1, step"), "{msg}");
            assert!(msg.contains("try a lower learning rate"), "{msg}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a learning rate of 1e9 must diverge"),
    }
}

#[test]
fn a_damaged_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir);
    let out = dir.path().join("run");
    train(
        &data,
        &TrainConfig {
            epochs: 1,
            ..config(1)
        },
        Some(&out),
        None,
        &mut Silent,
    )
    .unwrap();
    let path = out.join(checkpoint::CHECKPOINT_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() - 100;
    bytes[i] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let err = checkpoint::load(&out)
        .err()
        .expect("corruption detected")
        .to_string();
    assert!(
        err.contains("checkpoint.safetensors") && err.contains("corrupted"),
        "{err}"
    );
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = checkpoint::load(&out)
        .err()
        .expect("truncation detected")
        .to_string();
    assert!(
        err.contains("truncated") || err.contains("does not match"),
        "{err}"
    );
}

/// Asks the run to stop after its `0`-th step, wherever that falls.
struct StopAtStep(usize);
impl fastnn::train::Observer for StopAtStep {
    fn step(&mut self, _p: &fastnn::train::StepProgress) {
        self.0 = self.0.saturating_sub(1);
    }
    fn stop_requested(&mut self) -> bool {
        self.0 == 0
    }
}

#[test]
fn a_run_stopped_inside_an_epoch_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir);
    let (full, full_summary) = train(&data, &config(2), None, None, &mut Silent).unwrap();
    // 1200 training samples in batches of 64: 19 steps per epoch; step 27
    // is the 8th step of the second epoch.
    let out: PathBuf = dir.path().join("run");
    let (_, partial) = train(&data, &config(2), Some(&out), None, &mut StopAtStep(27)).unwrap();
    assert!(partial.interrupted);
    assert_eq!(partial.epochs, 1);
    let ck = checkpoint::load(&out).unwrap();
    assert_eq!((ck.epochs_done, ck.steps_in_epoch), (1, 8));
    assert!(ck.partial.loss_sum > 0.0);
    let (resumed, summary) =
        train(&data, &ck.config.clone(), Some(&out), Some(ck), &mut Silent).unwrap();
    assert!(!summary.interrupted);
    assert!(same_bits(&full.params, &resumed.params));
    assert_eq!(summary.test_accuracy, full_summary.test_accuracy);
}

/// With each normalisation: the checkpoint carries γ, β and BatchNorm's
/// running statistics and batch count, so a run stopped inside an epoch
/// resumes to the same bits; and evaluation (BatchNorm folded into the
/// Linear before it) reproduces the model file's test score.
#[test]
fn normalised_runs_resume_bit_for_bit_and_evaluate_from_the_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir);
    for norm in [Norm::Batch, Norm::Layer] {
        let cfg = TrainConfig { norm, ..config(2) };
        let (full, full_summary) = train(&data, &cfg, None, None, &mut Silent).unwrap();
        assert!(
            full_summary.test_accuracy.unwrap() > 0.9,
            "{norm}: {full_summary:?}"
        );
        let out: PathBuf = dir.path().join(format!("run-{norm}"));
        let (_, partial) = train(&data, &cfg, Some(&out), None, &mut StopAtStep(27)).unwrap();
        assert!(partial.interrupted);
        let ck = checkpoint::load(&out).unwrap();
        assert_eq!(ck.mlp.cfg.norm, norm);
        if norm == Norm::Batch {
            assert_eq!(ck.mlp.batches_tracked, 27);
        }
        let (resumed, summary) =
            train(&data, &ck.config.clone(), Some(&out), Some(ck), &mut Silent).unwrap();
        let same = same_bits(&full.params, &resumed.params);
        assert!(same, "{norm}: the resumed run differs");
        assert_eq!(resumed.batches_tracked, full.batches_tracked);
        assert_eq!(summary.test_accuracy, full_summary.test_accuracy);

        let model = load_model(&out.join(checkpoint::MODEL_FILE)).unwrap();
        assert_eq!(&model.mlp.params[..], &full.params[..]);
        assert_eq!(model.mlp.batches_tracked, full.batches_tracked);
        let mut ws = Workspace::new(&model.mlp, 50, Parallelism::Single);
        let r = evaluate(
            &model.mlp,
            &mut ws,
            &model.normalizer,
            &data.split("test").unwrap(),
            &mut Vec::new(),
        );
        assert_eq!(Some(r.accuracy), full_summary.test_accuracy);
    }
}

/// In mixed precision a run learns as well, differs from the f32 run (its
/// products are bf16), records its precision in the checkpoint, and
/// resumes from inside an epoch to the same bits: the bf16 copies are the
/// master weights rounded, so the checkpoint's f32 weights restore them.
/// Plain and with BatchNorm (whose statistics come from the bf16 products).
#[test]
fn a_bf16_run_stopped_inside_an_epoch_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir);
    for norm in [Norm::None, Norm::Batch] {
        let f32_cfg = TrainConfig { norm, ..config(2) };
        let cfg = TrainConfig {
            precision: Precision::Bf16,
            ..f32_cfg.clone()
        };
        let (f32_run, _) = train(&data, &f32_cfg, None, None, &mut Silent).unwrap();
        let (full, full_summary) = train(&data, &cfg, None, None, &mut Silent).unwrap();
        assert!(
            full_summary.test_accuracy.unwrap() > 0.9,
            "{norm}: {full_summary:?}"
        );
        assert!(
            !same_bits(&full.params, &f32_run.params),
            "{norm}: bf16 is not f32"
        );
        let out: PathBuf = dir.path().join(format!("run-{norm}"));
        let (_, partial) = train(&data, &cfg, Some(&out), None, &mut StopAtStep(27)).unwrap();
        assert!(partial.interrupted);
        let ck = checkpoint::load(&out).unwrap();
        assert_eq!(ck.config.precision, Precision::Bf16);
        let (resumed, summary) =
            train(&data, &ck.config.clone(), Some(&out), Some(ck), &mut Silent).unwrap();
        let same = same_bits(&full.params, &resumed.params);
        assert!(same, "{norm}: the resumed bf16 run differs");
        assert_eq!(summary.test_accuracy, full_summary.test_accuracy);
    }
}

/// A checkpoint resumes only the network it holds: a different
/// normalisation is refused, naming both.
#[test]
fn a_checkpoint_with_another_normalisation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir);
    let batch_norm = TrainConfig {
        norm: Norm::Batch,
        epochs: 1,
        ..config(1)
    };
    let out: PathBuf = dir.path().join("run");
    train(&data, &batch_norm, Some(&out), None, &mut Silent).unwrap();
    let ck = checkpoint::load(&out).unwrap();
    let plain = TrainConfig {
        epochs: 2,
        ..config(1)
    };
    let err = train(&data, &plain, Some(&out), Some(ck), &mut Silent)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("norm batch") && msg.contains("norm none"),
        "{msg}"
    );
}

/// BatchNorm cannot train on one sample: `--batch 1` is refused, and a last
/// batch of one sample is left out of each epoch.
#[test]
fn batch_norm_never_trains_on_a_single_sample() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir);
    let one = TrainConfig {
        norm: Norm::Batch,
        batch: 1,
        ..config(1)
    };
    let err = Trainer::new(&data, &one, None, None).err().unwrap();
    assert!(err.to_string().contains("at least 2 samples"), "{err}");
    // 1400 samples less the held-out ones, in batches of 64: 1345 = 21·64 +
    // 1 leaves its last sample out; 1344 and 1346 keep every sample.
    for (holdout, norm, steps) in [
        (55, Norm::Batch, 21),
        (55, Norm::None, 22),
        (56, Norm::Batch, 21),
        (54, Norm::Batch, 22),
    ] {
        let cfg = TrainConfig {
            norm,
            holdout: Holdout::Count(holdout),
            ..config(1)
        };
        let trainer = Trainer::new(&data, &cfg, None, None).unwrap();
        assert_eq!(
            trainer.steps_per_epoch(),
            steps,
            "holdout {holdout}, norm {norm}"
        );
    }
}

#[test]
fn a_network_too_large_for_memory_is_refused_before_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir);
    let huge = TrainConfig {
        hidden: vec![1 << 20, 1 << 20],
        ..config(1)
    };
    match train(&data, &huge, None, None, &mut Silent) {
        Err(TrainError::Config(msg)) => {
            assert!(msg.contains("GiB") && msg.contains("needs"), "{msg}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a 2^40-parameter network must be refused"),
    }
    let absurd = TrainConfig {
        hidden: vec![usize::MAX / 2, 3],
        ..config(1)
    };
    let msg = train(&data, &absurd, None, None, &mut Silent)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("more parameters than memory can address"),
        "{msg}"
    );
}

/// Collects every epoch's metrics.
#[derive(Default)]
struct Record(Vec<fastnn::train::EpochMetrics>);
impl fastnn::train::Observer for Record {
    fn epoch(&mut self, m: &fastnn::train::EpochMetrics) {
        self.0.push(m.clone());
    }
}

#[test]
fn test_every_epoch_reports_the_test_split_without_changing_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir);
    let tracked = TrainConfig {
        test_every_epoch: true,
        ..config(1)
    };
    let mut record = Record::default();
    let (a, summary) = train(&data, &tracked, None, None, &mut record).unwrap();
    let (b, _) = train(&data, &config(1), None, None, &mut Silent).unwrap();
    assert_eq!(
        &a.params[..],
        &b.params[..],
        "evaluating the test split changes nothing"
    );
    assert_eq!(record.0.len(), 4);
    assert!(record
        .0
        .iter()
        .all(|m| m.test_accuracy.is_some() && m.elapsed > 0.0));
    assert!(record.0.windows(2).all(|w| w[1].elapsed > w[0].elapsed));
    assert_eq!(record.0[3].test_accuracy, summary.test_accuracy);
}

#[test]
fn an_augmented_run_stopped_inside_an_epoch_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::synthetic_with_shape(dir.path(), 1400, 300, &[1, 8, 12], 4, 9);
    let data = Dataset::open(path).unwrap();
    let augmented = TrainConfig {
        flip: true,
        translate: 2,
        ..config(2)
    };
    let (plain, _) = train(&data, &config(2), None, None, &mut Silent).unwrap();
    let (full, _) = train(&data, &augmented, None, None, &mut Silent).unwrap();
    assert!(
        plain
            .params
            .iter()
            .zip(full.params.iter())
            .any(|(x, y)| x != y),
        "flips and translations changed nothing"
    );
    let out: PathBuf = dir.path().join("run");
    let (_, partial) = train(&data, &augmented, Some(&out), None, &mut StopAtStep(27)).unwrap();
    assert!(partial.interrupted);
    let ck = checkpoint::load(&out).unwrap();
    assert_eq!(ck.config, augmented);
    let (resumed, _) = train(&data, &ck.config.clone(), Some(&out), Some(ck), &mut Silent).unwrap();
    assert!(same_bits(&full.params, &resumed.params));
}

#[test]
fn augmentation_is_refused_for_flat_samples_and_oversized_translations() {
    let dir = tempfile::tempdir().unwrap();
    let flat = dataset(&dir);
    let flip = TrainConfig {
        flip: true,
        ..config(1)
    };
    let err = train(&flat, &flip, None, None, &mut Silent)
        .err()
        .expect("a flat dataset cannot be flipped")
        .to_string();
    assert!(
        err.contains("need image samples") && err.contains("[96]"),
        "{err}"
    );
    let images = tempfile::tempdir().unwrap();
    let path = common::synthetic_with_shape(images.path(), 400, 10, &[1, 8, 12], 4, 9);
    let data = Dataset::open(path).unwrap();
    let far = TrainConfig {
        translate: 8,
        ..config(1)
    };
    let err = train(&data, &far, None, None, &mut Silent)
        .err()
        .expect("8 pixels do not fit 8 rows")
        .to_string();
    assert!(err.contains("8 pixels") && err.contains("8×12"), "{err}");
}

/// A run that overfits: few training samples, a high constant learning
/// rate, many epochs, early stopping with a patience of 2.
fn overfitting(early_stop: Option<usize>) -> TrainConfig {
    TrainConfig {
        dropout: 0.0,
        lr: 0.2,
        schedule: Schedule::Constant,
        warmup: 0,
        epochs: 40,
        early_stop,
        holdout: Holdout::Count(1200),
        ..config(1)
    }
}

#[test]
fn early_stopping_ends_at_the_patience_and_keeps_the_lowest_validation_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir);
    let out = dir.path().join("run");
    let mut record = Record::default();
    let cfg = overfitting(Some(2));
    let (mlp, summary) = train(&data, &cfg, Some(&out), None, &mut record).unwrap();
    let losses: Vec<f64> = record.0.iter().map(|m| m.val_loss.unwrap()).collect();
    let best = (0..losses.len())
        .min_by(|&a, &b| losses[a].total_cmp(&losses[b]).then(a.cmp(&b)))
        .unwrap();
    assert!(summary.stopped_early, "validation losses {losses:?}");
    assert_eq!(
        losses.len(),
        best + 1 + 2,
        "two epochs past the best: {losses:?}"
    );
    assert_eq!(summary.epochs, losses.len());
    assert_eq!(summary.restored_epoch, Some(best + 1));

    // The model is the best epoch's: its validation loss is that epoch's,
    // to the bit, and the model file holds it.
    let (_, val_view) = data.train_validation(cfg.holdout).unwrap();
    let norm = fastnn::data::Normalizer::new(cfg.normalize, &data.stats(), data.dim());
    let mut ws = Workspace::new(&mlp, cfg.batch, Parallelism::Single);
    let v = evaluate(&mlp, &mut ws, &norm, &val_view, &mut Vec::new());
    assert_eq!(v.loss.to_bits(), losses[best].to_bits());
    let file = load_model(&out.join(checkpoint::MODEL_FILE)).unwrap();
    assert_eq!(&file.mlp.params[..], &mlp.params[..]);

    // Without early stopping the same run goes on to the last epoch.
    let (_, plain) = train(&data, &overfitting(None), None, None, &mut Silent).unwrap();
    assert_eq!(
        (plain.epochs, plain.stopped_early, plain.restored_epoch),
        (40, false, None)
    );
}

#[test]
fn early_stopping_needs_validation_samples() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir);
    let cfg = TrainConfig {
        holdout: Holdout::Count(0),
        ..overfitting(Some(2))
    };
    let Err(err) = train(&data, &cfg, None, None, &mut Silent) else {
        panic!("early stopping without validation samples was accepted");
    };
    assert!(err.to_string().contains("validation"), "{err}");
}

/// Stopped one epoch after the best and resumed: the same best epoch, the
/// same final model, to the bit (the checkpoint carries the best parameters,
/// which are then no longer the current ones, and the count of epochs
/// without improvement).
#[test]
fn a_run_with_early_stopping_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir);
    let cfg = overfitting(Some(2));
    let (full, full_summary) = train(&data, &cfg, None, None, &mut Silent).unwrap();
    let best_epoch = full_summary.restored_epoch.unwrap();
    assert!(full_summary.stopped_early && best_epoch > 0);
    let out: PathBuf = dir.path().join("run");
    let stop_after = best_epoch + 1;
    let (_, partial) = train(&data, &cfg, Some(&out), None, &mut StopAfter(stop_after)).unwrap();
    assert_eq!((partial.epochs, partial.restored_epoch), (stop_after, None));
    let ck = checkpoint::load(&out).unwrap();
    let (state, best) = ck.early_stop.clone().unwrap();
    assert_eq!((state.best_epoch, state.bad_epochs), (best_epoch, 1));
    assert_ne!(
        &best[..],
        &ck.mlp.params[..],
        "the best parameters are not the last"
    );
    let (resumed, summary) = train(&data, &cfg, Some(&out), Some(ck), &mut Silent).unwrap();
    assert_eq!(summary.restored_epoch, full_summary.restored_epoch);
    assert_eq!(summary.epochs, full_summary.epochs);
    assert!(same_bits(&full.params, &resumed.params));
}
