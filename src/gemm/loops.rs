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
//! Ã micro-panel, which therefore sits in L1 while B̃ streams. Where C is
//! in column panels (the weight gradients), loops 2 and 1 trade places, so
//! that the tiles, and a fused update's weights and moments, are visited
//! in the order they lie in memory (see `next`).
//!
//! Every element of C is summed in one fixed order (p = 0..K, KC blocks in
//! order, each block added to C as `α·ab + c`), whatever part of C a thread
//! owns: the result does not depend on the thread count.

use super::epilogue::Epi;
use super::kernels::{
    microkernel, prefetch_into, store_tile, Simd, IN_PLACE_B_AHEAD, PACKED_B_AHEAD,
};
use super::mat::{Panels, PANEL};
use super::pack::{add_column_sums, pack_a, pack_b, pack_b_row_panels};
use super::params::{block_steps, Params};
use super::workspace::PartWs;
use super::{MatMut, MatRef};
use crate::team::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    /// Panels of B: column panels are read in place (no B̃ is packed), row
    /// panels are packed a panel of depth at a time.
    pub bp: Panels,
    /// Panels of C (column panels: each tile lies in one).
    pub cp: Panels,
    pub epi: Epi,
}

// SAFETY: Args is sent to team threads only inside one GEMM call, whose
// caller guarantees the pointed-to data outlives the call; threads write
// disjoint parts of C (see `Args::part`).
unsafe impl Send for Args {}
unsafe impl Sync for Args {}

impl Args {
    /// The problem `C = epi(α·A·B + β·C)` on views (shapes already
    /// checked by the caller).
    pub fn of_views(
        alpha: f32,
        a: &MatRef<'_>,
        b: &MatRef<'_>,
        beta: f32,
        c: &mut MatMut<'_>,
        epi: Epi,
    ) -> Args {
        Args {
            m: a.rows(),
            k: a.cols(),
            n: b.cols(),
            alpha,
            a: a.as_ptr(),
            rsa: a.rs() as isize,
            csa: a.cs() as isize,
            b: b.as_ptr(),
            rsb: b.rs() as isize,
            csb: b.cs() as isize,
            beta,
            c: c.as_mut_ptr(),
            rsc: c.rs() as isize,
            csc: c.cs() as isize,
            bp: b.layout(),
            cp: c.layout(),
            epi,
        }
    }

    /// Element (p, j) of op(B).
    ///
    /// # Safety
    /// (p, j) lies inside B (or its panel padding).
    #[inline(always)]
    pub unsafe fn b_at(&self, p: usize, j: usize) -> *const f32 {
        self.b.offset(self.bp.offset(p, j, self.rsb, self.csb))
    }

    /// Element (i, j) of C.
    ///
    /// # Safety
    /// (i, j) lies inside C.
    #[inline(always)]
    pub unsafe fn c_at(&self, i: usize, j: usize) -> *mut f32 {
        self.c.offset(self.cp.offset(i, j, self.rsc, self.csc))
    }

    /// True when B or C has column panels: a split of N must then fall on
    /// panel boundaries.
    pub fn column_panels(&self) -> bool {
        matches!(self.bp, Panels::Cols(_)) || matches!(self.cp, Panels::Cols(_))
    }

    /// The sub-problem C[i0..i0+m, j0..j0+n] (all of K).
    ///
    /// # Safety
    /// The sub-block lies inside this problem; `j0` is a multiple of PANEL
    /// if B or C has column panels.
    pub unsafe fn part(&self, i0: usize, m: usize, j0: usize, n: usize) -> Args {
        debug_assert!(!self.column_panels() || j0.is_multiple_of(PANEL));
        Args {
            m,
            n,
            a: self.a.offset(i0 as isize * self.rsa),
            b: self.b_at(0, j0),
            c: self.c_at(i0, j0),
            epi: self.epi.at(i0, j0),
            ..*self
        }
    }
}

/// Ã packed once for all the parts of a product split along N: the parts
/// share M and K, so they walk the same (IC, PC) blocks and need the same
/// Ã. For each block, part t packs its share of the MR-row micro-panels
/// into one of two buffers, all meet at the barrier, then all compute from
/// the whole Ã. Consecutive blocks alternate buffers, so one barrier per
/// block is enough: a part packing block i + 2 into block i's buffer has
/// passed block i + 1's barrier, which every part reached after finishing
/// block i.
pub(crate) struct SharedA<'a> {
    /// The two Ã buffers, each at least MC×KC of this product's blocks.
    pub bufs: [*mut f32; 2],
    pub barrier: &'a Barrier,
    /// This part, of `parts`.
    pub part: usize,
    pub parts: usize,
    /// The columns of C the parts share out, see [`Chunks`]; None: each
    /// part runs the nest on its own columns.
    pub chunks: Option<Chunks<'a>>,
}

