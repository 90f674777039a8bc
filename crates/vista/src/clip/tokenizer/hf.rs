//! transformers' `CLIPTokenizer`: the rules of transformers-layout checkpoints, run by the
//! `tokenizers` crate (the library behind transformers' tokenizer, reading the same
//! `tokenizer.json`).
//!
//! It differs from open_clip's [`ClipTokenizer`](super::ClipTokenizer) on purpose, as the two
//! references do: no ftfy repair and no HTML unescaping (`"&amp;"` stays five characters),
//! only NFC, whitespace runs collapsed to one space and lower-casing; the strings
//! `<|startoftext|>` and `<|endoftext|>` inside a text are the special tokens. Ids are
//! `[bos] + tokens + [eos]`, truncated to the context length keeping `eos` last and padded
//! with the pad token, as `CLIPProcessor(padding="max_length", truncation=True)` gives them.

use std::path::Path;

use serde_json::{json, Value};
use tokenizers::Tokenizer;

use super::ClipTokenizer;
use crate::{Error, Result};

/// `<|startoftext|>`: transformers' name of the start token.
pub const BOS_TEXT: &str = "<|startoftext|>";
/// `<|endoftext|>`: transformers' name of the end (and, for OpenAI's checkpoints, pad) token.
pub const EOS_TEXT: &str = "<|endoftext|>";

/// The pre-tokenizer pattern of transformers' `CLIPTokenizer` (split with `invert`, the
/// matches kept).
const SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// A transformers-family CLIP tokenizer. `Send + Sync`.
#[derive(Debug, Clone)]
pub struct HfTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
}

fn tok_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{what}: {e}"))
}

impl HfTokenizer {
    /// Reads a `tokenizer.json` (as the hub's CLIP repositories ship it).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = Tokenizer::from_bytes(&bytes).map_err(|e| tok_err(path.display(), e))?;
        Self::new(inner).map_err(|e| match e {
            Error::Tokenizer(m) => Error::Tokenizer(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// OpenAI's vocabulary (the one embedded for [`ClipTokenizer::new`]) under transformers'
    /// rules: what `CLIPTokenizer.from_pretrained("openai/clip-vit-base-patch32")` builds, for
    /// transformers-layout checkpoints that come without a `tokenizer.json`.
    pub fn openai() -> Result<Self> {
        let oc = ClipTokenizer::new()?;
        let json = builtin_json(&oc).to_string();
        let inner: Tokenizer = json.parse().map_err(|e| tok_err("built-in CLIP tokenizer", e))?;
        Self::new(inner)
    }

    fn new(inner: Tokenizer) -> Result<Self> {
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| Error::Tokenizer(format!("the vocabulary has no `{t}` token")))
        };
        let (bos, eos) = (id(BOS_TEXT)?, id(EOS_TEXT)?);
        // transformers pads with the tokenizer's pad token; tokenizer.json carries it when padding
        // was configured, otherwise CLIP's tokenizer_config names `<|endoftext|>`. (Padding sits
        // after eos and cannot change an embedding: the text tower is causal and pools at eos.)
        let pad = inner.get_padding().map(|p| p.pad_id).unwrap_or(eos);
        Ok(Self { inner, bos, eos, pad })
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The start token's id.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The end token's id.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Ids of `text` without the start / end tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| tok_err(format!("tokenizing {text:?}"), e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Exactly `context_length` ids: `[bos] + ids + [eos]`, truncated keeping `eos` last,
    /// padded with the pad token.
    pub fn tokenize(&self, text: &str, context_length: usize) -> Result<Vec<u32>> {
        if context_length == 0 {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(context_length);
        ids.push(self.bos);
        ids.extend(self.encode(text)?);
        ids.push(self.eos);
        if ids.len() > context_length {
            ids.truncate(context_length);
            ids[context_length - 1] = self.eos;
        }
        ids.resize(context_length, self.pad);
        Ok(ids)
    }

    /// Text of `ids` (transformers' `decode` with the special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = self.inner.decode(ids, false).map_err(|e| tok_err("decoding", e))?;
        // CLIPTokenizer's decode wrapper: the end-of-word suffix becomes a space.
        Ok(text.replace("</w>", " ").trim().to_string())
    }
}

/// The `tokenizer.json` transformers' `CLIPTokenizer(vocab, merges)` serialises
/// (`backend_tokenizer.to_str()`), with the open_clip tokenizer's vocabulary and merges and
/// transformers' names for the two special tokens. `tests/suite/tokenizer_parity.rs` checks every part
/// but the vocabulary against the reference's file.
fn builtin_json(oc: &ClipTokenizer) -> Value {
    let (tokens, merges) = oc.vocab_and_merges();
    let rename = |t: &str| match t {
        super::SOT_TEXT => BOS_TEXT.to_string(),
        super::EOT_TEXT => EOS_TEXT.to_string(),
        _ => t.to_string(),
    };
    let vocab: serde_json::Map<String, Value> =
        tokens.iter().enumerate().map(|(i, &t)| (rename(t), json!(i))).collect();
    let merges: Vec<Value> = merges.iter().map(|(a, b)| json!([a, b])).collect();
    let (bos, eos) = (oc.sot_id(), oc.eot_id());
    let added = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(bos, BOS_TEXT), added(eos, EOS_TEXT)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
            {"type": "Lowercase"},
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        ]},
        "post_processor": {"type": "RobertaProcessing", "sep": [EOS_TEXT, eos], "cls": [BOS_TEXT, bos],
                           "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": EOS_TEXT, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    })
}

/// [`builtin_json`] for the tests, which compare it with the reference's file.
#[doc(hidden)]
pub fn builtin_tokenizer_json() -> Result<Value> {
    Ok(builtin_json(&ClipTokenizer::new()?))
}
