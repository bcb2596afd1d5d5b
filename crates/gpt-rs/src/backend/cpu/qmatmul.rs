//! Products with block-quantized weights (`Panels` in a `quant` format), llama.cpp's way:
//! each activation row is quantized to int8 in blocks of 32 (one f32 scale per block, and the
//! integer sums of every 16 for the formats with an offset or a min), and each weight block is
//! multiplied in integers against it, scaled once per (sub-)block.
//!
//! The result is exactly `dequantize(W) . dequantize(q8(x))` up to f32 summation order, which
//! is how the tests check it. Weights are read in place, one output column (a row of blocks)
//! at a time, columns split across threads; every activation row reuses each weight row while
//! it is in cache.

use super::gemv::column_chunks;
use crate::backend::quant::{QuantType, Unpacked};
use crate::backend::{Panels, QuantLayout, SendPtr};

/// Activation values per quantization block.
pub const QA: usize = 32;

/// `m` rows of `k` activations quantized to int8 (blocks of `QA`).
pub struct Q8Rows {
    pub k: usize,
    pub qs: Vec<i8>,
    /// Scale of each block: `x ~ d * q`.
    pub d: Vec<f32>,
    /// Sum of each 16 consecutive `q`s.
    pub sum16: Vec<i32>,
}

impl Q8Rows {
    /// Quantizes `a` (`m` rows of `k`, `k` a multiple of `QA`): `d = max|x| / 127`,
    /// `q = round(x / d)`.
    pub fn new(a: &[f32], m: usize, k: usize) -> Self {
        let mut r = Self {
            k,
            qs: vec![0; m * k],
            d: vec![0.0; m * k / QA],
            sum16: vec![0; m * k / 16],
        };
        for (b, x) in a[..m * k].chunks_exact(QA).enumerate() {
            let amax = x.iter().fold(0.0f32, |acc, v| acc.max(v.abs()));
            let d = amax / 127.0;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            let q = &mut r.qs[b * QA..(b + 1) * QA];
            for (q, &v) in q.iter_mut().zip(x) {
                *q = round_half_away(v * id) as i8;
            }
            r.d[b] = d;
            for h in 0..2 {
                r.sum16[2 * b + h] = q[16 * h..16 * h + 16].iter().map(|&v| v as i32).sum();
            }
        }
        r
    }

    fn row(&self, i: usize) -> Q8Row<'_> {
        let k = self.k;
        Q8Row {
            qs: &self.qs[i * k..(i + 1) * k],
            d: &self.d[i * k / QA..(i + 1) * k / QA],
            sum16: &self.sum16[i * k / 16..(i + 1) * k / 16],
        }
    }
}

/// `t.round()` for `|t| <= 127` (or NaN, which gives 0), without the libm call `round`
/// is on baseline x86-64: truncate, then step away from zero when the dropped part is at
/// least a half (`t - trunc(t)` is exact). Vectorizes.
#[inline(always)]
fn round_half_away(t: f32) -> i32 {
    let i = t as i32;
    let f = t - i as f32;
    i + (f >= 0.5) as i32 - (f <= -0.5) as i32
}

/// One quantized activation row.
#[derive(Clone, Copy)]
pub struct Q8Row<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub sum16: &'a [i32],
}

/// `dot(dequantize(row), dequantize(a))` for one weight row of type `ty`, through
/// `Block::unpack`: the reference every faster kernel is tested against.
pub fn dot_reference(ty: QuantType, row: &[u8], a: Q8Row<'_>) -> f32 {
    let (e, bb, sub) = (ty.block_elems(), ty.block_bytes(), ty.sub_elems());
    let mut u = Unpacked::default();
    let mut acc = 0.0f32;
    for (b, block) in row.chunks_exact(bb).enumerate() {
        ty.unpack(block, &mut u);
        for s in 0..e / sub {
            let p0 = b * e + s * sub;
            let q = &u.q[s * sub..(s + 1) * sub];
            let isum: i32 = q
                .iter()
                .zip(&a.qs[p0..p0 + sub])
                .map(|(&w, &x)| w as i32 * x as i32)
                .sum();
            let asum: i32 = a.sum16[p0 / 16..(p0 + sub) / 16].iter().sum();
            acc += a.d[p0 / QA] * (u.scale[s] * isum as f32 - u.min[s] * asum as f32);
        }
    }
    acc
}

