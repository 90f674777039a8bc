//! Zero-shot classification as in the CLIP paper's prompt-engineering notebook
//! (openai/CLIP `notebooks/Prompt_Engineering_for_ImageNet.ipynb`): every label is written into
//! every template, the normalised text embeddings are averaged per label and renormalised; an
//! image's class probabilities are the softmax of `exp(logit_scale) · cos`.

use std::path::Path;

use candle_core::{Tensor, D};

use crate::clip::l2_normalize;
use crate::clip::ClipPipeline;
use crate::{Error, Result};

/// The 80 ImageNet prompt templates of the CLIP paper (open_clip `zero_shot_metadata.py`
/// `OPENAI_IMAGENET_TEMPLATES`), `{}` standing for the label.
const IMAGENET80: &str = include_str!("../../assets/imagenet80_templates.txt");

/// Prompt templates; `{}` is replaced by the label.
#[derive(Debug, Clone, PartialEq)]
pub enum Templates {
    /// `a photo of a {}.` — the CLIP paper's base prompt.
    Default,
    /// The paper's 80 ImageNet templates.
    ImageNet80,
    /// The label as written.
    None,
    /// Templates read from a file (each holding `{}`).
    Custom(Vec<String>),
}

impl Templates {
    /// `default`, `imagenet80`, `none`, or a file with one template per line.
    pub fn parse(arg: &str) -> Result<Self> {
        match arg {
            "default" => Ok(Self::Default),
            "imagenet80" => Ok(Self::ImageNet80),
            "none" => Ok(Self::None),
            path => Self::from_file(Path::new(path)),
        }
    }

    /// Reads one template per non-empty line; each must hold `{}`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let lines: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        if lines.is_empty() {
            return Err(Error::arg("templates", format!("{}: no templates in the file", path.display())));
        }
        if let Some(bad) = lines.iter().find(|l| !l.contains("{}")) {
            return Err(Error::arg(
                "templates",
                format!("{}: template `{bad}` has no `{{}}` for the label", path.display()),
            ));
        }
        Ok(Self::Custom(lines))
    }

    /// The templates.
    pub fn list(&self) -> Vec<String> {
        match self {
            Self::Default => vec!["a photo of a {}.".into()],
            Self::ImageNet80 => IMAGENET80.lines().map(String::from).collect(),
            Self::None => vec!["{}".into()],
            Self::Custom(v) => v.clone(),
        }
    }

    /// The prompts for one label.
    pub fn fill(&self, label: &str) -> Vec<String> {
        self.list().iter().map(|t| t.replace("{}", label)).collect()
    }
}

/// One label and its probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// The label.
    pub label: String,
    /// Its probability (softmax over all labels).
    pub prob: f32,
}

/// A user's own prompts for some classes (`labels.txt`), used instead of the templates for them.
///
/// One line per class: `class: prompt | another prompt`. A prompt with `{}` is a template (the
/// class name goes in its place); one without is used as written. Blank lines and lines
/// starting with `#` are skipped; classes without a line go through the templates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassPrompts {
    prompts: std::collections::BTreeMap<String, Vec<String>>,
}

impl ClassPrompts {
    /// Reads `path` (see the type) for the classes `classes`. Errors name the file and line of
    /// a line without `class:`, a class that is not one of `classes`, a class given twice or a
    /// class without prompts.
    pub fn from_file(path: &Path, classes: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, classes).map_err(|m| Error::arg("prompts", format!("{}: {m}", path.display())))
    }

    /// Parses the text of a prompts file; the error names the line.
    pub fn parse(text: &str, classes: &[String]) -> std::result::Result<Self, String> {
        let mut prompts = std::collections::BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || format!("line {}", n + 1);
            let (class, rest) =
                line.split_once(':').ok_or_else(|| format!("{}: expected `class: prompt | prompt`", at()))?;
            let class = class.trim();
            if !classes.iter().any(|c| c == class) {
                return Err(format!("{}: `{class}` is not one of the classes ({})", at(), classes.join(", ")));
            }
            let list: Vec<String> =
                rest.split('|').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
            if list.is_empty() {
                return Err(format!("{}: `{class}` has no prompt", at()));
            }
            if prompts.insert(class.to_string(), list).is_some() {
                return Err(format!("{}: `{class}` is given twice", at()));
            }
        }
        Ok(Self { prompts })
    }

    /// Number of classes with their own prompts.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// True when no class has its own prompts.
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// The prompts of `class`: its own (templates among them filled) or the templates filled.
    pub fn for_class(&self, class: &str, templates: &Templates) -> Vec<String> {
        match self.prompts.get(class) {
            Some(own) => own.iter().map(|p| p.replace("{}", class)).collect(),
            None => templates.fill(class),
        }
    }
}

