//! The Goto/BLIS loop nest around the microkernel.
//!
//! ```text
//! LOOP 5 (IC): split M by MC                     Ã block MC×KC
//!   LOOP 4 (PC): split K by KC; pack Ã            β applies on the first KC block only,
//!                                                 the epilogue on the last one
//!     LOOP 3 (JC): split N by NC; pack B̃         B̃ block KC×NC, L2-resident
//!       LOOP 2 (IR): MR-row micro-panels of Ã    one stays in L1 during loop 1
//!         LOOP 1 (JR): NR-wide micro-panels of B̃, streamed from L2
//!           microkernel MR×NR, then store (+ epilogue)
//! ```
//!
//! This is BLIS's nest with A and B exchanged (BLIS computes row-stored C as
//! Cᵀ = BᵀAᵀ): our kernel is row-preferred, its small operand is the MR-row
//! Ã micro-panel, which therefore sits in L1 while B̃ streams.
//!
//! Every element of C is summed in one fixed order (p = 0..K, KC blocks in
//! order, each block added to C as `α·ab + c`), whatever part of C a thread
//! owns: the result does not depend on the thread count.

use super::epilogue::Epi;
use super::kernels::{microkernel, prefetch, store_tile, Simd};
use super::pack::{pack_a, pack_b};
use super::params::{block_steps, Params};
use super::workspace::PartWs;

/// One GEMM problem (or one thread's part of it), raw.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Args {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub alpha: f32,
    pub a: *const f32,
    pub rsa: isize,
    pub csa: isize,
    pub b: *const f32,
    pub rsb: isize,
    pub csb: isize,
    pub beta: f32,
    pub c: *mut f32,
    pub rsc: isize,
    pub csc: isize,
    pub epi: Epi,
}

// SAFETY: Args is sent to pool threads only inside one GEMM call, whose
// caller guarantees the pointed-to data outlives the call; threads write
// disjoint parts of C (see `Args::part`).
unsafe impl Send for Args {}
unsafe impl Sync for Args {}

impl Args {
    /// The sub-problem C[i0..i0+m, j0..j0+n] (all of K).
    ///
    /// # Safety
    /// The sub-block lies inside this problem.
    pub unsafe fn part(&self, i0: usize, m: usize, j0: usize, n: usize) -> Args {
        let (i, j) = (i0 as isize, j0 as isize);
        Args {
            m,
            n,
            a: self.a.offset(i * self.rsa),
            b: self.b.offset(j * self.csb),
            c: self.c.offset(i * self.rsc + j * self.csc),
            epi: self.epi.at(i0, j0),
            ..*self
        }
    }
}

/// Hints the first and last cache line of `len` floats at `row`.
#[inline(always)]
fn prefetch_row(row: *const f32, len: usize) {
    prefetch(row);
    prefetch(row.wrapping_add(len - 1));
}

/// Runs the whole nest for `args` with kernel `S`, MR×(NV·LANES).
///
/// # Safety
/// `args` satisfies `sgemm_raw`'s contract, m, n, k > 0; `ws` belongs to
/// this thread; the CPU supports `S`.
#[inline(always)]
pub(crate) unsafe fn nest<S: Simd, const MR: usize, const NV: usize>(
    args: &Args,
    p: &Params,
    ws: &mut PartWs,
) {
    let nr = NV * S::LANES;
    debug_assert!(p.mr == MR && p.nr == nr);
    let Args { m, k, n, .. } = *args;
    let (mc_step, kc_step, nc_step) = block_steps(p, m, k, n);
    ws.reserve(mc_step * kc_step, kc_step * nc_step);
    let apack = ws.a.as_mut_ptr();
    let bpack = ws.b.as_mut_ptr();
    let tile = ws.tile.as_mut_ptr();

    // LOOP 5 (IC): split M by MC.
    for ic in (0..m).step_by(mc_step) {
        let mc = mc_step.min(m - ic);
        // LOOP 4 (PC): split K by KC; pack Ã (mc×kc).
        for pc in (0..k).step_by(kc_step) {
            let kc = kc_step.min(k - pc);
            let beta = if pc == 0 { args.beta } else { 1.0 };
            let last = pc + kc == k;
            pack_a::<S>(
                MR,
                mc,
                kc,
                args.a
                    .offset(ic as isize * args.rsa + pc as isize * args.csa),
                args.rsa,
                args.csa,
                apack,
            );
            // LOOP 3 (JC): split N by NC; pack B̃ (kc×nc).
            for jc in (0..n).step_by(nc_step) {
                let nc = nc_step.min(n - jc);
                pack_b::<S>(
                    nr,
                    kc,
                    nc,
                    args.b
                        .offset(pc as isize * args.rsb + jc as isize * args.csb),
                    args.rsb,
                    args.csb,
                    bpack,
                );
                // LOOP 2 (IR): MR-row micro-panels of Ã.
                for ir in (0..mc).step_by(MR) {
                    let mr = MR.min(mc - ir);
                    let ap = apack.add(ir * kc);
                    let i = ic + ir;
                    // LOOP 1 (JR): NR-wide micro-panels of B̃.
                    for jr in (0..nc).step_by(nr) {
                        let nrv = nr.min(nc - jr);
                        let j = jc + jr;
                        let cij = args.c.offset(i as isize * args.rsc + j as isize * args.csc);
                        let epi = if last { args.epi.at(i, j) } else { Epi::NONE };
                        if args.csc == 1 {
                            // The C tile is read (β ≠ 0, a later KC block or
                            // a fused update) and written after the k loop,
                            // as are a fused update's moments: start
                            // fetching them now.
                            for r in 0..mr {
                                prefetch_row(cij.offset(r as isize * args.rsc), nrv);
                            }
                            if let Some(s) = &epi.step {
                                for r in 0..mr {
                                    prefetch_row(s.m.offset(s.offset(r, 0)), nrv);
                                    if !s.v.is_null() {
                                        prefetch_row(s.v.offset(s.offset(r, 0)), nrv);
                                    }
                                }
                            }
                        }
                        let acc = microkernel::<S, MR, NV>(kc, ap, bpack.add(jr * kc));
                        store_tile::<S, MR, NV>(
                            &acc, mr, nrv, args.alpha, beta, cij, args.rsc, args.csc, &epi, tile,
                        );
                    }
                }
            }
        }
    }
}
