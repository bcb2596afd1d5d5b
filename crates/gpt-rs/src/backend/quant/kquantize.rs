//! Quantizers for the K formats Q4_K, Q5_K and Q6_K: a search for each sub-block's scale (and
//! min) that minimizes the squared error of the dequantized weights, then the sub-block
//! factors rounded to the super-block's 6- or 8-bit grid and refined on it.
//!
//! Unlike the round-to-nearest formats there is no bit-exact reference to follow: llama.cpp's
//! quantizer minimizes an error weighted towards large weights; this one minimizes the plain
//! squared error, the quantity `tests/test_quant.py` compares against llama.cpp's on the
//! same weights.

use super::kquants::{pack_scale_min_k4, QK_K};
use super::{put_f16, Quantize, Q4K, Q5K, Q6K};

/// Grids tried for the super-block factors `(d, dmin)`, as fractions of the plain ones.
const GRIDS: [(f32, f32); 4] = [(0.9, 1.0), (1.0, 0.9), (0.8, 1.0), (1.0, 0.8)];

/// Scale candidates tried per sub-block, either side of the plain range / levels.
const STEPS: i32 = 10;

/// `q = round(v)` clamped to `lo..=hi` (NaN maps to `lo`). Shifted to be non-negative so a
/// truncating conversion rounds: `f32::round` is a libm call on baseline x86-64, and this is
/// the quantizers' inner loop.
#[inline(always)]
fn level(v: f32, lo: i32, hi: i32) -> i32 {
    (((v - lo as f32 + 0.5).max(0.0) as i32).min(hi - lo)) + lo
}

/// Least-squares `(scale, min)` of `x ≈ scale * q - min` for the levels `q`, with `min >= 0`
/// (the stored mins are unsigned), and its squared error.
fn refit(x: &[f32], q: &[i32]) -> (f32, f32, f32) {
    let n = x.len() as f32;
    let (mut sq, mut sqq, mut sx, mut sqx, mut sxx) = (0.0f32, 0.0, 0.0, 0.0, 0.0);
    for (&v, &l) in x.iter().zip(q) {
        let l = l as f32;
        sq += l;
        sqq += l * l;
        sx += v;
        sqx += l * v;
        sxx += v * v;
    }
    let det = n * sqq - sq * sq;
    let (mut s, mut b) = if det > 0.0 {
        let s = (n * sqx - sq * sx) / det;
        (s, (sx - s * sq) / n)
    } else {
        (0.0, sx / n)
    };
    if b > 0.0 || s < 0.0 {
        // Offset must subtract: fit the scale alone through zero.
        b = b.min(0.0);
        s = if sqq > 0.0 {
            ((sqx - b * sq) / sqq).max(0.0)
        } else {
            0.0
        };
    }
    let err = sxx - 2.0 * s * sqx - 2.0 * b * sx + s * s * sqq + 2.0 * s * b * sq + n * b * b;
    (s, -b, err)
}

/// The best `(scale, min)` for one asymmetric sub-block with levels `0..=top`.
fn fit_asymmetric(x: &[f32], top: i32) -> (f32, f32) {
    // f32::min/max skip NaN: lo and hi are never NaN.
    let lo = x.iter().copied().fold(0.0f32, f32::min);
    let hi = x.iter().copied().fold(lo, f32::max);
    if hi <= lo {
        return (0.0, -lo);
    }
    let mut q = [0i32; 32];
    let q = &mut q[..x.len()];
    let mut best = (0.0, -lo, f32::INFINITY);
    for step in -STEPS..=STEPS {
        let levels = top as f32 + 0.1 * step as f32;
        let inv = levels / (hi - lo);
        for (l, &v) in q.iter_mut().zip(x) {
            *l = level((v - lo) * inv, 0, top);
        }
        let fit = refit(x, q);
        if fit.2 < best.2 {
            best = fit;
        }
    }
    // Alternate: levels for the best fit, the fit for those levels, while the error falls.
    for _ in 0..4 {
        let (s, m, _) = best;
        if s <= 0.0 {
            break;
        }
        let inv = 1.0 / s;
        for (l, &v) in q.iter_mut().zip(x) {
            *l = level((v + m) * inv, 0, top);
        }
        let fit = refit(x, q);
        if fit.2 >= best.2 {
            break;
        }
        best = fit;
    }
    (best.0, best.1)
}

/// Squared error of `x` quantized with the exact dequantization factors `ds`, `dm`
/// (`x ≈ ds * q - dm`), its levels written to `q`.
fn asymmetric_error(x: &[f32], ds: f32, dm: f32, top: i32, q: &mut [u8]) -> f32 {
    let mut err = 0.0;
    let inv = if ds > 0.0 { 1.0 / ds } else { 0.0 };
    for (l, &v) in q.iter_mut().zip(x) {
        let lv = level((v + dm) * inv, 0, top);
        *l = lv as u8;
        let e = ds * lv as f32 - dm - v;
        err += e * e;
    }
    err
}

