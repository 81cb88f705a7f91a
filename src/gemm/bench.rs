//! GEMM benchmark: GFLOP/s of fastnn and matrixmultiply side by side, and
//! this machine's measured FMA peak, for `fastnn bench gemm` (the binary
//! only parses arguments and prints) and `benches/gemm.rs`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::bf16::{gemm_bf16, gemm_bf16_packed, pack_b, Bf16Kernel, Bf16Workspace, PackedB};
use super::{panel_len, Epilogue, GemmCtx, MatMut, MatRef, Parallelism, Strategy};
use crate::buf::AlignedBuf;
use crate::cpu::{self, Isa, IsaError};
use crate::team::Team;

/// Which operands are transposed: `NT` = B transposed (`X·Wᵀ`), `TN` = A
/// transposed (`dZᵀ·X`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Trans {
    NN,
    NT,
    TN,
    TT,
}

impl Trans {
    pub fn parse(s: &str) -> Option<Trans> {
        match s.to_ascii_uppercase().as_str() {
            "NN" => Some(Trans::NN),
            "NT" => Some(Trans::NT),
            "TN" => Some(Trans::TN),
            "TT" => Some(Trans::TT),
            _ => None,
        }
    }
    fn ta(self) -> bool {
        matches!(self, Trans::TN | Trans::TT)
    }
    fn tb(self) -> bool {
        matches!(self, Trans::NT | Trans::TT)
    }
}

/// An m×k×n product (A m×k, B k×n), all operands stored densely, or with
/// the weights in fastnn's panels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Shape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub trans: Trans,
    /// The product as the training step runs it, the weights kept in
    /// column panels ([`super::MatRef::panels`]): B = Wᵀ read in place (NT,
    /// the forward product), B = W read in place from its copy in column
    /// panels of its own (NN, the input gradient,
    /// [`super::backward_weights`]), C = dWᵀ (TN, the weight gradient).
    /// Other peers compute the same product on dense operands.
    pub panels: bool,
}

impl Shape {
    pub const fn new(m: usize, k: usize, n: usize, trans: Trans) -> Self {
        Shape {
            m,
            k,
            n,
            trans,
            panels: false,
        }
    }

    /// The same product with the weights in panels (see [`Shape::panels`]).
    pub const fn in_panels(self) -> Self {
        Shape {
            panels: true,
            ..self
        }
    }
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.k as f64 * self.n as f64
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}×{} {:?}", self.m, self.k, self.n, self.trans)?;
        if self.panels {
            write!(f, " W in panels")?;
        }
        Ok(())
    }
}

/// The largest products of one training step of the DESIGN.md workloads
/// (batch 128), as the step runs them: W1's first-layer forward and weight
/// gradient and second-layer input gradient, W2's first two forward
/// products, first-layer weight gradient and second-layer input gradient.
pub const TRAINING_SHAPES: [Shape; 7] = [
    Shape::new(128, 3072, 1024, Trans::NT).in_panels(),
    Shape::new(3072, 128, 1024, Trans::TN).in_panels(),
    Shape::new(128, 512, 1024, Trans::NN).in_panels(),
    Shape::new(128, 784, 512, Trans::NT).in_panels(),
    Shape::new(128, 512, 256, Trans::NT).in_panels(),
    Shape::new(784, 128, 512, Trans::TN).in_panels(),
    Shape::new(128, 256, 512, Trans::NN).in_panels(),
];

/// Square products.
pub const SQUARE_SHAPES: [Shape; 3] = [
    Shape::new(512, 512, 512, Trans::NN),
    Shape::new(1024, 1024, 1024, Trans::NN),
    Shape::new(2048, 2048, 2048, Trans::NN),
];

/// Operands of one shape: A, B (dense, transposed in memory as asked) and C.
pub struct Operands {
    pub shape: Shape,
    a: AlignedBuf<f32>,
    b: AlignedBuf<f32>,
    c: AlignedBuf<f32>,
}

