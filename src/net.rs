//! One training step of an MLP on a batch: forward, fused loss, backward.
//!
//! ```text
//! X [B, in] ─ layer l: H_l = act(H_{l−1}·W_lᵀ + b_l)     one GEMM, bias + activation in the store
//!             (dropout: H_l ⊙= mask_l)
//!           ─ logits = H_{L−2}·W_{L−1}ᵀ + b_{L−1}
//!           ─ loss, dlogits                                one pass over the logits
//! backward, l = L−1 … 0:
//!   dZ_{l−1} = (dZ_l·W_l) ⊙ act'(Z_{l−1})                   one GEMM, act' in the store (from H_{l−1};
//!                                                           tanh/sigmoid with dropout: a pass after)
//!   dW_lᵀ = H_{l−1}ᵀ·dZ_l     db_l = column sums of dZ_l    one GEMM; db_l summed from the dZ_l it
//!                                                           packs (f32)
//!   W_l, b_l updated by the optimiser                       dW_l's tiles feed W_l's update in the
//!                                                           store: dW_l never reaches memory
//! ```
//!
//! Weights are kept as `Wᵀ [in, out]` in the GEMM's column panels
//! ([`crate::model::Layout`]): the forward product reads them in place as
//! its packed B̃, the weight-gradient product `dWᵀ = Xᵀ·dZ` writes (or
//! updates) them in place; the input gradient reads `W [out, in]` from a
//! copy in its own column panels ([`crate::gemm::backward_weights`]),
//! which the update writes with the weights. No step packs them; `X` and
//! `dZ` are read transposed through strides, never through a copy. The
//! workspace rewrites its copies whole only when the weights changed
//! outside its steps ([`crate::model::Params`]' version).
//! Every buffer a step touches is allocated when the [`Workspace`] is built:
//! a step allocates nothing.
//!
//! In mixed precision ([`Workspace::use_bf16`]) the same products run on
//! bf16 operands with f32 sums ([`crate::gemm::bf16`]): the forward
//! product reads the weights' bf16 copy of `Wᵀ`, the input gradient that
//! of `W`, and every weight-gradient product carries the update, whose
//! store also writes the new weights' copies
//! ([`crate::gemm::bf16_weights`]); activations and gradients stay f32 in
//! memory and are rounded as they are packed. Evaluation passes run in f32.

use std::time::Instant;

use crate::buf::AlignedBuf;
use crate::cpu::IsaError;
use crate::gemm::backward_weights::BackwardWeights;
use crate::gemm::bf16::{gemm_bf16, gemm_bf16_packed, gemm_bf16_update, Bf16Kernel, Bf16Workspace};
use crate::gemm::bf16_weights::Bf16Weights;
use crate::gemm::{Activation, Epilogue, GemmCtx, MatMut, MatRef, Parallelism, Plan, SideJob};
use crate::model::{Act, Mlp, Norm, BN_MOMENTUM, LEAKY_SLOPE};
use crate::norm::{self, BatchStats};
use crate::ops::{self, LossOut};
use crate::optim::{Optimizer, Rule, WeightCopies};
use crate::rng::Rng;
use crate::team::Team;

/// The GEMM epilogue form of an activation: every one is applied in the
/// forward product's store.
fn fused(act: Act) -> Activation {
    match act {
        Act::Relu => Activation::Relu,
        Act::LeakyRelu => Activation::LeakyRelu(LEAKY_SLOPE),
        Act::Tanh => Activation::Tanh,
        Act::Sigmoid => Activation::Sigmoid,
    }
}

/// The activation whose derivative the input-gradient store applies, from
/// the stored outputs: always for the ReLU family (only their sign
/// matters), for tanh and sigmoid only without dropout (with it the stored
/// output is `act(z)·m`, and the pass after the product divides `m` out).
fn fused_grad(act: Act, dropout: bool) -> Option<Activation> {
    match act {
        Act::Tanh | Act::Sigmoid if dropout => None,
        _ => Some(fused(act)),
    }
}

/// Where the training steps' time goes, in seconds summed over the steps
/// since the last reset (the metrics file, `fastnn bench train --phases`).
/// Each boundary costs one clock read, a few tens of nanoseconds a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Phases {
    /// Gathering and normalising the batches (with their augmentation)
    /// where it is a phase of its own: the first batch of an epoch, and
    /// the next batch after a step whose threads did not take it up (see
    /// [`crate::train::Trainer::step`]). The others are gathered inside the
    /// first layer's weight gradient, and counted there.
    pub gather: f64,
    /// The forward products with their fused bias and activation, and
    /// dropout.
    pub forward: f64,
    /// The loss and the gradient of the logits.
    pub loss: f64,
    /// The input-gradient products with act' fused or applied after.
    pub backward_data: f64,
    /// The weight-gradient products and the bias gradients, with the
    /// optimiser's update of the weights fused into the products that allow
    /// it ([`Mlp::backward_update`]).
    pub weight_gradient: f64,
    /// The optimiser's passes that are not fused: the biases, and the
    /// weights of a product that does not carry the update.
    pub update: f64,
    /// Summing the gradients and the step's totals over the ranks of a
    /// distributed run (and waiting for the slowest rank).
    pub all_reduce: f64,
    /// Of the phases above, the time the calling thread waited for the
    /// team's other threads to finish their parts (load imbalance and the
    /// hand-off); not part of [`Phases::total`].
    pub wait: f64,
    /// Steps timed.
    pub steps: usize,
}

