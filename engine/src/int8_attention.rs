//! `ai.pco:Int8CacheAttention`: the decode step's attention over an int8 KV cache, a custom
//! ONNX Runtime operator (CPU) that `exports onnx --kv-cache int8` writes (`--kv-attention engine`, the default) in
//! place of com.microsoft `GroupQueryAttention`.
//!
//! Why: with an int8 cache, ONNX Runtime 1.31's CPU GroupQueryAttention dequantizes every cached
//! key and value once per query head (convert, scale, multiply-add, one position at a time): in
//! the decode step at 64 rows and 250 cached positions it takes 46 ms of a 114 ms step, as long
//! as over a float cache four times the bytes (BENCHMARKS.md). Here each cached row is converted
//! once for all the query heads that share it, the per-channel key scales are folded into the
//! query (`q · (s ∘ k) = (q ∘ s) · k`) and the value scales applied once to the sum.
//!
//! Semantics (what GroupQueryAttention computes for one new token per row, its inputs in its
//! order less the empty ones): row `b`'s new token sits at position `p = seqlens_k[b]`; its key gets
//! rotary at `p` (rotate-half layout, caches `[max_positions, head_dim/2]`), the key and value are
//! quantized per channel into `present[b, g, p]` (`round half to even (x / scale)`, saturated, as
//! [`crate::generate::kv_quant`] does for prompts), and query head `h` (kv head `h / (H / Hkv)`)
//! attends to positions `0..=p` of the quantized cache with `softmax(scale · q·k)`. Every row and kv
//! head is computed alone, in one fixed order, so the result does not depend on the batch, the
//! thread count or the other rows. Prompts (more than one new token a row) run through the folder's
//! `prefill.onnx`; this operator refuses them.

use std::cell::RefCell;

use ort::operator::{
    BoxedKernel, ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput,
    OperatorOutput,
};
use ort::value::TensorElementType;

use crate::generate::kv_quant::quantize;

/// The operator's domain and name in exported graphs (defined with the writer, in `exports`).
pub use exports::onnx::{ENGINE_DOMAIN as DOMAIN, INT8_CACHE_ATTENTION as OP};

/// The domain to register with every session builder (see [`crate::session::builder`]).
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?.add(Int8CacheAttention)
}

struct Int8CacheAttention;

impl Operator for Int8CacheAttention {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        use TensorElementType::{Float32, Int32, Int8};
        // qkv, past_key, past_value, seqlens_k, total_sequence_length, cos_cache, sin_cache,
        // k_scale, v_scale
        [
            Float32, Int8, Int8, Int32, Int32, Float32, Float32, Float32, Float32,
        ]
        .into_iter()
        .map(OperatorInput::required)
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        use TensorElementType::{Float32, Int8};
        [Float32, Int8, Int8]
            .into_iter()
            .map(OperatorOutput::required)
    }

    fn create_kernel<'attr>(
        &self,
        kctx: &KernelContext<'attr>,
    ) -> ort::Result<Self::Kernel<'attr>> {
        let int = |name: &str| -> ort::Result<usize> {
            let v: i64 = kctx
                .get(name)
                .ok_or_else(|| ort::Error::new(format!("{OP}: no integer attribute `{name}`")))?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| ort::Error::new(format!("{OP}: `{name}` must be positive, got {v}")))
        };
        let heads = int("num_heads")?;
        let kv_heads = int("kv_num_heads")?;
        let scale: f32 = kctx
            .get("scale")
            .ok_or_else(|| ort::Error::new(format!("{OP}: no float attribute `scale`")))?;
        if heads % kv_heads != 0 {
            return Err(ort::Error::new(format!(
                "{OP}: num_heads {heads} is not a multiple of kv_num_heads {kv_heads}"
            )));
        }
        let body = select(heads / kv_heads).ok_or_else(|| {
            ort::Error::new(format!(
                "{OP}: {heads} query heads per {kv_heads} kv heads; 1 to 8 per kv head are supported"
            ))
        })?;
        let kernel = Attention {
            heads,
            kv_heads,
            scale,
            body,
        };
        Ok(Box::new(kernel))
    }
}

