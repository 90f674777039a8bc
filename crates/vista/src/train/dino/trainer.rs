//! [`DinoTrainer`]: the networks, optimiser, loss and schedules of a DINO run, and one
//! iteration of `main_dino.py`'s `train_one_epoch` ([`DinoTrainer::step`]).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand_chacha::ChaCha8Rng;

use super::config::{DinoTrainConfig, OptimizerKind};
use super::monitor::StepMetrics;
use super::schedule::DinoSchedules;
use super::{
    cancel_gradients_last_layer, clip_gradients, ema_update, get_params_groups, multi_crop_forward, AdamW, AdamWConfig,
    DinoHead, DinoHeadConfig, DinoLoss, Grads, Param, TrainBackbone, TrainResNet, TrainVit,
};
use crate::dino::pipeline::DinoPipeline;
use crate::dino::preprocess::DinoPreprocess;
use crate::dino::{Backbone, DinoVit};
use crate::image::augment::sample_rng;
use crate::train::momentum::{Momentum, MomentumRule};
use crate::weights::dino::DinoFamily;
use crate::weights::TensorStore;
use crate::{Error, Result};

/// The optimiser of a run (`--optimizer`).
pub(super) enum Optimizer {
    AdamW(AdamW),
    Momentum(Momentum),
}

impl Optimizer {
    fn set_dino_schedule(&mut self, lr: f64, weight_decay: f64) {
        match self {
            Self::AdamW(o) => o.set_dino_schedule(lr, weight_decay),
            Self::Momentum(o) => o.set_dino_schedule(lr, weight_decay),
        }
    }

    fn step(&mut self, grads: &Grads) -> Result<()> {
        match self {
            Self::AdamW(o) => o.step(grads),
            Self::Momentum(o) => o.step(grads),
        }
    }
}

/// The networks, optimiser and loss state of a run.
pub struct DinoTrainer {
    /// The run's configuration.
    pub config: DinoTrainConfig,
    pub(super) student: TrainBackbone,
    pub(super) student_head: DinoHead,
    pub(super) teacher: TrainBackbone,
    pub(super) teacher_head: DinoHead,
    pub(super) loss: DinoLoss,
    pub(super) opt: Optimizer,
    pub(super) schedules: DinoSchedules,
    pub(super) niter_per_ep: usize,
    /// Where the networks live and the steps run.
    pub(super) device: Device,
    /// Epochs completed.
    pub epoch: usize,
    /// Global iterations completed.
    pub iteration: usize,
}

