//! gpt_rs engine: tensors, CPU backends, functional ops and neural-network layers.
//!
//! Dependencies point one way: `tensor`/`backend` <- `ops` <- `nn` <- `models` <- `generate` / `train`
//! (`checkpoint` and `tokenizer` are leaves). Nothing here knows
//! about Python; the `gpt-rs-py` crate translates.

pub mod backend;
pub mod chat;
pub mod checkpoint;
pub mod error;
pub mod generate;
pub mod memory;
pub mod models;
pub mod nn;
pub mod ops;
pub mod storage;
pub mod tensor;
pub mod threads;
pub mod tokenizer;
pub mod tokenizer_gguf;
pub mod train;

pub use backend::{Backend, BackendKind};
pub use error::{Error, Result};
pub use tensor::{DType, Tensor};
