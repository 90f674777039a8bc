//! Segment Anything checkpoint families and their mapping onto the canonical names.
//!
//! Canonical naming is the official `segment_anything` one, as in `sam_vit_b_01ec64.pth`
//! (`image_encoder.blocks.N.attn.rel_pos_h`, `prompt_encoder.pe_layer.…`,
//! `mask_decoder.transformer.layers.N.…`); MobileSAM's `mobile_sam.pt` uses it too, with
//! TinyViT's names under `image_encoder.`. Hugging Face transformers' `SamModel`
//! (`facebook/sam-vit-base|large|huge`) renames nearly everything; `HF_RENAMES` undoes it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::store::TensorStore;
use crate::{Error, Result};

/// Which naming a SAM checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SamFamily {
    /// `segment_anything` / MobileSAM state dicts.
    Official,
    /// transformers `SamModel`: `vision_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`.
    HuggingFace,
}

/// Guesses the family from the tensor names.
pub fn detect<'a>(names: impl IntoIterator<Item = &'a String>) -> Option<SamFamily> {
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

/// Entries that hold no SAM weights: BatchNorm counters, MobileSAM's unused TinyViT classifier.
fn is_ignored(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
        || name.starts_with("image_encoder.norm_head.")
        || name.starts_with("image_encoder.head.")
        || name.ends_with("attention_bias_idxs")
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
    for (hf, canonical) in HF_RENAMES {
        out = out.replace(hf, canonical);
    }
    out
}

/// How a transformers checkpoint spells a canonical name (for missing-tensor errors).
fn canonical_to_hf(name: &str) -> String {
    let mut out = name.to_string();
    for (hf, canonical) in HF_RENAMES.iter().rev() {
        out = out.replace(canonical, hf);
    }
    out
}

/// Puts a SAM checkpoint's tensors under canonical names.
pub fn into_store(
    path: &Path,
    tensors: HashMap<String, Tensor>,
    device: &Device,
    dtype: DType,
) -> Result<(TensorStore, SamFamily)> {
    let tensors: HashMap<String, Tensor> =
        tensors.into_iter().map(|(k, v)| (k.strip_prefix("module.").map(str::to_string).unwrap_or(k), v)).collect();
    let family = detect(tensors.keys()).ok_or_else(|| Error::Checkpoint {
        path: path.to_path_buf(),
        message: "not a Segment Anything checkpoint: found neither `image_encoder.*` (official, MobileSAM) nor \
                  `vision_encoder.*` (Hugging Face) tensors"
            .into(),
    })?;
    let mut store = TensorStore::new(path, device, dtype);
    match family {
        SamFamily::Official => store.insert_as_named(tensors, is_ignored),
        SamFamily::HuggingFace => {
            store.set_file_namer(canonical_to_hf);
            // Depth of each MLP head: proj_in + layers + proj_out.
            let mut mlp_depth: HashMap<String, usize> = HashMap::new();
            for name in tensors.keys().filter(|n| n.ends_with(".weight")) {
                if let Some(stem) = mlp_stem(name) {
                    *mlp_depth.entry(stem.to_string()).or_default() += 1;
                }
            }
            for (name, t) in tensors {
                if is_ignored(&name) || name == "prompt_encoder.shared_embedding.positional_embedding" {
                    // A tied copy of `shared_image_embedding.positional_embedding` (not written
                    // by `save_pretrained`, but present in some exports).
                    store.ignore(name);
                    continue;
                }
                let canonical = rename_hf(&name, &mlp_depth);
                store.insert(canonical, name, t);
            }
        }
    }
    Ok((store, family))
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
