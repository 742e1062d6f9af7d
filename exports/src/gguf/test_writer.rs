//! A minimal GGUF v3 writer for tests: it lays files out as llama.cpp's `gguf_writer` does
//! (header, metadata, tensor table, padding to the alignment, tensor data each padded to the
//! alignment), so the reader is tested on bytes written independently of it.

use half::f16;

use crate::gguf::reader::{Value, DEFAULT_ALIGNMENT};
use crate::gguf::types::GgmlType;

pub struct RawTensor {
    pub name: String,
    /// GGUF order (fastest first).
    pub ne: Vec<u64>,
    pub type_id: u32,
    pub bytes: Vec<u8>,
}

#[derive(Default)]
pub struct GgufWriter {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<RawTensor>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend(x.to_le_bytes()),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(items) => {
            // An empty array is written as an array of u8.
            out.extend(items.first().map_or(0, type_id).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i);
            }
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            ..Default::default()
        }
    }

    pub fn kv(&mut self, key: &str, v: Value) -> &mut Self {
        self.metadata.push((key.to_string(), v));
        self
    }

    pub fn tensor(&mut self, name: &str, ne: &[u64], ty: &str, bytes: Vec<u8>) -> &mut Self {
        let ty = GgmlType::by_name(ty).expect("known type");
        self.tensors.push(RawTensor {
            name: name.to_string(),
            ne: ne.to_vec(),
            type_id: ty.id,
            bytes,
        });
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self
            .metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT) as usize;
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend(type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend((t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.type_id.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset += t.bytes.len().div_ceil(align) * align;
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        for t in &self.tensors {
            out.extend(&t.bytes);
            out.resize(out.len().div_ceil(align) * align, 0);
        }
        out
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// f16 bytes of values that must be exactly representable in f16.
pub fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| {
            let h = f16::from_f32(x);
            assert_eq!(h.to_f32(), x, "{x} is not exact in f16");
            h.to_le_bytes()
        })
        .collect()
}

/// Q8_0 blocks of values that are exactly `q * d` with one power-of-two `d` per block of 32
/// (`d = max|x| / 127` rounded up to a power of two); asserts exactness.
pub fn q8_0_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = vec![];
    for blk in v.chunks(32) {
        let amax = blk.iter().fold(0f32, |a, x| a.max(x.abs()));
        let d = if amax == 0.0 {
            1.0
        } else {
            2f32.powi((amax / 127.0).log2().ceil() as i32)
        };
        out.extend(f16::from_f32(d).to_le_bytes());
        for &x in blk {
            let q = (x / d).round();
            assert_eq!(q * d, x, "{x} is not an integer multiple of {d}");
            out.push(q as i8 as u8);
        }
    }
    out
}
