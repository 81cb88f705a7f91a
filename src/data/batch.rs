//! Batch gathering: normalised f32 rows for a list of sample indices,
//! written into the caller's buffer straight from the mapped file.
//!
//! Normalisation uses the training-split statistics stored in the dataset
//! file. It is folded into one multiply-add per value, `x·scale + shift` with
//! `scale = 1/std` and `shift = −mean/std`, so the gather is a single pass
//! that the compiler vectorises. No full-dataset f32 copy is ever made.

use super::file::{FeatureView, SplitView, Stats};

/// How input features are normalised before they enter the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// Per feature: `(x − mean_f) / std_f`. A feature that is constant on the
    /// training split carries no information and is mapped to 0.
    #[default]
    Feature,
    /// Per channel (R, G, B for CIFAR): `(x − mean_c) / std_c`.
    Channel,
    /// Raw values, in the units they are stored in (bytes 0–255 for images).
    None,
}

impl std::str::FromStr for Normalize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "feature" => Ok(Normalize::Feature),
            "channel" => Ok(Normalize::Channel),
            "none" => Ok(Normalize::None),
            _ => Err(format!(
                "unknown normalisation {s:?} (feature, channel or none)"
            )),
        }
    }
}

/// Per-feature affine map `x·scale + shift` that normalises one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalizer {
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl Normalizer {
    /// The map for `mode`, from training statistics of samples with `dim`
    /// features laid out as `stats.channel_mean.len()` channel planes.
    pub fn new(mode: Normalize, stats: &Stats, dim: usize) -> Normalizer {
        let affine = |mean: f32, std: f32| -> (f32, f32) {
            if std > 0.0 {
                (1.0 / std, -mean / std)
            } else {
                (0.0, 0.0)
            }
        };
        let (scale, shift) = match mode {
            Normalize::None => (vec![1.0; dim], vec![0.0; dim]),
            Normalize::Feature => (0..dim)
                .map(|f| affine(stats.feature_mean[f], stats.feature_std[f]))
                .unzip(),
            Normalize::Channel => {
                let channels = stats.channel_mean.len().max(1);
                let plane = dim / channels;
                (0..dim)
                    .map(|f| {
                        let c = (f / plane.max(1)).min(channels - 1);
                        affine(stats.channel_mean[c], stats.channel_std[c])
                    })
                    .unzip()
            }
        };
        Normalizer { scale, shift }
    }

    /// The map `x·scale + shift` given directly (as stored in a model file).
    ///
    /// Panics if the two vectors differ in length.
    pub fn from_affine(scale: Vec<f32>, shift: Vec<f32>) -> Normalizer {
        assert_eq!(scale.len(), shift.len(), "scale and shift lengths differ");
        Normalizer { scale, shift }
    }

    /// Per-feature factors.
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }

    /// Per-feature offsets.
    pub fn shift(&self) -> &[f32] {
        &self.shift
    }

    /// Features per sample.
    pub fn dim(&self) -> usize {
        self.scale.len()
    }

    /// Writes the normalised features of the samples `indices` of `split` as
    /// rows of `out` (row `r` at `out[r·dim ..]`), and their labels into
    /// `labels`.
    ///
    /// Panics if an index is out of range, or `out`/`labels` are too short.
    pub fn gather(
        &self,
        split: &SplitView<'_>,
        indices: &[usize],
        out: &mut [f32],
        labels: &mut [u8],
    ) {
        self.gather_rows(split, indices, None, out, labels);
    }

    /// As [`Normalizer::gather`], mirroring the samples whose `flip` flag
    /// is set left to right: each row of width `width` (the last dimension
    /// of the sample shape) is read backwards, then normalised with the
    /// statistics of the position it lands in.
    ///
    /// Panics as `gather` does, or if `width` does not divide the features.
    pub fn gather_flipped(
        &self,
        split: &SplitView<'_>,
        indices: &[usize],
        flip: &[bool],
        width: usize,
        out: &mut [f32],
        labels: &mut [u8],
    ) {
        let d = self.dim();
        assert!(
            width > 0 && d.is_multiple_of(width),
            "width {width} does not divide {d} features"
        );
        assert!(flip.len() >= indices.len(), "one flip flag per sample");
        self.gather_rows(split, indices, Some((flip, width)), out, labels);
    }

    /// Each sample is read once: straight, or mirrored when its flag says so.
    fn gather_rows(
        &self,
        split: &SplitView<'_>,
        indices: &[usize],
        flip: Option<(&[bool], usize)>,
        out: &mut [f32],
        labels: &mut [u8],
    ) {
        let d = self.dim();
        assert_eq!(
            split.dim, d,
            "normaliser built for {d} features, split has {}",
            split.dim
        );
        assert!(out.len() >= indices.len() * d, "batch buffer too small");
        assert!(labels.len() >= indices.len(), "label buffer too small");
        let all_labels = split.labels();
        for (r, ((row, &i), label)) in out
            .chunks_exact_mut(d.max(1))
            .zip(indices)
            .zip(labels.iter_mut())
            .enumerate()
        {
            *label = all_labels[i];
            let mirror = flip.filter(|(flags, _)| flags[r]).map(|(_, width)| width);
            match (split.features(), mirror) {
                (FeatureView::U8(v), None) => self.apply(row, &v[i * d..(i + 1) * d]),
                (FeatureView::F32(v), None) => self.apply(row, &v[i * d..(i + 1) * d]),
                (FeatureView::U8(v), Some(w)) => {
                    self.apply_mirrored(row, &v[i * d..(i + 1) * d], w)
                }
                (FeatureView::F32(v), Some(w)) => {
                    self.apply_mirrored(row, &v[i * d..(i + 1) * d], w)
                }
            }
        }
    }

    /// `row[line, w − 1 − col] = src[line, col]·scale + shift`, with the
    /// statistics of the destination position.
    fn apply_mirrored<T: Copy + Into<f32>>(&self, row: &mut [f32], src: &[T], width: usize) {
        for (f, &x) in src.iter().enumerate() {
            let dst = f - f % width + (width - 1 - f % width);
            row[dst] = x.into() * self.scale[dst] + self.shift[dst];
        }
    }

    /// `row = src·scale + shift`. All four slices are cut to one length
    /// first, so the loop has no bounds checks and vectorises.
    #[inline]
    fn apply<T: Copy + Into<f32>>(&self, row: &mut [f32], src: &[T]) {
        let n = row.len();
        let (src, scale, shift) = (&src[..n], &self.scale[..n], &self.shift[..n]);
        for i in 0..n {
            // A plain multiply and add, not `mul_add`: without a
            // compile-time FMA target, `mul_add` is a slow library call.
            row[i] = src[i].into() * scale[i] + shift[i];
        }
    }
}
