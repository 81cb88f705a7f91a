//! Microkernels: one generic body, one SIMD vocabulary per ISA.
//!
//! The MR×NR microkernel is written once ([`microkernel`]) over the small
//! [`Simd`] trait (splat/load/store/fma/select). Each ISA module implements
//! the trait with `std::arch` intrinsics and instantiates the whole loop nest
//! inside one `#[target_feature]` function, so the `#[inline(always)]` body
//! is compiled for that ISA (the matrixmultiply / pulp technique).
//!
//! Packed operand layout (see `pack.rs`): an A micro-panel holds, for each
//! `p` in `0..k`, the MR values `A[i0..i0+MR, p]`; a B micro-panel holds, for
//! each `p`, the NR = NV·LANES values `B[p, j0..j0+NR]`. The accumulators
//! form an MR×NV grid of vectors, row `i` of the C tile being the NV vectors
//! `acc[i][0..NV]` (C is row-preferred: our C rows are batch rows).

pub(crate) mod scalar;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;

use super::epilogue::{Epi, StepEpi};
use super::mat::PANEL;
use crate::optim::{Lanes, Rule};

/// The SIMD vocabulary a microkernel needs.
///
/// All functions are `unsafe`: the x86 implementations require the CPU
/// features their ISA names, and `load`/`store` dereference raw pointers
/// (valid for LANES consecutive f32, no alignment required).
pub(crate) trait Simd: Copy {
    /// One vector of LANES f32.
    type V: Copy;
    /// f32 lanes per vector.
    const LANES: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a·b + c`, fused where the ISA has FMA.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise square root, correctly rounded (IEEE-754).
    unsafe fn sqrt(a: Self::V) -> Self::V;
    /// Lane-wise `if x > 0 { t } else { f }` (false for NaN).
    unsafe fn select_pos(x: Self::V, t: Self::V, f: Self::V) -> Self::V;

    /// Transposes an 8×8 block for packing: reads rows `src + r·rs`
    /// (r < 8, 8 contiguous floats each) and writes `dst[q·w + r] =
    /// src[r·rs + q]`. The default is scalar; x86 kernels shuffle in
    /// registers.
    #[inline(always)]
    unsafe fn transpose8(src: *const f32, rs: isize, dst: *mut f32, w: usize) {
        for r in 0..8 {
            let s = src.offset(r as isize * rs);
            for q in 0..8 {
                *dst.add(q * w + r) = *s.add(q);
            }
        }
    }

    /// Transposes a 16×16 block as [`Simd::transpose8`] does an 8×8 one:
    /// `dst[q·w + r] = src[r·rs + q]` for r, q < 16. The default is four
    /// 8×8 blocks; AVX-512 shuffles whole 16-float rows, so that each
    /// store fills a 64-byte line of the panel.
    #[inline(always)]
    unsafe fn transpose16(src: *const f32, rs: isize, dst: *mut f32, w: usize) {
        for (r, q) in [(0, 0), (0, 8), (8, 0), (8, 8)] {
            Self::transpose8(
                src.offset(r as isize * rs).add(q),
                rs,
                dst.add(q * w + r),
                w,
            );
        }
    }
}

/// 8×8 transpose with AVX shuffles (24 shuffles per 64 floats).
///
/// # Safety
/// As [`Simd::transpose8`]; the CPU supports AVX.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn transpose8_avx(src: *const f32, rs: isize, dst: *mut f32, w: usize) {
    use std::arch::x86_64::*;
    let r = |i: isize| _mm256_loadu_ps(src.offset(i * rs));
    let (r0, r1, r2, r3, r4, r5, r6, r7) = (r(0), r(1), r(2), r(3), r(4), r(5), r(6), r(7));
    let t0 = _mm256_unpacklo_ps(r0, r1);
    let t1 = _mm256_unpackhi_ps(r0, r1);
    let t2 = _mm256_unpacklo_ps(r2, r3);
    let t3 = _mm256_unpackhi_ps(r2, r3);
    let t4 = _mm256_unpacklo_ps(r4, r5);
    let t5 = _mm256_unpackhi_ps(r4, r5);
    let t6 = _mm256_unpacklo_ps(r6, r7);
    let t7 = _mm256_unpackhi_ps(r6, r7);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    let out = [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ];
    for (q, v) in out.into_iter().enumerate() {
        _mm256_storeu_ps(dst.add(q * w), v);
    }
}

