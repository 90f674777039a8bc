//! Contact sheets of DINO's multi-crop augmentation (`vista::image::augment`) for the docs
//! (docs/augmentations.md).
//!
//! ```sh
//! cargo run --release -p vista --example augment_views -- docs/img/augment --epochs 0,2,5   # the docs' pictures
//! cargo run --release -p vista --example augment_views -- OUT_DIR photo.jpg fashion-mnist:7 --epochs 0,5
//! ```
//!
//! For every input, one PNG (`OUT_DIR/<name>.png`) with one row per draw — the views of
//! `sample_rng(seed, index, epoch)` for each epoch of `--epochs` — and a markdown file
//! (`OUT_DIR/<name>-params.md`) listing the parameters each view drew. A row is:
//!
//! * the original, scaled to the row height, with this draw's crop boxes drawn on it (red:
//!   global 1, cyan: global 2, yellow: the locals);
//! * global 1 and global 2 (red and cyan frames);
//! * the locals (yellow frames), left to right then top to bottom, in a grid as high as a global.
//!
//! Every view of a sheet is shown at the same scale, `--display` pixels for a global. By default
//! small globals are enlarged by the largest whole factor that keeps them within 112 px (28 px →
//! 112 px, ×4) and larger ones reduced to 96 px (224 px → 96 px, ×3/7, which keeps a photo's sheet
//! under 300 KB). Enlarging is nearest-neighbour (the view's pixels stay visible), reducing is
//! vista's antialiased bicubic resize. The views are exactly the uint8 images
//! `DataAugmentationDino::augment_images` returns (checked for every draw), before normalisation.
//!
//! Inputs (default: `crates/vista/tests/fixtures/preprocess/chelsea.png`, `fashion-mnist:0`,
//! `fashion-mnist:1`):
//!
//! * an image file: DINO's defaults, `DinoAugmentConfig::default()` (2 × 224 px globals with
//!   scale (0.4, 1), 8 × 96 px locals with scale (0.05, 0.4)); index 0 of the random stream;
//! * `fashion-mnist:K`: item K of the Fashion-MNIST training split (`--fashion-mnist-dir`,
//!   default Debian's `/usr/share/datasets/fashion-mnist`), with the small-image configuration
//!   `DinoAugmentConfig::dino(28, 12, (0.4, 1.0), (0.05, 0.4), 6)`; index K of the stream.
//!
//! Options: `--seed N` (default 0), `--epochs E1,E2,..` (default 0,1,2), `--display PX` (global
//! tile size, see above).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageEncoder, Rgb, RgbImage};
use vista::data::dataset::{LabelledSet, Split, DEBIAN_FASHION_MNIST_DIR};
use vista::image::augment::{sample_rng, DataAugmentationDino, DinoAugmentConfig, JitterOp, ViewParams};
use vista::image::{load_rgb, resize_exact, DecodeOptions, Filter};

const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const GLOBAL1: Rgb<u8> = Rgb([230, 30, 30]);
const GLOBAL2: Rgb<u8> = Rgb([0, 200, 230]);
const LOCAL: Rgb<u8> = Rgb([250, 215, 0]);
/// Width of the coloured frame around each view.
const FRAME: u32 = 2;
/// Space between two framed tiles, between two rows, and around the sheet.
const GAP: u32 = 6;
const ROW_GAP: u32 = 10;
const MARGIN: u32 = 8;

