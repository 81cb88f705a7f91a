//! The reference MLP: the same network as the fast path, in plain `f64`
//! loops, written to be read. It is the test oracle (llm.c's naive kernels,
//! micrograd's scalar engine): checked against central finite differences
//! ([`gradcheck`]) and against a golden state written by PyTorch
//! (`tools/torch_golden.py`, replayed by `tests/reference.rs`), and then
//! used to check the fast `f32` path.
//!
//! It shares no math with the fast path: no GEMM, no `ops`, no `optim`. Only
//! the choice enums [`Act`], [`Loss`] and [`Norm`] and the normalisation
//! constants come from [`crate::model`].
//!
//! Conventions (llm.c): kernels are free functions taking outputs first,
//! then inputs, then dimensions; each starts with a shape comment; `d<x>` is
//! the gradient of the loss with respect to `x`; backward kernels accumulate
//! (`+=`) into parameter gradients. `B` is the batch, `I` a layer's inputs,
//! `O` its outputs, `C` the classes. All matrices are row-major; a weight is
//! `(O, I)`, the PyTorch `nn.Linear` layout.
//!
//! The network, for dims `[D, h1, …, hk, C]`:
//!
//! ```text
//! h0 = x                                   (B, D)
//! hidden layer l: z_l = h_{l-1}·W_lᵀ + b_l, y_l = norm_l(z_l), h_l = act(y_l) ⊙ mask_l
//! last layer:     logits = h_k·Wᵀ + b      (B, C), no norm, no activation
//! L = loss(logits, labels) + λ Σ_l ‖W_l‖²  (Linear weights only)
//! ```
//!
//! `mask_l` is inverted dropout, drawn by the caller (values 0 or 1/(1−p));
//! without masks the hidden layers are not dropped. `norm_l` is one of
//! [`Norm`]:
//!
//! - none: `y = z`;
//! - batch (`nn.BatchNorm1d`): each unit `j` normalised over the batch,
//!   `y = γ_j·(z − μ_j)/√(σ²_j + eps) + β_j` with the batch's mean and biased
//!   variance in training and the running statistics in evaluation; the
//!   hidden Linear layers then have no bias (the batch mean would cancel it:
//!   its gradient is zero up to rounding, noise that Adam would scale into
//!   full-size steps);
//! - layer (`nn.LayerNorm`): each sample normalised over its units, with
//!   per-unit `γ`, `β`; the same in training and evaluation.
//!
//! `γ` and `β` are trained like biases: no L2 term and no weight decay. As
//! PyTorch numbers the modules of `nn.Sequential(Linear, norm, act, …,
//! Linear)`, hidden layer `l`'s Linear is module `3l` and its norm `3l + 1`
//! (`2l` without norm).

use crate::model::{Act, Loss, Norm, BN_MOMENTUM, NORM_EPS};

/// Slope of the leaky ReLU for `z ≤ 0`, in `f64`. This is PyTorch's 0.01
/// exactly; [`crate::model::LEAKY_SLOPE`] is the same number rounded to `f32`
/// (a unit test checks that they agree).
pub const LEAKY_SLOPE_F64: f64 = 0.01;

// ----------------------------------------------------------------------------
// Kernels: forward and backward of each piece of the network.

/// `z = x·wᵀ + b` (`z = x·wᵀ` when `b` is empty: a Linear without bias).
// z: (B, O), x: (B, I), w: (O, I), b: (O) or empty
pub fn linear_forward(
    z: &mut [f64],
    x: &[f64],
    w: &[f64],
    b: &[f64],
    bsz: usize,
    i: usize,
    o: usize,
) {
    for n in 0..bsz {
        for j in 0..o {
            let mut acc = if b.is_empty() { 0.0 } else { b[j] };
            for k in 0..i {
                acc += x[n * i + k] * w[j * i + k];
            }
            z[n * o + j] = acc;
        }
    }
}

/// Accumulates `dw += dzᵀ·x`, `db += Σ_n dz[n]` (unless `db` is empty: a
/// Linear without bias) and, when asked, `dx += dz·w`.
// dx: (B, I) or None, dw: (O, I), db: (O) or empty, dz: (B, O), x: (B, I), w: (O, I)
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dx: Option<&mut [f64]>,
    dw: &mut [f64],
    db: &mut [f64],
    dz: &[f64],
    x: &[f64],
    w: &[f64],
    bsz: usize,
    i: usize,
    o: usize,
) {
    for n in 0..bsz {
        for j in 0..o {
            let g = dz[n * o + j];
            if !db.is_empty() {
                db[j] += g;
            }
            for k in 0..i {
                dw[j * i + k] += g * x[n * i + k];
            }
        }
    }
    if let Some(dx) = dx {
        for n in 0..bsz {
            for k in 0..i {
                let mut acc = 0.0;
                for j in 0..o {
                    acc += dz[n * o + j] * w[j * i + k];
                }
                dx[n * i + k] += acc;
            }
        }
    }
}

/// The activation of one value.
pub fn act_value(act: Act, z: f64) -> f64 {
    match act {
        Act::Relu => {
            if z > 0.0 {
                z
            } else {
                0.0
            }
        }
        Act::LeakyRelu => {
            if z > 0.0 {
                z
            } else {
                LEAKY_SLOPE_F64 * z
            }
        }
        Act::Tanh => z.tanh(),
        Act::Sigmoid => 1.0 / (1.0 + (-z).exp()),
    }
}

