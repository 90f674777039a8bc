//! Window attention and decomposed relative positions, as Segment Anything's image encoder
//! (`segment_anything/modeling/image_encoder.py`) and TinyViT define them.
//!
//! Tokens are channels-last rows `[B, H, W, C]`. A window partition pads the grid at the bottom
//! and right to a multiple of the window side and regroups it into `[B·nH·nW, ws·ws, C]`; the
//! padded tokens take part in attention like any other (neither reference masks them), so the
//! caller says what a padded row holds (e.g. the projection of a zero token, i.e. its bias).

/// Pads `x: [B, H, W, C]` (flat) with `pad_row` and regroups it into windows
/// `[B·nH·nW, ws·ws, C]`; returns the windows and `(nH, nW)`.
pub fn window_partition(
    x: &[f32],
    (b, h, w): (usize, usize, usize),
    c: usize,
    ws: usize,
    pad_row: &[f32],
) -> (Vec<f32>, (usize, usize)) {
    debug_assert_eq!(x.len(), b * h * w * c);
    debug_assert_eq!(pad_row.len(), c);
    let (nh, nw) = (h.div_ceil(ws), w.div_ceil(ws));
    let mut out = vec![0f32; b * nh * nw * ws * ws * c];
    // One window per task (a copy of its rows; both cores copy).
    super::team::for_each_chunk(&mut out, (ws * ws * c).max(1), |win, dst| {
        let (bi, wy, wx) = (win / (nh * nw), (win / nw) % nh, win % nw);
        for ty in 0..ws {
            for tx in 0..ws {
                let (y, xx) = (wy * ws + ty, wx * ws + tx);
                let row = if y < h && xx < w {
                    let src = ((bi * h + y) * w + xx) * c;
                    &x[src..src + c]
                } else {
                    pad_row
                };
                dst[(ty * ws + tx) * c..(ty * ws + tx + 1) * c].copy_from_slice(row);
            }
        }
    });
    (out, (nh, nw))
}

/// Inverse of [`window_partition`], dropping the padding: `[B·nH·nW, ws·ws, C] -> [B, H, W, C]`.
pub fn window_unpartition(windows: &[f32], (b, h, w): (usize, usize, usize), c: usize, ws: usize) -> Vec<f32> {
    let (nh, nw) = (h.div_ceil(ws), w.div_ceil(ws));
    debug_assert_eq!(windows.len(), b * nh * nw * ws * ws * c);
    let mut out = vec![0f32; b * h * w * c];
    // One output row of the grid per task.
    super::team::for_each_chunk(&mut out, (w * c).max(1), |by, dst| {
        let (bi, y) = (by / h, by % h);
        for x in 0..w {
            let win = (bi * nh + y / ws) * nw + x / ws;
            let src = (win * ws * ws + (y % ws) * ws + x % ws) * c;
            dst[x * c..(x + 1) * c].copy_from_slice(&windows[src..src + c]);
        }
    });
    out
}

/// `get_rel_pos(q_size, k_size, rel_pos)`: the relative-position embeddings `rel_pos: [L, D]`
/// gathered into a `[q_size, k_size, D]` table, after resampling `L` to `2·max(q, k) − 1` with
/// `F.interpolate(mode="linear")` when it differs.
pub fn rel_pos_table(rel_pos: &[f32], d: usize, q_size: usize, k_size: usize) -> Vec<f32> {
    let len = rel_pos.len() / d;
    let max_dist = 2 * q_size.max(k_size) - 1;
    let resized;
    let table = if len == max_dist {
        rel_pos
    } else {
        resized = resample_linear_rows(rel_pos, len, d, max_dist);
        &resized[..]
    };
    let qs = (k_size as f64 / q_size as f64).max(1.0);
    let ks = (q_size as f64 / k_size as f64).max(1.0);
    let mut out = vec![0f32; q_size * k_size * d];
    for qi in 0..q_size {
        for ki in 0..k_size {
            // As the reference: float coordinates, truncated by `.long()`.
            let idx = ((qi as f64 * qs - ki as f64 * ks) + (k_size as f64 - 1.0) * ks) as usize;
            let dst = (qi * k_size + ki) * d;
            out[dst..dst + d].copy_from_slice(&table[idx * d..(idx + 1) * d]);
        }
    }
    out
}

/// `F.interpolate(x[None].permute(0, 2, 1), size=out_len, mode="linear", align_corners=False)`
/// on rows `x: [len, D]`, in f32 as PyTorch computes it.
fn resample_linear_rows(x: &[f32], len: usize, d: usize, out_len: usize) -> Vec<f32> {
    let scale = len as f32 / out_len as f32;
    let mut out = vec![0f32; out_len * d];
    for i in 0..out_len {
        let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(len - 1);
        let i1 = (i0 + 1).min(len - 1);
        let l1 = (src - i0 as f32).clamp(0.0, 1.0);
        let l0 = 1.0 - l1;
        for j in 0..d {
            out[i * d + j] = l0 * x[i0 * d + j] + l1 * x[i1 * d + j];
        }
    }
    out
}

/// TinyViT's attention-bias index table for a `ws × ws` window: each (query, key) pair maps to
/// its offset `(|Δy|, |Δx|)`, numbered in first-seen order as `itertools.product` visits them.
pub fn attention_bias_index(ws: usize) -> Vec<usize> {
    let n = ws * ws;
    let mut seen: std::collections::HashMap<(usize, usize), usize> = Default::default();
    let mut idx = Vec::with_capacity(n * n);
    for p1 in 0..n {
        for p2 in 0..n {
            let (y1, x1, y2, x2) = (p1 / ws, p1 % ws, p2 / ws, p2 % ws);
            let off = (y1.abs_diff(y2), x1.abs_diff(x2));
            let next = seen.len();
            idx.push(*seen.entry(off).or_insert(next));
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_then_unpartition_is_identity_with_padding() {
        let (b, h, w, c, ws) = (2, 5, 7, 3, 3);
        let x: Vec<f32> = (0..b * h * w * c).map(|i| i as f32).collect();
        let pad = vec![-1.0; c];
        let (wins, (nh, nw)) = window_partition(&x, (b, h, w), c, ws, &pad);
        assert_eq!((nh, nw), (2, 3));
        assert_eq!(wins.iter().filter(|v| **v == -1.0).count(), (b * nh * nw * ws * ws - b * h * w) * c);
        assert_eq!(window_unpartition(&wins, (b, h, w), c, ws), x);
    }

    #[test]
    fn rel_pos_table_indexes_by_offset() {
        let d = 2;
        let rel: Vec<f32> = (0..5 * d).map(|i| i as f32).collect(); // L = 5 for size 3
        let t = rel_pos_table(&rel, d, 3, 3);
        // q=0,k=2 -> offset -2 -> row 0; q=2,k=0 -> row 4.
        assert_eq!(&t[(2) * d..3 * d], &rel[0..d]);
        assert_eq!(&t[(2 * 3) * d..(2 * 3 + 1) * d], &rel[4 * d..5 * d]);
        // Resampling keeps the ends of a linear ramp.
        let t = rel_pos_table(&rel, d, 4, 4);
        assert_eq!(t.len(), 4 * 4 * d);
    }

    #[test]
    fn attention_bias_index_counts_every_offset_once() {
        let idx = attention_bias_index(3);
        assert_eq!(idx.len(), 81);
        assert_eq!(*idx.iter().max().unwrap(), 8);
        assert_eq!(idx[0], 0);
    }
}
