//! A trained network as a Python object: inference on numpy arrays, model
//! files in and out, and the state that lets training go on.

use std::path::{Path, PathBuf};

use fastnn::checkpoint::{self, ModelFile};
use fastnn::config::TrainConfig;
use fastnn::data::{FeatureSource, Normalizer, SplitView, Stats};
use fastnn::gemm::Parallelism;
use fastnn::model::Mlp;
use fastnn::net::Workspace;
use fastnn::optim::Optimizer;
use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::arrays::NumpyFeatures;

/// Samples per forward pass in inference: large enough to keep the matrix
/// products efficient, small enough that the activations stay in cache.
const INFERENCE_BATCH: usize = 1024;

/// One layer's weight `[out, in]` and bias `[out]` as numpy arrays.
type LayerArrays<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray1<f32>>);

/// The four vectors of [`Stats`], as Python sees them.
type StatsTuple = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

/// What training further needs besides the weights (`partial_fit`).
#[derive(Clone)]
pub struct TrainState {
    pub optimizer: Optimizer,
    /// The training statistics the normalisation was derived from: kept,
    /// so that later samples are normalised as the first ones were.
    pub stats: Stats,
    pub epochs_done: usize,
    pub config: TrainConfig,
}

/// A trained network with its class names and input normalisation.
#[pyclass(module = "fastnn._native", frozen)]
pub struct Model {
    pub mlp: Mlp,
    pub classes: Vec<String>,
    pub normalizer: Normalizer,
    pub state: Option<TrainState>,
}

fn io_err(e: impl std::fmt::Display) -> PyErr {
    PyOSError::new_err(e.to_string())
}

impl Model {
    fn from_file(m: ModelFile) -> Model {
        Model {
            mlp: m.mlp,
            classes: m.classes,
            normalizer: m.normalizer,
            state: None,
        }
    }
}

#[pymethods]
impl Model {
    /// Loads a model file (`model.safetensors` of `fastnn train`).
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<Model> {
        checkpoint::load_model(&path)
            .map(Model::from_file)
            .map_err(io_err)
    }

    /// A model from the bytes of a model file and, to train further, the
    /// `(checkpoint bytes, statistics)` of [`Model::train_state`].
    #[staticmethod]
    #[pyo3(signature = (model, state=None))]
    fn from_bytes(model: &[u8], state: Option<(Vec<u8>, StatsTuple)>) -> PyResult<Model> {
        let value_err = |e: fastnn::data::DataError| PyValueError::new_err(e.to_string());
        let mut m = checkpoint::load_model_bytes(Path::new("(model bytes)"), model.to_vec())
            .map(Model::from_file)
            .map_err(value_err)?;
        if let Some((bytes, (feature_mean, feature_std, channel_mean, channel_std))) = state {
            let ck = checkpoint::load_bytes(Path::new("(training state bytes)"), bytes)
                .map_err(value_err)?;
            m.state = Some(TrainState {
                optimizer: ck.optimizer,
                stats: Stats {
                    feature_mean,
                    feature_std,
                    channel_mean,
                    channel_std,
                },
                epochs_done: ck.epochs_done,
                config: ck.config,
            });
        }
        Ok(m)
    }

