//! The decode path of the `cpu` backend's matrix multiply: products with a few rows of A
//! (GEMV-like). Every weight is read once per call, so these are bound by memory bandwidth:
//! the kernels keep the weight streams sequential and the accumulators in registers or cache.
//!
//! - `[k, n]` weights (`a @ b`, `functional.matmul`): B is streamed eight rows at a time into
//!   column accumulators in L2; threads split the columns, or, for one row and narrow
//!   outputs (1x3072x768), the blocks of depth (`depth_blocks`). (Prefetching rows ahead here
//!   did not help in measurements, so it is not done.)
//! - `[n, k]` weights (`a @ b^T`, e.g. the tied output projection): one dot product per
//!   output, each weight row read once for all rows of A. A thread's rows are one contiguous
//!   stream, and software prefetch runs `simd::stream_prefetch()` floats ahead of it on the
//!   CPUs where that helps (Intel, not AMD: docs/performance.md, "Software prefetch").
//! - `Panels` (how the GPT-2 runtime keeps its projections): each panel is one contiguous
//!   stream of `[k, PANEL]` rows, prefetched the same way, into register accumulators. With
//!   one row of A (decode at batch 1) each thread reads two panels side by side.

use super::simd::{level, stream_prefetch, SimdLevel};
#[cfg(target_arch = "x86_64")]
use super::vector::x86;
use super::vector::{prefetch, PanelElem, Scalar, Vf};
use super::KC;
use crate::backend::{Panels, SendPtr, PANEL};

/// Column chunk of the `[k, n]` path (64 KiB of accumulators, in L2).
const GEMV_CHUNK: usize = 16384;
/// Rows of `b` per task in the `[n, k]` path.
const NT_CHUNK: usize = 512;

/// `c[m, n] += a[m, k] @ b[k, n]` for a few rows of `a` (on the pool or the caller's thread).
pub(super) fn matmul_rows(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    let kernel = kernels(level()).kn;
    if m == 1 && split_depth(n, k) {
        return depth_blocks(a, b, c, k, n);
    }
    let cp = SendPtr(c.as_mut_ptr());
    // SAFETY: chunk [j0, j0+cw) writes only those columns of C's m rows.
    column_chunks(n, m * k * n, GEMV_CHUNK, 16, |j0, cw| unsafe {
        kernel(a, b, cp, m, k, n, j0, cw)
    });
}

/// Whether a one-row `[k, n]` product splits over `KC` blocks of depth rather than over
/// columns: when the threads' column chunks would be short runs of each weight row (under
/// 1024 columns, 4 KiB) and there are enough blocks for every task. One thread never splits.
fn split_depth(n: usize, k: usize) -> bool {
    let threads = threads_here();
    threads > 1
        && n.div_ceil(2 * threads) < 1024
        && k.div_ceil(KC) >= 2 * threads
        && k * n >= 1 << 17
}

/// `c[0, :] += a[0, :] @ b` split over the `KC` blocks of depth: each block's product goes to
/// its own partial row (on any thread), and the partial rows are added to C in block order:
/// the arithmetic of `kn_chunk` on one thread (each block accumulated from zero, then added
/// to C in order), so the result does not depend on the thread count.
fn depth_blocks(a: &[f32], b: &[f32], c: &mut [f32], k: usize, n: usize) {
    let kernel = kernels(level()).kn;
    let blocks = k.div_ceil(KC);
    let mut partial = vec![0.0f32; blocks * n];
    let pp = SendPtr(partial.as_mut_ptr());
    crate::threads::for_each_index(blocks, &|q| {
        let (p0, kc) = (q * KC, (k - q * KC).min(KC));
        // SAFETY: block q writes only partial row q (n floats, zero until now); its rows of B
        // are b[p0 * n..(p0 + kc) * n], its part of A is a[p0..p0 + kc].
        unsafe {
            let dst = SendPtr(pp.get().add(q * n));
            kernel(
                &a[p0..p0 + kc],
                &b[p0 * n..(p0 + kc) * n],
                dst,
                1,
                kc,
                n,
                0,
                n,
            )
        }
    });
    for row in partial.chunks_exact(n) {
        for (y, &v) in c[..n].iter_mut().zip(row) {
            *y += v;
        }
    }
}

