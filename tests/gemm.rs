//! Every GEMM kernel, forced per call, against the f64 reference.
//!
//! Error bound (stated once, used everywhere): for an element with
//! `scale = |α|·Σ_p |a_ip||b_pj| + |β||c_ij| + |bias_j|` (from
//! `gemm::reference`),
//!
//! ```text
//! |c − ref| ≤ (K + 3) · ε · scale,      ε = f32::EPSILON = 2u
//! ```
//!
//! K roundings for the sum in any order (with or without FMA), 3 more for
//! α·, +β·c and +bias; the classical worst case is γ_{K+3} ≈ (K+3)·u, so
//! this bound has a factor 2 of slack and nothing more. Activations are
//! 1-Lipschitz selects and do not add error.

mod common;

use common::report;
use fastnn::buf::AlignedBuf;
use fastnn::cpu::Isa;
use fastnn::gemm::{
    panel_len, reference, Activation, Epilogue, GemmCtx, MatMut, MatRef, Parallelism, Plan,
    Strategy, PANEL,
};
use fastnn::optim::{OptimConfig, OptimKind, Optimizer, Rule};

/// Deterministic pseudo-random floats in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// How an operand is laid out in memory.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Row-major with 3 padding floats per row (a view into a bigger matrix).
    RowPadded,
    /// Column-major.
    Col,
    /// Neither stride is 1.
    Strided,
}

/// (strides, buffer length) for a rows×cols operand.
fn strides(l: Layout, rows: usize, cols: usize) -> (usize, usize, usize) {
    let (rs, cs) = match l {
        Layout::RowPadded => (cols + 3, 1),
        Layout::Col => (1, rows),
        Layout::Strided => (2, 2 * rows + 1),
    };
    let len = if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    };
    (rs, cs, len + 5)
}

/// Reports a kernel family this CPU cannot run as skipped (once per process).
fn report_missing(isa: Isa) {
    let reason = if cfg!(target_arch = "x86_64") {
        format!(
            "not supported by this CPU (detected: {})",
            fastnn::cpu::features()
        )
    } else {
        "not an x86-64 CPU".to_string()
    };
    report::skipped(&format!("gemm kernel {isa}"), &reason);
}

/// Contexts for every kernel family this CPU has, × the three strategies
/// (the strip kernel computes any width, strip by strip).
/// Missing kernels are reported, not silently passed; the test
/// `every_kernel_this_cpu_has_is_exercised` fails if one the CPU has is
/// missing here.
fn contexts(par: Parallelism) -> Vec<(String, GemmCtx)> {
    let mut out = Vec::new();
    for isa in Isa::ALL {
        match GemmCtx::with_isa(isa, par) {
            Ok(_) => {
                let strategies: &[Strategy] = if isa == Isa::MatrixMultiply {
                    &[Strategy::Auto]
                } else {
                    &[Strategy::Packed, Strategy::Small, Strategy::Narrow]
                };
                for &s in strategies {
                    let ctx = GemmCtx::with_isa(isa, par).unwrap().with_strategy(s);
                    out.push((format!("{isa}/{s:?}"), ctx));
                }
            }
            Err(_) => report_missing(isa),
        }
    }
    out
}

/// The kernel families this CPU can run, detected here with
/// `is_x86_feature_detected!`, independently of `Isa::is_available` (which
/// is what `contexts` relies on, and what is under test).
fn kernels_this_cpu_has() -> Vec<Isa> {
    let mut has = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let avx2_fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if avx2_fma && is_x86_feature_detected!("avx512f") {
            has.push(Isa::Avx512);
        }
        if avx2_fma {
            has.push(Isa::Avx2);
        }
    }
    has.extend([Isa::Scalar, Isa::MatrixMultiply]);
    has
}

/// Every kernel this CPU can run is among the `contexts` the other tests
/// use, and a product through each (one awkward shape: ragged against every
/// tile size, transposed B, padded C, bias and ReLU) matches the reference.
/// A CPU with AVX-512F or AVX2+FMA whose kernel is not exercised fails
/// here, instead of passing with fewer kernels tested. Each kernel is
/// reported as ran, or as skipped with the reason.
#[test]
fn every_kernel_this_cpu_has_is_exercised() {
    let has = kernels_this_cpu_has();
    let mut ctxs = contexts(Parallelism::Single);
    for isa in Isa::ALL {
        let mine: Vec<&mut (String, GemmCtx)> = ctxs
            .iter_mut()
            .filter(|(_, ctx)| ctx.isa() == isa)
            .collect();
        if !has.contains(&isa) {
            assert!(
                mine.is_empty(),
                "gemm kernel {isa}: this CPU cannot run it, yet contexts() yields it"
            );
            report_missing(isa);
            continue;
        }
        assert!(
            !mine.is_empty(),
            "gemm kernel {isa}: this CPU can run it (detected independently: {has:?}), \
             but contexts() yields no context for it, so no test exercises it"
        );
        let mut rng = Rng(21);
        for (name, ctx) in mine {
            check_one(
                name,
                ctx,
                &mut rng,
                (37, 263, 45),
                false,
                true,
                Layout::RowPadded,
                1.0,
                0.5,
                EpiKind::BiasRelu,
            );
        }
        report::ran(&format!("gemm kernel {isa}"));
    }
}

