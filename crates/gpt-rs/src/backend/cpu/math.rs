//! Elementwise and row kernels of the `cpu` backend, written as branch-free scalar code that
//! the compiler vectorizes in each `multiversion!` instance (AVX-512, AVX2, baseline).
//!
//! The polynomials multiply-add through `M: MulAdd`: fused in the AVX2/AVX-512 instances (one
//! instruction and one rounding per step, and a faster GELU than `a * b + c`), plain in the
//! baseline one, whose CPUs may lack FMA (where `f32::mul_add` is a slow library call).
//!
//! `exp` is a range reduction plus a degree-5 polynomial (relative error below 4.1e-7, about
//! 3 ulp, over its range);
//! `erfc` has fractional error below 7e-7 wherever it does not underflow, so GELU stays
//! accurate relative to its result even for large negative inputs.

use super::simd::multiversion;

const LANES: usize = 16;

/// `a * b + c` as a kernel instance computes it (see the module doc).
pub trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
    /// `x - n ln 2` for an integer `|n| <= 127` (exp's range reduction), to within 2.4e-7 of
    /// the result's scale.
    fn sub_n_ln2(x: f32, n: f32) -> f32;
}

/// Fused multiply-add (the AVX2 and AVX-512 instances).
pub struct Fused;
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
    /// One fused step with ln 2 rounded to f32: the only error is n times ln 2's rounding,
    /// at most 127 * 1.9e-9 = 2.4e-7.
    #[inline(always)]
    fn sub_n_ln2(x: f32, n: f32) -> f32 {
        (-n).mul_add(std::f32::consts::LN_2, x)
    }
}

/// A multiply, then an add (the baseline instance).
pub struct Unfused;
impl MulAdd for Unfused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
    /// Cody and Waite's two-part ln 2: `n * LN2_HI` is exact (LN2_HI ends in zero bits),
    /// which an unfused `n * LN_2` would not be.
    #[inline(always)]
    fn sub_n_ln2(x: f32, n: f32) -> f32 {
        const LN2_HI: f32 = 0.693_145_75;
        const LN2_LO: f32 = 1.428_606_8e-6;
        (x - n * LN2_HI) - n * LN2_LO
    }
}

/// A value the elementwise math works on: one `f32`, or a block of them (`[f32; BLOCK]`).
///
/// The math is written as a sequence of short steps, each applied to every lane (`map`,
/// `zip`). For a block, every step runs over all its lanes before the next: the compiler
/// emits each step for several independent vectors side by side, so the long dependency
/// chains of the polynomials overlap instead of leaving the CPU waiting on latency.
///
/// Every closure handed to these methods (and to `map_blocks`) is `#[inline(always)]`, and
/// functions are wrapped in such closures rather than passed by name: code the compiler keeps
/// out of line is compiled without the instance's target features (`mul_add` became a
/// library call per element, GELU 40x slower).
pub trait Lanes: Copy {
    fn splat(v: f32) -> Self;
    fn map(self, f: impl Fn(f32) -> f32) -> Self;
    fn zip(self, b: Self, f: impl Fn(f32, f32) -> f32) -> Self;
    fn zip3(a: Self, b: Self, c: Self, f: impl Fn(f32, f32, f32) -> f32) -> Self;
}

