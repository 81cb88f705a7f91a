//! The training loop: epochs of shuffled mini-batches gathered from the
//! mapped dataset file, validation, checkpoints, divergence detection.
//!
//! ```text
//! Trainer::new       check the configuration, build (or resume) the model, allocate every buffer
//! Trainer::run       for each epoch:
//!   Trainer::epoch     shuffle = Rng(seed, epoch): no state to carry
//!     Trainer::step    for each batch: forward → loss → backward → update, the next batch
//!                      gathered + normalised by the threads of the first layer's weight
//!                      gradient as each finishes its part (the epoch's first batch before)
//!     validate; checkpoint (atomically)
//! Trainer::test, Trainer::finish
//! ```
//!
//! Every random choice is derived from `(seed, purpose, epoch or step)`, so
//! a run resumed from an epoch's checkpoint continues bit for bit as the
//! uninterrupted run would have.
//!
//! Over several ranks ([`crate::distributed`]), every rank runs this loop
//! on the same global batches: it gathers, computes and back-propagates its
//! shard of each, the ranks sum the gradients and the step's loss, and every
//! rank takes the same step. Validation and test are split the same way and
//! their totals summed. Only the rank given an output folder writes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::buf::AlignedBuf;
use crate::checkpoint::{self, Checkpoint, EarlyStopState};
pub use crate::config::{Precision, TrainConfig};
use crate::data::{Augment, Dataset, Geometry, Normalizer, SplitView};
use crate::distributed::{shard, OneProcess, Ranks};
use crate::gemm::{Parallelism, SideJob};
use crate::model::{Mlp, MlpConfig, Norm};
use crate::net::{DropoutDraws, Lap, Phases, Workspace};
use crate::ops::LossOut;
use crate::optim::{self, Optimizer};
use crate::rng::Rng;

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
    /// Where the epoch's training steps spent their time (validation not
    /// included).
    pub phases: Phases,
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
    /// With early stopping: true when it ended the run before the last
    /// epoch, and the 1-based epoch (lowest validation loss) whose
    /// parameters the model holds (0: none improved on the initial ones).
    pub stopped_early: bool,
    pub restored_epoch: Option<usize>,
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
    /// Ranks of a distributed run (1: one process); `threads` is per rank.
    pub ranks: usize,
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
    /// The ranks of a distributed run disagree.
    #[error("{0}")]
    Ranks(String),
    /// `FASTNN_ISA` is unknown or names a kernel this CPU lacks.
    #[error(transparent)]
    Isa(#[from] crate::cpu::IsaError),
}

/// One optimisation step on the batch already gathered in `ws`: forward,
/// loss, backward with the update ([`Mlp::backward_update`]; `grads` holds
/// the gradients it does not fuse). With `clip_grad_norm`, the whole
/// gradient is needed before any weight moves: the backward pass writes it
/// all into `grads`, [`optim::clip_grad_norm`] scales it, and the optimiser's
/// separate pass applies it. Returns the batch loss; allocates nothing. The
/// time of each phase is added to `ws.phases`.
///
/// `then` goes to the threads of the first layer's weight gradient
/// ([`Mlp::backward_update`]): the trainer gathers the next batch there.
/// Where the step has no such product (clipping, bf16, an unfused
/// product), `then` is not called.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    mlp: &mut Mlp,
    ws: &mut Workspace,
    grads: &mut [f32],
    opt: &mut Optimizer,
    batch: usize,
    lr: f32,
    dropout: Option<&mut Rng>,
    clip_grad_norm: Option<f32>,
    then: Option<SideJob<'_>>,
) -> LossOut {
    let mut clock = Lap::start();
    mlp.forward_train(ws, batch, dropout);
    clock.lap(&mut ws.phases.forward);
    let out = mlp.loss_and_dlogits(ws, batch);
    clock.lap(&mut ws.phases.loss);
    match clip_grad_norm {
        None => mlp.backward_update(ws, grads, opt, lr, batch, then),
        Some(max_norm) => {
            mlp.backward(ws, grads, batch);
            let mut clock = Lap::start();
            optim::clip_grad_norm(grads, max_norm);
            mlp.update(ws, grads, opt, lr);
            clock.lap(&mut ws.phases.update);
        }
    }
    ws.phases.steps += 1;
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
    let (total, confusion) = evaluate_totals(mlp, ws, norm, view, indices);
    EvalResult::from_totals(view.len(), total, confusion)
}

