//! `vista segment`: prompt SAM on an image with points, boxes or a previous mask; write the
//! masks as PNG, COCO RLE, polygons and an overlay.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::json;
use vista::apps::segment::export::{export, mask_input_from_file, ExportOptions, Format};
use vista::sam::{Point, Prompts};

use crate::args::{parse_box, parse_point, SamArgs};
use crate::cmd::sam_auto::AmgArgs;

/// What to write, as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// One 8-bit PNG per mask (255 = object).
    Png,
    /// One JSON file with every mask as COCO RLE (pycocotools-compatible).
    CocoRle,
    /// One JSON file with every mask as COCO polygons.
    Polygon,
    /// The image with the masks, points and boxes drawn on it.
    Overlay,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Png => Format::Png,
            FormatArg::CocoRle => Format::CocoRle,
            FormatArg::Polygon => Format::Polygon,
            FormatArg::Overlay => Format::Overlay,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image to segment.
    pub image: PathBuf,
    /// A point prompt `X,Y` (foreground) or `X,Y,neg` (background), in image pixels; repeatable.
    #[arg(long = "point", short = 'p', value_name = "X,Y[,neg]", value_parser = parse_point)]
    pub points: Vec<Point>,
    /// A box prompt `X0,Y0,X1,Y1` in image pixels; repeatable, one mask set per box.
    #[arg(long = "box", short = 'b', value_name = "X0,Y0,X1,Y1", value_parser = parse_box)]
    pub boxes: Vec<[f32; 4]>,
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
    #[arg(long, short = 'f', value_enum, value_delimiter = ',', default_values_t = [FormatArg::Png])]
    pub format: Vec<FormatArg>,
    /// Douglas–Peucker tolerance in pixels for `--format polygon`.
    #[arg(long, default_value_t = 1.0)]
    pub polygon_tolerance: f64,
    /// Print the results as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Segment everything: no prompts, SAM's automatic mask generator (a grid of points, then
    /// filtering and de-duplication; its options below).
    #[arg(long, conflicts_with_all = ["points", "boxes", "mask_input", "multimask"])]
    pub everything: bool,
    #[command(flatten)]
    pub amg: AmgArgs,
    #[command(flatten)]
    pub model: SamArgs,
}

