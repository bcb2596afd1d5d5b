//! The 256-weight "K" block formats: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
//!
//! A super-block of 256 weights holds 8 or 16 sub-blocks, each with a small integer scale
//! (and for Q2/Q4/Q5 a min) that multiplies the super-block's f16 `d` (and `dmin`). The bit
//! planes are laid out for SIMD: in each 32- or 64-byte group, byte `i` carries bits of weights
//! `i`, `i + 32`, ... of consecutive sub-blocks.

use super::{f16_at, Block, Unpacked};

/// Weights per K super-block.
pub const QK_K: usize = 256;

pub struct Q2K;
pub struct Q3K;
pub struct Q4K;
pub struct Q5K;
pub struct Q6K;

/// The eight 6-bit (scale, min) pairs of a Q4_K/Q5_K super-block, from its 12 scale bytes:
/// sub-blocks 0-3 in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 in
/// the nibbles of bytes 8-11 with their top two bits in the top bits of bytes 0-7.
#[inline(always)]
pub fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[j + 4] & 0x3F;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    (sc, mn)
}

/// The inverse of `scale_min_k4`: eight 6-bit scales and mins into their 12 bytes.
pub fn pack_scale_min_k4(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut p = [0u8; 12];
    for j in 0..4 {
        p[j] = (sc[j] & 0x3F) | ((sc[j + 4] >> 4) << 6);
        p[j + 4] = (mn[j] & 0x3F) | ((mn[j + 4] >> 4) << 6);
        p[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
    }
    p
}

impl Block for Q2K {
    const ELEMS: usize = QK_K;
    const BYTES: usize = 84;
    const SUB: usize = 16;
    fn unpack(b: &[u8], u: &mut Unpacked) {
        let (scales, qs) = (&b[0..16], &b[16..80]);
        let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
        for (e, q) in u.q.iter_mut().enumerate() {
            let (h, t, i) = (e / 128, (e % 128) / 32, e % 32);
            *q = ((qs[h * 32 + i] >> (2 * t)) & 3) as i8;
        }
        for (s, &v) in scales.iter().enumerate() {
            u.scale[s] = d * (v & 0x0F) as f32;
            u.min[s] = dmin * (v >> 4) as f32;
        }
    }
    /// `scales[16]` (low nibble scale, high nibble min), `qs[64]` (2 bits), `d`, `dmin`.
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let (scales, qs) = (&b[0..16], &b[16..80]);
        let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
        for (e, o) in out[..QK_K].iter_mut().enumerate() {
            let (h, t, i) = (e / 128, (e % 128) / 32, e % 32);
            let q = (qs[h * 32 + i] >> (2 * t)) & 3;
            let s = scales[e / 16];
            let dl = d * (s & 0x0F) as f32;
            let ml = dmin * (s >> 4) as f32;
            *o = dl * q as f32 - ml;
        }
    }
}

/// The sixteen signed 6-bit scales of a Q3_K super-block: low nibbles in bytes 0-7 (scales
/// 0-7 low, 8-15 high), the top two bits in bytes 8-11.
fn scales_q3k(s: &[u8]) -> [i8; 16] {
    std::array::from_fn(|i| {
        let lo = if i < 8 { s[i] & 0x0F } else { s[i - 8] >> 4 };
        let hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        ((lo | hi << 4) as i8).wrapping_sub(32)
    })
}

impl Block for Q3K {
    const ELEMS: usize = QK_K;
    const BYTES: usize = 110;
    const SUB: usize = 16;
    fn unpack(b: &[u8], u: &mut Unpacked) {
        let (hmask, qs) = (&b[0..32], &b[32..96]);
        let scales = scales_q3k(&b[96..108]);
        let d = f16_at(b, 108);
        for (e, q) in u.q.iter_mut().enumerate() {
            let (h, t, i) = (e / 128, (e % 128) / 32, e % 32);
            let low = ((qs[h * 32 + i] >> (2 * t)) & 3) as i8;
            let high = ((hmask[i] >> (e / 32)) & 1) ^ 1;
            *q = low - (high << 2) as i8;
        }
        for (s, &v) in scales.iter().enumerate() {
            (u.scale[s], u.min[s]) = (d * v as f32, 0.0);
        }
    }
    /// `hmask[32]` (third bits), `qs[64]` (low 2 bits), `scales[12]`, `d`.
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let (hmask, qs) = (&b[0..32], &b[32..96]);
        let scales = scales_q3k(&b[96..108]);
        let d = f16_at(b, 108);
        for (e, o) in out[..QK_K].iter_mut().enumerate() {
            let (h, t, i) = (e / 128, (e % 128) / 32, e % 32);
            let low = ((qs[h * 32 + i] >> (2 * t)) & 3) as i8;
            // The offset of 4 applies when the mask bit is clear.
            let high = ((hmask[i] >> (e / 32)) & 1) ^ 1;
            let q = low - (high << 2) as i8;
            let dl = d * scales[e / 16] as f32;
            *o = dl * q as f32;
        }
    }
}

