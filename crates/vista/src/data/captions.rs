//! Image–caption pairs for contrastive training: a captions file (`.tsv`, `.csv` or `.jsonl`)
//! naming image files and their captions, or a labelled set whose captions are made from the
//! class names through templates.
//!
//! A captions file is read as open_clip's `CsvDataset` reads `--train-data` (one row per
//! image–caption pair; a header naming the image column `filepath`, `file`, `image` or `path`
//! and the caption column `title`, `caption` or `text`; without such a header, the first two
//! columns are file and caption). A `.jsonl` line is an object with the file under one of those
//! keys and either one caption or a `captions` array. Rows naming the same file are one image
//! with several captions (training draws one per epoch). Files are relative to the captions
//! file's folder.
//!
//! Bad rows never stop the set: an empty caption, a line that does not parse or a file that does
//! not exist is left out and named in [`CaptionSet::skipped`] (`file:line: why`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::dataset::{split_csv_line, Item, ItemImage, LabelledSet};
use crate::{Error, Result};

/// The names a captions file may give its image column.
pub const FILE_COLUMNS: [&str; 4] = ["filepath", "file", "image", "path"];
/// The names a captions file may give its caption column.
pub const CAPTION_COLUMNS: [&str; 3] = ["title", "caption", "text"];

/// Images with one or more captions each.
#[derive(Debug, Clone, Default)]
pub struct CaptionSet {
    /// The images (`label` is the class for a labelled set, else the item's own index).
    pub items: Vec<Item>,
    /// Each item's captions (at least one).
    pub captions: Vec<Vec<String>>,
    /// The class names of a labelled set (captions made from them).
    pub classes: Option<Vec<String>>,
    /// Rows left out, each `where: why`.
    pub skipped: Vec<String>,
}

