//! Training on numpy arrays: the arrays become a dataset in memory (read in
//! place), and the library's trainer runs without the GIL. Between steps it
//! asks Python whether a signal arrived (Ctrl-C), and stops there.

use fastnn::checkpoint::Checkpoint;
use fastnn::data::{Dataset, MemorySplit, Stats};
use fastnn::ops::LossOut;
use fastnn::train::{EpochMetrics, Observer, TrainError, Trainer};
use numpy::{PyReadonlyArray1, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::NumpyFeatures;
use crate::config::train_config;
use crate::model::{Model, TrainState};

/// What the run tells Python: the per-epoch figures, and the first error
/// raised on the Python side (a signal's KeyboardInterrupt, or the
/// callback's), which stops the run after the current step.
struct Watch {
    on_epoch: Option<Py<PyAny>>,
    losses: Vec<f64>,
    val_accuracy: Vec<Option<f64>>,
    stop: Option<PyErr>,
}

impl Observer for Watch {
    fn epoch(&mut self, m: &EpochMetrics) {
        self.losses.push(m.train_loss);
        self.val_accuracy.push(m.val_accuracy);
        let Some(cb) = &self.on_epoch else { return };
        if self.stop.is_some() {
            return;
        }
        let args = (m.epoch, m.train_loss, m.val_loss, m.val_accuracy, m.seconds);
        if let Err(e) = Python::attach(|py| cb.call1(py, args).map(drop)) {
            self.stop = Some(e);
        }
    }

    fn stop_requested(&mut self) -> bool {
        if self.stop.is_none() {
            // Signal handlers run only on the main thread: elsewhere this
            // returns at once without effect.
            self.stop = Python::attach(|py| py.check_signals()).err();
        }
        self.stop.is_some()
    }
}

fn train_err(e: TrainError) -> PyErr {
    match e {
        TrainError::Config(_) | TrainError::Data(_) => PyValueError::new_err(e.to_string()),
        // The library's message names the CLI's flag; this one the
        // estimator's parameter.
        TrainError::Diverged {
            epoch,
            step,
            value,
            lr,
            ..
        } => PyRuntimeError::new_err(format!(
            "training diverged: the loss became {value} at epoch {epoch}, step {step} (learning rate {lr}); try a lower learning_rate"
        )),
        // The kernels (FASTNN_ISA), and whatever else stops a run.
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

/// Trains a network on `x` (C-contiguous float32 or uint8 `[n, d]`, read in
/// place) and the class indices `y` (uint8 `[n]`) of `classes`, with the
/// settings `settings` (see `config.rs`). With `resume`, training goes on
/// from that model's weights and optimiser state for `settings["epochs"]`
/// more epochs, normalised with its statistics; a fresh run normalises with
/// those of `x`. `on_epoch(epoch, loss, val_loss, val_accuracy, seconds)`
/// is called after each epoch.
///
/// Returns `(model, losses, validation accuracies, error)`: `error` is the
/// exception (KeyboardInterrupt) that stopped the run early, or None; the
/// model is the one trained until then.
#[pyfunction]
#[pyo3(signature = (x, y, classes, settings, resume=None, on_epoch=None))]
#[allow(clippy::type_complexity)]
pub fn fit(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: PyReadonlyArray1<'_, u8>,
    classes: Vec<String>,
    settings: &Bound<'_, PyDict>,
    resume: Option<PyRef<'_, Model>>,
    on_epoch: Option<Py<PyAny>>,
) -> PyResult<(Model, Vec<f64>, Vec<Option<f64>>, Option<PyErr>)> {
    let features = NumpyFeatures::borrow(x)?;
    let labels = y
        .as_slice()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    if labels.len() != features.rows() {
        return Err(PyValueError::new_err(format!(
            "X has {} samples, y has {}",
            features.rows(),
            y.len()
        )));
    }
    let mut cfg = train_config(settings)?;
    let dim = features.cols();
    let (checkpoint, stats) = match &resume {
        None => (None, None),
        Some(m) => {
            let Some(state) = &m.state else {
                return Err(PyValueError::new_err(
                    "this model has no optimiser state to train further (it was loaded from a model file)",
                ));
            };
            let done = state.epochs_done;
            cfg.epochs += done;
            let ck = Checkpoint {
                mlp: m.mlp.clone(),
                optimizer: state.optimizer.clone(),
                epochs_done: done,
                steps_in_epoch: 0,
                partial: LossOut::default(),
                best: None,
                early_stop: None,
                config: cfg.clone(),
            };
            (Some(ck), Some(state.stats.clone()))
        }
    };
    let data = Dataset::from_memory(
        vec![dim],
        classes.clone(),
        vec![MemorySplit {
            name: "train".into(),
            features: Box::new(features),
            labels: labels.to_vec(),
        }],
        stats,
    )
    .map_err(|e| PyValueError::new_err(e.problem))?;
    let mut watch = Watch {
        on_epoch,
        losses: Vec::new(),
        val_accuracy: Vec::new(),
        stop: None,
    };
    let cfg = &cfg;
    let (mlp, summary, optimizer, normalizer) = py
        .detach(|| {
            let mut trainer = Trainer::new(&data, cfg, None, checkpoint)?;
            trainer.run(&mut watch)?;
            let optimizer = trainer.optimizer().clone();
            let normalizer = trainer.normalizer().clone();
            let (mlp, summary) = trainer.finish(false, None);
            Ok::<_, TrainError>((mlp, summary, optimizer, normalizer))
        })
        .map_err(train_err)?;
    let stats: Stats = data.stats();
    let model = Model {
        mlp,
        classes,
        normalizer,
        state: Some(TrainState {
            optimizer,
            stats,
            epochs_done: summary.epochs,
            config: cfg.clone(),
        }),
    };
    Ok((model, watch.losses, watch.val_accuracy, watch.stop))
}
