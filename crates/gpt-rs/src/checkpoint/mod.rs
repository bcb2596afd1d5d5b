//! Checkpoints: memory-mapped safetensors files, Hugging Face `config.json`, and writing
//! files atomically.
//!
//! The map is read only while loading: `tensor` gives f32 tensors in place (no copy) for the
//! loader to repack, and `tensor_owned` copies what a model keeps as is. A loaded model holds
//! nothing of the file, so replacing or truncating the file afterwards cannot change it or
//! crash it (a file shortened *while* it loads can still end the process with SIGBUS, as with
//! any memory-mapped loader). f16, bf16 and f64 tensors are converted to f32 once at load.

pub mod config;
pub mod gguf;

pub use config::Gpt2Config;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
pub use safetensors::Dtype;
use safetensors::SafeTensors;

use crate::backend::BackendKind;
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::tensor::{Data, Tensor};

/// An open, memory-mapped `.safetensors` file.
pub struct SafetensorsFile {
    path: PathBuf,
    map: Arc<Mmap>,
    /// (name, dtype, shape, byte range within the map), validated by the safetensors crate.
    entries: Vec<(String, Dtype, Vec<usize>, std::ops::Range<usize>)>,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: the map is read-only. Like every mmap-based loader, we assume the file is not
        // truncated or rewritten by another process while the model is loaded.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| Error::Io(format!("cannot map {}: {e}", path.display())))?;
        let st = SafeTensors::deserialize(&map).map_err(|e| {
            Error::Value(format!(
                "{} is not a valid safetensors file: {e}",
                path.display()
            ))
        })?;
        let base = map.as_ptr() as usize;
        let entries = st
            .iter()
            .map(|(name, view)| {
                let start = view.data().as_ptr() as usize - base;
                (
                    name.to_string(),
                    view.dtype(),
                    view.shape().to_vec(),
                    start..start + view.data().len(),
                )
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            map: Arc::new(map),
            entries,
        })
    }

    /// Drops the file's pages from this process's resident memory (they are re-read from the
    /// page cache or disk if touched again). Used after copying tensors out of the map, so a
    /// loaded model does not count both copies.
    pub fn release_pages(&self) {
        // SAFETY: the mapping is private and read-only, so MADV_DONTNEED only drops clean pages;
        // later reads see the file's contents again. Failure is harmless (pages just stay).
        #[cfg(unix)]
        let _ = unsafe {
            self.map
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
    }

    /// Like `release_pages`, for the whole pages inside one tensor's bytes (called right after
    /// copying the tensor out, so loading never holds both copies of a large model).
    pub fn release_tensor(&self, name: &str) {
        if let Some((_, _, _, range)) = self.entries.iter().find(|e| e.0 == name) {
            release_range(&self.map, range);
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.0.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.0 == name)
    }

    /// The tensor `name` as f32 in memory of its own: what a loaded model keeps, unaffected by
    /// later changes to the file.
    pub fn tensor_owned(
        &self,
        name: &str,
        expected: &[usize],
        backend: BackendKind,
    ) -> Result<Tensor> {
        let t = self.tensor(name, expected, backend)?;
        let data = t.f32s(name)?;
        let map = self.map.as_ptr_range();
        if !map.contains(&(data.as_ptr() as *const u8)) {
            return Ok(t); // converted from another dtype: already a copy
        }
        let copy = crate::memory::copy(data, &format!("loading '{name}'"))?;
        Tensor::from_f32(copy, t.shape().to_vec(), backend)
    }

    /// The tensor `name` as f32, checked against `expected` shape. f32 data is a view of the
    /// memory map: for a loader that repacks it (`tensor_owned` for what is kept as is).
    /// Tensor `name`'s dtype, shape and bytes in the map (None if absent): for weights a
    /// backend prepares from the stored bytes.
    pub fn raw(&self, name: &str) -> Option<(Dtype, &[usize], &[u8])> {
        self.entries
            .iter()
            .find(|e| e.0 == name)
            .map(|(_, dtype, shape, range)| (*dtype, shape.as_slice(), &self.map[range.clone()]))
    }

    pub fn tensor(&self, name: &str, expected: &[usize], backend: BackendKind) -> Result<Tensor> {
        let (_, dtype, shape, range) =
            self.entries.iter().find(|e| e.0 == name).ok_or_else(|| {
                Error::Value(format!("{}: missing tensor '{name}'", self.path.display()))
            })?;
        if shape.as_slice() != expected {
            return Err(Error::Shape(format!(
                "{}: tensor '{name}' has shape {shape:?}, expected {expected:?}",
                self.path.display()
            )));
        }
        let bytes = &self.map[range.clone()];
        let n: usize = shape.iter().product();
        let what = &format!("{}: converting '{name}' to f32", self.path.display());
        let data = match dtype {
            Dtype::F32 if (bytes.as_ptr() as usize).is_multiple_of(4) => {
                // SAFETY: the safetensors crate checked that the range holds n f32 values inside
                // the map; the pointer is 4-byte aligned; the Arc<Mmap> keeps the memory alive.
                Data::F32(unsafe {
                    Storage::from_raw_parts(
                        bytes.as_ptr() as *const f32,
                        n,
                        false,
                        self.map.clone(),
                    )
                })
            }
            Dtype::F32 => Data::F32(Storage::from_vec(convert(bytes, 4, what, |b| {
                f32::from_le_bytes([b[0], b[1], b[2], b[3]])
            })?)),
            Dtype::F16 => Data::F32(Storage::from_vec(convert(bytes, 2, what, |b| {
                half::f16::from_le_bytes([b[0], b[1]]).to_f32()
            })?)),
            Dtype::BF16 => Data::F32(Storage::from_vec(convert(bytes, 2, what, |b| {
                half::bf16::from_le_bytes([b[0], b[1]]).to_f32()
            })?)),
            Dtype::F64 => Data::F32(Storage::from_vec(convert(bytes, 8, what, |b| {
                f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32
            })?)),
            other => {
                return Err(Error::DType(format!(
                    "{}: tensor '{name}' has dtype {other:?}; supported: F32, F16, BF16, F64",
                    self.path.display()
                )))
            }
        };
        Tensor::new(data, shape.clone(), backend)
    }
}

