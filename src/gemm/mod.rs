//! Single-precision matrix product `C = α·op(A)·op(B) + β·C`, then an
//! epilogue, on the CPU.
//!
//! The engine follows Goto & van de Geijn ("Anatomy of high-performance
//! matrix multiplication", 2008) and BLIS (Van Zee & van de Geijn, 2015):
//! five loops around a register-blocked microkernel, with A and B packed into
//! aligned, contiguous micro-panels (`loops.rs`, `pack.rs`, `params.rs`).
//! Microkernels exist for AVX-512F, AVX2+FMA and portable Rust
//! (`kernels/`), chosen once at run time ([`crate::cpu`]); small and skinny
//! products skip packing (`small.rs`); `matrixmultiply` is the fallback and
//! the f64 path. Every operand has its own row and column strides, so `X·Wᵀ`,
//! `dZ·W` and `dZᵀ·X` are computed without materialising a transpose; B and
//! C may also be panelled (`mat.rs`: the packed B̃ layout, which the network
//! keeps its weights in), and a weight-gradient product may carry the
//! optimiser's step in its store ([`GemmCtx::gemm_update`]).
//!
//! Threads split M and N only, never K: every element of C is summed in one
//! fixed order, so **C is bitwise identical for any thread count**.
//!
//! ```
//! use fastnn::gemm::{Activation, Epilogue, GemmCtx, MatMut, MatRef, Parallelism};
//! // H = relu(X·Wᵀ + b), X [2, 3], W [4, 3]
//! let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let w = [1.0; 12];
//! let b = [0.0, -7.0, -20.0, 1.0];
//! let mut h = [0.0; 8];
//! let mut ctx = GemmCtx::new(Parallelism::Single);
//! ctx.gemm(
//!     1.0,
//!     MatRef::row_major(&x, 2, 3),
//!     MatRef::row_major(&w, 4, 3).t(),
//!     0.0,
//!     MatMut::row_major(&mut h, 2, 4),
//!     Epilogue::BiasAct(&b, Activation::Relu),
//! );
//! assert_eq!(h, [6.0, 0.0, 0.0, 7.0, 15.0, 8.0, 0.0, 16.0]);
//! ```

pub mod amx;
pub mod backward_weights;
pub mod bench;
pub mod bf16;
pub mod bf16_weights;
mod epilogue;
mod kernels;
mod loops;
mod mat;
mod narrow;
mod pack;
mod params;
pub mod reference;
mod small;
mod threads;
mod workspace;

pub use epilogue::{Activation, Epilogue};
pub use mat::{panel_len, MatMut, MatRef, PANEL};

use mat::Panels;
pub use workspace::GemmWorkspace;

pub(crate) use kernels::prefetch;
pub(crate) use loops::Args;
use loops::{Chunks, SharedA};
use std::sync::atomic::AtomicUsize;
pub(crate) use workspace::PartWs;

use crate::cpu::{self, Isa, IsaError};
use crate::optim::Rule;
use crate::team::{Barrier, SharedMut, Team};
use epilogue::{Epi, StepEpi};
use params::Params;

/// How many threads one GEMM call may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallelism {
    /// The calling thread only.
    Single,
    /// Up to `n` threads: the caller and `n − 1` threads of the context's
    /// own persistent [`Team`], started with the context.
    Threads(usize),
}

impl Parallelism {
    /// A thread count as a `Parallelism` (0 and 1 mean `Single`).
    pub fn threads(n: usize) -> Self {
        if n <= 1 {
            Parallelism::Single
        } else {
            Parallelism::Threads(n)
        }
    }

    fn count(self) -> usize {
        match self {
            Parallelism::Single => 1,
            Parallelism::Threads(n) => n.max(1),
        }
    }
}

/// Which algorithm a call uses (tests and benchmarks force one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Packed for large products, no-pack for small/skinny ones (see
    /// [`Strategy::small_wins`]).
    #[default]
    Auto,
    /// Always the packed loop nest.
    Packed,
    /// Always the no-pack single-thread path.
    Small,
    /// Always the strip kernel (`narrow.rs`), meant for C at most
    /// [`narrow::STRIP`] columns wide; wider ones go strip by strip.
    Narrow,
}