impl DinoTrainer {
    /// A fresh run: the student initialised as DINO does (seeded), the teacher a copy of it
    /// (`teacher_without_ddp.load_state_dict(student.module.state_dict())`), no gradient for
    /// the teacher. `niter_per_ep` is the number of full batches per epoch. The networks,
    /// optimiser state and loss live on `device` (the initialisation is drawn on the CPU, so it
    /// is the same on every device).
    pub fn new(config: DinoTrainConfig, niter_per_ep: usize, device: &Device) -> Result<Self> {
        config.validate()?;
        if niter_per_ep == 0 {
            return Err(Error::arg(
                "batch",
                format!("fewer images than one batch of {}: nothing to train on", config.batch_size),
            ));
        }
        let (student, mut teacher) = match config.resnet {
            Some(dims) => {
                // The teacher starts as a copy of the student, running statistics included.
                let init: std::collections::HashMap<_, _> =
                    TrainResNet::init(dims, config.seed, &Device::Cpu)?.state_dict()?.into_iter().collect();
                (
                    TrainBackbone::ResNet(TrainResNet::from_tensors(dims, &init, device)?),
                    TrainBackbone::ResNet(TrainResNet::from_tensors(dims, &init, device)?),
                )
            }
            None => {
                let backbone = config.backbone();
                let init = TrainVit::init(backbone.clone(), config.seed)?.state_dict()?;
                let on_device = init
                    .into_iter()
                    .map(|(n, t)| Ok((n, t.to_device(device)?)))
                    .collect::<Result<std::collections::HashMap<_, _>>>()?;
                let student = TrainVit::from_tensors(backbone.clone(), &on_device)?.with_drop_path(config.drop_path)?;
                (TrainBackbone::Vit(student), TrainBackbone::Vit(TrainVit::from_tensors(backbone, &on_device)?))
            }
        };
        teacher.set_requires_grad(false);
        let student_head = DinoHead::new(config.head(), config.seed.wrapping_add(1), device)?;
        // main_dino.py builds the teacher head with DINOHead's default norm_last_layer (true),
        // then overwrites every tensor with the student's.
        let teacher_cfg = DinoHeadConfig { norm_last_layer: true, ..config.head() };
        let mut teacher_head = DinoHead::new(teacher_cfg, config.seed.wrapping_add(1), device)?;
        teacher_head.load_state_dict(student_head.state_dict()?.iter().map(|(n, t)| (n.as_str(), t)))?;
        teacher_head.set_requires_grad(false);
        let params: Vec<Param> = student.params().iter().chain(student_head.params()).cloned().collect();
        let groups = get_params_groups(&params);
        let opt = match config.optimizer {
            OptimizerKind::Adamw => Optimizer::AdamW(AdamW::new(&params, groups, AdamWConfig::default())?),
            OptimizerKind::Sgd => Optimizer::Momentum(Momentum::new(&params, groups, MomentumRule::Sgd)?),
            OptimizerKind::Lars => Optimizer::Momentum(Momentum::new(&params, groups, MomentumRule::Lars)?),
        };
        let loss = DinoLoss::new(config.loss(), device)?;
        let schedules = DinoSchedules::new(&config, niter_per_ep)?;
        Ok(Self {
            config,
            device: device.clone(),
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

    /// The batch epoch `epoch` starts at: 0, or past the batches a checkpoint written within
    /// that epoch already holds.
    pub fn first_batch_of(&self, epoch: usize) -> usize {
        self.iteration.saturating_sub(epoch * self.niter_per_ep).min(self.niter_per_ep)
    }

    /// Full batches per epoch.
    pub fn niter_per_ep(&self) -> usize {
        self.niter_per_ep
    }

    /// The per-iteration schedules of the run.
    pub fn schedules(&self) -> &DinoSchedules {
        &self.schedules
    }

    /// The student backbone.
    pub fn student(&self) -> &TrainBackbone {
        &self.student
    }

    /// The teacher backbone.
    pub fn teacher(&self) -> &TrainBackbone {
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
        let crops = &crops.iter().map(|c| c.to_device(&self.device)).collect::<candle_core::Result<Vec<_>>>()?;
        // A forward moves the BatchNorms' running statistics (a ResNet's, the head's with
        // use_bn_in_head): kept to put back if the step fails.
        let (student_state, teacher_state) = (self.student.forward_state(), self.teacher.forward_state());
        let head_states = (self.student_head.running_stats(), self.teacher_head.running_stats());
        let teacher_output = multi_crop_forward(&self.teacher, &self.teacher_head, &crops[..2], None)?;
        let mut drop_rng: ChaCha8Rng = sample_rng(self.config.seed, it as u64, u64::MAX - 1);
        let student_output = multi_crop_forward(&self.student, &self.student_head, crops, Some(&mut drop_rng))?;
        let center_before = self.loss.center().clone();
        let out = self.loss.forward(&student_output, &teacher_output, epoch)?;
        let loss = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !loss.is_finite() {
            self.loss.set_center(&center_before)?;
            self.student.restore_forward_state(student_state);
            self.teacher.restore_forward_state(teacher_state);
            self.student_head.set_running_stats(head_states.0);
            self.teacher_head.set_running_stats(head_states.1);
            return Err(Error::NonFiniteLoss { loss, epoch, iteration: it, kept: None });
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

    /// The teacher backbone (what DINO evaluates and releases), official names.
    pub fn teacher_backbone(&self) -> Result<Vec<(String, Tensor)>> {
        self.teacher.state_dict()
    }

    /// An inference [`DinoPipeline`] over the teacher backbone, with the evaluation
    /// preprocessing for images of the training size (shortest side to the global crop side,
    /// centre crop of it).
    pub fn teacher_pipeline(&self) -> Result<DinoPipeline> {
        let mut store = TensorStore::new("<teacher>", &self.device, DType::F32);
        store.insert_as_named(self.teacher_backbone()?.into_iter().collect(), |_| false);
        let mut p = match self.config.resnet {
            Some(_) => {
                let loaded = crate::weights::Loaded::build(&store, DinoFamily::Official, |s| {
                    Ok(Backbone::ResNet(crate::dino::resnet::ResNet::load(&s.root())?))
                })?;
                DinoPipeline::from_loaded(loaded)
            }
            None => DinoPipeline::new(crate::dino::Loaded::build(&store, DinoFamily::Official, |s| {
                DinoVit::load(&s.root(), self.config.backbone())
            })?),
        };
        p.preprocess = DinoPreprocess::eval_sized(self.config.global_size, self.config.global_size);
        Ok(p)
    }
}
