//! The CLIP byte-level BPE tokenizer, id-for-id equal to OpenAI CLIP's / open_clip's
//! `SimpleTokenizer` (`open_clip/tokenizer.py`, clean="lower").
//!
//! Pipeline, as in the reference:
//! 1. `basic_clean`: `ftfy.fix_text` (ftfy 6.3.1, default configuration), `html.unescape` twice
//!    (Python's semantics: all HTML5 entities, legacy ones without `;` by longest prefix, numeric
//!    references with the HTML5 replacement table), strip. Every step of `fix_text` is ported,
//!    in ftfy's order, per line and until nothing changes: HTML entity unescaping ("auto": off
//!    from the first line containing `<`), the mojibake repair `fix_encoding` (badness
//!    heuristic, the ten single-byte codecs incl. the "sloppy" ones, utf-8-variants/CESU-8,
//!    `restore_byte_a0`, `replace_lossy_sequences`, `decode_inconsistent_utf8`,
//!    `fix_c1_controls`), ligatures, character width, curly quotes, line breaks, terminal
//!    escapes, control characters and NFC. Only `fix_surrogates` is not, as a Rust string
//!    cannot hold surrogates. Differential tests against Python on 160,000 random and mojibake
//!    strings found no difference.
//! 2. `whitespace_clean`: Python `str.split()` whitespace runs (incl. U+001C..U+001F, U+0085,
//!    NBSP, U+3000, ...) collapsed to one space.
//! 3. Python `str.lower()` (full mapping: `İ` → `i̇`; Final_Sigma).
//! 4. The reference's `regex` pattern
//!    `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
//!    (IGNORECASE). Its letter / number classes are the reference `regex` module's own (pinned in
//!    `tables.rs`), including its IGNORECASE quirk that U+0345 matches no alternative and is
//!    dropped.
//! 5. Each piece: UTF-8 bytes → the GPT-2 byte-to-unicode alphabet → BPE with the 48,894
//!    merges of `bpe_simple_vocab_16e6.txt.gz` (49,408 tokens incl. `<start_of_text>` 49406 and
//!    `<end_of_text>` 49407; the literal text `<start_of_text>` encodes to the special id).
//!
//! [`ClipTokenizer::tokenize`] is `SimpleTokenizer.__call__`: `[sot] + ids + [eot]`, truncated to
//! the context length with the last token forced to eot, zero padded.
//!
//! Unicode versions: the cleaning tables (lower-casing, cased/case-ignorable, whitespace,
//! `\p{L}`, `\p{N}`, assigned code points, HTML entities, codecs) are generated from the
//! reference environment (`tools/reference/gen_tokenizer.py --rust-tables`: Python 3.11 /
//! Unicode 14 for `str` and `unicodedata`, the `regex` module's own Unicode 17 tables for the
//! pattern), so results do not depend on the Unicode version of Rust's `std` or `regex` crate.
//! A reference run on another Python can itself differ on characters assigned after Unicode 14.
//!
//! The vocabulary file `assets/bpe_simple_vocab_16e6.txt.gz` is OpenAI's (MIT licence,
//! Copyright (c) 2021 OpenAI), as shipped with open_clip.

mod ftfy;
mod hf;
#[rustfmt::skip]
mod tables;
mod text;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, RwLock};

use regex::Regex;

use crate::{Error, Result};

pub use hf::{builtin_tokenizer_json, HfTokenizer, BOS_TEXT, EOS_TEXT};

/// How a checkpoint's texts become ids: each checkpoint family's own reference.
#[derive(Debug, Clone)]
pub enum TextTokenizer {
    /// open_clip's / OpenAI's `SimpleTokenizer` (ftfy, HTML unescaping, zero padding): OpenAI
    /// and open_clip checkpoints.
    OpenClip(Arc<ClipTokenizer>),
    /// transformers' `CLIPTokenizer` (`tokenizer.json`): transformers-layout checkpoints.
    Transformers(Arc<HfTokenizer>),
}

