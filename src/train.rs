//! The training loop: epochs of shuffled mini-batches gathered from the
//! mapped dataset file, validation, checkpoints, divergence detection.
//!
//! ```text
//! for each epoch:                      shuffle = Rng(seed, epoch): no state to carry
//!   for each batch:   gather + normalise → forward → loss → backward → update
//!   validate; checkpoint (atomically)
//! test
//! ```
//!
//! Every random choice is derived from `(seed, purpose, epoch or step)`, so
//! a run resumed from an epoch's checkpoint continues bit for bit as the
//! uninterrupted run would have.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Checkpoint};
use crate::data::{Augment, Dataset, Geometry, Holdout, Normalize, Normalizer, SplitView};
use crate::gemm::Parallelism;
use crate::model::{Act, Loss, Mlp, MlpConfig};
use crate::net::Workspace;
use crate::ops::LossOut;
use crate::optim::{OptimConfig, Optimizer, Schedule};
use crate::rng::Rng;

/// Everything that defines a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Hidden layer sizes (inputs and classes come from the dataset).
    pub hidden: Vec<usize>,
    pub act: Act,
    pub loss: Loss,
    pub dropout: f32,
    pub optim: OptimConfig,
    /// Base learning rate.
    pub lr: f32,
    pub schedule: Schedule,
    /// Steps of linear learning-rate warm-up.
    pub warmup: usize,
    pub epochs: usize,
    pub batch: usize,
    pub seed: u64,
    /// Threads for the matrix products (1 = no thread pool at all).
    pub threads: usize,
    pub normalize: Normalize,
    /// Validation samples held out of the end of the training split.
    pub holdout: Holdout,
    /// Write a checkpoint every this many epochs (and after the last).
    pub checkpoint_every: usize,
    /// Also evaluate the test split after every epoch (for learning curves
    /// against time; the model is never selected on it).
    #[serde(default)]
    pub test_every_epoch: bool,
    /// Mirror each training image left to right with probability 1/2
    /// (data augmentation for images whose classes are mirror-symmetric).
    #[serde(default)]
    pub flip: bool,
    /// Translate each training image by a random whole number of pixels in
    /// −k..=k, independently along each axis, filling with zeros (data
    /// augmentation; 0 = off).
    #[serde(default)]
    pub translate: usize,
}

/// Purposes of the derived random streams.
const SHUFFLE: u64 = 1;
const DROPOUT: u64 = 2;
const FLIP: u64 = 3;
const TRANSLATE: u64 = 4;

/// One epoch's measurements.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// Learning rate at the end of the epoch.
    pub lr: f32,
    /// Training samples per second (training steps only).
    pub images_per_sec: f64,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
    /// Wall time since the run (or its resumption) started, at the end of
    /// the epoch's training steps.
    pub elapsed: f64,
    /// Test loss and accuracy after the epoch (`test_every_epoch` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
}

/// Loss, accuracy and confusion matrix on one split.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    pub samples: usize,
    pub loss: f64,
    pub accuracy: f64,
    /// `confusion[true · C + predicted]`.
    pub confusion: Vec<usize>,
}

/// What a finished run reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Epochs completed.
    pub epochs: usize,
    /// True when the run stopped inside an epoch on request (Ctrl-C).
    pub interrupted: bool,
    /// 1-based epoch of the best validation accuracy, if validating.
    pub best_val_epoch: Option<usize>,
    pub best_val_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub wall_seconds: f64,
    /// Training samples per second over the whole run.
    pub images_per_sec: f64,
}

/// Progress of a step, for progress bars.
#[derive(Debug, Clone, Copy)]
pub struct StepProgress {
    pub epoch: usize,
    pub step_in_epoch: usize,
    pub steps_per_epoch: usize,
    /// Mean loss over the epoch's steps so far.
    pub running_loss: f64,
}

/// What the run tells the outside world. Every method has a default that
/// does nothing.
pub trait Observer {
    fn start(&mut self, _info: &RunInfo) {}
    fn step(&mut self, _progress: &StepProgress) {}
    fn epoch(&mut self, _metrics: &EpochMetrics) {}
    fn checkpoint(&mut self, _dir: &std::path::Path) {}
    /// Asked after each epoch (once its checkpoint is written): true ends
    /// the run there, as after its last epoch (Ctrl-C, a time budget).
    fn stop_requested(&mut self) -> bool {
        false
    }
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// Facts about a run, given to [`Observer::start`].
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub isa: &'static str,
    pub threads: usize,
    pub dims: Vec<usize>,
    pub parameters: usize,
    pub flops_per_step: u64,
    pub train_samples: usize,
    pub val_samples: usize,
    pub test_samples: usize,
    /// Epoch the run starts at (0-based; non-zero when resumed).
    pub start_epoch: usize,
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(
        "training diverged: the loss became {value} at epoch {epoch}, step {step} (learning rate {lr}); \
         try a lower learning rate (--lr){kept}"
    )]
    Diverged {
        epoch: usize,
        step: usize,
        value: f64,
        lr: f32,
        kept: String,
    },
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// `FASTNN_ISA` is unknown or names a kernel this CPU lacks.
    #[error(transparent)]
    Isa(#[from] crate::cpu::IsaError),
}

