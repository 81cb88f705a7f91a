//! Epilogues: what happens to a tile of `α·AB + β·C` before it is stored.
//!
//! Order of operations, identical in the vector and scalar paths (so a fused
//! epilogue equals the unfused sequence bit for bit):
//!
//! ```text
//! v = α·ab            (skipped when α = 1)
//! v = v + β·c_old     (only when β ≠ 0: β = 0 never reads C)
//! v = v + bias[j]     (Bias, BiasAct)
//! v = act(v)          (Act, BiasAct)        relu: v > 0 ? v : 0, leaky: v > 0 ? v : v·slope,
//!                                           tanh, sigmoid: 1 / (1 + e^(−v))
//! v = v ⊙ act'(z)     (ActGrad)             relu: z > 0 ? v : 0, leaky: z > 0 ? v : v·slope,
//!                                           tanh: v·(1 − z²), sigmoid: v·(z·(1 − z)), z the output
//! ```
//!
//! A fused weight-gradient product ([`super::GemmCtx::gemm_update`]) has no
//! other epilogue and β = 0: `v = α·ab` is the gradient of the weight held
//! in C, and the store applies the optimiser's rule ([`Rule::apply`]) to
//! that weight and its moments instead of writing `v`.

use super::mat::Panels;
use super::MatRef;
use crate::optim::Rule;

/// An elementwise activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `x`.
    Identity,
    /// `max(x, 0)` (exactly `x > 0 ? x : 0`; NaN maps to 0).
    Relu,
    /// `x > 0 ? x : slope·x`.
    LeakyRelu(f32),
    /// `tanh(x)` (the platform's `f32::tanh`, one lane at a time in the
    /// vector store); its derivative from the output `h` is `1 − h²`.
    Tanh,
    /// `1 / (1 + e^(−x))`; its derivative from the output `h` is `h·(1 − h)`.
    Sigmoid,
}

impl Activation {
    /// `act(x)`.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu | Activation::LeakyRelu(_) => self.scale_by_grad(x, x),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }
    }

    /// `v · act'`, from `z` as [`Epilogue::ActGrad`] holds it: the ReLU
    /// family needs only its sign, so `z` may be the pre-activation or the
    /// output (`z > 0 ? v : 0` or `v·slope`); tanh and sigmoid take the
    /// output `h`: `v·(1 − h²)`, `v·(h·(1 − h))`.
    #[inline(always)]
    pub fn scale_by_grad(self, z: f32, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => {
                if z > 0.0 {
                    v
                } else {
                    0.0
                }
            }
            Activation::LeakyRelu(slope) => {
                if z > 0.0 {
                    v
                } else {
                    v * slope
                }
            }
            Activation::Tanh => v * (1.0 - z * z),
            Activation::Sigmoid => v * (z * (1.0 - z)),
        }
    }
}

/// Applied to every element of C after `α·op(A)·op(B) + β·C`, in the same
/// pass as the store.
#[derive(Clone, Copy, Debug, Default)]
pub enum Epilogue<'a> {
    /// Store `α·AB + β·C`.
    #[default]
    None,
    /// Add `bias[j]` to column `j` of every row (`bias.len() == n`).
    Bias(&'a [f32]),
    /// Apply an activation.
    Act(Activation),
    /// Add the bias, then apply the activation: `act(XWᵀ + b)` in one pass.
    BiasAct(&'a [f32], Activation),
    /// Multiply elementwise by `act'`, from Z (an m×n matrix with its own
    /// strides; the activation's output, see [`Activation::scale_by_grad`]):
    /// the backward pass `dX = (dZ·W) ⊙ act'(Z_prev)`.
    ActGrad(MatRef<'a>, Activation),
}

impl Epilogue<'_> {
    /// Panics with a clear message unless the epilogue fits an m×n C.
    pub(crate) fn check(&self, m: usize, n: usize) {
        match self {
            Epilogue::Bias(b) | Epilogue::BiasAct(b, _) => assert!(
                b.len() == n,
                "gemm epilogue: bias has {} elements, C has {n} columns",
                b.len()
            ),
            Epilogue::ActGrad(z, _) => assert!(
                z.rows() == m && z.cols() == n,
                "gemm epilogue: Z is {}×{}, C is {m}×{n}",
                z.rows(),
                z.cols()
            ),
            _ => {}
        }
    }

    /// The raw form the kernels use.
    pub(crate) fn raw(&self) -> Epi {
        let mut e = Epi::NONE;
        match *self {
            Epilogue::None => {}
            Epilogue::Bias(b) => e.bias = b.as_ptr(),
            Epilogue::Act(a) => e.act = a,
            Epilogue::BiasAct(b, a) => {
                e.bias = b.as_ptr();
                e.act = a;
            }
            Epilogue::ActGrad(z, a) => {
                e.z = z.as_ptr();
                e.rsz = z.rs() as isize;
                e.csz = z.cs() as isize;
                e.zact = a;
            }
        }
        e
    }
}

/// Raw epilogue: pointers already offset to the current tile's (0, 0).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epi {
    /// Bias at the tile's column 0, or null.
    pub bias: *const f32,
    pub act: Activation,
    /// Z at the tile's (0, 0), or null.
    pub z: *const f32,
    pub rsz: isize,
    pub csz: isize,
    pub zact: Activation,
    /// The fused optimiser step, if any.
    pub step: Option<StepEpi>,
}

