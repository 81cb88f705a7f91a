//! BatchNorm and LayerNorm on a layer's output, fused with the affine
//! scale and shift and the activation: what sits between a hidden layer's
//! product and the next one.
//!
//! ```text
//! forward  z ─ x̂ = (z − μ)·inv_std ─ y = γ·x̂ + β ─ h = act(y)    one pass after the statistics
//! backward dy ─ dγ = Σ_batch dy·x̂, dβ = Σ_batch dy               one pass for both reductions
//!             ─ dz = inv_std·(γ·dy − mean(γ·dy) − x̂·mean(γ·dy·x̂))  means over the batch (BatchNorm)
//!                                                               or over the units (LayerNorm)
//! ```
//!
//! BatchNorm's statistics are per unit (a column of the row-major `[B, O]`
//! matrices), LayerNorm's per sample (a row). Each kernel splits its work
//! across the team along the dimension its statistics run over, never
//! inside a sum, and every sum runs in a fixed order: the bits do not
//! depend on the thread count. `z` is overwritten by `x̂` (the backward
//! pass needs it) and `dy` by `dz`, in place. Nothing allocates.
//!
//! The f64 reference of both layers is in [`crate::reference`].

use std::ops::Range;

use crate::gemm::Activation;
use crate::model::NORM_EPS;
use crate::team::{SharedMut, Team};

/// Columns of one part are a multiple of this (one cache line of f32).
const COLUMN_ALIGN: usize = 16;
/// Below this many elements a kernel runs on the calling thread alone: the
/// hand-off would cost more than the work.
const PARALLEL_MIN: usize = 16 * 1024;

/// Runs `f` on consecutive pieces of `0..n` (multiples of `align` but the
/// last), one per thread of the team when the work (`n·per_item` elements)
/// is worth splitting.
fn split(
    team: Option<&mut Team>,
    n: usize,
    align: usize,
    per_item: usize,
    f: &(dyn Fn(Range<usize>) + Sync),
) {
    let threads = team.as_ref().map_or(1, |t| t.threads());
    let per = piece_len(threads, n, align, per_item);
    match team {
        Some(team) if per < n => team.run(n.div_ceil(per), &|t| f(t * per..n.min((t + 1) * per))),
        _ => f(0..n),
    }
}

/// The length of each piece [`split`] cuts `0..n` into on `threads`
/// threads (`n`: one piece).
fn piece_len(threads: usize, n: usize, align: usize, per_item: usize) -> usize {
    if threads < 2 || n * per_item < PARALLEL_MIN {
        return n;
    }
    n.div_ceil(align).div_ceil(threads) * align
}

/// Row `i`'s elements in `cols` of a row-major matrix with `o` columns.
///
/// # Safety
/// No other piece in use overlaps it (each part of a split owns its
/// columns or its rows).
#[allow(clippy::mut_from_ref)]
unsafe fn row<'a>(
    m: &SharedMut<'a, f32>,
    i: usize,
    o: usize,
    cols: &Range<usize>,
) -> &'a mut [f32] {
    m.piece(i * o + cols.start..i * o + cols.end)
}

/// Partial sums kept side by side by the row reductions: wide enough for
/// any vector unit, and a fixed order of additions whatever its width.
const LANES: usize = 16;

/// `Σ f(x_j)` over a row in a fixed order: [`LANES`] interleaved partial
/// sums, then those in order (vectorisable, and the same bits on every CPU).
#[inline(always)]
fn row_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    for chunk in x.chunks(LANES) {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    acc.iter().sum()
}

/// `1/√(var + eps)` as both layers compute it.
#[inline(always)]
fn inv_std(var: f32) -> f32 {
    1.0 / (var + NORM_EPS as f32).sqrt()
}

/// Runs `body` compiled for AVX2 where the CPU has it (the default x86-64
/// target has only SSE2): the same operations in the same order, so the
/// same bits.
#[inline(always)]
fn simd<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx2 && !portable_forced() {
        // SAFETY: the CPU has AVX2 (checked at run time).
        return unsafe { with_avx2(body) };
    }
    body()
}

/// Whether a test asked this thread for the portable build (never outside
/// the tests).
#[cfg(not(test))]
#[inline(always)]
fn portable_forced() -> bool {
    false
}

#[cfg(test)]
fn portable_forced() -> bool {
    tests::PORTABLE.with(std::cell::Cell::get)
}

