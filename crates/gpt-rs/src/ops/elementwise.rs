//! Elementwise arithmetic with NumPy broadcasting: `+ - * /` on tensors (and scalars, as
//! rank-0 tensors). f32 with anything gives f32; i32 with i32 gives i32 for `+ - *`
//! (wrapping on overflow, like NumPy's int32) and f32 for `/` (true division).
//! These are memory-bound loops shared by every backend.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::memory;
use crate::tensor::{numel, Data, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
        }
    }
    #[inline(always)]
    fn f32(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
        }
    }
    #[inline(always)]
    fn i32(self, a: i32, b: i32) -> i32 {
        match self {
            BinaryOp::Add => a.wrapping_add(b),
            BinaryOp::Sub => a.wrapping_sub(b),
            BinaryOp::Mul => a.wrapping_mul(b),
            BinaryOp::Div => unreachable!("i32 division is computed in f32"),
        }
    }
}

/// The broadcast shape of `a` and `b` (NumPy rules).
fn broadcast_shape(a: &[usize], b: &[usize], op: BinaryOp) -> Result<Vec<usize>> {
    let nd = a.len().max(b.len());
    let mut out = vec![0; nd];
    for i in 0..nd {
        let da = if i + a.len() >= nd {
            a[i + a.len() - nd]
        } else {
            1
        };
        let db = if i + b.len() >= nd {
            b[i + b.len() - nd]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::Shape(format!(
                    "operands could not be broadcast together for '{}': shapes {a:?} and {b:?}",
                    op.symbol()
                )))
            }
        };
    }
    numel(&out)?;
    Ok(out)
}

/// Strides of `shape` aligned to `out` (0 where `shape` broadcasts).
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let nd = out.len();
    let mut strides = vec![0; nd];
    let mut s = 1;
    for i in (0..shape.len()).rev() {
        let oi = i + nd - shape.len();
        strides[oi] = if shape[i] == 1 { 0 } else { s };
        s *= shape[i];
    }
    strides
}

/// Applies `f` elementwise over broadcast inputs into a new vector of `out` elements
/// (allocated fallibly: `Error::Memory` names the op).
fn apply<A: Copy, B: Copy, O>(
    a: &[A],
    sa: &[usize],
    b: &[B],
    sb: &[usize],
    out: &[usize],
    op: BinaryOp,
    f: impl Fn(A, B) -> O,
) -> Result<Vec<O>> {
    let n = numel(out)?;
    let oom = |_| {
        memory::out_of_memory(
            &format!(
                "'{}' of shapes {sa:?} and {sb:?}: the output of shape {out:?}",
                op.symbol()
            ),
            memory::bytes_of::<O>(n as u128),
        )
    };
    if sa == sb {
        return memory::collect(a.iter().zip(b).map(|(&x, &y)| f(x, y)), "").map_err(oom);
    }
    if b.len() == 1 && sa == out {
        return memory::collect(a.iter().map(|&x| f(x, b[0])), "").map_err(oom);
    }
    if a.len() == 1 && sb == out {
        return memory::collect(b.iter().map(|&y| f(a[0], y)), "").map_err(oom);
    }
    let mut res = memory::with_capacity(n, "").map_err(oom)?;
    if n == 0 {
        return Ok(res);
    }
    let (ta, tb) = (broadcast_strides(sa, out), broadcast_strides(sb, out));
    let nd = out.len();
    let inner = out[nd - 1];
    let (ia, ib) = (ta[nd - 1], tb[nd - 1]);
    let mut idx = vec![0usize; nd];
    loop {
        let oa: usize = idx.iter().zip(&ta).map(|(i, s)| i * s).sum();
        let ob: usize = idx.iter().zip(&tb).map(|(i, s)| i * s).sum();
        for j in 0..inner {
            res.push(f(a[oa + j * ia], b[ob + j * ib]));
        }
        let mut ax = nd - 1;
        loop {
            if ax == 0 {
                return Ok(res);
            }
            ax -= 1;
            idx[ax] += 1;
            if idx[ax] < out[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
}

fn as_f32(t: &Tensor) -> Result<std::borrow::Cow<'_, [f32]>> {
    Ok(match t.data() {
        Data::F32(s) => std::borrow::Cow::Borrowed(s.as_slice()),
        Data::I32(s) => std::borrow::Cow::Owned(memory::collect(
            s.as_slice().iter().map(|&v| v as f32),
            "the i32 operand converted to f32",
        )?),
        // `binary` widens 16-bit operands before it gets here (`in_f32`).
        Data::F16(_) | Data::BF16(_) => {
            return Err(crate::Error::Internal(
                "binary: a 16-bit operand was not widened".into(),
            ))
        }
    })
}

/// `a <op> b` with broadcasting.
pub fn binary(be: &dyn Backend, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    super::in_f32([a, b], |[a, b]| {
        let out = broadcast_shape(a.shape(), b.shape(), op)?;
        match (a.data(), b.data()) {
            (Data::I32(x), Data::I32(y)) if op != BinaryOp::Div => {
                let v = apply(
                    x.as_slice(),
                    a.shape(),
                    y.as_slice(),
                    b.shape(),
                    &out,
                    op,
                    |p, q| op.i32(p, q),
                )?;
                Tensor::from_i32(v, out, be.kind())
            }
            _ => {
                let (x, y) = (as_f32(a)?, as_f32(b)?);
                let v = apply(&x, a.shape(), &y, b.shape(), &out, op, |p, q| op.f32(p, q))?;
                Tensor::from_f32(v, out, be.kind())
            }
        }
    })
}