/// One optimisation step on the batch already gathered in `ws`: forward,
/// loss, backward, update. Returns the batch loss; allocates nothing.
pub fn train_step(
    mlp: &mut Mlp,
    ws: &mut Workspace,
    grads: &mut [f32],
    opt: &mut Optimizer,
    batch: usize,
    lr: f32,
    dropout: Option<&mut Rng>,
) -> LossOut {
    mlp.forward(ws, batch, dropout);
    let out = mlp.loss_and_dlogits(ws, batch);
    mlp.backward(ws, grads, batch);
    opt.step(&mut mlp.params, grads, &mlp.layout, lr);
    out
}

/// Evaluates `mlp` on `view` in batches of the workspace's size.
pub fn evaluate(
    mlp: &Mlp,
    ws: &mut Workspace,
    norm: &Normalizer,
    view: &SplitView<'_>,
    indices: &mut Vec<usize>,
) -> EvalResult {
    let classes = mlp.cfg.classes();
    let mut confusion = vec![0usize; classes * classes];
    let mut total = LossOut::default();
    let b = ws.max_batch();
    let mut start = 0;
    while start < view.len() {
        let n = b.min(view.len() - start);
        indices.clear();
        indices.extend(start..start + n);
        norm.gather(view, indices, &mut ws.x, &mut ws.labels);
        let out = mlp.evaluate_batch(ws, n);
        total.loss_sum += out.loss_sum;
        total.correct += out.correct;
        for (row, &y) in ws.logits()[..n * classes]
            .chunks_exact(classes)
            .zip(&ws.labels[..n])
        {
            confusion[y as usize * classes + crate::ops::argmax(row).0] += 1;
        }
        start += n;
    }
    let samples = view.len().max(1) as f64;
    EvalResult {
        samples: view.len(),
        loss: total.loss_sum / samples,
        accuracy: total.correct as f64 / samples,
        confusion,
    }
}