impl Phases {
    /// The time of all phases.
    pub fn total(&self) -> f64 {
        self.gather
            + self.forward
            + self.loss
            + self.backward_data
            + self.weight_gradient
            + self.update
            + self.all_reduce
    }
}

impl std::ops::AddAssign for Phases {
    fn add_assign(&mut self, o: Phases) {
        self.gather += o.gather;
        self.forward += o.forward;
        self.loss += o.loss;
        self.backward_data += o.backward_data;
        self.weight_gradient += o.weight_gradient;
        self.update += o.update;
        self.all_reduce += o.all_reduce;
        self.wait += o.wait;
        self.steps += o.steps;
    }
}

/// A stopwatch over consecutive phases: each [`Lap::lap`] adds the time
/// since the previous one to a phase.
pub struct Lap(Instant);

impl Lap {
    pub fn start() -> Lap {
        Lap(Instant::now())
    }

    /// Adds the time since the last lap (or the start) to `phase`.
    pub fn lap(&mut self, phase: &mut f64) {
        let now = Instant::now();
        *phase += (now - self.0).as_secs_f64();
        self.0 = now;
    }
}

/// The three kinds of product of a training step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    /// `X·Wᵀ`: B = Wᵀ in column panels, read in place.
    Forward,
    /// `dWᵀ = Xᵀ·dZ`: C = the weights' panels (updated in place in a
    /// training step).
    WeightGradient,
    /// `dZ·W`: B = W, the panels' transpose (row panels); not for the first
    /// layer.
    InputGradient,
}

/// One product of a training step, and how a GEMM context computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepProduct {
    pub layer: usize,
    pub product: Product,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub plan: Plan,
}

/// Every product of a training step of the network `dims` at `batch`, as
/// `ctx` computes it (the workspace reserves for these; tests check which
/// path a size takes).
pub fn step_products(ctx: &GemmCtx, dims: &[usize], batch: usize) -> Vec<StepProduct> {
    let mut out = Vec::new();
    for (layer, io) in dims.windows(2).enumerate() {
        let (fan_in, fan_out) = (io[0], io[1]);
        let mut products = vec![
            (Product::Forward, batch, fan_in, fan_out),
            (Product::WeightGradient, fan_in, batch, fan_out),
        ];
        if layer > 0 {
            products.push((Product::InputGradient, batch, fan_out, fan_in));
        }
        for (product, m, k, n) in products {
            let column_panels = product != Product::InputGradient;
            out.push(StepProduct {
                layer,
                product,
                m,
                k,
                n,
                plan: ctx.plan_panelled(m, k, n, column_panels),
            });
        }
    }
    out
}

/// Everything a step needs besides the parameters: the input batch, every
/// layer's outputs and gradients, dropout masks, the GEMM context.
pub struct Workspace {
    max_batch: usize,
    /// Input batch `[B, in]`, normalised.
    pub x: AlignedBuf<f32>,
    /// Labels of the batch.
    pub labels: Vec<u8>,
    /// Output of each layer `[B, out]`: hidden activations (after dropout),
    /// then the logits.
    h: Vec<AlignedBuf<f32>>,
    /// Gradient of the loss with respect to each layer's pre-activation.
    dz: Vec<AlignedBuf<f32>>,
    /// Dropout factors of each hidden layer (empty without dropout).
    masks: Vec<AlignedBuf<f32>>,
    /// With a normalisation, per hidden layer: the product `Z`, which the
    /// normalisation overwrites with `x̂` for the backward pass `[B, out]`;
    /// `1/√(var + eps)` per unit (BatchNorm) or per sample (LayerNorm); and
    /// BatchNorm's batch mean and biased variance `[out]` (for the running
    /// statistics). Empty without one.
    xhat: Vec<AlignedBuf<f32>>,
    inv_std: Vec<AlignedBuf<f32>>,
    batch_mean: Vec<AlignedBuf<f32>>,
    batch_var: Vec<AlignedBuf<f32>>,
    gemm: GemmCtx,
    /// f32: the weights `W [out, in]` as the input gradients read them
    /// (`None` in mixed precision, whose copies are bf16).
    backward_weights: Option<BackwardWeights>,
    /// Mixed precision: the training passes' products in bf16 (`None`:
    /// f32).
    bf16: Option<MixedPrecision>,
    /// The [`crate::model::Params`] version the weights' copies (f32 or
    /// bf16) hold (0: none yet; versions start at 1), and how many times
    /// they were rewritten whole.
    copies_version: u64,
    copies_rewritten: usize,
    /// Time of the training steps, by phase.
    pub phases: Phases,
}

