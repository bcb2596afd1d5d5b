//! Weight matrices prepared once at load for many `x @ W` products (a model's linear layers).
//!
//! `W` (`[k, n]`: in, out) is cut into panels of `PANEL` output columns; panel `j` holds
//! `W[:, j*PANEL..(j+1)*PANEL]` as `[k, PANEL]` row-major, the last one zero-padded. This is
//! the layout the `cpu` backend's kernels read in place: the GEMM micro-kernel takes its right
//! operand straight from a panel (no packing per call), and the few-row (decode) kernel streams
//! the whole matrix front to back. Backends without their own kernel multiply panel by panel
//! (`matmul_by_panel`), each panel widened to a plain `[k, PANEL]` f32 matrix.
//!
//! The elements are stored in a `WeightFormat`: f32, or bf16 (half the bytes a decode step
//! streams; activations stay f32 and every product accumulates in f32). Block-quantized
//! formats are further variants with their own block layout inside the same panels.

use rayon::prelude::*;

use super::Backend;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Output columns per panel: two AVX-512 vectors, the `cpu` GEMM's register tile width.
pub const PANEL: usize = 32;

/// How a prepared weight stores its elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    /// bfloat16: the top 16 bits of an f32 (rounded to nearest even when converted).
    Bf16,
}

impl WeightFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }

    pub fn bytes_per_element(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
        }
    }
}

/// The element types a checkpoint stores a matrix in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceDtype {
    F32,
    F16,
    Bf16,
}

/// A matrix as a checkpoint stores it: little-endian elements, in one of two orientations.
#[derive(Clone, Copy)]
pub struct WeightSource<'a> {
    pub bytes: &'a [u8],
    pub dtype: SourceDtype,
    /// `true`: stored `[n, k]` (PyTorch's `nn.Linear`, `[out, in]`); `false`: `[k, n]`
    /// (Hugging Face's GPT-2 `Conv1D`, `[in, out]`).
    pub out_in: bool,
    pub k: usize,
    pub n: usize,
}

impl WeightSource<'_> {
    /// Element `index` (in storage order) as f32.
    #[inline(always)]
    pub fn get(&self, index: usize) -> f32 {
        let b = self.bytes;
        match self.dtype {
            SourceDtype::F32 => {
                let i = 4 * index;
                f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
            }
            SourceDtype::F16 => half::f16::from_le_bytes([b[2 * index], b[2 * index + 1]]).to_f32(),
            SourceDtype::Bf16 => {
                f32::from_bits((u16::from_le_bytes([b[2 * index], b[2 * index + 1]]) as u32) << 16)
            }
        }
    }

    /// Element `index` as bf16 bits: bf16 sources copied exactly, others rounded.
    #[inline(always)]
    fn get_bf16(&self, index: usize) -> u16 {
        match self.dtype {
            SourceDtype::Bf16 => {
                u16::from_le_bytes([self.bytes[2 * index], self.bytes[2 * index + 1]])
            }
            _ => half::bf16::from_f32(self.get(index)).to_bits(),
        }
    }

    /// Index in storage order of `W[p, j]` (row `p` of `k`, column `j` of `n`).
    #[inline(always)]
    fn index(&self, p: usize, j: usize) -> usize {
        if self.out_in {
            j * self.k + p
        } else {
            p * self.n + j
        }
    }
}

enum PanelData {
    F32(Storage<f32>),
    Bf16(Storage<u16>),
}

/// A `[k, n]` matrix stored as panels of `PANEL` columns (see the module docs).
pub struct Panels {
    data: PanelData,
    k: usize,
    n: usize,
}

/// Fills `dst` (all panels, zero-initialized) from `get(p, j)`, panel by panel on the engine's
/// threads.
fn fill<T: Copy + Send + Sync>(
    dst: &mut [T],
    k: usize,
    n: usize,
    get: impl Fn(usize, usize) -> T + Sync,
) {
    let panel = k * PANEL;
    crate::threads::install(|| {
        dst.par_chunks_mut(panel.max(1))
            .enumerate()
            .for_each(|(jp, out)| {
                let (j0, j1) = (jp * PANEL, (jp * PANEL + PANEL).min(n));
                for (p, o) in out.chunks_exact_mut(PANEL).enumerate() {
                    for (q, j) in (j0..j1).enumerate() {
                        o[q] = get(p, j);
                    }
                }
            })
    })
}