/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// Calls `$body` with `$f` bound to the activation as a closure whose
/// choice is made here, once, so that the loops inside inline it.
macro_rules! with_activation {
    ($act:expr, |$f:ident| $body:expr) => {
        match $act {
            Activation::Identity => {
                let $f = |y: f32| y;
                $body
            }
            Activation::Relu => {
                let $f = |y: f32| Activation::Relu.apply(y);
                $body
            }
            Activation::LeakyRelu(slope) => {
                let $f = move |y: f32| Activation::LeakyRelu(slope).apply(y);
                $body
            }
            Activation::Tanh => {
                let $f = |y: f32| Activation::Tanh.apply(y);
                $body
            }
            Activation::Sigmoid => {
                let $f = |y: f32| Activation::Sigmoid.apply(y);
                $body
            }
        }
    };
}

/// `x̂ = (z − μ)·inv_std` into `z`, `h = act(γ·x̂ + β)`: one row, with the
/// statistics per unit (BatchNorm) or broadcast (LayerNorm, where `mean`
/// and `inv` repeat one value).
#[inline(always)]
fn normalise_row(
    z: &mut [f32],
    h: &mut [f32],
    mean: impl Fn(usize) -> f32,
    inv: impl Fn(usize) -> f32,
    gamma: &[f32],
    beta: &[f32],
    act: impl Fn(f32) -> f32,
) {
    for (j, (((z, h), &g), &b)) in z
        .iter_mut()
        .zip(h.iter_mut())
        .zip(gamma)
        .zip(beta)
        .enumerate()
    {
        let xhat = (*z - mean(j)) * inv(j);
        *z = xhat;
        *h = act(g * xhat + b);
    }
}

/// The statistics a training pass of BatchNorm measured, per unit.
pub struct BatchStats<'a> {
    /// Batch mean and biased variance (for the running statistics).
    pub mean: &'a mut [f32],
    pub var: &'a mut [f32],
    /// `1/√(var + eps)`, kept for the backward pass.
    pub inv_std: &'a mut [f32],
}

/// BatchNorm in training: per unit `j`, the batch mean and biased variance
/// of `z[.., j]`, then `x̂ = (z − μ)·inv_std` (into `z`) and `h = act(γ·x̂ +
/// β)`.
// z: (B, O) → x̂, h: (B, O), stats: (O) each, gamma, beta: (O)
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    z: &mut [f32],
    h: &mut [f32],
    stats: BatchStats<'_>,
    gamma: &[f32],
    beta: &[f32],
    act: Activation,
    batch: usize,
    o: usize,
    team: Option<&mut Team>,
) {
    let (zs, hs) = (
        SharedMut::new(&mut z[..batch * o]),
        SharedMut::new(&mut h[..batch * o]),
    );
    let (means, vars, invs) = (
        SharedMut::new(stats.mean),
        SharedMut::new(stats.var),
        SharedMut::new(stats.inv_std),
    );
    let inv_b = 1.0 / batch as f32;
    split(team, o, COLUMN_ALIGN, batch, &|cols| {
        // SAFETY: this part alone touches the columns `cols`.
        let (mean, var, inv) = unsafe {
            (
                means.piece(cols.clone()),
                vars.piece(cols.clone()),
                invs.piece(cols.clone()),
            )
        };
        let (g, b) = (&gamma[cols.clone()], &beta[cols.clone()]);
        simd(|| {
            mean.fill(0.0);
            for i in 0..batch {
                let z = unsafe { row(&zs, i, o, &cols) };
                mean.iter_mut().zip(z.iter()).for_each(|(m, &v)| *m += v);
            }
            mean.iter_mut().for_each(|m| *m *= inv_b);
            // The variance from the centred values: a second pass over
            // columns that stay in cache, and no cancellation.
            var.fill(0.0);
            for i in 0..batch {
                let z = unsafe { row(&zs, i, o, &cols) };
                for ((s, &v), &m) in var.iter_mut().zip(z.iter()).zip(mean.iter()) {
                    *s += (v - m) * (v - m);
                }
            }
            for (v, s) in var.iter_mut().zip(inv.iter_mut()) {
                *v *= inv_b;
                *s = inv_std(*v);
            }
            with_activation!(act, |f| {
                for i in 0..batch {
                    let (z, h) = unsafe { (row(&zs, i, o, &cols), row(&hs, i, o, &cols)) };
                    normalise_row(z, h, |j| mean[j], |j| inv[j], g, b, f);
                }
            })
        })
    });
}