/// C's columns, dealt out to the parts that share Ã a chunk at a time.
///
/// The parts run the nest on the whole product, and for each (IC, PC)
/// block take chunks of `width` columns from one counter, as they come
/// free: a part slowed by the rest of the machine (another process on its
/// core, a busy memory bus) takes fewer, where a fixed half each made the
/// other wait. Ticket `t` is chunk `t % per_block` of block `t /
/// per_block`; a part that draws a ticket of a later block keeps it for
/// that block (blocks come in order, each behind the barrier of its Ã), so
/// every chunk of every block is computed once. Which part computes a
/// chunk changes no bit: each element of C is summed over K alone, in the
/// same order, and the bias gradient's columns in their rows' order.
///
/// Only products whose tiles go down C's column panels
/// ([`tiles_down_panels`]: every hidden layer's product in a training
/// step) are dealt out, a panel a chunk, and only where a panel is work
/// enough (`threads::deals_panels`): their Ã is read once per panel
/// whatever the chunk. Along Ã's micro-panels a narrow chunk would read Ã
/// once per chunk instead of once per NC block; those keep a part each.
#[derive(Clone, Copy)]
pub(crate) struct Chunks<'a> {
    pub tickets: &'a AtomicUsize,
    /// Columns per chunk: a multiple of NR, and of PANEL where B or C is
    /// in column panels.
    pub width: usize,
}

/// True when [`nest`] walks each block's tiles down C's column panels
/// rather than along Ã's micro-panels (the reasons are in `nest`): C in
/// column panels (a weight gradient), or B read in place as deep as
/// [`Params::deep_in_place`] says.
pub(crate) fn tiles_down_panels(args: &Args, p: &Params) -> bool {
    let in_place = matches!(args.bp, Panels::Cols(_));
    matches!(args.cp, Panels::Cols(_)) || p.for_product(args.k, in_place).1
}

/// Packs this part's share of block (ic, pc) of Ã into the block's shared
/// buffer, waits for the other parts, and returns the buffer.
///
/// # Safety
/// As `pack_a` for the block; the buffer protocol of [`SharedA`].
#[inline(always)]
unsafe fn pack_a_shared<S: Simd, const MR: usize>(
    args: &Args,
    shared: &SharedA<'_>,
    block: usize,
    (ic, mc): (usize, usize),
    (pc, kc): (usize, usize),
) -> *mut f32 {
    let buf = shared.bufs[block % 2];
    let panels = mc.div_ceil(MR);
    let per = panels.div_ceil(shared.parts);
    let first = (shared.part * per).min(panels) * MR;
    let last = ((shared.part + 1) * per * MR).min(mc);
    if first < last {
        let a = args
            .a
            .offset((ic + first) as isize * args.rsa + pc as isize * args.csa);
        pack_a::<S>(
            MR,
            last - first,
            kc,
            a,
            args.rsa,
            args.csa,
            buf.add(first * kc),
        );
    }
    shared.barrier.wait();
    buf
}

/// The cache lines a tile's store reads, to be asked for while the tile
/// before it computes: the first and last line of each row of the mr×nrv
/// C tile (read when β ≠ 0, on a later KC block, or by a fused update),
/// and on the last KC block those of a fused update's moments. Into L1 or
/// L2 as [`crate::cpu::prefetch_stores_into_l1`] says (with L1 on Zen 5,
/// W1's f32 weight gradients, two alternating runs each: 4.02–4.19 →
/// 3.94–4.00 ms on one thread, 2.16–2.23 → 2.12 on two).
///
/// The microkernel asks for them one every few k steps
/// ([`super::kernels::microkernel`]). Asked for all at once before the
/// tile, as before, W1's first weight gradient with its update
/// (3072×128×1024, calls alternating in one process, Zen 5) ran 4–5 %
/// slower on one thread (4.18–4.24 against 3.99–4.07 ms) and 9 % on two;
/// in the training step, alternating runs, the weight gradients are 1 %
/// faster against the forward's time, the forward level.
#[derive(Clone, Copy)]
struct StoreLines {
    /// Row 0 of the tile in C, m and v; the first `streams` are used.
    rows: [*const f32; 3],
    /// The distance between rows in each.
    rs: [isize; 3],
    streams: usize,
    mr: usize,
    nrv: usize,
    into_l1: bool,
}

