//! AVX-512 VNNI products of quantized weight rows with int8 activation rows (`vpdpbusd`).
//!
//! Every format is brought, 64 weights at a time, to one form: 64 unsigned levels `u` (u8)
//! with, per 16-lane f32 vector, a scale `s` and an offset `o` such that weight
//! `w = s * u - o` (for the lanes' 4 weights each: a `vpdpbusd` lane sums 4 products). The
//! product with an activation row `a ~ da * q` is then, per lane,
//! `s * da * dot(u, q) - o * (da * sum(q))`: one `vpdpbusd`, a convert, a multiply and two
//! FMAs per 64 weights and row, the last factor (`asd`) precomputed with the activations.
//! Unpacking a chunk is shared by up to `MR` activation rows.

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

/// The formats with a kernel here.
pub fn supports(t: QuantType) -> bool {
    matches!(
        t,
        QuantType::Q4_0
            | QuantType::Q4_1
            | QuantType::Q5_0
            | QuantType::Q5_1
            | QuantType::Q8_0
            | QuantType::Q4K
            | QuantType::Q5K
            | QuantType::Q6K
    )
}

/// Per activation row and 64-weight chunk: `da` for each lane and `da * sum(q)` of its 4
/// values (the `asd` of the module docs), 16 floats each.
pub struct ActScales {
    pub da: Vec<f32>,
    pub asd: Vec<f32>,
}

impl ActScales {
    pub fn new(q: &Q8Rows, m: usize) -> Self {
        let k = q.k;
        let mut da = vec![0.0f32; m * k / 4];
        let mut asd = vec![0.0f32; m * k / 4];
        for lane in 0..m * k / 4 {
            let d = q.d[lane * 4 / 32];
            let s: i32 = q.qs[lane * 4..lane * 4 + 4].iter().map(|&v| v as i32).sum();
            da[lane] = d;
            asd[lane] = d * s as f32;
        }
        Self { da, asd }
    }
}

/// 64 weights in the form of the module docs.
#[derive(Clone, Copy)]
struct Chunk {
    u: __m512i,
    s: __m512,
    o: __m512,
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

/// A 16-lane vector: `x` in lanes 0-7, `y` in lanes 8-15.
#[inline(always)]
unsafe fn halves(x: f32, y: f32) -> __m512 {
    unsafe { _mm512_insertf32x8::<1>(_mm512_castps256_ps512(_mm256_set1_ps(x)), _mm256_set1_ps(y)) }
}

/// 16 nibble pairs to 32 levels: byte `j` low nibble is level `j`, high nibble level `j + 16`.
#[inline(always)]
unsafe fn nibbles32(p: *const u8) -> __m256i {
    unsafe {
        let x = _mm_loadu_si128(p.cast());
        let m = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(x, m);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(x), m);
        _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi)
    }
}

#[inline(always)]
unsafe fn join(a: __m256i, b: __m256i) -> __m512i {
    unsafe { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b) }
}

/// A format as this file multiplies it: `ELEMS` weights (`BYTES` bytes) unpacked at once into
/// `ELEMS / 64` chunks.
trait Kernel {
    const ELEMS: usize;
    const BYTES: usize;
    unsafe fn unpack(b: *const u8, out: &mut [Chunk; 4]);
}

/// Two consecutive 32-weight blocks of a legacy format (one chunk).
struct Legacy<const T: u8>;
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;

impl<const T: u8> Kernel for Legacy<T> {
    const ELEMS: usize = 64;
    const BYTES: usize = 2 * match T {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    };