/// `c[m, n] += a[m, k] @ b[n, k]^T` for a few rows of `a` (on the pool or the caller's thread).
pub(super) fn matmul_nt_rows(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    let kernel = kernels(level()).nk;
    let cp = SendPtr(c.as_mut_ptr());
    // SAFETY: chunk [j0, j0+cw) writes only those columns of C's m rows.
    column_chunks(n, m * k * n, NT_CHUNK, 16, |j0, cw| unsafe {
        kernel(a, b, cp, m, k, n, j0, cw)
    });
}

/// `c[m, n] += a[m, k] @ W` with W as `Panels`, for a few rows of `a`; runs inside the
/// engine's pool.
pub(super) fn matmul_panel_rows(a: &[f32], w: &Panels, c: &mut [f32], m: usize) {
    let ks = kernels(level());
    let (k, n) = (w.k(), w.n());
    let cp = SendPtr(c.as_mut_ptr());
    // bf16 panels are half the bytes: twice the columns per chunk for the same stream length.
    // SAFETY: chunk [j0, j0+cw) (whole panels) writes only those columns of C's m rows.
    if let Some(b) = w.f32_panels() {
        column_chunks(n, m * k * n, NT_CHUNK, PANEL, |j0, cw| unsafe {
            (ks.panels)(a, b, cp, m, k, n, j0, cw)
        });
    } else if let Some(b) = w.bf16_panels() {
        column_chunks(n, m * k * n, 2 * NT_CHUNK, PANEL, |j0, cw| unsafe {
            (ks.panels_bf16)(a, b, cp, m, k, n, j0, cw)
        });
    } else {
        unreachable!("matmul_panel_rows: a weight format without a cpu kernel")
    }
}

