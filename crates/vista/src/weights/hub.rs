//! Model resolution: a local file, a local folder, or a Hugging Face model id fetched into the
//! standard hub cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`), shared with Python's
//! `huggingface_hub`. `HF_HUB_OFFLINE=1` uses the cache only.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Where a model's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A checkpoint file given directly.
    File(PathBuf),
    /// A folder holding a checkpoint and its config files.
    Dir(PathBuf),
    /// A Hugging Face model id such as `openai/clip-vit-base-patch32`, optionally `@revision`.
    Hub {
        /// The repository id, `owner/name`.
        repo: String,
        /// The revision after `@`, if given.
        revision: Option<String>,
    },
}

impl Source {
    /// Interprets a user's model argument: an existing path wins over a hub id.
    pub fn parse(arg: &str) -> Result<Source> {
        let p = Path::new(arg);
        if p.is_file() {
            return Ok(Source::File(p.to_path_buf()));
        }
        if p.is_dir() {
            return Ok(Source::Dir(p.to_path_buf()));
        }
        let looks_like_path =
            arg.starts_with('.') || arg.starts_with('/') || arg.contains('\\') || arg.split('/').count() > 2;
        if looks_like_path || arg.is_empty() {
            return Err(Error::Resolve { model: arg.to_string(), message: "no such file or folder".into() });
        }
        let (repo, revision) = match arg.split_once('@') {
            Some((r, rev)) => (r.to_string(), Some(rev.to_string())),
            None => (arg.to_string(), None),
        };
        Ok(Source::Hub { repo, revision })
    }
}

/// True when `HF_HUB_OFFLINE` (or the older `TRANSFORMERS_OFFLINE`) is set to a true value.
pub fn offline() -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"].iter().any(|v| {
        std::env::var(v)
            .map(|s| matches!(s.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false)
    })
}

/// Finds the first of `candidates` that a folder or hub repo holds; `Ok(None)` when none exists.
/// Used with alternatives in order of preference (`model.safetensors`, then `pytorch_model.bin`).
pub fn find_file(source: &Source, candidates: &[&str]) -> Result<Option<PathBuf>> {
    match source {
        Source::File(_) => Ok(None),
        Source::Dir(dir) => Ok(candidates.iter().map(|c| dir.join(c)).find(|p| p.is_file())),
        Source::Hub { repo, revision } => {
            let hf_repo = match revision {
                Some(rev) => hf_hub::Repo::with_revision(repo.clone(), hf_hub::RepoType::Model, rev.clone()),
                None => hf_hub::Repo::model(repo.clone()),
            };
            let cache = hf_hub::Cache::from_env();
            for c in candidates {
                if let Some(p) = cache.repo(hf_repo.clone()).get(c) {
                    return Ok(Some(p));
                }
            }
            if offline() {
                return Ok(None);
            }
            let api = hf_hub::api::sync::ApiBuilder::from_env()
                .with_progress(true)
                .build()
                .map_err(|e| hub_error(repo, &e.to_string()))?;
            let api_repo = api.repo(hf_repo);
            for c in candidates {
                match api_repo.get(c) {
                    Ok(p) => return Ok(Some(p)),
                    Err(hf_hub::api::sync::ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(404, _)) => {
                        continue
                    }
                    Err(e) => return Err(hub_error(repo, &e.to_string())),
                }
            }
            Ok(None)
        }
    }
}

fn hub_error(repo: &str, msg: &str) -> Error {
    Error::Resolve {
        model: repo.to_string(),
        message: format!(
            "download from the Hugging Face hub failed ({msg}). To run offline, pass a local \
             checkpoint file or folder instead of a model id, or put the files in the hub cache \
             ({}) and set HF_HUB_OFFLINE=1",
            hf_hub::Cache::from_env().path().display()
        ),
    }
}

/// A checkpoint file and, for a transformers one, its `config.json`.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    /// The checkpoint.
    pub weights: PathBuf,
    /// transformers `config.json`, for Hugging Face checkpoints.
    pub hf_config: Option<PathBuf>,
    /// transformers `preprocessor_config.json`, for Hugging Face checkpoints that have one.
    pub preprocessor: Option<PathBuf>,
}

/// transformers' weight files, preferred first.
pub const HF_WEIGHTS: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// Finds the checkpoint of a model argument (file, folder or hub id): transformers' weights
/// ([`HF_WEIGHTS`]) with the `config.json` beside them, else the first of `others` (the
/// reference's release files, read without a config).
pub fn resolve_checkpoint(model: &str, others: &[&str]) -> Result<CheckpointFiles> {
    let source = Source::parse(model)?;
    if let Source::File(path) = &source {
        let hf_config = sidecar_hf_config(path);
        let preprocessor = hf_config
            .as_ref()
            .and_then(|c| c.parent())
            .map(|d| d.join("preprocessor_config.json"))
            .filter(|p| p.is_file());
        return Ok(CheckpointFiles { weights: path.clone(), hf_config, preprocessor });
    }
    if let Some(weights) = find_file(&source, &HF_WEIGHTS)? {
        let hf_config = find_file(&source, &["config.json"])?;
        let preprocessor = find_file(&source, &["preprocessor_config.json"])?;
        return Ok(CheckpointFiles { weights, hf_config, preprocessor });
    }
    if !others.is_empty() {
        if let Some(weights) = find_file(&source, others)? {
            return Ok(CheckpointFiles { weights, hf_config: None, preprocessor: None });
        }
    }
    let mut wanted: Vec<&str> = HF_WEIGHTS.to_vec();
    wanted.extend(others);
    Err(not_found(&source, &wanted))
}

/// The `config.json` beside a checkpoint file named as transformers names its weights.
fn sidecar_hf_config(weights: &Path) -> Option<PathBuf> {
    let name = weights.file_name()?.to_string_lossy().to_string();
    let cfg = weights.parent()?.join("config.json");
    (HF_WEIGHTS.contains(&name.as_str()) && cfg.is_file()).then_some(cfg)
}

/// Reads a JSON config file (a transformers `config.json`).
pub fn read_json_config(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config { path: path.to_path_buf(), message: e.to_string() })
}

/// The error for a model whose files could not be found anywhere.
pub fn not_found(source: &Source, wanted: &[&str]) -> Error {
    let (model, message) = match source {
        Source::File(p) => (p.display().to_string(), "not a usable checkpoint".to_string()),
        Source::Dir(p) => (p.display().to_string(), format!("the folder holds none of: {}", wanted.join(", "))),
        Source::Hub { repo, .. } if offline() => (
            repo.clone(),
            format!(
                "HF_HUB_OFFLINE is set and the hub cache ({}) holds none of: {}. Download the \
                 files on a connected machine (`huggingface-cli download {repo}`), copy the cache, \
                 or pass a local checkpoint file or folder",
                hf_hub::Cache::from_env().path().display(),
                wanted.join(", ")
            ),
        ),
        Source::Hub { repo, .. } => (repo.clone(), format!("the repository holds none of: {}", wanted.join(", "))),
    };
    Error::Resolve { model, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert_eq!(
            Source::parse("openai/clip-vit-base-patch32").unwrap(),
            Source::Hub { repo: "openai/clip-vit-base-patch32".into(), revision: None }
        );
        assert!(matches!(
            Source::parse("laion/x@abc").unwrap(),
            Source::Hub { revision: Some(r), .. } if r == "abc"
        ));
        assert!(Source::parse("./no/such/file.safetensors").is_err());
        assert!(matches!(Source::parse(".").unwrap(), Source::Dir(_)));
    }
}