    #[inline(always)]
    unsafe fn unpack(b0: *const u8, out: &mut [Chunk; 4]) {
        unsafe {
            let b1 = b0.add(Self::BYTES / 2);
            let s = halves(f16(b0), f16(b1));
            out[0] = match T {
                Q8_0 => {
                    let q = join(
                        _mm256_loadu_si256(b0.add(2).cast()),
                        _mm256_loadu_si256(b1.add(2).cast()),
                    );
                    // Signed q + 128 as unsigned: flip the sign bit.
                    let u = _mm512_xor_si512(q, _mm512_set1_epi8(-128));
                    Chunk {
                        u,
                        s,
                        o: _mm512_mul_ps(s, _mm512_set1_ps(128.0)),
                    }
                }
                Q4_0 | Q4_1 => {
                    let qo = Self::BYTES / 2 - 16;
                    let u = join(nibbles32(b0.add(qo)), nibbles32(b1.add(qo)));
                    let o = if T == Q4_0 {
                        _mm512_mul_ps(s, _mm512_set1_ps(8.0))
                    } else {
                        halves(-f16(b0.add(2)), -f16(b1.add(2)))
                    };
                    Chunk { u, s, o }
                }
                _ => {
                    let ho = Self::BYTES / 2 - 20;
                    let u = join(nibbles32(b0.add(ho + 4)), nibbles32(b1.add(ho + 4)));
                    let h0 = u32::from_le_bytes(*(b0.add(ho) as *const [u8; 4]));
                    let h1 = u32::from_le_bytes(*(b1.add(ho) as *const [u8; 4]));
                    let k = (h0 as u64) | ((h1 as u64) << 32);
                    let u = _mm512_mask_add_epi8(u, k, u, _mm512_set1_epi8(16));
                    let o = if T == Q5_0 {
                        _mm512_mul_ps(s, _mm512_set1_ps(16.0))
                    } else {
                        halves(-f16(b0.add(2)), -f16(b1.add(2)))
                    };
                    Chunk { u, s, o }
                }
            };
        }
    }
}

/// A Q4_K (`FIFTH = false`) or Q5_K super-block: four chunks, sub-blocks `2g`, `2g + 1` each.
struct K45<const FIFTH: bool>;

impl<const FIFTH: bool> Kernel for K45<FIFTH> {
    const ELEMS: usize = 256;
    const BYTES: usize = if FIFTH { 176 } else { 144 };

    #[inline(always)]
    unsafe fn unpack(b: *const u8, out: &mut [Chunk; 4]) {
        unsafe {
            let (d, dmin) = (f16(b), f16(b.add(2)));
            let sc = &*(b.add(4) as *const [u8; 12]);
            let (scales, mins) = crate::backend::quant::scale_min_k4(sc);
            let qs = b.add(if FIFTH { 48 } else { 16 });
            let m = _mm256_set1_epi8(0x0F);
            let qh = if FIFTH {
                let h = _mm256_loadu_si256(b.add(16).cast());
                join(h, h)
            } else {
                _mm512_setzero_si512()
            };
            for (g, o) in out.iter_mut().enumerate() {
                let x = _mm256_loadu_si256(qs.add(32 * g).cast());
                let lo = _mm256_and_si256(x, m);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(x), m);
                let mut u = join(lo, hi);
                if FIFTH {
                    // Bit `s` of qh[i] is the fifth bit of weight i of sub-block s.
                    let bits = join(
                        _mm256_set1_epi8((1u8 << (2 * g)) as i8),
                        _mm256_set1_epi8((1u8 << (2 * g + 1)) as i8),
                    );
                    let k = _mm512_test_epi8_mask(qh, bits);
                    u = _mm512_mask_add_epi8(u, k, u, _mm512_set1_epi8(16));
                }
                *o = Chunk {
                    u,
                    s: halves(d * scales[2 * g] as f32, d * scales[2 * g + 1] as f32),
                    o: halves(dmin * mins[2 * g] as f32, dmin * mins[2 * g + 1] as f32),
                };
            }
        }
    }
}

/// A Q6_K super-block: halves of 128 weights, each two chunks.
struct K6;

impl Kernel for K6 {
    const ELEMS: usize = 256;
    const BYTES: usize = 210;

