//! The 32-weight block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
//!
//! Layouts (little-endian): `d` (and `m`) f16 scales first, then for 4- and 5-bit formats 16
//! bytes of nibbles (byte `j` holds weight `j` low and weight `j + 16` high), with Q5's fifth
//! bits in a u32 (`bit j` for weight `j`) before them. `_0` formats are symmetric
//! (`d * (q - offset)`), `_1` formats affine (`d * q + m`).

use super::{f16_at, put_f16, Block, Quantize, Unpacked};

pub struct Q4_0;
pub struct Q4_1;
pub struct Q5_0;
pub struct Q5_1;
pub struct Q8_0;

/// The element of largest magnitude (the first one on ties), with its sign.
fn signed_absmax(x: &[f32]) -> f32 {
    let mut best = x[0];
    for &v in &x[1..] {
        if v.abs() > best.abs() {
            best = v;
        }
    }
    best
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = (x[0], x[0]);
    for &v in &x[1..] {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    (lo, hi)
}

/// `1 / d`, or 0 for a zero scale (an all-zero block).
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// `trunc(v)` clamped to `0..=max`, as the reference's float-to-uint8 cast then `clip`.
fn level(v: f32, max: u8) -> u8 {
    (v.trunc().max(0.0) as u8).min(max)
}

/// Packs 32 levels (`< 16` in their low nibble) two per byte: `j` low, `j + 16` high.
fn pack_nibbles(q: &[u8; 32], out: &mut [u8]) {
    for j in 0..16 {
        out[j] = (q[j] & 0x0F) | (q[j + 16] << 4);
    }
}

/// The fifth bits of 32 levels as a u32, bit `j` for level `j`.
fn high_bits(q: &[u8; 32]) -> [u8; 4] {
    let mut h = 0u32;
    for (j, &v) in q.iter().enumerate() {
        h |= ((v as u32 >> 4) & 1) << j;
    }
    h.to_le_bytes()
}

/// The 4-bit level of weight `j` (0..32) from 16 packed bytes.
#[inline(always)]
fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 0x0F
    } else {
        qs[j - 16] >> 4
    }
}

impl Block for Q4_0 {
    const ELEMS: usize = 32;
    const BYTES: usize = 18;
    const SUB: usize = 32;
    fn unpack(b: &[u8], u: &mut Unpacked) {
        for j in 0..32 {
            u.q[j] = nibble(&b[2..18], j) as i8 - 8;
        }
        (u.scale[0], u.min[0]) = (f16_at(b, 0), 0.0);
    }
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let d = f16_at(b, 0);
        for (j, o) in out[..32].iter_mut().enumerate() {
            *o = d * (nibble(&b[2..18], j) as i32 - 8) as f32;
        }
    }
}

impl Quantize for Q4_0 {
    fn quantize(x: &[f32], b: &mut [u8]) {
        let d = signed_absmax(x) / -8.0;
        let id = inverse(d);
        let q: [u8; 32] = std::array::from_fn(|j| level(x[j] * id + 8.5, 15));
        put_f16(b, 0, d);
        pack_nibbles(&q, &mut b[2..18]);
    }
}

impl Block for Q4_1 {
    const ELEMS: usize = 32;
    const BYTES: usize = 20;
    const SUB: usize = 32;
    fn unpack(b: &[u8], u: &mut Unpacked) {
        for j in 0..32 {
            u.q[j] = nibble(&b[4..20], j) as i8;
        }
        (u.scale[0], u.min[0]) = (f16_at(b, 0), -f16_at(b, 2));
    }
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        for (j, o) in out[..32].iter_mut().enumerate() {
            *o = d * nibble(&b[4..20], j) as f32 + m;
        }
    }
}

impl Quantize for Q4_1 {
    fn quantize(x: &[f32], b: &mut [u8]) {
        let (lo, hi) = min_max(x);
        let d = (hi - lo) / 15.0;
        let id = inverse(d);
        let q: [u8; 32] = std::array::from_fn(|j| level((x[j] - lo) * id + 0.5, 15));
        put_f16(b, 0, d);
        put_f16(b, 2, lo);
        pack_nibbles(&q, &mut b[4..20]);
    }
}

impl Block for Q5_0 {
    const ELEMS: usize = 32;
    const BYTES: usize = 22;
    const SUB: usize = 32;
    fn unpack(b: &[u8], u: &mut Unpacked) {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for j in 0..32 {
            u.q[j] = (nibble(&b[6..22], j) | (((qh >> j) & 1) as u8) << 4) as i8 - 16;
        }
        (u.scale[0], u.min[0]) = (f16_at(b, 0), 0.0);
    }
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let d = f16_at(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for (j, o) in out[..32].iter_mut().enumerate() {
            let q = nibble(&b[6..22], j) | (((qh >> j) & 1) as u8) << 4;
            *o = d * (q as i32 - 16) as f32;
        }
    }
}

impl Quantize for Q5_0 {
    fn quantize(x: &[f32], b: &mut [u8]) {
        let d = signed_absmax(x) / -16.0;
        let id = inverse(d);
        let q: [u8; 32] = std::array::from_fn(|j| level(x[j] * id + 16.5, 31));
        put_f16(b, 0, d);
        b[2..6].copy_from_slice(&high_bits(&q));
        pack_nibbles(&q, &mut b[6..22]);
    }
}

impl Block for Q5_1 {
    const ELEMS: usize = 32;
    const BYTES: usize = 24;
    const SUB: usize = 32;
    fn unpack(b: &[u8], u: &mut Unpacked) {
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for j in 0..32 {
            u.q[j] = (nibble(&b[8..24], j) | (((qh >> j) & 1) as u8) << 4) as i8;
        }
        (u.scale[0], u.min[0]) = (f16_at(b, 0), -f16_at(b, 2));
    }
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for (j, o) in out[..32].iter_mut().enumerate() {
            let q = nibble(&b[8..24], j) | (((qh >> j) & 1) as u8) << 4;
            *o = d * q as f32 + m;
        }
    }
}

impl Quantize for Q5_1 {
    fn quantize(x: &[f32], b: &mut [u8]) {
        let (lo, hi) = min_max(x);
        let d = (hi - lo) / 31.0;
        let id = inverse(d);
        let q: [u8; 32] = std::array::from_fn(|j| level((x[j] - lo) * id + 0.5, 31));
        put_f16(b, 0, d);
        put_f16(b, 2, lo);
        b[4..8].copy_from_slice(&high_bits(&q));
        pack_nibbles(&q, &mut b[8..24]);
    }
}

impl Block for Q8_0 {
    const ELEMS: usize = 32;
    const BYTES: usize = 34;
    const SUB: usize = 32;
    fn unpack(b: &[u8], u: &mut Unpacked) {
        for (q, &v) in u.q[..32].iter_mut().zip(&b[2..34]) {
            *q = v as i8;
        }
        (u.scale[0], u.min[0]) = (f16_at(b, 0), 0.0);
    }
    fn dequantize(b: &[u8], out: &mut [f32]) {
        let d = f16_at(b, 0);
        for (o, &q) in out[..32].iter_mut().zip(&b[2..34]) {
            *o = q as i8 as f32 * d;
        }
    }
}

impl Quantize for Q8_0 {
    fn quantize(x: &[f32], b: &mut [u8]) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = inverse(d);
        put_f16(b, 0, d);
        for (o, &v) in b[2..34].iter_mut().zip(x) {
            // Rounded half away from zero, as ggml's `roundf`.
            *o = (v * id).round() as i8 as u8;
        }
    }
}
