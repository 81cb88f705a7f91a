//! The bf16 copies of a network's weights, in the layouts the bf16 products
//! read in place ([`PackedB`]), written by the optimiser as it updates the
//! f32 master weights: no step converts or packs a weight matrix.
//!
//! A layer's master weights are `Wᵀ [in, out]` in column panels of
//! [`PANEL`] = 32 floats (= the bf16 kernels' NR), element (i, j) at
//! `(j/32)·in·32 + i·32 + j%32` ([`crate::model::Layout`]). Its copies:
//!
//! ```text
//! forward   B̃ of X·Wᵀ  (k = in,  n = out)   word [j/32][i/2][j%32], half i%2
//! backward  B̃ of dZ·W  (k = out, n = in)    word [i/32][j/2][i%32], half j%2   (layers ≥ 1)
//! ```
//!
//! A word holds two bf16 values, the even `k` in its low half. Row i of a
//! master panel (32 outputs) fills half of 32 forward words, next to row
//! i ± 1, and 16 whole backward words, 32 words apart. Padding (an odd k's
//! last high half, columns past n) is zero from the start and never
//! written.

use std::marker::PhantomData;

use super::bf16::{interleave_avx512bf16, pairs, to_bf16, Bf16Kernel, PackedB, NR};
use super::mat::{panel_len, PANEL};
use crate::buf::AlignedBuf;
use crate::optim::WeightCopies;

const _: () = assert!(PANEL == NR, "a master panel is one B̃ panel wide");

/// One layer's copies.
struct LayerCopies {
    fan_in: usize,
    fan_out: usize,
    forward: AlignedBuf<u32>,
    /// Empty for the first layer, which has no input gradient.
    backward: AlignedBuf<u32>,
}

/// The bf16 copies of every layer of the network `dims`.
pub struct Bf16Weights {
    layers: Vec<LayerCopies>,
}

impl Bf16Weights {
    /// Zeroed copies for the network `dims` (`[inputs, hidden…, classes]`).
    pub fn new(dims: &[usize]) -> Bf16Weights {
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(l, io)| {
                let (fan_in, fan_out) = (io[0], io[1]);
                LayerCopies {
                    fan_in,
                    fan_out,
                    forward: AlignedBuf::zeroed(out_panels(fan_out) * pairs(fan_in) * NR),
                    backward: if l == 0 {
                        AlignedBuf::zeroed(0)
                    } else {
                        AlignedBuf::zeroed(out_panels(fan_in) * pairs(fan_out) * NR)
                    },
                }
            })
            .collect();
        Bf16Weights { layers }
    }

    /// Writes layer `l`'s copies from its whole master matrix (the panels
    /// `w`): when training starts, or after the master weights changed
    /// outside a step.
    pub fn write_layer(&mut self, l: usize, w: &[f32]) {
        let len = {
            let c = &self.layers[l];
            panel_len(c.fan_in, c.fan_out)
        };
        // SAFETY: one call, on this thread, covers the whole layer.
        unsafe { self.writer(l).write(0, &w[..len]) };
    }

    /// Layer `l`'s forward copy: `Wᵀ` as the B̃ of `X·Wᵀ`.
    pub fn forward(&self, l: usize) -> PackedB<'_> {
        let c = &self.layers[l];
        PackedB::new(&c.forward, c.fan_in, c.fan_out)
    }

    /// Layer `l`'s backward copy: `W` as the B̃ of `dZ·W` (`None` for the
    /// first layer).
    pub fn backward(&self, l: usize) -> Option<PackedB<'_>> {
        let c = &self.layers[l];
        (l > 0).then(|| PackedB::new(&c.backward, c.fan_out, c.fan_in))
    }

    /// The writer of layer `l`'s copies, to be shared by the threads of
    /// one update.
    pub fn writer(&mut self, l: usize) -> CopyWriter<'_> {
        let c = &mut self.layers[l];
        CopyWriter {
            fan_in: c.fan_in,
            fan_out: c.fan_out,
            forward: c.forward.as_mut_ptr(),
            backward: if c.backward.is_empty() {
                std::ptr::null_mut()
            } else {
                c.backward.as_mut_ptr()
            },
            _copies: PhantomData,
        }
    }
}

