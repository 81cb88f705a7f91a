//! Matrix views for the safe API: strided, or in column panels.
//!
//! A **panelled** k×n matrix ([`MatRef::panels`]) is stored as ⌈n/PANEL⌉
//! column panels, one after the other; panel `q` holds columns
//! `q·PANEL .. q·PANEL + PANEL` of every row, row-major and PANEL floats
//! wide (columns past n are padding):
//!
//! ```text
//! element (r, j) at (j / PANEL)·k·PANEL + r·PANEL + j % PANEL
//! ```
//!
//! That is the packed B̃ layout of the loop nest, so a product reads a
//! panelled B in place, without packing it. The network keeps each weight
//! matrix this way, as `Wᵀ [in, out]`: the forward product `X·Wᵀ` reads it as
//! B, the weight-gradient product writes `dWᵀ = Xᵀ·dZ` into it as C, and its
//! transpose (row panels) is the B of the input gradient `dZ·W`.

/// Width of the panels of a panelled matrix: the widest microkernel tile
/// (AVX-512's NR = 32); every kernel's NR divides it.
pub const PANEL: usize = 32;

/// Floats a panelled rows×cols matrix occupies (its columns padded to
/// whole panels).
pub fn panel_len(rows: usize, cols: usize) -> usize {
    cols.div_ceil(PANEL) * PANEL * rows
}

/// Where an element lies beyond the two strides of a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Panels {
    /// (i, j) at `i·rs + j·cs`.
    None,
    /// Column panels `stride` apart: (i, j) at
    /// `(j / PANEL)·stride + i·rs + (j % PANEL)·cs`.
    Cols(usize),
    /// Row panels, the transpose of column panels: (i, j) at
    /// `(i / PANEL)·stride + (i % PANEL)·rs + j·cs`.
    Rows(usize),
}

impl Panels {
    /// The offset of element (i, j).
    #[inline(always)]
    pub(crate) fn offset(self, i: usize, j: usize, rs: isize, cs: isize) -> isize {
        match self {
            Panels::None => i as isize * rs + j as isize * cs,
            Panels::Cols(s) => {
                ((j / PANEL) * s) as isize + i as isize * rs + (j % PANEL) as isize * cs
            }
            Panels::Rows(s) => {
                ((i / PANEL) * s) as isize + (i % PANEL) as isize * rs + j as isize * cs
            }
        }
    }

    fn t(self) -> Panels {
        match self {
            Panels::None => Panels::None,
            Panels::Cols(s) => Panels::Rows(s),
            Panels::Rows(s) => Panels::Cols(s),
        }
    }
}

/// A read-only m×n view: element (i, j) is `data[i·rs + j·cs]`, or in
/// panels (see the module documentation).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
    panels: Panels,
}

/// A mutable m×n view: element (i, j) is `data[i·rs + j·cs]`, or in
/// panels; distinct elements never share memory.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
    panels: Panels,
}

/// Panics unless a panelled rows×cols matrix fits in `len` floats.
fn check_panels(what: &str, len: usize, rows: usize, cols: usize) {
    let need = panel_len(rows, cols);
    assert!(
        len >= need,
        "{what}: a panelled {rows}×{cols} matrix needs {need} elements, {len} given"
    );
}

/// Panics unless every element offset lies inside `len`.
fn check_bounds(what: &str, len: usize, rows: usize, cols: usize, rs: usize, cs: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|x| (cols - 1).checked_mul(cs).and_then(|y| x.checked_add(y)));
    match last {
        Some(last) if last < len => {}
        _ => panic!(
            "{what}: a {rows}×{cols} view with strides ({rs}, {cs}) needs more than the {len} elements given"
        ),
    }
}

/// True when distinct (i, j) map to distinct offsets (a sufficient test:
/// one index nests inside the other).
fn no_self_overlap(rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    if rows <= 1 || cols <= 1 {
        let (len, s) = if rows <= 1 { (cols, cs) } else { (rows, rs) };
        return len <= 1 || s >= 1;
    }
    (cs >= 1 && rs >= cs.saturating_mul(cols)) || (rs >= 1 && cs >= rs.saturating_mul(rows))
}

