//! Many rows times prepared bf16 weights (prefill) with AVX512-BF16's `vdpbf16ps`, which
//! multiplies pairs of bf16 values and adds both products to an f32 lane: twice the
//! multiply-adds of an f32 FMA per instruction, on weights that never get widened.
//!
//! The activations are rounded to bf16 (round to nearest even) for the product, as llama.cpp
//! does for its BF16 weights and as a bf16 transformers model computes throughout; sums stay
//! f32. Used only where it pays: `m >= 16` rows (the few-row decode path keeps f32 activations
//! and streams the weights, which is memory-bound either way), and only on CPUs with
//! AVX512-BF16 at the AVX-512 level (`GPT_RS_SIMD=avx2` turns it off with the rest).
//!
//! Layout: A is converted once per call into rows of bf16 pairs (`u32`: columns `2q`, `2q+1`).
//! B's panels (`[k, PANEL]` bf16 each) are repacked per K block into pair rows
//! (`[kc / 2][PANEL][2]`, two rows of a panel interleaved column by column), blocks of panels
//! sized to stay in L2 while every strip of A meets them.

use super::simd::{level, SimdLevel};
use super::{gemm_threads, KC};
use crate::backend::{Panels, SendPtr, PANEL};

/// Rows of A per micro-kernel call: 12 x 2 accumulators + 2 B vectors + 1 A broadcast fit the
/// 32 zmm registers.
const MR: usize = 12;
/// Bytes of repacked B kept in L2 while the strips of A pass over it.
const B_BYTES: usize = 384 << 10;

/// Whether `matmul_panels` runs bf16 weights here: AVX512-BF16 present and the level allows it.
pub fn active() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        level() == SimdLevel::Avx512
            && *HAS.get_or_init(|| {
                is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512bw")
            })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = level();
        false
    }
}