/// 16×16 transpose with AVX-512 shuffles (64 shuffles per 256 floats):
/// in-lane unpacks and shuffles give each 128-bit lane a 4×4 block, then
/// two rounds of lane shuffles gather each output row's four lanes.
///
/// # Safety
/// As [`Simd::transpose16`]; the CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn transpose16_avx512(src: *const f32, rs: isize, dst: *mut f32, w: usize) {
    use std::arch::x86_64::*;
    // Plain loops over arrays, no closures: a closure is a function of its
    // own, without this caller's target features, and its intrinsics would
    // not inline.
    let mut r = [_mm512_setzero_ps(); 16];
    for (i, row) in r.iter_mut().enumerate() {
        *row = _mm512_loadu_ps(src.offset(i as isize * rs));
    }
    // t[2i], t[2i + 1]: rows 2i and 2i + 1 interleaved (the low and the
    // high pairs of each lane).
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + c], lane L: column 4L + c of rows 4g..4g + 4.
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let t = &t[4 * g..4 * g + 4];
        u[4 * g] = _mm512_shuffle_ps::<0x44>(t[0], t[2]);
        u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(t[0], t[2]);
        u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(t[1], t[3]);
        u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(t[1], t[3]);
    }
    for c in 0..4 {
        // Lanes 0, 1 (lo) or 2, 3 (hi) of rows 0..8 and of rows 8..16.
        let x_lo = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
        let x_hi = _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]);
        let y_lo = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
        let y_hi = _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]);
        // Output row 4·lane + c: column 4·lane + c of all 16 rows.
        _mm512_storeu_ps(dst.add(c * w), _mm512_shuffle_f32x4::<0x88>(x_lo, y_lo));
        _mm512_storeu_ps(
            dst.add((4 + c) * w),
            _mm512_shuffle_f32x4::<0xDD>(x_lo, y_lo),
        );
        _mm512_storeu_ps(
            dst.add((8 + c) * w),
            _mm512_shuffle_f32x4::<0x88>(x_hi, y_hi),
        );
        _mm512_storeu_ps(
            dst.add((12 + c) * w),
            _mm512_shuffle_f32x4::<0xDD>(x_hi, y_hi),
        );
    }
}

/// How many k steps ahead the microkernel asks for B̃'s rows when B̃ was
/// packed (it then streams from L2) ...
pub(crate) const PACKED_B_AHEAD: usize = 16;

/// ... and when it is B read in place, which streams from memory the first
/// time a column panel is read: 64 rows of 32 floats, 8 KiB ahead. Zen 5,
/// against 16, calls alternating in one process, caches flushed between
/// calls (as the training step leaves them): every in-place training
/// shape faster, 128×3072×1024 NT 3–4 %, 128×512×1024 NN 3 %, 128×784×512
/// NT 4 %, 32×512×1024 NN 9–14 %, on one and two threads; with warm caches
/// level, but 128×3072×1024 NT 3–6 % faster. The AVX2 kernels on the same
/// CPU: level warm, 1–12 % faster cold. 128 ahead was no better on these
/// shapes; for a packed B̃, 128 ahead (past the end of a 128-deep
/// micro-panel) made the weight gradients 5–6 % slower.
pub(crate) const IN_PLACE_B_AHEAD: usize = 64;

