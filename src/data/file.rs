//! The dataset file: a safetensors file whose tensors start 64-byte aligned.
//!
//! ```text
//! [u64 LE header length N][N bytes of JSON, padded with spaces][data section]
//! ```
//!
//! The JSON maps each tensor name to `{dtype, shape, data_offsets}` (offsets
//! relative to the data section) and carries string metadata under
//! `__metadata__`. A dataset file holds, for each split `s` (`train`, `test`):
//!
//! | tensor | dtype | shape |
//! | --- | --- | --- |
//! | `s.images` | U8 (F32 for CSV tables) | `[n, d]`, rows as in the source |
//! | `s.labels` | U8 | `[n]` |
//! | `s.coarse_labels` | U8 | `[n]` (CIFAR-100 only: the other label set) |
//!
//! and the normalisation statistics of the **training split only**:
//! `stats.feature_mean`, `stats.feature_std` (F32 `[d]`) and
//! `stats.channel_mean`, `stats.channel_std` (F32 `[c]`), in the units the
//! features are stored in (bytes 0–255 for images).
//!
//! Every tensor starts 64-byte aligned ([`crate::tensorfile`] says how).
//! numpy and PyTorch users open the file with `safetensors.numpy.load_file`
//! or `safetensors.torch.load_file`.
//!
//! The metadata records the format version, the source files and their md5,
//! the class names, the sample shape and a CRC-32 of the data section, which
//! [`Dataset::open`] checks, so a file corrupted after conversion is caught.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::{json, Value};

use super::error::{DataError, Result};
use super::{Features, RawDataset};
use crate::tensorfile::{self, cast_f32, Dtype, TensorInfo, TensorOut};

pub use crate::tensorfile::TENSOR_ALIGN;

/// Value of the `fastnn.format` metadata key of a dataset file.
pub const FORMAT_NAME: &str = "dataset";
/// Version of the dataset file layout written by this code.
pub const FORMAT_VERSION: u32 = 1;

/// Where a dataset came from, recorded in its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceInfo {
    /// The file or folder that was converted (its name, not a full path).
    pub name: String,
    /// `(file name, md5 hex)` of every source file read.
    pub files: Vec<(String, String)>,
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub feature_mean: Vec<f32>,
    pub feature_std: Vec<f32>,
    pub channel_mean: Vec<f32>,
    pub channel_std: Vec<f32>,
}

impl Stats {
    /// Statistics of `n` rows of `d` features laid out as `channels` planes
    /// (d = channels · plane size).
    pub fn compute(features: &Features, d: usize, channels: usize) -> Stats {
        Stats::compute_view(features.view(), d, channels)
    }

    /// [`Stats::compute`] over a zero-copy view of the features.
    pub fn compute_view(features: FeatureView<'_>, d: usize, channels: usize) -> Stats {
        let n = features.len().checked_div(d).unwrap_or(0);
        let mut sum = vec![0f64; d];
        let mut sum_sq = vec![0f64; d];
        let mut add_row = |row: &mut dyn Iterator<Item = f64>| {
            for ((s, q), x) in sum.iter_mut().zip(sum_sq.iter_mut()).zip(row) {
                *s += x;
                *q += x * x;
            }
        };
        match features {
            FeatureView::U8(v) => v
                .chunks_exact(d.max(1))
                .for_each(|r| add_row(&mut r.iter().map(|&x| x as f64))),
            FeatureView::F32(v) => v
                .chunks_exact(d.max(1))
                .for_each(|r| add_row(&mut r.iter().map(|&x| x as f64))),
        }
        let moments = |s: f64, q: f64, count: f64| -> (f32, f32) {
            if count == 0.0 {
                return (0.0, 0.0);
            }
            let mean = s / count;
            let var = (q / count - mean * mean).max(0.0);
            (mean as f32, var.sqrt() as f32)
        };
        let (feature_mean, feature_std) = sum
            .iter()
            .zip(&sum_sq)
            .map(|(&s, &q)| moments(s, q, n as f64))
            .unzip();
        let plane = d.checked_div(channels).unwrap_or(0);
        let (channel_mean, channel_std) = (0..channels)
            .map(|c| {
                let r = c * plane..(c + 1) * plane;
                let s: f64 = sum[r.clone()].iter().sum();
                let q: f64 = sum_sq[r].iter().sum();
                moments(s, q, (n * plane) as f64)
            })
            .unzip();
        Stats {
            feature_mean,
            feature_std,
            channel_mean,
            channel_std,
        }
    }
}

