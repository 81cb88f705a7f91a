//! The estimator's settings (a dict of the `fastnn train` options, every
//! key present) → the library's `TrainConfig`.

use fastnn::config::{Precision, TrainConfig};
use fastnn::data::{Holdout, Normalize};
use fastnn::model::{Act, Loss, Norm};
use fastnn::optim::{OptimConfig, OptimKind, Schedule};
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Takes `key` out of the settings dict.
fn get<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<T> {
    let v = d
        .get_item(key)?
        .ok_or_else(|| PyKeyError::new_err(format!("setting {key} is missing")))?;
    v.extract::<T>().map_err(|e| {
        let e: PyErr = e.into();
        PyValueError::new_err(format!("setting {key}: {e}"))
    })
}

/// Parses a string setting with the library's own parser (the CLI's).
fn parse<'py, T: std::str::FromStr<Err = String>>(
    d: &Bound<'py, PyDict>,
    key: &str,
) -> PyResult<T> {
    let s: String = get(d, key)?;
    s.parse::<T>()
        .map_err(|e| PyValueError::new_err(format!("{key}: {e}")))
}

/// The run `d` describes. Ranges the library does not check itself are
/// checked by the Python layer, with the estimator's parameter names.
pub fn train_config(d: &Bound<'_, PyDict>) -> PyResult<TrainConfig> {
    let optimizer: String = get(d, "optimizer")?;
    let kind = match optimizer.as_str() {
        "sgd" => OptimKind::Sgd {
            momentum: get(d, "momentum")?,
            nesterov: get(d, "nesterov")?,
        },
        // PyTorch's defaults, as the CLI uses them.
        "adam" | "adamw" => OptimKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown optimizer {other:?} (sgd, adam or adamw)"
            )))
        }
    };
    Ok(TrainConfig {
        hidden: get(d, "hidden")?,
        act: parse::<Act>(d, "activation")?,
        loss: parse::<Loss>(d, "loss")?,
        dropout: get(d, "dropout")?,
        label_smoothing: get(d, "label_smoothing")?,
        norm: parse::<Norm>(d, "norm")?,
        precision: parse::<Precision>(d, "precision")?,
        optim: OptimConfig {
            kind,
            l2: get(d, "l2")?,
            weight_decay: get(d, "weight_decay")?,
        },
        clip_grad_norm: get(d, "clip_grad_norm")?,
        early_stop: get(d, "early_stop")?,
        lr: get(d, "lr")?,
        schedule: parse::<Schedule>(d, "schedule")?,
        warmup: get(d, "warmup")?,
        epochs: get(d, "epochs")?,
        batch: get(d, "batch")?,
        seed: get(d, "seed")?,
        threads: get(d, "threads")?,
        normalize: parse::<Normalize>(d, "normalize")?,
        // A count: the estimator picks the held-out samples itself.
        holdout: Holdout::Count(get(d, "validation")?),
        // Checkpoints are written only into an output folder, which an
        // estimator trained in memory does not have.
        checkpoint_every: 1,
        test_every_epoch: false,
        flip: false,
        translate: 0,
    })
}