impl EvalResult {
    /// Means from the totals over `samples` samples.
    fn from_totals(samples: usize, total: LossOut, confusion: Vec<usize>) -> EvalResult {
        let n = samples.max(1) as f64;
        EvalResult {
            samples,
            loss: total.loss_sum / n,
            accuracy: total.correct as f64 / n,
            confusion,
        }
    }
}

/// The loss sum, correct count and confusion matrix of `mlp` on `view`.
fn evaluate_totals(
    mlp: &Mlp,
    ws: &mut Workspace,
    norm: &Normalizer,
    view: &SplitView<'_>,
    indices: &mut Vec<usize>,
) -> (LossOut, Vec<usize>) {
    // BatchNorm folded into the Linear before it: one product per layer.
    let folded = mlp.fold_batch_norm();
    let mlp = folded.as_ref().unwrap_or(mlp);
    let classes = mlp.cfg.classes();
    let mut confusion = vec![0usize; classes * classes];
    let mut total = LossOut::default();
    let b = ws.max_batch();
    let mut start = 0;
    while start < view.len() {
        let n = b.min(view.len() - start);
        indices.clear();
        indices.extend(start..start + n);
        let (x, labels, team) = ws.batch_mut();
        norm.gather(view, indices, x, labels, team);
        total += mlp.evaluate_batch(ws, n);
        for (row, &y) in ws.logits()[..n * classes]
            .chunks_exact(classes)
            .zip(&ws.labels[..n])
        {
            confusion[y as usize * classes + crate::ops::argmax(row).0] += 1;
        }
        start += n;
    }
    (total, confusion)
}

/// Runs (or, with `resume`, continues) training on `data`, writing model
/// and checkpoints into `out_dir` when given.
///
/// ```text
/// set-up and resume   Trainer::new     checks, then the model: fresh or from the checkpoint
/// epochs              Trainer::run     → Trainer::epoch: shuffle, steps, validation, checkpoint
///   step              Trainer::step    gather (+ augment) → forward → loss → backward → update
/// summary             Trainer::finish  the test split and the run's figures
/// ```
pub fn train(
    data: &Dataset,
    cfg: &TrainConfig,
    out_dir: Option<&PathBuf>,
    resume: Option<Checkpoint>,
    observer: &mut (dyn Observer + Send),
) -> Result<(Mlp, Summary), TrainError> {
    train_on(data, cfg, out_dir, resume, observer, Box::new(OneProcess))
}

/// [`train`] as one of `ranks` (data parallelism: see [`crate::distributed`]).
/// Every rank calls it with the same data, configuration and checkpoint; only
/// the one given `out_dir` writes, and its observer is the one to show.
pub fn train_on<'d>(
    data: &'d Dataset,
    cfg: &'d TrainConfig,
    out_dir: Option<&'d PathBuf>,
    resume: Option<Checkpoint>,
    observer: &mut (dyn Observer + Send),
    ranks: Box<dyn Ranks + 'd>,
) -> Result<(Mlp, Summary), TrainError> {
    let out_dir = out_dir.map(PathBuf::as_path);
    let mut trainer = Trainer::with_ranks(data, cfg, out_dir, resume, ranks)?;
    observer.start(&trainer.info());
    let interrupted = trainer.run(observer)?;
    let test = trainer.test();
    Ok(trainer.finish(interrupted, test))
}

/// Where a run stands: `steps` steps of epoch `epoch` (0-based) are done,
/// with these loss and accuracy sums.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    epoch: usize,
    steps: usize,
    partial: LossOut,
}

impl Position {
    /// The start of epoch `epoch`.
    fn epoch_start(epoch: usize) -> Position {
        Position {
            epoch,
            ..Position::default()
        }
    }
}

/// How an epoch ended.
enum EpochEnd {
    /// All its steps ran; go on.
    Done,
    /// All its steps ran and the observer asked to stop after it.
    Stop,
    /// The observer asked to stop inside it (a checkpoint was written).
    Interrupted,
}

