//! CLIP checkpoint families and their mapping onto the canonical (OpenAI / open_clip) names.
//!
//! Canonical naming is the original OpenAI one, which open_clip keeps
//! (`visual.transformer.resblocks.N.attn.in_proj_weight`, fused q/k/v; `visual.proj` as a
//! `[width, embed]` matrix applied as `x @ proj`). Hugging Face transformers splits q/k/v and stores
//! projections as `nn.Linear` weights (`[embed, width]`): both are undone here, once, at load.

use std::collections::HashMap;

use candle_core::Tensor;

use super::store::{Family, TensorStore};
use crate::Result;

/// Which naming a CLIP checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ClipFamily {
    /// OpenAI's release and open_clip: `visual.*`, `transformer.*`, `token_embedding.weight`.
    OpenClip,
    /// transformers `CLIPModel`: `vision_model.*`, `text_model.*`, `visual_projection.weight`.
    HuggingFace,
}

/// Buffers some exports carry that hold no weights.
const IGNORED_SUFFIXES: [&str; 3] = ["position_ids", "attn_mask", "num_batches_tracked"];
/// Scalars of OpenAI's TorchScript state dict.
const IGNORED_NAMES: [&str; 3] = ["input_resolution", "context_length", "vocab_size"];

/// Per-block renames inside `encoder.layers.N.` (Hugging Face) → `resblocks.N.` (canonical).
const HF_BLOCK_RENAMES: [(&str, &str); 8] = [
    ("layer_norm1.weight", "ln_1.weight"),
    ("layer_norm1.bias", "ln_1.bias"),
    ("layer_norm2.weight", "ln_2.weight"),
    ("layer_norm2.bias", "ln_2.bias"),
    ("mlp.fc1.weight", "mlp.c_fc.weight"),
    ("mlp.fc1.bias", "mlp.c_fc.bias"),
    ("mlp.fc2.weight", "mlp.c_proj.weight"),
    ("mlp.fc2.bias", "mlp.c_proj.bias"),
];

/// Whole-name and prefix renames, Hugging Face → canonical.
const HF_RENAMES: [(&str, &str); 10] = [
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm.", "visual.ln_pre."),
    ("vision_model.post_layernorm.", "visual.ln_post."),
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.final_layer_norm.", "ln_final."),
    ("logit_scale", "logit_scale"),
    ("self_attn.out_proj.", "attn.out_proj."),
];

impl Family for ClipFamily {
    const CANONICAL: Self = ClipFamily::OpenClip;
    const NOT_FOUND: &'static str = "not a CLIP checkpoint: found neither `visual.*` (OpenAI/open_clip) nor \
                                     `vision_model.*` (Hugging Face) tensors";

    fn detect<'a>(names: impl IntoIterator<Item = &'a String>) -> Option<Self> {
        for n in names {
            if n.starts_with("vision_model.") || n.starts_with("text_model.") {
                return Some(ClipFamily::HuggingFace);
            }
            if n.starts_with("visual.") || n.starts_with("token_embedding.") {
                return Some(ClipFamily::OpenClip);
            }
        }
        None
    }

    fn is_ignored(name: &str) -> bool {
        IGNORED_NAMES.contains(&name) || IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s))
    }

    fn file_name(canonical: &str) -> String {
        canonical_to_hf(canonical)
    }

    fn map(mut tensors: HashMap<String, Tensor>, store: &mut TensorStore) -> Result<()> {
        // q/k/v are fused first: [W, W] x3 -> in_proj_weight [3W, W], in the order q, k, v as
        // torch.nn.MultiheadAttention lays out `in_proj_weight`.
        let mut bases: Vec<String> = tensors
            .keys()
            .filter_map(|k| {
                ["q", "k", "v"].iter().find_map(|w| {
                    let pat = format!(".self_attn.{w}_proj.");
                    k.contains(&pat).then(|| k.replace(&pat, ".self_attn.{}_proj."))
                })
            })
            .collect();
        bases.sort();
        bases.dedup();
        for base in bases {
            let names: Vec<String> = ["q", "k", "v"].iter().map(|w| base.replace("{}", w)).collect();
            let leaf = if names[0].ends_with(".weight") { "in_proj_weight" } else { "in_proj_bias" };
            let block = names[0].split(".self_attn.").next().unwrap_or_default();
            let canonical = format!("{}.attn.{leaf}", rename_hf_block_prefix(block));
            let hint = " (q, k and v are fused into one attention projection)";
            store.insert_fused(canonical, &names, &mut tensors, hint)?;
        }
        // nn.Linear [embed, width] -> matrix [width, embed] used as x @ proj.
        for (name, canonical) in
            [("visual_projection.weight", "visual.proj"), ("text_projection.weight", "text_projection")]
        {
            if let Some(t) = tensors.remove(name) {
                store.insert_transposed(canonical, name, t.t()?.contiguous()?);
            }
        }
        store.insert_renamed(tensors, Self::is_ignored, rename_hf);
        Ok(())
    }
}

