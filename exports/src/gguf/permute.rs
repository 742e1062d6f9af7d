//! llama.cpp's row permutation of the Q and K projections, and its inverse.
//!
//! Hugging Face Llama applies rotary embeddings in "rotate-half" form: within each head, row `i`
//! is paired with row `i + head_dim/2`. ggml pairs adjacent rows `2i, 2i+1` instead, so
//! `convert_hf_to_gguf.py` reorders the rows of `q_proj` and `k_proj` per head:
//!
//! ```python
//! def permute(weights, n_head, n_head_kv):
//!     if n_head_kv is not None and n_head != n_head_kv:
//!         n_head = n_head_kv
//!     return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
//!             .swapaxes(1, 2).reshape(weights.shape))
//! ```
//!
//! i.e. GGUF row `h*hd + 2i + half` is HF row `h*hd + half*hd/2 + i`. Importing must undo it
//! (transformers' `LlamaTensorProcessor._reverse_permute_weights`); without that the model still
//! writes fluent-looking text while attending wrongly.

/// For each output row, the input row it is copied from (`hf_from_gguf[hf_row] = gguf_row`).
fn hf_from_gguf(rows: usize, n_head: usize) -> Vec<usize> {
    let hd = rows / n_head;
    let half = hd / 2;
    (0..rows)
        .map(|r| {
            let (h, j) = (r / hd, r % hd);
            let (which, i) = (j / half, j % half);
            h * hd + 2 * i + which
        })
        .collect()
}

fn gather_rows(data: &[f32], cols: usize, from: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len());
    for &src in from {
        out.extend_from_slice(&data[src * cols..(src + 1) * cols]);
    }
    out
}

fn check(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Result<(), String> {
    if data.len() != rows * cols {
        return Err(format!(
            "{} values do not form a [{rows}, {cols}] matrix",
            data.len()
        ));
    }
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return Err(format!(
            "{rows} rows do not split into {n_head} heads of even size"
        ));
    }
    Ok(())
}

/// Undo llama.cpp's permutation of a row-major `[rows, cols]` Q or K weight with `n_head` heads
/// (the KV head count for K).
pub fn unpermute_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> Result<Vec<f32>, String> {
    check(data, rows, cols, n_head)?;
    Ok(gather_rows(data, cols, &hf_from_gguf(rows, n_head)))
}

/// llama.cpp's permutation itself (HF layout → GGUF layout); the inverse of [`unpermute_rows`].
pub fn permute_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> Result<Vec<f32>, String> {
    check(data, rows, cols, n_head)?;
    let mut gguf_from_hf = vec![0; rows];
    for (hf, g) in hf_from_gguf(rows, n_head).into_iter().enumerate() {
        gguf_from_hf[g] = hf;
    }
    Ok(gather_rows(data, cols, &gguf_from_hf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_small_case_two_heads_of_six() {
        // One column, so each value is its GGUF row index. Per head of 6 (half = 3), HF row
        // `which*3 + i` comes from GGUF row `2i + which`: HF order = GGUF rows [0, 2, 4, 1, 3, 5].
        let gguf: Vec<f32> = (0..12).map(|r| r as f32).collect();
        let hf = unpermute_rows(&gguf, 12, 1, 2).unwrap();
        assert_eq!(hf, [0., 2., 4., 1., 3., 5., 6., 8., 10., 7., 9., 11.]);
        // llama.cpp's direction on HF rows 0..6 of one head: [0, 3, 1, 4, 2, 5].
        let hf_rows: Vec<f32> = (0..6).map(|r| r as f32).collect();
        assert_eq!(
            permute_rows(&hf_rows, 6, 1, 1).unwrap(),
            [0., 3., 1., 4., 2., 5.]
        );
    }

    #[test]
    fn whole_rows_move_together() {
        // 1 head of 4 rows, 2 columns: GGUF rows [a, b, c, d] -> HF [a, c, b, d].
        let g = [1., 2., 3., 4., 5., 6., 7., 8.];
        assert_eq!(
            unpermute_rows(&g, 4, 2, 1).unwrap(),
            [1., 2., 5., 6., 3., 4., 7., 8.]
        );
    }

    #[test]
    fn permute_then_unpermute_is_identity() {
        for (rows, cols, heads) in [(64, 3, 4), (24, 5, 3), (8, 1, 1), (576, 2, 9)] {
            let x: Vec<f32> = (0..rows * cols).map(|v| (v as f32).sin()).collect();
            let p = permute_rows(&x, rows, cols, heads).unwrap();
            assert_ne!(
                p, x,
                "{rows}x{cols}/{heads}: the permutation must move something"
            );
            assert_eq!(unpermute_rows(&p, rows, cols, heads).unwrap(), x);
            assert_eq!(
                permute_rows(
                    &unpermute_rows(&x, rows, cols, heads).unwrap(),
                    rows,
                    cols,
                    heads
                )
                .unwrap(),
                x
            );
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(unpermute_rows(&[0.0; 6], 6, 1, 4).is_err());
        assert!(unpermute_rows(&[0.0; 6], 3, 2, 1).is_err());
        assert!(unpermute_rows(&[0.0; 5], 6, 1, 1).is_err());
    }
}
