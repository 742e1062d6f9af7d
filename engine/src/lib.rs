//! `engine`: inference with ONNX Runtime — generation, reward scoring, labeling and evaluation.
//! It links no libtorch, so inference nodes stay light.

pub mod bootstrap;
pub mod eval;
pub mod generate;
pub mod int8_attention;
pub mod kv_scales;
pub mod label;
pub mod metrics;
pub mod pair;
pub mod report;
pub mod reward;
pub mod runtime;
pub mod sampling;
pub mod scorer;
pub mod session;
pub mod verify;