/// Q4_K/Q5_K sub-block factors on the grid of `d` and `dmin`: for each sub-block the grid
/// point nearest its fitted `(scale, min)` and the neighbours (rounding each factor alone is
/// not the best pair once the levels are re-chosen). Returns the 6-bit factors, the levels and
/// the total squared error.
fn on_grid(
    x: &[f32],
    fits: &[(f32, f32); 8],
    d: f32,
    dmin: f32,
    top: i32,
) -> ([u8; 8], [u8; 8], [u8; QK_K], f32) {
    let grid = |v: f32, unit: f32| {
        if unit != 0.0 {
            level(v / unit, 0, 63)
        } else {
            0
        }
    };
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    let mut levels = [0u8; QK_K];
    let mut trial = [0u8; 32];
    let mut total = 0.0;
    for j in 0..8 {
        let xs = &x[32 * j..][..32];
        let (s0, m0) = (grid(fits[j].0, d), grid(fits[j].1, dmin));
        let mut best = f32::INFINITY;
        for s in (s0 - 1).max(0)..=(s0 + 1).min(63) {
            for m in (m0 - 1).max(0)..=(m0 + 1).min(63) {
                let err = asymmetric_error(xs, d * s as f32, dmin * m as f32, top, &mut trial);
                if err < best {
                    best = err;
                    (sc[j], mn[j]) = (s as u8, m as u8);
                    levels[32 * j..][..32].copy_from_slice(&trial);
                }
            }
        }
        total += best;
    }
    (sc, mn, levels, total)
}

/// Q4_K and Q5_K: eight sub-blocks of 32, 6-bit scales and mins under f16 `d` and `dmin`.
/// Returns the levels (`0..=top`) and writes `d`, `dmin` and the 12 scale bytes into `b`.
///
/// The first grid is the plain one (the largest scale and min on 63); then `d` and `dmin` are
/// refitted by least squares to the chosen factors and levels (one outlying sub-block no
/// longer sets everyone's grid) and the factors re-chosen, kept while the error falls.
fn quantize_k45(x: &[f32], top: i32, b: &mut [u8]) -> [u8; QK_K] {
    let fits: [(f32, f32); 8] = std::array::from_fn(|j| fit_asymmetric(&x[32 * j..][..32], top));
    let max_s = fits.iter().map(|f| f.0).fold(0.0f32, f32::max);
    let max_m = fits.iter().map(|f| f.1).fold(0.0f32, f32::max);
    let f16 = |v: f32| half::f16::from_f32(v).to_f32();
    let (d0, dmin0) = (f16(max_s / 63.0), f16(max_m / 63.0));
    let mut best = on_grid(x, &fits, d0, dmin0, top);
    let mut best_d = (d0, dmin0);
    // Finer grids, the largest factor clipped: better when one sub-block stands out.
    for (fs, fm) in GRIDS {
        let (ds, dm) = (f16(d0 * fs), f16(dmin0 * fm));
        let next = on_grid(x, &fits, ds, dm, top);
        if next.3 < best.3 {
            best = next;
            best_d = (ds, dm);
        }
    }
    for _ in 0..2 {
        // x ≈ d * a - dmin * c with a = sc * q, c = mn: the 2x2 normal equations.
        let (sc, mn, q, _) = &best;
        let (mut aa, mut ac, mut cc, mut ax, mut cx) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
        for (e, &v) in x.iter().enumerate() {
            let a = (sc[e / 32] as u32 * q[e] as u32) as f64;
            let c = mn[e / 32] as f64;
            let v = v as f64;
            aa += a * a;
            ac += a * c;
            cc += c * c;
            ax += a * v;
            cx += c * v;
        }
        let det = aa * cc - ac * ac;
        let (d, dmin);
        if cc == 0.0 && aa > 0.0 {
            (d, dmin) = (f16((ax / aa) as f32), 0.0);
        } else if det > 0.0 {
            d = f16(((ax * cc - cx * ac) / det) as f32);
            dmin = f16(((ax * ac - cx * aa) / det) as f32);
        } else {
            break;
        }
        if !(d.is_finite() && dmin.is_finite()) {
            break;
        }
        let next = on_grid(x, &fits, d, dmin, top);
        if next.3 >= best.3 {
            break;
        }
        best = next;
        best_d = (d, dmin);
    }
    put_f16(b, 0, best_d.0);
    put_f16(b, 2, best_d.1);
    b[4..16].copy_from_slice(&pack_scale_min_k4(&best.0, &best.1));
    best.2
}

impl Quantize for Q4K {
    fn quantize(x: &[f32], b: &mut [u8]) {
        let q = quantize_k45(x, 15, b);
        let qs = &mut b[16..144];
        for g in 0..4 {
            for i in 0..32 {
                qs[32 * g + i] = q[64 * g + i] | q[64 * g + 32 + i] << 4;
            }
        }
    }
}