/// `vista segment`.
pub fn run(args: Args) -> Result<ExitCode> {
    if args.everything {
        return run_everything(&args);
    }
    if args.points.is_empty() && args.boxes.is_empty() && args.mask_input.is_none() {
        bail!("nothing to segment: give --point, --box or --mask-input");
    }
    let pipeline = args.model.load()?;
    let encoded = pipeline.encode_file(&args.image).with_context(|| format!("encoding {}", args.image.display()))?;
    let session = &encoded.session;
    let mask_input = match &args.mask_input {
        Some(p) => Some(mask_input_from_file(p, session).with_context(|| "--mask-input")?),
        None => None,
    };
    let prompts = Prompts {
        points: args.points.clone(),
        boxes: args.boxes.clone(),
        mask_input,
        multimask: args.multimask,
        ..Default::default()
    };
    let pred = session.predict(&prompts).with_context(|| format!("segmenting {}", args.image.display()))?;
    let stem = args.image.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "image".into());
    let options = ExportOptions {
        formats: args.format.iter().map(|&f| f.into()).collect(),
        polygon_tolerance: args.polygon_tolerance,
    };
    let exported = export(&args.image, &encoded.image, &pred, &prompts, &args.out, &stem, &options)?;
    let with_rle = args.format.contains(&FormatArg::CocoRle);
    let records: Vec<_> = exported.records.iter().map(|r| r.to_json(with_rle)).collect();
    if args.json {
        let image = json!({"file_name": args.image, "height": pred.height, "width": pred.width});
        let doc =
            json!({"image": image, "cached_embedding": encoded.cached, "masks": records, "outputs": exported.outputs});
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for r in &records {
            let what = if args.boxes.is_empty() { String::new() } else { format!("box {} ", r["set"]) };
            println!(
                "{what}mask {}: score {:.3}  area {} px  bbox {}{}",
                r["mask"],
                r["score"].as_f64().unwrap_or(0.0),
                r["area"],
                r["bbox"],
                r.get("png").and_then(|p| p.as_str()).map(|p| format!("  -> {p}")).unwrap_or_default()
            );
        }
        for (k, v) in &exported.outputs {
            println!("{k}: {}", v.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `vista segment --everything`: every mask of the image, written as asked.
fn run_everything(args: &Args) -> Result<ExitCode> {
    use vista::apps::segment::everything::{sa1b_document, AutomaticMaskGenerator, OutputMode};
    use vista::apps::segment::{overlay::overlay, PolygonOptions};

    let options = args.amg.options(OutputMode::CocoRle);
    options.grids().context("segment --everything")?;
    let pipeline = args.model.load()?;
    let generator = AutomaticMaskGenerator::new(pipeline.predictor.clone(), options)?;
    let (image, masks) = pipeline
        .segment_everything_file(&generator, &args.image)
        .with_context(|| format!("segmenting {}", args.image.display()))?;
    let stem = args.image.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "image".into());
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let wants = |f: FormatArg| args.format.contains(&f);
    let mut outputs = serde_json::Map::new();
    let mut pngs = Vec::new();
    if wants(FormatArg::Png) {
        for (i, m) in masks.iter().enumerate() {
            let path = args.out.join(format!("{stem}.auto{i:03}.png"));
            m.mask().write_png(&path)?;
            pngs.push(path);
        }
    }
    let size = (image.width(), image.height());
    if wants(FormatArg::CocoRle) {
        let path = args.out.join(format!("{stem}.masks.json"));
        let doc = sa1b_document(&args.image, size, &masks, OutputMode::CocoRle);
        vista::weights::formats::write_atomic(&path, (serde_json::to_string(&doc)? + "\n").as_bytes())?;
        outputs.insert("coco".into(), json!(path));
    }
    if wants(FormatArg::Polygon) {
        let path = args.out.join(format!("{stem}.polygons.json"));
        let opts = PolygonOptions { tolerance: args.polygon_tolerance, min_area: 0 };
        let anns: Vec<_> = masks
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut a = m.to_json(OutputMode::CocoRle);
                a["id"] = json!(i + 1);
                a["segmentation"] = json!(m.mask().to_polygons(&opts));
                a
            })
            .collect();
        let doc = json!({"image": {"file_name": args.image, "height": size.1, "width": size.0}, "annotations": anns});
        vista::weights::formats::write_atomic(&path, (serde_json::to_string(&doc)? + "\n").as_bytes())?;
        outputs.insert("polygons".into(), json!(path));
    }
    if wants(FormatArg::Overlay) {
        // Largest first, so small masks stay visible on top (as the reference's notebooks draw).
        let mut order: Vec<usize> = (0..masks.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(masks[i].area()));
        let drawn: Vec<_> = order.iter().map(|&i| masks[i].mask()).collect();
        let path = args.out.join(format!("{stem}.overlay.png"));
        overlay(&image, &drawn, &[], &[]).save(&path).with_context(|| format!("writing {}", path.display()))?;
        outputs.insert("overlay".into(), json!(path));
    }
    if args.json {
        let anns: Vec<_> = masks.iter().map(|m| m.to_json(OutputMode::CocoRle)).collect();
        let doc = json!({"image": {"file_name": args.image, "height": size.1, "width": size.0},
                         "masks": anns, "pngs": pngs, "outputs": outputs});
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{} masks", masks.len());
        for (i, m) in masks.iter().enumerate() {
            println!(
                "mask {i}: predicted IoU {:.3}  stability {:.3}  area {} px  bbox {:?}",
                m.predicted_iou,
                m.stability_score,
                m.area(),
                m.bbox()
            );
        }
        for (k, v) in &outputs {
            println!("{k}: {}", v.as_str().unwrap_or_default());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    type Cli = crate::args::TestCli<Args>;

    #[test]
    fn prompts_are_typed_at_the_boundary() {
        let cli =
            Cli::try_parse_from(["x", "a.jpg", "--point", "120,80", "-p", "3,4,neg", "--box", "1,2,3,4"]).unwrap();
        assert_eq!(cli.args.points.len(), 2);
        assert!(!cli.args.points[1].positive);
        assert_eq!(cli.args.boxes, vec![[1.0, 2.0, 3.0, 4.0]]);
        let err = Cli::try_parse_from(["x", "a.jpg", "--point", "120"]).err().unwrap().to_string();
        assert!(err.contains("--point") && err.contains("2 comma-separated"), "{err}");
        let err = Cli::try_parse_from(["x", "a.jpg", "--box", "1,2,3"]).err().unwrap().to_string();
        assert!(err.contains("--box") && err.contains("4 comma-separated"), "{err}");
    }
}