/// What a mixed-precision step adds to the workspace: the bf16 kernel, its
/// packing buffers and the weights' bf16 copies, which the optimiser keeps
/// equal to the f32 master weights rounded.
struct MixedPrecision {
    kernel: Bf16Kernel,
    packing: Bf16Workspace,
    weights: Bf16Weights,
    /// Evaluation passes in bf16 too ([`Workspace::evaluate_in_bf16`]).
    evaluation: bool,
}

impl Workspace {
    /// Buffers for batches of up to `max_batch` samples of `mlp`, with the
    /// process-wide GEMM kernel; refused on a bad `FASTNN_ISA`.
    pub fn try_new(mlp: &Mlp, max_batch: usize, par: Parallelism) -> Result<Workspace, IsaError> {
        Ok(Self::with_gemm(mlp, max_batch, GemmCtx::try_new(par)?))
    }

    /// As [`Workspace::try_new`], but panics on a bad `FASTNN_ISA` (tests,
    /// examples and benchmarks).
    pub fn new(mlp: &Mlp, max_batch: usize, par: Parallelism) -> Workspace {
        Self::with_gemm(mlp, max_batch, GemmCtx::new(par))
    }

    /// As [`Workspace::new`] with a given GEMM context (a forced kernel).
    /// The context's pack buffers are reserved for every product of a step
    /// at `max_batch` (so for every smaller batch too).
    pub fn with_gemm(mlp: &Mlp, max_batch: usize, mut gemm: GemmCtx) -> Workspace {
        let outs = &mlp.cfg.dims[1..];
        let hidden = outs.len() - 1;
        for p in step_products(&gemm, &mlp.cfg.dims, max_batch) {
            gemm.reserve(p.m, p.k, p.n);
        }
        let buf = |n: usize| AlignedBuf::zeroed(max_batch * n);
        let hidden_outs = &outs[..hidden];
        let norm = mlp.cfg.norm;
        let per_layer = |on: bool, len: &dyn Fn(usize) -> usize| -> Vec<AlignedBuf<f32>> {
            if on {
                hidden_outs
                    .iter()
                    .map(|&n| AlignedBuf::zeroed(len(n)))
                    .collect()
            } else {
                Vec::new()
            }
        };
        Workspace {
            xhat: per_layer(norm != Norm::None, &|n| max_batch * n),
            inv_std: per_layer(norm != Norm::None, &|n| n.max(max_batch)),
            batch_mean: per_layer(norm == Norm::Batch, &|n| n),
            batch_var: per_layer(norm == Norm::Batch, &|n| n),
            max_batch,
            x: buf(mlp.cfg.inputs()),
            labels: vec![0; max_batch],
            h: outs.iter().map(|&n| buf(n)).collect(),
            dz: outs.iter().map(|&n| buf(n)).collect(),
            masks: if mlp.cfg.dropout > 0.0 {
                outs[..hidden].iter().map(|&n| buf(n)).collect()
            } else {
                Vec::new()
            },
            gemm,
            backward_weights: Some(BackwardWeights::new(&mlp.cfg.dims)),
            bf16: None,
            copies_version: 0,
            copies_rewritten: 0,
            phases: Phases::default(),
        }
    }

    /// Switches the training passes to mixed precision on `kernel`: the
    /// products of the training forward pass and of the backward pass take
    /// bf16 operands (f32 sums); the master weights, the optimiser's state,
    /// the loss and every elementwise pass stay f32, and so does the
    /// evaluation forward pass. Writes the weights' bf16 copies from
    /// `mlp`'s master weights and reserves every buffer a step needs.
    pub fn use_bf16(&mut self, mlp: &Mlp, kernel: Bf16Kernel) {
        assert!(
            kernel.is_available(),
            "{} is not supported by this CPU",
            kernel.name()
        );
        let mut packing = Bf16Workspace::default();
        for p in step_products(&self.gemm, &mlp.cfg.dims, self.max_batch) {
            packing.reserve(kernel, p.m, p.k, p.n);
        }
        self.bf16 = Some(MixedPrecision {
            kernel,
            packing,
            weights: Bf16Weights::new(&mlp.cfg.dims),
            evaluation: false,
        });
        self.backward_weights = None;
        self.copies_version = 0;
        self.sync_copies(mlp);
    }

    /// Rewrites the weights' copies from `mlp` unless they hold its
    /// version already: at the start of every pass that reads them, so that
    /// weights set outside the steps (loaded, restored, perturbed) are
    /// never read stale. A step's own updates write the copies as they go
    /// and then record the version ([`Workspace::copies_written`]).
    fn sync_copies(&mut self, mlp: &Mlp) {
        let version = mlp.params.version();
        if self.copies_version == version {
            return;
        }
        for (l, slot) in mlp.layout.layers.iter().enumerate() {
            let w = &mlp.params[slot.w.clone()];
            if let Some(copies) = &mut self.backward_weights {
                copies.write_layer(l, w);
            }
            if let Some(b) = &mut self.bf16 {
                b.weights.write_layer(l, w);
            }
        }
        self.copies_version = version;
        self.copies_rewritten += 1;
    }