impl StoreLines {
    /// The lines of the tile at (i, j); none where C's rows are not
    /// contiguous (`csc ≠ 1`).
    ///
    /// # Safety
    /// (i, j) lies inside C.
    #[inline(always)]
    unsafe fn of_tile(
        args: &Args,
        last: bool,
        (i, j, mr, nrv): (usize, usize, usize, usize),
        into_l1: bool,
    ) -> StoreLines {
        let mut lines = StoreLines {
            rows: [args.c_at(i, j) as *const f32; 3],
            rs: [args.rsc; 3],
            streams: (args.csc == 1) as usize,
            mr,
            nrv,
            into_l1,
        };
        if let (true, 1, Some(s)) = (last, lines.streams, &args.epi.step) {
            let at = s.offset(i, j);
            lines.rows[1] = s.m.offset(at);
            lines.rs[1] = s.offset(1, 0);
            if !s.v.is_null() {
                lines.rows[2] = s.v.offset(at);
                lines.rs[2] = s.offset(1, 0);
            }
            lines.streams = if s.v.is_null() { 2 } else { 3 };
        }
        lines
    }

    fn count(&self) -> usize {
        self.streams * self.mr * 2
    }

    /// Asks for line `q` (< `count()`): stream by stream, row by row, the
    /// first line of a row then its last.
    #[inline(always)]
    fn prefetch(&self, q: usize) {
        let (stream, row, last) = (q / (2 * self.mr), q / 2 % self.mr, q % 2);
        let p = self.rows[stream]
            .wrapping_offset(row as isize * self.rs[stream])
            .wrapping_add(last * (self.nrv - 1));
        prefetch_into(p, self.into_l1)
    }

    fn prefetch_all(&self) {
        for q in 0..self.count() {
            self.prefetch(q);
        }
    }
}

/// The tile after `(ti, tj)` of a block of `tiles` (rows, columns of
/// tiles): down the column (`down`) or along the row, then on to the next
/// column or row; None after the last.
#[inline(always)]
fn next(
    (ti, tj): (usize, usize),
    (rows, cols): (usize, usize),
    down: bool,
) -> Option<(usize, usize)> {
    let (ti, tj) = if down {
        if ti + 1 < rows {
            (ti + 1, tj)
        } else {
            (0, tj + 1)
        }
    } else if tj + 1 < cols {
        (ti, tj + 1)
    } else {
        (ti + 1, 0)
    };
    (ti < rows && tj < cols).then_some((ti, tj))
}