impl Lanes for f32 {
    #[inline(always)]
    fn splat(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn map(self, f: impl Fn(f32) -> f32) -> Self {
        f(self)
    }
    #[inline(always)]
    fn zip(self, b: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        f(self, b)
    }
    #[inline(always)]
    fn zip3(a: Self, b: Self, c: Self, f: impl Fn(f32, f32, f32) -> f32) -> Self {
        f(a, b, c)
    }
}

impl<const N: usize> Lanes for [f32; N] {
    #[inline(always)]
    fn splat(v: f32) -> Self {
        [v; N]
    }
    #[inline(always)]
    fn map(mut self, f: impl Fn(f32) -> f32) -> Self {
        for v in self.iter_mut() {
            *v = f(*v);
        }
        self
    }
    #[inline(always)]
    fn zip(mut self, b: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        for (v, &w) in self.iter_mut().zip(&b) {
            *v = f(*v, w);
        }
        self
    }
    #[inline(always)]
    fn zip3(mut a: Self, b: Self, c: Self, f: impl Fn(f32, f32, f32) -> f32) -> Self {
        for i in 0..N {
            a[i] = f(a[i], b[i], c[i]);
        }
        a
    }
}

/// `a * b + c`, lane by lane.
#[inline(always)]
fn fma<M: MulAdd, L: Lanes>(a: L, b: L, c: L) -> L {
    L::zip3(
        a,
        b,
        c,
        #[inline(always)]
        |a, b, c| M::mul_add(a, b, c),
    )
}

/// `x * x`, lane by lane.
#[inline(always)]
fn square<L: Lanes>(x: L) -> L {
    x.map(
        #[inline(always)]
        |x| x * x,
    )
}

/// Horner's rule: `c[0] x^(n-1) + ... + c[n-1]`.
#[inline(always)]
fn horner<M: MulAdd, L: Lanes>(x: L, c: &[f32]) -> L {
    let mut p = L::splat(c[0]);
    for &ci in &c[1..] {
        p = p.zip(
            x,
            #[inline(always)]
            |p, x| M::mul_add(p, x, ci),
        );
    }
    p
}

/// `c[0] x^7 + c[1] x^6 + ... + c[7]` by Estrin's scheme: pairs of coefficients combined with
/// x, then with x^2, then x^4 (dependency depth 4 instead of Horner's 7, so the CPU waits less
/// on each result).
#[inline(always)]
fn poly8<M: MulAdd, L: Lanes>(x: L, c: [f32; 8]) -> L {
    let pair = |hi: f32, lo: f32| fma::<M, L>(L::splat(hi), x, L::splat(lo));
    let (p0, p1) = (pair(c[6], c[7]), pair(c[4], c[5]));
    let (p2, p3) = (pair(c[2], c[3]), pair(c[0], c[1]));
    let x2 = square(x);
    let x4 = square(x2);
    fma::<M, L>(fma::<M, L>(p3, x2, p2), x4, fma::<M, L>(p1, x2, p0))
}

/// e^x for x in [-87, 88]: range reduction by n = round(x / ln 2), a degree-5 polynomial by
/// Horner's rule, and the power of two built in the exponent bits.
#[inline(always)]
fn exp_in_range<M: MulAdd, L: Lanes>(x: L) -> L {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let t = x.map(
        #[inline(always)]
        |x| M::mul_add(x, LOG2E, MAGIC),
    );
    let r = x.zip(
        t,
        #[inline(always)]
        |x, t| {
            let n = t - MAGIC;
            M::sub_n_ln2(x, n)
        },
    );
    // Degree-5 fit of e^r on |r| <= ln(2)/2 (fit error 7.5e-8; a degree-7 Taylor series was
    // as accurate in f32 and two multiply-adds slower).
    let p = horner::<M, L>(
        r,
        &[
            0.008_297_643,
            0.041_915_383,
            0.166_675_75,
            0.499_988_94,
            0.999_999_7,
            1.000_000_1,
        ],
    );
    p.zip(
        t,
        #[inline(always)]
        |p, t| {
            let bits = (t.to_bits() as i32)
                .wrapping_sub(0x4B40_0000)
                .wrapping_add(127)
                << 23;
            p * f32::from_bits(bits as u32)
        },
    )
}

/// e^x for f32, branch-free; NaN propagates, large inputs saturate to 0 / +inf.
#[inline(always)]
pub fn exp<M: MulAdd, L: Lanes>(x: L) -> L {
    let y = exp_in_range::<M, L>(x.map(
        #[inline(always)]
        |x| {
            let xc = if x > 88.0 { 88.0 } else { x };
            if xc < -87.0 {
                -87.0
            } else {
                xc
            }
        },
    ));
    y.zip(
        x,
        #[inline(always)]
        |y, x| {
            let y = if x > 88.0 { f32::INFINITY } else { y };
            if x < -87.0 {
                0.0
            } else {
                y
            }
        },
    )
}

/// e^x for x <= 0 or NaN (softmax after subtracting the maximum, erfc): as `exp`, without the
/// checks for large positive inputs.
#[inline(always)]
pub fn exp_nonpositive<M: MulAdd, L: Lanes>(x: L) -> L {
    let y = exp_in_range::<M, L>(x.map(
        #[inline(always)]
        |x| if x < -87.0 { -87.0 } else { x },
    ));
    y.zip(
        x,
        #[inline(always)]
        |y, x| if x < -87.0 { 0.0 } else { y },
    )
}

/// erfc(z) / 2 for 0 <= z <= 9.2 (the exponent argument then stays above -87), as
/// `u exp(P(2u) - z^2)` with `u = 1 / (2 + z)` (Numerical Recipes' `erfcc` form,
/// `t = 2u = 1 / (1 + z / 2)`, with the halving folded in) and P fitted for z < 9.5. P's coefficients are stored for `u`
/// (scaled by powers of two, exactly). Fractional error below 7e-7 (P's own fit error is
/// 6.3e-7), so GELU stays accurate relative to its result far into the negative inputs.
#[inline(always)]
fn half_erfc_pos<M: MulAdd, L: Lanes>(z: L) -> L {
    let u = z.map(
        #[inline(always)]
        |z| 1.0 / (2.0 + z),
    );
    let p = poly8::<M, L>(
        u,
        [
            -23.364117,
            46.656883,
            -30.752645,
            4.9920306,
            -0.15330607,
            1.5505561,
            1.9992051,
            -1.2655424,
        ],
    );
    let arg = L::zip3(
        z,
        z,
        p,
        #[inline(always)]
        |z, z2, p| M::mul_add(-z, z2, p),
    );
    u.zip(
        exp_in_range::<M, L>(arg),
        #[inline(always)]
        |u, e| u * e,
    )
}

/// Exact GELU, `x (1 - erfc(x / sqrt 2) / 2)` for x >= 0 and `x erfc(-x / sqrt 2) / 2` below
/// (no cancellation either way).
#[inline(always)]
pub fn gelu<M: MulAdd, L: Lanes>(x: L) -> L {
    // z is capped at 9.2 (|x| = 13.01), where erfc(z) / 2 < 1e-38: the exponent argument stays
    // above -87, in `exp`'s range, and 1 - h is exactly 1. Below x = -13 the result is -0
    // (GELU is under 1e-37 there; -inf gives -0, not -inf * 0 = NaN). NaN stays NaN.
    let z = x.map(
        #[inline(always)]
        |x| {
            let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
            if z > 9.2 {
                9.2
            } else {
                z
            }
        },
    );
    let h = half_erfc_pos::<M, L>(z);
    x.zip(
        h,
        #[inline(always)]
        |x, h| {
            if x < -13.0 {
                -0.0
            } else {
                x * if x >= 0.0 { 1.0 - h } else { h }
            }
        },
    )
}

/// tanh GELU written as `x * sigmoid(2u)`, which equals `0.5 x (1 + tanh u)` without the
/// cancellation for negative x.
#[inline(always)]
pub fn gelu_tanh<M: MulAdd, L: Lanes>(x: L) -> L {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    let e = exp::<M, L>(x.map(
        #[inline(always)]
        |x| -2.0 * (C * M::mul_add(0.044_715 * x, x * x, x)),
    ));
    x.zip(
        e,
        #[inline(always)]
        |x, e| {
            if x == f32::NEG_INFINITY {
                -0.0
            } else {
                x / (1.0 + e)
            }
        },
    )
}

/// Elements per block of `map_blocks`: several vectors at every SIMD level.
const BLOCK: usize = 4 * LANES;

/// `out[i] = f(x[i])`, a block of `BLOCK` lanes at a time (see `Lanes`), then one by one.
#[inline(always)]
fn map_blocks(
    x: &[f32],
    out: &mut [f32],
    block: impl Fn([f32; BLOCK]) -> [f32; BLOCK],
    one: impl Fn(f32) -> f32,
) {
    let mut xs = x.chunks_exact(BLOCK);
    let mut os = out.chunks_exact_mut(BLOCK);
    for (o, v) in (&mut os).zip(&mut xs) {
        let v: &[f32; BLOCK] = v.try_into().unwrap();
        o.copy_from_slice(&block(*v));
    }
    for (o, &v) in os.into_remainder().iter_mut().zip(xs.remainder()) {
        *o = one(v);
    }
}

/// `buf[i] = f(buf[i])`, as `map_blocks`.
#[inline(always)]
fn map_blocks_mut(
    buf: &mut [f32],
    block: impl Fn([f32; BLOCK]) -> [f32; BLOCK],
    one: impl Fn(f32) -> f32,
) {
    let mut bs = buf.chunks_exact_mut(BLOCK);
    for b in &mut bs {
        let v: &mut [f32; BLOCK] = b.try_into().unwrap();
        *v = block(*v);
    }
    for v in bs.into_remainder() {
        *v = one(*v);
    }
}

#[inline(always)]
fn gelu_slice<M: MulAdd>(x: &[f32], out: &mut [f32]) {
    map_blocks(
        x,
        out,
        #[inline(always)]
        |v| gelu::<M, _>(v),
        #[inline(always)]
        |v| gelu::<M, _>(v),
    )
}

#[inline(always)]
fn gelu_tanh_slice<M: MulAdd>(x: &[f32], out: &mut [f32]) {
    map_blocks(
        x,
        out,
        #[inline(always)]
        |v| gelu_tanh::<M, _>(v),
        #[inline(always)]
        |v| gelu_tanh::<M, _>(v),
    )
}

#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    let m = acc
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    chunks
        .remainder()
        .iter()
        .fold(m, |m, &v| if v > m { v } else { m })
}

