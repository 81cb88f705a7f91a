//! Mixed-precision products: `C = op(A)·op(B)` with A and B rounded to
//! bf16 (round to nearest even), every product of two bf16 values exact in
//! f32, and the sums in f32. This is the arithmetic of AVX512-BF16's
//! `vdpbf16ps` and AMX's `tdpbf16ps`, and what PyTorch's autocast means by
//! a bf16 matrix product.
//!
//! Both operands are packed as bf16 *pairs*: two consecutive `k` of one row
//! of A, or of one column of B, in one 32-bit word, low half first. That is
//! the unit `vdpbf16ps` works on: per 32-bit lane, `c += a.hi·b.hi` then
//! `c += a.lo·b.lo`.
//!
//! ```text
//! Ã: panels of MR rows    word [r][kp] = (A[r][2kp], A[r][2kp+1])   each row's pairs in a run
//! B̃: panels of NR columns word [kp][j] = (B[2kp][j], B[2kp+1][j])
//! C tile MR×NR += Σ_kp  broadcast(Ã[kp][r]) ⊙ B̃[kp][..]       (an odd K is padded with a zero)
//! ```
//!
//! A product's B may come packed already ([`gemm_bf16_packed`]: the
//! weights' bf16 copies, which the optimiser keeps in this layout); its
//! store runs the f32 kernels' epilogues, writes C dense or in the
//! weights' column panels, or applies the optimiser's rule to the weights
//! whose gradient the tile is ([`gemm_bf16_update`]). The team packs the
//! operands, each thread its share of the panels, then splits the tiles by
//! column panels.
//!
//! Three microkernels compute a tile (beside AMX's, in `amx.rs`):
//! AVX512-BF16 (`_mm512_dpbf16_ps`, two 16-lane accumulators per row); an
//! AVX-512 FMA one, for CPUs whose `vdpbf16ps` is slower than their FMA
//! units (Intel's: half the rate), which widens each pair to two f32 and
//! adds them by FMAs; and a portable one, which runs the same products and
//! additions in the same order with f32 arithmetic (the test twin, and the
//! kernel of every other CPU). The FMA kernel and the portable one give
//! the same bits. The hardware's `vdpbf16ps` flushes denormal inputs and
//! results to zero; the others do not, so they agree with it to the
//! rounding bound the tests use, not to the bit. On such a
//! CPU the packing of a row-major operand converts 16 or 32 values at a
//! time (`vcvtne2ps2bf16`, `vcvtneps2bf16`: the same rounding, with
//! denormal inputs read as zero).

use crate::buf::AlignedBuf;

use super::amx::{block_sums, Amx, Block, TileModel, TileUnit, BLOCK_ROWS, TILE_PAIRS};
use super::bf16_weights::CopyWriter;
use super::epilogue::{Epi, StepEpi};
use super::mat::{Panels, PANEL};
use super::{Epilogue, MatMut, MatRef};
use crate::optim::{Rule, WeightCopies};
use crate::team::{SharedMut, Team};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Rows of a C tile (and of an Ã panel).
pub const MR: usize = 8;
/// Columns of a C tile (and of a B̃ panel): two 16-lane vectors.
pub const NR: usize = 32;

/// `x` rounded to the nearest bf16 (ties to even), as its 16 bits. NaN stays
/// a (quiet) NaN; values beyond bf16's range round to infinity.
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    // Add just under half an ulp of bf16, plus the kept lowest bit: ties
    // round to the even neighbour, a carry moves into the exponent.
    let round = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// The f32 value of bf16 bits (exact).
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `x` rounded to bf16 and back.
pub fn round_bf16(x: f32) -> f32 {
    from_bf16(to_bf16(x))
}

/// Two bf16 values in one word, `lo` in the low half.
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

/// A bf16 microkernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// f32 arithmetic on bf16 values, any CPU.
    Portable,
    /// `vdpbf16ps` on 512-bit vectors (Zen 4, Cooper Lake, Sapphire Rapids).
    Avx512Bf16,
    /// `tdpbf16ps` on AMX tiles, 32×32 blocks (Sapphire Rapids and later),
    /// the last `kp mod 16` pairs by `vdpbf16ps` ([`super::amx`]).
    Amx,
    /// The AMX kernel's program on a software model of the tiles: slow,
    /// the test twin of [`Bf16Kernel::Amx`] on CPUs with AVX512-BF16 and
    /// no AMX. Never detected; chosen only by name.
    AmxEmulated,
    /// The pairs widened to f32 and summed by AVX-512F FMAs in
    /// `vdpbf16ps`'s order (high halves, then low): for CPUs whose
    /// `vdpbf16ps` is slower than their FMA units (Intel's, without AMX)
    /// or which lack AVX512-BF16. Its sums are the portable kernel's bits.
    Avx512Fma,
}

impl Bf16Kernel {
    pub const ALL: [Bf16Kernel; 5] = [
        Bf16Kernel::Portable,
        Bf16Kernel::Avx512Bf16,
        Bf16Kernel::Amx,
        Bf16Kernel::AmxEmulated,
        Bf16Kernel::Avx512Fma,
    ];

    /// The fastest kernel this CPU runs: AMX where the CPU has it, Linux
    /// grants its tiles and it gives the exact sums of [`amx_probe`]; else
    /// AVX512-BF16 where `vdpbf16ps` outruns the FMA units
    /// ([`dot_outruns_fma`]: Zen 4); else the FMA kernel on AVX-512F; else
    /// the portable kernel. Decided once per process.
    pub fn detect() -> Bf16Kernel {
        static DETECTED: std::sync::OnceLock<Bf16Kernel> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            if amx_probe() {
                Bf16Kernel::Amx
            } else if Bf16Kernel::Avx512Bf16.is_available() && dot_outruns_fma() {
                Bf16Kernel::Avx512Bf16
            } else if Bf16Kernel::Avx512Fma.is_available() {
                Bf16Kernel::Avx512Fma
            } else {
                Bf16Kernel::Portable
            }
        })
    }

    pub fn is_available(self) -> bool {
        match self {
            Bf16Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Avx512Bf16 | Bf16Kernel::AmxEmulated => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Bf16Kernel::Avx512Bf16 | Bf16Kernel::AmxEmulated => false,
            Bf16Kernel::Amx => super::amx::amx_ready(),
            Bf16Kernel::Avx512Fma => crate::cpu::Isa::Avx512.is_available(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Portable => "bf16-portable",
            Bf16Kernel::Avx512Bf16 => "avx512-bf16",
            Bf16Kernel::Amx => "amx-bf16",
            Bf16Kernel::AmxEmulated => "amx-emulated",
            Bf16Kernel::Avx512Fma => "avx512-fma",
        }
    }

    /// Whether the kernel runs its tile program ([`super::amx`]): Ã is
    /// then padded to whole blocks of 32 rows.
    fn on_tiles(self) -> bool {
        matches!(self, Bf16Kernel::Amx | Bf16Kernel::AmxEmulated)
    }

    /// Whether the kernel computes in software (the portable kernel and
    /// the tile model): correct everywhere, too slow for large tests.
    pub fn is_software(self) -> bool {
        matches!(self, Bf16Kernel::Portable | Bf16Kernel::AmxEmulated)
    }
}

/// What `--dry-run` says of AMX on this CPU.
pub fn amx_report() -> &'static str {
    let f = crate::cpu::features();
    if !(f.amx_tile && f.amx_bf16) {
        "no AMX on this CPU"
    } else if !Bf16Kernel::Amx.is_available() {
        "this CPU has AMX, but its tiles are not usable here: Linux refused them \
         (arch_prctl ARCH_REQ_XCOMP_PERM) or the CPU lacks AVX512-BF16"
    } else if !amx_probe() {
        "this CPU has AMX, but the amx-bf16 kernel gave wrong sums on its probe product"
    } else {
        "this CPU has AMX"
    }
}