impl Strategy {
    /// The measured switch point: true when the no-pack path is faster.
    ///
    /// Measured on this machine: see the table in `params.rs`. The no-pack path wins when C is very
    /// narrow or very short (one microkernel tile or less in that
    /// direction) or the whole product is tiny.
    pub fn small_wins(m: usize, k: usize, n: usize) -> bool {
        n <= params::SMALL_MAX_N
            || m <= params::SMALL_MAX_M
            || m.saturating_mul(k).saturating_mul(n) <= params::SMALL_MAX_MKN
    }
}

/// How a [`GemmCtx`] computes one product ([`GemmCtx::plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// A dimension is 0: at most C is scaled.
    Empty,
    /// The `matrixmultiply` crate.
    Fallback,
    /// The no-pack single-thread path (small and skinny products).
    NoPack,
    /// The strip kernel: C at most 16 columns wide (the output layer), A
    /// read in place, its rows cut into this many parts, one per thread.
    Narrow { threads: usize },
    /// The packed loop nest, C cut into this many parts, one per thread.
    Packed { threads: usize },
}

/// A GEMM context: the kernel family, the threads and the pack buffers.
/// Keep one per training run; calls on it allocate nothing once the
/// workspace has grown to the shapes used.
pub struct GemmCtx {
    isa: Isa,
    par: Parallelism,
    strategy: Strategy,
    ws: GemmWorkspace,
    /// The threads of a split product (`None` for one thread).
    team: Option<Team>,
}

impl GemmCtx {
    /// The process-wide kernel ([`cpu::try_selected`]: best available or
    /// `FASTNN_ISA`), refused if `FASTNN_ISA` is unknown or names a kernel
    /// this CPU lacks.
    pub fn try_new(par: Parallelism) -> Result<Self, IsaError> {
        Ok(Self::build(cpu::try_selected()?, par))
    }

    /// As [`GemmCtx::try_new`], but panics on a bad `FASTNN_ISA` (tests,
    /// examples and benchmarks).
    pub fn new(par: Parallelism) -> Self {
        Self::build(cpu::selected(), par)
    }

    /// A specific kernel family, refused if this CPU cannot run it.
    pub fn with_isa(isa: Isa, par: Parallelism) -> Result<Self, IsaError> {
        Ok(Self::build(isa.check()?, par))
    }

    fn build(isa: Isa, par: Parallelism) -> Self {
        GemmCtx {
            isa,
            par,
            strategy: Strategy::Auto,
            ws: GemmWorkspace::new(),
            team: (par.count() > 1).then(|| Team::new(par.count())),
        }
    }