/// `c[m, n] += a[m, k] @ W` for bf16 `Panels` (`active()` must be true; C holds the bias or 0).
pub fn matmul(a: &[f32], w: &Panels, c: &mut [f32], m: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let b = w.bf16_panels().expect("bf16dot::matmul: bf16 panels");
        // SAFETY: `active()` checked avx512f/bf16/bw; the slices are sized as documented.
        unsafe { gemm(a, b, c, m, w.k(), w.n()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (a, w, c, m);
        unreachable!("bf16dot::matmul without x86_64");
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn gemm(a: &[f32], b: &[u16], c: &mut [f32], m: usize, k: usize, n: usize) {
    let k2 = k.div_ceil(2);
    let strips = m.div_ceil(MR);
    // A as bf16 pairs, rows padded to whole strips with zeros (their results are dropped),
    // in the calling thread's buffer (taken out while in use, reused across calls).
    let mut abuf = PACK_A.with(|b| std::mem::take(&mut *b.borrow_mut()));
    abuf.clear();
    abuf.resize(strips * MR * k2, 0);
    for (row, dst) in a.chunks_exact(k).zip(abuf.chunks_exact_mut(k2)) {
        unsafe { to_bf16_pairs(row, dst) };
    }
    let panels = n.div_ceil(PANEL);
    let threads = gemm_threads(m * k * n);
    let tasks = if threads == 1 { 1 } else { threads * 4 };
    let per_task = panels.div_ceil(tasks.min(panels));
    let groups = panels.div_ceil(per_task);
    let cp = SendPtr(c.as_mut_ptr());
    let apack = &abuf[..];
    let task = |g: usize| {
        let (g0, g1) = (g * per_task, ((g + 1) * per_task).min(panels));
        // SAFETY: this task writes only the columns of panels g0..g1 of C (m x n).
        unsafe { panel_group(apack, b, cp, m, k, n, g0, g1) };
    };
    if groups == 1 {
        task(0);
    } else {
        crate::threads::for_each_index(groups, &task);
    }
    PACK_A.with(|b| *b.borrow_mut() = abuf);
}

thread_local! {
    /// Per-thread buffers for A's bf16 pairs and B's repacked pair rows, grown once.
    static PACK_A: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    static PACK_B: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Panels `g0..g1` of B against all of A, into C's columns of those panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn panel_group(
    apack: &[u32],
    b: &[u16],
    c: SendPtr,
    m: usize,
    k: usize,
    n: usize,
    g0: usize,
    g1: usize,
) {
    let (k2, strips) = (k.div_ceil(2), m.div_ceil(MR));
    let kc2_max = KC / 2;
    let per_block = (B_BYTES / (KC * PANEL * 2)).max(1);
    let mut bpack = PACK_B.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if bpack.len() < per_block * kc2_max * 2 * PANEL {
        bpack.resize(per_block * kc2_max * 2 * PANEL, 0);
    }
    let mut scratch = [0.0f32; MR * PANEL];
    for pb in (g0..g1).step_by(per_block) {
        let pe = (pb + per_block).min(g1);
        for p0 in (0..k).step_by(KC) {
            let kc = (k - p0).min(KC);
            let kc2 = kc.div_ceil(2);
            for (q, j) in (pb..pe).enumerate() {
                let src = &b[j * k * PANEL..(j + 1) * k * PANEL];
                let dst = &mut bpack[q * kc2 * 2 * PANEL..(q + 1) * kc2 * 2 * PANEL];
                unsafe { repack_pairs(src, p0, kc, dst) };
            }
            for s in 0..strips {
                let rows = (m - s * MR).min(MR);
                let ap = apack[s * MR * k2 + p0 / 2..].as_ptr();
                for (q, j) in (pb..pe).enumerate() {
                    let cols = (n - j * PANEL).min(PANEL);
                    let bp = bpack[q * kc2 * 2 * PANEL..].as_ptr();
                    // SAFETY: full tiles stay inside C (m x n); partial ones go via scratch.
                    unsafe {
                        let dst = c.get().add(s * MR * n + j * PANEL);
                        if rows == MR && cols == PANEL {
                            micro(kc2, ap, k2, bp, dst, n);
                        } else {
                            scratch.fill(0.0);
                            micro(kc2, ap, k2, bp, scratch.as_mut_ptr(), PANEL);
                            for i in 0..rows {
                                for jj in 0..cols {
                                    *dst.add(i * n + jj) += scratch[i * PANEL + jj];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    PACK_B.with(|b| *b.borrow_mut() = bpack);
}

/// `C[0..MR, 0..PANEL] += A(MR x 2 kc2) @ B(2 kc2 x PANEL)`: A rows of pairs `lda` apart, B as
/// `kc2` pair rows of `2 * PANEL` bf16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn micro(kc2: usize, a: *const u32, lda: usize, b: *const u16, c: *mut f32, ldc: usize) {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..kc2 {
            let bp = b.add(p * 2 * PANEL);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(PANEL).cast()));
            for (i, row) in acc.iter_mut().enumerate() {
                let x: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(i * lda + p) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], x, b0);
                row[1] = _mm512_dpbf16_ps(row[1], x, b1);
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                let dst = c.add(i * ldc + v * 16);
                _mm512_storeu_ps(dst, _mm512_add_ps(*x, _mm512_loadu_ps(dst)));
            }
        }
    }
}

/// One row of f32 as bf16 pairs (round to nearest even; an odd last column pairs with 0).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn to_bf16_pairs(row: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    let k = row.len();
    let mut i = 0;
    while i + 32 <= k {
        unsafe {
            let lo = _mm512_loadu_ps(row.as_ptr().add(i));
            let hi = _mm512_loadu_ps(row.as_ptr().add(i + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(out.as_mut_ptr().add(i / 2).cast(), v);
        }
        i += 32;
    }
    while i < k {
        let lo = half::bf16::from_f32(row[i]).to_bits() as u32;
        let hi = row
            .get(i + 1)
            .map_or(0, |&v| half::bf16::from_f32(v).to_bits() as u32);
        out[i / 2] = lo | (hi << 16);
        i += 2;
    }
}

/// Rows `p0..p0 + kc` of one bf16 panel (`[k, PANEL]`) as pair rows: `dst[q][j] = (row 2q,
/// row 2q + 1)` of column j (a missing last row is 0).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn repack_pairs(panel: &[u16], p0: usize, kc: usize, dst: &mut [u16]) {
    use std::arch::x86_64::*;
    debug_assert_eq!(PANEL, 32);
    unsafe {
        // Interleave two 32-element rows: lanes 0..15 of the result pair columns 0..15, then
        // a second vector pairs columns 16..31.
        let lo = _mm512_set_epi16(
            47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37, 5, 36,
            4, 35, 3, 34, 2, 33, 1, 32, 0,
        );
        let hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
        let zero = _mm512_setzero_si512();
        for q in 0..kc.div_ceil(2) {
            let r0 = _mm512_loadu_si512(panel.as_ptr().add((p0 + 2 * q) * PANEL).cast());
            let r1 = if 2 * q + 1 < kc {
                _mm512_loadu_si512(panel.as_ptr().add((p0 + 2 * q + 1) * PANEL).cast())
            } else {
                zero
            };
            let out = dst.as_mut_ptr().add(q * 2 * PANEL);
            _mm512_storeu_si512(out.cast(), _mm512_permutex2var_epi16(r0, lo, r1));
            _mm512_storeu_si512(out.add(PANEL).cast(), _mm512_permutex2var_epi16(r0, hi, r1));
        }
    }
}