/// Softmax of each row of length `cols`.
#[inline(always)]
fn softmax_rows_body<M: MulAdd>(x: &[f32], out: &mut [f32], cols: usize) {
    for (row, o) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        softmax_row::<M>(row, o);
    }
}

/// `e^(v - m)` for every lane (softmax's terms after subtracting the maximum `m`).
#[inline(always)]
fn exp_shifted<M: MulAdd, L: Lanes>(v: L, m: f32) -> L {
    exp_nonpositive::<M, L>(v.map(
        #[inline(always)]
        |v| v - m,
    ))
}

/// Softmax of one row (used by attention too). A NaN anywhere makes the row NaN, as NumPy,
/// without a pass of its own: `max` skips NaNs, but `exp(NaN - m)` is NaN, so the sum and
/// then every output are.
#[inline(always)]
pub fn softmax_row<M: MulAdd>(row: &[f32], o: &mut [f32]) {
    let m = max(row);
    map_blocks(
        row,
        o,
        #[inline(always)]
        |v| exp_shifted::<M, _>(v, m),
        #[inline(always)]
        |v| exp_shifted::<M, _>(v, m),
    );
    let inv = 1.0 / sum(o);
    for oi in o.iter_mut() {
        *oi *= inv;
    }
}

#[inline(always)]
fn layer_norm_body(x: &[f32], w: &[f32], b: &[f32], out: &mut [f32], cols: usize, eps: f32) {
    let n = cols as f32;
    for (row, o) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        let mean = sum(row) / n;
        let mut acc = [0.0f32; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                let d = c[l] - mean;
                acc[l] += d * d;
            }
        }
        let var = (acc.iter().sum::<f32>()
            + chunks
                .remainder()
                .iter()
                .map(|v| (v - mean) * (v - mean))
                .sum::<f32>())
            / n;
        let inv = 1.0 / (var + eps).sqrt();
        for j in 0..cols {
            o[j] = (row[j] - mean) * inv * w[j] + b[j];
        }
    }
}