/// A training run in progress: the model, its optimiser and every buffer a
/// step touches, allocated once by [`Trainer::new`], so that
/// [`Trainer::step`] allocates nothing.
pub struct Trainer<'d> {
    cfg: &'d TrainConfig,
    data: &'d Dataset,
    out_dir: Option<&'d Path>,
    train_view: SplitView<'d>,
    val_view: SplitView<'d>,
    test_view: Option<SplitView<'d>>,
    norm: Normalizer,
    /// The image shape that flips and translations move pixels in (`None`:
    /// no augmentation).
    augment: Option<Geometry>,
    steps_per_epoch: usize,
    mlp: Mlp,
    opt: Optimizer,
    ws: Workspace,
    grads: AlignedBuf<f32>,
    /// Where the run (re)starts.
    start: Position,
    /// `(1-based epoch, accuracy)` of the best validation so far.
    best: Option<(usize, f64)>,
    /// With `--early-stop`: where it stands, and the parameters of the
    /// epoch with the lowest validation loss.
    early_stop: Option<(EarlyStopState, AlignedBuf<f32>)>,
    /// The epoch whose parameters early stopping restored at the end.
    restored_epoch: Option<usize>,
    /// The current epoch's sample order.
    order: Vec<usize>,
    /// The current step's augmentations (or the next step's, once that
    /// batch is being gathered ahead).
    augments: Vec<Augment>,
    /// The next batch, gathered during the current step.
    next: NextBatch,
    /// Whether the next batch is gathered during the current step (else at
    /// the start of its own).
    gather_ahead: bool,
    /// Scratch for evaluation batches.
    eval_indices: Vec<usize>,
    /// The run's ranks ([`OneProcess`] unless distributed).
    ranks: Box<dyn Ranks + 'd>,
    /// Scratch for the totals the ranks sum.
    totals: Vec<f64>,
    /// Over several ranks: this rank wants to stop (not yet shared), and
    /// the ranks agreed to stop after the last step.
    stop_wish: bool,
    stop_agreed: bool,
    epochs_done: usize,
    clock: Instant,
    train_seconds: f64,
    trained_samples: usize,
}

/// A batch gathered one step ahead ([`Trainer::step`]): the workspace's
/// input and labels trade places with it when its step comes.
struct NextBatch {
    x: AlignedBuf<f32>,
    labels: Vec<u8>,
    /// The global step whose batch `x` and `labels` hold, once gathered.
    holds: Option<usize>,
}

