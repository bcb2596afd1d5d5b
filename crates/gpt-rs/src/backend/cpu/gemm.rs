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
use crate::backend::SendPtr;

/// Rows below which the GEMV path wins (no packing).
const SMALL_M: usize = 8;
/// Depth of a packed block.
const KC: usize = 256;
/// Column chunk of the GEMV path (accumulators live on the stack, in L1).
const GEMV_CHUNK: usize = 2048;
/// Rows of `b` per task in `matmul_nt`'s dot-product path.
const NT_CHUNK: usize = 512;

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

/// `C[i, j0..j0+cw] += a[i, :] @ B[:, j0..j0+cw]` for the few rows of the GEMV path.
///
/// B is streamed row by row (four rows at a time, contiguous `cw`-wide segments) into
/// accumulators that stay in L1. Each `KC` block is accumulated from zero with one FMA per `k`
/// in order, then added to C: exactly the blocked GEMM's arithmetic, so a row's result does not
/// depend on how many rows share the call (batched generation equals one-by-one generation).
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
    let mut acc = [0.0f32; GEMV_CHUNK];
    let vec_end = cw - cw % V::W;
    let bp = b.as_ptr();
    let mut p0 = 0;
    while p0 < k {
        let kc = (k - p0).min(KC);
        for i in 0..m {
            let ai = &a[i * k + p0..i * k + p0 + kc];
            let y = acc.as_mut_ptr();
            // SAFETY: rows p0..p0+kc and columns j0..j0+cw lie inside B (k x n); y holds cw.
            unsafe {
                std::ptr::write_bytes(y, 0, cw);
                let mut r = 0;
                while r + 4 <= kc {
                    let (x0, x1, x2, x3) = (
                        V::splat(ai[r]),
                        V::splat(ai[r + 1]),
                        V::splat(ai[r + 2]),
                        V::splat(ai[r + 3]),
                    );
                    let row = bp.add((p0 + r) * n + j0);
                    let mut j = 0;
                    while j < vec_end {
                        let mut yv = V::load(y.add(j));
                        yv = V::fma(x0, V::load(row.add(j)), yv);
                        yv = V::fma(x1, V::load(row.add(n + j)), yv);
                        yv = V::fma(x2, V::load(row.add(2 * n + j)), yv);
                        yv = V::fma(x3, V::load(row.add(3 * n + j)), yv);
                        yv.store(y.add(j));
                        j += V::W;
                    }
                    r += 4;
                }
                while r < kc {
                    let x0 = V::splat(ai[r]);
                    let row = bp.add((p0 + r) * n + j0);
                    let mut j = 0;
                    while j < vec_end {
                        V::fma(x0, V::load(row.add(j)), V::load(y.add(j))).store(y.add(j));
                        j += V::W;
                    }
                    r += 1;
                }
                // Tail columns: `mul_add` is the same fused FMA as the vector lanes (W > 1 only
                // happens in FMA-enabled instances; the scalar instance has no tail).
                for j in vec_end..cw {
                    let mut t = 0.0f32;
                    for (r, &ar) in ai.iter().enumerate() {
                        t = ar.mul_add(*bp.add((p0 + r) * n + j0 + j), t);
                    }
                    *y.add(j) = t;
                }
                let dst = c.0.add(i * n + j0);
                for (j, &v) in acc[..cw].iter().enumerate() {
                    *dst.add(j) += v;
                }
            }
        }
        p0 += kc;
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

/// How the right-hand operand is stored.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BLayout {
    /// `[k, n]` row-major (`a @ b`).
    KN,
    /// `[n, k]` row-major (`a @ b^T`).
    NK,
}

