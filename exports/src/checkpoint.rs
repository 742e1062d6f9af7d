//! Model weights in Hugging Face layout: `model.safetensors`, or shards
//! `model-0000N-of-0000M.safetensors` with `model.safetensors.index.json`.
//!
//! Tensors are held as plain host buffers ([`HostTensor`]); the training crate turns them into
//! libtorch tensors and the ONNX writer into initializers, so neither needs the other.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;
use serde_json::{json, Value};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    I64,
    I32,
    U8,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
            DType::U8 => 1,
        }
    }

    fn to_st(self) -> StDtype {
        match self {
            DType::F32 => StDtype::F32,
            DType::F16 => StDtype::F16,
            DType::BF16 => StDtype::BF16,
            DType::I64 => StDtype::I64,
            DType::I32 => StDtype::I32,
            DType::U8 => StDtype::U8,
        }
    }

    fn from_st(d: StDtype) -> Option<Self> {
        Some(match d {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            StDtype::I64 => DType::I64,
            StDtype::I32 => DType::I32,
            StDtype::U8 => DType::U8,
            _ => return None,
        })
    }
}

/// A tensor in host memory: little-endian bytes, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl HostTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape {shape:?} does not match {} values; this is a bug",
            values.len()
        );
        let mut data = Vec::with_capacity(values.len() * 4);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        HostTensor {
            dtype: DType::F32,
            shape,
            data,
        }
    }

    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape mismatch; this is a bug"
        );
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        HostTensor {
            dtype: DType::I64,
            shape,
            data,
        }
    }

    /// The values as f32, converting from f16/bf16 where needed.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let d = &self.data;
        Ok(match self.dtype {
            DType::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => d
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::Invalid(format!(
                    "tensor of type {other:?} is not floating point"
                )))
            }
        })
    }

    pub fn to_i64(&self) -> Result<Vec<i64>> {
        match self.dtype {
            DType::I64 => Ok(self
                .data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("chunk of 8")))
                .collect()),
            other => Err(Error::Invalid(format!(
                "tensor of type {other:?} is not int64"
            ))),
        }
    }
}

/// Named tensors in a deterministic (sorted) order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    pub tensors: BTreeMap<String, HostTensor>,
    /// Where it was read from, for error messages.
    pub source: PathBuf,
}

impl Checkpoint {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, t: HostTensor) {
        self.tensors.insert(name.into(), t);
    }

    pub fn get(&self, name: &str) -> Result<&HostTensor> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            file: self.source.clone(),
        })
    }

    /// A tensor that must have `shape`.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<&HostTensor> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                got: t.shape.clone(),
            });
        }
        Ok(t)
    }

    /// Read the weights of a model folder (single file or sharded), or one `.safetensors` file.
    pub fn load(path: &Path) -> Result<Self> {
        let mut ckpt = Checkpoint {
            tensors: BTreeMap::new(),
            source: path.to_path_buf(),
        };
        let files = if path.is_dir() {
            shard_files(path)?
        } else {
            vec![path.to_path_buf()]
        };
        for file in files {
            read_safetensors_into(&file, &mut ckpt.tensors)?;
        }
        Ok(ckpt)
    }

    /// Write into `dir` as `model.safetensors`, or as shards of at most `max_shard_bytes` with an
    /// index when the weights are larger. Each file is written to a temporary name and renamed.
    pub fn save(&self, dir: &Path, max_shard_bytes: Option<usize>) -> Result<()> {
        fs::create_dir_all(dir).at(dir)?;
        let limit = max_shard_bytes.unwrap_or(usize::MAX);
        let mut shards: Vec<Vec<&str>> = vec![vec![]];
        let mut size = 0usize;
        for (name, t) in &self.tensors {
            let n = t.data.len();
            if size > 0 && size + n > limit {
                shards.push(vec![]);
                size = 0;
            }
            shards.last_mut().expect("non-empty").push(name);
            size += n;
        }
        // Remove weights of an older layout so a folder never holds two versions.
        for old in shard_files(dir).unwrap_or_default() {
            fs::remove_file(&old).at(&old)?;
        }
        let _ = fs::remove_file(dir.join(INDEX_FILE));
        if shards.len() == 1 {
            return self.write_file(&dir.join(SINGLE_FILE), &shards[0]);
        }
        let total = shards.len();
        let mut weight_map = serde_json::Map::new();
        for (i, names) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, total);
            self.write_file(&dir.join(&file), names)?;
            for n in names {
                weight_map.insert((*n).to_string(), json!(file));
            }
        }
        let total_size: usize = self.tensors.values().map(|t| t.data.len()).sum();
        let index = json!({"metadata": {"total_size": total_size}, "weight_map": weight_map});
        fsutil::write_atomic(
            &dir.join(INDEX_FILE),
            serde_json::to_string_pretty(&index)
                .expect("serializes")
                .as_bytes(),
        )
    }

    /// Write every tensor into the one safetensors file `path` (atomically), whatever its name.
    pub fn save_file(&self, path: &Path) -> Result<()> {
        let names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        self.write_file(path, &names)
    }

    fn write_file(&self, path: &Path, names: &[&str]) -> Result<()> {
        let views: Vec<(&str, TensorView)> = names
            .iter()
            .map(|n| {
                let t = &self.tensors[*n];
                let view =
                    TensorView::new(t.dtype.to_st(), t.shape.clone(), &t.data).map_err(|e| {
                        Error::Safetensors {
                            path: path.to_path_buf(),
                            message: format!("tensor `{n}`: {e}"),
                        }
                    })?;
                Ok((*n, view))
            })
            .collect::<Result<_>>()?;
        // transformers refuses safetensors files whose metadata lacks a known `format`.
        let metadata = Some(
            [("format".to_string(), "pt".to_string())]
                .into_iter()
                .collect(),
        );
        let bytes = safetensors::serialize(views, metadata).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        fsutil::write_atomic(path, &bytes)
    }
}