/// The inverse of [`rename_hf`]: how a transformers checkpoint spells a canonical name.
fn canonical_to_hf(name: &str) -> String {
    match name {
        "visual.proj" => return "visual_projection.weight".into(),
        "text_projection" => return "text_projection.weight".into(),
        _ => {}
    }
    let mut out = name.replace("visual.transformer.resblocks.", "vision_model.encoder.layers.");
    if !out.starts_with("vision_model.") {
        out = out.replace("transformer.resblocks.", "text_model.encoder.layers.");
    }
    if out.contains(".layers.") {
        if let Some(stem) = out.strip_suffix(".attn.in_proj_weight") {
            return format!("{stem}.self_attn.{{q,k,v}}_proj.weight");
        }
        if let Some(stem) = out.strip_suffix(".attn.in_proj_bias") {
            return format!("{stem}.self_attn.{{q,k,v}}_proj.bias");
        }
        for (hf, canonical) in HF_BLOCK_RENAMES {
            if let Some(stem) = out.strip_suffix(canonical) {
                return format!("{stem}{hf}");
            }
        }
        return out.replace(".attn.out_proj.", ".self_attn.out_proj.");
    }
    for (hf, canonical) in HF_RENAMES {
        if let Some(rest) = out.strip_prefix(canonical) {
            return format!("{hf}{rest}");
        }
    }
    out
}

fn rename_hf_block_prefix(prefix: &str) -> String {
    prefix
        .replace("vision_model.encoder.layers.", "visual.transformer.resblocks.")
        .replace("text_model.encoder.layers.", "transformer.resblocks.")
}

fn rename_hf(name: &str) -> String {
    let mut out = rename_hf_block_prefix(name);
    if out.contains(".resblocks.") {
        for (from, to) in HF_BLOCK_RENAMES {
            if out.ends_with(from) {
                out = format!("{}{to}", &out[..out.len() - from.len()]);
                return out;
            }
        }
    }
    for (from, to) in HF_RENAMES {
        if let Some(rest) = out.strip_prefix(from) {
            return format!("{to}{rest}");
        }
        if from.ends_with('.') && out.contains(from) {
            return out.replace(from, to);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_map_back_to_hf() {
        for hf in [
            "vision_model.encoder.layers.3.mlp.fc1.weight",
            "text_model.encoder.layers.0.self_attn.out_proj.bias",
            "vision_model.pre_layrnorm.weight",
            "text_model.final_layer_norm.bias",
            "text_model.embeddings.position_embedding.weight",
            "vision_model.embeddings.class_embedding",
            "logit_scale",
        ] {
            assert_eq!(canonical_to_hf(&rename_hf(hf)), hf);
        }
        assert_eq!(canonical_to_hf("visual.proj"), "visual_projection.weight");
    }

    #[test]
    fn hf_names_map_to_canonical() {
        assert_eq!(
            rename_hf("vision_model.encoder.layers.3.mlp.fc1.weight"),
            "visual.transformer.resblocks.3.mlp.c_fc.weight"
        );
        assert_eq!(
            rename_hf("text_model.encoder.layers.0.self_attn.out_proj.bias"),
            "transformer.resblocks.0.attn.out_proj.bias"
        );
        assert_eq!(rename_hf("vision_model.pre_layrnorm.weight"), "visual.ln_pre.weight");
        assert_eq!(rename_hf("text_model.final_layer_norm.bias"), "ln_final.bias");
        assert_eq!(rename_hf("vision_model.embeddings.patch_embedding.weight"), "visual.conv1.weight");
    }
}
