//! Segment everything: SAM's automatic mask generator (`SamAutomaticMaskGenerator` of
//! `segment_anything/automatic_mask_generator.py`, with SAM 2's `use_m2m` and
//! `multimask_output` options), step for step:
//!
//! point grids → crop boxes → per crop one encoder pass, the grid scaled to the crop, batches of
//! points through the decoder → predicted-IoU filter → stability score → binarise → boxes →
//! drop masks touching a crop edge that is not an image edge → uncrop → RLE → box NMS in the
//! crop (score: predicted IoU) → NMS across crops (score: 1 / crop area) → small-region
//! post-processing (holes, then islands; NMS preferring unchanged masks).
//!
//! Where it departs from the reference, it is in memory only: the decoder's logits stay at low
//! resolution (`[B, 3, 256, 256]`), and only masks that pass the IoU filter are up-sampled —
//! one at a time per thread, streamed column by column into their counts, box and RLE
//! ([`amg::summarise_plane`]) — so a batch never holds `B × 3` crop-size planes (the
//! reference's `points_per_batch × 3 × H × W` floats, 12 GiB for a 4000 × 3000 photo) and a
//! 12,000 × 9,000 photo costs a few MiB per thread beyond its RLEs.

use std::path::Path;

use rayon::prelude::*;
use serde_json::{json, Value};

use super::amg::{self, PlaneGeometry, RegionMode};
use super::mask::Mask;
use super::rle::Rle;
use super::SegmentPipeline;
use crate::image::{decode_rgb, RgbImage};
use crate::sam::{Predictor, Session};
use crate::{Error, Result};

/// `Sam.mask_threshold`: a pixel belongs to the mask when its logit is above it.
pub const MASK_THRESHOLD: f32 = 0.0;

/// How the masks are given back, as the reference's `output_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputMode {
    /// `binary_mask`: the mask itself.
    BinaryMask,
    /// `uncompressed_rle`: `{"size": [h, w], "counts": [runs…]}`.
    UncompressedRle,
    /// `coco_rle`: pycocotools' compressed counts string.
    #[default]
    CocoRle,
}

/// The generator's parameters, named and defaulted as `SamAutomaticMaskGenerator`'s.
#[derive(Debug, Clone, PartialEq)]
pub struct AmgOptions {
    /// Points along one side of the grid (`points_per_side`, 32); `None` with `point_grids`.
    pub points_per_side: Option<usize>,
    /// Explicit grids in `[0, 1]²`, one per crop layer (`point_grids`), instead of
    /// `points_per_side`.
    pub point_grids: Option<Vec<Vec<[f64; 2]>>>,
    /// Points decoded together (`points_per_batch`, 64).
    pub points_per_batch: usize,
    /// Keep masks whose predicted IoU is above this (`pred_iou_thresh`, 0.88; 0 disables).
    pub pred_iou_thresh: f32,
    /// Keep masks whose stability score is at least this (`stability_score_thresh`, 0.95;
    /// 0 disables).
    pub stability_score_thresh: f32,
    /// The logit shift of the stability score (`stability_score_offset`, 1.0).
    pub stability_score_offset: f32,
    /// Box IoU above which NMS drops a mask within a crop (`box_nms_thresh`, 0.7).
    pub box_nms_thresh: f64,
    /// Crop layers: layer `i` runs the model on `2^i × 2^i` crops (`crop_n_layers`, 0).
    pub crop_n_layers: usize,
    /// Box IoU above which NMS drops a mask between crops (`crop_nms_thresh`, 0.7).
    pub crop_nms_thresh: f64,
    /// How much the first layer's crops overlap, as a share of the shorter side
    /// (`crop_overlap_ratio`, 512 / 1500).
    pub crop_overlap_ratio: f64,
    /// Layer `i` samples `points_per_side / factor^i` points a side
    /// (`crop_n_points_downscale_factor`, 1).
    pub crop_n_points_downscale_factor: usize,
    /// Holes and islands smaller than this many pixels are removed (`min_mask_region_area`, 0 =
    /// off).
    pub min_mask_region_area: usize,
    /// The form of [`AutoMask::segmentation`] (`output_mode`).
    pub output_mode: OutputMode,
    /// SAM 2's mask-to-mask refinement: every mask is decoded once more with its own
    /// low-resolution logits as the mask prompt, single output, before the filters (`use_m2m`).
    pub use_m2m: bool,
    /// Three masks per point (`multimask_output`, true); false keeps the single-mask output.
    pub multimask_output: bool,
}

