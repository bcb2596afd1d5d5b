//! Matrix products: `matmul` (rank 2, batched rank 3, `[B, M, K] @ [K, N]`), `linear`
//! (`x @ W + b` fused) and `add_bias`.

use super::{last_dim, new_f32, new_f32_overwritten};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Matrix product. Supported: `[M, K] @ [K, N]`, `[B, M, K] @ [B, K, N]`, `[B, M, K] @ [K, N]`.
pub fn matmul(be: &dyn Backend, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    super::in_f32([a, b], |[a, b]| {
        let (asl, bsl) = (a.f32s("matmul: a")?, b.f32s("matmul: b")?);
        let (sa, sb) = (a.shape(), b.shape());
        let bad_rank = || {
            Error::Shape(format!(
            "matmul expects rank-2 or rank-3 tensors, got ranks {} and {} (shapes {sa:?} and {sb:?})",
            sa.len(),
            sb.len()
        ))
        };
        if !matches!((sa.len(), sb.len()), (2, 2) | (3, 3) | (3, 2)) {
            return Err(bad_rank());
        }
        let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let (k2, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
        if k != k2 {
            return Err(Error::Shape(format!(
                "matmul: inner dimensions do not match: a is {sa:?}, b is {sb:?} ({k} != {k2})"
            )));
        }
        match (sa.len(), sb.len()) {
            (2, 2) => new_f32(be, "matmul", vec![m, n], |c| {
                be.matmul(asl, bsl, None, c, m, k, n)
            }),
            // [B, M, K] @ [K, N] is one (B*M) x K product.
            (3, 2) => new_f32(be, "matmul", vec![sa[0], m, n], |c| {
                be.matmul(asl, bsl, None, c, sa[0] * m, k, n)
            }),
            _ => {
                if sa[0] != sb[0] {
                    return Err(Error::Shape(format!(
                    "matmul: batch dimensions do not match: a is {sa:?}, b is {sb:?} ({} != {})",
                    sa[0], sb[0]
                )));
                }
                new_f32(be, "matmul", vec![sa[0], m, n], |c| {
                    for i in 0..sa[0] {
                        be.matmul(
                            &asl[i * m * k..(i + 1) * m * k],
                            &bsl[i * k * n..(i + 1) * k * n],
                            None,
                            &mut c[i * m * n..(i + 1) * m * n],
                            m,
                            k,
                            n,
                        );
                    }
                })
            }
        }
    })
}

/// `x @ weight (+ bias)` over the last dimension: `x` is `[..., in]`, `weight` is `[in, out]`,
/// `bias` is `[out]`; the result is `[..., out]`.
pub fn linear(
    be: &dyn Backend,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    // The result's dtype follows x and weight; a 16-bit bias is widened along with them.
    let bias = bias
        .map(|b| b.to_dtype(crate::tensor::DType::F32))
        .transpose()?;
    let bias = bias.as_ref();
    super::in_f32([x, weight], |[x, weight]| {
        let xs = x.f32s("linear: input")?;
        let ws = weight.f32s("linear: weight")?;
        if weight.ndim() != 2 {
            return Err(Error::Shape(format!(
                "linear: weight must be rank 2 [in, out], got shape {:?}",
                weight.shape()
            )));
        }
        let (k, n) = (weight.shape()[0], weight.shape()[1]);
        if x.ndim() == 0 || last_dim(x) != k {
            return Err(Error::Shape(format!(
            "linear: input's last dimension must be {k} (weight is [in={k}, out={n}]), got input shape {:?}",
            x.shape()
        )));
        }
        let bs = match bias {
            Some(b) => {
                let bs = b.f32s("linear: bias")?;
                if b.shape() != [n] {
                    return Err(Error::Shape(format!(
                        "linear: bias must have shape [{n}], got {:?}",
                        b.shape()
                    )));
                }
                Some(bs)
            }
            None => None,
        };
        let m: usize = x.shape()[..x.ndim() - 1].iter().product();
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("rank >= 1") = n;
        new_f32(be, "linear", shape, |c| be.matmul(xs, ws, bs, c, m, k, n))
    })
}

/// `x + bias` where `bias` is `[C]` and `x` is `[..., C]`.
pub fn add_bias(be: &dyn Backend, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    super::in_f32([x, bias], |[x, bias]| {
        let xs = x.f32s("add_bias: input")?;
        let bs = bias.f32s("add_bias: bias")?;
        if bias.ndim() != 1 || x.ndim() == 0 || last_dim(x) != bias.shape()[0] {
            return Err(Error::Shape(format!(
            "add_bias: bias must be rank 1 with the input's last dimension; got input {:?} and bias {:?}",
            x.shape(),
            bias.shape()
        )));
        }
        new_f32_overwritten(be, "add_bias", x.shape().to_vec(), |out| {
            be.add_bias(xs, bs, out)
        })
    })
}