/// Whether this CPU's `vdpbf16ps` does more flops a second than its f32
/// AVX-512 FMA (measured once, about 10 ms, one thread): twice on Zen 4,
/// half on Sapphire Rapids and its successors, whose bf16 speed is in
/// AMX. False without AVX512-BF16.
pub fn dot_outruns_fma() -> bool {
    super::bench::bf16_against_f32(crate::cpu::Isa::Avx512).is_some_and(|(bf16, f32)| bf16 > f32)
}

/// Whether the AMX kernel, on a CPU that has it, passes [`exact_on_probe`].
/// Run once, before [`Bf16Kernel::detect`] picks the kernel.
fn amx_probe() -> bool {
    static EXACT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *EXACT.get_or_init(|| Bf16Kernel::Amx.is_available() && exact_on_probe(Bf16Kernel::Amx))
}

/// The probe's i-th value: a multiple of 1/16 between −3 and 3, which
/// repeats every 97.
fn probe_value(i: usize) -> f32 {
    ((i * 37 % 97) as f32 - 48.0) / 16.0
}

/// Whether `kernel` gives the exact sums of a 40×70·70×40 product whose
/// values (multiples of 1/16 up to 3, exact in bf16) make every sum exact
/// in f32, whatever its order: for the tile kernels two blocks of rows,
/// the second partial, and two steps of 16 pairs on the tiles with three
/// pairs after them.
fn exact_on_probe(kernel: Bf16Kernel) -> bool {
    let (m, k, n) = (40, 70, 40);
    let a: Vec<f32> = (0..m * k).map(probe_value).collect();
    let b: Vec<f32> = (0..k * n).map(|i| probe_value(i + 11)).collect();
    let mut c = vec![f32::NAN; m * n];
    gemm_bf16(
        kernel,
        MatRef::row_major(&a, m, k),
        MatRef::row_major(&b, k, n),
        MatMut::row_major(&mut c, m, n),
        &mut Bf16Workspace::default(),
        None,
    );
    c.iter().enumerate().all(|(idx, &got)| {
        let (i, j) = (idx / n, idx % n);
        let want: f64 = (0..k)
            .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
            .sum();
        got as f64 == want
    })
}

/// The packed operands of bf16 products, reused from call to call.
#[derive(Default)]
pub struct Bf16Workspace {
    a: AlignedBuf<u32>,
    b: AlignedBuf<u32>,
    /// Ã widened to f32, two floats a word ([`widen`]), for
    /// [`Bf16Kernel::Avx512Fma`].
    a_wide: AlignedBuf<f32>,
}

impl Bf16Workspace {
    /// Reserves the packing buffers `kernel` needs for products up to
    /// m×k·k×n, so that no later product of that size allocates.
    pub fn reserve(&mut self, kernel: Bf16Kernel, m: usize, k: usize, n: usize) {
        // Rows padded for the AMX kernels' whole blocks.
        let a = packed_a_len(m.next_multiple_of(BLOCK_ROWS), k);
        if self.a.len() < a {
            self.a = AlignedBuf::zeroed(a);
        }
        if kernel == Bf16Kernel::Avx512Fma && self.a_wide.len() < 2 * a {
            self.a_wide = AlignedBuf::zeroed(2 * a);
        }
        let b = packed_b_len(k, n);
        if self.b.len() < b {
            self.b = AlignedBuf::zeroed(b);
        }
    }
}

/// Ã's words as f32 for [`Bf16Kernel::Avx512Fma`]: word i becomes floats
/// 2i (its high half) and 2i + 1 (its low half), so each row's run of
/// pairs becomes a run of twice as many floats, in the order the kernel
/// adds them. (A bf16 value is the high half of its f32: exact.)
fn widen(words: &[u32], wide: &mut [f32]) {
    for (&w, out) in words.iter().zip(wide.chunks_exact_mut(2)) {
        out[0] = f32::from_bits(w & 0xFFFF_0000);
        out[1] = f32::from_bits(w << 16);
    }
}

/// Word pairs along `k`.
pub fn pairs(k: usize) -> usize {
    k.div_ceil(2)
}

/// Words of a k×n operand in B̃'s layout: ⌈n/NR⌉ panels of ⌈k/2⌉·NR.
pub fn packed_b_len(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * pairs(k) * NR
}

/// A k×n operand already in B̃'s layout (NR-column panels, bf16 pairs
/// along k, word `[panel][kp][c]`), read in place by
/// [`gemm_bf16_packed`]: the network's weights, whose copies the optimiser
/// writes this way ([`super::bf16_weights`]).
#[derive(Clone, Copy, Debug)]
pub struct PackedB<'a> {
    words: &'a [u32],
    k: usize,
    n: usize,
}

impl<'a> PackedB<'a> {
    /// Panics unless `words` holds a packed k×n operand.
    pub fn new(words: &'a [u32], k: usize, n: usize) -> PackedB<'a> {
        let need = packed_b_len(k, n);
        assert!(
            words.len() >= need,
            "a packed bf16 {k}×{n} operand needs {need} words, {} given",
            words.len()
        );
        PackedB { words, k, n }
    }

    /// The words, `packed_b_len(k, n)` of them.
    pub fn words(&self) -> &'a [u32] {
        &self.words[..packed_b_len(self.k, self.n)]
    }
}

/// Element (i, j) of `m` by its layout, without the bounds check of
/// [`MatRef::at`]: the packing loops below stay inside the view.
#[inline(always)]
fn getter<'a>(m: &'a MatRef<'a>) -> impl Fn(usize, usize) -> f32 + 'a {
    let (ptr, layout) = (m.as_ptr(), m.layout());
    let (rs, cs, rows, cols) = (m.rs() as isize, m.cs() as isize, m.rows(), m.cols());
    move |i, j| {
        debug_assert!(i < rows && j < cols);
        // SAFETY: i < rows and j < cols (every caller checks), and the
        // view's constructor checked that each such element lies in its
        // data.
        unsafe { *ptr.offset(layout.offset(i, j, rs, cs)) }
    }
}

/// Words of Ã for an m×k A.
fn packed_a_len(m: usize, k: usize) -> usize {
    m.div_ceil(MR) * pairs(k) * MR
}

/// Packs Ã's panels `first..` of `a` (m×k) into `words` (whole panels of
/// MR rows, rows past `m` zero). A row-major A is converted a row at a
/// time (vectors where the CPU has AVX512-BF16); a column-major one (a
/// transposed view) down its columns, 16 rows (two panels) at a time
/// where the CPU has AVX512-BF16.
fn pack_a_panels(a: &MatRef<'_>, words: &mut [u32], first: usize) {
    let (m, k) = (a.rows(), a.cols());
    let kp = pairs(k);
    let get = getter(a);
    let at = |i: usize, p: usize| if i < m && p < k { get(i, p) } else { 0.0 };
    let dense_rows = a.cs() == 1 && a.layout() == Panels::None;
    let down_columns = a.rs() == 1 && a.layout() == Panels::None && !dense_rows;
    let vector = Bf16Kernel::Avx512Bf16.is_available();
    let word = |i: usize, q: usize| pair(at(i, 2 * q), at(i, 2 * q + 1));
    let mut panels = words.chunks_exact_mut(kp * MR).enumerate();
    while let Some((idx, words)) = panels.next() {
        let r0 = (first + idx) * MR;
        if down_columns && vector && r0 + 2 * MR <= m {
            if let Some((_, next)) = panels.next() {
                // SAFETY: rows r0..r0 + 16 exist and are contiguous in every
                // column (unit row stride); each panel holds kp·MR words;
                // the CPU has AVX512-BF16.
                let done = unsafe {
                    pack_two_panels_avx512bf16(a.as_ptr().add(r0), a.cs(), k, words, next)
                };
                let mut sixteen = [0u32; 2 * MR];
                for q in done..kp {
                    if 2 * q + 1 < k {
                        // SAFETY: rows r0..r0 + 16 of columns 2q and 2q + 1
                        // exist and are contiguous (unit row stride); the
                        // CPU has AVX512-BF16.
                        unsafe {
                            let lo = a.as_ptr().add(r0 + 2 * q * a.cs());
                            let hi = a.as_ptr().add(r0 + (2 * q + 1) * a.cs());
                            interleave_avx512bf16(lo, hi, &mut sixteen);
                        }
                    } else {
                        for (t, w) in sixteen.iter_mut().enumerate() {
                            *w = word(r0 + t, q);
                        }
                    }
                    for r in 0..MR {
                        words[r * kp + q] = sixteen[r];
                        next[r * kp + q] = sixteen[MR + r];
                    }
                }
                continue;
            }
        }
        if down_columns {
            for q in 0..kp {
                for r in 0..MR {
                    words[r * kp + q] = word(r0 + r, q);
                }
            }
            continue;
        }
        for (r, row) in words.chunks_exact_mut(kp).enumerate() {
            let i = r0 + r;
            if dense_rows && i < m {
                // SAFETY: row i of a view with unit column stride holds k
                // consecutive values, all inside its data.
                let values = unsafe { std::slice::from_raw_parts(a.as_ptr().add(i * a.rs()), k) };
                pack_pairs(values, row);
            } else {
                for (q, w) in row.iter_mut().enumerate() {
                    *w = word(i, q);
                }
            }
        }
    }
}

