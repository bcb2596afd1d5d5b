//! Weight matrices prepared once for many `x @ W` products (a model's linear layers).
//!
//! `W` (`[k, n]`: in, out) is cut into panels of `PANEL` output columns; panel `j` holds
//! `W[:, j*PANEL..(j+1)*PANEL]` as `[k, PANEL]` row-major, the last one zero-padded. This is
//! the layout the `cpu` backend's kernels read in place: the GEMM micro-kernel takes its right
//! operand straight from a panel (no packing per call), and the few-row (decode) kernel streams
//! the whole matrix front to back. Backends without their own kernel multiply panel by panel
//! (`matmul_by_panel`), each panel being a plain `[k, PANEL]` matrix.

use rayon::prelude::*;

use super::Backend;
use crate::storage::Storage;

/// Output columns per panel: two AVX-512 vectors, the `cpu` GEMM's register tile width.
pub const PANEL: usize = 32;

/// A `[k, n]` matrix stored as panels of `PANEL` columns (see the module docs).
pub struct Panels {
    data: Storage<f32>,
    k: usize,
    n: usize,
}

impl Panels {
    /// Lays out `w` (`[k, n]` row-major, e.g. a Hugging Face Conv1D weight) as panels, in
    /// weight memory (`Storage::weights_with`), on the engine's threads. `Error::Memory` if
    /// the memory cannot be had.
    pub fn from_kn(w: &[f32], k: usize, n: usize) -> crate::Result<Self> {
        assert_eq!(w.len(), k * n, "Panels::from_kn: slice is not [k, n]");
        let panel = k * PANEL;
        // Zero-filled memory: the padding columns of the last panel stay zero.
        let data = Storage::weights_with(n.div_ceil(PANEL) * panel, "weight panels", |dst| {
            crate::threads::install(|| {
                dst.par_chunks_mut(panel.max(1))
                    .enumerate()
                    .for_each(|(j, out)| {
                        let (j0, j1) = (j * PANEL, (j * PANEL + PANEL).min(n));
                        for (p, o) in out.chunks_exact_mut(PANEL).enumerate() {
                            o[..j1 - j0].copy_from_slice(&w[p * n + j0..p * n + j1]);
                        }
                    })
            })
        })?;
        Ok(Self { data, k, n })
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

    /// All panels, one after the other.
    pub fn as_slice(&self) -> &[f32] {
        self.data.as_slice()
    }

    /// The columns of `W` that panel `j` holds: `(first, count)` (fewer than `PANEL` in a
    /// zero-padded last panel).
    pub fn columns(&self, j: usize) -> (usize, usize) {
        (j * PANEL, (self.n - j * PANEL).min(PANEL))
    }

    /// Panel `j` as a `[k, PANEL]` row-major matrix.
    pub fn panel(&self, j: usize) -> &[f32] {
        let len = self.k * PANEL;
        &self.data.as_slice()[j * len..(j + 1) * len]
    }
}

/// `c[m, n] = a[m, k] @ W (+ bias)`, one `[k, PANEL]` panel at a time through `be.matmul`,
/// panels spread over the engine's threads: the default of `Backend::matmul_panels`. A row's
/// result depends only on that row, as far as the backend's `matmul` has that property.
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
        // One product buffer per rayon task, not per panel.
        let tmp = || vec![0.0f32; m * PANEL];
        (0..w.panels())
            .into_par_iter()
            .for_each_init(tmp, |tmp, j| {
                be.matmul(a, w.panel(j), None, tmp, m, k, PANEL);
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
