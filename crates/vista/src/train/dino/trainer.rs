//! `main_dino.py` end to end: the student (backbone + head, stochastic depth) and its EMA
//! teacher, the multi-crop data, the schedules, the loss with its centre, AdamW with DINO's
//! parameter groups, gradient clipping, the last-layer freeze; per-step metrics with collapse
//! diagnostics, checkpoints that resume bit for bit, optional k-NN evaluation, and the trained
//! backbone exported for [`crate::dino`]'s loader.
//!
//! Checkpoints are one safetensors file (`checkpoint.safetensors`, written atomically) holding
//! every tensor of the run (`student.backbone.*`, `student.head.*`, `teacher.backbone.*`,
//! `teacher.head.*`, `dino_loss.center`, `optimizer.<param>.exp_avg|exp_avg_sq`) and, in its
//! metadata, the JSON state (configuration, epochs done, iteration, AdamW step counts); the same
//! JSON is written beside it as `checkpoint.json` for people to read. All randomness is a
//! function of the seed, the epoch and the iteration (see [`super::data`]), so the state needs no
//! RNG bytes: resuming from the checkpoint of epoch `e` reproduces the uninterrupted run.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::data::{EpochBatches, LoaderOptions};
use super::{
    cancel_gradients_last_layer, clip_gradients, ema_update, get_params_groups, multi_crop_forward, AdamW, AdamWConfig,
    DinoHead, DinoHeadConfig, DinoLoss, DinoLossConfig, Grads, Param, TrainVit,
};
use crate::apps::dataset::{Item, LabelledSet};
use crate::apps::dino_pipeline::{DinoPipeline, DinoPreprocess};
use crate::apps::knn::{self, KnnOptions};
use crate::dino::{DinoConfig, DinoVit, Ffn, PosInterpolation};
use crate::image::augment::{sample_rng, DataAugmentationDino, DinoAugmentConfig};
use crate::image::DecodeOptions;
use crate::train::{DinoScheduleConfig, DinoSchedules};
use crate::weights::dino::DinoFamily;
use crate::weights::TensorStore;
use crate::{Error, Result};

/// The `format` metadata of a training checkpoint.
pub const CHECKPOINT_FORMAT: &str = "vista-dino-train/1";
/// The `format` metadata of an exported backbone.
pub const BACKBONE_FORMAT: &str = "vista-dino-backbone/1";

/// Everything that defines a run (`main_dino.py`'s arguments that change the result).
/// [`DinoTrainConfig::preset`] gives `main_dino.py`'s defaults for an architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DinoTrainConfig {
    /// DINO's architecture name (`vit_tiny`, `vit_small`, `vit_base`), as recorded.
    pub arch: String,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub patch_size: usize,
    /// Stochastic depth of the student (`--drop_path_rate`, 0.1).
    pub drop_path: f64,
    /// `--out_dim` (65536).
    pub out_dim: usize,
    /// Hidden width of the head's MLP (2048).
    pub head_hidden: usize,
    /// The head's bottleneck (256).
    pub bottleneck: usize,
    /// Linear layers of the head (3).
    pub head_layers: usize,
    /// `--norm_last_layer` (true).
    pub norm_last_layer: bool,
    /// Global crop side (224); also the side the position embedding is made for.
    pub global_size: u32,
    /// Local crop side (96).
    pub local_size: u32,
    /// `--global_crops_scale` (0.4, 1).
    pub global_scale: (f64, f64),
    /// `--local_crops_scale` (0.05, 0.4).
    pub local_scale: (f64, f64),
    /// `--local_crops_number` (8).
    pub local_crops: usize,
    /// `--epochs` (100).
    pub epochs: usize,
    /// Images per step (`--batch_size_per_gpu` × GPUs, 64).
    pub batch_size: usize,
    /// `--lr` for 256 images (0.0005), scaled by `batch_size / 256`.
    pub lr: f64,
    /// `--min_lr` (1e-6).
    pub min_lr: f64,
    /// `--warmup_epochs` (10).
    pub warmup_epochs: usize,
    /// `--weight_decay` (0.04) → `--weight_decay_end` (0.4).
    pub weight_decay: f64,
    pub weight_decay_end: f64,
    /// `--momentum_teacher` (0.996), to 1 on a cosine.
    pub momentum_teacher: f64,
    /// `--warmup_teacher_temp` (0.04) → `--teacher_temp` (0.04) over
    /// `--warmup_teacher_temp_epochs` (0).
    pub warmup_teacher_temp: f64,
    pub teacher_temp: f64,
    pub warmup_teacher_temp_epochs: usize,
    /// `--clip_grad` (3.0; 0 disables).
    pub clip_grad: f64,
    /// `--freeze_last_layer` (1).
    pub freeze_last_layer: usize,
    /// Seed of the initialisation and of every random draw.
    pub seed: u64,
}

