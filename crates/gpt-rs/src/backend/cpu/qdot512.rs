//! AVX-512 VNNI products of quantized weight rows with int8 activation rows (`vpdpbusd`).
//!
//! Rows are read in `quant::repack`'s layout (Q6_K as stored), in groups of up to four
//! 64-weight chunks (256 weights: eight 32-weight blocks or sub-blocks). Every format is
//! brought to one form: unsigned levels `u` (u8) with a scale `s` and an offset `o` per 32
//! weights (per 16 for Q6_K), weight `w = s * u - o`. With activations `a ~ da * q` (int8,
//! one `da` per 32), a row's dot product is
//!
//! `sum over blocks b of  s_b * da_b * dot(u_b, q_b)  -  o_b * (da_b * sum(q_b))`.
//!
//! The first term takes, per chunk, one `vpdpbusd` (16 lanes of 4 products), a convert and an
//! FMA with `s * da` (the group's eight values multiplied once, then permuted to the lanes of
//! each chunk); the second is one FMA per group, with `da * sum(q)` precomputed per block
//! (`ActScales`). Unpacking a group is shared by up to `MR` activation rows.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::qmatmul::Q8Rows;
use crate::backend::quant::QuantType;

/// Activation rows multiplied per pass over a weight row.
pub const MR: usize = 4;

/// Whether this CPU has what these kernels use (checked once).
pub fn available() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("f16c")
    })
}

/// The formats with a kernel here: those `quant::repack` repacks, and Q6_K as stored.
pub fn supports(t: QuantType) -> bool {
    t == QuantType::Q6K || crate::backend::quant::repack::repacks(t, 64)
}

/// Per activation row: `da * sum(q)` of every 32 values and of every 16 (Q6_K's offsets).
pub struct ActScales {
    pub dsum32: Vec<f32>,
    pub dsum16: Vec<f32>,
}

impl ActScales {
    pub fn new(q: &Q8Rows, m: usize) -> Self {
        let n16 = m * q.k / 16;
        let dsum16: Vec<f32> = (0..n16).map(|i| q.d[i / 2] * q.sum16[i] as f32).collect();
        let dsum32 = (0..n16 / 2)
            .map(|b| q.d[b] * (q.sum16[2 * b] + q.sum16[2 * b + 1]) as f32)
            .collect();
        Self { dsum32, dsum16 }
    }
}

// The helpers below are `inline(always)` without target features of their own: they are only
// called from `dot_rows_of`, which has them, and are compiled inside it.

/// The f16 at `p` as f32 (F16C).
#[inline(always)]
unsafe fn f16(p: *const u8) -> f32 {
    unsafe {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

#[inline(always)]
unsafe fn join(a: __m256i, b: __m256i) -> __m512i {
    unsafe { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b) }
}

/// Lane indices picking value `2c` for lanes 0-7 and `2c + 1` for lanes 8-15.
#[inline(always)]
unsafe fn pair_index(c: usize) -> __m512i {
    unsafe {
        let lo = _mm256_set1_epi32(2 * c as i32);
        let hi = _mm256_set1_epi32(2 * c as i32 + 1);
        join(lo, hi)
    }
}

/// `n` (<= 8) f16 values at `p` as f32 in lanes 0..n (zeros above).
#[inline(always)]
unsafe fn f16s(p: *const u8, n: usize) -> __m512 {
    unsafe {
        let h = _mm_maskz_loadu_epi16(((1u32 << n) - 1) as u8, p.cast());
        _mm512_zextps256_ps512(_mm256_cvtph_ps(h))
    }
}

/// `n` (<= 16) floats at `p` in lanes 0..n (zeros above).
#[inline(always)]
unsafe fn f32s(p: *const f32, n: usize) -> __m512 {
    unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p) }
}

