//! A small typed ONNX graph builder. Every helper returns a [`Value`] handle (a tensor name plus its
//! element type), so graphs are wired by passing handles, never by spelling tensor names twice.
//! [`GraphBuilder::finish`] checks that every consumed name is produced exactly once and returns a
//! [`Model`] whose weights are written as one external-data file by [`Model::save`].

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use prost::Message;

use super::proto::{
    attribute_type, data_type, AttributeProto, DimValue, Dimension, GraphProto, ModelProto,
    NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TypeProto, TypeProtoTensor, ValueInfoProto, DATA_LOCATION_EXTERNAL,
};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;

/// Element types the exporter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    BF16,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl Elem {
    fn onnx(self) -> i32 {
        match self {
            Elem::F32 => data_type::FLOAT,
            Elem::F16 => data_type::FLOAT16,
            Elem::BF16 => data_type::BFLOAT16,
            Elem::I64 => data_type::INT64,
            Elem::I32 => data_type::INT32,
            Elem::I8 => data_type::INT8,
            Elem::U8 => data_type::UINT8,
            Elem::Bool => data_type::BOOL,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Elem::F32 | Elem::F16 | Elem::BF16)
    }

    /// Encode f32 values as little-endian bytes of this (floating) type.
    pub fn encode_floats(self, values: &[f32]) -> Vec<u8> {
        match self {
            Elem::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Elem::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            Elem::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            other => panic!("{other:?} is not a floating type; this is a bug"),
        }
    }

    /// The most negative finite value, used to mask attention scores.
    pub fn lowest(self) -> f32 {
        match self {
            Elem::F16 => half::f16::MIN.to_f32(),
            Elem::BF16 => half::bf16::MIN.to_f32(),
            _ => f32::MIN,
        }
    }
}

/// A graph input/output dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    Sym(String),
}

impl Dim {
    pub fn sym(name: &str) -> Self {
        Dim::Sym(name.to_string())
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Self {
        Dim::Fixed(n)
    }
}

/// A tensor in the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub name: String,
    pub elem: Elem,
}

/// An attribute value.
pub enum Attr {
    Int(i64),
    Float(f32),
    Str(String),
    Ints(Vec<i64>),
}

impl From<i64> for Attr {
    fn from(v: i64) -> Self {
        Attr::Int(v)
    }
}
impl From<f32> for Attr {
    fn from(v: f32) -> Self {
        Attr::Float(v)
    }
}
impl From<&str> for Attr {
    fn from(v: &str) -> Self {
        Attr::Str(v.to_string())
    }
}
impl From<&[i64]> for Attr {
    fn from(v: &[i64]) -> Self {
        Attr::Ints(v.to_vec())
    }
}
impl<const N: usize> From<[i64; N]> for Attr {
    fn from(v: [i64; N]) -> Self {
        Attr::Ints(v.to_vec())
    }
}

/// A weight held until [`Model::save`] writes it to the external-data file.
struct Weight {
    name: String,
    elem: Elem,
    dims: Vec<usize>,
    bytes: Vec<u8>,
}

/// Builds one graph. Node names are `/{scope}/{Op}` (numbered when repeated), in the style of
/// onnxruntime-genai's builder, so profiles and diffs read like the model's module tree.
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    weights: Vec<Weight>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    node_names: HashSet<String>,
    scope: String,
}

/// A node under construction; see [`GraphBuilder::op`].
pub struct OpBuilder<'g> {
    g: &'g mut GraphBuilder,
    op_type: String,
    domain: String,
    inputs: Vec<String>,
    attrs: Vec<AttributeProto>,
    elem: Option<Elem>,
}