impl<'d> Trainer<'d> {
    /// Set-up and resume: checks the configuration against the dataset and
    /// the available memory, then builds the model and its optimiser (fresh,
    /// or from `resume`), the workspace and every buffer the steps use.
    pub fn new(
        data: &'d Dataset,
        cfg: &'d TrainConfig,
        out_dir: Option<&'d Path>,
        resume: Option<Checkpoint>,
    ) -> Result<Trainer<'d>, TrainError> {
        Trainer::with_ranks(data, cfg, out_dir, resume, Box::new(OneProcess))
    }

    /// As [`Trainer::new`], as one of `ranks`.
    pub fn with_ranks(
        data: &'d Dataset,
        cfg: &'d TrainConfig,
        out_dir: Option<&'d Path>,
        resume: Option<Checkpoint>,
        ranks: Box<dyn Ranks + 'd>,
    ) -> Result<Trainer<'d>, TrainError> {
        if cfg.batch == 0 || cfg.epochs == 0 {
            return Err(TrainError::Config(
                "batch and epochs must be at least 1".into(),
            ));
        }
        let mcfg = network(data, cfg)?;
        let (train_view, val_view) = data.train_validation(cfg.holdout)?;
        if train_view.is_empty() {
            return Err(TrainError::Config("the training split is empty".into()));
        }
        let augment = augment_geometry(data, cfg)?;
        if mcfg.norm == Norm::Batch && cfg.batch < 2 {
            return Err(TrainError::Config(
                "BatchNorm needs at least 2 samples per batch (--batch)".into(),
            ));
        }
        // PyTorch refuses to train BatchNorm on a batch of one sample (its
        // variance is undefined): such a last batch is left out of each
        // epoch, the shuffle choosing which sample waits for the next one.
        let mut steps_per_epoch = train_view.len().div_ceil(cfg.batch);
        if mcfg.norm == Norm::Batch && train_view.len() % cfg.batch == 1 {
            steps_per_epoch -= 1;
        }
        if steps_per_epoch == 0 {
            return Err(TrainError::Config(
                "BatchNorm needs at least 2 training samples".into(),
            ));
        }
        let size = ranks.size();
        if size > 1 && mcfg.norm == Norm::Batch {
            return Err(TrainError::Config(format!(
                "--norm batch over {size} ranks: each rank would normalise its shard by its own statistics (synchronised BatchNorm is not implemented); use --norm layer or none"
            )));
        }
        if size > cfg.batch {
            return Err(TrainError::Config(format!(
                "{size} ranks need a batch of at least {size} samples to share (--batch {})",
                cfg.batch
            )));
        }
        if cfg.early_stop.is_some() && val_view.is_empty() {
            return Err(TrainError::Config(
                "early stopping watches the validation loss: hold out validation samples (--validation)".into(),
            ));
        }
        let (mlp, opt, start, best, early) = match resume {
            Some(ck) => {
                if ck.mlp.cfg != mcfg {
                    return Err(TrainError::Config(format!(
                        "the checkpoint's network ({}) does not match this dataset and configuration ({})",
                        ck.mlp.cfg, mcfg
                    )));
                }
                let start = Position {
                    epoch: ck.epochs_done,
                    steps: ck.steps_in_epoch,
                    partial: ck.partial,
                };
                (ck.mlp, ck.optimizer, start, ck.best, ck.early_stop)
            }
            None => {
                let mlp = Mlp::init(mcfg, cfg.seed);
                let opt = Optimizer::new(cfg.optim, &mlp.layout);
                (mlp, opt, Position::default(), None, None)
            }
        };
        // Before the first validation, the initial parameters stand as the
        // best (at an infinite loss, so the first epoch always improves).
        let early_stop = cfg.early_stop.map(|_| match early {
            Some((state, params)) => (state, AlignedBuf::from_slice(&params)),
            None => (
                EarlyStopState {
                    best_loss: f64::INFINITY,
                    best_epoch: 0,
                    bad_epochs: 0,
                },
                AlignedBuf::from_slice(&mlp.params),
            ),
        });
        // A rank's workspace holds its shard of a batch.
        let rows = cfg.batch.div_ceil(size);
        let mut ws = Workspace::try_new(&mlp, rows, Parallelism::threads(cfg.threads))?;
        if cfg.precision == Precision::Bf16 {
            ws.use_bf16(&mlp, crate::cpu::try_selected_bf16()?);
        }
        let grads = AlignedBuf::zeroed(mlp.layout.len);
        let next = NextBatch {
            x: AlignedBuf::zeroed(ws.x.len()),
            labels: vec![0; ws.labels.len()],
            holds: None,
        };
        Ok(Trainer {
            cfg,
            data,
            out_dir,
            norm: Normalizer::new(cfg.normalize, &data.stats(), data.dim()),
            steps_per_epoch,
            order: Vec::with_capacity(train_view.len()),
            train_view,
            val_view,
            test_view: data.split("test").ok(),
            augment,
            mlp,
            opt,
            ws,
            grads,
            start,
            best,
            early_stop,
            restored_epoch: None,
            augments: Vec::with_capacity(cfg.batch),
            next,
            gather_ahead: true,
            eval_indices: Vec::with_capacity(rows),
            totals: Vec::new(),
            stop_wish: false,
            stop_agreed: false,
            ranks,
            epochs_done: start.epoch,
            clock: Instant::now(),
            train_seconds: 0.0,
            trained_samples: 0,
        })
    }

    /// Facts about the run, for [`Observer::start`].
    pub fn info(&self) -> RunInfo {
        RunInfo {
            isa: match self.ws.bf16_kernel() {
                Some(k) => k.name(),
                None => self.ws.gemm().isa().name(),
            },
            threads: self.cfg.threads,
            ranks: self.ranks.size(),
            dims: self.mlp.cfg.dims.clone(),
            parameters: self.mlp.cfg.parameter_count(),
            flops_per_step: self.mlp.cfg.train_flops_per_sample() * self.cfg.batch as u64,
            train_samples: self.train_view.len(),
            val_samples: self.val_view.len(),
            test_samples: self.test_view.map_or(0, |v| v.len()),
            start_epoch: self.start.epoch,
        }
    }

    /// The model as it stands.
    pub fn mlp(&self) -> &Mlp {
        &self.mlp
    }

    /// The optimiser's state as it stands (to train the model further).
    pub fn optimizer(&self) -> &Optimizer {
        &self.opt
    }

    /// The input normalisation of the run (the model file records it).
    pub fn normalizer(&self) -> &Normalizer {
        &self.norm
    }

    /// Training steps in one epoch (the last one may be short).
    pub fn steps_per_epoch(&self) -> usize {
        self.steps_per_epoch
    }

    /// The epochs from the start position to the last, or until the
    /// observer asks to stop. True when it stopped inside an epoch.
    pub fn run(&mut self, observer: &mut dyn Observer) -> Result<bool, TrainError> {
        for epoch in self.start.epoch..self.cfg.epochs {
            // A resumed run that had already stopped early stays stopped.
            if self.stopped_early() {
                break;
            }
            let from = if epoch == self.start.epoch {
                self.start
            } else {
                Position::epoch_start(epoch)
            };
            match self.epoch(from, observer)? {
                EpochEnd::Done => {}
                // Stopped on request: the model stays as it is, and the
                // checkpoint resumes from there.
                EpochEnd::Stop if !self.stopped_early() => return Ok(false),
                EpochEnd::Stop => break,
                EpochEnd::Interrupted => return Ok(true),
            }
        }
        self.restore_best()?;
        Ok(false)
    }

    /// One epoch from `from` (a resumed run skips the steps already done):
    /// its steps, then validation, metrics and the checkpoint.
    fn epoch(
        &mut self,
        from: Position,
        observer: &mut dyn Observer,
    ) -> Result<EpochEnd, TrainError> {
        let epoch = from.epoch;
        let epoch_start = Instant::now();
        self.ws.phases = Phases::default();
        self.shuffle(epoch);
        let mut sum = from.partial;
        for s in from.steps..self.steps_per_epoch {
            sum += self.step(epoch, s)?;
            let seen = (s * self.cfg.batch + self.batch_len(s)) as f64;
            observer.step(&StepProgress {
                epoch: epoch + 1,
                step_in_epoch: s + 1,
                steps_per_epoch: self.steps_per_epoch,
                running_loss: sum.loss_sum / seen,
            });
            // A stop asked for inside an epoch (Ctrl-C) ends the run after
            // this step, with a checkpoint to resume from.
            let stop = self.stop_after_step(observer.stop_requested());
            if s + 1 < self.steps_per_epoch && stop {
                self.check_ranks_agree()?;
                self.checkpoint(
                    Position {
                        epoch,
                        steps: s + 1,
                        partial: sum,
                    },
                    observer,
                )?;
                return Ok(EpochEnd::Interrupted);
            }
        }
        let seconds_train = epoch_start.elapsed().as_secs_f64();
        let phases = self.ws.phases;
        let elapsed = self.clock.elapsed().as_secs_f64();
        self.train_seconds += seconds_train;
        self.trained_samples += self.train_view.len();
        let val = self.validate(epoch);
        let test = if self.cfg.test_every_epoch {
            self.test()
        } else {
            None
        };
        let samples = self.train_view.len() as f64;
        observer.epoch(&EpochMetrics {
            epoch: epoch + 1,
            train_loss: sum.loss_sum / samples,
            train_accuracy: sum.correct as f64 / samples,
            val_loss: val.as_ref().map(|v| v.loss),
            val_accuracy: val.as_ref().map(|v| v.accuracy),
            lr: self.lr_at((epoch + 1) * self.steps_per_epoch - 1),
            images_per_sec: samples / seconds_train,
            seconds: epoch_start.elapsed().as_secs_f64(),
            elapsed,
            test_loss: test.as_ref().map(|t| t.loss),
            test_accuracy: test.as_ref().map(|t| t.accuracy),
            phases,
        });
        self.epochs_done = epoch + 1;
        if let Some(v) = &val {
            self.watch_validation_loss(epoch, v.loss);
        }
        let wish = observer.stop_requested() || self.stop_wish;
        let stop = self.agree(wish) || self.stopped_early();
        let last = stop || epoch + 1 == self.cfg.epochs;
        if last || (epoch + 1).is_multiple_of(self.cfg.checkpoint_every.max(1)) {
            self.check_ranks_agree()?;
            self.checkpoint(Position::epoch_start(epoch + 1), observer)?;
        }
        Ok(if stop { EpochEnd::Stop } else { EpochEnd::Done })
    }

    /// Early stopping's bookkeeping after epoch `epoch` (0-based) scored
    /// `loss` on the validation split: a lower loss becomes the best, and
    /// its parameters are kept.
    fn watch_validation_loss(&mut self, epoch: usize, loss: f64) {
        let Some((state, best)) = &mut self.early_stop else {
            return;
        };
        if loss < state.best_loss {
            *state = EarlyStopState {
                best_loss: loss,
                best_epoch: epoch + 1,
                bad_epochs: 0,
            };
            best.copy_from_slice(&self.mlp.params);
        } else {
            state.bad_epochs += 1;
        }
    }

    /// True once the validation loss has not improved for the patience.
    fn stopped_early(&self) -> bool {
        match (&self.early_stop, self.cfg.early_stop) {
            (Some((state, _)), Some(patience)) => state.bad_epochs >= patience,
            _ => false,
        }
    }

    /// At the end of a run with early stopping: the parameters of the epoch
    /// with the lowest validation loss become the model, and the model file
    /// (not the checkpoint, which keeps the last parameters to resume from)
    /// is rewritten with them.
    fn restore_best(&mut self) -> Result<(), TrainError> {
        let Some((state, best)) = &self.early_stop else {
            return Ok(());
        };
        self.mlp.params.copy_from_slice(best);
        self.restored_epoch = Some(state.best_epoch);
        if let Some(dir) = self.out_dir {
            checkpoint::save_model(
                &dir.join(checkpoint::MODEL_FILE),
                &self.mlp,
                self.data.classes(),
                &self.norm,
            )?;
        }
        Ok(())
    }

    /// Whether each step gathers the next batch while its first layer's
    /// weight gradient is computed (the default), or each batch is gathered
    /// at the start of its own step. The weights are the same bits either
    /// way; this is for measuring and checking that.
    pub fn set_gather_ahead(&mut self, on: bool) {
        self.gather_ahead = on;
        self.next.holds = None;
    }

    /// Puts epoch `epoch`'s sample order in place: a shuffle derived from
    /// the seed and the epoch, so there is no state to carry between epochs.
    pub fn shuffle(&mut self, epoch: usize) {
        self.next.holds = None;
        self.order.clear();
        self.order.extend(0..self.train_view.len());
        Rng::derive(self.cfg.seed, &[SHUFFLE, epoch as u64]).shuffle(&mut self.order);
    }

    /// Samples in step `s` of an epoch (the last step may be short).
    fn batch_len(&self, s: usize) -> usize {
        self.cfg
            .batch
            .min(self.train_view.len() - s * self.cfg.batch)
    }

    /// The learning rate of global step `step`.
    fn lr_at(&self, step: usize) -> f32 {
        let cfg = self.cfg;
        let total = self.steps_per_epoch * cfg.epochs;
        let epoch = step / self.steps_per_epoch;
        cfg.schedule.lr(cfg.lr, step, total, epoch, cfg.warmup)
    }

    /// Training step `s` of epoch `epoch`, once [`Trainer::shuffle`] has put
    /// that epoch's order in place: gather and normalise the batch (with its
    /// flips and translations), forward, loss, backward, update. Returns the
    /// batch's loss sum and correct count; stops the run on a non-finite
    /// loss. Allocates nothing.
    pub fn step(&mut self, epoch: usize, s: usize) -> Result<LossOut, TrainError> {
        let cfg = self.cfg;
        let step = epoch * self.steps_per_epoch + s;
        let lr = self.lr_at(step);
        let first = s * cfg.batch;
        let len = self.batch_len(s);
        // This rank's shard of the batch (all of it in one process).
        let rows = shard(len, self.ranks.size(), self.ranks.rank());
        let chunk = &self.order[first + rows.start..first + rows.end];
        let mut clock = Lap::start();
        let waited = self.ws.gemm().team_wait();
        if self.next.holds == Some(step) {
            // Gathered during the last step (below): swap it in.
            std::mem::swap(&mut self.ws.x, &mut self.next.x);
            std::mem::swap(&mut self.ws.labels, &mut self.next.labels);
        } else {
            let (x, labels, team) = self.ws.batch_mut();
            match self.augment {
                Some(geometry) => {
                    draw_augments(cfg, step, len, &mut self.augments);
                    let augments = &self.augments[rows.clone()];
                    let view = &self.train_view;
                    self.norm
                        .gather_augmented(view, chunk, augments, geometry, x, labels, team);
                }
                None => self.norm.gather(&self.train_view, chunk, x, labels, team),
            }
        }
        self.next.holds = None;
        clock.lap(&mut self.ws.phases.gather);
        let mut drop_rng = Rng::derive(cfg.seed, &[DROPOUT, step as u64]);
        let out = if self.ranks.size() == 1 {
            // The next batch of the epoch is gathered into `self.next` by
            // the threads of this step's first-layer weight gradient, each
            // as it finishes its part (or after the step, where the step
            // has no such product): its samples are waited for while the
            // other thread still computes, instead of by both after.
            let ahead = self.gather_ahead && s + 1 < self.steps_per_epoch;
            let next_rows = match ahead {
                true => first + cfg.batch..first + cfg.batch + self.batch_len(s + 1),
                false => 0..0,
            };
            let next_augments = match self.augment {
                Some(geometry) if ahead => {
                    draw_augments(cfg, step + 1, next_rows.len(), &mut self.augments);
                    Some((&self.augments[..], geometry))
                }
                _ => None,
            };
            let job = ahead.then(|| {
                self.norm.gather_job(
                    &self.train_view,
                    &self.order[next_rows],
                    next_augments,
                    &mut self.next.x,
                    &mut self.next.labels,
                )
            });
            let work = job.as_ref().map(|job| move || job.work());
            let dropout = (cfg.dropout > 0.0).then_some(&mut drop_rng);
            let out = train_step(
                &mut self.mlp,
                &mut self.ws,
                &mut self.grads,
                &mut self.opt,
                chunk.len(),
                lr,
                dropout,
                cfg.clip_grad_norm,
                work.as_ref().map(|w| w as SideJob<'_>),
            );
            let mut clock = Lap::start();
            if let Some(job) = &job {
                job.finish(self.ws.team());
            }
            clock.lap(&mut self.ws.phases.gather);
            if ahead {
                self.next.holds = Some(step + 1);
            }
            out
        } else {
            let dropout = (cfg.dropout > 0.0).then_some(DropoutDraws {
                rng: &mut drop_rng,
                rows_before: rows.start,
                rows_after: len - rows.end,
            });
            self.shard_step(rows.len(), len, lr, dropout)
        };
        self.ws.phases.wait += self.ws.gemm().team_wait() - waited;
        if !out.loss_sum.is_finite() {
            let kept = match self.out_dir {
                Some(d) if epoch > 0 => format!("; the last good checkpoint is in {}", d.display()),
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
        Ok(out)
    }

    /// One step as one of several ranks, on this rank's `rows` of a batch
    /// of `len`: forward and backward on them, the gradients and the step's
    /// totals summed over the ranks, then every rank's identical update.
    /// The update is the optimiser's separate pass (the fused one would
    /// move the weights before the other ranks' gradients are in), skipped
    /// when the summed loss is not finite. The ranks' wishes to stop travel
    /// with the totals ([`Trainer::stop_after_step`]).
    fn shard_step(
        &mut self,
        rows: usize,
        len: usize,
        lr: f32,
        dropout: Option<DropoutDraws<'_>>,
    ) -> LossOut {
        let mut clock = Lap::start();
        let mine = if rows == 0 {
            // A short last batch can leave a rank without samples.
            self.grads.fill(0.0);
            LossOut::default()
        } else {
            self.mlp.forward_rows(&mut self.ws, rows, dropout);
            clock.lap(&mut self.ws.phases.forward);
            let out = self.mlp.loss_share_and_dlogits(&mut self.ws, rows, len);
            clock.lap(&mut self.ws.phases.loss);
            self.mlp.backward(&mut self.ws, &mut self.grads, rows);
            clock = Lap::start();
            out
        };
        self.ranks.sum_f32(&mut self.grads);
        self.totals.clear();
        let wish = f64::from(u8::from(self.stop_wish));
        self.totals
            .extend([mine.loss_sum, mine.correct as f64, wish]);
        self.ranks.sum_f64(&mut self.totals);
        clock.lap(&mut self.ws.phases.all_reduce);
        let out = LossOut {
            loss_sum: self.totals[0],
            correct: self.totals[1] as usize,
        };
        if out.loss_sum.is_finite() {
            if let Some(max_norm) = self.cfg.clip_grad_norm {
                optim::clip_grad_norm(&mut self.grads, max_norm);
            }
            self.mlp
                .update(&mut self.ws, &self.grads, &mut self.opt, lr);
            clock.lap(&mut self.ws.phases.update);
        }
        self.ws.phases.steps += 1;
        self.stop_agreed = self.totals[2] > 0.0;
        out
    }

    /// Whether the run stops after the step just taken, given whether this
    /// process wants it to (`mine`: Ctrl-C). One process stops at once.
    /// Ranks must stop after the same step, so a wish travels with the next
    /// step's totals and every rank stops after that step (or at the end of
    /// the epoch, whichever comes first), without a sum of its own.
    fn stop_after_step(&mut self, mine: bool) -> bool {
        if self.ranks.size() == 1 {
            return mine;
        }
        self.stop_wish |= mine;
        self.stop_agreed
    }

    /// True on every rank when `mine` is true on any (one small sum over
    /// several ranks).
    fn agree(&mut self, mine: bool) -> bool {
        if self.ranks.size() == 1 {
            return mine;
        }
        let mut any = [f64::from(u8::from(mine))];
        self.ranks.sum_f64(&mut any);
        any[0] > 0.0
    }

    /// Over several ranks, before a checkpoint: every rank must hold the
    /// same parameters (the sums make them so; this checks it, from a CRC
    /// of each rank's parameters, gathered by a sum with one slot a rank).
    fn check_ranks_agree(&mut self) -> Result<(), TrainError> {
        let size = self.ranks.size();
        if size == 1 {
            return Ok(());
        }
        let bytes: Vec<u8> = self
            .mlp
            .params
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        self.totals.clear();
        self.totals.resize(size, 0.0);
        self.totals[self.ranks.rank()] = f64::from(crc32fast::hash(&bytes));
        self.ranks.sum_f64(&mut self.totals);
        match self.totals.iter().position(|&c| c != self.totals[0]) {
            None => Ok(()),
            Some(r) => Err(TrainError::Ranks(format!(
                "the parameters of rank {r} differ from rank 0's (CRC {:08x} against {:08x})",
                self.totals[r] as u32, self.totals[0] as u32
            ))),
        }
    }

    /// Loss and accuracy of the model on `view`, each rank evaluating its
    /// shard of it and the ranks summing the totals.
    fn evaluate_split(&mut self, view: SplitView<'d>) -> EvalResult {
        let (size, rank) = (self.ranks.size(), self.ranks.rank());
        let mine = view.slice(shard(view.len(), size, rank));
        let (mut total, mut confusion) = evaluate_totals(
            &self.mlp,
            &mut self.ws,
            &self.norm,
            &mine,
            &mut self.eval_indices,
        );
        if size > 1 {
            self.totals.clear();
            self.totals.push(total.loss_sum);
            self.totals.push(total.correct as f64);
            self.totals.extend(confusion.iter().map(|&c| c as f64));
            self.ranks.sum_f64(&mut self.totals);
            total = LossOut {
                loss_sum: self.totals[0],
                correct: self.totals[1] as usize,
            };
            for (c, &t) in confusion.iter_mut().zip(&self.totals[2..]) {
                *c = t as usize;
            }
        }
        EvalResult::from_totals(view.len(), total, confusion)
    }

    /// Loss and accuracy on the held-out validation samples (`None` when
    /// none are held out); remembers the best epoch.
    fn validate(&mut self, epoch: usize) -> Option<EvalResult> {
        if self.val_view.is_empty() {
            return None;
        }
        let v = self.evaluate_split(self.val_view);
        if self.best.is_none_or(|(_, acc)| v.accuracy > acc) {
            self.best = Some((epoch + 1, v.accuracy));
        }
        Some(v)
    }

    /// Loss and accuracy on the test split (`None` without one).
    pub fn test(&mut self) -> Option<EvalResult> {
        let view = self.test_view?;
        Some(self.evaluate_split(view))
    }

    /// Writes the model and a checkpoint at `at` into the output folder,
    /// if there is one. `at.steps` > 0 marks a checkpoint taken inside an
    /// epoch.
    fn checkpoint(&self, at: Position, observer: &mut dyn Observer) -> Result<(), TrainError> {
        let Some(dir) = self.out_dir else {
            return Ok(());
        };
        checkpoint::save(
            dir,
            &checkpoint::CheckpointRef {
                mlp: &self.mlp,
                optimizer: &self.opt,
                epochs_done: at.epoch,
                steps_in_epoch: at.steps,
                partial: at.partial,
                best: self.best,
                early_stop: self.early_stop.as_ref().map(|(s, p)| (*s, &p[..])),
                config: self.cfg,
                classes: self.data.classes(),
                normalizer: &self.norm,
            },
        )?;
        observer.checkpoint(dir);
        Ok(())
    }

    /// The trained model and the run's summary, given its test result.
    pub fn finish(self, interrupted: bool, test: Option<EvalResult>) -> (Mlp, Summary) {
        let summary = Summary {
            epochs: self.epochs_done,
            interrupted,
            best_val_epoch: self.best.map(|b| b.0),
            best_val_accuracy: self.best.map(|b| b.1),
            test_loss: test.as_ref().map(|t| t.loss),
            test_accuracy: test.as_ref().map(|t| t.accuracy),
            wall_seconds: self.clock.elapsed().as_secs_f64(),
            images_per_sec: if self.train_seconds > 0.0 {
                self.trained_samples as f64 / self.train_seconds
            } else {
                0.0
            },
            stopped_early: self.stopped_early(),
            restored_epoch: self.restored_epoch,
        };
        (self.mlp, summary)
    }
}

/// The network `cfg` asks for on `data`, refused if it is invalid or cannot
/// fit in the available memory (checked before allocating any of it).
fn network(data: &Dataset, cfg: &TrainConfig) -> Result<MlpConfig, TrainError> {
    let mcfg = cfg.network(data.dim(), data.classes().len());
    mcfg.validate().map_err(TrainError::Config)?;
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
    Ok(mcfg)
}

/// The image geometry flips and translations need, `None` without them;
/// refused for samples that are not images or translations that do not fit.
fn augment_geometry(data: &Dataset, cfg: &TrainConfig) -> Result<Option<Geometry>, TrainError> {
    if !cfg.flip && cfg.translate == 0 {
        return Ok(None);
    }
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
    Ok(Some(g))
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
