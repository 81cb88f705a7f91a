//! Pack buffers, kept by the caller between calls.

use crate::buf::AlignedBuf;

/// Room for the edge-tile scratch, in floats: at least every kernel's MR·NR
/// (the largest, AVX-512's 8×32, is 256; the assertions below keep it so).
const TILE_MAX: usize = 512;

// Every kernel's edge tile fits the scratch buffer.
const _: () = {
    use super::params::{AVX2, AVX512, SCALAR};
    assert!(AVX512.mr * AVX512.nr <= TILE_MAX);
    assert!(AVX2.mr * AVX2.nr <= TILE_MAX);
    assert!(SCALAR.mr * SCALAR.nr <= TILE_MAX);
};

/// The buffers of one thread: Ã, B̃ and the edge-tile scratch.
pub(crate) struct PartWs {
    pub a: AlignedBuf<f32>,
    pub b: AlignedBuf<f32>,
    pub tile: AlignedBuf<f32>,
}

impl PartWs {
    fn new() -> Self {
        PartWs {
            a: AlignedBuf::zeroed(0),
            b: AlignedBuf::zeroed(0),
            tile: AlignedBuf::zeroed(TILE_MAX),
        }
    }

    /// Grows Ã to at least `a_len` and B̃ to at least `b_len` floats (no-op
    /// once large enough: the hot path does not allocate).
    pub fn reserve(&mut self, a_len: usize, b_len: usize) {
        if self.a.len() < a_len {
            self.a = AlignedBuf::zeroed(a_len);
        }
        if self.b.len() < b_len {
            self.b = AlignedBuf::zeroed(b_len);
        }
    }
}

/// Workspace for [`super::GemmCtx`]: one set of pack buffers per thread.
///
/// Buffers grow on first use to the block sizes a shape needs (at most
/// MC×KC + KC×NC floats per thread, see `params.rs`) and are reused after:
/// once every shape has run once (or after [`GemmCtx::reserve`](super::GemmCtx::reserve)), a
/// call allocates nothing.
pub struct GemmWorkspace {
    pub(crate) parts: Vec<PartWs>,
    /// The two Ã buffers the parts of a product split along N pack
    /// together (`loops::SharedA`).
    pub(crate) shared_a: [AlignedBuf<f32>; 2],
}

impl Default for GemmWorkspace {
    fn default() -> Self {
        Self::new()
    }
}

impl GemmWorkspace {
    /// An empty workspace (grows on first use).
    pub fn new() -> Self {
        GemmWorkspace {
            parts: Vec::new(),
            shared_a: [AlignedBuf::zeroed(0), AlignedBuf::zeroed(0)],
        }
    }

    /// Grows each shared Ã buffer to at least `len` floats (no-op once
    /// large enough).
    pub(crate) fn reserve_shared_a(&mut self, len: usize) {
        for buf in &mut self.shared_a {
            if buf.len() < len {
                *buf = AlignedBuf::zeroed(len);
            }
        }
    }

    /// Makes room for `threads` parts.
    pub(crate) fn ensure_parts(&mut self, threads: usize) {
        while self.parts.len() < threads {
            self.parts.push(PartWs::new());
        }
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        let parts: usize = self
            .parts
            .iter()
            .map(|p| p.a.len() + p.b.len() + p.tile.len())
            .sum();
        let shared: usize = self.shared_a.iter().map(|b| b.len()).sum();
        (parts + shared) * 4
    }
}
