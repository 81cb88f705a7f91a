//! Optimisers and learning-rate schedules: one pass over the flat
//! parameter, gradient and state slabs (llm.c's `gpt2_update`).
//!
//! The update rules are PyTorch's (`torch.optim.SGD`, `Adam`, `AdamW`), so
//! a run can be checked against it step by step. Two regularisers:
//! - `l2` (λ): the tutorials' `λ‖W‖²` term of the loss; its gradient `2λW`
//!   is added to the weights' gradient inside the update pass.
//! - `weight_decay`: decoupled decay `w −= lr·wd·w` before the update
//!   (Loshchilov & Hutter), for any optimiser.
//!
//! Both apply to weights only, never to biases.

use std::ops::{Add, Div, Mul, Range, Sub};

use crate::buf::AlignedBuf;
use crate::model::Layout;
use crate::team::{SharedMut, Team};

/// The update rule.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimKind {
    /// SGD with momentum μ (PyTorch: `v = μv + g`, Nesterov `d = g + μv`).
    Sgd { momentum: f32, nesterov: bool },
    /// Adam (Kingma & Ba) with bias correction.
    Adam { beta1: f32, beta2: f32, eps: f32 },
}

/// An optimiser's settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimConfig {
    pub kind: OptimKind,
    /// Coupled L2 penalty λ of `λ‖W‖²`.
    pub l2: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

/// Optimiser state: first and second moment slabs (same layout as the
/// parameters) and the step count.
#[derive(Clone)]
pub struct Optimizer {
    pub cfg: OptimConfig,
    /// Momentum buffer (SGD) or first moment (Adam).
    pub m: AlignedBuf<f32>,
    /// Second moment (Adam; empty for SGD).
    pub v: AlignedBuf<f32>,
    /// Steps taken so far.
    pub t: u64,
}

impl Optimizer {
    pub fn new(cfg: OptimConfig, layout: &Layout) -> Optimizer {
        let v_len = match cfg.kind {
            OptimKind::Adam { .. } => layout.len,
            OptimKind::Sgd { .. } => 0,
        };
        Optimizer {
            cfg,
            m: AlignedBuf::zeroed(layout.len),
            v: AlignedBuf::zeroed(v_len),
            t: 0,
        }
    }

    /// One update of `params` with `grads` at learning rate `lr`, each
    /// weight matrix split across the team's threads if there is one.
    pub fn step(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        layout: &Layout,
        lr: f32,
        mut team: Option<&mut Team>,
    ) {
        let rules = self.begin_step(lr);
        for slot in &layout.layers {
            let team = team.as_deref_mut();
            self.update(rules.weights, slot.w.clone(), params, grads, team);
            for range in slot.trained_vectors() {
                self.update(rules.biases, range, params, grads, None);
            }
        }
    }

    /// Starts the next step (the step count goes up by one): the rules
    /// for weights and for biases at learning rate `lr`. Each tensor is then
    /// updated once, by [`Optimizer::update`] or in a fused weight-gradient
    /// product ([`crate::gemm::GemmCtx::gemm_update`]).
    pub fn begin_step(&mut self, lr: f32) -> StepRules {
        self.t += 1;
        let t = self.t as i32;
        let rule = |l2: f32, wd: f32| match self.cfg.kind {
            OptimKind::Sgd { momentum, nesterov } => Rule::Sgd {
                lr,
                mu: momentum,
                nesterov,
                l2,
                wd,
            },
            OptimKind::Adam { beta1, beta2, eps } => {
                let c1 = (1.0 - (beta1 as f64).powi(t)) as f32;
                let c2 = (1.0 - (beta2 as f64).powi(t)) as f32;
                Rule::Adam {
                    lr,
                    b1: beta1,
                    b2: beta2,
                    eps,
                    step: lr / c1,
                    inv_sqrt_c2: 1.0 / c2.sqrt(),
                    l2,
                    wd,
                }
            }
        };
        StepRules {
            weights: rule(self.cfg.l2, self.cfg.weight_decay),
            biases: rule(0.0, 0.0),
        }
    }