/// The derivative of the activation at `z`. ReLU's is 0 at 0 and leaky
/// ReLU's is the slope at 0 (PyTorch's choices).
pub fn act_derivative(act: Act, z: f64) -> f64 {
    match act {
        Act::Relu => {
            if z > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Act::LeakyRelu => {
            if z > 0.0 {
                1.0
            } else {
                LEAKY_SLOPE_F64
            }
        }
        Act::Tanh => {
            let t = z.tanh();
            1.0 - t * t
        }
        Act::Sigmoid => {
            let s = 1.0 / (1.0 + (-z).exp());
            s * (1.0 - s)
        }
    }
}

/// `h = act(z) ⊙ mask` (no mask: `h = act(z)`).
// h: (N), z: (N), mask: (N) or None
pub fn act_forward(h: &mut [f64], z: &[f64], mask: Option<&[f64]>, act: Act) {
    for n in 0..z.len() {
        let m = mask.map_or(1.0, |m| m[n]);
        h[n] = act_value(act, z[n]) * m;
    }
}

/// `dz = dh ⊙ mask ⊙ act'(z)` (overwrites `dz`).
// dz: (N), dh: (N), z: (N), mask: (N) or None
pub fn act_backward(dz: &mut [f64], dh: &[f64], z: &[f64], mask: Option<&[f64]>, act: Act) {
    for n in 0..z.len() {
        let m = mask.map_or(1.0, |m| m[n]);
        dz[n] = dh[n] * m * act_derivative(act, z[n]);
    }
}

/// BatchNorm1d in training: the mean `μ_j` and biased variance `σ²_j` of
/// each unit over the batch, then `y = γ·(z − μ)/√(σ² + eps) + β` with them
/// ([`batch_norm_with_stats`]). `eps` is [`NORM_EPS`].
// y: (B, O), mean: (O), var: (O), z: (B, O), gamma: (O), beta: (O)
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward(
    y: &mut [f64],
    mean: &mut [f64],
    var: &mut [f64],
    z: &[f64],
    gamma: &[f64],
    beta: &[f64],
    bsz: usize,
    o: usize,
) {
    for j in 0..o {
        let mut sum = 0.0;
        for n in 0..bsz {
            sum += z[n * o + j];
        }
        let mu = sum / bsz as f64;
        let mut sq = 0.0;
        for n in 0..bsz {
            let d = z[n * o + j] - mu;
            sq += d * d;
        }
        mean[j] = mu;
        var[j] = sq / bsz as f64;
    }
    batch_norm_with_stats(y, z, gamma, beta, mean, var, bsz, o);
}

/// `y = γ_j·(z − mean_j)/√(var_j + eps) + β_j` for each unit `j`, with given
/// statistics: the batch's in training, the running ones in evaluation.
// y: (B, O), z: (B, O), gamma: (O), beta: (O), mean: (O), var: (O)
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_with_stats(
    y: &mut [f64],
    z: &[f64],
    gamma: &[f64],
    beta: &[f64],
    mean: &[f64],
    var: &[f64],
    bsz: usize,
    o: usize,
) {
    for n in 0..bsz {
        for j in 0..o {
            let rstd = 1.0 / (var[j] + NORM_EPS).sqrt();
            y[n * o + j] = gamma[j] * (z[n * o + j] - mean[j]) * rstd + beta[j];
        }
    }
}

/// The backward pass of [`batch_norm_forward`] (training). Per unit, with
/// `x̂ = (z − μ)/σ`, `σ = √(σ² + eps)` and means over the batch:
/// `dz = (γ/σ)·(dy − mean(dy) − x̂·mean(dy·x̂))` (overwrites `dz`; μ and σ²
/// depend on every sample, hence the two mean terms). Accumulates
/// `dγ += Σ_n dy·x̂` and `dβ += Σ_n dy`.
// dz: (B, O), dgamma: (O), dbeta: (O), dy: (B, O), z: (B, O), gamma: (O),
// mean: (O), var: (O) the batch's statistics from the forward pass
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    dz: &mut [f64],
    dgamma: &mut [f64],
    dbeta: &mut [f64],
    dy: &[f64],
    z: &[f64],
    gamma: &[f64],
    mean: &[f64],
    var: &[f64],
    bsz: usize,
    o: usize,
) {
    for j in 0..o {
        let rstd = 1.0 / (var[j] + NORM_EPS).sqrt();
        let xhat = |n: usize| (z[n * o + j] - mean[j]) * rstd;
        let (mut sum_dy, mut sum_dy_xhat) = (0.0, 0.0);
        for n in 0..bsz {
            let g = dy[n * o + j];
            sum_dy += g;
            sum_dy_xhat += g * xhat(n);
        }
        dgamma[j] += sum_dy_xhat;
        dbeta[j] += sum_dy;
        let mean_dy = sum_dy / bsz as f64;
        let mean_dy_xhat = sum_dy_xhat / bsz as f64;
        for n in 0..bsz {
            dz[n * o + j] = gamma[j] * rstd * (dy[n * o + j] - mean_dy - xhat(n) * mean_dy_xhat);
        }
    }
}

/// BatchNorm's running statistics after a training batch (PyTorch's):
/// `running_mean = (1 − m)·running_mean + m·μ` and `running_var = (1 −
/// m)·running_var + m·σ²·B/(B − 1)`, the variance made unbiased; `m` is
/// [`BN_MOMENTUM`].
// running_mean: (O), running_var: (O), mean: (O), var: (O) biased, of a batch of bsz
pub fn batch_norm_update_running(
    running_mean: &mut [f64],
    running_var: &mut [f64],
    mean: &[f64],
    var: &[f64],
    bsz: usize,
) {
    assert!(bsz > 1, "the unbiased variance needs at least 2 samples");
    let unbias = bsz as f64 / (bsz - 1) as f64;
    for j in 0..mean.len() {
        running_mean[j] = (1.0 - BN_MOMENTUM) * running_mean[j] + BN_MOMENTUM * mean[j];
        running_var[j] = (1.0 - BN_MOMENTUM) * running_var[j] + BN_MOMENTUM * var[j] * unbias;
    }
}

/// LayerNorm: the mean and biased variance of each sample over its units,
/// then `y_j = γ_j·(z_j − mean)/√(var + eps) + β_j`. `eps` is [`NORM_EPS`].
// y: (B, O), mean: (B), var: (B), z: (B, O), gamma: (O), beta: (O)
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward(
    y: &mut [f64],
    mean: &mut [f64],
    var: &mut [f64],
    z: &[f64],
    gamma: &[f64],
    beta: &[f64],
    bsz: usize,
    o: usize,
) {
    for n in 0..bsz {
        let row = &z[n * o..(n + 1) * o];
        let mu = row.iter().sum::<f64>() / o as f64;
        let v = row.iter().map(|&v| (v - mu) * (v - mu)).sum::<f64>() / o as f64;
        mean[n] = mu;
        var[n] = v;
        let rstd = 1.0 / (v + NORM_EPS).sqrt();
        for j in 0..o {
            y[n * o + j] = gamma[j] * (row[j] - mu) * rstd + beta[j];
        }
    }
}

/// The backward pass of [`layer_norm_forward`]. Per sample, with `x̂ = (z −
/// mean)/σ`, `σ = √(var + eps)`, `g = γ ⊙ dy` and means over the units:
/// `dz = (1/σ)·(g − mean(g) − x̂·mean(g·x̂))` (overwrites `dz`; γ varies over
/// the units, so it stays inside the means). Accumulates `dγ += Σ_n dy·x̂`
/// and `dβ += Σ_n dy`.
// dz: (B, O), dgamma: (O), dbeta: (O), dy: (B, O), z: (B, O), gamma: (O),
// mean: (B), var: (B) from the forward pass
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    dz: &mut [f64],
    dgamma: &mut [f64],
    dbeta: &mut [f64],
    dy: &[f64],
    z: &[f64],
    gamma: &[f64],
    mean: &[f64],
    var: &[f64],
    bsz: usize,
    o: usize,
) {
    for n in 0..bsz {
        let rstd = 1.0 / (var[n] + NORM_EPS).sqrt();
        let xhat = |j: usize| (z[n * o + j] - mean[n]) * rstd;
        let (mut sum_g, mut sum_g_xhat) = (0.0, 0.0);
        for j in 0..o {
            let d = dy[n * o + j];
            dgamma[j] += d * xhat(j);
            dbeta[j] += d;
            let g = gamma[j] * d;
            sum_g += g;
            sum_g_xhat += g * xhat(j);
        }
        let mean_g = sum_g / o as f64;
        let mean_g_xhat = sum_g_xhat / o as f64;
        for j in 0..o {
            let g = gamma[j] * dy[n * o + j];
            dz[n * o + j] = rstd * (g - mean_g - xhat(j) * mean_g_xhat);
        }
    }
}

