//! `engine`: inference with ONNX Runtime — generation, reward scoring, labeling and evaluation.
//! It links no libtorch, so inference nodes stay light.

pub mod runtime;
