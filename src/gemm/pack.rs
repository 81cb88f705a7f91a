//! Packing: copy a block of op(A) or op(B) into contiguous micro-panels.
//!
//! `pack_a`: an mc×kc block of op(A) becomes ⌈mc/MR⌉ micro-panels; panel `r`
//! holds, for p in 0..kc, the MR values A[r·MR .. r·MR+MR, p] (rows past mc
//! are zeros). `pack_b`: a kc×nc block of op(B) becomes ⌈nc/NR⌉ micro-panels;
//! panel `s` holds, for p in 0..kc, the NR values B[p, s·NR .. s·NR+NR]
//! (columns past nc are zeros). Zero padding lets the microkernel always run
//! at full MR×NR; edge tiles store only their valid part.
//!
//! Both are one generic routine, `pack_panels`: "rows" of a panel are the
//! MR (or NR) index, with stride `rs`, and the depth index p has stride `ps`.

use super::kernels::Simd;
use super::loops::Args;
use super::mat::PANEL;

/// Packs `len` (≤ w·⌈len/w⌉) indices × `depth` into panels of width `w`,
/// `dst_stride` floats apart (w·depth for a whole block; more when `depth`
/// is one slice of a deeper block).
///
/// # Safety
/// `src` valid at every `i·rs + p·ps` for i < len, p < depth; `dst` valid
/// for w·depth writes at each of the ⌈len/w⌉ panel starts.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn pack_panels<S: Simd>(
    w: usize,
    len: usize,
    depth: usize,
    src: *const f32,
    rs: isize,
    ps: isize,
    dst: *mut f32,
    dst_stride: usize,
) {
    let mut dst = dst;
    let mut i0 = 0;
    while i0 < len {
        let rows = w.min(len - i0);
        let s = src.offset(i0 as isize * rs);
        if rs == 1 && rows == w {
            // Contiguous along the panel width (e.g. B row-major): one
            // w-float copy per depth step.
            for p in 0..depth {
                let sp = s.offset(p as isize * ps);
                if w <= 8 {
                    // A transposed (a weight gradient's Xᵀ): the walk reads
                    // half a line of each of kc far-apart rows; the panels
                    // two on read the next line of each. Ask for it in L2
                    // now (3072×128×1024 TN, one thread, four alternating
                    // pairs: 104.6–105.3 → 105.1–107.6 GFLOP/s). A
                    // prefetch never faults, past the block's end too.
                    super::kernels::prefetch_l2(sp.wrapping_add(16));
                }
                std::ptr::copy_nonoverlapping(sp, dst.add(p * w), w);
            }
        } else if ps == 1 && rows == w && w >= 8 {
            // Contiguous along the depth, full panel (e.g. B = Wᵀ, A
            // row-major): 8×8 blocks transposed in registers, then the
            // leftover rows and depth steps one by one.
            let pv = depth / 8 * 8;
            let wv = w / 8 * 8;
            // Groups of 16 source rows (8 when w < 16), each read front to
            // back: 16 sequential streams suit the hardware prefetchers, and
            // the two 8×8 blocks of a step fill whole 64-byte lines of the
            // panel at once instead of each half in a separate pass.
            let group = if wv.is_multiple_of(16) { 16 } else { 8 };
            for i0 in (0..wv).step_by(group) {
                let si = s.offset(i0 as isize * rs);
                // Whole 16×16 blocks where the group is 16 rows (AVX-512
                // transposes them in registers), then 8×8 ones.
                let p16 = if group == 16 { depth / 16 * 16 } else { 0 };
                for p0 in (0..p16).step_by(16) {
                    S::transpose16(si.add(p0), rs, dst.add(p0 * w + i0), w);
                }
                for p0 in (p16..pv).step_by(8) {
                    for g in (0..group).step_by(8) {
                        S::transpose8(
                            si.offset(g as isize * rs).add(p0),
                            rs,
                            dst.add(p0 * w + i0 + g),
                            w,
                        );
                    }
                }
            }
            for i in wv..w {
                let si = s.offset(i as isize * rs);
                for p in 0..pv {
                    *dst.add(p * w + i) = *si.add(p);
                }
            }
            for p in pv..depth {
                for i in 0..w {
                    *dst.add(p * w + i) = *s.offset(i as isize * rs).add(p);
                }
            }
        } else if ps == 1 {
            // Contiguous along the depth (e.g. A row-major, B = Wᵀ): read
            // each source row sequentially, write with stride w, in blocks
            // of 8 depth steps so the writes stay within a few cache lines.
            let mut p0 = 0;
            while p0 < depth {
                let pb = 8.min(depth - p0);
                for i in 0..w {
                    let d = dst.add(p0 * w + i);
                    if i < rows {
                        let si = s.offset(i as isize * rs).add(p0);
                        for p in 0..pb {
                            *d.add(p * w) = *si.add(p);
                        }
                    } else {
                        for p in 0..pb {
                            *d.add(p * w) = 0.0;
                        }
                    }
                }
                p0 += pb;
            }
        } else {
            for p in 0..depth {
                let sp = s.offset(p as isize * ps);
                let d = dst.add(p * w);
                for i in 0..w {
                    *d.add(i) = if i < rows {
                        *sp.offset(i as isize * rs)
                    } else {
                        0.0
                    };
                }
            }
        }
        dst = dst.add(dst_stride);
        i0 += w;
    }
}