impl Operands {
    pub fn new(shape: Shape) -> Self {
        let Shape { m, k, n, .. } = shape;
        let fill = |len: usize, seed: u32| {
            let mut v = AlignedBuf::<f32>::zeroed(len);
            for (i, x) in v.iter_mut().enumerate() {
                let h = (i as u32).wrapping_mul(2654435761).wrapping_add(seed);
                *x = (h >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            }
            v
        };
        // Panels pad the weights' out dimension to whole panels.
        let (b_len, c_len) = match (shape.panels, shape.trans) {
            // B in column panels: Wᵀ itself (NT) or W's copy (NN).
            (true, Trans::NT | Trans::NN) => (panel_len(k, n), m * n),
            (true, _) => (k * n, panel_len(m, n)),
            (false, _) => (k * n, m * n),
        };
        Operands {
            shape,
            a: fill(m * k, 1),
            b: fill(b_len, 2),
            c: AlignedBuf::zeroed(c_len),
        }
    }

    fn a(&self) -> MatRef<'_> {
        let Shape { m, k, trans, .. } = self.shape;
        if trans.ta() {
            MatRef::row_major(&self.a, k, m).t()
        } else {
            MatRef::row_major(&self.a, m, k)
        }
    }

    /// B as fastnn's product reads it (`dense`: as a dense peer does).
    fn b(&self, dense: bool) -> MatRef<'_> {
        let Shape { k, n, trans, .. } = self.shape;
        // In column panels: Wᵀ itself (NT) or W's copy (NN).
        if self.shape.panels && !dense && matches!(trans, Trans::NT | Trans::NN) {
            return MatRef::panels(&self.b, k, n);
        }
        if trans.tb() {
            MatRef::row_major(&self.b, n, k).t()
        } else {
            MatRef::row_major(&self.b, k, n)
        }
    }

    /// One fastnn product `C = A·B` (β = 0).
    pub fn run_fastnn(&mut self, ctx: &mut GemmCtx) {
        let Shape { m, n, .. } = self.shape;
        let mut c = std::mem::replace(&mut self.c, AlignedBuf::zeroed(0));
        let panelled_c = self.shape.panels && self.shape.trans == Trans::TN;
        let cv = if panelled_c {
            MatMut::panels(&mut c, m, n)
        } else {
            MatMut::row_major(&mut c, m, n)
        };
        ctx.gemm(1.0, self.a(), self.b(false), 0.0, cv, Epilogue::None);
        self.c = c;
    }

    /// One bf16 product `C = A·B` as the training step computes it: with
    /// the weights in panels, B comes packed beforehand (`packed`: the
    /// weights' bf16 copy, NT and NN) or C is written into the panels (TN);
    /// else both operands are packed by the call.
    pub fn run_bf16(
        &mut self,
        kernel: Bf16Kernel,
        packed: Option<&[u32]>,
        ws: &mut Bf16Workspace,
        team: Option<&mut Team>,
    ) {
        let Shape { m, k, n, .. } = self.shape;
        let mut c = std::mem::replace(&mut self.c, AlignedBuf::zeroed(0));
        let panelled_c = self.shape.panels && self.shape.trans == Trans::TN;
        let cv = if panelled_c {
            MatMut::panels(&mut c, m, n)
        } else {
            MatMut::row_major(&mut c, m, n)
        };
        match packed {
            Some(words) => {
                let b = PackedB::new(words, k, n);
                gemm_bf16_packed(kernel, self.a(), b, cv, Epilogue::None, ws, team)
            }
            None => gemm_bf16(kernel, self.a(), self.b(false), cv, ws, team),
        }
        self.c = c;
    }

    /// B packed for the bf16 products, as the step keeps the weights' bf16
    /// copies: for the NT and NN shapes with the weights in panels.
    pub fn bf16_weights(&self) -> Option<AlignedBuf<u32>> {
        if !self.shape.panels || self.shape.trans == Trans::TN {
            return None;
        }
        let mut words = AlignedBuf::zeroed(0);
        pack_b(&self.b(false), &mut words);
        Some(words)
    }

    /// One matrixmultiply product, single-threaded, or split over M across
    /// the threads of `pool` (matrixmultiply's own threading is off).
    pub fn run_matrixmultiply(&mut self, pool: Option<&rayon::ThreadPool>) {
        use rayon::prelude::*;
        let Shape { m, k, n, .. } = self.shape;
        let (a, b) = (self.a(), self.b(true));
        let (ap, rsa, csa) = (SendPtr(a.as_ptr()), a.rs() as isize, a.cs() as isize);
        let (bp, rsb, csb) = (SendPtr(b.as_ptr()), b.rs() as isize, b.cs() as isize);
        let rows = |i0: usize, c: &mut [f32]| {
            let mm = c.len() / n;
            // SAFETY: A rows i0..i0+mm, all of B and the C chunk are in bounds.
            unsafe {
                matrixmultiply::sgemm(
                    mm,
                    k,
                    n,
                    1.0,
                    ap.get().offset(i0 as isize * rsa),
                    rsa,
                    csa,
                    bp.get(),
                    rsb,
                    csb,
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                )
            }
        };
        // A dense m×n C: the front of the buffer, which is longer where the
        // TN shapes keep C in panels and n is not a multiple of the panel.
        let c = &mut self.c[..m * n];
        match pool {
            None => rows(0, c),
            Some(pool) => {
                let chunk = m.div_ceil(pool.current_num_threads()) * n;
                pool.install(|| {
                    c.par_chunks_mut(chunk)
                        .enumerate()
                        .for_each(|(t, c)| rows(t * chunk / n, c))
                })
            }
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*const f32);
impl SendPtr {
    fn get(self) -> *const f32 {
        self.0
    }
}
// SAFETY: only read, during one call, by threads that the call joins.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Seconds per call of `f`, after warm-up: the median (or, with `best`, the
/// fastest) of `samples` samples, each timing enough calls to last ≥
/// `min_sample`. On a machine shared with other work the best sample is the
/// better estimate of what the code can do; the median is the default.
pub fn time_per_call(mut f: impl FnMut(), samples: usize, min_sample: Duration, best: bool) -> f64 {
    f();
    f();
    let t0 = Instant::now();
    f();
    let once = t0.elapsed().max(Duration::from_nanos(100));
    let inner = ((min_sample.as_secs_f64() / once.as_secs_f64()).ceil() as usize).clamp(1, 100_000);
    let mut times: Vec<f64> = (0..samples.max(1))
        .map(|_| {
            let t = Instant::now();
            for _ in 0..inner {
                f();
            }
            t.elapsed().as_secs_f64() / inner as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    if best {
        times[0]
    } else {
        times[times.len() / 2]
    }
}

/// Measured FMA peak of one kernel family.
#[derive(Clone, Debug, Serialize)]
pub struct Peak {
    pub isa: Isa,
    pub threads: usize,
    /// Sum over threads of each thread's best sample.
    pub gflops: f64,
}

/// The register-resident FMA peak of `isa` on `threads` threads running at
/// once (None when the ISA has no FMA loop here or the CPU lacks it).
///
/// The best of [`PEAK_ROUNDS`] rounds, each the sum of the threads' best
/// samples: on a shared host a round in which a thread's core was taken
/// away for most of its samples comes out far low (seen: 134 GFLOP/s
/// against 234 for two threads, while training in the same minutes ran at
/// 169), and a low peak would overstate every share reported against it.
pub fn measure_peak(isa: Isa, threads: usize) -> Option<Peak> {
    let f = peak_loop(isa)?;
    // SAFETY: peak_loop returned f only for an ISA this CPU supports.
    let per_thread = |_: usize| unsafe { best_rate(f, 2_000_000, 15) };
    let round = || -> f64 {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads.max(1))
                .map(|t| s.spawn(move || per_thread(t)))
                .collect();
            hs.into_iter().map(|h| h.join().expect("peak thread")).sum()
        })
    };
    let total = (0..PEAK_ROUNDS).map(|_| round()).fold(0.0, f64::max);
    Some(Peak {
        isa,
        threads: threads.max(1),
        gflops: total / 1e9,
    })
}