/// Floats in a 64-byte cache line. A row of a B̃ micro-panel starts on a
/// line (packed: NR floats a row; in place: panels of PANEL floats from an
/// aligned buffer), so one prefetch per line of the row is enough: AVX2's
/// 16-float rows were prefetched twice, a load slot each. The microkernel
/// alone (6×16, K = 256, B̃ in L1, one thread, interleaved samples on AMD
/// Zen 3): 68.7 → 77.8, 80.0 → 84.0 and 94.2 → 95.8 GFLOP/s in three runs.
const LINE: usize = 16;

/// Hints the cache line holding `p` into L1 (no-op off x86-64).
#[inline(always)]
pub(crate) fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch never faults, whatever the address; SSE is part of
    // the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Hints the cache line holding `p`, which a tile's store reads after the
/// current tile, into L1 or L2 as [`crate::cpu::prefetch_stores_into_l1`]
/// says.
#[inline(always)]
pub(crate) fn prefetch_for_store(p: *const f32) {
    prefetch_into(p, crate::cpu::prefetch_stores_into_l1())
}

/// Hints the cache line holding `p` into L1 (`into_l1`) or L2, the choice
/// made once by a caller that hints many lines.
#[inline(always)]
pub(crate) fn prefetch_into(p: *const f32, into_l1: bool) {
    if into_l1 {
        prefetch(p)
    } else {
        prefetch_l2(p)
    }
}

/// Hints the cache line holding `p` into L2 (no-op off x86-64): for the
/// packs, whose next lines of a transposed operand are needed only after
/// a pass over the panels.
#[inline(always)]
pub(crate) fn prefetch_l2(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as `prefetch`.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `acc = Ã·B̃` over `k` steps: Ã an MR-row micro-panel, B̃ an NR = NV·LANES
/// column micro-panel whose rows are `ldb` floats apart (NR when packed,
/// PANEL when read in place from a panelled B), whose rows it asks for
/// `b_ahead` steps ahead ([`PACKED_B_AHEAD`], [`IN_PLACE_B_AHEAD`]).
///
/// On the way it also asks for `lines` cache lines that a later store needs,
/// one every `k / lines` steps: `prefetch_line(q)` asks for line q (those
/// left when `k < lines` come after the last step): a fused update's 32
/// to 48 lines, asked for all at once, held up the loads of Ã and B̃
/// behind them (see `loops::StoreLines`).
///
/// # Safety
/// `a` is valid for `k·MR` reads and `b` for NV·LANES reads at each of the
/// `k` rows; the CPU supports `S`.
#[inline(always)]
pub(crate) unsafe fn microkernel<S: Simd, const MR: usize, const NV: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    b_ahead: usize,
    lines: usize,
    prefetch_line: impl Fn(usize),
) -> [[S::V; NV]; MR] {
    let mut acc = [[S::zero(); NV]; MR];
    let (mut a, mut b) = (a, b);
    let every = (k / lines.max(1)).max(1);
    let (mut q, mut left) = (0, k);
    while left > 0 {
        if q < lines {
            prefetch_line(q);
            q += 1;
        }
        let steps = every.min(left);
        for _ in 0..steps {
            k_step::<S, MR, NV>(&mut acc, &mut a, &mut b, ldb, b_ahead);
        }
        left -= steps;
    }
    for q in q..lines {
        prefetch_line(q);
    }
    acc
}