fn value_info(name: &str, elem: Elem, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => DimValue::DimValue(*n as i64),
                Dim::Sym(s) => DimValue::DimParam(s.clone()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: elem.onnx(),
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

impl<'g> OpBuilder<'g> {
    pub fn attr(mut self, name: &str, value: impl Into<Attr>) -> Self {
        let mut a = AttributeProto {
            name: name.to_string(),
            ..Default::default()
        };
        match value.into() {
            Attr::Int(i) => {
                a.r#type = attribute_type::INT;
                a.i = i;
            }
            Attr::Float(f) => {
                a.r#type = attribute_type::FLOAT;
                a.f = f;
            }
            Attr::Str(s) => {
                a.r#type = attribute_type::STRING;
                a.s = s.into_bytes();
            }
            Attr::Ints(v) => {
                a.r#type = attribute_type::INTS;
                a.ints = v;
            }
        }
        self.attrs.push(a);
        self
    }

    /// The operator's domain (`com.microsoft` for ONNX Runtime contrib ops).
    pub fn domain(mut self, domain: &str) -> Self {
        self.domain = domain.to_string();
        self
    }

    /// Output element type, when it differs from the first input's.
    pub fn elem(mut self, elem: Elem) -> Self {
        self.elem = Some(elem);
        self
    }

    /// An optional input left empty (positional contrib-op inputs).
    pub fn skip_input(mut self) -> Self {
        self.inputs.push(String::new());
        self
    }

    pub fn input(mut self, v: &Value) -> Self {
        self.inputs.push(v.name.clone());
        self
    }

    /// Emit the node with one output.
    pub fn build(self) -> Value {
        self.build_n(1).pop().expect("one output")
    }

    /// Emit the node with `n` outputs (all of the output element type).
    pub fn build_n(self, n: usize) -> Vec<Value> {
        self.build_mask(&vec![true; n])
    }

    /// Emit the node with the outputs where `used[i]` is true; the others are left unnamed (optional
    /// outputs that the graph does not need).
    pub fn build_mask(self, used: &[bool]) -> Vec<Value> {
        let OpBuilder {
            g,
            op_type,
            domain,
            inputs,
            attrs,
            elem,
        } = self;
        let elem = elem.expect("an op without inputs needs .elem(); this is a bug");
        let name = g.unique_node_name(&op_type);
        let outputs: Vec<String> = used
            .iter()
            .enumerate()
            .map(|(i, u)| {
                if *u {
                    format!("{name}/output_{i}")
                } else {
                    String::new()
                }
            })
            .collect();
        g.nodes.push(NodeProto {
            input: inputs,
            output: outputs.clone(),
            name,
            op_type,
            domain,
            attribute: attrs,
        });
        outputs
            .into_iter()
            .filter(|o| !o.is_empty())
            .map(|name| Value { name, elem })
            .collect()
    }
}

impl GraphBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the name scope of the nodes that follow (e.g. `model/layers.3/attn`).
    pub fn set_scope(&mut self, scope: &str) {
        self.scope = scope.to_string();
    }

    fn unique_node_name(&mut self, op: &str) -> String {
        let base = format!("/{}/{}", self.scope, op);
        let mut name = base.clone();
        let mut n = 1;
        while !self.node_names.insert(name.clone()) {
            name = format!("{base}_{n}");
            n += 1;
        }
        name
    }

    /// Start a node of `op_type` (default domain) on `inputs`; the output type follows the first
    /// input unless set with [`OpBuilder::elem`].
    pub fn op(&mut self, op_type: &str, inputs: &[&Value]) -> OpBuilder<'_> {
        let elem = inputs.first().map(|v| v.elem);
        OpBuilder {
            g: self,
            op_type: op_type.to_string(),
            domain: String::new(),
            inputs: inputs.iter().map(|v| v.name.clone()).collect(),
            attrs: vec![],
            elem,
        }
    }

    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim]) -> Value {
        self.inputs.push(value_info(name, elem, dims));
        Value {
            name: name.to_string(),
            elem,
        }
    }

    /// Expose `v` as graph output `name` (through an Identity node when the names differ).
    pub fn output(&mut self, v: &Value, name: &str, dims: &[Dim]) {
        if v.name != name {
            let n = self.unique_node_name(&format!("{name}/Identity"));
            self.nodes.push(NodeProto {
                input: vec![v.name.clone()],
                output: vec![name.to_string()],
                name: n,
                op_type: "Identity".into(),
                ..Default::default()
            });
        }
        self.outputs.push(value_info(name, v.elem, dims));
    }

    /// A weight stored in the external-data file. `bytes` are little-endian values of `elem`.
    pub fn weight(&mut self, name: &str, elem: Elem, dims: &[usize], bytes: Vec<u8>) -> Value {
        let size = match elem {
            Elem::F32 | Elem::I32 => 4,
            Elem::F16 | Elem::BF16 => 2,
            Elem::I64 => 8,
            Elem::Bool | Elem::I8 | Elem::U8 => 1,
        };
        assert_eq!(
            dims.iter().product::<usize>() * size,
            bytes.len(),
            "weight {name}: {dims:?} does not match {} bytes; this is a bug",
            bytes.len()
        );
        self.weights.push(Weight {
            name: name.to_string(),
            elem,
            dims: dims.to_vec(),
            bytes,
        });
        Value {
            name: name.to_string(),
            elem,
        }
    }

    /// A float weight given as f32 values, stored as `elem`.
    pub fn weight_f32(&mut self, name: &str, elem: Elem, dims: &[usize], values: &[f32]) -> Value {
        self.weight(name, elem, dims, elem.encode_floats(values))
    }

    /// A small inline constant (a `Constant` node); shapes, axes and scalars.
    fn constant(&mut self, elem: Elem, dims: &[usize], raw: Vec<u8>) -> Value {
        let t = TensorProto {
            dims: dims.iter().map(|d| *d as i64).collect(),
            data_type: elem.onnx(),
            raw_data: raw,
            ..Default::default()
        };
        let name = self.unique_node_name("Constant");
        let out = format!("{name}/output_0");
        let mut a = AttributeProto {
            name: "value".into(),
            r#type: attribute_type::TENSOR,
            ..Default::default()
        };
        a.t = Some(t);
        self.nodes.push(NodeProto {
            input: vec![],
            output: vec![out.clone()],
            name,
            op_type: "Constant".into(),
            attribute: vec![a],
            ..Default::default()
        });
        Value { name: out, elem }
    }

    /// A 1-D int64 constant.
    pub fn ints(&mut self, values: &[i64]) -> Value {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(Elem::I64, &[values.len()], raw)
    }

    /// A scalar int64 constant.
    pub fn int_scalar(&mut self, v: i64) -> Value {
        self.constant(Elem::I64, &[], v.to_le_bytes().to_vec())
    }

    /// A scalar uint8 constant.
    pub fn scalar_u8(&mut self, v: u8) -> Value {
        self.constant(Elem::U8, &[], vec![v])
    }

    /// A scalar float constant of type `elem`.
    pub fn scalar(&mut self, v: f32, elem: Elem) -> Value {
        let raw = elem.encode_floats(&[v]);
        self.constant(elem, &[], raw)
    }

    // Common ops, named as in the ONNX spec.

    pub fn matmul(&mut self, a: &Value, b: &Value) -> Value {
        self.op("MatMul", &[a, b]).build()
    }
    pub fn add(&mut self, a: &Value, b: &Value) -> Value {
        self.op("Add", &[a, b]).build()
    }
    pub fn sub(&mut self, a: &Value, b: &Value) -> Value {
        self.op("Sub", &[a, b]).build()
    }
    pub fn mul(&mut self, a: &Value, b: &Value) -> Value {
        self.op("Mul", &[a, b]).build()
    }
    pub fn div(&mut self, a: &Value, b: &Value) -> Value {
        self.op("Div", &[a, b]).build()
    }
    pub fn cast(&mut self, x: &Value, to: Elem) -> Value {
        if x.elem == to {
            return x.clone();
        }
        self.op("Cast", &[x])
            .attr("to", to.onnx() as i64)
            .elem(to)
            .build()
    }
    pub fn reshape(&mut self, x: &Value, shape: &[i64]) -> Value {
        let s = self.ints(shape);
        self.op("Reshape", &[x, &s]).build()
    }
    pub fn transpose(&mut self, x: &Value, perm: &[i64]) -> Value {
        self.op("Transpose", &[x]).attr("perm", perm).build()
    }
    pub fn unsqueeze(&mut self, x: &Value, axes: &[i64]) -> Value {
        let a = self.ints(axes);
        self.op("Unsqueeze", &[x, &a]).build()
    }
    pub fn concat(&mut self, xs: &[&Value], axis: i64) -> Value {
        self.op("Concat", xs).attr("axis", axis).build()
    }
    /// Split `x` along `axis` into pieces of the given sizes.
    pub fn split(&mut self, x: &Value, sizes: &[i64], axis: i64) -> Vec<Value> {
        let s = self.ints(sizes);
        self.op("Split", &[x, &s])
            .attr("axis", axis)
            .build_n(sizes.len())
    }
    /// `x[..., start:end]` along one axis (`end` may be `i64::MAX`).
    pub fn slice(&mut self, x: &Value, start: &Value, end: &Value, axis: i64) -> Value {
        let axes = self.ints(&[axis]);
        self.op("Slice", &[x, start, end, &axes]).build()
    }
    /// Dimension `axis` of `x` as a 1-element int64 tensor.
    pub fn dim(&mut self, x: &Value, axis: i64) -> Value {
        self.op("Shape", &[x])
            .attr("start", axis)
            .attr("end", axis + 1)
            .elem(Elem::I64)
            .build()
    }

    /// Check the wiring and assemble the model.
    pub fn finish(self, opsets: &[(&str, i64)], ir_version: i64, producer: &str) -> Result<Model> {
        let mut defined: HashSet<String> = HashSet::new();
        let define = |name: &str, defined: &mut HashSet<String>| -> Result<()> {
            if !defined.insert(name.to_string()) {
                return Err(Error::Invalid(format!(
                    "ONNX graph: tensor `{name}` is defined twice"
                )));
            }
            Ok(())
        };
        for i in &self.inputs {
            define(&i.name, &mut defined)?;
        }
        for w in &self.weights {
            define(&w.name, &mut defined)?;
        }
        for n in &self.nodes {
            for i in n.input.iter().filter(|i| !i.is_empty()) {
                if !defined.contains(i) {
                    return Err(Error::Invalid(format!(
                        "ONNX graph: node `{}` reads `{i}`, which is not defined before it",
                        n.name
                    )));
                }
            }
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                define(o, &mut defined)?;
            }
        }
        for o in &self.outputs {
            if !defined.contains(&o.name) {
                return Err(Error::Invalid(format!(
                    "ONNX graph: output `{}` is never produced",
                    o.name
                )));
            }
        }
        let graph = GraphProto {
            node: self.nodes,
            name: "main_graph".into(),
            initializer: vec![],
            input: self.inputs,
            output: self.outputs,
        };
        Ok(Model {
            proto: ModelProto {
                ir_version,
                opset_import: opsets
                    .iter()
                    .map(|(d, v)| OperatorSetIdProto {
                        domain: d.to_string(),
                        version: *v,
                    })
                    .collect(),
                producer_name: producer.to_string(),
                producer_version: env!("CARGO_PKG_VERSION").to_string(),
                graph: Some(graph),
                ..Default::default()
            },
            weights: self.weights,
        })
    }
}