    /// Forces an algorithm (default [`Strategy::Auto`]).
    pub fn with_strategy(mut self, s: Strategy) -> Self {
        self.strategy = s;
        self
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn parallelism(&self) -> Parallelism {
        self.par
    }

    pub fn set_parallelism(&mut self, par: Parallelism) {
        self.par = par;
        if self.team.as_ref().map_or(1, Team::threads) != par.count() {
            self.team = (par.count() > 1).then(|| Team::new(par.count()));
        }
    }

    /// The context's threads, to run a step's other parallel work on
    /// (`None` for one thread).
    pub fn team(&mut self) -> Option<&mut Team> {
        self.team.as_mut()
    }

    /// Seconds the calling thread has waited for the team's other threads
    /// so far ([`Team::waited`]), in products and in other work run on it.
    pub fn team_wait(&self) -> f64 {
        self.team.as_ref().map_or(0.0, |t| t.waited().as_secs_f64())
    }

    /// The workspace (e.g. to report its size).
    pub fn workspace(&self) -> &GemmWorkspace {
        &self.ws
    }

    /// `C = epilogue(α·A·B + β·C)` on views. `A` is m×k, `B` k×n, `C` m×n;
    /// transposes are views (`MatRef::t`). Panics with a message naming the
    /// mismatch if the shapes disagree.
    pub fn gemm(
        &mut self,
        alpha: f32,
        a: MatRef<'_>,
        b: MatRef<'_>,
        beta: f32,
        mut c: MatMut<'_>,
        epi: Epilogue<'_>,
    ) {
        let (m, k, n) = (a.rows(), a.cols(), b.cols());
        assert!(
            b.rows() == k,
            "gemm: A is {m}×{k} but B is {}×{n} (inner dimensions differ)",
            b.rows()
        );
        assert!(
            c.rows() == m && c.cols() == n,
            "gemm: A·B is {m}×{n} but C is {}×{}",
            c.rows(),
            c.cols()
        );
        assert!(
            a.layout() == Panels::None,
            "gemm: A cannot be panelled (only B and C)"
        );
        epi.check(m, n);
        let args = Args::of_views(alpha, &a, &b, beta, &mut c, epi.raw());
        // SAFETY: the views were bounds-checked at construction (panelled
        // ones including their padding, which in-place reads may touch); C
        // is a unique borrow whose elements do not overlap (MatMut::new,
        // MatMut::panels), so it cannot alias A, B or the epilogue's
        // operands (shared borrows).
        unsafe { self.run(&args) }
    }

    /// `C = epilogue(α·op(A)·op(B) + β·C)` on raw pointers with
    /// matrixmultiply-style strides: element (i, p) of op(A) is at
    /// `a + i·rsa + p·csa`, (p, j) of op(B) at `b + p·rsb + j·csb`, (i, j) of
    /// C at `c + i·rsc + j·csc`. Strides may be negative.
    ///
    /// # Safety
    /// - `a` is valid for reads at every (i, p) offset, i < m, p < k, and
    ///   `b` at every (p, j), p < k, j < n.
    /// - `c` is valid for writes (and reads, if β ≠ 0) at every (i, j); the
    ///   offsets of distinct (i, j) are distinct.
    /// - C does not overlap A, B, or the epilogue's bias or Z, and nothing
    ///   else reads or writes C during the call.
    ///
    /// The epilogue's shapes are checked (panic on mismatch). With β = 0, C
    /// is never read (it may hold NaN or garbage).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_raw(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: *const f32,
        rsa: isize,
        csa: isize,
        b: *const f32,
        rsb: isize,
        csb: isize,
        beta: f32,
        c: *mut f32,
        rsc: isize,
        csc: isize,
        epi: Epilogue<'_>,
    ) {
        epi.check(m, n);
        let args = Args {
            m,
            k,
            n,
            alpha,
            a,
            rsa,
            csa,
            b,
            rsb,
            csb,
            beta,
            c,
            rsc,
            csc,
            bp: Panels::None,
            cp: Panels::None,
            epi: epi.raw(),
        };
        self.run(&args)
    }

