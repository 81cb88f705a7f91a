//! The bf16 products (`fastnn::gemm::bf16`) against an f64 product of the
//! bf16-rounded inputs, on awkward shapes and every transpose, for every
//! bf16 kernel this CPU runs; a kernel it lacks is reported as skipped.

mod common;

use common::report;
use fastnn::buf::AlignedBuf;
use fastnn::gemm::bf16::{
    dot_outruns_fma, gemm_bf16, gemm_bf16_packed, pack_b, round_bf16, Bf16Kernel, Bf16Workspace,
    PackedB, MR, NR,
};
use fastnn::gemm::{panel_len, Activation, Epilogue, MatMut, MatRef};
use fastnn::rng::Rng;
use fastnn::team::Team;

/// Shapes (m, k, n): single elements, K = 1, odd K (a padded pair), sizes
/// on both sides of a tile (MR = 8, NR = 32) and of several tiles.
const SHAPES: [(usize, usize, usize); 9] = [
    (1, 1, 1),
    (7, 1, 7),
    (1, 7, 33),
    (15, 17, 33),
    (17, 33, 15),
    (33, 257, 65),
    (8, 2, 32),
    (9, 3, 31),
    (128, 300, 96),
];

/// The f64 product of the rounded operands and, per element, `Σ|a||b|`.
fn reference(a: &MatRef<'_>, b: &MatRef<'_>) -> (Vec<f64>, Vec<f64>) {
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    let mut c = vec![0.0; m * n];
    let mut size = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let (x, y) = (round_bf16(a.at(i, p)) as f64, round_bf16(b.at(p, j)) as f64);
                c[i * n + j] += x * y;
                size[i * n + j] += (x * y).abs();
            }
        }
    }
    (c, size)
}

/// Every element of the kernel's product within the f32 summation bound
/// `γ_K·Σ|a||b|`, `γ_K = K·u/(1 − K·u)`, `u = 2⁻²⁴` (the products of two
/// bf16 values are exact in f32; only the K additions round).
fn check(kernel: Bf16Kernel, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let mut ws = Bf16Workspace::default();
    let mut worst: f64 = 0.0;
    for (m, k, n) in SHAPES {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a_data: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            let b_data: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
            // A stored as [k, m] when transposed, B as [n, k].
            let a = if ta {
                MatRef::row_major(&a_data, k, m).t()
            } else {
                MatRef::row_major(&a_data, m, k)
            };
            let b = if tb {
                MatRef::row_major(&b_data, n, k).t()
            } else {
                MatRef::row_major(&b_data, k, n)
            };
            let mut c = vec![f32::NAN; m * n];
            gemm_bf16(kernel, a, b, MatMut::row_major(&mut c, m, n), &mut ws, None);
            let (want, size) = reference(&a, &b);
            let u = 2f64.powi(-24);
            let gamma = k as f64 * u / (1.0 - k as f64 * u);
            for (idx, ((&got, &want), &size)) in c.iter().zip(&want).zip(&size).enumerate() {
                let err = (got as f64 - want).abs();
                assert!(
                    err <= gamma * size,
                    "{} {m}×{k}×{n} (A{} B{}): C[{}, {}] = {got}, expected {want} (error {err:e} > bound {:e})",
                    kernel.name(),
                    if ta { "ᵀ" } else { "" },
                    if tb { "ᵀ" } else { "" },
                    idx / n,
                    idx % n,
                    gamma * size
                );
                if size > 0.0 {
                    worst = worst.max(err / (gamma * size));
                }
            }
        }
    }
    worst
}

#[test]
fn every_bf16_kernel_matches_the_f64_product_of_the_rounded_inputs() {
    assert_eq!((MR, NR), (8, 32), "the shapes above straddle these tiles");
    for kernel in Bf16Kernel::ALL {
        let what = format!("the {} bf16 kernel", kernel.name());
        if !kernel.is_available() {
            report::skipped(&what, "this CPU lacks it");
            continue;
        }
        let worst = check(kernel, 17);
        println!("{}: worst error {worst:.3} of the bound", kernel.name());
        report::ran(&what);
    }
}

