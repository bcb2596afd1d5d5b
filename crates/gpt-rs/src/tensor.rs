//! `Tensor`: a contiguous, row-major, reference-counted n-d array of f32 or i32.
//!
//! Tensors are immutable: ops return new tensors. Each records the backend that produced it.
//! Every backend works on host memory, so tensors from different backends mix freely: an op
//! runs on the backend it is called with and its result records that backend.

use std::fmt;

use crate::backend::BackendKind;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Element types a tensor can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    I32,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I32 => "i32",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The typed buffer behind a tensor.
#[derive(Clone)]
pub enum Data {
    F32(Storage<f32>),
    I32(Storage<i32>),
}

#[derive(Clone)]
pub struct Tensor {
    data: Data,
    shape: Vec<usize>,
    backend: BackendKind,
}

/// Number of elements of `shape`, or an error if it overflows `usize`.
pub fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::Value(format!(
                "shape {shape:?} has more elements than fit in memory"
            ))
        })
}

impl Tensor {
    /// Builds a tensor from storage; the storage must hold exactly `numel(shape)` elements.
    pub fn new(data: Data, shape: Vec<usize>, backend: BackendKind) -> Result<Self> {
        let n = numel(&shape)?;
        let len = match &data {
            Data::F32(s) => s.len(),
            Data::I32(s) => s.len(),
        };
        if n != len {
            return Err(Error::Shape(format!(
                "shape {shape:?} needs {n} elements but the buffer holds {len}"
            )));
        }
        Ok(Self {
            data,
            shape,
            backend,
        })
    }

    pub fn from_f32(v: Vec<f32>, shape: Vec<usize>, backend: BackendKind) -> Result<Self> {
        Self::new(Data::F32(Storage::from_vec(v)), shape, backend)
    }

    pub fn from_i32(v: Vec<i32>, shape: Vec<usize>, backend: BackendKind) -> Result<Self> {
        Self::new(Data::I32(Storage::from_vec(v)), shape, backend)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn dtype(&self) -> DType {
        match self.data {
            Data::F32(_) => DType::F32,
            Data::I32(_) => DType::I32,
        }
    }
    pub fn backend(&self) -> BackendKind {
        self.backend
    }
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// The f32 elements, or a TypeError naming `what` (the op and argument) if this is not f32.
    pub fn f32s(&self, what: &str) -> Result<&[f32]> {
        match &self.data {
            Data::F32(s) => Ok(s.as_slice()),
            Data::I32(_) => Err(Error::DType(format!(
                "{what} must be a f32 tensor, got i32"
            ))),
        }
    }

    /// The i32 elements, or a TypeError naming `what` if this is not i32.
    pub fn i32s(&self, what: &str) -> Result<&[i32]> {
        match &self.data {
            Data::I32(s) => Ok(s.as_slice()),
            Data::F32(_) => Err(Error::DType(format!(
                "{what} must be an i32 tensor, got f32"
            ))),
        }
    }

    /// Same data, new shape (no copy). One dimension may be -1 and is inferred.
    pub fn reshape(&self, shape: &[i64]) -> Result<Tensor> {
        let n = self.numel();
        let mut infer = None;
        let mut known = 1usize;
        let mut out = Vec::with_capacity(shape.len());
        for (i, &d) in shape.iter().enumerate() {
            if d == -1 {
                if infer.replace(i).is_some() {
                    return Err(Error::Value("reshape: only one dimension can be -1".into()));
                }
                out.push(0);
            } else if d < 0 {
                return Err(Error::Value(format!(
                    "reshape: invalid dimension {d} in {shape:?}"
                )));
            } else {
                known = known.checked_mul(d as usize).ok_or_else(|| {
                    Error::Value(format!("reshape: shape {shape:?} is too large"))
                })?;
                out.push(d as usize);
            }
        }
        if let Some(i) = infer {
            if known == 0 || !n.is_multiple_of(known) {
                return Err(Error::Shape(format!(
                    "reshape: cannot reshape tensor of shape {:?} ({n} elements) into {shape:?}",
                    self.shape
                )));
            }
            out[i] = n / known;
        } else if known != n {
            return Err(Error::Shape(format!(
                "reshape: cannot reshape tensor of shape {:?} ({n} elements) into {shape:?}",
                self.shape
            )));
        }
        Ok(Tensor {
            data: self.data.clone(),
            shape: out,
            backend: self.backend,
        })
    }

    /// A copy with a different backend label (the memory is host memory either way).
    pub fn with_backend(&self, backend: BackendKind) -> Tensor {
        Tensor {
            data: self.data.clone(),
            shape: self.shape.clone(),
            backend,
        }
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor(shape={:?}, dtype={}, backend={})",
            self.shape,
            self.dtype(),
            self.backend
        )
    }
}