    /// How many times the weights' copies were rewritten whole from the
    /// master weights (the first pass, and after every change made outside
    /// the steps): steps alone leave it unchanged.
    pub fn copies_rewritten(&self) -> usize {
        self.copies_rewritten
    }

    /// After an update that wrote every weight's copies as it wrote the
    /// weight (and began from copies in sync): they hold `mlp`'s version.
    fn copies_written(&mut self, mlp: &Mlp) {
        self.copies_version = mlp.params.version();
    }

    /// Layer `l`'s f32 backward copy, `W [out, in]` in column panels
    /// (`None` for the first layer, or in mixed precision). For tests.
    pub fn f32_backward_copy(&self, l: usize) -> Option<MatRef<'_>> {
        self.backward_weights.as_ref()?.view(l)
    }

    /// Runs the evaluation passes in bf16 too (inference: `fastnn eval
    /// --precision bf16`), after [`Workspace::use_bf16`].
    pub fn evaluate_in_bf16(&mut self) {
        self.bf16
            .as_mut()
            .expect("evaluation in bf16 needs Workspace::use_bf16 first")
            .evaluation = true;
    }

    /// The bf16 kernel of the training passes (`None`: f32).
    pub fn bf16_kernel(&self) -> Option<Bf16Kernel> {
        self.bf16.as_ref().map(|b| b.kernel)
    }

    /// Layer `l`'s bf16 weight copies as the products read them: forward
    /// and (layers ≥ 1) backward words. For tests.
    pub fn bf16_copies(&self, l: usize) -> Option<(&[u32], Option<&[u32]>)> {
        let b = self.bf16.as_ref()?;
        Some((
            b.weights.forward(l).words(),
            b.weights.backward(l).map(|p| p.words()),
        ))
    }

    /// The input batch and its labels, to be filled, and the threads to
    /// fill them on (`None` for one thread).
    pub fn batch_mut(&mut self) -> (&mut [f32], &mut [u8], Option<&mut Team>) {
        (&mut self.x, &mut self.labels, self.gemm.team())
    }

    /// The threads of the step (`None` for one thread).
    pub fn team(&mut self) -> Option<&mut Team> {
        self.gemm.team()
    }

    /// Largest batch the buffers hold.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The GEMM context (its kernel and thread count).
    pub fn gemm(&self) -> &GemmCtx {
        &self.gemm
    }

    /// Logits of the last forward pass, `[B, classes]`.
    pub fn logits(&self) -> &[f32] {
        self.h.last().expect("at least one layer")
    }

    /// Dropout factors (0 or 1/(1−p)) of hidden layer `l` in the last
    /// training forward pass; `None` without dropout.
    pub fn dropout_mask(&self, l: usize) -> Option<&[f32]> {
        self.masks.get(l).map(|m| &m[..])
    }

    /// The dropout factors of hidden layer `l`, to be filled before
    /// [`Mlp::forward_with_fixed_masks`]; `None` without dropout.
    pub fn dropout_mask_mut(&mut self, l: usize) -> Option<&mut [f32]> {
        self.masks.get_mut(l).map(|m| &mut m[..])
    }
}

/// What a forward pass is for: evaluation (no dropout; BatchNorm on its
/// running statistics) or training (BatchNorm on the batch's), and where
/// training gets its dropout factors.
enum Pass<'a> {
    Eval,
    /// Training: draw the factors from this generator (`None`: no dropout).
    Train(Option<DropoutDraws<'a>>),
    /// Training: use the factors already in the workspace.
    TrainFixedMasks,
}

/// Where a training pass draws its dropout factors: `rng`, read in row
/// order, layer after layer. A pass over rows of a larger batch (one rank's
/// shard, module `distributed`) skips the draws of the `rows_before` rows
/// before its own and the `rows_after` after them in each layer, so every
/// sample gets the factors it gets when one process runs the whole batch.
pub struct DropoutDraws<'a> {
    pub rng: &'a mut Rng,
    pub rows_before: usize,
    pub rows_after: usize,
}

/// Input of layer `l`: the batch for the first layer, else the previous
/// layer's output.
fn layer_input<'a>(x: &'a [f32], h: &'a [AlignedBuf<f32>], l: usize) -> &'a [f32] {
    if l == 0 {
        x
    } else {
        &h[l - 1]
    }
}

impl Mlp {
    /// Evaluation forward pass of the first `batch` rows of `ws.x`:
    /// deterministic (no dropout; BatchNorm on its running statistics).
    pub fn forward(&self, ws: &mut Workspace, batch: usize) {
        self.forward_inner(ws, batch, Pass::Eval);
    }

    /// Training forward pass: hidden units dropped with factors drawn from
    /// `dropout_rng` (`None`: no dropout), BatchNorm on the batch's
    /// statistics, which then update its running statistics.
    pub fn forward_train(
        &mut self,
        ws: &mut Workspace,
        batch: usize,
        dropout_rng: Option<&mut Rng>,
    ) {
        let draws = dropout_rng.map(|rng| DropoutDraws {
            rng,
            rows_before: 0,
            rows_after: 0,
        });
        self.forward_rows(ws, batch, draws);
    }

