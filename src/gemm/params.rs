//! Block sizes, one table per ISA.
//!
//! The loop nest (see `loops.rs`) is BLIS's with the roles of A and B
//! swapped, because our microkernel is row-preferred (C rows are batch rows):
//! an MR-row micro-panel of Ã stays in L1 while LOOP 1 streams the NR-wide
//! micro-panels of B̃ from L2; the KC×NC block B̃ lives in L2, the MC×KC
//! block Ã in L2/L3.
//!
//! The tables were tuned on an Intel Xeon with L1d 48 KiB and L2 2 MiB per
//! core. The AMD Zen 4 machines this also runs on have L1d 32 KiB and L2
//! 1 MiB: the AVX-512 B̃ block (1.5 MiB) then overflows L2, yet NC = 384
//! measured no faster there in the training step (`fastnn bench train
//! --phases`, W1, 2 threads, three runs each: within the machine's noise).

/// Block sizes of one kernel family. MC is a multiple of MR, NC of NR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Params {
    /// Rows of the microkernel tile (LOOP 2 step). Ã micro-panel: MR×KC.
    pub mr: usize,
    /// Vectors per tile row; NR = nv·LANES (LOOP 1 step). B̃ micro-panel: KC×NR.
    pub nv: usize,
    /// NR, the tile width in floats.
    pub nr: usize,
    /// LOOP 5 (IC) step: rows of the packed block Ã (MC×KC floats, one per thread).
    pub mc: usize,
    /// LOOP 4 (PC) step: the depth of Ã and B̃; an Ã micro-panel (MR×KC) must fit L1.
    pub kc: usize,
    /// LOOP 3 (JC) step: columns of the packed block B̃ (KC×NC floats, one per thread), L2-resident.
    pub nc: usize,
    /// The blocking of a deep product whose B is read in place (the
    /// forward's weights); `None`: as any other product.
    pub deep_in_place: Option<DeepInPlace>,
}

/// The blocking of a product whose B is in column panels read in place
/// and at least `from_k` deep: its tiles go down each column panel
/// (`loops::nest`), in blocks of at most `mc` rows and `kc` deep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeepInPlace {
    pub from_k: usize,
    pub mc: usize,
    pub kc: usize,
}

impl Params {
    /// The table a product of depth `k` runs with: this one, or, for a
    /// deep product whose B is in column panels read in place
    /// (`in_place`), this one with the MC and KC of
    /// [`Params::deep_in_place`]. The second value says which.
    pub fn for_product(&self, k: usize, in_place: bool) -> (Params, bool) {
        match self.deep_in_place {
            Some(d) if in_place && k >= d.from_k => (
                Params {
                    mc: d.mc,
                    kc: d.kc,
                    ..*self
                },
                true,
            ),
            _ => (*self, false),
        }
    }
}

/// The block steps used for an m×k×n problem: the number of blocks along
/// each dimension is the one the maximum (MC, KC, NC) implies, and the blocks
/// are made equal (rounded up to MR / NR), so that e.g. m = 1024 is one
/// block and not 1020 + 4. The steps depend on the shape only, never on the
/// thread count (KC fixes the summation order).
pub(crate) fn block_steps(p: &Params, m: usize, k: usize, n: usize) -> (usize, usize, usize) {
    let balanced = |len: usize, max: usize, unit: usize| {
        let blocks = len.div_ceil(max).max(1);
        len.div_ceil(blocks).div_ceil(unit) * unit
    };
    (
        balanced(m, p.mc, p.mr),
        balanced(k, p.kc, 1),
        balanced(n, p.nc, p.nr),
    )
}

/// An upper bound on [`block_steps`] over every product of at most m×k×n:
/// a step is never more than its dimension rounded up to the unit, nor more
/// than the table's maximum rounded up to the unit, and both bounds grow
/// with the dimension.
pub(crate) fn block_bound(p: &Params, m: usize, k: usize, n: usize) -> (usize, usize, usize) {
    let bound = |len: usize, max: usize, unit: usize| len.min(max).div_ceil(unit) * unit;
    (
        bound(m, p.mc, p.mr),
        bound(k, p.kc, 1),
        bound(n, p.nc, p.nr),
    )
}

