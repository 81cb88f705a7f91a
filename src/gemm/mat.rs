//! Strided matrix views for the safe API.

/// A read-only m×n view: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// A mutable m×n view: element (i, j) is `data[i·rs + j·cs]`; distinct
/// elements never share memory.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
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

    /// The transpose, without copying (strides swapped).
    pub fn t(self) -> Self {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
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

    /// Element (i, j).
    pub fn at(&self, i: usize, j: usize) -> f32 {
        assert!(i < self.rows && j < self.cols, "MatRef::at out of range");
        self.data[i * self.rs + j * self.cs]
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

    /// A read-only view of the same elements.
    pub fn as_ref(&self) -> MatRef<'_> {
        MatRef {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
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
    fn transpose_swaps() {
        let d: Vec<f32> = (0..6).map(|x| x as f32).collect();
        let a = MatRef::row_major(&d, 2, 3);
        assert_eq!(a.t().at(2, 1), a.at(1, 2));
        assert_eq!(a.t().rows(), 3);
    }
}