/// Number of channels of a sample shape: the first entry for images
/// (`[c, h, w]`), 1 for a flat feature vector.
fn channel_count(shape: &[usize]) -> usize {
    if shape.len() == 3 {
        shape[0]
    } else {
        1
    }
}

/// Refuses to replace an existing `out` unless `overwrite` is set: checked
/// before any work, so a conversion that would be refused reads nothing.
pub(crate) fn refuse_existing(out: &Path, overwrite: bool) -> Result<()> {
    if !overwrite && out.exists() {
        return Err(DataError::new(
            out,
            "already exists (use --force to overwrite it)",
        ));
    }
    Ok(())
}

/// Writes `raw` as a dataset file at `out`, atomically: the bytes go to a
/// temporary file beside `out`, which is renamed only once complete, so an
/// interrupted or failed conversion leaves nothing behind. An existing `out`
/// is refused unless `overwrite` is set.
pub fn write_dataset(
    raw: &RawDataset,
    source: &SourceInfo,
    out: &Path,
    overwrite: bool,
) -> Result<()> {
    refuse_existing(out, overwrite)?;
    let d = raw.features_per_sample();
    let train = raw
        .splits
        .iter()
        .find(|s| s.name == "train")
        .ok_or_else(|| DataError::new(out, "the dataset has no train split"))?;
    let channels = channel_count(&raw.shape);
    let stats = Stats::compute(&train.features, d, channels);

    let mut tensors = Vec::new();
    for split in &raw.splits {
        let n = split.len();
        if split.features.len() != n * d {
            return Err(DataError::new(
                out,
                format!(
                    "split {}: {} feature values for {n} samples of {d} features",
                    split.name,
                    split.features.len()
                ),
            ));
        }
        let images = format!("{}.images", split.name);
        tensors.push(match &split.features {
            Features::U8(v) => TensorOut::u8(images, vec![n, d], v),
            Features::F32(v) => TensorOut::f32(images, vec![n, d], v),
        });
        tensors.push(TensorOut::u8(
            format!("{}.labels", split.name),
            vec![n],
            &split.labels,
        ));
        if let Some(coarse) = &split.coarse_labels {
            tensors.push(TensorOut::u8(
                format!("{}.coarse_labels", split.name),
                vec![n],
                coarse,
            ));
        }
    }
    for (name, values, len) in [
        ("stats.feature_mean", &stats.feature_mean, d),
        ("stats.feature_std", &stats.feature_std, d),
        ("stats.channel_mean", &stats.channel_mean, channels),
        ("stats.channel_std", &stats.channel_std, channels),
    ] {
        tensors.push(TensorOut::f32(name, vec![len], values));
    }
    let tensors = tensorfile::with_padding(tensors);
    let metadata = dataset_metadata(raw, source, tensorfile::data_crc(&tensors));
    tensorfile::write_atomic(out, &tensors, &metadata, overwrite)
}