    /// `W = rule(W, α·A·B)`: the product is the gradient of the weights
    /// `W` (an m×n view, row-major or panelled, its columns contiguous) and
    /// is never stored. Each tile goes from the registers straight into the
    /// optimiser's update of its weights and their moments `m` and `v`,
    /// slices laid out exactly as `W`'s (`v` is ignored, and may be empty,
    /// for a rule without a second moment): the weight-gradient pass and the
    /// update in one pass over `W`. The result is bit for bit that of the
    /// product into a gradient buffer followed by
    /// [`crate::optim::Optimizer::update`] with the same rule.
    ///
    /// With `copy` (a view of `Wᵀ` in column panels, `n×m`), each new
    /// weight is also written there, transposed, while its tile is in L1:
    /// the training step keeps `W` so for its input gradient.
    ///
    /// With `bias_grad` (n floats), the column sums of B (α not applied)
    /// are written there: with B = dZ, the layer's bias gradient. Each
    /// column is summed row by row from 0, as [`crate::ops::column_sums`]
    /// sums it, so the bits are the same; the packed nest takes them from
    /// each B̃ block as it packs it, while the block is in L1 and L2,
    /// instead of in a pass of its own over dZ.
    ///
    /// With `then`, each of the team's threads calls it as soon as its own
    /// part of the product is done, so a thread that finishes first does
    /// that work while the others still compute (where the product does
    /// not run on the team, this thread calls it once, after). `then` must
    /// hand its pieces out itself, e.g. from a counter
    /// ([`crate::data::GatherJob::work`]): it is done when every call has
    /// returned, which is before this returns.
    ///
    /// Panics unless [`GemmCtx::fuses_update`] holds for the shape, or if
    /// the shapes or lengths disagree.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_update(
        &mut self,
        alpha: f32,
        a: MatRef<'_>,
        b: MatRef<'_>,
        mut w: MatMut<'_>,
        m: &mut [f32],
        v: &mut [f32],
        rule: Rule,
        copy: Option<MatMut<'_>>,
        bias_grad: Option<&mut [f32]>,
        then: Option<SideJob<'_>>,
    ) {
        let (rows, k, cols) = (a.rows(), a.cols(), b.cols());
        assert!(
            b.rows() == k && w.rows() == rows && w.cols() == cols && w.cs() == 1,
            "gemm_update: A is {rows}×{k}, B {}×{cols}, W {}×{} with column stride {}",
            b.rows(),
            w.rows(),
            w.cols(),
            w.cs()
        );
        assert!(
            a.layout() == Panels::None,
            "gemm_update: A cannot be panelled"
        );
        let len = w.len();
        let second = rule.has_second_moment();
        assert!(
            m.len() == len && (!second || v.len() == len),
            "gemm_update: W spans {len} elements, m {} and v {}",
            m.len(),
            v.len()
        );
        assert!(
            self.fuses_update(rows, k, cols),
            "gemm_update: a {rows}×{k}×{cols} product is not computed in one pass over K"
        );
        let (copy, copy_rs, copy_panels) = match copy {
            Some(mut t) => {
                assert!(
                    t.rows() == cols
                        && t.cols() == rows
                        && t.cs() == 1
                        && matches!(t.layout(), Panels::Cols(_)),
                    "gemm_update: the copy of a {rows}×{cols} W must be {cols}×{rows} in column panels"
                );
                (t.as_mut_ptr(), t.rs() as isize, t.layout())
            }
            None => (std::ptr::null_mut(), 0, Panels::None),
        };
        // The nest sums B's columns from the B̃ it packs: where no B̃ is
        // packed (B read in place, another kernel, no product at all: `run`
        // returns early without rows, depth or α), they are summed here.
        let panelled = b.layout() != Panels::None || w.layout() != Panels::None;
        let nest_sums = rows > 0
            && k > 0
            && alpha != 0.0
            && !matches!(b.layout(), Panels::Cols(_))
            && self.isa != Isa::MatrixMultiply
            && self.path(rows, k, cols, panelled) == Path::Packed;
        let bias_grad = match bias_grad {
            Some(sums) => {
                assert!(
                    sums.len() == cols,
                    "gemm_update: the bias gradient has {} elements, B {cols} columns",
                    sums.len()
                );
                if nest_sums {
                    sums.as_mut_ptr()
                } else {
                    column_sums_of(&b, sums);
                    std::ptr::null_mut()
                }
            }
            None => std::ptr::null_mut(),
        };
        let mut epi = Epi::NONE;
        epi.step = Some(StepEpi {
            rule,
            m: m.as_mut_ptr(),
            v: if second {
                v.as_mut_ptr()
            } else {
                std::ptr::null_mut()
            },
            rs: w.rs() as isize,
            panels: w.layout(),
            copy,
            copy_rs,
            copy_panels,
            bias_grad,
            at: (0, 0),
        });
        let args = Args::of_views(alpha, &a, &b, 0.0, &mut w, epi);
        // SAFETY: A and B are bounds-checked views; W is a unique,
        // non-overlapping view, and m and v unique borrows of W's length,
        // addressed at W's offsets, the copy a unique view of W's shape
        // transposed, so none aliases A, B or another; the
        // shape is computed in one pass over K (checked), so every element
        // of W is read once, as the old weight, before its one write.
        unsafe { self.run_then(&args, then) }
    }

    /// True when an m×k×n product can carry a fused optimiser step
    /// ([`GemmCtx::gemm_update`]): its kernel must sum the whole of K before
    /// it stores a tile, which the strip kernel always does and the packed
    /// nest when K fits one KC block. The answer does not depend on W's
    /// layout: it is the answer for a panelled W, and a row-major W takes
    /// the same path or the no-pack one, which sums all of K in one pass
    /// too. Never with `matrixmultiply`, which stores C before the
    /// epilogue runs.
    pub fn fuses_update(&self, m: usize, k: usize, n: usize) -> bool {
        match self.plan_panelled(m, k, n, true) {
            Plan::Empty | Plan::Narrow { .. } => true,
            Plan::Fallback => false,
            Plan::NoPack | Plan::Packed { .. } => {
                params::block_steps(&params_of(self.isa), m, k, n).1 >= k
            }
        }
    }

    /// Pre-sizes the workspace so that no call with a product of at most
    /// m×k×n (every dimension at most the given one) allocates: a training
    /// step reserves its products at the largest batch, and the short last
    /// batch of an epoch then fits too.
    ///
    /// Each of the (at most `threads`) parts gets the largest Ã and B̃ any
    /// such call can ask for (and so do the two Ã buffers that parts cut
    /// along N share), [`params::block_bound`]: the block steps of a
    /// smaller product are not always smaller (m = MC + 1 is cut into two
    /// halves, m = MC is one block), so reserving the exact steps of m×k×n
    /// would not cover it.
    pub fn reserve(&mut self, m: usize, k: usize, n: usize) {
        // Only the packed loop nest and the strip kernel use the
        // workspace; a product with panelled operands takes one of them
        // whatever its shape.
        match self.plan_panelled(m, k, n, false) {
            Plan::Packed { .. } => {}
            Plan::Narrow { threads } => {
                self.ws.ensure_parts(threads);
                for part in &mut self.ws.parts[..threads] {
                    part.reserve(0, narrow::strip_len(k));
                }
                return;
            }
            Plan::Empty | Plan::Fallback | Plan::NoPack => return,
        }
        let p = params_of(self.isa);
        let (_, kc, nc) = params::block_bound(&p, m, k, n);
        let a = params::a_block_bound(&p, m, k, n);
        self.ws.ensure_parts(self.par.count());
        for part in &mut self.ws.parts {
            part.reserve(a, kc * nc);
        }
        if self.par.count() > 1 {
            self.ws.reserve_shared_a(a);
        }
    }

    /// The kernel an m×k×n product takes; `panelled`: B or C is in
    /// panels, which the no-pack path cannot address.
    fn path(&self, m: usize, k: usize, n: usize, panelled: bool) -> Path {
        match self.strategy {
            Strategy::Small if !panelled => Path::NoPack,
            Strategy::Narrow => Path::Narrow,
            Strategy::Packed | Strategy::Small => Path::Packed,
            Strategy::Auto if n <= narrow::STRIP && (panelled || m >= params::NARROW_MIN_M) => {
                Path::Narrow
            }
            Strategy::Auto if !panelled && Strategy::small_wins(m, k, n) => Path::NoPack,
            Strategy::Auto => Path::Packed,
        }
    }

    /// The plan of a product with m, n, k > 0 on a kernel of our own.
    fn plan_of(&self, m: usize, k: usize, n: usize, panelled: bool, column_panels: bool) -> Plan {
        match self.path(m, k, n, panelled) {
            Path::NoPack => Plan::NoPack,
            Path::Narrow => Plan::Narrow {
                threads: self.narrow_parts(m, k, n),
            },
            Path::Packed => Plan::Packed {
                threads: self.packed_split(m, k, n, column_panels).parts(),
            },
        }
    }

    /// How C of an m×k×n packed product is cut between threads: small
    /// products stay on one thread, whatever the context allows; with
    /// column panels in B or C, N is cut on panel boundaries.
    fn packed_split(&self, m: usize, k: usize, n: usize, column_panels: bool) -> threads::Split {
        let threads = if m.saturating_mul(k).saturating_mul(n) < params::THREAD_MIN_MKN {
            1
        } else {
            self.par.count()
        };
        let p = params_of(self.isa);
        let n_unit = if column_panels { PANEL } else { p.nr };
        threads::split(m, n, &p, threads, n_unit)
    }

    /// How many threads share the rows of an m×k×n product of the strip
    /// kernel: each a run of whole MR-row blocks, and only where every
    /// thread gets enough work to pay for waking it.
    fn narrow_parts(&self, m: usize, k: usize, n: usize) -> usize {
        let work = m
            .saturating_mul(k)
            .saturating_mul(n.div_ceil(narrow::STRIP) * narrow::STRIP);
        let by_work = work / params::NARROW_THREAD_MIN_MKN;
        let by_rows = m.div_ceil(narrow::ROWS);
        self.par.count().min(by_work).min(by_rows).max(1)
    }

    /// How this context computes an m×k×n product. (Tests use it to check
    /// that a shape really takes the path they mean to test.)
    pub fn plan(&self, m: usize, k: usize, n: usize) -> Plan {
        if m == 0 || n == 0 || k == 0 {
            Plan::Empty
        } else if self.isa == Isa::MatrixMultiply {
            Plan::Fallback
        } else {
            self.plan_of(m, k, n, false, false)
        }
    }

    /// How this context computes an m×k×n product whose B or C is
    /// panelled: in column panels (`column_panels`: the forward product's
    /// B, the weight gradient's C) or B in row panels (the input
    /// gradient's). Such products take the strip kernel if C is narrow,
    /// else the packed nest, whatever their shape: B in column panels needs
    /// no packing, and the no-pack path cannot address panels.
    pub fn plan_panelled(&self, m: usize, k: usize, n: usize, column_panels: bool) -> Plan {
        if m == 0 || n == 0 || k == 0 {
            Plan::Empty
        } else if self.isa == Isa::MatrixMultiply {
            Plan::Fallback
        } else {
            self.plan_of(m, k, n, true, column_panels)
        }
    }

    /// # Safety
    /// `args` satisfies [`GemmCtx::gemm_raw`]'s contract.
    unsafe fn run(&mut self, args: &Args) {
        self.run_then(args, None)
    }

    /// [`GemmCtx::run`], then `then` on every thread that took part in the
    /// product, each as it finishes (see [`GemmCtx::gemm_update`]).
    ///
    /// # Safety
    /// As [`GemmCtx::run`].
    unsafe fn run_then(&mut self, args: &Args, then: Option<SideJob<'_>>) {
        if !self.run_on_team(args, then) {
            if let Some(job) = then {
                job();
            }
        }
    }

    /// The product on the team's threads, each calling `then` after its
    /// part; true if it ran so, false if it ran on this thread alone
    /// (without calling `then`).
    ///
    /// # Safety
    /// As [`GemmCtx::run`].
    unsafe fn run_on_team(&mut self, args: &Args, then: Option<SideJob<'_>>) -> bool {
        let Args { m, k, n, .. } = *args;
        if m == 0 || n == 0 {
            return false;
        }
        if k == 0 || args.alpha == 0.0 {
            // C = epilogue(β·C): no product to compute.
            for i in 0..m {
                for j in 0..n {
                    let cij = args.c_at(i, j);
                    *cij = args.epi.finish1(0.0, 1.0, args.beta, cij, i, j);
                }
            }
            return false;
        }
        if self.isa == Isa::MatrixMultiply {
            fallback(args);
            return false;
        }
        let panelled = args.bp != Panels::None || args.cp != Panels::None;
        match self.path(m, k, n, panelled) {
            Path::NoPack => {
                run_small(self.isa, args);
                return false;
            }
            Path::Narrow => return self.run_narrow_parts(args, then),
            Path::Packed => {}
        }
        let split = self.packed_split(m, k, n, args.column_panels());
        self.ws.ensure_parts(split.parts());
        let isa = self.isa;
        let count = split.parts();
        if count == 1 {
            run_packed(isa, args, &mut self.ws.parts[0], None);
            return false;
        }
        // Cut along N, the parts pack their common Ã together.
        let share_a = split.along_n();
        if share_a {
            let a = params::a_block_bound(&params_of(isa), m, k, n);
            self.ws.reserve_shared_a(a);
        }
        let [a0, a1] = &mut self.ws.shared_a;
        let bufs = SharedBufs([a0.as_mut_ptr(), a1.as_mut_ptr()]);
        let parts = SharedMut::new(&mut self.ws.parts[..count]);
        let barrier = Barrier::new(count);
        // Whose tiles go down the column panels, the parts take them a
        // panel at a time where a panel is work enough (`loops::Chunks`).
        let tickets = AtomicUsize::new(0);
        let dealt = share_a
            && threads::deals_panels(m, k, split.n_unit())
            && loops::tiles_down_panels(args, &params_of(isa));
        let chunks = dealt.then_some(Chunks {
            tickets: &tickets,
            width: split.n_unit(),
        });
        let team = self
            .team
            .as_mut()
            .expect("a context of several threads has a team");
        team.run(count, &|t| {
            let shared = share_a.then(|| SharedA {
                bufs: bufs.get(),
                barrier: &barrier,
                part: t,
                parts: count,
                chunks,
            });
            // Dealt out in chunks, every part runs the nest on the whole
            // product; else on its own rows or columns.
            let part = if chunks.is_some() {
                *args
            } else {
                let (i0, pm, j0, pn) = split.part(t);
                // SAFETY: the part lies inside C, on panel boundaries.
                unsafe { args.part(i0, pm, j0, pn) }
            };
            // SAFETY: the team calls each t < count once, all at the same
            // time, so each thread has its own PartWs, and with a shared Ã
            // every part runs the nest on the same M and K (cut along N);
            // the chunks a part draws (or the parts of a cut along M) tile
            // C without overlap, so each writes only its own columns.
            unsafe { run_packed(isa, &part, &mut parts.piece(t..t + 1)[0], shared.as_ref()) };
            if let Some(job) = then {
                job();
            }
        });
        true
    }

    /// The strip kernel, its rows cut between [`GemmCtx::narrow_parts`]
    /// threads.
    ///
    /// # Safety
    /// `args` satisfies [`GemmCtx::gemm_raw`]'s contract, m, n, k > 0.
    unsafe fn run_narrow_parts(&mut self, args: &Args, then: Option<SideJob<'_>>) -> bool {
        let count = self.narrow_parts(args.m, args.k, args.n);
        self.ws.ensure_parts(count);
        let isa = self.isa;
        if count == 1 {
            run_narrow(isa, args, &mut self.ws.parts[0]);
            return false;
        }
        let rows = args.m.div_ceil(narrow::ROWS).div_ceil(count) * narrow::ROWS;
        let parts = SharedMut::new(&mut self.ws.parts[..count]);
        let team = self
            .team
            .as_mut()
            .expect("a context of several threads has a team");
        team.run(count, &|t| {
            let i0 = (t * rows).min(args.m);
            let pm = rows.min(args.m - i0);
            if pm > 0 {
                // SAFETY: the team calls each t < count once, so each
                // thread has its own PartWs; the parts are disjoint runs of
                // C's rows (with all of its columns), so each writes only
                // its own.
                unsafe {
                    run_narrow(
                        isa,
                        &args.part(i0, pm, 0, args.n),
                        &mut parts.piece(t..t + 1)[0],
                    )
                }
            }
            if let Some(job) = then {
                job();
            }
        });
        true
    }
}