    /// As [`Mlp::forward_train`] on `batch` rows that are part of a larger
    /// batch, whose dropout factors `draws` places.
    pub fn forward_rows(
        &mut self,
        ws: &mut Workspace,
        batch: usize,
        draws: Option<DropoutDraws<'_>>,
    ) {
        self.forward_inner(ws, batch, Pass::Train(draws));
        self.track_running_stats(ws, batch);
    }

    /// A training forward pass with the dropout factors already in the
    /// workspace ([`Workspace::dropout_mask_mut`]): to replay masks drawn
    /// elsewhere (a PyTorch golden state).
    pub fn forward_with_fixed_masks(&mut self, ws: &mut Workspace, batch: usize) {
        self.forward_inner(ws, batch, Pass::TrainFixedMasks);
        self.track_running_stats(ws, batch);
    }

    fn forward_inner(&self, ws: &mut Workspace, batch: usize, mut pass: Pass<'_>) {
        assert!(
            batch <= ws.max_batch,
            "batch {batch} > workspace {}",
            ws.max_batch
        );
        let norm = self.cfg.norm;
        assert!(
            norm == Norm::None || ws.xhat.len() + 1 == self.cfg.layers(),
            "a workspace built for a network without normalisation"
        );
        let training = !matches!(pass, Pass::Eval);
        assert!(
            !(training && norm == Norm::Batch && batch < 2),
            "BatchNorm needs at least 2 samples per training batch"
        );
        let layers = self.cfg.layers();
        // Mixed precision is for training passes; evaluation stays f32
        // unless asked for.
        let in_bf16 = ws.bf16.as_ref().is_some_and(|b| training || b.evaluation);
        if in_bf16 {
            ws.sync_copies(self);
        }
        let Workspace {
            x,
            h,
            masks,
            xhat,
            inv_std,
            batch_mean,
            batch_var,
            gemm,
            bf16,
            ..
        } = ws;
        let mut bf16 = bf16.as_mut().filter(|_| in_bf16);
        for (l, slot) in self.layout.layers.iter().enumerate() {
            let (fan_in, fan_out) = (slot.fan_in, slot.fan_out);
            let (before, rest) = h.split_at_mut(l);
            let input = layer_input(x, before, l);
            let out = &mut rest[0][..batch * fan_out];
            let last = l + 1 == layers;
            let bias = &self.params[slot.b.clone()];
            let act = fused(self.cfg.act);
            // The product's destination and store: H = act(X·Wᵀ + b), or
            // the normalisation's input Z = X·Wᵀ (+ b for LayerNorm).
            let (dest, epilogue) = match (&slot.norm, last) {
                (_, true) => (out, Epilogue::Bias(bias)),
                (None, false) => (out, Epilogue::BiasAct(bias, act)),
                (Some(_), false) => {
                    let z = &mut xhat[l][..batch * fan_out];
                    (
                        z,
                        if bias.is_empty() {
                            Epilogue::None
                        } else {
                            Epilogue::Bias(bias)
                        },
                    )
                }
            };
            // X [B, in], Wᵀ [in, out] in panels (or its bf16 copy), read
            // in place.
            let x = MatRef::row_major(&input[..batch * fan_in], batch, fan_in);
            let dest = MatMut::row_major(dest, batch, fan_out);
            match bf16.as_deref_mut() {
                Some(b) => {
                    let w = b.weights.forward(l);
                    gemm_bf16_packed(b.kernel, x, w, dest, epilogue, &mut b.packing, gemm.team())
                }
                None => {
                    let w = MatRef::panels(&self.params[slot.w.clone()], fan_in, fan_out);
                    gemm.gemm(1.0, x, w, 0.0, dest, epilogue)
                }
            }
            if last {
                break;
            }
            let out = &mut h[l][..batch * fan_out];
            if let Some(n) = &slot.norm {
                let (z, inv) = (&mut xhat[l][..batch * fan_out], &mut inv_std[l][..]);
                let (gamma, beta) = (&self.params[n.gamma.clone()], &self.params[n.beta.clone()]);
                match (norm, training) {
                    (Norm::Batch, true) => {
                        let stats = BatchStats {
                            mean: &mut batch_mean[l],
                            var: &mut batch_var[l],
                            inv_std: &mut inv[..fan_out],
                        };
                        norm::batch_norm_train(
                            z,
                            out,
                            stats,
                            gamma,
                            beta,
                            act,
                            batch,
                            fan_out,
                            gemm.team(),
                        );
                    }
                    (Norm::Batch, false) => {
                        let (mean, var) = (
                            &self.params[n.running_mean.clone()],
                            &self.params[n.running_var.clone()],
                        );
                        norm::batch_norm_eval(
                            out,
                            &mut inv[..fan_out],
                            z,
                            mean,
                            var,
                            gamma,
                            beta,
                            act,
                            batch,
                            fan_out,
                        );
                    }
                    _ => {
                        norm::layer_norm(z, out, inv, gamma, beta, act, batch, fan_out, gemm.team())
                    }
                }
            }
            if let Some(mask) = masks.get_mut(l) {
                let mask = &mut mask[..batch * fan_out];
                match &mut pass {
                    Pass::Eval | Pass::Train(None) => {}
                    Pass::Train(Some(d)) => {
                        d.rng.skip(d.rows_before * fan_out);
                        ops::dropout_forward(out, mask, self.cfg.dropout, d.rng);
                        d.rng.skip(d.rows_after * fan_out);
                    }
                    Pass::TrainFixedMasks => {
                        out.iter_mut().zip(mask.iter()).for_each(|(h, &m)| *h *= m)
                    }
                }
            }
        }
    }

