//! int8 weights for the projections and the LM head (`exports onnx --weights int8`).
//!
//! Quantization is symmetric, one scale per output column, round half to even (numpy's `rint`),
//! in f32: `s = max|w| / 127` (1 for an all-zero column), `q = clamp(rint(w / s), -127, 127)`.
//! The graph stores `q + 128` as u8 (zero point 128) and multiplies with ONNX `MatMulInteger`
//! (u8 × u8: ONNX Runtime's u8 × s8 CPU kernel saturates 16-bit pair sums) on activations
//! quantized per row
//! ([`super::layers::quantize_rows`]), so a row's result does not depend on the other rows of its
//! batch and generation output stays the same for any batch size.
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
    /// int8, one scale per output column; int8 × int8 products (MatMulInteger) with activations
    /// quantized per row.
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

fn scale_of(amax: f32) -> f32 {
    if amax > 0.0 {
        amax / 127.0
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
                .map(|(v, s)| (v / s).round_ties_even().clamp(-127.0, 127.0) as i8)
        })
        .collect();
    Int8Columns { q, scales }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_columns_by_hand() {
        // [k=2, n=3]: column maxima 2, 0.5, 0 → scales 2/127, 0.5/127, 1.
        let w = [2.0, -0.25, 0.0, -1.0, 0.5, 0.0];
        let q = per_column_int8(&w, 2, 3);
        assert_eq!(q.scales, vec![2.0 / 127.0, 0.5 / 127.0, 1.0]);
        // -1 / (2/127) = -63.5 → -64 (ties to even); -0.25 / (0.5/127) = -63.5 → -64.
        assert_eq!(q.q, vec![127, -64, 0, -64, 127, 0]);
    }
}