/// Reads a small text file (a `config.json`): regular files only, at most `MAX_TEXT_FILE`
/// bytes, so a FIFO cannot block the loader and `/dev/zero` cannot fill memory.
pub fn read_text_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let io = |e: std::io::Error| Error::Io(format!("cannot read {}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(format!("{} not found", path.display())),
        _ => io(e),
    })?;
    if !meta.is_file() {
        return Err(Error::Io(format!(
            "cannot read {}: not a regular file",
            path.display()
        )));
    }
    let mut text = String::new();
    let file = std::fs::File::open(path).map_err(io)?;
    file.take(MAX_TEXT_FILE + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_TEXT_FILE {
        return Err(Error::Value(format!(
            "{} is larger than {} MiB; a config file is a few KB",
            path.display(),
            MAX_TEXT_FILE >> 20
        )));
    }
    Ok(text)
}

/// The largest `read_text_file` reads.
pub const MAX_TEXT_FILE: u64 = 16 << 20;

/// Little-endian elements of `size` bytes converted one by one, into a fallibly allocated vector.
fn convert(bytes: &[u8], size: usize, what: &str, f: impl Fn(&[u8]) -> f32) -> Result<Vec<f32>> {
    crate::memory::collect(bytes.chunks_exact(size).map(f), what)
}

/// Writes `path` through a temporary file in the same folder, then renames it into place, so
/// an interrupted save never leaves a truncated checkpoint.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension("tmp");
    write(&tmp)?;
    // Checkpoints are meant to be shared (and shipped): readable by all, like a plain file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644));
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::Io(format!("cannot move {} into place: {e}", path.display())))
}

/// Drops the whole pages of `map` inside `range` from this process's resident memory (they
/// are re-read from the page cache if touched again): called right after copying a tensor out,
/// so loading never holds both copies of a large model.
pub fn release_range(map: &Mmap, range: &std::ops::Range<usize>) {
    const PAGE: usize = 4096;
    let base = map.as_ptr() as usize;
    let start = (base + range.start).next_multiple_of(PAGE) - base;
    let end = ((base + range.end) / PAGE * PAGE).saturating_sub(base);
    if end > start {
        // SAFETY: the mapping is private and read-only, so MADV_DONTNEED only drops clean
        // pages; the range is inside the map and page-aligned. Failure is harmless.
        #[cfg(unix)]
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}
