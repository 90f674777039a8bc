//! Canonically named tensors and the shape-checked path builder models load from.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// The tensors of one checkpoint under the model's canonical names.
///
/// Family tables ([`super::clip`], through [`Family`]) fill it with [`TensorStore::insert`], remembering each
/// tensor's name in the file so that errors speak the user's checkpoint's language.
pub struct TensorStore {
    path: PathBuf,
    /// Tensors not yet taken by the model: [`TensorStore::get`] moves each out, so a tensor the
    /// model copies (e.g. transposes) is freed as soon as the copy exists and peak memory stays
    /// near one model's size.
    tensors: Mutex<HashMap<String, Tensor>>,
    /// Every tensor's shape, taken or not.
    shapes: HashMap<String, Vec<usize>>,
    /// canonical name -> the name (or names, for fused tensors) in the file.
    origin: HashMap<String, String>,
    /// Canonical names stored transposed relative to the file (errors show the file's layout).
    transposed: std::collections::HashSet<String>,
    /// Names in the file that carry no weights (non-persistent buffers saved by old versions).
    ignored: Vec<String>,
    taken: Mutex<BTreeSet<String>>,
    /// How the file's family would spell a canonical name, for tensors that are missing.
    file_namer: Option<fn(&str) -> String>,
    device: Device,
    dtype: DType,
    /// While a checkpoint is read, freed blocks are not cached ([`crate::memory::Loading`]);
    /// declared last, so the tensors not taken are dropped first.
    _loading: crate::memory::Loading,
}

/// One model's checkpoint families (two: the reference's, whose names are the canonical ones,
/// and another): how they are told apart and how the other is mapped onto the canonical names. [`TensorStore::from_family`] does the rest, the same for
/// every model.
pub trait Family: Copy + PartialEq + Sized {
    /// What the error says when no family matches the names (`not a ... checkpoint: ...`).
    const NOT_FOUND: &'static str;

    /// The family whose names are the canonical ones: its tensors are taken as they are named.
    const CANONICAL: Self;

    /// Guesses the family from the tensor names (wrapper prefixes already stripped).
    fn detect<'a>(names: impl IntoIterator<Item = &'a String>) -> Option<Self>;

    /// A name in the file without the wrapper prefixes exports put around the model (by default
    /// DDP's `module.`).
    fn strip(name: String) -> String {
        name.strip_prefix("module.").map(str::to_string).unwrap_or(name)
    }

    /// Entries that hold no weights, skipped on purpose.
    fn is_ignored(name: &str) -> bool;

    /// How the other family spells a canonical name (for missing-tensor errors).
    fn file_name(canonical: &str) -> String;

    /// Adds the other family's tensors under canonical names.
    fn map(tensors: HashMap<String, Tensor>, store: &mut TensorStore) -> Result<()>;
}

/// `name` with every `(from, to)` pair of `renames` replaced, in order (substring replacement):
/// a family's rename table applied to a name in its file.
pub(crate) fn rename_all(name: &str, renames: &[(&str, &str)]) -> String {
    renames.iter().fold(name.to_string(), |out, (from, to)| out.replace(from, to))
}

/// The inverse of [`rename_all`]: the pairs undone in reverse order (how the file spells a
/// canonical name).
pub(crate) fn unrename_all(name: &str, renames: &[(&str, &str)]) -> String {
    renames.iter().rev().fold(name.to_string(), |out, (from, to)| out.replace(to, from))
}

/// A model built from a checkpoint, with what the load found.
pub struct Loaded<M, F> {
    /// The model.
    pub model: M,
    /// The naming of the checkpoint.
    pub family: F,
    /// What the load did.
    pub report: LoadReport,
}

impl<M, F> Loaded<M, F> {
    /// Builds the model from `store` (a checkpoint of `family`) with `build`, and reports what it
    /// left unused.
    pub fn build(store: &TensorStore, family: F, build: impl FnOnce(&TensorStore) -> Result<M>) -> Result<Self> {
        let model = build(store)?;
        Ok(Self { model, family, report: store.report() })
    }
}

/// What a load did: every canonical tensor the model asked for was found with the right shape
/// (otherwise loading failed); these are the rest.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The checkpoint file.
    pub checkpoint: PathBuf,
    /// Number of tensors the model took.
    pub loaded: usize,
    /// Tensors present in the checkpoint that the model did not use, in the file's naming.
    pub unused: Vec<String>,
    /// Known buffers skipped on purpose (e.g. `position_ids`).
    pub ignored: Vec<String>,
}

