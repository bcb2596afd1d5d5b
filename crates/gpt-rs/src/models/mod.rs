//! Models: one per file, forward readable top to bottom.

pub mod gpt2;