/// The kernel a product takes (its threads aside): [`Plan`] without the
/// empty and fallback cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    NoPack,
    Narrow,
    Packed,
}

/// Work a product's threads take up as each finishes its part
/// ([`GemmCtx::gemm_update`]).
pub type SideJob<'a> = &'a (dyn Fn() + Sync);

/// The shared Ã buffers, handed to the team.
#[derive(Clone, Copy)]
struct SharedBufs([*mut f32; 2]);

// SAFETY: the parts write and read the buffers only as `loops::SharedA`
// orders it (disjoint shares, then reads after a barrier).
unsafe impl Send for SharedBufs {}
unsafe impl Sync for SharedBufs {}

impl SharedBufs {
    fn get(&self) -> [*mut f32; 2] {
        self.0
    }
}

/// `sums[j] = Σ_p B[p, j]`, each column summed row by row from 0 (the
/// order of [`crate::ops::column_sums`] and of the nest's sums).
fn column_sums_of(b: &MatRef<'_>, sums: &mut [f32]) {
    sums.fill(0.0);
    for p in 0..b.rows() {
        for (j, s) in sums.iter_mut().enumerate() {
            *s += b.at(p, j);
        }
    }
}

/// The block sizes of a kernel family.
fn params_of(isa: Isa) -> Params {
    match isa {
        Isa::Avx512 => params::AVX512,
        Isa::Avx2 => params::AVX2,
        Isa::Scalar | Isa::MatrixMultiply => params::SCALAR,
    }
}