    /// The moments of the parameters in `range`: `(m, v)`, `v` empty for
    /// SGD.
    pub fn moments_mut(&mut self, range: Range<usize>) -> (&mut [f32], &mut [f32]) {
        let v: &mut [f32] = if self.v.is_empty() {
            &mut []
        } else {
            &mut self.v[range.clone()]
        };
        (&mut self.m[range], v)
    }

    /// Applies `rule` to the parameters in `range` with their gradients.
    /// The update is elementwise, so with a team it splits across its
    /// threads (in runs of whole PAR_CHUNKs) without changing a single bit.
    pub fn update(
        &mut self,
        rule: Rule,
        range: Range<usize>,
        params: &mut [f32],
        grads: &[f32],
        team: Option<&mut Team>,
    ) {
        self.update_writing(rule, range, params, grads, team, None)
    }

    /// As [`Optimizer::update`] for one weight matrix (`range`), and with
    /// `copies` also writes its copies: block by block, each block's new
    /// weights while they are still in L1.
    pub fn update_writing(
        &mut self,
        rule: Rule,
        range: Range<usize>,
        params: &mut [f32],
        grads: &[f32],
        team: Option<&mut Team>,
        copies: Option<&dyn WeightCopies>,
    ) {
        let p = &mut params[range.clone()];
        let g = &grads[range.clone()];
        let (m, v) = self.moments_mut(range);
        let len = p.len();
        let team = team.filter(|t| t.threads() > 1 && len > PAR_CHUNK);
        let Some(team) = team else {
            return update_piece(rule, p, g, m, v, 0, copies);
        };
        let per = len.div_ceil(PAR_CHUNK).div_ceil(team.threads()) * PAR_CHUNK;
        let second = !v.is_empty();
        let (p, m, v) = (SharedMut::new(p), SharedMut::new(m), SharedMut::new(v));
        team.run(len.div_ceil(per), &|t| {
            let r = t * per..len.min((t + 1) * per);
            // SAFETY: the parts' ranges are disjoint.
            let (p, m, v) = unsafe {
                let v = if second {
                    v.piece(r.clone())
                } else {
                    v.piece(0..0)
                };
                (p.piece(r.clone()), m.piece(r.clone()), v)
            };
            update_piece(rule, p, &g[r.clone()], m, v, r.start, copies)
        });
    }
}

/// Copies of a weight matrix in other layouts (the bf16 copies, the f32
/// input gradient's `W`), written from its new values by the update.
pub trait WeightCopies: Sync {
    /// Writes the copies of the master weights `values`, which start
    /// `offset` floats into the matrix's panels (whole rows of them: a
    /// multiple of [`crate::gemm::PANEL`], as every update's blocks are).
    ///
    /// # Safety
    /// No other call on elements of `values` runs at the same time.
    unsafe fn write(&self, offset: usize, values: &[f32]);
}

/// Elements per block of an update that writes copies: the block's
/// weights, gradients and moments (16 KiB) stay in L1 until its copies are
/// written. Whole rows of the weights' panels, and whole pairs of rows.
const COPY_BLOCK: usize = 1024;