/// Two Ã panels (16 rows) of a column-major A: `col` points at A's
/// element (r0, 0), columns `cs` apart, each holding rows r0..r0 + 16
/// contiguously. Eight pairs of columns at a time are interleaved into
/// words, one vector of 16 rows' words per pair, and two 8×8 transposes
/// turn them into eight words of each row's run. Returns the pairs done
/// (a multiple of 8, every one complete); the caller packs the rest.
///
/// # Safety
/// Columns 0..k of rows r0..r0 + 16 are readable at `col`; `first` and
/// `second` hold `pairs(k)·MR` words; the CPU has AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx2")]
unsafe fn pack_two_panels_avx512bf16(
    col: *const f32,
    cs: usize,
    k: usize,
    first: &mut [u32],
    second: &mut [u32],
) -> usize {
    let kp = pairs(k);
    assert!(first.len() >= kp * MR && second.len() >= kp * MR);
    let mut block = [[0u32; 2 * MR]; 8];
    let mut q0 = 0;
    while q0 + 8 <= k / 2 {
        for (t, words) in block.iter_mut().enumerate() {
            let q = q0 + t;
            interleave_avx512bf16(col.add(2 * q * cs), col.add((2 * q + 1) * cs), words);
            // The next two panels read the next 64 bytes of these
            // columns, which are far apart (W1's activations: 12 KiB) and
            // read one line each per walk: ask for those lines in L2 now
            // (3072×128×1024 TN, one thread, four alternating pairs:
            // 199.0–203.4 → 204.0–207.1 GFLOP/s). A prefetch never
            // faults, past A's end too.
            super::kernels::prefetch_l2(col.wrapping_add(16 + 2 * q * cs));
            super::kernels::prefetch_l2(col.wrapping_add(16 + (2 * q + 1) * cs));
        }
        // Row r's words q0..q0 + 8 go to r·kp + q0: inside its run, as
        // q0 + 8 ≤ kp.
        let rows = block.as_ptr().cast::<f32>();
        super::kernels::transpose8_avx(rows, 16, first.as_mut_ptr().add(q0).cast(), kp);
        super::kernels::transpose8_avx(rows.add(MR), 16, second.as_mut_ptr().add(q0).cast(), kp);
        q0 += 8;
    }
    q0
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_two_panels_avx512bf16(
    _: *const f32,
    _: usize,
    _: usize,
    _: &mut [u32],
    _: &mut [u32],
) -> usize {
    unreachable!("AVX512-BF16 is x86-64 only")
}

/// `row[q] = (values[2q], values[2q + 1])` as bf16, an odd tail padded with
/// a zero.
fn pack_pairs(values: &[f32], row: &mut [u32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if Bf16Kernel::Avx512Bf16.is_available() {
        // SAFETY: the CPU has AVX-512F and AVX512-BF16.
        done = unsafe { pack_pairs_avx512bf16(values, row) };
    }
    for (q, w) in row.iter_mut().enumerate().skip(done) {
        let at = |p: usize| values.get(p).copied().unwrap_or(0.0);
        *w = pair(at(2 * q), at(2 * q + 1));
    }
}

/// The vector part of [`pack_pairs`]: 32 values into 16 words at a time.
/// Returns the words written.
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_pairs_avx512bf16(values: &[f32], row: &mut [u32]) -> usize {
    use std::arch::x86_64::*;
    let chunks = (values.len() / 32).min(row.len() / 16);
    for c in 0..chunks {
        // SAFETY: 32·(c + 1) ≤ values.len() and 16·(c + 1) ≤ row.len().
        let lo = _mm512_loadu_ps(values.as_ptr().add(32 * c));
        let hi = _mm512_loadu_ps(values.as_ptr().add(32 * c + 16));
        // The low 16 results come from the second operand: in order.
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(row.as_mut_ptr().add(16 * c).cast(), v);
    }
    16 * chunks
}

/// Packs `b` (k×n) into B̃, NR-column panels, columns past `n` zero.
pub fn pack_b(b: &MatRef<'_>, out: &mut AlignedBuf<u32>) {
    let len = packed_b_len(b.rows(), b.cols());
    if out.len() < len {
        *out = AlignedBuf::zeroed(len);
    }
    pack_b_panels(b, &mut out[..len], 0);
}

/// Packs B̃'s panels `first..` of `b` (k×n) into `words` (whole panels).
/// The loops run along whichever dimension B is contiguous in; a row-major
/// B is converted 16 columns at a time where the CPU has AVX512-BF16.
fn pack_b_panels(b: &MatRef<'_>, words: &mut [u32], first: usize) {
    let (k, n) = (b.rows(), b.cols());
    let kp = pairs(k);
    let get = getter(b);
    let at = |p: usize, j: usize| if j < n && p < k { get(p, j) } else { 0.0 };
    let along_rows = b.cs() == 1;
    let dense_rows = along_rows && b.layout() == Panels::None;
    let vector = dense_rows && Bf16Kernel::Avx512Bf16.is_available();
    for (idx, words) in words.chunks_exact_mut(kp * NR).enumerate() {
        let panel = first + idx;
        let word = |q: usize, c: usize| {
            let j = panel * NR + c;
            pair(at(2 * q, j), at(2 * q + 1, j))
        };
        if along_rows {
            for (q, col_words) in words.chunks_exact_mut(NR).enumerate() {
                for (half, w16) in col_words.chunks_exact_mut(16).enumerate() {
                    let j = panel * NR + 16 * half;
                    if vector && j + 16 <= n && 2 * q + 1 < k {
                        // SAFETY: rows 2q and 2q + 1 exist, columns j..j + 16
                        // are inside them (unit column stride), and the CPU
                        // has AVX512-BF16.
                        unsafe {
                            let lo = b.as_ptr().add(2 * q * b.rs() + j);
                            let hi = b.as_ptr().add((2 * q + 1) * b.rs() + j);
                            interleave_avx512bf16(lo, hi, w16);
                        }
                    } else {
                        for (c, w) in w16.iter_mut().enumerate() {
                            *w = word(q, 16 * half + c);
                        }
                    }
                }
            }
        } else {
            for c in 0..NR {
                for q in 0..kp {
                    words[q * NR + c] = word(q, c);
                }
            }
        }
    }
}

/// `out[c] = (lo[c], hi[c])` as bf16, for 16 columns.
///
/// # Safety
/// `lo` and `hi` point at 16 readable values each; the CPU has AVX-512F
/// and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn interleave_avx512bf16(lo: *const f32, hi: *const f32, out: &mut [u32]) {
    use std::arch::x86_64::*;
    assert_eq!(out.len(), 16);
    let lo: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(lo)));
    let hi: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(hi)));
    let words = _mm512_or_si512(
        _mm512_cvtepu16_epi32(lo),
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16),
    );
    _mm512_storeu_si512(out.as_mut_ptr().cast(), words);
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn interleave_avx512bf16(_: *const f32, _: *const f32, _: &mut [u32]) {
    unreachable!("AVX512-BF16 is x86-64 only")
}