impl DinoTrainConfig {
    /// `main_dino.py`'s defaults with DINO's `vit_tiny` (192 wide, 12 deep, 3 heads),
    /// `vit_small` (384, 12, 6) or `vit_base` (768, 12, 12); patch 16.
    pub fn preset(arch: &str) -> Option<Self> {
        let (embed_dim, depth, num_heads) = match arch {
            "vit_tiny" => (192, 12, 3),
            "vit_small" => (384, 12, 6),
            "vit_base" => (768, 12, 12),
            _ => return None,
        };
        Some(Self {
            arch: arch.to_string(),
            embed_dim,
            depth,
            num_heads,
            patch_size: 16,
            drop_path: 0.1,
            out_dim: 65536,
            head_hidden: 2048,
            bottleneck: 256,
            head_layers: 3,
            norm_last_layer: true,
            global_size: 224,
            local_size: 96,
            global_scale: (0.4, 1.0),
            local_scale: (0.05, 0.4),
            local_crops: 8,
            epochs: 100,
            batch_size: 64,
            lr: 0.0005,
            min_lr: 1e-6,
            warmup_epochs: 10,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            momentum_teacher: 0.996,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.04,
            warmup_teacher_temp_epochs: 0,
            clip_grad: 3.0,
            freeze_last_layer: 1,
            seed: 0,
        })
    }

