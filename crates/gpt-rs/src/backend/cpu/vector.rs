//! The SIMD vector types the `cpu` backend's matrix kernels are generic over: one instance per
//! level (AVX-512, AVX2+FMA, scalar), picked at run time by `simd::level()`.

/// A vector of f32 lanes with fused multiply-add.
pub(super) trait Vf: Copy {
    const W: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    /// `2W` bf16 values (bits) widened to f32 (exact: a bf16 is the top half of an f32) with
    /// one load and two bit operations: the even-indexed
    /// values, then the odd-indexed ones (`interleave` restores the order).
    unsafe fn load_bf16_split(p: *const u16) -> (Self, Self);
    /// The inverse of `load_bf16_split`'s order: lanes `(even, odd)` back to values
    /// `0..W` and `W..2W`.
    unsafe fn interleave(even: Self, odd: Self) -> (Self, Self);
    unsafe fn store(self, p: *mut f32);
    /// `a * b + c`.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
}

#[derive(Clone, Copy)]
pub(super) struct Scalar(f32);
impl Vf for Scalar {
    const W: usize = 1;
    unsafe fn zero() -> Self {
        Scalar(0.0)
    }
    unsafe fn splat(x: f32) -> Self {
        Scalar(x)
    }
    unsafe fn load(p: *const f32) -> Self {
        Scalar(unsafe { *p })
    }
    unsafe fn load_bf16_split(p: *const u16) -> (Self, Self) {
        // A bf16 is the top half of an f32: widening is exact.
        let widen = |b: u16| Scalar(f32::from_bits((b as u32) << 16));
        unsafe { (widen(*p), widen(*p.add(1))) }
    }
    unsafe fn interleave(even: Self, odd: Self) -> (Self, Self) {
        (even, odd)
    }
    unsafe fn store(self, p: *mut f32) {
        unsafe { *p = self.0 }
    }
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        Scalar(a.0 * b.0 + c.0)
    }
    unsafe fn add(a: Self, b: Self) -> Self {
        Scalar(a.0 + b.0)
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::Vf;
    use std::arch::x86_64::*;

    // SAFETY (both impls): only instantiated inside functions compiled with the matching
    // target features, which `simd::level()` guarantees the CPU has; loads and stores are
    // unaligned and callers keep them within their slices.
    #[derive(Clone, Copy)]
    pub struct V256(__m256);
    impl Vf for V256 {
        const W: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { V256(_mm256_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { V256(_mm256_set1_ps(x)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { V256(_mm256_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn load_bf16_split(p: *const u16) -> (Self, Self) {
            unsafe {
                // Each 32-bit lane holds values 2i (low half) and 2i + 1 (high half).
                let x = _mm256_loadu_si256(p.cast());
                let even = _mm256_slli_epi32::<16>(x);
                let odd = _mm256_and_si256(x, _mm256_set1_epi32(0xFFFF_0000u32 as i32));
                (
                    V256(_mm256_castsi256_ps(even)),
                    V256(_mm256_castsi256_ps(odd)),
                )
            }
        }
        #[inline(always)]
        unsafe fn interleave(even: Self, odd: Self) -> (Self, Self) {
            unsafe {
                // unpack: [0 1 2 3 | 8 9 10 11] and [4 5 6 7 | 12 13 14 15]; then halves.
                let lo = _mm256_unpacklo_ps(even.0, odd.0);
                let hi = _mm256_unpackhi_ps(even.0, odd.0);
                (
                    V256(_mm256_permute2f128_ps::<0x20>(lo, hi)),
                    V256(_mm256_permute2f128_ps::<0x31>(lo, hi)),
                )
            }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            unsafe { V256(_mm256_fmadd_ps(a.0, b.0, c.0)) }
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            unsafe { V256(_mm256_add_ps(a.0, b.0)) }
        }
    }

    #[derive(Clone, Copy)]
    pub struct V512(__m512);
    impl Vf for V512 {
        const W: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { V512(_mm512_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { V512(_mm512_set1_ps(x)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { V512(_mm512_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn load_bf16_split(p: *const u16) -> (Self, Self) {
            unsafe {
                let x = _mm512_loadu_si512(p.cast());
                let even = _mm512_slli_epi32::<16>(x);
                let odd = _mm512_and_si512(x, _mm512_set1_epi32(0xFFFF_0000u32 as i32));
                (
                    V512(_mm512_castsi512_ps(even)),
                    V512(_mm512_castsi512_ps(odd)),
                )
            }
        }
        #[inline(always)]
        unsafe fn interleave(even: Self, odd: Self) -> (Self, Self) {
            unsafe {
                let lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
                let hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
                (
                    V512(_mm512_permutex2var_ps(even.0, lo, odd.0)),
                    V512(_mm512_permutex2var_ps(even.0, hi, odd.0)),
                )
            }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            unsafe { V512(_mm512_fmadd_ps(a.0, b.0, c.0)) }
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            unsafe { V512(_mm512_add_ps(a.0, b.0)) }
        }
    }
}

/// An element type a prepared weight's panels store: loaded as f32 lanes.
/// Kernels load `2W` elements at a time (`load2`) into two vectors whose lanes may hold them
/// in another order, accumulate, and put the sums back in order once (`order`): bf16 widens
/// by bit operations on one load that way, without a widening shuffle per vector.
pub(super) trait PanelElem: Copy + Send + Sync + 'static {
    unsafe fn load2<V: Vf>(p: *const Self) -> (V, V);
    unsafe fn order<V: Vf>(a: V, b: V) -> (V, V);
}
impl PanelElem for f32 {
    #[inline(always)]
    unsafe fn load2<V: Vf>(p: *const f32) -> (V, V) {
        unsafe { (V::load(p), V::load(p.add(V::W))) }
    }
    #[inline(always)]
    unsafe fn order<V: Vf>(a: V, b: V) -> (V, V) {
        (a, b)
    }
}
/// bf16, as its bits: even values in the first vector, odd ones in the second.
impl PanelElem for u16 {
    #[inline(always)]
    unsafe fn load2<V: Vf>(p: *const u16) -> (V, V) {
        unsafe { V::load_bf16_split(p) }
    }
    #[inline(always)]
    unsafe fn order<V: Vf>(a: V, b: V) -> (V, V) {
        unsafe { V::interleave(a, b) }
    }
}

/// Hints the CPU to fetch the cache line holding `p` into L1 (no-op off x86_64). Never faults,
/// so `p` may point past the end of a buffer (computed with `wrapping_add`).
#[inline(always)]
pub(super) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it reads nothing architecturally and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