/// BatchNorm in evaluation: `h = act(γ·(z − running_mean)/√(running_var +
/// eps) + β)`; `inv_std` receives the per-unit factor (scratch).
// h: (B, O), z: (B, O), inv_std, running_mean, running_var, gamma, beta: (O)
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval(
    h: &mut [f32],
    inv_std_out: &mut [f32],
    z: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    gamma: &[f32],
    beta: &[f32],
    act: Activation,
    batch: usize,
    o: usize,
) {
    for (s, &v) in inv_std_out.iter_mut().zip(running_var) {
        *s = inv_std(v);
    }
    let inv = &inv_std_out[..o];
    for (h, z) in h[..batch * o].chunks_exact_mut(o).zip(z.chunks_exact(o)) {
        for (j, (h, &z)) in h.iter_mut().zip(z).enumerate() {
            let xhat = (z - running_mean[j]) * inv[j];
            *h = act.apply(gamma[j] * xhat + beta[j]);
        }
    }
}

/// LayerNorm (training and evaluation alike): per sample `i`, the mean and
/// biased variance of `z[i, ..]`, then `x̂ = (z − μ)·inv_std` (into `z`) and
/// `h = act(γ·x̂ + β)`.
// z: (B, O) → x̂, h: (B, O), inv_std: (B), gamma, beta: (O)
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    z: &mut [f32],
    h: &mut [f32],
    inv_std_out: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    act: Activation,
    batch: usize,
    o: usize,
    team: Option<&mut Team>,
) {
    let (zs, hs) = (
        SharedMut::new(&mut z[..batch * o]),
        SharedMut::new(&mut h[..batch * o]),
    );
    let invs = SharedMut::new(&mut inv_std_out[..batch]);
    let all = 0..o;
    let inv_o = 1.0 / o as f32;
    split(team, batch, 1, o, &|rows| {
        // SAFETY: this part alone touches the rows `rows`.
        let inv = unsafe { invs.piece(rows.clone()) };
        simd(|| {
            with_activation!(act, |f| {
                for (i, s) in rows.clone().zip(inv.iter_mut()) {
                    let (z, h) = unsafe { (row(&zs, i, o, &all), row(&hs, i, o, &all)) };
                    let mean = row_sum(z, |v| v) * inv_o;
                    let var = row_sum(z, |v| (v - mean) * (v - mean)) * inv_o;
                    *s = inv_std(var);
                    let s = *s;
                    normalise_row(z, h, |_| mean, |_| s, gamma, beta, f);
                }
            })
        })
    });
}

/// The two column reductions of either layer's backward pass, in one pass:
/// `dγ = Σ_batch dy·x̂`, `dβ = Σ_batch dy` (overwritten).
// dgamma, dbeta: (O), dy, xhat: (B, O)
#[allow(clippy::too_many_arguments)]
pub fn affine_backward(
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    dy: &[f32],
    xhat: &[f32],
    batch: usize,
    o: usize,
    team: Option<&mut Team>,
) {
    let (dg, db) = (SharedMut::new(dgamma), SharedMut::new(dbeta));
    split(team, o, COLUMN_ALIGN, batch, &|cols| {
        // SAFETY: this part alone touches the columns `cols`.
        let (dg, db) = unsafe { (dg.piece(cols.clone()), db.piece(cols.clone())) };
        simd(|| {
            dg.fill(0.0);
            db.fill(0.0);
            for i in 0..batch {
                let dy = &dy[i * o + cols.start..i * o + cols.end];
                let x = &xhat[i * o + cols.start..i * o + cols.end];
                for (((g, b), &d), &x) in dg.iter_mut().zip(db.iter_mut()).zip(dy).zip(x) {
                    *g += d * x;
                    *b += d;
                }
            }
        })
    });
}

/// BatchNorm's input gradient, in place, from the affine gradients
/// [`affine_backward`] just computed: `dz = γ·inv_std·(dy − dβ/B −
/// x̂·dγ/B)`.
// dy: (B, O) → dz, xhat: (B, O), inv_std, gamma, dgamma, dbeta: (O)
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    dy: &mut [f32],
    xhat: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    dgamma: &[f32],
    dbeta: &[f32],
    batch: usize,
    o: usize,
    team: Option<&mut Team>,
) {
    let ds = SharedMut::new(&mut dy[..batch * o]);
    let inv_b = 1.0 / batch as f32;
    split(team, o, COLUMN_ALIGN, batch, &|cols| {
        let (inv, g) = (&inv_std[cols.clone()], &gamma[cols.clone()]);
        let (dg, db) = (&dgamma[cols.clone()], &dbeta[cols.clone()]);
        simd(|| {
            for i in 0..batch {
                // SAFETY: this part alone touches the columns `cols`.
                let d = unsafe { row(&ds, i, o, &cols) };
                let x = &xhat[i * o + cols.start..i * o + cols.end];
                for (j, (d, &x)) in d.iter_mut().zip(x).enumerate() {
                    let k = g[j] * inv[j];
                    *d = k * (*d - db[j] * inv_b - x * dg[j] * inv_b);
                }
            }
        })
    });
}

