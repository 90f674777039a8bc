//! `segment_anything/utils/amg.py`, function for function: the point grids and crop boxes of
//! the automatic mask generator, the stability score, mask boxes, the crop-edge test, box NMS
//! (torchvision's `batched_nms` with one category) and `remove_small_regions` (OpenCV's
//! `connectedComponentsWithStats`, 8-connectivity, written here). Checked one by one against
//! the reference in `tests/suite/amg.rs` (`tools/reference/gen_amg.py`).
//!
//! Boxes are XYXY with *inclusive* right and bottom edges, as `batched_mask_to_box` makes them
//! (a one-pixel mask at `(x, y)` has the box `[x, y, x, y]`).

use super::mask::Mask;
use super::rle::Rle;
use crate::sam::transforms::{bilinear, linear_taps};
use crate::Result;

/// `build_point_grid`: `n × n` points evenly spaced in `[0, 1]²`, row by row (`x` fastest),
/// each at the centre of its cell, computed as `np.linspace` does.
pub fn build_point_grid(n: usize) -> Vec<[f64; 2]> {
    let offset = 1.0 / (2 * n) as f64;
    let side = linspace(offset, 1.0 - offset, n);
    side.iter().flat_map(|&y| side.iter().map(move |&x| [x, y])).collect()
}

/// `np.linspace(start, stop, num)`: `i · step + start`, the last value exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = v.last_mut() {
        *last = stop;
    }
    v
}

/// `build_all_layer_point_grids`: for crop layer `i`, the grid of
/// `int(n_per_side / scale_per_layer^i)` points a side.
pub fn build_all_layer_point_grids(n_per_side: usize, n_layers: usize, scale_per_layer: usize) -> Vec<Vec<[f64; 2]>> {
    (0..=n_layers)
        .map(|i| {
            let n = (n_per_side as f64 / (scale_per_layer as f64).powi(i as i32)) as usize;
            build_point_grid(n)
        })
        .collect()
}

/// `generate_crop_boxes`: the whole image (layer 0), then for layer `i ≥ 1` a `2^i × 2^i` grid
/// of overlapping crops, XYXY in pixels, in the reference's order (x outer, y inner). Returns
/// the boxes and each box's layer.
pub fn generate_crop_boxes(
    (im_h, im_w): (usize, usize),
    n_layers: usize,
    overlap_ratio: f64,
) -> (Vec<[usize; 4]>, Vec<usize>) {
    let mut boxes = vec![[0, 0, im_w, im_h]];
    let mut layers = vec![0];
    let short_side = im_h.min(im_w) as f64;
    let crop_len = |orig_len: usize, n_crops: usize, overlap: usize| -> usize {
        ((overlap as f64 * (n_crops - 1) as f64 + orig_len as f64) / n_crops as f64).ceil() as usize
    };
    for i_layer in 0..n_layers {
        let n = 1usize << (i_layer + 1);
        let overlap = (overlap_ratio * short_side * (2.0 / n as f64)) as usize;
        let crop_w = crop_len(im_w, n, overlap);
        let crop_h = crop_len(im_h, n, overlap);
        let x0s: Vec<usize> = (0..n).map(|i| crop_w.saturating_sub(overlap) * i).collect();
        let y0s: Vec<usize> = (0..n).map(|i| crop_h.saturating_sub(overlap) * i).collect();
        for &x0 in &x0s {
            for &y0 in &y0s {
                boxes.push([x0, y0, (x0 + crop_w).min(im_w), (y0 + crop_h).min(im_h)]);
                layers.push(i_layer + 1);
            }
        }
    }
    (boxes, layers)
}

/// `uncrop_boxes_xyxy` for one box.
pub fn uncrop_box(b: [i64; 4], crop_box: [usize; 4]) -> [i64; 4] {
    let (x0, y0) = (crop_box[0] as i64, crop_box[1] as i64);
    [b[0] + x0, b[1] + y0, b[2] + x0, b[3] + y0]
}

/// `uncrop_points` for one point.
pub fn uncrop_point(p: [f64; 2], crop_box: [usize; 4]) -> [f64; 2] {
    [p[0] + crop_box[0] as f64, p[1] + crop_box[1] as f64]
}