/// Rounds of [`measure_peak`].
const PEAK_ROUNDS: usize = 3;

type PeakFn = unsafe fn(u64) -> f64;

/// The best of `samples` runs of the peak loop `f` over `iters`
/// iterations, FLOP/s: contention from other processes only lowers a
/// sample, never raises it.
///
/// # Safety
/// The CPU runs `f`'s instructions.
unsafe fn best_rate(f: PeakFn, iters: u64, samples: usize) -> f64 {
    (0..samples)
        .map(|_| {
            let t = Instant::now();
            let flops = f(iters);
            flops / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn peak_loop(isa: Isa) -> Option<PeakFn> {
    if !isa.is_available() {
        return None;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(peak::avx512),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(peak::avx2),
        _ => None,
    }
}

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    /// 24 independent zmm FMA chains; returns the FLOPs done.
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(iters: u64) -> f64 {
        let x = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let y = _mm512_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm512_setzero_ps(); 24];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        let mut s = _mm512_setzero_ps();
        for a in acc {
            s = _mm512_add_ps(s, a);
        }
        std::hint::black_box(s);
        iters as f64 * 24.0 * 16.0 * 2.0
    }

    /// 24 independent zmm `vdpbf16ps` chains; returns the FLOPs done.
    ///
    /// # Safety
    /// The CPU supports AVX-512F and AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn avx512bf16(iters: u64) -> f64 {
        // Both halves of every lane 2⁻¹⁰ in bf16 (0x3A80).
        let pair = std::hint::black_box(0x3A80_3A80u32) as i32;
        let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
        let mut acc = [_mm512_setzero_ps(); 24];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_dpbf16_ps(*a, x, x);
            }
        }
        let mut s = _mm512_setzero_ps();
        for a in acc {
            s = _mm512_add_ps(s, a);
        }
        std::hint::black_box(s);
        iters as f64 * 24.0 * 16.0 * 4.0
    }

    /// Four independent `tdpbf16ps` chains on tiles that stay in the
    /// registers (the AMX kernel's block: tmm0–3 += tmm4–5 · tmm6–7);
    /// returns the FLOPs done.
    ///
    /// # Safety
    /// AMX is ready ([`crate::gemm::amx::amx_ready`]).
    pub unsafe fn amx(iters: u64) -> f64 {
        use crate::gemm::amx::{Amx, TileUnit};
        let mut unit = Amx;
        unit.prepare();
        unit.zero::<4>();
        unit.zero::<5>();
        unit.zero::<6>();
        unit.zero::<7>();
        for _ in 0..iters {
            unit.dot::<0, 4, 6>();
            unit.dot::<1, 4, 7>();
            unit.dot::<2, 5, 6>();
            unit.dot::<3, 5, 7>();
        }
        iters as f64 * 4.0 * 16.0 * 16.0 * 32.0 * 2.0
    }

    /// 12 independent ymm FMA chains; returns the FLOPs done.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(iters: u64) -> f64 {
        let x = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let y = _mm256_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm256_setzero_ps(); 12];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, x, y);
            }
        }
        let mut s = _mm256_setzero_ps();
        for a in acc {
            s = _mm256_add_ps(s, a);
        }
        std::hint::black_box(s);
        iters as f64 * 12.0 * 8.0 * 2.0
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub shapes: Vec<Shape>,
    pub threads: usize,
    /// None: the process-wide choice (`FASTNN_ISA` or best available).
    pub isa: Option<Isa>,
    pub samples: usize,
    pub min_sample: Duration,
    /// Report the best sample instead of the median.
    pub best: bool,
    /// Packed, no-pack or automatic (default).
    pub strategy: Strategy,
}

