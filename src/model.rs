//! The multi-layer perceptron: its configuration and the choices a user
//! makes (activation, loss).

/// Slope of the leaky ReLU for negative inputs (PyTorch's default).
pub const LEAKY_SLOPE: f32 = 0.01;

/// Activation of the hidden layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    /// `max(z, 0)`; its derivative at 0 is taken as 0.
    #[default]
    Relu,
    /// `z > 0 ? z : 0.01·z`.
    LeakyRelu,
    /// `tanh(z)`.
    Tanh,
    /// `1 / (1 + e^−z)`.
    Sigmoid,
}

impl std::str::FromStr for Act {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "relu" => Ok(Act::Relu),
            "leaky_relu" => Ok(Act::LeakyRelu),
            "tanh" => Ok(Act::Tanh),
            "sigmoid" => Ok(Act::Sigmoid),
            _ => Err(format!(
                "unknown activation {s:?} (relu, leaky_relu, tanh or sigmoid)"
            )),
        }
    }
}

impl std::fmt::Display for Act {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Act::Relu => "relu",
            Act::LeakyRelu => "leaky_relu",
            Act::Tanh => "tanh",
            Act::Sigmoid => "sigmoid",
        })
    }
}

/// Loss on the logits of the last layer, averaged over the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Softmax + cross-entropy (PyTorch `F.cross_entropy`).
    #[default]
    Xent,
    /// Mean squared error against the one-hot target, averaged over batch
    /// and classes (PyTorch `F.mse_loss(logits, one_hot)`).
    Mse,
    /// Multiclass SVM hinge loss with margin 1, `Σ_{j≠y} max(0, 1 − z_y +
    /// z_j) / C` per sample (PyTorch `F.multi_margin_loss`).
    Hinge,
}

impl std::str::FromStr for Loss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "xent" => Ok(Loss::Xent),
            "mse" => Ok(Loss::Mse),
            "hinge" => Ok(Loss::Hinge),
            _ => Err(format!("unknown loss {s:?} (xent, mse or hinge)")),
        }
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Loss::Xent => "xent",
            Loss::Mse => "mse",
            Loss::Hinge => "hinge",
        })
    }
}

/// Normalisation after each hidden Linear, before the activation
/// (PyTorch's `nn.Sequential(Linear, BatchNorm1d, act, …)` order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// Plain `Linear, act` layers.
    #[default]
    None,
    /// `nn.BatchNorm1d`: each unit normalised over the batch in training
    /// (biased variance), over running statistics in evaluation; affine.
    /// The Linear before it has no bias: the batch mean cancels it.
    Batch,
    /// `nn.LayerNorm`: each sample normalised over its units; affine.
    Layer,
}

/// `eps` of both normalisations (PyTorch's default).
pub const NORM_EPS: f64 = 1e-5;
/// `momentum` of BatchNorm's running statistics (PyTorch's default):
/// `running = (1 − m)·running + m·batch`, the variance unbiased.
pub const BN_MOMENTUM: f64 = 0.1;

impl std::str::FromStr for Norm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Norm::None),
            "batch" => Ok(Norm::Batch),
            "layer" => Ok(Norm::Layer),
            _ => Err(format!(
                "unknown normalisation {s:?} (none, batch or layer)"
            )),
        }
    }
}

impl std::fmt::Display for Norm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Norm::None => "none",
            Norm::Batch => "batch",
            Norm::Layer => "layer",
        })
    }
}

// ---------------------------------------------------------------------------
// The network: configuration, parameter layout, initialisation
// ---------------------------------------------------------------------------

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::buf::AlignedBuf;
use crate::gemm::{panel_len, PANEL};
use crate::rng::Rng;

