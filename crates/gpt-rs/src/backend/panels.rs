//! Weight matrices prepared once at load for many `x @ W` products (a model's linear layers).
//!
//! `W` (`[k, n]`: in, out) is cut into panels of `PANEL` output columns; panel `j` holds
//! `W[:, j*PANEL..(j+1)*PANEL]` as `[k, PANEL]` row-major, the last one zero-padded. This is
//! the layout the `cpu` backend's kernels read in place: the GEMM micro-kernel takes its right
//! operand straight from a panel (no packing per call), and the few-row (decode) kernel streams
//! the whole matrix front to back. Backends without their own kernel multiply panel by panel
//! (`matmul_by_panel`), each panel widened to a plain `[k, PANEL]` f32 matrix.
//!
//! The elements are stored in a `WeightFormat`: f32, bf16 (half the bytes a decode step
//! streams), or a block-quantized GGML format (`quant`). Activations stay f32 and every
//! product accumulates in f32. A quantized weight keeps the checkpoint's own layout, whole
//! rows of `W^T` (one output column each, `k / ELEMS` blocks), so panel `j` is the 32
//! consecutive rows `32j..32j+32`, contiguous in memory; the last panel is padded with zero
//! blocks.

use rayon::prelude::*;

use super::quant::{repack, tile, QuantType};
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
    /// A GGML block format (Q8_0, Q4_K ...), in rows of whole blocks.
    Quant(QuantType),
}

impl WeightFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Quant(t) => t.name(),
        }
    }

    /// `f32`, `bf16` or a quantized type's name (`q8_0`, `q4_k` ...).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "f32" | "float32" => Some(Self::F32),
            "bf16" | "bfloat16" => Some(Self::Bf16),
            other => QuantType::parse(other).map(Self::Quant),
        }
    }
}

/// The element types a checkpoint stores a matrix in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceDtype {
    F32,
    F16,
    Bf16,
    /// Rows of GGML blocks (always stored `[n, k]`, blocks along `k`).
    Quant(QuantType),
}

