//! BatchNorm for training, as `nn.BatchNorm2d` runs it: in training mode each call normalises
//! by its own batch's statistics (biased variance) and moves the running statistics by momentum
//! 0.1 (towards the unbiased variance); in evaluation mode it normalises by the running ones.
//! The running statistics belong to one network and are part of its state dict
//! (`<bn>.running_mean`, `<bn>.running_var`); what DINO's ResNet and CLIP's ModifiedResNet share.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// `nn.BatchNorm2d`'s momentum and ε.
const MOMENTUM: f64 = 0.1;
const EPS: f64 = 1e-5;

/// The running statistics of a network's BatchNorm layers, updated by its training-mode calls.
pub struct BatchNorms {
    running: Mutex<HashMap<String, Tensor>>,
}

impl std::fmt::Debug for BatchNorms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.sort();
        f.debug_struct("BatchNorms").field("running", &names).finish()
    }
}

impl BatchNorms {
    /// Whether a state-dict key is a running statistic (or torch's `num_batches_tracked`
    /// counter, which is read past: nothing here depends on it).
    pub fn is_buffer(name: &str) -> bool {
        name.ends_with(".running_mean") || name.ends_with(".running_var") || name.ends_with(".num_batches_tracked")
    }

    /// The layers `(name, channels)`, their statistics from `tensors` where present, else torch's
    /// initial 0 and 1.
    pub fn new(
        layers: impl IntoIterator<Item = (String, usize)>,
        tensors: &HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let mut running = HashMap::new();
        for (bn, channels) in layers {
            for (stat, init) in [("running_mean", 0f32), ("running_var", 1f32)] {
                let key = format!("{bn}.{stat}");
                let t = match tensors.get(&key) {
                    Some(t) if t.dims() != [channels] => {
                        return Err(Error::arg(
                            "tensors",
                            format!("`{key}` has shape {:?}, expected [{channels}]", t.dims()),
                        ))
                    }
                    Some(t) => t.to_dtype(DType::F32)?.to_device(device)?,
                    None => Tensor::full(init, channels, device)?,
                };
                running.insert(key, t);
            }
        }
        Ok(Self { running: Mutex::new(running) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tensor>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// BatchNorm of `x` `[B, C, H, W]` with affine `gamma`, `beta` `[C]`: with `train`, by the
    /// batch's statistics, moving the running ones; otherwise by the running ones.
    pub fn forward(&self, x: &Tensor, bn: &str, gamma: &Tensor, beta: &Tensor, train: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let shape = (1, c, 1, 1);
        let (mean, var) = if train {
            let n = (b * h * w) as f64;
            let (y, mean, var) = super::conv::batch_norm_train(x, gamma, beta, EPS)?;
            let mut running = self.lock();
            let mut update = |key: String, batch: &Tensor| -> Result<()> {
                let old = running.get(&key).ok_or_else(|| Error::arg("bn", format!("no `{key}`")))?;
                let new = ((old * (1.0 - MOMENTUM))? + (batch * MOMENTUM)?)?;
                running.insert(key, new);
                Ok(())
            };
            update(format!("{bn}.running_mean"), &mean)?;
            let unbiased = if n > 1.0 { (&var * (n / (n - 1.0)))? } else { var };
            update(format!("{bn}.running_var"), &unbiased)?;
            return Ok(y);
        } else {
            let running = self.lock();
            let get = |k: &str| -> Result<Tensor> {
                Ok(running
                    .get(&format!("{bn}.{k}"))
                    .ok_or_else(|| Error::arg("bn", format!("no {bn}.{k}")))?
                    .reshape(shape)?)
            };
            (get("running_mean")?, get("running_var")?)
        };
        let scale = (var + EPS)?.sqrt()?.recip()?.broadcast_mul(&gamma.reshape(shape)?)?;
        Ok(x.broadcast_sub(&mean)?.broadcast_mul(&scale)?.broadcast_add(&beta.reshape(shape)?)?)
    }

    /// The statistics now (tensors are shared, so this is cheap): what a failed step puts back
    /// with [`restore`](Self::restore).
    pub fn snapshot(&self) -> HashMap<String, Tensor> {
        self.lock().clone()
    }

    /// Puts back statistics taken with [`snapshot`](Self::snapshot).
    pub fn restore(&self, stats: HashMap<String, Tensor>) {
        *self.lock() = stats;
    }

    /// An independent copy (an evaluation model's).
    pub fn copy(&self) -> Self {
        Self { running: Mutex::new(self.snapshot()) }
    }

    /// Copies of the statistics, by name.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> =
            self.lock().iter().map(|(k, t)| (k.clone(), t.copy().unwrap_or(t.clone()))).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Overwrites one statistic (`num_batches_tracked` is passed over); unknown names and other
    /// shapes are refused.
    pub fn load(&self, name: &str, t: &Tensor) -> Result<()> {
        if name.ends_with(".num_batches_tracked") {
            return Ok(());
        }
        let mut running = self.lock();
        let slot = running.get_mut(name).ok_or_else(|| Error::arg("tensors", format!("unexpected `{name}`")))?;
        if slot.dims() != t.dims() {
            return Err(Error::arg(
                "tensors",
                format!("`{name}` has shape {:?}, expected {:?}", t.dims(), slot.dims()),
            ));
        }
        *slot = t.to_dtype(DType::F32)?.to_device(slot.device())?;
        Ok(())
    }
}
