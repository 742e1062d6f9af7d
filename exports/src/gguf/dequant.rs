//! ggml block formats to f32, bit-identical to gguf-py's numpy `gguf.quants.dequantize`, which is
//! what transformers' GGUF loader uses. Each formula below is evaluated in f32 in the same order
//! as numpy does, so the imported weights equal transformers' to the bit. (For Q4_1, `d * q` of an
//! f16 scale and a 4-bit integer is always exact in f32, so the only rounding is the `+ m`, and a
//! fused multiply-add would give the same result; Rust does not fuse on its own anyway.)
//!
//! Block layouts (little-endian, `d` and `m` are f16):
//! * Q8_0: `d`, then 32 × i8 `q`;                         value = `q * d`
//! * Q4_0: `d`, then 16 bytes of nibbles;                 value = `d * (nibble - 8)`
//! * Q4_1: `d`, `m`, then 16 bytes of nibbles;            value = `(d * nibble) + m`
//!
//! In both 4-bit formats byte `j` holds element `j` in its low nibble and element `j + 16` in its
//! high nibble.

use half::{bf16, f16};

use crate::gguf::types::GgmlType;

/// The types [`dequantize`] handles, for error messages.
pub const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1";

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn q8_0(blocks: &[u8], out: &mut Vec<f32>) {
    for blk in blocks.chunks_exact(34) {
        let d = f16_at(blk, 0);
        out.extend(blk[2..].iter().map(|&q| (q as i8) as f32 * d));
    }
}

fn q4_0(blocks: &[u8], out: &mut Vec<f32>) {
    for blk in blocks.chunks_exact(18) {
        let d = f16_at(blk, 0);
        let qs = &blk[2..];
        out.extend(qs.iter().map(|&q| d * ((q & 0x0F) as i8 - 8) as f32));
        out.extend(qs.iter().map(|&q| d * ((q >> 4) as i8 - 8) as f32));
    }
}

fn q4_1(blocks: &[u8], out: &mut Vec<f32>) {
    for blk in blocks.chunks_exact(20) {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        let qs = &blk[4..];
        out.extend(qs.iter().map(|&q| d * (q & 0x0F) as f32 + m));
        out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
    }
}

