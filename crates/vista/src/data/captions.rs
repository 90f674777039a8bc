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
        let per_class: Vec<Vec<String>> =
            set.classes.iter().map(|c| templates.iter().map(|t| fill_template(t, c)).collect()).collect();
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
    /// CSV) captioned through `templates`. `limit` keeps at most that many images: a captions
    /// file's first, a labelled set's as [`LabelledSet::open`] keeps them.
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
        match captions_file {
            Some(f) => {
                let mut set = Self::from_file(&f)?;
                if let Some(n) = limit {
                    set.items.truncate(n);
                    set.captions.truncate(n);
                }
                Ok(set)
            }
            // A labelled set keeps `limit` items as it does everywhere (an IDX file's first,
            // a folder's evenly spread, so every class keeps its share).
            None => Self::from_labelled(LabelledSet::open(path, split, limit)?, templates),
        }
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

/// A caption from a template: `{}` replaced by the class name, or the name appended when the
/// template has no `{}`.
pub fn fill_template(template: &str, class: &str) -> String {
    if template.contains("{}") {
        template.replace("{}", class)
    } else {
        format!("{template} {class}")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn every_format_reads_pairs_and_names_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in ["a.png", "b.png", "c.png"] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        // TSV without a header: file, caption; the same file twice is one image, two captions.
        let set =
            CaptionSet::from_file(&write(d, "p.tsv", "a.png\ta cat\nb.png\ta dog\na.png\ta small cat\n")).unwrap();
        assert_eq!((set.len(), set.pairs()), (2, 3));
        assert_eq!(set.captions[0], ["a cat", "a small cat"]);
        // CSV with open_clip's header in another column order, a quoted caption with a comma.
        let set = CaptionSet::from_file(&write(d, "p.csv", "title,filepath\n\"red, round\",c.png\n")).unwrap();
        assert_eq!(set.captions, [vec!["red, round".to_string()]]);
        // JSON lines: one caption, a list, a missing file, no file key, not JSON, an empty caption.
        let jsonl = "{\"file\": \"a.png\", \"caption\": \"one\"}\n{\"image\": \"b.png\", \"captions\": [\"x\", \"y\"]}\n\
                     {\"file\": \"gone.png\", \"caption\": \"z\"}\n{\"caption\": \"no file\"}\nnot json\n{\"file\": \"c.png\", \"text\": \" \"}\n";
        let set = CaptionSet::from_file(&write(d, "p.jsonl", jsonl)).unwrap();
        assert_eq!((set.len(), set.pairs()), (2, 3));
        assert_eq!(set.skipped.len(), 4, "{:?}", set.skipped);
        for (line, why) in [(3, "does not exist"), (4, "no file"), (5, "not JSON"), (6, "empty caption")] {
            assert!(
                set.skipped.iter().any(|s| s.contains(&format!("p.jsonl:{line}: ")) && s.contains(why)),
                "{:?}",
                set.skipped
            );
        }
        // A folder with captions.tsv is that file; a CSV naming a caption column is captions.
        std::fs::copy(d.join("p.tsv"), d.join("captions.tsv")).unwrap();
        assert_eq!(CaptionSet::open(d, crate::data::Split::Train, Some(1), &[]).unwrap().len(), 1);
        assert_eq!(CaptionSet::open(&d.join("p.csv"), crate::data::Split::Train, None, &[]).unwrap().pairs(), 1);
        // Every 2nd image held out.
        let (train, held) = CaptionSet::from_file(&d.join("p.tsv")).unwrap().hold_out(2);
        assert_eq!((train.len(), held.len()), (1, 1));
    }

    #[test]
    fn labelled_sets_are_captioned_through_templates() {
        let set = LabelledSet {
            items: vec![Item { image: ItemImage::File("x.png".into()), label: 1 }],
            classes: vec!["cat".into(), "ankle boot".into()],
        };
        let t = ["a photo of a {}.".to_string(), "art".to_string()];
        let c = CaptionSet::from_labelled(set, &t).unwrap();
        assert_eq!(c.captions[0], ["a photo of a ankle boot.", "art ankle boot"]);
        assert_eq!(c.classes.as_deref(), Some(&["cat".to_string(), "ankle boot".to_string()][..]));
    }
}