struct Args {
    out_dir: PathBuf,
    inputs: Vec<String>,
    seed: u64,
    epochs: Vec<u64>,
    /// Display size of a global view; `None`: see the module docs.
    display: Option<u32>,
    fashion_dir: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut out_dir = None;
    let mut inputs = Vec::new();
    let mut seed = 0;
    let mut epochs = vec![0, 1, 2];
    let mut display = None;
    let mut fashion_dir = PathBuf::from(DEBIAN_FASHION_MNIST_DIR);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--seed" => seed = val()?.parse().context("--seed")?,
            "--epochs" => {
                epochs = val()?.split(',').map(|e| e.trim().parse()).collect::<Result<_, _>>().context("--epochs")?
            }
            "--display" => display = Some(val()?.parse().context("--display")?),
            "--fashion-mnist-dir" => fashion_dir = PathBuf::from(val()?),
            "-h" | "--help" => {
                println!(
                    "usage: augment_views OUT_DIR [IMAGE | fashion-mnist:K]... [--seed N] [--epochs E1,E2,..] \
                     [--display PX] [--fashion-mnist-dir DIR]"
                );
                std::process::exit(0);
            }
            a if a.starts_with("--") => bail!("unknown option {a}"),
            a if out_dir.is_none() => out_dir = Some(PathBuf::from(a)),
            a => inputs.push(a.to_string()),
        }
    }
    let out_dir = out_dir.ok_or_else(|| anyhow!("usage: augment_views OUT_DIR [IMAGE | fashion-mnist:K]..."))?;
    ensure!(!epochs.is_empty(), "--epochs: give at least one epoch");
    ensure!(display.is_none_or(|d| d >= 8), "--display must be at least 8 pixels");
    if inputs.is_empty() {
        let chelsea = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess/chelsea.png");
        inputs = vec![chelsea.to_string_lossy().into_owned(), "fashion-mnist:0".into(), "fashion-mnist:1".into()];
    }
    Ok(Args { out_dir, inputs, seed, epochs, display, fashion_dir })
}

/// One image to augment and how.
struct Input {
    /// File stem of the outputs.
    name: String,
    /// What it is, for the parameter listing.
    title: String,
    image: RgbImage,
    /// The `index` of `sample_rng(seed, index, epoch)`.
    index: u64,
    config: DinoAugmentConfig,
    config_text: String,
}

fn load_input(spec: &str, fashion_dir: &Path) -> Result<Input> {
    if let Some(k) = spec.strip_prefix("fashion-mnist:") {
        let k: usize = k.parse().with_context(|| format!("{spec}: not an item number"))?;
        let set = LabelledSet::from_idx_dir(fashion_dir, Split::Train, Some(k + 1))
            .with_context(|| format!("reading Fashion-MNIST from {}", fashion_dir.display()))?;
        let item = set.items.get(k).ok_or_else(|| anyhow!("{spec}: the training split has {} items", set.len()))?;
        let image = item.load(&DecodeOptions::default())?;
        return Ok(Input {
            name: format!("fashion-mnist-{k}"),
            title: format!(
                "Fashion-MNIST training item {k} (label {}, \"{}\"), {}×{} greyscale as RGB",
                item.label,
                set.classes[item.label],
                image.width(),
                image.height()
            ),
            image,
            index: k as u64,
            config: DinoAugmentConfig::dino(28, 12, (0.4, 1.0), (0.05, 0.4), 6),
            config_text: "`DinoAugmentConfig::dino(28, 12, (0.4, 1.0), (0.05, 0.4), 6)`".into(),
        });
    }
    let path = Path::new(spec);
    let image = load_rgb(path, &DecodeOptions::default()).with_context(|| format!("loading {spec}"))?;
    let name = path.file_stem().map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
    Ok(Input {
        title: format!(
            "`{}`, {}×{}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            image.width(),
            image.height()
        ),
        name,
        image,
        index: 0,
        config: DinoAugmentConfig::default(),
        config_text: "`DinoAugmentConfig::default()` (224 / 96 px, global scale (0.4, 1), local scale (0.05, 0.4), \
                      8 locals)"
            .into(),
    })
}

/// `img` at `w` × `h` for display: nearest-neighbour when enlarging (or same size), vista's
/// antialiased bicubic when reducing.
fn display_resize(img: &RgbImage, w: u32, h: u32) -> Result<RgbImage> {
    if w < img.width() || h < img.height() {
        return Ok(resize_exact(img, w, h, Filter::Bicubic)?);
    }
    let (iw, ih) = (u64::from(img.width()), u64::from(img.height()));
    Ok(RgbImage::from_fn(w, h, |x, y| {
        *img.get_pixel((u64::from(x) * iw / u64::from(w)) as u32, (u64::from(y) * ih / u64::from(h)) as u32)
    }))
}

/// Draws the outline of the rectangle `[x0, x1) × [y0, y1)`, `t` pixels thick, inside it.
fn draw_rect(img: &mut RgbImage, (x0, y0, x1, y1): (u32, u32, u32, u32), t: u32, colour: Rgb<u8>) {
    let (x1, y1) = (x1.min(img.width()), y1.min(img.height()));
    for y in y0..y1 {
        for x in x0..x1 {
            if x < x0 + t || x + t >= x1 || y < y0 + t || y + t >= y1 {
                img.put_pixel(x, y, colour);
            }
        }
    }
}