/// An upper bound on the floats of the Ã block (MC×KC) of every product
/// of at most m×k×n, its B read in place or not: the larger of
/// [`block_bound`]'s for the table and for the table a deep product with B
/// in place takes. (That product packs no B̃, so the table's KC×NC bounds
/// B̃.)
pub(crate) fn a_block_bound(p: &Params, m: usize, k: usize, n: usize) -> usize {
    let (mc, kc, _) = block_bound(p, m, k, n);
    let (deep, _) = p.for_product(k, true);
    let (deep_mc, deep_kc, _) = block_bound(&deep, m, k, n);
    (mc * kc).max(deep_mc * deep_kc)
}

/// AVX-512F: 8×32 tile (16 zmm accumulators).
///
/// On the Intel Xeon the tables were first tuned on (L1d 48 KiB), 12×32,
/// 6×64 and 8×48 measured within noise of each other (`fastnn bench gemm
/// --best`, 1 thread, GFLOP/s on 128×3072×1024 NT / 128×1024×3072 NN /
/// 1024×128×3072 TN / 128×784×512 NT / 128×512×256 NT / 1024³; 12×32: 143 /
/// 143 / 173 / 152 / 155 / 185), and 12×32 was kept. On AMD Zen 4 (L1d
/// 32 KiB) 8×32 is ahead: its Ã micro-panel is 8×512×4 B = 16 KiB, half of
/// L1d, where 12×32's 24 KiB left only 8 KiB for the B̃ lines streaming
/// through; and m = 128 (the batch) is 16 micro-panels with no partial one.
/// `fastnn bench gemm --panels`, 1 thread, two alternating runs each, % of
/// the measured FMA peak, 12×32 → 8×32: 128×512×1024 NN 80-83 → 86-87;
/// 128×784×512 NT 87-88 → 93; 128×512×256 NT 86-87 → 93; 128×256×512 NN
/// 81-82 → 87; 784×128×512 TN 85 → 86-87; 1024³ 86-87 → 89; 128×3072×1024
/// NT and 3072×128×1024 TN within noise (82-87 both). Per k step 8×32 loads
/// 2 vectors and 8 broadcasts for 16 FMAs, within the load ports of either
/// CPU at one (Zen 4) or two (Xeon) 512-bit FMAs a cycle; 8×32 has not been
/// measured on the Xeon.
/// NC = 384 (B̃ 768 KiB, inside Zen 4's 1 MiB L2) and KC = 256 measured no
/// faster with 8×32 (KC = 256 slower on the NN shapes).
/// B̃ block 512×768×4 B = 1.5 MiB (L2); Ã block up to 1536×512×4 B = 3 MiB,
/// streamed one micro-panel at a time from L3 (LOOP 2), so it need not fit
/// L2.
///
/// A product whose B is read in place and which KC = 512 would split
/// along K (the forward's weights: W1's 3,072- and 1,024-deep layers,
/// W2's 784-deep one) takes its whole depth in one block, up to 4,096, and
/// visits its tiles down each column panel: the K×32 micro-panel of B then
/// comes from memory once, as one long stream, and serves the column's
/// other tiles from L2, and C is loaded and stored once instead of once
/// per KC block. MC is then 256 rows, so that the Ã block, which streams
/// from L3 once per column panel, stays near 3 MiB: 1024×3072×1024 NT with
/// the table's MC (one 12 MiB block) fell to 48–55 % of the peak, and with
/// MC = 64 the 128-row product lost 6–9 points to B read twice. `fastnn
/// bench gemm --panels`, alternating runs, % of the peak, KC = 256 (the
/// blocking before, measured against 512 on Zen 5: 75–76 → 80–81 % on two
/// threads) → whole depth: 128×3072×1024 NT one thread 78–79 → 86–88 %
/// (three pairs), two threads 81–85 → 90–92 %; 128×784×512 NT 88–91 →
/// 93 %; 512×3072×1024 NT 86 → 90–92 %; 1024×3072×1024 NT level (82–85
/// against 80–86); the products with K ≤ 512 level (Zen 5). In the
/// training step, the two blockings alternating step by step in one
/// process (W1, batch 128): forward 8–9 % faster on one thread, 3–9 % on
/// two; 10–12 % at batch 32, 4–6 % at batch 512; W2's forward 3–5 %. The
/// input gradients that follow ran 3–8 % slower (W1, 0.02–0.04 ms a step),
/// until the same order reached them:
///
/// The same order pays from 129 deep, where one KC block already holds
/// the whole depth: the input gradients' B (W's copy, 512 and 256 deep)
/// is then read from memory once, a column panel at a time, instead of
/// once per MR-row micro-panel of Ã from wherever the B̃ block (up to
/// 512×768 floats, more than Zen 5's 1 MiB L2) was left. Zen 5, the two
/// settings' calls alternating in one process, caches flushed between
/// calls (as the training step leaves them): 128×512×1024 NN 9–11 % faster
/// on one and two threads, 32×512×1024 NN 7 %, 512×512×1024 NN 3–5 %,
/// 128×256×512 NN 1–2 %; with warm caches 1–2 % faster or level. W1's
/// input gradients in the training step, against the forward's time in the
/// same runs: 5 % faster (three alternating runs of each).
pub(crate) const AVX512: Params = Params {
    mr: 8,
    nv: 2,
    nr: 32,
    mc: 1536,
    kc: 512,
    nc: 768,
    // Every product with B in place deeper than 128, W's copy in the
    // input gradients as well as the forward's weights.
    deep_in_place: Some(DeepInPlace {
        from_k: 129,
        mc: 256,
        kc: 4096,
    }),
};

