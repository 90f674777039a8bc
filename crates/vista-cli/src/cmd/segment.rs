//! `vista segment` (prompt an image) and `vista sam encode` (pre-encode a folder).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::json;
use vista::apps::masks::{overlay, Mask, PolygonOptions, Rle};
use vista::apps::segment::{default_cache_dir, SegmentPipeline};
use vista::apps::{files, npy};
use vista::sam::{transforms, LoadOptions, Point, Prompts};

use crate::progress;

/// The default SAM: Meta's ViT-B in transformers format on the Hugging Face hub.
pub const DEFAULT_SAM: &str = "facebook/sam-vit-base";

#[derive(clap::Args, Debug, Clone)]
pub struct SamModelArgs {
    /// A Hugging Face model id (facebook/sam-vit-base|large|huge), a folder, or a checkpoint
    /// file (sam_vit_b_01ec64.pth, mobile_sam.pt, model.safetensors).
    #[arg(long, short, default_value = DEFAULT_SAM)]
    pub model: String,
    /// Architecture preset (vit_b, vit_l, vit_h, vit_t) instead of reading the checkpoint's shapes.
    #[arg(long)]
    pub arch: Option<String>,
    /// Encoder input size of a TinyViT (MobileSAM) checkpoint (default 1024, as released).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Where image embeddings are cached (default: the user's cache folder, vista/sam).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Neither read nor write cached image embeddings.
    #[arg(long)]
    pub no_cache: bool,
    /// Largest image accepted, in pixels (protects against decompression bombs).
    #[arg(long)]
    pub max_pixels: Option<u64>,
}

