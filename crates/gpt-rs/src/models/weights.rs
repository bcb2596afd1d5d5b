//! Reading a checkpoint's weights for the runtime: a Hugging Face `model.safetensors` or a
//! sharded `model.safetensors.index.json`, or a GGUF file (its tensors under their Hugging
//! Face names), memory-mapped; linear layers prepared straight from the stored bytes
//! (`Panels::prepare`), their mapped pages released as soon as they are copied, so loading
//! never holds a weight twice.

use std::collections::HashMap;
use std::path::Path;

use super::Linear;
use crate::backend::{Panels, SourceDtype, WeightFormat, WeightSource};
use crate::checkpoint::gguf::GgufFile;
use crate::checkpoint::{read_text_file, Dtype, SafetensorsFile};
use crate::error::{Error, Result};

/// Maps a tensor name to another convention's (None: no such tensor there).
type Rename = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

pub struct Checkpoint {
    files: Vec<SafetensorsFile>,
    gguf: Option<GgufFile>,
    /// For a GGUF file: the file's own name of a Hugging Face tensor name (for messages).
    gguf_name: Option<Rename>,
    /// Tensor name -> index into `files`, or into the GGUF file's tensors.
    index: HashMap<String, usize>,
    dir: String,
}

impl Checkpoint {
    /// Opens `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        // Messages name the weights file (or the index of shards).
        let mut label = single.display().to_string();
        let files = if single.exists() {
            vec![SafetensorsFile::open(&single)?]
        } else if index_path.exists() {
            label = index_path.display().to_string();
            let v: serde_json::Value = serde_json::from_str(&read_text_file(&index_path)?)
                .map_err(|e| {
                    Error::Value(format!("{} is not valid JSON: {e}", index_path.display()))
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    Error::Value(format!("{}: no 'weight_map' object", index_path.display()))
                })?;
            let mut shards: Vec<&str> = Vec::new();
            for (name, f) in map {
                let f = f.as_str().ok_or_else(|| {
                    Error::Value(format!(
                        "{}: weight_map['{name}'] is not a file name",
                        index_path.display()
                    ))
                })?;
                // Shards must be files of this folder, never paths elsewhere.
                if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                    return Err(Error::Value(format!(
                        "{}: shard name '{f}' is not a plain file name",
                        index_path.display()
                    )));
                }
                if !shards.contains(&f) {
                    shards.push(f);
                }
            }
            shards.sort();
            shards
                .iter()
                .map(|f| {
                    let p = dir.join(f);
                    if !p.exists() {
                        return Err(Error::NotFound(format!(
                            "{} not found (listed by {})",
                            p.display(),
                            index_path.display()
                        )));
                    }
                    SafetensorsFile::open(&p)
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            return Err(Error::NotFound(format!(
                "{} not found (nor model.safetensors.index.json)",
                single.display()
            )));
        };
        let mut index = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for name in f.names() {
                index.insert(name.to_string(), i);
            }
        }
        Ok(Self {
            files,
            gguf: None,
            gguf_name: None,
            index,
            dir: label,
        })
    }

    /// A GGUF file's tensors, each under the Hugging Face checkpoint key `to_hf_name` gives
    /// it (tensors it maps to None are left out); `original` maps a key back to the GGUF
    /// name, for messages.
    pub fn from_gguf(
        file: GgufFile,
        to_hf_name: impl Fn(&str) -> Option<String>,
        original: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        let index = file
            .tensors
            .iter()
            .enumerate()
            .filter_map(|(i, t)| to_hf_name(&t.name).map(|n| (n, i)))
            .collect();
        Self {
            files: Vec::new(),
            dir: file.path().display().to_string(),
            gguf: Some(file),
            gguf_name: Some(Box::new(original)),
            index,
        }
    }

    /// A 1-D f32 tensor of the GGUF file by its own entry (one the renaming left out).
    pub fn gguf_vector(&self, t: &crate::checkpoint::gguf::TensorInfo) -> Result<Vec<f32>> {
        let g = self
            .gguf
            .as_ref()
            .expect("gguf_vector on a safetensors checkpoint");
        let (dtype, bytes) = g.data(t)?;
        let mut v = crate::memory::zeroed(t.dims.iter().product(), "a tensor's values")?;
        to_f32(dtype, bytes, &mut v);
        Ok(v)
    }

    /// The file (or folder) the weights come from, for messages.
    pub fn label(&self) -> &str {
        &self.dir
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.index.keys().map(String::as_str).collect();
        v.sort();
        v
    }

    /// Tensor `name` as f32 values (row-major) with its shape.
    pub fn values(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (dtype, shape, bytes) = self.raw(name)?;
        let mut v = crate::memory::zeroed(shape.iter().product(), "a tensor's values")?;
        to_f32(dtype, bytes, &mut v);
        Ok((shape, v))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// `name`'s dtype, shape (row-major) and bytes.
    fn raw(&self, name: &str) -> Result<(SourceDtype, Vec<usize>, &[u8])> {
        let missing = || {
            let file_name = self.gguf_name.as_ref().and_then(|f| f(name));
            match file_name {
                Some(g) => Error::Value(format!("{}: missing tensor '{g}' ('{name}')", self.dir)),
                None => Error::Value(format!("{}: missing tensor '{name}'", self.dir)),
            }
        };
        let &i = self.index.get(name).ok_or_else(missing)?;
        if let Some(g) = &self.gguf {
            let t = &g.tensors[i];
            let (dtype, bytes) = g.data(t)?;
            return Ok((dtype, t.shape(), bytes));
        }
        let (dtype, shape, bytes) = self.files[i].raw(name).ok_or_else(missing)?;
        let dtype = match dtype {
            Dtype::F32 => SourceDtype::F32,
            Dtype::F16 => SourceDtype::F16,
            Dtype::BF16 => SourceDtype::Bf16,
            other => {
                return Err(Error::DType(format!(
                    "{}: tensor '{name}' has dtype {other:?}; supported: F32, F16, BF16",
                    self.dir
                )))
            }
        };
        Ok((dtype, shape.to_vec(), bytes))
    }

    /// The stored dtype of `name`, as a weight source dtype.
    pub fn dtype(&self, name: &str) -> Result<SourceDtype> {
        Ok(self.raw(name)?.0)
    }

    /// `name` as a weight source of `shape` (checked), in storage order.
    pub fn source(&self, name: &str, shape: &[usize]) -> Result<(SourceDtype, &[u8])> {
        let (dtype, got, bytes) = self.raw(name)?;
        if got != shape {
            return Err(Error::Shape(format!(
                "{}: tensor '{name}' has shape {got:?}, expected {shape:?}",
                self.dir
            )));
        }
        Ok((dtype, bytes))
    }

    /// A 1-D tensor (a norm weight, a bias) of `len` elements, copied out as f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let mut out = crate::memory::zeroed(len, "a norm or bias vector")?;
        self.read_f32(name, &[len], &mut out)?;
        Ok(out)
    }

    /// Tensor `name` (of `shape`, checked) as f32 values into `out` (its element count);
    /// quantized blocks are dequantized a block at a time.
    pub fn read_f32(&self, name: &str, shape: &[usize], out: &mut [f32]) -> Result<()> {
        let (dtype, bytes) = self.source(name, shape)?;
        to_f32(dtype, bytes, out);
        Ok(())
    }

    /// Frees the mapped pages of `name` (it has been copied).
    pub fn release(&self, name: &str) {
        let Some(&i) = self.index.get(name) else {
            return;
        };
        match &self.gguf {
            Some(g) => {
                if let Some(r) = &g.tensors[i].range {
                    g.release(r);
                }
            }
            None => self.files[i].release_tensor(name),
        }
    }

    /// The format a weight stored as `dtype` is kept in.
    ///
    /// Quantized weights stay as stored unless f32/bf16 is asked for (they are never
    /// re-quantized to another block type: that would stack two rounding errors). Asking for
    /// a block type quantizes float weights whose rows are whole blocks and keeps the others
    /// (a few odd-sized matrices) in bf16.
    pub fn format_for(dtype: SourceDtype, k: usize, want: super::LoadDtype) -> WeightFormat {
        use super::LoadDtype as L;
        match (want, dtype) {
            (L::F32, _) => WeightFormat::F32,
            (L::Bf16, _) => WeightFormat::Bf16,
            (_, SourceDtype::Quant(t)) => WeightFormat::Quant(t),
            (L::Quant(t), _) if k.is_multiple_of(t.block_elems()) => WeightFormat::Quant(t),
            (L::Quant(_), _) => WeightFormat::Bf16,
            (L::Auto, SourceDtype::Bf16) => WeightFormat::Bf16,
            (L::Auto, _) => WeightFormat::F32,
        }
    }

    /// A matrix stored `[n, k]` (`nn.Linear`'s `[out, in]`) or `[k, n]`, prepared as panels.
    pub fn panels(
        &self,
        name: &str,
        k: usize,
        n: usize,
        out_in: bool,
        want: super::LoadDtype,
    ) -> Result<Panels> {
        let shape = if out_in { [n, k] } else { [k, n] };
        let (dtype, bytes) = self.source(name, &shape)?;
        let src = WeightSource {
            bytes,
            dtype,
            out_in,
            k,
            n,
        };
        let p = Panels::prepare(&src, Self::format_for(dtype, k, want))?;
        self.release(name);
        Ok(p)
    }

    /// Linear layers `names` (each `[out_i, in]`, PyTorch's layout) stacked along their
    /// outputs into one prepared weight (e.g. q, k, v as one projection), with their biases
    /// (`<name>.bias`) if `bias`.
    pub fn linear(
        &self,
        names: &[(&str, usize)],
        k: usize,
        bias: bool,
        want: super::LoadDtype,
    ) -> Result<Linear> {
        let mut sources = Vec::with_capacity(names.len());
        for &(name, n) in names {
            let (dtype, bytes) = self.source(&format!("{name}.weight"), &[n, k])?;
            sources.push(WeightSource {
                bytes,
                dtype,
                out_in: true,
                k,
                n,
            });
        }
        // Consecutive sources kept in one format are stacked into one part.
        let mut parts = Vec::new();
        let mut start = 0;
        for i in 1..=sources.len() {
            let f = Self::format_for(sources[start].dtype, k, want);
            if i == sources.len() || Self::format_for(sources[i].dtype, k, want) != f {
                parts.push(Panels::prepare_stacked(&sources[start..i], f)?);
                start = i;
            }
        }
        for &(name, _) in names {
            self.release(&format!("{name}.weight"));
        }
        let bias = if bias {
            let mut b = Vec::new();
            for &(name, n) in names {
                b.extend(self.vector(&format!("{name}.bias"), n)?);
            }
            Some(b)
        } else {
            None
        };
        Ok(Linear { parts, bias })
    }
}

/// Stored values (`out.len()` of them, in `dtype`) as f32; quantized blocks are dequantized a
/// block at a time.
fn to_f32(dtype: SourceDtype, bytes: &[u8], out: &mut [f32]) {
    if let SourceDtype::Quant(t) = dtype {
        return t.dequantize(bytes, out);
    }
    let src = WeightSource {
        bytes,
        dtype,
        out_in: false,
        k: 1,
        n: out.len(),
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = src.get(i);
    }
}
