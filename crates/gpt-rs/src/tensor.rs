//! `Tensor`: a contiguous, row-major, reference-counted n-d array of f32, f16, bf16 or i32.
//!
//! The kernels compute in f32; f16 and bf16 tensors exist so that data from NumPy, DLPack and
//! torch arrives and leaves bit-exactly, and ops on them widen to f32 (`ops::in_f32`).
//!
//! Tensors are immutable: ops return new tensors. Each records the backend that produced it.
//! Every backend works on host memory, so tensors from different backends mix freely: an op
//! runs on the backend it is called with and its result records that backend.

use std::fmt;

use half::{bf16, f16};

use crate::backend::BackendKind;
use crate::error::{Error, Result};
use crate::memory;
use crate::storage::Storage;

/// Element types a tensor can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
}

impl DType {
    pub const ALL: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::I32];

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
        }
    }

    /// Parses a dtype name: ours ('f32', 'f16', 'bf16', 'i32') or NumPy's and PyTorch's
    /// spellings of the same types ('float32', 'float16', 'half', 'bfloat16', 'int32').
    pub fn parse(name: &str) -> Result<DType> {
        let n = name.strip_prefix("torch.").unwrap_or(name);
        Ok(match n {
            "f32" | "float32" | "float" => DType::F32,
            "f16" | "float16" | "half" => DType::F16,
            "bf16" | "bfloat16" => DType::BF16,
            "i32" | "int32" => DType::I32,
            _ => {
                return Err(Error::Value(format!(
                    "unknown dtype '{name}'; expected 'f32', 'f16', 'bf16' or 'i32'"
                )))
            }
        })
    }

    /// Whether this is one of the 16-bit float types the kernels widen to f32.
    pub fn is_half(self) -> bool {
        matches!(self, DType::F16 | DType::BF16)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
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
    F16(Storage<f16>),
    BF16(Storage<bf16>),
    I32(Storage<i32>),
}

impl Data {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(s) => s.len(),
            Data::F16(s) => s.len(),
            Data::BF16(s) => s.len(),
            Data::I32(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The owner that keeps the buffer alive, and the address of its first element.
    pub fn raw_parts(&self) -> (&crate::storage::Owner, *const u8) {
        match self {
            Data::F32(s) => (s.owner(), s.as_ptr() as *const u8),
            Data::F16(s) => (s.owner(), s.as_ptr() as *const u8),
            Data::BF16(s) => (s.owner(), s.as_ptr() as *const u8),
            Data::I32(s) => (s.owner(), s.as_ptr() as *const u8),
        }
    }

    /// Whether the buffer may be written through (false for read-only shared memory).
    pub fn writable(&self) -> bool {
        match self {
            Data::F32(s) => s.writable(),
            Data::F16(s) => s.writable(),
            Data::BF16(s) => s.writable(),
            Data::I32(s) => s.writable(),
        }
    }
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
        let len = data.len();
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
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
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
            _ => Err(Error::DType(format!(
                "{what} must be a f32 tensor, got {}",
                self.dtype()
            ))),
        }
    }

    /// The i32 elements, or a TypeError naming `what` if this is not i32.
    pub fn i32s(&self, what: &str) -> Result<&[i32]> {
        match &self.data {
            Data::I32(s) => Ok(s.as_slice()),
            _ => Err(Error::DType(format!(
                "{what} must be an i32 tensor, got {}",
                self.dtype()
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

    /// The elements converted to `dtype` (a new buffer; the same tensor when it already is).
    ///
    /// Float to float rounds to nearest even; i32 to a float type goes through f32 (exact up
    /// to 2^24). A float to i32 truncates toward zero, as NumPy's `astype`, but a NaN, an
    /// infinity or a value outside i32's range is a ValueError rather than an unspecified int.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let what = format!("to('{dtype}'): the converted copy");
        let data = match dtype {
            DType::F32 => Data::F32(Storage::from_vec(self.map_f32(|x| x, &what)?)),
            DType::F16 => Data::F16(Storage::from_vec(self.map_f32(f16::from_f32, &what)?)),
            DType::BF16 => Data::BF16(Storage::from_vec(self.map_f32(bf16::from_f32, &what)?)),
            DType::I32 => {
                let wide = self.to_dtype(DType::F32)?;
                let xs = wide.f32s("to('i32'): input")?;
                let mut out = memory::with_capacity(xs.len(), &what)?;
                for (i, &x) in xs.iter().enumerate() {
                    // i32::MAX is not an f32; 2^31 is the first value past the range.
                    if !(x.is_finite() && (-2147483648.0..2147483648.0).contains(&x)) {
                        return Err(Error::Value(format!(
                            "to('i32'): the value {x} at flat index {i} has no int32 equivalent"
                        )));
                    }
                    out.push(x as i32);
                }
                Data::I32(Storage::from_vec(out))
            }
        };
        Tensor::new(data, self.shape.clone(), self.backend)
    }

    /// A copy in a buffer of its own (same dtype, shape and backend).
    pub fn deep_copy(&self, what: &str) -> Result<Tensor> {
        let data = match &self.data {
            Data::F32(s) => Data::F32(Storage::from_vec(memory::copy(s.as_slice(), what)?)),
            Data::F16(s) => Data::F16(Storage::from_vec(memory::copy(s.as_slice(), what)?)),
            Data::BF16(s) => Data::BF16(Storage::from_vec(memory::copy(s.as_slice(), what)?)),
            Data::I32(s) => Data::I32(Storage::from_vec(memory::copy(s.as_slice(), what)?)),
        };
        Tensor::new(data, self.shape.clone(), self.backend)
    }

    /// Each element widened to f32 and passed through `f`, into a new vector.
    fn map_f32<T>(&self, f: impl Fn(f32) -> T, what: &str) -> Result<Vec<T>> {
        match &self.data {
            Data::F32(s) => memory::collect(s.as_slice().iter().map(|&x| f(x)), what),
            Data::F16(s) => memory::collect(s.as_slice().iter().map(|x| f(x.to_f32())), what),
            Data::BF16(s) => memory::collect(s.as_slice().iter().map(|x| f(x.to_f32())), what),
            Data::I32(s) => memory::collect(s.as_slice().iter().map(|&x| f(x as f32)), what),
        }
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