/// Runs (or, with `resume`, continues) training on `data`, writing model
/// and checkpoints into `out_dir` when given.
pub fn train(
    data: &Dataset,
    cfg: &TrainConfig,
    out_dir: Option<&PathBuf>,
    resume: Option<Checkpoint>,
    observer: &mut (dyn Observer + Send),
) -> Result<(Mlp, Summary), TrainError> {
    if cfg.batch == 0 || cfg.epochs == 0 {
        return Err(TrainError::Config(
            "batch and epochs must be at least 1".into(),
        ));
    }
    let mut dims = vec![data.dim()];
    dims.extend(&cfg.hidden);
    dims.push(data.classes().len());
    let mcfg = MlpConfig {
        dims,
        act: cfg.act,
        loss: cfg.loss,
        dropout: cfg.dropout,
    };
    mcfg.validate().map_err(TrainError::Config)?;
    // Refuse a network that cannot fit before allocating any of it.
    let need = mcfg.training_bytes(cfg.batch);
    if let Some(avail) = available_memory() {
        if need > avail as u128 {
            return Err(TrainError::Config(format!(
                "the network {:?} at batch {} needs {:.2} GiB for parameters, gradients, optimiser state and activations; {:.2} GiB of memory is available",
                mcfg.dims,
                cfg.batch,
                need as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            )));
        }
    }
    let (train_view, val_view) = data.train_validation(cfg.holdout)?;
    let test_view = data.split("test").ok();
    if train_view.is_empty() {
        return Err(TrainError::Config("the training split is empty".into()));
    }
    let norm = Normalizer::new(cfg.normalize, &data.stats(), data.dim());
    // Augmentation moves pixels, so it needs samples that are images.
    let augment_geometry = if cfg.flip || cfg.translate > 0 {
        let g = Geometry::of_shape(data.sample_shape()).ok_or_else(|| {
            TrainError::Config(format!(
                "flips and translations need image samples ([C, H, W] or [H, W]); this dataset's samples are {:?}",
                data.sample_shape()
            ))
        })?;
        if cfg.translate >= g.height.min(g.width) || cfg.translate > i8::MAX as usize {
            return Err(TrainError::Config(format!(
                "a translation of up to {} pixels does not fit {}×{} images",
                cfg.translate, g.height, g.width
            )));
        }
        Some(g)
    } else {
        None
    };

    let (mut mlp, mut opt, start_epoch, mut best, resume_steps, resume_sum) = match resume {
        Some(ck) => {
            if ck.mlp.cfg != mcfg {
                return Err(TrainError::Config(format!(
                    "the checkpoint's network {:?} does not match this dataset and configuration {:?}",
                    ck.mlp.cfg.dims, mcfg.dims
                )));
            }
            let steps = ck.steps_in_epoch;
            (
                ck.mlp,
                ck.optimizer,
                ck.epochs_done,
                ck.best,
                steps,
                ck.partial,
            )
        }
        None => {
            let mlp = Mlp::init(mcfg, cfg.seed);
            let opt = Optimizer::new(cfg.optim, &mlp.layout);
            (mlp, opt, 0, None, 0, LossOut::default())
        }
    };

    let pool = (cfg.threads > 1)
        .then(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(cfg.threads)
                .build()
        })
        .transpose()
        .map_err(|e| TrainError::Config(format!("cannot start {} threads: {e}", cfg.threads)))?;
    let par = Parallelism::threads(cfg.threads);
    let mut ws = Workspace::try_new(&mlp, cfg.batch, par)?;
    let mut grads = crate::buf::AlignedBuf::<f32>::zeroed(mlp.layout.len);
    let steps_per_epoch = train_view.len().div_ceil(cfg.batch);
    let total_steps = steps_per_epoch * cfg.epochs;

    observer.start(&RunInfo {
        isa: ws.gemm().isa().name(),
        threads: cfg.threads,
        dims: mlp.cfg.dims.clone(),
        parameters: mlp.cfg.parameter_count(),
        flops_per_step: mlp.cfg.train_flops_per_sample() * cfg.batch as u64,
        train_samples: train_view.len(),
        val_samples: val_view.len(),
        test_samples: test_view.map_or(0, |v| v.len()),
        start_epoch,
    });

    let run_start = Instant::now();
    let mut trained_samples = 0usize;
    let mut train_seconds = 0.0;
    let mut order: Vec<usize> = Vec::with_capacity(train_view.len());
    let mut eval_indices: Vec<usize> = Vec::with_capacity(cfg.batch);
    let mut epochs_run = start_epoch;
    let mut augments: Vec<Augment> = Vec::with_capacity(cfg.batch);
    let mut interrupted = false;
    // Writes both files; `steps` > 0 marks a checkpoint taken inside epoch
    // `epochs_done + 1` after that many steps, with their partial sums.
    let save = |dir: &std::path::Path,
                mlp: &Mlp,
                opt: &Optimizer,
                epochs_done: usize,
                steps: usize,
                partial: LossOut,
                best| {
        let ck = checkpoint::CheckpointRef {
            mlp,
            optimizer: opt,
            epochs_done,
            steps_in_epoch: steps,
            partial,
            best,
            config: cfg,
            classes: data.classes(),
            normalizer: &norm,
        };
        checkpoint::save(dir, &ck)
    };
    let mut run = || -> Result<(), TrainError> {
        for epoch in start_epoch..cfg.epochs {
            let epoch_start = Instant::now();
            order.clear();
            order.extend(0..train_view.len());
            Rng::derive(cfg.seed, &[SHUFFLE, epoch as u64]).shuffle(&mut order);
            // A run resumed inside an epoch skips the steps already done.
            let (first_step, mut sum) = if epoch == start_epoch {
                (resume_steps, resume_sum)
            } else {
                (0, LossOut::default())
            };
            let mut lr = cfg.lr;
            for (s, chunk) in order.chunks(cfg.batch).enumerate().skip(first_step) {
                let step = epoch * steps_per_epoch + s;
                lr = cfg
                    .schedule
                    .lr(cfg.lr, step, total_steps, epoch, cfg.warmup);
                if let Some(geometry) = augment_geometry {
                    draw_augments(cfg, step, chunk.len(), &mut augments);
                    norm.gather_augmented(
                        &train_view,
                        chunk,
                        &augments,
                        geometry,
                        &mut ws.x,
                        &mut ws.labels,
                    );
                } else {
                    norm.gather(&train_view, chunk, &mut ws.x, &mut ws.labels);
                }
                let mut drop_rng = Rng::derive(cfg.seed, &[DROPOUT, step as u64]);
                let dropout = (cfg.dropout > 0.0).then_some(&mut drop_rng);
                let out = train_step(
                    &mut mlp,
                    &mut ws,
                    &mut grads,
                    &mut opt,
                    chunk.len(),
                    lr,
                    dropout,
                );
                if !out.loss_sum.is_finite() {
                    let kept = match out_dir {
                        Some(d) if epoch > 0 => {
                            format!("; the last good checkpoint is in {}", d.display())
                        }
                        _ => String::new(),
                    };
                    return Err(TrainError::Diverged {
                        epoch: epoch + 1,
                        step: s + 1,
                        value: out.loss_sum,
                        lr,
                        kept,
                    });
                }
                sum.loss_sum += out.loss_sum;
                sum.correct += out.correct;
                observer.step(&StepProgress {
                    epoch: epoch + 1,
                    step_in_epoch: s + 1,
                    steps_per_epoch,
                    running_loss: sum.loss_sum / ((s * cfg.batch + chunk.len()) as f64),
                });
                // A stop asked for inside an epoch (Ctrl-C) ends the run after
                // this step, with a checkpoint to resume from.
                if s + 1 < steps_per_epoch && observer.stop_requested() {
                    if let Some(dir) = out_dir {
                        save(dir, &mlp, &opt, epoch, s + 1, sum, best)?;
                        observer.checkpoint(dir);
                    }
                    interrupted = true;
                    return Ok(());
                }
            }
            let seconds_train = epoch_start.elapsed().as_secs_f64();
            let elapsed = run_start.elapsed().as_secs_f64();
            train_seconds += seconds_train;
            trained_samples += train_view.len();
            let val = (!val_view.is_empty())
                .then(|| evaluate(&mlp, &mut ws, &norm, &val_view, &mut eval_indices));
            if let Some(v) = &val {
                if best.is_none_or(|(_, acc)| v.accuracy > acc) {
                    best = Some((epoch + 1, v.accuracy));
                }
            }
            let test = match test_view {
                Some(v) if cfg.test_every_epoch => {
                    Some(evaluate(&mlp, &mut ws, &norm, &v, &mut eval_indices))
                }
                _ => None,
            };
            let metrics = EpochMetrics {
                epoch: epoch + 1,
                train_loss: sum.loss_sum / train_view.len() as f64,
                train_accuracy: sum.correct as f64 / train_view.len() as f64,
                val_loss: val.as_ref().map(|v| v.loss),
                val_accuracy: val.as_ref().map(|v| v.accuracy),
                lr,
                images_per_sec: train_view.len() as f64 / seconds_train,
                seconds: epoch_start.elapsed().as_secs_f64(),
                elapsed,
                test_loss: test.as_ref().map(|t| t.loss),
                test_accuracy: test.as_ref().map(|t| t.accuracy),
            };
            observer.epoch(&metrics);
            epochs_run = epoch + 1;
            let stop = observer.stop_requested();
            let last = stop || epoch + 1 == cfg.epochs;
            if let Some(dir) = out_dir {
                if last || (epoch + 1) % cfg.checkpoint_every.max(1) == 0 {
                    save(dir, &mlp, &opt, epoch + 1, 0, LossOut::default(), best)?;
                    observer.checkpoint(dir);
                }
            }
            if stop {
                break;
            }
        }
        Ok(())
    };
    match &pool {
        Some(p) => p.install(&mut run)?,
        None => run()?,
    }
    let test = test_view.map(|v| match &pool {
        Some(p) => p.install(|| evaluate(&mlp, &mut ws, &norm, &v, &mut eval_indices)),
        None => evaluate(&mlp, &mut ws, &norm, &v, &mut eval_indices),
    });
    let summary = Summary {
        epochs: epochs_run,
        interrupted,
        best_val_epoch: best.map(|b| b.0),
        best_val_accuracy: best.map(|b| b.1),
        test_loss: test.as_ref().map(|t| t.loss),
        test_accuracy: test.as_ref().map(|t| t.accuracy),
        wall_seconds: run_start.elapsed().as_secs_f64(),
        images_per_sec: if train_seconds > 0.0 {
            trained_samples as f64 / train_seconds
        } else {
            0.0
        },
    };
    Ok((mlp, summary))
}

/// The augmentation of each sample of training step `step`. Flips and
/// translations come from their own random streams, both derived from the
/// seed and the step, so a resumed run draws the same ones.
fn draw_augments(cfg: &TrainConfig, step: usize, samples: usize, out: &mut Vec<Augment>) {
    out.clear();
    out.resize(samples, Augment::default());
    if cfg.flip {
        let mut rng = Rng::derive(cfg.seed, &[FLIP, step as u64]);
        for a in out.iter_mut() {
            a.flip = rng.next_u64() >> 63 == 1;
        }
    }
    if cfg.translate > 0 {
        let k = cfg.translate as i64;
        let mut rng = Rng::derive(cfg.seed, &[TRANSLATE, step as u64]);
        for a in out.iter_mut() {
            a.dx = (rng.below(2 * k as u64 + 1) as i64 - k) as i8;
            a.dy = (rng.below(2 * k as u64 + 1) as i64 - k) as i8;
        }
    }
}

/// Memory available to this process in bytes (Linux `MemAvailable`), if known.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