/// LayerNorm's input gradient, in place (after [`affine_backward`], which
/// reads `dy`): per sample, with `g = γ·dy`, `dz = inv_std·(g − mean(g) −
/// x̂·mean(g·x̂))`, the means over the units.
// dy: (B, O) → dz, xhat: (B, O), inv_std: (B), gamma: (O)
pub fn layer_norm_backward(
    dy: &mut [f32],
    xhat: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    batch: usize,
    o: usize,
    team: Option<&mut Team>,
) {
    let ds = SharedMut::new(&mut dy[..batch * o]);
    let all = 0..o;
    let inv_o = 1.0 / o as f32;
    split(team, batch, 1, o, &|rows| {
        simd(|| {
            for i in rows.clone() {
                // SAFETY: this part alone touches the rows `rows`.
                let d = unsafe { row(&ds, i, o, &all) };
                let x = &xhat[i * o..(i + 1) * o];
                // Σ γ·dy and Σ γ·dy·x̂ in one pass, each in LANES partial
                // sums as `row_sum` keeps them.
                let (mut sum_g, mut sum_gx) = ([0.0f32; LANES], [0.0f32; LANES]);
                let chunks = d
                    .chunks(LANES)
                    .zip(x.chunks(LANES))
                    .zip(gamma.chunks(LANES));
                for ((dc, xc), gc) in chunks {
                    let lanes = sum_g.iter_mut().zip(sum_gx.iter_mut());
                    for (((a, ax), &d), (&x, &g)) in lanes.zip(dc).zip(xc.iter().zip(gc)) {
                        let gd = g * d;
                        *a += gd;
                        *ax += gd * x;
                    }
                }
                let mean_g = sum_g.iter().sum::<f32>() * inv_o;
                let mean_gx = sum_gx.iter().sum::<f32>() * inv_o;
                let s = inv_std[i];
                for ((d, &x), &g) in d.iter_mut().zip(x).zip(gamma) {
                    *d = s * (g * *d - mean_g - x * mean_gx);
                }
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use std::cell::Cell;

    thread_local! {
        /// Set by a test to run this thread's kernels in the portable
        /// (SSE2) build.
        pub static PORTABLE: Cell<bool> = const { Cell::new(false) };
    }

    /// The AVX2 build gives the portable build's bits (odd widths: the
    /// vector loops' tails too).
    #[test]
    fn the_avx2_build_gives_the_portable_bits() {
        if !crate::cpu::features().avx2 {
            println!("SKIPPED: the AVX2 build of the normalisations: this CPU has no AVX2");
            return;
        }
        for (batch, o) in [(2, 1), (7, 33), (37, 61), (128, 520)] {
            let mut rng = Rng::new(7);
            let (z, dy) = (random(batch * o, &mut rng), random(batch * o, &mut rng));
            let avx2 = run_all(&z, &dy, batch, o, None);
            PORTABLE.with(|p| p.set(true));
            let portable = run_all(&z, &dy, batch, o, None);
            PORTABLE.with(|p| p.set(false));
            for (k, (a, b)) in avx2.iter().zip(&portable).enumerate() {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{batch}×{o}: output {k} differs between the builds");
            }
        }
    }

    fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32 * 2.0 + 0.5).collect()
    }

    /// Every kernel's outputs, forward and backward, for one layer.
    fn run_all(
        z: &[f32],
        dy: &[f32],
        batch: usize,
        o: usize,
        mut team: Option<&mut Team>,
    ) -> Vec<Vec<f32>> {
        let mut rng = Rng::new(3);
        let gamma = random(o, &mut rng);
        let beta = random(o, &mut rng);
        let act = Activation::Tanh;
        let mut out = Vec::new();
        // BatchNorm.
        let (mut zb, mut h) = (z.to_vec(), vec![0.0; batch * o]);
        let (mut mean, mut var, mut inv) = (vec![0.0; o], vec![0.0; o], vec![0.0; o]);
        let stats = BatchStats {
            mean: &mut mean,
            var: &mut var,
            inv_std: &mut inv,
        };
        batch_norm_train(
            &mut zb,
            &mut h,
            stats,
            &gamma,
            &beta,
            act,
            batch,
            o,
            team.as_deref_mut(),
        );
        let (mut dg, mut db, mut d) = (vec![0.0; o], vec![0.0; o], dy.to_vec());
        affine_backward(&mut dg, &mut db, &d, &zb, batch, o, team.as_deref_mut());
        batch_norm_backward(
            &mut d,
            &zb,
            &inv,
            &gamma,
            &dg,
            &db,
            batch,
            o,
            team.as_deref_mut(),
        );
        out.extend([zb, h, mean, var, inv, dg, db, d]);
        // LayerNorm.
        let (mut zl, mut h, mut inv) = (z.to_vec(), vec![0.0; batch * o], vec![0.0; batch]);
        layer_norm(
            &mut zl,
            &mut h,
            &mut inv,
            &gamma,
            &beta,
            act,
            batch,
            o,
            team.as_deref_mut(),
        );
        let (mut dg, mut db, mut d) = (vec![0.0; o], vec![0.0; o], dy.to_vec());
        affine_backward(&mut dg, &mut db, &d, &zl, batch, o, team.as_deref_mut());
        layer_norm_backward(&mut d, &zl, &inv, &gamma, batch, o, team);
        out.extend([zl, h, inv, dg, db, d]);
        out
    }

    #[test]
    fn a_team_gives_the_same_bits_as_one_thread() {
        let (batch, o) = (128, 520);
        // At this size every kernel splits (by units and by samples).
        for threads in [2, 3] {
            assert!(piece_len(threads, o, COLUMN_ALIGN, batch) < o);
            assert!(piece_len(threads, batch, 1, o) < batch);
        }
        let mut rng = Rng::new(1);
        let (z, dy) = (random(batch * o, &mut rng), random(batch * o, &mut rng));
        let one = run_all(&z, &dy, batch, o, None);
        for threads in [2, 3] {
            let mut team = Team::new(threads);
            let many = run_all(&z, &dy, batch, o, Some(&mut team));
            for (k, (a, b)) in one.iter().zip(&many).enumerate() {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "output {k} differs on {threads} threads");
            }
        }
    }

    #[test]
    fn batch_norm_by_hand() {
        // Two samples, one unit: z = [1, 3], μ = 2, σ² = 1, x̂ = [−1, 1]
        // (up to eps); γ = 2, β = 0.5: y = [−1.5, 2.5], ReLU: [0, 2.5].
        let (mut z, mut h) = ([1.0f32, 3.0], [0.0f32; 2]);
        let (mut mean, mut var, mut inv) = ([0.0f32], [0.0f32], [0.0f32]);
        let stats = BatchStats {
            mean: &mut mean,
            var: &mut var,
            inv_std: &mut inv,
        };
        batch_norm_train(
            &mut z,
            &mut h,
            stats,
            &[2.0],
            &[0.5],
            Activation::Relu,
            2,
            1,
            None,
        );
        assert_eq!((mean[0], var[0]), (2.0, 1.0));
        let s = 1.0 / (1.0f32 + 1e-5).sqrt();
        assert_eq!(z, [-s, s]);
        assert_eq!(h, [0.0, 2.0 * s + 0.5]);
        // dy = [1, 0]: dβ = 1, dγ = −s; dz = γ·s·(dy − 1/2 − x̂·(−s)/2).
        let (mut dg, mut db, mut dy) = ([0.0f32], [0.0f32], [1.0f32, 0.0]);
        affine_backward(&mut dg, &mut db, &dy, &z, 2, 1, None);
        assert_eq!((dg[0], db[0]), (-s, 1.0));
        batch_norm_backward(&mut dy, &z, &inv, &[2.0], &dg, &db, 2, 1, None);
        let want = |dy: f32, x: f32| 2.0 * s * (dy - 0.5 - x * -s * 0.5);
        assert_eq!(dy, [want(1.0, -s), want(0.0, s)]);
    }

    #[test]
    fn layer_norm_by_hand() {
        // One sample of 4 units [0, 2, 4, 6]: μ = 3, σ² = 5.
        let (mut z, mut h, mut inv) = ([0.0f32, 2.0, 4.0, 6.0], [0.0f32; 4], [0.0f32]);
        let g = [1.0f32; 4];
        layer_norm(
            &mut z,
            &mut h,
            &mut inv,
            &g,
            &[0.0; 4],
            Activation::Identity,
            1,
            4,
            None,
        );
        let s = 1.0 / (5.0f32 + 1e-5).sqrt();
        assert_eq!(inv[0], s);
        assert_eq!(z, [-3.0 * s, -s, s, 3.0 * s]);
        assert_eq!(h, z);
    }
}