/// # Safety
/// `isa` is available; `args` satisfies the raw contract; m, n, k > 0; with
/// `shared`, as `loops::nest`.
unsafe fn run_packed(isa: Isa, args: &Args, ws: &mut PartWs, shared: Option<&SharedA<'_>>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => kernels::avx512::packed(args, ws, shared),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => kernels::avx2::packed(args, ws, shared),
        Isa::Scalar => kernels::scalar::packed(args, ws, shared),
        _ => unreachable!("gemm kernel {isa} is not available on this target"),
    }
}

/// # Safety
/// As [`run_packed`].
unsafe fn run_small(isa: Isa, args: &Args) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => kernels::avx512::small(args),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => kernels::avx2::small(args),
        Isa::Scalar => kernels::scalar::small(args),
        _ => unreachable!("gemm kernel {isa} is not available on this target"),
    }
}

/// # Safety
/// As [`run_packed`], without `shared`.
unsafe fn run_narrow(isa: Isa, args: &Args, ws: &mut PartWs) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => kernels::avx512::narrow(args, ws),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => kernels::avx2::narrow(args, ws),
        Isa::Scalar => kernels::scalar::narrow(args, ws),
        _ => unreachable!("gemm kernel {isa} is not available on this target"),
    }
}

/// `matrixmultiply::sgemm` (single-threaded; it allocates its own pack
/// buffers on every call), then the epilogue in a second pass over C.
/// matrixmultiply knows two strides per operand, so a panelled operand goes
/// a panel at a time: column panels of B or C cut N, row panels of B cut K
/// (summed into C in order, β applied by the first).
///
/// # Safety
/// As [`run_packed`].
unsafe fn fallback(g: &Args) {
    let n_step = if g.column_panels() { PANEL } else { g.n };
    let k_step = if matches!(g.bp, Panels::Rows(_)) {
        PANEL
    } else {
        g.k
    };
    for j0 in (0..g.n).step_by(n_step) {
        for p0 in (0..g.k).step_by(k_step) {
            matrixmultiply::sgemm(
                g.m,
                k_step.min(g.k - p0),
                n_step.min(g.n - j0),
                g.alpha,
                g.a.offset(p0 as isize * g.csa),
                g.rsa,
                g.csa,
                g.b_at(p0, j0),
                g.rsb,
                g.csb,
                if p0 == 0 { g.beta } else { 1.0 },
                g.c_at(0, j0),
                g.rsc,
                g.csc,
            );
        }
    }
    if !g.epi.is_none() {
        for i in 0..g.m {
            for j in 0..g.n {
                let cij = g.c_at(i, j);
                *cij = g.epi.finish1(*cij, 1.0, 0.0, cij, i, j);
            }
        }
    }
}

/// Convenience: `C = epilogue(α·A·B + β·C)` with the selected kernel on one
/// thread and a fresh workspace (allocates; for tests and non-hot code).
pub fn sgemm(
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: MatMut<'_>,
    epi: Epilogue<'_>,
) {
    GemmCtx::new(Parallelism::Single).gemm(alpha, a, b, beta, c, epi)
}

/// f64 product `C = α·op(A)·op(B) + β·C` through `matrixmultiply::dgemm`
/// (single-threaded). Strides as in [`GemmCtx::gemm_raw`].
///
/// # Safety
/// As [`GemmCtx::gemm_raw`] (without epilogue).
#[allow(clippy::too_many_arguments)]
pub unsafe fn dgemm_raw(
    m: usize,
    k: usize,
    n: usize,
    alpha: f64,
    a: *const f64,
    rsa: isize,
    csa: isize,
    b: *const f64,
    rsb: isize,
    csb: isize,
    beta: f64,
    c: *mut f64,
    rsc: isize,
    csc: isize,
) {
    matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
}
