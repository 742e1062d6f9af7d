//! Memory on the session's device and the moves between it and the host.
//!
//! Buffers are allocated through ONNX Runtime's allocator for the session's memory (CPU memory
//! on the CPU execution provider, CUDA memory under CUDA), so a graph bound to them reads and
//! writes in place. Copies are lists of [`Move`]s executed by a [`Mover`]:
//! * [`Mover::Host`] when the device memory is host-addressable (the CPU execution provider):
//!   plain `memcpy`;
//! * [`Mover::Graph`] otherwise: a session of `Identity` nodes on the same execution provider,
//!   its inputs and outputs bound to the source and destination regions, so device-to-device
//!   moves never leave the device (ONNX Runtime exposes no other copy for a classic execution
//!   provider; the `ort` crate copies tensors the same way). Host regions bound to it are copied
//!   across by ONNX Runtime, which is how uploads and downloads go.
//!
//! Both movers run on CPU (the graph one is forced in the tests), so the path a GPU takes is
//! covered there.

use std::ffi::{c_char, CStr, CString};

use anyhow::{anyhow, bail, Context, Result};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::value::{Shape, Tensor, TensorElementType, TensorRefMut};
use ort::AsPointer;

use crate::runtime::Runtime;
use crate::session::{Device, SessionOptions};

fn ort_err(what: &str) -> impl FnOnce(ort::Error) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {e}")
}

/// A tensor view over memory owned elsewhere.
///
/// # Safety
/// `ptr` must be valid for `shape`'s element count and outlive the view's use in `Run`.
pub unsafe fn view<'a, T>(
    mem: &MemoryInfo,
    ptr: *mut T,
    shape: &[usize],
) -> Result<TensorRefMut<'a, T>>
where
    T: ort::value::PrimitiveTensorElementType + std::fmt::Debug,
{
    let shape = Shape::new(shape.iter().map(|&d| d as i64));
    TensorRefMut::from_raw(mem.clone(), ptr.cast(), shape)
        .map_err(ort_err("creating a tensor view"))
}

/// The inputs and outputs of one `Run`, in the order of the session's name lists; keeps the
/// views alive while their raw `OrtValue` pointers are in use.
#[derive(Default)]
pub struct Feed<'a> {
    ints: Vec<TensorRefMut<'a, i64>>,
    floats: Vec<TensorRefMut<'a, f32>>,
    /// Views of any element type, made through the C API (`ort` has no half-precision type
    /// without its `half` feature); released on drop.
    raw: Vec<*mut ort::sys::OrtValue>,
    inputs: Vec<*const ort::sys::OrtValue>,
    outputs: Vec<*mut ort::sys::OrtValue>,
}

impl Drop for Feed<'_> {
    fn drop(&mut self) {
        for v in self.raw.drain(..) {
            // SAFETY: created by CreateTensorWithDataAsOrtValue below and released once.
            unsafe { (ort::api().ReleaseValue)(v) };
        }
    }
}

/// Bytes of one element of the types the engine binds by address (caches, fixed step inputs).
pub fn element_bytes(elem: TensorElementType) -> Option<usize> {
    match elem {
        TensorElementType::Float32 => Some(4),
        TensorElementType::Float16 | TensorElementType::Bfloat16 => Some(2),
        // ONNX Runtime's quantized GroupQueryAttention cache (`k_quant_type`, 8 bits).
        TensorElementType::Int8 => Some(1),
        TensorElementType::Int64 => Some(8),
        _ => None,
    }
}

impl Feed<'_> {
    /// A view of element type `elem` over `ptr`, as an input or (with `output`) an output.
    ///
    /// # Safety
    /// As [`view`], with `shape`'s element count in units of `elem`.
    pub unsafe fn typed(
        &mut self,
        mem: &MemoryInfo,
        ptr: *mut f32,
        shape: &[usize],
        elem: TensorElementType,
        output: bool,
    ) -> Result<()> {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let bytes = shape.iter().product::<usize>()
            * element_bytes(elem).ok_or_else(|| anyhow!("cannot bind {elem:?} tensors"))?;
        let api = ort::api();
        let mut out: *mut ort::sys::OrtValue = std::ptr::null_mut();
        let status = (api.CreateTensorWithDataAsOrtValue)(
            mem.ptr(),
            ptr.cast(),
            bytes,
            dims.as_ptr(),
            dims.len(),
            elem.into(),
            &mut out,
        );
        if !status.0.is_null() {
            let msg = CStr::from_ptr((api.GetErrorMessage)(status.0))
                .to_string_lossy()
                .into_owned();
            (api.ReleaseStatus)(status.0);
            bail!("creating a {elem:?} view: {msg}");
        }
        self.raw.push(out);
        if output {
            self.outputs.push(out);
        } else {
            self.inputs.push(out);
        }
        Ok(())
    }

    /// # Safety
    /// As [`view`].
    pub unsafe fn ints(&mut self, mem: &MemoryInfo, ptr: *mut i64, shape: &[usize]) -> Result<()> {
        let t = view(mem, ptr, shape)?;
        self.inputs.push(t.ptr());
        self.ints.push(t);
        Ok(())
    }

    /// # Safety
    /// As [`view`].
    pub unsafe fn floats(
        &mut self,
        mem: &MemoryInfo,
        ptr: *mut f32,
        shape: &[usize],
    ) -> Result<()> {
        let t = view(mem, ptr, shape)?;
        self.inputs.push(t.ptr());
        self.floats.push(t);
        Ok(())
    }

    /// # Safety
    /// As [`view`].
    pub unsafe fn output(
        &mut self,
        mem: &MemoryInfo,
        ptr: *mut f32,
        shape: &[usize],
    ) -> Result<()> {
        let t = view(mem, ptr, shape)?;
        self.outputs.push(t.ptr().cast_mut());
        self.floats.push(t);
        Ok(())
    }
}

