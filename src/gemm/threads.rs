//! Splitting C between the threads of a team (`team.rs`).
//!
//! C is cut among at most `threads` parts along N (or along M when C is
//! taller than wide), on NR (MR) boundaries. Cut along M, each thread runs
//! the whole loop nest on its rows. Cut along N, the threads pack their
//! common Ã together, a share each, behind a barrier (`loops::SharedA`),
//! and each computes its own columns with its own B̃ — or, where the tiles
//! go down C's column panels (the training step's products) and a panel
//! is work enough, they take the panels one at a time as they come free
//! (`loops::Chunks`): on a shared machine one core is often slower than
//! the other, and a fixed half each left the faster one waiting. Every
//! element is computed exactly as on one thread, whichever thread computes
//! it.

use super::params::Params;

/// How C is cut.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Split {
    m: usize,
    n: usize,
    /// Rows per part (a multiple of MR) when splitting M, else m.
    step_m: usize,
    /// Columns per part (a multiple of NR) when splitting N, else n.
    step_n: usize,
    /// What a cut along N falls on: NR, or the panel width.
    n_unit: usize,
}

impl Split {
    pub fn parts(&self) -> usize {
        self.m.div_ceil(self.step_m) * self.n.div_ceil(self.step_n)
    }

    /// True when C is cut along N only: every part has all of M (and K),
    /// so all need the same Ã.
    pub fn along_n(&self) -> bool {
        self.step_m == self.m
    }

    /// What a cut along N falls on: NR, or the panel width.
    pub fn n_unit(&self) -> usize {
        self.n_unit
    }

    /// Part `t` as (i0, rows, j0, cols).
    pub fn part(&self, t: usize) -> (usize, usize, usize, usize) {
        let pn = self.n.div_ceil(self.step_n);
        let (ti, tj) = (t / pn, t % pn);
        let (i0, j0) = (ti * self.step_m, tj * self.step_n);
        (
            i0,
            self.step_m.min(self.m - i0),
            j0,
            self.step_n.min(self.n - j0),
        )
    }
}

/// Cuts an m×n C into at most `threads` parts, along N in multiples of
/// `n_unit` (NR, or the panel width when B or C is panelled).
pub(crate) fn split(m: usize, n: usize, p: &Params, threads: usize, n_unit: usize) -> Split {
    let whole = Split {
        m,
        n,
        step_m: m,
        step_n: n,
        n_unit,
    };
    if threads <= 1 {
        return whole;
    }
    let (tiles_m, tiles_n) = (m.div_ceil(p.mr), n.div_ceil(n_unit));
    if tiles_n >= tiles_m.min(threads) || tiles_n >= 2 * threads {
        // Along N: each thread packs its own columns of B̃, all of Ã.
        let per = tiles_n.div_ceil(threads.min(tiles_n));
        Split {
            step_n: per * n_unit,
            ..whole
        }
    } else {
        let per = tiles_m.div_ceil(threads.min(tiles_m));
        Split {
            step_m: per * p.mr,
            ..whole
        }
    }
}

/// True when the parts of an m×k×n product cut along N, whose tiles go
/// down C's column panels, take the panels one at a time as they come
/// free (`loops::Chunks`) instead of a fixed share each: where one panel
/// is at least [`DEALT_PANEL_MIN_FLOPS`] of work. Taking a panel passes the
/// counter's cache line between the cores; on a smaller panel that cost
/// more than the balance won (W2 at batch 32, two threads, the two ways
/// alternating step by step: the step's products 0.6–7 % slower dealt
/// out).
pub(crate) fn deals_panels(m: usize, k: usize, n_unit: usize) -> bool {
    2 * m * k * n_unit >= DEALT_PANEL_MIN_FLOPS
}

/// 4.2 MFLOP, ~25 µs of one core: W1's hidden products at batch 32 and
/// up, W2's from batch 128 (784·128·32·2 = 6.4 MFLOP a panel).
const DEALT_PANEL_MIN_FLOPS: usize = 1 << 22;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::params;

    #[test]
    fn parts_tile_c_exactly() {
        for (m, n, t) in [
            (128, 1024, 2),
            (1024, 128, 2),
            (100, 40, 3),
            (13, 7, 4),
            (1, 1, 2),
        ] {
            let s = split(m, n, &params::AVX512, t, params::AVX512.nr);
            assert!(s.parts() <= t.max(1));
            let mut seen = vec![0u8; m * n];
            for p in 0..s.parts() {
                let (i0, pm, j0, pn) = s.part(p);
                assert!(i0 % params::AVX512.mr == 0 && j0 % params::AVX512.nr == 0);
                for i in i0..i0 + pm {
                    for j in j0..j0 + pn {
                        seen[i * n + j] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&x| x == 1), "{m}×{n} over {t}");
        }
    }

    #[test]
    fn direction_of_split() {
        for p in [params::AVX512, params::AVX2, params::SCALAR] {
            let tall = split(4000, 8, &p, 2, p.nr);
            assert_eq!((tall.parts(), tall.part(1).0 > 0), (2, true), "M split");
            let wide = split(128, 1024, &p, 2, p.nr);
            assert_eq!((wide.parts(), wide.part(1).2 > 0), (2, true), "N split");
        }
    }
}