impl Default for AmgOptions {
    fn default() -> Self {
        Self {
            points_per_side: Some(32),
            point_grids: None,
            points_per_batch: 64,
            pred_iou_thresh: 0.88,
            stability_score_thresh: 0.95,
            stability_score_offset: 1.0,
            box_nms_thresh: 0.7,
            crop_n_layers: 0,
            crop_nms_thresh: 0.7,
            crop_overlap_ratio: 512.0 / 1500.0,
            crop_n_points_downscale_factor: 1,
            min_mask_region_area: 0,
            output_mode: OutputMode::CocoRle,
            use_m2m: false,
            multimask_output: true,
        }
    }
}

impl AmgOptions {
    /// The point grid of every crop layer, after checking the options.
    pub fn grids(&self) -> Result<Vec<Vec<[f64; 2]>>> {
        let grids = match (self.points_per_side, &self.point_grids) {
            (Some(n), None) => {
                if n == 0 {
                    return Err(Error::arg("points_per_side", "must be at least 1"));
                }
                if self.crop_n_points_downscale_factor == 0 {
                    return Err(Error::arg("crop_n_points_downscale_factor", "must be at least 1"));
                }
                amg::build_all_layer_point_grids(n, self.crop_n_layers, self.crop_n_points_downscale_factor)
            }
            (None, Some(g)) => {
                if g.len() <= self.crop_n_layers {
                    return Err(Error::arg(
                        "point_grids",
                        format!(
                            "{} grids for {} crop layers (one per layer is needed)",
                            g.len(),
                            self.crop_n_layers + 1
                        ),
                    ));
                }
                if g.iter().flatten().flatten().any(|v| !(0.0..=1.0).contains(v)) {
                    return Err(Error::arg("point_grids", "points must be normalised to [0, 1]"));
                }
                g.clone()
            }
            _ => return Err(Error::arg("points_per_side", "give exactly one of points_per_side and point_grids")),
        };
        if self.points_per_batch == 0 {
            return Err(Error::arg("points_per_batch", "must be at least 1"));
        }
        let unit = [
            ("pred_iou_thresh", self.pred_iou_thresh),
            ("stability_score_thresh", self.stability_score_thresh),
            ("box_nms_thresh", self.box_nms_thresh as f32),
            ("crop_nms_thresh", self.crop_nms_thresh as f32),
        ];
        for (name, v) in unit {
            if !v.is_finite() {
                return Err(Error::arg(name, format!("{v} is not a number")));
            }
        }
        if !self.stability_score_offset.is_finite() || self.stability_score_offset < 0.0 {
            return Err(Error::arg("stability_score_offset", "must be a non-negative number"));
        }
        if !(0.0..1.0).contains(&self.crop_overlap_ratio) {
            return Err(Error::arg("crop_overlap_ratio", "must be in [0, 1)"));
        }
        Ok(grids)
    }
}

/// One mask of the image, with what the reference's records hold.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoMask {
    /// The mask, as (uncompressed) COCO RLE of the whole image.
    pub rle: Rle,
    /// `[x0, y0, x1, y1]`, inclusive right / bottom edges.
    pub bbox_xyxy: [i64; 4],
    /// SAM's predicted IoU (`predicted_iou`).
    pub predicted_iou: f32,
    /// The point prompt, image pixels (`point_coords`).
    pub point: [f64; 2],
    /// `stability_score` (NaN for an all-background logit plane when the filter is off).
    pub stability_score: f32,
    /// The crop it came from, XYXY.
    pub crop_box: [usize; 4],
}

impl AutoMask {
    /// Foreground pixels (`area_from_rle`).
    pub fn area(&self) -> u64 {
        self.rle.area()
    }

    /// The box as the reference writes it: `box_xyxy_to_xywh` of the inclusive box (so a
    /// one-pixel mask has width 0).
    pub fn bbox(&self) -> [i64; 4] {
        amg::box_xyxy_to_xywh(self.bbox_xyxy)
    }

