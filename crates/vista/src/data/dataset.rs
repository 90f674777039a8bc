//! Labelled image sets for evaluating frozen features (k-NN, linear probe), read as the DINO
//! evaluation scripts read them: a folder with one sub-folder per class (torchvision's
//! `ImageFolder`), or the IDX files MNIST and Fashion-MNIST ship as.
//!
//! Items are cheap handles: a folder item is a path decoded on [`Item::load`], an IDX item holds
//! its 8-bit greyscale pixels, replicated to RGB on load (as Pillow's `convert("RGB")` does).

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use ::image::{GrayImage, RgbImage};

use super::files::{collect_images, has_image_extension};
use crate::image::{load_rgb, DecodeOptions};
use crate::{Error, Result};

/// Fashion-MNIST's class names, in label order (from the dataset's README).
pub const FASHION_MNIST_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Where Debian's `dataset-fashion-mnist` package installs the four `.gz` IDX files.
pub const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// IDX magic of an unsigned-byte 3-D array (images: count × rows × columns).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic of an unsigned-byte 1-D array (labels).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// The pixels of one item.
#[derive(Debug, Clone)]
pub enum ItemImage {
    /// An image file, decoded by [`load_rgb`] when the item is loaded.
    File(PathBuf),
    /// 8-bit greyscale held in memory (an IDX image).
    Gray(GrayImage),
}

/// One labelled image.
#[derive(Debug, Clone)]
pub struct Item {
    /// Where the pixels come from.
    pub image: ItemImage,
    /// Index into [`LabelledSet::classes`].
    pub label: usize,
}

impl Item {
    /// The image as 8-bit RGB: a file is decoded with `options` (errors name it), greyscale is
    /// replicated to three channels.
    pub fn load(&self, options: &DecodeOptions) -> Result<RgbImage> {
        match &self.image {
            ItemImage::File(path) => load_rgb(path, options),
            ItemImage::Gray(gray) => Ok(::image::DynamicImage::ImageLuma8(gray.clone()).to_rgb8()),
        }
    }

    /// The file the item is read from, if any.
    pub fn path(&self) -> Option<&Path> {
        match &self.image {
            ItemImage::File(p) => Some(p),
            ItemImage::Gray(_) => None,
        }
    }
}

/// Which half of an IDX dataset: `train-*` or `t10k-*` files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `train-images-idx3-ubyte` / `train-labels-idx1-ubyte` (60,000 items in (Fashion-)MNIST).
    Train,
    /// `t10k-images-idx3-ubyte` / `t10k-labels-idx1-ubyte` (10,000 items).
    Test,
}

impl Split {
    /// The file-name prefix MNIST and Fashion-MNIST use for this split.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// A labelled image set: items in a fixed order and the class names their labels index.
#[derive(Debug, Clone, Default)]
pub struct LabelledSet {
    /// The items, in the reference's order.
    pub items: Vec<Item>,
    /// Class names; an item's label indexes this list.
    pub classes: Vec<String>,
}

impl LabelledSet {
    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True without items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Every item's label, in item order.
    pub fn labels(&self) -> Vec<usize> {
        self.items.iter().map(|i| i.label).collect()
    }

    /// A folder with one sub-folder per class, read as torchvision's `ImageFolder` reads it, so
    /// the label ids and the item order are the reference's: classes are the sub-folder names
    /// sorted (by code point, as Python's `sorted`), label = position in that list; each class's
    /// files are found by walking its folder recursively (following links), folders visited in
    /// sorted-path order and files sorted within each, keeping image extensions
    /// ([`has_image_extension`]). As in torchvision, hidden entries are not skipped, files
    /// directly in `root` are ignored, and a class folder without any image is an error (it names
    /// the folder: often a stray `.ipynb_checkpoints`).
    pub fn from_dir(root: &Path) -> Result<Self> {
        Self::read_image_folder(root, false).map(|(set, _)| set)
    }

    /// As [`from_dir`](Self::from_dir), but a class folder without any image is left out (the
    /// other classes keep their sorted order) and named in the second value instead of failing.
    /// Errors when no class has an image.
    pub fn from_dir_skipping_empty(root: &Path) -> Result<(Self, Vec<String>)> {
        Self::read_image_folder(root, true)
    }

