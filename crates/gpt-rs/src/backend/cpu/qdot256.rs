//! AVX2 products of quantized weight rows with int8 activation rows, for CPUs without
//! AVX-512 VNNI: the method of `qdot512.rs` (see there) on 256-bit vectors, the 4-product lanes
//! from `vpmaddubsw` + `vpmaddwd` instead of `vpdpbusd`. `vpmaddubsw` saturates its i16 pair
//! sums, which unsigned levels up to 63 never reach (63 * 127 * 2 < 32767); Q8_0's signed
//! levels go through `vpsignb` (|w| times a with w's sign) instead of an offset of 128.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::qdot512::ActScales;
use super::qmatmul::Q8Rows;
use crate::backend::quant::QuantType;

pub use super::qdot512::MR;

/// Whether this CPU has AVX2, FMA and F16C (checked once).
pub fn available() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

// Helpers are `inline(always)`, compiled inside `dot_rows_of` (which has the features).

#[inline(always)]
unsafe fn f16(p: *const u8) -> f32 {
    unsafe {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

/// `n` (<= 8) f16 values at `p` as f32 lanes 0..n (zeros above).
#[inline(always)]
unsafe fn f16s(p: *const u8, n: usize) -> __m256 {
    unsafe {
        let mut b = [0u8; 16];
        std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), 2 * n);
        _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().cast()))
    }
}

/// `n` (<= 8) floats at `p` (zeros above).
#[inline(always)]
unsafe fn f32s(p: *const f32, n: usize) -> __m256 {
    unsafe {
        let mut b = [0f32; 8];
        std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), n);
        _mm256_loadu_ps(b.as_ptr())
    }
}

/// 32 bits of `m` as 32 bytes: 16 where the bit is set, else 0.
#[inline(always)]
unsafe fn bits16(m: u32) -> __m256i {
    unsafe {
        let v = _mm256_set1_epi32(m as i32);
        let shuf = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let hit = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, shuf), sel), sel);
        _mm256_and_si256(hit, _mm256_set1_epi8(16))
    }
}

/// Chunk levels: `[weights 0..32, weights 32..64]`.
type Levels = [__m256i; 2];

/// Adds 16 to the levels of `N` chunks whose fifth bit is set: one u64 per chunk at `h`.
#[inline(always)]
unsafe fn fifth_bits<const N: usize>(h: *const u8, u: &mut [Levels; 4]) {
    unsafe {
        for (c, u) in u.iter_mut().enumerate().take(N) {
            let h = h.add(8 * c);
            let h0 = u32::from_le_bytes(*(h as *const [u8; 4]));
            let h1 = u32::from_le_bytes(*(h.add(4) as *const [u8; 4]));
            u[0] = _mm256_or_si256(u[0], bits16(h0));
            u[1] = _mm256_or_si256(u[1], bits16(h1));
        }
    }
}

/// The nibbles of `N` chunks paired as `quant::repack` lays them out.
#[inline(always)]
unsafe fn paired_nibbles<const N: usize>(qs: *const u8, u: &mut [Levels; 4]) {
    unsafe {
        let m = _mm256_set1_epi8(0x0F);
        let lo = |x: __m256i| _mm256_and_si256(x, m);
        let hi = |x: __m256i| _mm256_and_si256(_mm256_srli_epi16::<4>(x), m);
        let mut c = 0;
        while c + 1 < N {
            let x0 = _mm256_loadu_si256(qs.add(32 * c).cast());
            let x1 = _mm256_loadu_si256(qs.add(32 * c + 32).cast());
            u[c] = [lo(x0), lo(x1)];
            u[c + 1] = [hi(x0), hi(x1)];
            c += 2;
        }
        if c < N {
            let x = _mm256_loadu_si256(qs.add(32 * c).cast());
            u[c] = [lo(x), hi(x)];
        }
    }
}

struct Group {
    u: [Levels; 4],
    /// Per 32 weights (lanes 0..2N): scale and offset. Q6_K: `s16` per chunk and half, and
    /// the sixteen per-16 offsets in `o16`.
    s: __m256,
    o: __m256,
    s16: Option<[[__m256; 2]; 4]>,
    o16: [__m256; 2],
    signed: bool,
}