impl TextTokenizer {
    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::OpenClip(t) => t.vocab_size(),
            Self::Transformers(t) => t.vocab_size(),
        }
    }

    /// Exactly `context_length` ids for `text`, start and end tokens included, as the family's
    /// reference pads and truncates them.
    pub fn tokenize(&self, text: &str, context_length: usize) -> Result<Vec<u32>> {
        match self {
            Self::OpenClip(t) => Ok(t.tokenize(text, context_length)),
            Self::Transformers(t) => t.tokenize(text, context_length),
        }
    }

    /// [`tokenize`](Self::tokenize) for many texts (in parallel for large batches).
    pub fn tokenize_batch(&self, texts: &[&str], context_length: usize) -> Result<Vec<Vec<u32>>> {
        use rayon::prelude::*;
        if texts.len() >= 64 {
            texts.par_iter().map(|t| self.tokenize(t, context_length)).collect()
        } else {
            texts.iter().map(|t| self.tokenize(t, context_length)).collect()
        }
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Self::OpenClip(t) => Ok(t.decode(ids)),
            Self::Transformers(t) => t.decode(ids),
        }
    }
}

/// `<start_of_text>` in the OpenAI vocabulary.
pub const SOT: u32 = 49406;
/// `<end_of_text>` in the OpenAI vocabulary.
pub const EOT: u32 = 49407;
/// The context length of every OpenAI / open_clip CLIP text tower.
pub const CONTEXT_LENGTH: usize = 77;

const SOT_TEXT: &str = "<start_of_text>";
const EOT_TEXT: &str = "<end_of_text>";
/// The reference keeps merges `lines[1:49152-256-2+1]` of the merges file.
const MAX_MERGES: usize = 49152 - 256 - 2;
/// The word cache is cleared when it grows past this many entries (memory bound only).
const CACHE_LIMIT: usize = 100_000;

static OPENAI_BPE_GZ: &[u8] = include_bytes!("../../../assets/bpe_simple_vocab_16e6.txt.gz");

/// The CLIP tokenizer. `Send + Sync`; share it behind an `Arc`.
pub struct ClipTokenizer {
    /// byte -> id of its byte-level symbol (without / with `</w>`).
    byte_ids: [u32; 256],
    byte_end_ids: [u32; 256],
    /// (left id, right id) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// id -> token text in the byte-level alphabet.
    decoder: Vec<Option<Box<str>>>,
    /// byte-level alphabet char -> byte.
    byte_decoder: HashMap<char, u8>,
    vocab_size: usize,
    sot: u32,
    eot: u32,
    pattern: Regex,
    cache: RwLock<HashMap<Box<str>, Box<[u32]>>>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("merges", &self.merges.len())
            .field("sot", &self.sot)
            .field("eot", &self.eot)
            .finish_non_exhaustive()
    }
}

/// GPT-2's `bytes_to_unicode`: (byte, char) in the reference's order (printable bytes first).
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter().zip(cs).map(|(b, c)| (b as u8, char::from_u32(c).expect("valid char"))).collect()
}

fn token_pattern() -> Regex {
    let letters = tables::TOKEN_LETTERS;
    let numbers = tables::TOKEN_NUMBERS;
    let skipped = tables::TOKEN_SKIPPED;
    let pattern = format!(
        "(?i:<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d)|[{letters}]+|[{numbers}]|[^{letters}{numbers}{skipped}]+"
    );
    Regex::new(&pattern).expect("valid tokenizer regex")
}

impl ClipTokenizer {
    /// The tokenizer with OpenAI's vocabulary (embedded in the library).
    pub fn new() -> Result<Self> {
        Self::from_merges_text(
            &gunzip(OPENAI_BPE_GZ)
                .map_err(|e| Error::Tokenizer(format!("embedded bpe_simple_vocab_16e6.txt.gz: {e}")))?,
        )
    }

