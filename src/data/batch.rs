//! Batch gathering: normalised f32 rows for a list of sample indices,
//! written into the caller's buffer straight from the mapped file.
//!
//! Normalisation uses the training-split statistics stored in the dataset
//! file. It is folded into one multiply-add per value, `x·scale + shift` with
//! `scale = 1/std` and `shift = −mean/std`, so the gather is a single pass
//! that the compiler vectorises. No full-dataset f32 copy is ever made.

use super::file::{FeatureView, SplitView, Stats};
use crate::team::{SharedMut, Team};
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// How one training image is moved before it is normalised (data
/// augmentation): mirrored left to right, then translated by `dx` columns
/// and `dy` rows (positive: right and down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augment {
    pub flip: bool,
    pub dx: i8,
    pub dy: i8,
}

impl Augment {
    /// True when the image is left as it is.
    pub fn is_identity(&self) -> bool {
        !self.flip && self.dx == 0 && self.dy == 0
    }
}

/// Image layout of a sample: `channels` planes of `height × width`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Geometry {
    /// From a sample shape `[C, H, W]` or `[H, W]`; `None` for flat samples
    /// (`[d]`), which have no rows to move.
    pub fn of_shape(shape: &[usize]) -> Option<Geometry> {
        match *shape {
            [channels, height, width] => Some(Geometry {
                channels,
                height,
                width,
            }),
            [height, width] => Some(Geometry {
                channels: 1,
                height,
                width,
            }),
            _ => None,
        }
    }
}