/// Packs `B[p0..p0+kc, j0..j1]` into panels of `nr` columns (zero-padded at the right edge).
fn pack_b(
    b: &[f32],
    layout: BLayout,
    k: usize,
    n: usize,
    j0: usize,
    j1: usize,
    p0: usize,
    kc: usize,
    nr: usize,
    out: &mut [f32],
) {
    for (panel, dst) in out.chunks_exact_mut(kc * nr).enumerate() {
        let c0 = j0 + panel * nr;
        let cols = (j1 - c0).min(nr);
        match layout {
            BLayout::KN => {
                for p in 0..kc {
                    let d = &mut dst[p * nr..(p + 1) * nr];
                    d[..cols].copy_from_slice(&b[(p0 + p) * n + c0..(p0 + p) * n + c0 + cols]);
                    d[cols..].fill(0.0);
                }
            }
            BLayout::NK => {
                // A transpose in 8-column strips: 8 rows of b are read side by side (each
                // sequentially) and every packed row gets 8 contiguous values.
                dst.fill(0.0);
                let mut j = 0;
                while j + 8 <= cols {
                    let rows: [&[f32]; 8] = std::array::from_fn(|r| {
                        &b[(c0 + j + r) * k + p0..(c0 + j + r) * k + p0 + kc]
                    });
                    for p in 0..kc {
                        let d = &mut dst[p * nr + j..p * nr + j + 8];
                        for (r, row) in rows.iter().enumerate() {
                            d[r] = row[p];
                        }
                    }
                    j += 8;
                }
                for jj in j..cols {
                    let src = &b[(c0 + jj) * k + p0..(c0 + jj) * k + p0 + kc];
                    for (p, &v) in src.iter().enumerate() {
                        dst[p * nr + jj] = v;
                    }
                }
            }
        }
    }
}

/// How A is stored: `[m, k]` row-major, or transposed (`[k, m]`, for `C += A^T B`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ALayout {
    MK,
    KM,
}

