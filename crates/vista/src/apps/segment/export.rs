//! What `vista segment` writes: per mask a PNG, its COCO RLE and polygons; COCO documents
//! (`images`, `annotations`, `categories`) holding every mask of an image; an overlay picture;
//! the best low-resolution logits per prompt set, to refine with later; and the reverse — a
//! previous result (`.lowres.npy`, or a binary PNG mask) turned into SAM's mask input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::mask::Mask;
use super::overlay::overlay;
use super::polygon::PolygonOptions;
use super::rle::Rle;
use crate::data::npy;
use crate::image::RgbImage;
use crate::sam::{transforms, Prediction, Prompts, Session};
use crate::{Error, Result};

/// The logit a foreground (background: its negative) pixel of a PNG mask input gets in SAM's
/// low-resolution frame: far enough from 0 that the decoder reads it as certain.
pub const PNG_MASK_LOGIT: f32 = 8.0;

/// What to write for each mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// One 8-bit PNG per mask (255 = object).
    Png,
    /// One COCO document with every mask as RLE (pycocotools-compatible).
    CocoRle,
    /// One COCO document with every mask as polygons.
    Polygon,
    /// The image with the masks, points and boxes drawn on it.
    Overlay,
}

/// Options of [`export`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// What to write.
    pub formats: Vec<Format>,
    /// Douglas–Peucker tolerance (pixels) of [`Format::Polygon`].
    pub polygon_tolerance: f64,
}

/// One mask of a prediction, with what was written for it.
#[derive(Debug, Clone)]
pub struct MaskRecord {
    /// The prompt set (box) it answers.
    pub set: usize,
    /// Its index among the set's masks.
    pub index: usize,
    /// SAM's predicted IoU.
    pub score: f32,
    /// The mask at the image's size.
    pub mask: Mask,
    /// Its COCO RLE.
    pub rle: Rle,
    /// Its PNG file, when written.
    pub png: Option<PathBuf>,
    /// Its COCO polygons, when asked for.
    pub polygons: Option<Vec<Vec<f64>>>,
}

impl MaskRecord {
    /// The record as JSON: `set`, `mask`, `score`, `area`, `bbox`, and `png`, `segmentation`
    /// (RLE) and `polygons` where present.
    pub fn to_json(&self, with_rle: bool) -> Value {
        let mut rec = json!({
            "set": self.set, "mask": self.index, "score": self.score,
            "area": self.rle.area(), "bbox": self.rle.bbox(),
        });
        if let Some(p) = &self.png {
            rec["png"] = json!(p);
        }
        if with_rle {
            rec["segmentation"] = self.rle.to_json();
        }
        if let Some(p) = &self.polygons {
            rec["polygons"] = json!(p);
        }
        rec
    }
}

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// Every mask, set by set.
    pub records: Vec<MaskRecord>,
    /// The files written besides the per-mask PNGs, by kind (`lowres`, `coco`, `polygons`,
    /// `overlay`).
    pub outputs: BTreeMap<String, PathBuf>,
}

/// A COCO document for one image: `images` (id 1), one annotation per record (`segmentation`
/// from `segmentation(record)`, `area`, `bbox`, `iscrowd` 0, category 1 "object", plus SAM's
/// `predicted_iou` and the record's `set` / `mask` indices) and `categories`.
pub fn coco_document(
    file_name: &Path,
    (width, height): (u32, u32),
    records: &[MaskRecord],
    segmentation: impl Fn(&MaskRecord) -> Value,
) -> Value {
    let anns: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                   "segmentation": segmentation(r), "area": r.rle.area(), "bbox": r.rle.bbox(),
                   "predicted_iou": r.score, "set": r.set, "mask": r.index})
        })
        .collect();
    json!({
        "images": [{"id": 1, "file_name": file_name, "height": height, "width": width}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "object"}],
    })
}