fn dataset_metadata(raw: &RawDataset, source: &SourceInfo, crc: u32) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    put("fastnn.format", FORMAT_NAME.to_string());
    put("fastnn.version", FORMAT_VERSION.to_string());
    put("source", source.name.clone());
    put("source_format", raw.format.clone());
    let files: serde_json::Map<String, Value> = source
        .files
        .iter()
        .map(|(name, md5)| (name.clone(), Value::String(md5.clone())))
        .collect();
    put("source_md5", Value::Object(files).to_string());
    put("classes", json!(raw.classes).to_string());
    if let Some(coarse) = &raw.coarse_classes {
        put("coarse_classes", json!(coarse).to_string());
    }
    let shape: Vec<String> = raw.shape.iter().map(|x| x.to_string()).collect();
    put("shape", shape.join(","));
    put(
        "layout",
        if raw.shape.len() == 3 { "CHW" } else { "flat" }.to_string(),
    );
    let splits: Vec<&str> = raw.splits.iter().map(|s| s.name.as_str()).collect();
    put("splits", splits.join(","));
    put("data_crc32", format!("{crc:08x}"));
    m
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Zero-copy view of a split's features.
#[derive(Debug, Clone, Copy)]
pub enum FeatureView<'a> {
    U8(&'a [u8]),
    F32(&'a [f32]),
}

impl FeatureView<'_> {
    /// Number of values (samples · features).
    pub fn len(&self) -> usize {
        match self {
            FeatureView::U8(v) => v.len(),
            FeatureView::F32(v) => v.len(),
        }
    }

    /// True when the view holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Zero-copy view of `len` consecutive samples of one split.
#[derive(Debug, Clone, Copy)]
pub struct SplitView<'a> {
    /// Name of the split the samples come from.
    pub name: &'a str,
    /// Features per sample.
    pub dim: usize,
    features: FeatureView<'a>,
    labels: &'a [u8],
    coarse_labels: Option<&'a [u8]>,
}

impl<'a> SplitView<'a> {
    /// A view of `labels.len()` samples of `dim` features each, for samples
    /// that do not come from a [`Dataset`] (inference on caller's arrays).
    ///
    /// Panics if `features` does not hold `labels.len() · dim` values.
    pub fn new(name: &'a str, dim: usize, features: FeatureView<'a>, labels: &'a [u8]) -> Self {
        assert_eq!(
            Some(features.len()),
            labels.len().checked_mul(dim),
            "{} feature values for {} samples of {dim} features",
            features.len(),
            labels.len()
        );
        SplitView {
            name,
            dim,
            features,
            labels,
            coarse_labels: None,
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the view holds no sample.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `[len, dim]` features, row-major.
    pub fn features(&self) -> FeatureView<'a> {
        self.features
    }

    /// `[len]` class indices.
    pub fn labels(&self) -> &'a [u8] {
        self.labels
    }

    /// `[len]` CIFAR-100 second label set, if the file has one.
    pub fn coarse_labels(&self) -> Option<&'a [u8]> {
        self.coarse_labels
    }

    /// The samples `range` of this view (no copy).
    ///
    /// Panics if `range` is out of bounds.
    pub fn slice(&self, range: Range<usize>) -> SplitView<'a> {
        let feats = range.start * self.dim..range.end * self.dim;
        SplitView {
            name: self.name,
            dim: self.dim,
            features: match self.features {
                FeatureView::U8(v) => FeatureView::U8(&v[feats]),
                FeatureView::F32(v) => FeatureView::F32(&v[feats]),
            },
            labels: &self.labels[range.clone()],
            coarse_labels: self.coarse_labels.map(|c| &c[range]),
        }
    }

    /// Splits off the last `count` samples as a validation set:
    /// `(first len − count, last count)`. No data is copied or rewritten.
    pub fn split_validation(&self, count: usize) -> (SplitView<'a>, SplitView<'a>) {
        let count = count.min(self.len());
        let cut = self.len() - count;
        (self.slice(0..cut), self.slice(cut..self.len()))
    }
}

/// How many training samples to hold out for validation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Holdout {
    /// This many samples, taken from the end of the training split.
    Count(usize),
    /// This fraction (in [0, 1)) of the training split, rounded down.
    Fraction(f64),
}

impl Holdout {
    /// Number of samples held out of `n`.
    pub fn count_of(self, n: usize) -> usize {
        match self {
            Holdout::Count(c) => c.min(n),
            Holdout::Fraction(f) => ((n as f64) * f.clamp(0.0, 1.0)).floor() as usize,
        }
    }
}