/// A loss with its label smoothing: cross-entropy against the target
/// `q = (1 − ε)·onehot(y) + ε/C` (PyTorch's `CrossEntropyLoss(
/// label_smoothing=ε)`); ε is 0 for the other losses. A bare [`Loss`]
/// converts to one without smoothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Criterion {
    pub loss: Loss,
    pub smoothing: f64,
}

impl From<Loss> for Criterion {
    fn from(loss: Loss) -> Criterion {
        Criterion {
            loss,
            smoothing: 0.0,
        }
    }
}

/// The loss of the logits against integer labels, averaged over the batch
/// (see [`Loss`] for the three formulas, [`Criterion`] for the smoothing).
// logits: (B, C), labels: (B)
pub fn loss_forward(
    logits: &[f64],
    labels: &[usize],
    criterion: impl Into<Criterion>,
    bsz: usize,
    c: usize,
) -> f64 {
    let Criterion { loss, smoothing } = criterion.into();
    let mut total = 0.0;
    for n in 0..bsz {
        let z = &logits[n * c..(n + 1) * c];
        let y = labels[n];
        total += match loss {
            // −Σ_j q_j·log softmax(z)_j = Σ_j q_j·(logsumexp(z) − z_j)
            // = (1 − ε)·(lse − z_y) + ε·(lse − mean(z)), the row max
            // subtracted for stability.
            Loss::Xent => {
                let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = z.iter().map(|&v| (v - max).exp()).sum();
                let lse = max + sum.ln();
                let mean = z.iter().sum::<f64>() / c as f64;
                (1.0 - smoothing) * (lse - z[y]) + smoothing * (lse - mean)
            }
            // Σ_c (z_c − onehot_c)² / C
            Loss::Mse => {
                let mut s = 0.0;
                for (j, &v) in z.iter().enumerate() {
                    let t = if j == y { 1.0 } else { 0.0 };
                    s += (v - t) * (v - t);
                }
                s / c as f64
            }
            // Σ_{j≠y} max(0, 1 − z_y + z_j) / C
            Loss::Hinge => {
                let mut s = 0.0;
                for (j, &v) in z.iter().enumerate() {
                    if j != y {
                        s += (1.0 - z[y] + v).max(0.0);
                    }
                }
                s / c as f64
            }
        };
    }
    total / bsz as f64
}