/// Packs op(A)[0..mc, 0..kc] (at `a`, strides rsa, csa) into MR-row panels.
///
/// # Safety
/// As [`pack_panels`] with w = MR.
#[inline(always)]
pub(crate) unsafe fn pack_a<S: Simd>(
    mr: usize,
    mc: usize,
    kc: usize,
    a: *const f32,
    rsa: isize,
    csa: isize,
    dst: *mut f32,
) {
    pack_panels::<S>(mr, mc, kc, a, rsa, csa, dst, mr * kc)
}

/// Packs op(B)[0..kc, 0..nc] (at `b`, strides rsb, csb) into NR-column panels.
///
/// # Safety
/// As [`pack_panels`] with w = NR.
#[inline(always)]
pub(crate) unsafe fn pack_b<S: Simd>(
    nr: usize,
    kc: usize,
    nc: usize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    dst: *mut f32,
) {
    pack_panels::<S>(nr, nc, kc, b, csb, rsb, dst, nr * kc)
}

/// Packs op(B)[pc..pc+kc, jc..jc+nc] of a B in row panels (the transpose
/// of a panelled matrix, e.g. the weights read as `W` by `dZ·W`) into
/// NR-column panels: one slice of depth per row panel it crosses, each a
/// plain strided block.
///
/// # Safety
/// `args.bp` is `Panels::Rows`; the block lies inside op(B); `dst` valid
/// for ⌈nc/NR⌉·NR·kc writes.
#[inline(always)]
pub(crate) unsafe fn pack_b_row_panels<S: Simd>(
    nr: usize,
    pc: usize,
    kc: usize,
    jc: usize,
    nc: usize,
    args: &Args,
    dst: *mut f32,
) {
    let mut p0 = pc;
    while p0 < pc + kc {
        let p1 = (p0 / PANEL + 1) * PANEL;
        let depth = p1.min(pc + kc) - p0;
        pack_panels::<S>(
            nr,
            nc,
            depth,
            args.b_at(p0, jc),
            args.csb,
            args.rsb,
            dst.add((p0 - pc) * nr),
            nr * kc,
        );
        p0 += depth;
    }
}

