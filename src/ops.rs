//! Layer math that is not a matrix product: the activation derivatives
//! the GEMM epilogue cannot fuse (tanh and sigmoid under dropout), dropout,
//! bias gradients and the fused losses.
//!
//! Kernels follow llm.c's conventions: outputs first, then inputs, then
//! dimensions; a shape comment on each. They never allocate.

use crate::model::{Act, Loss, LEAKY_SLOPE};
use crate::rng::Rng;

/// `act'(z)` written in terms of the output `h = act(z)`: every activation
/// here allows it, so the backward pass needs only the stored outputs.
#[inline]
pub fn derivative_from_output(act: Act, h: f32) -> f32 {
    match act {
        Act::Relu => {
            if h > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Act::LeakyRelu => {
            if h > 0.0 {
                1.0
            } else {
                LEAKY_SLOPE
            }
        }
        Act::Tanh => 1.0 - h * h,
        Act::Sigmoid => h * (1.0 - h),
    }
}

/// Inverted dropout: each unit is kept with probability `1 − p` and scaled
/// by `1/(1 − p)`, so the expected output is unchanged and inference needs
/// no rescaling. `mask` receives the factor applied to each unit.
// h: (B·O), mask: (B·O)
pub fn dropout_forward(h: &mut [f32], mask: &mut [f32], p: f32, rng: &mut Rng) {
    let keep = 1.0 / (1.0 - p);
    for (x, m) in h.iter_mut().zip(mask.iter_mut()) {
        *m = if rng.next_f32() < p { 0.0 } else { keep };
        *x *= *m;
    }
}

/// The backward pass through activation and dropout, in place:
/// `dz = dh ⊙ mask ⊙ act'(z)`, where `h_out` is the layer's stored output
/// (after dropout). With `grad_applied`, the GEMM epilogue has already
/// multiplied by `act'(z)` (from the stored output), and only the mask
/// remains.
// dh: (B·O), h_out: (B·O), mask: (B·O)
pub fn act_dropout_backward(
    dh: &mut [f32],
    h_out: &[f32],
    mask: Option<&[f32]>,
    act: Act,
    grad_applied: bool,
) {
    match (mask, grad_applied) {
        (None, true) => {}
        (None, false) => {
            for (d, &h) in dh.iter_mut().zip(h_out) {
                *d *= derivative_from_output(act, h);
            }
        }
        (Some(mask), true) => dh.iter_mut().zip(mask).for_each(|(d, &m)| *d *= m),
        (Some(mask), false) => {
            for ((d, &h), &m) in dh.iter_mut().zip(h_out).zip(mask) {
                // The stored output is act(z)·m; recover act(z) where kept.
                *d = if m == 0.0 {
                    0.0
                } else {
                    *d * m * derivative_from_output(act, h / m)
                };
            }
        }
    }
}

/// Bias gradient: the column sums of `dz`, summed row by row in a fixed
/// order (so the result does not depend on the thread count).
// db: (O), dz: (B, O)
pub fn column_sums(db: &mut [f32], dz: &[f32], batch: usize, outputs: usize) {
    db.fill(0.0);
    for row in dz[..batch * outputs].chunks_exact(outputs) {
        db.iter_mut().zip(row).for_each(|(s, &x)| *s += x);
    }
}

/// Loss of one batch and the gradient of the mean loss with respect to the
/// logits, in one pass over the logits.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossOut {
    /// Sum over the batch of the per-sample loss (f64, so long epochs
    /// accumulate without drift).
    pub loss_sum: f64,
    /// Samples whose largest logit is their label.
    pub correct: usize,
}

impl std::ops::AddAssign for LossOut {
    fn add_assign(&mut self, other: LossOut) {
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
    }
}

/// Computes `loss` on `logits` for `labels`, writes `dlogits` (the gradient
/// of the batch-mean loss), and counts correct predictions. `smoothing` is
/// the cross-entropy's label smoothing ε (PyTorch's: the target is
/// `(1 − ε)·onehot(y) + ε/C`); 0 for the other losses.
// dlogits: (B, C), logits: (B, C), labels: (B)
pub fn loss_forward_backward(
    dlogits: &mut [f32],
    logits: &[f32],
    labels: &[u8],
    batch: usize,
    classes: usize,
    loss: Loss,
    smoothing: f32,
) -> LossOut {
    let mean_over = batch;
    loss_share_forward_backward(
        dlogits, logits, labels, batch, mean_over, classes, loss, smoothing,
    )
}