/// The weight files of a model folder: the shards named by the index, or `model.safetensors`.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        let text = fs::read_to_string(&index).at(&index)?;
        let v: Value = serde_json::from_str(&text).map_err(|error| Error::Json {
            path: index.clone(),
            error,
        })?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::Safetensors {
                path: index.clone(),
                message: "missing `weight_map` object".into(),
            })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join(SINGLE_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::Safetensors {
        path: dir.to_path_buf(),
        message: format!("no {SINGLE_FILE} or {INDEX_FILE} in this folder"),
    })
}

fn read_safetensors_into(file: &Path, out: &mut BTreeMap<String, HostTensor>) -> Result<()> {
    let f = fs::File::open(file).at(file)?;
    // SAFETY: the file is only read, and this process does not write it while mapped.
    let mmap = unsafe { memmap2::Mmap::map(&f) }.at(file)?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::Safetensors {
        path: file.to_path_buf(),
        message: e.to_string(),
    })?;
    for (name, view) in st.tensors() {
        let dtype = DType::from_st(view.dtype()).ok_or_else(|| Error::Safetensors {
            path: file.to_path_buf(),
            message: format!("tensor `{name}` has unsupported dtype {:?}", view.dtype()),
        })?;
        out.insert(
            name,
            HostTensor {
                dtype,
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut c = Checkpoint::new();
        let odd: Vec<f32> = (0..24)
            .map(|i| (i as f32).sin() * 1e-3 + f32::EPSILON * i as f32)
            .collect();
        c.insert(
            "model.layers.0.self_attn.q_proj.weight",
            HostTensor::from_f32(vec![4, 6], &odd),
        );
        c.insert(
            "model.norm.weight",
            HostTensor::from_f32(vec![6], &[1.0, -0.0, f32::MIN_POSITIVE, 3.5, 1e30, -2.0]),
        );
        c.insert(
            "probe.ids",
            HostTensor::from_i64(vec![3], &[1, 2, i64::MAX]),
        );
        c
    }

    #[test]
    fn single_file_round_trip_is_bit_exact() {
        let dir = tempfile::tempdir().unwrap();
        let c = sample();
        c.save(dir.path(), None).unwrap();
        assert!(dir.path().join(SINGLE_FILE).exists());
        let back = Checkpoint::load(dir.path()).unwrap();
        assert_eq!(back.tensors, c.tensors);
    }

    #[test]
    fn sharded_round_trip_is_bit_exact_and_replaces_single_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = sample();
        c.save(dir.path(), None).unwrap();
        c.save(dir.path(), Some(40)).unwrap();
        assert!(!dir.path().join(SINGLE_FILE).exists());
        assert!(dir.path().join(INDEX_FILE).exists());
        let shards: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .ends_with("-of-00003.safetensors")
            })
            .collect();
        assert_eq!(shards.len(), 3);
        assert_eq!(Checkpoint::load(dir.path()).unwrap().tensors, c.tensors);
    }

    #[test]
    fn missing_and_misshaped_tensors_are_named() {
        let c = sample();
        let e = c.get("lm_head.weight").unwrap_err().to_string();
        assert!(e.contains("lm_head.weight"), "{e}");
        let e = c
            .get_shaped("model.norm.weight", &[7])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.norm.weight") && e.contains("[7]") && e.contains("[6]"),
            "{e}"
        );
    }
}