trait Kernel {
    fn bytes(nch: usize) -> usize;
    unsafe fn unpack<const N: usize>(b: *const u8) -> Group;
}

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
    const OFFSET: f32 = match T {
        Q4_0 => 8.0,
        Q5_0 => 16.0,
        _ => 0.0,
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
                _mm256_sub_ps(_mm256_setzero_ps(), f16s(b.add(mo), g))
            } else {
                _mm256_mul_ps(s, _mm256_set1_ps(Self::OFFSET))
            };
            let z = _mm256_setzero_si256();
            let mut u = [[z; 2]; 4];
            if T == Q8_0 {
                for (c, u) in u.iter_mut().enumerate().take(N) {
                    let p = b.add(qo + 64 * c);
                    *u = [
                        _mm256_loadu_si256(p.cast()),
                        _mm256_loadu_si256(p.add(32).cast()),
                    ];
                }
            } else {
                paired_nibbles::<N>(b.add(qo), &mut u);
                if Self::FIFTH {
                    fifth_bits::<N>(b.add(ho), &mut u);
                }
            }
            Group {
                u,
                s,
                o,
                s16: None,
                o16: [_mm256_setzero_ps(); 2],
                signed: T == Q8_0,
            }
        }
    }
}

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
            let bytes8 = |at: usize| {
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(b.add(at).cast())))
            };
            let s = _mm256_mul_ps(bytes8(4), _mm256_set1_ps(f16(b)));
            let o = _mm256_mul_ps(bytes8(12), _mm256_set1_ps(f16(b.add(2))));
            let z = _mm256_setzero_si256();
            let mut u = [[z; 2]; 4];
            paired_nibbles::<4>(b.add(if FIFTH { 52 } else { 20 }), &mut u);
            if FIFTH {
                fifth_bits::<4>(b.add(20), &mut u);
            }
            Group {
                u,
                s,
                o,
                s16: None,
                o16: [_mm256_setzero_ps(); 2],
                signed: false,
            }
        }
    }
}

struct K6;

impl Kernel for K6 {
    fn bytes(_: usize) -> usize {
        210
    }

    #[inline(always)]
    unsafe fn unpack<const N: usize>(b: *const u8) -> Group {
        unsafe {
            let d = _mm256_set1_ps(f16(b.add(208)));
            let m = _mm256_set1_epi8(0x0F);
            let three = _mm256_set1_epi8(3);
            let sc = _mm_loadu_si128(b.add(192).cast());
            let all = [
                _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)), d),
                _mm256_mul_ps(
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(sc))),
                    d,
                ),
            ];
            let z = _mm256_setzero_si256();
            let mut u = [[z; 2]; 4];
            let mut s16 = [[_mm256_setzero_ps(); 2]; 4];
            for c in 0..4 {
                let (h, cc) = (c / 2, c % 2);
                let l0 = _mm256_loadu_si256(b.add(64 * h).cast());
                let l1 = _mm256_loadu_si256(b.add(64 * h + 32).cast());
                let low = |l: __m256i| {
                    if cc == 0 {
                        _mm256_and_si256(l, m)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l), m)
                    }
                };
                let qh = _mm256_loadu_si256(b.add(128 + 32 * h).cast());
                let (ha, hb) = if cc == 0 {
                    (qh, _mm256_srli_epi16::<2>(qh))
                } else {
                    (_mm256_srli_epi16::<4>(qh), _mm256_srli_epi16::<6>(qh))
                };
                let up = |x: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(x, three));
                u[c] = [
                    _mm256_or_si256(low(l0), up(ha)),
                    _mm256_or_si256(low(l1), up(hb)),
                ];
                // Scales 4c..4c + 4, of the lower or upper eight.
                let (half, base) = (c / 2, 4 * (c % 2) as i32);
                let idx = |j: i32| {
                    _mm256_setr_epi32(
                        base + j,
                        base + j,
                        base + j,
                        base + j,
                        base + j + 1,
                        base + j + 1,
                        base + j + 1,
                        base + j + 1,
                    )
                };
                s16[c] = [
                    _mm256_permutevar8x32_ps(all[half], idx(0)),
                    _mm256_permutevar8x32_ps(all[half], idx(2)),
                ];
            }
            let k32 = _mm256_set1_ps(32.0);
            Group {
                u,
                s: _mm256_setzero_ps(),
                o: _mm256_setzero_ps(),
                s16: Some(s16),
                o16: [_mm256_mul_ps(all[0], k32), _mm256_mul_ps(all[1], k32)],
                signed: false,
            }
        }
    }
}