/// Runs the whole nest for `args` with kernel `S`, MR×(NV·LANES); with
/// `shared`, Ã is packed together with the product's other parts, and C's
/// columns may be taken from them a chunk at a time.
///
/// # Safety
/// `args` satisfies `gemm_raw`'s contract, m, n, k > 0; `ws` belongs to
/// this thread; the CPU supports `S`; with `shared`, every other part of
/// the product runs this nest at the same time on the same M and K, and
/// with chunks on the same `args` and counter.
#[inline(always)]
pub(crate) unsafe fn nest<S: Simd, const MR: usize, const NV: usize>(
    args: &Args,
    p: &Params,
    ws: &mut PartWs,
    shared: Option<&SharedA<'_>>,
) {
    let nr = NV * S::LANES;
    debug_assert!(p.mr == MR && p.nr == nr);
    let Args { m, k, n, .. } = *args;
    let in_place = matches!(args.bp, Panels::Cols(_));
    let (table, _) = p.for_product(k, in_place);
    let (mc_step, kc_step, nc_step) = block_steps(&table, m, k, n);
    let own_a = if shared.is_some() {
        0
    } else {
        mc_step * kc_step
    };
    // With chunks (whole multiples of NR), a B̃ block is never wider than
    // a chunk.
    let dealt = shared.and_then(|s| s.chunks);
    let nc_step = dealt.map_or(nc_step, |c| nc_step.min(c.width));
    let own_b = if in_place { 0 } else { kc_step * nc_step };
    let mut chunks = ChunkWalk::new(dealt, n);
    ws.reserve(own_a, own_b);
    let bpack = ws.b.as_mut_ptr();
    let tile = ws.tile.as_mut_ptr();
    let into_l1 = crate::cpu::prefetch_stores_into_l1();
    let b_ahead = if in_place {
        IN_PLACE_B_AHEAD
    } else {
        PACKED_B_AHEAD
    };
    let mut block = 0;

    // The order of a block's tiles. With C in column panels (a weight
    // gradient, whose fused update reads and writes the weights and their
    // moments in C's layout), down each panel: consecutive tiles are then
    // consecutive in memory, a stream the hardware prefetcher follows
    // (W1's weight gradients with the update, one thread: 10.3-10.5 →
    // 10.1-10.4 ms). Else along each MR-row micro-panel of Ã, which stays
    // in L1 while the micro-panels of B̃ stream from L2, except for an
    // in-place B as deep as `Params::deep_in_place` says (AVX-512: from
    // 129, the input gradients' too; AVX2: from 1,024): its micro-panel
    // then serves every tile of its column from L1 or L2, and is read from
    // memory once. (With the tables' MC, before the deep blocking, this
    // order measured 5-10 % slower on the input gradients.)
    let down_panels = tiles_down_panels(args, p);

    // A fused update's bias gradient, B's column sums (this part's
    // columns on): summed from each B̃ block of the first row block, by
    // the parts that hold C's first rows, so each column once.
    let bias_grad = match args.epi.step {
        Some(s) if !s.bias_grad.is_null() && s.at.0 == 0 && !in_place => {
            Some(s.bias_grad.add(s.at.1))
        }
        _ => None,
    };

    // LOOP 5 (IC): split M by MC.
    for ic in (0..m).step_by(mc_step) {
        let mc = mc_step.min(m - ic);
        // LOOP 4 (PC): split K by KC; pack Ã (mc×kc).
        for pc in (0..k).step_by(kc_step) {
            let kc = kc_step.min(k - pc);
            let beta = if pc == 0 { args.beta } else { 1.0 };
            let last = pc + kc == k;
            let apack = match shared {
                Some(s) => pack_a_shared::<S, MR>(args, s, block, (ic, mc), (pc, kc)),
                None => {
                    let a = args
                        .a
                        .offset(ic as isize * args.rsa + pc as isize * args.csa);
                    pack_a::<S>(MR, mc, kc, a, args.rsa, args.csa, ws.a.as_mut_ptr());
                    ws.a.as_mut_ptr()
                }
            };
            // LOOP 3 (JC): the columns, a chunk at a time (all of them
            // when this part has Ã to itself); each split by NC.
            let this_block = block;
            block += 1;
            while let Some(columns) = chunks.take(this_block) {
                // Pack B̃ (kc×nc), unless B is in column panels: those
                // are B̃ already, read in place.
                let end = columns.end;
                for jc in columns.step_by(nc_step) {
                    let nc = nc_step.min(end - jc);
                    match args.bp {
                        Panels::None => {
                            pack_b::<S>(nr, kc, nc, args.b_at(pc, jc), args.rsb, args.csb, bpack)
                        }
                        Panels::Rows(_) => pack_b_row_panels::<S>(nr, pc, kc, jc, nc, args, bpack),
                        Panels::Cols(_) => {}
                    }
                    if let (Some(sums), 0) = (bias_grad, ic) {
                        add_column_sums::<S>(nr, kc, nc, bpack, sums.add(jc), pc == 0);
                    }
                    // Micro-panel jr of B̃ and the distance between its rows.
                    let b_panel = |jr: usize| {
                        if in_place {
                            args.b_at(pc, jc + jr)
                        } else {
                            bpack.add(jr * kc) as *const f32
                        }
                    };
                    let ldb = if in_place { args.rsb as usize } else { nr };
                    // LOOPS 2 and 1: the MR×NR tiles of the block, in the
                    // order `next` gives.
                    let tiles = (mc.div_ceil(MR), nc.div_ceil(nr));
                    let tile_at = |(ti, tj): (usize, usize)| {
                        let (ir, jr) = (ti * MR, tj * nr);
                        (ic + ir, jc + jr, MR.min(mc - ir), nr.min(nc - jr))
                    };
                    // The C tile is read (β ≠ 0, a later KC block or a fused
                    // update) and written after the k loop, as are a fused
                    // update's moments: the microkernel asks for the next
                    // tile's lines while this one computes (and the first
                    // one's are asked for before it).
                    StoreLines::of_tile(args, last, tile_at((0, 0)), into_l1).prefetch_all();
                    let mut at = Some((0, 0));
                    while let Some(here) = at {
                        at = next(here, tiles, down_panels);
                        let ahead =
                            at.map(|t| StoreLines::of_tile(args, last, tile_at(t), into_l1));
                        let (i, j, mr, nrv) = tile_at(here);
                        let ap = apack.add((i - ic) * kc);
                        let cij = args.c_at(i, j);
                        let epi = if last { args.epi.at(i, j) } else { Epi::NONE };
                        let lines = ahead.map_or(0, |l| l.count());
                        let acc = microkernel::<S, MR, NV>(
                            kc,
                            ap,
                            b_panel(j - jc),
                            ldb,
                            b_ahead,
                            lines,
                            |q| {
                                if let Some(l) = &ahead {
                                    l.prefetch(q)
                                }
                            },
                        );
                        store_tile::<S, MR, NV>(
                            &acc, mr, nrv, args.alpha, beta, cij, args.rsc, args.csc, &epi, tile,
                        );
                    }
                }
            }
        }
    }
}