/// AVX2+FMA: 6×16 tile (12 ymm accumulators).
/// Ã micro-panel 6×512×4 B = 12 KiB; B̃ block 512×768×4 B = 1.5 MiB (L2).
///
/// A product with B in place and K ≥ 1,024 (W1's forward) takes KC = 256
/// and goes down the column panels. On AMD Zen 3 (L1d 32 KiB, L2
/// 512 KiB), `fastnn bench gemm --panels`, one thread, the two tables'
/// samples interleaved in one process, % of the peak: 128×3072×1024 NT
/// 52 → 67, 46 → 54, 47 → 55 in three runs; the other training shapes
/// within the noise. KC = 128 or 192 there measured slower than 256
/// (46–50 against 52–54), and NC = 192, 256 or 384 (a B̃ block inside
/// Zen 3's L2) no faster than 768 on any training shape.
pub(crate) const AVX2: Params = Params {
    mr: 6,
    nv: 2,
    nr: 16,
    mc: 1536,
    kc: 512,
    nc: 768,
    deep_in_place: Some(DeepInPlace {
        from_k: 1024,
        mc: 1536,
        kc: 256,
    }),
};

/// Portable: 4×8 tile.
pub(crate) const SCALAR: Params = Params {
    mr: 4,
    nv: 1,
    nr: 8,
    mc: 256,
    kc: 256,
    nc: 512,
    deep_in_place: None,
};

/// Rows of the strip kernel's tile (`narrow.rs`, C at most 16 columns
/// wide), per family: one accumulator per row and vector of the strip,
/// with the strip's row in the registers left (A is broadcast from
/// memory). For AVX-512, 8, 12 and 16 rows measured within noise of each
/// other on the output layer's products (`fastnn bench gemm --panels`, one
/// thread, two runs each, GFLOP/s for 8 / 12 / 16 rows: 128×256×10 NT
/// 50-51 / 51-52 / 51; 256×128×10 TN 39-43 / 47 / 45; 512×512×10 NT 61 /
/// 61-62 / 61; 512×512×10 TN 59-61 / 59-62 / 60-60): 12, whose row
/// pointers fit the general registers (16 rows spill some to the stack).
pub(crate) const AVX512_NARROW_MR: usize = 12;
pub(crate) const AVX2_NARROW_MR: usize = 6;
pub(crate) const SCALAR_NARROW_MR: usize = 4;