    /// BatchNorm's running statistics take in the last training pass's
    /// batch statistics (PyTorch's momentum form, the variance unbiased).
    fn track_running_stats(&mut self, ws: &Workspace, batch: usize) {
        if self.cfg.norm != Norm::Batch {
            return;
        }
        let m = BN_MOMENTUM as f32;
        let unbiased = batch as f32 / (batch - 1) as f32;
        for (l, slot) in self.layout.layers.iter().enumerate() {
            let Some(n) = &slot.norm else { continue };
            // No copy is made of the running statistics: their update
            // keeps the parameters' version (see `Params`).
            let mean = self.params.uncopied_mut(n.running_mean.clone());
            mean.iter_mut()
                .zip(ws.batch_mean[l].iter())
                .for_each(|(r, &b)| *r = (1.0 - m) * *r + m * b);
            let var = self.params.uncopied_mut(n.running_var.clone());
            var.iter_mut()
                .zip(ws.batch_var[l].iter())
                .for_each(|(r, &b)| *r = (1.0 - m) * *r + m * b * unbiased);
        }
        self.batches_tracked += 1;
    }

    /// The backward pass through hidden layer `l`'s normalisation, in
    /// place: `dz[l]` holds the gradient with respect to its output `y` and
    /// leaves with the gradient with respect to its input `z`; `grads`
    /// receives dγ and dβ. Nothing without a normalisation.
    fn norm_backward(&self, ws: &mut Workspace, grads: &mut [f32], l: usize, batch: usize) {
        let slot = &self.layout.layers[l];
        let Some(n) = &slot.norm else { return };
        let o = slot.fan_out;
        let Workspace {
            dz,
            xhat,
            inv_std,
            gemm,
            ..
        } = ws;
        let (dy, xhat, inv) = (
            &mut dz[l][..batch * o],
            &xhat[l][..batch * o],
            &inv_std[l][..],
        );
        let gamma = &self.params[n.gamma.clone()];
        // γ's slot comes before β's.
        let (lo, hi) = grads.split_at_mut(n.beta.start);
        let (dgamma, dbeta) = (&mut lo[n.gamma.clone()], &mut hi[..o]);
        norm::affine_backward(dgamma, dbeta, dy, xhat, batch, o, gemm.team());
        match self.cfg.norm {
            Norm::Batch => norm::batch_norm_backward(
                dy,
                xhat,
                inv,
                gamma,
                dgamma,
                dbeta,
                batch,
                o,
                gemm.team(),
            ),
            _ => norm::layer_norm_backward(dy, xhat, inv, gamma, batch, o, gemm.team()),
        }
    }

    /// The training loss of the last forward pass (with the label
    /// smoothing of the configuration) and, in `ws`, its gradient with
    /// respect to the logits.
    pub fn loss_and_dlogits(&self, ws: &mut Workspace, batch: usize) -> LossOut {
        self.loss_share_and_dlogits(ws, batch, batch)
    }

    /// As [`Mlp::loss_and_dlogits`] for `batch` rows of a batch of
    /// `mean_over` samples: the gradient of their share of its mean loss.
    pub fn loss_share_and_dlogits(
        &self,
        ws: &mut Workspace,
        batch: usize,
        mean_over: usize,
    ) -> LossOut {
        let classes = self.cfg.classes();
        let last = self.cfg.layers() - 1;
        ops::loss_share_forward_backward(
            &mut ws.dz[last],
            &ws.h[last],
            &ws.labels[..batch],
            batch,
            mean_over,
            classes,
            self.cfg.loss,
            self.cfg.label_smoothing,
        )
    }

    /// Backward pass: writes the gradient of the batch-mean loss into
    /// `grads` (same layout as the parameters; overwritten, not
    /// accumulated). Needs the forward pass (with the same dropout masks)
    /// and [`Mlp::loss_and_dlogits`] first.
    pub fn backward(&self, ws: &mut Workspace, grads: &mut [f32], batch: usize) {
        ws.sync_copies(self);
        let mut clock = Lap::start();
        for (l, slot) in self.layout.layers.iter().enumerate().rev() {
            self.norm_backward(ws, grads, l, batch);
            self.input_gradient(ws, l, batch);
            clock.lap(&mut ws.phases.backward_data);
            let dw = MatMut::panels(&mut grads[slot.w.clone()], slot.fan_in, slot.fan_out);
            weight_gradient(ws, l, slot.fan_in, slot.fan_out, batch, dw);
            let dz_l = &ws.dz[l][..batch * slot.fan_out];
            if !slot.b.is_empty() {
                ops::column_sums(&mut grads[slot.b.clone()], dz_l, batch, slot.fan_out);
            }
            clock.lap(&mut ws.phases.weight_gradient);
        }
    }