impl CaptionSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of image–caption pairs.
    pub fn pairs(&self) -> usize {
        self.captions.iter().map(Vec::len).sum()
    }

    /// A labelled set captioned through `templates` (each with `{}` for the class name): every
    /// image gets every template's caption of its class.
    pub fn from_labelled(set: LabelledSet, templates: &[String]) -> Result<Self> {
        if templates.is_empty() {
            return Err(Error::arg("templates", "no caption template"));
        }
        let per_class: Vec<Vec<String>> = set
            .classes
            .iter()
            .map(|c| {
                templates
                    .iter()
                    .map(|t| if t.contains("{}") { t.replace("{}", c) } else { format!("{t} {c}") })
                    .collect()
            })
            .collect();
        let captions = set.items.iter().map(|i| per_class[i.label].clone()).collect();
        Ok(Self { items: set.items, captions, classes: Some(set.classes), skipped: Vec::new() })
    }

    /// Reads a captions file (by extension: `.tsv`, `.csv`, `.jsonl`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        let mut rows: Vec<(usize, String, Vec<String>)> = Vec::new();
        let mut skipped = Vec::new();
        let at = |line: usize| format!("{}:{}", path.display(), line);
        match ext.as_str() {
            "jsonl" | "json" => {
                for (n, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    match parse_json_row(line) {
                        Ok((file, caps)) => rows.push((n + 1, file, caps)),
                        Err(why) => skipped.push(format!("{}: {why}", at(n + 1))),
                    }
                }
            }
            "tsv" | "csv" => {
                let split = |l: &str| -> Vec<String> {
                    if ext == "tsv" {
                        l.split('\t').map(str::to_string).collect()
                    } else {
                        split_csv_line(l)
                    }
                };
                let mut cols = (0usize, 1usize);
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim_end_matches('\r');
                    if line.trim().is_empty() {
                        continue;
                    }
                    let fields = split(line);
                    if rows.is_empty() && skipped.is_empty() && n == first_line(&text) {
                        if let Some(c) = header_columns(&fields) {
                            cols = c;
                            continue;
                        }
                    }
                    match (fields.get(cols.0), fields.get(cols.1)) {
                        (Some(f), Some(c)) => rows.push((n + 1, f.trim().to_string(), vec![c.trim().to_string()])),
                        _ => skipped.push(format!(
                            "{}: expected a file and a caption, found {} field(s)",
                            at(n + 1),
                            fields.len()
                        )),
                    }
                }
            }
            _ => {
                return Err(Error::arg("data", format!("{}: a captions file is .tsv, .csv or .jsonl", path.display())))
            }
        }
        let mut index: HashMap<PathBuf, usize> = HashMap::new();
        let mut set = CaptionSet { skipped, ..Default::default() };
        let mut missing: HashMap<PathBuf, bool> = HashMap::new();
        for (line, file, caps) in rows {
            if file.is_empty() {
                set.skipped.push(format!("{}: no file named", at(line)));
                continue;
            }
            let full = base.join(&file);
            let exists = *missing.entry(full.clone()).or_insert_with(|| full.is_file());
            if !exists {
                set.skipped.push(format!("{}: {} does not exist", at(line), full.display()));
                continue;
            }
            let caps: Vec<String> = caps.into_iter().filter(|c| !c.trim().is_empty()).collect();
            if caps.is_empty() {
                set.skipped.push(format!("{}: empty caption for {file}", at(line)));
                continue;
            }
            let i = *index.entry(full.clone()).or_insert_with(|| {
                let i = set.items.len();
                set.items.push(Item { image: ItemImage::File(full.clone()), label: i });
                set.captions.push(Vec::new());
                i
            });
            set.captions[i].extend(caps);
        }
        Ok(set)
    }

    /// What a user names: a captions file; a folder holding `captions.tsv`, `captions.csv` or
    /// `captions.jsonl`; or a labelled set ([`LabelledSet::open`]: ImageFolder, IDX, `file,label`
    /// CSV) captioned through `templates`.
    pub fn open(path: &Path, split: super::Split, limit: Option<usize>, templates: &[String]) -> Result<Self> {
        let captions_file = if path.is_file() {
            let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
            let captioned_csv = ext == "csv"
                && std::fs::read_to_string(path)
                    .ok()
                    .and_then(|t| {
                        t.lines().find(|l| !l.trim().is_empty()).map(|l| header_columns(&split_csv_line(l)).is_some())
                    })
                    .unwrap_or(false);
            (matches!(ext.as_str(), "tsv" | "jsonl") || captioned_csv).then(|| path.to_path_buf())
        } else {
            ["captions.tsv", "captions.jsonl", "captions.csv"].iter().map(|n| path.join(n)).find(|p| p.is_file())
        };
        let mut set = match captions_file {
            Some(f) => Self::from_file(&f)?,
            None => Self::from_labelled(LabelledSet::open(path, split, None)?, templates)?,
        };
        if let Some(n) = limit {
            set.items.truncate(n);
            set.captions.truncate(n);
        }
        Ok(set)
    }

    /// Splits off every `k`-th image (those at indices `≡ k−1 mod k`) as a held-out set; a
    /// deterministic split that keeps classes and file order evenly spread.
    pub fn hold_out(self, every: usize) -> (Self, Self) {
        let (mut train, mut held) = (
            CaptionSet { classes: self.classes.clone(), skipped: self.skipped, ..Default::default() },
            CaptionSet { classes: self.classes, ..Default::default() },
        );
        for (i, (item, caps)) in self.items.into_iter().zip(self.captions).enumerate() {
            let target = if every > 0 && i % every == every - 1 { &mut held } else { &mut train };
            target.items.push(item);
            target.captions.push(caps);
        }
        (train, held)
    }
}

fn first_line(text: &str) -> usize {
    text.lines().position(|l| !l.trim().is_empty()).unwrap_or(0)
}

/// The (file, caption) column indices a header row names, if it is a header.
fn header_columns(fields: &[String]) -> Option<(usize, usize)> {
    let find = |names: &[&str]| fields.iter().position(|f| names.iter().any(|n| f.trim().eq_ignore_ascii_case(n)));
    Some((find(&FILE_COLUMNS)?, find(&CAPTION_COLUMNS)?))
}

fn parse_json_row(line: &str) -> std::result::Result<(String, Vec<String>), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let file = FILE_COLUMNS
        .iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_str))
        .ok_or_else(|| format!("no file (one of {})", FILE_COLUMNS.join(", ")))?;
    let mut caps: Vec<String> =
        CAPTION_COLUMNS.iter().filter_map(|k| obj.get(*k).and_then(Value::as_str)).map(str::to_string).collect();
    if let Some(list) = obj.get("captions").and_then(Value::as_array) {
        caps.extend(list.iter().filter_map(Value::as_str).map(str::to_string));
    }
    Ok((file.to_string(), caps))
}