/// The nibbles of `N` chunks paired as `quant::repack` lays them out.
#[inline(always)]
unsafe fn paired_nibbles<const N: usize>(qs: *const u8, u: &mut [__m512i; 4]) {
    unsafe {
        let m = _mm512_set1_epi8(0x0F);
        let mut c = 0;
        while c + 1 < N {
            let x = _mm512_loadu_si512(qs.add(32 * c).cast());
            u[c] = _mm512_and_si512(x, m);
            u[c + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(x), m);
            c += 2;
        }
        if c < N {
            let x = _mm256_loadu_si256(qs.add(32 * c).cast());
            let m = _mm256_set1_epi8(0x0F);
            u[c] = join(
                _mm256_and_si256(x, m),
                _mm256_and_si256(_mm256_srli_epi16::<4>(x), m),
            );
        }
    }
}

/// A group of `N` chunks unpacked: levels, and per 32 weights the scale and the offset (lanes
/// 0..2N of `s` and `o`); Q6_K instead gives per-chunk lane scales in `s16` and its sixteen
/// per-16 offsets in `o`.
struct Group {
    u: [__m512i; 4],
    s: __m512,
    o: __m512,
    s16: Option<[__m512; 4]>,
}

/// A format as this file multiplies it.
trait Kernel {
    /// Bytes of a group of `N` chunks.
    fn bytes(nch: usize) -> usize;
    /// Unpacks a group of `N` chunks (`N` = 4 but for a legacy row's last group).
    unsafe fn unpack<const N: usize>(b: *const u8) -> Group;
}

/// A group of up to 8 blocks of a legacy format, repacked (`quant::repack`).
struct Legacy<const T: u8>;
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;

impl<const T: u8> Legacy<T> {
    const BLOCK: usize = match T {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    };
    const MIN: bool = T == Q4_1 || T == Q5_1;
    const FIFTH: bool = T == Q5_0 || T == Q5_1;
    /// The offset of a level: `w = d * (u - OFFSET)` for the symmetric formats.
    const OFFSET: f32 = match T {
        Q4_0 => 8.0,
        Q5_0 => 16.0,
        _ => 128.0,
    };
}

impl<const T: u8> Kernel for Legacy<T> {
    fn bytes(nch: usize) -> usize {
        2 * nch * Self::BLOCK
    }

    #[inline(always)]
    unsafe fn unpack<const N: usize>(b: *const u8) -> Group {
        unsafe {
            let g = 2 * N;
            let (mo, ho) = (2 * g, if Self::MIN { 4 * g } else { 2 * g });
            let qo = if Self::FIFTH { ho + 4 * g } else { ho };
            let s = f16s(b, g);
            let o = if Self::MIN {
                _mm512_sub_ps(_mm512_setzero_ps(), f16s(b.add(mo), g))
            } else {
                _mm512_mul_ps(s, _mm512_set1_ps(Self::OFFSET))
            };
            let mut u = [_mm512_setzero_si512(); 4];
            if T == Q8_0 {
                for (c, u) in u.iter_mut().enumerate().take(N) {
                    let q = _mm512_loadu_si512(b.add(qo + 64 * c).cast());
                    // Signed q + 128 as unsigned: flip the sign bit.
                    *u = _mm512_xor_si512(q, _mm512_set1_epi8(-128));
                }
            } else {
                paired_nibbles::<N>(b.add(qo), &mut u);
                if Self::FIFTH {
                    for (c, u) in u.iter_mut().enumerate().take(N) {
                        let k = u64::from_le_bytes(*(b.add(ho + 8 * c) as *const [u8; 8]));
                        *u = _mm512_mask_add_epi8(*u, k, *u, _mm512_set1_epi8(16));
                    }
                }
            }
            Group { u, s, o, s16: None }
        }
    }
}

/// A repacked Q4_K (`FIFTH = false`) or Q5_K super-block.
struct K45<const FIFTH: bool>;

impl<const FIFTH: bool> Kernel for K45<FIFTH> {
    fn bytes(_: usize) -> usize {
        if FIFTH {
            180
        } else {
            148
        }
    }