    /// The architectures [`preset`](Self::preset) knows.
    pub const ARCHS: [&'static str; 3] = ["vit_tiny", "vit_small", "vit_base"];

    /// The backbone: DINO's `VisionTransformer` (MLP ratio 4, qkv bias, LayerNorm ε 1e-6), its
    /// position embedding made for the global crop, resampled for the locals with DINO's
    /// `interpolate_pos_encoding`.
    pub fn backbone(&self) -> DinoConfig {
        DinoConfig {
            image_size: self.global_size as usize,
            patch_size: self.patch_size,
            embed_dim: self.embed_dim,
            depth: self.depth,
            num_heads: self.num_heads,
            ffn_hidden: 4 * self.embed_dim,
            ffn: Ffn::Mlp,
            layer_scale: false,
            num_register_tokens: 0,
            qkv_bias: true,
            layer_norm_eps: 1e-6,
            interpolation: PosInterpolation::ScaleFactorOffset { offset: 0.1, antialias: false },
        }
    }

    pub fn head(&self) -> DinoHeadConfig {
        DinoHeadConfig {
            in_dim: self.embed_dim,
            out_dim: self.out_dim,
            norm_last_layer: self.norm_last_layer,
            nlayers: self.head_layers,
            hidden_dim: self.head_hidden,
            bottleneck_dim: self.bottleneck,
        }
    }

    pub fn augment(&self) -> DinoAugmentConfig {
        DinoAugmentConfig::dino(
            self.global_size,
            self.local_size,
            self.global_scale,
            self.local_scale,
            self.local_crops,
        )
    }

    pub fn schedule(&self, niter_per_ep: usize) -> DinoScheduleConfig {
        DinoScheduleConfig {
            epochs: self.epochs,
            niter_per_ep,
            batch_size_total: self.batch_size,
            lr: self.lr,
            min_lr: self.min_lr,
            warmup_epochs: self.warmup_epochs,
            weight_decay: self.weight_decay,
            weight_decay_end: self.weight_decay_end,
            momentum_teacher: self.momentum_teacher,
            warmup_teacher_temp: self.warmup_teacher_temp,
            teacher_temp: self.teacher_temp,
            warmup_teacher_temp_epochs: self.warmup_teacher_temp_epochs,
        }
    }

    pub fn loss(&self) -> DinoLossConfig {
        DinoLossConfig::new(
            self.out_dim,
            self.local_crops + 2,
            self.warmup_teacher_temp,
            self.teacher_temp,
            self.warmup_teacher_temp_epochs,
            self.epochs,
        )
    }

    /// Checks every value, naming the argument at fault.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("embed_dim", self.embed_dim),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
            ("patch", self.patch_size),
            ("out_dim", self.out_dim),
            ("head_hidden", self.head_hidden),
            ("bottleneck", self.bottleneck),
            ("head_layers", self.head_layers),
            ("epochs", self.epochs),
            ("batch", self.batch_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::arg(name, "must be positive"));
            }
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(Error::arg(
                "num_heads",
                format!("width {} is not divisible by {} heads", self.embed_dim, self.num_heads),
            ));
        }
        for (name, size) in [("global_size", self.global_size), ("local_size", self.local_size)] {
            if !(size as usize).is_multiple_of(self.patch_size) || size == 0 {
                return Err(Error::arg(
                    name,
                    format!("crop side {size} is not a positive multiple of the {}-pixel patch", self.patch_size),
                ));
            }
        }
        if self.warmup_epochs > self.epochs {
            return Err(Error::arg("warmup_epochs", format!("{} > {} epochs", self.warmup_epochs, self.epochs)));
        }
        if !(0.0..1.0).contains(&self.drop_path) {
            return Err(Error::arg("drop_path", format!("{} is not in [0, 1)", self.drop_path)));
        }
        for (name, v) in
            [("lr", self.lr), ("teacher_temp", self.teacher_temp), ("warmup_teacher_temp", self.warmup_teacher_temp)]
        {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::arg(name, format!("{v} must be positive")));
            }
        }
        if !(0.0..=1.0).contains(&self.momentum_teacher) {
            return Err(Error::arg("momentum_teacher", format!("{} is not in [0, 1]", self.momentum_teacher)));
        }
        self.augment().validate()?;
        self.backbone().validate().map_err(|m| Error::arg("arch", m))
    }
}

/// One training step's numbers (one line of `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub epoch: usize,
    /// Global iteration (`epoch · niter_per_ep + it`).
    pub iteration: usize,
    pub loss: f64,
    pub lr: f64,
    pub wd: f64,
    pub momentum: f64,
    pub teacher_temp: f64,
    /// Mean entropy of the sharpened, centred teacher distribution (nats; ln out_dim is uniform).
    pub teacher_entropy: f64,
    /// Mean KL(teacher ‖ student) over the loss pairs (nats).
    pub kl: f64,
    /// Images in the step.
    pub images: usize,
    /// Wall time of the step (seconds), data waiting included.
    pub seconds: f64,
}

/// Watches the collapse diagnostics of the DINO paper (teacher entropy and KL between teacher
/// and student): both collapse modes — one dimension dominating (entropy → 0) and the uniform
/// output (entropy → ln K) — make the student copy the teacher, KL → 0. A warning is raised when
/// the KL averaged over the last `window` steps falls below `min_kl`.
#[derive(Debug, Clone)]
pub struct CollapseMonitor {
    window: usize,
    min_kl: f64,
    max_entropy: f64,
    recent: VecDeque<(f64, f64)>,
}

impl CollapseMonitor {
    /// Over `window` steps, warning below `min_kl` nats, for `out_dim` output dimensions.
    pub fn new(window: usize, min_kl: f64, out_dim: usize) -> Self {
        Self { window: window.max(1), min_kl, max_entropy: (out_dim as f64).ln(), recent: VecDeque::new() }
    }