impl Block for Q4K {
    const ELEMS: usize = QK_K;
    const BYTES: usize = 144;
    const SUB: usize = 32;
    fn unpack(b: &[u8], u: &mut Unpacked) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, mn) = scale_min_k4(&b[4..16]);
        let qs = &b[16..144];
        for (e, q) in u.q.iter_mut().enumerate() {
            let (s, i) = (e / 32, e % 32);
            *q = ((qs[(s / 2) * 32 + i] >> (4 * (s % 2))) & 0x0F) as i8;
        }
        for s in 0..8 {
            u.scale[s] = d * sc[s] as f32;
            u.min[s] = dmin * mn[s] as f32;
        }
    }
    /// `d`, `dmin`, `scales[12]` (`scale_min_k4`), `qs[128]`: 32-byte groups, low nibbles
    /// for sub-block `2g`, high for `2g + 1`.
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, mn) = scale_min_k4(&b[4..16]);
        let qs = &b[16..144];
        for (s, o) in out[..QK_K].chunks_exact_mut(32).enumerate() {
            let ds = d * sc[s] as f32;
            let dm = dmin * mn[s] as f32;
            for (i, o) in o.iter_mut().enumerate() {
                let q = (qs[(s / 2) * 32 + i] >> (4 * (s % 2))) & 0x0F;
                *o = ds * q as f32 - dm;
            }
        }
    }
}

impl Block for Q5K {
    const ELEMS: usize = QK_K;
    const BYTES: usize = 176;
    const SUB: usize = 32;
    fn unpack(b: &[u8], u: &mut Unpacked) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, mn) = scale_min_k4(&b[4..16]);
        let (qh, qs) = (&b[16..48], &b[48..176]);
        for (e, q) in u.q.iter_mut().enumerate() {
            let (s, i) = (e / 32, e % 32);
            let low = (qs[(s / 2) * 32 + i] >> (4 * (s % 2))) & 0x0F;
            *q = (low | ((qh[i] >> s) & 1) << 4) as i8;
        }
        for s in 0..8 {
            u.scale[s] = d * sc[s] as f32;
            u.min[s] = dmin * mn[s] as f32;
        }
    }
    /// As Q4_K, with `qh[32]` before `qs`: bit `s` of `qh[i]` is the fifth bit of weight `i`
    /// of sub-block `s`.
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, mn) = scale_min_k4(&b[4..16]);
        let (qh, qs) = (&b[16..48], &b[48..176]);
        for (s, o) in out[..QK_K].chunks_exact_mut(32).enumerate() {
            let ds = d * sc[s] as f32;
            let dm = dmin * mn[s] as f32;
            for (i, o) in o.iter_mut().enumerate() {
                let low = (qs[(s / 2) * 32 + i] >> (4 * (s % 2))) & 0x0F;
                let q = low | ((qh[i] >> s) & 1) << 4;
                *o = ds * q as f32 - dm;
            }
        }
    }
}

impl Block for Q6K {
    const ELEMS: usize = QK_K;
    const BYTES: usize = 210;
    const SUB: usize = 16;
    fn unpack(b: &[u8], u: &mut Unpacked) {
        let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
        let d = f16_at(b, 208);
        for (e, q) in u.q.iter_mut().enumerate() {
            let (h, r) = (e / 128, e % 128);
            let low = (ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
            let high = (qh[h * 32 + r % 32] >> (2 * (r / 32))) & 3;
            *q = (low | high << 4) as i8 - 32;
        }
        for (s, &v) in scales.iter().enumerate() {
            (u.scale[s], u.min[s]) = (d * v as i8 as f32, 0.0);
        }
    }
    /// `ql[128]` (low 4 bits), `qh[64]` (high 2 bits), `scales[16]` (i8), `d`; each half of
    /// 128 weights uses 64 bytes of `ql` (two nibble planes) and 32 of `qh` (four 2-bit planes).
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
        let d = f16_at(b, 208);
        for (e, o) in out[..QK_K].iter_mut().enumerate() {
            let (h, r) = (e / 128, e % 128);
            let low = (ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
            let high = (qh[h * 32 + r % 32] >> (2 * (r / 32))) & 3;
            let q = (low | high << 4) as i8 - 32;
            let ds = d * scales[e / 16] as i8 as f32;
            *o = ds * q as f32;
        }
    }
}
