//! AMX, the matrix engine of Sapphire Rapids and later Xeons: eight tile
//! registers of 16 rows × 64 bytes, and `tdpbf16ps`, which adds to a
//! 16×16 f32 tile the product of a 16×32 bf16 tile of A and a tile of B
//! holding 16 rows of 16 bf16 pairs. Those are exactly the layouts of the
//! bf16 products' packed operands ([`super::bf16`]): Ã's rows are runs of
//! pairs along k, B̃'s rows are pairs of k across NR = 32 columns, so tiles
//! load straight from them with a row stride, and nothing is repacked.
//!
//! One block is 32 rows × one B̃ panel (32 columns): four accumulator
//! tiles (tmm0–tmm3), two tiles of A (tmm4, tmm5) and two of B (tmm6,
//! tmm7). Each step of 16 pairs loads the four operand tiles and issues
//! four products:
//!
//! ```text
//!            B̃ panel: tmm6 (columns 0..16)  tmm7 (columns 16..32)
//! rows  0..16  tmm4 →      tmm0                  tmm1
//! rows 16..32  tmm5 →      tmm2                  tmm3
//! ```
//!
//! The tiles take the whole multiples of 16 pairs; the block is then
//! stored to memory, and the store of the bf16 products (vdpbf16ps, which
//! every AMX CPU has) adds the last `kp mod 16` pairs as it loads each
//! 8-row tile of the block into registers and sends it through the
//! epilogue or the optimiser's update. A tile configuration is then one
//! shape for every call, loaded once per thread.
//!
//! Stable Rust has no AMX intrinsics: the instructions are written out
//! with `asm!`, one instruction per [`TileUnit`] method. The same block
//! program also runs on [`TileModel`], a software model of the tile
//! registers with `tdpbf16ps`'s arithmetic, so that CPUs without AMX test
//! the program's addressing and its tails (the `amx-emulated` kernel).

use std::sync::OnceLock;

use super::bf16::{from_bf16, NR};

/// Rows of one AMX block (two tiles of A), and the multiple of rows Ã
/// is padded to for the AMX kernels.
pub const BLOCK_ROWS: usize = 32;
/// Pairs along k of one tile of A (16 words: 64 bytes a row).
pub const TILE_PAIRS: usize = 16;

/// A unit of eight tile registers of 16 rows × 64 bytes, configured as
/// such. The methods are unsafe: the caller guarantees the memory each
/// names (16 rows, `stride` bytes apart, 64 bytes each).
pub(crate) trait TileUnit {
    /// Makes the unit ready on this thread (the tile configuration).
    ///
    /// # Safety
    /// The CPU has the unit and the process may use it ([`amx_ready`]).
    unsafe fn prepare(&mut self);
    /// Zeroes tile `T`.
    unsafe fn zero<const T: u8>(&mut self);
    /// Tile `T` = 16 rows of 64 bytes from `src`, `stride` bytes apart.
    unsafe fn load<const T: u8>(&mut self, src: *const u32, stride: usize);
    /// Tile `C` (16×16 f32) += tile `A` (16 rows of 16 bf16 pairs along k)
    /// times tile `B` (16 pairs of k, each across 16 columns).
    unsafe fn dot<const C: u8, const A: u8, const B: u8>(&mut self);
    /// Tile `T` to 16 rows of 64 bytes at `dst`, `stride` bytes apart.
    unsafe fn store<const T: u8>(&mut self, dst: *mut f32, stride: usize);
}

/// 32 rows × 32 columns of f32 sums, one block.
#[repr(C, align(64))]
pub(crate) struct Block(pub [[f32; NR]; BLOCK_ROWS]);

impl Block {
    pub fn new() -> Block {
        Block([[0.0; NR]; BLOCK_ROWS])
    }
}