    /// Adds a step; a warning text when collapse has set in.
    pub fn observe(&mut self, m: &StepMetrics) -> Option<String> {
        self.recent.push_back((m.teacher_entropy, m.kl));
        if self.recent.len() > self.window {
            self.recent.pop_front();
        }
        if self.recent.len() < self.window {
            return None;
        }
        let n = self.recent.len() as f64;
        let entropy = self.recent.iter().map(|r| r.0).sum::<f64>() / n;
        let kl = self.recent.iter().map(|r| r.1).sum::<f64>() / n;
        if kl >= self.min_kl {
            return None;
        }
        let mode = if entropy > 0.5 * self.max_entropy { "uniform output" } else { "one dimension dominates" };
        Some(format!(
            "collapse: over the last {} steps KL(teacher ‖ student) is {kl:.2e} nats (< {:.0e}) with teacher \
             entropy {entropy:.3} of at most {:.3} ({mode}); try a lower teacher temperature, a higher \
             teacher momentum or a larger batch",
            self.window, self.min_kl, self.max_entropy
        ))
    }
}

/// The networks, optimiser and loss state of a run.
pub struct DinoTrainer {
    pub config: DinoTrainConfig,
    student: TrainVit,
    student_head: DinoHead,
    teacher: TrainVit,
    teacher_head: DinoHead,
    loss: DinoLoss,
    opt: AdamW,
    schedules: DinoSchedules,
    niter_per_ep: usize,
    /// Epochs completed.
    pub epoch: usize,
    /// Global iterations completed.
    pub iteration: usize,
}