/// Whether the kernel lists a CPU flag in `/proc/cpuinfo`; `None` (and
/// `what` reported as skipped) where there is no such file.
fn cpuinfo_flags(what: &str) -> Option<impl Fn(&str) -> bool> {
    let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
        report::skipped(what, "no /proc/cpuinfo");
        return None;
    };
    let flags = (cpuinfo.lines())
        .find(|l| l.starts_with("flags"))
        .unwrap_or("")
        .to_string();
    Some(move |name: &str| flags.split_whitespace().any(|f| f == name))
}

/// Independently of the detection the kernels use: where the kernel
/// reports its CPU flags (`/proc/cpuinfo`), a CPU listing `avx512_bf16`
/// makes the AVX512-BF16 kernel available, so every test here that runs
/// "each kernel this CPU runs" exercised it. Fails if the detection ever
/// missed it.
#[test]
fn a_cpu_with_avx512_bf16_runs_its_kernel() {
    let Some(has) = cpuinfo_flags("the /proc/cpuinfo check of AVX512-BF16") else {
        return;
    };
    let (listed, avx512f) = (has("avx512_bf16"), has("avx512f"));
    assert_eq!(
        Bf16Kernel::Avx512Bf16.is_available(),
        listed && avx512f,
        "/proc/cpuinfo lists avx512_bf16 {listed}, avx512f {avx512f}"
    );
    if !listed {
        report::skipped("the avx512-bf16 kernel", "this CPU lacks AVX512-BF16");
    }
}

/// The AMX flags fastnn reads from CPUID agree with `/proc/cpuinfo`'s
/// (`amx_tile`, `amx_bf16`), so `--dry-run` tells the truth about AMX.
#[test]
fn amx_detection_agrees_with_proc_cpuinfo() {
    let Some(has) = cpuinfo_flags("the /proc/cpuinfo check of AMX") else {
        return;
    };
    let f = fastnn::cpu::features();
    assert_eq!(
        (f.amx_tile, f.amx_bf16),
        (has("amx_tile"), has("amx_bf16")),
        "{f}"
    );
}

/// Where the kernel reports its CPU flags (`/proc/cpuinfo`), a CPU listing
/// `amx_tile`, `amx_bf16` and `avx512_bf16` makes the AMX kernel available
/// (Linux grants its tiles, as every kernel since 5.16 does), so every
/// test here that runs "each kernel this CPU runs" exercised it; fails if
/// the detection or the permission missed it. Elsewhere its program ran
/// on the tile model (`amx-emulated`) and the hardware is reported
/// skipped.
#[test]
fn a_cpu_with_amx_runs_its_kernel() {
    let Some(has) = cpuinfo_flags("the /proc/cpuinfo check of AMX's kernel") else {
        return;
    };
    let listed = has("amx_tile") && has("amx_bf16") && has("avx512_bf16");
    assert_eq!(
        Bf16Kernel::Amx.is_available(),
        listed,
        "/proc/cpuinfo lists AMX with AVX512-BF16: {listed}"
    );
    if !listed {
        report::skipped("the amx-bf16 kernel on AMX's tiles", "this CPU lacks AMX");
    }
}

/// The detected kernel is the fastest this CPU has: AMX where it runs (and
/// passes its probe product: a failing probe fails this test), else
/// AVX512-BF16 where `vdpbf16ps` outruns the FMA units, else the FMA
/// kernel on AVX-512F, else the portable kernel; never the tile model.
#[test]
fn the_cpu_s_bf16_kernel_is_the_one_detected() {
    let want = if Bf16Kernel::Amx.is_available() {
        Bf16Kernel::Amx
    } else if Bf16Kernel::Avx512Bf16.is_available() && dot_outruns_fma() {
        Bf16Kernel::Avx512Bf16
    } else if Bf16Kernel::Avx512Fma.is_available() {
        Bf16Kernel::Avx512Fma
    } else {
        Bf16Kernel::Portable
    };
    assert_eq!(Bf16Kernel::detect(), want);
    println!(
        "detected {}; vdpbf16ps outruns the FMA units: {}",
        want.name(),
        dot_outruns_fma()
    );
}