fn out_panels(n: usize) -> usize {
    n.div_ceil(NR)
}

/// Writes one layer's copies from blocks of its master weights; the
/// threads of an update share it, each writing its own blocks.
pub struct CopyWriter<'a> {
    fan_in: usize,
    fan_out: usize,
    forward: *mut u32,
    /// Null for the first layer.
    backward: *mut u32,
    _copies: PhantomData<&'a mut Bf16Weights>,
}

// SAFETY: the writer only stores through its pointers, in `write`, whose
// callers give concurrent calls disjoint rows of the master; distinct rows
// never store to the same bytes (see `write`).
unsafe impl Sync for CopyWriter<'_> {}
unsafe impl Send for CopyWriter<'_> {}

/// Index of half `half` (0 = low) of word `word`, as a `u16` offset.
#[inline(always)]
fn half_index(word: usize, half: usize) -> usize {
    if cfg!(target_endian = "little") {
        2 * word + half
    } else {
        2 * word + 1 - half
    }
}

impl WeightCopies for CopyWriter<'_> {
    /// The bf16 copies of whole rows of the master.
    ///
    /// A forward word is shared by rows i and i + 1 (i even): when both are
    /// in `values` it is stored whole, else as the one row's half. A
    /// backward word belongs to one row. So two calls on disjoint rows
    /// never store to the same bytes.
    unsafe fn write(&self, offset: usize, values: &[f32]) {
        let (fan_in, fan_out) = (self.fan_in, self.fan_out);
        assert!(
            offset.is_multiple_of(PANEL)
                && values.len().is_multiple_of(PANEL)
                && offset + values.len() <= panel_len(fan_in, fan_out),
            "bf16 copies: rows {offset}+{} of a {fan_in}×{fan_out} panelled matrix",
            values.len()
        );
        #[cfg(target_arch = "x86_64")]
        if Bf16Kernel::Avx512Bf16.is_available() {
            // SAFETY: the CPU has AVX512-BF16; the caller's promise.
            return self.write_avx512bf16(offset, values);
        }
        self.write_rows::<false>(offset, values)
    }
}

