//! `vista fit`: which backbone and which few-shot classifier fit a labelled image set best —
//! every candidate scored by stratified k-fold cross-validation on the user's own labels.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use vista::apps::classify::{ClassPrompts, Templates, ZeroShotClassifier};
use vista::clip::pipeline::ClipPipeline;
use vista::data::{LabelledSet, Split};
use vista::dino::pipeline::DinoPipeline;
use vista::eval::fit::{
    choose_params, cross_validate, learning_curve, stratified_folds, Features, Head, HeadInfo, LinearHead, Method,
    MethodReport, HEAD_FORMAT,
};
use vista::eval::{clip_features, dataset_features, pixel_features, DatasetFeatures};

use crate::args::TargetArgs;
use crate::progress;

/// A method on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// CLIP zero-shot (class names through the templates).
    ZeroShot,
    /// DINO's weighted k-NN (k and T chosen by inner cross-validation).
    Knn,
    /// L2-penalised logistic regression (C chosen by inner cross-validation).
    Logistic,
    /// Tip-Adapter: zero-shot plus a cache of the training images (CLIP).
    TipAdapter,
    /// Interpolation of the zero-shot head and the logistic probe (CLIP).
    Blend,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::ZeroShot => Method::ZeroShot,
            MethodArg::Knn => Method::Knn,
            MethodArg::Logistic => Method::Logistic,
            MethodArg::TipAdapter => Method::TipAdapter,
            MethodArg::Blend => Method::Blend,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Labelled images: a folder with one sub-folder per class (ImageFolder), a `.csv` of
    /// `file,label` rows (files relative to it), or MNIST-style IDX files (a folder such as
    /// /usr/share/datasets/fashion-mnist: its train split).
    pub data: PathBuf,
    /// A CLIP backbone to try (Hugging Face id, folder or checkpoint file); repeatable.
    #[arg(long)]
    pub clip: Vec<String>,
    /// A DINO / DINOv2 backbone to try; repeatable.
    #[arg(long)]
    pub dino: Vec<String>,
    /// Also try the raw pixels (ImageNet-normalised, flattened; every image one size): the
    /// baseline a backbone has to beat.
    #[arg(long)]
    pub pixels: bool,
    /// Methods to compare (default: every one that applies; the zero-shot ones need CLIP).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub methods: Vec<MethodArg>,
    /// Outer cross-validation folds (fewer when no class has that many images).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Prompt templates of the CLIP methods: `default`, `imagenet80`, `none` or a file.
    #[arg(long, default_value = "default")]
    pub templates: String,
    /// Prompts of your own for some classes, one line each: `class: prompt | prompt` (`{}` in
    /// a prompt stands for the class name); the other classes use the templates. Default: the
    /// data folder's `labels.txt`, when there is one.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Use at most N images (IDX: the first N; a folder: evenly through each class).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seed of the fold assignment.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Fit the best backbone + method (or those of --use-method / --use-backbone) on every image
    /// and save it here as a classifier (`.safetensors`, plus the same name `.json`) for
    /// `vista classify --head`.
    #[arg(long)]
    pub save_head: Option<PathBuf>,
    /// Write each backbone's normalised features here (`<backbone>.npy`, rows as in the
    /// report's `backbones[].labels` / `folds`), e.g. to check the evaluation elsewhere
    /// (`tools/reference/fit_sklearn.py`).
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Learning curves: accuracy with this many training images per class (comma-separated,
    /// e.g. 1,2,4,8,16), every method and backbone, tested on the other images.
    #[arg(long, value_delimiter = ',')]
    pub shots: Vec<usize>,
    /// Draws per learning-curve point.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Write pictures here: `curves.png` (with --shots), and of the best result
    /// `confusion.png` and `confused.png` (a contact sheet of the most confused examples).
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// With --save-head: save this method instead of the best.
    #[arg(long, value_enum)]
    pub use_method: Option<MethodArg>,
    /// With --save-head: save a method on this backbone (as the report names it, e.g.
    /// `dino:model.safetensors` or `pixels`) instead of the best.
    #[arg(long)]
    pub use_backbone: Option<String>,
    /// Where CLIP and DINO features are cached per model and image set (default: the user's
    /// cache folder, vista/features), so a second run on the same images skips the backbone.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Neither read nor write cached features.
    #[arg(long)]
    pub no_cache: bool,
    /// Also try each CLIP backbone's and each DINO backbone's features side by side
    /// (concatenated, each normalised first).
    #[arg(long)]
    pub concat: bool,
    /// How the DINO backbones see the images (their own preprocessing unless overridden).
    #[command(flatten)]
    pub dino_preprocess: crate::args::DinoPreprocessArgs,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// A short name for a model argument: its last path component (a hub id keeps its owner).
fn short(model: &str) -> String {
    let p = std::path::Path::new(model);
    if p.exists() {
        p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| model.to_string())
    } else {
        model.to_string()
    }
}