/// Copies `tile` into `sheet` at `(x, y)` inside a `FRAME`-wide frame of `colour`.
fn put_framed(sheet: &mut RgbImage, tile: &RgbImage, x: u32, y: u32, colour: Rgb<u8>) {
    let (w, h) = (tile.width() + 2 * FRAME, tile.height() + 2 * FRAME);
    draw_rect(sheet, (x, y, x + w, y + h), FRAME, colour);
    image::imageops::replace(sheet, tile, i64::from(x + FRAME), i64::from(y + FRAME));
}

/// The crop boxes of one draw on the original (scaled to `w` × `h`): locals first, globals on
/// top and thicker.
fn original_with_boxes(original: &RgbImage, params: &[ViewParams], w: u32, h: u32) -> Result<RgbImage> {
    let mut img = display_resize(original, w, h)?;
    let (sx, sy) = (f64::from(w) / f64::from(original.width()), f64::from(h) / f64::from(original.height()));
    let scaled = |p: &ViewParams| {
        let c = p.crop;
        let x0 = (f64::from(c.left) * sx).round() as u32;
        let y0 = (f64::from(c.top) * sy).round() as u32;
        let x1 = (f64::from(c.left + c.width) * sx).round() as u32;
        let y1 = (f64::from(c.top + c.height) * sy).round() as u32;
        (x0, y0, x1.max(x0 + 1), y1.max(y0 + 1))
    };
    for p in &params[2..] {
        draw_rect(&mut img, scaled(p), 1, LOCAL);
    }
    draw_rect(&mut img, scaled(&params[1]), 2, GLOBAL2);
    draw_rect(&mut img, scaled(&params[0]), 2, GLOBAL1);
    Ok(img)
}

fn op_name(op: JitterOp) -> &'static str {
    match op {
        JitterOp::Brightness => "brightness",
        JitterOp::Contrast => "contrast",
        JitterOp::Saturation => "saturation",
        JitterOp::Hue => "hue",
    }
}

/// One markdown table row for one view.
fn describe(view: &str, p: &ViewParams, width: u32, height: u32) -> String {
    let c = p.crop;
    let area = 100.0 * f64::from(c.width) * f64::from(c.height) / (f64::from(width) * f64::from(height));
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let jitter = p.jitter.as_ref().map_or_else(
        || "—".to_string(),
        |j| {
            j.order
                .iter()
                .map(|&op| match j.factor(op) {
                    Some(f) => format!("{} {f:.3}", op_name(op)),
                    None => format!("{} off", op_name(op)),
                })
                .collect::<Vec<_>>()
                .join(" → ")
        },
    );
    let blur = p.blur_radius.map_or_else(|| "—".to_string(), |r| format!("{r:.2}"));
    format!(
        "| {view} | {}, {} | {}×{} | {area:.1} % | {} | {jitter} | {} | {blur} | {} |",
        c.left,
        c.top,
        c.width,
        c.height,
        yes_no(p.flip),
        yes_no(p.grayscale),
        yes_no(p.solarize)
    )
}

fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| path.display().to_string())?);
    PngEncoder::new_with_quality(file, CompressionType::Best, FilterType::Adaptive)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .with_context(|| path.display().to_string())
}