    /// The mask.
    pub fn mask(&self) -> Mask {
        self.rle.decode()
    }

    /// The mask's region of `image` for region features (CLIP on each object): the pixels of
    /// its box, those outside the mask set to `background` when given (e.g. grey, as
    /// mask-based region classifiers feed CLIP), kept when not. `None` for an empty mask.
    pub fn region(&self, image: &RgbImage, background: Option<[u8; 3]>) -> Option<RgbImage> {
        if self.area() == 0 || (image.width(), image.height()) != (self.rle.width(), self.rle.height()) {
            return None;
        }
        let [x0, y0, x1, y1] = self.bbox_xyxy.map(|v| v as u32);
        let mut out = ::image::imageops::crop_imm(image, x0, y0, x1 - x0 + 1, y1 - y0 + 1).to_image();
        if let Some(bg) = background {
            let mask = self.mask();
            for (x, y, px) in out.enumerate_pixels_mut() {
                if !mask.get(x0 + x, y0 + y) {
                    *px = ::image::Rgb(bg);
                }
            }
        }
        Some(out)
    }

    /// The `segmentation` in `mode`.
    pub fn segmentation(&self, mode: OutputMode) -> Value {
        match mode {
            OutputMode::CocoRle => self.rle.to_json(),
            OutputMode::UncompressedRle => self.rle.to_json_uncompressed(),
            OutputMode::BinaryMask => {
                let m = self.mask();
                let w = m.width() as usize;
                let rows: Vec<Vec<u8>> =
                    m.data().chunks(w.max(1)).map(|r| r.iter().map(|&v| u8::from(v)).collect()).collect();
                json!(rows)
            }
        }
    }

    /// The reference's record (an SA-1B annotation): `segmentation`, `area`, `bbox`,
    /// `predicted_iou`, `point_coords`, `stability_score`, `crop_box`.
    pub fn to_json(&self, mode: OutputMode) -> Value {
        let c = self.crop_box;
        json!({
            "segmentation": self.segmentation(mode),
            "area": self.area(),
            "bbox": self.bbox(),
            "predicted_iou": self.predicted_iou,
            "point_coords": [self.point],
            "stability_score": self.stability_score,
            "crop_box": amg::box_xyxy_to_xywh(c),
        })
    }
}

/// `SamAutomaticMaskGenerator`.
pub struct AutomaticMaskGenerator {
    predictor: Predictor,
    options: AmgOptions,
    grids: Vec<Vec<[f64; 2]>>,
}

impl AutomaticMaskGenerator {
    /// A generator over a loaded model; errors on inconsistent options.
    pub fn new(predictor: Predictor, options: AmgOptions) -> Result<Self> {
        let grids = options.grids()?;
        Ok(Self { predictor, options, grids })
    }

    /// The options.
    pub fn options(&self) -> &AmgOptions {
        &self.options
    }

    /// Every mask of `image`, in the reference's order.
    pub fn generate(&self, image: &RgbImage) -> Result<Vec<AutoMask>> {
        self.generate_with(image, |_, crop| self.predictor.set_image(crop))
    }