/// A feature extraction given a progress callback.
type Extract<'a> = dyn FnMut(&dyn Fn(usize)) -> Result<DatasetFeatures> + 'a;

/// A model argument that names a file or folder, made absolute (so a saved head finds it from
/// anywhere); a hub id as given.
fn absolute(model: &str) -> String {
    std::fs::canonicalize(model).map(|p| p.display().to_string()).unwrap_or_else(|_| model.to_string())
}

/// One backbone's features and what it cost.
struct Backbone {
    name: String,
    kind: &'static str,
    model: String,
    features: DatasetFeatures,
    seconds_per_image: f64,
    text: Option<LinearHead>,
}

/// `vista fit`.
pub fn run(args: Args) -> Result<ExitCode> {
    if args.clip.is_empty() && args.dino.is_empty() && !args.pixels {
        bail!("nothing to compare: give --clip MODEL, --dino MODEL and/or --pixels");
    }
    if args.folds < 2 {
        bail!("--folds: at least 2");
    }
    let (set, empty) = LabelledSet::open_skipping_empty(&args.data, Split::Train, args.limit)
        .with_context(|| format!("reading the labelled images of {}", args.data.display()))?;
    for class in &empty {
        eprintln!("note: class folder `{class}` holds no image file: left out");
    }
    let classes = set.classes.clone();
    let counts: Vec<usize> = (0..classes.len()).map(|c| set.items.iter().filter(|i| i.label == c).count()).collect();
    for (c, &n) in counts.iter().enumerate() {
        if n < 2 {
            eprintln!(
                "note: class `{}` has {n} image{}: it only ever trains (cross-validation cannot test it)",
                classes[c],
                if n == 1 { "" } else { "s" }
            );
        }
    }
    let most = counts.iter().copied().max().unwrap_or(0);
    let folds = args.folds.min(most);
    if folds < 2 {
        bail!("{}: no class has two images, nothing can be cross-validated", args.data.display());
    }
    if folds < args.folds {
        eprintln!("note: {folds} folds (no class has {} images)", args.folds);
    }
    let target = args.target.target()?;
    let templates = Templates::parse(&args.templates)?;
    let prompts_file = args.prompts.clone().or_else(|| {
        let default = args.data.join("labels.txt");
        (args.data.is_dir() && default.is_file()).then_some(default)
    });
    let own_prompts = match &prompts_file {
        Some(path) if !args.clip.is_empty() => {
            let p = ClassPrompts::from_file(path, &classes)?;
            eprintln!("note: {} classes use their own prompts from {}", p.len(), path.display());
            p
        }
        _ => ClassPrompts::default(),
    };
    let cache = (!args.no_cache).then(|| {
        vista::eval::FeatureCache::new(args.cache_dir.clone().unwrap_or_else(vista::eval::FeatureCache::default_root))
    });
    let mut backbones = Vec::new();
    let mut skipped = Vec::new();
    let timed = |name: &str, f: &mut Extract<'_>| -> Result<(DatasetFeatures, f64)> {
        let bar = progress::bar(set.len(), &format!("{name} features"));
        let t = Instant::now();
        let feats = f(&|n| bar.inc(n as u64))?;
        bar.finish_and_clear();
        Ok((feats, t.elapsed().as_secs_f64() / set.len().max(1) as f64))
    };
    for model in &args.clip {
        let pipeline =
            ClipPipeline::load(model, None, target.clone()).with_context(|| format!("loading CLIP `{model}`"))?;
        let (features, spi) =
            timed(model, &mut |p| Ok(clip_features(&pipeline, &set, args.batch, cache.as_ref(), p)?))?;
        if let Some(e) = &features.cache_error {
            eprintln!("note: features not cached: {e}");
        }
        let zs = ZeroShotClassifier::with_prompts(&pipeline, &classes, &templates, &own_prompts)?;
        let text: Vec<f32> = zs.weights().flatten_all()?.to_vec1()?;
        let text = LinearHead::zero_shot(&text, features.dim.max(1));
        backbones.push(Backbone {
            name: format!("clip:{}", short(model)),
            kind: "clip",
            model: absolute(model),
            features,
            seconds_per_image: spi,
            text: Some(text),
        });
    }
    for model in &args.dino {
        let options = vista::dino::LoadOptions { target: target.clone(), ..Default::default() };
        let mut pipeline = DinoPipeline::load(model, &options).with_context(|| format!("loading DINO `{model}`"))?;
        pipeline.preprocess = args.dino_preprocess.resolve(crate::args::DinoMode::Eval, pipeline.preprocess);
        let (features, spi) =
            timed(model, &mut |p| Ok(dataset_features(&pipeline, &set, args.batch, cache.as_ref(), p)?))?;
        if let Some(e) = &features.cache_error {
            eprintln!("note: features not cached: {e}");
        }
        backbones.push(Backbone {
            name: format!("dino:{}", short(model)),
            kind: "dino",
            model: absolute(model),
            features,
            seconds_per_image: spi,
            text: None,
        });
    }
    if args.concat {
        let (clips, dinos): (Vec<&Backbone>, Vec<&Backbone>) =
            backbones.iter().filter(|b| b.kind != "pixels").partition(|b| b.kind == "clip");
        let mut joined = Vec::new();
        for c in &clips {
            for d in &dinos {
                let (fc, fd) = (&c.features, &d.features);
                if fc.items != fd.items || fc.dim == 0 || fd.dim == 0 {
                    eprintln!("note: {} and {} kept different images; not concatenated", c.name, d.name);
                    continue;
                }
                let mut rows = Vec::with_capacity(fc.len() * (fc.dim + fd.dim));
                for i in 0..fc.len() {
                    for (f, dim) in [(fc, fc.dim), (fd, fd.dim)] {
                        let mut r = f.features[i * dim..(i + 1) * dim].to_vec();
                        vista::eval::knn::normalize_rows(&mut r, dim);
                        rows.extend(r);
                    }
                }
                let features = DatasetFeatures {
                    dim: fc.dim + fd.dim,
                    features: rows,
                    labels: fc.labels.clone(),
                    items: fc.items.clone(),
                    skipped: Vec::new(),
                    cache: None,
                    from_cache: false,
                    cache_error: None,
                };
                joined.push(Backbone {
                    name: format!("{}+{}", c.name, d.name),
                    kind: "concat",
                    model: format!("{}\n{}", c.model, d.model),
                    features,
                    seconds_per_image: c.seconds_per_image + d.seconds_per_image,
                    text: None,
                });
            }
        }
        backbones.extend(joined);
    }
    if args.pixels {
        use vista::image::{DecodeOptions, IMAGENET_MEAN, IMAGENET_STD};
        let (features, spi) = timed("pixels", &mut |_| {
            Ok(pixel_features(&set, &DecodeOptions::default(), IMAGENET_MEAN, IMAGENET_STD)?)
        })?;
        backbones.push(Backbone {
            name: "pixels".into(),
            kind: "pixels",
            model: String::new(),
            features,
            seconds_per_image: spi,
            text: None,
        });
    }
    let wanted: Vec<Method> =
        if args.methods.is_empty() { Method::ALL.to_vec() } else { args.methods.iter().map(|&m| m.into()).collect() };
    let mut rows = Vec::new();
    let mut results: Vec<(String, MethodReport)> = Vec::new();
    let mut datas = Vec::new();
    let mut curves = Vec::new();
    let mut exported = Vec::new();
    for b in &backbones {
        skipped.extend(b.features.skipped.iter().cloned());
        let data = Features::new(b.features.dim, b.features.features.clone(), b.features.labels.clone(), classes.len())
            .with_context(|| b.name.clone())?;
        let fold_of = stratified_folds(&data.labels, classes.len(), folds, args.seed);
        datas.push(data.clone());
        let mut entry = json!({
            "name": b.name, "model": b.model, "dim": data.dim, "labels": data.labels,
            "from_cache": b.features.from_cache, "seconds_per_image": b.seconds_per_image,
            "folds": fold_of.iter().map(|f| f.map_or(-1, |f| f as i64)).collect::<Vec<_>>(),
        });
        if let Some(dir) = &args.export {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let file = dir.join(format!("{}.npy", b.name.replace(['/', ':', '\\'], "_")));
            vista::data::npy::write_f32_matrix(&file, &data.rows, data.len(), data.dim)?;
            entry["features"] = json!(file);
        }
        exported.push(entry);
        for &m in &wanted {
            if m.needs_text() && b.text.is_none() {
                continue;
            }
            let t = Instant::now();
            let r = cross_validate(m, &data, &fold_of, b.text.as_ref(), args.seed)
                .with_context(|| format!("{} / {}", b.name, m.name()))?;
            let (acc, sd) = r.accuracy();
            let (f1, _) = r.macro_f1();
            rows.push(json!({
                "backbone": b.name, "method": m.name(), "accuracy": acc, "accuracy_std": sd, "macro_f1": f1,
                "fold_accuracy": r.fold_accuracy,
                "params": r.fold_params.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "per_class_recall": r.per_class_recall(), "confusion": r.confusion,
                "seconds_per_image": b.seconds_per_image, "cv_seconds": t.elapsed().as_secs_f64(),
            }));
            results.push((b.name.clone(), r));
            if !args.shots.is_empty() {
                let points = learning_curve(m, &data, &args.shots, args.repeats, b.text.as_ref(), args.seed)
                    .with_context(|| format!("{} / {} learning curve", b.name, m.name()))?;
                let color = vista::apps::segment::overlay::mask_color(curves.len());
                curves.push(json!({
                    "backbone": b.name, "method": m.name(), "color": color,
                    "name": format!("{} / {}", b.name, m.name()),
                    "points": points.iter().map(|p| {
                        let (mean, std) = p.accuracy();
                        let draws: Vec<_> = p
                            .draws
                            .iter()
                            .map(|d| json!({"train": d.train, "params": d.params.to_string()}))
                            .collect();
                        json!({"shots": p.shots, "accuracy": mean, "std": std, "accuracies": p.accuracies,
                               "draws": draws})
                    }).collect::<Vec<_>>(),
                }));
            }
        }
    }
    let best = rows
        .iter()
        .max_by(|a, b| a["accuracy"].as_f64().partial_cmp(&b["accuracy"].as_f64()).unwrap_or(std::cmp::Ordering::Equal))
        .cloned();
    // The best result's report and its ten most confused class pairs (the report lists them, the
    // contact sheet shows the first six).
    let best_report = best.as_ref().map(|b| &results[rows.iter().position(|r| r == b).expect("best is a row")].1);
    let confused_list = match (&best, best_report) {
        (Some(b), Some(report)) => {
            let bi = backbones.iter().position(|k| b["backbone"] == k.name.as_str()).expect("a listed backbone");
            most_confused(report, &backbones[bi].features, 10)
        }
        _ => Vec::new(),
    };
    let confused = best.as_ref().map(|_| {
        confused_list
            .iter()
            .map(|(t, p, n, items)| {
                let names: Vec<String> = items.iter().map(|&i| item_name(&set, i)).collect();
                json!({"true": classes[*t], "predicted": classes[*p], "count": n, "examples": names})
            })
            .collect::<Vec<_>>()
    });
    let doc = json!({
        "data": args.data, "images": set.len(), "classes": classes, "images_per_class": counts, "folds": folds,
        "seed": args.seed, "skipped": skipped, "empty_classes": empty, "results": rows, "best": best, "backbones": exported,
        "curves": curves, "prompts": prompts_file.filter(|_| !args.clip.is_empty()), "most_confused": confused,
    });
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if !curves.is_empty() {
            let series: Vec<vista::apps::plots::Series> = curves
                .iter()
                .map(|c| {
                    let color: Vec<u8> = c["color"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_u64()).map(|v| v as u8).collect())
                        .unwrap_or_default();
                    let points = c["points"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|p| {
                                    (p["shots"].as_u64().unwrap_or(1) as usize, p["accuracy"].as_f64().unwrap_or(0.0))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    vista::apps::plots::Series {
                        name: c["name"].as_str().unwrap_or("").to_string(),
                        color: [color[0], color[1], color[2]],
                        points,
                    }
                })
                .collect();
            vista::apps::plots::write_curves_png(&series, &dir.join("curves.png"))?;
        }
        if let Some(report) = best_report {
            vista::apps::plots::write_confusion_png(&report.confusion, &classes, &dir.join("confusion.png"))?;
            let sheet = confused_pairs(&confused_list[..confused_list.len().min(6)], &set, 8);
            vista::apps::plots::write_contact_sheet_png(&sheet, &dir.join("confused.png"))?;
        }
    }
    if let Some(path) = &args.save_head {
        // A concatenation's head would need both backbones at classification time: not saved.
        let pick = rows
            .iter()
            .filter(|r| !r["backbone"].as_str().unwrap_or("").contains('+'))
            .filter(|r| args.use_method.is_none_or(|m| r["method"] == Method::from(m).name()))
            .filter(|r| args.use_backbone.as_ref().is_none_or(|b| r["backbone"] == b.as_str()))
            .max_by(|a, b| {
                a["accuracy"].as_f64().partial_cmp(&b["accuracy"].as_f64()).unwrap_or(std::cmp::Ordering::Equal)
            })
            .ok_or_else(|| anyhow::anyhow!("--save-head: no result matches --use-method / --use-backbone"))?;
        let bi = backbones.iter().position(|b| pick["backbone"] == b.name.as_str()).expect("a listed backbone");
        let (b, data) = (&backbones[bi], &datas[bi]);
        let method = Method::ALL.into_iter().find(|m| pick["method"] == m.name()).expect("a listed method");
        let params = choose_params(method, data, b.text.as_ref(), args.seed)?;
        let head = Head::fit(method, &params, data, b.text.as_ref())?;
        let info = HeadInfo {
            format: HEAD_FORMAT.into(),
            backbone: b.kind.into(),
            model: b.model.clone(),
            method: method.name().into(),
            params: params.to_string(),
            classes: classes.clone(),
            dim: data.dim,
            accuracy: pick["accuracy"].as_f64().unwrap_or(0.0),
            resize: if b.kind == "dino" { args.dino_preprocess.resize } else { None },
            crop: if b.kind == "dino" { args.dino_preprocess.crop } else { None },
        };
        head.save(path, &info).with_context(|| format!("writing {}", path.display()))?;
        let sidecar = path.with_extension("json");
        vista::weights::formats::write_atomic(&sidecar, (serde_json::to_string_pretty(&info)? + "\n").as_bytes())?;
        eprintln!("saved {} + {} ({params}) -> {}", b.name, method.name(), path.display());
    }
    if let Some(path) = &args.report {
        vista::weights::formats::write_atomic(path, (serde_json::to_string_pretty(&doc)? + "\n").as_bytes())?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "{} images, {} classes, {folds}-fold stratified cross-validation (hyper-parameters by inner 3-fold CV)",
            set.len(),
            classes.len()
        );
        let w = rows.iter().filter_map(|r| r["backbone"].as_str()).map(str::len).max().unwrap_or(0).max(8);
        println!(
            "{:<w$} {:<12} {:>16} {:>9} {:>10}  chosen",
            "backbone", "method", "accuracy %", "macro-F1", "ms/image"
        );
        for r in &rows {
            let params: Vec<String> = r["params"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| p.as_str().map(String::from)).collect())
                .unwrap_or_default();
            println!(
                "{:<w$} {:<12} {:>9.2} ± {:>4.2} {:>9.3} {:>10.1}  {}",
                r["backbone"].as_str().unwrap_or(""),
                r["method"].as_str().unwrap_or(""),
                100.0 * r["accuracy"].as_f64().unwrap_or(0.0),
                100.0 * r["accuracy_std"].as_f64().unwrap_or(0.0),
                r["macro_f1"].as_f64().unwrap_or(0.0),
                1000.0 * r["seconds_per_image"].as_f64().unwrap_or(0.0),
                params.first().cloned().unwrap_or_default()
            );
        }
        if let Some(b) = &best {
            println!("best: {} + {}", b["backbone"].as_str().unwrap_or(""), b["method"].as_str().unwrap_or(""));
        }
        for (name, r) in &results {
            let recall = r.per_class_recall();
            let worst = recall
                .iter()
                .enumerate()
                .filter_map(|(c, v)| v.map(|v| (c, v)))
                .min_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal));
            if let Some((c, v)) = worst {
                if v < 1.0 {
                    eprintln!("{name} / {}: hardest class `{}` (recall {:.2})", r.method.name(), classes[c], v);
                }
            }
        }
    }
    if !skipped.is_empty() {
        eprintln!("{} unreadable images skipped, e.g. {}", skipped.len(), skipped[0]);
    }
    Ok(crate::exit_code(skipped.len()))
}