/// Labels embedded once, then any number of images classified against them.
pub struct ZeroShotClassifier {
    labels: Vec<String>,
    /// `[C, D]`, one normalised row per label.
    weights: Tensor,
    scale: f64,
}

impl ZeroShotClassifier {
    /// Embeds every label through `templates` (each label's prompts averaged and normalised).
    /// Errors without labels or with a label given twice.
    pub fn new(pipeline: &ClipPipeline, labels: &[String], templates: &Templates) -> Result<Self> {
        Self::with_prompts(pipeline, labels, templates, &ClassPrompts::default())
    }

    /// As [`Self::new`], with the classes of `own` embedded through their own prompts.
    pub fn with_prompts(
        pipeline: &ClipPipeline,
        labels: &[String],
        templates: &Templates,
        own: &ClassPrompts,
    ) -> Result<Self> {
        if labels.is_empty() {
            return Err(Error::arg("labels", "give at least one label"));
        }
        if let Some(dup) = labels.iter().enumerate().find(|(i, l)| labels[..*i].contains(l)) {
            return Err(Error::arg("labels", format!("label `{}` is given twice", dup.1)));
        }
        let mut rows = Vec::with_capacity(labels.len());
        for label in labels {
            let prompts = own.for_class(label, templates);
            let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
            // [T, D] normalised -> mean over templates -> renormalised [D]
            let e = pipeline.embed_texts(&refs)?;
            rows.push(l2_normalize(&e.mean_keepdim(0)?)?.squeeze(0)?);
        }
        Ok(Self {
            labels: labels.to_vec(),
            weights: Tensor::stack(&rows, 0)?,
            scale: pipeline.model.logit_scale() as f64,
        })
    }

    /// The class embeddings, `[C, D]`, one normalised row per label.
    pub fn weights(&self) -> &Tensor {
        &self.weights
    }

    /// The labels, in the order given.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Class probabilities for normalised image embeddings `[N, D]`, sorted best first, `top_k` each.
    pub fn classify(&self, image_embeds: &Tensor, top_k: usize) -> Result<Vec<Vec<Prediction>>> {
        let logits = (image_embeds.matmul(&self.weights.t()?)? * self.scale)?;
        let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
        Ok(probs
            .into_iter()
            .map(|row| {
                let mut p: Vec<Prediction> = row
                    .into_iter()
                    .zip(&self.labels)
                    .map(|(prob, label)| Prediction { label: label.clone(), prob })
                    .collect();
                p.sort_by(|a, b| b.prob.total_cmp(&a.prob));
                p.truncate(top_k.max(1));
                p
            })
            .collect())
    }

    /// Classifies one embedding given as a plain vector.
    pub fn classify_one(&self, embedding: &[f32], top_k: usize) -> Result<Vec<Prediction>> {
        let t = Tensor::from_slice(embedding, (1, embedding.len()), self.weights.device())?;
        Ok(self.classify(&t, top_k)?.remove(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet80_has_80_templates_each_with_a_slot() {
        let t = Templates::ImageNet80.list();
        assert_eq!(t.len(), 80);
        assert!(t.iter().all(|s| s.matches("{}").count() == 1));
        assert_eq!(Templates::Default.fill("saree"), vec!["a photo of a saree."]);
    }

    #[test]
    fn class_prompts_replace_the_templates_of_their_classes() {
        let classes: Vec<String> = ["saree", "kurta"].iter().map(|s| s.to_string()).collect();
        let text = "# shop labels\nsaree: a red saree with a gold border | a draped {}\n\n";
        let p = ClassPrompts::parse(text, &classes).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p.for_class("saree", &Templates::Default), vec!["a red saree with a gold border", "a draped saree"]);
        assert_eq!(p.for_class("kurta", &Templates::Default), vec!["a photo of a kurta."]);
        let err = ClassPrompts::parse("lehenga: a skirt", &classes).unwrap_err();
        assert!(err.contains("line 1") && err.contains("lehenga"), "{err}");
        assert!(ClassPrompts::parse("saree a", &classes).unwrap_err().contains("expected"));
        assert!(ClassPrompts::parse("saree: |", &classes).unwrap_err().contains("no prompt"));
        assert!(ClassPrompts::parse("saree: a\nsaree: b", &classes).unwrap_err().contains("line 2"));
    }
}