/// The shape and choices of an MLP.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpConfig {
    /// `[inputs, hidden…, classes]`.
    pub dims: Vec<usize>,
    pub act: Act,
    pub loss: Loss,
    /// Probability of dropping a hidden unit during training (0 = off).
    pub dropout: f32,
    /// Label smoothing ε of the training loss (cross-entropy only; 0 =
    /// off). Evaluation reports the plain loss.
    pub label_smoothing: f32,
    /// Normalisation of the hidden layers.
    pub norm: Norm,
}

/// The sizes and every choice, for messages: `784-512-10, relu, xent,
/// dropout 0, label smoothing 0, norm batch`.
impl std::fmt::Display for MlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        write!(
            f,
            "{}, {}, {}, dropout {}, label smoothing {}, norm {}",
            dims.join("-"),
            self.act,
            self.loss,
            self.dropout,
            self.label_smoothing,
            self.norm
        )
    }
}

impl MlpConfig {
    /// Number of linear layers.
    pub fn layers(&self) -> usize {
        self.dims.len() - 1
    }

    /// Inputs of the first layer.
    pub fn inputs(&self) -> usize {
        self.dims[0]
    }

    /// Outputs of the last layer.
    pub fn classes(&self) -> usize {
        *self.dims.last().expect("dims is never empty")
    }

    /// Number of trainable parameters (weights, biases and the
    /// normalisations' scales and shifts).
    pub fn parameter_count(&self) -> usize {
        Layout::row_major(&self.dims, self.norm)
            .layers
            .iter()
            .map(LayerSlots::parameter_count)
            .sum()
    }

    /// Bytes a training run holds for this network at batch size `batch`:
    /// parameters, gradients and two optimiser moments (4 slabs), plus each
    /// layer's output, gradient and dropout mask for a batch, and the batch;
    /// with a normalisation, each hidden layer's `x̂` for a batch too.
    pub fn training_bytes(&self, batch: usize) -> u128 {
        let params = self.parameter_count() as u128;
        let units: u128 = self.dims.iter().map(|&d| d as u128).sum();
        let normalised: u128 = match self.norm {
            Norm::None => 0,
            _ => self.dims[1..self.dims.len() - 1]
                .iter()
                .map(|&d| d as u128)
                .sum(),
        };
        4 * (4 * params + (3 * units + normalised) * batch as u128)
    }

    /// Floating-point operations of one training step per sample: the
    /// forward product of every layer, its weight gradient, and the input
    /// gradient of every layer but the first (2 flops per multiply-add).
    pub fn train_flops_per_sample(&self) -> u64 {
        let macs: usize = self
            .dims
            .windows(2)
            .enumerate()
            .map(|(l, d)| d[0] * d[1] * if l == 0 { 2 } else { 3 })
            .sum();
        2 * macs as u64
    }