impl CopyWriter<'_> {
    /// [`CopyWriter::write`] with the conversions in vectors, inlined.
    ///
    /// # Safety
    /// As [`CopyWriter::write`]; the CPU has AVX-512F and AVX512-BF16.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16,avx2")]
    unsafe fn write_avx512bf16(&self, offset: usize, values: &[f32]) {
        self.write_rows::<true>(offset, values)
    }

    /// The rows of [`CopyWriter::write`]; `VECTOR`: with AVX512-BF16's
    /// conversions (only from a function built for them).
    ///
    /// # Safety
    /// As [`CopyWriter::write`].
    #[inline(always)]
    unsafe fn write_rows<const VECTOR: bool>(&self, offset: usize, values: &[f32]) {
        let (fan_in, fan_out) = (self.fan_in, self.fan_out);
        let (kp_in, kp_out) = (pairs(fan_in), pairs(fan_out));
        let first = offset / PANEL;
        let count = values.len() / PANEL;
        let row = |t: usize| &values[t * PANEL..(t + 1) * PANEL];
        let mut t = 0;
        while t < count {
            let g = first + t;
            let (p, i) = (g / fan_in, g % fan_in);
            let valid = PANEL.min(fan_out - p * PANEL);
            let v = row(t);
            // Forward: rows i and i + 1 in one pass when both are here.
            let word = (p * kp_in + i / 2) * NR;
            let pair_here = i % 2 == 0 && i + 1 < fan_in && t + 1 < count;
            if pair_here {
                let w = row(t + 1);
                // SAFETY: words word..word + NR are panel p's pair i/2,
                // inside the forward copy; rows i and i + 1 are this call's.
                let out = std::slice::from_raw_parts_mut(self.forward.add(word), NR);
                if VECTOR && valid == PANEL {
                    interleave_avx512bf16(v.as_ptr(), w.as_ptr(), &mut out[..16]);
                    interleave_avx512bf16(v.as_ptr().add(16), w.as_ptr().add(16), &mut out[16..]);
                } else {
                    for c in 0..valid {
                        out[c] = to_bf16(v[c]) as u32 | (to_bf16(w[c]) as u32) << 16;
                    }
                }
            } else {
                let halves = self.forward.cast::<u16>();
                for (c, &x) in v[..valid].iter().enumerate() {
                    // SAFETY: inside the forward copy; half i%2 of the word
                    // is row i's, this call's.
                    *halves.add(half_index(word + c, i % 2)) = to_bf16(x);
                }
            }
            t += if pair_here { 2 } else { 1 };
        }
        if self.backward.is_null() {
            // The first layer: no input gradient, no backward copy.
            return;
        }
        // Backward: eight rows of a full panel at a time where they are
        // here, else row by row.
        let mut t = 0;
        while t < count {
            let g = first + t;
            let (p, i) = (g / fan_in, g % fan_in);
            let valid = PANEL.min(fan_out - p * PANEL);
            if VECTOR && valid == PANEL && i % 8 == 0 && i + 8 <= fan_in && t + 8 <= count {
                self.write_backward8(p, i, &values[t * PANEL..(t + 8) * PANEL], kp_out);
                t += 8;
            } else {
                self.write_backward::<VECTOR>(p, i, row(t), valid, kp_out);
                t += 1;
            }
        }
    }

    /// Rows i..i + 8 of full master panel p (`v`, 8·PANEL values, i a
    /// multiple of 8) into the backward copy. Row i + r's word q goes to
    /// `[i/32][16p + q][i%32 + r]`: the eight rows' words q are eight
    /// consecutive words, so two 8×8 transposes of the rows' pairs store
    /// them as 16 runs (where one row at a time would store 16 words 128
    /// bytes apart, which the compiler makes a scatter).
    ///
    /// # Safety
    /// As [`CopyWriter::write`]; rows (p, i..i + 8) are the caller's; the
    /// layer has a backward copy; only from a function built for AVX-512F,
    /// AVX2 and AVX512-BF16.
    #[inline(always)]
    unsafe fn write_backward8(&self, p: usize, i: usize, v: &[f32], kp_out: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(v.len() == 8 * PANEL && i.is_multiple_of(8) && i + 8 <= self.fan_in);
            let mut block = [[0u32; PANEL / 2]; 8];
            for (r, words) in block.iter_mut().enumerate() {
                pairs_avx512bf16(&v[r * PANEL..(r + 1) * PANEL], words);
            }
            // Pairs 16p..16p + 16 < kp_out (panel p is full) of column
            // panel i/32, columns i%32..i%32 + 8 (i%32 ≤ 24): inside the
            // backward copy, and these rows' alone.
            let base = ((i / NR) * kp_out + p * PANEL / 2) * NR + i % NR;
            let (src, dst) = (
                block.as_ptr().cast::<f32>(),
                self.backward.add(base).cast::<f32>(),
            );
            crate::gemm::kernels::transpose8_avx(src, 16, dst, NR);
            crate::gemm::kernels::transpose8_avx(src.add(8), 16, dst.add(8 * NR), NR);
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("AVX512-BF16 is x86-64 only: {p} {i} {} {kp_out}", v.len())
    }

    /// Row i of master panel p (its first `valid` values) into the
    /// backward copy: the pairs of outputs (2q, 2q + 1), q = 16p…, as the
    /// words `[i/32][q][i%32]`.
    ///
    /// # Safety
    /// As [`CopyWriter::write`]; row (p, i) is the caller's; the layer has
    /// a backward copy.
    #[inline(always)]
    unsafe fn write_backward<const VECTOR: bool>(
        &self,
        p: usize,
        i: usize,
        v: &[f32],
        valid: usize,
        kp_out: usize,
    ) {
        let mut words = [0u32; PANEL / 2];
        let n = valid.div_ceil(2);
        if VECTOR && valid == PANEL {
            pairs_avx512bf16(v, &mut words);
        } else {
            for (q, w) in words[..n].iter_mut().enumerate() {
                let hi = if 2 * q + 1 < valid { v[2 * q + 1] } else { 0.0 };
                *w = to_bf16(v[2 * q]) as u32 | (to_bf16(hi) as u32) << 16;
            }
        }
        let base = ((i / NR) * kp_out + p * PANEL / 2) * NR + i % NR;
        for (q, &w) in words[..n].iter().enumerate() {
            // SAFETY: pair p·16 + q < kp_out of column panel i/32, column
            // i%32: inside the backward copy, and row i's alone.
            *self.backward.add(base + q * NR) = w;
        }
    }
}

