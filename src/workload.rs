//! The benchmark workloads of the design notes, and epoch throughput.
//!
//! - **W1**: 50,000 CIFAR-shaped samples (3072 u8 features, random pixels),
//!   MLP 3072-1024-512-10, SGD with momentum 0.9.
//! - **W2**: Fashion-MNIST (the copy embedded in the `fastnn` binary,
//!   whose files the caller hands in), MLP 784-512-256-10, same optimiser.
//!
//! Throughput is training samples per second over whole epochs (gather,
//! forward, loss, backward, update), the median over the epochs after a
//! warm-up epoch.

use std::path::PathBuf;

use crate::config::Precision;
use crate::data::idx::IdxBytes;
use crate::data::{
    cache, embedded, DataError, Dataset, Features, Holdout, Normalize, RawDataset, RawSplit,
    SourceInfo,
};
use crate::model::{Act, Loss, Norm};
use crate::net::Phases;
use crate::optim::{OptimConfig, OptimKind, Schedule};
use crate::rng::Rng;
use crate::rss::ResidentMemory;
use crate::train::{self, EpochMetrics, Observer, TrainConfig, TrainError};

/// A benchmark workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    W1,
    W2,
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "w1" => Ok(Workload::W1),
            "w2" => Ok(Workload::W2),
            _ => Err(format!("unknown workload {s:?} (w1 or w2)")),
        }
    }
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::W1 => "W1 (CIFAR-shaped, 3072-1024-512-10)",
            Workload::W2 => "W2 (Fashion-MNIST, 784-512-256-10)",
        }
    }

    /// Hidden layer sizes.
    pub fn hidden(self) -> Vec<usize> {
        match self {
            Workload::W1 => vec![1024, 512],
            Workload::W2 => vec![512, 256],
        }
    }

    /// The workload's dataset file, generated (W1) or converted from
    /// `fashion_mnist`, the shipped Fashion-MNIST files (W2), into the user's
    /// cache folder on first use.
    pub fn dataset(self, fashion_mnist: &[IdxBytes<'_>]) -> Result<Dataset, DataError> {
        match self {
            Workload::W2 => Ok(embedded::open_default(fashion_mnist)?.0),
            Workload::W1 => {
                let path = cache::file("w1-synthetic.safetensors")?;
                if let Ok(ds) = Dataset::open(&path) {
                    return Ok(ds);
                }
                crate::data::file::write_dataset(&w1_raw(), &SourceInfo::default(), &path, true)?;
                Dataset::open(&path)
            }
        }
    }

    /// The training configuration of the benchmark: SGD with momentum 0.9,
    /// constant learning rate, no validation split.
    pub fn config(self, batch: usize, threads: usize, epochs: usize) -> TrainConfig {
        TrainConfig {
            hidden: self.hidden(),
            act: Act::Relu,
            loss: Loss::Xent,
            dropout: 0.0,
            clip_grad_norm: None,
            early_stop: None,
            label_smoothing: 0.0,
            norm: Default::default(),
            precision: Default::default(),
            optim: OptimConfig {
                kind: OptimKind::Sgd {
                    momentum: 0.9,
                    nesterov: false,
                },
                l2: 0.0,
                weight_decay: 0.0,
            },
            lr: 0.01,
            schedule: Schedule::Constant,
            warmup: 0,
            epochs,
            batch,
            seed: 1,
            threads,
            normalize: Normalize::Feature,
            holdout: Holdout::Count(0),
            checkpoint_every: 1,
            test_every_epoch: false,
            flip: false,
            translate: 0,
        }
    }
}

