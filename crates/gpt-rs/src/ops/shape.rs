//! Shape ops that move data: `transpose` (swap two axes) and `narrow` (slice one axis).
//! Both copy into a new contiguous tensor.

use crate::error::{Error, Result};
use crate::memory;
use crate::storage::Storage;
use crate::tensor::{Data, Tensor};

/// A new buffer of the same element type as `$data`, from its elements (`$s`, a slice) by
/// `$copy`: one generic copy routine serves every dtype.
macro_rules! map_data {
    ($data:expr, |$s:ident| $copy:expr) => {
        match $data {
            Data::F32(st) => {
                let $s = st.as_slice();
                Data::F32(Storage::from_vec($copy?))
            }
            Data::F16(st) => {
                let $s = st.as_slice();
                Data::F16(Storage::from_vec($copy?))
            }
            Data::BF16(st) => {
                let $s = st.as_slice();
                Data::BF16(Storage::from_vec($copy?))
            }
            Data::I32(st) => {
                let $s = st.as_slice();
                Data::I32(Storage::from_vec($copy?))
            }
        }
    };
}

fn axis(dim: i64, ndim: usize, op: &str) -> Result<usize> {
    let d = if dim < 0 { dim + ndim as i64 } else { dim };
    if d < 0 || d as usize >= ndim {
        return Err(Error::Value(format!(
            "{op}: dimension {dim} is out of range for a tensor of rank {ndim}"
        )));
    }
    Ok(d as usize)
}

/// Copies `src` (shape `shape`) with axes permuted by `perm` into a new vector.
fn permute_copy<T: Copy>(src: &[T], shape: &[usize], perm: &[usize]) -> Result<Vec<T>> {
    let n = src.len();
    let mut out = memory::with_capacity(n, "transpose: the output")?;
    if n == 0 {
        return Ok(out);
    }
    let nd = shape.len();
    let mut strides = vec![1usize; nd];
    for i in (0..nd.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let src_strides: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
    // Walk the output in order; the innermost output axis is copied in one run.
    let inner = out_shape[nd - 1];
    let inner_stride = src_strides[nd - 1];
    let mut idx = vec![0usize; nd - 1];
    loop {
        let base: usize = idx.iter().zip(&src_strides).map(|(i, s)| i * s).sum();
        if inner_stride == 1 {
            out.extend_from_slice(&src[base..base + inner]);
        } else {
            out.extend((0..inner).map(|j| src[base + j * inner_stride]));
        }
        let mut ax = nd - 1;
        loop {
            if ax == 0 {
                return Ok(out);
            }
            ax -= 1;
            idx[ax] += 1;
            if idx[ax] < out_shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
}

/// Swaps dimensions `dim0` and `dim1` (negative values count from the end).
pub fn transpose(x: &Tensor, dim0: i64, dim1: i64) -> Result<Tensor> {
    let nd = x.ndim();
    if nd < 2 {
        return Ok(x.clone());
    }
    let (a, b) = (axis(dim0, nd, "transpose")?, axis(dim1, nd, "transpose")?);
    let mut perm: Vec<usize> = (0..nd).collect();
    perm.swap(a, b);
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let data = map_data!(x.data(), |s| permute_copy(s, x.shape(), &perm));
    Tensor::new(data, shape, x.backend())
}

/// The slice `start..start + len` of dimension `dim`.
pub fn narrow(x: &Tensor, dim: i64, start: usize, len: usize) -> Result<Tensor> {
    let nd = x.ndim();
    let d = axis(dim, nd, "narrow")?;
    let size = x.shape()[d];
    if start.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::Value(format!(
            "narrow: range {start}..{} is out of bounds for dimension {d} of size {size}",
            start.saturating_add(len)
        )));
    }
    let outer: usize = x.shape()[..d].iter().product();
    let inner: usize = x.shape()[d + 1..].iter().product();
    let mut shape = x.shape().to_vec();
    shape[d] = len;
    fn slice<T: Copy>(
        s: &[T],
        outer: usize,
        size: usize,
        inner: usize,
        start: usize,
        len: usize,
    ) -> Result<Vec<T>> {
        let mut out = memory::with_capacity(outer * len * inner, "narrow: the output")?;
        for o in 0..outer {
            let base = (o * size + start) * inner;
            out.extend_from_slice(&s[base..base + len * inner]);
        }
        Ok(out)
    }
    let data = map_data!(x.data(), |s| slice(s, outer, size, inner, start, len));
    Tensor::new(data, shape, x.backend())
}