/// The off-diagonal cells of `report`'s confusion matrix, largest first (ties by class order), at
/// most `pairs` of them: `(true, predicted, count, the items so mistaken)` — item indices into
/// the set, in item order.
fn most_confused(report: &MethodReport, f: &DatasetFeatures, pairs: usize) -> Vec<(usize, usize, u64, Vec<usize>)> {
    let mut cells: Vec<(usize, usize, u64)> = Vec::new();
    for (t, row) in report.confusion.iter().enumerate() {
        for (p, &n) in row.iter().enumerate() {
            if t != p && n > 0 {
                cells.push((t, p, n));
            }
        }
    }
    cells.sort_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
    cells.truncate(pairs);
    cells
        .into_iter()
        .map(|(t, p, n)| {
            let items = (0..f.len())
                .filter(|&r| f.labels[r] == t && report.predictions.get(r).copied().flatten() == Some(p))
                .map(|r| f.items[r])
                .collect();
            (t, p, n, items)
        })
        .collect()
}

/// How an item is named in a report: its file, or `item N` for IDX images.
fn item_name(set: &LabelledSet, i: usize) -> String {
    set.items[i].path().map_or_else(|| format!("item {i}"), |p| p.display().to_string())
}

/// The contact sheet's rows: each confused pair with up to `per_pair` of its images (those that
/// no longer load are left out).
fn confused_pairs(
    pairs: &[(usize, usize, u64, Vec<usize>)],
    set: &LabelledSet,
    per_pair: usize,
) -> Vec<vista::apps::plots::ConfusedPair> {
    let decode = vista::image::DecodeOptions::default();
    pairs
        .iter()
        .map(|(t, p, count, items)| vista::apps::plots::ConfusedPair {
            truth: set.classes[*t].clone(),
            predicted: set.classes[*p].clone(),
            count: *count,
            examples: items.iter().take(per_pair).filter_map(|&i| set.items[i].load(&decode).ok()).collect(),
        })
        .collect()
}
