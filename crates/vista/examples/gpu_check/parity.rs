//! Parity of vista's device paths against its own CPU fast path, on the committed fixtures
//! (`crates/vista/tests/fixtures`), for every model family and one DINO training step.
//!
//! The reference side is always the f32 CPU model with the fused CPU kernels. The side under test
//! is the same checkpoint loaded on `Target::device` in `Target::dtype`; on the CPU it runs with
//! the fast kernels switched off ([`vista::nn::cpu::with_portable_paths`]), so every layer takes
//! the candle-op path that CUDA runs. Shared by `examples/gpu_check.rs` (on the GPU) and
//! `tests/suite/device_fallback.rs` (on the CPU, where it proves the device paths without a GPU).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vista::clip::{loader as clip_loader, ClipModel};
use vista::dino::{loader as dino_loader, DinoConfig, DinoVit};
use vista::sam::loader as sam_loader;
use vista::sam::{Point, Predictor, Prompts, Sam};
use vista::train::dino::{
    clip_gradients, ema_update, get_params_groups, multi_crop_forward, AdamW, AdamWConfig, DinoHead, DinoHeadConfig,
    DinoLoss, DinoTrainConfig, Grads, Param, TrainVit,
};
use vista::weights::{formats, TensorStore};

/// Where the side under test runs.
#[derive(Clone)]
pub struct Target {
    pub device: Device,
    pub dtype: DType,
}

impl Target {
    pub fn name(&self) -> String {
        let dev =
            if self.device.is_cpu() { "cpu-portable".to_string() } else { format!("{:?}", self.device.location()) };
        format!("{dev}/{:?}", self.dtype).to_lowercase()
    }

    fn low_precision(&self) -> bool {
        self.dtype != DType::F32
    }

    /// Runs `f` as this target runs: on the CPU with the fast kernels off.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        if self.device.is_cpu() {
            vista::nn::cpu::with_portable_paths(f)
        } else {
            f()
        }
    }
}

/// One measured quantity and its bound.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub family: String,
    pub case: String,
    pub metric: String,
    pub value: f64,
    /// `value >= limit` when `at_least`, else `value <= limit`.
    pub limit: f64,
    pub at_least: bool,
    pub pass: bool,
}

#[derive(Default)]
pub struct Report {
    pub checks: Vec<Check>,
    pub errors: Vec<String>,
}

impl Report {
    fn push(&mut self, family: &str, case: &str, metric: &str, value: f64, limit: f64, at_least: bool) {
        let pass = value.is_finite() && if at_least { value >= limit } else { value <= limit };
        self.checks.push(Check {
            family: family.into(),
            case: case.into(),
            metric: metric.into(),
            value,
            limit,
            at_least,
            pass,
        });
    }

    /// Records an error (a family that failed to run) instead of aborting the others.
    pub fn attempt(&mut self, what: &str, f: impl FnOnce(&mut Self) -> Result<()>) {
        if let Err(e) = f(self) {
            self.errors.push(format!("{what}: {e:#}"));
        }
    }

    pub fn passed(&self) -> bool {
        self.errors.is_empty() && self.checks.iter().all(|c| c.pass)
    }

    pub fn failures(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| {
                format!(
                    "{}/{} {}: {:.3e} {} {:.1e}",
                    c.family,
                    c.case,
                    c.metric,
                    c.value,
                    if c.at_least { "<" } else { ">" },
                    c.limit
                )
            })
            .collect();
        v.extend(self.errors.iter().cloned());
        v
    }
}

