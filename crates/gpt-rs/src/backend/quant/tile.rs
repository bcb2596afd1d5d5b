//! Tiles of 16 rows interleaved, for `vpdpbusd` with one output row per lane: the `cpu`
//! backend's AVX-512 kernels (`backend/cpu/qtile512.rs`) read this layout.
//!
//! In the row layouts a 32-bit lane of a product holds four weights of one row, and every 64
//! weights need their own convert and scale: that float work, not the integer products,
//! bounded the kernels. Here lane `r` of a 64-byte vector is row `r` of the tile (four
//! consecutive weights), so eight `vpdpbusd` cover a 32-weight block of 16 rows against one
//! broadcast activation word each, and the block's scales are applied once for all 16 rows.
//!
//! A tile of 16 rows takes `16 * repack::row_bytes(t, k)` bytes: the rows' blocks in order,
//! and within each block of all 16 rows (`r` the row, `e` the weight in the block, levels
//! unsigned: Q8_0's bytes with the sign bit flipped):
//!
//! * a head: `d` of the 16 rows (f16, 32 bytes); for Q4_1/Q5_1 then `m` (32 bytes); for
//!   Q4_K/Q5_K then `dmin` (32), the eight 6-bit scales (byte `64 + 16s + r`) and the eight
//!   mins (`192 + 16s + r`); for Q6_K the sixteen signed scales (`32 + 16j + r`);
//! * then per 32 weights `s` (one for legacy formats, eight for K super-blocks), *group* `g`
//!   being weights `32s + 4g .. + 4`: the fifth bits (5-bit formats; a u64 per group, bit
//!   `4r + i` for weight `4g + i`), Q6_K's two high bits (two 64-byte vectors for groups 0-3
//!   and 4-7, byte `4r + i` with group `g`'s bits at `2 (g % 4)`), and the low levels: 4-bit
//!   formats as four 64-byte vectors, vector `v` byte `4r + i` holding group `2v` in its low
//!   nibble and `2v + 1` in its high one; Q8_0 as eight vectors, one per group.

use super::{pack_scale_min_k4, scale_min_k4, QuantType, QK_K};

/// Rows per tile.
pub const TILE: usize = 16;

/// Whether rows of `t` with `k` weights can be tiled.
pub fn tiles(t: QuantType, k: usize) -> bool {
    use QuantType::*;
    match t {
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => k.is_multiple_of(32),
        Q4K | Q5K | Q6K => k.is_multiple_of(QK_K),
        _ => false,
    }
}

/// Bytes per row of a tile (a tile is `TILE` times this).
pub fn row_bytes(t: QuantType, k: usize) -> usize {
    super::repack::row_bytes(t, k)
}

/// Where a block's fields are, for all 16 rows.
#[derive(Clone, Copy)]
pub struct Layout {
    /// Bytes of the head.
    pub head: usize,
    /// 32-weight runs per block.
    pub subs: usize,
    /// Bytes per 32-weight run.
    pub sub: usize,
    pub fifth: bool,
    pub six: bool,
    pub eight: bool,
}

impl Layout {
    pub fn of(t: QuantType) -> Self {
        use QuantType::*;
        let head = match t {
            Q4_1 | Q5_1 => 64,
            Q4K | Q5K => 320,
            Q6K => 288,
            _ => 32,
        };
        let (fifth, six, eight) = (matches!(t, Q5_0 | Q5_1 | Q5K), t == Q6K, t == Q8_0);
        let sub =
            if fifth { 64 } else { 0 } + if six { 128 } else { 0 } + if eight { 512 } else { 256 };
        let subs = t.block_elems() / 32;
        Self {
            head,
            subs,
            sub,
            fifth,
            six,
            eight,
        }
    }

    /// Bytes of one block of 16 rows.
    pub fn block(&self) -> usize {
        self.head + self.subs * self.sub
    }
}

/// One row's block in plain fields.
struct Raw {
    d: [u8; 2],
    m: [u8; 2],
    sc: [u8; 16],
    mn: [u8; 8],
    /// Unsigned levels.
    q: [u8; 256],
}

impl Raw {
    fn new() -> Self {
        Self {
            d: [0; 2],
            m: [0; 2],
            sc: [0; 16],
            mn: [0; 8],
            q: [0; 256],
        }
    }

