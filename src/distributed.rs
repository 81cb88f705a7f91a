//! Data-parallel training: the ranks of a run and the one collective the
//! training loop needs.
//!
//! Every rank holds the whole model and maps the whole dataset. Each global
//! batch is cut into contiguous shards, one per rank ([`shard`]); a rank
//! computes the gradient of its samples' share of the batch-mean loss, the
//! ranks sum their gradients ([`Ranks::sum_f32`]), and every rank applies the
//! same update to its copy of the model.
//!
//! The sum is the same function on every rank and in every run: element by
//! element, `((g₀ + g₁) + g₂) + …` in rank order ([`add_in_rank_order`]). Over
//! MPI it is a reduce-scatter written as an all-to-all (rank `c` receives
//! every rank's chunk `c` and adds them in rank order) followed by an
//! all-gather of the summed chunks: the MPI library only moves bytes, so its
//! choice of algorithm cannot change a bit, and every rank ends with the
//! same parameters. The traffic is that of a ring all-reduce,
//! `2·(R−1)/R` of the slab per rank.

use std::ops::{AddAssign, Range};
use std::sync::{Arc, Barrier, Mutex};

#[cfg(feature = "mpi")]
mod over_mpi;
#[cfg(feature = "mpi")]
pub use over_mpi::MpiRanks;

/// Where this process stands among the ranks of a run, and how the ranks
/// sum what they computed.
pub trait Ranks {
    /// This rank, `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Replaces `values` on every rank by the element-wise sum of all ranks'
    /// `values` (each rank passes a slice of the same length), added in rank
    /// order: every rank gets the same bits.
    fn sum_f32(&mut self, values: &mut [f32]);
    /// As [`Ranks::sum_f32`], for the run's f64 totals (loss sums, counts).
    fn sum_f64(&mut self, values: &mut [f64]);
}

/// A rank borrowed for a run: the caller keeps it (to abort the job on an
/// error, say).
impl<R: Ranks + ?Sized> Ranks for &mut R {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn size(&self) -> usize {
        (**self).size()
    }
    fn sum_f32(&mut self, values: &mut [f32]) {
        (**self).sum_f32(values)
    }
    fn sum_f64(&mut self, values: &mut [f64]) {
        (**self).sum_f64(values)
    }
}

/// The rows of a batch of `len` samples that rank `rank` of `size` takes:
/// contiguous shards in rank order, the first `len % size` ranks one row
/// longer. A rank's shard is empty when `len < size` (a short last batch).
pub fn shard(len: usize, size: usize, rank: usize) -> Range<usize> {
    assert!(rank < size, "rank {rank} of {size}");
    let (base, extra) = (len / size, len % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// `out = parts[0] + parts[1] + …`, element by element, added in that order
/// (the sum every rank computes). `out` is overwritten; each part is as long
/// as `out`.
pub fn add_in_rank_order<'a, T>(mut parts: impl Iterator<Item = &'a [T]>, out: &mut [T])
where
    T: Copy + AddAssign + 'a,
{
    let first = parts.next().expect("at least one rank");
    out.copy_from_slice(first);
    for part in parts {
        assert_eq!(part.len(), out.len(), "ranks' slabs differ in length");
        for (o, &p) in out.iter_mut().zip(part) {
            *o += p;
        }
    }
}

/// One process alone: rank 0 of 1; the sums are the values themselves.
#[derive(Debug, Default, Clone, Copy)]
pub struct OneProcess;

impl Ranks for OneProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&mut self, _: &mut [f32]) {}
    fn sum_f64(&mut self, _: &mut [f64]) {}
}

/// Ranks that are threads of one process, exchanging through shared
/// memory: the same sums as over MPI, for tests that need no MPI library.
/// [`ThreadRanks::group`] makes one handle per rank; each rank's thread
/// calls the sums in the same sequence, as MPI ranks would.
pub struct ThreadRanks {
    rank: usize,
    shared: Arc<Exchange>,
}

