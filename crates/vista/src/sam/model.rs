//! `Sam`: image encoder, prompt encoder and mask decoder, loaded from canonical (official
//! `segment_anything`) tensor names.

use candle_core::Tensor;

use super::config::{EncoderConfig, SamConfig};
use super::image_encoder::{Taps, VitEncoder};
use super::mask_decoder::{DensePrompt, MaskDecoder, PreparedImage};
use super::prompt_encoder::PromptEncoder;
use super::tiny_vit::TinyVitEncoder;
use crate::image::RgbImage;
use crate::weights::Vb;
use crate::Result;

/// SAM's image encoder, by kind.
pub enum ImageEncoder {
    /// SAM's ViT (`ImageEncoderViT`).
    Vit(VitEncoder),
    /// MobileSAM's TinyViT.
    TinyVit(TinyVitEncoder),
}

/// Segment Anything: image encoder, prompt encoder and mask decoder (`Sam`).
pub struct Sam {
    /// The architecture.
    pub config: SamConfig,
    encoder: ImageEncoder,
    pub(crate) prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    /// `prompt_encoder.get_dense_pe()`, channels-last `[h·w, C]`, computed once.
    dense_pe: Tensor,
}

impl Sam {
    /// Reads the model below `vb` (`image_encoder`, `prompt_encoder`, `mask_decoder`).
    pub fn load(vb: &Vb, config: SamConfig) -> Result<Self> {
        let enc = vb.pp("image_encoder");
        let encoder = match &config.encoder {
            EncoderConfig::Vit(c) => ImageEncoder::Vit(VitEncoder::load(&enc, c)?),
            EncoderConfig::TinyVit(c) => ImageEncoder::TinyVit(TinyVitEncoder::load(&enc, c)?),
        };
        let prompt_encoder = PromptEncoder::load(
            &vb.pp("prompt_encoder"),
            &config.decoder,
            config.encoder.grid(),
            config.encoder.image_size(),
        )?;
        let mask_decoder = MaskDecoder::load(&vb.pp("mask_decoder"), &config.decoder)?;
        let dense_pe = prompt_encoder.dense_pe()?;
        Ok(Self { config, encoder, prompt_encoder, mask_decoder, dense_pe })
    }

    /// Side of the square encoder input (1024 for the releases).
    pub fn image_size(&self) -> usize {
        self.config.encoder.image_size()
    }

    /// `(h, w)` of the image embedding (64×64 for the releases).
    pub fn grid(&self) -> (usize, usize) {
        self.prompt_encoder.grid()
    }

    /// Channels of the image embedding (256 for the releases).
    pub fn embed_dim(&self) -> usize {
        self.prompt_encoder.dim()
    }

    /// The encoder's input for an image and the resized image's `(h, w)` inside it.
    ///
    /// # Shapes
    /// -> `[1, S, S, 3]` channels-last
    pub fn preprocess(&self, img: &RgbImage) -> Result<(Tensor, (usize, usize))> {
        super::transforms::pixel_input(img, self.image_size(), self.config.pixel_mean, self.config.pixel_std)
    }

    /// The device and dtype of the weights (and of the image embeddings).
    pub fn device(&self) -> &candle_core::Device {
        self.prompt_encoder.device()
    }

    /// The dtype of the weights (and of the activations).
    pub fn dtype(&self) -> candle_core::DType {
        self.prompt_encoder.dtype()
    }

    /// Runs the image encoder, optionally recording intermediate activations. `pixels` (any
    /// device, any float dtype) moves to the model's device and dtype first.
    ///
    /// # Shapes
    /// `[B, S, S, 3]` -> `[B, h, w, C]` channels-last
    pub fn encode(&self, pixels: &Tensor, taps: Option<&mut Taps>) -> Result<Tensor> {
        let pixels = pixels.to_device(self.device())?.to_dtype(self.dtype())?;
        match &self.encoder {
            ImageEncoder::Vit(e) => e.forward(&pixels, taps),
            ImageEncoder::TinyVit(e) => e.forward(&pixels, taps),
        }
    }

    /// The prompt encoder.
    pub fn prompt_encoder(&self) -> &PromptEncoder {
        &self.prompt_encoder
    }

    /// `get_dense_pe()`, channels-last `[h·w, C]`.
    pub fn dense_pe(&self) -> &Tensor {
        &self.dense_pe
    }

    /// The mask decoder on one image embedding for a batch of prompt sets; every mask output.
    ///
    /// # Shapes
    /// `embedding: [h·w, C]`, `sparse: [B, T, C]`, `masks: [B, h, w, C]` ->
    /// (`[B, M, 4h, 4w]`, `[B, M]`)
    pub fn decode(&self, embedding: &Tensor, sparse: &Tensor, masks: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let dense = match masks {
            Some(m) => DensePrompt::Masks(m),
            None => DensePrompt::NoMask(self.prompt_encoder.no_mask_tensor()),
        };
        self.mask_decoder.forward(embedding, self.grid(), &self.dense_pe, sparse, dense)
    }

    /// The decoder's work on `embedding` that no prompt without a mask changes, for
    /// [`Self::decode_prepared`]: made once per image, reused by every such prompt.
    ///
    /// # Shapes
    /// `embedding: [h·w, C]`
    pub fn prepare(&self, embedding: &Tensor) -> Result<PreparedImage> {
        self.mask_decoder.prepare(embedding, &self.dense_pe, self.prompt_encoder.no_mask_tensor())
    }

    /// [`Self::decode`] without a mask prompt, from the image's [`Self::prepare`].
    ///
    /// # Shapes
    /// `sparse: [B, T, C]` -> (`[B, M, 4h, 4w]`, `[B, M]`)
    pub fn decode_prepared(&self, prepared: &PreparedImage, sparse: &Tensor) -> Result<(Tensor, Tensor)> {
        self.mask_decoder.forward_prepared(prepared, self.grid(), &self.dense_pe, sparse)
    }
}
