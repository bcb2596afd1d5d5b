//! A row layout of the same blocks, regrouped so that SIMD kernels load what they need in a
//! few wide loads: the `cpu` backend's AVX-512 kernels read it (`backend/cpu/qdot512.rs`).
//!
//! A row stays one contiguous run of bytes (so panels of rows, embedding lookups and the
//! other backends work as before, through `unrepack_row`). Within it, every 64 weights form
//! a *chunk* (two 32-weight blocks, or a quarter of a K super-block), and:
//!
//! * Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0: blocks in groups of 8 (the last group may be smaller,
//!   always an even count): the group's `d` scales (f16) together, then its `m` (f16), then
//!   its fifth-bit words (u32, so chunk `c`'s 64 bits are one u64), then the levels: for 4-
//!   and 5-bit formats, chunks in pairs of 64 bytes (byte `i`: weight `i` of the first chunk
//!   in the low nibble, of the second in the high one), an odd last chunk as 32 bytes (byte
//!   `i`: weights `i` and `i + 32`); for Q8_0 the bytes as they are. Same size as the row.
//! * Q4_K / Q5_K: per super-block `d`, `dmin`, the eight 6-bit scales and eight mins as
//!   bytes (16, where the format packs them in 12), Q5_K's fifth bits as one u64 per chunk,
//!   and the nibbles paired by chunks as above. 4 bytes per super-block more than the row.
//!
//! Other formats are not repacked.

use super::{QuantType, QK_K};

/// Whether rows of `t` with `k` weights are repacked (`k` a multiple of 64).
pub fn repacks(t: QuantType, k: usize) -> bool {
    k.is_multiple_of(64)
        && matches!(
            t,
            QuantType::Q4_0
                | QuantType::Q4_1
                | QuantType::Q5_0
                | QuantType::Q5_1
                | QuantType::Q8_0
                | QuantType::Q4K
                | QuantType::Q5K
        )
}

/// Bytes of a repacked row of `k` weights.
pub fn row_bytes(t: QuantType, k: usize) -> usize {
    match t {
        QuantType::Q4K | QuantType::Q5K => t.row_bytes(k) + 4 * (k / QK_K),
        _ => t.row_bytes(k),
    }
}

/// Offsets within a legacy group of `g` blocks: (m, qh, qs).
pub fn legacy_offsets(t: QuantType, g: usize) -> (usize, usize, usize) {
    let m = 2 * g;
    let qh = if matches!(t, QuantType::Q4_1 | QuantType::Q5_1) {
        4 * g
    } else {
        m
    };
    let qs = if matches!(t, QuantType::Q5_0 | QuantType::Q5_1) {
        qh + 4 * g
    } else {
        qh
    };
    (m, qh, qs)
}

/// The level (0..15) of weight `j` (0..32) of a block's 16 packed bytes.
fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 0x0F
    } else {
        qs[j - 16] >> 4
    }
}

/// Places 4-bit levels of `chunks` chunks (`level(c, e)`, weight `e` of chunk `c`) into `out`
/// as the module docs say (pairs of chunks in 64 bytes, an odd last chunk in 32).
fn pack_chunks(chunks: usize, out: &mut [u8], level: impl Fn(usize, usize) -> u8) {
    let mut c = 0;
    let mut o = 0;
    while c + 1 < chunks {
        for i in 0..64 {
            out[o + i] = level(c, i) | level(c + 1, i) << 4;
        }
        c += 2;
        o += 64;
    }
    if c < chunks {
        for i in 0..32 {
            out[o + i] = level(c, i) | level(c, i + 32) << 4;
        }
    }
}

fn unpack_chunks(chunks: usize, src: &[u8], mut put: impl FnMut(usize, usize, u8)) {
    let mut c = 0;
    let mut o = 0;
    while c + 1 < chunks {
        for i in 0..64 {
            put(c, i, src[o + i] & 0x0F);
            put(c + 1, i, src[o + i] >> 4);
        }
        c += 2;
        o += 64;
    }
    if c < chunks {
        for i in 0..32 {
            put(c, i, src[o + i] & 0x0F);
            put(c, i + 32, src[o + i] >> 4);
        }
    }
}