    /// A tokenizer from a merges file in the format of `bpe_simple_vocab_16e6.txt(.gz)`
    /// (gzip is detected from the content).
    pub fn from_bpe_file(path: &Path) -> Result<Self> {
        let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = if raw.starts_with(&[0x1f, 0x8b]) {
            gunzip(&raw).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?
        } else {
            String::from_utf8(raw).map_err(|e| Error::Tokenizer(format!("{}: not UTF-8: {e}", path.display())))?
        };
        Self::from_merges_text(&text).map_err(|e| match e {
            Error::Tokenizer(m) => Error::Tokenizer(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    fn from_merges_text(text: &str) -> Result<Self> {
        let lines: Vec<&str> = text.split('\n').collect();
        let merge_lines = lines.get(1..lines.len().min(MAX_MERGES + 1)).unwrap_or(&[]);
        let mut merges = Vec::with_capacity(merge_lines.len());
        for (i, line) in merge_lines.iter().enumerate() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                [a, b] => merges.push((*a, *b)),
                _ => {
                    return Err(Error::Tokenizer(format!(
                        "merges line {}: expected two symbols, found {line:?}",
                        i + 2
                    )))
                }
            }
        }

        let b2u = bytes_to_unicode();
        let mut vocab: Vec<String> = b2u.iter().map(|&(_, c)| c.to_string()).collect();
        vocab.extend(b2u.iter().map(|&(_, c)| format!("{c}</w>")));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push(SOT_TEXT.to_string());
        vocab.push(EOT_TEXT.to_string());
        // dict(zip(vocab, range(len(vocab)))): a repeated string keeps its last id.
        let mut encoder: HashMap<&str, u32> = HashMap::with_capacity(vocab.len());
        for (i, v) in vocab.iter().enumerate() {
            encoder.insert(v.as_str(), i as u32);
        }
        let mut decoder: Vec<Option<Box<str>>> = vec![None; vocab.len()];
        for (&s, &id) in &encoder {
            decoder[id as usize] = Some(s.into());
        }

        let mut byte_ids = [0u32; 256];
        let mut byte_end_ids = [0u32; 256];
        let mut byte_decoder = HashMap::with_capacity(256);
        for &(b, c) in &b2u {
            byte_ids[b as usize] = encoder[c.to_string().as_str()];
            byte_end_ids[b as usize] = encoder[format!("{c}</w>").as_str()];
            byte_decoder.insert(c, b);
        }
        // bpe_ranks = dict(zip(merges, range(len(merges)))): a repeated pair keeps its last rank.
        // A pair whose halves are not tokens can never form, so it is left out.
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            if let (Some(&l), Some(&r)) = (encoder.get(a), encoder.get(b)) {
                let merged = encoder[format!("{a}{b}").as_str()];
                merge_map.insert((l, r), (rank as u32, merged));
            }
        }
        let sot = encoder[SOT_TEXT];
        let eot = encoder[EOT_TEXT];
        Ok(ClipTokenizer {
            byte_ids,
            byte_end_ids,
            merges: merge_map,
            decoder,
            byte_decoder,
            vocab_size: encoder.len(),
            sot,
            eot,
            pattern: token_pattern(),
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// Number of tokens (49408 for the OpenAI vocabulary).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The `<start_of_text>` id of this vocabulary ([`SOT`] for OpenAI's).
    pub fn sot_id(&self) -> u32 {
        self.sot
    }

    /// The `<end_of_text>` id of this vocabulary ([`EOT`] for OpenAI's).
    pub fn eot_id(&self) -> u32 {
        self.eot
    }

    /// The text as the reference sees it before splitting into pieces:
    /// `whitespace_clean(basic_clean(text)).lower()` (open_clip's `_clean_lower`).
    pub fn clean(text: &str) -> String {
        let fixed = ftfy::fix_text(text);
        let unescaped = text::html_unescape(&text::html_unescape(&fixed));
        text::py_lower(&text::whitespace_clean(&unescaped))
    }

    /// BPE ids of `text`, without `<start_of_text>` / `<end_of_text>` (`SimpleTokenizer.encode`).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let cleaned = Self::clean(text);
        let mut ids = Vec::with_capacity(cleaned.len() / 3 + 1);
        for m in self.pattern.find_iter(&cleaned) {
            let piece = m.as_str();
            match piece {
                SOT_TEXT => ids.push(self.sot),
                EOT_TEXT => ids.push(self.eot),
                _ => self.bpe_into(piece, &mut ids),
            }
        }
        ids
    }

    /// `SimpleTokenizer.__call__` for one text: exactly `context_length` ids (for a
    /// `context_length` of 0, none).
    pub fn tokenize(&self, text: &str, context_length: usize) -> Vec<u32> {
        if context_length == 0 {
            return Vec::new();
        }
        let mut ids = Vec::with_capacity(context_length.max(8));
        ids.push(self.sot);
        ids.extend(self.encode(text));
        ids.push(self.eot);
        if ids.len() > context_length {
            ids.truncate(context_length);
            ids[context_length - 1] = self.eot;
        }
        ids.resize(context_length, 0);
        ids
    }

    /// [`tokenize`](Self::tokenize) for many texts (in parallel for large batches).
    pub fn tokenize_batch(&self, texts: &[&str], context_length: usize) -> Vec<Vec<u32>> {
        use rayon::prelude::*;
        if texts.len() >= 64 {
            texts.par_iter().map(|t| self.tokenize(t, context_length)).collect()
        } else {
            texts.iter().map(|t| self.tokenize(t, context_length)).collect()
        }
    }

    /// `SimpleTokenizer.decode`: tokens joined, bytes decoded as UTF-8 with U+FFFD for invalid
    /// sequences, every `</w>` replaced by a space. Ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if let Some(Some(tok)) = self.decoder.get(id as usize) {
                bytes.extend(tok.chars().filter_map(|c| self.byte_decoder.get(&c).copied()));
            }
        }
        String::from_utf8_lossy(&bytes).replace("</w>", " ")
    }