    /// Checks the configuration, with a message a user can act on.
    pub fn validate(&self) -> Result<(), String> {
        if self.dims.len() < 2 {
            return Err("a network needs at least an input and an output size".into());
        }
        if let Some(i) = self.dims.iter().position(|&d| d == 0) {
            return Err(format!("layer size {i} is 0"));
        }
        let params = self.dims.windows(2).try_fold(0usize, |acc, d| {
            d[0].checked_mul(d[1])?.checked_add(d[1])?.checked_add(acc)
        });
        if params.is_none_or(|p| p > (isize::MAX as usize) / 64) {
            return Err(format!(
                "a network of sizes {:?} has more parameters than memory can address",
                self.dims
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(format!(
                "label smoothing {} is not in [0, 1)",
                self.label_smoothing
            ));
        }
        if self.label_smoothing > 0.0 && self.loss != Loss::Xent {
            return Err(format!(
                "label smoothing applies to the xent loss only, not {}",
                self.loss
            ));
        }
        Ok(())
    }
}

/// Where one layer's parameters live in a slab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSlots {
    pub fan_in: usize,
    pub fan_out: usize,
    /// `W` (`[fan_out, fan_in]`, PyTorch's `nn.Linear` shape), stored as
    /// `Wᵀ [fan_in, fan_out]` in column panels ([`crate::gemm::MatRef::panels`]):
    /// the layout the products read and write in place. Row-major in the
    /// [`Layout::row_major`] layout of files.
    pub w: Range<usize>,
    /// `b` as `[fan_out]`; empty before a BatchNorm: the batch mean cancels
    /// it exactly, so its gradient would be rounding noise, which Adam would
    /// turn into full-size steps of a parameter that does nothing.
    pub b: Range<usize>,
    /// The normalisation after a hidden layer (none after the last).
    pub norm: Option<NormSlots>,
}

impl NormSlots {
    /// The normalisation's tensors under their PyTorch names (`weight` is
    /// γ, `bias` β), in `state_dict` order; LayerNorm has no running
    /// statistics, so only the first two.
    pub fn tensors(&self) -> impl Iterator<Item = (&'static str, Range<usize>)> {
        [
            ("weight", self.gamma.clone()),
            ("bias", self.beta.clone()),
            ("running_mean", self.running_mean.clone()),
            ("running_var", self.running_var.clone()),
        ]
        .into_iter()
        .filter(|(_, r)| !r.is_empty())
    }
}

impl LayerSlots {
    /// Trained parameters of the layer: weights, bias, γ and β (in the
    /// file layout, where the weights have no panel padding).
    pub fn parameter_count(&self) -> usize {
        self.w.len()
            + self
                .trained_vectors()
                .iter()
                .map(|r| r.len())
                .sum::<usize>()
    }

    /// The vectors the optimiser trains besides the weights: the bias, γ
    /// and β (an empty range where the layer has none).
    pub fn trained_vectors(&self) -> [Range<usize>; 3] {
        let empty = self.b.end..self.b.end;
        match &self.norm {
            Some(n) => [self.b.clone(), n.gamma.clone(), n.beta.clone()],
            None => [self.b.clone(), empty.clone(), empty],
        }
    }
}

/// Where a hidden layer's normalisation keeps its state in a slab, each
/// `[fan_out]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormSlots {
    /// The scale γ and shift β (trained, without weight decay).
    pub gamma: Range<usize>,
    pub beta: Range<usize>,
    /// BatchNorm's running mean and (unbiased) variance; empty for
    /// LayerNorm. Not trained, but kept in the slab so that every copy of
    /// the parameters (checkpoints, the best epoch's) carries them; their
    /// gradients stay zero and the optimiser never visits them.
    pub running_mean: Range<usize>,
    pub running_var: Range<usize>,
}

/// The offsets of every tensor in a parameter slab. Gradients and optimiser
/// state use the same layout, so each is one flat, aligned buffer (llm.c).
///
/// In memory ([`Layout::new`]) each weight matrix is kept in the panels the
/// GEMM reads, so no training step packs the weights; files (models and
/// checkpoints) hold PyTorch's row-major `[out, in]` ([`Layout::row_major`]),
/// converted by [`Layout::to_row_major`] and [`Layout::from_row_major`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub layers: Vec<LayerSlots>,
    /// Length of the slab in floats (with alignment and panel padding).
    pub len: usize,
    /// The normalisation of the hidden layers.
    pub norm: Norm,
    /// Weights in panels (else row-major).
    panelled: bool,
}

/// Floats per 64-byte line: every tensor of a slab starts on a line.
const LINE: usize = 16;

impl Layout {
    /// The in-memory layout: weights in panels.
    pub fn new(dims: &[usize], norm: Norm) -> Layout {
        Self::build(dims, norm, true)
    }

    /// The file layout: weights row-major `[out, in]`, as PyTorch stores
    /// them.
    pub fn row_major(dims: &[usize], norm: Norm) -> Layout {
        Self::build(dims, norm, false)
    }

