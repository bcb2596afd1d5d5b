//! AVX-512 VNNI products of 16-row weight tiles (`quant::tile`) with int8 activation rows.
//!
//! One 32-bit lane per weight row: `vpdpbusd` multiplies four unsigned weight levels of each
//! of the tile's 16 rows with the same four activation bytes (an embedded broadcast), so a
//! 32-weight block of 16 rows is eight instructions into one integer accumulator per
//! activation row, and the block's float work (one convert, one scale product, one FMA) is
//! shared by the 16 rows. With weight `w = s * u - o` (levels `u`, offset or min `o`) and
//! activations `a ~ da * q`, a row's dot product is
//!
//! `sum over blocks of  s * da * dot(u, q)  -  o * da * sum(q)`.
//!
//! For the symmetric formats (`o = s * offset`) the second term is folded into the integer
//! accumulator, which starts at `-offset * sum(q)`; for the formats with a min it is added in
//! floats, per block or super-block (the two terms can cancel to a few bits). Unpacking a block's levels is shared by up to `MR` activation rows.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::qmatmul::Q8Rows;
use crate::backend::quant::tile::{Layout, TILE};
use crate::backend::quant::QuantType;

/// Activation rows multiplied per pass over a tile.
pub const MR: usize = 4;

/// Whether this CPU has what these kernels use (checked once).
pub fn available() -> bool {
    super::qdot512::available()
}

// The helpers are `inline(always)` without target features of their own: they are only
// called from `tiles_of`, which has them, and are compiled inside it.

/// Four 64-byte vectors of paired nibbles at `p` as the eight groups' levels.
#[inline(always)]
unsafe fn nibbles(p: *const u8, u: &mut [__m512i; 8]) {
    unsafe {
        let m = _mm512_set1_epi8(0x0F);
        for v in 0..4 {
            let x = _mm512_loadu_si512(p.add(64 * v).cast());
            u[2 * v] = _mm512_and_si512(x, m);
            u[2 * v + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(x), m);
        }
    }
}

/// Adds 16 to the levels whose fifth bit is set (a u64 mask per group at `p`).
#[inline(always)]
unsafe fn fifth(p: *const u8, u: &mut [__m512i; 8]) {
    unsafe {
        let sixteen = _mm512_set1_epi8(16);
        for (g, u) in u.iter_mut().enumerate() {
            let k = std::ptr::read_unaligned(p.add(8 * g) as *const u64);
            *u = _mm512_mask_add_epi8(*u, k, *u, sixteen);
        }
    }
}

/// Q6_K's two high bits (two vectors at `p`) into bits 4-5 of the levels.
#[inline(always)]
unsafe fn six(p: *const u8, u: &mut [__m512i; 8]) {
    unsafe {
        let m = _mm512_set1_epi8(0x30);
        for h in 0..2 {
            let x = _mm512_loadu_si512(p.add(64 * h).cast());
            let parts = [
                _mm512_slli_epi16::<4>(x),
                _mm512_slli_epi16::<2>(x),
                x,
                _mm512_srli_epi16::<2>(x),
            ];
            for (j, part) in parts.into_iter().enumerate() {
                // u | (part & 0x30)
                u[4 * h + j] = _mm512_ternarylogic_epi32::<0xF8>(u[4 * h + j], part, m);
            }
        }
    }
}

/// `init + dot(levels of u's groups, the activation bytes at a)`, per row lane.
#[inline(always)]
unsafe fn dots(u: &[__m512i], a: *const i8, init: __m512i) -> __m512i {
    unsafe {
        // Two chains, so that each `vpdpbusd` waits on the one two back (its latency is
        // several cycles; one activation row alone would otherwise be latency-bound).
        let mut acc = [init, _mm512_setzero_si512()];
        for (g, u) in u.iter().enumerate() {
            let w = std::ptr::read_unaligned(a.add(4 * g) as *const i32);
            acc[g % 2] = _mm512_dpbusd_epi32(acc[g % 2], *u, _mm512_set1_epi32(w));
        }
        _mm512_add_epi32(acc[0], acc[1])
    }
}

