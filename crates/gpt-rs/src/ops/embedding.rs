//! Embedding lookup: rows of a table gathered by i32 indices.

use super::new_f32;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Gathers rows of `table` (`[V, C]`, f32) at `indices` (i32, `[T]` or `[T, 1]`); returns
/// `[T, C]`. An index outside `0..V` is an error naming the index and its position.
pub fn embedding_lookup(be: &dyn Backend, table: &Tensor, indices: &Tensor) -> Result<Tensor> {
    super::in_f32([table], |[table]| {
        let ts = table.f32s("embedding_lookup: table")?;
        let is = indices.i32s("embedding_lookup: indices")?;
        if table.ndim() != 2 {
            return Err(Error::Shape(format!(
                "embedding_lookup: table must be rank 2 [V, C], got shape {:?}",
                table.shape()
            )));
        }
        let ok_shape = matches!(indices.shape(), [_] | [_, 1]);
        if !ok_shape {
            return Err(Error::Shape(format!(
                "embedding_lookup: indices must have shape [T] or [T, 1], got {:?}",
                indices.shape()
            )));
        }
        let (v, c) = (table.shape()[0], table.shape()[1]);
        if let Some((pos, &bad)) = is
            .iter()
            .enumerate()
            .find(|(_, &i)| i < 0 || i as usize >= v)
        {
            return Err(Error::Value(format!(
            "embedding_lookup: index {bad} at position {pos} is out of range for a table of {v} rows"
        )));
        }
        new_f32(be, "embedding_lookup", vec![is.len(), c], |out| {
            for (row, &i) in out.chunks_exact_mut(c.max(1)).zip(is) {
                let i = i as usize;
                row.copy_from_slice(&ts[i * c..(i + 1) * c]);
            }
        })
    })
}
