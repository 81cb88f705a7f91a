//! Datasets: real formats in, one memory-mapped tensor file out.
//!
//! Converters (`cifar`, `idx`, `csv`) read a source format into a
//! [`RawDataset`] held in memory; [`file`](mod@file) writes it as a safetensors file
//! whose tensors are 64-byte aligned, and maps such a file back, validated,
//! handing out zero-copy views of each split. A [`Dataset`] can also be
//! made over samples already in memory ([`Dataset::from_memory`]: the
//! Python package's numpy arrays), read in place just the same.

pub mod batch;
pub mod cache;
pub mod cifar;
pub mod convert;
pub mod csv;
pub mod embedded;
pub mod error;
pub mod fetch;
pub mod file;
pub mod idx;
pub mod pickle;

pub use batch::{Augment, GatherJob, Geometry, Normalize, Normalizer};
pub use error::DataError;
pub use file::{
    Dataset, FeatureSource, FeatureView, Holdout, MemorySplit, SourceInfo, SplitView, Stats,
};

/// Feature storage of one split: bytes for images, f32 for CSV tables.
#[derive(Debug, Clone, PartialEq)]
pub enum Features {
    /// Row-major `[n, d]` bytes, rows as in the source (CIFAR keeps its
    /// R, G, B planes; IDX its row-major 28×28 pixels).
    U8(Vec<u8>),
    /// Row-major `[n, d]` 32-bit floats.
    F32(Vec<f32>),
}

impl Features {
    /// Number of stored values (n·d).
    pub fn len(&self) -> usize {
        match self {
            Features::U8(v) => v.len(),
            Features::F32(v) => v.len(),
        }
    }

    /// True when no value is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values, borrowed.
    pub fn view(&self) -> FeatureView<'_> {
        match self {
            Features::U8(v) => FeatureView::U8(v),
            Features::F32(v) => FeatureView::F32(v),
        }
    }
}

/// One split (`train` or `test`) of a dataset, as read from its source.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSplit {
    /// `"train"` or `"test"`.
    pub name: String,
    /// `[n, d]` features, d = product of [`RawDataset::shape`].
    pub features: Features,
    /// `[n]` class indices, each below the number of classes.
    pub labels: Vec<u8>,
    /// `[n]` CIFAR-100's second label set (absent for other datasets): the
    /// 20 superclasses, or the 100 fine classes when `--labels coarse` made
    /// the superclasses the main labels.
    pub coarse_labels: Option<Vec<u8>>,
}

impl RawSplit {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the split holds no sample.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A whole dataset read from a source, before it is written as a dataset file.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDataset {
    /// Short name of the source format: `cifar10`, `cifar100`, `idx`, `csv`.
    pub format: String,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Names of the second label set, in `coarse_labels` order.
    pub coarse_classes: Option<Vec<String>>,
    /// Shape of one sample: `[3, 32, 32]` (CHW) for CIFAR, `[1, 28, 28]` for
    /// IDX images, `[d]` for a CSV table. Its first entry is the channel count
    /// for images.
    pub shape: Vec<usize>,
    /// The splits, `train` first.
    pub splits: Vec<RawSplit>,
}

impl RawDataset {
    /// Number of features per sample (the product of `shape`).
    pub fn features_per_sample(&self) -> usize {
        self.shape.iter().product()
    }
}
