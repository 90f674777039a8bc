//! The transformer feed-forward block: Linear → activation → Linear.

use candle_core::{Module, Tensor};

use super::{Activation, Linear};
use crate::weights::Vb;
use crate::Result;

#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    act: Activation,
    fc2: Linear,
}

impl Mlp {
    /// Loads `{fc1}` `[hidden, dim]` and `{fc2}` `[dim, hidden]` below `vb`, with the names the
    /// checkpoint family uses for the two layers (`c_fc`/`c_proj` in CLIP, `fc1`/`fc2` in timm).
    pub fn load(vb: &Vb, names: (&str, &str), dim: usize, hidden: usize, act: Activation) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load(&vb.pp(names.0), dim, hidden, true)?,
            act,
            fc2: Linear::load(&vb.pp(names.1), hidden, dim, true)?,
        })
    }
}

impl Module for Mlp {
    /// # Shapes
    /// `[..., dim] -> [..., dim]`
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2.forward(&self.act.forward(&self.fc1.forward(x)?)?)
    }
}