    /// Backward pass and optimiser step in one: as [`Mlp::backward`]
    /// followed by [`Optimizer::step`] at learning rate `lr`, with the same
    /// bits, but each weight matrix is updated inside its weight-gradient
    /// product ([`GemmCtx::gemm_update`]) wherever that product sums the
    /// whole batch in one pass, so its gradient is never written to memory
    /// and read back. In f32 that product also sums the bias gradient from
    /// the dZ it packs. `grads` holds the gradients that are not fused (the
    /// biases, and the weights of a product that is not).
    ///
    /// Per layer, the input gradient comes first: it reads the weights the
    /// update then overwrites.
    ///
    /// `then` (the trainer's gather of the next batch) goes to the first
    /// layer's weight-gradient product where that product carries the f32
    /// update: the team's threads take it up as each finishes its part
    /// ([`GemmCtx::gemm_update`]). Where it does not (bf16, or a product
    /// that does not fuse the update), `then` is not called: the caller
    /// finishes that work after.
    pub fn backward_update(
        &mut self,
        ws: &mut Workspace,
        grads: &mut [f32],
        opt: &mut Optimizer,
        lr: f32,
        batch: usize,
        then: Option<SideJob<'_>>,
    ) {
        ws.sync_copies(self);
        let rules = opt.begin_step(lr);
        let mut clock = Lap::start();
        for l in (0..self.layout.layers.len()).rev() {
            self.norm_backward(ws, grads, l, batch);
            self.input_gradient(ws, l, batch);
            clock.lap(&mut ws.phases.backward_data);
            let slot = self.layout.layers[l].clone();
            let (fan_in, fan_out) = (slot.fan_in, slot.fan_out);
            // In bf16 every weight-gradient product carries the update:
            // it never splits K.
            let fused = ws.bf16.is_some() || ws.gemm.fuses_update(fan_in, batch, fan_out);
            // The f32 fused product also sums the bias gradient.
            let biases_in_product = fused && ws.bf16.is_none();
            if fused {
                // dWᵀ = Xᵀ·dZ as `weight_gradient` computes it, consumed
                // by the update as it is made.
                let Workspace {
                    x,
                    h,
                    dz,
                    gemm,
                    bf16,
                    backward_weights,
                    ..
                } = &mut *ws;
                let dz_l = &dz[l][..batch * fan_out];
                let input = &layer_input(x, h, l)[..batch * fan_in];
                let (m, v) = opt.moments_mut(slot.w.clone());
                let w = MatMut::panels(&mut self.params[slot.w.clone()], fan_in, fan_out);
                let xt = MatRef::row_major(input, batch, fan_in).t();
                let dzb = MatRef::row_major(dz_l, batch, fan_out);
                match bf16 {
                    Some(MixedPrecision {
                        kernel,
                        packing,
                        weights,
                        ..
                    }) => {
                        let copies = weights.writer(l);
                        let (rule, team) = (rules.weights, gemm.team());
                        gemm_bf16_update(
                            *kernel,
                            xt,
                            dzb,
                            w,
                            m,
                            v,
                            rule,
                            Some(&copies),
                            packing,
                            team,
                        );
                    }
                    None => {
                        // Layers ≥ 1: W's copy for the next step's input
                        // gradient, written with the new weights; the
                        // bias gradient from the dZ the product packs.
                        let copy = backward_weights.as_mut().and_then(|c| c.view_mut(l));
                        let db = (!slot.b.is_empty()).then(|| &mut grads[slot.b.clone()]);
                        let rule = rules.weights;
                        let then = then.filter(|_| l == 0);
                        gemm.gemm_update(1.0, xt, dzb, w, m, v, rule, copy, db, then);
                    }
                }
            } else {
                let dw = MatMut::panels(&mut grads[slot.w.clone()], fan_in, fan_out);
                weight_gradient(ws, l, fan_in, fan_out, batch, dw);
            }
            if !slot.b.is_empty() && !biases_in_product {
                let dz_l = &ws.dz[l][..batch * fan_out];
                ops::column_sums(&mut grads[slot.b.clone()], dz_l, batch, fan_out);
            }
            clock.lap(&mut ws.phases.weight_gradient);
            if !fused {
                self.update_weights(ws, grads, opt, rules.weights, l);
            }
            for range in slot.trained_vectors() {
                opt.update(rules.biases, range, &mut self.params, grads, None);
            }
            clock.lap(&mut ws.phases.update);
        }
        ws.copies_written(self);
    }

    /// The optimiser's step of every parameter with the gradients in
    /// `grads` at learning rate `lr`: [`Optimizer::step`], writing the
    /// weights' copies (f32 `W`, or bf16) as it goes.
    pub fn update(&mut self, ws: &mut Workspace, grads: &[f32], opt: &mut Optimizer, lr: f32) {
        ws.sync_copies(self);
        let rules = opt.begin_step(lr);
        for l in 0..self.layout.layers.len() {
            self.update_weights(ws, grads, opt, rules.weights, l);
            for range in self.layout.layers[l].trained_vectors() {
                opt.update(rules.biases, range, &mut self.params, grads, None);
            }
        }
        ws.copies_written(self);
    }

