//! Block-quantized weight formats (llama.cpp's GGML types): a row of `k` weights is stored as
//! `k / ELEMS` blocks of `BYTES` bytes, each with its own scale(s) in f16 and small integers.
//!
//! Each format is one `Block` impl (as ggml's per-type traits): its byte layout and its
//! reference dequantization, in f32 with the operations in the order the `gguf` Python
//! package's `gguf.quants` applies them, so results are bit-identical to it (tested against
//! it in `tests/test_gguf.py`). The round-to-nearest formats also quantize, bit-identical to
//! the same package. Fast products with quantized weights live in the backends.

mod kquantize;
mod kquants;
mod legacy;
pub mod repack;
pub mod tile;

pub use kquants::{pack_scale_min_k4, scale_min_k4, Q2K, Q3K, Q4K, Q5K, Q6K, QK_K};
pub use legacy::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};

/// One block format.
pub trait Block {
    /// Weights per block.
    const ELEMS: usize;
    /// Bytes per block.
    const BYTES: usize;
    /// Weights per sub-block: the span of one (scale, min) pair of `unpack`.
    const SUB: usize;
    /// Dequantizes one block (`BYTES` bytes) into `out` (`ELEMS` values).
    fn dequantize(block: &[u8], out: &mut [f32]);
    /// The block as small integers and per-sub-block factors: weight `i` is
    /// `scale[i / SUB] * q[i] - min[i / SUB]` (up to f32 rounding). Integer dot products
    /// with quantized activations start from this form.
    fn unpack(block: &[u8], u: &mut Unpacked);
}

/// A block in integer form (see `Block::unpack`); sized for the largest block.
pub struct Unpacked {
    pub q: [i8; 256],
    pub scale: [f32; 16],
    pub min: [f32; 16],
}

impl Default for Unpacked {
    fn default() -> Self {
        Self {
            q: [0; 256],
            scale: [0.0; 16],
            min: [0.0; 16],
        }
    }
}

/// A format gpt_rs quantizes to: the round-to-nearest formats as `gguf.quants` does (no
/// search), Q4_K/Q5_K/Q6_K by a least-squares search (`kquantize`).
pub trait Quantize: Block {
    /// Quantizes `ELEMS` values into one block of `BYTES` bytes.
    fn quantize(x: &[f32], block: &mut [u8]);
}

/// The block formats gpt_rs stores and multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

/// Runs `$body` with `$B` bound to the `Block` type of `$ty`.
macro_rules! with_block {
    ($ty:expr, $B:ident => $body:expr) => {
        match $ty {
            QuantType::Q4_0 => {
                type $B = Q4_0;
                $body
            }
            QuantType::Q4_1 => {
                type $B = Q4_1;
                $body
            }
            QuantType::Q5_0 => {
                type $B = Q5_0;
                $body
            }
            QuantType::Q5_1 => {
                type $B = Q5_1;
                $body
            }
            QuantType::Q8_0 => {
                type $B = Q8_0;
                $body
            }
            QuantType::Q2K => {
                type $B = Q2K;
                $body
            }
            QuantType::Q3K => {
                type $B = Q3K;
                $body
            }
            QuantType::Q4K => {
                type $B = Q4K;
                $body
            }
            QuantType::Q5K => {
                type $B = Q5K;
                $body
            }
            QuantType::Q6K => {
                type $B = Q6K;
                $body
            }
        }
    };
}

impl QuantType {
    pub const ALL: [QuantType; 10] = [
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q2K,
        Self::Q3K,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
    ];

    /// The name llama.cpp and `load_model(dtype=...)` use, lower case (`q4_k`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q8_0 => "q8_0",
            Self::Q2K => "q2_k",
            Self::Q3K => "q3_k",
            Self::Q4K => "q4_k",
            Self::Q5K => "q5_k",
            Self::Q6K => "q6_k",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// The `ggml_type` id GGUF files store.
    pub fn ggml_type(self) -> u32 {
        match self {
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2K => 10,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
        }
    }

    pub fn from_ggml_type(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ggml_type() == id)
    }

    /// Weights per sub-block (`Block::SUB`).
    pub fn sub_elems(self) -> usize {
        with_block!(self, B => B::SUB)
    }

    /// One block in integer form (`Block::unpack`).
    pub fn unpack(self, block: &[u8], u: &mut Unpacked) {
        with_block!(self, B => B::unpack(block, u))
    }

    /// Weights per block.
    pub fn block_elems(self) -> usize {
        with_block!(self, B => B::ELEMS)
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        with_block!(self, B => B::BYTES)
    }

    /// Bytes of a row of `k` weights (`k` a multiple of `block_elems`).
    pub fn row_bytes(self, k: usize) -> usize {
        k / self.block_elems() * self.block_bytes()
    }

    /// Whether `quantize_row` supports this type.
    pub fn can_quantize(self) -> bool {
        matches!(
            self,
            Self::Q4_0
                | Self::Q4_1
                | Self::Q5_0
                | Self::Q5_1
                | Self::Q8_0
                | Self::Q4K
                | Self::Q5K
                | Self::Q6K
        )
    }

    /// The names of the types `quantize_row` supports, for messages.
    pub fn quantizable_names() -> String {
        let names: Vec<&str> = Self::ALL
            .into_iter()
            .filter(|t| t.can_quantize())
            .map(Self::name)
            .collect();
        names.join(", ")
    }

    /// Dequantizes whole blocks: `blocks.len() / block_bytes` blocks into as many
    /// `block_elems` values of `out`.
    pub fn dequantize(self, blocks: &[u8], out: &mut [f32]) {
        with_block!(self, B => {
            for (b, o) in blocks.chunks_exact(B::BYTES).zip(out.chunks_exact_mut(B::ELEMS)) {
                B::dequantize(b, o);
            }
        })
    }

    /// Quantizes a row (a multiple of `block_elems` values) into `out` (`row_bytes` bytes).
    /// Panics for a type without a quantizer (`can_quantize`); callers check first.
    pub fn quantize_row(self, x: &[f32], out: &mut [u8]) {
        fn run<B: Quantize>(x: &[f32], out: &mut [u8]) {
            for (v, b) in x.chunks_exact(B::ELEMS).zip(out.chunks_exact_mut(B::BYTES)) {
                B::quantize(v, b);
            }
        }
        match self {
            Self::Q4_0 => run::<Q4_0>(x, out),
            Self::Q4_1 => run::<Q4_1>(x, out),
            Self::Q5_0 => run::<Q5_0>(x, out),
            Self::Q5_1 => run::<Q5_1>(x, out),
            Self::Q8_0 => run::<Q8_0>(x, out),
            Self::Q4K => run::<Q4K>(x, out),
            Self::Q5K => run::<Q5K>(x, out),
            Self::Q6K => run::<Q6K>(x, out),
            other => panic!("quantize_row: no quantizer for {}", other.name()),
        }
    }
}

/// The f16 at `b[i..i + 2]` as f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `v` rounded to f16, little-endian, into `b[i..i + 2]`.
#[inline(always)]
pub(crate) fn put_f16(b: &mut [u8], i: usize, v: f32) {
    b[i..i + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
}