struct Attention {
    heads: usize,
    kv_heads: usize,
    scale: f32,
    body: TaskFn,
}

/// Pointers the parallel tasks share; each task writes only its own row's and kv head's part.
struct Shared {
    qkv: *const f32,
    key: *mut i8,
    value: *mut i8,
    out: *mut f32,
}
// SAFETY: the tasks write disjoint regions (row b, kv head g) and only read what no task writes.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

impl Shared {
    // Accessors, so that a task's closure captures the whole (Sync) struct, not its pointers.
    fn qkv(&self) -> *const f32 {
        self.qkv
    }
    fn key(&self) -> *mut i8 {
        self.key
    }
    fn value(&self) -> *mut i8 {
        self.value
    }
    fn out(&self) -> *mut f32 {
        self.out
    }
}

fn err(msg: String) -> ort::Error {
    ort::Error::new(format!("{OP}: {msg}"))
}

impl Kernel for Attention {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let input = |i: usize| {
            ctx.input(i)?
                .ok_or_else(|| err(format!("input {i} is missing")))
        };
        let (qkv_v, past_k, past_v, lens_v, total_v) =
            (input(0)?, input(1)?, input(2)?, input(3)?, input(4)?);
        let (cos_v, sin_v, ks_v, vs_v) = (input(5)?, input(6)?, input(7)?, input(8)?);
        let (qkv_shape, qkv) = qkv_v.try_extract_tensor::<f32>()?;
        // Only the past caches' addresses are kept: the engine binds past and present to one
        // buffer, which the tasks below write, so no slice of the past may outlive this line.
        let (cache_shape, past_key_ptr) = {
            let (shape, data) = past_k.try_extract_tensor::<i8>()?;
            (shape.to_vec(), data.as_ptr())
        };
        let past_value_ptr = {
            let (shape, data) = past_v.try_extract_tensor::<i8>()?;
            if shape[..] != cache_shape[..] {
                return Err(err(format!(
                    "past_key {cache_shape:?} and past_value {shape:?} differ in shape"
                )));
            }
            data.as_ptr()
        };
        let (_, lens) = lens_v.try_extract_tensor::<i32>()?;
        let (_, total) = total_v.try_extract_tensor::<i32>()?;
        let (cos_shape, cos) = cos_v.try_extract_tensor::<f32>()?;
        let (_, sin) = sin_v.try_extract_tensor::<f32>()?;
        let (_, k_scale) = ks_v.try_extract_tensor::<f32>()?;
        let (_, v_scale) = vs_v.try_extract_tensor::<f32>()?;

        let (h, hkv) = (self.heads, self.kv_heads);
        if qkv_shape.len() != 3 || cache_shape.len() != 4 {
            return Err(err(format!(
                "expected qkv [B, S, W] and caches [B, Hkv, T, D], got {qkv_shape:?} and {cache_shape:?}"
            )));
        }
        let (b, s, w) = (
            qkv_shape[0] as usize,
            qkv_shape[1] as usize,
            qkv_shape[2] as usize,
        );
        let (past_len, d) = (cache_shape[2] as usize, cache_shape[3] as usize);
        // As GroupQueryAttention: present holds max(past, total) positions, so a buffer shared
        // between past and present (the engine's) is written in place, and a past without room
        // (a cache that grows by concatenation) is copied into a longer present.
        let total = match total {
            [t] => usize::try_from(*t).map_err(|_| err(format!("total_sequence_length {t}")))?,
            _ => return Err(err("total_sequence_length must be a scalar".into())),
        };
        let cap = past_len.max(total);
        if s != 1 {
            return Err(err(format!(
                "runs one new token a row (decode steps), got {s}; prompts run through prefill.onnx"
            )));
        }
        if w != (h + 2 * hkv) * d
            || cache_shape[0] as usize != b
            || cache_shape[1] as usize != hkv
            || d % LANES != 0
        {
            return Err(err(format!(
                "qkv {qkv_shape:?} and cache {cache_shape:?} do not fit {h} heads, {hkv} kv heads"
            )));
        }
        if lens.len() != b
            || cos_shape.len() != 2
            || cos_shape[1] as usize != d / 2
            || sin.len() != cos.len()
            || k_scale.len() != hkv * d
            || v_scale.len() != hkv * d
        {
            return Err(err(
                "seqlens_k [B], cos/sin caches [P, D/2] and scales [Hkv, 1, D] expected".into(),
            ));
        }
        let max_pos = cos_shape[0] as usize;
        let positions: Vec<usize> = lens
            .iter()
            .map(|&p| {
                usize::try_from(p)
                    .ok()
                    .filter(|&p| p < cap && p < max_pos)
                    .ok_or_else(|| {
                        err(format!(
                            "position {p} outside the cache ({cap}) or the rotary table ({max_pos})"
                        ))
                    })
            })
            .collect::<ort::Result<_>>()?;

