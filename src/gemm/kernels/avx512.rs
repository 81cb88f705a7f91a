//! AVX-512F kernels (x86-64): 16-lane `__m512`, an 8×32 tile (16 zmm
//! accumulators, 2 for B, A broadcast from memory: ≤ 19 of 32 registers).

use std::arch::x86_64::*;

use super::Simd;
use crate::gemm::loops::SharedA;
use crate::gemm::{loops, narrow, params, small, Args, PartWs};

/// Token type for AVX-512F; only used after `Isa::Avx512.check()` succeeded.
#[derive(Clone, Copy)]
pub(crate) struct Avx512;

impl Simd for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(a: __m512, b: __m512) -> __m512 {
        _mm512_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sqrt(a: __m512) -> __m512 {
        _mm512_sqrt_ps(a)
    }
    #[inline(always)]
    unsafe fn select_pos(x: __m512, t: __m512, f: __m512) -> __m512 {
        let m = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_setzero_ps());
        _mm512_mask_blend_ps(m, f, t)
    }
    #[inline(always)]
    unsafe fn transpose8(src: *const f32, rs: isize, dst: *mut f32, w: usize) {
        super::transpose8_avx(src, rs, dst, w)
    }
    #[inline(always)]
    unsafe fn transpose16(src: *const f32, rs: isize, dst: *mut f32, w: usize) {
        super::transpose16_avx512(src, rs, dst, w)
    }
}

/// The packed loop nest with the 8×32 AVX-512 kernel.
///
/// # Safety
/// The CPU supports AVX-512F; `args` satisfies `gemm::sgemm_raw`'s contract.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn packed(args: &Args, ws: &mut PartWs, shared: Option<&SharedA<'_>>) {
    loops::nest::<Avx512, { params::AVX512.mr }, { params::AVX512.nv }>(
        args,
        &params::AVX512,
        ws,
        shared,
    )
}

/// The no-pack path.
///
/// # Safety
/// As [`packed`].
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn small(args: &Args) {
    small::small::<Avx512>(args)
}

/// The strip kernel (`narrow.rs`).
///
/// # Safety
/// As [`packed`].
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn narrow(args: &Args, ws: &mut PartWs) {
    narrow::narrow::<Avx512, { params::AVX512_NARROW_MR }, 1>(args, ws)
}