    /// [`Self::generate`], with each crop's session from `encode(crop_box, crop_image)` (the
    /// embedding cache's hook).
    pub fn generate_with(
        &self,
        image: &RgbImage,
        mut encode: impl FnMut([usize; 4], &RgbImage) -> Result<Session>,
    ) -> Result<Vec<AutoMask>> {
        let orig = (image.height() as usize, image.width() as usize);
        if orig.0 == 0 || orig.1 == 0 {
            return Err(Error::arg("image", format!("empty image ({}x{})", orig.1, orig.0)));
        }
        let (crop_boxes, layers) =
            amg::generate_crop_boxes(orig, self.options.crop_n_layers, self.options.crop_overlap_ratio);
        let mut masks = Vec::new();
        for (crop_box, layer) in crop_boxes.iter().zip(&layers) {
            let [x0, y0, x1, y1] = *crop_box;
            if x1 <= x0 || y1 <= y0 {
                // A strip one pixel thin gets empty crops from `generate_crop_boxes` (e.g.
                // `[0, 2, 1250, 1]` for 1 × 5000 and two layers); the reference fails on them.
                continue;
            }
            let session = if [x0, y0, x1, y1] == [0, 0, orig.1, orig.0] {
                encode(*crop_box, image)?
            } else {
                let crop = ::image::imageops::crop_imm(image, x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32)
                    .to_image();
                encode(*crop_box, &crop)?
            };
            masks.extend(self.process_crop(&session, *crop_box, *layer, orig)?);
        }
        if crop_boxes.len() > 1 {
            // Prefer masks from smaller crops.
            let scores: Vec<f32> = masks
                .iter()
                .map(|m| {
                    let [x0, y0, x1, y1] = m.crop_box;
                    1.0 / ((x1 - x0) * (y1 - y0)) as f32
                })
                .collect();
            let boxes: Vec<[i64; 4]> = masks.iter().map(|m| m.bbox_xyxy).collect();
            let keep = amg::box_nms(&boxes, &scores, self.options.crop_nms_thresh);
            masks = take(masks, &keep);
        }
        if self.options.min_mask_region_area > 0 {
            let thresh = self.options.box_nms_thresh.max(self.options.crop_nms_thresh);
            masks = postprocess_small_regions(masks, self.options.min_mask_region_area as f64, thresh)?;
        }
        Ok(masks)
    }

    /// `_process_crop` + `_process_batch`: the masks of one crop, in its NMS order, in image
    /// coordinates.
    fn process_crop(
        &self,
        session: &Session,
        crop_box: [usize; 4],
        layer: usize,
        orig: (usize, usize),
    ) -> Result<Vec<AutoMask>> {
        let o = &self.options;
        let model = session.model();
        let (ch, cw) = session.original_size();
        let (gh, gw) = model.grid();
        let plane = 16 * gh * gw;
        let geometry = PlaneGeometry {
            low_size: (4 * gh, 4 * gw),
            image_size: model.image_size(),
            input_size: session.input_size(),
            crop_box,
            orig_size: orig,
        };
        let points: Vec<[f64; 2]> = self.grids[layer].iter().map(|p| [p[0] * cw as f64, p[1] * ch as f64]).collect();
        let total = model.config.decoder.num_multimask_outputs + 1;
        let outputs = if o.multimask_output { 1..total } else { 0..1 };
        let threshold = MASK_THRESHOLD;
        let mut kept: Vec<AutoMask> = Vec::new();
        for batch in points.chunks(o.points_per_batch) {
            let (mut low, mut iou) = session.decode_points(batch, None, outputs.clone())?;
            let per = outputs.len();
            // Candidate `i` is mask `i % per` of point `i / per`.
            let cand_points: Vec<[f64; 2]> = batch.iter().flat_map(|p| std::iter::repeat_n(*p, per)).collect();
            if o.use_m2m {
                let mut refined_low = Vec::with_capacity(low.len());
                let mut refined_iou = Vec::with_capacity(iou.len());
                for (pts, planes) in cand_points.chunks(o.points_per_batch).zip(low.chunks(o.points_per_batch * plane))
                {
                    let (l, i) = session.decode_points(pts, Some(planes), 0..1)?;
                    refined_low.extend(l);
                    refined_iou.extend(i);
                }
                (low, iou) = (refined_low, refined_iou);
            }
            let survivors: Vec<usize> =
                (0..iou.len()).filter(|&i| o.pred_iou_thresh <= 0.0 || iou[i] > o.pred_iou_thresh).collect();
            let summaries: Vec<Option<AutoMask>> = survivors
                .par_iter()
                .map(|&i| -> Result<Option<AutoMask>> {
                    let s = amg::summarise_plane(
                        &low[i * plane..(i + 1) * plane],
                        &geometry,
                        threshold,
                        o.stability_score_offset,
                    )?;
                    // NaN (an empty plane) fails the reference's `>=` too.
                    let passes = s.stability >= o.stability_score_thresh;
                    if o.stability_score_thresh > 0.0 && !passes {
                        return Ok(None);
                    }
                    if amg::is_box_near_crop_edge(s.bbox, crop_box, [0, 0, orig.1, orig.0], 20.0) {
                        return Ok(None);
                    }
                    Ok(Some(AutoMask {
                        rle: s.rle,
                        bbox_xyxy: s.bbox,
                        predicted_iou: iou[i],
                        point: cand_points[i],
                        stability_score: s.stability,
                        crop_box,
                    }))
                })
                .collect::<Result<_>>()?;
            kept.extend(summaries.into_iter().flatten());
        }
        let boxes: Vec<[i64; 4]> = kept.iter().map(|m| m.bbox_xyxy).collect();
        let scores: Vec<f32> = kept.iter().map(|m| m.predicted_iou).collect();
        let keep = amg::box_nms(&boxes, &scores, o.box_nms_thresh);
        let mut kept = take(kept, &keep);
        for m in &mut kept {
            m.bbox_xyxy = amg::uncrop_box(m.bbox_xyxy, crop_box);
            m.point = amg::uncrop_point(m.point, crop_box);
        }
        Ok(kept)
    }
}

