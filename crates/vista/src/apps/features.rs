//! Writing DINO features for other programs: `.npy` (numpy), `.safetensors` (names and grids in
//! the metadata) or JSON lines — what `vista features` writes.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::json;

use crate::data::npy;
use crate::dino::pipeline::{DinoFeatures, FEATURES_FORMAT};
use crate::weights::formats::write_safetensors;
use crate::{Error, Result};

/// Where and how features are written, chosen by the output path's extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureOutput {
    /// CLS rows `[N, C]` in this file, patch tokens `[N, h·w, C]` in `<stem>.patch.npy` (which
    /// needs one patch grid for all images); row names in `<stem>.txt`.
    Npy(PathBuf),
    /// [`save_features_safetensors`]; row names also in `<stem>.txt`.
    Safetensors(PathBuf),
    /// One JSON object per image (`path`, `cls`, `grid`, `patch`, `registers`) to this file, or
    /// to standard output.
    JsonLines(Option<PathBuf>),
}

impl FeatureOutput {
    /// `.npy` and `.safetensors` by extension; `-`, nothing or any other name: JSON lines.
    pub fn for_path(out: Option<&Path>) -> Self {
        let ext = |p: &Path| p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        match out {
            Some(p) if p.as_os_str() == "-" => Self::JsonLines(None),
            Some(p) if ext(p) == "npy" => Self::Npy(p.to_path_buf()),
            Some(p) if ext(p) == "safetensors" => Self::Safetensors(p.to_path_buf()),
            Some(p) => Self::JsonLines(Some(p.to_path_buf())),
            None => Self::JsonLines(None),
        }
    }
}

/// Which features to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// The CLS token of each image.
    pub cls: bool,
    /// The patch (and register) tokens of each image.
    pub patches: bool,
}

/// Writes `features` (named by `names`, in the same order) to `output`; `extra` goes into a
/// safetensors file's metadata. Returns a line per file written, for people.
pub fn write_features(
    output: &FeatureOutput,
    names: &[String],
    features: &[DinoFeatures],
    wanted: Wanted,
    extra: &[(&str, String)],
) -> Result<Vec<String>> {
    let dim = features.first().map_or(0, DinoFeatures::dim);
    let mut wrote = Vec::new();
    match output {
        FeatureOutput::Npy(p) => {
            if wanted.cls {
                let flat: Vec<f32> = features.iter().flat_map(|f| f.cls.iter().copied()).collect();
                npy::write_f32_matrix(p, &flat, features.len(), dim)?;
                wrote.push(format!("CLS [{}, {dim}] to {}", features.len(), p.display()));
            }
            let list = write_names(p, names)?;
            if wanted.patches {
                let Some((h, w)) = common_grid(features).or(features.is_empty().then_some((0, 0))) else {
                    return Err(Error::arg(
                        "out",
                        format!(
                            "the images have different patch grids ({}), which one .npy array cannot hold: write \
                             .safetensors or JSON lines, or use the eval preprocessing (one crop size for all){}",
                            grid_summary(features),
                            if wanted.cls { format!(" ({} was written)", p.display()) } else { String::new() }
                        ),
                    ));
                };
                let pp = patch_npy_path(p);
                let flat: Vec<f32> = features.iter().flat_map(|f| f.patches.iter().copied()).collect();
                npy::write_f32(&pp, &flat, &[features.len(), h * w, dim])?;
                wrote.push(format!("patch tokens [{}, {h}x{w}, {dim}] to {}", features.len(), pp.display()));
            }
            wrote.push(format!("row names in {}", list.display()));
        }
        FeatureOutput::Safetensors(p) => {
            save_features_safetensors(p, names, features, wanted.cls, wanted.patches, extra)?;
            let list = write_names(p, names)?;
            wrote.push(format!(
                "features of {} images to {} (row names in {})",
                features.len(),
                p.display(),
                list.display()
            ));
        }
        FeatureOutput::JsonLines(target) => {
            let io = |p: &Path, e: std::io::Error| Error::io(p, e);
            let stdout = Path::new("<stdout>");
            let mut w: Box<dyn Write> = match target {
                Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(|e| io(p, e))?)),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let where_ = target.as_deref().unwrap_or(stdout);
            for (name, f) in names.iter().zip(features) {
                let mut line = json!({ "path": name });
                if wanted.cls {
                    line["cls"] = json!(f.cls);
                }
                if wanted.patches {
                    line["grid"] = json!([f.grid.0, f.grid.1]);
                    line["patch"] = json!(f.patches.chunks(dim.max(1)).collect::<Vec<_>>());
                    if !f.registers.is_empty() {
                        line["registers"] = json!(f.registers.chunks(dim.max(1)).collect::<Vec<_>>());
                    }
                }
                writeln!(w, "{line}").map_err(|e| io(where_, e))?;
            }
            w.flush().map_err(|e| io(where_, e))?;
        }
    }
    Ok(wrote)
}