/// `C[i, j0..j0+cw] += a[i, :] @ B[:, j0..j0+cw]` for the few rows of the GEMV path.
///
/// B is streamed eight rows at a time, each a contiguous `cw`-wide segment, into accumulators
/// in this thread's scratch buffer (L1/L2). Eight concurrent streams of up to 64 KiB keep the
/// hardware prefetchers busy even across 4 KiB page boundaries (faster than fewer, longer
/// runs: docs/performance.md, "GEMV streams").
/// Each `KC` block is accumulated from zero with one FMA per `k` in order, then added to C:
/// exactly the blocked GEMM's arithmetic, so a row's result does not depend on how many rows
/// share the call (batched generation equals one-by-one generation).
#[inline(always)]
unsafe fn kn_chunk<V: Vf>(
    a: &[f32],
    b: &[f32],
    c: SendPtr,
    m: usize,
    k: usize,
    n: usize,
    j0: usize,
    cw: usize,
) {
    const R: usize = 8;
    let vec_end = cw - cw % V::W;
    let bp = b.as_ptr();
    super::math::with_scratch(cw, |acc| {
        let y = acc.as_mut_ptr();
        let mut p0 = 0;
        while p0 < k {
            let kc = (k - p0).min(KC);
            for i in 0..m {
                let ai = &a[i * k + p0..i * k + p0 + kc];
                // SAFETY: rows p0..p0+kc and columns j0..j0+cw lie inside B (k x n); y holds cw.
                unsafe {
                    std::ptr::write_bytes(y, 0, cw);
                    let mut r = 0;
                    while r + R <= kc {
                        let x: [V; R] = std::array::from_fn(|q| V::splat(ai[r + q]));
                        let row = bp.add((p0 + r) * n + j0);
                        let mut j = 0;
                        while j < vec_end {
                            let mut yv = V::load(y.add(j));
                            for (q, &xq) in x.iter().enumerate() {
                                yv = V::fma(xq, V::load(row.add(q * n + j)), yv);
                            }
                            yv.store(y.add(j));
                            j += V::W;
                        }
                        r += R;
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
                    // Tail columns: `mul_add` is the same fused FMA as the vector lanes (W > 1
                    // only happens in FMA-enabled instances; the scalar instance has no tail).
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
    })
}

/// `C[i, j0 + j] += dot(a[i, :], b[j0 + j, :])` for the few rows of the `[n, k]` path.
///
/// Rows `j0..j0+cw` of b are one contiguous stream: each is loaded once from memory for all
/// rows of a (later rows of a hit L1), with a prefetch `stream_prefetch()` floats ahead (if
/// any) issued on the first. Each dot product is computed the same way whatever `m` is (four
/// vector accumulators over `k` in order, summed lane by lane, then the scalar tail), so
/// batched decoding equals one-by-one decoding.
#[inline(always)]
unsafe fn nk_chunk<V: Vf>(
    a: &[f32],
    b: &[f32],
    c: SendPtr,
    m: usize,
    k: usize,
    n: usize,
    j0: usize,
    cw: usize,
) {
    const LINE: usize = 16; // floats per 64-byte cache line
    let step = 4 * V::W;
    let main = k - k % step;
    let b = &b[j0 * k..(j0 + cw) * k];
    let mut lanes = [0.0f32; 16];
    let ahead = stream_prefetch();
    for j in 0..cw {
        let row = b[j * k..(j + 1) * k].as_ptr();
        for i in 0..m {
            let ai = a[i * k..(i + 1) * k].as_ptr();
            // SAFETY: every load is below `k` in a row of `a` or `b`; prefetches may point past
            // the end of `b` (wrapping_add), which is allowed for a hint.
            unsafe {
                let mut acc = [V::zero(); 4];
                let mut p = 0;
                while p < main {
                    if i == 0 && ahead > 0 {
                        for l in (0..step).step_by(LINE) {
                            prefetch(row.wrapping_add(p + l + ahead));
                        }
                    }
                    for (u, x) in acc.iter_mut().enumerate() {
                        let q = p + u * V::W;
                        *x = V::fma(V::load(ai.add(q)), V::load(row.add(q)), *x);
                    }
                    p += step;
                }
                let sum = V::add(V::add(acc[0], acc[1]), V::add(acc[2], acc[3]));
                sum.store(lanes.as_mut_ptr());
                let mut s = lanes[..V::W].iter().sum::<f32>();
                for q in main..k {
                    s = (*ai.add(q)).mul_add(*row.add(q), s);
                }
                *c.get().add(i * n + j0 + j) += s;
            }
        }
    }
}

/// `C[i, j0..j0+cw] += a[i, :] @ W[:, j0..j0+cw]` with W as `Panels` (`j0` a multiple of
/// `PANEL`), for the few rows of the decode path.
///
/// Each panel (`[k, PANEL]`, contiguous) is one sequential stream, read from memory once for
/// all rows of a (`RG` rows at a time; later groups hit L2), with a prefetch
/// `stream_prefetch()` floats ahead (if any) issued by the first group. A row accumulates one
/// FMA per `k` in order into its own registers, so its result does not depend on `m`.
#[inline(always)]
unsafe fn panel_chunk<E: PanelElem, V: Vf, const RG: usize, const NV: usize>(
    a: &[f32],
    b: &[E],
    c: SendPtr,
    m: usize,
    k: usize,
    n: usize,
    j0: usize,
    cw: usize,
) {
    let line = 64 / std::mem::size_of::<E>(); // elements per cache line
    debug_assert_eq!(NV * V::W, PANEL);
    if m == 1 {
        // One row (decode at batch 1): two concurrent weight streams, the two halves of the
        // chunk's panels side by side.
        let (first, count) = (j0 / PANEL, cw.div_ceil(PANEL));
        let half = count / 2;
        for q in 0..half {
            unsafe { panel_streams::<E, V, NV, 2>(a, b, c, k, n, first + q, half) };
        }
        if count % 2 == 1 {
            unsafe { panel_streams::<E, V, NV, 1>(a, b, c, k, n, first + count - 1, 0) };
        }
        return;
    }
    let ahead = stream_prefetch();
    for j in (j0..j0 + cw).step_by(PANEL) {
        let panel = b[(j / PANEL) * k * PANEL..(j / PANEL + 1) * k * PANEL].as_ptr();
        let cols = (n - j).min(PANEL);
        for i0 in (0..m).step_by(RG) {
            let rows = (m - i0).min(RG);
            // SAFETY: rows i0..i0+rows of `a` hold k floats each; the panel holds k rows of
            // PANEL floats; prefetches may point past the end (wrapping_add), allowed for a hint.
            unsafe {
                let mut acc = [[V::zero(); NV]; RG];
                for p in 0..k {
                    let row = panel.add(p * PANEL);
                    if i0 == 0 && ahead > 0 {
                        for l in (0..PANEL).step_by(line) {
                            prefetch(row.wrapping_add(l + ahead));
                        }
                    }
                    let mut bv = [V::zero(); NV];
                    for v in (0..NV).step_by(2) {
                        (bv[v], bv[v + 1]) = E::load2::<V>(row.add(v * V::W));
                    }
                    for (r, accr) in acc.iter_mut().enumerate().take(rows) {
                        let x = V::splat(*a.get_unchecked((i0 + r) * k + p));
                        for (y, &b) in accr.iter_mut().zip(&bv) {
                            *y = V::fma(x, b, *y);
                        }
                    }
                }
                let mut out = [0.0f32; PANEL];
                for (r, accr) in acc.iter().enumerate().take(rows) {
                    store_ordered::<E, V, NV>(accr, &mut out);
                    let dst = c.get().add((i0 + r) * n + j);
                    for (q, &o) in out[..cols].iter().enumerate() {
                        *dst.add(q) += o;
                    }
                }
            }
        }
    }
}

/// `C[0, cols of panels p0 + s * stride] += a[0, :] @ those panels`, for s in 0..S: one row of
/// `a` against S panels at once, each its own sequential stream (one stream per core leaves
/// bandwidth unused: docs/performance.md, "GEMV streams"). Per column
/// the same arithmetic as `panel_chunk` (from zero, one FMA per `k` in order, then added to C).
#[inline(always)]
unsafe fn panel_streams<E: PanelElem, V: Vf, const NV: usize, const S: usize>(
    a: &[f32],
    b: &[E],
    c: SendPtr,
    k: usize,
    n: usize,
    p0: usize,
    stride: usize,
) {
    let line = 64 / std::mem::size_of::<E>();
    let ahead = stream_prefetch();
    let panel: [*const E; S] =
        std::array::from_fn(|s| b[(p0 + s * stride) * k * PANEL..][..k * PANEL].as_ptr());
    // SAFETY: `a` holds k floats; each panel holds k rows of PANEL floats; prefetches may point
    // past the end (wrapping_add), allowed for a hint; C's row holds n >= j + cols floats.
    unsafe {
        let mut acc = [[V::zero(); NV]; S];
        for p in 0..k {
            let x = V::splat(*a.get_unchecked(p));
            for (s, accs) in acc.iter_mut().enumerate() {
                let row = panel[s].add(p * PANEL);
                if ahead > 0 {
                    for l in (0..PANEL).step_by(line) {
                        prefetch(row.wrapping_add(l + ahead));
                    }
                }
                for v in (0..NV).step_by(2) {
                    let (b0, b1) = E::load2::<V>(row.add(v * V::W));
                    accs[v] = V::fma(x, b0, accs[v]);
                    accs[v + 1] = V::fma(x, b1, accs[v + 1]);
                }
            }
        }
        let mut out = [0.0f32; PANEL];
        for (s, accs) in acc.iter().enumerate() {
            let j = (p0 + s * stride) * PANEL;
            store_ordered::<E, V, NV>(accs, &mut out);
            let dst = c.get().add(j);
            for (q, &o) in out[..(n - j).min(PANEL)].iter().enumerate() {
                *dst.add(q) += o;
            }
        }
    }
}

/// A panel's accumulators, put in column order, into `out`.
#[inline(always)]
unsafe fn store_ordered<E: PanelElem, V: Vf, const NV: usize>(
    acc: &[V; NV],
    out: &mut [f32; PANEL],
) {
    for v in (0..NV).step_by(2) {
        // SAFETY: NV * W = PANEL floats fit `out`.
        unsafe {
            let (o0, o1) = E::order::<V>(acc[v], acc[v + 1]);
            o0.store(out.as_mut_ptr().add(v * V::W));
            o1.store(out.as_mut_ptr().add((v + 1) * V::W));
        }
    }
}

/// Instantiates a chunk kernel (`kn_chunk`, `nk_chunk` or `panel_chunk`) for one SIMD level.
macro_rules! level_fn {
    ($name:ident, $generic:ident, $V:ty $(; $feat:literal)?) => {
        $(#[cfg_attr(target_arch = "x86_64", target_feature(enable = $feat))])?
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            a: &[f32],
            b: &[f32],
            c: SendPtr,
            m: usize,
            k: usize,
            n: usize,
            j0: usize,
            cw: usize,
        ) {
            unsafe { $generic::<$V>(a, b, c, m, k, n, j0, cw) }
        }
    };
    ($name:ident, $generic:ident, $E:ty, $V:ty, $rg:literal, $nv:literal $(; $feat:literal)?) => {
        $(#[cfg_attr(target_arch = "x86_64", target_feature(enable = $feat))])?
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            a: &[f32],
            b: &[$E],
            c: SendPtr,
            m: usize,
            k: usize,
            n: usize,
            j0: usize,
            cw: usize,
        ) {
            unsafe { $generic::<$E, $V, $rg, $nv>(a, b, c, m, k, n, j0, cw) }
        }
    };
}
#[cfg(target_arch = "x86_64")]
level_fn!(kn_512, kn_chunk, x86::V512; "avx512f,avx2,fma");
#[cfg(target_arch = "x86_64")]
level_fn!(nk_512, nk_chunk, x86::V512; "avx512f,avx2,fma");
#[cfg(target_arch = "x86_64")]
level_fn!(panel_512, panel_chunk, f32, x86::V512, 4, 2; "avx512f,avx2,fma");
#[cfg(target_arch = "x86_64")]
level_fn!(panel16_512, panel_chunk, u16, x86::V512, 4, 2; "avx512f,avx2,fma");
#[cfg(target_arch = "x86_64")]
level_fn!(kn_256, kn_chunk, x86::V256; "avx2,fma");
#[cfg(target_arch = "x86_64")]
level_fn!(nk_256, nk_chunk, x86::V256; "avx2,fma");
#[cfg(target_arch = "x86_64")]
level_fn!(panel_256, panel_chunk, f32, x86::V256, 2, 4; "avx2,fma");
#[cfg(target_arch = "x86_64")]
level_fn!(panel16_256, panel_chunk, u16, x86::V256, 2, 4; "avx2,fma");
level_fn!(kn_scalar, kn_chunk, Scalar);
level_fn!(nk_scalar, nk_chunk, Scalar);
level_fn!(panel_scalar, panel_chunk, f32, Scalar, 1, 32);
level_fn!(panel16_scalar, panel_chunk, u16, Scalar, 1, 32);

type ChunkFn<E = f32> = unsafe fn(&[f32], &[E], SendPtr, usize, usize, usize, usize, usize);

/// The chunk kernels of a level: `[k, n]`, `[n, k]`, and f32 and bf16 `Panels` weights.
struct Kernels {
    kn: ChunkFn,
    nk: ChunkFn,
    panels: ChunkFn,
    panels_bf16: ChunkFn<u16>,
}

fn kernels(l: SimdLevel) -> Kernels {
    let (kn, nk, panels, panels_bf16): (ChunkFn, ChunkFn, ChunkFn, ChunkFn<u16>) = match l {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => (kn_512, nk_512, panel_512, panel16_512),
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => (kn_256, nk_256, panel_256, panel16_256),
        _ => (kn_scalar, nk_scalar, panel_scalar, panel16_scalar),
    };
    Kernels {
        kn,
        nk,
        panels,
        panels_bf16,
    }
}

/// Threads to split over: the current pool's on a pool thread, the engine's elsewhere.
fn threads_here() -> usize {
    if rayon::current_thread_index().is_some() {
        rayon::current_num_threads()
    } else {
        crate::threads::num_threads()
    }
}

/// Calls `f(j0, width)` over chunks of `0..n` columns (at most `max_chunk` wide, about two per
/// thread, or as few as fit with one thread, starting at multiples of `align`), in parallel
/// when `work` is large: on the pool, or from the caller's thread with the caller working too
/// (`threads::for_each_index`).
pub(super) fn column_chunks(
    n: usize,
    work: usize,
    max_chunk: usize,
    align: usize,
    f: impl Fn(usize, usize) + Sync + Send,
) {
    let on_pool = rayon::current_thread_index().is_some();
    let threads = threads_here();
    // Off the pool, waking a helper costs the caller a few microseconds: worth it from ~20 us.
    let min_work = if on_pool { 1 << 15 } else { 1 << 17 };
    // One thread takes the fewest equal chunks (longest contiguous runs of each weight row).
    let tasks = if threads == 1 {
        n.div_ceil(max_chunk)
    } else {
        threads * 2
    };
    let per_task = n
        .div_ceil(tasks)
        .next_multiple_of(align)
        .clamp(align, max_chunk);
    let chunks = n.div_ceil(per_task);
    let run = |t: usize| {
        let j0 = t * per_task;
        f(j0, (n - j0).min(per_task))
    };
    if threads == 1 || work < min_work {
        (0..chunks).for_each(run);
    } else {
        crate::threads::for_each_index(chunks, &run);
    }
}