/// As [`loss_forward_backward`] for `batch` rows of a batch of `mean_over`
/// samples (one rank's shard): `dlogits` is the gradient of these rows'
/// share of the batch-mean loss, each row's the same as when the whole batch
/// is computed at once.
#[allow(clippy::too_many_arguments)]
pub fn loss_share_forward_backward(
    dlogits: &mut [f32],
    logits: &[f32],
    labels: &[u8],
    batch: usize,
    mean_over: usize,
    classes: usize,
    loss: Loss,
    smoothing: f32,
) -> LossOut {
    let mut out = LossOut::default();
    let inv_b = 1.0 / mean_over as f32;
    let rows = logits[..batch * classes].chunks_exact(classes);
    let drows = dlogits[..batch * classes].chunks_exact_mut(classes);
    for ((z, dz), &y) in rows.zip(drows).zip(labels) {
        let y = y as usize;
        let (best, max) = argmax(z);
        out.correct += usize::from(best == y);
        out.loss_sum += match loss {
            Loss::Xent => xent_row(dz, z, y, max, inv_b, smoothing),
            Loss::Mse => mse_row(dz, z, y, inv_b / classes as f32),
            Loss::Hinge => hinge_row(dz, z, y, inv_b / classes as f32),
        };
    }
    out
}

/// Loss and correct count only (evaluation: no gradient written).
// logits: (B, C), labels: (B)
pub fn loss_only(
    logits: &[f32],
    labels: &[u8],
    batch: usize,
    classes: usize,
    loss: Loss,
) -> LossOut {
    let mut out = LossOut::default();
    for (z, &y) in logits[..batch * classes].chunks_exact(classes).zip(labels) {
        let y = y as usize;
        let (best, max) = argmax(z);
        out.correct += usize::from(best == y);
        out.loss_sum += match loss {
            Loss::Xent => {
                let sum: f64 = z.iter().map(|&v| ((v - max) as f64).exp()).sum();
                sum.ln() + (max - z[y]) as f64
            }
            Loss::Mse => {
                let s: f64 = z
                    .iter()
                    .enumerate()
                    .map(|(c, &v)| ((v - f32::from(c == y)) as f64).powi(2))
                    .sum();
                s / classes as f64
            }
            Loss::Hinge => {
                let s: f64 = z
                    .iter()
                    .enumerate()
                    .filter(|&(c, _)| c != y)
                    .map(|(_, &v)| ((1.0 - z[y] + v) as f64).max(0.0))
                    .sum();
                s / classes as f64
            }
        };
    }
    out
}

/// Index and value of the largest element (the first one on ties).
#[inline]
pub fn argmax(z: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &v) in z.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best
}

