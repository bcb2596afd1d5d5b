//! Shared, immutable-by-default host buffers that a tensor, a NumPy view, a DLPack capsule or a
//! memory map can all hold at once.
//!
//! A `Storage<T>` is a pointer and a length plus an `owner` that keeps the memory alive:
//! a `Vec<T>` we allocated, a NumPy array we borrowed, a DLPack producer, or a memory map.
//! Cloning is an `Arc` clone. The engine never writes through a `Storage` after creating it;
//! outside holders (a writable NumPy view) may, exactly as with `torch.Tensor.numpy()`.

use std::any::Any;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::error::Result;

/// Something that keeps a buffer's memory alive for as long as it exists.
pub type Owner = Arc<dyn Any + Send + Sync>;

pub struct Storage<T> {
    ptr: NonNull<T>,
    len: usize,
    writable: bool,
    owner: Owner,
}

// SAFETY: the memory is kept alive by `owner` (Send + Sync) and the engine only reads it
// concurrently; concurrent writes can only come from outside holders, as with NumPy itself.
unsafe impl<T: Send + Sync> Send for Storage<T> {}
unsafe impl<T: Send + Sync> Sync for Storage<T> {}

impl<T> Clone for Storage<T> {
    fn clone(&self) -> Self {
        Self {
            ptr: self.ptr,
            len: self.len,
            writable: self.writable,
            owner: self.owner.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> Storage<T> {
    /// Takes ownership of a vector (no copy).
    pub fn from_vec(v: Vec<T>) -> Self {
        let mut v = std::mem::ManuallyDrop::new(v);
        let len = v.len();
        // SAFETY: a Vec's pointer is non-null (dangling but aligned when empty). We rebuild the
        // Vec inside the owner, so the heap block is freed exactly once, when the owner drops.
        let ptr = unsafe { NonNull::new_unchecked(v.as_mut_ptr()) };
        let cap = v.capacity();
        let owned = unsafe { Vec::from_raw_parts(ptr.as_ptr(), len, cap) };
        Self {
            ptr,
            len,
            writable: true,
            owner: Arc::new(owned),
        }
    }

    /// Wraps memory owned by someone else.
    ///
    /// # Safety
    /// `ptr` must be valid for reads of `len` elements of `T`, aligned for `T`, and stay valid
    /// for as long as `owner` is alive.
    pub unsafe fn from_raw_parts(ptr: *const T, len: usize, writable: bool, owner: Owner) -> Self {
        let ptr = NonNull::new(ptr as *mut T).unwrap_or(NonNull::dangling());
        Self {
            ptr,
            len,
            writable,
            owner,
        }
    }
}

impl<T: crate::memory::Zeroable + Send + Sync + 'static> Storage<T> {
    /// A buffer of `len` elements filled once by `fill` and then only read, many times over (model
    /// weights). On Linux it is anonymous memory advised to use transparent huge pages: a
    /// decode step streams every weight once, and with 2 MiB pages the hardware prefetchers
    /// run across what would be 4 KiB page boundaries and the TLB covers the whole model.
    /// Elsewhere, or if the mapping fails, a plain vector. `Error::Memory` (naming `what`) if
    /// neither can be had.
    pub fn weights_with(len: usize, what: &str, fill: impl FnOnce(&mut [T])) -> Result<Self> {
        #[cfg(target_os = "linux")]
        if len > 0 {
            // One huge page more than needed, so the buffer can start on a huge-page boundary
            // (the pages before it are never touched, so they cost address space only).
            const HUGE: usize = 2 << 20;
            let bytes = crate::memory::bytes_of::<T>(len as u128);
            crate::memory::check_size::<u8>(bytes + HUGE as u128, what)?;
            let bytes = bytes as usize;
            if let Ok(mut map) = memmap2::MmapMut::map_anon(bytes + HUGE) {
                let offset = map.as_ptr().align_offset(HUGE);
                // Advice only: without transparent huge pages the buffer still works.
                let _ = map.advise_range(memmap2::Advice::HugePage, offset, bytes);
                // SAFETY: `offset + bytes` fits in the zero-filled mapping and `offset` is a
                // multiple of the page size, so the elements are aligned; zero bytes are a valid
                // `T` (`Zeroable`).
                let data = unsafe {
                    std::slice::from_raw_parts_mut(map.as_mut_ptr().add(offset).cast::<T>(), len)
                };
                fill(data);
                let ptr = data.as_ptr();
                // SAFETY: the map lives in the owner for as long as this storage or its clones.
                return Ok(unsafe { Self::from_raw_parts(ptr, len, true, Arc::new(map)) });
            }
        }
        let mut v = crate::memory::zeroed(len, what)?;
        fill(&mut v);
        Ok(Self::from_vec(v))
    }
}

impl Storage<f32> {
    /// A copy of `src`. Large buffers (from `LARGE_COPY` bytes, NumPy's own threshold for
    /// huge pages) go to weight memory (`weights_with`): a big tensor made from an array is
    /// usually a weight that every later product streams, at the bandwidth huge pages give.
    pub fn copy_of(src: &[f32], what: &str) -> Result<Self> {
        if std::mem::size_of_val(src) >= LARGE_COPY {
            Self::weights_with(src.len(), what, |d| d.copy_from_slice(src))
        } else {
            Ok(Self::from_vec(crate::memory::copy(src, what)?))
        }
    }
}

/// Bytes from which `Storage::copy_of` uses huge-page memory.
pub const LARGE_COPY: usize = 4 << 20;

/// Buffers of ops' outputs, kept for the next output of the same size when the last holder of
/// a `Storage::recycled` is gone. An op whose kernel writes every element takes one instead of
/// a zero-filled vector: a fresh `vec![0.0; n]` costs a memset (and its cache misses) before
/// the kernel writes the same memory again, up to 10-25% of a GELU, softmax or layer norm.
/// The buffers hold old results (initialized floats), so reusing them is sound; a bounded
/// number of bytes is kept, so memory stays flat.
pub mod recycle {
    use std::sync::Mutex;

    /// Buffers below this many floats are not kept (malloc and memset are cheap there), nor
    /// above `MAX_LEN` (4 MiB: a large tensor's memory goes back when it is dropped).
    const MIN_LEN: usize = 16 << 10;
    const MAX_LEN: usize = 1 << 20;
    /// At most this many bytes, in at most `MAX_BUFFERS` buffers, are kept.
    const MAX_BYTES: usize = 16 << 20;
    const MAX_BUFFERS: usize = 8;

    static KEPT: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

    /// A buffer of `n` floats with unspecified (old) contents, for a kernel that writes every
    /// element; `Error::Memory` naming `what` if a new one cannot be allocated.
    pub fn take(n: usize, what: &str) -> crate::Result<Vec<f32>> {
        if (MIN_LEN..=MAX_LEN).contains(&n) {
            let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = kept.iter().position(|v| v.len() == n) {
                return Ok(kept.swap_remove(i));
            }
        }
        crate::memory::zeroed(n, what)
    }

    /// Keeps `v` for a later `take`, if there is room.
    pub(super) fn give(v: Vec<f32>) {
        if !(MIN_LEN..=MAX_LEN).contains(&v.len()) {
            return;
        }
        let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: usize = kept.iter().map(|k| k.capacity() * 4).sum();
        if kept.len() < MAX_BUFFERS && bytes + v.capacity() * 4 <= MAX_BYTES {
            kept.push(v);
        }
    }
}

/// The owner of a `Storage::recycled`: hands its buffer back to `recycle` when dropped.
struct Recycled(Vec<f32>);

impl Drop for Recycled {
    fn drop(&mut self) {
        recycle::give(std::mem::take(&mut self.0));
    }
}

impl Storage<f32> {
    /// Takes ownership of `v` (no copy) and hands the buffer to `recycle` once the last holder
    /// (tensor, NumPy view, DLPack consumer) is gone.
    pub fn recycled(mut v: Vec<f32>) -> Self {
        let len = v.len();
        // SAFETY: a Vec's pointer is non-null; the Vec moves into the owner, which keeps the
        // heap block (its address does not change) until the owner drops.
        let ptr = unsafe { NonNull::new_unchecked(v.as_mut_ptr()) };
        Self {
            ptr,
            len,
            writable: true,
            owner: Arc::new(Recycled(v)),
        }
    }
}

impl<T> Storage<T> {
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: guaranteed by the constructors: valid for `len` reads while `owner` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    pub fn as_ptr(&self) -> *const T {
        self.ptr.as_ptr()
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Whether outside holders may write to this memory (false for read-only NumPy arrays).
    pub fn writable(&self) -> bool {
        self.writable
    }
    /// The object keeping the memory alive; hand it to whoever shares the buffer.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }
}