/// The elements of `v` at `keep`, in that order.
fn take<T>(v: Vec<T>, keep: &[usize]) -> Vec<T> {
    let mut slots: Vec<Option<T>> = v.into_iter().map(Some).collect();
    keep.iter().filter_map(|&i| slots[i].take()).collect()
}

/// `postprocess_small_regions`: holes then islands below `min_area` removed from every mask;
/// NMS over the new boxes with score 1 for unchanged masks and 0 for changed ones; the kept
/// changed masks get their new RLE and box.
pub fn postprocess_small_regions(masks: Vec<AutoMask>, min_area: f64, nms_thresh: f64) -> Result<Vec<AutoMask>> {
    if masks.is_empty() {
        return Ok(masks);
    }
    let cleaned: Vec<(Mask, bool, [i64; 4])> = masks
        .par_iter()
        .map(|m| {
            let mask = m.mask();
            let (mask, changed_holes) = amg::remove_small_regions(&mask, min_area, RegionMode::Holes);
            let (mask, changed_islands) = amg::remove_small_regions(&mask, min_area, RegionMode::Islands);
            let bbox = amg::mask_to_box(mask.data(), mask.width() as usize, mask.height() as usize);
            (mask, changed_holes || changed_islands, bbox)
        })
        .collect();
    let boxes: Vec<[i64; 4]> = cleaned.iter().map(|c| c.2).collect();
    let scores: Vec<f32> = cleaned.iter().map(|c| if c.1 { 0.0 } else { 1.0 }).collect();
    let keep = amg::box_nms(&boxes, &scores, nms_thresh);
    let mut masks = masks;
    for &i in &keep {
        if cleaned[i].1 {
            masks[i].rle = Rle::encode(&cleaned[i].0);
            masks[i].bbox_xyxy = cleaned[i].2;
        }
    }
    Ok(take(masks, &keep))
}

/// An SA-1B-style document for one image: `image` (`file_name`, `height`, `width`) and
/// `annotations` (the reference's records, with an `id`).
pub fn sa1b_document(file_name: &Path, (width, height): (u32, u32), masks: &[AutoMask], mode: OutputMode) -> Value {
    let anns: Vec<Value> = masks
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut a = m.to_json(mode);
            a["id"] = json!(i + 1);
            a
        })
        .collect();
    json!({"image": {"file_name": file_name, "height": height, "width": width}, "annotations": anns})
}

impl SegmentPipeline {
    /// Segments everything in an image file: decodes it, encodes each crop once (through the
    /// embedding cache when enabled: the whole image under the file's key, a crop under the key
    /// plus its box) and runs `generator`. Returns the decoded image and the masks.
    pub fn segment_everything_file(
        &self,
        generator: &AutomaticMaskGenerator,
        path: &Path,
    ) -> Result<(RgbImage, Vec<AutoMask>)> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let image = decode_rgb(&bytes, path, &self.decode)?;
        let file_key = blake3::hash(&bytes).to_hex().to_string();
        let (h, w) = (image.height() as usize, image.width() as usize);
        let masks = generator.generate_with(&image, |crop_box, crop| {
            let key = if crop_box == [0, 0, w, h] {
                file_key.clone()
            } else {
                format!("{file_key}-crop-{}-{}-{}-{}", crop_box[0], crop_box[1], crop_box[2], crop_box[3])
            };
            Ok(self.session_for(&key, crop)?.0)
        })?;
        Ok((image, masks))
    }
}