/// Softmax cross-entropy of one row against the smoothed target
/// `q = (1 − ε)·onehot(y) + ε/C`, numerically stable for any finite logits:
/// with `lse = log Σ e^(z_j − max)` (the max subtracted from every z),
/// `loss = (1 − ε)·(lse − z_y) + ε·(lse − mean(z))`,
/// `dz = (softmax(z) − q) · scale`. With ε = 0 the target is exactly
/// `onehot(y)`, computed as before smoothing existed.
fn xent_row(dz: &mut [f32], z: &[f32], y: usize, max: f32, scale: f32, eps: f32) -> f64 {
    let mut sum = 0.0f32;
    for (d, &v) in dz.iter_mut().zip(z) {
        let e = (v - max).exp();
        *d = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for d in dz.iter_mut() {
        *d *= inv * scale;
    }
    let lse = (sum as f64).ln();
    let target = lse + (max - z[y]) as f64;
    if eps == 0.0 {
        dz[y] -= scale;
        return target;
    }
    let classes = z.len();
    let spread = eps / classes as f32 * scale;
    for d in dz.iter_mut() {
        *d -= spread;
    }
    dz[y] -= (1.0 - eps) * scale;
    let mean = z.iter().map(|&v| (v - max) as f64).sum::<f64>() / classes as f64;
    (1.0 - eps as f64) * target + eps as f64 * (lse - mean)
}

/// Squared error against the one-hot target, scaled by `scale = 1/(B·C)`:
/// returns the row's `Σ (z − t)² / C`, writes `dz = 2(z − t)·scale`.
fn mse_row(dz: &mut [f32], z: &[f32], y: usize, scale: f32) -> f64 {
    let classes = z.len();
    let mut s = 0.0f64;
    for (c, (d, &v)) in dz.iter_mut().zip(z).enumerate() {
        let diff = v - f32::from(c == y);
        s += (diff as f64) * (diff as f64);
        *d = 2.0 * diff * scale;
    }
    s / classes as f64
}

/// Multiclass hinge with margin 1, scaled by `scale = 1/(B·C)`: returns the
/// row's `Σ_{j≠y} max(0, 1 − z_y + z_j) / C`; every positive margin adds
/// `scale` to `dz_j` and subtracts it from `dz_y`.
fn hinge_row(dz: &mut [f32], z: &[f32], y: usize, scale: f32) -> f64 {
    let classes = z.len();
    let mut s = 0.0f64;
    let mut active = 0.0f32;
    for (c, (d, &v)) in dz.iter_mut().zip(z).enumerate() {
        let margin = 1.0 - z[y] + v;
        *d = 0.0;
        if c != y && margin > 0.0 {
            s += margin as f64;
            *d = scale;
            active += 1.0;
        }
    }
    dz[y] = -active * scale;
    s / classes as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xent_is_stable_for_huge_logits() {
        let z = [1e30f32, -1e30, 0.0];
        let mut dz = [0f32; 3];
        let out = loss_forward_backward(&mut dz, &z, &[0], 1, 3, Loss::Xent, 0.0);
        assert_eq!(out.loss_sum, 0.0);
        assert_eq!(out.correct, 1);
        assert_eq!(dz, [0.0, 0.0, 0.0]);
        let out = loss_forward_backward(&mut dz, &z, &[1], 1, 3, Loss::Xent, 0.0);
        assert_eq!(out.loss_sum, 2e30f32 as f64);
        assert_eq!(dz, [1.0, -1.0, 0.0]);
    }

    /// PyTorch 2.15, float64: `F.cross_entropy(z, y, label_smoothing=ε)`
    /// (mean over the batch) and its gradient with respect to `z`, for the
    /// batch below; the f32 pass must agree to f32 rounding.
    #[test]
    fn label_smoothing_matches_pytorch() {
        let z = [0.5f32, -1.0, 2.0, 0.0, 0.25, 0.25];
        let labels = [2u8, 0];
        let cases: [(f32, f64, [f64; 6]); 2] = [
            (
                0.1,
                0.8233320458145212,
                [
                    0.07097852940335168,
                    0.0028896199686770582,
                    -0.07386814937202874,
                    -0.32653413398999936,
                    0.16326706699499963,
                    0.16326706699499963,
                ],
            ),
            (
                0.3,
                0.9566653791478543,
                [
                    0.037645196070018344,
                    -0.030443713364656275,
                    -0.007201482705362071,
                    -0.25986746732333266,
                    0.12993373366166627,
                    0.12993373366166627,
                ],
            ),
        ];
        for (eps, loss, grad) in cases {
            let mut dz = [0f32; 6];
            let out = loss_forward_backward(&mut dz, &z, &labels, 2, 3, Loss::Xent, eps);
            assert!(
                (out.loss_sum / 2.0 - loss).abs() < 1e-6,
                "ε {eps}: loss {}",
                out.loss_sum / 2.0
            );
            for (got, want) in dz.iter().zip(grad) {
                assert!((*got as f64 - want).abs() < 1e-7, "ε {eps}: dz {dz:?}");
            }
        }
    }

    /// The smoothed cross-entropy and its gradient against the f64
    /// reference on random logits, and ε = 0 bit for bit the unsmoothed
    /// pass.
    #[test]
    fn label_smoothing_matches_the_reference() {
        use crate::reference::{loss_backward, loss_forward, Criterion};
        let (b, c) = (5, 7);
        let mut rng = crate::rng::Rng::new(3);
        let z: Vec<f32> = (0..b * c).map(|_| 3.0 * rng.normal() as f32).collect();
        let labels: Vec<u8> = (0..b).map(|i| (i * 3 % c) as u8).collect();
        let z64: Vec<f64> = z.iter().map(|&v| v as f64).collect();
        let y64: Vec<usize> = labels.iter().map(|&y| y as usize).collect();
        for eps in [0.0f32, 0.05, 0.2, 0.9] {
            let mut dz = vec![0f32; b * c];
            let out = loss_forward_backward(&mut dz, &z, &labels, b, c, Loss::Xent, eps);
            let criterion = Criterion {
                loss: Loss::Xent,
                smoothing: eps as f64,
            };
            let want = loss_forward(&z64, &y64, criterion, b, c);
            let mut want_dz = vec![0f64; b * c];
            loss_backward(&mut want_dz, &z64, &y64, criterion, b, c);
            let got = out.loss_sum / b as f64;
            assert!(
                (got - want).abs() <= 1e-6 * want.abs(),
                "ε {eps}: {got} vs {want}"
            );
            for (g, w) in dz.iter().zip(&want_dz) {
                assert!((*g as f64 - w).abs() < 1e-7, "ε {eps}: {g} vs {w}");
            }
        }
        let (mut plain, mut zero) = (vec![0f32; b * c], vec![0f32; b * c]);
        let a = loss_forward_backward(&mut plain, &z, &labels, b, c, Loss::Xent, 0.0);
        let reference = xent_unsmoothed(&mut zero, &z, &labels, b, c);
        assert_eq!(a.loss_sum.to_bits(), reference.to_bits());
        assert!(plain
            .iter()
            .zip(&zero)
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    /// The cross-entropy pass as it was written before label smoothing.
    fn xent_unsmoothed(dz: &mut [f32], z: &[f32], labels: &[u8], b: usize, c: usize) -> f64 {
        let scale = 1.0 / b as f32;
        let mut total = 0.0;
        for ((dz, z), &y) in dz.chunks_exact_mut(c).zip(z.chunks_exact(c)).zip(labels) {
            let (y, max) = (y as usize, argmax(z).1);
            let mut sum = 0.0f32;
            for (d, &v) in dz.iter_mut().zip(z) {
                let e = (v - max).exp();
                *d = e;
                sum += e;
            }
            let inv = 1.0 / sum;
            for d in dz.iter_mut() {
                *d *= inv * scale;
            }
            dz[y] -= scale;
            total += (sum as f64).ln() + (max - z[y]) as f64;
        }
        total
    }

    #[test]
    fn losses_match_their_definitions_on_a_small_batch() {
        let z = [0.5f32, -1.0, 2.0, 0.0, 0.25, 0.25];
        let labels = [2u8, 0];
        for loss in [Loss::Xent, Loss::Mse, Loss::Hinge] {
            let mut dz = [0f32; 6];
            let with_grad = loss_forward_backward(&mut dz, &z, &labels, 2, 3, loss, 0.0);
            let plain = loss_only(&z, &labels, 2, 3, loss);
            assert!((with_grad.loss_sum - plain.loss_sum).abs() < 1e-6, "{loss}");
            assert_eq!(with_grad.correct, 1, "{loss}: row 0 right, row 1 wrong");
        }
        // Hinge by hand: row 0, y = 2: max(0, 1−2+0.5) + max(0, 1−2−1) = 0;
        // row 1, y = 0: max(0, 1−0+0.25)·2 = 2.5, over C = 3.
        let h = loss_only(&z, &labels, 2, 3, Loss::Hinge);
        assert!((h.loss_sum - 2.5 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn dropout_keeps_the_expectation_and_backward_uses_the_mask() {
        let mut rng = Rng::new(3);
        let n = 100_000;
        let mut h = vec![1.0f32; n];
        let mut mask = vec![0.0f32; n];
        dropout_forward(&mut h, &mut mask, 0.25, &mut rng);
        let mean = h.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        assert!(mask.iter().all(|&m| m == 0.0 || m == 1.0 / 0.75));
        let mut dh = vec![2.0f32; n];
        act_dropout_backward(&mut dh, &h, Some(&mask), Act::Relu, false);
        for ((&d, &m), &x) in dh.iter().zip(&mask).zip(&h) {
            assert_eq!(d, if m == 0.0 { 0.0 } else { 2.0 * m }, "h = {x}");
        }
    }
}