/// `c[m, n] = a[m, k] @ W (+ bias)` for a quantized `W`.
pub fn matmul(a: &[f32], w: &Panels, bias: Option<&[f32]>, c: &mut [f32], m: usize) {
    let (k, n) = (w.k(), w.n());
    crate::backend::init_output(c, bias, n);
    let Some((ty, rows, rb, layout)) = w.quant_rows() else {
        unreachable!("qmatmul::matmul: not a quantized weight")
    };
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let q = Q8Rows::new(a, m, k);
    let cp = SendPtr(c.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    {
        use super::simd::{level, SimdLevel};
        use super::{qdot256, qdot512, qtile512};
        if layout == QuantLayout::Tiles && level() == SimdLevel::Avx512 {
            use crate::backend::quant::tile::TILE;
            column_chunks(n, m * k * n / 4, 256, TILE, |j0, cw| {
                let (t0, t1) = (j0 / TILE, (j0 + cw).div_ceil(TILE));
                let tiles = &rows[t0 * TILE * rb..t1 * TILE * rb];
                let mut emit = |ti: usize, i: usize, v: &[f32; TILE]| {
                    let j = (t0 + ti) * TILE;
                    for (l, &v) in v[..(n - j).min(TILE)].iter().enumerate() {
                        // SAFETY: this chunk alone writes columns j0..j0+cw of C's m rows.
                        unsafe { *cp.get().add(i * n + j + l) += v };
                    }
                };
                // SAFETY: tiles exist only where the kernels run (`QuantLayout::best`); the
                // tiles hold rows of k weights and q holds m rows of k.
                unsafe { qtile512::tiles(ty, tiles, &q, 0..m, &mut emit) };
            });
            return;
        }
        type DotRows = unsafe fn(
            QuantType,
            &[u8],
            &Q8Rows,
            &qdot512::ActScales,
            std::ops::Range<usize>,
            &mut [f32; qdot512::MR],
        );
        let fast = (layout == QuantLayout::Rows
            || (layout == QuantLayout::Gguf && ty == QuantType::Q6K))
            && k.is_multiple_of(64)
            && qdot512::supports(ty);
        let kernel: Option<DotRows> = if !fast {
            None
        } else if level() == SimdLevel::Avx512 && qdot512::available() {
            Some(qdot512::dot_rows)
        } else if level() >= SimdLevel::Avx2 && qdot256::available() {
            Some(qdot256::dot_rows)
        } else {
            None
        };
        if let Some(dot_rows) = kernel {
            const MR: usize = qdot512::MR;
            let s = qdot512::ActScales::new(&q, m);
            column_chunks(n, m * k * n / 4, 256, 8, |j0, cw| {
                let mut out = [0.0f32; MR];
                for j in j0..j0 + cw {
                    let row = &rows[j * rb..(j + 1) * rb];
                    for i0 in (0..m).step_by(MR) {
                        let i1 = (i0 + MR).min(m);
                        // SAFETY: the kernel's features were checked; row and activations
                        // cover k.
                        unsafe { dot_rows(ty, row, &q, &s, i0..i1, &mut out) };
                        for (r, &v) in out[..i1 - i0].iter().enumerate() {
                            // SAFETY: this chunk alone writes columns j0..j0+cw of C's m rows.
                            unsafe { *cp.get().add((i0 + r) * n + j) += v };
                        }
                    }
                }
            });
            return;
        }
    }
    column_chunks(n, m * k * n / 4, 256, 8, |j0, cw| {
        let mut buf = vec![0u8; ty.row_bytes(k)];
        for j in j0..j0 + cw {
            let row = w.gguf_row(j, &mut buf);
            for i in 0..m {
                let v = dot_reference(ty, row, q.row(i));
                // SAFETY: this chunk alone writes columns j0..j0+cw of C's m rows.
                unsafe { *cp.get().add(i * n + j) += v };
            }
        }
    });
}
