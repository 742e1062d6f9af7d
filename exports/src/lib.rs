//! `exports`: every format that crosses a process boundary in the PCO pipeline.
//!
//! Data flows one way: `exports` → `engine` (ONNX Runtime) and `exports` → `training` (libtorch).
//! Neither of those crates defines a file format of its own.

pub mod chat;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod dataset;
pub mod encode;
pub mod error;
pub mod fsutil;
pub mod gguf;
pub mod init;
pub mod layout;
pub mod lora;
pub mod onnx;
pub mod parquet_rows;
pub mod records;
pub mod run_layout;
pub mod tokenizer;

pub use checkpoint::{Checkpoint, DType, HostTensor};
pub use config::{ModelConfig, ModelType};
pub use encode::{TokenPolicy, Truncation};
pub use error::{Error, Result};
pub use layout::Head;
pub use records::{Completion, GenerationRecord, PairRecord, Prompt, PromptRecord, TrainRecord};
pub use tokenizer::{TokenId, Tokenizer};