/// Repacks one row (`k` weights, GGUF layout `src`) into `dst` (`row_bytes(t, k)` bytes).
pub fn repack_row(t: QuantType, k: usize, src: &[u8], dst: &mut [u8]) {
    pack(t, k, src, dst)
}

/// Back to the GGUF layout (`t.row_bytes(k)` bytes) from a repacked row.
pub fn unrepack_row(t: QuantType, k: usize, src: &[u8], dst: &mut [u8]) {
    unpack(t, k, src, dst)
}

fn pack(t: QuantType, k: usize, src: &[u8], dst: &mut [u8]) {
    let bb = t.block_bytes();
    match t {
        QuantType::Q4K | QuantType::Q5K => {
            let five = t == QuantType::Q5K;
            let ob = row_bytes(t, QK_K);
            for (s, d) in src.chunks_exact(bb).zip(dst.chunks_exact_mut(ob)) {
                d[..4].copy_from_slice(&s[..4]);
                let (sc, mn) = super::scale_min_k4(&s[4..16]);
                d[4..12].copy_from_slice(&sc);
                d[12..20].copy_from_slice(&mn);
                let (qh, qs) = if five {
                    (&s[16..48], &s[48..176])
                } else {
                    (&s[..0], &s[16..144])
                };
                let level = |g: usize, e: usize| (qs[g * 32 + e % 32] >> (4 * (e / 32))) & 0x0F;
                let q0 = if five {
                    for g in 0..4 {
                        let mut mask = 0u64;
                        for e in 0..64 {
                            let sb = 2 * g + e / 32;
                            mask |= (((qh[e % 32] >> sb) & 1) as u64) << e;
                        }
                        d[20 + 8 * g..28 + 8 * g].copy_from_slice(&mask.to_le_bytes());
                    }
                    52
                } else {
                    20
                };
                pack_chunks(4, &mut d[q0..], level);
            }
        }
        _ => {
            let blocks = k / 32;
            let mut b0 = 0;
            while b0 < blocks {
                let g = (blocks - b0).min(8);
                let s = &src[b0 * bb..(b0 + g) * bb];
                let d = &mut dst[b0 * bb..(b0 + g) * bb];
                let (mo, ho, qo) = legacy_offsets(t, g);
                for j in 0..g {
                    let blk = &s[j * bb..(j + 1) * bb];
                    d[2 * j..2 * j + 2].copy_from_slice(&blk[..2]);
                    match t {
                        QuantType::Q4_1 => {
                            d[mo + 2 * j..mo + 2 * j + 2].copy_from_slice(&blk[2..4])
                        }
                        QuantType::Q5_0 => {
                            d[ho + 4 * j..ho + 4 * j + 4].copy_from_slice(&blk[2..6])
                        }
                        QuantType::Q5_1 => {
                            d[mo + 2 * j..mo + 2 * j + 2].copy_from_slice(&blk[2..4]);
                            d[ho + 4 * j..ho + 4 * j + 4].copy_from_slice(&blk[4..8]);
                        }
                        _ => {}
                    }
                }
                if t == QuantType::Q8_0 {
                    for j in 0..g {
                        d[qo + 32 * j..qo + 32 * j + 32]
                            .copy_from_slice(&s[j * bb + 2..j * bb + 34]);
                    }
                } else {
                    let qoff = bb - 16;
                    let level = |c: usize, e: usize| {
                        let j = 2 * c + e / 32;
                        nibble(&s[j * bb + qoff..(j + 1) * bb], e % 32)
                    };
                    pack_chunks(g / 2, &mut d[qo..], level);
                }
                b0 += g;
            }
        }
    }
}