/// The runs of C's columns one part computes, block by block: chunks
/// drawn from the parts' counter ([`Chunks`]), or all columns at once.
struct ChunkWalk<'a> {
    chunks: Option<Chunks<'a>>,
    n: usize,
    per_block: usize,
    /// A ticket drawn for a later block than the one asked for.
    kept: Option<usize>,
    /// Without a counter: the block whose columns were given.
    given: Option<usize>,
}

impl<'a> ChunkWalk<'a> {
    fn new(chunks: Option<Chunks<'a>>, n: usize) -> ChunkWalk<'a> {
        ChunkWalk {
            chunks,
            n,
            per_block: chunks.map_or(1, |c| n.div_ceil(c.width)),
            kept: None,
            given: None,
        }
    }

    /// The next run of columns of block `block`, None when it has none
    /// left for this part.
    fn take(&mut self, block: usize) -> Option<std::ops::Range<usize>> {
        let Some(c) = self.chunks else {
            let first = self.given != Some(block);
            self.given = Some(block);
            return first.then_some(0..self.n);
        };
        let t = self
            .kept
            .take()
            .unwrap_or_else(|| c.tickets.fetch_add(1, Ordering::Relaxed));
        if t / self.per_block != block {
            debug_assert!(t / self.per_block > block, "a ticket of a block passed");
            self.kept = Some(t);
            return None;
        }
        let j0 = t % self.per_block * c.width;
        Some(j0..self.n.min(j0 + c.width))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parts drawing chunks in any interleaving, block after block (as the
    /// barrier of each block's Ã orders them), cover every column of every
    /// block once, whatever the chunk width and the number of parts; a
    /// part given no counter takes all columns once per block.
    #[test]
    fn chunks_cover_every_column_of_every_block_once() {
        let mut seed = 11u64;
        let mut pick = |below: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % below
        };
        for (n, width, parts, blocks) in [
            (1024, 128, 2, 2),
            (1000, 96, 3, 4),
            (40, 32, 3, 3),
            (32, 32, 4, 5),
            (8000, 992, 2, 1),
        ] {
            let tickets = AtomicUsize::new(0);
            let chunks = Chunks {
                tickets: &tickets,
                width,
            };
            let mut walks: Vec<_> = (0..parts)
                .map(|_| ChunkWalk::new(Some(chunks), n))
                .collect();
            for block in 0..blocks {
                let mut seen = vec![0u8; n];
                let mut done = vec![false; parts];
                while done.contains(&false) {
                    let p = pick(parts);
                    if done[p] {
                        continue;
                    }
                    match walks[p].take(block) {
                        Some(columns) => columns.for_each(|j| seen[j] += 1),
                        None => done[p] = true,
                    }
                }
                assert!(
                    seen.iter().all(|&s| s == 1),
                    "n {n}, width {width}, {parts} parts, block {block}: {seen:?}"
                );
            }
        }
        let mut alone = ChunkWalk::new(None, 77);
        for block in 0..3 {
            assert_eq!(alone.take(block), Some(0..77));
            assert_eq!(alone.take(block), None);
        }
    }
}
