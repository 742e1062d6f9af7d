//! Reading a GGUF file (llama.cpp's single-file model format, versions 2 and 3, little-endian).
//!
//! Two phases, as in candle's `gguf_file.rs`: [`GgufFile::open`] parses the header, the metadata
//! and the tensor table and checks that every tensor lies inside the file; the tensor bytes are
//! then read on demand from the memory map ([`GgufFile::tensor_bytes`], [`GgufFile::dequantize`]).
//!
//! Every length and offset in the file is checked against the bytes that are really there before
//! it is used, so a truncated or corrupt file gives one error naming the file and what was being
//! read, never a panic or a huge allocation.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::gguf::dequant;
use crate::gguf::types::GgmlType;

/// `GGUF` read as a little-endian u32.
const MAGIC: [u8; 4] = *b"GGUF";
/// Versions whose layout this reader knows (2 and 3 differ only in big-endian support, which v3
/// signals by a byte-swapped version number that we then refuse).
const SUPPORTED_VERSIONS: [u32; 2] = [2, 3];
/// The data section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value (GGUF value types 0–12).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The GGUF name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "uint8",
            Value::I8(_) => "int8",
            Value::U16(_) => "uint16",
            Value::I16(_) => "int16",
            Value::U32(_) => "uint32",
            Value::I32(_) => "int32",
            Value::F32(_) => "float32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "uint64",
            Value::I64(_) => "int64",
            Value::F64(_) => "float64",
        }
    }

    /// A non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// A float as stored: f32 values are widened exactly, so `1e-5f32` stays `9.99999974e-6`,
    /// the value llama.cpp (and transformers' GGUF loader) compute with.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: fastest-varying dimension first (`ne[0]` is the row length).
    pub ne: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.ne.iter().product::<u64>() as usize
    }

    /// Row-major shape (slowest dimension first): GGUF `[576, 49152]` is a `[49152, 576]` matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn byte_len(&self) -> usize {
        self.numel() / self.ggml_type.block_elems * self.ggml_type.block_bytes
    }
}

/// The bytes a GGUF is parsed from: a memory map of the file, or a buffer (tests).
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An opened GGUF file: metadata and tensor table parsed, tensor bytes mapped.
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    pub version: u32,
    pub alignment: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    index: BTreeMap<String, usize>,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
    tensor_index: BTreeMap<String, usize>,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian cursor over the header.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, message: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                self.err(format!(
                "file is truncated: {what} needs {n} bytes at offset {} but the file has {} bytes",
                self.pos,
                self.buf.len()
            ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        Ok(s.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must be backed by at least `min_item_bytes` bytes per item still in the file,
    /// checked before anything is allocated for it.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item_bytes as u64) > left {
            return Err(self.err(format!(
                "file is truncated or corrupt: {what} is {n} at offset {}, more than the {left} bytes left can hold",
                self.pos - 8
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, 1)?;
        let start = self.pos;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.err(format!("{what} at offset {start} is not UTF-8: {e}")))
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(self.err(format!(
                        "{what}: bool byte {b} at offset {} is not 0 or 1",
                        self.pos - 1
                    )))
                }
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 8 {
                    return Err(self.err(format!("{what}: arrays nested more than 8 deep")));
                }
                let item_ty = self.u32(what)?;
                let min = match item_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => {
                        return Err(self.err(format!("{what}: unknown array item type {other}")))
                    }
                };
                let n = self.count(what, min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_ty, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(self.err(format!(
                    "{what}: unknown metadata value type {other} at offset {}",
                    self.pos - 4
                )))
            }
        })
    }
}