fn render(input: &Input, args: &Args) -> Result<(RgbImage, String)> {
    let aug = DataAugmentationDino::new(input.config.clone())?;
    let cfg = aug.config();
    let (w, h) = input.image.dimensions();
    let (gsize, lsize, n_local) = (cfg.global1.size, cfg.local.size, cfg.n_local);
    ensure!(cfg.global2.size == gsize, "both globals must have the same size");
    // Display sizes: globals at `display`, everything at the same scale.
    let gd = args.display.unwrap_or(if gsize <= 112 { 112 / gsize * gsize } else { 96 });
    let scale = f64::from(gd) / f64::from(gsize);
    let ld = ((f64::from(lsize) * scale).round() as u32).max(1);
    let od_h = gd;
    let od_w = ((f64::from(w) * f64::from(gd) / f64::from(h)).round() as u32).max(1);
    // The locals in a grid no higher than a framed global.
    let cell = |s: u32| s + 2 * FRAME;
    let local_rows = (((cell(gd) + GAP) / (cell(ld) + GAP)).max(1) as usize).min(n_local.max(1));
    let local_cols = n_local.div_ceil(local_rows);
    let grid_w = if n_local == 0 { 0 } else { local_cols as u32 * (cell(ld) + GAP) - GAP };
    let grid_h = local_rows as u32 * (cell(ld) + GAP) - GAP;
    let row_h = cell(gd).max(grid_h);
    let sheet_w = 2 * MARGIN + cell(od_w) + 2 * (GAP + cell(gd)) + if n_local > 0 { GAP + grid_w } else { 0 };
    let n_rows = args.epochs.len() as u32;
    let sheet_h = 2 * MARGIN + n_rows * row_h + (n_rows - 1) * ROW_GAP;
    let mut sheet = RgbImage::from_pixel(sheet_w, sheet_h, BACKGROUND);

    let mut md = String::new();
    writeln!(md, "# {}", input.title)?;
    writeln!(md)?;
    writeln!(md, "Configuration: {}.", input.config_text)?;
    writeln!(
        md,
        "Each row: the original with the crop boxes (red: global 1, cyan: global 2, yellow: locals), global 1, \
         global 2, then the {n_local} locals (left to right, top to bottom); globals shown at {gd} px, locals at \
         {ld} px ({}). Crop: left, top and width × height in source pixels, area in % of the image; colour \
         jitter: the adjustments in the order applied, with their factors.",
        if scale >= 1.0 { "nearest-neighbour" } else { "reduced, antialiased bicubic" }
    )?;
    let head = "| view | crop left, top | crop size | area | flip | colour jitter | grey | blur radius | solarize |\n\
                |---|---|---|---|---|---|---|---|---|";

    for (r, &epoch) in args.epochs.iter().enumerate() {
        let params = aug.sample_params(w, h, &mut sample_rng(args.seed, input.index, epoch));
        let views: Vec<RgbImage> = params.iter().map(|p| p.apply(&input.image)).collect::<vista::Result<_>>()?;
        // The same views as the library's own entry point on the same stream.
        let (globals, locals) = aug.augment_images(&input.image, &mut sample_rng(args.seed, input.index, epoch))?;
        ensure!(globals.iter().chain(&locals).eq(views.iter()), "augment_images disagrees with sample_params + apply");

        let y = MARGIN + r as u32 * (row_h + ROW_GAP);
        let mut x = MARGIN;
        let original = original_with_boxes(&input.image, &params, od_w, od_h)?;
        put_framed(&mut sheet, &original, x, y, BACKGROUND);
        x += cell(od_w) + GAP;
        for (view, colour) in views[..2].iter().zip([GLOBAL1, GLOBAL2]) {
            put_framed(&mut sheet, &display_resize(view, gd, gd)?, x, y, colour);
            x += cell(gd) + GAP;
        }
        for (k, view) in views[2..].iter().enumerate() {
            let (gr, gc) = ((k / local_cols) as u32, (k % local_cols) as u32);
            let tile = display_resize(view, ld, ld)?;
            put_framed(&mut sheet, &tile, x + gc * (cell(ld) + GAP), y + gr * (cell(ld) + GAP), LOCAL);
        }

        writeln!(md)?;
        writeln!(md, "## Row {}: seed {}, index {}, epoch {epoch}", r + 1, args.seed, input.index)?;
        writeln!(md)?;
        writeln!(md, "{head}")?;
        for (k, p) in params.iter().enumerate() {
            let name = match k {
                0 => "global 1".to_string(),
                1 => "global 2".to_string(),
                _ => format!("local {}", k - 1),
            };
            writeln!(md, "{}", describe(&name, p, w, h))?;
        }
    }
    Ok((sheet, md))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out_dir).with_context(|| args.out_dir.display().to_string())?;
    for spec in &args.inputs {
        let input = load_input(spec, &args.fashion_dir)?;
        let (sheet, md) = render(&input, &args)?;
        let png = args.out_dir.join(format!("{}.png", input.name));
        let txt = args.out_dir.join(format!("{}-params.md", input.name));
        save_png(&sheet, &png)?;
        std::fs::write(&txt, &md).with_context(|| txt.display().to_string())?;
        let size = std::fs::metadata(&png)?.len();
        println!(
            "{}: {}×{} px, {:.1} KB; parameters in {}",
            png.display(),
            sheet.width(),
            sheet.height(),
            size as f64 / 1024.0,
            txt.display()
        );
    }
    Ok(())
}
