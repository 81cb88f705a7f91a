//! The f32 weights in the input gradient's layout, kept by the optimiser
//! as it updates the master weights: no f32 step packs a weight matrix.
//!
//! A layer's master weights are `Wᵀ [in, out]` in column panels of
//! [`PANEL`] floats ([`crate::model::Layout`]): the forward product `X·Wᵀ`
//! reads them in place as its B̃, the weight gradient writes them in place
//! as its C. The input gradient `dZ·W` needs `W [out, in]` as its B̃,
//! column panels of the other dimension:
//!
//! ```text
//! master  Wᵀ  element (i, o) at (o/32)·in·32  + i·32 + o%32
//! copy    W   element (o, i) at (i/32)·out·32 + o·32 + i%32     (layers ≥ 1)
//! ```
//!
//! The copy is written from each new tile of weights in the fused update's
//! store (`gemm_update`, eight rows of `Wᵀ` as 8×8 transposes), by
//! [`CopyWriter`] where the update is a pass of its own, and whole by
//! [`BackwardWeights::write_layer`] when the master weights changed
//! outside a step (the workspace compares [`crate::model::Params`]
//! versions). The first layer has no input gradient and no copy.

use std::marker::PhantomData;

use super::mat::{panel_len, MatMut, MatRef, PANEL};
use crate::buf::AlignedBuf;
use crate::optim::WeightCopies;

/// The f32 backward copies of every layer of a network.
pub struct BackwardWeights {
    /// Per layer: (fan_in, fan_out, copy); the first layer's copy is empty.
    layers: Vec<(usize, usize, AlignedBuf<f32>)>,
}

impl BackwardWeights {
    /// Zeroed copies for the network `dims` (`[inputs, hidden…, classes]`).
    pub fn new(dims: &[usize]) -> BackwardWeights {
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(l, io)| {
                let (fan_in, fan_out) = (io[0], io[1]);
                let len = if l == 0 {
                    0
                } else {
                    panel_len(fan_out, fan_in)
                };
                (fan_in, fan_out, AlignedBuf::zeroed(len))
            })
            .collect();
        BackwardWeights { layers }
    }

    /// Writes layer `l`'s copy from its whole master matrix (the panels
    /// `w`); nothing for the first layer.
    pub fn write_layer(&mut self, l: usize, w: &[f32]) {
        let (fan_in, fan_out, _) = self.layers[l];
        if let Some(writer) = self.writer(l) {
            // SAFETY: one call, on this thread, covers the whole layer.
            unsafe { writer.write(0, &w[..panel_len(fan_in, fan_out)]) };
        }
    }

    /// Layer `l`'s copy, `W [out, in]` in column panels: the B of `dZ·W`,
    /// read in place (`None` for the first layer).
    pub fn view(&self, l: usize) -> Option<MatRef<'_>> {
        let (fan_in, fan_out, copy) = &self.layers[l];
        (l > 0).then(|| MatRef::panels(copy, *fan_out, *fan_in))
    }

    /// Layer `l`'s copy to be written by a fused update
    /// ([`super::GemmCtx::gemm_update`]); `None` for the first layer.
    pub fn view_mut(&mut self, l: usize) -> Option<MatMut<'_>> {
        let (fan_in, fan_out, copy) = &mut self.layers[l];
        (l > 0).then(|| MatMut::panels(copy, *fan_out, *fan_in))
    }

    /// The writer of layer `l`'s copy, to be shared by the threads of an
    /// update pass; `None` for the first layer.
    pub fn writer(&mut self, l: usize) -> Option<CopyWriter<'_>> {
        let (fan_in, fan_out, copy) = &mut self.layers[l];
        (l > 0).then(|| CopyWriter {
            fan_in: *fan_in,
            fan_out: *fan_out,
            copy: copy.as_mut_ptr(),
            _copy: PhantomData,
        })
    }
}

/// Writes one layer's copy from runs of its master weights.
pub struct CopyWriter<'a> {
    fan_in: usize,
    fan_out: usize,
    copy: *mut f32,
    _copy: PhantomData<&'a mut BackwardWeights>,
}

// SAFETY: the writer only stores through its pointer, in `write`, one
// element of the copy per element of the master; concurrent calls are on
// disjoint runs of the master (the trait's contract), so they store to
// disjoint elements.
unsafe impl Sync for CopyWriter<'_> {}
unsafe impl Send for CopyWriter<'_> {}

impl WeightCopies for CopyWriter<'_> {
    /// Run by run of a master panel's row (32 outputs of one input), each
    /// element to its place in the copy, 32 floats apart; the panel's
    /// padding (outputs past `fan_out`) has none.
    unsafe fn write(&self, offset: usize, values: &[f32]) {
        let (fan_in, fan_out) = (self.fan_in, self.fan_out);
        let end = offset + values.len();
        assert!(
            end <= panel_len(fan_in, fan_out),
            "f32 copy: elements {offset}..{end} of a {fan_in}×{fan_out} panelled matrix"
        );
        let mut at = offset;
        while at < end {
            let (panel, within) = (at / (fan_in * PANEL), at % (fan_in * PANEL));
            let (i, first) = (within / PANEL, within % PANEL);
            let run = (PANEL - first).min(end - at);
            let row = &values[at - offset..at - offset + run];
            let dst = (i / PANEL) * fan_out * PANEL + i % PANEL;
            for (c, &w) in (first..).zip(row) {
                let o = panel * PANEL + c;
                if o < fan_out {
                    // In bounds: o < fan_out and i < fan_in, the copy's
                    // shape.
                    *self.copy.add(dst + o * PANEL) = w;
                }
            }
            at += run;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Layout;

    /// The copy holds `W [out, in]` at the offsets of its column panels,
    /// from whole writes and from runs that split panel rows, and the
    /// padding past `in` stays zero.
    #[test]
    fn copy_is_the_transpose_in_column_panels() {
        for (fan_in, fan_out) in [(7, 5), (33, 40), (64, 10), (1, 33)] {
            let dims = [3, fan_in, fan_out];
            let layout = Layout::new(&dims, crate::model::Norm::None);
            let rows: Vec<f32> = (0..fan_in * fan_out).map(|x| x as f32 + 0.5).collect();
            let mut params = vec![0.0f32; layout.len];
            layout.set_weight_rows(&mut params, 1, &rows);
            let master = &params[layout.layers[1].w.clone()];
            for runs in [master.len(), 13, 1] {
                let mut copies = BackwardWeights::new(&dims);
                assert!(copies.view(0).is_none() && copies.writer(0).is_none());
                let writer = copies.writer(1).unwrap();
                for (k, run) in master.chunks(runs).enumerate() {
                    // SAFETY: one thread.
                    unsafe { writer.write(k * runs, run) };
                }
                let view = copies.view(1).unwrap();
                for o in 0..fan_out {
                    for i in 0..fan_in {
                        assert_eq!(view.at(o, i), rows[o * fan_in + i], "({o}, {i})");
                    }
                }
                let copy = &copies.layers[1].2;
                let set = copy.iter().filter(|&&x| x != 0.0).count();
                assert_eq!(set, fan_in * fan_out, "only W's elements are written");
            }
        }
    }
}