/// `is_box_near_crop_edge` for one box given in crop coordinates: some edge lies within
/// `atol` of the crop's edge but not of the image's (`orig_box`), compared in f32.
pub fn is_box_near_crop_edge(b: [i64; 4], crop_box: [usize; 4], orig_box: [usize; 4], atol: f32) -> bool {
    let b = uncrop_box(b, crop_box);
    (0..4).any(|k| {
        let v = b[k] as f32;
        let near_crop = (v - crop_box[k] as f32).abs() <= atol;
        let near_image = (v - orig_box[k] as f32).abs() <= atol;
        near_crop && !near_image
    })
}

/// `box_xyxy_to_xywh`: `[x0, y0, x1 - x0, y1 - y0]`.
pub fn box_xyxy_to_xywh<T: Copy + std::ops::Sub<Output = T>>(b: [T; 4]) -> [T; 4] {
    [b[0], b[1], b[2] - b[0], b[3] - b[1]]
}

/// `calculate_stability_score` of one logit plane: the pixels above `threshold + offset` over
/// those above `threshold − offset` (the first set is inside the second), as f32; NaN when
/// both are empty, as the reference's `0 / 0`.
pub fn calculate_stability_score(logits: &[f32], mask_threshold: f32, offset: f32) -> f32 {
    let (hi, lo) = (mask_threshold + offset, mask_threshold - offset);
    let (mut inter, mut union) = (0u64, 0u64);
    for &v in logits {
        inter += u64::from(v > hi);
        union += u64::from(v > lo);
    }
    inter as f32 / union as f32
}

/// `batched_mask_to_box` for one row-major `w × h` mask: `[left, top, right, bottom]`
/// (inclusive), `[0, 0, 0, 0]` when empty.
pub fn mask_to_box(mask: &[bool], w: usize, h: usize) -> [i64; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..h {
        let row = &mask[y * w..(y + 1) * w];
        let (Some(first), Some(last)) = (row.iter().position(|&v| v), row.iter().rposition(|&v| v)) else {
            continue;
        };
        y0 = y0.min(y);
        y1 = y;
        x0 = x0.min(first);
        x1 = x1.max(last);
    }
    if y0 == usize::MAX {
        return [0; 4];
    }
    [x0 as i64, y0 as i64, x1 as i64, y1 as i64]
}

/// torchvision's `nms` (and `batched_nms` with a single category): boxes in decreasing score
/// order, ties in index order (the reference's stable sort), each dropping the later boxes
/// whose IoU with it exceeds `iou_threshold`; IoU in f32 with areas `(x1 − x0)·(y1 − y0)`,
/// compared with the threshold in f64 (the kernel's `float > double`; a zero-area pair's NaN
/// never suppresses). Returns the kept indices in that order.
///
/// Above 1,000 boxes torchvision re-sorts the kept boxes with an unstable sort, so tied scores
/// may come out in another order there (the same boxes are kept); here ties stay in index order.
pub fn box_nms(boxes: &[[i64; 4]], scores: &[f32], iou_threshold: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    // Stable: equal scores keep index order. NaN sorts as torch sorts it, above everything.
    order.sort_by(|&a, &b| {
        let (sa, sb) = (scores[a], scores[b]);
        match (sa.is_nan(), sb.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            _ => sb.partial_cmp(&sa).unwrap_or(std::cmp::Ordering::Equal),
        }
    });
    let f: Vec<[f32; 4]> = boxes.iter().map(|b| b.map(|v| v as f32)).collect();
    let areas: Vec<f32> = f.iter().map(|b| (b[2] - b[0]) * (b[3] - b[1])).collect();
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (oi, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = f[i];
        for &j in &order[oi + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = f[j];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = w * h;
            let iou = inter / (areas[i] + areas[j] - inter);
            if f64::from(iou) > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// What [`remove_small_regions`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionMode {
    /// Fill background regions smaller than the threshold (holes; a small background region
    /// touching the border counts too, as in the reference).
    Holes,
    /// Drop foreground regions smaller than the threshold; if every region is that small,
    /// keep the largest.
    Islands,
}

/// 8-connected regions of the pixels equal to `value`: a label per pixel (0 elsewhere) and per
/// region (labels from 1) its pixel count, numbered as OpenCV numbers them: by the first 2×2
/// block (scanned row pair by row pair, left to right) the region reaches, the order of
/// `connectedComponentsWithStats`' block-based scan.
fn regions8(data: &[bool], w: usize, h: usize, value: bool) -> (Vec<u32>, Vec<u64>) {
    let mut raw = vec![0u32; w * h];
    let mut found: Vec<(u64, (usize, usize))> = Vec::new(); // (size, first block)
    let mut stack = Vec::new();
    for start in 0..w * h {
        if data[start] != value || raw[start] != 0 {
            continue;
        }
        let label = found.len() as u32 + 1;
        raw[start] = label;
        stack.push(start);
        let (mut size, mut block) = (0u64, (usize::MAX, usize::MAX));
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y) = (i % w, i / w);
            block = block.min((y / 2, x / 2));
            for ny in y.saturating_sub(1)..(y + 2).min(h) {
                for nx in x.saturating_sub(1)..(x + 2).min(w) {
                    let j = ny * w + nx;
                    if data[j] == value && raw[j] == 0 {
                        raw[j] = label;
                        stack.push(j);
                    }
                }
            }
        }
        found.push((size, block));
    }
    let mut order: Vec<usize> = (0..found.len()).collect();
    order.sort_by_key(|&r| found[r].1);
    let mut relabel = vec![0u32; found.len() + 1];
    for (new, &old) in order.iter().enumerate() {
        relabel[old + 1] = new as u32 + 1;
    }
    let labels = raw.iter().map(|&l| relabel[l as usize]).collect();
    let sizes = order.iter().map(|&r| found[r].0).collect();
    (labels, sizes)
}