    fn build(dims: &[usize], norm: Norm, panelled: bool) -> Layout {
        let mut at = 0;
        let mut take = |n: usize| {
            let r = at..at + n;
            at = (at + n).div_ceil(LINE) * LINE;
            r
        };
        let layers = dims.len() - 1;
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(l, d)| {
                let hidden = l + 1 < layers;
                let w = take(if panelled {
                    panel_len(d[0], d[1])
                } else {
                    d[0] * d[1]
                });
                let b = take(if norm == Norm::Batch && hidden {
                    0
                } else {
                    d[1]
                });
                let norm = (hidden && norm != Norm::None).then(|| {
                    let running = if norm == Norm::Batch { d[1] } else { 0 };
                    NormSlots {
                        gamma: take(d[1]),
                        beta: take(d[1]),
                        running_mean: take(running),
                        running_var: take(running),
                    }
                });
                LayerSlots {
                    fan_in: d[0],
                    fan_out: d[1],
                    w,
                    b,
                    norm,
                }
            })
            .collect();
        Layout {
            layers,
            len: at,
            norm,
            panelled,
        }
    }

    /// The ranges of every slot of layer `l` but its weights: the bias and
    /// the normalisation's vectors, in the same order in every layout of
    /// the network (they are copied as they are between the two).
    fn state_vectors(&self, l: usize) -> Vec<Range<usize>> {
        let s = &self.layers[l];
        let norm = s.norm.iter().flat_map(|n| n.tensors().map(|(_, r)| r));
        std::iter::once(s.b.clone()).chain(norm).collect()
    }

    /// Index in the slab of `W[o, i]` of layer `l`.
    pub fn weight_index(&self, l: usize, o: usize, i: usize) -> usize {
        let s = &self.layers[l];
        let within = if self.panelled {
            (o / PANEL) * s.fan_in * PANEL + i * PANEL + o % PANEL
        } else {
            o * s.fan_in + i
        };
        s.w.start + within
    }

    /// `W` of layer `l` in `slab` (parameters, gradients or a moment), as
    /// row-major `[out, in]`.
    pub fn weight_rows(&self, slab: &[f32], l: usize) -> Vec<f32> {
        let s = &self.layers[l];
        (0..s.fan_out)
            .flat_map(|o| (0..s.fan_in).map(move |i| (o, i)))
            .map(|(o, i)| slab[self.weight_index(l, o, i)])
            .collect()
    }

    /// Sets `W` of layer `l` in `slab` from row-major `[out, in]` values.
    pub fn set_weight_rows(&self, slab: &mut [f32], l: usize, rows: &[f32]) {
        let s = &self.layers[l];
        assert_eq!(rows.len(), s.fan_out * s.fan_in, "weights of layer {l}");
        for o in 0..s.fan_out {
            for i in 0..s.fan_in {
                slab[self.weight_index(l, o, i)] = rows[o * s.fan_in + i];
            }
        }
    }

    /// A slab of this layout in the file layout ([`Layout::row_major`]):
    /// the same values, weights row-major (an empty slab stays empty).
    pub fn to_row_major(&self, slab: &[f32]) -> Vec<f32> {
        let file = self.file();
        let mut out = vec![0.0; if slab.is_empty() { 0 } else { file.len }];
        if !slab.is_empty() {
            for (l, theirs) in file.layers.iter().enumerate() {
                out[theirs.w.clone()].copy_from_slice(&self.weight_rows(slab, l));
                for (mine, theirs) in self.state_vectors(l).into_iter().zip(file.state_vectors(l)) {
                    out[theirs].copy_from_slice(&slab[mine]);
                }
            }
        }
        out
    }

    /// Fills `slab` (this layout) from a slab in the file layout; `None`
    /// when `file` has not the file layout's length.
    pub fn from_row_major(&self, file: &[f32], slab: &mut [f32]) -> Option<()> {
        let rows = self.file();
        if file.len() != rows.len || slab.len() != self.len {
            return None;
        }
        for (l, theirs) in rows.layers.iter().enumerate() {
            self.set_weight_rows(slab, l, &file[theirs.w.clone()]);
            for (mine, theirs) in self.state_vectors(l).into_iter().zip(rows.state_vectors(l)) {
                slab[mine].copy_from_slice(&file[theirs]);
            }
        }
        Some(())
    }

    /// The file layout of the same network.
    pub fn file(&self) -> Layout {
        Layout::row_major(&self.dims(), self.norm)
    }

    fn dims(&self) -> Vec<usize> {
        let mut d: Vec<usize> = self.layers.iter().map(|s| s.fan_in).collect();
        d.extend(self.layers.last().map(|s| s.fan_out));
        d
    }
}