/// One C tile: `Σ_kp Ã[kp][r]·B̃[kp][j]` over `kp` word pairs.
type Tile = [[f32; NR]; MR];

/// The portable tile: per pair, the high halves' product added first, then
/// the low halves', as `vdpbf16ps` orders them.
fn tile_portable(a: &[u32], b: &[u32], kp: usize, out: &mut Tile) {
    *out = [[0.0; NR]; MR];
    for q in 0..kp {
        let b = &b[q * NR..(q + 1) * NR];
        for (r, acc) in out.iter_mut().enumerate() {
            let w = a[r * kp + q];
            let (alo, ahi) = (from_bf16(w as u16), from_bf16((w >> 16) as u16));
            for (c, &v) in acc.iter_mut().zip(b) {
                let (blo, bhi) = (from_bf16(v as u16), from_bf16((v >> 16) as u16));
                *c += ahi * bhi;
                *c += alo * blo;
            }
        }
    }
}

/// The AVX512-BF16 tile: MR rows × two 16-lane accumulators, each step one
/// broadcast pair of Ã per row (each row's pairs a run of its own) against
/// two vectors of B̃.
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16; `a` holds `kp·MR` words and `b`
/// `kp·NR`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sums_avx512bf16(a: &[u32], b: &[u32], kp: usize) -> [[std::arch::x86_64::__m512; 2]; MR] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    add_sums_avx512bf16(&mut acc, a, b, kp, 0);
    acc
}

/// Adds to `acc` the tile's sums over pairs `from..kp` (the loop of
/// [`sums_avx512bf16`]).
///
/// # Safety
/// As [`sums_avx512bf16`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_sums_avx512bf16(
    acc: &mut [[std::arch::x86_64::__m512; 2]; MR],
    a: &[u32],
    b: &[u32],
    kp: usize,
    from: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= kp * MR && b.len() >= kp * NR);
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for q in from..kp {
        // SAFETY: q < kp, so both vectors of B̃ (at q·NR) and each row's
        // word of Ã (at r·kp + q) are within the slices (checked above in
        // debug builds, by the caller's packing in all).
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * NR).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * NR + 16).cast()));
        for (r, acc) in acc.iter_mut().enumerate() {
            let w: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * kp + q) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], w, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], w, b1);
        }
    }
}

/// One AVX512-BF16 tile, stored by the f32 AVX-512 kernels' store
/// ([`super::kernels::store_tile`]): from the registers through `epi` (a
/// bias, an activation, act', or the optimiser's rule) into the
/// `rows × cols` tile of C at `c` (strides `rs`, `cs`). Those are the
/// operations of [`finish`] and of `optim::update`, in the same order, so
/// the bits are the scalar store's. A partial tile goes through `scratch`.
///
/// # Safety
/// As [`sums_avx512bf16`]; C, `epi` and `scratch` as `store_tile` asks
/// (the tile lies inside C, `epi` is offset to its (0, 0), `scratch` holds
/// MR·NR floats).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
unsafe fn tile_avx512bf16(
    (a, b, kp): (&[u32], &[u32], usize),
    (rows, cols): (usize, usize),
    c: *mut f32,
    (rs, cs): (isize, isize),
    epi: &Epi,
    scratch: *mut f32,
) {
    let acc = sums_avx512bf16(a, b, kp);
    super::kernels::store_tile::<super::kernels::avx512::Avx512, MR, 2>(
        &acc, rows, cols, 1.0, 0.0, c, rs, cs, epi, scratch,
    );
}

/// The FMA kernel's sums of one tile: per pair, the high halves' products
/// added, then the low halves', as `vdpbf16ps` orders them, by FMAs on f32
/// values (exact products of two bf16 values, so the portable kernel's
/// bits). Ã comes widened (`a`, [`widen`]: a row's floats are broadcast
/// from memory); B̃'s words are widened in the registers, two operations
/// per vector shared by the tile's MR rows.
///
/// # Safety
/// The CPU has AVX-512F; `a` holds `2·kp·MR` floats and `b` `kp·NR` words.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sums_avx512fma(a: &[f32], b: &[u32], kp: usize) -> [[std::arch::x86_64::__m512; 2]; MR] {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= 2 * kp * MR && b.len() >= kp * NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let high = _mm512_set1_epi32(0xFFFF_0000_u32 as i32);
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for q in 0..kp {
        // SAFETY: q < kp, so both vectors of B̃ (at q·NR) and each row's
        // floats 2q, 2q + 1 (at r·2kp) are within the slices.
        let words = [
            _mm512_loadu_si512(b.add(q * NR).cast()),
            _mm512_loadu_si512(b.add(q * NR + 16).cast()),
        ];
        let hi = words.map(|w| _mm512_castsi512_ps(_mm512_and_si512(w, high)));
        let lo = words.map(|w| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w)));
        for (r, acc) in acc.iter_mut().enumerate() {
            let run = a.add(r * 2 * kp + 2 * q);
            let (ahi, alo) = (_mm512_set1_ps(*run), _mm512_set1_ps(*run.add(1)));
            for v in 0..2 {
                acc[v] = _mm512_fmadd_ps(ahi, hi[v], acc[v]);
                acc[v] = _mm512_fmadd_ps(alo, lo[v], acc[v]);
            }
        }
    }
    acc
}

/// The bytes of widened Ã the FMA kernel runs against each B̃ panel
/// before it moves to the next rows ([`TileRun::panels_fma`]).
const FMA_A_BLOCK: usize = 1 << 20;

/// What the store of a product does with each tile.
#[derive(Clone, Copy)]
enum Store<'e> {
    /// Each sum through an epilogue into C.
    Epilogue(Epilogue<'e>),
    /// C is a weight matrix in column panels and each sum the gradient of
    /// its weight: the optimiser's rule updates the weight and its moments
    /// in place, then the tile's rows of the weights' bf16 copies are
    /// written.
    Update {
        rule: Rule,
        /// The moments, in C's layout (`v` empty for SGD).
        m: &'e SharedMut<'e, f32>,
        v: &'e SharedMut<'e, f32>,
        copies: Option<&'e CopyWriter<'e>>,
    },
}

/// The B̃ panels one thread computes: a range of them, or those it takes
/// from a counter shared with the product's other threads as they come
/// free. Which thread computes a tile changes no bit: each is summed over
/// all of K by itself.
enum PanelSource<'a> {
    Range(std::ops::Range<usize>),
    Dealt {
        next: &'a AtomicUsize,
        panels: usize,
    },
}

impl PanelSource<'_> {
    /// The (block of Ã's rows, panel) pairs this thread computes, over
    /// `blocks` blocks: every panel of the range in each block, in order,
    /// or the pairs the counter hands out, block by block.
    fn units(&self, blocks: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let (first, per_block) = match self {
            PanelSource::Range(r) => (r.start, r.len()),
            PanelSource::Dealt { panels, .. } => (0, *panels),
        };
        let mut taken = 0;
        std::iter::from_fn(move || {
            let u = match self {
                PanelSource::Range(_) => {
                    taken += 1;
                    taken - 1
                }
                PanelSource::Dealt { next, .. } => next.fetch_add(1, Ordering::Relaxed),
            };
            (u < blocks * per_block).then(|| (u / per_block, first + u % per_block))
        })
    }
}