/// `remove_small_regions`: the mask with the regions (of `mode`) smaller than `area_thresh`
/// pixels removed, and whether anything changed.
pub fn remove_small_regions(mask: &Mask, area_thresh: f64, mode: RegionMode) -> (Mask, bool) {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let holes = mode == RegionMode::Holes;
    // Regions of the working mask `holes ^ mask`: the background for holes, else the foreground.
    let (labels, sizes) = regions8(mask.data(), w, h, !holes);
    let small: Vec<bool> = sizes.iter().map(|&s| (s as f64) < area_thresh).collect();
    if !small.iter().any(|&s| s) {
        return (mask.clone(), false);
    }
    // Pixels whose label is in the fill set become foreground; label 0 is the working mask's
    // background.
    let mut fill = vec![false; sizes.len() + 1];
    if holes {
        fill[0] = true;
        for (r, &s) in small.iter().enumerate() {
            fill[r + 1] = s;
        }
    } else {
        for (r, &s) in small.iter().enumerate() {
            fill[r + 1] = !s;
        }
        if !fill.iter().any(|&f| f) {
            // Every region is small: keep the largest (the first of equals, as `np.argmax`).
            let mut best = 0;
            for (r, &s) in sizes.iter().enumerate() {
                if s > sizes[best] {
                    best = r;
                }
            }
            fill[best + 1] = true;
        }
    }
    let data: Vec<bool> = labels.iter().map(|&l| fill[l as usize]).collect();
    (Mask::from_bools(mask.width(), mask.height(), &data).expect("same size as a valid mask"), true)
}

/// What one decoder logit plane gives at crop resolution, computed in one streaming pass
/// (column by column, never holding the crop-size plane): the stability counts, the mask's box
/// in crop coordinates, and its RLE in the *uncropped* image.
#[derive(Debug, Clone)]
pub struct PlaneSummary {
    /// `calculate_stability_score` of the crop-resolution logits.
    pub stability: f32,
    /// `batched_mask_to_box` of `logits > threshold`, crop coordinates.
    pub bbox: [i64; 4],
    /// The mask padded back into the image (`uncrop_masks`), column-major RLE.
    pub rle: Rle,
}

/// The resolutions one crop's planes go through.
#[derive(Debug, Clone, Copy)]
pub struct PlaneGeometry {
    /// The decoder's low-resolution logits, `(4h, 4w)`.
    pub low_size: (usize, usize),
    /// The encoder's square input size.
    pub image_size: usize,
    /// The crop resized into the encoder, `(h, w)`.
    pub input_size: (usize, usize),
    /// The crop box in the image, XYXY.
    pub crop_box: [usize; 4],
    /// The image, `(height, width)`.
    pub orig_size: (usize, usize),
}

