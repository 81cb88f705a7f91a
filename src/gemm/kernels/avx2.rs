//! AVX2 + FMA kernels (x86-64): 8-lane `__m256`, a 6×16 tile (12 ymm
//! accumulators, 2 for B, 1 broadcast of A: 15 of 16 registers).

use std::arch::x86_64::*;

use super::Simd;
use crate::gemm::loops::SharedA;
use crate::gemm::{loops, narrow, params, small, Args, PartWs};

/// Token type for AVX2+FMA; only used after `Isa::Avx2.check()` succeeded.
#[derive(Clone, Copy)]
pub(crate) struct Avx2;

impl Simd for Avx2 {
    type V = __m256;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(a: __m256, b: __m256) -> __m256 {
        _mm256_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sqrt(a: __m256) -> __m256 {
        _mm256_sqrt_ps(a)
    }
    #[inline(always)]
    unsafe fn select_pos(x: __m256, t: __m256, f: __m256) -> __m256 {
        let m = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_setzero_ps());
        _mm256_blendv_ps(f, t, m)
    }
    #[inline(always)]
    unsafe fn transpose8(src: *const f32, rs: isize, dst: *mut f32, w: usize) {
        super::transpose8_avx(src, rs, dst, w)
    }
}

/// The packed loop nest with the 6×16 AVX2 kernel.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `args` satisfies `gemm::sgemm_raw`'s contract.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn packed(args: &Args, ws: &mut PartWs, shared: Option<&SharedA<'_>>) {
    loops::nest::<Avx2, { params::AVX2.mr }, { params::AVX2.nv }>(args, &params::AVX2, ws, shared)
}

/// The no-pack path.
///
/// # Safety
/// As [`packed`].
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn small(args: &Args) {
    small::small::<Avx2>(args)
}

/// The strip kernel (`narrow.rs`).
///
/// # Safety
/// As [`packed`].
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn narrow(args: &Args, ws: &mut PartWs) {
    narrow::narrow::<Avx2, { params::AVX2_NARROW_MR }, 2>(args, ws)
}