/// One block's sums over the first `whole` pairs (a multiple of 16):
/// rows 0..32 of Ã from `a` (each row a run of `kp` words) times the B̃
/// panel at `b` (`NR` words per pair), into `out`.
///
/// # Safety
/// `a` has 32 rows of at least `whole` words, `kp` words apart; `b` has
/// `whole·NR` words; the unit is prepared on this thread.
#[inline(always)]
pub(crate) unsafe fn block_sums<U: TileUnit>(
    unit: &mut U,
    a: *const u32,
    kp: usize,
    b: *const u32,
    whole: usize,
    out: &mut Block,
) {
    debug_assert_eq!(whole % TILE_PAIRS, 0);
    let (a_stride, b_stride) = (4 * kp, 4 * NR);
    unit.zero::<0>();
    unit.zero::<1>();
    unit.zero::<2>();
    unit.zero::<3>();
    for q in (0..whole).step_by(TILE_PAIRS) {
        unit.load::<4>(a.add(q), a_stride);
        unit.load::<5>(a.add(16 * kp + q), a_stride);
        unit.load::<6>(b.add(q * NR), b_stride);
        unit.load::<7>(b.add(q * NR + 16), b_stride);
        unit.dot::<0, 4, 6>();
        unit.dot::<1, 4, 7>();
        unit.dot::<2, 5, 6>();
        unit.dot::<3, 5, 7>();
    }
    let c = out.0.as_mut_ptr().cast::<f32>();
    let stride = 4 * NR;
    unit.store::<0>(c, stride);
    unit.store::<1>(c.add(16), stride);
    unit.store::<2>(c.add(16 * NR), stride);
    unit.store::<3>(c.add(16 * NR + 16), stride);
}

/// The hardware unit: each method one AMX instruction.
pub(crate) struct Amx;

#[cfg(target_arch = "x86_64")]
mod hardware {
    use super::{Amx, TileUnit};
    use std::arch::asm;
    use std::cell::Cell;

    /// Palette 1, every tile 16 rows of 64 bytes: bytes 16..32 hold
    /// each tile's bytes per row (u16), bytes 48..56 its rows.
    pub(super) const CONFIG: [u8; 64] = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        c
    };

    thread_local! {
        /// Whether this thread has loaded [`CONFIG`]. Nothing in fastnn
        /// loads another configuration or releases the tiles, so once is
        /// enough; the kernel saves and restores it with the thread.
        static CONFIGURED: Cell<bool> = const { Cell::new(false) };
    }

    impl TileUnit for Amx {
        unsafe fn prepare(&mut self) {
            if !CONFIGURED.get() {
                // SAFETY: CONFIG is 64 readable bytes; the caller
                // guarantees AMX and the permission to use it.
                asm!("ldtilecfg [{}]", in(reg) CONFIG.as_ptr(), options(nostack, readonly, preserves_flags));
                CONFIGURED.set(true);
            }
        }

        #[inline(always)]
        unsafe fn zero<const T: u8>(&mut self) {
            asm!("tilezero tmm{t}", t = const T, options(nomem, nostack, preserves_flags));
        }

        #[inline(always)]
        unsafe fn load<const T: u8>(&mut self, src: *const u32, stride: usize) {
            asm!(
                "tileloadd tmm{t}, [{src} + {stride}*1]",
                t = const T,
                src = in(reg) src,
                stride = in(reg) stride,
                options(nostack, readonly, preserves_flags)
            );
        }

        #[inline(always)]
        unsafe fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
            asm!(
                "tdpbf16ps tmm{c}, tmm{a}, tmm{b}",
                c = const C,
                a = const A,
                b = const B,
                options(nomem, nostack, preserves_flags)
            );
        }

        #[inline(always)]
        unsafe fn store<const T: u8>(&mut self, dst: *mut f32, stride: usize) {
            asm!(
                "tilestored [{dst} + {stride}*1], tmm{t}",
                t = const T,
                dst = in(reg) dst,
                stride = in(reg) stride,
                options(nostack, preserves_flags)
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl TileUnit for Amx {
    unsafe fn prepare(&mut self) {
        unreachable!("AMX is x86-64 only")
    }
    unsafe fn zero<const T: u8>(&mut self) {}
    unsafe fn load<const T: u8>(&mut self, _: *const u32, _: usize) {}
    unsafe fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {}
    unsafe fn store<const T: u8>(&mut self, _: *mut f32, _: usize) {}
}

/// A software model of the tile unit: eight tiles of 16 rows × 16 words,
/// and `tdpbf16ps` as Intel defines it, per row and column of C and per
/// pair, `c += a.lo·b.lo` then `c += a.hi·b.hi` in f32 (each product of
/// two bf16 values exact). The hardware also flushes denormals to zero;
/// the model does not, which the bounds of the tests allow for.
pub(crate) struct TileModel {
    tiles: [[[u32; 16]; 16]; 8],
}

impl TileModel {
    pub fn new() -> TileModel {
        TileModel {
            tiles: [[[0; 16]; 16]; 8],
        }
    }
}

impl TileUnit for TileModel {
    unsafe fn prepare(&mut self) {}

    unsafe fn zero<const T: u8>(&mut self) {
        self.tiles[T as usize] = [[0; 16]; 16];
    }

    unsafe fn load<const T: u8>(&mut self, src: *const u32, stride: usize) {
        for (r, row) in self.tiles[T as usize].iter_mut().enumerate() {
            let from = src.cast::<u8>().add(r * stride).cast::<u32>();
            for (c, w) in row.iter_mut().enumerate() {
                *w = from.add(c).read_unaligned();
            }
        }
    }

    unsafe fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
        let (a, b) = (self.tiles[A as usize], self.tiles[B as usize]);
        let (lo, hi) = (
            |w: u32| from_bf16(w as u16),
            |w: u32| from_bf16((w >> 16) as u16),
        );
        for (m, row) in self.tiles[C as usize].iter_mut().enumerate() {
            for (n, c) in row.iter_mut().enumerate() {
                let mut sum = f32::from_bits(*c);
                for k in 0..16 {
                    sum += lo(a[m][k]) * lo(b[k][n]);
                    sum += hi(a[m][k]) * hi(b[k][n]);
                }
                *c = sum.to_bits();
            }
        }
    }

    unsafe fn store<const T: u8>(&mut self, dst: *mut f32, stride: usize) {
        for (r, row) in self.tiles[T as usize].iter().enumerate() {
            let to = dst.cast::<u8>().add(r * stride).cast::<u32>();
            for (c, &w) in row.iter().enumerate() {
                to.add(c).write_unaligned(w);
            }
        }
    }
}

/// Whether this CPU has AMX's tiles and bf16 products, and AVX512-BF16
/// (the store's tail), and Linux lets this process use the tiles. Asked
/// once per process.
pub fn amx_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let f = crate::cpu::features();
        f.amx_tile && f.amx_bf16 && f.avx512bf16 && tile_data_permitted()
    })
}