/// The FMA kernel adds the same exact products in the same order as the
/// portable kernel (high halves, then low, pair by pair), so its sums are
/// the portable kernel's bits, on every shape and transpose of the
/// reference test and on a weight-gradient shape whose Ã it runs in
/// blocks of rows (4096×600: 4.8 MiB widened).
#[test]
fn the_fma_kernel_gives_the_portable_kernel_s_bits() {
    if !Bf16Kernel::Avx512Fma.is_available() {
        report::skipped(
            "the avx512-fma bf16 kernel against the portable one",
            "this CPU lacks AVX-512F",
        );
        return;
    }
    let mut rng = Rng::new(29);
    let mut shapes = SHAPES.to_vec();
    shapes.push((4096, 600, 40));
    for (m, k, n) in shapes {
        let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
        for (ta, tb) in [(false, false), (true, true)] {
            fn op(data: &[f32], rows: usize, cols: usize, t: bool) -> MatRef<'_> {
                if t {
                    MatRef::row_major(data, cols, rows).t()
                } else {
                    MatRef::row_major(data, rows, cols)
                }
            }
            let run = |kernel: Bf16Kernel| {
                let mut c = vec![f32::NAN; m * n];
                gemm_bf16(
                    kernel,
                    op(&a, m, k, ta),
                    op(&b, k, n, tb),
                    MatMut::row_major(&mut c, m, n),
                    &mut Bf16Workspace::default(),
                    Some(&mut Team::new(2)),
                );
                c
            };
            let (fma, portable) = (run(Bf16Kernel::Avx512Fma), run(Bf16Kernel::Portable));
            let same = fma
                .iter()
                .zip(&portable)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{m}×{k}×{n}, transposes {ta} {tb}");
        }
    }
    report::ran("the avx512-fma bf16 kernel against the portable one");
}

/// Rounding matters: a kernel that kept A and B in f32 would not give the
/// product of the rounded inputs. 1 + 2⁻⁹ rounds to 1 in bf16.
#[test]
fn the_inputs_are_rounded_to_bf16() {
    let x = 1.0 + 2f32.powi(-9);
    for kernel in Bf16Kernel::ALL.into_iter().filter(|k| k.is_available()) {
        let mut c = [0.0f32];
        let (a, b) = ([x], [x]);
        gemm_bf16(
            kernel,
            MatRef::row_major(&a, 1, 1),
            MatRef::row_major(&b, 1, 1),
            MatMut::row_major(&mut c, 1, 1),
            &mut Bf16Workspace::default(),
            None,
        );
        assert_eq!(c[0], 1.0, "{}", kernel.name());
    }
}

/// The tiles split across a team by column panels: the same bits as one
/// thread, on 2 and 3 threads, where C has more panels than threads and
/// where it has fewer (the product then stays on one thread), and where
/// a panel is work enough (600×257×200: 9.9 MFLOP a panel) for the
/// threads to take the panels one at a time as they come free.
#[test]
fn a_team_gives_the_bits_of_one_thread() {
    let mut rng = Rng::new(5);
    for kernel in Bf16Kernel::ALL.into_iter().filter(|k| k.is_available()) {
        for (m, k, n) in [
            (33, 257, 65),
            (128, 300, 96),
            (7, 33, 161),
            (9, 3, 31),
            (600, 257, 200),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
            let run = |team: Option<&mut Team>| {
                let mut c = vec![f32::NAN; m * n];
                gemm_bf16(
                    kernel,
                    MatRef::row_major(&a, m, k),
                    MatRef::row_major(&b, k, n),
                    MatMut::row_major(&mut c, m, n),
                    &mut Bf16Workspace::default(),
                    team,
                );
                c
            };
            let one = run(None);
            assert!(one.iter().all(|v| v.is_finite()), "every element written");
            for threads in [2, 3] {
                let many = run(Some(&mut Team::new(threads)));
                let same = one
                    .iter()
                    .zip(&many)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{} {m}×{k}×{n} on {threads} threads", kernel.name());
            }
        }
    }
}