impl GgufFile {
    /// Map and parse `path`. The tensor bytes are not read until asked for.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).at(path)?;
        // SAFETY: the map is only read; a file changed by another process while mapped could
        // change the values we read, which the bounds checks below make memory-safe for slices.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.at(path)?;
        Self::parse(path, Bytes::Mapped(mmap))
    }

    /// Parse a GGUF held in memory; `path` only names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(path, Bytes::Owned(bytes))
    }

    fn parse(path: &Path, bytes: Bytes) -> Result<Self> {
        let mut c = Cursor {
            buf: &bytes,
            pos: 0,
            path,
        };
        let magic = c.array::<4>("magic")?;
        if magic != MAGIC {
            return Err(c.err(format!(
                "not a GGUF file: magic bytes are {magic:02x?}, expected \"GGUF\" {MAGIC:02x?}"
            )));
        }
        let version = c.u32("version")?;
        if !SUPPORTED_VERSIONS.contains(&version) {
            let hint = if version.swap_bytes() <= 3 {
                " (a big-endian file; only little-endian GGUF is supported)"
            } else {
                ""
            };
            return Err(c.err(format!(
                "unsupported GGUF version {version}{hint}; supported: {SUPPORTED_VERSIONS:?}"
            )));
        }
        // Each tensor entry needs at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset)
        // bytes, each metadata entry at least 8 (key length) + 4 (type) + 1.
        let n_tensors = c.count("tensor count", 24)?;
        let n_kv = c.count("metadata count", 13)?;
        let mut metadata = Vec::with_capacity(n_kv);
        let mut index = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let ty = c.u32(&format!("type of metadata `{key}`"))?;
            let value = c.value(ty, &format!("metadata `{key}`"), 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(c.err(format!("metadata key `{key}` appears twice")));
            }
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(c.err(format!(
                        "general.alignment = {v:?} is not a positive power of two"
                    )))
                }
            },
        };
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = BTreeMap::new();
        for i in 0..n_tensors {
            let name = c.string(&format!("name of tensor #{i}"))?;
            let what = format!("tensor `{name}`");
            let n_dims = c.u32(&what)?;
            if !(1..=4).contains(&n_dims) {
                return Err(c.err(format!("{what}: {n_dims} dimensions (GGUF allows 1 to 4)")));
            }
            let ne = (0..n_dims)
                .map(|_| c.u64(&what))
                .collect::<Result<Vec<u64>>>()?;
            let type_id = c.u32(&what)?;
            let ggml_type = GgmlType::from_id(type_id)
                .ok_or_else(|| c.err(format!("{what}: unsupported tensor type id {type_id}")))?;
            let offset = c.u64(&what)?;
            let numel = ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            match numel {
                Some(n) if n > 0 && n <= isize::MAX as u64 / 8 => {}
                _ => return Err(c.err(format!("{what}: invalid dimensions {ne:?}"))),
            }
            if ne[0] % ggml_type.block_elems as u64 != 0 {
                return Err(c.err(format!(
                    "{what}: row length {} is not a multiple of the {ggml_type} block size {}",
                    ne[0], ggml_type.block_elems
                )));
            }
            if offset % alignment != 0 {
                return Err(c.err(format!(
                    "{what}: data offset {offset} is not aligned to {alignment}"
                )));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(c.err(format!("tensor `{name}` appears twice")));
            }
            tensors.push(TensorInfo {
                name,
                ne,
                ggml_type,
                offset,
            });
        }
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|e| e.checked_add(t.byte_len() as u64));
            if end.is_none_or(|e| e > file_len) {
                let end = end.map_or_else(|| "beyond 2^64".to_string(), |e| e.to_string());
                return Err(c.err(format!(
                    "file is truncated: tensor `{}` ({}, {:?}) ends at byte {end} but the file has {file_len} bytes",
                    t.name, t.ggml_type, t.ne
                )));
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            bytes,
            version,
            alignment,
            metadata,
            index,
            tensors,
            tensor_index,
            data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An error about this file.
    pub fn err(&self, message: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| self.err(format!("metadata `{key}` is missing")))
    }

    fn wrong_type(&self, key: &str, expected: &str, got: &Value) -> Error {
        self.err(format!(
            "metadata `{key}`: expected {expected}, got {}",
            got.type_name()
        ))
    }

    /// A required non-negative integer.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.required(key)?;
        v.as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| self.wrong_type(key, "an unsigned integer", v))
    }

    /// An optional non-negative integer (absent is `None`, the wrong type is an error).
    pub fn get_usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.get_usize(key).map(Some),
        }
    }

    pub fn get_f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a float", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.required(key)?;
        v.as_str()
            .ok_or_else(|| self.wrong_type(key, "a string", v))
    }

    pub fn get_str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.get_str(key).map(Some),
        }
    }

    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a bool", v)),
        }
    }

    /// A required array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let v = self.required(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong_type(key, "an array of strings", v))?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str().ok_or_else(|| {
                    self.err(format!(
                        "metadata `{key}`[{i}]: expected a string, got {}",
                        item.type_name()
                    ))
                })
            })
            .collect()
    }

    /// An optional array of integers.
    pub fn get_i64_array_opt(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong_type(key, "an array of integers", v))?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_i64().ok_or_else(|| {
                    self.err(format!(
                        "metadata `{key}`[{i}]: expected an integer, got {}",
                        item.type_name()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw (possibly quantized) bytes of a tensor; in bounds by construction (checked in `open`).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + t.offset) as usize;
        &self.bytes[start..start + t.byte_len()]
    }

    /// A tensor's values as f32, bit-identical to gguf-py's `dequantize`.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        dequant::dequantize(t.ggml_type, self.tensor_bytes(t), t.numel())
            .map_err(|message| self.err(format!("tensor `{}`: {message}", t.name)))
    }
}