impl TensorStore {
    /// An empty store for the checkpoint at `path`, handing out tensors as `dtype` on `device`.
    pub fn new(path: impl Into<PathBuf>, device: &Device, dtype: DType) -> Self {
        Self {
            path: path.into(),
            tensors: Mutex::new(HashMap::new()),
            shapes: HashMap::new(),
            origin: HashMap::new(),
            transposed: Default::default(),
            ignored: Vec::new(),
            taken: Mutex::new(BTreeSet::new()),
            file_namer: None,
            device: device.clone(),
            dtype,
            _loading: crate::memory::Loading::start(),
        }
    }

    /// Puts a checkpoint's tensors under canonical names: the family `F` is detected from the
    /// names (after [`Family::strip`]), an error when none matches.
    pub fn from_family<F: Family>(
        path: &Path,
        tensors: HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
    ) -> Result<(Self, F)> {
        let tensors: HashMap<String, Tensor> = tensors.into_iter().map(|(k, v)| (F::strip(k), v)).collect();
        let family = F::detect(tensors.keys())
            .ok_or_else(|| Error::Checkpoint { path: path.to_path_buf(), message: F::NOT_FOUND.into() })?;
        let mut store = Self::new(path, device, dtype);
        if family == F::CANONICAL {
            store.insert_as_named(tensors, F::is_ignored);
        } else {
            store.set_file_namer(F::file_name);
            F::map(tensors, &mut store)?;
        }
        Ok((store, family))
    }

    /// The checkpoint file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device tensors are moved to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype tensors are converted to.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Adds a tensor under its canonical name; `original` is how the file spells it.
    pub fn insert(&mut self, canonical: impl Into<String>, original: impl Into<String>, t: Tensor) {
        let canonical = canonical.into();
        let original = original.into();
        if original != canonical {
            self.origin.insert(canonical.clone(), original);
        }
        self.shapes.insert(canonical.clone(), t.dims().to_vec());
        self.tensors.get_mut().expect("load bookkeeping lock poisoned").insert(canonical, t);
    }

    /// Adds a 2-D tensor the family stores transposed (an `nn.Linear` weight used as `x @ P`):
    /// `t` is already in the canonical layout.
    pub fn insert_transposed(&mut self, canonical: impl Into<String>, original: impl Into<String>, t: Tensor) {
        let canonical = canonical.into();
        self.transposed.insert(canonical.clone());
        self.insert(canonical, original, t);
    }

    /// Sets how a canonical name is spelled in this checkpoint's family (used to name missing
    /// tensors the way the user's file would).
    pub fn set_file_namer(&mut self, namer: fn(&str) -> String) {
        self.file_namer = Some(namer);
    }

    /// Adds every tensor under its own name (a family whose naming is the canonical one),
    /// recording those `ignored` says hold no weights as skipped on purpose.
    pub fn insert_as_named(&mut self, tensors: HashMap<String, Tensor>, ignored: impl Fn(&str) -> bool) {
        self.insert_renamed(tensors, ignored, str::to_string);
    }

    /// Adds every tensor under the canonical name `rename` gives its name in the file, recording
    /// those `ignored` says hold no weights as skipped on purpose.
    pub fn insert_renamed(
        &mut self,
        tensors: HashMap<String, Tensor>,
        ignored: impl Fn(&str) -> bool,
        rename: impl Fn(&str) -> String,
    ) {
        for (name, t) in tensors {
            if ignored(&name) {
                self.ignore(name);
            } else {
                self.insert(rename(&name), name, t);
            }
        }
    }

    /// Takes the file's tensors `names` out of `tensors` (a q, k and v projection, in that order)
    /// and adds them concatenated along the first axis under `canonical`. Each must be present
    /// (`hint` says why in the error) and all of one shape.
    pub fn insert_fused(
        &mut self,
        canonical: impl Into<String>,
        names: &[String],
        tensors: &mut HashMap<String, Tensor>,
        hint: &str,
    ) -> Result<()> {
        let mut parts = Vec::with_capacity(names.len());
        for name in names {
            parts.push(tensors.remove(name).ok_or_else(|| Error::MissingTensor {
                path: self.path.clone(),
                name: name.clone(),
                hint: hint.to_string(),
            })?);
        }
        if parts.iter().any(|t| t.dims() != parts[0].dims()) {
            let shapes: Vec<String> = names.iter().zip(&parts).map(|(n, t)| format!("`{n}` {:?}", t.dims())).collect();
            return Err(Error::Checkpoint {
                path: self.path.clone(),
                message: format!("q, k and v projections must have one shape, found {}", shapes.join(", ")),
            });
        }
        self.insert(canonical, names.join(" + "), Tensor::cat(&parts, 0)?);
        Ok(())
    }