/// The 16 pairs of 32 values (`vcvtne2ps2bf16`).
///
/// # Safety
/// Only from a function built for AVX-512F and AVX512-BF16.
#[inline(always)]
unsafe fn pairs_avx512bf16(v: &[f32], words: &mut [u32; PANEL / 2]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let (lo, hi) = (
            _mm512_loadu_ps(v.as_ptr()),
            _mm512_loadu_ps(v.as_ptr().add(16)),
        );
        // The low 16 results come from the second operand: in order.
        let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(words.as_mut_ptr().cast(), packed);
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("AVX512-BF16 is x86-64 only: {} {}", v.len(), words.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::bf16::pack_b;
    use crate::gemm::MatRef;

    /// Random panelled masters, padding zero, as the network keeps them.
    fn master(fan_in: usize, fan_out: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        let mut w = vec![0.0; panel_len(fan_in, fan_out)];
        for i in 0..fan_in {
            for j in 0..fan_out {
                w[(j / PANEL) * fan_in * PANEL + i * PANEL + j % PANEL] = rng.normal() as f32;
            }
        }
        w
    }

    /// The copies written block by block (in any split into whole rows)
    /// equal the packing of the master by the products' own `pack_b`.
    #[test]
    fn copies_equal_the_packed_master() {
        for (fan_in, fan_out) in [(1, 1), (7, 33), (33, 7), (64, 32), (65, 70), (2, 100)] {
            let w = master(fan_in, fan_out, (fan_in * 1000 + fan_out) as u64);
            let rows = panel_len(fan_in, fan_out) / PANEL;
            // Blocks of 1, 2, 3, 8, 11 and all rows: odd blocks split
            // pairs, and 11 the eight-row runs of the backward copy. The
            // CPU's conversions, and the portable ones.
            for (block, portable) in [1, 2, 3, 8, 11, rows]
                .into_iter()
                .flat_map(|b| [(b, false), (b, true)])
            {
                let mut copies = Bf16Weights::new(&[3, fan_in, fan_out]);
                let writer = copies.writer(1);
                for start in (0..rows).step_by(block) {
                    let (end, at) = (rows.min(start + block), start * PANEL);
                    let values = &w[at..end * PANEL];
                    // SAFETY: one thread, disjoint blocks.
                    unsafe {
                        if portable {
                            writer.write_rows::<false>(at, values)
                        } else {
                            writer.write(at, values)
                        }
                    };
                }
                let view = MatRef::panels(&w, fan_in, fan_out);
                let mut want = AlignedBuf::zeroed(0);
                pack_b(&view, &mut want);
                let got = copies.forward(1).words();
                assert_eq!(
                    got,
                    &want[..got.len()],
                    "forward {fan_in}×{fan_out}, block {block}, portable {portable}"
                );
                pack_b(&view.t(), &mut want);
                let got = copies.backward(1).unwrap().words();
                assert_eq!(
                    got,
                    &want[..got.len()],
                    "backward {fan_in}×{fan_out}, block {block}, portable {portable}"
                );
            }
        }
    }

    #[test]
    fn the_first_layer_has_no_backward_copy() {
        let copies = Bf16Weights::new(&[5, 4, 3]);
        assert!(copies.backward(0).is_none());
        assert!(copies.backward(1).is_some());
    }
}
