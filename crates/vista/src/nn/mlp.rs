//! The transformer feed-forward block: Linear → activation → Linear.

use candle_core::{Module, Tensor};

use super::{Activation, Linear};

use crate::weights::Vb;
use crate::Result;

/// Two linear layers with an activation between them.
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
        let h = self.fc1.forward_act(x, Some(self.act)).map_err(candle_core::Error::wrap)?;
        self.fc2.forward_act(&h, None).map_err(candle_core::Error::wrap)
    }
}
