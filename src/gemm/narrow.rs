//! Products whose C is only a strip of columns wide: the output layer's
//! 10 classes (its forward product `X·Wᵀ` and its weight gradient, with
//! the fused update), without packing A.
//!
//! In the packed nest such a product wastes most of its work: the 8×32
//! tile computes 32 columns for 10, and packing Ã costs about as much as
//! the product itself, since each element of A meets only n columns of B.
//! Here A is read in place, MR rows at a time, and B is a strip of k×NR
//! floats (NR = NV·LANES): the weights' column panel itself for the
//! forward product, else a copy, zero past column n. The strip stays in
//! L1 while the rows of A stream past it. Each step over k is one load of
//! the strip's row and MR broadcasts of A, each feeding one multiply-add of
//! NR columns:
//!
//! ```text
//!   C[i..i+MR, j..j+NR] = Σ_p A[i..i+MR, p] ⊗ B̃[p, 0..NR]     p = 0, 1, …, k−1
//! ```
//!
//! Every element is summed over all of K in one pass, p in order, so a
//! fused optimiser update can ride on the store (as in the packed nest
//! with K in one block), and a part of C computed by another thread (M is
//! split, never K) holds the same bits.

use super::kernels::{store_tile, Simd};
use super::loops::Args;
use super::mat::Panels;
use super::workspace::PartWs;

/// Columns of the strip, the same for every kernel family (one AVX-512
/// vector, two AVX2 or portable ones): the output layer's classes fit one
/// strip up to 16 of them.
pub(crate) const STRIP: usize = 16;

/// Rows a thread's share of C is a multiple of (of every family's MR,
/// checked in `params.rs`), so that every part but the last computes whole
/// tiles.
pub(crate) const ROWS: usize = 12;

// A strip never straddles two column panels of B or C.
const _: () = assert!(super::PANEL.is_multiple_of(STRIP));

/// The floats of B̃ a product of depth `k` needs (what the workspace
/// reserves).
pub(crate) fn strip_len(k: usize) -> usize {
    k * STRIP
}

/// `C = epi(α·A·B + β·C)` strip by strip of NR = NV·LANES columns, MR rows
/// of A at a time, read in place.
///
/// # Safety
/// `args` satisfies `gemm_raw`'s contract with m, n, k > 0; `ws` belongs
/// to this thread; the CPU supports `S`; NV·LANES = [`STRIP`].
#[inline(always)]
pub(crate) unsafe fn narrow<S: Simd, const MR: usize, const NV: usize>(
    args: &Args,
    ws: &mut PartWs,
) {
    let nr = NV * S::LANES;
    debug_assert_eq!(nr, STRIP);
    let Args { m, k, n, .. } = *args;
    // B in column panels (the forward product's Wᵀ) is a strip already:
    // its rows are PANEL floats apart, a strip never straddles two panels,
    // and the lanes past column n read the panel's padding, whose sums
    // are not stored.
    let in_place = matches!(args.bp, Panels::Cols(_)) && args.csb == 1;
    if !in_place {
        ws.reserve(0, strip_len(k));
    }
    let copy = ws.b.as_mut_ptr();
    let tile = ws.tile.as_mut_ptr();
    for j in (0..n).step_by(nr) {
        let cols = nr.min(n - j);
        let strip = if in_place {
            (args.b_at(0, j), args.rsb as usize)
        } else {
            copy_strip(args, j, cols, nr, copy);
            (copy as *const f32, nr)
        };
        for i in (0..m).step_by(MR) {
            let rows = MR.min(m - i);
            let acc = rows_times_strip::<S, MR, NV>(args, i, strip);
            store_tile::<S, MR, NV>(
                &acc,
                rows,
                cols,
                args.alpha,
                args.beta,
                args.c_at(i, j),
                args.rsc,
                args.csc,
                &args.epi.at(i, j),
                tile,
            );
        }
    }
}

/// B̃[p, 0..nr] = B[p, j..j+cols], then zeros: B in any layout (strides
/// or panels) becomes one contiguous strip.
///
/// # Safety
/// Columns j..j+cols lie inside B; `strip` is valid for k·nr writes.
#[inline(always)]
unsafe fn copy_strip(args: &Args, j: usize, cols: usize, nr: usize, strip: *mut f32) {
    for p in 0..args.k {
        let row = strip.add(p * nr);
        for q in 0..cols {
            *row.add(q) = *args.b_at(p, j + q);
        }
        for q in cols..nr {
            *row.add(q) = 0.0;
        }
    }
}

/// The MR×NR sums of rows i.. of A with the strip (its rows `ld` floats
/// apart). Rows past the last (a short last block) repeat the last row, so
/// every read stays inside A; their sums are not stored.
///
/// # Safety
/// Row i lies inside A; `strip` holds k rows of NV·LANES floats, `ld`
/// apart; the CPU supports `S`.
#[inline(always)]
unsafe fn rows_times_strip<S: Simd, const MR: usize, const NV: usize>(
    args: &Args,
    i: usize,
    (strip, ld): (*const f32, usize),
) -> [[S::V; NV]; MR] {
    let row = |r: usize| args.a.offset((i + r).min(args.m - 1) as isize * args.rsa);
    let rows: [*const f32; MR] = std::array::from_fn(row);
    let mut acc = [[S::zero(); NV]; MR];
    let mut b = strip;
    let mut at = 0isize;
    for _ in 0..args.k {
        let mut bv = [S::zero(); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = S::load(b.add(v * S::LANES));
        }
        for (r, sums) in acc.iter_mut().enumerate() {
            let a = S::splat(*rows[r].offset(at));
            for (v, x) in sums.iter_mut().enumerate() {
                *x = S::fma(a, bv[v], *x);
            }
        }
        // Wrapping: after the last row this lies past B; it is never read.
        b = b.wrapping_add(ld);
        at += args.csa;
    }
    acc
}