/// `numel` values of type `ty` from `bytes` (which must be exactly their size). The error says
/// why, without the file name (the caller adds it).
pub fn dequantize(ty: GgmlType, bytes: &[u8], numel: usize) -> Result<Vec<f32>, String> {
    if !numel.is_multiple_of(ty.block_elems)
        || bytes.len() != numel / ty.block_elems * ty.block_bytes
    {
        return Err(format!(
            "{} bytes do not hold {numel} values of type {ty} ({} bytes per {} values)",
            bytes.len(),
            ty.block_bytes,
            ty.block_elems
        ));
    }
    let mut out = Vec::with_capacity(numel);
    match ty.name {
        "F32" => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        "F16" => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        "BF16" => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        "Q8_0" => q8_0(bytes, &mut out),
        "Q4_0" => q4_0(bytes, &mut out),
        "Q4_1" => q4_1(bytes, &mut out),
        other => {
            return Err(format!(
                "unsupported tensor type {other} (supported: {SUPPORTED})"
            ))
        }
    }
    debug_assert_eq!(out.len(), numel);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(name: &str) -> GgmlType {
        GgmlType::by_name(name).unwrap()
    }

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn f32_f16_bf16_are_exact() {
        let vals = [1.5f32, -0.0, 65504.0, 2.0f32.powi(-24)];
        let f32_bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(dequantize(ty("F32"), &f32_bytes, 4).unwrap(), vals);
        // f16 0x3C00 = 1.0, 0xC000 = -2.0, 0x7BFF = 65504 (max), 0x0001 = 2^-24 (smallest subnormal)
        let f16b = [0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B, 0x01, 0x00];
        assert_eq!(
            dequantize(ty("F16"), &f16b, 4).unwrap(),
            [1.0, -2.0, 65504.0, 2.0f32.powi(-24)]
        );
        // bf16 0x3FC0 = 1.5, 0xC120 = -10.0
        assert_eq!(
            dequantize(ty("BF16"), &[0xC0, 0x3F, 0x20, 0xC1], 2).unwrap(),
            [1.5, -10.0]
        );
    }

    #[test]
    fn q8_0_block_by_hand() {
        // d = 0.5; q = 0, 1, -1, 127, -128, then 2, 3, … (i - 3 for i >= 5)
        let mut blk = f16_bytes(0.5).to_vec();
        let qs: Vec<i8> = (0..32)
            .map(|i| match i {
                0 => 0,
                1 => 1,
                2 => -1,
                3 => 127,
                4 => -128,
                _ => i as i8 - 3,
            })
            .collect();
        blk.extend(qs.iter().map(|&q| q as u8));
        let got = dequantize(ty("Q8_0"), &blk, 32).unwrap();
        assert_eq!(&got[..5], &[0.0, 0.5, -0.5, 63.5, -64.0]);
        assert_eq!(got[5], 1.0); // 2 * 0.5
        assert_eq!(got[31], 14.0); // 28 * 0.5
    }

    #[test]
    fn q4_0_block_by_hand_low_nibbles_first() {
        // d = 0.25; byte j = (hi << 4) | lo with lo = j, hi = 15 - j.
        let mut blk = f16_bytes(0.25).to_vec();
        blk.extend((0..16u8).map(|j| ((15 - j) << 4) | j));
        let got = dequantize(ty("Q4_0"), &blk, 32).unwrap();
        // element j (j < 16) = 0.25 * (j - 8); element 16 + j = 0.25 * (15 - j - 8)
        assert_eq!(got[0], -2.0);
        assert_eq!(got[8], 0.0);
        assert_eq!(got[15], 1.75);
        assert_eq!(got[16], 1.75);
        assert_eq!(got[31], -2.0);
        // Two blocks with different scales keep their order.
        let mut two = blk.clone();
        two.extend(f16_bytes(-1.0));
        two.extend([0x9Fu8; 16]); // lo = 15 -> -7, hi = 9 -> 1
        let got = dequantize(ty("Q4_0"), &two, 64).unwrap();
        assert_eq!(got[32], -7.0);
        assert_eq!(got[48], -1.0);
    }

    #[test]
    fn q4_1_block_by_hand_and_unfused() {
        // d = 0.1, stored as f16 1638/16384 = 0.0999755859375; m = -1.0; nibbles lo = j, hi = 15.
        let d = f16::from_f32(0.1).to_f32();
        assert_eq!(d, 1638.0 / 16384.0);
        let mut blk = f16_bytes(0.1).to_vec();
        blk.extend(f16_bytes(-1.0));
        blk.extend((0..16u8).map(|j| 0xF0 | j));
        let got = dequantize(ty("Q4_1"), &blk, 32).unwrap();
        assert_eq!(got[0], -1.0);
        // d * 3 = 4914/16384 (exact in f32); - 1 = -11470/16384 (exact).
        assert_eq!(got[3], -(11470.0 / 16384.0));
        // d * 15 = 24570/16384; - 1 = 8186/16384 (both exact).
        assert_eq!(got[16], 8186.0 / 16384.0);
        assert_eq!(got[31], 8186.0 / 16384.0);
        // The sum rounds in f32: d = 1024, m = 2^-14 (both exact f16); 1024 * 15 + 2^-14 is below
        // half an f32 ulp of 15360 (2^-10), so it rounds to 15360; a nibble of 0 gives m itself.
        let mut blk2 = f16_bytes(1024.0).to_vec();
        blk2.extend(f16_bytes(2f32.powi(-14)));
        blk2.extend([0xF0u8; 16]);
        let got = dequantize(ty("Q4_1"), &blk2, 32).unwrap();
        assert_eq!(got[0], 2f32.powi(-14));
        assert_eq!(got[16], 15360.0);
    }

    /// Random blocks (finite f16 scales, subnormals included) against gguf-py's numpy
    /// dequantization, bit for bit; made by `scripts/reference/gguf_dequant_reference.py`.
    #[test]
    fn random_blocks_match_gguf_py_bit_for_bit() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/gguf_dequant.json")).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 6);
        for case in cases {
            let name = case["type"].as_str().unwrap();
            let hex = case["bytes_hex"].as_str().unwrap();
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let numel = case["numel"].as_u64().unwrap() as usize;
            let want: Vec<u32> = case["f32_bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u32)
                .collect();
            let got: Vec<u32> = dequantize(ty(name), &bytes, numel)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn wrong_sizes_and_unsupported_types_are_errors() {
        let e = dequantize(ty("Q8_0"), &[0u8; 33], 32).unwrap_err();
        assert!(e.contains("33 bytes"), "{e}");
        let e = dequantize(ty("Q4_K"), &[0u8; 144], 256).unwrap_err();
        assert!(e.contains("unsupported tensor type Q4_K"), "{e}");
    }
}
