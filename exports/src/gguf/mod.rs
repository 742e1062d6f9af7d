//! GGUF (llama.cpp's model file format): a strict reader, bit-exact dequantization of the common
//! block types, and the import of a Llama GGUF into a Hugging Face model folder
//! (`exports import --gguf FILE --out DIR`).

pub mod dequant;
pub mod import;
pub mod permute;
pub mod reader;
pub mod tokenizer;
pub mod types;

#[cfg(test)]
mod test_writer;
#[cfg(test)]
mod tests;

pub use import::{import_gguf, read_gguf_model, ImportSummary, ImportedModel};
pub use reader::{GgufFile, TensorInfo, Value};
pub use types::GgmlType;