/// An MLP's parameters in one aligned slab.
#[derive(Clone)]
pub struct Mlp {
    pub cfg: MlpConfig,
    pub layout: Layout,
    pub params: Params,
    /// Training forward passes that updated BatchNorm's running statistics
    /// (PyTorch's `num_batches_tracked`).
    pub batches_tracked: u64,
}

/// The parameters' slab with a version: every mutable borrow gives it a
/// new one, unique in the process. A training workspace keeps copies of
/// the weights in the layouts its products read (the f32 input gradient's
/// `W`, the bf16 copies); it remembers the version its copies were made
/// from and rewrites them when the slab has a different one, so that
/// weights set between steps (loaded, restored, perturbed by a test) are
/// never read through a stale copy. A borrow that writes nothing still
/// counts: one rewrite too many, never one too few.
#[derive(Clone)]
pub struct Params {
    buf: AlignedBuf<f32>,
    version: u64,
}

/// The source of [`Params`] versions.
static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

fn new_version() -> u64 {
    NEXT_VERSION.fetch_add(1, Ordering::Relaxed)
}

impl Params {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Params {
        Params {
            buf: AlignedBuf::zeroed(len),
            version: new_version(),
        }
    }

    /// The version of the values: equal versions, equal values.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A mutable borrow that keeps the version, for values no copy is made
    /// of: BatchNorm's running statistics, which the training forward pass
    /// updates between a step's check of the copies and its backward pass.
    pub(crate) fn uncopied_mut(&mut self, range: Range<usize>) -> &mut [f32] {
        &mut self.buf[range]
    }
}

impl std::ops::Deref for Params {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf
    }
}

impl std::ops::DerefMut for Params {
    fn deref_mut(&mut self) -> &mut [f32] {
        self.version = new_version();
        &mut self.buf
    }
}

impl Mlp {
    /// A network with zero parameters (to be loaded or initialised).
    pub fn zeros(cfg: MlpConfig) -> Mlp {
        let layout = Layout::new(&cfg.dims, cfg.norm);
        let params = Params::zeroed(layout.len);
        Mlp {
            cfg,
            layout,
            params,
            batches_tracked: 0,
        }
    }

    /// A freshly initialised network: weights drawn from a normal
    /// distribution with Kaiming's standard deviation `gain/√fan_in` for the
    /// ReLU family (gain √2, or √(2/(1+0.01²)) for the leaky ReLU) and
    /// Xavier's `√(2/(fan_in+fan_out))` for tanh and sigmoid; zero biases;
    /// normalisations as PyTorch starts them.
    pub fn init(cfg: MlpConfig, seed: u64) -> Mlp {
        let mut mlp = Mlp::zeros(cfg);
        let mut rng = Rng::derive(seed, &[0x1417]);
        for (l, slot) in mlp.layout.layers.clone().iter().enumerate() {
            let (fi, fo) = (slot.fan_in as f64, slot.fan_out as f64);
            let std = match mlp.cfg.act {
                Act::Relu => (2.0 / fi).sqrt(),
                Act::LeakyRelu => (2.0 / (1.0 + (LEAKY_SLOPE as f64).powi(2)) / fi).sqrt(),
                Act::Tanh | Act::Sigmoid => (2.0 / (fi + fo)).sqrt(),
            };
            let rows: Vec<f32> = (0..slot.fan_out * slot.fan_in)
                .map(|_| (rng.normal() * std) as f32)
                .collect();
            mlp.layout.set_weight_rows(&mut mlp.params, l, &rows);
            // PyTorch's fresh normalisation: γ = 1, β = 0, running mean 0,
            // running variance 1.
            if let Some(n) = &slot.norm {
                mlp.params[n.gamma.clone()].fill(1.0);
                mlp.params[n.running_var.clone()].fill(1.0);
            }
        }
        mlp
    }

