//! Portable kernels in plain Rust (every target): vectors are `[f32; 8]`
//! arrays that LLVM maps onto whatever SIMD the target has by default.
//! `fma` is a multiply then an add (no fused instruction is assumed).

use super::Simd;
use crate::gemm::loops::SharedA;
use crate::gemm::{loops, narrow, params, small, Args, PartWs};

#[derive(Clone, Copy)]
pub(crate) struct Portable;

const L: usize = 8;

impl Simd for Portable {
    type V = [f32; L];
    const LANES: usize = L;
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; L]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::V {
        [x; L]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: the caller guarantees L readable floats at p.
        (p as *const [f32; L]).read_unaligned()
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        // SAFETY: the caller guarantees L writable floats at p.
        (p as *mut [f32; L]).write_unaligned(v)
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l] * b[l] + c[l])
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l] + b[l])
    }
    #[inline(always)]
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l] * b[l])
    }
    #[inline(always)]
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l] - b[l])
    }
    #[inline(always)]
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l] / b[l])
    }
    #[inline(always)]
    unsafe fn sqrt(a: Self::V) -> Self::V {
        std::array::from_fn(|l| a[l].sqrt())
    }
    #[inline(always)]
    unsafe fn select_pos(x: Self::V, t: Self::V, f: Self::V) -> Self::V {
        std::array::from_fn(|l| if x[l] > 0.0 { t[l] } else { f[l] })
    }
}

/// The packed loop nest with the portable 4×8 kernel.
///
/// # Safety
/// `args` satisfies the contract of `gemm::sgemm_raw`.
pub(crate) unsafe fn packed(args: &Args, ws: &mut PartWs, shared: Option<&SharedA<'_>>) {
    loops::nest::<Portable, { params::SCALAR.mr }, { params::SCALAR.nv }>(
        args,
        &params::SCALAR,
        ws,
        shared,
    )
}

/// The no-pack path.
///
/// # Safety
/// As [`packed`].
pub(crate) unsafe fn small(args: &Args) {
    small::small::<Portable>(args)
}

/// The strip kernel (`narrow.rs`).
///
/// # Safety
/// As [`packed`].
pub(crate) unsafe fn narrow(args: &Args, ws: &mut PartWs) {
    narrow::narrow::<Portable, { params::SCALAR_NARROW_MR }, 2>(args, ws)
}