/// Features a caller keeps in memory and lends to a [`Dataset`] (see
/// [`Dataset::from_memory`]): owned vectors ([`Features`]), or an array of
/// another runtime kept alive by the implementor for as long as the dataset
/// lives, so that its values are read in place.
pub trait FeatureSource: Send + Sync {
    /// The `[n, d]` features, row-major.
    fn view(&self) -> FeatureView<'_>;
}

impl FeatureSource for Features {
    fn view(&self) -> FeatureView<'_> {
        Features::view(self)
    }
}

/// One split of a dataset held in memory.
pub struct MemorySplit {
    /// `"train"` or `"test"`.
    pub name: String,
    /// `[n, d]` features, row-major.
    pub features: Box<dyn FeatureSource>,
    /// `[n]` class indices.
    pub labels: Vec<u8>,
}

/// Where the samples of a [`Dataset`] live.
enum Storage {
    /// A dataset file, mapped.
    File(FileStorage),
    /// Splits held in memory, with the training statistics.
    Memory {
        splits: Vec<MemorySplit>,
        stats: Stats,
    },
}

struct FileStorage {
    map: Mmap,
    /// Offset of the data section (what the CRC covers).
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
}

/// A dataset, fully validated: a dataset file mapped into memory
/// ([`Dataset::open`]), or samples held in memory ([`Dataset::from_memory`]).
/// Either way, splits are handed out as zero-copy views.
pub struct Dataset {
    path: PathBuf,
    storage: Storage,
    metadata: BTreeMap<String, String>,
    classes: Vec<String>,
    coarse_classes: Option<Vec<String>>,
    shape: Vec<usize>,
    splits: Vec<String>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("path", &self.path)
            .field("shape", &self.shape)
            .field("splits", &self.splits)
            .finish_non_exhaustive()
    }
}