struct Exchange {
    size: usize,
    barrier: Barrier,
    f32_slots: Mutex<Vec<Vec<f32>>>,
    f64_slots: Mutex<Vec<Vec<f64>>>,
}

impl ThreadRanks {
    /// Handles for ranks `0..size`, to move one into each rank's thread.
    pub fn group(size: usize) -> Vec<ThreadRanks> {
        assert!(size >= 1, "at least one rank");
        let shared = Arc::new(Exchange {
            size,
            barrier: Barrier::new(size),
            f32_slots: Mutex::new(vec![Vec::new(); size]),
            f64_slots: Mutex::new(vec![Vec::new(); size]),
        });
        (0..size)
            .map(|rank| ThreadRanks {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Every rank posts its values, waits for the others, reads the sum in
    /// rank order, and waits again before a slot can be reused.
    fn sum<T: Copy + AddAssign>(&self, slots: &Mutex<Vec<Vec<T>>>, values: &mut [T]) {
        {
            let mut slots = slots.lock().expect("a rank panicked");
            let mine = &mut slots[self.rank];
            mine.clear();
            mine.extend_from_slice(values);
        }
        self.shared.barrier.wait();
        {
            let slots = slots.lock().expect("a rank panicked");
            add_in_rank_order(slots.iter().map(Vec::as_slice), values);
        }
        self.shared.barrier.wait();
    }
}

impl Ranks for ThreadRanks {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }
    fn sum_f32(&mut self, values: &mut [f32]) {
        self.sum(&self.shared.f32_slots, values);
    }
    fn sum_f64(&mut self, values: &mut [f64]) {
        self.sum(&self.shared.f64_slots, values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order() {
        for len in 0..40 {
            for size in 1..9 {
                let mut next = 0;
                for rank in 0..size {
                    let s = shard(len, size, rank);
                    assert_eq!(s.start, next, "len {len} size {size} rank {rank}");
                    assert!(s.len() == len / size || s.len() == len / size + 1);
                    next = s.end;
                }
                assert_eq!(next, len);
            }
        }
        assert_eq!(shard(10, 3, 0), 0..4);
        assert_eq!(shard(10, 3, 1), 4..7);
        assert_eq!(shard(10, 3, 2), 7..10);
    }

    #[test]
    fn rank_order_is_the_order_of_the_additions() {
        // 1e8 + 1 − 1e8 is 0 in f32 one way round and 1 the other.
        let parts: [&[f32]; 3] = [&[1e8], &[1.0], &[-1e8]];
        let mut out = [0.0f32];
        add_in_rank_order(parts.iter().copied(), &mut out);
        assert_eq!(out[0], 0.0);
        let parts: [&[f32]; 3] = [&[1e8], &[-1e8], &[1.0]];
        add_in_rank_order(parts.iter().copied(), &mut out);
        assert_eq!(out[0], 1.0);
    }

    #[test]
    fn thread_ranks_sum_in_rank_order_on_every_rank() {
        let results: Vec<(Vec<f32>, Vec<f64>)> = std::thread::scope(|s| {
            let handles: Vec<_> = ThreadRanks::group(3)
                .into_iter()
                .map(|mut r| {
                    s.spawn(move || {
                        let big = [1e8f32, 1.0, -1e8][r.rank()];
                        let mut a = vec![big, r.rank() as f32];
                        r.sum_f32(&mut a);
                        let mut b = vec![r.rank() as f64 + 0.5];
                        r.sum_f64(&mut b);
                        // A second round reuses the slots.
                        r.sum_f32(&mut a);
                        (a, b)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (a, b) in &results {
            // Round 1: [0, 3]; round 2 adds three copies: [0, 9].
            assert_eq!(a, &vec![0.0, 9.0]);
            assert_eq!(b, &vec![4.5]);
        }
    }
}