    fn read_image_folder(root: &Path, skip_empty: bool) -> Result<(Self, Vec<String>)> {
        let entries = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
        let mut classes = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(root, e))?;
            let path = entry.path();
            if path.is_dir() {
                let name = entry.file_name().into_string().map_err(|n| {
                    Error::arg("dataset", format!("{}: class folder name {n:?} is not UTF-8", root.display()))
                })?;
                classes.push(name);
            }
        }
        classes.sort();
        if classes.is_empty() {
            return Err(Error::arg("dataset", format!("{}: no class sub-folders", root.display())));
        }
        let mut items = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let class_dir = root.join(class);
            let mut dirs = Vec::new();
            collect_dirs(&class_dir, &mut dirs, 0)?;
            // Python sorts os.walk's (root, dirs, files) tuples: by the folder path string.
            dirs.sort_by(|a, b| a.as_os_str().as_encoded_bytes().cmp(b.as_os_str().as_encoded_bytes()));
            let before = items.len();
            for dir in dirs {
                let mut files = Vec::new();
                for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
                    let entry = entry.map_err(|e| Error::io(&dir, e))?;
                    let path = entry.path();
                    if !path.is_dir() && has_image_extension(&path) {
                        files.push(path);
                    }
                }
                files.sort_by(|a, b| a.as_os_str().as_encoded_bytes().cmp(b.as_os_str().as_encoded_bytes()));
                items.extend(files.into_iter().map(|p| Item { image: ItemImage::File(p), label }));
            }
            if items.len() == before && !skip_empty {
                return Err(Error::arg(
                    "dataset",
                    format!("{}: class folder `{class}` holds no image file", class_dir.display()),
                ));
            }
        }
        if !skip_empty {
            return Ok((Self { items, classes }, Vec::new()));
        }
        let mut count = vec![0usize; classes.len()];
        for item in &items {
            count[item.label] += 1;
        }
        let kept: Vec<usize> = (0..classes.len()).filter(|&c| count[c] > 0).collect();
        if kept.is_empty() {
            return Err(Error::arg("dataset", format!("{}: no class folder holds an image file", root.display())));
        }
        let mut relabel = vec![usize::MAX; classes.len()];
        for (new, &old) in kept.iter().enumerate() {
            relabel[old] = new;
        }
        let empty = (0..classes.len()).filter(|&c| count[c] == 0).map(|c| classes[c].clone()).collect();
        for item in &mut items {
            item.label = relabel[item.label];
        }
        let classes = kept.iter().map(|&c| classes[c].clone()).collect();
        Ok((Self { items, classes }, empty))
    }

    /// As [`open`](Self::open), except that an ImageFolder's class folders without any image
    /// are left out and named in the second value ([`from_dir_skipping_empty`]
    /// (Self::from_dir_skipping_empty)) — for `vista fit`, which reports them and goes on.
    pub fn open_skipping_empty(path: &Path, split: Split, limit: Option<usize>) -> Result<(Self, Vec<String>)> {
        if path.is_dir() && !is_idx_dir(path, split) {
            let (mut set, empty) = Self::from_dir_skipping_empty(path)?;
            set.keep_evenly(limit);
            return Ok((set, empty));
        }
        Ok((Self::open(path, split, limit)?, Vec::new()))
    }

    /// Keeps at most `limit` items, evenly spaced through the items (so every class keeps its
    /// share).
    fn keep_evenly(&mut self, limit: Option<usize>) {
        if let Some(n) = limit {
            let len = self.items.len();
            if n < len {
                self.items = (0..n).map(|i| self.items[i * len / n].clone()).collect();
            }
        }
    }

    /// An IDX image file (magic 0x00000803: count × rows × columns unsigned bytes) and its IDX
    /// label file (magic 0x00000801), either possibly gzipped (detected from the content). Only
    /// the first `limit` items are read when given. Class names are Fashion-MNIST's when
    /// `images` has "fashion" in its path (any case), else "0", "1", …, at least ten of them.
    /// Errors name the file: a bad magic, a truncated file, image and label counts that differ,
    /// a Fashion-MNIST label over 9.
    pub fn from_idx(images: &Path, labels: &Path, limit: Option<usize>) -> Result<Self> {
        let (image_dims, mut image_reader) = open_idx(images, IDX_IMAGES_MAGIC)?;
        let (label_dims, mut label_reader) = open_idx(labels, IDX_LABELS_MAGIC)?;
        let (count, rows, cols) = (image_dims[0], image_dims[1], image_dims[2]);
        if label_dims[0] != count {
            return Err(Error::arg(
                "idx",
                format!(
                    "{} holds {count} images but {} holds {} labels",
                    images.display(),
                    labels.display(),
                    label_dims[0]
                ),
            ));
        }
        if rows == 0 || cols == 0 {
            return Err(Error::arg("idx", format!("{}: images of {rows}x{cols} pixels", images.display())));
        }
        let n = limit.map_or(count, |l| l.min(count));
        let label_bytes = read_n(&mut label_reader, n, labels)?;
        // The header's sizes are the file's word: their product can overflow, and nothing is
        // allocated for them before the data is there (read_n grows with what it reads).
        let size = rows.checked_mul(cols);
        let Some((size, total)) = size.and_then(|s| Some((s, n.checked_mul(s)?))) else {
            return Err(Error::arg(
                "idx",
                format!("{}: {n} images of {rows}x{cols} pixels overflow", images.display()),
            ));
        };
        let pixels = read_n(&mut image_reader, total, images)?;
        let fashion = images.to_string_lossy().to_lowercase().contains("fashion");
        let max_label = label_bytes.iter().copied().max().unwrap_or(0) as usize;
        let classes: Vec<String> = if fashion {
            if max_label >= FASHION_MNIST_CLASSES.len() {
                return Err(Error::arg(
                    "idx",
                    format!("{}: label {max_label} in a Fashion-MNIST file (labels are 0-9)", labels.display()),
                ));
            }
            FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect()
        } else {
            (0..(max_label + 1).max(10)).map(|i| i.to_string()).collect()
        };
        let items = pixels
            .chunks_exact(size)
            .zip(&label_bytes)
            .map(|(px, &label)| {
                let gray = GrayImage::from_raw(cols as u32, rows as u32, px.to_vec()).expect("rows × cols bytes");
                Item { image: ItemImage::Gray(gray), label: label as usize }
            })
            .collect();
        Ok(Self { items, classes })
    }

    /// The `split` pair of a folder holding MNIST-style files: `train-images-idx3-ubyte` +
    /// `train-labels-idx1-ubyte` or `t10k-images-idx3-ubyte` + `t10k-labels-idx1-ubyte`, each
    /// possibly with `.gz`, and with `.` for the last `-` as some mirrors name them
    /// (`train-images.idx3-ubyte`). Fashion-MNIST names apply when `dir` contains "fashion"
    /// (Debian's package: [`DEBIAN_FASHION_MNIST_DIR`]).
    pub fn from_idx_dir(dir: &Path, split: Split, limit: Option<usize>) -> Result<Self> {
        let images = find_idx(dir, split, "images-idx3-ubyte")?;
        let labels = find_idx(dir, split, "labels-idx1-ubyte")?;
        Self::from_idx(&images, &labels, limit)
    }

    /// A labelled set from what a user names (the `--train` / `--test` of `vista knn`):
    ///
    /// * an IDX images file (`*-images-idx3-ubyte[.gz]`), its labels file found by name;
    /// * a folder of MNIST-style IDX files ([`is_idx_dir`]): its `split` pair;
    /// * a `.csv` file of `file,label` rows ([`from_csv`](Self::from_csv));
    /// * otherwise an `ImageFolder` ([`from_dir`](Self::from_dir)).
    ///
    /// `limit` keeps at most that many items: the first of an IDX file, evenly spaced through a
    /// folder's sorted items (so every class keeps its share).
    pub fn open(path: &Path, split: Split, limit: Option<usize>) -> Result<Self> {
        if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
            let mut set = Self::from_csv(path)?;
            set.keep_evenly(limit);
            return Ok(set);
        }
        if path.is_file() {
            let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let labels_name = name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1");
            if labels_name == name {
                return Err(Error::arg(
                    "dataset",
                    format!(
                        "{}: an IDX images file is named *-images-idx3-ubyte[.gz]; give a folder otherwise",
                        path.display()
                    ),
                ));
            }
            return Self::from_idx(path, &path.with_file_name(labels_name), limit);
        }
        if is_idx_dir(path, split) {
            return Self::from_idx_dir(path, split, limit);
        }
        let mut set = Self::from_dir(path)?;
        set.keep_evenly(limit);
        Ok(set)
    }

    /// A CSV of `file,label` rows (an optional `file,label` header; a field may be quoted, with
    /// `""` for a quote): files relative to the CSV's folder, classes the sorted distinct labels.
    /// A row without two fields is an error naming its line.
    pub fn from_csv(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut rows = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let fields = split_csv_line(line);
            if fields.len() != 2 {
                return Err(Error::arg(
                    "dataset",
                    format!("{}:{}: expected `file,label`, found {} field(s)", path.display(), n + 1, fields.len()),
                ));
            }
            if n == 0 && fields[0].eq_ignore_ascii_case("file") && fields[1].eq_ignore_ascii_case("label") {
                continue;
            }
            rows.push((base.join(fields[0].trim()), fields[1].trim().to_string()));
        }
        let mut classes: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
        classes.sort();
        classes.dedup();
        let items = rows
            .into_iter()
            .map(|(file, label)| Item {
                image: ItemImage::File(file),
                label: classes.binary_search(&label).expect("a listed class"),
            })
            .collect();
        Ok(Self { items, classes })
    }

    /// The test set that goes with a `train` path when none is named: the `t10k-*` pair of an
    /// IDX folder holding both splits (`None` for anything else).
    pub fn default_test_path(train: &Path) -> Option<PathBuf> {
        (train.is_dir() && is_idx_dir(train, Split::Test)).then(|| train.to_path_buf())
    }
}

