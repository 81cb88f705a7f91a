//! Dataset files from and for Python: numpy arrays written as a dataset
//! file the CLI trains on, and the validation of a file before numpy maps it.

use std::path::PathBuf;

use fastnn::data::file::write_dataset as write_file;
use fastnn::data::SourceInfo;
use fastnn::data::{Dataset, FeatureSource, FeatureView, Features, RawDataset, RawSplit};
use numpy::PyReadonlyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::arrays::NumpyFeatures;

fn value_err(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Writes `x` (C-contiguous float32 or uint8 `[n, d]`) and the class
/// indices `y` of `classes` as the train split of a dataset file at `path`.
#[pyfunction]
#[pyo3(signature = (path, x, y, classes, overwrite=false))]
pub fn write_dataset(
    path: PathBuf,
    x: &Bound<'_, PyAny>,
    y: PyReadonlyArray1<'_, u8>,
    classes: Vec<String>,
    overwrite: bool,
) -> PyResult<()> {
    let features = NumpyFeatures::borrow(x)?;
    let features_copy = match features.view() {
        FeatureView::F32(v) => Features::F32(v.to_vec()),
        FeatureView::U8(v) => Features::U8(v.to_vec()),
    };
    let raw = RawDataset {
        format: "numpy".into(),
        classes,
        coarse_classes: None,
        shape: vec![features.cols()],
        splits: vec![RawSplit {
            name: "train".into(),
            features: features_copy,
            labels: y.as_slice().map_err(value_err)?.to_vec(),
            coarse_labels: None,
        }],
    };
    let source = SourceInfo {
        name: "numpy arrays".into(),
        files: Vec::new(),
    };
    write_file(&raw, &source, &path, overwrite).map_err(value_err)
}

/// Opens and validates the dataset file at `path` (header, alignment,
/// labels, checksum), returning its class names and sample shape.
#[pyfunction]
pub fn check_dataset(path: PathBuf) -> PyResult<(Vec<String>, Vec<usize>)> {
    let ds = Dataset::open(&path).map_err(value_err)?;
    Ok((ds.classes().to_vec(), ds.sample_shape().to_vec()))
}

/// The address the library reads the values of `x` from (for the tests
/// that check that training reads numpy's buffer in place).
#[pyfunction]
pub fn features_address(x: &Bound<'_, PyAny>) -> PyResult<usize> {
    Ok(NumpyFeatures::borrow(x)?.address())
}
