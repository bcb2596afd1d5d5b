//! AVX-512 VNNI products of quantized weight rows with int8 activation rows (`vpdpbusd`).
//!
//! Rows are read in `quant::repack`'s layout (Q6_K as stored). Every format is brought, 64
//! weights at a time, to one form: 64 unsigned levels `u` (u8)
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

#[inline(always)]
unsafe fn join(a: __m256i, b: __m256i) -> __m512i {
    unsafe { _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b) }
}

/// A format as this file multiplies it: groups of up to four chunks, unpacked at once.
trait Kernel {
    /// Bytes of a group of `nch` chunks.
    fn bytes(nch: usize) -> usize;
    /// Unpacks a group of `N` chunks (`N` = 4 but for a row's last group).
    unsafe fn unpack<const N: usize>(b: *const u8, out: &mut [Chunk; 4]);
}

/// Lane indices picking value `2c` for lanes 0-7 and `2c + 1` for lanes 8-15.
#[inline(always)]
unsafe fn pair_index(c: usize) -> __m512i {
    unsafe {
        let lo = _mm256_set1_epi32(2 * c as i32);
        let hi = _mm256_set1_epi32(2 * c as i32 + 1);
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
}

/// `n` (<= 8, even) f16 values at `p` as f32 in lanes 0..n of a 512-bit vector.
#[inline(always)]
unsafe fn f16s(p: *const u8, n: usize) -> __m512 {
    unsafe {
        let h = _mm_maskz_loadu_epi16(((1u32 << n) - 1) as u8, p.cast());
        _mm512_castps256_ps512(_mm256_cvtph_ps(h))
    }
}

/// The nibbles of `nch` chunks paired as `quant::repack` lays them out, into `out[..nch].u`.
#[inline(always)]
unsafe fn paired_nibbles(qs: *const u8, nch: usize, out: &mut [Chunk; 4]) {
    unsafe {
        let m = _mm512_set1_epi8(0x0F);
        let mut c = 0;
        while c + 1 < nch {
            let x = _mm512_loadu_si512(qs.add(32 * c).cast());
            out[c].u = _mm512_and_si512(x, m);
            out[c + 1].u = _mm512_and_si512(_mm512_srli_epi16::<4>(x), m);
            c += 2;
        }
        if c < nch {
            let x = _mm256_loadu_si256(qs.add(32 * c).cast());
            let m = _mm256_set1_epi8(0x0F);
            out[c].u = join(
                _mm256_and_si256(x, m),
                _mm256_and_si256(_mm256_srli_epi16::<4>(x), m),
            );
        }
    }
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
    unsafe fn unpack<const N: usize>(b: *const u8, out: &mut [Chunk; 4]) {
        let nch = N;
        unsafe {
            let g = 2 * nch;
            let (mo, ho) = (2 * g, if Self::MIN { 4 * g } else { 2 * g });
            let qo = if Self::FIFTH { ho + 4 * g } else { ho };
            let d = f16s(b, g);
            let mins = if Self::MIN { f16s(b.add(mo), g) } else { d };
            for (c, o) in out.iter_mut().enumerate().take(nch) {
                let idx = pair_index(c);
                o.s = _mm512_permutexvar_ps(idx, d);
                o.o = if Self::MIN {
                    _mm512_sub_ps(_mm512_setzero_ps(), _mm512_permutexvar_ps(idx, mins))
                } else {
                    _mm512_mul_ps(o.s, _mm512_set1_ps(Self::OFFSET))
                };
            }
            if T == Q8_0 {
                for (c, o) in out.iter_mut().enumerate().take(nch) {
                    let q = _mm512_loadu_si512(b.add(qo + 64 * c).cast());
                    // Signed q + 128 as unsigned: flip the sign bit.
                    o.u = _mm512_xor_si512(q, _mm512_set1_epi8(-128));
                }
                return;
            }
            paired_nibbles(b.add(qo), nch, out);
            if Self::FIFTH {
                for (c, o) in out.iter_mut().enumerate().take(nch) {
                    let k = u64::from_le_bytes(*(b.add(ho + 8 * c) as *const [u8; 8]));
                    o.u = _mm512_mask_add_epi8(o.u, k, o.u, _mm512_set1_epi8(16));
                }
            }
        }
    }
}

/// A repacked Q4_K (`FIFTH = false`) or Q5_K super-block: four chunks.
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
    unsafe fn unpack<const N: usize>(b: *const u8, out: &mut [Chunk; 4]) {
        unsafe {
            let d = _mm512_set1_ps(f16(b));
            let dmin = _mm512_set1_ps(f16(b.add(2)));
            // Eight scales then eight mins (bytes 4..20) as f32 in lanes 0-7 and 8-15.
            let sm = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(b.add(4).cast())));
            let scales = _mm512_mul_ps(sm, d);
            let mins = _mm512_mul_ps(sm, dmin);
            let qo = if FIFTH { 52 } else { 20 };
            paired_nibbles(b.add(qo), 4, out);
            for (c, o) in out.iter_mut().enumerate() {
                let idx = pair_index(c);
                o.s = _mm512_permutexvar_ps(idx, scales);
                o.o = _mm512_permutexvar_ps(_mm512_add_epi32(idx, _mm512_set1_epi32(8)), mins);
                if FIFTH {
                    let k = u64::from_le_bytes(*(b.add(20 + 8 * c) as *const [u8; 8]));
                    o.u = _mm512_mask_add_epi8(o.u, k, o.u, _mm512_set1_epi8(16));
                }
            }
        }
    }
}