impl BenchConfig {
    /// The training shapes and the squares.
    pub fn default_shapes() -> Vec<Shape> {
        TRAINING_SHAPES
            .iter()
            .chain(&SQUARE_SHAPES)
            .copied()
            .collect()
    }
}

/// One shape's result.
#[derive(Clone, Debug, Serialize)]
pub struct ShapeResult {
    pub shape: Shape,
    pub threads: usize,
    pub fastnn_gflops: f64,
    pub matrixmultiply_gflops: f64,
    /// Percent of the measured peak (best ISA, same thread count).
    pub fastnn_pct_peak: f64,
    pub matrixmultiply_pct_peak: f64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub isa: Isa,
    pub detected: String,
    pub threads: usize,
    /// "median" or "best" sample.
    pub statistic: String,
    /// How matrixmultiply was run.
    pub matrixmultiply_mode: String,
    pub peaks: Vec<Peak>,
    /// The peak percentages refer to this (best measured) figure.
    pub peak_gflops: f64,
    pub results: Vec<ShapeResult>,
}

/// Runs the benchmark. Refuses an ISA the CPU lacks.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport, IsaError> {
    let isa = match cfg.isa {
        Some(isa) => isa.check()?,
        None => cpu::try_selected()?,
    };
    let threads = cfg.threads.max(1);
    let peaks: Vec<Peak> = [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter_map(|i| measure_peak(i, threads))
        .collect();
    let peak = peaks.iter().map(|p| p.gflops).fold(f64::NAN, f64::max);
    let mut ctx =
        GemmCtx::with_isa(isa, Parallelism::threads(threads))?.with_strategy(cfg.strategy);
    let pool = (threads > 1).then(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("cannot start the benchmark thread pool")
    });
    // fastnn splits a product over its context's own team of threads, as
    // in training; matrixmultiply is called from a thread of the pool, so
    // that a call hands work to the other threads without first waking a
    // pool thread for itself and putting the caller to sleep.
    let in_pool = |f: &mut (dyn FnMut() -> f64 + Send)| match &pool {
        Some(pool) => pool.install(f),
        None => f(),
    };
    let mut results = Vec::new();
    for &shape in &cfg.shapes {
        let mut ops = Operands::new(shape);
        let t_fast = time_per_call(
            || ops.run_fastnn(&mut ctx),
            cfg.samples,
            cfg.min_sample,
            cfg.best,
        );
        let t_mm = in_pool(&mut || {
            time_per_call(
                || ops.run_matrixmultiply(pool.as_ref()),
                cfg.samples,
                cfg.min_sample,
                cfg.best,
            )
        });
        let (gf, gm) = (shape.flops() / t_fast / 1e9, shape.flops() / t_mm / 1e9);
        results.push(ShapeResult {
            shape,
            threads,
            fastnn_gflops: gf,
            matrixmultiply_gflops: gm,
            fastnn_pct_peak: 100.0 * gf / peak,
            matrixmultiply_pct_peak: 100.0 * gm / peak,
        });
    }
    Ok(BenchReport {
        isa,
        detected: cpu::features().to_string(),
        threads,
        statistic: if cfg.best { "best" } else { "median" }.into(),
        matrixmultiply_mode: if threads == 1 {
            "matrixmultiply 0.3, single-threaded".into()
        } else {
            format!("matrixmultiply 0.3, single-threaded calls split over M across {threads} rayon threads")
        },
        peaks,
        peak_gflops: peak,
        results,
    })
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "gemm kernel {} (detected: {}), {} thread(s)",
            self.isa, self.detected, self.threads
        )?;
        for p in &self.peaks {
            writeln!(
                f,
                "measured FMA peak {:>7}: {:7.1} GFLOP/s on {} thread(s)",
                p.isa.name(),
                p.gflops,
                p.threads
            )?;
        }
        writeln!(f, "baseline: {}", self.matrixmultiply_mode)?;
        writeln!(f, "GFLOP/s of the {} sample, after warm-up", self.statistic)?;
        writeln!(
            f,
            "{:<34} {:>13} {:>7} {:>15} {:>7} {:>7}",
            "shape (m×k×n)", "fastnn GF/s", "%peak", "matmul GF/s", "%peak", "ratio"
        )?;
        for r in &self.results {
            writeln!(
                f,
                "{:<34} {:>13.1} {:>6.1}% {:>15.1} {:>6.1}% {:>6.2}x",
                r.shape.to_string(),
                r.fastnn_gflops,
                r.fastnn_pct_peak,
                r.matrixmultiply_gflops,
                r.matrixmultiply_pct_peak,
                r.fastnn_gflops / r.matrixmultiply_gflops
            )?;
        }
        Ok(())
    }
}

