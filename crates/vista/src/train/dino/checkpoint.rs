//! Checkpoints of a DINO run, and the trained backbone for everyone else.
//!
//! A checkpoint is one safetensors file (`checkpoint.safetensors`, written atomically) holding
//! every tensor of the run (`student.backbone.*`, `student.head.*`, `teacher.backbone.*`,
//! `teacher.head.*`, `dino_loss.center`, `optimizer.<param>.exp_avg|exp_avg_sq` — or
//! `optimizer.<param>.momentum_buffer` with `--optimizer sgd|lars`) and, in its metadata, the JSON
//! state (configuration, epochs done, iteration, AdamW step counts); the same
//! JSON is written beside it as `checkpoint.json` for people to read. All randomness is a
//! function of the seed, the epoch and the iteration (see [`super::data`]), so the state needs no
//! RNG bytes: resuming from the checkpoint of iteration `i` reproduces the uninterrupted run.
//!
//! The backbone export (`backbone.safetensors`) is the teacher in DINO's release naming, loadable
//! by [`crate::dino`]'s loader as it is.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::DinoTrainConfig;
use super::trainer::{DinoTrainer, Optimizer};
use crate::weights::formats::{read_safetensors, write_atomic, write_safetensors};
use crate::{Error, Result};

/// The `format` metadata of a training checkpoint.
pub const CHECKPOINT_FORMAT: &str = "vista-dino-train/1";
/// The name of SGD's and LARS's state tensor (torch's `momentum_buffer`).
const MOMENTUM_BUFFER: &str = "momentum_buffer";
/// The `format` metadata of an exported backbone.
pub const BACKBONE_FORMAT: &str = "vista-dino-backbone/1";

/// The JSON state stored with the tensors of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CheckpointState {
    format: String,
    config: DinoTrainConfig,
    niter_per_ep: usize,
    /// Epochs completed (the next epoch to run).
    epoch: usize,
    iteration: usize,
    /// AdamW's step count per parameter.
    optimizer_steps: std::collections::BTreeMap<String, u64>,
    vista_version: String,
}

fn prefixed(prefix: &str, sd: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    sd.into_iter().map(|(n, t)| (format!("{prefix}{n}"), t)).collect()
}

fn take_prefixed<'a>(tensors: &'a HashMap<String, Tensor>, prefix: &str) -> Vec<(&'a str, &'a Tensor)> {
    tensors.iter().filter_map(|(n, t)| n.strip_prefix(prefix).map(|rest| (rest, t))).collect()
}