    /// The token strings in id order and the merges in rank order (for building the
    /// transformers-rules tokenizer over the same vocabulary).
    fn vocab_and_merges(&self) -> (Vec<&str>, Vec<(&str, &str)>) {
        let tokens: Vec<&str> = self.decoder.iter().map(|t| t.as_deref().unwrap_or("")).collect();
        let mut ranked: Vec<(u32, u32, u32)> = self.merges.iter().map(|(&(l, r), &(rank, _))| (rank, l, r)).collect();
        ranked.sort_unstable();
        let merges = ranked.into_iter().map(|(_, l, r)| (tokens[l as usize], tokens[r as usize])).collect();
        (tokens, merges)
    }

    /// BPE of one pre-tokenized piece, appended to `out` (cached per piece).
    fn bpe_into(&self, piece: &str, out: &mut Vec<u32>) {
        if let Some(ids) = self.cache.read().unwrap_or_else(|e| e.into_inner()).get(piece) {
            out.extend_from_slice(ids);
            return;
        }
        let ids = self.bpe(piece.as_bytes());
        out.extend_from_slice(&ids);
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(piece.into(), ids.into_boxed_slice());
    }

    /// `SimpleTokenizer.bpe` over symbol ids: repeatedly merge every occurrence of the
    /// lowest-ranked adjacent pair.
    fn bpe(&self, bytes: &[u8]) -> Vec<u32> {
        let n = bytes.len();
        let mut word: Vec<u32> = bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| if i + 1 == n { self.byte_end_ids[b as usize] } else { self.byte_ids[b as usize] })
            .collect();
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|w| self.merges.get(&(w[0], w[1])).map(|&(rank, merged)| (rank, w[0], w[1], merged)))
                .min_by_key(|&(rank, ..)| rank);
            let Some((_, first, second, merged)) = best else {
                break;
            };
            let mut next = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(word[i]);
                    i += 1;
                }
            }
            word = next;
        }
        word
    }
}

fn gunzip(data: &[u8]) -> std::io::Result<String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(data).read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basics() {
        let tok = ClipTokenizer::new().unwrap();
        assert_eq!(tok.vocab_size(), 49408);
        assert_eq!(tok.sot_id(), SOT);
        assert_eq!(tok.eot_id(), EOT);
        let ids = tok.tokenize("a photo of a dog.", CONTEXT_LENGTH);
        assert_eq!(&ids[..7], &[SOT, 320, 1125, 539, 320, 1929, 269]);
        assert_eq!(ids[7], EOT);
        assert_eq!(tok.decode(&tok.encode("a photo of a dog.")), "a photo of a dog . ");
    }
}