    /// From a block in the GGUF layout.
    fn read(&mut self, t: QuantType, b: &[u8]) {
        use QuantType::*;
        let nibbles = |q: &mut [u8], qs: &[u8]| {
            for j in 0..16 {
                q[j] = qs[j] & 0x0F;
                q[j + 16] = qs[j] >> 4;
            }
        };
        let fifth = |q: &mut [u8], qh: &[u8]| {
            let h = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
            for (j, q) in q.iter_mut().enumerate().take(32) {
                *q |= (((h >> j) & 1) as u8) << 4;
            }
        };
        self.d.copy_from_slice(&b[..2]);
        match t {
            Q4_0 => nibbles(&mut self.q, &b[2..18]),
            Q4_1 => {
                self.m.copy_from_slice(&b[2..4]);
                nibbles(&mut self.q, &b[4..20]);
            }
            Q5_0 => {
                nibbles(&mut self.q, &b[6..22]);
                fifth(&mut self.q, &b[2..6]);
            }
            Q5_1 => {
                self.m.copy_from_slice(&b[2..4]);
                nibbles(&mut self.q, &b[8..24]);
                fifth(&mut self.q, &b[4..8]);
            }
            Q8_0 => {
                for (q, &v) in self.q.iter_mut().zip(&b[2..34]) {
                    *q = v ^ 0x80;
                }
            }
            Q4K | Q5K => {
                self.m.copy_from_slice(&b[2..4]);
                let (sc, mn) = scale_min_k4(&b[4..16]);
                self.sc[..8].copy_from_slice(&sc);
                self.mn = mn;
                let qs = if t == Q5K { &b[48..176] } else { &b[16..144] };
                for e in 0..QK_K {
                    let mut v = (qs[32 * (e / 64) + e % 32] >> (4 * ((e / 32) % 2))) & 0x0F;
                    if t == Q5K {
                        v |= ((b[16 + e % 32] >> (e / 32)) & 1) << 4;
                    }
                    self.q[e] = v;
                }
            }
            Q6K => {
                self.d.copy_from_slice(&b[208..210]);
                self.sc.copy_from_slice(&b[192..208]);
                for e in 0..QK_K {
                    let (n, w) = (e / 128, e % 128);
                    let (l, j) = (w % 32, w / 32);
                    let lo = (b[64 * n + l + 32 * (j % 2)] >> (4 * (j / 2))) & 0x0F;
                    let hi = (b[128 + 32 * n + l] >> (2 * j)) & 3;
                    self.q[e] = lo | hi << 4;
                }
            }
            other => unreachable!("tile: {} is not tiled", other.name()),
        }
    }

    /// Into a block in the GGUF layout (all of `b` written).
    fn write(&self, t: QuantType, b: &mut [u8]) {
        use QuantType::*;
        let nibbles = |qs: &mut [u8], q: &[u8]| {
            for j in 0..16 {
                qs[j] = (q[j] & 0x0F) | (q[j + 16] & 0x0F) << 4;
            }
        };
        let fifth = |qh: &mut [u8], q: &[u8]| {
            let h = (0..32).fold(0u32, |h, j| h | (((q[j] >> 4) & 1) as u32) << j);
            qh.copy_from_slice(&h.to_le_bytes());
        };
        b.fill(0);
        if t != Q6K {
            b[..2].copy_from_slice(&self.d);
        }
        match t {
            Q4_0 => nibbles(&mut b[2..18], &self.q),
            Q4_1 => {
                b[2..4].copy_from_slice(&self.m);
                nibbles(&mut b[4..20], &self.q);
            }
            Q5_0 => {
                fifth(&mut b[2..6], &self.q);
                nibbles(&mut b[6..22], &self.q);
            }
            Q5_1 => {
                b[2..4].copy_from_slice(&self.m);
                fifth(&mut b[4..8], &self.q);
                nibbles(&mut b[8..24], &self.q);
            }
            Q8_0 => {
                for (o, &q) in b[2..34].iter_mut().zip(&self.q) {
                    *o = q ^ 0x80;
                }
            }
            Q4K | Q5K => {
                b[2..4].copy_from_slice(&self.m);
                let sc: [u8; 8] = self.sc[..8].try_into().unwrap();
                b[4..16].copy_from_slice(&pack_scale_min_k4(&sc, &self.mn));
                let q0 = if t == Q5K { 48 } else { 16 };
                for e in 0..QK_K {
                    let v = self.q[e];
                    b[q0 + 32 * (e / 64) + e % 32] |= (v & 0x0F) << (4 * ((e / 32) % 2));
                    if t == Q5K {
                        b[16 + e % 32] |= ((v >> 4) & 1) << (e / 32);
                    }
                }
            }
            Q6K => {
                b[208..210].copy_from_slice(&self.d);
                b[192..208].copy_from_slice(&self.sc);
                for e in 0..QK_K {
                    let (n, w) = (e / 128, e % 128);
                    let (l, j) = (w % 32, w / 32);
                    let v = self.q[e];
                    b[64 * n + l + 32 * (j % 2)] |= (v & 0x0F) << (4 * (j / 2));
                    b[128 + 32 * n + l] |= ((v >> 4) & 3) << (2 * j);
                }
            }
            other => unreachable!("tile: {} is not tiled", other.name()),
        }
    }
}