    /// Records a file entry that is skipped on purpose.
    pub fn ignore(&mut self, original: impl Into<String>) {
        self.ignored.push(original.into());
    }

    /// Whether a tensor of that canonical name is present (taken or not).
    pub fn contains(&self, canonical: &str) -> bool {
        self.shapes.contains_key(canonical)
    }

    /// The stored shape of a tensor, for configs inferred from a checkpoint.
    pub fn shape_of(&self, canonical: &str) -> Option<Vec<usize>> {
        self.shapes.get(canonical).cloned()
    }

    /// Every canonical name, taken or not, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.shapes.keys().map(|s| s.as_str())
    }

    fn file_name_of(&self, canonical: &str) -> String {
        match (self.origin.get(canonical), self.file_namer) {
            (Some(o), _) => o.clone(),
            (None, Some(namer)) => namer(canonical),
            (None, None) => canonical.to_string(),
        }
    }

    /// Takes a tensor, checking its shape and converting it to the store's dtype and device.
    pub fn get(&self, canonical: &str, shape: &[usize]) -> Result<Tensor> {
        let dims = self.shapes.get(canonical).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            name: self.file_name_of(canonical),
            hint: self.missing_hint(canonical),
        })?;
        if dims.as_slice() != shape {
            let (mut expected, mut found) = (shape.to_vec(), dims.clone());
            if self.transposed.contains(canonical) {
                expected.reverse();
                found.reverse();
            }
            return Err(Error::ShapeMismatch {
                path: self.path.clone(),
                name: self.file_name_of(canonical),
                expected,
                found,
            });
        }
        let t = self.tensors.lock().expect("load bookkeeping lock poisoned").remove(canonical).ok_or_else(|| {
            Error::Checkpoint {
                path: self.path.clone(),
                message: format!("tensor `{canonical}` was requested twice (a bug in vista)"),
            }
        })?;
        self.taken.lock().expect("load bookkeeping lock poisoned").insert(canonical.to_string());
        Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    fn missing_hint(&self, canonical: &str) -> String {
        // Point at a near miss: the same name under another prefix usually means the wrong family
        // or a wrapper prefix such as `module.`.
        let leaf = canonical.rsplit('.').next().unwrap_or(canonical);
        let similar: Vec<&str> = self
            .shapes
            .keys()
            .filter(|k| k.ends_with(canonical) || (k.ends_with(leaf) && k.len() > canonical.len()))
            .map(|s| s.as_str())
            .take(3)
            .collect();
        if self.shapes.is_empty() {
            " (the checkpoint holds no tensors)".into()
        } else if similar.is_empty() {
            format!(" (the checkpoint holds {} tensors, none matching)", self.shapes.len())
        } else {
            format!(" (similar names present: {})", similar.join(", "))
        }
    }

    /// A path builder at the root of the canonical names.
    pub fn root(&self) -> Vb<'_> {
        Vb { store: self, prefix: String::new() }
    }

    /// Tensors the model did not take, in the file's naming.
    pub fn report(&self) -> LoadReport {
        let taken = self.taken.lock().expect("load bookkeeping lock poisoned");
        let mut unused: Vec<String> = self
            .shapes
            .keys()
            .filter(|k| !taken.contains(*k))
            .map(|k| self.origin.get(k).cloned().unwrap_or_else(|| k.clone()))
            .collect();
        unused.sort();
        LoadReport { checkpoint: self.path.clone(), loaded: taken.len(), unused, ignored: self.ignored.clone() }
    }
}

/// A position in the module tree, like `vb.pp("blocks").pp(3)`: it reads as the PyTorch module
/// path and prefixes every tensor name it hands out.
#[derive(Clone)]
pub struct Vb<'a> {
    store: &'a TensorStore,
    prefix: String,
}

impl<'a> Vb<'a> {
    /// One level down the module tree.
    pub fn pp(&self, name: impl Display) -> Vb<'a> {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Vb { store: self.store, prefix }
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The tensor `name` below this position, which must have exactly `shape`.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        self.store.get(&self.full(name), shape)
    }

    /// Whether the tensor `name` below this position is present.
    pub fn contains(&self, name: &str) -> bool {
        self.store.contains(&self.full(name))
    }

    /// The shape of the tensor `name` below this position, for architectures read off the
    /// checkpoint (`None` when absent).
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.store.shape_of(&self.full(name))
    }

    /// The device tensors are moved to.
    pub fn device(&self) -> &Device {
        self.store.device()
    }

    /// The dtype tensors are converted to.
    pub fn dtype(&self) -> DType {
        self.store.dtype()
    }
}