impl DinoTrainer {
    /// Every tensor of the run, checkpoint names.
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut v = prefixed("student.backbone.", self.student.state_dict()?);
        v.extend(prefixed("student.head.", self.student_head.state_dict()?));
        v.extend(prefixed("teacher.backbone.", self.teacher.state_dict()?));
        v.extend(prefixed("teacher.head.", self.teacher_head.state_dict()?));
        v.push(("dino_loss.center".into(), self.loss.center().clone()));
        match &self.opt {
            Optimizer::AdamW(opt) => {
                for (name, _, m, v2) in opt.state_entries() {
                    v.push((format!("optimizer.{name}.exp_avg"), m.clone()));
                    v.push((format!("optimizer.{name}.exp_avg_sq"), v2.clone()));
                }
            }
            Optimizer::Momentum(opt) => {
                for (name, mu) in opt.buffers() {
                    v.push((format!("optimizer.{name}.{MOMENTUM_BUFFER}"), mu.clone()));
                }
            }
        }
        Ok(v)
    }

    fn state_json(&self) -> Result<String> {
        let state = CheckpointState {
            format: CHECKPOINT_FORMAT.into(),
            config: self.config.clone(),
            niter_per_ep: self.niter_per_ep,
            epoch: self.epoch,
            iteration: self.iteration,
            optimizer_steps: match &self.opt {
                Optimizer::AdamW(opt) => {
                    opt.state_entries().into_iter().map(|(n, s, _, _)| (n.to_string(), s)).collect()
                }
                Optimizer::Momentum(_) => Default::default(),
            },
            vista_version: env!("CARGO_PKG_VERSION").into(),
        };
        serde_json::to_string_pretty(&state).map_err(|e| Error::arg("checkpoint", e.to_string()))
    }

    /// Writes the checkpoint (atomically) and its readable JSON beside it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.state_json()?;
        let meta =
            HashMap::from([("format".to_string(), CHECKPOINT_FORMAT.to_string()), ("state".to_string(), json.clone())]);
        let tensors = self.tensors()?;
        write_safetensors(path, tensors.iter().map(|(n, t)| (n.as_str(), t)), &meta)?;
        let json_path = path.with_extension("json");
        write_atomic(&json_path, json.as_bytes())
    }

    /// Resumes a run from [`save`](Self::save)'s file. Every tensor is checked by name and
    /// shape; errors name the file and the tensor. The run goes on on `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bad = |m: String| Error::Checkpoint { path: path.to_path_buf(), message: m };
        let (tensors, meta) = read_safetensors(path, &Device::Cpu)?;
        if meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
            return Err(bad(format!("not a vista DINO training checkpoint (format {:?})", meta.get("format"))));
        }
        let state: CheckpointState = serde_json::from_str(meta.get("state").map(String::as_str).unwrap_or(""))
            .map_err(|e| bad(format!("bad state: {e}")))?;
        let mut t = Self::new(state.config.clone(), state.niter_per_ep, device).map_err(|e| bad(e.to_string()))?;
        let check = |what: &str, r: Result<()>| r.map_err(|e| bad(format!("{what}: {e}")));
        check("student backbone", t.student.load_state_dict(take_prefixed(&tensors, "student.backbone.")))?;
        check("student head", t.student_head.load_state_dict(take_prefixed(&tensors, "student.head.")))?;
        check("teacher backbone", t.teacher.load_state_dict(take_prefixed(&tensors, "teacher.backbone.")))?;
        check("teacher head", t.teacher_head.load_state_dict(take_prefixed(&tensors, "teacher.head.")))?;
        let center = tensors.get("dino_loss.center").ok_or_else(|| bad("missing tensor `dino_loss.center`".into()))?;
        check("dino_loss.center", t.loss.set_center(center))?;
        match &mut t.opt {
            Optimizer::AdamW(opt) => {
                for (name, step) in &state.optimizer_steps {
                    let get = |k: &str| {
                        let key = format!("optimizer.{name}.{k}");
                        tensors.get(&key).cloned().ok_or_else(|| bad(format!("missing tensor `{key}`")))
                    };
                    check("optimizer", opt.set_state(name, *step, get("exp_avg")?, get("exp_avg_sq")?))?;
                }
            }
            Optimizer::Momentum(opt) => {
                let suffix = format!(".{MOMENTUM_BUFFER}");
                for (key, mu) in &tensors {
                    if let Some(name) = key.strip_prefix("optimizer.").and_then(|k| k.strip_suffix(&suffix)) {
                        check("optimizer", opt.set_buffer(name, mu.clone()))?;
                    }
                }
            }
        }
        t.epoch = state.epoch;
        t.iteration = state.iteration;
        Ok(t)
    }

    /// Writes the teacher backbone in DINO's release naming (`*_pretrain.pth`'s keys) as
    /// safetensors, with `num_heads` and the architecture in the metadata, so
    /// `vista features --model FILE` and `vista knn` load it as it is.
    pub fn export_backbone(&self, path: &Path) -> Result<()> {
        let cfg = &self.config;
        let meta = HashMap::from([
            ("format".to_string(), BACKBONE_FORMAT.to_string()),
            ("num_heads".to_string(), cfg.num_heads.to_string()),
            ("arch".to_string(), cfg.arch.clone()),
            ("epochs_trained".to_string(), self.epoch.to_string()),
            ("config".to_string(), serde_json::to_string(cfg).unwrap_or_default()),
        ]);
        let tensors = self.teacher_backbone()?;
        write_safetensors(path, tensors.iter().map(|(n, t)| (n.as_str(), t)), &meta)
    }
}

/// Says which fields of two configurations differ, for the error of a refused resume.
pub(super) fn config_diff(a: &DinoTrainConfig, b: &DinoTrainConfig) -> String {
    let (va, vb) = (serde_json::to_value(a).unwrap_or_default(), serde_json::to_value(b).unwrap_or_default());
    let mut out = Vec::new();
    if let (Some(ma), Some(mb)) = (va.as_object(), vb.as_object()) {
        for (k, x) in ma {
            if mb.get(k) != Some(x) {
                out.push(format!("{k}: {x} there, {} asked", mb.get(k).cloned().unwrap_or_default()));
            }
        }
    }
    out.join(", ")
}