    #[inline(always)]
    unsafe fn unpack<const N: usize>(b: *const u8) -> Group {
        unsafe {
            let d = _mm512_set1_ps(f16(b));
            let dmin = _mm512_set1_ps(f16(b.add(2)));
            let bytes8 = |at: usize| {
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadl_epi64(b.add(at).cast())))
            };
            let s = _mm512_mul_ps(bytes8(4), d);
            let o = _mm512_mul_ps(bytes8(12), dmin);
            let mut u = [_mm512_setzero_si512(); 4];
            paired_nibbles::<4>(b.add(if FIFTH { 52 } else { 20 }), &mut u);
            if FIFTH {
                for (c, u) in u.iter_mut().enumerate() {
                    let k = u64::from_le_bytes(*(b.add(20 + 8 * c) as *const [u8; 8]));
                    *u = _mm512_mask_add_epi8(*u, k, *u, _mm512_set1_epi8(16));
                }
            }
            Group { u, s, o, s16: None }
        }
    }
}

/// A Q6_K super-block (as stored): halves of 128 weights, each two chunks; sixteen i8
/// scales, one per 16 weights.
struct K6;

impl Kernel for K6 {
    fn bytes(_: usize) -> usize {
        210
    }

    #[inline(always)]
    unsafe fn unpack<const N: usize>(b: *const u8) -> Group {
        unsafe {
            let d = _mm512_set1_ps(f16(b.add(208)));
            let m = _mm512_set1_epi8(0x0F);
            let three = _mm256_set1_epi8(3);
            // The sixteen scales times d; chunk c uses scales 4c..4c + 4, 4 lanes each.
            let all = _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(b.add(192).cast()))),
                d,
            );
            let mut u = [_mm512_setzero_si512(); 4];
            let mut s16 = [_mm512_setzero_ps(); 4];
            for c in 0..4 {
                let (h, cc) = (c / 2, c % 2);
                let l = _mm512_loadu_si512(b.add(64 * h).cast());
                let low = if cc == 0 {
                    _mm512_and_si512(l, m)
                } else {
                    _mm512_and_si512(_mm512_srli_epi16::<4>(l), m)
                };
                let qh = _mm256_loadu_si256(b.add(128 + 32 * h).cast());
                let (ha, hb) = if cc == 0 {
                    (qh, _mm256_srli_epi16::<2>(qh))
                } else {
                    (_mm256_srli_epi16::<4>(qh), _mm256_srli_epi16::<6>(qh))
                };
                let high = join(_mm256_and_si256(ha, three), _mm256_and_si256(hb, three));
                u[c] = _mm512_or_si512(low, _mm512_slli_epi16::<4>(high));
                let idx = _mm512_add_epi32(
                    _mm512_set1_epi32(4 * c as i32),
                    _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
                );
                s16[c] = _mm512_permutexvar_ps(idx, all);
            }
            Group {
                u,
                s: _mm512_setzero_ps(),
                o: _mm512_mul_ps(all, _mm512_set1_ps(32.0)),
                s16: Some(s16),
            }
        }
    }
}

/// `out[r] = dot(row, act row rows[r])` for the `rows.len() <= MR` activation rows.
///
/// # Safety
/// The CPU must have the features of `available()`; `row` must hold a row of `t` (a format
/// of `supports`) in `quant::repack`'s layout (Q6_K: as stored), `k` a multiple of 64 (whole
/// K blocks for K types), and `q`/`s` must cover the rows.
pub unsafe fn dot_rows(
    t: QuantType,
    row: &[u8],
    q: &Q8Rows,
    s: &ActScales,
    rows: std::ops::Range<usize>,
    out: &mut [f32; MR],
) {
    unsafe fn by_rows<K: Kernel>(
        row: &[u8],
        q: &Q8Rows,
        s: &ActScales,
        rows: std::ops::Range<usize>,
        out: &mut [f32; MR],
    ) {
        let i0 = rows.start;
        unsafe {
            match rows.len() {
                1 => dot_rows_of::<K, 1>(row, q, s, i0, out),
                2 => dot_rows_of::<K, 2>(row, q, s, i0, out),
                3 => dot_rows_of::<K, 3>(row, q, s, i0, out),
                _ => dot_rows_of::<K, 4>(row, q, s, i0, out),
            }
        }
    }
    unsafe {
        match t {
            QuantType::Q4_0 => by_rows::<Legacy<Q4_0>>(row, q, s, rows, out),
            QuantType::Q4_1 => by_rows::<Legacy<Q4_1>>(row, q, s, rows, out),
            QuantType::Q5_0 => by_rows::<Legacy<Q5_0>>(row, q, s, rows, out),
            QuantType::Q5_1 => by_rows::<Legacy<Q5_1>>(row, q, s, rows, out),
            QuantType::Q8_0 => by_rows::<Legacy<Q8_0>>(row, q, s, rows, out),
            QuantType::Q4K => by_rows::<K45<false>>(row, q, s, rows, out),
            QuantType::Q5K => by_rows::<K45<true>>(row, q, s, rows, out),
            QuantType::Q6K => by_rows::<K6>(row, q, s, rows, out),
            other => unreachable!("qdot512: no kernel for {}", other.name()),
        }
    }
}

