//! Fallible allocation: the rule every buffer whose size a caller controls follows.
//!
//! Rust's `vec![x; n]`, `Vec::with_capacity(n)` and `collect()` abort the process when the
//! allocator refuses, and a Python user can ask for any size (`ones((1 << 20, 1)) +
//! ones((1, 1 << 20))` wants 4 TiB). So outputs, caches, conversions, model weights and
//! optimizer state are allocated here: sizes are computed in 128-bit arithmetic, the request
//! goes to the allocator with a failure path, and a refusal becomes `Error::Memory` (Python's
//! `MemoryError`) naming what was being allocated and how many bytes.
//!
//! Kernels themselves allocate only bounded scratch (blocks, panels, one row of scores), so
//! once an op's output exists its kernel cannot run out of memory.

use std::alloc::Layout;

use crate::error::{Error, Result};

/// Element types whose all-zero bit pattern is a valid value (so `zeroed` can hand out
/// memory straight from `alloc_zeroed`, which the OS gives as untouched zero pages).
///
/// # Safety
/// Implement only for types for which all-zero bytes are a valid value.
pub unsafe trait Zeroable: Copy {}
// SAFETY: zero bytes are 0 / 0.0 for every primitive number type.
unsafe impl Zeroable for f32 {}
unsafe impl Zeroable for f64 {}
unsafe impl Zeroable for i32 {}
unsafe impl Zeroable for u32 {}
unsafe impl Zeroable for i64 {}
unsafe impl Zeroable for u64 {}
unsafe impl Zeroable for u16 {}
unsafe impl Zeroable for u8 {}
unsafe impl Zeroable for usize {}

/// The largest allocation Rust allows (`isize::MAX` bytes).
const MAX_BYTES: u128 = isize::MAX as u128;

/// "1.5 GiB"-style size, for messages.
pub fn human(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The error for a refused allocation of `bytes` for `what`.
pub fn out_of_memory(what: &str, bytes: u128) -> Error {
    Error::Memory(format!(
        "{what}: cannot allocate {} ({bytes} bytes): out of memory",
        human(bytes)
    ))
}

/// Bytes of `n` elements of `T`, in 128-bit arithmetic (never wraps).
pub fn bytes_of<T>(n: u128) -> u128 {
    n.saturating_mul(std::mem::size_of::<T>() as u128)
}

/// Number of elements of `shape` in 128-bit arithmetic (saturating at `u128::MAX`).
pub fn numel_u128(shape: &[usize]) -> u128 {
    shape
        .iter()
        .fold(1u128, |acc, &d| acc.saturating_mul(d as u128))
}

/// The layout of `n` elements of `T`, or `Error::Memory` when it exceeds what can exist.
fn layout<T>(n: usize, what: &str) -> Result<Layout> {
    check_size::<T>(n as u128, what)?;
    Layout::array::<T>(n).map_err(|_| out_of_memory(what, bytes_of::<T>(n as u128)))
}

/// `vec![0; n]` that returns `Error::Memory` instead of aborting. Large buffers come from
/// `alloc_zeroed` (untouched zero pages from the OS, as `vec!` gives).
pub fn zeroed<T: Zeroable>(n: usize, what: &str) -> Result<Vec<T>> {
    let layout = layout::<T>(n, what)?;
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the layout has a non-zero size. On success the block holds `n` zeroed `T`s,
    // a valid value of every `Zeroable` type, allocated by the global allocator with exactly
    // the layout `Vec<T>` uses for capacity `n`, so the Vec may own and free it.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut T;
        if p.is_null() {
            return Err(out_of_memory(what, layout.size() as u128));
        }
        Ok(Vec::from_raw_parts(p, n, n))
    }
}

/// `Vec::with_capacity(n)` that returns `Error::Memory` instead of aborting.
pub fn with_capacity<T>(n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    reserve(&mut v, n, what)?;
    Ok(v)
}

/// Room for `additional` more elements in `v`, or `Error::Memory`.
pub fn reserve<T>(v: &mut Vec<T>, additional: usize, what: &str) -> Result<()> {
    v.try_reserve_exact(additional)
        .map_err(|_| out_of_memory(what, bytes_of::<T>(v.len() as u128 + additional as u128)))
}

/// Grows `v` to at least `n` zeros-or-old-values (never shrinks) and returns its first `n`
/// elements: reusable scratch whose growth can fail cleanly.
pub fn grow<'a, T: Zeroable + Default>(
    v: &'a mut Vec<T>,
    n: usize,
    what: &str,
) -> Result<&'a mut [T]> {
    if v.len() < n {
        reserve(v, n - v.len(), what)?;
        v.resize(n, T::default());
    }
    Ok(&mut v[..n])
}

/// `iter.collect::<Vec<_>>()` for an iterator of known length, with the buffer allocated
/// fallibly up front.
pub fn collect<T>(iter: impl ExactSizeIterator<Item = T>, what: &str) -> Result<Vec<T>> {
    let mut v = with_capacity(iter.len(), what)?;
    v.extend(iter);
    Ok(v)
}

/// `src.to_vec()`, fallibly.
pub fn copy<T: Copy>(src: &[T], what: &str) -> Result<Vec<T>> {
    let mut v = with_capacity(src.len(), what)?;
    v.extend_from_slice(src);
    Ok(v)
}

/// Checks that `n` elements of `T` could be allocated at all (at most `isize::MAX` bytes),
/// before a caller commits to a size: e.g. a tensor shape from user input.
pub fn check_size<T>(n: u128, what: &str) -> Result<()> {
    let bytes = bytes_of::<T>(n);
    if bytes > MAX_BYTES {
        return Err(out_of_memory(what, bytes));
    }
    Ok(())
}

/// Physical memory of this machine in bytes, if the OS tells (Linux: `/proc/meminfo`).
/// Used to refuse up front what would otherwise be granted lazily by overcommit and then
/// killed by the OOM killer when touched (e.g. the KV caches of thousands of sequences).
pub fn physical_bytes() -> Option<u128> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Returns freed heap memory to the operating system (glibc keeps it otherwise): called after
/// loading a model, whose parsing (a GGUF file's vocabulary, say) frees many small blocks.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_gives_zeros_and_refuses_impossible_sizes() {
        let v: Vec<f32> = zeroed(1000, "test").unwrap();
        assert!(v.len() == 1000 && v.iter().all(|&x| x == 0.0));
        assert!(zeroed::<f32>(0, "test").unwrap().is_empty());
        let e = zeroed::<f32>(usize::MAX / 2, "the test buffer").unwrap_err();
        assert!(matches!(e, Error::Memory(_)));
        assert!(
            e.to_string()
                .starts_with("the test buffer: cannot allocate"),
            "{e}"
        );
        assert!(with_capacity::<u64>(usize::MAX / 4, "x").is_err());
        assert!(collect((0..usize::MAX).map(|i| i as u8), "x").is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(10), "10 bytes");
        assert_eq!(human(4 << 40), "4.0 TiB");
        assert_eq!(human(1536 << 20), "1.5 GiB");
    }
}