/// `$VISTA_FIXTURES`, else the source tree this was built from, else `crates/vista/tests/fixtures`
/// below the working directory (a binary built here and run in a copy of the repository elsewhere).
pub fn fixtures_dir() -> PathBuf {
    if let Ok(d) = std::env::var("VISTA_FIXTURES") {
        return PathBuf::from(d);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    if built.is_dir() {
        return built;
    }
    PathBuf::from("crates/vista/tests/fixtures")
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Rows of `[.., D]` tensors (flattened to `[N, D]`): the smallest cosine similarity, in f64.
pub fn min_row_cosine(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = *a.dims().last().ok_or_else(|| anyhow!("scalar"))?;
    let (a, b) = (host(a)?, host(b)?);
    anyhow::ensure!(a.len() == b.len(), "shapes differ: {} vs {} values", a.len(), b.len());
    let mut worst = f64::INFINITY;
    for (x, y) in a.chunks(d).zip(b.chunks(d)) {
        let dot: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
        let nx: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
        let ny: f64 = y.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
        let cos = if nx == 0.0 && ny == 0.0 { 1.0 } else { dot / (nx * ny) };
        worst = worst.min(cos);
    }
    Ok(worst)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (host(a)?, host(b)?);
    anyhow::ensure!(a.len() == b.len(), "shapes differ: {} vs {} values", a.len(), b.len());
    Ok(a.iter().zip(&b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, |m, d| {
        if d.is_nan() {
            f64::NAN
        } else {
            m.max(d)
        }
    }))
}

/// `‖a − b‖ / ‖b‖`.
pub fn rel_l2(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (host(a)?, host(b)?);
    anyhow::ensure!(a.len() == b.len(), "shapes differ: {} vs {} values", a.len(), b.len());
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    Ok(if den == 0.0 { num.sqrt() } else { (num / den).sqrt() })
}

/// Limits per dtype: f32 is held to the CPU path's own precision, bf16/f16 to what their 8/11
/// mantissa bits allow.
struct Limits {
    cosine: f64,
    mask_fraction: f64,
    iou_abs: f64,
}

fn limits(t: &Target) -> Limits {
    if t.low_precision() {
        // Measured on the CPU (bf16, the fixtures' tiny random models): worst mask 0.99 % (TinyViT),
        // IoU 0.010, cosines >= 0.9991, DINO attention 1.5e-2; the limits leave room for another
        // summation order.
        Limits { cosine: 0.999, mask_fraction: 0.02, iou_abs: 0.05 }
    } else {
        Limits { cosine: 0.99999, mask_fraction: 0.001, iou_abs: 1e-3 }
    }
}

// ---------------------------------------------------------------------------------------------
// CLIP
// ---------------------------------------------------------------------------------------------

pub const CLIP_CASES: [&str; 4] = ["hf_quickgelu", "hf_gelu", "openclip_quickgelu", "openclip_gelu"];

/// The CLIP checkpoint of `dir` on `target` (the config read by the ordinary loader).
pub fn clip_on(dir: &Path, cfg: &vista::clip::ClipConfig, target: &Target) -> Result<ClipModel> {
    let files = clip_loader::resolve(dir.to_str().ok_or_else(|| anyhow!("path"))?, None)?;
    let tensors = formats::read_tensors(&files.weights, None, &target.device)?;
    let (store, _) = TensorStore::from_family::<vista::weights::clip::ClipFamily>(
        &files.weights,
        tensors,
        &target.device,
        target.dtype,
    )?;
    Ok(ClipModel::from_store(cfg, &store)?)
}

fn ids_of(t: &Tensor) -> Result<Vec<Vec<u32>>> {
    Ok(t.to_dtype(DType::I64)?
        .to_vec2::<i64>()?
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect())
}

pub fn clip(report: &mut Report, target: &Target) -> Result<()> {
    let lim = limits(target);
    for case in CLIP_CASES {
        let dir = fixtures_dir().join("clip").join(case);
        let golden = candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu)?;
        let reference = clip_loader::load_model(dir.to_str().unwrap(), None, &Device::Cpu)?.model;
        let model = clip_on(&dir, reference.config(), target)?;
        let px = &golden["pixel_values"];
        let ids = ids_of(&golden["input_ids"])?;
        let (ri, rt) = (reference.encode_image(px)?, reference.encode_text(&ids)?);
        let (di, dt) = target.run(|| -> Result<_> { Ok((model.encode_image(px)?, model.encode_text(&ids)?)) })?;
        report.push("clip", case, "image_embeds min cosine", min_row_cosine(&di, &ri)?, lim.cosine, true);
        report.push("clip", case, "text_embeds min cosine", min_row_cosine(&dt, &rt)?, lim.cosine, true);
        if !target.low_precision() {
            report.push("clip", case, "image_embeds max abs diff", max_abs_diff(&di, &ri)?, 1e-4, false);
            report.push("clip", case, "text_embeds max abs diff", max_abs_diff(&dt, &rt)?, 1e-4, false);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// DINO / DINOv2
// ---------------------------------------------------------------------------------------------

/// (fixture folder, checkpoint file).
pub const DINO_CASES: [(&str, &str); 7] = [
    ("v1_official", "dino_vit_tiny_pretrain.pth"),
    ("v1_hf", "model.safetensors"),
    ("v2_official_mlp", "dinov2_vit_tiny_pretrain.pth"),
    ("v2_official_swiglu_reg4", "dinov2_vit_tiny_reg4_swiglu_pretrain.pth"),
    ("v2_hf_mlp", "model.safetensors"),
    ("v2_hf_swiglu", "model.safetensors"),
    ("v2_hf_reg4_swiglu", "model.safetensors"),
];

fn dino_reference(case: &str, file: &str) -> Result<(DinoVit, PathBuf)> {
    let dir = fixtures_dir().join("dino").join(case);
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json"))?)?;
    let heads = m["config"]["num_heads"].as_u64().or(m["config"]["num_attention_heads"].as_u64()).map(|h| h as usize);
    let options = dino_loader::LoadOptions { num_heads: heads, ..Default::default() };
    let path = dir.join(file);
    Ok((dino_loader::load_model(path.to_str().unwrap(), &options)?.model, path))
}

/// The DINO checkpoint at `path` on `target`, with the architecture `config`.
pub fn dino_on(path: &Path, config: &DinoConfig, target: &Target) -> Result<DinoVit> {
    let tensors = formats::read_tensors(path, None, &target.device)?;
    let (store, _) =
        TensorStore::from_family::<vista::weights::dino::DinoFamily>(path, tensors, &target.device, target.dtype)?;
    Ok(DinoVit::load(&store.root(), config.clone())?)
}

pub fn dino(report: &mut Report, target: &Target) -> Result<()> {
    let lim = limits(target);
    for (case, file) in DINO_CASES {
        let (reference, path) = dino_reference(case, file)?;
        let model = dino_on(&path, &reference.config, target)?;
        let g = candle_core::safetensors::load(
            fixtures_dir().join("dino").join(case).join("golden.safetensors"),
            &Device::Cpu,
        )?;
        let mut sizes: Vec<&String> = g.keys().filter(|k| k.starts_with("x.")).collect();
        sizes.sort();
        for key in sizes {
            let x = g[key].permute((0, 2, 3, 1))?.contiguous()?;
            let label = format!("{case} {}", &key[2..]);
            let r = reference.forward(&x, true, false)?;
            let d = target.run(|| model.forward(&x, true, false))?;
            report.push("dino", &label, "cls min cosine", min_row_cosine(&d.cls()?, &r.cls()?)?, lim.cosine, true);
            report.push(
                "dino",
                &label,
                "patch tokens min cosine",
                min_row_cosine(&d.patches()?, &r.patches()?)?,
                lim.cosine,
                true,
            );
            let attn = max_abs_diff(d.attention.as_ref().unwrap(), r.attention.as_ref().unwrap())?;
            report.push(
                "dino",
                &label,
                "last attention max abs diff",
                attn,
                if target.low_precision() { 5e-2 } else { 1e-5 },
                false,
            );
            if !target.low_precision() {
                report.push("dino", &label, "tokens max abs diff", max_abs_diff(&d.tokens, &r.tokens)?, 1e-4, false);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// SAM
// ---------------------------------------------------------------------------------------------

pub const SAM_CASES: [&str; 3] = ["vit_official", "vit_hf", "mobile_official"];

fn sam_reference(case: &str) -> Result<(Sam, PathBuf)> {
    let dir = fixtures_dir().join("sam").join(case);
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let weights = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.ends_with(".pth") || n.ends_with(".pt") || n == "model.safetensors"
        })
        .ok_or_else(|| anyhow!("{case}: no checkpoint"))?;
    let options =
        sam_loader::LoadOptions { image_size: cfg["image_size"].as_u64().map(|v| v as usize), ..Default::default() };
    let files = sam_loader::resolve(weights.to_str().unwrap())?;
    Ok((sam_loader::load(&files, &options)?.model, weights))
}

/// The SAM checkpoint at `path` on `target`, with the architecture `config`.
pub fn sam_on(path: &Path, config: &vista::sam::SamConfig, target: &Target) -> Result<Sam> {
    let tensors = formats::read_tensors(path, None, &target.device)?;
    let (store, _) =
        TensorStore::from_family::<vista::weights::sam::SamFamily>(path, tensors, &target.device, target.dtype)?;
    Ok(Sam::load(&store.root(), config.clone())?)
}

fn image_of(t: &Tensor) -> Result<vista::image::RgbImage> {
    let (h, w, _) = t.dims3()?;
    let raw: Vec<u8> = t.flatten_all()?.to_vec1()?;
    vista::image::RgbImage::from_raw(w as u32, h as u32, raw).ok_or_else(|| anyhow!("image"))
}

/// A fixed set of prompts over an `h × w` image: one point (multimask), two boxes with a
/// background point, and a point with the previous best low-res mask fed back.
fn prompt_sets(h: usize, w: usize) -> Vec<(&'static str, Prompts)> {
    let (fw, fh) = (w as f32, h as f32);
    let point = Prompts {
        points: vec![Point { x: 0.4 * fw, y: 0.55 * fh, positive: true }],
        multimask: true,
        return_logits: true,
        ..Default::default()
    };
    let boxes = Prompts {
        points: vec![Point { x: 0.1 * fw, y: 0.9 * fh, positive: false }],
        boxes: vec![[0.1 * fw, 0.2 * fh, 0.6 * fw, 0.7 * fh], [0.3 * fw, 0.1 * fh, 0.95 * fw, 0.85 * fh]],
        multimask: false,
        return_logits: true,
        ..Default::default()
    };
    vec![("point", point), ("boxes", boxes)]
}

pub fn sam(report: &mut Report, target: &Target) -> Result<()> {
    let lim = limits(target);
    for case in SAM_CASES {
        let (reference, path) = sam_reference(case)?;
        let model = std::sync::Arc::new(sam_on(&path, &reference.config, target)?);
        let reference = std::sync::Arc::new(reference);
        let dir = fixtures_dir().join("sam").join(case);
        let mut goldens: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()?
            .into_iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("golden_"))
            .collect();
        goldens.sort();
        for gpath in goldens {
            let g = candle_core::safetensors::load(&gpath, &Device::Cpu)?;
            let image = image_of(&g["image"])?;
            let label =
                format!("{case} {}", gpath.file_stem().unwrap().to_string_lossy().trim_start_matches("golden_"));
            let rs = Predictor::new(reference.clone()).set_image(&image)?;
            let ds = target.run(|| Predictor::new(model.clone()).set_image(&image))?;
            let (re, de) = (rs.embedding_chw()?, ds.embedding_chw()?);
            let (c, h, w) = re.dims3()?;
            let rows = |t: &Tensor| -> Result<Tensor> { Ok(t.reshape((c, h * w))?.t()?.contiguous()?) };
            report.push(
                "sam",
                &label,
                "image embedding min cosine",
                min_row_cosine(&rows(&de)?, &rows(&re)?)?,
                lim.cosine,
                true,
            );
            let (ih, iw) = rs.original_size();
            let mut sets = prompt_sets(ih, iw);
            // A mask input: the point prompt's best low-res mask from the reference, fed to both.
            let first = rs.predict(&sets[0].1)?;
            let mut with_mask = sets[0].1.clone();
            with_mask.mask_input = Some(first.low_res_plane(0, first.best(0))?);
            with_mask.multimask = false;
            sets.push(("point+mask", with_mask));
            for (name, p) in sets {
                let r = rs.predict(&p)?;
                let d = target.run(|| ds.predict(&p))?;
                let l = format!("{label} {name}");
                let differ = r.masks.iter().zip(&d.masks).filter(|(a, b)| a != b).count() as f64 / r.masks.len() as f64;
                report.push("sam", &l, "mask pixels differing (fraction)", differ, lim.mask_fraction, false);
                let iou = r.iou.iter().zip(&d.iou).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
                report.push("sam", &l, "iou max abs diff", iou, lim.iou_abs, false);
                report.push(
                    "sam",
                    &l,
                    "low-res logits min cosine",
                    min_row_cosine(&d.low_res.flatten_from(1)?, &r.low_res.flatten_from(1)?)?,
                    lim.cosine,
                    true,
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// DINO training step
// ---------------------------------------------------------------------------------------------

/// A small DINO run (ViT depth 2, width 64, patch 8; head 128 / 32, 256 outputs) on 32/16-pixel
/// crops, 4 local ones, 4 images a step: fast on a CPU.
pub fn tiny_train_config() -> DinoTrainConfig {
    DinoTrainConfig {
        embed_dim: 64,
        depth: 2,
        num_heads: 4,
        patch_size: 8,
        out_dim: 256,
        head_hidden: 128,
        bottleneck: 32,
        global_size: 32,
        local_size: 16,
        local_crops: 4,
        batch_size: 4,
        ..DinoTrainConfig::preset("vit_tiny").expect("preset")
    }
}

/// DINO ViT-S/16 as `main_dino.py` trains it (2 global 224-pixel crops, 8 local 96-pixel
/// crops, the default head: 2048 / 256, 65536 outputs, drop path 0.1), `batch` images a step.
pub fn vit_small_train_config(batch: usize) -> DinoTrainConfig {
    DinoTrainConfig { batch_size: batch, ..DinoTrainConfig::preset("vit_small").expect("preset") }
}

/// Seeded crops `[B, S, S, 3]` of one step of `config` (2 global, then the local ones), on the
/// host.
pub fn crops(config: &DinoTrainConfig, seed: u64) -> Result<Vec<Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for i in 0..2 + config.local_crops {
        let s = if i < 2 { config.global_size } else { config.local_size } as usize;
        let n = config.batch_size * s * s * 3;
        // Uniform in [-2, 2): the range of normalised pixels.
        let v: Vec<f32> = (0..n).map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0).collect();
        out.push(Tensor::from_vec(v, (config.batch_size, s, s, 3), &Device::Cpu)?);
    }
    Ok(out)
}

/// Student, teacher, heads, loss and optimiser of one run, on one device.
pub struct TrainState {
    pub student: TrainVit,
    pub teacher: TrainVit,
    pub student_head: DinoHead,
    pub teacher_head: DinoHead,
    pub loss: DinoLoss,
    pub opt: AdamW,
    pub config: DinoTrainConfig,
}

fn moved(tensors: Vec<(String, Tensor)>, device: &Device) -> Result<std::collections::HashMap<String, Tensor>> {
    tensors.into_iter().map(|(n, t)| Ok((n, t.to_device(device)?))).collect()
}

impl TrainState {
    /// As `DinoTrainer::new` builds a run of `config` (seeded DINO init, teacher = copy of the
    /// student; its first step's learning rate and weight decay), with every tensor on `device`.
    pub fn new(config: &DinoTrainConfig, seed: u64, device: &Device) -> Result<Self> {
        let backbone = config.backbone();
        let init = TrainVit::init(backbone.clone(), seed)?;
        let sd = moved(init.state_dict()?, device)?;
        let student = TrainVit::from_tensors(backbone.clone(), &sd)?.with_drop_path(config.drop_path)?;
        let mut teacher = TrainVit::from_tensors(backbone, &sd)?;
        teacher.set_requires_grad(false);
        let student_head = DinoHead::new(config.head(), seed + 1, device)?;
        let teacher_cfg = DinoHeadConfig { norm_last_layer: true, ..config.head() };
        let mut teacher_head = DinoHead::new(teacher_cfg, seed + 1, device)?;
        teacher_head.load_state_dict(student_head.state_dict()?.iter().map(|(n, t)| (n.as_str(), t)))?;
        teacher_head.set_requires_grad(false);
        let params = Self::params_of(&student, &student_head);
        let mut opt = AdamW::new(&params, get_params_groups(&params), AdamWConfig::default())?;
        opt.set_dino_schedule(config.lr, config.weight_decay);
        let loss = DinoLoss::new(config.loss(), device)?;
        Ok(Self { student, teacher, student_head, teacher_head, loss, opt, config: config.clone() })
    }

    fn params_of(b: &TrainVit, h: &DinoHead) -> Vec<Param> {
        b.params().iter().chain(h.params()).cloned().collect()
    }

    /// One iteration of `train_one_epoch` (teacher forward on the globals, student forward on all
    /// crops with stochastic depth from `drop_seed`, loss, backward, clipping at 3, AdamW, EMA
    /// 0.996); returns the loss (a device scalar) and the gradients after clipping.
    pub fn step(&mut self, crops: &[Tensor], drop_seed: u64) -> Result<(Tensor, Grads)> {
        let (loss, grads) = self.forward_backward(crops, drop_seed)?;
        self.update(&grads)?;
        Ok((loss, grads))
    }

    /// The forward passes, the loss (and centre update), the backward pass and the clipping.
    pub fn forward_backward(&mut self, crops: &[Tensor], drop_seed: u64) -> Result<(Tensor, Grads)> {
        let teacher_out = multi_crop_forward(&self.teacher, &self.teacher_head, &crops[..2], None)?;
        let mut rng = ChaCha8Rng::seed_from_u64(drop_seed);
        let student_out = multi_crop_forward(&self.student, &self.student_head, crops, Some(&mut rng))?;
        let out = self.loss.forward(&student_out, &teacher_out, 0)?;
        let params = Self::params_of(&self.student, &self.student_head);
        let mut grads = Grads::from_backward(&params, &out.loss.backward()?);
        clip_gradients(&mut grads, 3.0)?;
        Ok((out.loss, grads))
    }

    /// AdamW with `grads`, then the teacher's EMA.
    pub fn update(&mut self, grads: &Grads) -> Result<()> {
        self.opt.step(grads)?;
        ema_update(self.teacher.params(), self.student.params(), 0.996)?;
        ema_update(self.teacher_head.params(), self.student_head.params(), 0.996)?;
        Ok(())
    }
}

pub fn train(report: &mut Report, target: &Target) -> Result<()> {
    if target.low_precision() {
        return Ok(()); // training runs in f32
    }
    let config = tiny_train_config();
    let crops = crops(&config, 7)?;
    let mut reference = TrainState::new(&config, 3, &Device::Cpu)?;
    let mut device = TrainState::new(&config, 3, &target.device)?;
    let dev_crops: Vec<Tensor> =
        crops.iter().map(|c| c.to_device(&target.device)).collect::<candle_core::Result<_>>()?;
    for step in 0..2 {
        let case = format!("tiny vit, step {step}");
        let (rl, rg) = reference.forward_backward(&crops, 11 + step)?;
        let (dl, dg) = target.run(|| device.forward_backward(&dev_crops, 11 + step))?;
        // Both optimisers take the reference's gradients: AdamW's first steps move each weight by
        // about ±lr whatever the gradient's size, so a gradient near 0 that differs in sign by
        // rounding would make the parameters differ by 2·lr; the same gradients test the update.
        reference.update(&rg)?;
        let mut moved = Grads::new();
        for (name, g) in rg.iter() {
            moved.insert(name, g.to_device(&target.device)?);
        }
        target.run(|| device.update(&moved))?;
        let (rl, dl) = (host(&rl)?[0] as f64, host(&dl)?[0] as f64);
        report.push("train", &case, "loss relative diff", ((dl - rl) / rl).abs(), 1e-3, false);
        anyhow::ensure!(rg.len() == dg.len(), "{} gradients on the CPU, {} on the device", rg.len(), dg.len());
        let mut worst = (0.0f64, String::new());
        for (name, g) in rg.iter() {
            let d = dg.get(name).with_context(|| format!("no device gradient for {name}"))?;
            let e = rel_l2(d, g)?;
            if e > worst.0 || e.is_nan() {
                worst = (e, name.to_string());
            }
        }
        report.push("train", &case, &format!("gradients max relative L2 diff ({})", worst.1), worst.0, 1e-3, false);
    }
    // After two optimiser and EMA updates the parameters still agree.
    let mut worst = 0.0f64;
    for (r, d) in reference
        .student
        .params()
        .iter()
        .zip(device.student.params())
        .chain(reference.teacher_head.params().iter().zip(device.teacher_head.params()))
    {
        worst = worst.max(rel_l2(&d.var().as_detached_tensor(), &r.var().as_detached_tensor())?);
    }
    report.push("train", "tiny vit, after 2 steps", "parameters max relative L2 diff", worst, 1e-4, false);
    Ok(())
}

/// Every family, each recorded separately when it fails to run.
pub fn all(target: &Target) -> Report {
    let mut report = Report::default();
    report.attempt("clip", |r| clip(r, target));
    report.attempt("dino", |r| dino(r, target));
    report.attempt("sam", |r| sam(r, target));
    report.attempt("train", |r| train(r, target));
    report
}