/// Writes a prediction's files into `out_dir`, named after `stem`: per mask
/// `<stem>.set<S>.mask<M>.png` ([`Format::Png`]); `<stem>.coco.json` and `<stem>.polygons.json`
/// ([`coco_document`]s); `<stem>.overlay.png`; and always `<stem>.lowres.npy`, the best mask's
/// low-resolution logits per set `[sets, 4h, 4w]`, to pass back as a mask input.
pub fn export(
    image_path: &Path,
    image: &RgbImage,
    pred: &Prediction,
    prompts: &Prompts,
    out_dir: &Path,
    stem: &str,
    options: &ExportOptions,
) -> Result<Exported> {
    let wants = |f: Format| options.formats.contains(&f);
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let (w, h) = (pred.width as u32, pred.height as u32);
    let mut records = Vec::new();
    for s in 0..pred.sets {
        for m in 0..pred.per_set {
            let mask = Mask::from_u8(w, h, pred.mask(s, m))?;
            let rle = Rle::encode(&mask);
            let png = if wants(Format::Png) {
                let path = out_dir.join(format!("{stem}.set{s}.mask{m}.png"));
                mask.write_png(&path)?;
                Some(path)
            } else {
                None
            };
            let polygons = wants(Format::Polygon)
                .then(|| mask.to_polygons(&PolygonOptions { tolerance: options.polygon_tolerance, min_area: 0 }));
            records.push(MaskRecord { set: s, index: m, score: pred.score(s, m), mask, rle, png, polygons });
        }
    }
    let mut outputs = BTreeMap::new();
    let mut low = Vec::new();
    for s in 0..pred.sets {
        low.extend(pred.low_res_plane(s, pred.best(s))?);
    }
    let (lh, lw) = pred.low_res.dims4().map(|d| (d.2, d.3))?;
    let low_path = out_dir.join(format!("{stem}.lowres.npy"));
    npy::write_f32(&low_path, &low, &[pred.sets, lh, lw])?;
    outputs.insert("lowres".to_string(), low_path);
    type Segmentation = fn(&MaskRecord) -> Value;
    let documents: [(Format, &str, Segmentation); 2] = [
        (Format::CocoRle, "coco", |r| r.rle.to_json()),
        (Format::Polygon, "polygons", |r| json!(r.polygons.clone().unwrap_or_default())),
    ];
    for (format, kind, segmentation) in documents {
        if wants(format) {
            let path = out_dir.join(format!("{stem}.{kind}.json"));
            let doc = coco_document(image_path, (w, h), &records, segmentation);
            let text = serde_json::to_string(&doc).map_err(|e| Error::arg("coco", e.to_string()))? + "\n";
            std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
            outputs.insert(kind.to_string(), path);
        }
    }
    if wants(Format::Overlay) {
        let pts: Vec<(f32, f32, bool)> = prompts.points.iter().map(|p| (p.x, p.y, p.positive)).collect();
        let masks: Vec<Mask> = records.iter().map(|r| r.mask.clone()).collect();
        let path = out_dir.join(format!("{stem}.overlay.png"));
        overlay(image, &masks, &pts, &prompts.boxes)
            .save(&path)
            .map_err(|e| Error::io(&path, std::io::Error::other(e.to_string())))?;
        outputs.insert("overlay".to_string(), path);
    }
    Ok(Exported { records, outputs })
}

/// SAM's mask input for `session` from a previous result: the `.lowres.npy` a previous run
/// wrote (`[4h, 4w]` or `[k, 4h, 4w]`: its first plane, exact), or a binary PNG mask of the
/// image's size, mapped to ±[`PNG_MASK_LOGIT`] in the decoder's low-resolution frame (each
/// low-resolution cell takes the mask's value at the cell centre's original-image position).
pub fn mask_input_from_file(path: &Path, session: &Session) -> Result<Vec<f32>> {
    let model = session.model();
    let (gh, gw) = model.grid();
    let (lh, lw) = (4 * gh, 4 * gw);
    let bad = |m: String| Error::arg("mask_input", format!("{}: {m}", path.display()));
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")) {
        let (shape, values) = npy::read_f32(path)?;
        if shape.len() < 2 || shape[shape.len() - 2..] != [lh, lw] {
            return Err(bad(format!("shape {shape:?}, expected [..., {lh}, {lw}] low-resolution logits")));
        }
        // A `[0, 4h, 4w]` array has the shape and no plane.
        let plane = values.get(..lh * lw).ok_or_else(|| bad(format!("shape {shape:?} holds no {lh}x{lw} plane")))?;
        return Ok(plane.to_vec());
    }
    let mask = Mask::from_png(path)?;
    mask_input_from_mask(&mask, session).map_err(|e| match e {
        Error::InvalidArgument { message, .. } => bad(message),
        other => other,
    })
}

/// SAM's mask input for `session` from a binary mask of the image's size (e.g. a previous
/// answer, to refine it with more clicks): ±[`PNG_MASK_LOGIT`] in the decoder's low-resolution
/// frame, each low-resolution cell taking the mask's value at the cell centre's original-image
/// position.
pub fn mask_input_from_mask(mask: &Mask, session: &Session) -> Result<Vec<f32>> {
    let model = session.model();
    let (gh, gw) = model.grid();
    let (lh, lw) = (4 * gh, 4 * gw);
    let (h, w) = session.original_size();
    if (mask.height() as usize, mask.width() as usize) != (h, w) {
        return Err(Error::arg("mask_input", format!("mask is {}x{}, the image {w}x{h}", mask.width(), mask.height())));
    }
    let size = model.image_size();
    let (nh, nw) = transforms::preprocess_shape(h, w, size);
    let cell = size as f64 / lh as f64;
    let mut out = vec![-PNG_MASK_LOGIT; lh * lw];
    for y in 0..lh {
        for x in 0..lw {
            let (cx, cy) = ((x as f64 + 0.5) * cell, (y as f64 + 0.5) * cell);
            if cx >= nw as f64 || cy >= nh as f64 {
                continue;
            }
            let (ox, oy) = transforms::unapply_coords(cx as f32, cy as f32, (h, w), size);
            let (ox, oy) = ((ox as u32).min(w as u32 - 1), (oy as u32).min(h as u32 - 1));
            if mask.get(ox, oy) {
                out[y * lw + x] = PNG_MASK_LOGIT;
            }
        }
    }
    Ok(out)
}