/// `Run` with caller-owned outputs (the C API fills them in place).
///
/// # Safety
/// Every pointer in `feed` must be a live `OrtValue` over memory valid for the call, in the order
/// of the name lists.
pub unsafe fn run(
    session: &Session,
    input_names: &[CString],
    output_names: &[CString],
    feed: &Feed<'_>,
) -> Result<()> {
    assert_eq!(
        feed.inputs.len(),
        input_names.len(),
        "input count; this is a bug"
    );
    assert_eq!(
        feed.outputs.len(),
        output_names.len(),
        "output count; this is a bug"
    );
    let in_names: Vec<*const c_char> = input_names.iter().map(|n| n.as_ptr()).collect();
    let out_names: Vec<*const c_char> = output_names.iter().map(|n| n.as_ptr()).collect();
    let mut outs = feed.outputs.clone();
    let api = ort::api();
    let status = (api.Run)(
        session.ptr().cast_mut(),
        std::ptr::null(),
        in_names.as_ptr(),
        feed.inputs.as_ptr(),
        feed.inputs.len(),
        out_names.as_ptr(),
        out_names.len(),
        outs.as_mut_ptr(),
    );
    if !status.0.is_null() {
        let msg = CStr::from_ptr((api.GetErrorMessage)(status.0))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(status.0);
        bail!("ONNX Runtime: {msg}");
    }
    Ok(())
}

/// An f32 buffer in the session's device memory: from ONNX Runtime's allocator, or zeroed host
/// memory where the device is the host (see [`Memory`]).
pub struct DeviceBuffer {
    _memory: Memory,
    ptr: *mut f32,
    len: usize,
}

