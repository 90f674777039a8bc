//! The library's layers point one way (docs/ARCHITECTURE.md):
//!
//! `error`, `device`, `memory` ← `nn`, `image` ← `optim`, `data` ← `weights` ← `clip`, `dino`, `sam` ←
//! `eval` ← `train`, `apps`, `index`
//!
//! Every `crate::<module>` path in the code of a module (use lines and inline paths; comments
//! and doc links are not dependencies) must name a module of a lower layer, or its own. Two
//! exceptions are deliberate: `nn` reads weights through `weights::Vb`, as candle-nn holds its
//! VarBuilder, and `optim` runs its update through `nn`'s SIMD dispatch. Modules of one layer do
//! not import each other (the models are independent; training, applications and the index do
//! not call one another).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layer of each top-level module.
fn layer(module: &str) -> Option<u32> {
    Some(match module {
        "error" | "device" | "memory" => 0,
        "nn" | "image" => 1,
        "optim" | "data" => 2,
        "weights" => 3,
        "clip" | "dino" | "sam" => 4,
        "eval" => 5,
        "train" | "apps" | "index" => 6,
        _ => return None,
    })
}

/// Allowed imports that break the rule, each with its reason in the module docs above.
const EXCEPTIONS: [(&str, &str); 2] = [("nn", "weights"), ("optim", "nn")];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules a piece of code names through `crate::`: `crate::a::…`, and in
/// `crate::{a::…, b, …}` groups each item's first segment.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                out.insert(name);
            }
        } else {
            out.insert(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    out
}

/// A file's code without comments (line comments and doc comments; no block comments are used).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_module_imports_a_higher_or_sibling_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" {
            continue;
        }
        let Some(own) = layer(&top) else {
            violations.push(format!("{}: module `{top}` has no layer in this test", rel.display()));
            continue;
        };
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for target in crate_refs(&code) {
            if target == top || EXCEPTIONS.contains(&(top.as_str(), target.as_str())) {
                continue;
            }
            match layer(&target) {
                Some(l) if l < own => {}
                Some(l) => violations
                    .push(format!("{}: `{top}` (layer {own}) imports `crate::{target}` (layer {l})", rel.display())),
                None => {} // an item of lib.rs (`Error`, `Result`)
            }
        }
    }
    assert!(violations.is_empty(), "layer violations:\n{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_grouped_and_inline_paths() {
    let code = code_of("use crate::{apps::x, Error};\nfn f() { crate::train::g(); } // crate::index::h\n");
    let refs = crate_refs(&code);
    assert!(refs.contains("apps") && refs.contains("train") && refs.contains("Error"));
    assert!(!refs.contains("index"), "comments are not dependencies");
}

#[test]
fn lib_lists_every_module_with_a_layer() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines().filter_map(|l| l.strip_prefix("pub mod ")) {
        let m = line.trim_end_matches(';');
        assert!(layer(m).is_some(), "`{m}` is declared in lib.rs but has no layer in this test");
    }
}
