//! The int8 KV cache's rounding, shared by the prompts' float prefill ([`super::float_prefill`]) and
//! the decode step's attention operator ([`crate::int8_attention`]): both write what ONNX Runtime's
//! GroupQueryAttention would (round half to even of `x / scale`, saturated to −128..=127).

/// `positions × head_dim` values into int8 with one scale per channel: what GroupQueryAttention's
/// per-channel int8 cache stores for a value `x` of channel `c`.
pub(crate) fn quantize(src: &[f32], scale: &[f32], dst: &mut [i8]) {
    for (x, q) in src
        .chunks_exact(scale.len())
        .zip(dst.chunks_exact_mut(scale.len()))
    {
        for ((&x, &s), q) in x.iter().zip(scale).zip(q) {
            *q = round_to_i8(x / s);
        }
    }
}

/// `x.round_ties_even().clamp(-128.0, 127.0) as i8`, without the `rintf` call that
/// `round_ties_even` is on baseline x86-64: clamped first (which changes no result: the ties
/// just outside the range round onto its ends), a value of magnitude ≤ 128 is rounded half to
/// even by adding and subtracting 1.5 · 2²³ in round-to-nearest-even float arithmetic, a loop
/// the compiler vectorizes.
#[inline]
fn round_to_i8(x: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    ((x.clamp(-128.0, 127.0) + MAGIC) - MAGIC) as i8
}

#[cfg(test)]
mod tests {
    use super::{quantize, round_to_i8};

    #[test]
    fn the_fast_rounding_is_round_ties_even_then_saturate() {
        let want = |x: f32| x.round_ties_even().clamp(-128.0, 127.0) as i8;
        let mut cases = vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            1e-40,
            -1e-40,
        ];
        // Every half step over and beyond the range (the ties), their neighbours, and a sweep.
        for i in -600..=600 {
            let x = i as f32 * 0.5;
            cases.extend([x, x.next_up(), x.next_down()]);
        }
        let mut x = -400.0f32;
        while x < 400.0 {
            cases.push(x);
            x += 0.0137;
        }
        for x in cases {
            assert_eq!(round_to_i8(x), want(x), "{x:?}");
        }
    }

    #[test]
    fn rounds_half_to_even_and_saturates() {
        let src = [0.5, 1.5, -2.5, 2.49, 300.0, -300.0, -127.6, 0.0];
        let scale = [1.0; 8];
        let mut q = [0i8; 8];
        quantize(&src, &scale, &mut q);
        assert_eq!(q, [0, 2, -2, 2, 127, -128, -128, 0]);
        let mut q = [0i8; 4];
        quantize(&[1.0, 1.0, 0.3, 0.3], &[0.5, 0.25], &mut q);
        assert_eq!(q, [2, 4, 1, 1]);
    }
}