/// 16 f16 values at `p` as f32.
#[inline(always)]
unsafe fn f16x16(p: *const u8) -> __m512 {
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
}

/// 16 bytes at `p` (unsigned, or signed when `SIGNED`) as f32.
#[inline(always)]
unsafe fn bytes16<const SIGNED: bool>(p: *const u8) -> __m512 {
    unsafe {
        let b = _mm_loadu_si128(p.cast());
        let i = if SIGNED {
            _mm512_cvtepi8_epi32(b)
        } else {
            _mm512_cvtepu8_epi32(b)
        };
        _mm512_cvtepi32_ps(i)
    }
}

/// Accumulators of `R` activation rows.
struct Acc<const R: usize> {
    f: [__m512; R],
}

/// Where activation row `row`'s 32 values from weight `e` are.
struct Act<'a> {
    q: &'a Q8Rows,
}

impl Act<'_> {
    #[inline(always)]
    fn qs(&self, row: usize, e: usize) -> *const i8 {
        // SAFETY (of the callers' use): in bounds, the kernels' caller checked the shapes.
        unsafe { self.q.qs.as_ptr().add(row * self.q.k + e) }
    }
    /// Block index of weight `e` of `row`.
    #[inline(always)]
    fn block(&self, row: usize, e: usize) -> usize {
        (row * self.q.k + e) / 32
    }
    #[inline(always)]
    unsafe fn d(&self, c: usize) -> f32 {
        unsafe { *self.q.d.get_unchecked(c) }
    }
    #[inline(always)]
    unsafe fn sum16(&self, c: usize, h: usize) -> i32 {
        unsafe { *self.q.sum16.get_unchecked(2 * c + h) }
    }
    #[inline(always)]
    unsafe fn sum32(&self, c: usize) -> i32 {
        unsafe { self.sum16(c, 0) + self.sum16(c, 1) }
    }
}

/// A format as this file multiplies it: one block of 16 rows (at `p`, weights from `e`)
/// against `R` activation rows from `i0`.
trait Format {
    const T: QuantType;
    unsafe fn block<const R: usize>(acc: &mut Acc<R>, p: *const u8, a: &Act, i0: usize, e: usize);
}

struct Legacy<const T: u8>;
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;

impl<const T: u8> Format for Legacy<T> {
    const T: QuantType = match T {
        Q4_0 => QuantType::Q4_0,
        Q4_1 => QuantType::Q4_1,
        Q5_0 => QuantType::Q5_0,
        Q5_1 => QuantType::Q5_1,
        _ => QuantType::Q8_0,
    };

    #[inline(always)]
    unsafe fn block<const R: usize>(acc: &mut Acc<R>, p: *const u8, a: &Act, i0: usize, e: usize) {
        unsafe {
            let min = T == Q4_1 || T == Q5_1;
            let offset: i32 = match T {
                Q4_0 => 8,
                Q5_0 => 16,
                _ => 128,
            };
            let l = Layout::of(Self::T);
            let dw = f16x16(p);
            let lev = p.add(l.head);
            let mut u = [_mm512_setzero_si512(); 8];
            if T == Q8_0 {
                for (g, u) in u.iter_mut().enumerate() {
                    *u = _mm512_loadu_si512(lev.add(64 * g).cast());
                }
            } else if l.fifth {
                nibbles(lev.add(64), &mut u);
                fifth(lev, &mut u);
            } else {
                nibbles(lev, &mut u);
            }
            for r in 0..R {
                let row = i0 + r;
                let c = a.block(row, e);
                let init = if min {
                    _mm512_setzero_si512()
                } else {
                    _mm512_set1_epi32(-offset * a.sum32(c))
                };
                let prod = _mm512_cvtepi32_ps(dots(&u, a.qs(row, e), init));
                let da = a.d(c);
                acc.f[r] = _mm512_fmadd_ps(prod, _mm512_mul_ps(dw, _mm512_set1_ps(da)), acc.f[r]);
                if min {
                    // Into the same sum: the two terms may cancel (see K45).
                    let mw = f16x16(p.add(32));
                    let dsum = _mm512_set1_ps(da * a.sum32(c) as f32);
                    acc.f[r] = _mm512_fmadd_ps(mw, dsum, acc.f[r]);
                }
            }
        }
    }
}