impl<'a> MatRef<'a> {
    /// A view with explicit strides; panics if it reaches past `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        check_bounds("MatRef", data.len(), rows, cols, rs, cs);
        MatRef {
            data,
            rows,
            cols,
            rs,
            cs,
            panels: Panels::None,
        }
    }

    /// A panelled rows×cols view of `data[..panel_len(rows, cols)]` (see
    /// the module documentation).
    pub fn panels(data: &'a [f32], rows: usize, cols: usize) -> Self {
        check_panels("MatRef", data.len(), rows, cols);
        MatRef {
            data,
            rows,
            cols,
            rs: PANEL,
            cs: 1,
            panels: Panels::Cols(rows * PANEL),
        }
    }

    /// A row-major rows×cols view of `data[..rows·cols]`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// A column-major rows×cols view.
    pub fn col_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, 1, rows)
    }

    /// The transpose, without copying (strides swapped; column panels
    /// become row panels).
    pub fn t(self) -> Self {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            panels: self.panels.t(),
            ..self
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn rs(&self) -> usize {
        self.rs
    }
    pub fn cs(&self) -> usize {
        self.cs
    }
    pub fn as_ptr(&self) -> *const f32 {
        self.data.as_ptr()
    }
    pub(crate) fn layout(&self) -> Panels {
        self.panels
    }

    /// Element (i, j).
    pub fn at(&self, i: usize, j: usize) -> f32 {
        assert!(i < self.rows && j < self.cols, "MatRef::at out of range");
        let at = self.panels.offset(i, j, self.rs as isize, self.cs as isize);
        self.data[at as usize]
    }
}

impl<'a> MatMut<'a> {
    /// A view with explicit strides; panics if it reaches past `data` or if
    /// two elements would share memory.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        check_bounds("MatMut", data.len(), rows, cols, rs, cs);
        assert!(
            no_self_overlap(rows, cols, rs, cs),
            "MatMut: strides ({rs}, {cs}) make elements of a {rows}×{cols} view overlap"
        );
        MatMut {
            data,
            rows,
            cols,
            rs,
            cs,
            panels: Panels::None,
        }
    }

    /// A panelled rows×cols view of `data[..panel_len(rows, cols)]`.
    pub fn panels(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        check_panels("MatMut", data.len(), rows, cols);
        MatMut {
            data,
            rows,
            cols,
            rs: PANEL,
            cs: 1,
            panels: Panels::Cols(rows * PANEL),
        }
    }

    /// A row-major rows×cols view.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// A column-major rows×cols view.
    pub fn col_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, 1, rows)
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        MatMut {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            panels: self.panels.t(),
            data: self.data,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn rs(&self) -> usize {
        self.rs
    }
    pub fn cs(&self) -> usize {
        self.cs
    }
    pub fn as_mut_ptr(&mut self) -> *mut f32 {
        self.data.as_mut_ptr()
    }
    pub(crate) fn layout(&self) -> Panels {
        self.panels
    }
    /// Length of the underlying slice.
    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }

    /// A read-only view of the same elements.
    pub fn as_ref(&self) -> MatRef<'_> {
        MatRef {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
            panels: self.panels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "needs more than")]
    fn view_past_end_panics() {
        let d = [0f32; 11];
        MatRef::row_major(&d, 3, 4);
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn overlapping_output_panics() {
        let mut d = [0f32; 16];
        MatMut::new(&mut d, 3, 3, 1, 1);
    }

    #[test]
    fn panels_place_elements_and_transpose() {
        // A 3×40 panelled matrix: two panels of 3×32, the second holding
        // columns 32..40 and padding.
        let d: Vec<f32> = (0..panel_len(3, 40)).map(|x| x as f32).collect();
        let p = MatRef::panels(&d, 3, 40);
        assert_eq!(p.at(1, 5), (32 + 5) as f32);
        assert_eq!(p.at(2, 33), (3 * 32 + 2 * 32 + 1) as f32);
        assert_eq!(p.t().at(33, 2), p.at(2, 33));
        assert_eq!(panel_len(3, 40), 3 * 64);
    }

    #[test]
    #[should_panic(expected = "panelled")]
    fn short_panels_panic() {
        let d = [0f32; 95];
        MatRef::panels(&d, 3, 40);
    }

    #[test]
    fn transpose_swaps() {
        let d: Vec<f32> = (0..6).map(|x| x as f32).collect();
        let a = MatRef::row_major(&d, 2, 3);
        assert_eq!(a.t().at(2, 1), a.at(1, 2));
        assert_eq!(a.t().rows(), 3);
    }
}
