//! `fastnn._native`: the conversions between numpy and the fastnn library.
//! The estimator (scikit-learn's conventions, input validation, labels) is
//! the Python package's; the training and inference are the library's.

mod arrays;
mod config;
mod files;
mod fit;
mod model;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<model::Model>()?;
    m.add_function(wrap_pyfunction!(fit::fit, m)?)?;
    m.add_function(wrap_pyfunction!(files::write_dataset, m)?)?;
    m.add_function(wrap_pyfunction!(files::check_dataset, m)?)?;
    m.add_function(wrap_pyfunction!(files::features_address, m)?)?;
    Ok(())
}