        let present_shape = vec![b as i64, hkv as i64, cap as i64, d as i64];
        let mut out_v = ctx
            .output(0, vec![b as i64, 1, (h * d) as i64])?
            .ok_or_else(|| err("output 0 is missing".into()))?;
        let mut key_v = ctx
            .output(1, present_shape.clone())?
            .ok_or_else(|| err("output 1 is missing".into()))?;
        let mut value_v = ctx
            .output(2, present_shape)?
            .ok_or_else(|| err("output 2 is missing".into()))?;
        let out = out_v.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr();
        let key = key_v.try_extract_tensor_mut::<i8>()?.1.as_mut_ptr();
        let value = value_v.try_extract_tensor_mut::<i8>()?.1.as_mut_ptr();
        // The engine binds past and present to one buffer; otherwise present starts as past,
        // each row and kv head's `past_len` positions at the start of its `cap`.
        // SAFETY: past is `b·hkv·past_len·d` bytes, present `b·hkv·cap·d`, `cap ≥ past_len`;
        // distinct buffers do not overlap.
        unsafe {
            for (from, to) in [(past_key_ptr, key), (past_value_ptr, value)] {
                if to.cast_const() != from {
                    for r in 0..b * hkv {
                        let (src, dst) = (from.add(r * past_len * d), to.add(r * cap * d));
                        std::ptr::copy_nonoverlapping(src, dst, past_len * d);
                    }
                }
            }
        }
        let shared = Shared {
            qkv: qkv.as_ptr(),
            key,
            value,
            out,
        };
        let geo = Geometry {
            heads: h,
            kv_heads: hkv,
            head_dim: d,
            scale: self.scale,
        };
        let body = self.body;
        let task = |i: usize| {
            let (row, g) = (i / hkv, i % hkv);
            let p = positions[row];
            // SAFETY: the regions below lie inside the tensors checked above; this task alone
            // writes row `row`'s kv head `g` (cache) and its query heads (output).
            unsafe {
                let qkv_row = std::slice::from_raw_parts(shared.qkv().add(row * w), w);
                let base = (row * hkv + g) * cap * d;
                let keys = std::slice::from_raw_parts_mut(shared.key().add(base), cap * d);
                let values = std::slice::from_raw_parts_mut(shared.value().add(base), cap * d);
                let group = h / hkv;
                let out = std::slice::from_raw_parts_mut(
                    shared.out().add(row * h * d + g * group * d),
                    group * d,
                );
                let half = d / 2;
                let task = Task {
                    qkv: qkv_row,
                    g,
                    p,
                    cos: &cos[p * half..(p + 1) * half],
                    sin: &sin[p * half..(p + 1) * half],
                    k_scale: &k_scale[g * d..(g + 1) * d],
                    v_scale: &v_scale[g * d..(g + 1) * d],
                    keys,
                    values,
                    out,
                };
                run_task(body, &geo, task);
            }
        };
        ctx.par_for(b * hkv, b * hkv, task)?;
        Ok(())
    }
}

struct Geometry {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f32,
}