#[derive(Clone, Copy, Debug)]
enum EpiKind {
    None,
    Bias,
    BiasRelu,
    Leaky,
    ReluGrad,
    LeakyGrad,
}

#[allow(clippy::too_many_arguments)]
fn check_one(
    name: &str,
    ctx: &mut GemmCtx,
    rng: &mut Rng,
    (m, k, n): (usize, usize, usize),
    ta: bool,
    tb: bool,
    lc: Layout,
    alpha: f32,
    beta: f32,
    ek: EpiKind,
) {
    // op(A) is m×k: stored k×m and viewed transposed when ta.
    let (ar, ac) = if ta { (k, m) } else { (m, k) };
    let la = if (m + k) % 2 == 0 {
        Layout::RowPadded
    } else {
        Layout::Strided
    };
    let (rsa, csa, lena) = strides(la, ar, ac);
    let abuf = rng.vec(lena);
    let a = MatRef::new(&abuf, ar, ac, rsa, csa);
    let a = if ta { a.t() } else { a };
    let (br, bc) = if tb { (n, k) } else { (k, n) };
    let (rsb, csb, lenb) = strides(Layout::RowPadded, br, bc);
    let bbuf = rng.vec(lenb);
    let b = MatRef::new(&bbuf, br, bc, rsb, csb);
    let b = if tb { b.t() } else { b };
    let (rsc, csc, lenc) = strides(lc, m, n);
    let mut cbuf = if beta == 0.0 {
        vec![f32::NAN; lenc]
    } else {
        rng.vec(lenc)
    };
    let c_old = cbuf.clone();
    let bias = rng.vec(n);
    let zbuf = rng.vec(m * n);
    let z = MatRef::row_major(&zbuf, m, n);
    let epi = match ek {
        EpiKind::None => Epilogue::None,
        EpiKind::Bias => Epilogue::Bias(&bias),
        EpiKind::BiasRelu => Epilogue::BiasAct(&bias, Activation::Relu),
        EpiKind::Leaky => Epilogue::Act(Activation::LeakyRelu(0.01)),
        EpiKind::ReluGrad => Epilogue::ActGrad(z, Activation::Relu),
        EpiKind::LeakyGrad => Epilogue::ActGrad(z.t().t(), Activation::LeakyRelu(0.1)),
    };
    ctx.gemm(
        alpha,
        a,
        b,
        beta,
        MatMut::new(&mut cbuf, m, n, rsc, csc),
        epi,
    );
    let (want, scale) =
        reference::gemm(alpha, a, b, beta, MatRef::new(&c_old, m, n, rsc, csc), epi);
    let eps = f32::EPSILON as f64;
    for i in 0..m {
        for j in 0..n {
            let got = cbuf[i * rsc + j * csc] as f64;
            let bound = (k as f64 + 3.0) * eps * scale[i * n + j];
            let err = (got - want[i * n + j]).abs();
            assert!(
                err <= bound,
                "{name}: {m}×{k}×{n} ta={ta} tb={tb} C {lc:?} α={alpha} β={beta} {ek:?}: \
                 C[{i},{j}] = {got}, reference {}, |err| {err:e} > bound {bound:e}",
                want[i * n + j]
            );
        }
    }
    // Elements outside the C view are untouched.
    let inside: std::collections::HashSet<usize> = (0..m)
        .flat_map(|i| (0..n).map(move |j| i * rsc + j * csc))
        .collect();
    for (x, (new, old)) in cbuf.iter().zip(&c_old).enumerate() {
        if !inside.contains(&x) {
            assert!(
                new.to_bits() == old.to_bits(),
                "{name}: wrote outside C at {x}"
            );
        }
    }
}

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (7, 13, 33),
    (33, 257, 13),
    (13, 1, 7),
    (1, 33, 257),
    (257, 33, 1),
    (2, 5, 3),
    // around MR (4, 6, 12) and NR (8, 16, 32)
    (3, 9, 7),
    (5, 17, 15),
    (11, 8, 31),
    (12, 19, 32),
    (13, 20, 33),
    (25, 3, 65),
    // around KC (256, 512)
    (13, 511, 17),
    (7, 513, 33),
    (25, 257, 40),
];

#[test]
fn every_kernel_matches_reference_all_transposes() {
    let mut rng = Rng(1);
    for (name, mut ctx) in contexts(Parallelism::Single) {
        for &shape in SHAPES {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                for (alpha, beta) in [(1.0, 0.0), (-0.75, 1.0), (1.0, 0.5), (0.5, 0.0)] {
                    let lc = if shape.0 % 2 == 0 {
                        Layout::Col
                    } else {
                        Layout::RowPadded
                    };
                    check_one(
                        &name,
                        &mut ctx,
                        &mut rng,
                        shape,
                        ta,
                        tb,
                        lc,
                        alpha,
                        beta,
                        EpiKind::None,
                    );
                }
            }
        }
    }
}