/// Sums the columns of a packed B̃ block (`kc` rows of NR-column panels,
/// `nc` columns) into `sums[0..nc]`: from 0 on the block that starts K
/// (`first`), else onto what the earlier blocks left there. Each column is
/// summed row by row, as [`crate::ops::column_sums`] sums a row-major
/// matrix, so the bits are the same; the NR/LANES vectors of a panel are
/// independent chains, summed together a row at a time.
///
/// # Safety
/// `bpack` holds ⌈nc/NR⌉ panels of NR·kc floats; `sums` is valid for `nc`
/// reads and writes; NR is at most 8 vectors of `S`.
#[inline(always)]
pub(crate) unsafe fn add_column_sums<S: Simd>(
    nr: usize,
    kc: usize,
    nc: usize,
    bpack: *const f32,
    sums: *mut f32,
    first: bool,
) {
    const MAX_VECTORS: usize = 8;
    let nv = nr / S::LANES;
    debug_assert!(nr.is_multiple_of(S::LANES) && nv <= MAX_VECTORS);
    // A panel's sums, whole vectors wide: the last panel's columns past
    // `nc` are B̃'s zero padding and are never stored.
    let mut row = [0.0f32; MAX_VECTORS * 16];
    debug_assert!(nr <= row.len());
    for (s, j0) in (0..nc).step_by(nr).enumerate() {
        let width = nr.min(nc - j0);
        for (t, x) in row[..nr].iter_mut().enumerate() {
            *x = if !first && t < width {
                *sums.add(j0 + t)
            } else {
                0.0
            };
        }
        let mut acc = [S::zero(); MAX_VECTORS];
        for (v, a) in acc[..nv].iter_mut().enumerate() {
            *a = S::load(row.as_ptr().add(v * S::LANES));
        }
        let panel = bpack.add(s * nr * kc);
        for p in 0..kc {
            for (v, a) in acc[..nv].iter_mut().enumerate() {
                *a = S::add(*a, S::load(panel.add(p * nr + v * S::LANES)));
            }
        }
        for (v, a) in acc[..nv].iter().enumerate() {
            S::store(row.as_mut_ptr().add(v * S::LANES), *a);
        }
        std::ptr::copy_nonoverlapping(row.as_ptr(), sums.add(j0), width);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_zero_padded_every_layout() {
        // A 5×3 matrix, value 10·i + p, packed with width 4 from row-major,
        // column-major and a strided layout.
        for (len, depth, w) in [
            (5usize, 3usize, 4usize),
            (16, 19, 8),
            (13, 9, 16),
            (32, 17, 32),
            // 16×16 blocks, an 8×8 one and a last depth step, at both
            // widths of 16 rows' groups.
            (64, 41, 32),
            (16, 35, 16),
        ] {
            panels_case::<crate::gemm::kernels::scalar::Portable>(len, depth, w);
            #[cfg(target_arch = "x86_64")]
            if crate::cpu::Isa::Avx2.is_available() {
                panels_case::<crate::gemm::kernels::avx2::Avx2>(len, depth, w);
            } else {
                println!("SKIPPED avx2 packing: CPU lacks avx2/fma");
            }
            #[cfg(target_arch = "x86_64")]
            if crate::cpu::Isa::Avx512.is_available() {
                panels_case::<crate::gemm::kernels::avx512::Avx512>(len, depth, w);
            } else {
                println!("SKIPPED avx512 packing: CPU lacks avx512f");
            }
        }
    }

    /// The column sums of a packed B̃ block equal a plain row-by-row sum
    /// bit for bit, from 0 or onto earlier sums, whatever the block's width
    /// against NR; the columns past it are never written.
    #[test]
    fn column_sums_of_packed_blocks_are_the_row_by_row_sums() {
        column_sums_case::<crate::gemm::kernels::scalar::Portable>(8);
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::Isa::Avx2.is_available() {
            column_sums_case::<crate::gemm::kernels::avx2::Avx2>(16);
        } else {
            println!("SKIPPED avx2 column sums: CPU lacks avx2/fma");
        }
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::Isa::Avx512.is_available() {
            column_sums_case::<crate::gemm::kernels::avx512::Avx512>(32);
        } else {
            println!("SKIPPED avx512 column sums: CPU lacks avx512f");
        }
    }

    fn column_sums_case<S: Simd>(nr: usize) {
        for (kc, nc) in [(1, 1), (7, 33), (33, 7), (128, 70), (5, 2 * nr)] {
            // Values whose sums round differently in another order.
            let b: Vec<f32> = (0..kc * nc)
                .map(|x| (x as f32 * 0.37).sin() * 10f32.powi(x as i32 % 7 - 3))
                .collect();
            let mut bpack = vec![f32::NAN; nc.div_ceil(nr) * nr * kc];
            // SAFETY: b is kc×nc row-major; bpack holds every panel.
            unsafe { pack_b::<S>(nr, kc, nc, b.as_ptr(), nc as isize, 1, bpack.as_mut_ptr()) };
            for first in [true, false] {
                let before: Vec<f32> = (0..nc).map(|j| j as f32 * 0.5 - 3.0).collect();
                let mut want = if first { vec![0.0; nc] } else { before.clone() };
                for row in b.chunks_exact(nc) {
                    want.iter_mut().zip(row).for_each(|(s, &x)| *s += x);
                }
                let mut sums = before.clone();
                sums.push(f32::NAN);
                // SAFETY: bpack holds the packed block, sums nc floats
                // (and one more, which must stay as it is).
                unsafe {
                    add_column_sums::<S>(nr, kc, nc, bpack.as_ptr(), sums.as_mut_ptr(), first)
                };
                for j in 0..nc {
                    assert_eq!(
                        sums[j].to_bits(),
                        want[j].to_bits(),
                        "nr {nr} kc {kc} nc {nc} first {first}: column {j}"
                    );
                }
                assert!(
                    sums[nc].is_nan(),
                    "nr {nr} kc {kc} nc {nc}: wrote past the block"
                );
            }
        }
    }

    fn panels_case<S: Simd>(len: usize, depth: usize, w: usize) {
        for (rs, ps) in [
            (depth as isize, 1isize),
            (1, len as isize),
            (2 * depth as isize + 1, 1),
            (7, 2 * len as isize),
        ] {
            let mut src = vec![f32::NAN; 4 * len * depth + 8];
            for i in 0..len {
                for p in 0..depth {
                    src[(i as isize * rs + p as isize * ps) as usize] = (10 * i + p) as f32;
                }
            }
            let panels = len.div_ceil(w);
            let mut dst = vec![f32::NAN; panels * w * depth];
            // SAFETY: src covers every (i, p) offset; dst holds all panels;
            // the x86 kernels are only used after the CPU checks above.
            unsafe {
                pack_panels::<S>(
                    w,
                    len,
                    depth,
                    src.as_ptr(),
                    rs,
                    ps,
                    dst.as_mut_ptr(),
                    w * depth,
                )
            };
            for panel in 0..panels {
                for p in 0..depth {
                    for i in 0..w {
                        let row = panel * w + i;
                        let want = if row < len {
                            (10 * row + p) as f32
                        } else {
                            0.0
                        };
                        assert_eq!(dst[panel * w * depth + p * w + i], want, "rs={rs} ps={ps}");
                    }
                }
            }
        }
    }
}
