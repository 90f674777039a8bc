//! The two towers and the learned temperature: OpenAI `clip/model.py::CLIP`.

use candle_core::{DType, Device, Tensor, D};

use super::config::ClipConfig;
use super::resnet::ModifiedResNet;
use super::text::TextTransformer;
use super::transformer::Trace;
use super::vision::VisionTransformer;
use crate::weights::TensorStore;
use crate::Result;

/// CLIP's image encoder: "a ResNet (CNN) or a Vision Transformer".
#[derive(Debug, Clone)]
enum ImageTower {
    Vit(Box<VisionTransformer>),
    ResNet(Box<ModifiedResNet>),
}

impl ImageTower {
    fn dtype(&self) -> DType {
        match self {
            Self::Vit(v) => v.dtype(),
            Self::ResNet(r) => r.dtype(),
        }
    }

    fn forward(&self, pixels: &Tensor, trace: Option<&mut Trace>) -> Result<Tensor> {
        match self {
            Self::Vit(v) => v.forward(pixels, trace),
            Self::ResNet(r) => r.forward(pixels, trace),
        }
    }
}

/// CLIP's two towers and the logit scale (`CLIP` / `CLIPModel`).
#[derive(Debug, Clone)]
pub struct ClipModel {
    cfg: ClipConfig,
    visual: ImageTower,
    text: TextTransformer,
    /// `logit_scale` as stored: the log of the inverse temperature.
    logit_scale: f32,
    device: Device,
}

impl ClipModel {
    /// Builds the model from canonically named tensors (see [`crate::weights::clip`]).
    pub fn from_store(cfg: &ClipConfig, store: &TensorStore) -> Result<Self> {
        let vb = store.root();
        let logit_scale = vb.get(&[], "logit_scale")?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        Ok(Self {
            cfg: cfg.clone(),
            visual: match cfg.vision.resnet {
                Some(_) => {
                    ImageTower::ResNet(Box::new(ModifiedResNet::load(&vb.pp("visual"), &cfg.vision, cfg.embed_dim)?))
                }
                None => {
                    ImageTower::Vit(Box::new(VisionTransformer::load(&vb.pp("visual"), &cfg.vision, cfg.embed_dim)?))
                }
            },
            text: TextTransformer::load(&vb, &cfg.text, cfg.embed_dim)?,
            logit_scale,
            device: store.device().clone(),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `exp(logit_scale)`, the factor on cosine similarities.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale.exp()
    }

    /// The dtype the weights were loaded in (activations run in it; embeddings come out f32).
    pub fn dtype(&self) -> DType {
        self.visual.dtype()
    }

    /// `pixels` (on any device, any float dtype) moves to the model's device and dtype first.
    ///
    /// # Shapes
    /// `pixels: [B, 3, S, S] -> [B, D]` f32, not normalised.
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        let pixels = pixels.to_device(&self.device)?.to_dtype(self.dtype())?;
        Ok(self.visual.forward(&pixels, None)?.to_dtype(DType::F32)?)
    }

    /// Token ids (each `context_length` long, as [`super::tokenizer::ClipTokenizer::tokenize`]
    /// makes them) to embeddings `[B, D]` f32, not normalised.
    pub fn encode_text(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        Ok(self.text.forward(ids, true, None, &self.device)?.to_dtype(DType::F32)?)
    }

    /// Like [`Self::encode_image`], recording every intermediate named as the parity fixtures are.
    pub fn encode_image_traced(&self, pixels: &Tensor, trace: &mut Trace) -> Result<Tensor> {
        let pixels = pixels.to_device(&self.device)?.to_dtype(self.dtype())?;
        self.visual.forward(&pixels, Some(trace))
    }

    /// Like [`Self::encode_text`] at full length, recording every intermediate.
    pub fn encode_text_traced(&self, ids: &[Vec<u32>], trace: &mut Trace) -> Result<Tensor> {
        self.text.forward(ids, false, Some(trace), &self.device)
    }

    /// `logits_per_image = exp(logit_scale) · normalize(img) · normalize(txt)ᵀ`, as the
    /// reference `forward` returns it.
    ///
    /// # Shapes
    /// `image_embeds: [Bi, D], text_embeds: [Bt, D] -> [Bi, Bt]`
    pub fn logits(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
        let i = l2_normalize(image_embeds)?;
        let t = l2_normalize(text_embeds)?;
        Ok((i.matmul(&t.t()?)? * self.logit_scale() as f64)?)
    }
}

/// Divides each row by its L2 norm (`x / x.norm(dim=-1, keepdim=True)`).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}