/// `postprocess_masks` of one low-resolution plane to the crop's size (exactly the reference's
/// two bilinear resizes), followed by `calculate_stability_score`, `> mask_threshold`,
/// `batched_mask_to_box`, `uncrop_masks` and `mask_to_rle_pytorch`, streamed: the first resize
/// (to the encoder input, at most `image_size²`) is held, the second is computed a column at a
/// time, so memory does not grow with the image.
pub fn summarise_plane(low_res: &[f32], g: &PlaneGeometry, mask_threshold: f32, offset: f32) -> Result<PlaneSummary> {
    let (kh, kw) = g.input_size;
    let [cx0, cy0, cx1, cy1] = g.crop_box;
    let (ch, cw) = (cy1 - cy0, cx1 - cx0);
    let (oh, ow) = g.orig_size;
    let padded = bilinear(low_res, g.low_size, (g.image_size, g.image_size), g.input_size);
    let ty = linear_taps(kh, ch, ch);
    let tx = linear_taps(kw, cw, cw);
    let (hi, lo) = (mask_threshold + offset, mask_threshold - offset);
    let (mut inter, mut union) = (0u64, 0u64);
    let (mut bx0, mut by0, mut bx1, mut by1) = (usize::MAX, usize::MAX, 0usize, 0usize);
    let mut rle = RleBuilder::default();
    rle.push(false, (cx0 * oh) as u64);
    let mut column = vec![0f32; kh];
    let mut bits = vec![false; ch];
    for (x, &(x0, x1, wx0, wx1)) in tx.iter().enumerate() {
        for (r, c) in column.iter_mut().enumerate() {
            let row = &padded[r * kw..(r + 1) * kw];
            *c = row[x0] * wx0 + row[x1] * wx1;
        }
        let (mut first, mut last) = (usize::MAX, 0usize);
        for (y, &(y0, y1, wy0, wy1)) in ty.iter().enumerate() {
            let v = column[y0] * wy0 + column[y1] * wy1;
            inter += u64::from(v > hi);
            union += u64::from(v > lo);
            let on = v > mask_threshold;
            bits[y] = on;
            if on {
                first = first.min(y);
                last = y;
            }
        }
        if first != usize::MAX {
            bx0 = bx0.min(x);
            bx1 = x;
            by0 = by0.min(first);
            by1 = by1.max(last);
        }
        rle.push(false, cy0 as u64);
        for &b in &bits {
            rle.push(b, 1);
        }
        rle.push(false, (oh - cy1) as u64);
    }
    rle.push(false, ((ow - cx1) * oh) as u64);
    let bbox = if bx0 == usize::MAX { [0; 4] } else { [bx0 as i64, by0 as i64, bx1 as i64, by1 as i64] };
    Ok(PlaneSummary {
        stability: inter as f32 / union as f32,
        bbox,
        rle: Rle::new(oh as u32, ow as u32, rle.finish())?,
    })
}

/// Run lengths, background first, built from (value, length) pieces.
#[derive(Default)]
struct RleBuilder {
    counts: Vec<u32>,
    current: bool,
    run: u64,
}

impl RleBuilder {
    fn push(&mut self, value: bool, len: u64) {
        if len == 0 {
            return;
        }
        if value != self.current {
            self.counts.push(self.run as u32);
            (self.current, self.run) = (value, 0);
        }
        self.run += len;
    }

    fn finish(mut self) -> Vec<u32> {
        self.counts.push(self.run as u32);
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_cell_centres() {
        assert_eq!(build_point_grid(1), vec![[0.5, 0.5]]);
        let g = build_point_grid(2);
        assert_eq!(g, vec![[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]);
    }

    #[test]
    fn streamed_plane_equals_the_dense_path() {
        // A plane through the predictor's post-processing, then summarised densely.
        let low: Vec<f32> = (0..16 * 16).map(|i| ((i * 37 % 97) as f32 - 48.0) / 9.0).collect();
        let g = PlaneGeometry {
            low_size: (16, 16),
            image_size: 64,
            input_size: (48, 64),
            crop_box: [3, 2, 3 + 40, 2 + 30],
            orig_size: (35, 50),
        };
        let s = summarise_plane(&low, &g, 0.0, 1.0).unwrap();
        let dense = crate::sam::transforms::postprocess_masks(&low, (16, 16), 64, (48, 64), (30, 40));
        assert_eq!(s.stability, calculate_stability_score(&dense, 0.0, 1.0));
        let bits: Vec<bool> = dense.iter().map(|&v| v > 0.0).collect();
        assert_eq!(s.bbox, mask_to_box(&bits, 40, 30));
        let full = Mask::from_fn(50, 35, |x, y| {
            (3..43).contains(&x) && (2..32).contains(&y) && bits[(y as usize - 2) * 40 + x as usize - 3]
        })
        .unwrap();
        assert_eq!(s.rle, Rle::encode(&full));
    }
}
