//! The `cpu` backend's matrix multiply: `C[m, n] = A[m, k] @ B[k, n] (+ bias[n])`.
//!
//! Two paths:
//! - a few rows of A (decode, GEMV-like): `gemv`, which streams B once.
//! - otherwise a GotoBLAS-style blocked GEMM: B in `kc x NR` panels and A in `MR x kc` strips,
//!   and an `MR x NR` register-blocked micro-kernel does the FMAs; threads split the C tiles.
//!   B is packed into panels per call, unless it is prepared `Panels` (a model's weights),
//!   which the micro-kernel reads in place; a row-major A is read in place (only a partial
//!   last strip is packed), a transposed one is packed.
//!
//! Each level (AVX-512, AVX2+FMA, baseline) instantiates the same generic code with its
//! vector type; `simd::level()` picks one at run time.

use super::simd::{level, SimdLevel};
#[cfg(target_arch = "x86_64")]
use super::vector::x86;
use super::vector::{prefetch, Scalar, Vf};
use super::{for_each_chunk_mut, gemm_threads, gemv, KC};
use crate::backend::{Panels, SendPtr, PANEL};

/// Rows below which the GEMV path wins (no packing).
const SMALL_M: usize = 8;
/// Bytes of packed B panels that the strips of A meet before moving on (fits in L2).
const B_BYTES: usize = 512 << 10;

/// Register blocking per level: (MR rows, NV vectors of W lanes).
fn blocking(l: SimdLevel) -> (usize, usize) {
    match l {
        SimdLevel::Avx512 => (8, 32),
        SimdLevel::Avx2 => (6, 16),
        SimdLevel::Scalar => (4, 4),
    }
}

/// How far ahead of the B stream the micro-kernel prefetches, in floats (2 KiB): B panels
/// come from memory on their first use (weights read in place from `Panels`) and from L2 after.
const B_PREFETCH: usize = 512;