    #[inline(always)]
    unsafe fn unpack(b: *const u8, out: &mut [Chunk; 4]) {
        unsafe {
            let d = _mm512_set1_ps(f16(b.add(208)));
            let m = _mm512_set1_epi8(0x0F);
            let three = _mm256_set1_epi8(3);
            // All sixteen i8 scales as f32 times d; chunk c uses scales 4c..4c + 4, 4 lanes each.
            let all = _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(b.add(192).cast()))),
                d,
            );
            for (c, o) in out.iter_mut().enumerate() {
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
                let u = _mm512_or_si512(low, _mm512_slli_epi16::<4>(high));
                let base = 4 * c as i32;
                let idx = _mm512_add_epi32(
                    _mm512_set1_epi32(base),
                    _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
                );
                let s = _mm512_permutexvar_ps(idx, all);
                *o = Chunk {
                    u,
                    s,
                    o: _mm512_mul_ps(s, _mm512_set1_ps(32.0)),
                };
            }
        }
    }
}

/// `out[r] += dot(row, act row rows[r])` for the `rows.len() <= MR` activation rows.
///
/// # Safety
/// The CPU must have the features of `available()`; `row` must hold `k / ELEMS` blocks of
/// `t` (a format of `supports`), `k` a multiple of 64 (whole K blocks for K types), and
/// `q`/`s` must cover the rows.
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

/// Accumulators of `R` rows: the scaled products and the offsets apart, and for one or two
/// rows two sets used by alternate chunks, so no FMA waits on the one before it.
struct Acc<const R: usize> {
    p: [[__m512; 2]; R],
    o: [[__m512; 2]; R],
}

/// One chunk against the `R` activation rows from `i0`, at weight `e` of the row, into the
/// accumulators of parity `P`.
#[inline(always)]
unsafe fn step<const R: usize, const P: usize>(
    acc: &mut Acc<R>,
    ch: &Chunk,
    q: &Q8Rows,
    s: &ActScales,
    i0: usize,
    e: usize,
) {
    let k = q.k;
    for r in 0..R {
        let off = (i0 + r) * k + e;
        unsafe {
            let a = _mm512_loadu_si512(q.qs.as_ptr().add(off).cast());
            let da = _mm512_loadu_ps(s.da.as_ptr().add(off / 4));
            let asd = _mm512_loadu_ps(s.asd.as_ptr().add(off / 4));
            let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ch.u, a);
            acc.p[r][P] =
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(ch.s, da), acc.p[r][P]);
            acc.o[r][P] = _mm512_fmadd_ps(ch.o, asd, acc.o[r][P]);
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
        let z = _mm512_setzero_ps();
        let mut acc = Acc::<R> {
            p: [[z; 2]; R],
            o: [[z; 2]; R],
        };
        let rp = row.as_ptr();
        let zero = Chunk {
            u: _mm512_setzero_si512(),
            s: z,
            o: z,
        };
        let mut ch = [zero; 4];
        let nb = q.k / K::ELEMS;
        // Two blocks per turn: chunks alternate accumulator sets (for K formats, also
        // within a block).
        let mut blk = 0;
        while blk < nb {
            for half in 0..2 {
                if blk + half == nb {
                    break;
                }
                let b = blk + half;
                K::unpack(rp.add(b * K::BYTES), &mut ch);
                let e = b * K::ELEMS;
                if K::ELEMS == 64 {
                    if half == 0 {
                        step::<R, 0>(&mut acc, &ch[0], q, s, i0, e);
                    } else {
                        step::<R, 1>(&mut acc, &ch[0], q, s, i0, e);
                    }
                } else {
                    step::<R, 0>(&mut acc, &ch[0], q, s, i0, e);
                    step::<R, 1>(&mut acc, &ch[1], q, s, i0, e + 64);
                    step::<R, 0>(&mut acc, &ch[2], q, s, i0, e + 128);
                    step::<R, 1>(&mut acc, &ch[3], q, s, i0, e + 192);
                }
            }
            blk += 2;
        }
        for (o, (p, m)) in out.iter_mut().zip(acc.p.iter().zip(&acc.o)) {
            let p = _mm512_add_ps(p[0], p[1]);
            let m = _mm512_add_ps(m[0], m[1]);
            *o = _mm512_reduce_add_ps(_mm512_sub_ps(p, m));
        }
    }
}