#[test]
fn every_kernel_strided_and_column_major_c() {
    let mut rng = Rng(2);
    for (name, mut ctx) in contexts(Parallelism::Single) {
        for &shape in &[(13, 20, 33), (12, 64, 32), (37, 41, 70)] {
            for lc in [Layout::RowPadded, Layout::Col, Layout::Strided] {
                check_one(
                    &name,
                    &mut ctx,
                    &mut rng,
                    shape,
                    false,
                    true,
                    lc,
                    1.5,
                    0.5,
                    EpiKind::BiasRelu,
                );
                check_one(
                    &name,
                    &mut ctx,
                    &mut rng,
                    shape,
                    true,
                    false,
                    lc,
                    1.0,
                    0.0,
                    EpiKind::ReluGrad,
                );
            }
        }
    }
}

#[test]
fn every_kernel_large_blocks() {
    // Around MC (1536) and NC (768) with a small K, and several KC blocks.
    let mut rng = Rng(3);
    for (name, mut ctx) in contexts(Parallelism::Single) {
        for &shape in &[(1537, 3, 40), (20, 5, 769), (40, 1100, 70)] {
            check_one(
                &name,
                &mut ctx,
                &mut rng,
                shape,
                false,
                false,
                Layout::RowPadded,
                1.0,
                0.5,
                EpiKind::Bias,
            );
            check_one(
                &name,
                &mut ctx,
                &mut rng,
                shape,
                true,
                true,
                Layout::RowPadded,
                1.0,
                0.0,
                EpiKind::LeakyGrad,
            );
        }
    }
}

#[test]
fn every_kernel_every_epilogue() {
    let mut rng = Rng(4);
    let kinds = [
        EpiKind::None,
        EpiKind::Bias,
        EpiKind::BiasRelu,
        EpiKind::Leaky,
        EpiKind::ReluGrad,
        EpiKind::LeakyGrad,
    ];
    for (name, mut ctx) in contexts(Parallelism::Single) {
        for &shape in &[
            (1, 1, 1),
            (13, 33, 7),
            (24, 70, 64),
            (35, 600, 45),
            (128, 50, 10),
        ] {
            for ek in kinds {
                for beta in [0.0, 1.0] {
                    check_one(
                        &name,
                        &mut ctx,
                        &mut rng,
                        shape,
                        false,
                        true,
                        Layout::RowPadded,
                        1.0,
                        beta,
                        ek,
                    );
                }
            }
        }
    }
}

/// The unfused operation applied to C[i, j].
type Unfused<'a> = dyn Fn(usize, usize, f32) -> f32 + 'a;

