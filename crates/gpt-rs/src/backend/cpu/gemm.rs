//! The `cpu` backend's matrix multiply: `C[m, n] = A[m, k] @ B[k, n] (+ bias[n])`.
//!
//! Two paths:
//! - `m < SMALL_M` (decode, GEMV-like): B is streamed once, row by row, four rows at a time,
//!   into accumulators that stay in L1; threads split the columns.
//! - otherwise a GotoBLAS-style blocked GEMM: B is packed into `kc x NR` panels and A into
//!   `MR x kc` strips, and an `MR x NR` register-blocked micro-kernel does the FMAs; threads
//!   split the C tiles.
//!
//! Each level (AVX-512, AVX2+FMA, baseline) instantiates the same generic code with its
//! vector type; `simd::level()` picks one at run time.

use rayon::prelude::*;

use super::simd::{level, SimdLevel};

/// Rows below which the GEMV path wins (no packing).
const SMALL_M: usize = 8;
/// Depth of a packed block.
const KC: usize = 256;
/// C tile handled by one task: `TILE_M` rows by `TILE_N` columns.
const TILE_M: usize = 96;
const TILE_N: usize = 256;
/// Column chunk of the GEMV path (accumulators live on the stack, in L1).
const GEMV_CHUNK: usize = 512;

/// A vector of f32 lanes with fused multiply-add.
trait Vf: Copy {
    const W: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// `a * b + c`.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
}