/// A Q6_K super-block: halves of 128 weights, each two chunks.
struct K6;

impl Kernel for K6 {
    fn bytes(_: usize) -> usize {
        210
    }

    #[inline(always)]
    unsafe fn unpack<const N: usize>(b: *const u8, out: &mut [Chunk; 4]) {
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
/// `t` (a format of `supports`) in `quant::repack`'s layout (Q6_K: as stored), `k` a
/// multiple of 64 (whole K blocks for K types), and `q`/`s` must cover the rows.
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
        // Flush subnormals to zero while this row runs (restored below): products of small
        // scales reach the subnormal range on real models, and every FMA on one then takes a
        // microcode assist (measured: decode of the real Qwen2.5-Coder Q4_K_M file at 33
        // instead of 53 tokens/s on Zen 4). Values that small do not change an f32 dot product.
        #[allow(deprecated)]
        let csr = _mm_getcsr();
        #[allow(deprecated)]
        _mm_setcsr(csr | 0x8040);
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
        let k = q.k;
        let (mut e, mut p) = (0, rp);
        // Whole groups of four chunks; chunks alternate accumulator sets, so no FMA waits on
        // the one before it.
        while k - e >= 256 {
            K::unpack::<4>(p, &mut ch);
            step::<R, 0>(&mut acc, &ch[0], q, s, i0, e);
            step::<R, 1>(&mut acc, &ch[1], q, s, i0, e + 64);
            step::<R, 0>(&mut acc, &ch[2], q, s, i0, e + 128);
            step::<R, 1>(&mut acc, &ch[3], q, s, i0, e + 192);
            p = p.add(K::bytes(4));
            e += 256;
        }
        // A last group of one to three chunks (legacy formats only).
        let nch = (k - e) / 64;
        match nch {
            1 => K::unpack::<1>(p, &mut ch),
            2 => K::unpack::<2>(p, &mut ch),
            3 => K::unpack::<3>(p, &mut ch),
            _ => {}
        }
        if nch > 0 {
            step::<R, 0>(&mut acc, &ch[0], q, s, i0, e);
        }
        if nch > 1 {
            step::<R, 1>(&mut acc, &ch[1], q, s, i0, e + 64);
        }
        if nch > 2 {
            step::<R, 0>(&mut acc, &ch[2], q, s, i0, e + 128);
        }
        for (o, (p, m)) in out.iter_mut().zip(acc.p.iter().zip(&acc.o)) {
            let p = _mm512_add_ps(p[0], p[1]);
            let m = _mm512_add_ps(m[0], m[1]);
            *o = _mm512_reduce_add_ps(_mm512_sub_ps(p, m));
        }
        #[allow(deprecated)]
        _mm_setcsr(csr);
    }
}