/// The fused epilogue equals the GEMM followed by the same operations in a
/// separate pass, bit for bit.
#[test]
fn fused_epilogue_equals_unfused_bitwise() {
    let mut rng = Rng(5);
    for (name, mut ctx) in contexts(Parallelism::Single) {
        for &(m, k, n) in &[(13, 33, 7), (24, 70, 64), (37, 600, 45), (128, 64, 10)] {
            let a = rng.vec(m * k);
            let w = rng.vec(n * k);
            let bias = rng.vec(n);
            let z = rng.vec(m * n);
            let c0 = rng.vec(m * n);
            let a = MatRef::row_major(&a, m, k);
            let b = MatRef::row_major(&w, n, k).t();
            let zv = MatRef::row_major(&z, m, n);
            // Z as a tanh or sigmoid output: in (−1, 1) and (0, 1).
            let h: Vec<f32> = z.iter().map(|x| x.tanh()).collect();
            let hv = MatRef::row_major(&h, m, n);
            let s: Vec<f32> = z.iter().map(|x| 0.5 + 0.5 * x.tanh()).collect();
            let sv = MatRef::row_major(&s, m, n);
            let cases: [(Epilogue, &Unfused); 8] = [
                (Epilogue::Bias(&bias), &|_, j, v| v + bias[j]),
                (Epilogue::BiasAct(&bias, Activation::Relu), &|_, j, v| {
                    Activation::Relu.apply(v + bias[j])
                }),
                (Epilogue::Act(Activation::LeakyRelu(0.2)), &|_, _, v| {
                    Activation::LeakyRelu(0.2).apply(v)
                }),
                (
                    Epilogue::ActGrad(zv, Activation::LeakyRelu(0.3)),
                    &|i, j, v| Activation::LeakyRelu(0.3).scale_by_grad(z[i * n + j], v),
                ),
                // tanh and sigmoid written out, not through Activation.
                (Epilogue::BiasAct(&bias, Activation::Tanh), &|_, j, v| {
                    (v + bias[j]).tanh()
                }),
                (Epilogue::BiasAct(&bias, Activation::Sigmoid), &|_, j, v| {
                    1.0 / (1.0 + (-(v + bias[j])).exp())
                }),
                (Epilogue::ActGrad(hv, Activation::Tanh), &|i, j, v| {
                    let h = h[i * n + j];
                    v * (1.0 - h * h)
                }),
                (Epilogue::ActGrad(sv, Activation::Sigmoid), &|i, j, v| {
                    let s = s[i * n + j];
                    v * (s * (1.0 - s))
                }),
            ];
            for (epi, unfused) in cases {
                for beta in [0.0, 0.5] {
                    let mut plain = c0.clone();
                    ctx.gemm(
                        0.5,
                        a,
                        b,
                        beta,
                        MatMut::row_major(&mut plain, m, n),
                        Epilogue::None,
                    );
                    let mut fused = c0.clone();
                    ctx.gemm(0.5, a, b, beta, MatMut::row_major(&mut fused, m, n), epi);
                    for i in 0..m {
                        for j in 0..n {
                            let want = unfused(i, j, plain[i * n + j]);
                            assert_eq!(
                                fused[i * n + j].to_bits(),
                                want.to_bits(),
                                "{name} {m}×{k}×{n} {epi:?} at ({i},{j})"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Which operand of a product is panelled: the three products of a layer
/// whose weights are kept in column panels (`Wᵀ [in, out]`).
#[derive(Clone, Copy, Debug)]
enum PanelCase {
    /// `H = X·Wᵀ`: B in column panels, read in place.
    ForwardB,
    /// `dX = dZ·W`: B in row panels (the transpose), packed.
    InputGradB,
    /// `dWᵀ = Xᵀ·dZ`: C in column panels.
    WeightGradC,
}

/// C as an m×n view, panelled or row-major.
fn view(panelled: bool, c: &[f32], m: usize, n: usize) -> MatRef<'_> {
    if panelled {
        MatRef::panels(c, m, n)
    } else {
        MatRef::row_major(c, m, n)
    }
}

/// One product with a panelled operand against the f64 reference, within
/// the module's bound; with C panelled, its padding must stay untouched.
fn check_panelled(
    name: &str,
    ctx: &mut GemmCtx,
    rng: &mut Rng,
    shape: (usize, usize, usize),
    case: PanelCase,
    beta: f32,
) {
    let (m, k, n) = shape;
    let (abuf, bbuf) = (
        rng.vec(m * k),
        rng.vec(panel_len(k, n).max(panel_len(n, k))),
    );
    let bias = rng.vec(n);
    let zbuf = rng.vec(m * n);
    let z = MatRef::row_major(&zbuf, m, n);
    let a = match case {
        PanelCase::WeightGradC => MatRef::row_major(&abuf, k, m).t(),
        _ => MatRef::row_major(&abuf, m, k),
    };
    let b = match case {
        PanelCase::ForwardB => MatRef::panels(&bbuf, k, n),
        PanelCase::InputGradB => MatRef::panels(&bbuf, n, k).t(),
        PanelCase::WeightGradC => MatRef::row_major(&bbuf, k, n),
    };
    let epi = match case {
        PanelCase::ForwardB => Epilogue::BiasAct(&bias, Activation::Relu),
        PanelCase::InputGradB => Epilogue::ActGrad(z, Activation::LeakyRelu(0.1)),
        PanelCase::WeightGradC => Epilogue::None,
    };
    let panelled_c = matches!(case, PanelCase::WeightGradC);
    let len = if panelled_c { panel_len(m, n) } else { m * n };
    let mut cbuf = if beta == 0.0 {
        vec![f32::NAN; len]
    } else {
        rng.vec(len)
    };
    let c_old = cbuf.clone();
    let c = if panelled_c {
        MatMut::panels(&mut cbuf, m, n)
    } else {
        MatMut::row_major(&mut cbuf, m, n)
    };
    ctx.gemm(0.75, a, b, beta, c, epi);
    let (want, scale) = reference::gemm(0.75, a, b, beta, view(panelled_c, &c_old, m, n), epi);
    let got = view(panelled_c, &cbuf, m, n);
    let eps = f32::EPSILON as f64;
    for i in 0..m {
        for j in 0..n {
            let bound = (k as f64 + 3.0) * eps * scale[i * n + j];
            let err = (got.at(i, j) as f64 - want[i * n + j]).abs();
            assert!(
                err <= bound,
                "{name}: {m}×{k}×{n} {case:?} β={beta}: C[{i},{j}] = {}, reference {}, |err| {err:e} > bound {bound:e}",
                got.at(i, j),
                want[i * n + j]
            );
        }
    }
    let written = (0..m).flat_map(|i| (0..n).map(move |j| (i, j))).count();
    let changed = cbuf
        .iter()
        .zip(&c_old)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert!(
        changed <= written,
        "{name}: {m}×{k}×{n} {case:?}: wrote outside C"
    );
}

/// Products with the weights in panels, for every kernel, on 1 and 2
/// threads: awkward shapes (1, 7, 33, edge tiles in every direction, K
/// across two KC blocks whose boundary is not a panel boundary, N across
/// several panels so that two threads split it; a B read in place deep
/// enough for its own blocking, `params::DeepInPlace`: K = 600 and 1100 in
/// one block for AVX-512, 1100 in five of 220 for AVX2, and 300×4200 in
/// two blocks along M and two along K for AVX-512, seventeen along K for
/// AVX2).
#[test]
fn every_kernel_panelled_operands_match_reference() {
    let mut rng = Rng(23);
    for par in [Parallelism::Single, Parallelism::Threads(2)] {
        for (name, mut ctx) in contexts(par) {
            for &shape in &[
                (1, 1, 1),
                (7, 33, 1),
                (13, 7, 33),
                (37, 70, 45),
                (12, 64, 96),
                (5, 600, 70),
                (128, 300, 100),
                (37, 1100, 70),
                (300, 4200, 33),
            ] {
                for case in [
                    PanelCase::ForwardB,
                    PanelCase::InputGradB,
                    PanelCase::WeightGradC,
                ] {
                    for beta in [0.0, 0.5] {
                        check_panelled(&name, &mut ctx, &mut rng, shape, case, beta);
                    }
                }
            }
        }
    }
}

/// The optimiser rules the fused update is tested with: plain SGD,
/// Nesterov momentum with L2 and weight decay, Adam with both.
fn rules() -> [Rule; 3] {
    [
        Rule::Sgd {
            lr: 0.05,
            mu: 0.0,
            nesterov: false,
            l2: 0.0,
            wd: 0.0,
        },
        Rule::Sgd {
            lr: 0.1,
            mu: 0.9,
            nesterov: true,
            l2: 0.01,
            wd: 0.1,
        },
        Rule::Adam {
            lr: 0.01,
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            step: 0.01 / 0.19,
            inv_sqrt_c2: 1.0 / 0.002f32.sqrt(),
            l2: 0.01,
            wd: 0.1,
        },
    ]
}

/// `gemm_update` (the weight-gradient product with the optimiser's step in
/// its store) gives the bits of the product into a gradient buffer followed
/// by `Optimizer::update`, for every kernel and strategy, on 1 and 2
/// threads, on the training layout `dW = dZᵀ·X` and awkward shapes (edge
/// tiles, K = 1, products split across threads), and writes every new
/// weight into the transposed copy when given one (and nothing else).
/// Shapes whose kernel cannot fuse (K over one block, matrixmultiply) must
/// say so.
#[test]
fn fused_update_equals_product_then_update_bitwise() {
    let mut rng = Rng(17);
    for par in [Parallelism::Single, Parallelism::Threads(2)] {
        for (name, mut ctx) in contexts(par) {
            for &(m, k, n) in &[
                (1, 1, 1),
                (7, 1, 33),
                (13, 33, 7),
                (33, 7, 70),
                (64, 128, 256),
                (70, 37, 257),
                // B̃ in two NC blocks: the second block's column sums.
                (16, 9, 1000),
                // Enough work to be split on two threads: along N, each
                // part sums its own columns; C narrower than a tile (the
                // packed strategy) along M, where only the part holding
                // row 0 sums them.
                (64, 128, 600),
                (2100, 100, 20),
                (45, 600, 61),
            ] {
                // dW [m, n] = dZᵀ·X with dZ [k, m] and X [k, n] row-major.
                let dz = rng.vec(k * m);
                let x = rng.vec(k * n);
                let (a, b) = (
                    MatRef::row_major(&dz, k, m).t(),
                    MatRef::row_major(&x, k, n),
                );
                if !ctx.fuses_update(m, k, n) {
                    let one_pass = ctx.isa() != Isa::MatrixMultiply && k <= 512;
                    assert!(!one_pass, "{name} {m}×{k}×{n} should fuse");
                    continue;
                }
                let w0 = rng.vec(m * n);
                let m0 = rng.vec(m * n);
                let v0: Vec<f32> = rng.vec(m * n).iter().map(|x| x * x).collect();
                // α = 1 (the training step's) takes the tile store's own
                // update path, any other α the general one.
                for (rule, alpha) in rules().into_iter().flat_map(|r| [(r, 1.0), (r, 0.25)]) {
                    let mut grads = vec![f32::NAN; m * n];
                    ctx.gemm(
                        alpha,
                        a,
                        b,
                        0.0,
                        MatMut::row_major(&mut grads, m, n),
                        Epilogue::None,
                    );
                    let mut opt = Optimizer {
                        cfg: OptimConfig {
                            kind: OptimKind::Sgd {
                                momentum: 0.0,
                                nesterov: false,
                            },
                            l2: 0.0,
                            weight_decay: 0.0,
                        },
                        m: AlignedBuf::from_slice(&m0),
                        v: AlignedBuf::from_slice(&v0),
                        t: 0,
                    };
                    let mut want = w0.clone();
                    opt.update(rule, 0..m * n, &mut want, &grads, None);

                    let (mut w, mut mm, mut vv) = (w0.clone(), m0.clone(), v0.clone());
                    let mut copy = vec![f32::NAN; panel_len(n, m)];
                    let mut db = vec![f32::NAN; n];
                    ctx.gemm_update(
                        alpha,
                        a,
                        b,
                        MatMut::row_major(&mut w, m, n),
                        &mut mm,
                        &mut vv,
                        rule,
                        Some(MatMut::panels(&mut copy, n, m)),
                        Some(&mut db),
                        None,
                    );
                    let mut want_db = vec![f32::NAN; n];
                    fastnn::ops::column_sums(&mut want_db, &x, k, n);
                    let same = |x: &[f32], y: &[f32]| {
                        x.iter()
                            .zip(y)
                            .position(|(p, q)| p.to_bits() != q.to_bits())
                    };
                    let what = format!("{name} {par:?} {m}×{k}×{n} α = {alpha} {rule:?}");
                    assert_eq!(same(&w, &want), None, "{what}: weights");
                    assert_eq!(same(&mm, &opt.m), None, "{what}: first moment");
                    assert_eq!(same(&vv, &opt.v), None, "{what}: second moment");
                    assert_eq!(same(&db, &want_db), None, "{what}: bias gradient");
                    assert!(same(&w, &w0).is_some(), "{what}: the weights moved");
                    // Wᵀ in column panels: (j, i) at (i/32)·n·32 + j·32 + i%32;
                    // the padding past m untouched.
                    for i in 0..m.div_ceil(PANEL) * PANEL {
                        for j in 0..n {
                            let at = (i / PANEL) * n * PANEL + j * PANEL + i % PANEL;
                            if i < m {
                                let (got, want) = (copy[at], w[i * n + j]);
                                assert_eq!(
                                    got.to_bits(),
                                    want.to_bits(),
                                    "{what}: copy ({j}, {i})"
                                );
                            } else {
                                assert!(copy[at].is_nan(), "{what}: padding ({j}, {i}) written");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// 1 thread vs 2, 3 and 4 threads: bit-identical C, on shapes split along N
/// and along M, by the packed nest and by the strip kernel (which splits M
/// only).
#[test]
fn threads_do_not_change_bits() {
    let mut rng = Rng(6);
    // Runs that really were split, by strategy.
    let mut split_runs = [0; 2];
    for isa in Isa::ALL {
        if isa.check().is_err() {
            report_missing(isa);
            continue;
        }
        // (m, k, n): split along N, along M (n = 8 is one NR panel for every
        // kernel), ragged both ways, multi-KC; all above the threading
        // threshold. Cut along N the parts pack Ã together: several MC and
        // KC blocks (both shared buffers, each reused), and fewer Ã
        // micro-panels (m = 7) than parts.
        for &(m, k, n, tb) in &[
            (128, 300, 1024, true),
            (4000, 200, 8, false),
            (130, 700, 77, true),
            (1024, 128, 96, false),
            (1600, 1100, 512, false),
            (7, 700, 1024, true),
        ] {
            let a = rng.vec(m * k);
            let bv = rng.vec(k * n);
            let bias = rng.vec(n);
            let a = MatRef::row_major(&a, m, k);
            let b = if tb {
                MatRef::row_major(&bv, n, k).t()
            } else {
                MatRef::row_major(&bv, k, n)
            };
            for (s, strategy) in [Strategy::Packed, Strategy::Narrow].into_iter().enumerate() {
                let ctx = |par| GemmCtx::with_isa(isa, par).unwrap().with_strategy(strategy);
                let run = |mut ctx: GemmCtx| {
                    let mut c = vec![f32::NAN; m * n];
                    ctx.gemm(
                        1.0,
                        a,
                        b,
                        0.0,
                        MatMut::row_major(&mut c, m, n),
                        Epilogue::BiasAct(&bias, Activation::Relu),
                    );
                    c
                };
                let one = run(ctx(Parallelism::Single));
                for threads in [1, 2, 3, 4] {
                    let ctx = ctx(Parallelism::Threads(threads));
                    let plan = ctx.plan(m, k, n);
                    if let Plan::Packed { threads: 2.. } | Plan::Narrow { threads: 2.. } = plan {
                        split_runs[s] += 1;
                    }
                    let c = run(ctx);
                    let what = format!("{threads} threads ({plan:?})");
                    let same = one
                        .iter()
                        .zip(c.iter())
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{isa} {m}×{k}×{n}: {what} differs from 1 thread");
                }
            }
        }
    }
    assert!(
        split_runs.iter().all(|&runs| runs > 0),
        "runs split between threads (packed, strip): {split_runs:?}"
    );
}

#[test]
fn threaded_matches_reference() {
    let mut rng = Rng(7);
    for (name, mut ctx) in contexts(Parallelism::Threads(2)) {
        for &shape in &[(128, 300, 200), (300, 100, 20)] {
            check_one(
                &name,
                &mut ctx,
                &mut rng,
                shape,
                false,
                true,
                Layout::RowPadded,
                1.0,
                0.0,
                EpiKind::BiasRelu,
            );
            check_one(
                &name,
                &mut ctx,
                &mut rng,
                shape,
                true,
                false,
                Layout::Col,
                0.5,
                0.5,
                EpiKind::ReluGrad,
            );
        }
    }
}

/// Products whose tiles go down C's column panels (a weight gradient into
/// panelled C; a forward product reading B in place, deep enough for
/// `params::DeepInPlace`), cut along N, with panels of 4.5 MFLOP: the
/// threads take the panels one at a time as they come free. With β ≠ 0 on
/// 2 and 3 threads, against the reference, a panel computed twice or never
/// shows.
#[test]
fn panels_dealt_out_to_threads_match_reference() {
    let mut rng = Rng(8);
    let (m, k, n) = (64, 1100, 1000);
    let mut split_runs = 0;
    for threads in [2, 3] {
        for (name, mut ctx) in contexts(Parallelism::Threads(threads)) {
            if ctx.plan(m, k, n) != (Plan::Packed { threads }) {
                continue;
            }
            split_runs += 1;
            for case in [PanelCase::WeightGradC, PanelCase::ForwardB] {
                let shape = match case {
                    PanelCase::WeightGradC => (k, m, n),
                    _ => (m, k, n),
                };
                check_panelled(&name, &mut ctx, &mut rng, shape, case, 0.5);
            }
        }
    }
    assert!(
        split_runs > 0,
        "no context split {m}×{k}×{n} between threads"
    );
}

#[test]
fn negative_strides_raw() {
    // op(A) and C traversed backwards through the raw entry point.
    let (m, k, n) = (9, 21, 35);
    let mut rng = Rng(8);
    let a = rng.vec(m * k);
    let b = rng.vec(k * n);
    for (name, mut ctx) in contexts(Parallelism::Single) {
        let mut c = vec![f32::NAN; m * n];
        // SAFETY: A is read at (m-1-i)·k + p, C written at (m-1-i)·n + j:
        // inside both buffers; C does not overlap A or B.
        unsafe {
            ctx.gemm_raw(
                m,
                k,
                n,
                1.0,
                a.as_ptr().add((m - 1) * k),
                -(k as isize),
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr().add((m - 1) * n),
                -(n as isize),
                1,
                Epilogue::None,
            )
        };
        let (want, scale) = reference::gemm(
            1.0,
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, k, n),
            0.0,
            MatRef::row_major(&c, m, n),
            Epilogue::None,
        );
        for i in 0..m {
            for j in 0..n {
                let err = (c[i * n + j] as f64 - want[i * n + j]).abs();
                assert!(
                    err <= (k as f64 + 3.0) * f32::EPSILON as f64 * scale[i * n + j],
                    "{name} ({i},{j})"
                );
            }
        }
    }
}

#[test]
#[should_panic(expected = "inner dimensions differ")]
fn shape_mismatch_panics() {
    let a = [0f32; 6];
    let b = [0f32; 6];
    let mut c = [0f32; 4];
    let mut ctx = GemmCtx::with_isa(Isa::Scalar, Parallelism::Single).unwrap();
    ctx.gemm(
        1.0,
        MatRef::row_major(&a, 2, 3),
        MatRef::row_major(&b, 2, 3),
        0.0,
        MatMut::row_major(&mut c, 2, 2),
        Epilogue::None,
    );
}

#[test]
#[should_panic(expected = "bias has 3 elements")]
fn bias_mismatch_panics() {
    let a = [0f32; 4];
    let mut c = [0f32; 4];
    let mut ctx = GemmCtx::with_isa(Isa::Scalar, Parallelism::Single).unwrap();
    ctx.gemm(
        1.0,
        MatRef::row_major(&a, 2, 2),
        MatRef::row_major(&a, 2, 2),
        0.0,
        MatMut::row_major(&mut c, 2, 2),
        Epilogue::Bias(&[0.0; 3]),
    );
}

#[test]
fn k_zero_scales_c() {
    let mut c = [1.0f32, -2.0, 3.0, -4.0];
    let mut ctx = GemmCtx::with_isa(Isa::Scalar, Parallelism::Single).unwrap();
    let e: [f32; 0] = [];
    ctx.gemm(
        1.0,
        MatRef::row_major(&e, 2, 0),
        MatRef::row_major(&e, 0, 2),
        0.5,
        MatMut::row_major(&mut c, 2, 2),
        Epilogue::Act(Activation::Relu),
    );
    assert_eq!(c, [0.5, 0.0, 1.5, 0.0]);
}

#[test]
fn dgemm_fallback() {
    let a = [1.0f64, 2.0, 3.0, 4.0];
    let mut c = [0.0f64; 4];
    // SAFETY: 2×2 row-major buffers, C distinct from A.
    unsafe {
        fastnn::gemm::dgemm_raw(
            2,
            2,
            2,
            1.0,
            a.as_ptr(),
            2,
            1,
            a.as_ptr(),
            2,
            1,
            0.0,
            c.as_mut_ptr(),
            2,
            1,
        )
    };
    assert_eq!(c, [7.0, 10.0, 15.0, 22.0]);
}

/// Counts the allocations of the current thread (tests run in parallel
/// threads, so a process-wide count would see the others).
struct CountingAlloc;

thread_local! {
    static ALLOCS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        std::alloc::System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        std::alloc::System.dealloc(p, l)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Once the workspace has grown, a call allocates nothing (packed and
/// no-pack paths, every epilogue), on the calling thread. The
/// matrixmultiply fallback is exempt: that crate allocates its own pack
/// buffers on every call.
#[test]
fn warm_calls_do_not_allocate() {
    let mut rng = Rng(9);
    let (m, k, n) = (130, 600, 200);
    let a = rng.vec(m * k);
    let w = rng.vec(n * k);
    let bias = rng.vec(n);
    let z = rng.vec(m * n);
    let mut c = vec![0.0; m * n];
    for isa in [Isa::Avx512, Isa::Avx2, Isa::Scalar] {
        if isa.check().is_err() {
            report_missing(isa);
            continue;
        }
        for s in [
            Strategy::Auto,
            Strategy::Packed,
            Strategy::Small,
            Strategy::Narrow,
        ] {
            let mut ctx = GemmCtx::with_isa(isa, Parallelism::Single)
                .unwrap()
                .with_strategy(s);
            let call = |ctx: &mut GemmCtx, c: &mut [f32]| {
                let (a, b) = (MatRef::row_major(&a, m, k), MatRef::row_major(&w, n, k).t());
                let zv = MatRef::row_major(&z, m, n);
                ctx.gemm(
                    1.0,
                    a,
                    b,
                    0.0,
                    MatMut::row_major(c, m, n),
                    Epilogue::BiasAct(&bias, Activation::Relu),
                );
                ctx.gemm(
                    1.0,
                    a,
                    b,
                    1.0,
                    MatMut::row_major(c, m, n),
                    Epilogue::ActGrad(zv, Activation::Relu),
                );
            };
            call(&mut ctx, &mut c);
            let before = ALLOCS.with(|x| x.get());
            call(&mut ctx, &mut c);
            let after = ALLOCS.with(|x| x.get());
            assert_eq!(after - before, 0, "{isa}/{s:?}: a warm call allocated");
        }
    }
}

/// The fused update needs the whole of K in one pass: a product of the
/// packed nest (C wider than the strip kernel's 16 columns) whose K spans
/// several KC blocks is refused, not computed wrong.
#[test]
#[should_panic(expected = "not computed in one pass over K")]
fn fused_update_refuses_a_product_over_several_k_blocks() {
    let (m, k, n) = (8, 600, 40);
    let (x, dz) = (vec![0f32; k * m], vec![0f32; k * n]);
    let (mut w, mut mm) = (vec![0f32; m * n], vec![0f32; m * n]);
    let mut ctx = GemmCtx::with_isa(Isa::Scalar, Parallelism::Single).unwrap();
    assert!(!ctx.fuses_update(m, k, n));
    ctx.gemm_update(
        1.0,
        MatRef::row_major(&x, k, m).t(),
        MatRef::row_major(&dz, k, n),
        MatMut::row_major(&mut w, m, n),
        &mut mm,
        &mut [],
        rules()[0],
        None,
        None,
        None,
    );
}

/// Moments of another length than the weights are refused.
#[test]
#[should_panic(expected = "W spans 16 elements, m 15")]
fn fused_update_refuses_moments_of_another_length() {
    let (x, dz) = (vec![0f32; 16], vec![0f32; 16]);
    let (mut w, mut mm) = (vec![0f32; 16], vec![0f32; 15]);
    let mut ctx = GemmCtx::with_isa(Isa::Scalar, Parallelism::Single).unwrap();
    ctx.gemm_update(
        1.0,
        MatRef::row_major(&x, 4, 4).t(),
        MatRef::row_major(&dz, 4, 4),
        MatMut::row_major(&mut w, 4, 4),
        &mut mm,
        &mut [],
        rules()[0],
        None,
        None,
        None,
    );
}

/// A weight matrix without rows (no inputs) still gets its bias gradient:
/// no product runs, so no nest sums it, and `gemm_update` must.
#[test]
fn fused_update_without_rows_still_sums_the_biases() {
    let (k, n) = (5, 40);
    let dz: Vec<f32> = (0..k * n).map(|x| x as f32 * 0.25 - 7.0).collect();
    let mut want = vec![f32::NAN; n];
    fastnn::ops::column_sums(&mut want, &dz, k, n);
    for (name, mut ctx) in contexts(Parallelism::Single) {
        if !ctx.fuses_update(0, k, n) {
            continue;
        }
        let mut db = vec![f32::NAN; n];
        ctx.gemm_update(
            1.0,
            MatRef::row_major(&[], k, 0).t(),
            MatRef::row_major(&dz, k, n),
            MatMut::row_major(&mut [], 0, n),
            &mut [],
            &mut [],
            rules()[0],
            None,
            Some(&mut db),
            None,
        );
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&db), bits(&want), "{name}");
    }
}