/// One step of the microkernel: `acc += Ã[:, p] · B̃[p, :]`, then `a` and
/// `b` move to the next column of Ã and row of B̃.
///
/// # Safety
/// As [`microkernel`], for the step at `a` and `b`.
#[inline(always)]
unsafe fn k_step<S: Simd, const MR: usize, const NV: usize>(
    acc: &mut [[S::V; NV]; MR],
    a: &mut *const f32,
    b: &mut *const f32,
    ldb: usize,
    b_ahead: usize,
) {
    // Ask for the lines of B̃'s row `b_ahead` steps ahead (packed B̃,
    // 16: +5-8 % on the NN training shape, ±noise elsewhere).
    // `wrapping_add`: near the end of the panel the address lies past
    // it, which a prefetch may name but `add` may not compute.
    for v in (0..NV).step_by(LINE.div_ceil(S::LANES)) {
        prefetch(b.wrapping_add(b_ahead * ldb + v * S::LANES));
    }
    let mut bv = [S::zero(); NV];
    for (v, bvv) in bv.iter_mut().enumerate() {
        *bvv = S::load(b.add(v * S::LANES));
    }
    for (i, row) in acc.iter_mut().enumerate() {
        let ai = S::splat(*a.add(i));
        for (v, x) in row.iter_mut().enumerate() {
            *x = S::fma(ai, bv[v], *x);
        }
    }
    *a = a.add(MR);
    // Wrapping: after the last row of an in-place panel with NR < PANEL
    // this lies past the matrix; it is never read.
    *b = b.wrapping_add(ldb);
}

/// Applies α, β·C and the epilogue to one vector of products and stores it
/// at `c` (LANES contiguous elements of row `i`, starting at column `j`).
/// Same operations, in the same order, as [`super::epilogue::finish_scalar`].
///
/// # Safety
/// `c` valid for LANES reads (if β ≠ 0) and writes; `epi` valid at (i, j..j+LANES)
/// with `epi.vector_ok()`; the CPU supports `S`.
#[inline(always)]
pub(crate) unsafe fn finish_vec<S: Simd>(
    ab: S::V,
    alpha: f32,
    beta: f32,
    c: *mut f32,
    epi: &Epi,
    i: usize,
    j: usize,
) {
    let mut v = if alpha == 1.0 {
        ab
    } else {
        S::mul(S::splat(alpha), ab)
    };
    if let Some(s) = &epi.step {
        step_vec::<S>(v, c, s, i, j);
        if !s.copy.is_null() {
            copy_run(c, S::LANES, s, i, j);
        }
        return;
    }
    if beta != 0.0 {
        v = S::add(v, S::mul(S::splat(beta), S::load(c)));
    }
    if !epi.bias.is_null() {
        v = S::add(v, S::load(epi.bias.add(j)));
    }
    v = act_vec::<S>(epi.act, v);
    if !epi.z.is_null() {
        let z = S::load(epi.z.offset(i as isize * epi.rsz + j as isize));
        v = grad_vec::<S>(epi.zact, z, v);
    }
    S::store(c, v);
}

/// The optimiser's step for one vector of weights at `c`, element (i, j)
/// of the tile: `g` is their gradient; the rule's operations are those of
/// its scalar form.
///
/// # Safety
/// `c` and the moments at (i, j..j+LANES) are valid for reads and writes;
/// the CPU supports `S`.
#[inline(always)]
unsafe fn step_vec<S: Simd>(g: S::V, c: *mut f32, s: &StepEpi, i: usize, j: usize) {
    let at = s.offset(i, j);
    let m = s.m.offset(at);
    let (w, m_new, v_new) = if s.v.is_null() {
        s.rule.apply(
            Lane::<S>(S::load(c)),
            Lane(g),
            Lane(S::load(m)),
            Lane(S::zero()),
        )
    } else {
        let sv = s.v.offset(at);
        s.rule.apply(
            Lane::<S>(S::load(c)),
            Lane(g),
            Lane(S::load(m)),
            Lane(S::load(sv)),
        )
    };
    S::store(c, w.0);
    S::store(m, m_new.0);
    if !s.v.is_null() {
        S::store(s.v.offset(at), v_new.0);
    }
}