/// The gradient of [`loss_forward`] with respect to the logits (overwrites
/// `dlogits`). Hinge: a term contributes when its argument is > 0 strictly.
// dlogits: (B, C), logits: (B, C), labels: (B)
pub fn loss_backward(
    dlogits: &mut [f64],
    logits: &[f64],
    labels: &[usize],
    criterion: impl Into<Criterion>,
    bsz: usize,
    c: usize,
) {
    let Criterion { loss, smoothing } = criterion.into();
    let inv_b = 1.0 / bsz as f64;
    for n in 0..bsz {
        let z = &logits[n * c..(n + 1) * c];
        let dz = &mut dlogits[n * c..(n + 1) * c];
        let y = labels[n];
        match loss {
            // (softmax(z) − q) / B
            Loss::Xent => {
                let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = z.iter().map(|&v| (v - max).exp()).sum();
                for j in 0..c {
                    let p = (z[j] - max).exp() / sum;
                    let onehot = if j == y { 1.0 } else { 0.0 };
                    let q = (1.0 - smoothing) * onehot + smoothing / c as f64;
                    dz[j] = (p - q) * inv_b;
                }
            }
            // 2(z − onehot) / (B·C)
            Loss::Mse => {
                for j in 0..c {
                    let t = if j == y { 1.0 } else { 0.0 };
                    dz[j] = 2.0 * (z[j] - t) * inv_b / c as f64;
                }
            }
            // each active term j adds +1/(B·C) to z_j and −1/(B·C) to z_y
            Loss::Hinge => {
                dz.fill(0.0);
                let unit = inv_b / c as f64;
                for j in 0..c {
                    if j != y && 1.0 - z[y] + z[j] > 0.0 {
                        dz[j] += unit;
                        dz[y] -= unit;
                    }
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------
// The model.

/// An MLP in `f64`: layer `l` maps `dims[l]` inputs to `dims[l + 1]` outputs,
/// each hidden layer followed by its norm (if any) and the activation.
#[derive(Debug, Clone, PartialEq)]
pub struct RefMlp {
    /// `[inputs, hidden…, classes]`.
    pub dims: Vec<usize>,
    /// Layer `l`: `(dims[l+1], dims[l])`, row-major.
    pub weights: Vec<Vec<f64>>,
    /// Layer `l`: `(dims[l+1])`; empty for a hidden layer with
    /// [`Norm::Batch`] (its Linear has no bias).
    pub biases: Vec<Vec<f64>>,
    /// Activation of the hidden layers.
    pub act: Act,
    /// Normalisation of the hidden layers.
    pub norm: Norm,
    /// Hidden layer `l`'s norm scale `γ` (`.weight`), `(dims[l+1])`; no
    /// entries without norm.
    pub gammas: Vec<Vec<f64>>,
    /// Hidden layer `l`'s norm shift `β` (`.bias`), `(dims[l+1])`; no
    /// entries without norm.
    pub betas: Vec<Vec<f64>>,
    /// BatchNorm's running mean of hidden layer `l`, `(dims[l+1])`; no
    /// entries unless the norm is [`Norm::Batch`].
    pub running_mean: Vec<Vec<f64>>,
    /// BatchNorm's running (unbiased) variance of hidden layer `l`.
    pub running_var: Vec<Vec<f64>>,
    /// Training batches folded into the running statistics (PyTorch's
    /// `num_batches_tracked`, the same for every layer).
    pub batches_tracked: u64,
}

/// Gradients of the loss, shaped like the [`RefMlp`] parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RefGrads {
    pub weights: Vec<Vec<f64>>,
    pub biases: Vec<Vec<f64>>,
    pub gammas: Vec<Vec<f64>>,
    pub betas: Vec<Vec<f64>>,
}

impl RefGrads {
    /// Zero gradients for a network with these dims and no norm.
    pub fn zeros(dims: &[usize]) -> RefGrads {
        let layers = dims.len() - 1;
        RefGrads {
            weights: (0..layers)
                .map(|l| vec![0.0; dims[l + 1] * dims[l]])
                .collect(),
            biases: (0..layers).map(|l| vec![0.0; dims[l + 1]]).collect(),
            gammas: Vec::new(),
            betas: Vec::new(),
        }
    }

    /// Zero gradients shaped like `mlp`'s parameters.
    pub fn zeros_like(mlp: &RefMlp) -> RefGrads {
        let zeros = |ts: &[Vec<f64>]| ts.iter().map(|t| vec![0.0; t.len()]).collect();
        RefGrads {
            weights: zeros(&mlp.weights),
            biases: zeros(&mlp.biases),
            gammas: zeros(&mlp.gammas),
            betas: zeros(&mlp.betas),
        }
    }

    /// The tensors in [`RefMlp::param_names`] order.
    pub fn tensors(&self) -> Vec<&[f64]> {
        slots(&self.biases, self.gammas.len())
            .into_iter()
            .map(|s| match s {
                Slot::Weight(l) => self.weights[l].as_slice(),
                Slot::Bias(l) => &self.biases[l],
                Slot::Gamma(l) => &self.gammas[l],
                Slot::Beta(l) => &self.betas[l],
            })
            .collect()
    }
}

/// PyTorch `nn.Sequential` names of the parameters of a network with
/// `layers` linear layers and no norm: `0.weight`, `0.bias`, `2.weight`,
/// `2.bias`, … (layer `l`'s `Linear` is module `2l`; the activations sit in
/// between). [`RefMlp::param_names`] also names the norms' parameters.
pub fn param_names(layers: usize) -> Vec<String> {
    (0..layers)
        .flat_map(|l| [format!("{}.weight", 2 * l), format!("{}.bias", 2 * l)])
        .collect()
}

/// A parameter tensor: layer `l`'s Linear weight or bias, or hidden layer
/// `l`'s norm scale or shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Weight(usize),
    Bias(usize),
    Gamma(usize),
    Beta(usize),
}

/// The parameter tensors in `state_dict` order (per layer: the Linear's
/// weight and bias, then its norm's `γ` and `β`), from their shapes: a
/// layer without bias has an empty one, and `norms` hidden layers have a
/// norm.
fn slots(biases: &[Vec<f64>], norms: usize) -> Vec<Slot> {
    let mut out = Vec::new();
    for (l, b) in biases.iter().enumerate() {
        out.push(Slot::Weight(l));
        if !b.is_empty() {
            out.push(Slot::Bias(l));
        }
        if l < norms {
            out.extend([Slot::Gamma(l), Slot::Beta(l)]);
        }
    }
    out
}

/// Activations kept by the forward pass for the backward pass.
struct Trace {
    /// `hs[0]` is the input; `hs[l + 1]` the output of layer `l` (after
    /// activation and mask for hidden layers, the logits for the last one).
    hs: Vec<Vec<f64>>,
    /// `zs[l]`: output of layer `l`'s Linear, `(B, dims[l+1])`.
    zs: Vec<Vec<f64>>,
    /// `ys[l]`: input of hidden layer `l`'s activation, its normalised
    /// `zs[l]` (`zs[l]` itself without norm).
    ys: Vec<Vec<f64>>,
    /// Hidden layer `l`'s normalisation statistics, mean and biased
    /// variance: per unit `(dims[l+1])` for BatchNorm in training, per sample
    /// `(B)` for LayerNorm; empty otherwise.
    stats: Vec<(Vec<f64>, Vec<f64>)>,
}

/// Which statistics BatchNorm uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The batch's (and dropout masks apply).
    Train,
    /// The running ones (and no dropout).
    Eval,
}

impl RefMlp {
    /// A network with all parameters zero, without norm.
    pub fn zeros(dims: &[usize], act: Act) -> RefMlp {
        assert!(dims.len() >= 2, "an MLP needs at least inputs and classes");
        let g = RefGrads::zeros(dims);
        RefMlp {
            dims: dims.to_vec(),
            weights: g.weights,
            biases: g.biases,
            act,
            norm: Norm::None,
            gammas: Vec::new(),
            betas: Vec::new(),
            running_mean: Vec::new(),
            running_var: Vec::new(),
            batches_tracked: 0,
        }
    }

    /// A network with zero Linear parameters (no hidden biases with
    /// BatchNorm) and fresh norms: `γ = 1`, `β = 0`, running mean 0 and
    /// running variance 1 (PyTorch's initial values).
    pub fn zeros_with_norm(dims: &[usize], act: Act, norm: Norm) -> RefMlp {
        let mut mlp = RefMlp::zeros(dims, act);
        mlp.norm = norm;
        let hidden = &dims[1..dims.len() - 1];
        if norm != Norm::None {
            mlp.gammas = hidden.iter().map(|&o| vec![1.0; o]).collect();
            mlp.betas = hidden.iter().map(|&o| vec![0.0; o]).collect();
        }
        if norm == Norm::Batch {
            for b in &mut mlp.biases[..hidden.len()] {
                b.clear();
            }
            mlp.running_mean = hidden.iter().map(|&o| vec![0.0; o]).collect();
            mlp.running_var = hidden.iter().map(|&o| vec![1.0; o]).collect();
        }
        mlp
    }

    /// A network with weights and biases uniform in `±1/√fan_in` (the range
    /// of PyTorch's `nn.Linear` initialisation), drawn from `rng`.
    pub fn random(dims: &[usize], act: Act, rng: &mut SplitMix64) -> RefMlp {
        RefMlp::random_with_norm(dims, act, Norm::None, rng)
    }

    /// As [`RefMlp::random`] (the same draws without norm), then per hidden
    /// layer `γ` uniform in `[0.5, 1.5)` and `β` uniform in `[−0.5, 0.5)`, so
    /// that neither is the identity; fresh running statistics.
    pub fn random_with_norm(dims: &[usize], act: Act, norm: Norm, rng: &mut SplitMix64) -> RefMlp {
        let mut mlp = RefMlp::zeros_with_norm(dims, act, norm);
        for (l, (w, b)) in mlp.weights.iter_mut().zip(&mut mlp.biases).enumerate() {
            let bound = 1.0 / (dims[l] as f64).sqrt();
            for v in w.iter_mut().chain(b.iter_mut()) {
                *v = rng.uniform(-bound, bound);
            }
        }
        for (g, b) in mlp.gammas.iter_mut().zip(&mut mlp.betas) {
            for v in g.iter_mut() {
                *v = rng.uniform(0.5, 1.5);
            }
            for v in b.iter_mut() {
                *v = rng.uniform(-0.5, 0.5);
            }
        }
        mlp
    }

    /// Number of linear layers.
    pub fn layers(&self) -> usize {
        self.dims.len() - 1
    }

    /// Number of classes (outputs of the last layer).
    pub fn classes(&self) -> usize {
        self.dims[self.dims.len() - 1]
    }

    fn slots(&self) -> Vec<Slot> {
        slots(&self.biases, self.gammas.len())
    }

    /// PyTorch `state_dict` names of the parameters, in the order of
    /// [`RefMlp::tensors`]: without norm those of [`param_names`]; with one,
    /// `0.weight`, [`0.bias` unless BatchNorm], `1.weight` (γ), `1.bias`
    /// (β), `3.weight`, …, the last Linear's weight and bias.
    pub fn param_names(&self) -> Vec<String> {
        let per_layer = if self.norm == Norm::None { 2 } else { 3 };
        self.slots()
            .into_iter()
            .map(|s| match s {
                Slot::Weight(l) => format!("{}.weight", per_layer * l),
                Slot::Bias(l) => format!("{}.bias", per_layer * l),
                Slot::Gamma(l) => format!("{}.weight", per_layer * l + 1),
                Slot::Beta(l) => format!("{}.bias", per_layer * l + 1),
            })
            .collect()
    }

    /// The parameters in [`RefMlp::param_names`] order.
    pub fn tensors(&self) -> Vec<&[f64]> {
        self.slots()
            .into_iter()
            .map(|s| match s {
                Slot::Weight(l) => self.weights[l].as_slice(),
                Slot::Bias(l) => &self.biases[l],
                Slot::Gamma(l) => &self.gammas[l],
                Slot::Beta(l) => &self.betas[l],
            })
            .collect()
    }

    /// Parameter tensor `t` in [`RefMlp::param_names`] order.
    pub fn tensor_mut(&mut self, t: usize) -> &mut Vec<f64> {
        match self.slots()[t] {
            Slot::Weight(l) => &mut self.weights[l],
            Slot::Bias(l) => &mut self.biases[l],
            Slot::Gamma(l) => &mut self.gammas[l],
            Slot::Beta(l) => &mut self.betas[l],
        }
    }

    fn check_shapes(&self, x: &[f64], batch: usize, masks: Option<&[Vec<f64>]>) {
        assert_eq!(x.len(), batch * self.dims[0], "x must be (batch, inputs)");
        let hidden = self.layers() - 1;
        let norms = if self.norm == Norm::None { 0 } else { hidden };
        assert_eq!(
            self.gammas.len(),
            norms,
            "one γ per hidden layer with a norm"
        );
        assert_eq!(
            self.betas.len(),
            norms,
            "one β per hidden layer with a norm"
        );
        if self.norm == Norm::Batch {
            assert_eq!(
                self.running_mean.len(),
                hidden,
                "one running mean per layer"
            );
            assert_eq!(
                self.running_var.len(),
                hidden,
                "one running variance per layer"
            );
        }
        if let Some(masks) = masks {
            assert_eq!(masks.len(), hidden, "one mask per hidden layer");
            for (l, m) in masks.iter().enumerate() {
                assert_eq!(
                    m.len(),
                    batch * self.dims[l + 1],
                    "mask {l} must be (batch, dims[{}])",
                    l + 1
                );
            }
        }
    }

    // x: (B, D), masks[l]: (B, dims[l+1]) for each hidden layer (Train only)
    fn forward_trace(
        &self,
        x: &[f64],
        batch: usize,
        masks: Option<&[Vec<f64>]>,
        mode: Mode,
    ) -> Trace {
        self.check_shapes(x, batch, masks);
        if self.norm == Norm::Batch && mode == Mode::Train {
            // PyTorch refuses it too: one sample normalises to β.
            assert!(batch > 1, "BatchNorm in training needs at least 2 samples");
        }
        let mut trace = Trace {
            hs: vec![x.to_vec()],
            zs: Vec::new(),
            ys: Vec::new(),
            stats: Vec::new(),
        };
        for l in 0..self.layers() {
            let (i, o) = (self.dims[l], self.dims[l + 1]);
            let mut z = vec![0.0; batch * o];
            linear_forward(
                &mut z,
                &trace.hs[l],
                &self.weights[l],
                &self.biases[l],
                batch,
                i,
                o,
            );
            if l + 1 == self.layers() {
                trace.hs.push(z.clone());
                trace.zs.push(z);
                break;
            }
            let mut y = vec![0.0; batch * o];
            let (mut mean, mut var) = (Vec::new(), Vec::new());
            match (self.norm, mode) {
                (Norm::None, _) => y.copy_from_slice(&z),
                (Norm::Batch, Mode::Train) => {
                    (mean, var) = (vec![0.0; o], vec![0.0; o]);
                    let (g, b) = (&self.gammas[l], &self.betas[l]);
                    batch_norm_forward(&mut y, &mut mean, &mut var, &z, g, b, batch, o);
                }
                (Norm::Batch, Mode::Eval) => batch_norm_with_stats(
                    &mut y,
                    &z,
                    &self.gammas[l],
                    &self.betas[l],
                    &self.running_mean[l],
                    &self.running_var[l],
                    batch,
                    o,
                ),
                (Norm::Layer, _) => {
                    (mean, var) = (vec![0.0; batch], vec![0.0; batch]);
                    let (g, b) = (&self.gammas[l], &self.betas[l]);
                    layer_norm_forward(&mut y, &mut mean, &mut var, &z, g, b, batch, o);
                }
            }
            let mut h = vec![0.0; batch * o];
            act_forward(&mut h, &y, masks.map(|m| m[l].as_slice()), self.act);
            trace.hs.push(h);
            trace.zs.push(z);
            trace.ys.push(y);
            trace.stats.push((mean, var));
        }
        trace
    }

    /// The logits in training mode (BatchNorm on the batch's statistics,
    /// dropout masks applied). Leaves the running statistics alone: see
    /// [`RefMlp::update_running_stats`].
    // logits: (B, C), x: (B, D), masks[l]: (B, dims[l+1]) for each hidden layer
    pub fn forward(&self, x: &[f64], batch: usize, masks: Option<&[Vec<f64>]>) -> Vec<f64> {
        self.forward_trace(x, batch, masks, Mode::Train)
            .hs
            .pop()
            .unwrap()
    }

    /// The logits in evaluation mode (PyTorch's `model.eval()`): BatchNorm
    /// on the running statistics, no dropout.
    // logits: (B, C), x: (B, D)
    pub fn forward_eval(&self, x: &[f64], batch: usize) -> Vec<f64> {
        self.forward_trace(x, batch, None, Mode::Eval)
            .hs
            .pop()
            .unwrap()
    }

    /// What a training forward pass on this batch does to BatchNorm's
    /// running statistics ([`batch_norm_update_running`] on each hidden
    /// layer, one more batch tracked). Nothing for other norms.
    // x: (B, D), masks[l]: (B, dims[l+1]) for each hidden layer
    pub fn update_running_stats(&mut self, x: &[f64], batch: usize, masks: Option<&[Vec<f64>]>) {
        if self.norm != Norm::Batch {
            return;
        }
        let trace = self.forward_trace(x, batch, masks, Mode::Train);
        for (l, (mean, var)) in trace.stats.iter().enumerate() {
            batch_norm_update_running(
                &mut self.running_mean[l],
                &mut self.running_var[l],
                mean,
                var,
                batch,
            );
        }
        self.batches_tracked += 1;
    }

    /// `λ Σ_l ‖W_l‖²` (Linear weights only).
    pub fn l2_penalty(&self, l2: f64) -> f64 {
        if l2 == 0.0 {
            return 0.0;
        }
        l2 * self.weights.iter().flatten().map(|w| w * w).sum::<f64>()
    }

    /// The loss in training mode, including the L2 term. The batch size is
    /// `labels.len()`.
    // x: (B, D), labels: (B), masks[l]: (B, dims[l+1])
    pub fn loss(
        &self,
        x: &[f64],
        labels: &[usize],
        criterion: impl Into<Criterion>,
        l2: f64,
        masks: Option<&[Vec<f64>]>,
    ) -> f64 {
        let batch = labels.len();
        let logits = self.forward(x, batch, masks);
        loss_forward(&logits, labels, criterion, batch, self.classes()) + self.l2_penalty(l2)
    }

    /// The loss in training mode, the logits and the gradient of the loss
    /// with respect to every parameter. The batch size is `labels.len()`.
    // x: (B, D), labels: (B), masks[l]: (B, dims[l+1]); logits: (B, C)
    pub fn loss_and_grads(
        &self,
        x: &[f64],
        labels: &[usize],
        criterion: impl Into<Criterion>,
        l2: f64,
        masks: Option<&[Vec<f64>]>,
    ) -> (f64, Vec<f64>, RefGrads) {
        let criterion = criterion.into();
        let batch = labels.len();
        let c = self.classes();
        let trace = self.forward_trace(x, batch, masks, Mode::Train);
        let logits = &trace.hs[self.layers()];
        let value = loss_forward(logits, labels, criterion, batch, c) + self.l2_penalty(l2);

        let mut grads = RefGrads::zeros_like(self);
        // dz: gradient with respect to the current layer's Linear output.
        let mut dz = vec![0.0; batch * c];
        loss_backward(&mut dz, logits, labels, criterion, batch, c);
        for l in (0..self.layers()).rev() {
            let (i, o) = (self.dims[l], self.dims[l + 1]);
            let mut dh_prev = vec![0.0; batch * i];
            let dx = if l > 0 {
                Some(dh_prev.as_mut_slice())
            } else {
                None
            };
            linear_backward(
                dx,
                &mut grads.weights[l],
                &mut grads.biases[l],
                &dz,
                &trace.hs[l],
                &self.weights[l],
                batch,
                i,
                o,
            );
            if l == 0 {
                break;
            }
            // Through the activation (and mask), then the norm, of hidden
            // layer k = l − 1.
            let k = l - 1;
            let mut dy = vec![0.0; batch * i];
            let mask = masks.map(|m| m[k].as_slice());
            act_backward(&mut dy, &dh_prev, &trace.ys[k], mask, self.act);
            dz = match self.norm {
                Norm::None => dy,
                Norm::Batch | Norm::Layer => {
                    let backward = if self.norm == Norm::Batch {
                        batch_norm_backward
                    } else {
                        layer_norm_backward
                    };
                    let mut dz_prev = vec![0.0; batch * i];
                    let (mean, var) = &trace.stats[k];
                    backward(
                        &mut dz_prev,
                        &mut grads.gammas[k],
                        &mut grads.betas[k],
                        &dy,
                        &trace.zs[k],
                        &self.gammas[k],
                        mean,
                        var,
                        batch,
                        i,
                    );
                    dz_prev
                }
            };
        }
        if l2 != 0.0 {
            for (dw, w) in grads.weights.iter_mut().zip(&self.weights) {
                for (g, &v) in dw.iter_mut().zip(w) {
                    *g += 2.0 * l2 * v;
                }
            }
        }
        (value, logits.clone(), grads)
    }

    /// How far the inputs are from a kink of the loss: the smallest `|y|` of
    /// a ReLU or leaky-ReLU pre-activation (after the norm) and, for the
    /// hinge loss, the smallest `|1 − z_y + z_j|` (`j ≠ y`), in training mode.
    /// Finite differences are only meaningful when this is well above the
    /// perturbation they make; `f64::INFINITY` when the network has no kink
    /// (tanh, sigmoid, xent, mse).
    // x: (B, D), labels: (B), masks[l]: (B, dims[l+1])
    pub fn kink_distance(
        &self,
        x: &[f64],
        labels: &[usize],
        loss: Loss,
        masks: Option<&[Vec<f64>]>,
    ) -> f64 {
        let batch = labels.len();
        let trace = self.forward_trace(x, batch, masks, Mode::Train);
        let mut dist = f64::INFINITY;
        if matches!(self.act, Act::Relu | Act::LeakyRelu) {
            for y in &trace.ys {
                dist = y.iter().fold(dist, |d, v| d.min(v.abs()));
            }
        }
        if loss == Loss::Hinge {
            let c = self.classes();
            let logits = &trace.hs[self.layers()];
            for (n, &y) in labels.iter().enumerate() {
                let z = &logits[n * c..(n + 1) * c];
                for (j, &v) in z.iter().enumerate() {
                    if j != y {
                        dist = dist.min((1.0 - z[y] + v).abs());
                    }
                }
            }
        }
        dist
    }
}

// ----------------------------------------------------------------------------
// Optimisers (PyTorch semantics).

/// An optimiser and its hyperparameters. `weight_decay` is decoupled (`w −=
/// lr·wd·w` before the update) and applies to the Linear weights only, not
/// to biases nor to the norms' `γ` and `β`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RefOptim {
    /// `v = μ·v + g`; `d = nesterov ? g + μ·v : v`; `w −= lr·d`
    /// (`torch.optim.SGD`, dampening 0).
    Sgd {
        lr: f64,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    },
    /// `m = β1·m + (1−β1)·g`, `v = β2·v + (1−β2)·g²`, `w −= lr·m̂/(√v̂ + eps)`
    /// with the bias corrections `m̂ = m/(1−β1^t)`, `v̂ = v/(1−β2^t)`, t from 1
    /// (`torch.optim.AdamW` with weight decay on the Linear weights only).
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
}

/// An optimiser with its state: the momentum buffers (SGD) or the moments
/// (Adam), one per parameter tensor in [`RefMlp::param_names`] order.
#[derive(Debug, Clone)]
pub struct RefOptimizer {
    pub optim: RefOptim,
    /// Steps taken so far.
    pub t: u64,
    /// SGD momentum buffer, or Adam's first moment.
    pub m: Vec<Vec<f64>>,
    /// Adam's second moment (unused by SGD).
    pub v: Vec<Vec<f64>>,
}

impl RefOptimizer {
    /// A fresh optimiser (zero state) for `mlp`'s parameters.
    pub fn new(optim: RefOptim, mlp: &RefMlp) -> RefOptimizer {
        let zeros: Vec<Vec<f64>> = mlp.tensors().iter().map(|t| vec![0.0; t.len()]).collect();
        RefOptimizer {
            optim,
            t: 0,
            m: zeros.clone(),
            v: zeros,
        }
    }

    /// One step with the configured learning rate.
    pub fn step(&mut self, mlp: &mut RefMlp, grads: &RefGrads) {
        let lr = match self.optim {
            RefOptim::Sgd { lr, .. } | RefOptim::Adam { lr, .. } => lr,
        };
        self.step_with_lr(mlp, grads, lr);
    }

    /// One step with learning rate `lr` (a schedule's value for this step).
    pub fn step_with_lr(&mut self, mlp: &mut RefMlp, grads: &RefGrads, lr: f64) {
        self.t += 1;
        let grads = grads.tensors();
        let slots = mlp.slots();
        assert_eq!(
            grads.len(),
            slots.len(),
            "gradients shaped like the network"
        );
        for (t, g) in grads.iter().enumerate() {
            let is_weight = matches!(slots[t], Slot::Weight(_));
            let w = mlp.tensor_mut(t);
            let (m, v) = (&mut self.m[t], &mut self.v[t]);
            match self.optim {
                RefOptim::Sgd {
                    momentum,
                    nesterov,
                    weight_decay,
                    ..
                } => {
                    for k in 0..w.len() {
                        if is_weight && weight_decay != 0.0 {
                            w[k] -= lr * weight_decay * w[k];
                        }
                        let d = if momentum != 0.0 {
                            m[k] = momentum * m[k] + g[k];
                            if nesterov {
                                g[k] + momentum * m[k]
                            } else {
                                m[k]
                            }
                        } else {
                            g[k]
                        };
                        w[k] -= lr * d;
                    }
                }
                RefOptim::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                } => {
                    let bc1 = 1.0 - beta1.powi(self.t as i32);
                    let bc2 = 1.0 - beta2.powi(self.t as i32);
                    for k in 0..w.len() {
                        if is_weight && weight_decay != 0.0 {
                            w[k] -= lr * weight_decay * w[k];
                        }
                        m[k] = beta1 * m[k] + (1.0 - beta1) * g[k];
                        v[k] = beta2 * v[k] + (1.0 - beta2) * g[k] * g[k];
                        let m_hat = m[k] / bc1;
                        let v_hat = v[k] / bc2;
                        w[k] -= lr * m_hat / (v_hat.sqrt() + eps);
                    }
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------
// Gradient check.

/// Finite-difference step. Central differences have a truncation error of
/// about `ε²·|L‴|/6` and a rounding error of about `1e-16·|L|/ε`; on the
/// test networks (hidden 7 and 4, batch 6, all activations and losses) the
/// largest absolute error |analytic − numeric| measured 2.9e-10 at ε = 1e-6,
/// 1.1e-10 at 3e-6, 4.1e-11 at 1e-5, 3.4e-10 at 3e-5 and 3.8e-9 at 1e-4.
///
/// With BatchNorm the relative error is larger (3.8e-7 at worst on the
/// test networks, against 1.7e-7 without norm) and it is truncation, not
/// rounding: it grows fourfold when ε doubles. A weight row feeds a unit
/// normalised by its batch standard deviation σ, so the loss's k-th
/// derivative along it scales like 1/σᵏ and the relative error like
/// (ε/σ)²; the worst element sits on a unit with σ = 0.11 over the batch
/// of 6.
pub const GRADCHECK_EPS: f64 = 1e-5;
/// Denominator floor of [`relative_error`]: a gradient smaller than this is
/// held to an absolute error of `GRADCHECK_TOL · GRADCHECK_FLOOR` = 1e-10,
/// above the finite-difference noise, instead of a relative one.
pub const GRADCHECK_FLOOR: f64 = 1e-4;
/// Largest accepted relative error.
pub const GRADCHECK_TOL: f64 = 1e-6;
/// Smallest accepted [`RefMlp::kink_distance`]: a perturbation of ε = 1e-5
/// moves a pre-activation by about ε·|x|, two orders of magnitude less.
pub const KINK_MARGIN: f64 = 1e-3;

/// Relative error `|a − n| / max(|a|, |n|, floor)`. The floor keeps values
/// that are zero up to the finite-difference noise from counting as large
/// relative errors (see [`GRADCHECK_FLOOR`]).
pub fn relative_error(analytic: f64, numeric: f64, floor: f64) -> f64 {
    let diff = (analytic - numeric).abs();
    if diff == 0.0 {
        return 0.0;
    }
    diff / analytic.abs().max(numeric.abs()).max(floor)
}

/// Inputs of a gradient check: a batch, its labels, the loss and its L2
/// coefficient, and optional dropout masks.
#[derive(Debug, Clone, Copy)]
pub struct GradcheckInput<'a> {
    // x: (B, D), labels: (B), masks[l]: (B, dims[l+1])
    pub x: &'a [f64],
    pub labels: &'a [usize],
    pub loss: Criterion,
    pub l2: f64,
    pub masks: Option<&'a [Vec<f64>]>,
    /// Finite-difference step ([`GRADCHECK_EPS`]).
    pub eps: f64,
    /// Denominator floor of [`relative_error`] ([`GRADCHECK_FLOOR`]).
    pub floor: f64,
}

/// Compares `analytic` against central finite differences `(L(w+ε) −
/// L(w−ε)) / 2ε`, one parameter at a time (the loss in training mode).
/// Returns, per tensor in [`RefMlp::param_names`] order, its name and the
/// maximum relative error.
pub fn compare_with_finite_differences(
    mlp: &RefMlp,
    analytic: &RefGrads,
    input: &GradcheckInput,
) -> Vec<(String, f64)> {
    let names = mlp.param_names();
    let analytic = analytic.tensors();
    let mut probe = mlp.clone();
    let mut out = Vec::new();
    for (t, name) in names.into_iter().enumerate() {
        let mut worst: f64 = 0.0;
        for (k, &a) in analytic[t].iter().enumerate() {
            let orig = probe.tensor_mut(t)[k];
            probe.tensor_mut(t)[k] = orig + input.eps;
            let plus = probe.loss(input.x, input.labels, input.loss, input.l2, input.masks);
            probe.tensor_mut(t)[k] = orig - input.eps;
            let minus = probe.loss(input.x, input.labels, input.loss, input.l2, input.masks);
            probe.tensor_mut(t)[k] = orig;
            let numeric = (plus - minus) / (2.0 * input.eps);
            worst = worst.max(relative_error(a, numeric, input.floor));
        }
        out.push((name, worst));
    }
    out
}

/// Checks [`RefMlp::loss_and_grads`] against central finite differences:
/// per tensor, its name and the maximum relative error.
pub fn gradcheck(mlp: &RefMlp, input: &GradcheckInput) -> Vec<(String, f64)> {
    let (_, _, grads) =
        mlp.loss_and_grads(input.x, input.labels, input.loss, input.l2, input.masks);
    compare_with_finite_differences(mlp, &grads, input)
}

/// A random gradient-check problem: a network, a batch, its labels and,
/// with dropout, masks for the hidden layers.
#[derive(Debug, Clone)]
pub struct Problem {
    pub mlp: RefMlp,
    // x: (B, D), labels: (B), masks[l]: (B, dims[l+1])
    pub x: Vec<f64>,
    pub labels: Vec<usize>,
    pub masks: Option<Vec<Vec<f64>>>,
}

/// Draws a [`Problem`] from `seed` (weights as [`RefMlp::random`], inputs
/// standard normal, labels uniform, dropout masks with probability
/// `dropout`), redrawing until its [`RefMlp::kink_distance`] is at least
/// `margin`, so that finite differences do not straddle a ReLU or hinge
/// kink (cs231n's advice). `None` when 1000 draws all came too close.
pub fn random_problem(
    dims: &[usize],
    act: Act,
    loss: Loss,
    batch: usize,
    dropout: f64,
    seed: u64,
    margin: f64,
) -> Option<Problem> {
    random_problem_with_norm(dims, act, loss, batch, dropout, Norm::None, seed, margin)
}

/// As [`random_problem`], the network drawn by [`RefMlp::random_with_norm`]
/// (the same draws as [`random_problem`] without norm).
#[allow(clippy::too_many_arguments)]
pub fn random_problem_with_norm(
    dims: &[usize],
    act: Act,
    loss: Loss,
    batch: usize,
    dropout: f64,
    norm: Norm,
    seed: u64,
    margin: f64,
) -> Option<Problem> {
    let mut rng = SplitMix64::new(seed);
    for _ in 0..1000 {
        let mlp = RefMlp::random_with_norm(dims, act, norm, &mut rng);
        let x = rng.normals(batch * dims[0]);
        let labels: Vec<usize> = (0..batch)
            .map(|_| rng.below(dims[dims.len() - 1]))
            .collect();
        let masks = (dropout > 0.0).then(|| rng.dropout_masks(dims, batch, dropout));
        if mlp.kink_distance(&x, &labels, loss, masks.as_deref()) >= margin {
            return Some(Problem {
                mlp,
                x,
                labels,
                masks,
            });
        }
    }
    None
}

// ----------------------------------------------------------------------------
// A small seeded generator for random networks, batches and masks.

/// SplitMix64 (Steele, Lea and Flood 2014; the seeding generator of
/// xoshiro): a 64-bit counter stepped by the golden-ratio constant, then
/// mixed. Small, fast, and good enough for test data.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform in `0..n` (modulo bias is negligible for small `n`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `n` standard normal values (Box–Muller).
    pub fn normals(&mut self, n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let u1 = 1.0 - self.next_f64(); // (0, 1]
                let u2 = self.next_f64();
                (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            })
            .collect()
    }

    /// Inverted-dropout masks for the hidden layers of a network with these
    /// dims: each value is 0 with probability `p`, else `1/(1−p)`.
    pub fn dropout_masks(&mut self, dims: &[usize], batch: usize, p: f64) -> Vec<Vec<f64>> {
        let keep = 1.0 / (1.0 - p);
        (1..dims.len() - 1)
            .map(|l| {
                (0..batch * dims[l])
                    .map(|_| if self.next_f64() < p { 0.0 } else { keep })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaky_slope_is_the_model_constant() {
        assert_eq!(LEAKY_SLOPE_F64 as f32, crate::model::LEAKY_SLOPE);
    }

    #[test]
    fn names_follow_nn_sequential() {
        assert_eq!(
            param_names(3),
            ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
        );
    }

    #[test]
    fn linear_forward_by_hand() {
        // x = [[1, 2]], w = [[1, 0], [0, 1], [1, 1]], b = [0.5, 0, -1]
        let mut z = [0.0; 3];
        linear_forward(
            &mut z,
            &[1.0, 2.0],
            &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            &[0.5, 0.0, -1.0],
            1,
            2,
            3,
        );
        assert_eq!(z, [1.5, 2.0, 2.0]);
    }

    fn assert_close(ours: &[f64], want: &[f64]) {
        assert_eq!(ours.len(), want.len());
        for (a, b) in ours.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{ours:?} vs {want:?}");
        }
    }

    #[test]
    fn batch_norm_by_hand() {
        // z = [[1, 10], [3, 10]] (B = 2, O = 2): unit 0 has mean 2 and
        // biased variance 1, unit 1 mean 10 and variance 0.
        let z = [1.0, 10.0, 3.0, 10.0];
        let (gamma, beta) = ([2.0, 3.0], [0.5, -1.0]);
        let (mut y, mut mean, mut var) = ([0.0; 4], [0.0; 2], [0.0; 2]);
        batch_norm_forward(&mut y, &mut mean, &mut var, &z, &gamma, &beta, 2, 2);
        assert_eq!(mean, [2.0, 10.0]);
        assert_eq!(var, [1.0, 0.0]);
        // x̂ = ∓1/√(1 + eps) on unit 0; 0 on unit 1, so y = β there.
        let r = 1.0 / (1.0 + NORM_EPS).sqrt();
        assert_close(&y, &[0.5 - 2.0 * r, -1.0, 0.5 + 2.0 * r, -1.0]);
        // From (0, 1): mean 0.1·μ, variance 0.9 + 0.1·σ²·2/(2 − 1).
        let (mut running_mean, mut running_var) = ([0.0; 2], [1.0; 2]);
        batch_norm_update_running(&mut running_mean, &mut running_var, &mean, &var, 2);
        assert_close(&running_mean, &[0.2, 1.0]);
        assert_close(&running_var, &[1.1, 0.9]);
        // Evaluation on given statistics: (z − 1)/√(4 + eps) and (z − 10)/√(0 + eps).
        let mut y = [0.0; 2];
        batch_norm_with_stats(
            &mut y,
            &[3.0, 10.0],
            &gamma,
            &beta,
            &[1.0, 10.0],
            &[4.0, 0.0],
            1,
            2,
        );
        assert_close(&y, &[0.5 + 4.0 / (4.0 + NORM_EPS).sqrt(), -1.0]);
    }

    #[test]
    fn layer_norm_by_hand() {
        // z = [[1, 2, 3], [4, 4, 4]] (B = 2, O = 3): sample 0 has mean 2
        // and biased variance 2/3, sample 1 mean 4 and variance 0.
        let z = [1.0, 2.0, 3.0, 4.0, 4.0, 4.0];
        let (gamma, beta) = ([1.0, 2.0, 3.0], [0.0, 0.5, -1.0]);
        let (mut y, mut mean, mut var) = ([0.0; 6], [0.0; 2], [0.0; 2]);
        layer_norm_forward(&mut y, &mut mean, &mut var, &z, &gamma, &beta, 2, 3);
        assert_eq!(mean, [2.0, 4.0]);
        assert_close(&var, &[2.0 / 3.0, 0.0]);
        // x̂ = (−1, 0, 1)/√(2/3 + eps) for sample 0; 0 for sample 1 (y = β).
        let r = 1.0 / (2.0 / 3.0 + NORM_EPS).sqrt();
        assert_close(&y, &[-r, 0.5, 3.0 * r - 1.0, 0.0, 0.5, -1.0]);
    }

    #[test]
    fn losses_by_hand() {
        // One sample, C = 2, logits [0, 0], label 0.
        let z = [0.0, 0.0];
        assert!((loss_forward(&z, &[0], Loss::Xent, 1, 2) - 2f64.ln()).abs() < 1e-15);
        assert_eq!(loss_forward(&z, &[0], Loss::Mse, 1, 2), 0.5);
        assert_eq!(loss_forward(&z, &[0], Loss::Hinge, 1, 2), 0.5);
    }
}
