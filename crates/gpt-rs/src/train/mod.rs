//! Training GPT-2-architecture models: explicit forward/backward kernels (`kernels`), the
//! flat parameter layout with GPT-2's initialization (`params`), the trainable model
//! (`model`) and AdamW with gradient clipping (`optim`). Data loading, learning-rate schedules
//! and the training loop live in Python (`gpt_rs.train`), which calls these per step.

pub mod kernels;
pub mod model;
pub mod optim;
pub mod params;

pub use model::TrainableGpt2;
pub use optim::{clip_grad_norm, grad_norm, AdamW, AdamWConfig};
pub use params::Layout;