#[derive(Clone, Copy)]
struct Scalar(f32);
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
mod x86 {
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

/// Register blocking per level: (MR rows, NV vectors of W lanes).
fn blocking(l: SimdLevel) -> (usize, usize) {
    match l {
        SimdLevel::Avx512 => (8, 32),
        SimdLevel::Avx2 => (6, 16),
        SimdLevel::Scalar => (4, 4),
    }
}

/// A raw pointer that tasks writing disjoint parts of one buffer can share.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: every task writes a disjoint set of elements (distinct rows/columns of C).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// The MR x NR micro-kernel: `C[0..MR, 0..NR] (+)= Apack(MR x kc) @ Bpack(kc x NR)`.
#[inline(always)]
unsafe fn micro<V: Vf, const MR: usize, const NV: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
) {
    let nr = NV * V::W;
    unsafe {
        let mut acc = [[V::zero(); NV]; MR];
        for p in 0..kc {
            let bp = b.add(p * nr);
            let mut bv = [V::zero(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = V::load(bp.add(v * V::W));
            }
            let ap = a.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let av = V::splat(*ap.add(i));
                for v in 0..NV {
                    row[v] = V::fma(av, bv[v], row[v]);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                let dst = c.add(i * ldc + v * V::W);
                V::add(*x, V::load(dst)).store(dst);
            }
        }
    }
}

/// Accumulates one C tile: strips `s0..s1` of packed A times panels `p0..p1` of packed B.
/// Full MR x NR blocks go straight to C; edge blocks go through a scratch tile.
#[inline(always)]
unsafe fn tile<V: Vf, const MR: usize, const NV: usize>(
    kc: usize,
    apack: &[f32],
    bpack: &[f32],
    c: SendPtr,
    ldc: usize,
    m: usize,
    n: usize,
    strips: (usize, usize),
    panels: (usize, usize),
) {
    let nr = NV * V::W;
    let mut scratch = [0.0f32; 512];
    debug_assert!(MR * nr <= scratch.len());
    for s in strips.0..strips.1 {
        let rows = (m - s * MR).min(MR);
        let a = apack[s * MR * kc..].as_ptr();
        for p in panels.0..panels.1 {
            let cols = (n - p * nr).min(nr);
            let b = bpack[p * kc * nr..].as_ptr();
            // SAFETY: C is m x n with row stride ldc; the block starts at (s*MR, p*nr) and
            // a full block stays in bounds; partial blocks use the scratch tile.
            unsafe {
                let dst = c.0.add(s * MR * ldc + p * nr);
                if rows == MR && cols == nr {
                    micro::<V, MR, NV>(kc, a, b, dst, ldc);
                } else {
                    scratch[..MR * nr].fill(0.0);
                    micro::<V, MR, NV>(kc, a, b, scratch.as_mut_ptr(), nr);
                    for i in 0..rows {
                        for j in 0..cols {
                            *dst.add(i * ldc + j) += scratch[i * nr + j];
                        }
                    }
                }
            }
        }
    }
}

/// `y[i, 0..cw] (+)= a[i, :] @ B[:, j0..j0+cw]` for the few rows of the GEMV path.
#[inline(always)]
unsafe fn gemv_chunk<V: Vf>(
    a: &[f32],
    b: &[f32],
    c: SendPtr,
    m: usize,
    k: usize,
    n: usize,
    j0: usize,
    cw: usize,
) {
    let mut acc = [0.0f32; SMALL_M * GEMV_CHUNK];
    let vec_end = cw - cw % V::W;
    unsafe {
        let mut p = 0;
        while p < k {
            let rows_k = (k - p).min(4);
            for i in 0..m {
                let y = acc[i * GEMV_CHUNK..].as_mut_ptr();
                let ai = &a[i * k + p..i * k + p + rows_k];
                let mut j = 0;
                while j < vec_end {
                    let mut yv = V::load(y.add(j));
                    for (r, &ar) in ai.iter().enumerate() {
                        yv = V::fma(
                            V::splat(ar),
                            V::load(b.as_ptr().add((p + r) * n + j0 + j)),
                            yv,
                        );
                    }
                    yv.store(y.add(j));
                    j += V::W;
                }
                for j in vec_end..cw {
                    for (r, &ar) in ai.iter().enumerate() {
                        *y.add(j) += ar * b[(p + r) * n + j0 + j];
                    }
                }
            }
            p += rows_k;
        }
        for i in 0..m {
            let dst = c.0.add(i * n + j0);
            for j in 0..cw {
                *dst.add(j) += acc[i * GEMV_CHUNK + j];
            }
        }
    }
}

/// Instantiates `tile` and `gemv_chunk` for one SIMD level.
macro_rules! level_fns {
    ($tile:ident, $gemv:ident, $feat:literal, $V:ty, $mr:literal, $nv:literal) => {
        #[cfg_attr(target_arch = "x86_64", target_feature(enable = $feat))]
        unsafe fn $tile(
            kc: usize,
            ap: &[f32],
            bp: &[f32],
            c: SendPtr,
            ldc: usize,
            m: usize,
            n: usize,
            s: (usize, usize),
            p: (usize, usize),
        ) {
            unsafe { tile::<$V, $mr, $nv>(kc, ap, bp, c, ldc, m, n, s, p) }
        }
        #[cfg_attr(target_arch = "x86_64", target_feature(enable = $feat))]
        unsafe fn $gemv(
            a: &[f32],
            b: &[f32],
            c: SendPtr,
            m: usize,
            k: usize,
            n: usize,
            j0: usize,
            cw: usize,
        ) {
            unsafe { gemv_chunk::<$V>(a, b, c, m, k, n, j0, cw) }
        }
    };
}
#[cfg(target_arch = "x86_64")]
level_fns!(tile_512, gemv_512, "avx512f,avx2,fma", x86::V512, 8, 2);
#[cfg(target_arch = "x86_64")]
level_fns!(tile_256, gemv_256, "avx2,fma", x86::V256, 6, 2);

unsafe fn tile_scalar(
    kc: usize,
    ap: &[f32],
    bp: &[f32],
    c: SendPtr,
    ldc: usize,
    m: usize,
    n: usize,
    s: (usize, usize),
    p: (usize, usize),
) {
    unsafe { tile::<Scalar, 4, 4>(kc, ap, bp, c, ldc, m, n, s, p) }
}
unsafe fn gemv_scalar(
    a: &[f32],
    b: &[f32],
    c: SendPtr,
    m: usize,
    k: usize,
    n: usize,
    j0: usize,
    cw: usize,
) {
    unsafe { gemv_chunk::<Scalar>(a, b, c, m, k, n, j0, cw) }
}

type TileFn =
    unsafe fn(usize, &[f32], &[f32], SendPtr, usize, usize, usize, (usize, usize), (usize, usize));
type GemvFn = unsafe fn(&[f32], &[f32], SendPtr, usize, usize, usize, usize, usize);

fn kernels(l: SimdLevel) -> (TileFn, GemvFn) {
    match l {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => (tile_512, gemv_512),
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => (tile_256, gemv_256),
        _ => (tile_scalar, gemv_scalar),
    }
}

/// Packs `B[p0..p0+kc, :]` into panels of `nr` columns (zero-padded at the right edge).
fn pack_b(b: &[f32], n: usize, p0: usize, kc: usize, nr: usize, out: &mut [f32]) {
    out.par_chunks_mut(kc * nr)
        .enumerate()
        .for_each(|(panel, dst)| {
            let j0 = panel * nr;
            let cols = (n - j0).min(nr);
            for p in 0..kc {
                let src = &b[(p0 + p) * n + j0..(p0 + p) * n + j0 + cols];
                let d = &mut dst[p * nr..(p + 1) * nr];
                d[..cols].copy_from_slice(src);
                d[cols..].fill(0.0);
            }
        });
}

/// Packs `A[:, p0..p0+kc]` into strips of `mr` rows, column-major within a strip.
fn pack_a(a: &[f32], m: usize, k: usize, p0: usize, kc: usize, mr: usize, out: &mut [f32]) {
    out.par_chunks_mut(mr * kc)
        .enumerate()
        .for_each(|(strip, dst)| {
            let i0 = strip * mr;
            let rows = (m - i0).min(mr);
            for i in 0..mr {
                if i < rows {
                    let src = &a[(i0 + i) * k + p0..(i0 + i) * k + p0 + kc];
                    for (p, &v) in src.iter().enumerate() {
                        dst[p * mr + i] = v;
                    }
                } else {
                    for p in 0..kc {
                        dst[p * mr + i] = 0.0;
                    }
                }
            }
        });
}

/// `c = a @ b (+ bias)`; runs inside the engine's thread pool.
pub fn matmul(
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    // Start from the bias (or zero) and accumulate into C.
    match bias {
        Some(bias) => c
            .chunks_exact_mut(n.max(1))
            .for_each(|row| row.copy_from_slice(bias)),
        None => c.fill(0.0),
    }
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let (tile_fn, gemv_fn) = kernels(level());
    let cp = SendPtr(c.as_mut_ptr());
    let threads = rayon::current_num_threads();
    if m < SMALL_M {
        let per_task = n
            .div_ceil(threads * 2)
            .next_multiple_of(16)
            .clamp(16, GEMV_CHUNK);
        let chunks = n.div_ceil(per_task);
        let run = |t: usize| {
            let j0 = t * per_task;
            let cw = (n - j0).min(per_task);
            // SAFETY: chunk t writes only columns j0..j0+cw of C's m rows.
            unsafe { gemv_fn(a, b, cp, m, k, n, j0, cw) }
        };
        if threads == 1 || m * k * n < 1 << 15 {
            (0..chunks).for_each(run);
        } else {
            (0..chunks).into_par_iter().for_each(run);
        }
        return;
    }
    let (mr, nr) = blocking(level());
    let strips = m.div_ceil(mr);
    let panels = n.div_ceil(nr);
    let kc_max = k.min(KC);
    let mut bpack = vec![0.0f32; panels * kc_max * nr];
    let mut apack = vec![0.0f32; strips * mr * kc_max];
    let strips_per_tile = (TILE_M / mr).max(1);
    let panels_per_tile = (TILE_N / nr).max(1);
    let tiles_m = strips.div_ceil(strips_per_tile);
    let tiles_n = panels.div_ceil(panels_per_tile);
    let mut p0 = 0;
    while p0 < k {
        let kc = (k - p0).min(KC);
        pack_b(b, n, p0, kc, nr, &mut bpack[..panels * kc * nr]);
        pack_a(a, m, k, p0, kc, mr, &mut apack[..strips * mr * kc]);
        let (ap, bp) = (&apack[..strips * mr * kc], &bpack[..panels * kc * nr]);
        (0..tiles_m * tiles_n).into_par_iter().for_each(|t| {
            let (tm, tn) = (t / tiles_n, t % tiles_n);
            let s = (
                tm * strips_per_tile,
                ((tm + 1) * strips_per_tile).min(strips),
            );
            let p = (
                tn * panels_per_tile,
                ((tn + 1) * panels_per_tile).min(panels),
            );
            // SAFETY: tile (tm, tn) writes only its own rows and columns of C.
            unsafe { tile_fn(kc, ap, bp, cp, n, m, n, s, p) }
        });
        p0 += kc;
    }
}