/// An epilogue written out: element (i, j)'s sum to its stored value.
type ByHand<'a> = dyn Fn(usize, usize, f32) -> f32 + 'a;

/// A product on an operand packed beforehand (`pack_b` then
/// `gemm_bf16_packed`), with each epilogue, into a dense C and into C in
/// column panels: the bits of the plain product followed by the epilogue
/// written out, for every bf16 kernel this CPU runs, on 1 and 2 threads.
#[test]
fn packed_operand_epilogues_and_panelled_c_give_the_plain_bits() {
    let mut rng = Rng::new(23);
    for kernel in Bf16Kernel::ALL.into_iter().filter(|k| k.is_available()) {
        for (m, k, n) in [(1, 1, 1), (7, 33, 161), (17, 15, 40), (33, 257, 65)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let z: Vec<f32> = (0..m * n).map(|_| rng.next_f32()).collect();
            let (am, bm) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
            let mut plain = vec![f32::NAN; m * n];
            let mut ws = Bf16Workspace::default();
            gemm_bf16(
                kernel,
                am,
                bm,
                MatMut::row_major(&mut plain, m, n),
                &mut ws,
                None,
            );
            let mut packed = AlignedBuf::zeroed(0);
            pack_b(&bm, &mut packed);
            let bt = PackedB::new(&packed, k, n);
            let zm = MatRef::row_major(&z, m, n);
            let epilogues: [(&str, Epilogue, &ByHand); 5] = [
                ("none", Epilogue::None, &|_, _, v| v),
                ("bias", Epilogue::Bias(&bias), &|_, j, v| v + bias[j]),
                ("act", Epilogue::Act(Activation::Tanh), &|_, _, v| v.tanh()),
                (
                    "bias+relu",
                    Epilogue::BiasAct(&bias, Activation::Relu),
                    &|_, j, v| (v + bias[j]).max(0.0),
                ),
                (
                    "act'",
                    Epilogue::ActGrad(zm, Activation::Sigmoid),
                    &|i, j, v| v * (z[i * n + j] * (1.0 - z[i * n + j])),
                ),
            ];
            for (name, epilogue, by_hand) in epilogues {
                for threads in [1, 2] {
                    let mut team = (threads > 1).then(|| Team::new(threads));
                    let what = format!("{} {m}×{k}×{n} {name} on {threads}", kernel.name());
                    let mut dense = vec![f32::NAN; m * n];
                    let c = MatMut::row_major(&mut dense, m, n);
                    gemm_bf16_packed(kernel, am, bt, c, epilogue, &mut ws, team.as_mut());
                    let mut panels = vec![f32::NAN; panel_len(m, n)];
                    let c = MatMut::panels(&mut panels, m, n);
                    gemm_bf16_packed(kernel, am, bt, c, epilogue, &mut ws, team.as_mut());
                    let pm = MatRef::panels(&panels, m, n);
                    for i in 0..m {
                        for j in 0..n {
                            let want = by_hand(i, j, plain[i * n + j]).to_bits();
                            assert_eq!(dense[i * n + j].to_bits(), want, "{what}: ({i}, {j})");
                            assert_eq!(pm.at(i, j).to_bits(), want, "{what}: panels ({i}, {j})");
                        }
                    }
                }
            }
        }
    }
}

/// A product with K = 0 is refused with a message (a layer has at least
/// one input and a batch one sample), not a division by zero in packing.
#[test]
#[should_panic(expected = "a bf16 product needs K ≥ 1")]
fn an_empty_inner_dimension_is_refused() {
    let mut c = [f32::NAN; 6];
    gemm_bf16(
        Bf16Kernel::Portable,
        MatRef::row_major(&[], 2, 0),
        MatRef::row_major(&[], 0, 3),
        MatMut::row_major(&mut c, 2, 3),
        &mut Bf16Workspace::default(),
        None,
    );
}