/// Packs `A[0..m, p0..p0+kc]` (row stride `k`, or transposed storage) into strips of `mr`
/// rows, column-major within a strip (zero rows past `m`).
#[allow(clippy::too_many_arguments)]
fn pack_a(
    a: &[f32],
    layout: ALayout,
    m: usize,
    k: usize,
    p0: usize,
    kc: usize,
    mr: usize,
    out: &mut [f32],
) {
    for (strip, dst) in out.chunks_exact_mut(mr * kc).enumerate() {
        let i0 = strip * mr;
        let rows = m.saturating_sub(i0).min(mr);
        if layout == ALayout::KM {
            // Stored [k, m]: each packed column is `rows` contiguous values of one stored row.
            for p in 0..kc {
                let d = &mut dst[p * mr..(p + 1) * mr];
                d[..rows].copy_from_slice(&a[(p0 + p) * m + i0..(p0 + p) * m + i0 + rows]);
                d[rows..].fill(0.0);
            }
            continue;
        }
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
    }
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
    crate::backend::init_output(c, bias, n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let (_, gemv_fn) = kernels(level());
    if m < SMALL_M {
        let cp = SendPtr(c.as_mut_ptr());
        // SAFETY: chunk [j0, j0+cw) writes only those columns of C's m rows.
        column_chunks(n, m * k * n, GEMV_CHUNK, |j0, cw| unsafe {
            gemv_fn(a, b, cp, m, k, n, j0, cw)
        });
        return;
    }
    gemm(a, ALayout::MK, b, BLayout::KN, c, m, k, n)
}

/// `c += a^T @ b` with `a` stored `[k, m]` (weight gradients); runs inside the engine's pool.
pub fn matmul_tn_acc(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    gemm(a, ALayout::KM, b, BLayout::KN, c, m, k, n)
}

/// Rows below which `matmul_nt` uses dot products (no packing; each row is computed the same
/// way whatever the row count, so batched decoding equals one-by-one decoding).
const NT_SMALL_M: usize = 16;

/// `c = a @ b^T` with `b` stored `[n, k]`; runs inside the engine's thread pool.
pub fn matmul_nt(
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    crate::backend::init_output(c, bias, n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    if m < NT_SMALL_M {
        let cp = SendPtr(c.as_mut_ptr());
        column_chunks(n, m * k * n, NT_CHUNK, |j0, cw| {
            // SAFETY: this chunk writes only columns j0..j0+cw of the m rows of C (row stride n).
            unsafe {
                super::math::dots_add_rows(a, &b[j0 * k..(j0 + cw) * k], cp.get().add(j0), k, n, m)
            }
        });
        return;
    }
    gemm(a, ALayout::MK, b, BLayout::NK, c, m, k, n)
}

/// Threads to split over: the engine pool's size on a pool thread, 1 elsewhere (small products
/// run on the caller's thread and must not fork onto rayon's global pool).
fn pool_threads() -> usize {
    if rayon::current_thread_index().is_some() {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// Calls `f(j0, width)` over chunks of `0..n` columns (at most `max_chunk` wide, about two per
/// thread), in parallel when `work` is large.
fn column_chunks(n: usize, work: usize, max_chunk: usize, f: impl Fn(usize, usize) + Sync + Send) {
    let threads = pool_threads();
    let per_task = n
        .div_ceil(threads * 2)
        .next_multiple_of(16)
        .clamp(16, max_chunk);
    let chunks = n.div_ceil(per_task);
    let run = |t: usize| {
        let j0 = t * per_task;
        f(j0, (n - j0).min(per_task))
    };
    if threads == 1 || work < 1 << 15 {
        (0..chunks).for_each(run);
    } else {
        (0..chunks).into_par_iter().for_each(run);
    }
}

thread_local! {
    /// Per-thread buffer for packed A strips, grown once and reused.
    static PACK_A: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread buffer for packed B panels, grown once and reused.
    static PACK_B: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The blocked GEMM: `C += A @ B` (B in `layout`).
///
/// A is packed once (all K blocks, strips in parallel). Then one parallel region over
/// `column group` tasks of equal width (about 4 per thread): each walks the K blocks, packs
/// its own B panels into a per-thread buffer and runs the micro-kernel over all strips.
#[allow(clippy::too_many_arguments)]
fn gemm(
    a: &[f32],
    a_layout: ALayout,
    b: &[f32],
    layout: BLayout,
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    let (tile_fn, _) = kernels(level());
    let cp = SendPtr(c.as_mut_ptr());
    let (mr, nr) = blocking(level());
    let threads = pool_threads();
    let strips = m.div_ceil(mr);
    let panels = n.div_ceil(nr);
    let kblocks = k.div_ceil(KC);
    // A packed per K block: block `kb` holds all strips for columns kb*KC..kb*KC+kc. The
    // buffer is the calling thread's, reused across calls (taken out while in use, so a
    // nested GEMM that runs on this thread meanwhile gets its own).
    let mut apack_buf = PACK_A.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if apack_buf.len() < strips * mr * k {
        apack_buf.resize(strips * mr * k, 0.0);
    }
    apack_buf[..strips * mr * k]
        .par_chunks_mut(strips * mr * KC)
        .enumerate()
        .for_each(|(kb, dst)| {
            let kc = (k - kb * KC).min(KC);
            pack_a(
                a,
                a_layout,
                m,
                k,
                kb * KC,
                kc,
                mr,
                &mut dst[..strips * mr * kc],
            );
        });
    let want_tasks = if threads == 1 { 1 } else { threads * 4 };
    let panels_per_group = panels.div_ceil(want_tasks.min(panels));
    let n_groups = panels.div_ceil(panels_per_group);
    let apack = &apack_buf[..];
    let task = |g: usize| {
        let pg = (
            g * panels_per_group,
            ((g + 1) * panels_per_group).min(panels),
        );
        let (j0, j1) = (pg.0 * nr, (pg.1 * nr).min(n));
        PACK_B.with(|buf| {
            let bpack = &mut *buf.borrow_mut();
            let blen = (pg.1 - pg.0) * nr * k.min(KC);
            if bpack.len() < blen {
                bpack.resize(blen, 0.0);
            }
            for kb in 0..kblocks {
                let (p0, kc) = (kb * KC, (k - kb * KC).min(KC));
                let bp = &mut bpack[..(pg.1 - pg.0) * nr * kc];
                pack_b(b, layout, k, n, j0, j1, p0, kc, nr, bp);
                let ap = &apack[kb * strips * mr * KC..kb * strips * mr * KC + strips * mr * kc];
                // SAFETY: this task writes only columns j0..j1 of C; the pointer and leading
                // dimension describe the sub-matrix starting at column j0.
                let sub = SendPtr(unsafe { cp.get().add(j0) });
                unsafe {
                    tile_fn(
                        kc,
                        ap,
                        bp,
                        sub,
                        n,
                        m,
                        j1 - j0,
                        (0, strips),
                        (0, pg.1 - pg.0),
                    )
                };
            }
        });
    };
    if n_groups == 1 {
        task(0);
    } else {
        (0..n_groups).into_par_iter().for_each(task);
    }
    PACK_A.with(|b| *b.borrow_mut() = apack_buf);
}