/// One task's inputs: row `b`'s packed q|k|v, kv head `g`, the new position `p`, the rotary
/// row at `p`, the kv head's scales, its cache rows and its query heads' output.
struct Task<'a> {
    qkv: &'a [f32],
    g: usize,
    p: usize,
    cos: &'a [f32],
    sin: &'a [f32],
    k_scale: &'a [f32],
    v_scale: &'a [f32],
    keys: &'a mut [i8],
    values: &'a mut [i8],
    out: &'a mut [f32],
}

/// A task's body for one instruction set and group size (query heads per kv head).
type TaskFn = unsafe fn(&Geometry, Task<'_>, &mut Vec<f32>);

thread_local! {
    /// Per-thread scratch: rotated queries, the rotated key, then the scores of each query head.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn run_task(f: TaskFn, geo: &Geometry, task: Task<'_>) {
    SCRATCH.with(|cell| {
        // SAFETY: `f` was chosen by `select` for an instruction set this CPU has.
        unsafe { f(geo, task, &mut cell.borrow_mut()) }
    })
}

/// The body compiled for AVX-512, for AVX2 + FMA or for the baseline, with the group size a
/// constant (so that each query head's accumulators stay in registers): 1 to 8 query heads per
/// kv head. All three compute the same: every product is a fused multiply-add and every sum
/// runs in one fixed order (16 lanes, then a fixed tree), whatever the instruction set.
fn select(group: usize) -> Option<TaskFn> {
    macro_rules! pick {
        ($($g:literal),*) => {
            match group {
                $($g => {
                    #[cfg(target_arch = "x86_64")]
                    {
                        if std::arch::is_x86_feature_detected!("avx512f") {
                            return Some(isa::avx512::<$g>);
                        }
                        if std::arch::is_x86_feature_detected!("avx2")
                            && std::arch::is_x86_feature_detected!("fma")
                        {
                            return Some(isa::avx2::<$g>);
                        }
                    }
                    Some(isa::baseline::<$g>)
                })*
                _ => None,
            }
        };
    }
    pick!(1, 2, 3, 4, 5, 6, 7, 8)
}

mod isa {
    use super::{attend, Geometry, Portable, Task};

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512<const G: usize>(geo: &Geometry, t: Task<'_>, scratch: &mut Vec<f32>) {
        attend::<super::avx512::Avx512, G>(geo, t, scratch)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2<const G: usize>(geo: &Geometry, t: Task<'_>, scratch: &mut Vec<f32>) {
        attend::<Portable, G>(geo, t, scratch)
    }

    pub unsafe fn baseline<const G: usize>(geo: &Geometry, t: Task<'_>, scratch: &mut Vec<f32>) {
        attend::<Portable, G>(geo, t, scratch)
    }
}

/// The query-key products: `scores[j·n + i] = Σ_c q[j·d + c] · k[i·d + c]`, each as 16 lanes of
/// fused multiply-adds over the channel chunks, then [`tree_sum`]'s order. The compiler does not
/// vectorize that loop nest well for AVX-512, so it has its own.
trait Scores {
    fn scores<const G: usize>(queries: &[f32], keys: &[i8], d: usize, scores: &mut [f32]);
}

struct Portable;

impl Scores for Portable {
    #[inline(always)]
    fn scores<const G: usize>(queries: &[f32], keys: &[i8], d: usize, scores: &mut [f32]) {
        let n = keys.len() / d;
        for (i, key) in keys.chunks_exact(d).enumerate() {
            let mut acc = [[0.0f32; LANES]; G];
            for c in 0..d / LANES {
                let kf = widen(
                    key[c * LANES..(c + 1) * LANES]
                        .try_into()
                        .expect("a chunk of LANES"),
                );
                for (j, acc) in acc.iter_mut().enumerate() {
                    let qc = &queries[j * d + c * LANES..j * d + (c + 1) * LANES];
                    for l in 0..LANES {
                        acc[l] = qc[l].mul_add(kf[l], acc[l]);
                    }
                }
            }
            for (j, acc) in acc.into_iter().enumerate() {
                scores[j * n + i] = tree_sum(acc);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Scores, LANES};

    pub struct Avx512;

    /// [`super::tree_sum`] of one register: halves 8, 4, 2, 1, in that order.
    #[inline(always)]
    unsafe fn tree_sum(a: __m512) -> f32 {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
        let x = _mm256_add_ps(_mm512_castps512_ps256(a), hi);
        let x = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
        let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
    }

    impl Scores for Avx512 {
        #[inline(always)]
        fn scores<const G: usize>(queries: &[f32], keys: &[i8], d: usize, scores: &mut [f32]) {
            let n = keys.len() / d;
            let chunks = d / LANES;
            assert!(queries.len() >= G * d && scores.len() >= G * n && keys.len() == n * d);
            // SAFETY: only called from `isa::avx512` (the CPU has AVX-512F); every load lies in
            // the slices checked above (chunk c of key i: bytes i·d + 16c .. +16 ≤ n·d).
            unsafe {
                let (q, k) = (queries.as_ptr(), keys.as_ptr());
                for i in 0..n {
                    let mut acc = [_mm512_setzero_ps(); G];
                    for c in 0..chunks {
                        let raw = _mm_loadu_si128(k.add(i * d + c * LANES).cast());
                        let kf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw));
                        for (j, a) in acc.iter_mut().enumerate() {
                            let qc = _mm512_loadu_ps(q.add(j * d + c * LANES));
                            *a = _mm512_fmadd_ps(qc, kf, *a);
                        }
                    }
                    for (j, a) in acc.into_iter().enumerate() {
                        *scores.get_unchecked_mut(j * n + i) = tree_sum(a);
                    }
                }
            }
        }
    }
}

const LANES: usize = 16;

/// Rotary in the rotate-half layout at one position: `(x1·cos − x2·sin, x2·cos + x1·sin)`.
#[inline(always)]
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        out[i] = a * cos[i] - b * sin[i];
        out[i + half] = b * cos[i] + a * sin[i];
    }
}