/// The strip kernel takes every product whose C is at most 16 columns
/// wide and whose B or C is panelled (the step's), and the others from
/// this many rows on. Measured with `fastnn bench gemm --strategy ...`,
/// one thread, GFLOP/s:
///
/// - W in panels, strip / packed nest: m×784×10 NT (the forward, the
///   strip read in place) m = 1: 5.9 / 1.8, 4: 23.0 / 8.3, 8: 44.5 / 26.8,
///   16: 43.6 / 28.0, 32: 59.3 / 28.6, 128: 64.3 / 26.2; m×128×10 TN (the
///   weight gradient, B copied into the strip) m = 8: 16.4 / 11.1, 16:
///   22.3 / 15.0; 4×128×3 TN 2.4 / 1.8.
/// - Dense operands, strip (B copied) / no-pack path: m×784×10 NT m = 4:
///   8.7 / 47.6, 8: 17.3 / 43.1, 16: 22.8 / 50.1, 24: 36.6 / 48.8; 128×256×10
///   NT 51.3 / 43.5; 256×128×10 TN 46.4 / 1.9 (the no-pack path takes a
///   transposed A element by element); 128×10×16 NN 51.3 / 25.2. Below 16
///   rows the copy of B (k×16 floats) is not repaid; up to about 64 rows
///   the no-pack path's dot products stay ahead on the NT layout alone.
pub(crate) const NARROW_MIN_M: usize = 16;

/// Products of the strip kernel share their rows between threads only
/// from this many multiply-adds per thread (m·k·16 for C up to 16 columns
/// wide): below it, waking the second thread costs more than it saves.
pub(crate) const NARROW_THREAD_MIN_MKN: usize = 1 << 16;

/// Products with fewer multiply-adds (m·k·n) than this run single-threaded:
/// waking a second thread and packing Ã twice do not pay below it.
/// Measured (`fastnn bench gemm --trans NT --threads 1|2 --best`, AVX-512,
/// threshold disabled; the machine was shared, load ≈ 4.7, so ±20 %),
/// GFLOP/s on 1 / 2 threads:
///
/// ```text
/// 64×64×64     (0.26 M)  106 / 44      64×128×128   (1.0 M)  118 / 82
/// 96×96×96     (0.88 M)  134 / 164     128×128×128  (2.1 M)  136 / 103
/// 128×256×128  (4.2 M)    94 / 108     128×256×256  (8.4 M)  104 / 134
/// ```
pub(crate) const THREAD_MIN_MKN: usize = 1 << 22;

// Switch points of the no-pack path (`Strategy::small_wins`), measured with
// `fastnn bench gemm --strategy packed|small`, AVX-512, 1 thread, medians
// (GFLOP/s packed / no-pack; the machine was shared, load 2.6-3.8):
//
//   128×256×10 NT   22.7 / 40.2   -> no-pack     128×256×16 NT   42.5 / 53.4   -> no-pack
//   128×256×32 NT   74.5 / 49.5   -> packed      128×256×48 NT   79.2 / 46.5   -> packed
//   4×256×256 NN    32.6 / 79.0   -> no-pack     8×256×256 NN    65.0 / 57.3   -> packed
//   12×256×256 NN   70.9 / 56.0   -> packed      10×128×256 TN   51.0 / 39.6   -> packed
//   128×10×256 NN   65.1 / 60.4   -> packed      16×16×16 NN     11.1 / 27.8   -> no-pack
//   32×32×32 NN     30.9 / 43.5   -> no-pack     48×48×48 NN     78.5 / 62.1   -> packed

