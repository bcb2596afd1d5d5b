//! GGUF files (llama.cpp's format, versions 2 and 3): a bounded parser of the header, the
//! metadata key-values and the tensor infos, over a read-only memory map of the whole file.
//!
//! Nothing is trusted: every count, string length, dimension and offset is checked against the
//! bytes that remain before it is used, so a truncated or hostile file gives `Error::Value`
//! naming the file and the field, never an out-of-bounds read or an allocation the file's
//! size does not justify. Tensor data is left in the map; the loader copies (or quantizes)
//! what it keeps and releases the pages.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::backend::quant::QuantType;
use crate::backend::SourceDtype;
use crate::error::{Error, Result};

/// The first four bytes of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Arrays nested deeper than this are refused (the format allows nesting; files use none).
const MAX_DEPTH: usize = 4;

/// A metadata value. Integers keep their sign class; every width is widened.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A tensor's entry in the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the contiguous (innermost) dimension.
    pub dims: Vec<usize>,
    pub ggml_type: u32,
    /// Byte range within the file (known for the types gpt_rs reads).
    pub range: Option<std::ops::Range<usize>>,
}

impl TensorInfo {
    /// The shape in row-major (PyTorch) order: `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// The element type of a `ggml_type` id, if gpt_rs reads it.
pub fn source_dtype(ggml_type: u32) -> Option<SourceDtype> {
    match ggml_type {
        0 => Some(SourceDtype::F32),
        1 => Some(SourceDtype::F16),
        30 => Some(SourceDtype::Bf16),
        t => QuantType::from_ggml_type(t).map(SourceDtype::Quant),
    }
}

/// The name llama.cpp gives a `ggml_type` id (for messages).
pub fn type_name(ggml_type: u32) -> String {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES
        .get(ggml_type as usize)
        .map_or_else(|| format!("type {ggml_type}"), |n| n.to_string())
}

/// Bytes of a tensor of `dims` (GGUF order) and `dtype`, checked for overflow and whole blocks.
fn tensor_bytes(dims: &[usize], dtype: SourceDtype) -> Option<usize> {
    let rows = dims
        .iter()
        .skip(1)
        .try_fold(1usize, |a, &d| a.checked_mul(d))?;
    let ne0 = dims.first().copied().unwrap_or(1);
    let row = match dtype {
        SourceDtype::F32 => ne0.checked_mul(4)?,
        SourceDtype::F16 | SourceDtype::Bf16 => ne0.checked_mul(2)?,
        SourceDtype::Quant(t) => {
            if !ne0.is_multiple_of(t.block_elems()) {
                return None;
            }
            t.row_bytes(ne0)
        }
    };
    row.checked_mul(rows)
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

/// A cursor over the header bytes that fails, naming the file, instead of reading past them.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, what: &str) -> Error {
        Error::Value(format!(
            "{} is not a valid GGUF file: {what} (at byte {} of {})",
            self.path.display(),
            self.pos,
            self.b.len()
        ))
    }

    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(&format!("{what} runs past the end of the file")));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes(s.try_into().unwrap()))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let s = self.take(8, what)?;
        Ok(u64::from_le_bytes(s.try_into().unwrap()))
    }

    /// A count of items needing at least `min_bytes` each, checked against what remains.
    fn count(&mut self, min_bytes: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        if n > (self.remaining() / min_bytes.max(1)) as u64 {
            return Err(self.err(&format!(
                "{what} is {n}, more than the {} bytes left can hold",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        if n > self.remaining() as u64 {
            return Err(self.err(&format!(
                "the length of {what} ({n}) is larger than the rest of the file"
            )));
        }
        let s = self.take(n as usize, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| self.err(&format!("{what} is not UTF-8")))
    }

    /// The smallest encoding of a value of type `t` (for bounding array counts).
    fn min_size(t: u32) -> usize {
        match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 => 8,
            9 => 12,
            _ => 8,
        }
    }

    fn value(&mut self, t: u32, key: &str, depth: usize) -> Result<Value> {
        let what = || format!("the value of '{key}'");
        Ok(match t {
            0 => Value::U64(self.take(1, &what())?[0] as u64),
            1 => Value::I64(self.take(1, &what())?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.take(2, &what())?.try_into().unwrap()) as u64),
            3 => Value::I64(i16::from_le_bytes(self.take(2, &what())?.try_into().unwrap()) as i64),
            4 => Value::U64(self.u32(&what())? as u64),
            5 => Value::I64(self.u32(&what())? as i32 as i64),
            6 => Value::F64(f32::from_bits(self.u32(&what())?) as f64),
            7 => match self.take(1, &what())?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(&format!("'{key}' is a bool of value {b}"))),
            },
            8 => Value::Str(self.string(&what())?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(self.err(&format!("'{key}' nests arrays too deeply")));
                }
                let et = self.u32(&what())?;
                if et > 12 {
                    return Err(self.err(&format!("'{key}' is an array of unknown type {et}")));
                }
                let n = self.count(Self::min_size(et), &format!("the length of '{key}'"))?;
                let mut v = Vec::new();
                crate::memory::reserve(&mut v, n, "GGUF metadata")?;
                for _ in 0..n {
                    v.push(self.value(et, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(&what())?),
            11 => Value::I64(self.u64(&what())? as i64),
            12 => Value::F64(f64::from_bits(self.u64(&what())?)),
            other => return Err(self.err(&format!("'{key}' has unknown value type {other}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: read-only map; as for safetensors, the file must not be truncated while the
        // model loads (see the module docs of `checkpoint`).
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| Error::Io(format!("cannot map {}: {e}", path.display())))?;
        let (version, metadata, tensors) = Self::parse(&map, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            tensors,
        })
    }

    /// Parses a whole file's bytes (also the fuzzing entry point).
    #[allow(clippy::type_complexity)]
    pub fn parse(b: &[u8], path: &Path) -> Result<(u32, HashMap<String, Value>, Vec<TensorInfo>)> {
        let mut r = Reader { b, pos: 0, path };
        if r.remaining() < 4 || &b[..4] != MAGIC {
            return Err(r.err("it does not start with the magic bytes 'GGUF'"));
        }
        r.pos = 4;
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(r.err(&format!(
                "version {version} is not supported (supported: 2 and 3)"
            )));
        }
        let n_tensors = r.count(24, "the tensor count")?;
        let n_kv = r.count(13, "the metadata count")?;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = r.string("a metadata key")?;
            let t = r.u32(&format!("the type of '{key}'"))?;
            let v = r.value(t, &key, 0)?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(r.err(&format!("metadata key '{key}' appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(r.err(&format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        let mut raw = Vec::new();
        crate::memory::reserve(&mut raw, n_tensors, "GGUF tensor infos")?;
        let mut names = std::collections::HashSet::new();
        for _ in 0..n_tensors {
            let name = r.string("a tensor name")?;
            let n_dims = r.u32(&format!("the rank of '{name}'"))?;
            if n_dims > 4 {
                return Err(r.err(&format!(
                    "tensor '{name}' has {n_dims} dimensions (at most 4)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = r.u64(&format!("a dimension of '{name}'"))?;
                let d = usize::try_from(d)
                    .ok()
                    .filter(|&d| d as u64 <= b.len() as u64 * 8)
                    .ok_or_else(|| r.err(&format!("tensor '{name}' has dimension {d}")))?;
                dims.push(d);
            }
            let ggml_type = r.u32(&format!("the type of '{name}'"))?;
            let offset = r.u64(&format!("the offset of '{name}'"))?;
            if !names.insert(name.clone()) {
                return Err(r.err(&format!("tensor '{name}' appears twice")));
            }
            raw.push((name, dims, ggml_type, offset));
        }
        let data_start = (r.pos as u64).next_multiple_of(alignment);
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(raw.len());
        for (name, dims, ggml_type, offset) in raw {
            if offset % alignment != 0 {
                return Err(r.err(&format!(
                    "tensor '{name}' starts at offset {offset}, not a multiple of the alignment \
                     {alignment}"
                )));
            }
            let range = match source_dtype(ggml_type) {
                None => None,
                Some(dt) => {
                    let bytes = tensor_bytes(&dims, dt).ok_or_else(|| {
                        r.err(&format!(
                            "tensor '{name}' of shape {dims:?} is not a whole number of {} \
                             blocks or its size overflows",
                            type_name(ggml_type)
                        ))
                    })?;
                    let start = data_start.checked_add(offset);
                    let end = start.and_then(|s| s.checked_add(bytes as u64));
                    match (start, end) {
                        (Some(s), Some(e)) if e <= b.len() as u64 => Some(s as usize..e as usize),
                        _ => {
                            return Err(r.err(&format!(
                                "tensor '{name}' ({bytes} bytes at offset {offset}) runs past \
                                 the end of the file"
                            )))
                        }
                    }
                }
            };
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                range,
            });
        }
        let mut spans: Vec<(&str, std::ops::Range<usize>)> = tensors
            .iter()
            .filter_map(|t| t.range.clone().map(|rg| (t.name.as_str(), rg)))
            .collect();
        spans.sort_by_key(|s| s.1.start);
        for w in spans.windows(2) {
            if w[0].1.end > w[1].1.start {
                return Err(r.err(&format!("tensors '{}' and '{}' overlap", w[0].0, w[1].0)));
            }
        }
        Ok((version, metadata, tensors))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A tensor's dtype and bytes; `Error::DType` naming it for a type gpt_rs does not read.
    pub fn data(&self, t: &TensorInfo) -> Result<(SourceDtype, &[u8])> {
        match (source_dtype(t.ggml_type), &t.range) {
            (Some(dt), Some(rg)) => Ok((dt, &self.map[rg.clone()])),
            _ => Err(Error::Value(format!(
                "{}: tensor '{}' has type {}, which gpt_rs does not read (supported: F32, F16, \
                 BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
                self.path.display(),
                t.name,
                type_name(t.ggml_type)
            ))),
        }
    }

    /// Drops the mapped pages wholly inside `range` from resident memory (after copying).
    pub fn release(&self, range: &std::ops::Range<usize>) {
        crate::checkpoint::release_range(&self.map, range);
    }
}

/// A GGUF (version 3) file being assembled: metadata, then tensors, written at `write`.
#[derive(Default)]
pub struct GgufWriter {
    kv: Vec<(String, Value, u32)>,
    tensors: Vec<(String, Vec<usize>, u32, Vec<u8>)>,
}

/// GGUF's value-type ids for the `Value`s written (u32 for counts and ids, f32 for floats,
/// as llama.cpp's converter writes them).
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STR: u32 = 8;

impl GgufWriter {
    pub fn u32(&mut self, key: &str, v: u64) {
        self.kv.push((key.into(), Value::U64(v), T_U32));
    }
    pub fn f32(&mut self, key: &str, v: f64) {
        self.kv.push((key.into(), Value::F64(v), T_F32));
    }
    pub fn bool(&mut self, key: &str, v: bool) {
        self.kv.push((key.into(), Value::Bool(v), T_BOOL));
    }
    pub fn str(&mut self, key: &str, v: &str) {
        self.kv.push((key.into(), Value::Str(v.into()), T_STR));
    }
    /// An array of values of GGUF type `elem` (`T_STR`, `T_I32` or `T_F32` here).
    fn array(&mut self, key: &str, v: Vec<Value>, elem: u32) {
        self.kv.push((key.into(), Value::Array(v), elem));
    }
    pub fn strs(&mut self, key: &str, v: &[String]) {
        self.array(
            key,
            v.iter().map(|s| Value::Str(s.clone())).collect(),
            T_STR,
        );
    }
    pub fn i32s(&mut self, key: &str, v: &[i64]) {
        self.array(key, v.iter().map(|&i| Value::I64(i)).collect(), T_I32);
    }
    pub fn bools(&mut self, key: &str, v: &[bool]) {
        self.array(key, v.iter().map(|&b| Value::Bool(b)).collect(), T_BOOL);
    }
    pub fn f32s(&mut self, key: &str, v: &[f64]) {
        self.array(key, v.iter().map(|&f| Value::F64(f)).collect(), T_F32);
    }

    /// A tensor of row-major `shape` and `ggml_type`, its bytes as GGUF stores them.
    pub fn tensor(&mut self, name: &str, shape: &[usize], ggml_type: u32, data: Vec<u8>) {
        let dims = shape.iter().rev().copied().collect();
        self.tensors.push((name.into(), dims, ggml_type, data));
    }

    fn put_value(out: &mut Vec<u8>, v: &Value, t: u32) {
        match (v, t) {
            (Value::U64(x), T_U32) => out.extend((*x as u32).to_le_bytes()),
            (Value::I64(x), T_I32) => out.extend((*x as i32).to_le_bytes()),
            (Value::F64(x), T_F32) => out.extend((*x as f32).to_le_bytes()),
            (Value::Bool(b), _) => out.push(*b as u8),
            (Value::Str(s), _) => {
                out.extend((s.len() as u64).to_le_bytes());
                out.extend(s.as_bytes());
            }
            _ => unreachable!("GgufWriter: value {v:?} as type {t}"),
        }
    }

    /// Writes the file (atomically: a partial file never takes `path`'s name).
    pub fn write(&self, path: &Path) -> Result<()> {
        const ALIGN: usize = DEFAULT_ALIGNMENT as usize;
        let mut h = Vec::new();
        h.extend(MAGIC);
        h.extend(3u32.to_le_bytes());
        h.extend((self.tensors.len() as u64).to_le_bytes());
        h.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v, t) in &self.kv {
            Self::put_value(&mut h, &Value::Str(k.clone()), T_STR);
            match v {
                Value::Array(a) => {
                    h.extend(9u32.to_le_bytes());
                    h.extend(t.to_le_bytes());
                    h.extend((a.len() as u64).to_le_bytes());
                    for x in a {
                        Self::put_value(&mut h, x, *t);
                    }
                }
                _ => {
                    h.extend(t.to_le_bytes());
                    Self::put_value(&mut h, v, *t);
                }
            }
        }
        let mut offset = 0usize;
        for (name, dims, t, data) in &self.tensors {
            Self::put_value(&mut h, &Value::Str(name.clone()), T_STR);
            h.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                h.extend((*d as u64).to_le_bytes());
            }
            h.extend(t.to_le_bytes());
            h.extend((offset as u64).to_le_bytes());
            offset = (offset + data.len()).next_multiple_of(ALIGN);
        }
        h.resize(h.len().next_multiple_of(ALIGN), 0);
        super::write_atomically(path, |tmp| {
            use std::io::Write;
            let io = |e: std::io::Error| Error::Io(format!("cannot write {}: {e}", tmp.display()));
            let f = std::fs::File::create(tmp).map_err(io)?;
            let mut w = std::io::BufWriter::new(f);
            w.write_all(&h).map_err(io)?;
            for (_, _, _, data) in &self.tensors {
                w.write_all(data).map_err(io)?;
                w.write_all(&vec![0u8; data.len().next_multiple_of(ALIGN) - data.len()])
                    .map_err(io)?;
            }
            w.flush().map_err(io)
        })
    }
}