impl SamModelArgs {
    pub fn load(&self) -> Result<SegmentPipeline> {
        let options = LoadOptions { arch: self.arch.clone(), image_size: self.image_size };
        let cache = if self.no_cache { None } else { Some(self.cache_dir.clone().unwrap_or_else(default_cache_dir)) };
        let mut p = SegmentPipeline::load(&self.model, &options, cache.as_deref())
            .with_context(|| format!("loading SAM model `{}`", self.model))?;
        super::common::warn_unused(&p.report);
        if let Some(m) = self.max_pixels {
            p.decode = vista::image::DecodeOptions::with_max_pixels(m);
        }
        Ok(p)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One 8-bit PNG per mask (255 = object).
    Png,
    /// One JSON file with every mask as COCO RLE (pycocotools-compatible).
    CocoRle,
    /// One JSON file with every mask as COCO polygons.
    Polygon,
    /// The image with the masks, points and boxes drawn on it.
    Overlay,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image to segment.
    pub image: PathBuf,
    /// A point prompt `X,Y` (foreground) or `X,Y,neg` (background), in image pixels; repeatable.
    #[arg(long = "point", short = 'p', value_name = "X,Y[,neg]")]
    pub points: Vec<String>,
    /// A box prompt `X0,Y0,X1,Y1` in image pixels; repeatable, one mask set per box.
    #[arg(long = "box", short = 'b', value_name = "X0,Y0,X1,Y1")]
    pub boxes: Vec<String>,
    /// A previous result to refine: the `.lowres.npy` a previous run wrote (exact), or a binary
    /// mask PNG of the image's size (converted to approximate low-resolution logits).
    #[arg(long)]
    pub mask_input: Option<PathBuf>,
    /// Three candidate masks per prompt set (for ambiguous prompts such as one point).
    #[arg(long)]
    pub multimask: bool,
    /// Output folder.
    #[arg(long, short, default_value = ".")]
    pub out: PathBuf,
    /// What to write (repeatable or comma-separated).
    #[arg(long, short = 'f', value_enum, value_delimiter = ',', default_values_t = [Format::Png])]
    pub format: Vec<Format>,
    /// Douglas–Peucker tolerance in pixels for `--format polygon`.
    #[arg(long, default_value_t = 1.0)]
    pub polygon_tolerance: f64,
    /// Print the results as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: SamModelArgs,
}

fn parse_numbers(arg: &str, what: &str, n: usize) -> Result<Vec<f32>> {
    let parts: Vec<&str> = arg.split(',').map(str::trim).collect();
    if parts.len() != n {
        bail!("--{what} `{arg}`: expected {n} comma-separated numbers");
    }
    parts.iter().map(|p| p.parse::<f32>().with_context(|| format!("--{what} `{arg}`: `{p}` is not a number"))).collect()
}

fn parse_point(arg: &str) -> Result<Point> {
    let (coords, positive) = match arg.rsplit_once(',') {
        Some((rest, label)) if label.trim().parse::<f32>().is_err() => {
            let positive = match label.trim().to_ascii_lowercase().as_str() {
                "neg" | "negative" | "bg" | "background" | "-" => false,
                "pos" | "positive" | "fg" | "foreground" | "+" => true,
                other => bail!("--point `{arg}`: label `{other}` is neither pos nor neg"),
            };
            (rest, positive)
        }
        _ => (arg, true),
    };
    let v = parse_numbers(coords, "point", 2)?;
    Ok(Point { x: v[0], y: v[1], positive })
}

fn parse_box(arg: &str) -> Result<[f32; 4]> {
    let v = parse_numbers(arg, "box", 4)?;
    Ok([v[0], v[1], v[2], v[3]])
}

/// Low-resolution logits for `--mask-input`: a `.npy` of `[4h, 4w]` (or `[k, 4h, 4w]`, the
/// first plane) as a previous run wrote, or a binary PNG mask of the image's size mapped to
/// ±`PNG_LOGIT` in the decoder's low-resolution frame.
fn read_mask_input(path: &Path, session: &vista::sam::Session) -> Result<Vec<f32>> {
    const PNG_LOGIT: f32 = 8.0;
    let model = session.model();
    let (gh, gw) = model.grid();
    let (lh, lw) = (4 * gh, 4 * gw);
    let is_npy = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    if is_npy {
        let (shape, values) = npy::read_f32(path)?;
        let plane = lh * lw;
        if shape.len() < 2 || shape[shape.len() - 2..] != [lh, lw] {
            bail!("--mask-input {}: shape {shape:?}, expected [..., {lh}, {lw}] low-resolution logits", path.display());
        }
        return Ok(values[..plane].to_vec());
    }
    let mask = Mask::from_png(path).with_context(|| format!("--mask-input {}", path.display()))?;
    let (h, w) = session.original_size();
    if (mask.height() as usize, mask.width() as usize) != (h, w) {
        bail!("--mask-input {}: mask is {}x{}, the image {w}x{h}", path.display(), mask.width(), mask.height());
    }
    // Each low-res cell covers (S / 4h) input pixels; sample the original mask at its centre.
    let size = model.image_size();
    let (nh, nw) = transforms::preprocess_shape(h, w, size);
    let cell = size as f64 / lh as f64;
    let mut out = vec![-PNG_LOGIT; lh * lw];
    for y in 0..lh {
        for x in 0..lw {
            let (cx, cy) = ((x as f64 + 0.5) * cell, (y as f64 + 0.5) * cell);
            if cx >= nw as f64 || cy >= nh as f64 {
                continue;
            }
            let (ox, oy) = transforms::unapply_coords(cx as f32, cy as f32, (h, w), size);
            let (ox, oy) = ((ox as u32).min(w as u32 - 1), (oy as u32).min(h as u32 - 1));
            if mask.get(ox, oy) {
                out[y * lw + x] = PNG_LOGIT;
            }
        }
    }
    Ok(out)
}

pub fn run(args: Args) -> Result<ExitCode> {
    let points: Vec<Point> = args.points.iter().map(|p| parse_point(p)).collect::<Result<_>>()?;
    let boxes: Vec<[f32; 4]> = args.boxes.iter().map(|b| parse_box(b)).collect::<Result<_>>()?;
    if points.is_empty() && boxes.is_empty() && args.mask_input.is_none() {
        bail!("nothing to segment: give --point, --box or --mask-input");
    }
    let pipeline = args.model.load()?;
    let encoded = pipeline.encode_file(&args.image).with_context(|| format!("encoding {}", args.image.display()))?;
    let session = &encoded.session;
    let mask_input = match &args.mask_input {
        Some(p) => Some(read_mask_input(p, session)?),
        None => None,
    };
    let prompts = Prompts {
        points: points.clone(),
        boxes: boxes.clone(),
        mask_input,
        multimask: args.multimask,
        ..Default::default()
    };
    let pred = session.predict(&prompts).with_context(|| format!("segmenting {}", args.image.display()))?;

    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let stem = args.image.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "image".into());
    let (w, h) = (pred.width as u32, pred.height as u32);
    let mut masks = Vec::new();
    let mut records = Vec::new();
    for s in 0..pred.sets {
        for m in 0..pred.per_set {
            let mask = Mask::from_u8(w, h, pred.mask(s, m))?;
            let rle = Rle::encode(&mask);
            let mut rec = json!({
                "set": s,
                "mask": m,
                "score": pred.score(s, m),
                "area": rle.area(),
                "bbox": rle.bbox(),
            });
            if args.format.contains(&Format::Png) {
                let path = args.out.join(format!("{stem}.set{s}.mask{m}.png"));
                mask.write_png(&path)?;
                rec["png"] = json!(path);
            }
            if args.format.contains(&Format::CocoRle) {
                rec["segmentation"] = rle.to_json();
            }
            if args.format.contains(&Format::Polygon) {
                let opts = PolygonOptions { tolerance: args.polygon_tolerance, min_area: 0 };
                rec["polygons"] = json!(mask.to_polygons(&opts));
            }
            records.push(rec);
            masks.push(mask);
        }
    }
    // The best low-resolution logits per set, to refine with --mask-input next time.
    let (gh, gw) = pipeline.model().grid();
    let mut low = Vec::new();
    for s in 0..pred.sets {
        low.extend(pred.low_res_plane(s, pred.best(s))?);
    }
    let low_path = args.out.join(format!("{stem}.lowres.npy"));
    npy::write_f32(&low_path, &low, &[pred.sets, 4 * gh, 4 * gw])?;