/// Accumulators of `R` rows: the scaled products (two sets, used by alternate chunks, so no
/// FMA waits on the one before it) and the offsets.
struct Acc<const R: usize> {
    p: [[__m512; 2]; R],
    o: [__m512; R],
}

/// One group of `N` chunks (starting at weight `e`) against the `R` activation rows from
/// `i0`.
#[inline(always)]
unsafe fn group<K: Kernel, const N: usize, const R: usize>(
    acc: &mut Acc<R>,
    b: *const u8,
    q: &Q8Rows,
    s: &ActScales,
    i0: usize,
    e: usize,
) {
    unsafe {
        let k = q.k;
        let g = K::unpack::<N>(b);
        for r in 0..R {
            let row = (i0 + r) * k + e;
            let da = f32s(q.d.as_ptr().add(row / 32), 2 * N);
            let sda = _mm512_mul_ps(g.s, da);
            for c in 0..N {
                let a = _mm512_loadu_si512(q.qs.as_ptr().add(row + 64 * c).cast());
                let p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), g.u[c], a));
                let scale = match &g.s16 {
                    Some(s16) => _mm512_mul_ps(s16[c], _mm512_permutexvar_ps(pair_index(c), da)),
                    None => _mm512_permutexvar_ps(pair_index(c), sda),
                };
                let set = &mut acc.p[r][c % 2];
                *set = _mm512_fmadd_ps(p, scale, *set);
            }
            let dsum = match g.s16 {
                Some(_) => _mm512_loadu_ps(s.dsum16.as_ptr().add(row / 16)),
                None => f32s(s.dsum32.as_ptr().add(row / 32), 2 * N),
            };
            acc.o[r] = _mm512_fmadd_ps(g.o, dsum, acc.o[r]);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c")]
unsafe fn dot_rows_of<K: Kernel, const R: usize>(
    row: &[u8],
    q: &Q8Rows,
    s: &ActScales,
    i0: usize,
    out: &mut [f32; MR],
) {
    unsafe {
        // Flush subnormals to zero while this row runs (restored below): products of small
        // scales reach the subnormal range on real models, and every FMA on one then takes a
        // microcode assist (a large decode slowdown on the real Qwen2.5-Coder file:
        // docs/performance.md, "Subnormals"). Values that small do not change an f32 dot product.
        #[allow(deprecated)]
        let csr = _mm_getcsr();
        #[allow(deprecated)]
        _mm_setcsr(csr | 0x8040);
        let z = _mm512_setzero_ps();
        let mut acc = Acc::<R> {
            p: [[z; 2]; R],
            o: [z; R],
        };
        let k = q.k;
        let (mut e, mut p) = (0, row.as_ptr());
        while k - e >= 256 {
            group::<K, 4, R>(&mut acc, p, q, s, i0, e);
            p = p.add(K::bytes(4));
            e += 256;
        }
        // A last group of one to three chunks (legacy formats only).
        match (k - e) / 64 {
            1 => group::<K, 1, R>(&mut acc, p, q, s, i0, e),
            2 => group::<K, 2, R>(&mut acc, p, q, s, i0, e),
            3 => group::<K, 3, R>(&mut acc, p, q, s, i0, e),
            _ => {}
        }
        for (o, (p, m)) in out.iter_mut().zip(acc.p.iter().zip(&acc.o)) {
            *o = _mm512_reduce_add_ps(_mm512_sub_ps(_mm512_add_ps(p[0], p[1]), *m));
        }
        #[allow(deprecated)]
        _mm_setcsr(csr);
    }
}