/// The fields of one CSV line (RFC 4180 quoting within the line).
pub(crate) fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().expect("one field").push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

/// True when `dir` holds MNIST-style IDX image files of `split` (`train-*` / `t10k-*`).
pub fn is_idx_dir(dir: &Path, split: Split) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.filter_map(|e| e.ok()).any(|e| {
        let n = e.file_name().to_string_lossy().to_string();
        n.starts_with(split.prefix()) && n.contains("idx3")
    })
}

/// Unlabelled training images from what a user names (`vista train --data`): the `train-*`
/// images of an IDX folder or an IDX images file, or every image file under a folder (walked
/// recursively, see [`collect_images`]); at most the first `limit`. No images is an error.
pub fn unlabelled_items(path: &Path, limit: Option<usize>) -> Result<Vec<Item>> {
    let idx = path.is_file() && !has_image_extension(path) || path.is_dir() && is_idx_dir(path, Split::Train);
    let mut items = if idx {
        LabelledSet::open(path, Split::Train, limit)?.items
    } else {
        collect_images(&[path.to_path_buf()])?
            .into_iter()
            .map(|p| Item { image: ItemImage::File(p), label: 0 })
            .collect()
    };
    if let Some(n) = limit {
        items.truncate(n);
    }
    if items.is_empty() {
        return Err(Error::arg("data", format!("{}: no images to train on", path.display())));
    }
    Ok(items)
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
    // Following links (as `os.walk(followlinks=True)`) could loop forever on a link to a parent.
    if depth > 64 {
        return Err(Error::arg("dataset", format!("{}: folders nested over 64 deep (a link loop?)", dir.display())));
    }
    out.push(dir.to_path_buf());
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            collect_dirs(&path, out, depth + 1)?;
        }
    }
    Ok(())
}