/// The MR x NR micro-kernel: `C[0..MR, 0..NR] (+)= A(MR x kc) @ B(kc x NR)`, with `A[i, p]`
/// at `a + i * a_rs + p * a_cs` and B's rows `ldb` floats apart.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<V: Vf, const MR: usize, const NV: usize>(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) {
    const LINE: usize = 16; // floats per 64-byte cache line
    unsafe {
        let mut acc = [[V::zero(); NV]; MR];
        for p in 0..kc {
            let bp = b.add(p * ldb);
            for l in (0..NV * V::W).step_by(LINE) {
                prefetch(bp.wrapping_add(l + B_PREFETCH));
            }
            let mut bv = [V::zero(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = V::load(bp.add(v * V::W));
            }
            let ap = a.add(p * a_cs);
            for (i, row) in acc.iter_mut().enumerate() {
                let av = V::splat(*ap.add(i * a_rs));
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

/// Where the micro-kernel finds the A strips (`MR` rows, `kc` columns) of one K block: strip
/// `s < full` at `base + s * stride` with `A[i, p]` at `i * rs + p * cs` (packed strips:
/// `rs = 1`, `cs = MR`; A read in place: `rs` = its row stride, `cs = 1`); the strips from
/// `full` on (a partial last strip read in place) are packed at `tail`.
#[derive(Clone, Copy)]
struct AStrips {
    base: *const f32,
    stride: usize,
    rs: usize,
    cs: usize,
    full: usize,
    tail: *const f32,
}

impl AStrips {
    /// `(pointer, row stride, column stride)` of strip `s`.
    fn at(&self, s: usize, mr: usize) -> (*const f32, usize, usize) {
        if s < self.full {
            (self.base.wrapping_add(s * self.stride), self.rs, self.cs)
        } else {
            (self.tail, 1, mr)
        }
    }
}

/// Where the micro-kernel finds the B panels (`nr` columns, `kc` rows) of one K block: panel
/// `p` (counted from column 0 of B) starts at `base + ((p - first) / per) * stride +
/// ((p - first) % per) * nr`, rows `ld` apart. Packed panels: `per = 1`, `ld = nr`. `Panels`
/// (`PANEL` columns each, read in place): `per = PANEL / nr`, `ld = PANEL`.
#[derive(Clone, Copy)]
struct BPanels {
    base: *const f32,
    first: usize,
    per: usize,
    stride: usize,
    ld: usize,
}

impl BPanels {
    fn at(&self, p: usize, nr: usize) -> *const f32 {
        let q = p - self.first;
        self.base
            .wrapping_add((q / self.per) * self.stride + (q % self.per) * nr)
    }
}

/// Accumulates one C tile: strips `s0..s1` of A times panels `p0..p1` of B.
/// Full MR x NR blocks go straight to C; edge blocks go through a scratch tile.
#[inline(always)]
unsafe fn tile<V: Vf, const MR: usize, const NV: usize>(
    kc: usize,
    a: AStrips,
    b: BPanels,
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
    // Loop order: blocks of B panels (B_BYTES, kept in L2), then strips of A (one MR x kc strip
    // stays in L1 while it meets the block's panels), then panels. Without the panel blocks a
    // single-threaded product with a wide B streams every panel from L3 once per strip.
    let block = (B_BYTES / (kc * nr * 4)).max(1);
    for pb in (panels.0..panels.1).step_by(block) {
        for s in strips.0..strips.1 {
            let rows = (m - s * MR).min(MR);
            let (ap, a_rs, a_cs) = a.at(s, MR);
            for p in pb..(pb + block).min(panels.1) {
                let cols = (n - p * nr).min(nr);
                let bp = b.at(p, nr);
                // SAFETY: C is m x n with row stride ldc; the block starts at (s*MR, p*nr) and
                // a full block stays in bounds; partial blocks use the scratch tile. B's panels
                // hold kc rows of nr readable floats (zero-padded past n).
                unsafe {
                    let dst = c.0.add(s * MR * ldc + p * nr);
                    if rows == MR && cols == nr {
                        micro::<V, MR, NV>(kc, ap, a_rs, a_cs, bp, b.ld, dst, ldc);
                    } else {
                        scratch[..MR * nr].fill(0.0);
                        micro::<V, MR, NV>(kc, ap, a_rs, a_cs, bp, b.ld, scratch.as_mut_ptr(), nr);
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
}

/// Instantiates `tile` for one SIMD level.
macro_rules! level_tile {
    ($tile:ident, $V:ty, $mr:literal, $nv:literal $(, $feat:literal)?) => {
        $(#[cfg_attr(target_arch = "x86_64", target_feature(enable = $feat))])?
        #[allow(clippy::too_many_arguments)]
        unsafe fn $tile(
            kc: usize,
            ap: AStrips,
            bp: BPanels,
            c: SendPtr,
            ldc: usize,
            m: usize,
            n: usize,
            s: (usize, usize),
            p: (usize, usize),
        ) {
            unsafe { tile::<$V, $mr, $nv>(kc, ap, bp, c, ldc, m, n, s, p) }
        }
    };
}
#[cfg(target_arch = "x86_64")]
level_tile!(tile_512, x86::V512, 8, 2, "avx512f,avx2,fma");
#[cfg(target_arch = "x86_64")]
level_tile!(tile_256, x86::V256, 6, 2, "avx2,fma");
level_tile!(tile_scalar, Scalar, 4, 4);

type TileFn = unsafe fn(
    usize,
    AStrips,
    BPanels,
    SendPtr,
    usize,
    usize,
    usize,
    (usize, usize),
    (usize, usize),
);

fn tile_kernel(l: SimdLevel) -> TileFn {
    match l {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => tile_512,
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => tile_256,
        _ => tile_scalar,
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
                // A transpose: 16 x 16 blocks in registers where AVX-512 is on, then 8-column
                // strips (8 rows of b read side by side, each sequentially, and every packed
                // row gets 8 contiguous values), then single columns. Together they write every
                // value of the panel's `cols` columns, so only the padding needs zeros.
                if cols < nr {
                    for row in dst.chunks_exact_mut(nr) {
                        row[cols..].fill(0.0);
                    }
                }
                let mut j = 0;
                #[cfg(target_arch = "x86_64")]
                if level() == SimdLevel::Avx512 {
                    while j + 16 <= cols {
                        let mut p = 0;
                        while p + 16 <= kc {
                            let src = &b[(c0 + j) * k + p0 + p..(c0 + j + 15) * k + p0 + p + 16];
                            // SAFETY: the CPU has AVX-512 (level); `src` holds 16 rows of 16
                            // floats at stride k, and the 16 packed rows of 16 floats at
                            // stride nr from (p, j) lie inside this panel (j + 16 <= cols).
                            unsafe {
                                transpose16(src.as_ptr(), k, dst[p * nr + j..].as_mut_ptr(), nr)
                            };
                            p += 16;
                        }
                        for jj in j..j + 16 {
                            let src = &b[(c0 + jj) * k + p0..(c0 + jj) * k + p0 + kc];
                            for pp in p..kc {
                                dst[pp * nr + jj] = src[pp];
                            }
                        }
                        j += 16;
                    }
                }
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

/// Transposes a 16 x 16 block: `dst[p * ldd + r] = src[r * lds + p]`, in registers (32-bit,
/// 64-bit and two 128-bit-lane shuffle stages).
///
/// # Safety
/// The CPU must have AVX-512F; `src` must be readable for 16 rows of 16 floats at stride
/// `lds`, `dst` writable for 16 rows of 16 floats at stride `ldd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    use std::arch::x86_64::*;
    unsafe {
        let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * lds)));
        // t[2i], t[2i+1]: rows 2i and 2i+1 interleaved, per 128-bit lane L holding p = 4L..4L+3.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // u[4g + q], lane L: rows 4g..4g+3 at p = 4L + q.
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let d = |x: __m512| _mm512_castps_pd(x);
            let (a0, a1, b0, b1) = (
                d(t[4 * g]),
                d(t[4 * g + 1]),
                d(t[4 * g + 2]),
                d(t[4 * g + 3]),
            );
            u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
            u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
            u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
            u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
        }
        // Output row p = 4L + q gathers lane L of u[q], u[4 + q], u[8 + q], u[12 + q].
        for q in 0..4 {
            let x0 = _mm512_shuffle_f32x4::<0x44>(u[q], u[4 + q]);
            let x1 = _mm512_shuffle_f32x4::<0xEE>(u[q], u[4 + q]);
            let y0 = _mm512_shuffle_f32x4::<0x44>(u[8 + q], u[12 + q]);
            let y1 = _mm512_shuffle_f32x4::<0xEE>(u[8 + q], u[12 + q]);
            _mm512_storeu_ps(dst.add(q * ldd), _mm512_shuffle_f32x4::<0x88>(x0, y0));
            _mm512_storeu_ps(dst.add((4 + q) * ldd), _mm512_shuffle_f32x4::<0xDD>(x0, y0));
            _mm512_storeu_ps(dst.add((8 + q) * ldd), _mm512_shuffle_f32x4::<0x88>(x1, y1));
            _mm512_storeu_ps(
                dst.add((12 + q) * ldd),
                _mm512_shuffle_f32x4::<0xDD>(x1, y1),
            );
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

/// `c = a @ b (+ bias)`, from any thread: both paths (GEMV, blocked GEMM) split their work with
/// `threads::for_each_index`, the calling thread included.
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
    if m < SMALL_M {
        return gemv::matmul_rows(a, b, c, m, k, n);
    }
    gemm(a, ALayout::MK, BSource::Pack(b, BLayout::KN), c, m, k, n)
}

/// `c += a^T @ b` with `a` stored `[k, m]` (weight gradients).
pub fn matmul_tn_acc(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    gemm(a, ALayout::KM, BSource::Pack(b, BLayout::KN), c, m, k, n)
}

/// Rows below which `matmul_nt` uses dot products (no packing; each row is computed the same
/// way whatever the row count, so batched decoding equals one-by-one decoding).
const NT_SMALL_M: usize = 16;

/// `c = a @ b^T` with `b` stored `[n, k]`; runs where `matmul` does.
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
        return gemv::matmul_nt_rows(a, b, c, m, k, n);
    }
    gemm(a, ALayout::MK, BSource::Pack(b, BLayout::NK), c, m, k, n)
}

/// `c = a @ W (+ bias)` with `W` prepared as `Panels` (read in place, never packed). Few rows
/// take the GEMV path, whose rows are computed the same way whatever the row count (batched
/// decoding equals one-by-one decoding).
pub fn matmul_panels(a: &[f32], w: &Panels, bias: Option<&[f32]>, c: &mut [f32], m: usize) {
    let (k, n) = (w.k(), w.n());
    crate::backend::init_output(c, bias, n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    if m < NT_SMALL_M {
        return gemv::matmul_panel_rows(a, w, c, m);
    }
    if w.bf16_panels().is_some() && super::bf16dot::active() {
        return super::bf16dot::matmul(a, w, c, m);
    }
    gemm(a, ALayout::MK, BSource::Panels(w), c, m, k, n)
}

/// The right-hand operand of `gemm`.
#[derive(Clone, Copy)]
enum BSource<'a> {
    /// A plain matrix, packed into panels per call.
    Pack(&'a [f32], BLayout),
    /// Prepared panels, read in place.
    Panels(&'a Panels),
}

thread_local! {
    /// Per-thread buffer for packed A strips, grown once and reused.
    static PACK_A: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread buffer for packed B panels, grown once and reused.
    static PACK_B: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The blocked GEMM: `C += A @ B` (B from `b`).
///
/// What of A needs packing is packed once (all K blocks, in parallel): a transposed A, or the
/// partial last strip of a row-major one (the rest is read in place). Then one parallel region
/// over `column group` tasks of equal width (about 4 per thread): each walks the K blocks,
/// packs its own B panels into a per-thread buffer (or reads prepared `Panels` in place) and
/// runs the micro-kernel over all strips.
#[allow(clippy::too_many_arguments)]
fn gemm(a: &[f32], a_layout: ALayout, b: BSource<'_>, c: &mut [f32], m: usize, k: usize, n: usize) {
    let tile_fn = tile_kernel(level());
    let cp = SendPtr(c.as_mut_ptr());
    let (mr, nr) = blocking(level());
    let threads = gemm_threads(m * k * n);
    let strips = m.div_ceil(mr);
    let panels = n.div_ceil(nr);
    let kblocks = k.div_ceil(KC);
    // A row-major ([m, k]) is read in place, but for a partial last strip; otherwise packed.
    // Packed per K block: block `kb` holds the packed strips for columns kb*KC..kb*KC+kc. The
    // buffer is the calling thread's, reused across calls (taken out while in use, so a
    // nested GEMM that runs on this thread meanwhile gets its own).
    let in_place = a_layout == ALayout::MK;
    let (full, packed) = if in_place {
        (m / mr, strips - m / mr)
    } else {
        (0, strips)
    };
    let first_packed = strips - packed;
    let mut apack_buf = PACK_A.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if apack_buf.len() < packed * mr * k {
        apack_buf.resize(packed * mr * k, 0.0);
    }
    if packed > 0 {
        let a_rest = &a[if in_place { first_packed * mr * k } else { 0 }..];
        let m_rest = m - first_packed * mr;
        let pack = |(kb, dst): (usize, &mut [f32])| {
            let kc = (k - kb * KC).min(KC);
            let dst = &mut dst[..packed * mr * kc];
            pack_a(a_rest, a_layout, m_rest, k, kb * KC, kc, mr, dst);
        };
        let blocks = &mut apack_buf[..packed * mr * k];
        let block = packed * mr * KC;
        if threads > 1 {
            for_each_chunk_mut(blocks, block, |kb, dst| pack((kb, dst)));
        } else {
            blocks.chunks_mut(block).enumerate().for_each(pack);
        }
    }
    let want_tasks = if threads == 1 { 1 } else { threads * 4 };
    // Panels of `Panels` hold PANEL columns: a task takes whole ones.
    let align = match b {
        BSource::Panels(_) => PANEL / nr,
        BSource::Pack(..) => 1,
    };
    let panels_per_group = panels
        .div_ceil(want_tasks.min(panels))
        .next_multiple_of(align);
    let n_groups = panels.div_ceil(panels_per_group);
    let apack = &apack_buf[..];
    // Runs the micro-kernels of K block `kb` over all strips and panels `pg`.
    let run = |kb: usize, kc: usize, bp: BPanels, pg: (usize, usize)| {
        let packed_kb = apack[kb * packed * mr * KC..].as_ptr();
        let ap = if in_place {
            AStrips {
                base: a[kb * KC..].as_ptr(),
                stride: mr * k,
                rs: k,
                cs: 1,
                full,
                tail: packed_kb,
            }
        } else {
            AStrips {
                base: packed_kb,
                stride: mr * kc,
                rs: 1,
                cs: mr,
                full: strips,
                tail: packed_kb,
            }
        };
        // SAFETY: this task writes only the columns of panels pg of C (m x n, row stride n).
        unsafe { tile_fn(kc, ap, bp, cp, n, m, n, (0, strips), pg) };
    };
    let task = |g: usize| {
        let pg = (
            g * panels_per_group,
            ((g + 1) * panels_per_group).min(panels),
        );
        match b {
            BSource::Panels(w) => match w.f32_panels() {
                Some(panels) => {
                    for kb in 0..kblocks {
                        let (p0, kc) = (kb * KC, (k - kb * KC).min(KC));
                        let bp = BPanels {
                            base: panels[p0 * PANEL..].as_ptr(),
                            first: 0,
                            per: PANEL / nr,
                            stride: k * PANEL,
                            ld: PANEL,
                        };
                        run(kb, kc, bp, pg);
                    }
                }
                None => {
                    // Other formats (bf16): each K block of this task's panels is widened to
                    // f32 into the thread's pack buffer, in the panels' own layout, and read
                    // from there (k * n conversions per call against m * k * n FMAs).
                    let (w0, w1) = (pg.0 * nr / PANEL, (pg.1 * nr).div_ceil(PANEL));
                    PACK_B.with(|buf| {
                        let bpack = &mut *buf.borrow_mut();
                        let blen = (w1 - w0) * PANEL * k.min(KC);
                        if bpack.len() < blen {
                            bpack.resize(blen, 0.0);
                        }
                        for kb in 0..kblocks {
                            let (p0, kc) = (kb * KC, (k - kb * KC).min(KC));
                            for (q, j) in (w0..w1).enumerate() {
                                let dst = &mut bpack[q * kc * PANEL..(q + 1) * kc * PANEL];
                                w.panel_f32(j, p0, kc, dst);
                            }
                            let bp = BPanels {
                                base: bpack.as_ptr(),
                                first: pg.0,
                                per: PANEL / nr,
                                stride: kc * PANEL,
                                ld: PANEL,
                            };
                            run(kb, kc, bp, pg);
                        }
                    });
                }
            },
            BSource::Pack(b, layout) => {
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
                        let bp = BPanels {
                            base: bp.as_ptr(),
                            first: pg.0,
                            per: 1,
                            stride: kc * nr,
                            ld: nr,
                        };
                        run(kb, kc, bp, pg);
                    }
                });
            }
        }
    };
    if n_groups == 1 {
        task(0);
    } else {
        crate::threads::for_each_index(n_groups, &task);
    }
    PACK_A.with(|b| *b.borrow_mut() = apack_buf);
}