    /// What training further needs besides the model file, as bytes and
    /// lists (for pickling): the checkpoint file of the library (weights,
    /// optimiser state, epochs, settings) and the normalisation statistics.
    /// None for a model loaded from a model file.
    fn train_state<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, StatsTuple)>> {
        let Some(state) = &self.state else {
            return Ok(None);
        };
        let dir = tempfile::tempdir().map_err(io_err)?;
        checkpoint::save(
            dir.path(),
            &checkpoint::CheckpointRef {
                mlp: &self.mlp,
                optimizer: &state.optimizer,
                epochs_done: state.epochs_done,
                steps_in_epoch: 0,
                partial: Default::default(),
                best: None,
                early_stop: None,
                config: &state.config,
                classes: &self.classes,
                normalizer: &self.normalizer,
            },
        )
        .map_err(io_err)?;
        let bytes = std::fs::read(dir.path().join(checkpoint::CHECKPOINT_FILE)).map_err(io_err)?;
        let s = &state.stats;
        let stats = (
            s.feature_mean.clone(),
            s.feature_std.clone(),
            s.channel_mean.clone(),
            s.channel_std.clone(),
        );
        Ok(Some((PyBytes::new(py, &bytes), stats)))
    }

    /// Writes the model file (atomically) that `fastnn eval` and PyTorch read.
    fn save(&self, path: PathBuf) -> PyResult<()> {
        checkpoint::save_model(&path, &self.mlp, &self.classes, &self.normalizer).map_err(io_err)
    }

    /// The bytes of the model file [`Model::save`] writes.
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let dir = tempfile::tempdir().map_err(io_err)?;
        let path = dir.path().join(checkpoint::MODEL_FILE);
        self.save(path.clone())?;
        let bytes = std::fs::read(&path).map_err(io_err)?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Class names, in output order.
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.classes.clone()
    }

    /// Layer sizes, inputs first.
    #[getter]
    fn dims(&self) -> Vec<usize> {
        self.mlp.cfg.dims.clone()
    }

    #[getter]
    fn activation(&self) -> String {
        self.mlp.cfg.act.to_string()
    }

    #[getter]
    fn loss(&self) -> String {
        self.mlp.cfg.loss.to_string()
    }

    /// Epochs trained so far (0 for a model loaded from a file).
    #[getter]
    fn epochs_done(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.epochs_done)
    }

    /// True when the optimiser's state is here to train further.
    #[getter]
    fn can_train_further(&self) -> bool {
        self.state.is_some()
    }

    /// Each Linear layer's `(weight [out, in], bias [out])`, BatchNorm
    /// folded in (as inference runs); a layer without bias gives zeros.
    fn weights<'py>(&self, py: Python<'py>) -> PyResult<Vec<LayerArrays<'py>>> {
        let folded = self.mlp.fold_batch_norm();
        let mlp = folded.as_ref().unwrap_or(&self.mlp);
        (0..mlp.cfg.layers())
            .map(|l| {
                let slot = &mlp.layout.layers[l];
                let w =
                    PyArray1::from_vec(py, mlp.weight(l)).reshape([slot.fan_out, slot.fan_in])?;
                let b = if slot.b.is_empty() {
                    vec![0.0; slot.fan_out]
                } else {
                    mlp.bias(l).to_vec()
                };
                Ok((w, PyArray1::from_vec(py, b)))
            })
            .collect()
    }

    /// The network's outputs `[n, classes]` for the samples `x` (a
    /// C-contiguous float32 or uint8 array `[n, inputs]`, read in place), on
    /// `threads` threads, without the GIL.
    fn logits<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        threads: usize,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let features = NumpyFeatures::borrow(x)?;
        let inputs = self.mlp.cfg.inputs();
        if features.cols() != inputs {
            return Err(PyValueError::new_err(format!(
                "X has {} features, but the model takes {inputs}",
                features.cols()
            )));
        }
        let n = features.rows();
        let classes = self.mlp.cfg.classes();
        let out = py.detach(|| self.forward(&features, threads))?;
        PyArray1::from_vec(py, out).reshape([n, classes])
    }
}

impl Model {
    /// Inference on every row of `features`: the evaluation passes of the
    /// library (BatchNorm folded), batch by batch.
    fn forward(&self, features: &NumpyFeatures, threads: usize) -> PyResult<Vec<f32>> {
        let folded = self.mlp.fold_batch_norm();
        let mlp = folded.as_ref().unwrap_or(&self.mlp);
        let (n, dim, classes) = (features.rows(), features.cols(), mlp.cfg.classes());
        let labels = vec![0u8; n];
        let view = SplitView::new("X", dim, features.view(), &labels);
        let batch = n.clamp(1, INFERENCE_BATCH);
        let mut ws = Workspace::try_new(mlp, batch, Parallelism::threads(threads))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let mut out = vec![0f32; n * classes];
        let mut indices = Vec::with_capacity(batch);
        for start in (0..n).step_by(batch) {
            let m = batch.min(n - start);
            indices.clear();
            indices.extend(start..start + m);
            let (x, y, team) = ws.batch_mut();
            self.normalizer.gather(&view, &indices, x, y, team);
            mlp.evaluate_batch(&mut ws, m);
            out[start * classes..(start + m) * classes]
                .copy_from_slice(&ws.logits()[..m * classes]);
        }
        Ok(out)
    }
}