impl Panels {
    /// Lays out `w` (`[k, n]` row-major f32, e.g. a Hugging Face Conv1D weight) as f32 panels.
    pub fn from_kn(w: &[f32], k: usize, n: usize) -> Result<Self> {
        assert_eq!(w.len(), k * n, "Panels::from_kn: slice is not [k, n]");
        let len = n.div_ceil(PANEL) * k * PANEL;
        let data = Storage::weights_with(len, "weight panels", |dst| {
            fill(dst, k, n, |p, j| w[p * n + j])
        })?;
        Ok(Self {
            data: PanelData::F32(data),
            k,
            n,
        })
    }

    /// Prepares a checkpoint's matrix in `format`, in weight memory (`Storage::weights_with`),
    /// on the engine's threads. `Error::Memory` if the memory cannot be had.
    pub fn prepare(src: &WeightSource<'_>, format: WeightFormat) -> Result<Self> {
        Self::prepare_stacked(std::slice::from_ref(src), format)
    }

    /// Prepares matrices of one `k` side by side along their outputs (`n` = the sum of
    /// theirs): a fused projection, such as q, k and v in one product.
    pub fn prepare_stacked(srcs: &[WeightSource<'_>], format: WeightFormat) -> Result<Self> {
        let k = srcs.first().map_or(0, |s| s.k);
        let mut starts = Vec::with_capacity(srcs.len());
        let mut n = 0;
        for src in srcs {
            let elem = match src.dtype {
                SourceDtype::F32 => 4,
                _ => 2,
            };
            if src.k != k || src.bytes.len() as u128 != src.k as u128 * src.n as u128 * elem {
                return Err(Error::Shape(format!(
                    "weight of {} bytes is not [{}, {}] of {:?} (stacked with k = {k})",
                    src.bytes.len(),
                    src.k,
                    src.n,
                    src.dtype
                )));
            }
            starts.push(n);
            n += src.n;
        }
        // Column j of the stack is column j - starts[s] of source s.
        let locate = |j: usize| {
            let s = starts.partition_point(|&st| st <= j) - 1;
            (&srcs[s], j - starts[s])
        };
        let len = n.div_ceil(PANEL) * k * PANEL;
        let data = match format {
            WeightFormat::F32 => {
                PanelData::F32(Storage::weights_with(len, "weight panels", |d| {
                    fill(d, k, n, |p, j| {
                        let (src, j) = locate(j);
                        src.get(src.index(p, j))
                    })
                })?)
            }
            WeightFormat::Bf16 => {
                PanelData::Bf16(Storage::weights_with(len, "bf16 weight panels", |d| {
                    fill(d, k, n, |p, j| {
                        let (src, j) = locate(j);
                        src.get_bf16(src.index(p, j))
                    })
                })?)
            }
        };
        Ok(Self { data, k, n })
    }

    /// Column `j` of `W` (`k` values) as f32 into `out`: a row of an embedding table kept as
    /// the panels of its output projection.
    pub fn column(&self, j: usize, out: &mut [f32]) {
        let base = (j / PANEL) * self.k * PANEL + j % PANEL;
        match &self.data {
            PanelData::F32(d) => {
                let d = d.as_slice();
                for (p, o) in out[..self.k].iter_mut().enumerate() {
                    *o = d[base + p * PANEL];
                }
            }
            PanelData::Bf16(d) => {
                let d = d.as_slice();
                for (p, o) in out[..self.k].iter_mut().enumerate() {
                    *o = f32::from_bits((d[base + p * PANEL] as u32) << 16);
                }
            }
        }
    }

    pub fn format(&self) -> WeightFormat {
        match self.data {
            PanelData::F32(_) => WeightFormat::F32,
            PanelData::Bf16(_) => WeightFormat::Bf16,
        }
    }

    /// Bytes of memory the panels take.
    pub fn bytes(&self) -> usize {
        match &self.data {
            PanelData::F32(s) => s.len() * 4,
            PanelData::Bf16(s) => s.len() * 2,
        }
    }

    /// Rows (inputs).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns (outputs).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of panels, `ceil(n / PANEL)`.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// All f32 panels, one after the other (None for another format).
    pub fn f32_panels(&self) -> Option<&[f32]> {
        match &self.data {
            PanelData::F32(s) => Some(s.as_slice()),
            _ => None,
        }
    }

    /// All bf16 panels (bits), one after the other (None for another format).
    pub fn bf16_panels(&self) -> Option<&[u16]> {
        match &self.data {
            PanelData::Bf16(s) => Some(s.as_slice()),
            _ => None,
        }
    }

    /// The columns of `W` that panel `j` holds: `(first, count)` (fewer than `PANEL` in a
    /// zero-padded last panel).
    pub fn columns(&self, j: usize) -> (usize, usize) {
        (j * PANEL, (self.n - j * PANEL).min(PANEL))
    }

    /// Rows `p0..p0 + rows` of panel `j` as f32 (`[rows, PANEL]` row-major) into `out`.
    pub fn panel_f32(&self, j: usize, p0: usize, rows: usize, out: &mut [f32]) {
        let s = (j * self.k + p0) * PANEL;
        let out = &mut out[..rows * PANEL];
        match &self.data {
            PanelData::F32(d) => out.copy_from_slice(&d.as_slice()[s..s + rows * PANEL]),
            PanelData::Bf16(d) => {
                for (o, &b) in out.iter_mut().zip(&d.as_slice()[s..s + rows * PANEL]) {
                    *o = f32::from_bits((b as u32) << 16);
                }
            }
        }
    }

    /// The whole matrix as `[k, n]` row-major f32 (tests and slow paths).
    pub fn to_f32_kn(&self) -> Result<Vec<f32>> {
        let (k, n) = (self.k, self.n);
        let mut out = crate::memory::zeroed(k * n, "a widened weight")?;
        let mut panel = vec![0.0f32; k * PANEL];
        for j in 0..self.panels() {
            self.panel_f32(j, 0, k, &mut panel);
            let (j0, cols) = self.columns(j);
            for p in 0..k {
                out[p * n + j0..p * n + j0 + cols]
                    .copy_from_slice(&panel[p * PANEL..p * PANEL + cols]);
            }
        }
        Ok(out)
    }
}

/// `c[m, n] = a[m, k] @ W (+ bias)`, one `[k, PANEL]` panel at a time (widened to f32) through
/// `be.matmul`, panels spread over the engine's threads: the default of
/// `Backend::matmul_panels`. A row's result depends only on that row, as far as the backend's
/// `matmul` has that property.
pub fn matmul_by_panel<B: Backend + ?Sized>(
    be: &B,
    a: &[f32],
    w: &Panels,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) {
    let (k, n) = (w.k(), w.n());
    super::init_output(c, bias, n);
    if m == 0 || n == 0 {
        return;
    }
    let cp = super::SendPtr(c.as_mut_ptr());
    crate::threads::install(|| {
        // One product buffer and one widened panel per rayon task, not per panel.
        let tmp = || (vec![0.0f32; m * PANEL], vec![0.0f32; k * PANEL]);
        (0..w.panels())
            .into_par_iter()
            .for_each_init(tmp, |(tmp, panel), j| {
                let pj: &[f32] = match w.f32_panels() {
                    Some(d) => &d[j * k * PANEL..(j + 1) * k * PANEL],
                    None => {
                        w.panel_f32(j, 0, k, panel);
                        panel
                    }
                };
                be.matmul(a, pj, None, tmp, m, k, PANEL);
                let (j0, cols) = w.columns(j);
                for (i, trow) in tmp.chunks_exact(PANEL).enumerate() {
                    for (q, &t) in trow[..cols].iter().enumerate() {
                        // SAFETY: C is m x n; panel j writes only its columns j0..j0+cols.
                        unsafe { *cp.get().add(i * n + j0 + q) += t };
                    }
                }
            })
    })
}