/// Values in a batch below which gathering stays on one thread: handing
/// rows to a second one costs about as much as normalising this many.
const PAR_GATHER_MIN: usize = 1 << 14;

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
    /// `labels`. With a team, a large batch is cut between its threads (the
    /// same bits as on one).
    ///
    /// Panics if an index is out of range, or `out`/`labels` are too short.
    pub fn gather(
        &self,
        split: &SplitView<'_>,
        indices: &[usize],
        out: &mut [f32],
        labels: &mut [u8],
        team: Option<&mut Team>,
    ) {
        self.gather_rows(split, indices, None, out, labels, team);
    }

    /// As [`Normalizer::gather`], with each sample moved as its
    /// [`Augment`] says (mirrored and/or translated) on the way: the images
    /// are `geometry.channels` planes of `height × width`. Pixels moved in
    /// from outside the image are raw zeros. Every value is normalised with
    /// the statistics of the position it lands in.
    ///
    /// Panics as `gather` does, if the geometry does not match the features,
    /// or if there are fewer augments than indices.
    #[allow(clippy::too_many_arguments)]
    pub fn gather_augmented(
        &self,
        split: &SplitView<'_>,
        indices: &[usize],
        augments: &[Augment],
        geometry: Geometry,
        out: &mut [f32],
        labels: &mut [u8],
        team: Option<&mut Team>,
    ) {
        self.gather_rows(
            split,
            indices,
            Some((augments, geometry)),
            out,
            labels,
            team,
        );
    }

    /// Each sample is read once: straight, or moved when it has an augment.
    fn gather_rows(
        &self,
        split: &SplitView<'_>,
        indices: &[usize],
        augments: Option<(&[Augment], Geometry)>,
        out: &mut [f32],
        labels: &mut [u8],
        team: Option<&mut Team>,
    ) {
        let d = self.dim();
        self.check_batch(split, indices.len(), augments, out, labels);
        // With a team, a batch large enough is cut into one run of rows per
        // thread: each row is computed the same way wherever it runs.
        let rows = indices.len();
        match team {
            Some(team) if d > 0 && rows * d >= PAR_GATHER_MIN => {
                let per = rows.div_ceil(team.threads());
                let parts = rows.div_ceil(per);
                let (out, labels) = (SharedMut::new(&mut out[..rows * d]), SharedMut::new(labels));
                team.run(parts, &|t| {
                    let r = t * per..rows.min((t + 1) * per);
                    let augments = augments.map(|(a, g)| (&a[r.clone()], g));
                    // SAFETY: the parts' row ranges are disjoint.
                    let (out, labels) =
                        unsafe { (out.piece(r.start * d..r.end * d), labels.piece(r.clone())) };
                    self.gather_part(split, &indices[r], augments, out, labels)
                });
            }
            _ => self.gather_part(split, indices, augments, out, labels),
        }
    }

    /// A gather of the samples `indices` of `split` (moved by their
    /// augments, if any) into `out` and `labels`, to be done a few rows at a
    /// time by whichever threads take it up ([`GatherJob::work`]): the
    /// training step hands the next batch's gather to the threads as they
    /// finish their part of the first layer's weight gradient.
    ///
    /// Panics as [`Normalizer::gather_augmented`] does.
    pub fn gather_job<'a>(
        &'a self,
        split: &'a SplitView<'a>,
        indices: &'a [usize],
        augments: Option<(&'a [Augment], Geometry)>,
        out: &'a mut [f32],
        labels: &'a mut [u8],
    ) -> GatherJob<'a> {
        let (d, rows) = (self.dim(), indices.len());
        self.check_batch(split, rows, augments, out, labels);
        GatherJob {
            norm: self,
            split,
            indices,
            augments,
            out: SharedMut::new(&mut out[..rows * d]),
            labels: SharedMut::new(&mut labels[..rows]),
            taken: AtomicUsize::new(0),
        }
    }

    /// Panics unless `split` has this map's features, `out` and `labels`
    /// hold `rows` samples, and the augments (if any) are one a sample of
    /// images with this many features.
    fn check_batch(
        &self,
        split: &SplitView<'_>,
        rows: usize,
        augments: Option<(&[Augment], Geometry)>,
        out: &[f32],
        labels: &[u8],
    ) {
        let d = self.dim();
        assert_eq!(
            split.dim, d,
            "normaliser built for {d} features, split has {}",
            split.dim
        );
        assert!(out.len() >= rows * d, "batch buffer too small");
        assert!(labels.len() >= rows, "label buffer too small");
        if let Some((a, g)) = augments {
            assert_eq!(
                g.channels * g.height * g.width,
                d,
                "image geometry {g:?} does not match {d} features"
            );
            assert!(a.len() >= rows, "one augment per sample");
        }
    }

    /// [`Normalizer::gather_rows`] on one run of rows, on this thread.
    fn gather_part(
        &self,
        split: &SplitView<'_>,
        indices: &[usize],
        augments: Option<(&[Augment], Geometry)>,
        out: &mut [f32],
        labels: &mut [u8],
    ) {
        let d = self.dim();
        let all_labels = split.labels();
        for &i in indices.iter().take(ROWS_AHEAD) {
            prefetch_sample(split.features(), i, d);
        }
        for (r, ((row, &i), label)) in out
            .chunks_exact_mut(d.max(1))
            .zip(indices)
            .zip(labels.iter_mut())
            .enumerate()
        {
            if let Some(&ahead) = indices.get(r + ROWS_AHEAD) {
                prefetch_sample(split.features(), ahead, d);
            }
            *label = all_labels[i];
            let moved = augments
                .map(|(a, g)| (a[r], g))
                .filter(|(a, _)| !a.is_identity());
            match (split.features(), moved) {
                (FeatureView::U8(v), None) => self.apply(row, &v[i * d..(i + 1) * d]),
                (FeatureView::F32(v), None) => self.apply(row, &v[i * d..(i + 1) * d]),
                (FeatureView::U8(v), Some((a, g))) => {
                    self.apply_moved(row, &v[i * d..(i + 1) * d], a, g)
                }
                (FeatureView::F32(v), Some((a, g))) => {
                    self.apply_moved(row, &v[i * d..(i + 1) * d], a, g)
                }
            }
        }
    }

    /// `row[c, y, x] = src[c, y − dy, x′]·scale + shift` with
    /// `x′ = x − dx`, or `width − 1 − (x − dx)` when mirrored; a source
    /// position outside the image reads as 0. Statistics are those of the
    /// destination position.
    fn apply_moved<T: Copy + Into<f32>>(
        &self,
        row: &mut [f32],
        src: &[T],
        a: Augment,
        g: Geometry,
    ) {
        let (h, w) = (g.height as isize, g.width as isize);
        for c in 0..g.channels as isize {
            for y in 0..h {
                let sy = y - a.dy as isize;
                for x in 0..w {
                    let dst = ((c * h + y) * w + x) as usize;
                    let sx = x - a.dx as isize;
                    let value = if (0..h).contains(&sy) && (0..w).contains(&sx) {
                        let sx = if a.flip { w - 1 - sx } else { sx };
                        src[((c * h + sy) * w + sx) as usize].into()
                    } else {
                        0.0
                    };
                    row[dst] = value * self.scale[dst] + self.shift[dst];
                }
            }
        }
    }

    /// `row = src·scale + shift`.
    #[inline]
    fn apply<T: Copy + Into<f32>>(&self, row: &mut [f32], src: &[T]) {
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::features().avx2 {
            // SAFETY: the CPU has AVX2 (checked at run time).
            return unsafe { affine_avx2(row, src, &self.scale, &self.shift) };
        }
        affine(row, src, &self.scale, &self.shift)
    }
}

/// A batch's gather shared out a few rows at a time
/// ([`Normalizer::gather_job`]): each call of [`GatherJob::work`] takes runs
/// of [`GatherJob::ROWS`] rows from a counter until none is left, so any
/// number of threads, joining at any time, gather every row exactly once,
/// each the same way it would be gathered alone.
pub struct GatherJob<'a> {
    norm: &'a Normalizer,
    split: &'a SplitView<'a>,
    indices: &'a [usize],
    augments: Option<(&'a [Augment], Geometry)>,
    out: SharedMut<'a, f32>,
    labels: SharedMut<'a, u8>,
    /// Rows handed out so far (may run past the end: then nothing is left).
    taken: AtomicUsize,
}