    /// Layer `l`'s weights updated by `rule` with their gradients in
    /// `grads`, split across the team, and their copies (f32 `W`, or bf16)
    /// written in the same pass.
    fn update_weights(
        &mut self,
        ws: &mut Workspace,
        grads: &[f32],
        opt: &mut Optimizer,
        rule: Rule,
        l: usize,
    ) {
        let range = self.layout.layers[l].w.clone();
        let Workspace {
            gemm,
            bf16,
            backward_weights,
            ..
        } = ws;
        let bf16_writer = bf16.as_mut().map(|b| b.weights.writer(l));
        let f32_writer = backward_weights.as_mut().and_then(|c| c.writer(l));
        let writer: Option<&dyn WeightCopies> = match (&bf16_writer, &f32_writer) {
            (Some(w), _) => Some(w),
            (None, Some(w)) => Some(w),
            (None, None) => None,
        };
        opt.update_writing(rule, range, &mut self.params, grads, gemm.team(), writer);
    }

    /// The input gradient of layer `l > 0`, `dZ_{l−1} = (dZ_l·W_l) ⊙
    /// act'(Z_{l−1})` (with dropout's mask); nothing for the first layer,
    /// whose input is the batch.
    fn input_gradient(&self, ws: &mut Workspace, l: usize, batch: usize) {
        if l == 0 {
            return;
        }
        let slot = &self.layout.layers[l];
        let (fan_in, fan_out) = (slot.fan_in, slot.fan_out);
        let Workspace {
            h,
            dz,
            masks,
            gemm,
            bf16,
            backward_weights,
            ..
        } = ws;
        let (dz_before, dz_rest) = dz.split_at_mut(l);
        let dz_l = &dz_rest[0][..batch * fan_out];
        let prev_out = &h[l - 1][..batch * fan_in];
        let act = fused_grad(self.cfg.act, !masks.is_empty());
        let epilogue = match act {
            Some(a) => Epilogue::ActGrad(MatRef::row_major(prev_out, batch, fan_in), a),
            None => Epilogue::None,
        };
        let dz_prev = &mut dz_before[l - 1][..batch * fan_in];
        let (dzm, dest) = (
            MatRef::row_major(dz_l, batch, fan_out),
            MatMut::row_major(dz_prev, batch, fan_in),
        );
        match bf16 {
            // W [out, in]: its bf16 backward copy, read in place.
            Some(b) => {
                let w = b
                    .weights
                    .backward(l)
                    .expect("layers ≥ 1 have a backward copy");
                gemm_bf16_packed(
                    b.kernel,
                    dzm,
                    w,
                    dest,
                    epilogue,
                    &mut b.packing,
                    gemm.team(),
                );
            }
            // W [out, in]: its f32 copy in column panels, read in place.
            None => {
                let w = backward_weights
                    .as_ref()
                    .and_then(|c| c.view(l))
                    .expect("f32 layers ≥ 1 have a backward copy");
                gemm.gemm(1.0, dzm, w, 0.0, dest, epilogue);
            }
        }
        if !masks.is_empty() || act.is_none() {
            let mask = masks.get(l - 1).map(|m| &m[..batch * fan_in]);
            ops::act_dropout_backward(dz_prev, prev_out, mask, self.cfg.act, act.is_some());
        }
    }

    /// Evaluation forward pass with the loss: `(loss sum, correct)` for
    /// `batch` rows already in `ws.x` / `ws.labels`.
    pub fn evaluate_batch(&self, ws: &mut Workspace, batch: usize) -> LossOut {
        self.forward(ws, batch);
        let classes = self.cfg.classes();
        ops::loss_only(
            ws.logits(),
            &ws.labels[..batch],
            batch,
            classes,
            self.cfg.loss,
        )
    }
}

/// Layer `l`'s weight gradient `dWᵀ = Xᵀ·dZ` into `dw` (its panels): X
/// [B, in] read as [in, B], dZ [B, out]; in bf16 in mixed precision.
fn weight_gradient(
    ws: &mut Workspace,
    l: usize,
    fan_in: usize,
    fan_out: usize,
    batch: usize,
    dw: MatMut<'_>,
) {
    let Workspace {
        x,
        h,
        dz,
        gemm,
        bf16,
        ..
    } = ws;
    let input = &layer_input(x, h, l)[..batch * fan_in];
    let xt = MatRef::row_major(input, batch, fan_in).t();
    let dzb = MatRef::row_major(&dz[l][..batch * fan_out], batch, fan_out);
    match bf16 {
        Some(b) => gemm_bf16(b.kernel, xt, dzb, dw, &mut b.packing, gemm.team()),
        None => gemm.gemm(1.0, xt, dzb, 0.0, dw, Epilogue::None),
    }
}
