//! The no-pack, single-thread path for small and skinny products (the
//! 10-wide output layer, tiny batches), where packing would cost more than it
//! saves. Operands are read in place:
//!
//! - `csb == 1` (B rows contiguous: NN, TN): each C row chunk of up to 4
//!   vectors accumulates `A[i,p]·B[p, j..]` over p (broadcast × vector).
//! - `rsb == 1 && csa == 1` (NT: `X·Wᵀ`): dot products along contiguous rows
//!   of A and columns of B, 4 columns at a time, lanes summed in a fixed order.
//! - anything else: scalar dot products.
//!
//! Single-threaded and shape-determined, so results do not depend on threads.

use super::kernels::{finish_vec, Simd};
use super::loops::Args;

/// # Safety
/// `args` satisfies `sgemm_raw`'s contract with m, n, k > 0; the CPU supports `S`.
#[inline(always)]
pub(crate) unsafe fn small<S: Simd>(args: &Args) {
    if args.csb == 1 {
        rows::<S>(args)
    } else if args.rsb == 1 && args.csa == 1 {
        dots::<S>(args)
    } else {
        scalar(args)
    }
}

/// `C[i, j..j+NV·L]` by broadcast × vector over p.
#[inline(always)]
unsafe fn row_block<S: Simd, const NV: usize>(g: &Args, i: usize, j: usize) {
    let l = S::LANES;
    // The scratch row below holds 64 floats (constant-folded check).
    assert!(NV * l <= 64);
    let mut acc = [S::zero(); NV];
    let ai = g.a.offset(i as isize * g.rsa);
    let bj = g.b.add(j);
    for p in 0..g.k {
        let a = S::splat(*ai.offset(p as isize * g.csa));
        let bp = bj.offset(p as isize * g.rsb);
        for (v, x) in acc.iter_mut().enumerate() {
            *x = S::fma(a, S::load(bp.add(v * l)), *x);
        }
    }
    let c = g.c.offset(i as isize * g.rsc + j as isize * g.csc);
    if g.csc == 1 && g.epi.vector_ok() {
        for (v, x) in acc.iter().enumerate() {
            finish_vec::<S>(*x, g.alpha, g.beta, c.add(v * l), &g.epi, i, j + v * l);
        }
    } else {
        let mut tmp = [0f32; 64];
        for (v, x) in acc.iter().enumerate() {
            S::store(tmp.as_mut_ptr().add(v * l), *x);
        }
        for (jj, &ab) in tmp[..NV * l].iter().enumerate() {
            let cij = c.offset(jj as isize * g.csc);
            *cij = g.epi.finish1(ab, g.alpha, g.beta, cij, i, j + jj);
        }
    }
}

#[inline(always)]
unsafe fn rows<S: Simd>(g: &Args) {
    let l = S::LANES;
    for i in 0..g.m {
        let mut j = 0;
        while j + 4 * l <= g.n {
            row_block::<S, 4>(g, i, j);
            j += 4 * l;
        }
        while j + l <= g.n {
            row_block::<S, 1>(g, i, j);
            j += l;
        }
        while j < g.n {
            finish1(g, i, j, dot_scalar(g, i, j));
            j += 1;
        }
    }
}

/// Dot products for `C[i, j..j+NC]`, A rows and B columns contiguous.
#[inline(always)]
unsafe fn dot_block<S: Simd, const NC: usize>(g: &Args, i: usize, j: usize) {
    let l = S::LANES;
    let ai = g.a.offset(i as isize * g.rsa);
    let mut acc = [S::zero(); NC];
    let kv = g.k / l * l;
    let mut p = 0;
    while p < kv {
        let a = S::load(ai.add(p));
        for (c, x) in acc.iter_mut().enumerate() {
            let bc = g.b.offset((j + c) as isize * g.csb).add(p);
            *x = S::fma(a, S::load(bc), *x);
        }
        p += l;
    }
    assert!(l <= 16);
    for (c, x) in acc.iter().enumerate() {
        let mut lanes = [0f32; 16];
        S::store(lanes.as_mut_ptr(), *x);
        let mut s = 0.0f32;
        for &v in &lanes[..l] {
            s += v;
        }
        let bc = g.b.offset((j + c) as isize * g.csb);
        for q in kv..g.k {
            s += *ai.add(q) * *bc.add(q);
        }
        finish1(g, i, j + c, s);
    }
}

#[inline(always)]
unsafe fn dots<S: Simd>(g: &Args) {
    for i in 0..g.m {
        let mut j = 0;
        while j + 4 <= g.n {
            dot_block::<S, 4>(g, i, j);
            j += 4;
        }
        while j < g.n {
            dot_block::<S, 1>(g, i, j);
            j += 1;
        }
    }
}

/// Σ_p A[i,p]·B[p,j] in p order.
#[inline(always)]
unsafe fn dot_scalar(g: &Args, i: usize, j: usize) -> f32 {
    let ai = g.a.offset(i as isize * g.rsa);
    let bj = g.b.offset(j as isize * g.csb);
    let mut s = 0.0f32;
    for p in 0..g.k as isize {
        s += *ai.offset(p * g.csa) * *bj.offset(p * g.rsb);
    }
    s
}

#[inline(always)]
unsafe fn finish1(g: &Args, i: usize, j: usize, ab: f32) {
    let cij = g.c.offset(i as isize * g.rsc + j as isize * g.csc);
    *cij = g.epi.finish1(ab, g.alpha, g.beta, cij, i, j);
}

#[inline(always)]
unsafe fn scalar(g: &Args) {
    for i in 0..g.m {
        for j in 0..g.n {
            finish1(g, i, j, dot_scalar(g, i, j));
        }
    }
}