/// One shape of `fastnn bench gemm --precision bf16`: the bf16 product
/// (operands rounded to bf16, f32 accumulation) beside fastnn's f32
/// product of the same operands, on the same threads; a training shape as
/// the step runs it (the weights in panels in f32, their bf16 copy packed
/// beforehand in bf16).
#[derive(Clone, Debug, Serialize)]
pub struct Bf16Row {
    pub shape: Shape,
    pub kernel: &'static str,
    pub bf16_gflops: f64,
    pub f32_gflops: f64,
}

/// The bf16 products of `shapes` with the process-wide bf16 kernel
/// ([`cpu::try_selected_bf16`]: `FASTNN_ISA` or the best available), next to the
/// f32 GEMM, and the measured bf16 peak (None where the CPU has no bf16
/// instruction).
#[derive(Clone, Debug, Serialize)]
pub struct Bf16Report {
    pub rows: Vec<Bf16Row>,
    pub threads: usize,
    pub bf16_peak_gflops: Option<f64>,
    pub f32_peak_gflops: Option<f64>,
}

/// Measures [`Bf16Report`] on `threads` threads.
pub fn run_bf16(
    shapes: &[Shape],
    threads: usize,
    samples: usize,
    best: bool,
) -> Result<Bf16Report, IsaError> {
    let kernel = cpu::try_selected_bf16()?;
    let mut ctx = GemmCtx::try_new(Parallelism::threads(threads))?;
    let mut ws = Bf16Workspace::default();
    let min_sample = Duration::from_millis(20);
    let rows = shapes
        .iter()
        .map(|&shape| {
            let mut ops = Operands::new(shape);
            let f32_secs = time_per_call(|| ops.run_fastnn(&mut ctx), samples, min_sample, best);
            let weights = ops.bf16_weights();
            let bf16 = || ops.run_bf16(kernel, weights.as_deref(), &mut ws, ctx.team());
            let bf16_secs = time_per_call(bf16, samples, min_sample, best);
            Bf16Row {
                shape,
                kernel: kernel.name(),
                bf16_gflops: shape.flops() / bf16_secs / 1e9,
                f32_gflops: shape.flops() / f32_secs / 1e9,
            }
        })
        .collect();
    Ok(Bf16Report {
        rows,
        threads,
        bf16_peak_gflops: bf16_peak().map(|p| p * threads as f64),
        f32_peak_gflops: measure_peak(cpu::try_selected()?, threads).map(|p| p.gflops),
    })
}