/// No-pack path when C has at most this many columns (the 10-class layer).
pub(crate) const SMALL_MAX_N: usize = 16;
/// No-pack path when C has at most this many rows.
pub(crate) const SMALL_MAX_M: usize = 4;
/// No-pack path when m·k·n is at most this.
pub(crate) const SMALL_MAX_MKN: usize = 32 * 32 * 32;

// A thread's share of the strip kernel's rows is whole tiles of every family.
const _: () = {
    use super::narrow::ROWS;
    assert!(
        ROWS.is_multiple_of(AVX512_NARROW_MR)
            && ROWS.is_multiple_of(AVX2_NARROW_MR)
            && ROWS.is_multiple_of(SCALAR_NARROW_MR)
    );
};

// NR = nv · LANES for every table (LANES: 16 for AVX-512, 8 for AVX2 and portable).
const _: () = {
    assert!(AVX512.nr == AVX512.nv * 16 && AVX2.nr == AVX2.nv * 8 && SCALAR.nr == SCALAR.nv * 8);
};

#[cfg(test)]
mod tests {
    use super::*;

    /// `block_bound` covers every smaller product: each step is at most the
    /// bound of its own dimension, and the bound never shrinks as the
    /// dimension grows. (The steps themselves do shrink: MC + 1 rows are
    /// two blocks of about MC/2.)
    #[test]
    fn block_bound_covers_every_smaller_product() {
        for p in [AVX512, AVX2, SCALAR] {
            let mut last = (0, 0, 0);
            for len in 1..=3 * p.mc.max(p.nc) + 7 {
                let steps = block_steps(&p, len, len, len);
                let bound = block_bound(&p, len, len, len);
                assert!(steps.0 <= bound.0 && steps.1 <= bound.1 && steps.2 <= bound.2);
                assert!(bound.0 >= last.0 && bound.1 >= last.1 && bound.2 >= last.2);
                last = bound;
            }
            let shrinks = block_steps(&p, p.mc + 1, 1, 1).0 < block_steps(&p, p.mc, 1, 1).0;
            assert!(shrinks, "the case the bound exists for");
        }
    }

    /// `a_block_bound` covers the Ã block of every smaller product, its B
    /// in place (deep products take their own MC and KC) or not.
    #[test]
    fn a_block_bound_covers_deep_products() {
        let ms = [1, 7, 128, 256, 257, 1024, 1537, 3100];
        let ks = [
            1, 128, 129, 512, 513, 784, 1023, 1024, 3072, 4096, 4097, 9000,
        ];
        for p in [AVX512, AVX2, SCALAR] {
            for &m in &ms {
                for &k in &ks {
                    let bound = a_block_bound(&p, m, k, 64);
                    for &mm in ms.iter().filter(|&&x| x <= m) {
                        for &kk in ks.iter().filter(|&&x| x <= k) {
                            for in_place in [false, true] {
                                let (table, _) = p.for_product(kk, in_place);
                                let (mc, kc, _) = block_steps(&table, mm, kk, 64);
                                assert!(mc * kc <= bound, "{p:?}: {mm}×{kk} in {m}×{k}");
                            }
                        }
                    }
                }
            }
        }
        let (w1_forward, deep) = AVX512.for_product(3072, true);
        assert!(deep && block_steps(&w1_forward, 128, 3072, 1024).1 == 3072);
    }

    /// On AVX-512 the input gradients' in-place B (W's copy, 256 and 512
    /// deep) takes the deep blocking as the forward's weights do; a B 128
    /// deep, or one that is packed, keeps the table.
    #[test]
    fn in_place_b_past_128_deep_goes_down_its_panels() {
        for k in [129, 256, 512, 784] {
            assert!(AVX512.for_product(k, true).1, "in place, K = {k}");
            assert!(!AVX512.for_product(k, false).1, "packed, K = {k}");
        }
        assert_eq!(AVX512.for_product(128, true), (AVX512, false));
        assert!(!AVX2.for_product(512, true).1 && AVX2.for_product(1024, true).1);
    }
}