/// 50,000 training and 1,000 test samples of random CIFAR-shaped pixels.
fn w1_raw() -> RawDataset {
    let mut rng = Rng::new(0x57_31);
    let mut split = |name: &str, n: usize| {
        let mut pixels = vec![0u8; n * 3072];
        for chunk in pixels.chunks_mut(8) {
            let word = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        RawSplit {
            name: name.into(),
            features: Features::U8(pixels),
            labels: (0..n).map(|_| rng.below(10) as u8).collect(),
            coarse_labels: None,
        }
    };
    let splits = vec![split("train", 50_000), split("test", 1_000)];
    RawDataset {
        format: "synthetic".into(),
        classes: (0..10).map(|c| format!("class{c}")).collect(),
        coarse_classes: None,
        shape: vec![3, 32, 32],
        splits,
    }
}

/// Per-epoch throughput of a benchmark run.
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    /// Images per second of every epoch, warm-up first.
    pub epochs: Vec<f64>,
    /// Median over the epochs after the first.
    pub median: f64,
    /// GEMM kernel used.
    pub isa: &'static str,
    /// Training floating-point operations per sample.
    pub flops_per_sample: u64,
    /// Mean training loss of the first and of the last epoch: a run that
    /// learns nothing shows here.
    pub loss_first: f64,
    pub loss_last: f64,
    /// Training samples per epoch.
    pub samples: usize,
    /// The dataset file trained on.
    pub dataset: PathBuf,
    /// Resident memory at the end of the last epoch, while the dataset is
    /// still mapped and the training buffers still live.
    pub memory: Option<ResidentMemory>,
    /// Where the steps of the epochs after the warm-up spent their time.
    pub phases: Phases,
    /// Layer sizes of the network, inputs first.
    pub dims: Vec<usize>,
    /// Wall time of those epochs' training steps (the phases' total plus
    /// the loop's own work: shuffling, progress, scheduling).
    pub train_seconds: f64,
}

struct Collect {
    epochs: Vec<f64>,
    losses: Vec<f64>,
    /// Phases of the epochs after the first.
    phases: Phases,
    dims: Vec<usize>,
    memory: Option<ResidentMemory>,
    isa: &'static str,
    flops_per_step: u64,
}

impl Observer for Collect {
    fn start(&mut self, info: &train::RunInfo) {
        self.isa = info.isa;
        self.flops_per_step = info.flops_per_step;
        self.dims = info.dims.clone();
    }
    fn epoch(&mut self, m: &EpochMetrics) {
        if !self.epochs.is_empty() {
            self.phases += m.phases;
        }
        self.epochs.push(m.images_per_sec);
        self.losses.push(m.train_loss);
        self.memory = ResidentMemory::read();
    }
}

/// Trains `workload` for `epochs` epochs (at least 2: one warm-up), with a
/// normalisation after each hidden layer if asked, in `precision`, and
/// measures its throughput. `fashion_mnist` is as for
/// [`Workload::dataset`].
pub fn measure(
    workload: Workload,
    fashion_mnist: &[IdxBytes<'_>],
    batch: usize,
    threads: usize,
    epochs: usize,
    norm: Norm,
    precision: Precision,
) -> Result<Throughput, TrainError> {
    let data = workload.dataset(fashion_mnist)?;
    let cfg = TrainConfig {
        norm,
        precision,
        ..workload.config(batch, threads, epochs.max(2))
    };
    let mut obs = Collect {
        epochs: Vec::new(),
        losses: Vec::new(),
        memory: None,
        isa: "",
        flops_per_step: 0,
        phases: Phases::default(),
        dims: Vec::new(),
    };
    train::train(&data, &cfg, None, None, &mut obs)?;
    let mut timed = obs.epochs[1..].to_vec();
    timed.sort_by(f64::total_cmp);
    let n = timed.len();
    let median = if n % 2 == 1 {
        timed[n / 2]
    } else {
        0.5 * (timed[n / 2 - 1] + timed[n / 2])
    };
    let samples = data.split("train").map_or(0, |s| s.len());
    Ok(Throughput {
        median,
        phases: obs.phases,
        dims: obs.dims,
        train_seconds: obs.epochs[1..].iter().map(|ips| samples as f64 / ips).sum(),
        isa: obs.isa,
        flops_per_sample: obs.flops_per_step / batch as u64,
        loss_first: obs.losses[0],
        loss_last: obs.losses[obs.losses.len() - 1],
        samples,
        dataset: data.path().to_path_buf(),
        memory: obs.memory,
        epochs: obs.epochs,
    })
}