impl Quantize for Q5K {
    fn quantize(x: &[f32], b: &mut [u8]) {
        let q = quantize_k45(x, 31, b);
        let (qh, qs) = b[16..176].split_at_mut(32);
        for i in 0..32 {
            qh[i] = (0..8).fold(0, |h, s| h | (q[32 * s + i] >> 4) << s);
        }
        for g in 0..4 {
            for i in 0..32 {
                qs[32 * g + i] = (q[64 * g + i] & 0x0F) | (q[64 * g + 32 + i] & 0x0F) << 4;
            }
        }
    }
}

/// The best scale for one symmetric sub-block with levels `-32..=31` (`x ≈ scale * q`).
fn fit_symmetric(x: &[f32]) -> f32 {
    let amax = x
        .iter()
        .copied()
        .fold(0.0f32, |a, v| if v.abs() > a.abs() { v } else { a });
    if amax == 0.0 || !amax.is_finite() {
        return 0.0;
    }
    let (mut best_s, mut best_err) = (0.0f32, f32::INFINITY);
    let sxx: f32 = x.iter().map(|v| v * v).sum();
    // The largest weight on the negative end (-32, one more level) or the positive (31).
    for end in [-32.0f32, 31.0] {
        for step in -STEPS..=STEPS {
            let inv = (end + 0.1 * step as f32 * end.signum()) / amax;
            let (mut sqq, mut sqx) = (0.0f32, 0.0f32);
            for &v in x {
                let l = level(v * inv, -32, 31) as f32;
                sqq += l * l;
                sqx += l * v;
            }
            if sqq > 0.0 {
                let s = sqx / sqq;
                let err = sxx - s * sqx;
                if err < best_err {
                    (best_s, best_err) = (s, err);
                }
            }
        }
    }
    best_s
}

/// Q6_K sub-block scales on the grid of `d`: the nearest 8-bit point to each fitted scale or
/// a neighbour, whichever quantizes its weights best. Returns the scales, the levels (offset
/// by 32, `0..=63`) and the total squared error.
fn on_grid6(x: &[f32], fits: &[f32; 16], d: f32) -> ([i8; 16], [u8; QK_K], f32) {
    let mut scales = [0i8; 16];
    let mut levels = [0u8; QK_K];
    let mut total = 0.0;
    let quantized = |v: f32, inv: f32| level(v * inv, -32, 31);
    let inverse = |ds: f32| if ds != 0.0 { 1.0 / ds } else { 0.0 };
    for (j, &s) in fits.iter().enumerate() {
        let xs = &x[16 * j..][..16];
        let s0 = if d != 0.0 { level(s / d, -127, 127) } else { 0 };
        let (mut best, mut pick) = (f32::INFINITY, 0);
        for sc in (s0 - 1).max(-128)..=(s0 + 1).min(127) {
            let ds = d * sc as f32;
            let inv = inverse(ds);
            let err: f32 = xs
                .iter()
                .map(|&v| {
                    let e = ds * quantized(v, inv) as f32 - v;
                    e * e
                })
                .sum();
            if err < best {
                (best, pick) = (err, sc);
            }
        }
        scales[j] = pick as i8;
        let inv = inverse(d * pick as f32);
        for (l, &v) in levels[16 * j..][..16].iter_mut().zip(xs) {
            *l = (quantized(v, inv) + 32) as u8;
        }
        total += best;
    }
    (scales, levels, total)
}

impl Quantize for Q6K {
    /// As Q4_K: the plain grid first, then `d` refitted by least squares while it helps.
    fn quantize(x: &[f32], b: &mut [u8]) {
        let fits: [f32; 16] = std::array::from_fn(|j| fit_symmetric(&x[16 * j..][..16]));
        let max_s = fits.iter().map(|s| s.abs()).fold(0.0f32, f32::max);
        let f16 = |v: f32| half::f16::from_f32(v).to_f32();
        let mut d = f16(max_s / 127.0);
        let mut best = on_grid6(x, &fits, d);
        let mut best_d = d;
        for _ in 0..2 {
            let (sc, q, _) = &best;
            let (mut aa, mut ax) = (0.0f64, 0.0f64);
            for (e, &v) in x.iter().enumerate() {
                let a = (sc[e / 16] as i32 * (q[e] as i32 - 32)) as f64;
                aa += a * a;
                ax += a * v as f64;
            }
            if aa == 0.0 {
                break;
            }
            d = f16((ax / aa) as f32);
            if !d.is_finite() {
                break;
            }
            let next = on_grid6(x, &fits, d);
            if next.2 >= best.2 {
                break;
            }
            best = next;
            best_d = d;
        }
        put_f16(b, 208, best_d);
        for (o, &sc) in b[192..208].iter_mut().zip(&best.0) {
            *o = sc as u8;
        }
        let (ql, qh) = b[..192].split_at_mut(128);
        ql.fill(0);
        qh.fill(0);
        for (e, &u) in best.1.iter().enumerate() {
            let (h, r) = (e / 128, e % 128);
            ql[h * 64 + r % 64] |= (u & 0x0F) << (4 * (r / 64));
            qh[h * 32 + r % 32] |= (u >> 4) << (2 * (r / 32));
        }
    }
}