fn unpack(t: QuantType, k: usize, src: &[u8], dst: &mut [u8]) {
    let bb = t.block_bytes();
    match t {
        QuantType::Q4K | QuantType::Q5K => {
            let five = t == QuantType::Q5K;
            let ib = row_bytes(t, QK_K);
            for (s, d) in src.chunks_exact(ib).zip(dst.chunks_exact_mut(bb)) {
                d[..4].copy_from_slice(&s[..4]);
                // The 6-bit scales and mins back into their 12 packed bytes.
                let (sc, mn) = (s[4..12].try_into().unwrap(), s[12..20].try_into().unwrap());
                d[4..16].copy_from_slice(&super::pack_scale_min_k4(sc, mn));
                let (q0, qs_at) = if five { (52, 48) } else { (20, 16) };
                if five {
                    let qh = &mut d[16..48];
                    qh.fill(0);
                    for g in 0..4 {
                        let mask =
                            u64::from_le_bytes(s[20 + 8 * g..28 + 8 * g].try_into().unwrap());
                        for e in 0..64 {
                            let sb = 2 * g + e / 32;
                            qh[e % 32] |= (((mask >> e) & 1) as u8) << sb;
                        }
                    }
                }
                let qs = &mut d[qs_at..qs_at + 128];
                qs.fill(0);
                unpack_chunks(4, &s[q0..], |g, e, v| {
                    qs[g * 32 + e % 32] |= v << (4 * (e / 32))
                });
            }
        }
        _ => {
            let blocks = k / 32;
            let mut b0 = 0;
            while b0 < blocks {
                let g = (blocks - b0).min(8);
                let s = &src[b0 * bb..(b0 + g) * bb];
                let d = &mut dst[b0 * bb..(b0 + g) * bb];
                d.fill(0);
                let (mo, ho, qo) = legacy_offsets(t, g);
                for j in 0..g {
                    let blk = &mut d[j * bb..(j + 1) * bb];
                    blk[..2].copy_from_slice(&s[2 * j..2 * j + 2]);
                    match t {
                        QuantType::Q4_1 => {
                            blk[2..4].copy_from_slice(&s[mo + 2 * j..mo + 2 * j + 2])
                        }
                        QuantType::Q5_0 => {
                            blk[2..6].copy_from_slice(&s[ho + 4 * j..ho + 4 * j + 4])
                        }
                        QuantType::Q5_1 => {
                            blk[2..4].copy_from_slice(&s[mo + 2 * j..mo + 2 * j + 2]);
                            blk[4..8].copy_from_slice(&s[ho + 4 * j..ho + 4 * j + 4]);
                        }
                        _ => {}
                    }
                }
                if t == QuantType::Q8_0 {
                    for j in 0..g {
                        d[j * bb + 2..j * bb + 34]
                            .copy_from_slice(&s[qo + 32 * j..qo + 32 * j + 32]);
                    }
                } else {
                    let qoff = bb - 16;
                    unpack_chunks(g / 2, &s[qo..], |c, e, v| {
                        let (j, w) = (2 * c + e / 32, e % 32);
                        let at = j * bb + qoff + w % 16;
                        d[at] |= if w < 16 { v } else { v << 4 };
                    });
                }
                b0 += g;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repack_round_trips_every_format() {
        let mut seed = 7u64;
        for t in QuantType::ALL {
            for k in [64usize, 128, 192, 256, 320, 512, 896, 4864] {
                if !repacks(t, k) || !k.is_multiple_of(t.block_elems()) {
                    continue;
                }
                let n = t.row_bytes(k);
                let src: Vec<u8> = (0..n)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (seed >> 33) as u8
                    })
                    .collect();
                let mut packed = vec![0u8; row_bytes(t, k)];
                repack_row(t, k, &src, &mut packed);
                let mut back = vec![0u8; n];
                unrepack_row(t, k, &packed, &mut back);
                // The 6-bit scale fields keep their bits; any other byte must come back as is.
                let (mut a, mut b) = (vec![0f32; k], vec![0f32; k]);
                t.dequantize(&src, &mut a);
                t.dequantize(&back, &mut b);
                let same = a
                    .iter()
                    .zip(&b)
                    .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
                assert!(
                    same,
                    "{} k={k}: dequantized values differ after a round trip",
                    t.name()
                );
            }
        }
    }
}