/// Q4_K (`FIFTH = false`) and Q5_K.
struct K45<const FIFTH: bool>;

impl<const FIFTH: bool> Format for K45<FIFTH> {
    const T: QuantType = if FIFTH {
        QuantType::Q5K
    } else {
        QuantType::Q4K
    };

    #[inline(always)]
    unsafe fn block<const R: usize>(acc: &mut Acc<R>, p: *const u8, a: &Act, i0: usize, e: usize) {
        unsafe {
            let l = Layout::of(Self::T);
            let (dw, dm) = (f16x16(p), f16x16(p.add(32)));
            // The scaled products and the mins cancel to a few bits for weights with a large
            // min: summed apart over a super-block only (as llama.cpp does), not a whole row,
            // or the rounding of the two large sums would swamp the result.
            let z = _mm512_setzero_ps();
            let (mut sf, mut so) = ([z; R], [z; R]);
            for s in 0..8 {
                let sc = _mm512_mul_ps(bytes16::<false>(p.add(64 + 16 * s)), dw);
                let mn = _mm512_mul_ps(bytes16::<false>(p.add(192 + 16 * s)), dm);
                let lev = p.add(l.head + s * l.sub);
                let mut u = [_mm512_setzero_si512(); 8];
                if FIFTH {
                    nibbles(lev.add(64), &mut u);
                    fifth(lev, &mut u);
                } else {
                    nibbles(lev, &mut u);
                }
                for r in 0..R {
                    let (row, e) = (i0 + r, e + 32 * s);
                    let c = a.block(row, e);
                    let prod = _mm512_cvtepi32_ps(dots(&u, a.qs(row, e), _mm512_setzero_si512()));
                    let da = a.d(c);
                    sf[r] = _mm512_fmadd_ps(prod, _mm512_mul_ps(sc, _mm512_set1_ps(da)), sf[r]);
                    let dsum = _mm512_set1_ps(da * a.sum32(c) as f32);
                    so[r] = _mm512_fnmadd_ps(mn, dsum, so[r]);
                }
            }
            for r in 0..R {
                acc.f[r] = _mm512_add_ps(acc.f[r], _mm512_add_ps(sf[r], so[r]));
            }
        }
    }
}

/// Q6_K: levels 0..63 with offset 32, a signed scale per 16 weights.
struct K6;

impl Format for K6 {
    const T: QuantType = QuantType::Q6K;

    #[inline(always)]
    unsafe fn block<const R: usize>(acc: &mut Acc<R>, p: *const u8, a: &Act, i0: usize, e: usize) {
        unsafe {
            let l = Layout::of(Self::T);
            let dw = f16x16(p);
            for s in 0..8 {
                let lev = p.add(l.head + s * l.sub);
                let mut u = [_mm512_setzero_si512(); 8];
                nibbles(lev.add(128), &mut u);
                six(lev, &mut u);
                for h in 0..2 {
                    let sc = _mm512_mul_ps(bytes16::<true>(p.add(32 + 16 * (2 * s + h))), dw);
                    for r in 0..R {
                        let (row, e) = (i0 + r, e + 32 * s);
                        let c = a.block(row, e);
                        let init = _mm512_set1_epi32(-32 * a.sum16(c, h));
                        let q = a.qs(row, e + 16 * h);
                        let prod = _mm512_cvtepi32_ps(dots(&u[4 * h..4 * h + 4], q, init));
                        let scale = _mm512_mul_ps(sc, _mm512_set1_ps(a.d(c)));
                        acc.f[r] = _mm512_fmadd_ps(prod, scale, acc.f[r]);
                    }
                }
            }
        }
    }
}