/// 16 lanes summed in a fixed tree (8, 4, 2, 1), which vectorizes.
#[inline(always)]
fn tree_sum(mut x: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            x[i] += x[i + w];
        }
        w /= 2;
    }
    x[0]
}

#[inline(always)]
fn widen(x: &[i8; LANES]) -> [f32; LANES] {
    let mut f = [0.0f32; LANES];
    for l in 0..LANES {
        f[l] = f32::from(x[l]);
    }
    f
}

/// One row's kv head: write the new key and value at `p`, then attend for its `G` query heads.
#[inline(always)]
fn attend<S: Scores, const G: usize>(geo: &Geometry, t: Task<'_>, scratch: &mut Vec<f32>) {
    let d = geo.head_dim;
    let (h, hkv, g, p) = (geo.heads, geo.kv_heads, t.g, t.p);
    let n = p + 1;
    let need = G * d + d + G * n;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (queries, rest) = scratch.split_at_mut(G * d);
    let (k_rot, scores) = rest.split_at_mut(d);
    let scores = &mut scores[..G * n];
    // The new key, rotated, and the new value, quantized into the cache at `p`.
    rotate(&t.qkv[(h + g) * d..(h + g + 1) * d], t.cos, t.sin, k_rot);
    let v_new = &t.qkv[(h + hkv + g) * d..(h + hkv + g + 1) * d];
    quantize(k_rot, t.k_scale, &mut t.keys[p * d..n * d]);
    quantize(v_new, t.v_scale, &mut t.values[p * d..n * d]);
    // Queries rotated, with the softmax scale and the key scales folded in.
    for j in 0..G {
        let hq = g * G + j;
        let q = &mut queries[j * d..(j + 1) * d];
        rotate(&t.qkv[hq * d..(hq + 1) * d], t.cos, t.sin, q);
        for (q, s) in q.iter_mut().zip(t.k_scale) {
            *q *= geo.scale * s;
        }
    }
    // scores[j·n + i] = q_j · k_i over the quantized keys 0..=p.
    S::scores::<G>(queries, &t.keys[..n * d], d, scores);
    // Unnormalized softmax weights and their sums.
    let mut sums = [0.0f32; G];
    for j in 0..G {
        let sj = &mut scores[j * n..(j + 1) * n];
        let max = sj.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut lanes = [0.0f32; LANES];
        let mut chunks = sj.chunks_exact_mut(LANES);
        for ch in &mut chunks {
            for l in 0..LANES {
                ch[l] = exp(ch[l] - max);
                lanes[l] += ch[l];
            }
        }
        for (l, v) in chunks.into_remainder().iter_mut().enumerate() {
            *v = exp(*v - max);
            lanes[l] += *v;
        }
        sums[j] = tree_sum(lanes);
    }
    // out_j = v_scale ∘ Σ_i w_ji · v_i / Σ_i w_ji, 16 channels at a time over all positions.
    for c in 0..d / LANES {
        let mut acc = [[0.0f32; LANES]; G];
        for (i, row) in t.values[..n * d].chunks_exact(d).enumerate() {
            let vf = widen(
                row[c * LANES..(c + 1) * LANES]
                    .try_into()
                    .expect("a chunk of LANES"),
            );
            for j in 0..G {
                let w = scores[j * n + i];
                for l in 0..LANES {
                    acc[j][l] = w.mul_add(vf[l], acc[j][l]);
                }
            }
        }
        for (j, (acc, sum)) in acc.iter().zip(sums).enumerate() {
            let inv = 1.0 / sum;
            let at = j * d + c * LANES;
            let scales = &t.v_scale[c * LANES..(c + 1) * LANES];
            for ((o, a), s) in t.out[at..at + LANES].iter_mut().zip(acc).zip(scales) {
                *o = a * s * inv;
            }
        }
    }
}

