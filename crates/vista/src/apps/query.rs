//! Mixed, weighted search queries: `"red saree" "+gold border" "-kurta" "2:wedding" --image ref.jpg`.
//!
//! Every term is embedded and L2-normalised on its own, multiplied by its weight, summed, and the
//! sum normalised again, so a term's weight is its share of the direction searched for whatever its
//! raw embedding norm.

use std::path::PathBuf;

use super::classify::Templates;
use crate::clip::l2_normalize;
use crate::clip::ClipPipeline;
use crate::{Error, Result};

/// One term of a query: a text or an image, with its weight.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// A text, embedded through the prompt templates.
    Text {
        /// The text.
        text: String,
        /// Its weight (negative to steer away).
        weight: f32,
    },
    /// An image file.
    Image {
        /// The image file.
        path: PathBuf,
        /// Its weight (negative to steer away).
        weight: f32,
    },
}

/// Splits an optional `W:` weight prefix (`2:red saree`, `-0.5:kurta`) off `arg`.
fn split_weight(arg: &str) -> (Option<f32>, &str) {
    if let Some((w, rest)) = arg.split_once(':') {
        if let Ok(w) = w.trim().parse::<f32>() {
            if w.is_finite() {
                return (Some(w), rest);
            }
        }
    }
    (None, arg)
}

/// A text term: `text` (weight 1), `+text` (1), `-text` (-1), `W:text` (W).
pub fn parse_text(arg: &str) -> Result<Term> {
    let (w, rest) = split_weight(arg);
    let (weight, text) = match w {
        Some(w) => (w, rest),
        None => match arg.chars().next() {
            Some('+') => (1.0, &arg[1..]),
            Some('-') => (-1.0, &arg[1..]),
            _ => (1.0, arg),
        },
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::arg("query", format!("`{arg}` has no text")));
    }
    Ok(Term::Text { text: text.to_string(), weight })
}

/// An image term: `PATH` (weight 1) or `W:PATH`.
pub fn parse_image(arg: &str) -> Term {
    match split_weight(arg) {
        (Some(w), rest) if !rest.is_empty() => Term::Image { path: PathBuf::from(rest), weight: w },
        _ => Term::Image { path: PathBuf::from(arg), weight: 1.0 },
    }
}

/// `normalize(Σ wᵢ · normalize(eᵢ))`.
pub fn combine(parts: &[(f32, Vec<f32>)]) -> Result<Vec<f32>> {
    let dim = parts.first().map(|p| p.1.len()).ok_or_else(|| Error::arg("query", "the query is empty"))?;
    let mut sum = vec![0f32; dim];
    for (w, e) in parts {
        if e.len() != dim {
            return Err(Error::arg("query", "query terms have different dimensions"));
        }
        let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            for (s, v) in sum.iter_mut().zip(e) {
                *s += w * v / norm;
            }
        }
    }
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm < 1e-6 {
        return Err(Error::arg("query", "the weighted terms cancel out (the combined query is zero)"));
    }
    Ok(sum.into_iter().map(|v| v / norm).collect())
}

/// Embeds every term (text through `templates`, averaged as zero-shot classification does) and
/// combines them.
pub fn embed(pipeline: &ClipPipeline, terms: &[Term], templates: &Templates) -> Result<Vec<f32>> {
    let mut parts = Vec::with_capacity(terms.len());
    for t in terms {
        match t {
            Term::Text { text, weight } => {
                let prompts = templates.fill(text);
                let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
                let e = l2_normalize(&pipeline.embed_texts(&refs)?.mean_keepdim(0)?)?;
                parts.push((*weight, e.squeeze(0)?.to_vec1::<f32>()?));
            }
            Term::Image { path, weight } => parts.push((*weight, pipeline.embed_file(path)?)),
        }
    }
    combine(&parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_parse_with_signs_and_weights() {
        assert_eq!(parse_text("red saree").unwrap(), Term::Text { text: "red saree".into(), weight: 1.0 });
        assert_eq!(parse_text("+gold border").unwrap(), Term::Text { text: "gold border".into(), weight: 1.0 });
        assert_eq!(parse_text("-kurta").unwrap(), Term::Text { text: "kurta".into(), weight: -1.0 });
        assert_eq!(parse_text("2:wedding").unwrap(), Term::Text { text: "wedding".into(), weight: 2.0 });
        assert_eq!(parse_text("-0.5:kurta").unwrap(), Term::Text { text: "kurta".into(), weight: -0.5 });
        assert_eq!(parse_text("time: 10:30").unwrap(), Term::Text { text: "time: 10:30".into(), weight: 1.0 });
        assert!(parse_text("-").is_err());
        assert_eq!(parse_image("0.5:ref.jpg"), Term::Image { path: "ref.jpg".into(), weight: 0.5 });
        assert_eq!(parse_image("C:/x.jpg"), Term::Image { path: "C:/x.jpg".into(), weight: 1.0 });
    }

    #[test]
    fn combination_equals_hand_computed_vectors() {
        // a = (3, 4) -> (0.6, 0.8); b = (0, 2) -> (0, 1); 2a - b = (1.2, 0.6) -> /sqrt(1.8)
        let q = combine(&[(2.0, vec![3.0, 4.0]), (-1.0, vec![0.0, 2.0])]).unwrap();
        let n = (1.2f32 * 1.2 + 0.6 * 0.6).sqrt();
        assert!((q[0] - 1.2 / n).abs() < 1e-6 && (q[1] - 0.6 / n).abs() < 1e-6, "{q:?}");
        // A single term is just its direction.
        let q = combine(&[(5.0, vec![0.0, -2.0])]).unwrap();
        assert_eq!(q, vec![0.0, -1.0]);
        assert!(combine(&[(1.0, vec![1.0, 0.0]), (-1.0, vec![2.0, 0.0])]).is_err());
        assert!(combine(&[]).is_err());
    }
}