/// `out[r] = dot(row, act row rows[r])` for the `rows.len() <= MR` activation rows.
///
/// # Safety
/// As `qdot512::dot_rows`, with the features of `available()`.
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
            other => unreachable!("qdot256: no kernel for {}", other.name()),
        }
    }
}

/// 8 lanes of 4 products each: `u` (unsigned levels, or signed q with `signed`) times `a`.
#[inline(always)]
unsafe fn dot4(u: __m256i, a: __m256i, signed: bool) -> __m256 {
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let pairs = if signed {
            _mm256_maddubs_epi16(_mm256_sign_epi8(u, u), _mm256_sign_epi8(a, u))
        } else {
            _mm256_maddubs_epi16(u, a)
        };
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones))
    }
}

struct Acc<const R: usize> {
    p: [[__m256; 2]; R],
    o: [__m256; R],
}

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
            let sda = _mm256_mul_ps(g.s, da);
            for c in 0..N {
                let ap = q.qs.as_ptr().add(row + 64 * c);
                for h in 0..2 {
                    let a = _mm256_loadu_si256(ap.add(32 * h).cast());
                    let p = dot4(g.u[c][h], a, g.signed);
                    let lane = _mm256_set1_epi32((2 * c + h) as i32);
                    let scale = match &g.s16 {
                        Some(s16) => _mm256_mul_ps(s16[c][h], _mm256_permutevar8x32_ps(da, lane)),
                        None => _mm256_permutevar8x32_ps(sda, lane),
                    };
                    acc.p[r][h] = _mm256_fmadd_ps(p, scale, acc.p[r][h]);
                }
            }
            if g.s16.is_some() {
                let d16 = s.dsum16.as_ptr().add(row / 16);
                acc.o[r] = _mm256_fmadd_ps(g.o16[0], _mm256_loadu_ps(d16), acc.o[r]);
                acc.o[r] = _mm256_fmadd_ps(g.o16[1], _mm256_loadu_ps(d16.add(8)), acc.o[r]);
            } else {
                let d32 = f32s(s.dsum32.as_ptr().add(row / 32), 2 * N);
                acc.o[r] = _mm256_fmadd_ps(g.o, d32, acc.o[r]);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_of<K: Kernel, const R: usize>(
    row: &[u8],
    q: &Q8Rows,
    s: &ActScales,
    i0: usize,
    out: &mut [f32; MR],
) {
    unsafe {
        // Subnormals flushed while the row runs, as in `qdot512`.
        #[allow(deprecated)]
        let csr = _mm_getcsr();
        #[allow(deprecated)]
        _mm_setcsr(csr | 0x8040);
        let z = _mm256_setzero_ps();
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
        match (k - e) / 64 {
            1 => group::<K, 1, R>(&mut acc, p, q, s, i0, e),
            2 => group::<K, 2, R>(&mut acc, p, q, s, i0, e),
            3 => group::<K, 3, R>(&mut acc, p, q, s, i0, e),
            _ => {}
        }
        for (o, (p, m)) in out.iter_mut().zip(acc.p.iter().zip(&acc.o)) {
            let v = _mm256_sub_ps(_mm256_add_ps(p[0], p[1]), *m);
            let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_shuffle_ps::<1>(h, h));
            *o = _mm_cvtss_f32(h);
        }
        #[allow(deprecated)]
        _mm_setcsr(csr);
    }
}