impl std::fmt::Display for Bf16Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peak = |p: Option<f64>| p.map_or("none".to_string(), |g| format!("{g:.0} GFLOP/s"));
        writeln!(
            f,
            "bf16 products ({} thread(s)): measured peaks bf16 {}, f32 FMA {}",
            self.threads,
            peak(self.bf16_peak_gflops),
            peak(self.f32_peak_gflops)
        )?;
        writeln!(
            f,
            "{:<24} {:>14} {:>10} {:>12} {:>8}",
            "shape", "kernel", "bf16", "% bf16 peak", "f32"
        )?;
        for r in &self.rows {
            let share = self.bf16_peak_gflops.map_or("-".to_string(), |p| {
                format!("{:.0} %", 100.0 * r.bf16_gflops / p)
            });
            writeln!(
                f,
                "{:<24} {:>14} {:>10.1} {:>12} {:>8.1}",
                r.shape.to_string(),
                r.kernel,
                r.bf16_gflops,
                share,
                r.f32_gflops
            )?;
        }
        Ok(())
    }
}

/// The bf16 peak of one thread for the process-wide bf16 kernel (the
/// report scales it by the thread count, as an upper bound): with AMX,
/// four register-resident `tdpbf16ps` chains, each instruction 16,384
/// flops (16×16 sums of 32 products, multiply and add); else 24
/// independent `vdpbf16ps` accumulators, each instruction 64 flops (16
/// lanes × 2 pairs × multiply and add); for the FMA kernel, the AVX-512
/// FMA peak. None for the software kernels.
pub fn bf16_peak() -> Option<f64> {
    let kernel = cpu::try_selected_bf16().unwrap_or_else(|_| Bf16Kernel::detect());
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the kernel is available, so AMX is and Linux granted it.
        Bf16Kernel::Amx => Some(unsafe { best_rate(peak::amx, 100_000, 15) } / 1e9),
        Bf16Kernel::Avx512Bf16 => bf16_peak_of(2_000_000, 15),
        Bf16Kernel::Avx512Fma => measure_peak(Isa::Avx512, 1).map(|p| p.gflops),
        _ => None,
    }
}