/// One thread's piece of an update, starting `start` elements into its
/// tensor, with the tensor's copies if there are any.
fn update_piece(
    rule: Rule,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    start: usize,
    copies: Option<&dyn WeightCopies>,
) {
    let Some(copies) = copies else {
        return update(rule, p, g, m, v);
    };
    let second = !v.is_empty();
    for (b, p) in p.chunks_mut(COPY_BLOCK).enumerate() {
        let r = b * COPY_BLOCK..b * COPY_BLOCK + p.len();
        let v: &mut [f32] = if second { &mut v[r.clone()] } else { &mut [] };
        update(rule, p, &g[r.clone()], &mut m[r.clone()], v);
        // SAFETY: the block's rows are this piece's alone (the pieces of an
        // update are disjoint).
        unsafe { copies.write(start + r.start, p) };
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`, as
/// PyTorch's `clip_grad_norm_`: with `total = ‖grads‖₂` (summed in f64),
/// every gradient is multiplied by `max_norm / (total + 1e-6)` when that is
/// below 1, and left untouched otherwise. Returns `total`, the norm before
/// clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f64 {
    let total = grads
        .iter()
        .map(|&g| g as f64 * g as f64)
        .sum::<f64>()
        .sqrt();
    let coef = max_norm as f64 / (total + 1e-6);
    if coef < 1.0 {
        let coef = coef as f32;
        grads.iter_mut().for_each(|g| *g *= coef);
    }
    total
}

/// The update rules of one step.
#[derive(Clone, Copy, Debug)]
pub struct StepRules {
    /// For weight matrices (with L2 and weight decay).
    pub weights: Rule,
    /// For biases (never regularised).
    pub biases: Rule,
}

/// Elements per parallel piece of the update (64 KiB of parameters).
const PAR_CHUNK: usize = 1 << 14;

const _: () = assert!(PAR_CHUNK.is_multiple_of(COPY_BLOCK) && COPY_BLOCK.is_multiple_of(64));

/// One tensor's update rule with its scalars for this step (L2 and weight
/// decay are 0 for biases).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// SGD with momentum `mu` (0: none).
    Sgd {
        lr: f32,
        mu: f32,
        nesterov: bool,
        l2: f32,
        wd: f32,
    },
    /// Adam: `step` is `lr / (1 − β₁ᵗ)`, `inv_sqrt_c2` is
    /// `1 / √(1 − β₂ᵗ)` (the bias corrections).
    Adam {
        lr: f32,
        b1: f32,
        b2: f32,
        eps: f32,
        step: f32,
        inv_sqrt_c2: f32,
        l2: f32,
        wd: f32,
    },
}

/// The arithmetic an update rule needs, on one `f32` or on a SIMD vector of
/// them (the GEMM's fused weight-gradient store). IEEE-754 rounds `+ − × ÷`
/// and `√` exactly, and Rust never fuses a multiply and an add by itself, so
/// the same operations in the same order give the same bits on either.
pub trait Lanes:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self>
{
    fn splat(x: f32) -> Self;
    fn sqrt(self) -> Self;
}

impl Lanes for f32 {
    #[inline(always)]
    fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
}

impl Rule {
    /// The update of one parameter (or one vector of them): weight `w`
    /// with gradient `g`, momentum or first moment `m`, Adam's second
    /// moment `v` (ignored by SGD) → the new `(w, m, v)`. PyTorch's
    /// formulas, with the L2 gradient `2λw` added to `g` and the decoupled
    /// decay `w −= lr·wd·w` applied first.
    #[inline(always)]
    pub fn apply<L: Lanes>(self, w: L, g: L, m: L, v: L) -> (L, L, L) {
        match self {
            Rule::Sgd {
                lr,
                mu,
                nesterov,
                l2,
                wd,
            } => {
                let g = g + L::splat(2.0 * l2) * w;
                let w = w - L::splat(lr * wd) * w;
                let m = L::splat(mu) * m + g;
                let d = if nesterov { g + L::splat(mu) * m } else { m };
                (w - L::splat(lr) * d, m, v)
            }
            Rule::Adam {
                lr,
                b1,
                b2,
                eps,
                step,
                inv_sqrt_c2,
                l2,
                wd,
            } => {
                let g = g + L::splat(2.0 * l2) * w;
                let w = w - L::splat(lr * wd) * w;
                let m = L::splat(b1) * m + L::splat(1.0 - b1) * g;
                let v = L::splat(b2) * v + L::splat(1.0 - b2) * g * g;
                let w = w - L::splat(step) * m / (v.sqrt() * L::splat(inv_sqrt_c2) + L::splat(eps));
                (w, m, v)
            }
        }
    }

    /// True when the rule keeps a second moment (Adam).
    pub fn has_second_moment(&self) -> bool {
        matches!(self, Rule::Adam { .. })
    }
}

/// [`update_loop`], built for AVX2 where the CPU has it: the default x86-64
/// target has only SSE2. The same operations in the same order, so the same
/// bits.
pub(crate) fn update(rule: Rule, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx2 {
        // SAFETY: the CPU has AVX2 (checked at run time).
        return unsafe { update_avx2(rule, p, g, m, v) };
    }
    update_loop(rule, p, g, m, v)
}

/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn update_avx2(rule: Rule, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    update_loop(rule, p, g, m, v)
}

/// One tensor's update: `p` the parameters, `g` their gradients, `m` the
/// momentum (SGD) or first moment (Adam), `v` Adam's second moment (empty
/// for SGD).
#[inline(always)]
fn update_loop(rule: Rule, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    if rule.has_second_moment() {
        for (((w, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            (*w, *m, *v) = rule.apply(*w, g, *m, *v);
        }
    } else {
        for ((w, &g), m) in p.iter_mut().zip(g).zip(m.iter_mut()) {
            (*w, *m, _) = rule.apply(*w, g, *m, 0.0);
        }
    }
}

/// How the learning rate changes over a run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        every: usize,
        gamma: f32,
    },
    /// Cosine decay from the base rate to 0 over the run.
    Cosine,
}

impl Schedule {
    /// Learning rate at `step` (0-based) of `total` steps, `epoch` being the
    /// current epoch, with a linear warm-up over the first `warmup` steps.
    pub fn lr(&self, base: f32, step: usize, total: usize, epoch: usize, warmup: usize) -> f32 {
        let scheduled = match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(1)) as i32),
            Schedule::Cosine => {
                let progress = step as f64 / total.max(1) as f64;
                (base as f64 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
            }
        };
        if step < warmup {
            scheduled * (step + 1) as f32 / warmup as f32
        } else {
            scheduled
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;
    /// `constant`, `cosine`, or `step:EVERY:GAMMA` (e.g. `step:10:0.1`).
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["constant"] => Ok(Schedule::Constant),
            ["cosine"] => Ok(Schedule::Cosine),
            ["step", every, gamma] => Ok(Schedule::Step {
                every: every
                    .parse()
                    .map_err(|_| format!("bad step interval in {s:?}"))?,
                gamma: gamma
                    .parse()
                    .map_err(|_| format!("bad step factor in {s:?}"))?,
            }),
            _ => Err(format!(
                "unknown schedule {s:?} (constant, cosine or step:EVERY:GAMMA)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step split across a team's threads gives the bits of one thread,
    /// for weights long enough to split and for both moment layouts.
    #[test]
    fn a_step_on_a_team_equals_one_on_one_thread() {
        let layout = Layout::new(&[300, 200, 10], crate::model::Norm::None);
        let grads: Vec<f32> = (0..layout.len)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        for kind in [
            OptimKind::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
            OptimKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
        ] {
            let cfg = OptimConfig {
                kind,
                l2: 1e-3,
                weight_decay: 1e-2,
            };
            let run = |mut team: Option<&mut Team>| {
                let mut opt = Optimizer::new(cfg, &layout);
                let mut params = vec![0.25f32; layout.len];
                for _ in 0..3 {
                    opt.step(&mut params, &grads, &layout, 0.01, team.as_deref_mut());
                }
                params
            };
            let one = run(None);
            let two = run(Some(&mut Team::new(2)));
            assert!(layout.layers[0].w.len() > PAR_CHUNK, "the weights split");
            assert!(
                one.iter()
                    .zip(&two)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn clipping_scales_a_long_gradient_to_the_bound_and_leaves_a_short_one() {
        let mut g = vec![3.0f32, -4.0, 0.0, 12.0];
        let total = clip_grad_norm(&mut g, 6.5);
        assert_eq!(total, 13.0);
        let norm = g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 6.5).abs() < 1e-5, "{norm}");
        assert!((g[0] / g[1] + 0.75).abs() < 1e-6, "direction kept: {g:?}");
        let short = vec![0.3f32, -0.4];
        let mut kept = short.clone();
        assert!((clip_grad_norm(&mut kept, 1.0) - 0.5).abs() < 1e-7);
        assert_eq!(kept, short, "a gradient within the bound is untouched");
    }

    /// The AVX2 build of the update loops gives the same bits as the
    /// portable one, on awkward lengths and every option.
    #[test]
    fn avx2_updates_match_the_portable_loops_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::features().avx2 {
            let mut rng = crate::rng::Rng::new(9);
            let mut vec = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
            let same =
                |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            for n in [1, 7, 9, 33, 1000] {
                let (w, g, m0) = (vec(n), vec(n), vec(n));
                let v0: Vec<f32> = vec(n).iter().map(|x| x * x).collect();
                for (nesterov, l2, wd) in [(false, 0.0, 0.0), (true, 0.01, 0.1)] {
                    let sgd = Rule::Sgd {
                        lr: 0.1,
                        mu: 0.9,
                        nesterov,
                        l2,
                        wd,
                    };
                    let adam = Rule::Adam {
                        lr: 0.01,
                        b1: 0.9,
                        b2: 0.999,
                        eps: 1e-8,
                        step: 0.01 / 0.19,
                        inv_sqrt_c2: 1.0 / 0.002f32.sqrt(),
                        l2,
                        wd,
                    };
                    for (rule, v_len) in [(sgd, 0), (adam, n)] {
                        let (mut w1, mut m1, mut v1) =
                            (w.clone(), m0.clone(), v0[..v_len].to_vec());
                        let (mut w2, mut m2, mut v2) =
                            (w.clone(), m0.clone(), v0[..v_len].to_vec());
                        update_loop(rule, &mut w1, &g, &mut m1, &mut v1);
                        // SAFETY: the CPU has AVX2 (checked above).
                        unsafe { update_avx2(rule, &mut w2, &g, &mut m2, &mut v2) };
                        assert!(
                            same(&w1, &w2) && same(&m1, &m2) && same(&v1, &v2),
                            "{rule:?} n = {n}"
                        );
                        assert!(!same(&w1, &w), "{rule:?} n = {n}: the loop ran");
                    }
                }
            }
            return;
        }
        crate::cpu::report_skipped("AVX2 optimiser loops", "this CPU has no AVX2");
    }

    #[test]
    fn schedules_follow_their_formulas() {
        assert_eq!(Schedule::Constant.lr(0.1, 5, 10, 0, 0), 0.1);
        let s = Schedule::Step {
            every: 2,
            gamma: 0.5,
        };
        assert_eq!(s.lr(1.0, 0, 10, 3, 0), 0.5);
        assert_eq!(s.lr(1.0, 0, 10, 4, 0), 0.25);
        assert!((Schedule::Cosine.lr(1.0, 5, 10, 0, 0) - 0.5).abs() < 1e-6);
        assert_eq!(Schedule::Cosine.lr(1.0, 0, 10, 0, 0), 1.0);
        assert_eq!(Schedule::Constant.lr(1.0, 0, 10, 0, 4), 0.25);
        assert_eq!(Schedule::Constant.lr(1.0, 3, 10, 0, 4), 1.0);
        assert_eq!(
            "step:3:0.1".parse(),
            Ok(Schedule::Step {
                every: 3,
                gamma: 0.1
            })
        );
        assert!("linear".parse::<Schedule>().is_err());
    }
}