/// The tiles of one product, for [`TileRun::run`].
struct TileRun<'e> {
    kernel: Bf16Kernel,
    /// Ã widened ([`widen`]) for [`Bf16Kernel::Avx512Fma`], else empty.
    a_wide: &'e [f32],
    m: usize,
    n: usize,
    kp: usize,
    /// C's strides and layout.
    rs: isize,
    cs: isize,
    layout: Panels,
    store: Store<'e>,
}

impl TileRun<'_> {
    /// Every tile of the B̃ panels `panels` gives (all of C's rows), into C.
    fn run(&self, at: &[u32], bt: &[u32], dest: &Dest, panels: &PanelSource<'_>) {
        let (m, n, kp) = (self.m, self.n, self.kp);
        let mut tile: Tile = [[0.0; NR]; MR];
        let mut scratch: Tile = [[0.0; NR]; MR];
        // The tile kernels' block buffers (and the model's tiles): 8 KiB
        // each, zeroed only where they are used.
        let mut blocks = self.kernel.on_tiles().then(|| [Block::new(), Block::new()]);
        let mut model = (self.kernel == Bf16Kernel::AmxEmulated).then(TileModel::new);
        let vector = match self.kernel {
            Bf16Kernel::Portable => None,
            _ => self.vector_epi(),
        };
        if let (Bf16Kernel::Avx512Fma, Some(epi)) = (self.kernel, &vector) {
            // SAFETY: the kernel is available (the product asserts it) and
            // widened Ã; the panels' columns lie inside C and are this
            // part's alone.
            return unsafe { self.panels_fma(bt, panels, dest, epi, &mut scratch) };
        }
        for (_, jb) in panels.units(1) {
            let bp = &bt[jb * kp * NR..(jb + 1) * kp * NR];
            let (j0, cols) = (jb * NR, NR.min(n - jb * NR));
            if let Some(epi) = &vector {
                let columns = (j0, cols);
                // SAFETY: the kernel is available (the product asserts it;
                // the tile kernels' Ã has whole blocks of rows); columns
                // j0..j0 + cols lie inside C, and column panel jb is this
                // part's alone.
                unsafe {
                    match (self.kernel, model.as_mut(), blocks.as_mut()) {
                        (Bf16Kernel::Amx, _, Some(out)) => self.column_tiles(
                            &mut Amx,
                            at,
                            bp,
                            columns,
                            dest,
                            epi,
                            out,
                            &mut scratch,
                        ),
                        (Bf16Kernel::AmxEmulated, Some(unit), Some(out)) => {
                            self.column_tiles(unit, at, bp, columns, dest, epi, out, &mut scratch)
                        }
                        _ => self.column_vector(at, bp, columns, dest, epi, &mut scratch),
                    }
                }
                continue;
            }
            for ib in 0..m.div_ceil(MR) {
                if let Store::Update { m: mom, v, .. } = self.store {
                    self.prefetch_update(ib + 1, jb, dest, mom, v);
                }
                let ap = &at[ib * kp * MR..(ib + 1) * kp * MR];
                let (i0, rows) = (ib * MR, MR.min(m - ib * MR));
                let sums = (ap, bp, kp);
                match self.kernel {
                    // The FMA kernel's sums are the portable kernel's
                    // bits; this path (C or Z in row panels) is rare.
                    Bf16Kernel::Portable | Bf16Kernel::Avx512Fma => {
                        tile_portable(ap, bp, kp, &mut tile)
                    }
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above; the destination is the whole of
                    // `tile` (MR rows of NR, dense), `scratch` MR·NR floats.
                    // (Every CPU with AMX has AVX512-BF16.)
                    Bf16Kernel::Avx512Bf16 | Bf16Kernel::Amx | Bf16Kernel::AmxEmulated => unsafe {
                        tile_avx512bf16(
                            sums,
                            (MR, NR),
                            tile.as_mut_ptr().cast(),
                            (NR as isize, 1),
                            &Epi::NONE,
                            scratch.as_mut_ptr().cast(),
                        )
                    },
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => unreachable!("AVX512-BF16 and AMX are x86-64 only"),
                }
                // SAFETY (both arms): rows i0..i0 + rows and columns
                // j0..j0 + cols lie inside C, and column panel jb is this
                // part's alone.
                match self.store {
                    Store::Epilogue(e) => {
                        for (r, sums) in tile.iter().enumerate().take(rows) {
                            unsafe { self.store_row(i0 + r, j0, &sums[..cols], dest, e) };
                        }
                    }
                    Store::Update { rule, m, v, copies } => unsafe {
                        self.update_rows((i0, rows), (j0, cols), &tile, dest, (rule, m, v, copies))
                    },
                }
            }
        }
    }

    /// The raw epilogue an AVX512-BF16 tile is stored through: the
    /// product's epilogue, or for a fused update the optimiser's rule on
    /// the moments (in C's layout, column stride 1). None where C's or Z's
    /// elements are not at `i·rs + j·cs` from a tile's first (row panels):
    /// those tiles go through the scalar store.
    fn vector_epi(&self) -> Option<Epi> {
        match self.store {
            _ if matches!(self.layout, Panels::Rows(_)) => None,
            Store::Epilogue(Epilogue::ActGrad(z, _)) if z.layout() != Panels::None => None,
            Store::Epilogue(e) => Some(e.raw()),
            Store::Update { rule, m, v, .. } => Some(Epi {
                step: Some(StepEpi {
                    rule,
                    m: m.as_mut_ptr(),
                    v: if v.is_empty() {
                        std::ptr::null_mut()
                    } else {
                        v.as_mut_ptr()
                    },
                    rs: self.rs,
                    panels: self.layout,
                    // The bf16 copies are written by the update's own
                    // writer (`bf16_weights`).
                    copy: std::ptr::null_mut(),
                    copy_rs: 0,
                    copy_panels: Panels::None,
                    // The bf16 step sums its biases' gradients apart.
                    bias_grad: std::ptr::null_mut(),
                    at: (0, 0),
                }),
                ..Epi::NONE
            }),
        }
    }

    /// A fused update's moments and bf16 copies; None for an epilogue.
    #[allow(clippy::type_complexity)]
    fn update_state(
        &self,
    ) -> Option<(
        &SharedMut<'_, f32>,
        &SharedMut<'_, f32>,
        Option<&CopyWriter<'_>>,
    )> {
        match self.store {
            Store::Update { m, v, copies, .. } => Some((m, v, copies)),
            Store::Epilogue(_) => None,
        }
    }

    /// Every tile of one column panel (all of C's rows) by AVX512-BF16,
    /// stored through `epi` (from [`TileRun::vector_epi`]); after a fused
    /// update, each tile's rows of the weights' bf16 copies are written.
    /// The loop over the tiles is inside the function that has the target
    /// features, so that the sums and the store inline into it: a call per
    /// tile cost 5 % of a K = 128 product (its prologue and the tile's
    /// arguments through memory).
    ///
    /// # Safety
    /// The CPU has AVX512-BF16; `at` holds every Ã panel (kp·MR words
    /// each) and `bp` one B̃ panel (kp·NR words); columns j0..j0 + cols
    /// lie inside C and are this part's alone.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
    unsafe fn column_vector(
        &self,
        at: &[u32],
        bp: &[u32],
        (j0, cols): (usize, usize),
        dest: &Dest,
        epi: &Epi,
        scratch: &mut Tile,
    ) {
        let (m, kp) = (self.m, self.kp);
        let update = self.update_state();
        let copies = update.and_then(|(_, _, c)| c);
        for ib in 0..m.div_ceil(MR) {
            if let Some((mom, v, _)) = update {
                self.prefetch_update(ib + 1, j0 / NR, dest, mom, v);
            }
            let ap = &at[ib * kp * MR..(ib + 1) * kp * MR];
            let acc = sums_avx512bf16(ap, bp, kp);
            let rows = (ib * MR, MR.min(m - ib * MR));
            self.store_vector(&acc, rows, (j0, cols), dest, epi, scratch, copies);
        }
    }

    /// Every tile of the B̃ panels `panels` by the FMA kernel, stored as
    /// [`TileRun::column_vector`] stores them. Ã widened is twice the size
    /// of its words: where it outgrows [`FMA_A_BLOCK`] bytes (the weight
    /// gradients' Ã: W1's 3072 rows are 3 MiB), its rows go in blocks of
    /// that size, each against every panel, so that a block stays in L2
    /// while the panels stream past it.
    ///
    /// # Safety
    /// As [`TileRun::column_vector`], with the CPU having AVX-512F and
    /// `self.a_wide` holding every widened Ã panel (2·kp·MR floats each).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn panels_fma(
        &self,
        bt: &[u32],
        panels: &PanelSource<'_>,
        dest: &Dest,
        epi: &Epi,
        scratch: &mut Tile,
    ) {
        let (m, n, kp) = (self.m, self.n, self.kp);
        let update = self.update_state();
        let copies = update.and_then(|(_, _, c)| c);
        let row_panels = m.div_ceil(MR);
        let wide_panel = 2 * kp * MR;
        let block = (FMA_A_BLOCK / (wide_panel * 4)).max(1);
        // Block by block of Ã's rows, each against every panel.
        let mut units = panels.units(row_panels.div_ceil(block)).peekable();
        while let Some((rb, jb)) = units.next() {
            let (first, last) = (rb * block, row_panels.min((rb + 1) * block));
            let bp = &bt[jb * kp * NR..(jb + 1) * kp * NR];
            let (j0, cols) = (jb * NR, NR.min(n - jb * NR));
            for ib in first..last {
                if let Some((mom, v, _)) = update {
                    // The next tile: down this panel, else the first of
                    // this thread's next unit.
                    let next = if ib + 1 < last {
                        Some((ib + 1, jb))
                    } else {
                        units.peek().map(|&(rb, jb)| (rb * block, jb))
                    };
                    if let Some((ni, nj)) = next {
                        self.prefetch_update(ni, nj, dest, mom, v);
                    }
                }
                let wide = &self.a_wide[ib * wide_panel..(ib + 1) * wide_panel];
                let acc = sums_avx512fma(wide, bp, kp);
                let rows = (ib * MR, MR.min(m - ib * MR));
                self.store_vector(&acc, rows, (j0, cols), dest, epi, scratch, copies);
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn panels_fma(&self, _: &[u32], _: &PanelSource<'_>, _: &Dest, _: &Epi, _: &mut Tile) {
        unreachable!("AVX-512 is x86-64 only")
    }

    /// One tile's sums `acc` (rows i0..i0 + rows, columns j0..j0 + cols of
    /// C) stored through `epi`; after a fused update, the tile's rows of
    /// the weights' bf16 copies written.
    ///
    /// # Safety
    /// As [`TileRun::column_vector`].
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn store_vector(
        &self,
        acc: &[[std::arch::x86_64::__m512; 2]; MR],
        (i0, rows): (usize, usize),
        (j0, cols): (usize, usize),
        dest: &Dest,
        epi: &Epi,
        scratch: &mut Tile,
        copies: Option<&CopyWriter<'_>>,
    ) {
        // A tile is one column panel wide, so from its first element
        // (i, j) is `i·rs + j·cs` away whether C is dense or in column
        // panels.
        let first = self.layout.offset(i0, j0, self.rs, self.cs);
        super::kernels::store_tile::<super::kernels::avx512::Avx512, MR, 2>(
            acc,
            rows,
            cols,
            1.0,
            0.0,
            dest.0.offset(first),
            self.rs,
            self.cs,
            &epi.at(i0, j0),
            scratch.as_mut_ptr().cast(),
        );
        if let Some(copies) = copies {
            // The tile's rows of one panel are consecutive, PANEL apart.
            copies.write(first as usize, dest.slice(first, rows * PANEL));
        }
    }

    /// Every tile of one column panel on the tile unit `unit`: per block
    /// of 32 rows, the sums over whole steps of 16 pairs on the tiles
    /// ([`block_sums`], into one of `blocks` while the other's rows are
    /// stored), then per 8 rows of it the last pairs by `vdpbf16ps` and
    /// the store of [`TileRun::column_vector`].
    ///
    /// # Safety
    /// As [`TileRun::column_vector`], with Ã padded to whole blocks of
    /// 32 rows; where `unit` is the hardware, the CPU has AMX and Linux
    /// granted its tiles ([`super::amx::amx_ready`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn column_tiles<U: TileUnit>(
        &self,
        unit: &mut U,
        at: &[u32],
        bp: &[u32],
        (j0, cols): (usize, usize),
        dest: &Dest,
        epi: &Epi,
        blocks: &mut [Block; 2],
        scratch: &mut Tile,
    ) {
        use std::arch::x86_64::*;
        let (m, kp) = (self.m, self.kp);
        let whole = kp - kp % TILE_PAIRS;
        let update = self.update_state();
        let copies = update.and_then(|(_, _, c)| c);
        assert!(at.len() >= m.next_multiple_of(BLOCK_ROWS) * kp && bp.len() >= kp * NR);
        if m == 0 {
            return;
        }
        unit.prepare();
        // SAFETY (both calls): rows i0..i0 + 32 of Ã exist (asserted), each
        // a run of kp ≥ whole words; the panel holds kp·NR words.
        let sums = |unit: &mut U, i0: usize, out: &mut Block| {
            block_sums(unit, at.as_ptr().add(i0 * kp), kp, bp.as_ptr(), whole, out)
        };
        sums(unit, 0, &mut blocks[0]);
        for (n, i0) in (0..m).step_by(BLOCK_ROWS).enumerate() {
            // The next block's products are issued before this block's
            // store: the tile unit works through them while the vector
            // units store (two buffers, so neither waits for the other).
            let [this, next] = blocks;
            let (this, next) = if n % 2 == 0 {
                (this, next)
            } else {
                (next, this)
            };
            if i0 + BLOCK_ROWS < m {
                sums(unit, i0 + BLOCK_ROWS, next);
            }
            for (g, rows) in this.0.chunks_exact(MR).enumerate() {
                let i = i0 + g * MR;
                if i >= m {
                    break;
                }
                if let Some((mom, v, _)) = update {
                    self.prefetch_update(i / MR + 1, j0 / NR, dest, mom, v);
                }
                let mut acc = [[_mm512_setzero_ps(); 2]; MR];
                for (acc, row) in acc.iter_mut().zip(rows) {
                    acc[0] = _mm512_loadu_ps(row.as_ptr());
                    acc[1] = _mm512_loadu_ps(row.as_ptr().add(16));
                }
                add_sums_avx512bf16(&mut acc, &at[i * kp..(i + MR) * kp], bp, kp, whole);
                let rows = (i, MR.min(m - i));
                self.store_vector(&acc, rows, (j0, cols), dest, epi, scratch, copies);
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[allow(clippy::too_many_arguments)]
    unsafe fn column_tiles<U: TileUnit>(
        &self,
        _: &mut U,
        _: &[u32],
        _: &[u32],
        _: (usize, usize),
        _: &Dest,
        _: &Epi,
        _: &mut [Block; 2],
        _: &mut Tile,
    ) {
        unreachable!("AMX is x86-64 only")
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn column_vector(
        &self,
        _: &[u32],
        _: &[u32],
        _: (usize, usize),
        _: &Dest,
        _: &Epi,
        _: &mut Tile,
    ) {
        unreachable!("AVX512-BF16 is x86-64 only")
    }

    /// Asks for tile (ib, jb)'s weights and moments in the cache while the
    /// current tile computes: the fused update's memory traffic (each
    /// weight and moment is read and written once a step) then overlaps
    /// the products. Into L1 where that pays
    /// ([`crate::cpu::prefetch_stores_into_l1`]: on Zen 5, W1's bf16
    /// weight gradients, `bench train --phases`, two alternating runs
    /// each, took 2.61–2.77 ms on one thread and 1.42–1.53 ms on two with
    /// L2, 2.45–2.50 and 1.29–1.37 with L1), else into L2. Nothing past
    /// C's rows.
    fn prefetch_update(
        &self,
        ib: usize,
        jb: usize,
        dest: &Dest,
        m: &SharedMut<'_, f32>,
        v: &SharedMut<'_, f32>,
    ) {
        if ib * MR >= self.m {
            return;
        }
        let rows = MR.min(self.m - ib * MR);
        let first = self.layout.offset(ib * MR, jb * NR, self.rs, self.cs) as usize;
        // The tile's rows of one panel are consecutive: rows·PANEL floats,
        // one prefetch per 64-byte line.
        for line in (0..rows * PANEL).step_by(16) {
            let at = first + line;
            super::kernels::prefetch_for_store(dest.0.wrapping_add(at));
            super::kernels::prefetch_for_store(m.addr(at));
            if !v.is_empty() {
                super::kernels::prefetch_for_store(v.addr(at));
            }
        }
    }

    /// Row i's sums `sums` from column j0 on, through the epilogue, in
    /// the order of the f32 kernels' store (see [`super::epilogue`]): as
    /// one run where C's row is contiguous there (dense rows, or column
    /// panels: a tile is one panel wide), else element by element.
    ///
    /// # Safety
    /// The elements lie inside C and are this part's alone.
    unsafe fn store_row(&self, i: usize, j0: usize, sums: &[f32], dest: &Dest, e: Epilogue<'_>) {
        let at = self.layout.offset(i, j0, self.rs, self.cs);
        if self.cs != 1 || matches!(self.layout, Panels::Rows(_)) {
            for (c, &v) in sums.iter().enumerate() {
                let at = self.layout.offset(i, j0 + c, self.rs, self.cs);
                dest.slice(at, 1)[0] = finish(e, i, j0 + c, v);
            }
            return;
        }
        let out = dest.slice(at, sums.len());
        match e {
            Epilogue::None => out.copy_from_slice(sums),
            Epilogue::Bias(b) => {
                let b = &b[j0..j0 + sums.len()];
                for ((o, &v), &b) in out.iter_mut().zip(sums).zip(b) {
                    *o = v + b;
                }
            }
            Epilogue::BiasAct(b, act) => {
                let b = &b[j0..j0 + sums.len()];
                for ((o, &v), &b) in out.iter_mut().zip(sums).zip(b) {
                    *o = act.apply(v + b);
                }
            }
            Epilogue::ActGrad(z, act) if z.cs() == 1 && z.layout() == Panels::None => {
                // Row i of Z from column j0, inside Z's view (checked by
                // `at`), as one run.
                let _ = z.at(i, j0 + sums.len() - 1);
                let z = std::slice::from_raw_parts(z.as_ptr().add(i * z.rs() + j0), sums.len());
                for ((o, &v), &z) in out.iter_mut().zip(sums).zip(z) {
                    *o = act.scale_by_grad(z, v);
                }
            }
            _ => {
                for (c, (o, &v)) in out.iter_mut().zip(sums).enumerate() {
                    *o = finish(e, i, j0 + c, v);
                }
            }
        }
    }

    /// A tile of weight gradients (rows i0.., columns j0.. of C, the
    /// weights' panels) applied by the rule to the weights and their
    /// moments, then the tile's rows of the bf16 copies written.
    ///
    /// # Safety
    /// As [`TileRun::store_row`]; C is in column panels (asserted by the
    /// product).
    unsafe fn update_rows(
        &self,
        (i0, rows): (usize, usize),
        (j0, cols): (usize, usize),
        tile: &Tile,
        dest: &Dest,
        (rule, m, v, copies): (
            Rule,
            &SharedMut<'_, f32>,
            &SharedMut<'_, f32>,
            Option<&CopyWriter<'_>>,
        ),
    ) {
        let second = rule.has_second_moment();
        let update = |at: isize, grad: &[f32]| {
            let range = at as usize..at as usize + grad.len();
            let v = if second {
                v.piece(range.clone())
            } else {
                &mut []
            };
            crate::optim::update(rule, dest.slice(at, grad.len()), grad, m.piece(range), v);
        };
        let first = self.layout.offset(i0, j0, self.rs, self.cs);
        if cols == PANEL {
            // A whole panel's rows are consecutive, as are the tile's: one
            // run of rows·PANEL weights.
            update(first, &tile.as_flattened()[..rows * PANEL]);
        } else {
            for (r, grad) in tile.iter().enumerate().take(rows) {
                update(first + (r * PANEL) as isize, &grad[..cols]);
            }
        }
        if let Some(copies) = copies {
            // The tile's rows of one panel are consecutive, PANEL apart.
            copies.write(first as usize, dest.slice(first, rows * PANEL));
        }
    }
}

/// Element (i, j)'s sum `v` through the epilogue, in the order of the f32
/// kernels' store (see [`super::epilogue`]).
#[inline(always)]
fn finish(e: Epilogue<'_>, i: usize, j: usize, v: f32) -> f32 {
    match e {
        Epilogue::None => v,
        Epilogue::Bias(b) => v + b[j],
        Epilogue::Act(a) => a.apply(v),
        Epilogue::BiasAct(b, a) => a.apply(v + b[j]),
        Epilogue::ActGrad(z, a) => a.scale_by_grad(z.at(i, j), v),
    }
}

/// C's data, written by the parts of one product in disjoint column
/// panels.
struct Dest(*mut f32);

impl Dest {
    /// `len` elements of C from element `at`.
    ///
    /// # Safety
    /// They lie inside C, and no other part uses them while the slice
    /// lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, at: isize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.offset(at), len)
    }
}
// SAFETY: each part writes only the columns of its own B̃ panels, and the
// product waits for every part before it returns.
unsafe impl Sync for Dest {}
unsafe impl Send for Dest {}

/// `C = op(A)·op(B)` in bf16 with f32 accumulation (C is overwritten).
/// The team packs both operands, then computes the tiles as
/// [`gemm_bf16_packed`] does.
pub fn gemm_bf16(
    kernel: Bf16Kernel,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    ws: &mut Bf16Workspace,
    team: Option<&mut Team>,
) {
    let b = Operand::Pack(b, &mut ws.b);
    product(
        kernel,
        a,
        b,
        c,
        Store::Epilogue(Epilogue::None),
        (&mut ws.a, &mut ws.a_wide),
        team,
    );
}

/// `C = epilogue(op(A)·B̃)` in bf16 with f32 accumulation, B already packed
/// (C, dense or in column panels, is overwritten). The team packs A, then
/// the tiles split across it by B̃ panels (columns of C), so every element
/// is summed in one order and the bits do not depend on the thread count.
pub fn gemm_bf16_packed(
    kernel: Bf16Kernel,
    a: MatRef<'_>,
    b: PackedB<'_>,
    c: MatMut<'_>,
    epilogue: Epilogue<'_>,
    ws: &mut Bf16Workspace,
    team: Option<&mut Team>,
) {
    epilogue.check(a.rows(), b.n);
    let b = Operand::Packed(b);
    let bufs = (&mut ws.a, &mut ws.a_wide);
    product(kernel, a, b, c, Store::Epilogue(epilogue), bufs, team);
}

/// A weight-gradient product that updates the weights: with `w` a weight
/// matrix in column panels, `G = op(A)·op(B)` in bf16 (f32 sums) is its
/// gradient, and each tile of G goes straight from the kernel into `rule`'s
/// update of its weights and moments `m`, `v` (in `w`'s layout; `v` empty
/// for SGD), then into the weights' bf16 copies, if any: G never reaches
/// memory. The bits of [`gemm_bf16`] into a gradient followed by the
/// optimiser's pass.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_update(
    kernel: Bf16Kernel,
    a: MatRef<'_>,
    b: MatRef<'_>,
    w: MatMut<'_>,
    m: &mut [f32],
    v: &mut [f32],
    rule: Rule,
    copies: Option<&CopyWriter<'_>>,
    ws: &mut Bf16Workspace,
    team: Option<&mut Team>,
) {
    assert!(
        matches!(w.layout(), Panels::Cols(_)),
        "a fused update needs the weights in column panels"
    );
    assert_eq!(m.len(), w.len(), "first moments of another length");
    assert!(
        v.len() == if rule.has_second_moment() { w.len() } else { 0 },
        "second moments of another length"
    );
    let b = Operand::Pack(b, &mut ws.b);
    let (m, v) = (SharedMut::new(m), SharedMut::new(v));
    let store = Store::Update {
        rule,
        m: &m,
        v: &v,
        copies,
    };
    product(kernel, a, b, w, store, (&mut ws.a, &mut ws.a_wide), team);
}

/// B of a product: packed already, or to be packed into a buffer.
enum Operand<'b, 'w> {
    Packed(PackedB<'b>),
    Pack(MatRef<'b>, &'w mut AlignedBuf<u32>),
}

/// The product of [`gemm_bf16`], [`gemm_bf16_packed`] and
/// [`gemm_bf16_update`], with A's packing buffers `a_buf` (and `wide`,
/// for the FMA kernel's widened Ã). The team packs A (and B if it comes
/// unpacked) first, each thread its share of the panels, then computes
/// C's tiles split by column panels.
fn product(
    kernel: Bf16Kernel,
    a: MatRef<'_>,
    b: Operand<'_, '_>,
    mut c: MatMut<'_>,
    store: Store<'_>,
    (a_buf, wide): (&mut AlignedBuf<u32>, &mut AlignedBuf<f32>),
    mut team: Option<&mut Team>,
) {
    let (m, k) = (a.rows(), a.cols());
    let n = match &b {
        Operand::Packed(p) => {
            assert_eq!(p.k, k, "inner dimensions");
            p.n
        }
        Operand::Pack(v, _) => {
            assert_eq!(v.rows(), k, "inner dimensions");
            v.cols()
        }
    };
    assert_eq!((c.rows(), c.cols()), (m, n), "C's shape");
    assert!(
        kernel.is_available(),
        "{} is not supported by this CPU",
        kernel.name()
    );
    // (A layer has at least one input and a batch one sample.)
    assert!(k > 0, "a bf16 product needs K ≥ 1");
    let kp = pairs(k);
    // The tile kernels read Ã in whole blocks of rows (zero past m).
    let rows = if kernel.on_tiles() {
        m.next_multiple_of(BLOCK_ROWS)
    } else {
        m
    };
    let a_len = packed_a_len(rows, k);
    if a_buf.len() < a_len {
        *a_buf = AlignedBuf::zeroed(a_len);
    }
    // The team packs A's panels (and B̃'s, if B comes unpacked), each
    // thread its share.
    let threads = team.as_ref().map_or(1, |t| t.threads());
    let share = |panels: usize, t: usize| {
        let per = panels.div_ceil(threads);
        (t * per).min(panels)..((t + 1) * per).min(panels)
    };
    let wide_len = if kernel == Bf16Kernel::Avx512Fma {
        2 * a_len
    } else {
        0
    };
    if wide.len() < wide_len {
        *wide = AlignedBuf::zeroed(wide_len);
    }
    let a_words = SharedMut::new(&mut a_buf[..a_len]);
    let a_wide = SharedMut::new(&mut wide[..wide_len]);
    let pack_a = |t: usize| {
        let r = share(rows.div_ceil(MR), t);
        let (from, to) = (r.start * kp * MR, r.end * kp * MR);
        // SAFETY (both): the threads' shares of panels are disjoint.
        let words = unsafe { a_words.piece(from..to) };
        pack_a_panels(&a, words, r.start);
        if wide_len > 0 {
            widen(words, unsafe { a_wide.piece(2 * from..2 * to) });
        }
    };
    let mut on_team = |work: &(dyn Fn(usize) + Sync)| match team.as_deref_mut() {
        Some(team) if threads > 1 => team.run(threads, work),
        _ => work(0),
    };
    let b_words: &[u32] = match b {
        Operand::Packed(p) => {
            on_team(&pack_a);
            p.words
        }
        Operand::Pack(bv, b_buf) => {
            let b_len = packed_b_len(k, n);
            if b_buf.len() < b_len {
                *b_buf = AlignedBuf::zeroed(b_len);
            }
            let b_words = SharedMut::new(&mut b_buf[..b_len]);
            on_team(&|t| {
                pack_a(t);
                let r = share(n.div_ceil(NR), t);
                // SAFETY: the threads' shares of panels are disjoint.
                let words = unsafe { b_words.piece(r.start * kp * NR..r.end * kp * NR) };
                pack_b_panels(&bv, words, r.start);
            });
            &b_buf[..b_len]
        }
    };
    let shape = TileRun {
        kernel,
        a_wide: &wide[..wide_len],
        m,
        n,
        kp,
        rs: c.rs() as isize,
        cs: c.cs() as isize,
        layout: c.layout(),
        store,
    };
    let dest = Dest(c.as_mut_ptr());
    let at = &a_buf[..a_len];
    let panels = n.div_ceil(NR);
    let columns = |source: &PanelSource<'_>| shape.run(at, b_words, &dest, source);
    match team.filter(|t| t.threads() > 1 && panels > 1) {
        // Where a panel is work enough, the threads take the panels one
        // at a time as they come free (as the f32 products do, see
        // `loops::Chunks`); else a fixed share each.
        Some(team) if super::threads::deals_panels(m, k, NR) => {
            let next = AtomicUsize::new(0);
            let source = PanelSource::Dealt {
                next: &next,
                panels,
            };
            team.run(team.threads(), &|_| columns(&source));
        }
        Some(team) => {
            let per = panels.div_ceil(team.threads());
            team.run(panels.div_ceil(per), &|t| {
                columns(&PanelSource::Range(t * per..panels.min((t + 1) * per)))
            });
        }
        None => columns(&PanelSource::Range(0..panels)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe's values are exact in bf16 and its sums exact for every
    /// kernel this CPU runs (the tile model's program among them), so a
    /// correct AMX kernel passes it whatever its order of addition.
    #[test]
    fn the_amx_probe_is_exact_for_every_kernel() {
        for kernel in Bf16Kernel::ALL.into_iter().filter(|k| k.is_available()) {
            assert!(exact_on_probe(kernel), "{}", kernel.name());
        }
        assert!((0..97).all(|i| round_bf16(probe_value(i)) == probe_value(i)));
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        // Exact values pass through.
        for x in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            2f32.powi(127),
            2f32.powi(-133),
            f32::INFINITY,
        ] {
            assert_eq!(round_bf16(x).to_bits(), x.to_bits(), "{x}");
        }
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even (1).
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to even.
        assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        // Just above halfway rounds up.
        assert_eq!(
            round_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
            1.0 + 2f32.powi(-7)
        );
        // The largest f32 rounds to infinity; NaN stays NaN.
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        assert!(round_bf16(f32::NAN).is_nan());
        assert!(from_bf16(to_bf16(f32::from_bits(0x7F80_0001))).is_nan());
    }
}