/// A finished graph and its weights.
pub struct Model {
    pub proto: ModelProto,
    weights: Vec<Weight>,
}

/// Offsets in the data file are aligned so that ONNX Runtime can map weights directly.
const ALIGN: usize = 4096;

impl Model {
    pub fn node_count(&self) -> usize {
        self.proto.graph.as_ref().map_or(0, |g| g.node.len())
    }

    pub fn weight_bytes(&self) -> usize {
        self.weights.iter().map(|w| w.bytes.len()).sum()
    }

    /// Write `dir/{file}` and `dir/{file}.data` (every weight external), each to a temporary name
    /// first and renamed into place, the data file before the graph that points at it.
    pub fn save(self, dir: &Path, file: &str) -> Result<SavedData> {
        self.save_beside(dir, file, None)
    }

    /// As [`Model::save`], but a weight that `earlier` (a graph saved in the same folder) already
    /// holds under the same name, type, shape and bytes is pointed at there instead of written
    /// again: an int8-cache folder's float prompt graph shares all its weights with the main graph,
    /// so it costs no second copy on disk. `dir/{file}.data` holds only the rest and is written
    /// only if there is some; [`SavedData::wrote_own_data`] says which.
    pub fn save_beside(
        mut self,
        dir: &Path,
        file: &str,
        earlier: Option<&SavedData>,
    ) -> Result<SavedData> {
        let data_name = format!("{file}.data");
        // Candidates are compared with the bytes on disk, one weight at a time (the graph in
        // memory already holds every weight once): a name match alone would let a graph built
        // with other weights (another quantization) silently read the wrong ones.
        let mut earlier_file = match earlier {
            Some(e) => {
                let path = dir.join(&e.data_name);
                Some((e, std::fs::File::open(&path).at(&path)?, path))
            }
            None => None,
        };
        let mut on_disk = Vec::new();
        let mut initializers = Vec::with_capacity(self.weights.len());
        let mut own = Vec::new();
        let mut index = HashMap::new();
        let mut offset = 0usize;
        for w in std::mem::take(&mut self.weights) {
            let shared = match &mut earlier_file {
                Some((e, file, path)) => match e.index.get(&w.name) {
                    Some(s)
                        if s.elem == w.elem && s.dims == w.dims && s.length == w.bytes.len() =>
                    {
                        on_disk.resize(s.length, 0);
                        file.seek(SeekFrom::Start(s.offset as u64))
                            .and_then(|_| file.read_exact(&mut on_disk))
                            .at(&*path)?;
                        (on_disk == w.bytes).then_some((e.data_name.as_str(), s.offset))
                    }
                    _ => None,
                },
                None => None,
            };
            let (location, at) = match shared {
                Some((location, at)) => (location.to_string(), at),
                None => {
                    offset = offset.div_ceil(ALIGN) * ALIGN;
                    let at = offset;
                    offset += w.bytes.len();
                    (data_name.clone(), at)
                }
            };
            initializers.push(TensorProto {
                dims: w.dims.iter().map(|d| *d as i64).collect(),
                data_type: w.elem.onnx(),
                name: w.name.clone(),
                external_data: vec![
                    entry("location", &location),
                    entry("offset", &at.to_string()),
                    entry("length", &w.bytes.len().to_string()),
                ],
                data_location: DATA_LOCATION_EXTERNAL,
                ..Default::default()
            });
            if shared.is_none() {
                index.insert(
                    w.name.clone(),
                    SavedWeight {
                        elem: w.elem,
                        dims: w.dims.clone(),
                        offset: at,
                        length: w.bytes.len(),
                    },
                );
                own.push(w);
            }
        }
        let wrote_own_data = !own.is_empty() || earlier.is_none();
        if wrote_own_data {
            fsutil::write_atomic_with(&dir.join(&data_name), |out| {
                let mut pos = 0usize;
                for w in &own {
                    let pad = pos.div_ceil(ALIGN) * ALIGN - pos;
                    out.write_all(&vec![0u8; pad])?;
                    out.write_all(&w.bytes)?;
                    pos += pad + w.bytes.len();
                }
                Ok(())
            })?;
        }
        let graph = self.proto.graph.as_mut().expect("finish sets the graph");
        graph.initializer = initializers;
        fsutil::write_atomic(&dir.join(file), &self.proto.encode_to_vec())?;
        Ok(SavedData {
            data_name,
            index,
            wrote_own_data,
        })
    }
}

