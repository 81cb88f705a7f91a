//! numpy arrays in, library types out: features are read in place, never
//! copied; labels (one byte a sample) are copied once.

use fastnn::data::{FeatureSource, FeatureView};
use numpy::{PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The values of a C-contiguous 2-D numpy array of float32 or uint8, lent
/// to a dataset: the array is kept alive by the reference held here, and
/// its values are read where numpy put them.
pub struct NumpyFeatures {
    /// Keeps the array, and so its buffer, alive.
    _array: Py<PyAny>,
    values: Values,
    rows: usize,
    cols: usize,
}

#[derive(Clone, Copy)]
enum Values {
    F32(*const f32, usize),
    U8(*const u8, usize),
}

// SAFETY: the pointers are into the buffer of the array held in `_array`,
// which numpy frees only with the array and does not move while a reference
// is held (resizing an array that is referenced is refused). The values are
// only read. A Python thread writing into the same array during training
// would race, as with any consumer that releases the GIL over numpy data;
// the estimator never does.
unsafe impl Send for NumpyFeatures {}
unsafe impl Sync for NumpyFeatures {}

impl NumpyFeatures {
    /// Borrows `x`, which must be a C-contiguous 2-D float32 or uint8 array
    /// (the Python layer converts anything else once).
    pub fn borrow(x: &Bound<'_, PyAny>) -> PyResult<NumpyFeatures> {
        if let Ok(a) = x.cast::<PyArray2<f32>>() {
            let r: PyReadonlyArray2<f32> = a.try_readonly().map_err(borrowed)?;
            let (rows, cols) = (r.shape()[0], r.shape()[1]);
            let s = r.as_slice().map_err(|_| not_contiguous())?;
            return Ok(NumpyFeatures {
                _array: x.clone().unbind(),
                values: Values::F32(s.as_ptr(), s.len()),
                rows,
                cols,
            });
        }
        if let Ok(a) = x.cast::<PyArray2<u8>>() {
            let r: PyReadonlyArray2<u8> = a.try_readonly().map_err(borrowed)?;
            let (rows, cols) = (r.shape()[0], r.shape()[1]);
            let s = r.as_slice().map_err(|_| not_contiguous())?;
            return Ok(NumpyFeatures {
                _array: x.clone().unbind(),
                values: Values::U8(s.as_ptr(), s.len()),
                rows,
                cols,
            });
        }
        Err(PyValueError::new_err(
            "features must be a 2-D numpy array of float32 or uint8",
        ))
    }

    /// Samples (rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Features per sample (columns).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The address of the first value (for the tests' no-copy check).
    pub fn address(&self) -> usize {
        match self.values {
            Values::F32(p, _) => p as usize,
            Values::U8(p, _) => p as usize,
        }
    }
}

fn not_contiguous() -> PyErr {
    PyValueError::new_err("features must be a C-contiguous array")
}

impl FeatureSource for NumpyFeatures {
    fn view(&self) -> FeatureView<'_> {
        // SAFETY: see the Send/Sync impls: the buffer outlives `self`.
        // An empty array may have a dangling pointer, which an empty slice
        // is allowed to have only if it is non-null and aligned.
        match self.values {
            Values::F32(_, 0) => FeatureView::F32(&[]),
            Values::U8(_, 0) => FeatureView::U8(&[]),
            Values::F32(p, n) => FeatureView::F32(unsafe { std::slice::from_raw_parts(p, n) }),
            Values::U8(p, n) => FeatureView::U8(unsafe { std::slice::from_raw_parts(p, n) }),
        }
    }
}

fn borrowed(e: numpy::BorrowError) -> PyErr {
    PyValueError::new_err(format!("features cannot be read: {e}"))
}
