//! 64-byte aligned buffers.
//!
//! Every hot buffer in fastnn (GEMM pack panels, batch matrices, parameter
//! slabs) starts on a 64-byte boundary: one cache line, and the width of an
//! AVX-512 register, so aligned loads never straddle two lines.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// The alignment of every [`AlignedBuf`], in bytes.
pub const ALIGN: usize = 64;

/// Element types an [`AlignedBuf`] may hold: plain numbers for which the
/// all-zero bit pattern is a valid value.
///
/// # Safety
/// Implementors must be `Copy`, have no drop glue, and accept all-zero bytes
/// as a valid value (the buffer is zero-initialised).
pub unsafe trait Zeroable: Copy + 'static {}
unsafe impl Zeroable for f32 {}
unsafe impl Zeroable for f64 {}
unsafe impl Zeroable for u8 {}
unsafe impl Zeroable for u32 {}

/// A fixed-length, zero-initialised, 64-byte aligned heap buffer.
pub struct AlignedBuf<T: Zeroable> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<T>.
unsafe impl<T: Zeroable + Send> Send for AlignedBuf<T> {}
unsafe impl<T: Zeroable + Sync> Sync for AlignedBuf<T> {}

impl<T: Zeroable> AlignedBuf<T> {
    /// Allocates `len` zeroed elements aligned to [`ALIGN`] bytes.
    ///
    /// Panics if the size overflows `isize`; aborts (as `Vec` does) if the
    /// allocator fails.
    pub fn zeroed(len: usize) -> Self {
        if len == 0 || std::mem::size_of::<T>() == 0 {
            // A dangling pointer aligned to ALIGN: never dereferenced, since
            // the slice it backs is empty.
            let ptr = NonNull::new(ALIGN as *mut T).expect("ALIGN is non-zero");
            return AlignedBuf { ptr, len: 0 };
        }
        let layout = Self::layout(len);
        // SAFETY: layout has a non-zero size (len > 0 and T is not a ZST).
        let raw = unsafe { alloc::alloc_zeroed(layout) } as *mut T;
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    /// Allocates a buffer holding a copy of `src`.
    pub fn from_slice(src: &[T]) -> Self {
        let mut buf = Self::zeroed(src.len());
        buf.copy_from_slice(src);
        buf
    }

    fn layout(len: usize) -> Layout {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .expect("AlignedBuf size overflows usize");
        Layout::from_size_align(bytes, ALIGN).expect("AlignedBuf size overflows isize")
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Zeroable> Default for AlignedBuf<T> {
    /// An empty buffer (allocates nothing).
    fn default() -> Self {
        Self::zeroed(0)
    }
}

impl<T: Zeroable> Deref for AlignedBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: ptr is valid for len initialised elements (zeroed at
        // allocation, T accepts zero bytes) or dangling-but-aligned with len 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> DerefMut for AlignedBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> Drop for AlignedBuf<T> {
    fn drop(&mut self) {
        if self.len != 0 && std::mem::size_of::<T>() != 0 {
            // SAFETY: allocated in `zeroed` with exactly this layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr() as *mut u8, Self::layout(self.len)) }
        }
    }
}

impl<T: Zeroable> Clone for AlignedBuf<T> {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl<T: Zeroable + std::fmt::Debug> std::fmt::Debug for AlignedBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_zeroed() {
        for len in [1usize, 7, 33, 1000, 4096 + 3] {
            let buf = AlignedBuf::<f32>::zeroed(len);
            assert_eq!(buf.as_ptr() as usize % ALIGN, 0, "len {len}");
            assert_eq!(buf.len(), len);
            assert!(buf.iter().all(|&x| x == 0.0));
        }
        let empty = AlignedBuf::<u8>::zeroed(0);
        assert!(empty.is_empty());
        assert_eq!(empty.as_ptr() as usize % ALIGN, 0);
    }

    #[test]
    fn writes_stay_inside_and_clone_copies() {
        let mut buf = AlignedBuf::<f64>::zeroed(13);
        for (i, x) in buf.iter_mut().enumerate() {
            *x = i as f64;
        }
        let copy = buf.clone();
        buf[0] = 99.0;
        assert_eq!(copy[0], 0.0);
        assert_eq!(copy[12], 12.0);
        assert_eq!(copy.as_ptr() as usize % ALIGN, 0);
    }
}