/// Writes one name per line to `<out stem>.txt`; returns that path.
pub fn write_names(out: &Path, names: &[String]) -> Result<PathBuf> {
    let list = out.with_extension("txt");
    let mut text = names.join("\n");
    if !names.is_empty() {
        text.push('\n');
    }
    std::fs::write(&list, text).map_err(|e| Error::io(&list, e))?;
    Ok(list)
}

fn patch_npy_path(out: &Path) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    out.with_file_name(format!("{stem}.patch.npy"))
}

fn grid_summary(feats: &[DinoFeatures]) -> String {
    let mut grids: Vec<(usize, usize)> = feats.iter().map(|f| f.grid).collect();
    grids.sort();
    grids.dedup();
    let shown: Vec<String> = grids.iter().take(4).map(|(h, w)| format!("{h}x{w}")).collect();
    let more = if grids.len() > 4 { format!(", ... {} in all", grids.len()) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

/// Writes features to a `.safetensors` file:
///
/// * `cls` `[N, C]` when `cls`;
/// * when `patches`: `patch` `[N, h·w, C]` if every grid is the same, else `patch.<i>`
///   `[h_i·w_i, C]` per image;
/// * `registers` `[N, R, C]` when the model has registers;
///
/// with metadata `format` ([`FEATURES_FORMAT`]), `names` (JSON array), `grids` (JSON array of
/// `[h, w]`) and whatever `extra` holds.
pub fn save_features_safetensors(
    path: &Path,
    names: &[String],
    features: &[DinoFeatures],
    cls: bool,
    patches: bool,
    extra: &[(&str, String)],
) -> Result<()> {
    if names.len() != features.len() {
        return Err(Error::arg("names", format!("{} names for {} feature sets", names.len(), features.len())));
    }
    let n = features.len();
    let c = features.first().map_or(0, DinoFeatures::dim);
    let mut tensors = Vec::new();
    if cls {
        let flat: Vec<f32> = features.iter().flat_map(|f| f.cls.iter().copied()).collect();
        tensors.push(("cls".to_string(), Tensor::from_vec(flat, (n, c), &Device::Cpu)?));
    }
    if patches {
        match common_grid(features) {
            Some((h, w)) => {
                let flat: Vec<f32> = features.iter().flat_map(|f| f.patches.iter().copied()).collect();
                tensors.push(("patch".to_string(), Tensor::from_vec(flat, (n, h * w, c), &Device::Cpu)?));
            }
            None => {
                for (i, f) in features.iter().enumerate() {
                    let (h, w) = f.grid;
                    tensors.push((format!("patch.{i}"), Tensor::from_slice(&f.patches, (h * w, c), &Device::Cpu)?));
                }
            }
        }
    }
    let r = features.first().map_or(0, |f| f.registers.len() / c.max(1));
    if r > 0 {
        let flat: Vec<f32> = features.iter().flat_map(|f| f.registers.iter().copied()).collect();
        tensors.push(("registers".to_string(), Tensor::from_vec(flat, (n, r, c), &Device::Cpu)?));
    }
    let grids: Vec<[usize; 2]> = features.iter().map(|f| [f.grid.0, f.grid.1]).collect();
    let mut metadata: HashMap<String, String> = [
        ("format".to_string(), FEATURES_FORMAT.to_string()),
        ("names".to_string(), serde_json::to_string(names).unwrap_or_default()),
        ("grids".to_string(), serde_json::to_string(&grids).unwrap_or_default()),
    ]
    .into();
    for (k, v) in extra {
        metadata.insert(k.to_string(), v.clone());
    }
    let refs = tensors.iter().map(|(n, t)| (n.as_str(), t));
    write_safetensors(path, refs, &metadata)
}

/// The grid every feature set shares, if any (`None` for none or several).
pub fn common_grid(features: &[DinoFeatures]) -> Option<(usize, usize)> {
    let g = features.first()?.grid;
    features.iter().all(|f| f.grid == g).then_some(g)
}