/// `e^x` for `x ≤ 0` to about 1 ulp (Cephes' `expf`: `x = n·ln 2 + r`, a degree-6 polynomial in
/// `r`, `2^n` from the exponent bits), branch-free so that loops over it vectorize.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let z = r * r;
    let y = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * z
        + r
        + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::{exp, Portable, Scores};

    /// Within 2 ulp-ish (2.5e-7 relative) of libm's `expf` over the softmax's range.
    #[test]
    fn exp_matches_libm_over_the_softmax_range() {
        let mut worst = 0.0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (got, want) = (f64::from(exp(x)), f64::from(x.exp()));
            if want > 1e-37 {
                worst = worst.max(((got - want) / want).abs());
            }
        }
        assert!(worst < 2.5e-7, "largest relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
    }

    /// The AVX-512 query-key products give the portable loop's bits (the same fused
    /// multiply-adds, the same reduction tree), so output does not depend on the CPU's ISA.
    #[test]
    fn avx512_scores_equal_the_portable_ones_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        {
            if !std::arch::is_x86_feature_detected!("avx512f") {
                eprintln!("SKIPPED: this CPU has no AVX-512F");
                return;
            }
            let (d, n) = (64, 37);
            let mut seed = 7u32;
            let mut next = || {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                seed >> 8
            };
            let queries: Vec<f32> = (0..3 * d).map(|_| next() as f32 / 8e6 - 1.0).collect();
            let keys: Vec<i8> = (0..n * d).map(|_| (next() % 256) as u8 as i8).collect();
            let (mut a, mut b) = (vec![0.0; 3 * n], vec![0.0; 3 * n]);
            <Portable as Scores>::scores::<3>(&queries, &keys, d, &mut a);
            // SAFETY: the CPU has AVX-512F (checked above).
            unsafe { avx512_scores::<3>(&queries, &keys, d, &mut b) };
            assert_eq!(a, b);
            assert!(a.iter().any(|&x| x != 0.0));
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512_scores<const G: usize>(q: &[f32], k: &[i8], d: usize, s: &mut [f32]) {
        <super::avx512::Avx512 as Scores>::scores::<G>(q, k, d, s)
    }
}