    let image_info = json!({"file_name": args.image, "height": h, "width": w});
    let mut outputs = json!({"lowres": low_path});
    for (format, suffix, key) in
        [(Format::CocoRle, "coco.json", "segmentation"), (Format::Polygon, "polygons.json", "polygons")]
    {
        if args.format.contains(&format) {
            let path = args.out.join(format!("{stem}.{suffix}"));
            let anns: Vec<_> = records
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    json!({"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                           "segmentation": r[key], "area": r["area"], "bbox": r["bbox"],
                           "predicted_iou": r["score"], "set": r["set"], "mask": r["mask"]})
                })
                .collect();
            let doc = json!({"images": [json!({"id": 1, "file_name": args.image, "height": h, "width": w})],
                             "annotations": anns, "categories": [{"id": 1, "name": "object"}]});
            std::fs::write(&path, serde_json::to_string(&doc)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            outputs[suffix.trim_end_matches(".json")] = json!(path);
        }
    }
    if args.format.contains(&Format::Overlay) {
        let pts: Vec<(f32, f32, bool)> = points.iter().map(|p| (p.x, p.y, p.positive)).collect();
        let path = args.out.join(format!("{stem}.overlay.png"));
        overlay(&encoded.image, &masks, &pts, &boxes)
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        outputs["overlay"] = json!(path);
    }

    if args.json {
        let doc =
            json!({"image": image_info, "cached_embedding": encoded.cached, "masks": records, "outputs": outputs});
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for r in &records {
            let what = if boxes.is_empty() { String::new() } else { format!("box {} ", r["set"]) };
            println!(
                "{what}mask {}: score {:.3}  area {} px  bbox {}{}",
                r["mask"],
                r["score"].as_f64().unwrap_or(0.0),
                r["area"],
                r["bbox"],
                r.get("png").and_then(|p| p.as_str()).map(|p| format!("  -> {p}")).unwrap_or_default()
            );
        }
        for (k, v) in outputs.as_object().into_iter().flatten() {
            println!("{k}: {}", v.as_str().unwrap_or_default());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct EncodeArgs {
    /// Image files or folders (walked recursively).
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub model: SamModelArgs,
}

/// `vista sam encode`: fills the embedding cache for every image, skipping those already there.
pub fn encode(args: EncodeArgs) -> Result<ExitCode> {
    if args.model.no_cache {
        bail!("`vista sam encode` fills the embedding cache; --no-cache makes it pointless");
    }
    if args.inputs.is_empty() {
        bail!("give image files or folders to encode");
    }
    let paths = files::collect_images(&args.inputs)?;
    let pipeline = args.model.load()?;
    let bar = progress::bar(paths.len(), "encoding");
    let (mut done, mut cached, mut failed) = (0usize, 0usize, 0usize);
    for path in &paths {
        match pipeline.is_cached(path) {
            Ok(true) => cached += 1,
            _ => match pipeline.encode_file(path) {
                Ok(_) => done += 1,
                Err(e) => {
                    bar.suspend(|| eprintln!("skipped {}: {e}", path.display()));
                    failed += 1;
                }
            },
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let dir = pipeline.cache.as_ref().map(|c| c.dir().display().to_string()).unwrap_or_default();
    eprintln!("{done} encoded, {cached} already cached, {failed} skipped -> {dir}");
    Ok(if failed > 0 { ExitCode::from(crate::EXIT_SKIPPED) } else { ExitCode::SUCCESS })
}
