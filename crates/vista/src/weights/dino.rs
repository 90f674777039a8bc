//! DINO / DINOv2 checkpoint families and their mapping onto the canonical names.
//!
//! Canonical naming is DINOv2's original one (a superset of DINO's): `cls_token`, `pos_embed`,
//! `register_tokens`, `patch_embed.proj.*`, `blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma,
//! norm2, mlp.fc1, mlp.fc2 | mlp.w12, mlp.w3, ls2.gamma}`, `norm.*`.
//!
//! * Official releases (`dino_deitsmall16_pretrain.pth`, `dinov2_vits14_pretrain.pth`, ...) use
//!   it directly. DINO's full training checkpoints nest a `teacher` and a `student` dict whose keys
//!   carry `backbone.` (and, for the student, `module.`) prefixes; the DINO head next to the
//!   backbone is skipped. DINOv2's FSDP layout `blocks.C.N.` (block chunks) is flattened.
//! * transformers' `ViTModel` (`facebook/dino-vits16`) and `Dinov2Model` /
//!   `Dinov2WithRegistersModel` (`facebook/dinov2-*`) split q/k/v and rename the rest; both are
//!   mapped here, q/k/v fused into one `[3C, C]` projection.

use std::collections::HashMap;

use candle_core::Tensor;

use super::store::{rename_all, unrename_all, Family, TensorStore};
use crate::Result;

/// Which naming a DINO checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DinoFamily {
    /// `facebookresearch/dino` and `facebookresearch/dinov2` releases.
    Official,
    /// transformers `ViTModel` / `Dinov2Model` / `Dinov2WithRegistersModel`.
    HuggingFace,
}

/// Strips wrapper prefixes (`module.`, `backbone.`, transformers' task-model `vit.` / `dinov2.`)
/// and flattens DINOv2's chunked blocks.
fn strip(name: &str) -> String {
    let mut n = name;
    for p in ["module.", "backbone.", "vit.", "dinov2.", "model."] {
        if let Some(r) = n.strip_prefix(p) {
            n = r;
        }
    }
    // blocks.C.N.rest -> blocks.N.rest when the third part is also an index.
    if let Some(rest) = n.strip_prefix("blocks.") {
        let parts: Vec<&str> = rest.splitn(3, '.').collect();
        if parts.len() == 3 && parts[0].parse::<usize>().is_ok() && parts[1].parse::<usize>().is_ok() {
            return format!("blocks.{}.{}", parts[1], parts[2]);
        }
    }
    n.to_string()
}

const HF_RENAMES: &[(&str, &str)] = &[
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.register_tokens", "register_tokens"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("encoder.layer.", "blocks."),
    (".layernorm_before.", ".norm1."),
    (".layernorm_after.", ".norm2."),
    (".attention.output.dense.", ".attn.proj."),
    (".intermediate.dense.", ".mlp.fc1."),
    (".output.dense.", ".mlp.fc2."),
    (".layer_scale1.lambda1", ".ls1.gamma"),
    (".layer_scale2.lambda1", ".ls2.gamma"),
    (".mlp.weights_in.", ".mlp.w12."),
    (".mlp.weights_out.", ".mlp.w3."),
];

fn rename_hf(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("layernorm.") {
        return format!("norm.{rest}");
    }
    rename_all(name, HF_RENAMES)
}

fn canonical_to_hf(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("norm.") {
        return format!("layernorm.{rest}");
    }
    if let Some(stem) = name.strip_suffix(".attn.qkv.weight") {
        return format!("{}.attention.attention.{{query,key,value}}.weight", canonical_to_hf(stem));
    }
    if let Some(stem) = name.strip_suffix(".attn.qkv.bias") {
        return format!("{}.attention.attention.{{query,key,value}}.bias", canonical_to_hf(stem));
    }
    unrename_all(name, HF_RENAMES)
}

impl Family for DinoFamily {
    const CANONICAL: Self = DinoFamily::Official;
    const NOT_FOUND: &'static str = "not a DINO checkpoint: found neither `cls_token` + `patch_embed.proj.*` \
                                     (official ViT), `layer1.*` (ResNet) nor `embeddings.*` (Hugging Face) \
                                     tensors";

    fn detect<'a>(names: impl IntoIterator<Item = &'a String>) -> Option<Self> {
        for n in names {
            if n.starts_with("embeddings.") || n.contains(".embeddings.patch_embeddings.") {
                return Some(DinoFamily::HuggingFace);
            }
            // A ViT's tokens, or torchvision's ResNet (DINO's `resnet50`).
            if n == "cls_token" || n.ends_with("patch_embed.proj.weight") || n == "layer1.0.conv1.weight" {
                return Some(DinoFamily::Official);
            }
        }
        None
    }

    fn strip(name: String) -> String {
        strip(&name)
    }

    fn is_ignored(name: &str) -> bool {
        name.starts_with("head.")
            || name == "mask_token"
            || name == "embeddings.mask_token"
            || name.starts_with("pooler.")
            || name.starts_with("classifier.")
            || name.ends_with("position_ids")
            // torchvision's classifier (DINO replaces it by the identity) and BatchNorm's counter
            || name.starts_with("fc.")
            || name.ends_with("num_batches_tracked")
    }

    fn file_name(canonical: &str) -> String {
        canonical_to_hf(canonical)
    }

    fn map(mut tensors: HashMap<String, Tensor>, store: &mut TensorStore) -> Result<()> {
        let stems: Vec<String> = tensors
            .keys()
            .filter_map(|k| k.strip_suffix(".attention.attention.query.weight").map(str::to_string))
            .collect();
        for stem in stems {
            for leaf in ["weight", "bias"] {
                let names: Vec<String> = ["query", "key", "value"]
                    .iter()
                    .map(|w| format!("{stem}.attention.attention.{w}.{leaf}"))
                    .collect();
                if !names.iter().any(|n| tensors.contains_key(n)) {
                    continue;
                }
                let canonical = format!("{}.attn.qkv.{leaf}", rename_hf(&stem));
                let hint = " (query, key and value are fused into one projection)";
                store.insert_fused(canonical, &names, &mut tensors, hint)?;
            }
        }
        // HF keeps cls/register tokens as [1, 1, C] / [1, R, C] and the position embedding as
        // [1, 1 + N, C], like the originals.
        store.insert_renamed(tensors, Self::is_ignored, rename_hf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        assert_eq!(strip("module.backbone.blocks.3.attn.qkv.weight"), "blocks.3.attn.qkv.weight");
        assert_eq!(strip("blocks.1.7.norm1.weight"), "blocks.7.norm1.weight");
        assert_eq!(strip("blocks.7.norm1.weight"), "blocks.7.norm1.weight");
        assert_eq!(rename_hf("encoder.layer.2.layernorm_before.bias"), "blocks.2.norm1.bias");
        assert_eq!(rename_hf("encoder.layer.0.output.dense.weight"), "blocks.0.mlp.fc2.weight");
        assert_eq!(rename_hf("encoder.layer.0.attention.output.dense.weight"), "blocks.0.attn.proj.weight");
        assert_eq!(rename_hf("encoder.layer.1.layer_scale2.lambda1"), "blocks.1.ls2.gamma");
        assert_eq!(rename_hf("layernorm.weight"), "norm.weight");
        assert_eq!(canonical_to_hf("blocks.0.mlp.fc2.weight"), "encoder.layer.0.output.dense.weight");
        assert_eq!(
            canonical_to_hf("blocks.4.attn.qkv.bias"),
            "encoder.layer.4.attention.attention.{query,key,value}.bias"
        );
    }
}