/// Linux keeps the tile registers out of a process's saved state until
/// it asks for them (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`);
/// a tile instruction before that is an illegal instruction. Asks, then
/// reads the permission back.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn tile_data_permitted() -> bool {
    const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    let mut permitted: u64 = 0;
    // SAFETY: arch_prctl with these codes takes a feature number, or
    // writes one u64 through the pointer given.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
            && libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_GET_XCOMP_PERM,
                &mut permitted as *mut u64,
            ) == 0
            && permitted >> XFEATURE_XTILEDATA & 1 == 1
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn tile_data_permitted() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model's block against plain sums of the same words, with K
    /// tails and values whose order of addition does not matter (small
    /// integers: every sum exact).
    #[test]
    fn the_model_runs_the_block_program_as_sums_of_pairs() {
        let kp = 40;
        let whole = 32;
        let word = |x: f32, y: f32| (x.to_bits() >> 16) | (y.to_bits() & 0xFFFF_0000);
        let a: Vec<u32> = (0..BLOCK_ROWS * kp)
            .map(|i| word((i % 7) as f32 - 3.0, (i % 5) as f32))
            .collect();
        let b: Vec<u32> = (0..kp * NR)
            .map(|i| word((i % 3) as f32, (i % 11) as f32 - 5.0))
            .collect();
        let mut out = Block::new();
        let mut unit = TileModel::new();
        // SAFETY: a has 32 rows of kp ≥ whole words; b has kp·NR words.
        unsafe { block_sums(&mut unit, a.as_ptr(), kp, b.as_ptr(), whole, &mut out) };
        let (lo, hi) = (
            |w: u32| from_bf16(w as u16),
            |w: u32| from_bf16((w >> 16) as u16),
        );
        for r in 0..BLOCK_ROWS {
            for c in 0..NR {
                let want: f32 = (0..whole)
                    .map(|q| {
                        let (x, y) = (a[r * kp + q], b[q * NR + c]);
                        lo(x) * lo(y) + hi(x) * hi(y)
                    })
                    .sum();
                assert_eq!(out.0[r][c], want, "row {r}, column {c}");
            }
        }
    }

    #[test]
    fn the_tile_configuration_is_palette_1_with_16_rows_of_64_bytes() {
        #[cfg(target_arch = "x86_64")]
        {
            let c = super::hardware::CONFIG;
            assert_eq!(c[0], 1);
            for t in 0..8 {
                assert_eq!(u16::from_le_bytes([c[16 + 2 * t], c[17 + 2 * t]]), 64);
                assert_eq!(c[48 + t], 16);
            }
            assert!(c[1..16]
                .iter()
                .chain(&c[32..48])
                .chain(&c[56..])
                .all(|&b| b == 0));
        }
    }
}