impl GatherJob<'_> {
    /// Rows a thread takes at a time: 8 samples of W1 are 96 KiB of
    /// output, a few microseconds; fewer would pass the counter's cache
    /// line between cores more often than it balances anything.
    pub const ROWS: usize = 8;

    /// Takes runs of rows and gathers them until every row is taken. The
    /// gather is complete once every thread's call has returned.
    pub fn work(&self) {
        let (d, rows) = (self.norm.dim(), self.indices.len());
        loop {
            let start = self.taken.fetch_add(Self::ROWS, Ordering::Relaxed);
            if start >= rows {
                return;
            }
            let r = start..rows.min(start + Self::ROWS);
            let augments = self.augments.map(|(a, g)| (&a[r.clone()], g));
            // SAFETY: the counter hands each run of rows out once, so no
            // two calls write the same rows or labels.
            let (out, labels) = unsafe {
                (
                    self.out.piece(r.start * d..r.end * d),
                    self.labels.piece(r.clone()),
                )
            };
            self.norm
                .gather_part(self.split, &self.indices[r], augments, out, labels);
        }
    }

    /// Gathers whatever rows no thread has taken yet, on the team's threads
    /// (or this one): for a step that had no product to hand the job to.
    pub fn finish(&self, team: Option<&mut Team>) {
        let left = self
            .indices
            .len()
            .saturating_sub(self.taken.load(Ordering::Relaxed));
        match team {
            Some(team) if left * self.norm.dim() >= PAR_GATHER_MIN => {
                team.run(team.threads(), &|_| self.work())
            }
            _ => self.work(),
        }
    }
}

/// [`affine`] compiled for AVX2: the default x86-64 target has only SSE2,
/// whose byte-to-float conversion takes several instructions per four
/// values. The same multiply and add, so the same bits.
///
/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn affine_avx2<T: Copy + Into<f32>>(
    row: &mut [f32],
    src: &[T],
    scale: &[f32],
    shift: &[f32],
) {
    affine(row, src, scale, shift)
}

/// `row = src·scale + shift`. All four slices are cut to one length first,
/// so the loop has no bounds checks and vectorises.
#[inline(always)]
fn affine<T: Copy + Into<f32>>(row: &mut [f32], src: &[T], scale: &[f32], shift: &[f32]) {
    let n = row.len();
    let (src, scale, shift) = (&src[..n], &scale[..n], &shift[..n]);
    for i in 0..n {
        // A plain multiply and add, not `mul_add`: without a compile-time
        // FMA target, `mul_add` is a slow library call, and a fused
        // multiply-add would round differently from the other paths.
        row[i] = src[i].into() * scale[i] + shift[i];
    }
}

/// How many samples ahead of the one it normalises
/// [`Normalizer::gather_part`] asks for. A batch's samples lie at random
/// places of a file larger than the caches; asked for early, each one's
/// lines arrive while the earlier ones are converted. Measured (`fastnn
/// bench train --workload w2 --threads 1 --phases`, Fashion-MNIST's 784
/// bytes a sample, three alternating runs): gather 0.081-0.093 ms a step
/// without, 0.050-0.057 with 4 ahead, 0.057-0.061 with 8.
const ROWS_AHEAD: usize = 4;

/// Asks for the cache lines of sample `i` (`d` features) of `features`.
fn prefetch_sample(features: FeatureView<'_>, i: usize, d: usize) {
    let (start, bytes) = match features {
        FeatureView::U8(v) => (v[i * d..].as_ptr(), d),
        FeatureView::F32(v) => (v[i * d..].as_ptr().cast::<u8>(), 4 * d),
    };
    for line in (0..bytes).step_by(64) {
        crate::gemm::prefetch(start.wrapping_add(line).cast());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 build of the normalising loop gives the same bits as the
    /// portable one, for byte and float samples of awkward lengths.
    #[test]
    fn affine_avx2_matches_the_portable_loop_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::features().avx2 {
            let mut rng = crate::rng::Rng::new(3);
            for n in [1, 7, 8, 33, 785, 3072] {
                let bytes: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
                let floats: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * 40.0).collect();
                let scale: Vec<f32> = (0..n).map(|_| 0.5 + rng.next_f64() as f32).collect();
                let shift: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
                let same =
                    |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                let (mut plain, mut wide) = (vec![0f32; n], vec![0f32; n]);
                affine(&mut plain, &bytes, &scale, &shift);
                // SAFETY: the CPU has AVX2 (checked above).
                unsafe { affine_avx2(&mut wide, &bytes, &scale, &shift) };
                assert!(same(&plain, &wide), "u8, n = {n}");
                affine(&mut plain, &floats, &scale, &shift);
                // SAFETY: as above.
                unsafe { affine_avx2(&mut wide, &floats, &scale, &shift) };
                assert!(same(&plain, &wide), "f32, n = {n}");
                assert!(plain.iter().any(|&v| v != 0.0), "the loops ran");
            }
            return;
        }
        crate::cpu::report_skipped("AVX2 normalising loop", "this CPU has no AVX2");
    }
}