    /// Weights of layer `l`, `[fan_out, fan_in]` row-major (a copy: they
    /// are kept in panels).
    pub fn weight(&self, l: usize) -> Vec<f32> {
        self.layout.weight_rows(&self.params, l)
    }

    /// Sets the weights of layer `l` from `[fan_out, fan_in]` row-major
    /// values.
    pub fn set_weight(&mut self, l: usize, rows: &[f32]) {
        self.layout.set_weight_rows(&mut self.params, l, rows)
    }

    /// Bias of layer `l`, `[fan_out]`.
    pub fn bias(&self, l: usize) -> &[f32] {
        &self.params[self.layout.layers[l].b.clone()]
    }

    /// `Σ_l ‖W_l‖²`, the quantity the L2 penalty scales.
    pub fn weight_norm_sq(&self) -> f64 {
        self.layout
            .layers
            .iter()
            .flat_map(|s| self.params[s.w.clone()].iter())
            .map(|&w| (w as f64) * (w as f64))
            .sum()
    }

    /// The same network for inference with each BatchNorm folded into the
    /// Linear before it: with `a = γ/√(running_var + eps)`, `W' = a·W` (row
    /// by row) and `b' = β + a·(b − running_mean)`, so evaluation runs one
    /// product per layer and no normalisation pass. `None` without
    /// BatchNorm (LayerNorm's statistics depend on the sample: nothing to
    /// fold). Computed in f64, rounded once.
    pub fn fold_batch_norm(&self) -> Option<Mlp> {
        if self.cfg.norm != Norm::Batch {
            return None;
        }
        let cfg = MlpConfig {
            norm: Norm::None,
            ..self.cfg.clone()
        };
        let mut out = Mlp::zeros(cfg);
        for (l, slot) in self.layout.layers.iter().enumerate() {
            let mut rows = self.weight(l);
            let bias = &mut out.params[out.layout.layers[l].b.clone()];
            match &slot.norm {
                None => bias.copy_from_slice(&self.params[slot.b.clone()]),
                Some(n) => {
                    let p = &self.params;
                    for o in 0..slot.fan_out {
                        let var = p[n.running_var.start + o] as f64;
                        let a = p[n.gamma.start + o] as f64 / (var + NORM_EPS).sqrt();
                        // The Linear before a BatchNorm has no bias.
                        let b = if slot.b.is_empty() {
                            0.0
                        } else {
                            p[slot.b.start + o] as f64
                        };
                        let mean = p[n.running_mean.start + o] as f64;
                        bias[o] = (p[n.beta.start + o] as f64 + a * (b - mean)) as f32;
                        for w in &mut rows[o * slot.fan_in..(o + 1) * slot.fan_in] {
                            *w = (*w as f64 * a) as f32;
                        }
                    }
                }
            }
            out.set_weight(l, &rows);
        }
        Some(out)
    }

    /// PyTorch `nn.Sequential` index of linear layer `l`, for the network
    /// `Linear, [Norm,] act, [Dropout,] Linear, …, Linear`; its
    /// normalisation is module `sequential_index(l) + 1`.
    pub fn sequential_index(&self, l: usize) -> usize {
        let per_hidden =
            2 + usize::from(self.cfg.dropout > 0.0) + usize::from(self.cfg.norm != Norm::None);
        l * per_hidden
    }
}
