//! Python string semantics the reference's text cleaning relies on: `html.unescape`,
//! `str.isspace` (`str.split()`, `str.strip()`), `str.lower()`, pinned to the reference
//! environment's tables (`tables.rs`).

use std::sync::OnceLock;

use regex::Regex;

use super::tables as t;

/// A set of code points, parsed from a generated regex class body (`\x{41}-\x{5A}\x{61}...`).
pub(super) struct RangeSet(Vec<(u32, u32)>);

impl RangeSet {
    pub(super) fn parse(body: &str) -> Self {
        fn hex(s: &str) -> (u32, &str) {
            let s = s.strip_prefix("\\x{").expect("generated class body");
            let end = s.find('}').expect("generated class body");
            (u32::from_str_radix(&s[..end], 16).expect("generated class body"), &s[end + 1..])
        }
        let mut ranges = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let (lo, r) = hex(rest);
            let (hi, r) = match r.strip_prefix('-') {
                Some(r) => hex(r),
                None => (lo, r),
            };
            ranges.push((lo, hi));
            rest = r;
        }
        RangeSet(ranges)
    }

    pub(super) fn contains(&self, c: char) -> bool {
        let c = c as u32;
        self.0
            .binary_search_by(|&(lo, hi)| {
                if hi < c {
                    std::cmp::Ordering::Less
                } else if lo > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }
}

/// Python's `str.isspace()` for one character.
pub(super) fn is_py_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\u{1c}'..='\u{20}'
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// `" ".join(text.split())`: Python whitespace runs collapsed, ends stripped.
pub(super) fn whitespace_clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split(is_py_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

struct CaseTables {
    cased: RangeSet,
    ignorable: RangeSet,
}

fn case_tables() -> &'static CaseTables {
    static TABLES: OnceLock<CaseTables> = OnceLock::new();
    TABLES.get_or_init(|| CaseTables {
        cased: RangeSet::parse(t::PY_CASED),
        ignorable: RangeSet::parse(t::PY_CASE_IGNORABLE),
    })
}

/// Python's `str.lower()` (full lower-case mapping, with the Final_Sigma rule), using the
/// reference Python's Unicode tables rather than Rust's, so new-in-Rust case pairs do not leak in.
pub(super) fn py_lower(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else if c == '\u{3a3}' {
            out.push(if final_sigma(&chars, i) { '\u{3c2}' } else { '\u{3c3}' });
        } else {
            match t::PY_LOWER.binary_search_by(|(k, _)| k.cmp(&c)) {
                Ok(k) => out.push_str(t::PY_LOWER[k].1),
                Err(_) => out.push(c),
            }
        }
    }
    out
}

/// CPython's `handle_capital_sigma`:
/// `\p{cased}\p{case-ignorable}* U+03A3 !(\p{case-ignorable}* \p{cased})`.
fn final_sigma(chars: &[char], i: usize) -> bool {
    let ct = case_tables();
    let before = chars[..i].iter().rev().find(|&&c| !ct.ignorable.contains(c));
    if !before.is_some_and(|&c| ct.cased.contains(c)) {
        return false;
    }
    let after = chars[i + 1..].iter().find(|&&c| !ct.ignorable.contains(c));
    !after.is_some_and(|&c| ct.cased.contains(c))
}

fn charref_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0C <&#;]{1,32};?)").expect("valid regex"))
}

fn html5_entity(name: &str) -> Option<&'static str> {
    t::HTML5_ENTITIES.binary_search_by(|(k, _)| (*k).cmp(name)).ok().map(|i| t::HTML5_ENTITIES[i].1)
}

/// Python's `html.unescape` (named references incl. the legacy ones without `;` matched by
/// longest prefix, numeric references with the HTML5 replacement tables).
pub(super) fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    charref_regex().replace_all(text, |caps: &regex::Captures| replace_charref(&caps[1])).into_owned()
}

fn replace_charref(s: &str) -> String {
    if let Some(num) = s.strip_prefix('#') {
        let (digits, radix) = match num.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16),
            None => (num, 10),
        };
        let digits = digits.trim_end_matches(';');
        // Saturating parse: anything past u64 is "> 0x10FFFF" all the same.
        let num = digits
            .chars()
            .try_fold(0u64, |acc, d| {
                acc.checked_mul(radix).and_then(|a| a.checked_add(d.to_digit(radix as u32)? as u64))
            })
            .unwrap_or(u64::MAX);
        if let Ok(k) = t::HTML_INVALID_CHARREFS.binary_search_by(|(k, _)| (*k as u64).cmp(&num)) {
            return t::HTML_INVALID_CHARREFS[k].1.to_string();
        }
        if (0xD800..=0xDFFF).contains(&num) || num > 0x10FFFF {
            return "\u{fffd}".to_string();
        }
        if t::HTML_INVALID_CODEPOINTS.binary_search(&(num as u32)).is_ok() {
            return String::new();
        }
        return char::from_u32(num as u32).map(String::from).unwrap_or_else(|| "\u{fffd}".to_string());
    }
    if let Some(v) = html5_entity(s) {
        return v.to_string();
    }
    // Longest prefix of 2..len-1 characters that is an entity name.
    let bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
    for x in (2..bounds.len()).rev() {
        let cut = bounds[x];
        if let Some(v) = html5_entity(&s[..cut]) {
            return format!("{v}{}", &s[cut..]);
        }
    }
    format!("&{s}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_space_matches_table() {
        let table = RangeSet::parse(t::PY_SPACE);
        for cp in 0..0x3100u32 {
            let c = char::from_u32(cp).unwrap_or('x');
            assert_eq!(is_py_space(c), table.contains(c), "U+{cp:04X}");
        }
    }

    #[test]
    fn python_html_unescape() {
        let cases = [
            ("&amp;", "&"),
            ("&amp", "&"),
            ("&copy 2024", "© 2024"),
            ("&notit;", "¬it;"),
            ("&notin;", "∉"),
            ("&ampfoo;", "&foo;"),
            ("&#39;&#x27;&#X27;", "'''"),
            ("&#0;", "\u{fffd}"),
            ("&#1;", ""),
            ("&#128;", "€"),
            ("&#xD800;", "\u{fffd}"),
            ("&#99999999999999999999999;", "\u{fffd}"),
            ("&unknown;", "&unknown;"),
            ("& alone", "& alone"),
        ];
        for (input, want) in cases {
            assert_eq!(html_unescape(input), want, "input {input:?}");
        }
    }

    #[test]
    fn python_lower() {
        assert_eq!(py_lower("İstanbul"), "i\u{307}stanbul");
        assert_eq!(py_lower("ΟΔΟΣ"), "οδος");
        assert_eq!(py_lower("ΣΑΣ ΣΑΣ"), "σας σας");
        assert_eq!(py_lower("Σ"), "σ");
        assert_eq!(py_lower("STRAẞE"), "straße");
    }
}