/// Writes `len` new weights of row i of the tile, from column j, stored at
/// `c`, into the step's copy, one by one: the vector store's way, and the
/// tiles' of the families other than AVX-512 (whose tiles go as
/// transposes, [`copy_tile`]). Out of line, so that the stores that never
/// write a copy stay as they were: inlined into `finish_vec`, it made W1's
/// forward product (128×3072×1024 NT, one thread) 85–90 → 75–80 % of the
/// peak.
///
/// # Safety
/// `c` and the copy valid for the run.
#[inline(never)]
unsafe fn copy_run(c: *const f32, len: usize, s: &StepEpi, i: usize, j: usize) {
    for t in 0..len {
        *s.copy.offset(s.copy_offset(i, j + t)) = *c.add(t);
    }
}

/// The optimiser's step for a whole tile of weight gradients, its rule
/// `s.rule` a value of its own: where the caller matched the rule's kind
/// and passes it rebuilt with that kind spelt out, the compiler drops the
/// rule's dispatch and keeps its constants in registers across the tile
/// (reading them through `epi` for every vector, it spilled them and
/// branched on the rule 16 times a tile). W1's bf16 weight gradients on
/// one thread: 5.78–5.84 → 5.51–5.61 ms a step; the same tile with the
/// rule only copied, not rebuilt: 5.66–5.69 ms.
///
/// # Safety
/// As [`store_tile`] for a full tile with `csc == 1`, α = 1.
#[inline(always)]
unsafe fn step_full<S: Simd, const MR: usize, const NV: usize>(
    acc: &[[S::V; NV]; MR],
    c: *mut f32,
    rsc: isize,
    s: StepEpi,
) {
    for (i, row) in acc.iter().enumerate() {
        let ci = c.offset(i as isize * rsc);
        for (v, &g) in row.iter().enumerate() {
            step_vec::<S>(g, ci.add(v * S::LANES), &s, i, v * S::LANES);
        }
    }
}

/// A vector of `S` as the optimiser's [`Lanes`], for the fused update rule.
///
/// Its operators are safe functions calling `S`'s unsafe ones: sound because
/// a `Lane<S>` is only ever made inside [`finish_vec`], from vectors of a
/// kernel that runs only once the CPU is known to support `S`.
#[derive(Clone, Copy)]
struct Lane<S: Simd>(S::V);

macro_rules! lane_op {
    ($trait:ident, $method:ident) => {
        impl<S: Simd> std::ops::$trait for Lane<S> {
            type Output = Self;
            #[inline(always)]
            fn $method(self, o: Self) -> Self {
                // SAFETY: see `Lane`: the CPU supports S.
                Lane(unsafe { S::$method(self.0, o.0) })
            }
        }
    };
}
lane_op!(Add, add);
lane_op!(Sub, sub);
lane_op!(Mul, mul);
lane_op!(Div, div);

impl<S: Simd> Lanes for Lane<S> {
    #[inline(always)]
    fn splat(x: f32) -> Self {
        // SAFETY: see `Lane`.
        Lane(unsafe { S::splat(x) })
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        // SAFETY: see `Lane`.
        Lane(unsafe { S::sqrt(self.0) })
    }
}

/// `act(v)`, the same operations as [`super::Activation::apply`]: the
/// ReLU family as selects; tanh and sigmoid one lane at a time through the
/// scalar function (the same bits, without a pass of their own over C).
#[inline(always)]
unsafe fn act_vec<S: Simd>(act: super::Activation, v: S::V) -> S::V {
    use super::Activation;
    match act {
        Activation::Identity => v,
        Activation::Relu => S::select_pos(v, v, S::zero()),
        Activation::LeakyRelu(slope) => S::select_pos(v, v, S::mul(v, S::splat(slope))),
        Activation::Tanh | Activation::Sigmoid => {
            let mut lanes = [0f32; 16];
            assert!(S::LANES <= lanes.len());
            S::store(lanes.as_mut_ptr(), v);
            for x in &mut lanes[..S::LANES] {
                *x = act.apply(*x);
            }
            S::load(lanes.as_ptr())
        }
    }
}