#[inline(always)]
fn add_bias_body(x: &[f32], bias: &[f32], out: &mut [f32]) {
    for (row, o) in x
        .chunks_exact(bias.len())
        .zip(out.chunks_exact_mut(bias.len()))
    {
        for j in 0..bias.len() {
            o[j] = row[j] + bias[j];
        }
    }
}

/// `sum_i a[i] * b[i]`.
#[inline(always)]
pub(crate) fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>()
        + ca.remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(x, y)| x * y)
            .sum::<f32>()
}

/// `y += alpha * x`.
#[inline(always)]
pub(crate) fn axpy_body(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// Attention for one (group, query row): `out = softmax(q K^T * scale)[..visible] V`.
#[inline(always)]
fn attend_row_body<M: MulAdd>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    scores: &mut [f32],
    d: usize,
    scale: f32,
) {
    for (j, s) in scores.iter_mut().enumerate() {
        *s = dot_body(q, &k[j * d..(j + 1) * d]) * scale;
    }
    let m = max(scores);
    map_blocks_mut(
        scores,
        #[inline(always)]
        |v| exp_shifted::<M, _>(v, m),
        #[inline(always)]
        |v| exp_shifted::<M, _>(v, m),
    );
    let inv = 1.0 / sum(scores);
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        axpy_body(p * inv, &v[j * d..(j + 1) * d], out);
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with a per-thread scratch buffer of `n` floats (grown once, then reused, so hot
/// loops such as attention do not allocate per call). The buffer is taken out while in use:
/// when `f` runs parallel work, rayon may start another such body on this thread while it
/// waits, and that nested call gets a buffer of its own instead of a borrow error.
pub fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    let r = f(&mut buf[..n]);
    SCRATCH.with(|s| *s.borrow_mut() = buf);
    r
}

/// Row `i` of `scores` (`tq x tk`) times `scale`, softmax over its first `i + offset + 1`
/// entries (the causal mask; all `tk` when not causal), written to `probs` with zeros after.
#[inline(always)]
fn masked_softmax_rows_body<M: MulAdd>(
    scores: &mut [f32],
    probs: &mut [f32],
    tk: usize,
    offset: usize,
    causal: bool,
    scale: f32,
) {
    for (i, (s, p)) in scores
        .chunks_exact_mut(tk)
        .zip(probs.chunks_exact_mut(tk))
        .enumerate()
    {
        let visible = if causal { (i + offset + 1).min(tk) } else { tk };
        for v in s[..visible].iter_mut() {
            *v *= scale;
        }
        softmax_row::<M>(&s[..visible], &mut p[..visible]);
        p[visible..].fill(0.0);
    }
}

multiversion! { pub fn masked_softmax_rows(scores: &mut [f32], probs: &mut [f32], tk: usize, offset: usize, causal: bool, scale: f32) = masked_softmax_rows_body::<MulAdd>; }

multiversion! { pub fn gelu_kernel(x: &[f32], out: &mut [f32]) = gelu_slice::<MulAdd>; }
multiversion! { pub fn gelu_tanh_kernel(x: &[f32], out: &mut [f32]) = gelu_tanh_slice::<MulAdd>; }
multiversion! { pub fn softmax_rows_kernel(x: &[f32], out: &mut [f32], cols: usize) = softmax_rows_body::<MulAdd>; }
multiversion! { pub fn layer_norm_kernel(x: &[f32], w: &[f32], b: &[f32], out: &mut [f32], cols: usize, eps: f32) = layer_norm_body; }
multiversion! { pub fn add_bias_kernel(x: &[f32], bias: &[f32], out: &mut [f32]) = add_bias_body; }
multiversion! { pub fn attend_row(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], scores: &mut [f32], d: usize, scale: f32) = attend_row_body::<MulAdd>; }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_its_range() {
        for e in [exp::<Fused, f32>, exp::<Unfused, f32>] {
            let mut worst = 0.0f64;
            let mut x = -87.0f32;
            while x < 88.0 {
                let want = (x as f64).exp();
                worst = worst.max(((e(x) as f64 - want) / want).abs());
                x += 0.0137;
            }
            assert!(worst < 5e-7, "worst relative error {worst}");
        }
        assert!(exp::<Fused, f32>(f32::NAN).is_nan());
        assert_eq!(exp::<Fused, f32>(-1000.0), 0.0);
        assert_eq!(exp::<Fused, f32>(1000.0), f32::INFINITY);
        let mut x = -87.0f32;
        while x <= 0.0 {
            assert_eq!(
                exp_nonpositive::<Fused, f32>(x),
                exp::<Fused, f32>(x),
                "x={x}"
            );
            x += 0.0137;
        }
        assert!(exp_nonpositive::<Fused, f32>(f32::NAN).is_nan());
        assert_eq!(exp_nonpositive::<Fused, f32>(f32::NEG_INFINITY), 0.0);
    }

    /// A block of lanes computes exactly what each lane computes alone (the remainder of a
    /// slice goes one by one), specials included.
    #[test]
    fn blocks_equal_single_lanes_bitwise() {
        let mut x = [0.0f32; BLOCK];
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            100.0,
            -100.0,
        ];
        for round in 0..200 {
            for (i, v) in x.iter_mut().enumerate() {
                let u = ((i * 7919 + round * 104_729) % 20_011) as f32 / 20_011.0;
                *v = (u - 0.6) * 30.0;
            }
            x[round % BLOCK] = specials[round % specials.len()];
            type F = fn(f32) -> f32;
            let singles: [(F, [f32; BLOCK]); 4] = [
                (gelu::<Fused, f32>, gelu::<Fused, _>(x)),
                (gelu_tanh::<Fused, f32>, gelu_tanh::<Fused, _>(x)),
                (exp::<Fused, f32>, exp::<Fused, _>(x)),
                (
                    |v| exp_nonpositive::<Fused, f32>(-v.abs()),
                    exp_nonpositive::<Fused, _>(x.map(|v| -v.abs())),
                ),
            ];
            for (k, (one, block)) in singles.iter().enumerate() {
                for (i, (&v, &b)) in x.iter().zip(block).enumerate() {
                    assert_eq!(one(v).to_bits(), b.to_bits(), "fn {k} lane {i} x={v}");
                }
            }
        }
    }

    #[test]
    fn gelu_matches_erfc_form_relatively() {
        // Below x = -10 the results are under 1e-23 and the f32 exponent argument's rounding
        // (about z^2 * 6e-8) starts to exceed 1e-5 relative.
        let mut x = -10.0f32;
        while x < 12.0 {
            let want = super::super::super::portable::gelu_scalar(x) as f64;
            let got = gelu::<Fused, f32>(x) as f64;
            assert!(
                (got - want).abs() <= 1e-5 * want.abs() + 1e-37,
                "x={x} got={got} want={want}"
            );
            x += 0.01;
        }
    }
}