impl SourceDtype {
    /// Bytes of a `[k, n]` matrix of this type (None if `k` is not a whole number of blocks
    /// or the size overflows).
    pub fn matrix_bytes(self, k: usize, n: usize) -> Option<usize> {
        match self {
            Self::F32 => k.checked_mul(n)?.checked_mul(4),
            Self::F16 | Self::Bf16 => k.checked_mul(n)?.checked_mul(2),
            Self::Quant(t) if k.is_multiple_of(t.block_elems()) => t.row_bytes(k).checked_mul(n),
            Self::Quant(_) => None,
        }
    }
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
            SourceDtype::Quant(t) => {
                // Slow (a block per element): for the odd 1-D tensor, never for matrices.
                let (e, bb) = (t.block_elems(), t.block_bytes());
                let mut block = [0.0f32; 256];
                t.dequantize(&b[index / e * bb..][..bb], &mut block);
                block[index % e]
            }
        }
    }

    /// Row `j` of a quantized source (output column `j`: its `k` weights) as bytes.
    fn quant_row(&self, t: QuantType, j: usize) -> &[u8] {
        let rb = t.row_bytes(self.k);
        &self.bytes[j * rb..(j + 1) * rb]
    }

    /// Column `j` of `W` (`k` values) as f32 into `out`.
    fn column_f32(&self, j: usize, out: &mut [f32]) {
        match self.dtype {
            SourceDtype::Quant(t) => t.dequantize(self.quant_row(t, j), &mut out[..self.k]),
            _ => {
                for (p, o) in out[..self.k].iter_mut().enumerate() {
                    *o = self.get(self.index(p, j));
                }
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
    /// Rows of `row_bytes` bytes, `panels * PANEL` of them, laid out as `layout` says.
    Quant {
        ty: QuantType,
        rows: Storage<u8>,
        row_bytes: usize,
        layout: QuantLayout,
    },
}

/// How the rows of a quantized weight are laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantLayout {
    /// As the GGUF file stores them.
    Gguf,
    /// Each row contiguous, regrouped for wide loads (`quant::repack`).
    Rows,
    /// Tiles of 16 rows interleaved (`quant::tile`): for CPUs with AVX-512 VNNI.
    Tiles,
}

impl QuantLayout {
    /// The layout the `cpu` backend's kernels read best at the current SIMD level.
    fn best(t: QuantType, k: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use super::cpu::simd::{level, SimdLevel};
            if level() == SimdLevel::Avx512 && tile::tiles(t, k) && super::cpu::tiles_available() {
                return Self::Tiles;
            }
        }
        if repack::repacks(t, k) {
            Self::Rows
        } else {
            Self::Gguf
        }
    }
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

/// Fills `dst` (all panels) column by column: `column(j, buf)` writes column `j`'s `k` values
/// as f32, `conv` stores each. For sources read a row of `W^T` at a time (quantized blocks).
fn fill_by_column<T: Copy + Send + Sync>(
    dst: &mut [T],
    k: usize,
    n: usize,
    column: impl Fn(usize, &mut [f32]) + Sync,
    conv: impl Fn(f32) -> T + Sync,
) {
    let panel = k * PANEL;
    crate::threads::install(|| {
        dst.par_chunks_mut(panel.max(1))
            .enumerate()
            .for_each(|(jp, out)| {
                let mut col = vec![0.0f32; k];
                let (j0, j1) = (jp * PANEL, (jp * PANEL + PANEL).min(n));
                for (q, j) in (j0..j1).enumerate() {
                    column(j, &mut col);
                    for (p, &v) in col.iter().enumerate() {
                        out[p * PANEL + q] = conv(v);
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
    /// theirs): a fused projection, such as q, k and v in one product. A quantized `format`
    /// takes sources of that same type (copied block for block) or float sources (quantized,
    /// for the types with a quantizer); any source converts to f32 or bf16.
    pub fn prepare_stacked(srcs: &[WeightSource<'_>], format: WeightFormat) -> Result<Self> {
        let k = srcs.first().map_or(0, |s| s.k);
        let mut starts = Vec::with_capacity(srcs.len());
        let mut n = 0;
        for src in srcs {
            if src.k != k || src.dtype.matrix_bytes(src.k, src.n) != Some(src.bytes.len()) {
                return Err(Error::Shape(format!(
                    "weight of {} bytes is not [{}, {}] of {:?} (stacked with k = {k})",
                    src.bytes.len(),
                    src.k,
                    src.n,
                    src.dtype
                )));
            }
            if matches!(src.dtype, SourceDtype::Quant(_)) && !src.out_in {
                return Err(Error::Value(
                    "quantized weights are stored [out, in]".into(),
                ));
            }
            starts.push(n);
            n += src.n;
        }
        // Column j of the stack is column j - starts[s] of source s.
        let locate = |j: usize| {
            let s = starts.partition_point(|&st| st <= j) - 1;
            (&srcs[s], j - starts[s])
        };
        let any_quant = srcs
            .iter()
            .any(|s| matches!(s.dtype, SourceDtype::Quant(_)));
        let len = n.div_ceil(PANEL) * k * PANEL;
        let data = match format {
            WeightFormat::Quant(t) => Self::prepare_quant(srcs, t, k, n, locate)?,
            WeightFormat::F32 if any_quant => {
                PanelData::F32(Storage::weights_with(len, "weight panels", |d| {
                    fill_by_column(
                        d,
                        k,
                        n,
                        |j, col| {
                            let (src, j) = locate(j);
                            src.column_f32(j, col)
                        },
                        |v| v,
                    )
                })?)
            }
            WeightFormat::Bf16 if any_quant => {
                PanelData::Bf16(Storage::weights_with(len, "bf16 weight panels", |d| {
                    fill_by_column(
                        d,
                        k,
                        n,
                        |j, col| {
                            let (src, j) = locate(j);
                            src.column_f32(j, col)
                        },
                        |v| half::bf16::from_f32(v).to_bits(),
                    )
                })?)
            }
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

    /// Rows of `t` blocks for the stacked sources: copied when stored as `t`, quantized
    /// from float sources.
    fn prepare_quant<'s, 'a: 's>(
        srcs: &'s [WeightSource<'a>],
        t: QuantType,
        k: usize,
        n: usize,
        locate: impl Fn(usize) -> (&'s WeightSource<'a>, usize) + Sync,
    ) -> Result<PanelData> {
        if !k.is_multiple_of(t.block_elems()) {
            return Err(Error::Shape(format!(
                "cannot store a weight with {k} inputs as {}: rows must be a multiple of {} \
                 weights",
                t.name(),
                t.block_elems()
            )));
        }
        for s in srcs {
            match s.dtype {
                SourceDtype::Quant(st) if st != t => {
                    return Err(Error::Value(format!(
                        "cannot convert {} weights to {} (quantized weights are kept as stored)",
                        st.name(),
                        t.name()
                    )))
                }
                SourceDtype::Quant(_) => {}
                _ if !t.can_quantize() => {
                    return Err(Error::Value(format!(
                        "quantizing to {} is not supported (supported: {})",
                        t.name(),
                        QuantType::quantizable_names()
                    )))
                }
                _ => {}
            }
        }
        let rb = t.row_bytes(k);
        let layout = QuantLayout::best(t, k);
        let orb = match layout {
            QuantLayout::Gguf => rb,
            _ => repack::row_bytes(t, k),
        };
        let rows = n.div_ceil(PANEL) * PANEL;
        let len = rows as u128 * orb as u128;
        let len = usize::try_from(len)
            .map_err(|_| Error::Memory(format!("{len} bytes of quantized weights")))?;
        let data = Storage::weights_with(len, "quantized weight rows", |d: &mut [u8]| {
            crate::threads::install(|| {
                d.par_chunks_mut((PANEL * orb).max(1))
                    .enumerate()
                    .for_each(|(jp, out)| {
                        // The panel's rows in the GGUF layout first (zero blocks, which
                        // dequantize to zeros, past `n`), then laid out.
                        let mut col = vec![0.0f32; k];
                        let mut gguf = vec![0u8; PANEL * rb];
                        for (q, target) in gguf.chunks_exact_mut(rb.max(1)).enumerate() {
                            let j = jp * PANEL + q;
                            if j >= n {
                                break;
                            }
                            let (src, j) = locate(j);
                            match src.dtype {
                                SourceDtype::Quant(_) => {
                                    target.copy_from_slice(src.quant_row(t, j))
                                }
                                _ => {
                                    src.column_f32(j, &mut col);
                                    t.quantize_row(&col, target);
                                }
                            }
                        }
                        match layout {
                            QuantLayout::Gguf => out.copy_from_slice(&gguf),
                            QuantLayout::Rows => {
                                for (g, o) in gguf.chunks_exact(rb).zip(out.chunks_exact_mut(orb)) {
                                    repack::repack_row(t, k, g, o);
                                }
                            }
                            QuantLayout::Tiles => {
                                let (tg, to) = (tile::TILE * rb, tile::TILE * orb);
                                for (g, o) in gguf.chunks_exact(tg).zip(out.chunks_exact_mut(to)) {
                                    tile::tile(t, k, g, o);
                                }
                            }
                        }
                    })
            })
        })?;
        Ok(PanelData::Quant {
            ty: t,
            rows: data,
            row_bytes: orb,
            layout,
        })
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
            PanelData::Quant { ty, .. } => {
                let mut row = vec![0u8; ty.row_bytes(self.k)];
                ty.dequantize(self.gguf_row(j, &mut row), &mut out[..self.k])
            }
        }
    }

    /// Row `j` of a quantized weight in the GGUF layout: in place, or unrepacked into `buf`
    /// (`row_bytes(k)` bytes).
    pub fn gguf_row<'s>(&'s self, j: usize, buf: &'s mut [u8]) -> &'s [u8] {
        let PanelData::Quant {
            ty,
            rows,
            row_bytes,
            layout,
        } = &self.data
        else {
            panic!("gguf_row of a float weight")
        };
        let rows = rows.as_slice();
        match layout {
            QuantLayout::Gguf => &rows[j * row_bytes..(j + 1) * row_bytes],
            QuantLayout::Rows => {
                repack::unrepack_row(*ty, self.k, &rows[j * row_bytes..(j + 1) * row_bytes], buf);
                buf
            }
            QuantLayout::Tiles => {
                let (t0, tb) = (j / tile::TILE * tile::TILE, tile::TILE * row_bytes);
                let tile = &rows[t0 * row_bytes..t0 * row_bytes + tb];
                tile::untile_row(*ty, self.k, tile, j % tile::TILE, buf);
                buf
            }
        }
    }

    pub fn format(&self) -> WeightFormat {
        match self.data {
            PanelData::F32(_) => WeightFormat::F32,
            PanelData::Bf16(_) => WeightFormat::Bf16,
            PanelData::Quant { ty, .. } => WeightFormat::Quant(ty),
        }
    }

    /// Bytes of memory the panels take.
    pub fn bytes(&self) -> usize {
        match &self.data {
            PanelData::F32(s) => s.len() * 4,
            PanelData::Bf16(s) => s.len() * 2,
            PanelData::Quant { rows, .. } => rows.len(),
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

    /// A quantized weight's type, rows (`panels() * PANEL` rows of whole blocks, one per
    /// output column, zero blocks past `n`), bytes per row and their layout; None for
    /// another format.
    pub fn quant_rows(&self) -> Option<(QuantType, &[u8], usize, QuantLayout)> {
        match &self.data {
            PanelData::Quant {
                ty,
                rows,
                row_bytes,
                layout,
            } => Some((*ty, rows.as_slice(), *row_bytes, *layout)),
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
            PanelData::Quant { ty, .. } => {
                let (e, bb) = (ty.block_elems(), ty.block_bytes());
                let mut block = [0.0f32; 256];
                let mut buf = vec![0u8; ty.row_bytes(self.k)];
                let (b0, b1) = (p0 / e, (p0 + rows).div_ceil(e));
                for q in 0..PANEL {
                    let row = self.gguf_row(j * PANEL + q, &mut buf);
                    for b in b0..b1 {
                        ty.dequantize(&row[b * bb..(b + 1) * bb], &mut block[..e]);
                        let (lo, hi) = ((b * e).max(p0), ((b + 1) * e).min(p0 + rows));
                        for p in lo..hi {
                            out[(p - p0) * PANEL + q] = block[p - b * e];
                        }
                    }
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