/// `v · act'` from `z`, the same operations as
/// [`super::Activation::scale_by_grad`].
#[inline(always)]
unsafe fn grad_vec<S: Simd>(act: super::Activation, z: S::V, v: S::V) -> S::V {
    use super::Activation;
    let one = || S::splat(1.0);
    match act {
        Activation::Identity => v,
        Activation::Relu => S::select_pos(z, v, S::zero()),
        Activation::LeakyRelu(slope) => S::select_pos(z, v, S::mul(v, S::splat(slope))),
        Activation::Tanh => S::mul(v, S::sub(one(), S::mul(z, z))),
        Activation::Sigmoid => S::mul(v, S::mul(z, S::sub(one(), z))),
    }
}

/// [`finish_vec`] over a whole tile whose rows of C (and Z) are runs.
///
/// # Safety
/// As [`store_tile`] for a full tile with `csc == 1` and `epi.vector_ok()`.
#[inline(always)]
unsafe fn finish_full<S: Simd, const MR: usize, const NV: usize>(
    acc: &[[S::V; NV]; MR],
    alpha: f32,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    epi: &Epi,
) {
    for (i, row) in acc.iter().enumerate() {
        let ci = c.offset(i as isize * rsc);
        for (v, x) in row.iter().enumerate() {
            finish_vec::<S>(*x, alpha, beta, ci.add(v * S::LANES), epi, i, v * S::LANES);
        }
    }
}

/// Stores one MR×NR tile of products: straight from registers into C when the
/// tile is full and rows of C (and Z) are contiguous, else through `tile`
/// (an aligned scratch of at least MR·NR floats) and the scalar finish, which
/// writes only the valid `mr × nr` corner.
///
/// # Safety
/// C valid for the `mr × nr` tile at `c` with strides (rsc, csc), reads only
/// if β ≠ 0; `epi` already offset to this tile; `tile` valid for MR·NR
/// writes; the CPU supports `S`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn store_tile<S: Simd, const MR: usize, const NV: usize>(
    acc: &[[S::V; NV]; MR],
    mr: usize,
    nr: usize,
    alpha: f32,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
    epi: &Epi,
    tile: *mut f32,
) {
    let nr_full = NV * S::LANES;
    let full = mr == MR && nr == nr_full && csc == 1;
    if full && alpha == 1.0 && beta == 0.0 && epi.is_none() {
        // A plain product: the sums as they are. (Decided once per tile:
        // through `finish_vec` the compiler spilled the tile and re-tested
        // the epilogue for every vector, 8 % of a K = 128 product's time.)
        for (i, row) in acc.iter().enumerate() {
            let ci = c.offset(i as isize * rsc);
            for (v, x) in row.iter().enumerate() {
                S::store(ci.add(v * S::LANES), *x);
            }
        }
    } else if let (true, 1.0, Some(step)) = (full, alpha, epi.step) {
        // A fused update: one call per kind of rule, each with the rule
        // rebuilt with its kind spelt out (see `step_full`).
        let run = step_full::<S, MR, NV>;
        match step.rule {
            Rule::Sgd {
                lr,
                mu,
                nesterov,
                l2,
                wd,
            } => {
                let sgd = |nesterov| StepEpi {
                    rule: Rule::Sgd {
                        lr,
                        mu,
                        nesterov,
                        l2,
                        wd,
                    },
                    ..step
                };
                if nesterov {
                    run(acc, c, rsc, sgd(true))
                } else {
                    run(acc, c, rsc, sgd(false))
                }
            }
            Rule::Adam { .. } => run(acc, c, rsc, step),
        }
        if !step.copy.is_null() {
            copy_tile::<S, MR, NV>(c, rsc, &step);
        }
    } else if full && epi.vector_ok() {
        // The training step's activations as constants, one arm each, so
        // that the compiler drops `finish_vec`'s dispatch on them from the
        // loop over the vectors. (A function, not a closure: an outlined
        // closure would lose the caller's target features.)
        use super::Activation::{Identity, Relu};
        let finish = finish_full::<S, MR, NV>;
        match (epi.act, epi.zact) {
            (Relu, Identity) => finish(acc, alpha, beta, c, rsc, &Epi { act: Relu, ..*epi }),
            (Identity, Relu) => finish(acc, alpha, beta, c, rsc, &Epi { zact: Relu, ..*epi }),
            (Identity, Identity) => {
                let epi = Epi {
                    act: Identity,
                    zact: Identity,
                    ..*epi
                };
                finish(acc, alpha, beta, c, rsc, &epi)
            }
            _ => finish(acc, alpha, beta, c, rsc, epi),
        }
    } else {
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                S::store(tile.add(i * nr_full + v * S::LANES), *x);
            }
        }
        super::epilogue::finish_scalar(tile, nr_full, mr, nr, alpha, beta, c, rsc, csc, epi);
    }
}