/// Where a saved graph put the weights of its own data file, so that a later graph in the same
/// folder can point at them ([`Model::save_beside`]).
pub struct SavedData {
    data_name: String,
    index: HashMap<String, SavedWeight>,
    wrote_own_data: bool,
}

impl SavedData {
    /// Whether the graph has a data file of its own (false when every weight was shared).
    pub fn wrote_own_data(&self) -> bool {
        self.wrote_own_data
    }
}

struct SavedWeight {
    elem: Elem,
    dims: Vec<usize>,
    offset: usize,
    length: usize,
}

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.to_string(),
        value: value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangling_input_is_named() {
        let mut g = GraphBuilder::new();
        let x = g.input("x", Elem::F32, &[Dim::Fixed(2)]);
        let ghost = Value {
            name: "ghost".into(),
            elem: Elem::F32,
        };
        let y = g.add(&x, &ghost);
        g.output(&y, "y", &[Dim::Fixed(2)]);
        let e = g
            .finish(&[("", 21)], 10, "t")
            .err()
            .expect("must fail")
            .to_string();
        assert!(e.contains("`ghost`"), "{e}");
    }

    #[test]
    fn a_second_graph_points_at_the_first_ones_equal_weights_only() {
        let dir = tempfile::tempdir().unwrap();
        let model = |b: &[f32], extra: bool| {
            let mut g = GraphBuilder::new();
            let x = g.input("x", Elem::F32, &[Dim::Fixed(2)]);
            let a = g.weight_f32("a", Elem::F32, &[2], &[1.0, 2.0]);
            let b = g.weight_f32("b", Elem::F32, &[2], b);
            let xa = g.add(&x, &a);
            let y = g.add(&xa, &b);
            let y = if extra {
                let c = g.weight_f32("c", Elem::F32, &[2], &[5.0, 6.0]);
                g.add(&y, &c)
            } else {
                y
            };
            g.output(&y, "y", &[Dim::Fixed(2)]);
            g.finish(&[("", 21)], 10, "t").unwrap()
        };
        let first = model(&[3.0, 4.0], false)
            .save(dir.path(), "m.onnx")
            .unwrap();
        // `a` is equal, `b` has the same name and other bytes, `c` is new.
        let second = model(&[3.0, 4.5], true)
            .save_beside(dir.path(), "p.onnx", Some(&first))
            .unwrap();
        assert!(second.wrote_own_data());
        let proto =
            ModelProto::decode(&*std::fs::read(dir.path().join("p.onnx")).unwrap()).unwrap();
        let at: Vec<(String, String, String)> = proto
            .graph
            .unwrap()
            .initializer
            .iter()
            .map(|t| {
                let v = |k: &str| t.external(k).to_string();
                (t.name.clone(), v("location"), v("offset"))
            })
            .collect();
        let own = std::fs::read(dir.path().join("p.onnx.data")).unwrap();
        assert_eq!(
            at,
            [
                ("a".into(), "m.onnx.data".into(), "0".into()),
                ("b".into(), "p.onnx.data".into(), "0".into()),
                ("c".into(), "p.onnx.data".into(), ALIGN.to_string()),
            ]
        );
        assert_eq!(&own[..8], &[0, 0, 64, 64, 0, 0, 144, 64]); // 3.0, 4.5
        assert_eq!(&own[ALIGN..], &[0, 0, 160, 64, 0, 0, 192, 64]); // 5.0, 6.0
                                                                    // A graph whose weights are all the first's writes no data file of its own.
        let third = model(&[3.0, 4.0], false)
            .save_beside(dir.path(), "q.onnx", Some(&first))
            .unwrap();
        assert!(!third.wrote_own_data());
        assert!(!dir.path().join("q.onnx.data").exists());
    }

    #[test]
    fn weights_go_to_aligned_external_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = GraphBuilder::new();
        g.set_scope("m");
        let x = g.input("x", Elem::F32, &[Dim::sym("n"), Dim::Fixed(2)]);
        let a = g.weight_f32("a", Elem::F32, &[2], &[1.0, 2.0]);
        let b = g.weight_f32("b", Elem::F16, &[3], &[1.0, 2.0, 3.0]);
        let y = g.add(&x, &a);
        g.output(&y, "y", &[Dim::sym("n"), Dim::Fixed(2)]);
        g.output(&b, "b_out", &[Dim::Fixed(3)]);
        let m = g.finish(&[("", 21)], 10, "t").unwrap();
        m.save(dir.path(), "model.onnx").unwrap();
        let data = std::fs::read(dir.path().join("model.onnx.data")).unwrap();
        assert_eq!(data.len(), ALIGN + 6);
        assert_eq!(&data[..8], &[0, 0, 128, 63, 0, 0, 0, 64]);
        assert_eq!(
            &data[ALIGN..ALIGN + 2],
            &half::f16::from_f32(1.0).to_le_bytes()
        );
        let proto =
            ModelProto::decode(&*std::fs::read(dir.path().join("model.onnx")).unwrap()).unwrap();
        let graph = proto.graph.unwrap();
        assert_eq!(graph.initializer.len(), 2);
        assert!(graph.initializer.iter().all(|t| t.raw_data.is_empty()));
        assert_eq!(
            graph.initializer[1].external_data[1].value,
            ALIGN.to_string()
        );
        assert_eq!(graph.node[0].name, "/m/Add");
    }
}