/// What owns a [`DeviceBuffer`]'s memory.
enum Memory {
    /// A tensor from ONNX Runtime's allocator for the device.
    Ort(#[allow(dead_code)] Tensor<f32>),
    /// Zeroed host memory (`calloc`: pages are mapped when first written), for zero-filled
    /// buffers under the host mover. A KV cache sized for the longest sequence then takes
    /// resident memory only for the positions written, as a host `Vec` cache did; zeros written
    /// through the allocator's memory would make every page of it resident at once.
    Host(#[allow(dead_code)] Vec<f32>),
}

impl DeviceBuffer {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Device address of element `offset` (for binding a view; never dereferenced on the host
    /// unless the memory is host-addressable).
    pub fn at(&self, offset: usize) -> *mut f32 {
        assert!(
            offset <= self.len,
            "offset {offset} past {}; this is a bug",
            self.len
        );
        // SAFETY: in bounds of the allocation (checked above).
        unsafe { self.ptr.add(offset) }
    }
}

/// One end of a [`Move`]: device memory, or host memory the caller keeps alive.
#[derive(Debug, Clone, Copy)]
pub enum Place {
    Device(*mut f32),
    Host(*mut f32),
}

/// Copy `len` floats from `src` to `dst` (the regions do not overlap).
#[derive(Debug, Clone, Copy)]
pub struct Move {
    pub src: Place,
    pub dst: Place,
    pub len: usize,
}

/// How moves are executed (see the module documentation).
pub enum Mover {
    Host,
    Graph(CopyGraph),
}

/// A session of `width` `Identity` nodes, `in{i}` → `out{i}`, each `[n{i}]` f32.
pub struct CopyGraph {
    session: Session,
    width: usize,
    inputs: Vec<CString>,
    outputs: Vec<CString>,
    /// Two floats: the source and destination of padding moves.
    pad: DeviceBuffer,
}

/// The device memory of one backend: its allocator and memory info, and the mover.
pub struct DeviceMemory {
    allocator: Allocator,
    pub mem: MemoryInfo<'static>,
    pub host: MemoryInfo<'static>,
    mover: Mover,
    /// Bytes moved between host and device by [`DeviceMemory::run`], by direction.
    pub uploaded: u64,
    pub downloaded: u64,
}

/// Which mover to use: the host one where memory allows, or always the graph one (tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MoverChoice {
    #[default]
    Auto,
    Graph,
}

impl DeviceMemory {
    /// The allocator for `session`'s device memory, and a mover for it. `width`: moves per
    /// graph run.
    pub fn new(
        rt: &Runtime,
        session: &Session,
        opts: &SessionOptions,
        width: usize,
        choice: MoverChoice,
    ) -> Result<Self> {
        let allocator = match opts.device {
            // ONNX Runtime's plain CPU allocator, not the session's arena: the cache grows by
            // doubling, and an arena keeps every size it was ever asked for (at batch 16 on the
            // real job, 0.7 GB of peak RSS more than the final cache), while freed plain memory
            // goes back to the system.
            Device::Cpu => Allocator::default(),
            Device::Cuda(id) => {
                let info = MemoryInfo::new(
                    AllocationDevice::CUDA,
                    id as i32,
                    AllocatorType::Device,
                    MemoryType::Default,
                )
                .map_err(ort_err("describing the device memory"))?;
                Allocator::new(session, info)
                    .map_err(|e| anyhow!("{}: no allocator for its memory ({e})", opts.device))?
            }
        };
        let mem = allocator.memory_info().to_owned();
        let host = MemoryInfo::default();
        let mut dm = DeviceMemory {
            allocator,
            mem,
            host,
            mover: Mover::Host,
            uploaded: 0,
            downloaded: 0,
        };
        if choice == MoverChoice::Graph || !dm.mem.is_cpu_accessible() {
            let graph = CopyGraph::new(rt, opts, width, dm.alloc(2)?)?;
            dm.mover = Mover::Graph(graph);
        }
        Ok(dm)
    }

    /// An uninitialised buffer of `len` floats.
    pub fn alloc(&self, len: usize) -> Result<DeviceBuffer> {
        let mut t = Tensor::<f32>::new(&self.allocator, [len.max(1)])
            .map_err(|e| anyhow!("allocating {} MiB on the device: {e}", (len * 4) >> 20))?;
        let ptr = t.data_ptr_mut().cast::<f32>();
        Ok(DeviceBuffer {
            _memory: Memory::Ort(t),
            ptr,
            len,
        })
    }

    /// A zero-filled buffer of `len` floats.
    pub fn zeros(&mut self, len: usize) -> Result<DeviceBuffer> {
        if matches!(self.mover, Mover::Host) {
            let mut v = vec![0f32; len.max(1)];
            let ptr = v.as_mut_ptr();
            return Ok(DeviceBuffer {
                _memory: Memory::Host(v),
                ptr,
                len,
            });
        }
        let buf = self.alloc(len)?;
        // Zeros go up from the host in chunks (nothing on the device can fill memory without a
        // graph; this is set-up, not a step).
        const CHUNK: usize = 1 << 20;
        let mut zeros = vec![0f32; CHUNK.min(len.max(1))];
        let moves: Vec<Move> = (0..len)
            .step_by(CHUNK)
            .map(|start| Move {
                src: Place::Host(zeros.as_mut_ptr()),
                dst: Place::Device(buf.at(start)),
                len: CHUNK.min(len - start),
            })
            .collect();
        self.run(&moves).context("zero-filling a device buffer")?;
        Ok(buf)
    }

    /// Execute `moves`. Every region must be valid, and host ones alive, for the call.
    pub fn run(&mut self, moves: &[Move]) -> Result<()> {
        for m in moves {
            match (m.src, m.dst) {
                (Place::Host(_), Place::Device(_)) => self.uploaded += (m.len * 4) as u64,
                (Place::Device(_), Place::Host(_)) => self.downloaded += (m.len * 4) as u64,
                _ => {}
            }
        }
        match &mut self.mover {
            Mover::Host => {
                for m in moves {
                    let (s, d) = (ptr_of(m.src), ptr_of(m.dst));
                    // SAFETY: the memory is host-addressable (the host mover is chosen only
                    // then), both regions hold `len` floats and do not overlap.
                    unsafe { std::ptr::copy_nonoverlapping(s, d, m.len) };
                }
                Ok(())
            }
            Mover::Graph(g) => {
                for chunk in moves.chunks(g.width) {
                    g.run(chunk, &self.mem, &self.host)?;
                }
                Ok(())
            }
        }
    }

    pub fn uses_graph(&self) -> bool {
        matches!(self.mover, Mover::Graph(_))
    }
}

fn ptr_of(p: Place) -> *mut f32 {
    match p {
        Place::Device(p) | Place::Host(p) => p,
    }
}

impl CopyGraph {
    fn new(rt: &Runtime, opts: &SessionOptions, width: usize, pad: DeviceBuffer) -> Result<Self> {
        let width = width.max(1);
        let model = identity_model(width);
        // No optimisation: an Identity between a graph input and output must stay a copy.
        let copy_opts = SessionOptions {
            threads: 1,
            optimize: false,
            ..opts.clone()
        };
        let mut builder = crate::session::builder(rt, &copy_opts)?;
        let session = {
            let _one_at_a_time = crate::session::committing();
            builder.commit_from_memory(&model)
        }
        .context("building the device-copy graph")?;
        Ok(CopyGraph {
            session,
            width,
            inputs: (0..width)
                .map(|i| CString::new(format!("in{i}")).expect("no NUL"))
                .collect(),
            outputs: (0..width)
                .map(|i| CString::new(format!("out{i}")).expect("no NUL"))
                .collect(),
            pad,
        })
    }

    fn run(&self, moves: &[Move], dev: &MemoryInfo, host: &MemoryInfo) -> Result<()> {
        let place = |p: Place| match p {
            Place::Device(ptr) => (dev, ptr),
            Place::Host(ptr) => (host, ptr),
        };
        // SAFETY: the caller keeps every region valid for the call; the padding moves copy one
        // float between the two cells of `pad`.
        unsafe {
            let mut feed = Feed::default();
            let mut outs = Vec::with_capacity(self.width);
            for i in 0..self.width {
                let m = moves.get(i).copied().unwrap_or(Move {
                    src: Place::Device(self.pad.at(0)),
                    dst: Place::Device(self.pad.at(1)),
                    len: 1,
                });
                let (smem, sptr) = place(m.src);
                let (dmem, dptr) = place(m.dst);
                feed.floats(smem, sptr, &[m.len])?;
                outs.push((dmem, dptr, m.len));
            }
            for (mem, ptr, len) in outs {
                feed.output(mem, ptr, &[len])?;
            }
            run(&self.session, &self.inputs, &self.outputs, &feed).context("device copy")
        }
    }
}

/// An ONNX model of `width` Identity nodes over f32 vectors of any length (protobuf written
/// here: the model is four message types, and `exports`' writer is for decoders).
fn identity_model(width: usize) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
        varint(out, (field << 3) | 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
    fn int(out: &mut Vec<u8>, field: u64, v: u64) {
        varint(out, field << 3);
        varint(out, v);
    }
    // ValueInfoProto { name = 1, type = 2: TypeProto { tensor_type = 1: { elem_type = 1 (FLOAT),
    // shape = 2: { dim = 1: { dim_param = 2 } } } } }
    let value_info = |name: &str, dim: &str| {
        let mut d = Vec::new();
        bytes(&mut d, 2, dim.as_bytes());
        let mut shape = Vec::new();
        bytes(&mut shape, 1, &d);
        let mut tensor = Vec::new();
        int(&mut tensor, 1, 1);
        bytes(&mut tensor, 2, &shape);
        let mut ty = Vec::new();
        bytes(&mut ty, 1, &tensor);
        let mut vi = Vec::new();
        bytes(&mut vi, 1, name.as_bytes());
        bytes(&mut vi, 2, &ty);
        vi
    };
    let mut graph = Vec::new();
    for i in 0..width {
        // NodeProto { input = 1, output = 2, name = 3, op_type = 4 }
        let mut node = Vec::new();
        bytes(&mut node, 1, format!("in{i}").as_bytes());
        bytes(&mut node, 2, format!("out{i}").as_bytes());
        bytes(&mut node, 3, format!("copy{i}").as_bytes());
        bytes(&mut node, 4, b"Identity");
        bytes(&mut graph, 1, &node);
    }
    bytes(&mut graph, 2, b"device_copy");
    for i in 0..width {
        bytes(
            &mut graph,
            11,
            &value_info(&format!("in{i}"), &format!("n{i}")),
        );
    }
    for i in 0..width {
        bytes(
            &mut graph,
            12,
            &value_info(&format!("out{i}"), &format!("n{i}")),
        );
    }
    // ModelProto { ir_version = 1, producer_name = 2, graph = 7, opset_import = 8 }
    let mut opset = Vec::new();
    bytes(&mut opset, 1, b"");
    int(&mut opset, 2, 13);
    let mut model = Vec::new();
    int(&mut model, 1, exports::onnx::IR_VERSION as u64);
    bytes(&mut model, 2, exports::onnx::PRODUCER.as_bytes());
    bytes(&mut model, 7, &graph);
    bytes(&mut model, 8, &opset);
    model
}