impl Dataset {
    /// Maps `path` and validates it completely: the safetensors header, every
    /// tensor's dtype, shape, offsets and 64-byte alignment, the file length
    /// (so a truncated file is an error here, never a SIGBUS later), the
    /// labels against the class count, and the CRC-32 of the data section.
    ///
    /// The file must not be modified while the `Dataset` is alive: like every
    /// memory map, a concurrent truncation by another process would fault.
    pub fn open(path: impl AsRef<Path>) -> Result<Dataset> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| DataError::io(path, "cannot open", e))?;
        // SAFETY: the map is read-only and lives as long as the Dataset; its
        // length is the file length just read, and every access below is
        // bounds-checked against `map.len()`. The remaining hazard, another
        // process truncating the file while it is mapped, is documented on
        // this function (as ripgrep documents `MmapChoice::auto`).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, "cannot map", e))?;
        let mut ds = Dataset {
            path: path.to_path_buf(),
            storage: Storage::File(FileStorage {
                map,
                data_start: 0,
                tensors: BTreeMap::new(),
            }),
            metadata: BTreeMap::new(),
            classes: Vec::new(),
            coarse_classes: None,
            shape: Vec::new(),
            splits: Vec::new(),
        };
        ds.parse_header()?;
        ds.check_metadata()?;
        ds.check_tensors()?;
        ds.check_crc()?;
        Ok(ds)
    }

    /// A dataset over samples held in memory, checked as a file is: the
    /// classes (1 to 256), the sample `shape`, a `train` split, each split's
    /// feature count against its labels, and the labels against the classes.
    /// Nothing is copied: each split's features are read in place for as
    /// long as the dataset lives. The normalisation statistics are `stats`
    /// when given (a model trained further on new samples keeps the
    /// statistics it started with), else those of the `train` split,
    /// computed exactly as [`write_dataset`] computes them, so a dataset in
    /// memory and the file written from the same samples train alike.
    pub fn from_memory(
        shape: Vec<usize>,
        classes: Vec<String>,
        splits: Vec<MemorySplit>,
        stats: Option<Stats>,
    ) -> Result<Dataset> {
        let path = PathBuf::from("(samples in memory)");
        let err = |problem: String| DataError::new(&path, problem);
        let Some(d) = shape.iter().try_fold(1usize, |acc, &x| acc.checked_mul(x)) else {
            return Err(err(format!(
                "sample shape {shape:?} has more features than memory can address"
            )));
        };
        if classes.is_empty() || classes.len() > 256 {
            return Err(err(format!("{} classes: expected 1 to 256", classes.len())));
        }
        for (i, s) in splits.iter().enumerate() {
            if splits[..i].iter().any(|t| t.name == s.name) {
                return Err(err(format!("two splits are named {:?}", s.name)));
            }
            let values = s.features.view().len();
            if Some(values) != s.labels.len().checked_mul(d) {
                return Err(err(format!(
                    "split {}: {values} feature values for {} labels of samples with {d} features",
                    s.name,
                    s.labels.len()
                )));
            }
            if let Some((i, &bad)) = s
                .labels
                .iter()
                .enumerate()
                .find(|(_, &l)| l as usize >= classes.len())
            {
                return Err(err(format!(
                    "{}.labels[{i}] = {bad} is out of range for {} classes",
                    s.name,
                    classes.len()
                )));
            }
        }
        let Some(train) = splits.iter().find(|s| s.name == "train") else {
            return Err(err("there is no train split".into()));
        };
        let channels = channel_count(&shape);
        let stats = match stats {
            None => Stats::compute_view(train.features.view(), d, channels),
            Some(s) => {
                let lengths = [
                    s.feature_mean.len(),
                    s.feature_std.len(),
                    s.channel_mean.len(),
                    s.channel_std.len(),
                ];
                if lengths != [d, d, channels, channels] {
                    return Err(err(format!(
                        "statistics of lengths {lengths:?} for samples of shape {shape:?} (expected [{d}, {d}, {channels}, {channels}])"
                    )));
                }
                s
            }
        };
        let names: Vec<String> = splits.iter().map(|s| s.name.clone()).collect();
        let mut metadata = BTreeMap::new();
        metadata.insert("fastnn.format".into(), FORMAT_NAME.into());
        metadata.insert("fastnn.version".into(), FORMAT_VERSION.to_string());
        metadata.insert("classes".into(), json!(classes).to_string());
        let dims: Vec<String> = shape.iter().map(|x| x.to_string()).collect();
        metadata.insert("shape".into(), dims.join(","));
        metadata.insert("splits".into(), names.join(","));
        Ok(Dataset {
            path,
            storage: Storage::Memory { splits, stats },
            metadata,
            classes,
            coarse_classes: None,
            shape,
            splits: names,
        })
    }

    fn err(&self, problem: impl Into<String>) -> DataError {
        DataError::new(&self.path, problem)
    }

    /// The mapped file; only the checks of [`Dataset::open`] ask for it.
    fn file(&self) -> &FileStorage {
        match &self.storage {
            Storage::File(f) => f,
            Storage::Memory { .. } => unreachable!("a dataset in memory has no file to check"),
        }
    }

    fn parse_header(&mut self) -> Result<()> {
        let header = tensorfile::parse(&self.file().map).map_err(|p| self.err(p))?;
        self.metadata = header.metadata;
        if let Storage::File(f) = &mut self.storage {
            f.tensors = header.tensors;
            f.data_start = header.data_start;
        }
        Ok(())
    }

    fn check_metadata(&mut self) -> Result<()> {
        let get = |k: &str| -> Result<&String> {
            self.metadata
                .get(k)
                .ok_or_else(|| self.err(format!("not a fastnn dataset file: metadata has no {k}")))
        };
        if get("fastnn.format")? != FORMAT_NAME {
            return Err(self.err(format!(
                "not a dataset file: fastnn.format is {:?}",
                self.metadata["fastnn.format"]
            )));
        }
        let version = get("fastnn.version")?;
        if version != &FORMAT_VERSION.to_string() {
            return Err(self.err(format!(
                "dataset format version {version} is not supported (this fastnn reads version {FORMAT_VERSION}); convert the source again"
            )));
        }
        let classes: Vec<String> = serde_json::from_str(get("classes")?)
            .map_err(|e| self.err(format!("metadata classes is not a JSON list of names: {e}")))?;
        let coarse = match self.metadata.get("coarse_classes") {
            Some(s) => Some(serde_json::from_str::<Vec<String>>(s).map_err(|e| {
                self.err(format!("metadata coarse_classes is not a JSON list: {e}"))
            })?),
            None => None,
        };
        let shape: std::result::Result<Vec<usize>, _> = get("shape")?
            .split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect();
        let shape = shape.map_err(|_| {
            self.err(format!(
                "metadata shape {:?} is not a list of sizes",
                self.metadata["shape"]
            ))
        })?;
        let splits: Vec<String> = get("splits")?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if shape
            .iter()
            .try_fold(1usize, |acc, &x| acc.checked_mul(x))
            .is_none()
        {
            return Err(self.err(format!(
                "metadata shape {:?} has more features per sample than memory can address",
                self.metadata["shape"]
            )));
        }
        if classes.is_empty() || classes.len() > 256 {
            return Err(self.err(format!("{} classes: expected 1 to 256", classes.len())));
        }
        if !splits.iter().any(|s| s == "train") {
            return Err(self.err("the file has no train split"));
        }
        self.classes = classes;
        self.coarse_classes = coarse;
        self.shape = shape;
        self.splits = splits;
        Ok(())
    }

    fn check_tensors(&self) -> Result<()> {
        let file = self.file();
        let d: usize = self.shape.iter().product();
        let c = channel_count(&self.shape);
        for split in &self.splits {
            let images = self.tensor(&format!("{split}.images"))?;
            if images.shape.len() != 2 || images.shape[1] != d {
                return Err(self.err(format!(
                    "{split}.images has shape {:?}, expected [n, {d}] for samples of shape {:?}",
                    images.shape, self.shape
                )));
            }
            if images.dtype == Dtype::I64 {
                return Err(self.err(format!("{split}.images is I64, expected U8 or F32")));
            }
            if images.bytes.start % TENSOR_ALIGN != 0 {
                return Err(self.err(format!("{split}.images is not {TENSOR_ALIGN}-byte aligned")));
            }
            let n = images.shape[0];
            for (labels_name, count) in [
                ("labels", Some(self.classes.len())),
                ("coarse_labels", None),
            ] {
                let name = format!("{split}.{labels_name}");
                let Some(labels) = file.tensors.get(&name) else {
                    if labels_name == "labels" {
                        return Err(self.err(format!("missing tensor {name}")));
                    }
                    continue;
                };
                if labels.dtype != Dtype::U8 || labels.shape != [n] {
                    return Err(self.err(format!(
                        "{name} is {:?} {:?}, expected U8 [{n}] to match {split}.images",
                        labels.dtype, labels.shape
                    )));
                }
                let limit = count
                    .or(self.coarse_classes.as_ref().map(Vec::len))
                    .unwrap_or(256);
                if let Some((i, &bad)) = file.map[labels.bytes.clone()]
                    .iter()
                    .enumerate()
                    .find(|(_, &l)| l as usize >= limit)
                {
                    return Err(self.err(format!(
                        "{name}[{i}] = {bad} is out of range for {limit} classes"
                    )));
                }
            }
        }
        for (name, len) in [
            ("stats.feature_mean", d),
            ("stats.feature_std", d),
            ("stats.channel_mean", c),
            ("stats.channel_std", c),
        ] {
            let t = self.tensor(name)?;
            if t.bytes.start % 4 != 0 {
                return Err(self.err(format!("{name} is not 4-byte aligned")));
            }
            if t.dtype != Dtype::F32 || t.shape != [len] {
                return Err(self.err(format!(
                    "{name} is {:?} {:?}, expected F32 [{len}]",
                    t.dtype, t.shape
                )));
            }
        }
        Ok(())
    }

    fn check_crc(&self) -> Result<()> {
        let Some(expected) = self.metadata.get("data_crc32") else {
            return Err(self.err("metadata has no data_crc32"));
        };
        let file = self.file();
        let actual = format!("{:08x}", crc32fast::hash(&file.map[file.data_start..]));
        if &actual != expected {
            return Err(self.err(format!(
                "corrupted: the data checksum is {actual}, the header recorded {expected}; convert the source again"
            )));
        }
        Ok(())
    }

    fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.file()
            .tensors
            .get(name)
            .ok_or_else(|| self.err(format!("missing tensor {name}")))
    }

    /// The path the dataset was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata strings of the file.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Class names, in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Names of the second label set (CIFAR-100), if any.
    pub fn coarse_classes(&self) -> Option<&[String]> {
        self.coarse_classes.as_deref()
    }

    /// Shape of one sample (`[3, 32, 32]`, `[1, 28, 28]`, `[d]`).
    pub fn sample_shape(&self) -> &[usize] {
        &self.shape
    }

    /// Features per sample.
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }

    /// Names of the splits in the file, `train` first.
    pub fn split_names(&self) -> &[String] {
        &self.splits
    }

    /// Zero-copy view of the split `name`.
    pub fn split(&self, name: &str) -> Result<SplitView<'_>> {
        let Some(split) = self.splits.iter().find(|s| *s == name) else {
            return Err(self.err(format!(
                "has no split {name:?} (it has: {})",
                self.splits.join(", ")
            )));
        };
        let (features, labels, coarse_labels) = match &self.storage {
            Storage::File(file) => {
                let images = &file.tensors[&format!("{name}.images")];
                let bytes = &file.map[images.bytes.clone()];
                let features = match images.dtype {
                    Dtype::U8 => FeatureView::U8(bytes),
                    Dtype::F32 => FeatureView::F32(cast_f32(bytes)),
                    Dtype::I64 => unreachable!("refused when the file was opened"),
                };
                let labels = &file.map[file.tensors[&format!("{name}.labels")].bytes.clone()];
                let coarse_labels = file
                    .tensors
                    .get(&format!("{name}.coarse_labels"))
                    .map(|t| &file.map[t.bytes.clone()]);
                (features, labels, coarse_labels)
            }
            Storage::Memory { splits, .. } => {
                let s = splits.iter().find(|s| s.name == *name).expect("checked");
                (s.features.view(), &s.labels[..], None)
            }
        };
        Ok(SplitView {
            name: split,
            dim: self.dim(),
            features,
            labels,
            coarse_labels,
        })
    }

    /// The training split cut into `(train, validation)`: the validation set
    /// is the last `holdout` samples (the classic "first 45,000 train, last
    /// 5,000 validation" of CIFAR-10). Nothing is copied.
    pub fn train_validation(&self, holdout: Holdout) -> Result<(SplitView<'_>, SplitView<'_>)> {
        let train = self.split("train")?;
        let count = holdout.count_of(train.len());
        if count >= train.len() && !train.is_empty() {
            return Err(self.err(format!(
                "a validation set of {count} leaves no training sample out of {}",
                train.len()
            )));
        }
        Ok(train.split_validation(count))
    }

    /// Training-split statistics, in the units the features are stored in.
    pub fn stats(&self) -> Stats {
        match &self.storage {
            Storage::File(file) => {
                let f32_tensor = |name: &str| {
                    let t = &file.tensors[name];
                    cast_f32(&file.map[t.bytes.clone()]).to_vec()
                };
                Stats {
                    feature_mean: f32_tensor("stats.feature_mean"),
                    feature_std: f32_tensor("stats.feature_std"),
                    channel_mean: f32_tensor("stats.channel_mean"),
                    channel_std: f32_tensor("stats.channel_std"),
                }
            }
            Storage::Memory { stats, .. } => stats.clone(),
        }
    }
}