/// Writes a fused update's new full tile of weights (MR×NV·LANES, column
/// stride 1), just stored at `c`, into the step's transposed copy (in
/// column panels, `gemm_update`): eight rows from a multiple of 8 (every
/// AVX-512 tile) as 8×8 transposes, each of the copy's rows getting a run
/// of 8 floats; the tiles of other families row by row, [`copy_run`]. (The
/// scalar store, `finish1`, writes the copy of the elements it updates.)
///
/// # Safety
/// The tile at `c` was written by this thread and lies inside C; the copy
/// holds every element of C transposed (`StepEpi::copy`).
#[inline(always)]
unsafe fn copy_tile<S: Simd, const MR: usize, const NV: usize>(
    c: *const f32,
    rsc: isize,
    s: &StepEpi,
) {
    let nr = NV * S::LANES;
    // Eight rows from a multiple of 8 lie in one panel of the copy.
    const _: () = assert!(PANEL.is_multiple_of(8));
    if MR == 8 && nr.is_multiple_of(8) && s.at.0.is_multiple_of(8) {
        for q in (0..nr).step_by(8) {
            let dst = s.copy.offset(s.copy_offset(0, q));
            S::transpose8(c.add(q), rsc, dst, s.copy_rs as usize);
        }
    } else {
        for i in 0..MR {
            copy_run(c.offset(i as isize * rsc), nr, s, i, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::scalar::Portable;
    use super::*;
    use std::cell::RefCell;

    /// However `k` compares with the number of lines, the microkernel asks
    /// for each line once, in order, and its sums are those of the k steps.
    #[test]
    fn microkernel_asks_for_every_line_once_and_sums_every_step() {
        const MR: usize = 2;
        let nr = Portable::LANES;
        for k in [1, 3, 7, 16, 32, 33, 100] {
            let a: Vec<f32> = (0..k * MR).map(|x| (x % 7) as f32 - 3.0).collect();
            let b: Vec<f32> = (0..k * nr).map(|x| (x % 5) as f32 * 0.5).collect();
            for lines in [0, 1, 5, 16, 32, 48] {
                let asked = RefCell::new(Vec::new());
                // SAFETY: a holds k·MR floats, b k rows of nr; the portable
                // kernel runs on every CPU.
                let acc = unsafe {
                    microkernel::<Portable, MR, 1>(
                        k,
                        a.as_ptr(),
                        b.as_ptr(),
                        nr,
                        PACKED_B_AHEAD,
                        lines,
                        |q| asked.borrow_mut().push(q),
                    )
                };
                assert_eq!(
                    asked.into_inner(),
                    (0..lines).collect::<Vec<_>>(),
                    "k {k}, {lines} lines"
                );
                for i in 0..MR {
                    for j in 0..nr {
                        let want: f32 = (0..k).map(|p| a[p * MR + i] * b[p * nr + j]).sum();
                        assert_eq!(acc[i][0][j], want, "k {k}, ({i}, {j})");
                    }
                }
            }
        }
    }
}
