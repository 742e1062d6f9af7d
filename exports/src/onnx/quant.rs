//! int8 weights for the projections and the LM head (`exports onnx --weights int8`).
//!
//! Quantization is symmetric, one scale per output column, round half to even (numpy's `rint`),
//! in f32, to **7-bit** magnitudes stored as int8: `s = max|w| / 63` (1 for an all-zero column),
//! `q = clamp(rint(w / s), -63, 63)`. The graph multiplies them with ONNX `MatMulInteger`
//! u8 × s8 on activations quantized per row to u8 with zero point 128
//! ([`super::layers::quantize_rows`]), so a row's result does not depend on the other rows of its
//! batch and generation output stays the same for any batch size.
//!
//! Why 7 bits: u8 × s8 is ONNX Runtime's fast int8 kernel (VNNI `vpdpbusd`; 2.3× its u8 × u8 on a
//! 64 × 576 × 1536 product here), but on AVX2-only CPUs it goes through `vpmaddubsw`, which
//! saturates each sum of two u8 × s8 products at 32767; with |q| ≤ 63 that sum is at most
//! 2 · 255 · 63 = 32130, so the product is exact on every x86 CPU. The lost weight bit costs less
//! than the activations' quantization already does (BENCHMARKS.md, "Quality against fp32").
//!
//! Why this form (measured in BENCHMARKS.md, "int8 weights"): ONNX Runtime's fused
//! `DynamicQuantizeMatMul` and `quantize_dynamic`'s `DynamicQuantizeLinear` take one activation
//! range per tensor, which ties each row's logits to the batch it runs in; `MatMulNBits` with
//! 8-bit blocks (`accuracy_level` 4) is row-independent but no faster than fp32 on this CPU, and
//! its 4-bit form is neither row-independent nor as fast as this one.

/// How the exported graph stores its weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As `--dtype` says (f32, f16 or bf16).
    #[default]
    Float,
    /// 7-bit values in int8, one scale per output column; u8 × s8 products (MatMulInteger) with
    /// activations quantized per row.
    Int8,
}

impl WeightFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WeightFormat::Float => "float",
            WeightFormat::Int8 => "int8",
        }
    }
}

/// Largest weight magnitude: 7 bits (see the module's comment).
pub const WEIGHT_QMAX: f32 = 63.0;

fn scale_of(amax: f32) -> f32 {
    if amax > 0.0 {
        amax / WEIGHT_QMAX
    } else {
        1.0
    }
}

/// int8 weights `[k, n]` (row-major, the right operand of MatMul) and their `n` column scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Columns {
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
}

/// Quantize `w` `[k, n]` (row-major) per output column.
pub fn per_column_int8(w: &[f32], k: usize, n: usize) -> Int8Columns {
    assert_eq!(
        w.len(),
        k * n,
        "per_column_int8: {k}×{n} weights; this is a bug"
    );
    let mut amax = vec![0f32; n];
    for row in w.chunks_exact(n) {
        for (m, v) in amax.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    let scales: Vec<f32> = amax.iter().map(|&m| scale_of(m)).collect();
    let q = w
        .chunks_exact(n)
        .flat_map(|row| {
            row.iter()
                .zip(&scales)
                .map(|(v, s)| (v / s).round_ties_even().clamp(-WEIGHT_QMAX, WEIGHT_QMAX) as i8)
        })
        .collect();
    Int8Columns { q, scales }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_columns_by_hand() {
        // [k=3, n=3]: column maxima 63, 31.5, 0 → scales 1, 0.5 (exact in f32), 1.
        let w = [63.0, -0.75, 0.0, -31.5, 31.5, 0.0, 2.5, 0.25, 0.0];
        let q = per_column_int8(&w, 3, 3);
        assert_eq!(q.scales, vec![1.0, 0.5, 1.0]);
        // Ties to even: -31.5 → -32, -0.75 / 0.5 = -1.5 → -2, 2.5 → 2, 0.25 / 0.5 = 0.5 → 0.
        assert_eq!(q.q, vec![63, -2, 0, -32, 63, 0, 2, 0, 0]);
    }
}