/// The optimiser step of a fused weight-gradient product: C holds the
/// weights, and their moments lie at C's offsets in slabs of their own.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepEpi {
    pub rule: Rule,
    /// Momentum (SGD) or first moment (Adam) at the tile's (0, 0).
    pub m: *mut f32,
    /// Adam's second moment at the tile's (0, 0); null for SGD.
    pub v: *mut f32,
    /// Row stride of both moments (their column stride is 1, as C's).
    pub rs: isize,
    /// Their panels, as C's.
    pub panels: Panels,
    /// A copy of the new weights in the transposed layout, or null: C's
    /// element (i, j) goes to the copy's (j, i), at
    /// `copy_panels.offset(j, i, copy_rs, 1)` from `copy` (the whole copy's
    /// origin, never offset: `at` is where the tile lies in it).
    pub copy: *mut f32,
    pub copy_rs: isize,
    pub copy_panels: Panels,
    /// The column sums of B over all of K, the layer's bias gradient when
    /// B is its dZ, or null: the whole vector's origin (never offset, as
    /// `copy`). The packed nest writes them from the B̃ blocks it packs
    /// (`loops::nest`); a product that packs no B̃ gets them from
    /// [`super::GemmCtx::gemm_update`] before it runs.
    pub bias_grad: *mut f32,
    /// (i, j) of the tile's (0, 0) in the whole C.
    pub at: (usize, usize),
}

impl StepEpi {
    /// Offset of element (i, j) from the tile's (0, 0). (A tile never
    /// straddles two panels, and every origin the nest moves to is a panel
    /// boundary or lies inside the tile's panel.)
    #[inline(always)]
    pub fn offset(&self, i: usize, j: usize) -> isize {
        self.panels.offset(i, j, self.rs, 1)
    }

    /// Where the copy holds the tile's element (i, j).
    #[inline(always)]
    pub fn copy_offset(&self, i: usize, j: usize) -> isize {
        let (i0, j0) = self.at;
        self.copy_panels.offset(j0 + j, i0 + i, self.copy_rs, 1)
    }
}

// SAFETY: Epi carries read-only pointers into data the caller keeps alive
// and unmodified for the whole GEMM call (borrowed slices), and the moment
// and copy pointers of a fused step, which alias nothing else and are
// written only at the places of C elements, each owned by exactly one
// thread.
unsafe impl Send for Epi {}
unsafe impl Sync for Epi {}

impl Epi {
    pub const NONE: Epi = Epi {
        bias: std::ptr::null(),
        act: Activation::Identity,
        z: std::ptr::null(),
        rsz: 0,
        csz: 0,
        zact: Activation::Identity,
        step: None,
    };

    /// The epilogue seen from element (i, j).
    ///
    /// # Safety
    /// (i, j) lies inside the C this epilogue was made for.
    #[inline(always)]
    pub unsafe fn at(&self, i: usize, j: usize) -> Epi {
        let mut e = *self;
        if !e.bias.is_null() {
            e.bias = e.bias.add(j);
        }
        if !e.z.is_null() {
            e.z = e.z.offset(i as isize * e.rsz + j as isize * e.csz);
        }
        if let Some(s) = &mut e.step {
            let at = s.offset(i, j);
            s.m = s.m.offset(at);
            if !s.v.is_null() {
                s.v = s.v.offset(at);
            }
            s.at = (s.at.0 + i, s.at.1 + j);
        }
        e
    }

    /// True when the vector path can load Z rows directly.
    #[inline(always)]
    pub fn vector_ok(&self) -> bool {
        self.z.is_null() || self.csz == 1
    }

    /// True when the epilogue does nothing.
    #[inline(always)]
    pub fn is_none(&self) -> bool {
        self.bias.is_null()
            && self.z.is_null()
            && self.act == Activation::Identity
            && self.step.is_none()
    }

    /// Finishes one element: see the module docs for the order.
    ///
    /// A fused step also writes the new weight into its copy.
    ///
    /// # Safety
    /// `c` valid for reads if β ≠ 0 or for a fused step; bias/Z (and the
    /// moments and the copy) valid at (i, j).
    #[inline(always)]
    pub unsafe fn finish1(
        &self,
        ab: f32,
        alpha: f32,
        beta: f32,
        c: *const f32,
        i: usize,
        j: usize,
    ) -> f32 {
        let mut v = if alpha == 1.0 { ab } else { alpha * ab };
        if let Some(s) = &self.step {
            let at = s.offset(i, j);
            let m = s.m.offset(at);
            let w = if s.v.is_null() {
                let (w, m_new, _) = s.rule.apply(*c, v, *m, 0.0);
                *m = m_new;
                w
            } else {
                let sv = s.v.offset(at);
                let (w, m_new, v_new) = s.rule.apply(*c, v, *m, *sv);
                (*m, *sv) = (m_new, v_new);
                w
            };
            if !s.copy.is_null() {
                *s.copy.offset(s.copy_offset(i, j)) = w;
            }
            return w;
        }
        if beta != 0.0 {
            v += beta * *c;
        }
        if !self.bias.is_null() {
            v += *self.bias.add(j);
        }
        v = self.act.apply(v);
        if !self.z.is_null() {
            let z = *self.z.offset(i as isize * self.rsz + j as isize * self.csz);
            v = self.zact.scale_by_grad(z, v);
        }
        v
    }
}

/// Finishes an `mr × nr` block of raw products `ab` (row-major, leading
/// dimension `ldab`) into C.
///
/// # Safety
/// `ab` valid for the block; C valid for the block with strides (rsc, csc)
/// (read only if β ≠ 0); `epi` offset to the block's (0, 0).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn finish_scalar(
    ab: *const f32,
    ldab: usize,
    mr: usize,
    nr: usize,
    alpha: f32,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
    epi: &Epi,
) {
    for i in 0..mr {
        for j in 0..nr {
            let cij = c.offset(i as isize * rsc + j as isize * csc);
            *cij = epi.finish1(*ab.add(i * ldab + j), alpha, beta, cij, i, j);
        }
    }
}