/// Calls `emit(tile, row, values)` with the products of each of the tiles in `tiles` (rows
/// of `t` with `k = q.k` weights, `quant::tile`'s layout) and every activation row of `q`
/// in `rows`: `values[l]` is the dot product of the tile's row `l`.
///
/// # Safety
/// The CPU must have the features of `available()`; `t` must be a format of `supports`,
/// `tiles` whole tiles of rows of `q.k` weights, and `q` must hold the rows.
pub unsafe fn tiles(
    t: QuantType,
    tiles: &[u8],
    q: &Q8Rows,
    rows: std::ops::Range<usize>,
    emit: &mut dyn FnMut(usize, usize, &[f32; TILE]),
) {
    unsafe {
        match t {
            QuantType::Q4_0 => tiles_of::<Legacy<Q4_0>>(tiles, q, rows, emit),
            QuantType::Q4_1 => tiles_of::<Legacy<Q4_1>>(tiles, q, rows, emit),
            QuantType::Q5_0 => tiles_of::<Legacy<Q5_0>>(tiles, q, rows, emit),
            QuantType::Q5_1 => tiles_of::<Legacy<Q5_1>>(tiles, q, rows, emit),
            QuantType::Q8_0 => tiles_of::<Legacy<Q8_0>>(tiles, q, rows, emit),
            QuantType::Q4K => tiles_of::<K45<false>>(tiles, q, rows, emit),
            QuantType::Q5K => tiles_of::<K45<true>>(tiles, q, rows, emit),
            QuantType::Q6K => tiles_of::<K6>(tiles, q, rows, emit),
            other => unreachable!("qtile512: no kernel for {}", other.name()),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn tiles_of<F: Format>(
    tiles: &[u8],
    q: &Q8Rows,
    rows: std::ops::Range<usize>,
    emit: &mut dyn FnMut(usize, usize, &[f32; TILE]),
) {
    unsafe {
        // Subnormal products of small scales cost a microcode assist per FMA (see qdot512).
        #[allow(deprecated)]
        let csr = _mm_getcsr();
        #[allow(deprecated)]
        _mm_setcsr(csr | 0x8040);
        let k = q.k;
        let l = Layout::of(F::T);
        let elems = F::T.block_elems();
        let tile_bytes = k / elems * l.block();
        let a = Act { q };
        // Software prefetch where it pays (Intel; see `simd::stream_prefetch`), on the first
        // pass over each tile only: later passes find it in cache.
        let ahead = super::simd::stream_prefetch() * 4;
        for (ti, tile) in tiles.chunks_exact(tile_bytes).enumerate() {
            let mut i0 = rows.start;
            while i0 < rows.end {
                let pf = if i0 == rows.start { ahead } else { 0 };
                match rows.end - i0 {
                    1 => one_tile::<F, 1>(tile, &a, i0, elems, &l, ti, pf, emit),
                    2 => one_tile::<F, 2>(tile, &a, i0, elems, &l, ti, pf, emit),
                    3 => one_tile::<F, 3>(tile, &a, i0, elems, &l, ti, pf, emit),
                    _ => one_tile::<F, MR>(tile, &a, i0, elems, &l, ti, pf, emit),
                }
                i0 += MR;
            }
        }
        #[allow(deprecated)]
        _mm_setcsr(csr);
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn one_tile<F: Format, const R: usize>(
    tile: &[u8],
    a: &Act,
    i0: usize,
    elems: usize,
    l: &Layout,
    ti: usize,
    ahead: usize,
    emit: &mut dyn FnMut(usize, usize, &[f32; TILE]),
) {
    unsafe {
        let z = _mm512_setzero_ps();
        let mut acc = Acc::<R> { f: [z; R] };
        let mut p = tile.as_ptr();
        for e in (0..a.q.k).step_by(elems) {
            if ahead > 0 {
                for line in (0..l.block()).step_by(64) {
                    // A hint only: addresses past the weights are never dereferenced.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead + line).cast());
                }
            }
            F::block::<R>(&mut acc, p, a, i0, e);
            p = p.add(l.block());
        }
        let mut out = [0.0f32; TILE];
        for r in 0..R {
            _mm512_storeu_ps(out.as_mut_ptr(), acc.f[r]);
            emit(ti, i0 + r, &out);
        }
    }
}