/// The JSON state stored with the tensors of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
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
    /// A fresh run: the student initialised as DINO does (seeded), the teacher a copy of it
    /// (`teacher_without_ddp.load_state_dict(student.module.state_dict())`), no gradient for
    /// the teacher. `niter_per_ep` is the number of full batches per epoch.
    pub fn new(config: DinoTrainConfig, niter_per_ep: usize) -> Result<Self> {
        config.validate()?;
        if niter_per_ep == 0 {
            return Err(Error::arg(
                "batch",
                format!("fewer images than one batch of {}: nothing to train on", config.batch_size),
            ));
        }
        let backbone = config.backbone();
        let student = TrainVit::init(backbone.clone(), config.seed)?.with_drop_path(config.drop_path)?;
        let mut teacher = TrainVit::init(backbone, config.seed)?;
        teacher.load_state_dict(student.state_dict()?.iter().map(|(n, t)| (n.as_str(), t)))?;
        teacher.set_requires_grad(false);
        let student_head = DinoHead::new(config.head(), config.seed.wrapping_add(1), &Device::Cpu)?;
        // main_dino.py builds the teacher head with DINOHead's default norm_last_layer (true),
        // then overwrites every tensor with the student's.
        let teacher_cfg = DinoHeadConfig { norm_last_layer: true, ..config.head() };
        let mut teacher_head = DinoHead::new(teacher_cfg, config.seed.wrapping_add(1), &Device::Cpu)?;
        teacher_head.load_state_dict(student_head.state_dict()?.iter().map(|(n, t)| (n.as_str(), t)))?;
        teacher_head.set_requires_grad(false);
        let params: Vec<Param> = student.params().iter().chain(student_head.params()).cloned().collect();
        let opt = AdamW::new(&params, get_params_groups(&params), AdamWConfig::default())?;
        let loss = DinoLoss::new(config.loss(), &Device::Cpu)?;
        let schedules = DinoSchedules::new(&config.schedule(niter_per_ep))?;
        Ok(Self {
            config,
            student,
            student_head,
            teacher,
            teacher_head,
            loss,
            opt,
            schedules,
            niter_per_ep,
            epoch: 0,
            iteration: 0,
        })
    }

    pub fn niter_per_ep(&self) -> usize {
        self.niter_per_ep
    }

    pub fn schedules(&self) -> &DinoSchedules {
        &self.schedules
    }

    pub fn student(&self) -> &TrainVit {
        &self.student
    }

    pub fn teacher(&self) -> &TrainVit {
        &self.teacher
    }

    fn student_params(&self) -> Vec<Param> {
        self.student.params().iter().chain(self.student_head.params()).cloned().collect()
    }

    /// One iteration of `train_one_epoch` on the crops of one batch (2 globals, then the
    /// locals); `it` is the global iteration, which picks the schedules' values and seeds
    /// stochastic depth. Fails, changing nothing, when the loss is not finite.
    pub fn step(&mut self, crops: &[Tensor], epoch: usize, it: usize) -> Result<StepMetrics> {
        let start = Instant::now();
        if it >= self.schedules.len() {
            return Err(Error::arg("iteration", format!("{it} is past the {} scheduled", self.schedules.len())));
        }
        if crops.len() != self.config.local_crops + 2 {
            return Err(Error::arg(
                "crops",
                format!("{} crops, expected {}", crops.len(), self.config.local_crops + 2),
            ));
        }
        let (lr, wd, m) = (self.schedules.lr[it], self.schedules.wd[it], self.schedules.momentum[it]);
        self.opt.set_dino_schedule(lr, wd);
        let images = crops[0].dim(0)?;
        let teacher_output = multi_crop_forward(&self.teacher, &self.teacher_head, &crops[..2], None)?;
        let mut drop_rng: ChaCha8Rng = sample_rng(self.config.seed, it as u64, u64::MAX - 1);
        let student_output = multi_crop_forward(&self.student, &self.student_head, crops, Some(&mut drop_rng))?;
        let center_before = self.loss.center().clone();
        let out = self.loss.forward(&student_output, &teacher_output, epoch)?;
        let loss = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !loss.is_finite() {
            self.loss.set_center(&center_before)?;
            return Err(Error::arg(
                "loss",
                format!("the loss is {loss} at epoch {epoch}, iteration {it}: training stopped (lower the learning rate or raise --clip-grad)"),
            ));
        }
        let params = self.student_params();
        let mut grads = Grads::from_backward(&params, &out.loss.backward()?);
        if self.config.clip_grad > 0.0 {
            clip_gradients(&mut grads, self.config.clip_grad)?;
        }
        cancel_gradients_last_layer(epoch, &mut grads, self.config.freeze_last_layer);
        self.opt.step(&grads)?;
        ema_update(self.teacher.params(), self.student.params(), m)?;
        ema_update(self.teacher_head.params(), self.student_head.params(), m)?;
        Ok(StepMetrics {
            epoch,
            iteration: it,
            loss,
            lr,
            wd,
            momentum: m,
            teacher_temp: out.teacher_temp,
            teacher_entropy: out.teacher_entropy.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            kl: out.kl.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            images,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Every tensor of the run, checkpoint names.
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut v = prefixed("student.backbone.", self.student.state_dict()?);
        v.extend(prefixed("student.head.", self.student_head.state_dict()?));
        v.extend(prefixed("teacher.backbone.", self.teacher.state_dict()?));
        v.extend(prefixed("teacher.head.", self.teacher_head.state_dict()?));
        v.push(("dino_loss.center".into(), self.loss.center().clone()));
        for (name, _, m, v2) in self.opt.state_entries() {
            v.push((format!("optimizer.{name}.exp_avg"), m.clone()));
            v.push((format!("optimizer.{name}.exp_avg_sq"), v2.clone()));
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
            optimizer_steps: self.opt.state_entries().into_iter().map(|(n, s, _, _)| (n.to_string(), s)).collect(),
            vista_version: env!("CARGO_PKG_VERSION").into(),
        };
        serde_json::to_string_pretty(&state).map_err(|e| Error::arg("checkpoint", e.to_string()))
    }

    /// Writes the checkpoint (atomically) and its readable JSON beside it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.state_json()?;
        let meta =
            HashMap::from([("format".to_string(), CHECKPOINT_FORMAT.to_string()), ("state".to_string(), json.clone())]);
        write_f32_safetensors(path, &self.tensors()?, meta)?;
        let json_path = path.with_extension("json");
        write_atomic(&json_path, json.as_bytes())
    }

    /// Resumes a run from [`save`](Self::save)'s file. Every tensor is checked by name and
    /// shape; errors name the file and the tensor.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |m: String| Error::Checkpoint { path: path.to_path_buf(), message: m };
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
            return Err(bad(format!("not a vista DINO training checkpoint (format {:?})", meta.get("format"))));
        }
        let state: CheckpointState = serde_json::from_str(meta.get("state").map(String::as_str).unwrap_or(""))
            .map_err(|e| bad(format!("bad state: {e}")))?;
        drop(bytes);
        let tensors = crate::weights::formats::read_tensors(path, None, &Device::Cpu)?;
        let mut t = Self::new(state.config.clone(), state.niter_per_ep).map_err(|e| bad(e.to_string()))?;
        let check = |what: &str, r: Result<()>| r.map_err(|e| bad(format!("{what}: {e}")));
        check("student backbone", t.student.load_state_dict(take_prefixed(&tensors, "student.backbone.")))?;
        check("student head", t.student_head.load_state_dict(take_prefixed(&tensors, "student.head.")))?;
        check("teacher backbone", t.teacher.load_state_dict(take_prefixed(&tensors, "teacher.backbone.")))?;
        check("teacher head", t.teacher_head.load_state_dict(take_prefixed(&tensors, "teacher.head.")))?;
        let center = tensors.get("dino_loss.center").ok_or_else(|| bad("missing tensor `dino_loss.center`".into()))?;
        check("dino_loss.center", t.loss.set_center(center))?;
        for (name, step) in &state.optimizer_steps {
            let get = |k: &str| {
                let key = format!("optimizer.{name}.{k}");
                tensors.get(&key).cloned().ok_or_else(|| bad(format!("missing tensor `{key}`")))
            };
            check("optimizer", t.opt.set_state(name, *step, get("exp_avg")?, get("exp_avg_sq")?))?;
        }
        t.epoch = state.epoch;
        t.iteration = state.iteration;
        Ok(t)
    }

    /// The teacher backbone (what DINO evaluates and releases), official names.
    pub fn teacher_backbone(&self) -> Result<Vec<(String, Tensor)>> {
        self.teacher.state_dict()
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
        write_f32_safetensors(path, &self.teacher_backbone()?, meta)
    }

    /// An inference [`DinoPipeline`] over the teacher backbone, with the evaluation
    /// preprocessing for images of the training size (shortest side to the global crop side,
    /// centre crop of it).
    pub fn teacher_pipeline(&self) -> Result<DinoPipeline> {
        let mut store = TensorStore::new("<teacher>", &Device::Cpu, DType::F32);
        store.insert_as_named(self.teacher_backbone()?.into_iter().collect(), |_| false);
        let model = DinoVit::load(&store.root(), self.config.backbone())?;
        let mut p =
            DinoPipeline::new(crate::dino::Loaded { model, family: DinoFamily::Official, report: store.report() });
        p.preprocess = DinoPreprocess::eval_sized(self.config.global_size, self.config.global_size);
        Ok(p)
    }
}