fn find_idx(dir: &Path, split: Split, stem: &str) -> Result<PathBuf> {
    let dotted = stem.replacen('-', ".", 1);
    let candidates: Vec<PathBuf> = [stem, dotted.as_str()]
        .iter()
        .flat_map(|s| {
            let base = format!("{}-{s}", split.prefix());
            [dir.join(&base), dir.join(format!("{base}.gz"))]
        })
        .collect();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        Error::arg(
            "idx",
            format!("{}: no {}-{stem}[.gz] file (looked for {})", dir.display(), split.prefix(), names(&candidates)),
        )
    })
}

fn names(paths: &[PathBuf]) -> String {
    paths.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect::<Vec<_>>().join(", ")
}

/// Opens an IDX file (gzipped or not), checks its magic and returns its dimensions and a reader
/// positioned at the data.
fn open_idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Box<dyn Read>)> {
    let mut file = BufReader::new(std::fs::File::open(path).map_err(|e| Error::io(path, e))?);
    let mut head = [0u8; 2];
    let got = read_up_to(&mut file, &mut head).map_err(|e| Error::io(path, e))?;
    let rest: Box<dyn Read> = Box::new(file);
    let prefix = std::io::Cursor::new(head[..got].to_vec());
    let mut reader: Box<dyn Read> = if got == 2 && head == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(prefix.chain(rest)))
    } else {
        Box::new(prefix.chain(rest))
    };
    let mut m = [0u8; 4];
    read_exact(&mut reader, &mut m, path, 4)?;
    let found = u32::from_be_bytes(m);
    if found != magic {
        let what =
            if magic == IDX_IMAGES_MAGIC { "images (3-D unsigned bytes)" } else { "labels (1-D unsigned bytes)" };
        return Err(Error::arg(
            "idx",
            format!("{}: bad magic 0x{found:08x}, expected 0x{magic:08x} for IDX {what}", path.display()),
        ));
    }
    let ndims = (magic & 0xff) as usize;
    let mut dims = Vec::with_capacity(ndims);
    for _ in 0..ndims {
        let mut d = [0u8; 4];
        read_exact(&mut reader, &mut d, path, 4)?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    Ok((dims, reader))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Exactly `n` bytes from `r`, the buffer growing with the data read (a header claiming more
/// than the file holds costs nothing before the truncation error).
fn read_n(r: &mut impl Read, n: usize, path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(n as u64).read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
    if buf.len() < n {
        return Err(Error::arg("idx", format!("{}: truncated: {} of {n} expected bytes", path.display(), buf.len())));
    }
    Ok(buf)
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], path: &Path, wanted: usize) -> Result<()> {
    let got = read_up_to(r, buf).map_err(|e| Error::io(path, e))?;
    if got < buf.len() {
        return Err(Error::arg("idx", format!("{}: truncated: {got} of {wanted} expected bytes", path.display())));
    }
    Ok(())
}