/// Moves row `r`'s fields between `raw` and the 16-row block `blk` (`put`: into `blk`,
/// which must start zeroed; else out of it into `raw`, which must start zeroed).
fn transfer(t: QuantType, l: &Layout, blk: &mut [u8], r: usize, raw: &mut Raw, put: bool) {
    // One place names every field's position, for both directions.
    let byte = |blk: &mut [u8], at: usize, v: &mut u8| {
        if put {
            blk[at] = *v;
        } else {
            *v = blk[at];
        }
    };
    for i in 0..2 {
        byte(blk, 2 * r + i, &mut raw.d[i]);
    }
    match t {
        QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4K | QuantType::Q5K => {
            for i in 0..2 {
                byte(blk, 32 + 2 * r + i, &mut raw.m[i]);
            }
        }
        _ => {}
    }
    match t {
        QuantType::Q4K | QuantType::Q5K => {
            for s in 0..8 {
                byte(blk, 64 + 16 * s + r, &mut raw.sc[s]);
                byte(blk, 192 + 16 * s + r, &mut raw.mn[s]);
            }
        }
        QuantType::Q6K => {
            for j in 0..16 {
                byte(blk, 32 + 16 * j + r, &mut raw.sc[j]);
            }
        }
        _ => {}
    }
    // The levels: whole nibbles and bytes at a time (a bit at a time made loading the real
    // 0.5B model take a second longer).
    for s in 0..l.subs {
        let q = &mut raw.q[32 * s..32 * s + 32];
        let mut at = l.head + s * l.sub;
        if l.fifth {
            for g in 0..8 {
                for i in 0..4 {
                    let (b, e) = (4 * r + i, 4 * g + i);
                    let (p, sh) = (at + 8 * g + b / 8, b % 8);
                    if put {
                        blk[p] |= ((q[e] >> 4) & 1) << sh;
                    } else {
                        q[e] |= ((blk[p] >> sh) & 1) << 4;
                    }
                }
            }
            at += 64;
        }
        if l.six {
            for g in 0..8 {
                for i in 0..4 {
                    let (p, sh, e) = (at + 64 * (g / 4) + 4 * r + i, 2 * (g % 4), 4 * g + i);
                    if put {
                        blk[p] |= ((q[e] >> 4) & 3) << sh;
                    } else {
                        q[e] |= ((blk[p] >> sh) & 3) << 4;
                    }
                }
            }
            at += 128;
        }
        for g in 0..8 {
            for i in 0..4 {
                let e = 4 * g + i;
                if l.eight {
                    let p = at + 64 * g + 4 * r + i;
                    if put {
                        blk[p] = q[e];
                    } else {
                        q[e] = blk[p];
                    }
                } else {
                    let (p, sh) = (at + 64 * (g / 2) + 4 * r + i, 4 * (g % 2));
                    if put {
                        blk[p] |= (q[e] & 0x0F) << sh;
                    } else {
                        q[e] |= (blk[p] >> sh) & 0x0F;
                    }
                }
            }
        }
    }
}

/// Tiles `TILE` rows (`src`: `TILE` GGUF rows of `k` weights, one after the other) into
/// `dst` (`TILE * row_bytes(t, k)` bytes).
pub fn tile(t: QuantType, k: usize, src: &[u8], dst: &mut [u8]) {
    let (l, rb, bb) = (Layout::of(t), t.row_bytes(k), t.block_bytes());
    dst.fill(0);
    let mut raw = Raw::new();
    for (b, blk) in dst.chunks_exact_mut(l.block()).enumerate() {
        for r in 0..TILE {
            raw.read(t, &src[r * rb + b * bb..r * rb + (b + 1) * bb]);
            transfer(t, &l, blk, r, &mut raw, true);
        }
    }
}

/// Row `r` of the tile `src` back in the GGUF layout (`t.row_bytes(k)` bytes) into `dst`.
pub fn untile_row(t: QuantType, k: usize, src: &[u8], r: usize, dst: &mut [u8]) {
    let (l, bb) = (Layout::of(t), t.block_bytes());
    let mut raw = Raw::new();
    let mut blk = vec![0u8; l.block()];
    for (b, out) in dst[..t.row_bytes(k)].chunks_exact_mut(bb).enumerate() {
        blk.copy_from_slice(&src[b * l.block()..(b + 1) * l.block()]);
        raw.q.fill(0);
        transfer(t, &l, &mut blk, r, &mut raw, false);
        raw.write(t, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_round_trip_every_format() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for t in QuantType::ALL.into_iter().filter(|&t| tiles(t, 512)) {
            let k = 512;
            let src: Vec<u8> = (0..TILE * t.row_bytes(k))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let mut tiled = vec![0u8; TILE * row_bytes(t, k)];
            tile(t, k, &src, &mut tiled);
            assert_eq!(
                Layout::of(t).block() * k / t.block_elems(),
                tiled.len(),
                "{t:?}"
            );
            let mut back = vec![0u8; t.row_bytes(k)];
            for r in 0..TILE {
                untile_row(t, k, &tiled, r, &mut back);
                let want = &src[r * t.row_bytes(k)..(r + 1) * t.row_bytes(k)];
                assert_eq!(&back[..], want, "{t:?} row {r}");
            }
        }
    }
}