/// DINO's k-NN evaluation of a backbone (`eval_knn.py`: L2-normalised CLS features, weighted
/// vote at temperature `t`): the top-1 accuracy (percent) for `k` on `test` with `train` as
/// the memory bank.
pub fn knn_top1(pipeline: &DinoPipeline, train: &LabelledSet, test: &LabelledSet, k: usize, t: f32) -> Result<f64> {
    let mut f_train = pipeline.dataset_features(train, 64, None, |_| {})?;
    let mut f_test = pipeline.dataset_features(test, 64, None, |_| {})?;
    let dim = f_train.dim;
    knn::normalize_rows(&mut f_train.features, dim);
    knn::normalize_rows(&mut f_test.features, dim);
    let k = k.min(f_train.len()).max(1);
    let classes = train.classes.len().max(test.classes.len());
    let options = KnnOptions { ks: vec![k], temperature: t, ..KnnOptions::default() };
    let r = knn::knn_classifier(
        &f_train.features,
        &f_train.labels,
        &f_test.features,
        &f_test.labels,
        dim,
        classes,
        &options,
    )?;
    Ok(r[0].top1)
}

fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// Writes f32 tensors with metadata to `path` atomically (temporary file, fsync, rename).
pub fn write_f32_safetensors(path: &Path, tensors: &[(String, Tensor)], meta: HashMap<String, String>) -> Result<()> {
    let bad = |m: String| Error::Checkpoint { path: path.to_path_buf(), message: m };
    let data =
        tensors.iter().map(|(n, t)| Ok((n.clone(), t.dims().to_vec(), f32_bytes(t)?))).collect::<Result<Vec<_>>>()?;
    let views = data
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| bad(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| bad(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same folder, synced, then renamed:
/// a reader (or a run killed midway) sees the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// What a run reports as it goes.
pub enum Event<'a> {
    /// An epoch starts at batch `first` (0 unless resuming midway) of `batches`.
    EpochStart {
        epoch: usize,
        first: usize,
        batches: usize,
    },
    Step(&'a StepMetrics),
    /// Items that could not be loaded in a batch.
    Skipped(&'a [String]),
    /// The collapse monitor's warning.
    Collapse(&'a str),
    EpochEnd {
        epoch: usize,
        seconds: f64,
        mean_loss: f64,
        knn_top1: Option<f64>,
    },
    /// The k-NN top-1 of the teacher at initialisation (a fresh run with k-NN evaluation).
    InitialKnn(f64),
    Saved(&'a Path),
}

/// A run's inputs besides the configuration.
pub struct RunOptions {
    /// The output folder: `checkpoint.safetensors` (+ `.json`), `metrics.jsonl`,
    /// `backbone.safetensors`, `checkpoint<EEEE>.safetensors` every `save_every` epochs.
    pub output: PathBuf,
    pub workers: usize,
    pub prefetch: usize,
    pub decode: DecodeOptions,
    /// Keep a numbered copy of the checkpoint every this many epochs (0: never).
    pub save_every: usize,
    /// Also write the checkpoint every this many steps within an epoch (0: only at epoch ends),
    /// so a long epoch interrupted midway resumes from its last saved step.
    pub save_every_steps: usize,
    /// k-NN evaluation of the teacher: `(train, test, k, every)`, after every `every` epochs
    /// and after the last.
    pub knn: Option<(LabelledSet, LabelledSet, usize, usize)>,
    /// Stop after this many epochs in this call (the schedule still spans `config.epochs`);
    /// for tests and for splitting a run.
    pub max_epochs: Option<usize>,
}

/// Trains (or resumes, when the output folder holds a checkpoint of the same configuration)
/// on `items`. Each epoch ends with the checkpoint, the exported backbone and, when asked, the
/// k-NN evaluation. Returns the trainer after the last epoch run.
pub fn run(
    config: DinoTrainConfig,
    items: Vec<Item>,
    options: &RunOptions,
    mut on_event: impl FnMut(Event<'_>),
) -> Result<DinoTrainer> {
    config.validate()?;
    let niter = items.len() / config.batch_size;
    let ckpt = options.output.join("checkpoint.safetensors");
    let mut trainer = if ckpt.is_file() {
        let t = DinoTrainer::load(&ckpt)?;
        if t.config != config {
            return Err(Error::Config {
                path: ckpt,
                message: format!(
                    "the run in this folder has another configuration ({}); use another --output or the same arguments",
                    config_diff(&t.config, &config)
                ),
            });
        }
        if t.niter_per_ep != niter {
            return Err(Error::Config {
                path: ckpt,
                message: format!(
                    "the run in this folder has {} batches per epoch, this data set gives {niter}",
                    t.niter_per_ep
                ),
            });
        }
        t
    } else {
        DinoTrainer::new(config, niter)?
    };
    std::fs::create_dir_all(&options.output).map_err(|e| Error::io(&options.output, e))?;
    let metrics_path = options.output.join("metrics.jsonl");
    truncate_metrics(&metrics_path, trainer.iteration, trainer.epoch)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let items = Arc::new(items);
    let aug = Arc::new(DataAugmentationDino::new(trainer.config.augment())?);
    let loader = LoaderOptions {
        batch_size: trainer.config.batch_size,
        seed: trainer.config.seed,
        workers: options.workers,
        prefetch: options.prefetch,
        decode: options.decode,
    };
    let mut monitor = CollapseMonitor::new(20, 1e-3, trainer.config.out_dim);
    let last = match options.max_epochs {
        Some(m) => (trainer.epoch + m).min(trainer.config.epochs),
        None => trainer.config.epochs,
    };
    if let (Some((train, test, k, _)), 0) = (&options.knn, trainer.iteration) {
        let acc = knn_top1(&trainer.teacher_pipeline()?, train, test, *k, knn::DEFAULT_TEMPERATURE)?;
        let line = serde_json::json!({"knn_k": k, "knn_top1_init": acc}).to_string();
        writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
        on_event(Event::InitialKnn(acc));
    }
    while trainer.epoch < last {
        let epoch = trainer.epoch;
        let start = Instant::now();
        // Resuming from a checkpoint written within this epoch: its first batches are done.
        let first = trainer.iteration.saturating_sub(epoch * trainer.niter_per_ep).min(trainer.niter_per_ep);
        let batches = EpochBatches::new(items.clone(), aug.clone(), &loader, epoch, first);
        on_event(Event::EpochStart { epoch, first, batches: batches.len() });
        let (mut loss_sum, mut steps) = (0.0, 0usize);
        for batch in batches {
            let batch = batch?;
            let it = batch.index;
            if !batch.failed.is_empty() {
                on_event(Event::Skipped(&batch.failed));
            }
            let global = epoch * trainer.niter_per_ep + it;
            if batch.crops.is_empty() {
                trainer.iteration = global + 1;
                continue;
            }
            let m = trainer.step(&batch.crops, epoch, global).map_err(|e| match e {
                Error::InvalidArgument { name, message } if name == "loss" => Error::InvalidArgument {
                    name,
                    message: format!("{message}; the last good checkpoint is kept: {}", ckpt.display()),
                },
                e => e,
            })?;
            trainer.iteration = global + 1;
            let line = serde_json::to_string(&m).map_err(|e| Error::arg("metrics", e.to_string()))?;
            writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
            loss_sum += m.loss;
            steps += 1;
            on_event(Event::Step(&m));
            if let Some(w) = monitor.observe(&m) {
                let line = serde_json::json!({"warning": w, "iteration": m.iteration}).to_string();
                writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
                on_event(Event::Collapse(&w));
            }
            let every = options.save_every_steps;
            if every > 0 && (it + 1) % every == 0 && it + 1 < trainer.niter_per_ep {
                metrics.flush().map_err(|e| Error::io(&metrics_path, e))?;
                trainer.save(&ckpt)?;
                on_event(Event::Saved(&ckpt));
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        trainer.epoch = epoch + 1;
        metrics.flush().map_err(|e| Error::io(&metrics_path, e))?;
        trainer.save(&ckpt)?;
        on_event(Event::Saved(&ckpt));
        trainer.export_backbone(&options.output.join("backbone.safetensors"))?;
        if options.save_every > 0 && trainer.epoch % options.save_every == 0 {
            let numbered = options.output.join(format!("checkpoint{:04}.safetensors", trainer.epoch));
            trainer.save(&numbered)?;
        }
        let knn_top1 = match &options.knn {
            Some((train, test, k, every)) if trainer.epoch == last || (*every > 0 && trainer.epoch % every == 0) => {
                let acc = knn_top1(&trainer.teacher_pipeline()?, train, test, *k, knn::DEFAULT_TEMPERATURE)?;
                let line = serde_json::json!({"epoch": epoch, "knn_k": k, "knn_top1": acc}).to_string();
                writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
                Some(acc)
            }
            _ => None,
        };
        let mean_loss = if steps > 0 { loss_sum / steps as f64 } else { f64::NAN };
        on_event(Event::EpochEnd { epoch, seconds, mean_loss, knn_top1 });
    }
    Ok(trainer)
}

/// Drops the metric lines of iterations at or after `iteration` and the evaluations of epochs
/// at or after `epochs_done` (a resumed run writes them again), and lines torn by a kill.
fn truncate_metrics(path: &Path, iteration: usize, epochs_done: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let mut kept = String::new();
    for line in text.lines() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => continue, // a line torn by a kill
        };
        let keep = match (v["iteration"].as_u64(), v["epoch"].as_u64()) {
            (Some(i), _) => (i as usize) < iteration,
            (None, Some(e)) => (e as usize) < epochs_done,
            _ => true,
        };
        if keep {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    write_atomic(path, kept.as_bytes())
}

fn config_diff(a: &DinoTrainConfig, b: &DinoTrainConfig) -> String {
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
