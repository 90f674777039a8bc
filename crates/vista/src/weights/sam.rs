//! Segment Anything checkpoint families and their mapping onto the canonical names.
//!
//! Canonical naming is the official `segment_anything` one, as in `sam_vit_b_01ec64.pth`
//! (`image_encoder.blocks.N.attn.rel_pos_h`, `prompt_encoder.pe_layer.…`,
//! `mask_decoder.transformer.layers.N.…`); MobileSAM's `mobile_sam.pt` uses it too, with
//! TinyViT's names under `image_encoder.`. Hugging Face transformers' `SamModel`
//! (`facebook/sam-vit-base|large|huge`) renames nearly everything; `HF_RENAMES` undoes it.

use std::collections::HashMap;

use candle_core::Tensor;

use super::store::{rename_all, unrename_all, Family, TensorStore};
use crate::Result;

/// Which naming a SAM checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SamFamily {
    /// `segment_anything` / MobileSAM state dicts.
    Official,
    /// transformers `SamModel`: `vision_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`.
    HuggingFace,
}

/// Hugging Face → canonical renames, applied in order to every name (substring replacement):
/// specific names before the generic block-norm renames they contain.
const HF_RENAMES: &[(&str, &str)] = &[
    ("vision_encoder.", "image_encoder."),
    ("image_encoder.patch_embed.projection.", "image_encoder.patch_embed.proj."),
    ("image_encoder.layers.", "image_encoder.blocks."),
    ("image_encoder.neck.conv1.", "image_encoder.neck.0."),
    ("image_encoder.neck.layer_norm1.", "image_encoder.neck.1."),
    ("image_encoder.neck.conv2.", "image_encoder.neck.2."),
    ("image_encoder.neck.layer_norm2.", "image_encoder.neck.3."),
    ("shared_image_embedding.positional_embedding", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    ("prompt_encoder.point_embed.", "prompt_encoder.point_embeddings."),
    ("prompt_encoder.mask_embed.conv1.", "prompt_encoder.mask_downscaling.0."),
    ("prompt_encoder.mask_embed.layer_norm1.", "prompt_encoder.mask_downscaling.1."),
    ("prompt_encoder.mask_embed.conv2.", "prompt_encoder.mask_downscaling.3."),
    ("prompt_encoder.mask_embed.layer_norm2.", "prompt_encoder.mask_downscaling.4."),
    ("prompt_encoder.mask_embed.conv3.", "prompt_encoder.mask_downscaling.6."),
    ("mask_decoder.transformer.layer_norm_final_attn.", "mask_decoder.transformer.norm_final_attn."),
    ("mask_decoder.upscale_conv1.", "mask_decoder.output_upscaling.0."),
    ("mask_decoder.upscale_layer_norm.", "mask_decoder.output_upscaling.1."),
    ("mask_decoder.upscale_conv2.", "mask_decoder.output_upscaling.3."),
    // Generic block norms last, after the specific names that contain them.
    (".layer_norm1.", ".norm1."),
    (".layer_norm2.", ".norm2."),
    (".layer_norm3.", ".norm3."),
    (".layer_norm4.", ".norm4."),
];

/// The MLP heads whose layers transformers names `proj_in`, `layers.K`, `proj_out` where the
/// reference has one list `layers.0..depth`.
fn mlp_stem(name: &str) -> Option<&str> {
    for marker in [".output_hypernetworks_mlps.", ".iou_prediction_head."] {
        if let Some(i) = name.find(marker) {
            let rest = &name[i + marker.len()..];
            let end = if marker.contains("hypernetworks") {
                i + marker.len() + rest.find('.')?
            } else {
                i + marker.len() - 1
            };
            return Some(&name[..end]);
        }
    }
    None
}

/// The canonical name of a transformers `SamModel` tensor; `mlp_depth` gives the number of
/// linear layers of each MLP head (keyed by its HF stem).
fn rename_hf(name: &str, mlp_depth: &HashMap<String, usize>) -> String {
    let mut out = name.to_string();
    if let Some(stem) = mlp_stem(name) {
        let rest = &name[stem.len() + 1..];
        let depth = mlp_depth.get(stem).copied().unwrap_or(3);
        let (index, leaf) = if let Some(leaf) = rest.strip_prefix("proj_in.") {
            (0, leaf)
        } else if let Some(leaf) = rest.strip_prefix("proj_out.") {
            (depth - 1, leaf)
        } else if let Some((k, leaf)) = rest.strip_prefix("layers.").and_then(|r| r.split_once('.')) {
            (k.parse::<usize>().map(|k| k + 1).unwrap_or(usize::MAX), leaf)
        } else {
            (usize::MAX, rest)
        };
        if index != usize::MAX {
            out = format!("{stem}.layers.{index}.{leaf}");
        }
    }
    rename_all(&out, HF_RENAMES)
}

/// How a transformers checkpoint spells a canonical name (for missing-tensor errors).
fn canonical_to_hf(name: &str) -> String {
    unrename_all(name, HF_RENAMES)
}

impl Family for SamFamily {
    const CANONICAL: Self = SamFamily::Official;
    const NOT_FOUND: &'static str = "not a Segment Anything checkpoint: found neither `image_encoder.*` (official, \
                                     MobileSAM) nor `vision_encoder.*` (Hugging Face) tensors";

    fn detect<'a>(names: impl IntoIterator<Item = &'a String>) -> Option<Self> {
        let mut decoder = false;
        for n in names {
            if n.starts_with("vision_encoder.") || n.starts_with("shared_image_embedding.") {
                return Some(SamFamily::HuggingFace);
            }
            if n.starts_with("image_encoder.") {
                return Some(SamFamily::Official);
            }
            decoder |= n.starts_with("mask_decoder.");
        }
        decoder.then_some(SamFamily::Official)
    }

    /// BatchNorm counters, MobileSAM's unused TinyViT classifier.
    fn is_ignored(name: &str) -> bool {
        name.ends_with("num_batches_tracked")
            || name.starts_with("image_encoder.norm_head.")
            || name.starts_with("image_encoder.head.")
            || name.ends_with("attention_bias_idxs")
    }

    fn file_name(canonical: &str) -> String {
        canonical_to_hf(canonical)
    }

    fn map(tensors: HashMap<String, Tensor>, store: &mut TensorStore) -> Result<()> {
        // Depth of each MLP head: proj_in + layers + proj_out.
        let mut mlp_depth: HashMap<String, usize> = HashMap::new();
        for name in tensors.keys().filter(|n| n.ends_with(".weight")) {
            if let Some(stem) = mlp_stem(name) {
                *mlp_depth.entry(stem.to_string()).or_default() += 1;
            }
        }
        // `prompt_encoder.shared_embedding.positional_embedding` is a tied copy of
        // `shared_image_embedding.positional_embedding` (not written by `save_pretrained`, but
        // present in some exports).
        let ignored = |n: &str| Self::is_ignored(n) || n == "prompt_encoder.shared_embedding.positional_embedding";
        store.insert_renamed(tensors, ignored, |n| rename_hf(n, &mlp_depth));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_mlp_heads_shift_their_middle_layers() {
        let depth: HashMap<String, usize> = [
            ("mask_decoder.output_hypernetworks_mlps.2".to_string(), 3),
            ("mask_decoder.iou_prediction_head".to_string(), 3),
        ]
        .into();
        let r = |n: &str| rename_hf(n, &depth);
        assert_eq!(
            r("mask_decoder.output_hypernetworks_mlps.2.proj_in.weight"),
            "mask_decoder.output_hypernetworks_mlps.2.layers.0.weight"
        );
        assert_eq!(
            r("mask_decoder.output_hypernetworks_mlps.2.layers.0.bias"),
            "mask_decoder.output_hypernetworks_mlps.2.layers.1.bias"
        );
        assert_eq!(
            r("mask_decoder.iou_prediction_head.proj_out.weight"),
            "mask_decoder.iou_prediction_head.layers.2.weight"
        );
        assert_eq!(
            r("mask_decoder.transformer.layers.1.layer_norm3.bias"),
            "mask_decoder.transformer.layers.1.norm3.bias"
        );
        assert_eq!(r("vision_encoder.neck.layer_norm2.weight"), "image_encoder.neck.3.weight");
        assert_eq!(
            r("shared_image_embedding.positional_embedding"),
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
        );
    }
}
