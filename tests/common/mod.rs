//! Helpers shared by the training tests.
#![allow(dead_code)]

pub mod ranks;
pub mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fastnn::data::{Features, Holdout, Normalize, RawDataset, RawSplit, SourceInfo};
use fastnn::model::{Act, Loss, Norm};
use fastnn::optim::{OptimConfig, OptimKind, Schedule};
use fastnn::rng::Rng;
use fastnn::train::TrainConfig;

/// A learnable synthetic dataset: each class has a random prototype of
/// `dim` bytes, and samples are prototypes plus noise. Written as a dataset
/// file at `dir/synthetic.safetensors`.
pub fn synthetic_dataset(
    dir: &Path,
    train: usize,
    test: usize,
    dim: usize,
    classes: usize,
    seed: u64,
) -> PathBuf {
    synthetic_with_shape(dir, train, test, &[dim], classes, seed)
}

/// As [`synthetic_dataset`], with samples of the given shape (e.g.
/// `[1, 8, 12]`: images).
pub fn synthetic_with_shape(
    dir: &Path,
    train: usize,
    test: usize,
    shape: &[usize],
    classes: usize,
    seed: u64,
) -> PathBuf {
    let dim = shape.iter().product::<usize>();
    let mut rng = Rng::new(seed);
    let protos: Vec<Vec<f64>> = (0..classes)
        .map(|_| (0..dim).map(|_| 40.0 + 170.0 * rng.next_f64()).collect())
        .collect();
    let mut split = |name: &str, n: usize| {
        let mut features = Vec::with_capacity(n * dim);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let c = rng.below(classes as u64) as usize;
            labels.push(c as u8);
            features.extend(
                protos[c]
                    .iter()
                    .map(|&p| (p + 60.0 * rng.normal()).clamp(0.0, 255.0) as u8),
            );
        }
        RawSplit {
            name: name.to_string(),
            features: Features::U8(features),
            labels,
            coarse_labels: None,
        }
    };
    let splits = vec![split("train", train), split("test", test)];
    let raw = RawDataset {
        format: "synthetic".into(),
        classes: (0..classes).map(|c| format!("class{c}")).collect(),
        coarse_classes: None,
        shape: shape.to_vec(),
        splits,
    };
    let path = dir.join("synthetic.safetensors");
    fastnn::data::file::write_dataset(&raw, &SourceInfo::default(), &path, true).unwrap();
    path
}

/// The shared test fixtures beside the checkout.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

/// The `fastnn` binary, ready for arguments.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fastnn"))
}

/// Runs `fastnn args…` to completion.
pub fn fastnn(args: &[&str]) -> Output {
    bin().args(args).output().expect("run fastnn")
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The stdout of a run that must have succeeded.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small run the training tests vary: ReLU, cross-entropy, dropout 0.1,
/// SGD with Nesterov momentum 0.9 and L2 1e-4, a cosine schedule, features
/// standardised, no validation split, one checkpoint per epoch. Each test
/// overrides what it is about (`TrainConfig { hidden, …, ..small_run() }`).
pub fn small_run() -> TrainConfig {
    TrainConfig {
        hidden: vec![16],
        act: Act::Relu,
        loss: Loss::Xent,
        dropout: 0.1,
        clip_grad_norm: None,
        early_stop: None,
        label_smoothing: 0.0,
        norm: Norm::None,
        precision: Default::default(),
        optim: OptimConfig {
            kind: OptimKind::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
            l2: 1e-4,
            weight_decay: 0.0,
        },
        lr: 0.02,
        schedule: Schedule::Cosine,
        warmup: 0,
        epochs: 2,
        batch: 64,
        seed: 7,
        threads: 1,
        normalize: Normalize::Feature,
        holdout: Holdout::Count(0),
        checkpoint_every: 1,
        test_every_epoch: false,
        flip: false,
        translate: 0,
    }
}