/// The best of `samples` runs of `iters` iterations of the `vdpbf16ps`
/// peak loop, GFLOP/s (None without AVX512-BF16).
fn bf16_peak_of(iters: u64, samples: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if Bf16Kernel::Avx512Bf16.is_available() {
        // SAFETY: the CPU has AVX-512F and AVX512-BF16 (checked).
        return Some(unsafe { best_rate(peak::avx512bf16, iters, samples) } / 1e9);
    }
    let _ = (iters, samples);
    None
}

/// A quick (about 10 ms) one-thread measurement of the `vdpbf16ps` peak
/// against the f32 FMA peak of `isa`, GFLOP/s: whether bf16 products can
/// beat f32 ones on this CPU (twice on Zen 4; half on Sapphire Rapids,
/// whose bf16 speed is in its matrix engine). None without AVX512-BF16.
/// Measured once per process and ISA: the bf16 kernel's detection and
/// `fastnn train`'s warning ask the same question.
pub fn bf16_against_f32(isa: Isa) -> Option<(f64, f64)> {
    const ISAS: usize = Isa::ALL.len();
    static MEASURED: [OnceLock<Option<(f64, f64)>>; ISAS] = [const { OnceLock::new() }; ISAS];
    *MEASURED[isa as usize].get_or_init(|| {
        let bf16 = bf16_peak_of(100_000, 5)?;
        let f = peak_loop(isa)?;
        // SAFETY: peak_loop returned f only for an ISA this CPU supports.
        let f32 = unsafe { best_rate(f, 100_000, 5) };
        Some((bf16, f32 / 1e9))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A weight-gradient shape whose width is not a multiple of the panel
    /// (the output layer's): C is then longer in panels than m·n, and the
    /// dense peers must use only its front (they once ran past A's rows).
    #[test]
    fn a_narrow_panelled_weight_gradient_runs_for_every_peer() {
        for threads in [1, 2] {
            let cfg = BenchConfig {
                shapes: vec![Shape::new(512, 128, 10, Trans::TN).in_panels()],
                threads,
                isa: None,
                samples: 1,
                min_sample: Duration::ZERO,
                best: false,
                strategy: Strategy::Auto,
            };
            let report = run(&cfg).unwrap();
            let r = &report.results[0];
            assert!(
                r.fastnn_gflops > 0.0 && r.matrixmultiply_gflops > 0.0,
                "{r:?}"
            );
        }
    }
}
